//! What producers and consumers share: the attach handshake, the connection kept open for the
//! life of the attachment, re-attaching after a broker restart, and sleeping on an eventfd
//! without missing a broker event.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};

use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::ring::SharedRing;
use crate::wire::{AttachInfo, ErrorCode, Event, Request, Role};

/// How long to spin on the ring before sleeping. A wake-up through an eventfd costs tens of
/// microseconds here, so a peer that answers within this window never pays for one.
const SPIN: Duration = Duration::from_micros(30);
/// Upper bound on one sleep. Wake-ups are exact in the protocol; the bound only limits how long
/// a peer that clears our waiting flag (buggy or hostile) can stall us.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// How often a reconnecting endpoint tries the broker again while it is away.
const RECONNECT_INTERVAL: Duration = Duration::from_millis(100);
/// An endpoint that never sleeps still looks at its broker connection (one non-blocking poll)
/// this often, checking the clock only every `CALLS_PER_CLOCK_CHECK` calls to stay off the
/// per-message path.
const BROKER_CHECK_INTERVAL: Duration = Duration::from_millis(100);
const CALLS_PER_CLOCK_CHECK: u32 = 1024;
/// Longest a re-attach may hold up a send or receive while the broker is starting.
const REATTACH_PATIENCE: Duration = Duration::from_millis(250);

/// How an endpoint attaches; built with [`Client::attach`](crate::Client::attach).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct AttachOptions {
    pub reconnect: bool,
    /// The caller spins on `try_*` and never waits on `ready_fd()`: a would-block does not
    /// ask the peer for a wake-up (which would cost it a syscall per message).
    pub busy_poll: bool,
}

pub(crate) struct Attachment {
    pub channel: String,
    pub options: AttachOptions,
    pub info: AttachInfo,
    socket: PathBuf,
    role: Role,
    conn: Connection,
    broker_connected: bool,
    last_reconnect: Option<Instant>,
    calls_since_clock_check: u32,
    last_broker_check: Instant,
    /// Device and inode of the ring memfd, to recognise the same ring after a broker restart.
    ring_identity: (u64, u64),
    /// Why this endpoint cannot go on, found while re-attaching.
    failed: Option<String>,
    dropped: bool,
    /// Readable when the peer made progress (data for a consumer, space for a producer).
    wait_fd: OwnedFd,
    /// Written to wake the peer.
    wake_fd: OwnedFd,
}

/// What one attach request brought back.
struct Grant {
    conn: Connection,
    info: AttachInfo,
    ring_fd: OwnedFd,
    data_ready: OwnedFd,
    space_ready: OwnedFd,
}

impl Grant {
    /// Attaches over a new connection; `patience` bounds the wait for the broker's answer.
    fn request(
        socket: &Path,
        channel: &str,
        role: Role,
        patience: Option<Duration>,
    ) -> Result<Grant> {
        let mut conn = Connection::connect(socket)?;
        conn.set_timeout(patience)?;
        let answer = conn.call(&Request::Attach {
            channel: channel.to_string(),
            role,
        })?;
        let info: AttachInfo = answer.decode()?;
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
        Ok(Grant {
            conn,
            info,
            ring_fd,
            data_ready,
            space_ready,
        })
    }
}

fn identity(fd: &OwnedFd) -> Result<(u64, u64)> {
    let stat = rustix::fs::fstat(fd).map_err(|e| Error::io("inspecting ring fd", e.into()))?;
    Ok((stat.st_dev, stat.st_ino))
}

impl Attachment {
    /// Opens a dedicated connection, attaches it and maps the ring.
    pub fn open(
        socket: &Path,
        channel: &str,
        role: Role,
        options: AttachOptions,
    ) -> Result<(Attachment, SharedRing)> {
        let grant = Grant::request(socket, channel, role, None)?;
        for fd in [&grant.data_ready, &grant.space_ready] {
            // Sleeping is poll-then-read, so a read must never block even if someone else
            // drained the counter in between.
            rustix::fs::fcntl_setfl(fd, rustix::fs::OFlags::NONBLOCK)
                .map_err(|e| Error::io("eventfd from broker", e.into()))?;
        }
        let ring_identity = identity(&grant.ring_fd)?;
        let ring = SharedRing::open(grant.ring_fd, grant.info.capacity)
            .map_err(|e| Error::ring(channel, e))?;
        let (wait_fd, wake_fd) = match role {
            Role::Producer => (grant.space_ready, grant.data_ready),
            Role::Consumer => (grant.data_ready, grant.space_ready),
        };
        let attachment = Attachment {
            channel: channel.to_string(),
            info: grant.info,
            socket: socket.to_path_buf(),
            role,
            options,
            conn: grant.conn,
            broker_connected: true,
            last_reconnect: None,
            calls_since_clock_check: 0,
            last_broker_check: Instant::now(),
            ring_identity,
            failed: None,
            dropped: false,
            wait_fd,
            wake_fd,
        };
        Ok((attachment, ring))
    }

