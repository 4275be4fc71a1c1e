//! An endpoint's attachment to the broker: the connection kept open for the life of the
//! attachment, the broker's events on it, re-attaching after a broker restart, `ready_fd()`,
//! and sleeping on the endpoint's eventfd without missing a broker event.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::{epoll, poll, PollFd, PollFlags, Timespec};
use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
};

use crate::connection::{Connection, EventWithFds};
use crate::error::{Error, Result};
use crate::grant::{identity, lane_from_event, Grant, Lane, Opened, Rings};
use crate::lanes::SOLE_PEER;
use crate::wire::{AttachInfo, ErrorCode, Event, LostEnd, Request, Role};

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
#[derive(Clone, Debug, Default)]
pub(crate) struct AttachOptions {
    pub reconnect: bool,
    /// The caller spins on `try_*` and never waits on `ready_fd()`: a would-block does not
    /// ask the peer for a wake-up (which would cost it a syscall per message).
    pub busy_poll: bool,
    /// A durable consumer's name.
    pub name: Option<String>,
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
    /// Device and inode of a one-to-one channel's ring memfd, to recognise the same ring after
    /// a broker restart. `None` for fan-out endpoints, which do not re-attach.
    ring_identity: Option<(u64, u64)>,
    /// Why this endpoint cannot go on, found while re-attaching.
    failed: Option<String>,
    dropped: bool,
    /// Why the broker detached this endpoint, if it did.
    disconnected: Option<String>,
    /// Readable when a peer made progress (data for a consumer, space for a producer).
    wait_fd: OwnedFd,
    /// Lane changes read from the broker, not yet applied by the endpoint.
    lane_events: Vec<EventWithFds>,
    /// What `ready_fd()` hands out: an epoll instance watching `wait_fd`, the broker
    /// connection while it is up (events, hang-up) and `retry_timer` while it is down, so it
    /// turns readable for everything that can change what a `try_*` call returns.
    ready: OwnedFd,
    /// While the broker is away and the endpoint reconnects: fires every
    /// `RECONNECT_INTERVAL`, so a caller parked on `ready_fd()` comes back to re-attach.
    retry_timer: Option<OwnedFd>,
    /// Consumers: producers that went away without end-of-stream, as the broker told
    /// (producer id, [`SOLE_PEER`] in a one-to-one channel; pid; position its stream stopped
    /// at in our ring from it; bytes; and messages missed before a mark that did not fit if
    /// the producer did close).
    pub producers_gone: Vec<(u32, u32, u64, u64, Option<u64>)>,
    /// Consumers: per producer id, the highest ack-page count a `producer_gone` event read so
    /// far carried (`announced`), for the lane to take (`take_gone_announced`).
    gone_announced: Vec<(u32, u64)>,
    /// Consumers: a one-shot timer in `ready`'s watch list, set while a lane waits for an
    /// announced `producer_gone` event, so a caller parked on `ready_fd()` comes back when
    /// that wait's bound passes even if the event never comes. Made the first time it is needed.
    gone_timer: Option<OwnedFd>,
}

impl Attachment {
    /// Opens a dedicated connection, attaches it and maps the ring.
    pub fn open(
        socket: &Path,
        channel: &str,
        role: Role,
        options: AttachOptions,
    ) -> Result<(Attachment, Rings)> {
        let grant = Grant::request(socket, channel, role, options.name.as_deref(), None)?;
        let Opened {
            conn,
            info,
            rings,
            ring_identity,
            wait_fd,
        } = grant.open(channel, role)?;
        let ready = epoll::create(epoll::CreateFlags::CLOEXEC)
            .map_err(|e| Error::io("creating the endpoint's epoll instance", e.into()))?;
        watch(&ready, &wait_fd)?;
        watch(&ready, &conn)?;
        let attachment = Attachment {
            channel: channel.to_string(),
            info,
            socket: socket.to_path_buf(),
            role,
            options,
            conn,
            broker_connected: true,
            last_reconnect: None,
            calls_since_clock_check: 0,
            last_broker_check: Instant::now(),
            ring_identity,
            failed: None,
            dropped: false,
            disconnected: None,
            wait_fd,
            lane_events: Vec::new(),
            ready,
            retry_timer: None,
            producers_gone: Vec::new(),
            gone_announced: Vec::new(),
            gone_timer: None,
        };
        Ok((attachment, rings))
    }

    /// Turns a lane event's fds into a lane.
    pub fn open_lane(&self, peer: u32, fds: Vec<OwnedFd>) -> Result<Lane> {
        lane_from_event(&self.channel, self.info.capacity, peer, fds)
    }

