//! Kernel-reported credentials of a connected peer (SO_PEERCRED and SO_PEERGROUPS).
//!
//! Both are read once, when the connection is accepted. They describe the process that called
//! `connect()`, cannot be forged by the peer, and (unlike a group lookup by user name) cannot
//! be raced by editing /etc/group after the fact.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCredentials {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups at connect time.
    pub groups: Vec<u32>,
}

impl PeerCredentials {
    pub fn of(socket: BorrowedFd<'_>) -> std::io::Result<Self> {
        let cred = peer_cred(socket)?;
        Ok(PeerCredentials {
            pid: cred.pid as u32,
            uid: cred.uid,
            gid: cred.gid,
            groups: peer_groups(socket)?,
        })
    }

    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// SO_PEERCRED. Not rustix's `socket_peercred`: its `UCred::pid` is a non-zero `Pid`, but the
/// kernel reports pid 0 for a peer outside the broker's pid namespace (a client on the host
/// talking to a broker in a container), which made that call undefined behaviour (seen as an
/// `Err` of "os error 0" and the connection closed). Such a peer is served, with pid 0.
fn peer_cred(socket: BorrowedFd<'_>) -> std::io::Result<libc::ucred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a live, writable `ucred` of exactly `len` bytes, the size SO_PEERCRED
    // writes; every bit pattern is a valid `ucred`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::addr_of_mut!(cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<libc::ucred>() {
        return Err(std::io::Error::other(format!(
            "SO_PEERCRED returned {len} bytes"
        )));
    }
    Ok(cred)
}

/// SO_PEERGROUPS (Linux 4.13+). rustix and nix do not wrap it.
fn peer_groups(socket: BorrowedFd<'_>) -> std::io::Result<Vec<u32>> {
    // NGROUPS_MAX is 65536 on Linux; start small and grow to what the kernel asks for.
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: `groups` is a live, writable buffer of exactly `len` bytes; the kernel writes
        // at most `len` bytes into it and reports the size it needs in `len`. Nothing the peer
        // controls reaches this call except the group list the kernel itself recorded.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_fd().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ERANGE) && count > groups.len() {
            groups.resize(count, 0);
            continue;
        }
        return Err(err);
    }
}
