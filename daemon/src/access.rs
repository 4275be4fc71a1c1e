//! Who may do what: principals named in the config or in `shmemctl create` flags, and the
//! checks the registry runs against a peer's kernel-reported credentials.

use crate::peer::PeerCredentials;

/// One entry of an access list: `*` (anyone who can reach the socket), a user (`alice` or
/// `1000`) or a group (`@video` or `@44`). Names are resolved to ids once, when the config or the
/// request is read, so a later rename cannot widen access.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    Anyone,
    Uid(u32),
    Gid(u32),
}

impl Principal {
    /// Parses and resolves one principal, with a message naming what could not be resolved.
    pub fn parse(text: &str) -> Result<Principal, String> {
        let text = text.trim();
        if text == "*" {
            return Ok(Principal::Anyone);
        }
        if let Some(group) = text.strip_prefix('@') {
            return resolve_group(group).map(Principal::Gid);
        }
        resolve_user(text).map(Principal::Uid)
    }

    fn admits(&self, peer: &PeerCredentials) -> bool {
        match *self {
            Principal::Anyone => true,
            Principal::Uid(uid) => peer.uid == uid,
            Principal::Gid(gid) => peer.in_group(gid),
        }
    }
}

impl Principal {
    /// How `info` shows it (`*`, `alice(1000)`, `@video(44)`). Looks the name up (NSS, which
    /// may sleep on a network directory): called only when a list is made, never for a client's
    /// `info` or `list`.
    fn shown(&self) -> String {
        match *self {
            Principal::Anyone => "*".to_string(),
            Principal::Uid(uid) => match nix::unistd::User::from_uid(uid.into()) {
                Ok(Some(user)) => format!("{}({uid})", user.name),
                _ => uid.to_string(),
            },
            Principal::Gid(gid) => match nix::unistd::Group::from_gid(gid.into()) {
                Ok(Some(group)) => format!("@{}({gid})", group.name),
                _ => format!("@{gid}"),
            },
        }
    }
}

/// Resolves a user name or numeric uid.
pub fn resolve_user(text: &str) -> Result<u32, String> {
    if let Ok(uid) = text.parse::<u32>() {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(text) {
        Ok(Some(user)) => Ok(user.uid.as_raw()),
        Ok(None) => Err(format!("unknown user {text:?}")),
        Err(err) => Err(format!("cannot look up user {text:?}: {err}")),
    }
}

/// Resolves a group name or numeric gid.
pub fn resolve_group(text: &str) -> Result<u32, String> {
    if let Ok(gid) = text.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(text) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(format!("unknown group {text:?}")),
        Err(err) => Err(format!("cannot look up group {text:?}: {err}")),
    }
}

/// The principals allowed one role on a channel. Root and the channel's owner are always
/// admitted; an empty list admits nobody else.
///
/// Names to show are looked up once, when the list is made (config load, an admin's `create`,
/// a restore at start-up), so that answering a client never waits on NSS. Two lists are equal
/// when they admit the same principals, whatever names were shown.
#[derive(Clone, Debug, Default)]
pub struct AccessList {
    principals: Vec<Principal>,
    shown: Vec<String>,
}

impl PartialEq for AccessList {
    fn eq(&self, other: &Self) -> bool {
        self.principals == other.principals
    }
}

impl Eq for AccessList {}

impl AccessList {
    pub fn new(principals: Vec<Principal>) -> Self {
        let shown = principals.iter().map(Principal::shown).collect();
        AccessList { principals, shown }
    }

    /// Anyone who can reach the socket.
    pub fn anyone() -> Self {
        AccessList::new(vec![Principal::Anyone])
    }

    pub fn parse_all<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        entries
            .iter()
            .map(|e| Principal::parse(e.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map(AccessList::new)
    }

    /// Appends `other`'s principals.
    pub fn extend(&mut self, other: AccessList) {
        self.principals.extend(other.principals);
        self.shown.extend(other.shown);
    }

    pub fn admits(&self, peer: &PeerCredentials) -> bool {
        self.principals.iter().any(|p| p.admits(peer))
    }

    /// The list with ids only (`*`, `1000`, `@44`): parses back to the same list without any
    /// name lookup, which is how channels are saved across restarts.
    pub fn to_specs(&self) -> Vec<String> {
        self.principals
            .iter()
            .map(|p| match *p {
                Principal::Anyone => "*".to_string(),
                Principal::Uid(uid) => uid.to_string(),
                Principal::Gid(gid) => format!("@{gid}"),
            })
            .collect()
    }

    /// The list as the wire protocol shows it (`*`, `alice(1000)`, `@video(44)`), as looked
    /// up when the list was made.
    pub fn describe(&self) -> Vec<String> {
        self.shown.clone()
    }
}

/// Who may run `create` and `drop`: root, the uid the broker itself runs as (so a per-user
/// broker is administered by its user), and members of the config's `admin_groups`.
pub fn is_admin(peer: &PeerCredentials, admin_gids: &[u32]) -> bool {
    peer.uid == 0
        || peer.uid == rustix::process::geteuid().as_raw()
        || admin_gids.iter().any(|&gid| peer.in_group(gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> PeerCredentials {
        PeerCredentials {
            pid: 1,
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn parses_principals() {
        assert_eq!(Principal::parse("*"), Ok(Principal::Anyone));
        assert_eq!(Principal::parse("1234"), Ok(Principal::Uid(1234)));
        assert_eq!(Principal::parse("@44"), Ok(Principal::Gid(44)));
        assert_eq!(Principal::parse("root"), Ok(Principal::Uid(0)));
        assert!(Principal::parse("no-such-user-xyz")
            .unwrap_err()
            .contains("unknown user"));
        assert!(Principal::parse("@no-such-group-xyz")
            .unwrap_err()
            .contains("unknown group"));
    }

    #[test]
    fn groups_include_supplementary() {
        let list = AccessList::new(vec![Principal::Gid(44)]);
        assert!(list.admits(&peer(1000, 44, &[])));
        assert!(list.admits(&peer(1000, 100, &[10, 44])));
        assert!(!list.admits(&peer(1000, 100, &[10])));
        assert!(AccessList::anyone().admits(&peer(5, 5, &[])));
        assert!(!AccessList::default().admits(&peer(5, 5, &[])));
    }
}
