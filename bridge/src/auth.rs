//! Authentication of what the bridges say to each other, with a shared key (`--key-file`,
//! config `key_file`): every item and every ack carries an HMAC-SHA256 tag over the key
//! expression it was published on, its header and (items) its payload. Without the key, anyone
//! who can publish on the Zenoh key could inject messages, or forge positions: an item far ahead
//! marked "oldest" would make the importer store it and then drop every real item as a
//! duplicate; an ack claiming everything stored would make the exporter release what no
//! importer holds. With the key, such samples fail the check and are dropped, counted, and
//! reported (the first at once, then at most one summary every [`REPORT_EVERY`]); nothing in
//! them is acted on.
//!
//! What it does not do: encrypt (use Zenoh's TLS transport, or a network you trust, for
//! confidentiality), or stop a peer that can publish from flooding the key (it costs the
//! importer a MAC check per sample). A recorded genuine item can be sent again: it carries the
//! positions of its own stream, so it is a duplicate, or exactly the item that was due; but an
//! item recorded before the exported channel was made anew (positions restart) could be
//! replayed into the new stream: give a new key file when re-creating an exported channel.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use slog::{warn, Logger};

/// Bytes of the tag appended to an item's attachment or an ack.
pub const TAG_LEN: usize = 32;
/// Least key length accepted (bytes of the file).
const MIN_KEY: usize = 16;
const MAX_KEY: usize = 4096;
/// Rejected samples are summed up at most this often in the log.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

/// The shared key. Its `Debug` does not show it.
pub struct Auth {
    key: Vec<u8>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth { key: <hidden> }")
    }
}

/// What a tag covers: which kind of sample (so an ack cannot pass for an item), the key
/// expression it travels on (so a sample cannot be moved to another export or importer).
#[derive(Clone, Copy)]
pub enum Domain {
    Item,
    Ack,
}

impl Auth {
    /// Reads the key file: 16 to 4096 bytes, used as they are (`head -c 32 /dev/urandom >
    /// FILE`), and readable by its owner only (a key others can read is no key).
    pub fn load(path: &Path) -> io::Result<Auth> {
        let meta = fs::metadata(path)?;
        if meta.mode() & 0o077 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{}: the key file is open to others (mode {:o}): chmod 600 it",
                    path.display(),
                    meta.mode() & 0o777
                ),
            ));
        }
        let key = fs::read(path)?;
        if !(MIN_KEY..=MAX_KEY).contains(&key.len()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: a key of {} bytes; give {MIN_KEY} to {MAX_KEY} (e.g. head -c 32 /dev/urandom)",
                    path.display(),
                    key.len()
                ),
            ));
        }
        Ok(Auth { key })
    }

    /// The MAC over a sample; its payload may come in parts (a Zenoh payload received in
    /// fragments), taken in order as if they were one slice.
    fn mac(
        &self,
        domain: Domain,
        key_expr: &str,
        header: &[u8],
        payload: &[&[u8]],
    ) -> Hmac<Sha256> {
        // HMAC takes keys of any length: this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(match domain {
            Domain::Item => b"shmem-bridge item v1\0",
            Domain::Ack => b"shmem-bridge ack v1\0\0",
        });
        mac.update(&(key_expr.len() as u64).to_le_bytes());
        mac.update(key_expr.as_bytes());
        mac.update(&(header.len() as u64).to_le_bytes());
        mac.update(header);
        for part in payload {
            mac.update(part);
        }
        mac
    }

    /// The tag of a sample.
    pub fn tag(&self, domain: Domain, key_expr: &str, header: &[u8], payload: &[&[u8]]) -> Vec<u8> {
        self.mac(domain, key_expr, header, payload)
            .finalize()
            .into_bytes()
            .to_vec()
    }

    /// Whether `tag` is the sample's (compared in constant time).
    pub fn verify(
        &self,
        domain: Domain,
        key_expr: &str,
        header: &[u8],
        payload: &[&[u8]],
        tag: &[u8],
    ) -> bool {
        self.mac(domain, key_expr, header, payload)
            .verify_slice(tag)
            .is_ok()
    }
}

/// Counts samples dropped for failing authentication and logs them without flooding: the
/// first at once, then a summary at most every [`REPORT_EVERY`].
pub struct Rejects {
    what: &'static str,
    state: Mutex<(u64, Option<Instant>)>,
}

impl Rejects {
    pub fn new(what: &'static str) -> Rejects {
        Rejects {
            what,
            state: Mutex::new((0, None)),
        }
    }

    pub fn add(&self, log: &Logger, why: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.0 = state.0.saturating_add(1);
        if state.1.map_or(true, |at| at.elapsed() >= REPORT_EVERY) {
            warn!(log, "dropped samples that failed authentication (forged, or a wrong key file)";
                  "what" => self.what, "count" => state.0, "last_reason" => why);
            *state = (0, Some(Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_bind_key_domain_header_and_payload() {
        let auth = Auth { key: vec![7; 32] };
        let tag = auth.tag(Domain::Item, "k", b"head", &[b"body"]);
        assert!(auth.verify(Domain::Item, "k", b"head", &[b"body"], &tag));
        assert!(!auth.verify(Domain::Ack, "k", b"head", &[b"body"], &tag));
        assert!(!auth.verify(Domain::Item, "k2", b"head", &[b"body"], &tag));
        assert!(!auth.verify(Domain::Item, "k", b"heae", &[b"body"], &tag));
        assert!(!auth.verify(Domain::Item, "k", b"head", &[b"bodz"], &tag));
        assert!(!auth.verify(Domain::Item, "k", b"head", &[b"body"], &tag[..31]));
        // The payload in parts is the same payload.
        assert!(auth.verify(Domain::Item, "k", b"head", &[b"bo", b"", b"dy"], &tag));
        let other = Auth { key: vec![8; 32] };
        assert!(!other.verify(Domain::Item, "k", b"head", &[b"body"], &tag));
    }

    #[test]
    fn key_files_open_to_others_or_too_short_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("shmem-bridge-auth-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("key");
        fs::write(&path, [1u8; 32]).expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(Auth::load(&path).is_err());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(Auth::load(&path).is_ok());
        fs::write(&path, [1u8; 8]).expect("write");
        assert!(Auth::load(&path).is_err());
        fs::remove_dir_all(&dir).expect("clean up");
    }
}
