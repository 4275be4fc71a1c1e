//! Taking in connections: accepting them, reading who the peer is, and refusing it (with an
//! error it can read) when its uid's quota, the closer's backlog or the fd limit says no.

use std::io;
use std::os::fd::AsFd;

use mio::net::UnixStream;
use mio::{Interest, Token};
use shmem_broker_proto::wire::{ErrorCode, Reply};
use slog::{debug, warn};

use super::{Server, PENDING_CLOSE_PER_UID};
use crate::listener::refuse_passed_fds;
use crate::peer::PeerCredentials;
use crate::session::{Session, SCM_MAX_FD};

/// Fds the broker holds besides clients and channels (epoll, listener, signal pipe, std streams).
const FIXED_FDS: usize = 16;
/// Fds kept free for attaches in flight, the fd store's metadata memfds, and one `recvmsg`
/// full of fds a client sends uninvited on a kernel without `SO_PASSRIGHTS` (if they did not
/// fit the fd table, the kernel would drop the rest in this thread: see `closer`).
const FD_RESERVE: usize = 64 + SCM_MAX_FD;

/// Fds kept for clients when channels are created: a broker whose channels took every fd could
/// not let anyone in to drop them.
const CLIENT_ROOM: usize = 64;
/// Fds a one-to-one channel holds at most: the ring and ack memfds and the two eventfds (made
/// at its first attach).
const FDS_PER_CHANNEL: usize = 4;

/// Fds the broker may come to hold with `max_clients` connections and `max_channels`
/// one-to-one channels, each attached once: what RLIMIT_NOFILE should allow so that these
/// quotas, not the fd limit, are what refuses clients. (Fan-out channels hold more: a ring per
/// producer and consumer pair, which their `max_ring_bytes` budget bounds.)
pub fn fds_wanted(max_clients: usize, max_channels: usize) -> usize {
    FIXED_FDS
        .saturating_add(FD_RESERVE)
        .saturating_add(CLIENT_ROOM)
        .saturating_add(max_clients)
        .saturating_add(max_channels.saturating_mul(FDS_PER_CHANNEL))
}

/// RLIMIT_NOFILE as it is now (the launcher raised it to the hard limit).
pub(super) fn fd_limit() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    limit
        .current
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

impl Server {
    /// Accepts every connection waiting in the backlog.
    pub(super) fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(stream),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    // EMFILE/ENFILE: the connection stays in the backlog; try again when a
                    // client leaves and frees an fd, instead of spinning on it now.
                    warn!(self.log, "cannot accept connection"; "error" => %err);
                    self.accept_paused = true;
                    return;
                }
            }
        }
    }

    fn admit(&mut self, mut stream: UnixStream) {
        // Accepted sockets inherit this from the listener (Linux 6.16+); set it again in case
        // the listener could not take it, or the client connected before it did. Where it
        // fails, fds already queued or sent later are handed to the closer like on older
        // kernels; where it holds, the connection may be closed on this thread once nothing
        // is left unread in it (`Session::holds_no_fds`).
        let refuses_fds = matches!(refuse_passed_fds(stream.as_fd()), Ok(true));
        let peer = match PeerCredentials::of(stream.as_fd()) {
            Ok(peer) => peer,
            Err(err) => {
                warn!(self.log, "cannot read peer credentials; closing"; "error" => %err);
                self.closer.discard(u32::MAX, 1, stream);
                return;
            }
        };
        let id = self.next_session;
        self.next_session += 1;
        if let Err(message) = self.admit_check(peer.uid) {
            warn!(self.log, "client refused"; "peer_pid" => peer.pid, "peer_uid" => peer.uid,
                "reason" => &message);
            let mut session = Session::new(id, stream, peer);
            session.queue_reply(
                0,
                &Reply::failure(ErrorCode::LimitReached, message),
                Vec::new(),
            );
            let _ = session.flush(); // best effort; the socket buffer of a new connection is empty
            self.closer
                .discard(session.peer.uid, session.held_fds(), session);
            return;
        }
        if let Err(err) = self.poll.registry().register(
            &mut stream,
            Token(id),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!(self.log, "cannot watch connection"; "error" => %err);
            self.closer.discard(peer.uid, 1, stream);
            return;
        }
        debug!(self.log, "client connected"; "session" => id, "peer_pid" => peer.pid, "peer_uid" => peer.uid);
        let mut session = Session::new(id, stream, peer);
        session.refuses_fds = refuses_fds;
        self.sessions.insert(id, session);
        self.drive(id);
    }

    /// Quotas and the fd limit, checked before a connection is served.
    fn admit_check(&self, uid: u32) -> Result<(), String> {
        self.registry
            .quotas()
            .admit_client(uid, self.clients_of(uid), self.sessions.len())?;
        let closing = self.closer.pending_of(uid);
        if closing >= PENDING_CLOSE_PER_UID {
            return Err(format!(
                "{closing} file descriptors from uid {uid}'s earlier connections are still being closed (limit {PENDING_CLOSE_PER_UID}); try again later"
            ));
        }
        let in_use = self.fds_in_use();
        if in_use.saturating_add(FD_RESERVE) >= self.fd_limit {
            return Err(format!(
                "broker is out of file descriptors ({in_use} of {} in use); try again later",
                self.fd_limit
            ));
        }
        Ok(())
    }

    /// Each client holds one fd, each channel up to four (more for fan-out), an attach three
    /// more for a moment; fds handed to the closer count until they are really closed.
    fn fds_in_use(&self) -> usize {
        FIXED_FDS
            .saturating_add(self.sessions.len())
            .saturating_add(self.registry.open_fds())
            .saturating_add(self.closer.pending())
    }

    /// Whether one more channel fits the fd limit with room left for [`CLIENT_ROOM`] more
    /// clients: channels must not use up the fds the broker needs to let anyone in (to list
    /// or drop channels).
    pub(super) fn channel_fits(&self) -> Result<(), String> {
        let in_use = self.fds_in_use();
        let wanted = in_use
            .saturating_add(FDS_PER_CHANNEL)
            .saturating_add(FD_RESERVE)
            .saturating_add(CLIENT_ROOM);
        if wanted >= self.fd_limit {
            return Err(format!(
                "broker is out of file descriptors for another channel ({in_use} of {} in use, \
                 {CLIENT_ROOM} kept for clients); drop channels or raise its RLIMIT_NOFILE",
                self.fd_limit
            ));
        }
        Ok(())
    }
}