    /// Lane events read from the connection and not applied yet (one that came late).
    #[inline]
    pub fn has_lane_events(&self) -> bool {
        !self.lane_events.is_empty()
    }

    /// The lane changes read from the broker so far, to apply now. Never waits: the broker
    /// writes a lane event to every attached peer before it answers the attach or detach behind
    /// it, so an event behind a control-page bump is normally here already; one that comes
    /// later makes the connection (and so `ready_fd()`) readable and is applied then.
    pub fn take_lane_events(&mut self) -> Vec<EventWithFds> {
        self.read_broker_events();
        std::mem::take(&mut self.lane_events)
    }

    /// Reads every event the broker has sent so far without waiting, and takes the retry
    /// timer's ticks. True if something came that a `try_*` call must look at before it
    /// reports would-block (an event, the broker's hang-up, time to re-attach). Called on the
    /// would-block path only, so `ready_fd()` is quiet again when `try_*` reports would-block.
    pub fn read_broker_events(&mut self) -> bool {
        let mut news = !self.lane_events.is_empty();
        for timer in [&self.retry_timer, &self.gone_timer].into_iter().flatten() {
            let mut ticks = [0u8; 8];
            news |= rustix::io::read(timer, &mut ticks).is_ok();
        }
        while self.broker_connected {
            if let Some(event) = self.conn.take_pending_event() {
                self.on_event(event);
                news = true;
                continue;
            }
            let mut fds = [PollFd::new(&self.conn, PollFlags::IN)];
            let zero = Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            if !matches!(poll(&mut fds, Some(&zero)), Ok(n) if n > 0) {
                break;
            }
            self.on_broker_readable();
            news = true;
        }
        news
    }

    /// Whether the broker connection was up when it was last read (no syscall; what
    /// `read_broker_events` found).
    pub fn broker_was_connected(&self) -> bool {
        self.broker_connected
    }

    /// The highest ack-page count carried by the `producer_gone` events read for `producer`
    /// since the last call (0 if none), forgetting the entries of producers not in `keep`.
    pub fn take_gone_announced(&mut self, producer: u32, keep: impl Fn(u32) -> bool) -> u64 {
        let mut highest = 0;
        self.gone_announced.retain(|&(id, announced)| {
            if id == producer {
                highest = announced;
                return false;
            }
            keep(id)
        });
        highest
    }

    /// Makes `ready_fd()` readable at `deadline` (once), for a lane that waits for an
    /// announced event until then. Best effort: without the timer a caller parked on
    /// `ready_fd()` is woken by the event, or by any other change, as before.
    pub fn wake_ready_at(&mut self, deadline: Instant) {
        if self.gone_timer.is_none() {
            let Ok(timer) = timerfd_create(
                TimerfdClockId::Monotonic,
                TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
            ) else {
                return;
            };
            if watch(&self.ready, &timer).is_err() {
                return;
            }
            self.gone_timer = Some(timer);
        }
        let Some(timer) = &self.gone_timer else {
            return;
        };
        // At least a nanosecond: an all-zero value would disarm the timer instead.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1));
        let at = Timespec::try_from(left).unwrap_or(Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let _ = timerfd_settime(
            timer,
            TimerfdTimerFlags::empty(),
            &Itimerspec {
                it_interval: zero,
                it_value: at,
            },
        );
    }

    /// The fd `ready_fd()` returns (see `ready`).
    pub fn ready_fd(&self) -> BorrowedFd<'_> {
        self.ready.as_fd()
    }

    /// The flag is brought up to date when the connection is read, which an endpoint that
    /// never waits may not do for a while; a hang-up not read yet is seen here without
    /// reading (`POLLRDHUP`), so the answer holds at the time of the call.
    pub fn broker_connected(&self) -> bool {
        if !self.broker_connected {
            return false;
        }
        let mut fds = [PollFd::new(&self.conn, PollFlags::RDHUP)];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let hung_up = matches!(poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
            && fds[0]
                .revents()
                .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR);
        !hung_up
    }

