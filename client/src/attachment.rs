//! What producers and consumers share: the attach handshake, the connection kept open for the
//! life of the attachment, and sleeping on an eventfd without missing a broker event.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};

use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::ring::SharedRing;
use crate::wire::{AttachInfo, Event, Request, Role};

/// How long to spin on the ring before sleeping. A wake-up through an eventfd costs tens of
/// microseconds here, so a peer that answers within this window never pays for one.
const SPIN: Duration = Duration::from_micros(30);
/// Upper bound on one sleep. Wake-ups are exact in the protocol; the bound only limits how long
/// a peer that clears our waiting flag (buggy or hostile) can stall us.
const MAX_SLEEP: Duration = Duration::from_secs(1);

pub(crate) struct Attachment {
    pub channel: String,
    pub info: AttachInfo,
    conn: Connection,
    broker_connected: bool,
    dropped: bool,
    /// Readable when the peer made progress (data for a consumer, space for a producer).
    wait_fd: OwnedFd,
    /// Written to wake the peer.
    wake_fd: OwnedFd,
}

impl Attachment {
    /// Opens a dedicated connection, attaches it and maps the ring.
    pub fn open(socket: &Path, channel: &str, role: Role) -> Result<(Attachment, SharedRing)> {
        let mut conn = Connection::connect(socket)?;
        let answer = conn.call(&Request::Attach {
            channel: channel.to_string(),
            role,
        })?;
        let info: AttachInfo = serde_json::from_value(answer.result)
            .map_err(|e| Error::Protocol(format!("unexpected attach reply: {e}")))?;
        let expected = ["ring", "data_ready", "space_ready"];
        if info.fds != expected || answer.fds.len() != expected.len() {
            return Err(Error::Protocol(format!(
                "attach reply carries {} fds named {:?}, expected {expected:?}",
                answer.fds.len(),
                info.fds
            )));
        }
        let mut fds = answer.fds.into_iter();
        let (Some(ring_fd), Some(data_ready), Some(space_ready)) =
            (fds.next(), fds.next(), fds.next())
        else {
            return Err(Error::Protocol("attach reply lost its fds".into()));
        };
        for fd in [&data_ready, &space_ready] {
            // Sleeping is poll-then-read, so a read must never block even if someone else
            // drained the counter in between.
            rustix::fs::fcntl_setfl(fd, rustix::fs::OFlags::NONBLOCK)
                .map_err(|e| Error::io("eventfd from broker", e.into()))?;
        }
        let ring = SharedRing::open(ring_fd, info.capacity).map_err(|e| Error::ring(channel, e))?;
        let (wait_fd, wake_fd) = match role {
            Role::Producer => (space_ready, data_ready),
            Role::Consumer => (data_ready, space_ready),
        };
        Ok((
            Attachment {
                channel: channel.to_string(),
                info,
                conn,
                broker_connected: true,
                dropped: false,
                wait_fd,
                wake_fd,
            },
            ring,
        ))
    }

    pub fn wait_fd(&self) -> BorrowedFd<'_> {
        self.wait_fd.as_fd()
    }

    /// Fails with `ChannelDropped` once the broker said so (in the ring or on the socket).
    pub fn check_dropped(&mut self, ring: &SharedRing) -> Result<()> {
        if !self.dropped && ring.is_dropped() {
            self.dropped = true;
        }
        if !self.dropped {
            if let Some(Event::ChannelDropped { .. }) = self.conn.take_pending_event() {
                self.dropped = true;
            }
        }
        if self.dropped {
            return Err(Error::ChannelDropped {
                channel: self.channel.clone(),
            });
        }
        Ok(())
    }

    pub fn wake_peer(&self) {
        // EAGAIN means the counter is already huge, i.e. the peer has a wake-up pending.
        let _ = rustix::io::write(&self.wake_fd, &1u64.to_ne_bytes());
    }

    /// Spins briefly until `ready()`; true if it became ready.
    pub fn spin(mut ready: impl FnMut() -> bool) -> bool {
        let start = Instant::now();
        loop {
            for _ in 0..64 {
                if ready() {
                    return true;
                }
                std::hint::spin_loop();
            }
            if start.elapsed() >= SPIN {
                return false;
            }
        }
    }

    /// Sleeps until the peer signals, the broker sends an event, or `MAX_SLEEP` passes. The
    /// caller has already set its waiting flag and re-checked the ring.
    pub fn sleep(&mut self) -> Result<()> {
        let timeout = Timespec::try_from(MAX_SLEEP).unwrap_or(Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        let (ready, broker_event) = {
            let mut fds = vec![PollFd::new(&self.wait_fd, PollFlags::IN)];
            if self.broker_connected {
                fds.push(PollFd::new(&self.conn, PollFlags::IN));
            }
            match poll(&mut fds, Some(&timeout)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(Error::io("waiting on channel eventfd", e.into())),
            }
            let broker_event = fds.get(1).is_some_and(|fd| !fd.revents().is_empty());
            (!fds[0].revents().is_empty(), broker_event)
        };
        if ready {
            let mut counter = [0u8; 8];
            let _ = rustix::io::read(&self.wait_fd, &mut counter);
        }
        if broker_event {
            match self.conn.read_event() {
                Ok(Some(Event::ChannelDropped { .. })) => self.dropped = true,
                // The broker went away (stopped or restarting). Data keeps flowing through the
                // ring without it; only new attaches need it.
                Ok(None) | Err(_) => self.broker_connected = false,
            }
        }
        Ok(())
    }
}

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket()
    }
}