    pub fn wait_fd(&self) -> BorrowedFd<'_> {
        self.wait_fd.as_fd()
    }

    pub fn broker_connected(&self) -> bool {
        self.broker_connected
    }

    /// With `reconnect`, re-attaches after the broker went away (at most every
    /// `RECONNECT_INTERVAL`), so the endpoint holds its slot again once the broker is back. The
    /// ring must be the very same memfd (kept in systemd's fd store across the restart); data
    /// keeps flowing through the mapping we already have meanwhile.
    fn reattach_if_due(&mut self) {
        if self.broker_connected || !self.options.reconnect || self.failed.is_some() {
            return;
        }
        if self
            .last_reconnect
            .is_some_and(|t| t.elapsed() < RECONNECT_INTERVAL)
        {
            return;
        }
        self.last_reconnect = Some(Instant::now());
        // A broker that is still starting must not stall the data path for long.
        match Grant::request(
            &self.socket,
            &self.channel,
            self.role,
            Some(REATTACH_PATIENCE),
        ) {
            Ok(mut grant) => match identity(&grant.ring_fd) {
                Ok(id) if id == self.ring_identity && grant.conn.set_timeout(None).is_ok() => {
                    self.conn = grant.conn;
                    self.broker_connected = true;
                }
                _ => {
                    self.failed = Some(
                        "the broker came back with a different ring for this channel; \
                         the old ring's data cannot be reached through it"
                            .into(),
                    )
                }
            },
            // Not back yet: try again later.
            Err(Error::BrokerNotRunning { .. }) | Err(Error::Io { .. }) => {}
            Err(Error::Broker {
                code: ErrorCode::NoSuchChannel,
                ..
            }) => self.dropped = true,
            Err(other) => self.failed = Some(format!("cannot re-attach: {other}")),
        }
    }

    /// Called before every ring operation: now and then looks at the broker connection,
    /// re-attaches if that is due, and fails with `ChannelDropped` once the broker said so (in
    /// the ring or on the socket), or with the reason a re-attach failed.
    pub fn ensure_usable(&mut self, ring: &SharedRing) -> Result<()> {
        self.check_broker_now_and_then();
        self.reattach_if_due();
        if let Some(reason) = &self.failed {
            return Err(Error::Reattach {
                channel: self.channel.clone(),
                reason: reason.clone(),
            });
        }
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

    /// Notices a broker event or hang-up even if this endpoint is always busy and never
    /// sleeps (where the connection is watched anyway).
    fn check_broker_now_and_then(&mut self) {
        if !self.broker_connected {
            return;
        }
        self.calls_since_clock_check += 1;
        if self.calls_since_clock_check < CALLS_PER_CLOCK_CHECK {
            return;
        }
        self.calls_since_clock_check = 0;
        if self.last_broker_check.elapsed() < BROKER_CHECK_INTERVAL {
            return;
        }
        self.last_broker_check = Instant::now();
        let mut fds = [PollFd::new(&self.conn, PollFlags::IN)];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        if matches!(poll(&mut fds, Some(&zero)), Ok(n) if n > 0) {
            self.on_broker_readable();
        }
    }

    fn on_broker_readable(&mut self) {
        match self.conn.read_event() {
            Ok(Some(Event::ChannelDropped { .. })) => self.dropped = true,
            // The broker went away (stopped or restarting). Data keeps flowing through the
            // ring without it; only attaching needs it.
            Ok(None) | Err(_) => self.broker_connected = false,
        }
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

    /// Sleeps until the peer signals, the broker sends an event, or the sleep bound passes. The
    /// caller has already set its waiting flag and re-checked the ring.
    pub fn sleep(&mut self) -> Result<()> {
        let longest = if !self.broker_connected && self.options.reconnect {
            RECONNECT_INTERVAL
        } else {
            MAX_SLEEP
        };
        let timeout = Timespec::try_from(longest).unwrap_or(Timespec {
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
            self.on_broker_readable();
        }
        Ok(())
    }
}

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket()
    }
}