    /// With `reconnect`, re-attaches after the broker went away (at most every
    /// `RECONNECT_INTERVAL`), so the endpoint holds its slot again once the broker is back. The
    /// ring must be the very same memfd (kept in systemd's fd store across the restart); data
    /// keeps flowing through the mapping we already have meanwhile.
    fn reattach_if_due(&mut self) {
        if self.broker_connected || !self.options.reconnect || self.failed.is_some() {
            return;
        }
        if self.ring_identity.is_none() {
            // Fan-out endpoints hold their peers' rings and a control page the restarted broker
            // makes afresh; their slot cannot be claimed back safely.
            self.failed = Some(
                "the broker restarted; endpoints of channels with several producers or \
                 consumers do not re-attach by themselves: attach again (a durable consumer \
                 resumes where it stopped)"
                    .into(),
            );
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
            self.options.name.as_deref(),
            Some(REATTACH_PATIENCE),
        ) {
            Ok(mut grant) => match grant.fds.first().map(identity) {
                Some(Ok(id))
                    if Some(id) == self.ring_identity && grant.conn.set_timeout(None).is_ok() =>
                {
                    self.conn = grant.conn;
                    self.broker_connected = true;
                    self.retry_timer = None;
                    if let Err(e) = watch(&self.ready, &self.conn) {
                        self.failed = Some(format!("cannot watch the broker connection: {e}"));
                    }
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
    /// re-attaches if that is due, and fails with `ChannelDropped` once the broker said so on
    /// the socket, or with the reason a re-attach failed.
    ///
    /// Inlined with its common case up front (connected, no look at the broker due, nothing
    /// to report: a counter and four loads), which is the same as the full walk below would
    /// find: it runs once per message on each side.
    #[inline(always)]
    pub fn ensure_usable(&mut self) -> Result<()> {
        if self.broker_connected
            && self.calls_since_clock_check + 1 < CALLS_PER_CLOCK_CHECK
            && self.failed.is_none()
            && !self.conn.has_pending_event()
            && self.disconnected.is_none()
            && !self.dropped
        {
            self.calls_since_clock_check += 1;
            return Ok(());
        }
        self.ensure_usable_walk()
    }

    #[inline(never)]
    fn ensure_usable_walk(&mut self) -> Result<()> {
        self.check_broker_now_and_then();
        self.reattach_if_due();
        if let Some(reason) = &self.failed {
            return Err(Error::Reattach {
                channel: self.channel.clone(),
                reason: reason.clone(),
            });
        }
        while let Some(event) = self.conn.take_pending_event() {
            self.on_event(event);
        }
        if let Some(reason) = &self.disconnected {
            return Err(Error::Disconnected {
                channel: self.channel.clone(),
                reason: reason.clone(),
            });
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
            Ok(Some(event)) => self.on_event(event),
            // The broker went away (stopped or restarting). Data keeps flowing through the
            // ring without it; only attaching needs it.
            Ok(None) | Err(_) => self.lost_broker(),
        }
    }

    /// The broker connection is gone: it leaves `ready_fd()`'s watch list (a hung-up socket
    /// is readable for ever, which would make an epoll loop spin), and an endpoint that
    /// re-attaches gets a timer there instead, so a caller parked on `ready_fd()` comes back
    /// to re-attach (or to learn that it cannot).
    fn lost_broker(&mut self) {
        if !self.broker_connected {
            return;
        }
        self.broker_connected = false;
        let _ = epoll::delete(&self.ready, &self.conn);
        if self.options.reconnect {
            match retry_timer() {
                Ok(timer) => match watch(&self.ready, &timer) {
                    Ok(()) => self.retry_timer = Some(timer),
                    Err(e) => self.failed = Some(format!("cannot watch the retry timer: {e}")),
                },
                Err(e) => self.failed = Some(format!("cannot make the retry timer: {e}")),
            }
        }
    }

    fn on_event(&mut self, (event, fds): EventWithFds) {
        match event {
            Event::ChannelDropped { .. } => self.dropped = true,
            Event::Disconnected { reason, .. } => self.disconnected = Some(reason),
            Event::ProducerGone {
                pid,
                position,
                bytes,
                producer,
                end_lost,
                announced,
                ..
            } => {
                // A one-to-one channel's event names no producer: it is its one lane's.
                let producer = producer.unwrap_or(SOLE_PEER);
                // One entry per producer that went away, in the order they went: several
                // producers in turn on the same lane (a one-to-one channel's, or a fan-out
                // slot taken over) each get theirs. The same death told again (a one-to-one
                // consumer re-attaching after a broker restart) is one.
                let gone = (producer, pid, position, bytes, end_lost);
                if !self.producers_gone.contains(&gone) {
                    self.producers_gone.push(gone);
                }
                if let Some(announced) = announced {
                    match self.gone_announced.iter_mut().find(|g| g.0 == producer) {
                        Some(entry) => entry.1 = entry.1.max(announced),
                        None => self.gone_announced.push((producer, announced)),
                    }
                }
            }
            // Only a connection that asked to monitor gets these.
            Event::Monitor(_) | Event::MonitorDropped { .. } => {}
            lane @ (Event::LaneAdded { .. } | Event::LaneRemoved { .. }) => {
                self.lane_events.push((lane, fds))
            }
        }
    }

    /// Tells the broker which consumers' rings had no room for this producer's end-of-stream
    /// mark. Best effort: a broker that is away or older only means those consumers hear that
    /// the producer went away instead.
    pub fn tell_end_lost(&mut self, lost: Vec<LostEnd>) {
        if self.broker_connected {
            let _ = self.conn.call(&Request::EndLost { lost });
        }
    }

    /// Empties the wait eventfd. Called before every waiting flag is set (never after, which
    /// could swallow the wake-up for that very flag): a wake-up already taken must not leave
    /// `ready_fd()` readable, or an epoll loop would spin, and the read stays off the wake-up
    /// path, where it would cost a syscall between the peer's signal and the data.
    ///
    /// The eventfd is a file description shared with the broker and the peers, any of which
    /// can clear its `O_NONBLOCK` (`fcntl` acts on every copy): the read asks for no waiting
    /// itself (`RWF_NOWAIT`, which eventfds honour since Linux 5.12), so a hostile peer cannot
    /// make a `try_*` call block here. On older kernels it reads only after `poll` said there
    /// is something to read (which a peer reading the counter in between could still defeat).
    pub fn drain_wakeups(&self) {
        let mut counter = [0u8; 8];
        let mut bufs = [std::io::IoSliceMut::new(&mut counter)];
        // Offset -1 (u64::MAX): the file's own position, as read(2); an eventfd has none.
        match rustix::io::preadv2(
            &self.wait_fd,
            &mut bufs,
            u64::MAX,
            rustix::io::ReadWriteFlags::NOWAIT,
        ) {
            Ok(_) | Err(rustix::io::Errno::AGAIN) => {}
            Err(_) => {
                let mut fds = [PollFd::new(&self.wait_fd, PollFlags::IN)];
                let zero = Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                if matches!(poll(&mut fds, Some(&zero)), Ok(n) if n > 0) {
                    let _ = rustix::io::read(&self.wait_fd, &mut counter);
                }
            }
        }
    }

    /// Sleeps until a peer signals, the broker sends an event, or the sleep bound passes. The
    /// caller (`Lanes::wait`, the one wait routine) has drained the eventfd, then set its
    /// waiting flag(s) and re-checked the ring(s).
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
        let broker_event = {
            let mut fds = vec![PollFd::new(&self.wait_fd, PollFlags::IN)];
            if self.broker_connected {
                fds.push(PollFd::new(&self.conn, PollFlags::IN));
            }
            match poll(&mut fds, Some(&timeout)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(Error::io("waiting on channel eventfd", e.into())),
            }
            fds.get(1).is_some_and(|fd| !fd.revents().is_empty())
        };
        if broker_event {
            self.on_broker_readable();
        }
        Ok(())
    }
}

impl Drop for Attachment {
    /// Ends the attachment for the broker now: a shutdown, not only a close, because a child
    /// forked meanwhile holds a copy of the socket until it execs or exits (our fds are
    /// close-on-exec, not close-on-fork), and a mere close would leave the connection, and so
    /// the slot, alive for that long.
    fn drop(&mut self) {
        let _ = rustix::net::shutdown(self.conn.socket(), rustix::net::Shutdown::Both);
    }
}

/// Adds `fd` to the epoll set `ready` (level-triggered, readable).
fn watch(ready: &OwnedFd, fd: impl AsFd) -> Result<()> {
    epoll::add(
        ready,
        fd,
        epoll::EventData::new_u64(0),
        epoll::EventFlags::IN,
    )
    .map_err(|e| Error::io("watching an fd for ready_fd()", e.into()))
}

/// A timer firing every `RECONNECT_INTERVAL`, non-blocking.
fn retry_timer() -> std::io::Result<OwnedFd> {
    let timer = timerfd_create(
        TimerfdClockId::Monotonic,
        TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
    )?;
    let every = Timespec {
        tv_sec: 0,
        tv_nsec: RECONNECT_INTERVAL.as_nanos() as i64,
    };
    timerfd_settime(
        &timer,
        TimerfdTimerFlags::empty(),
        &Itimerspec {
            it_interval: every,
            it_value: every,
        },
    )?;
    Ok(timer)
}

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket()
    }
}
