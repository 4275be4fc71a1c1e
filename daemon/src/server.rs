//! The event loop: one thread, one epoll set (mio), every socket non-blocking. It accepts
//! connections, turns their bytes into requests for the registry, writes the replies, and
//! detaches a client the moment its connection closes.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use shmem_broker_proto::wire::{
    ErrorCode, Event, MonitorKind, ReloadOutcome, Reply, Request, Role, StatusInfo,
    PROTOCOL_VERSION,
};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slog::{debug, error, info, warn, Logger};

use crate::channel::{Notice, SessionId};
use crate::closer::Closer;
use crate::config::Config;
use crate::listener::{refuse_passed_fds, ControlSocket};
use crate::logging::{PeerLogBudget, SUPPRESSED_TAG, SUPPRESSION_WINDOW};
use crate::notify::Notifier;
use crate::peer::PeerCredentials;
use crate::registry::{watched, ChannelSpec, Registry};
use crate::session::{Input, ReadStatus, Session, Watch, SCM_MAX_FD};

/// What a `monitor` connection may have queued before it is left out of events.
const MONITOR_QUEUE_BYTES: usize = 256 * 1024;
const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
/// Session ids start here and are never reused, so a stale id can never name a newer client.
const FIRST_SESSION: SessionId = 2;
/// Fds the broker holds besides clients and channels (epoll, listener, signal pipe, std streams).
const FIXED_FDS: usize = 16;
/// Fds kept free for attaches in flight, the fd store's metadata memfds, and one `recvmsg`
/// full of fds a client sends uninvited on a kernel without `SO_PASSRIGHTS` (if they did not
/// fit the fd table, the kernel would drop the rest in this thread: see `closer`).
const FD_RESERVE: usize = 64 + SCM_MAX_FD;
/// Fds from one uid's connections that may wait in the closer before that uid is refused new
/// connections and its connections that send more fds are closed (possible only on kernels
/// without `SO_PASSRIGHTS`, where a client can make closes slow).
const PENDING_CLOSE_PER_UID: usize = 2 * SCM_MAX_FD;
/// How often stalled connections are looked for.
const HOUSEKEEPING: Duration = Duration::from_millis(500);

fn fd_limit() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    limit
        .current
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

pub struct Server {
    poll: Poll,
    listener: UnixListener,
    control: ControlSocket,
    signals: Signals,
    sessions: HashMap<SessionId, Session>,
    next_session: SessionId,
    /// Accepting stopped because the broker ran out of fds; resumes when a client leaves.
    accept_paused: bool,
    registry: Registry,
    notifier: Notifier,
    started: Instant,
    /// `--config` as given: reloads resolve the config the same way the start did.
    config_arg: Option<PathBuf>,
    config_file: Option<PathBuf>,
    last_reload: Option<ReloadOutcome>,
    request_timeout: Duration,
    /// RLIMIT_NOFILE: clients are refused before the broker would run out.
    fd_limit: usize,
    /// Interval between `WATCHDOG=1` pings when systemd asks for them (half its timeout).
    watchdog: Option<Duration>,
    /// Drops client-supplied fds and client sockets off this thread.
    closer: Closer,
    /// Which peers' warnings the log held back, to report them.
    log_budget: PeerLogBudget,
    log: Logger,
}

impl Server {
    pub fn new(
        control: ControlSocket,
        registry: Registry,
        config_arg: Option<PathBuf>,
        config: &Config,
        log: Logger,
        log_budget: PeerLogBudget,
    ) -> io::Result<Server> {
        let poll = Poll::new()?;
        let std_listener = control.listener.try_clone()?;
        std_listener.set_nonblocking(true)?;
        let mut listener = UnixListener::from_std(std_listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        Ok(Server {
            poll,
            listener,
            control,
            signals,
            sessions: HashMap::new(),
            next_session: FIRST_SESSION,
            accept_paused: false,
            registry,
            notifier: Notifier::new(log.clone()),
            started: Instant::now(),
            config_arg,
            config_file: config.source.clone(),
            last_reload: None,
            request_timeout: config.request_timeout,
            fd_limit: fd_limit(),
            watchdog: sd_notify::watchdog_enabled().map(|timeout| timeout / 2),
            closer: Closer::start()?,
            log_budget,
            log,
        })
    }

    /// Serves until SIGTERM or SIGINT.
    pub fn run(&mut self) -> io::Result<()> {
        info!(self.log, "serving";
            "socket" => self.control.path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            "source" => self.control.source_name(),
            "refuses_passed_fds" => self.control.refuses_passed_fds,
            "channels" => self.registry.channel_count());
        self.notifier.ready(self.summary());
        let mut events = Events::with_capacity(256);
        let mut next_ping = Instant::now();
        let mut next_housekeeping = Instant::now() + HOUSEKEEPING;
        loop {
            let now = Instant::now();
            // The watchdog is fed from the loop itself, so a wedged loop gets restarted.
            if let Some(interval) = self.watchdog {
                if now >= next_ping {
                    self.notifier.watchdog();
                    next_ping = now + interval;
                }
            }
            if now >= next_housekeeping {
                self.expire_stalled();
                self.disconnect_slow_consumers();
                self.registry.look_for_losses();
                for (uid, count) in self.log_budget.take_due(now) {
                    self.report_suppressed(uid, count);
                }
                next_housekeeping = now + HOUSEKEEPING;
            }
            let next_wake = match self.watchdog {
                Some(_) => next_ping.min(next_housekeeping),
                None => next_housekeeping,
            };
            let timeout = Some(next_wake.saturating_duration_since(Instant::now()));
            if let Err(err) = self.poll.poll(&mut events, timeout) {
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    SIGNALS => {
                        let pending: Vec<i32> = self.signals.pending().collect();
                        if pending.iter().any(|&s| s == SIGTERM || s == SIGINT) {
                            self.shut_down();
                            return Ok(());
                        }
                        if pending.contains(&SIGHUP) {
                            self.reload();
                        }
                    }
                    Token(id) => self.drive(id),
                }
            }
            self.tell_monitors();
            let summary = self.summary();
            self.notifier.status(summary);
        }
    }

    /// Hands what happened to the `monitor` connections that may see it. Each has a bounded
    /// queue: one that does not read is left out of events (and told how many, once it has
    /// caught up) instead of making the broker buffer without end; the loop never waits on it.
    fn tell_monitors(&mut self) {
        let events = self.registry.take_watched();
        if events.is_empty() {
            return;
        }
        let mut woken = Vec::new();
        for session in self.sessions.values_mut() {
            let Some(only) = session.monitor.as_ref().map(|w| w.channel.clone()) else {
                continue;
            };
            let mut told = false;
            for (event, owner) in &events {
                let channel = event.channel.as_deref();
                if only.is_some() && only.as_deref() != channel {
                    continue;
                }
                let visible = match channel {
                    Some(name) => self.registry.may_watch(name, *owner, &session.peer),
                    // Broker-wide events (a reload) are for admins.
                    None => self.registry.is_admin(&session.peer),
                };
                if !visible {
                    continue;
                }
                if session.queued_bytes() >= MONITOR_QUEUE_BYTES {
                    if let Some(watch) = &mut session.monitor {
                        watch.dropped = watch.dropped.saturating_add(1);
                    }
                    continue;
                }
                if let Some(watch) = &mut session.monitor {
                    let count = std::mem::take(&mut watch.dropped);
                    if count > 0 {
                        session.queue_event(&Event::MonitorDropped { count }, Vec::new());
                    }
                }
                session.queue_event(&Event::Monitor(event.clone()), Vec::new());
                told = true;
            }
            if told {
                woken.push(session.id);
            }
        }
        for id in woken {
            self.drive(id);
        }
    }

    /// Re-reads the config and applies the difference; an invalid config changes nothing.
    /// Attached clients are not touched.
    fn reload(&mut self) {
        self.notifier.reloading();
        let failure = match Config::discover(self.config_arg.as_deref()) {
            Ok(config) => match self.registry.apply_config(&config) {
                Ok(()) => {
                    self.request_timeout = config.request_timeout;
                    self.config_file = config.source.clone();
                    info!(self.log, "config reloaded";
                        "file" => self.config_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                        "channels" => self.registry.channel_count());
                    None
                }
                Err(err) => {
                    error!(self.log, "config reload failed part-way"; "error" => %err);
                    Some(format!("applied part-way: {err}"))
                }
            },
            Err(err) => {
                error!(self.log, "config reload rejected; still serving the previous config"; "error" => %err);
                Some(err.to_string())
            }
        };
        let at_unix_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut event = watched(MonitorKind::Reload, None);
        event.detail = Some(match &failure {
            None => "ok".into(),
            Some(error) => format!("rejected: {error}"),
        });
        self.registry.watch(event);
        self.last_reload = Some(ReloadOutcome {
            at_unix_secs,
            ok: failure.is_none(),
            error: failure,
        });
        self.notifier.ready(self.summary());
    }

    fn summary(&self) -> String {
        format!(
            "{} channels, {} clients",
            self.registry.channel_count(),
            self.sessions.len()
        )
    }

    fn shut_down(&mut self) {
        self.notifier.stopping();
        info!(self.log, "stopping"; "clients" => self.sessions.len());
        self.control.remove_path();
    }

    fn accept_all(&mut self) {
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
        // the listener could not take it. The result does not matter: where it fails, fds
        // already queued or sent later are handed to the closer like on older kernels.
        let _ = refuse_passed_fds(stream.as_fd());
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
        self.sessions.insert(id, Session::new(id, stream, peer));
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
        // Each client holds one fd, each channel one or three, an attach three more for a
        // moment; fds handed to the closer count until they are really closed.
        let in_use =
            FIXED_FDS + self.sessions.len() + self.registry.open_fds() + self.closer.pending();
        if in_use + FD_RESERVE >= self.fd_limit {
            return Err(format!(
                "broker is out of file descriptors ({in_use} of {} in use); try again later",
                self.fd_limit
            ));
        }
        Ok(())
    }

    /// A client that detaches and attaches again at once (or its successor) can have its new
    /// request served in the same epoll round in which its old connection's hang-up is still
    /// queued. Close a holder whose peer is already gone before saying "busy".
    fn reap_hung_up_holders(&mut self, channel: &str, role: Role) {
        for holder in self.registry.holders(channel, role) {
            let hung_up = self.sessions.get(&holder).is_some_and(|s| {
                let mut fds = [PollFd::new(&s.stream, PollFlags::RDHUP)];
                let zero = Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                matches!(poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
                    && fds[0]
                        .revents()
                        .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR)
            });
            if hung_up {
                self.drive(holder);
            }
        }
    }

    /// Policy `disconnect`: tells consumers a producer gave up on why, and closes their
    /// connections once that is written.
    fn disconnect_slow_consumers(&mut self) {
        let (notices, sessions) = self.registry.evict_slow_consumers();
        for session in &sessions {
            if let Some(session) = self.sessions.get_mut(session) {
                session.attached = None;
            }
        }
        self.deliver(notices);
        for id in sessions {
            if let Some(session) = self.sessions.get_mut(&id) {
                session.closing = true;
            }
            self.drive(id);
        }
    }

    /// Queues events for sessions not being served right now and sends them.
    fn deliver(&mut self, notices: Vec<Notice>) {
        let mut woken = Vec::new();
        for (target, event, fds) in notices {
            if let Some(session) = self.sessions.get_mut(&target) {
                if !session.understands(&event) {
                    continue;
                }
                session.queue_event(&event, fds);
                woken.push(target);
            }
        }
        woken.dedup();
        for id in woken {
            self.drive(id);
        }
    }

    fn clients_of(&self, uid: u32) -> usize {
        self.sessions.values().filter(|s| s.peer.uid == uid).count()
    }

    /// Closes connections that never completed a request, or left one half-sent, within
    /// `request_timeout`. Clients that are attached or merely idle between requests stay.
    fn expire_stalled(&mut self) {
        let now = Instant::now();
        let timeout = self.request_timeout;
        let stalled: Vec<SessionId> = self
            .sessions
            .values()
            .filter(|s| {
                s.stalled_since()
                    .is_some_and(|since| now.duration_since(since) >= timeout)
            })
            .map(|s| s.id)
            .collect();
        for id in stalled {
            if let Some(session) = self.sessions.remove(&id) {
                warn!(self.log, "closing connection: no complete request within request_timeout";
                    "request_timeout_ms" => timeout.as_millis() as u64,
                    "peer_pid" => session.peer.pid, "peer_uid" => session.peer.uid);
                self.close(session);
            }
        }
        self.registry.expire_rate_state(now);
    }

    /// Moves one session forward as far as it goes without waiting: write what is queued, then
    /// read and answer requests, until the socket would block either way or the client is gone.
    fn drive(&mut self, id: SessionId) {
        let Some(mut session) = self.sessions.remove(&id) else {
            return;
        };
        let mut woken = Vec::new();
        let keep = loop {
            match session.flush() {
                Ok(true) => {}
                Ok(false) if session.over_limit() => {
                    warn!(self.log, "client does not read what the broker sends; disconnecting";
                        "peer_pid" => session.peer.pid, "peer_uid" => session.peer.uid);
                    break false;
                }
                Ok(false) => break true, // wait for WRITABLE; do not read more meanwhile
                Err(err) => {
                    debug!(self.log, "write failed"; "session" => id, "error" => %err);
                    break false;
                }
            }
            if session.closing {
                break false;
            }
            if let Some(input) = session.next_input() {
                self.handle(&mut session, input, &mut woken);
                continue;
            }
            match session.fill() {
                Ok(ReadStatus::Data {
                    stray_fds,
                    truncated,
                }) => {
                    if truncated {
                        warn!(self.log, "the kernel truncated the fds a client sent";
                            "peer_pid" => session.peer.pid, "peer_uid" => session.peer.uid);
                    }
                    if !stray_fds.is_empty() {
                        let count = stray_fds.len();
                        warn!(self.log, "closed file descriptors the client sent uninvited";
                            "count" => count, "peer_pid" => session.peer.pid, "peer_uid" => session.peer.uid);
                        for fd in &stray_fds {
                            abort_on_close(fd);
                        }
                        self.closer.discard(session.peer.uid, count, stray_fds);
                        if self.closer.pending_of(session.peer.uid) >= PENDING_CLOSE_PER_UID {
                            warn!(self.log, "closing connection: too many of its uid's fds are still being closed";
                                "limit" => PENDING_CLOSE_PER_UID, "peer_pid" => session.peer.pid, "peer_uid" => session.peer.uid);
                            break false;
                        }
                    }
                }
                Ok(ReadStatus::WouldBlock) => break true,
                Ok(ReadStatus::Closed) => break false,
                Err(err) => {
                    debug!(self.log, "read failed"; "session" => id, "error" => %err);
                    break false;
                }
            }
        };
        if keep {
            self.sessions.insert(id, session);
        } else {
            self.close(session);
        }
        for other in woken {
            self.drive(other);
        }
    }

    fn handle(&mut self, session: &mut Session, input: Input, woken: &mut Vec<SessionId>) {
        let (id, request) = match input {
            Input::Request {
                id,
                version,
                request,
            } => {
                session.version = version;
                (id, request)
            }
            Input::Invalid {
                id,
                code,
                message,
                close,
            } => {
                warn!(self.log, "bad request"; "error" => &message,
                    "peer_pid" => session.peer.pid, "peer_uid" => session.peer.uid);
                session.queue_reply(id, &Reply::failure(code, message), Vec::new());
                session.closing |= close;
                return;
            }
        };
        let peer = session.peer.clone();
        let (reply, fds) = match request {
            Request::Status => (Reply::success(self.status(peer.uid)), Vec::new()),
            Request::List => (self.registry.list(), Vec::new()),
            Request::Info { channel } => (self.registry.info(&channel), Vec::new()),
            Request::Create {
                channel,
                capacity,
                producers,
                consumers,
                max_producers,
                max_consumers,
                slow_consumer,
            } => {
                let spec = ChannelSpec {
                    capacity,
                    producers: &producers,
                    consumers: &consumers,
                    max_producers,
                    max_consumers,
                    slow_consumer,
                };
                (self.registry.create(&channel, &spec, &peer), Vec::new())
            }
            Request::Drop { channel } => {
                let outcome = self.registry.drop_channel(&channel, &peer);
                self.tell_all(session, outcome.events, woken);
                (outcome.reply, outcome.fds)
            }
            Request::DropConsumer { channel, consumer } => {
                let outcome = self.registry.drop_consumer(&channel, &consumer, &peer);
                self.tell_all(session, outcome.events, woken);
                (outcome.reply, outcome.fds)
            }
            Request::Monitor { channel } => {
                session.monitor = Some(Watch {
                    channel,
                    dropped: 0,
                });
                info!(self.log, "monitor attached"; "peer_pid" => peer.pid, "peer_uid" => peer.uid);
                (Reply::success(()), Vec::new())
            }
            Request::EndLost { lost } => (
                self.registry
                    .end_lost(session.attached.as_deref(), session.id, &lost),
                Vec::new(),
            ),
            Request::Attach {
                channel,
                role,
                name,
            } => {
                if let Some(current) = &session.attached {
                    let message = format!(
                        "this connection is already attached to channel {current:?}; open a new connection per attachment"
                    );
                    (
                        Reply::failure(ErrorCode::AlreadyAttached, message),
                        Vec::new(),
                    )
                } else {
                    self.reap_hung_up_holders(&channel, role);
                    let outcome = self.registry.attach(
                        &channel,
                        role,
                        name.as_deref(),
                        session.version,
                        session.id,
                        &peer,
                    );
                    session.attached = outcome.attached;
                    self.tell_all(session, outcome.events, woken);
                    (outcome.reply, outcome.fds)
                }
            }
        };
        if !session.queue_reply(id, &reply, fds) {
            warn!(self.log, "client does not read its replies; disconnecting";
                "peer_pid" => peer.pid, "peer_uid" => peer.uid);
            session.closing = true;
        }
    }

    /// Queues events for their sessions (which may include the one being served); the
    /// others are driven once the current request is answered.
    fn tell_all(
        &mut self,
        current: &mut Session,
        notices: Vec<Notice>,
        woken: &mut Vec<SessionId>,
    ) {
        for (target, event, fds) in notices {
            let other = target != current.id;
            let session = if !other {
                &mut *current
            } else if let Some(other) = self.sessions.get_mut(&target) {
                woken.push(target);
                other
            } else {
                continue;
            };
            if matches!(event, Event::ChannelDropped { .. }) {
                session.attached = None;
            }
            if !session.understands(&event) {
                continue;
            }
            session.queue_event(&event, fds);
            if other {
                // Out before the reply to the request behind it: a peer that sees the control
                // page bumped once the requester has its answer finds the event already in its
                // socket and never has to wait for it. A non-blocking write; a failure is dealt
                // with when that session is driven below.
                let _ = session.flush();
            }
        }
    }

    fn close(&mut self, mut session: Session) {
        let _ = self.poll.registry().deregister(&mut session.stream);
        if let Some(channel) = session.attached.take() {
            let notices = self.registry.detach(&channel, session.id);
            self.deliver(notices);
        }
        debug!(self.log, "client disconnected"; "session" => session.id,
            "peer_pid" => session.peer.pid, "peer_uid" => session.peer.uid);
        let uid = session.peer.uid;
        // Closing the socket drops whatever the client left queued in it (fds included), so
        // it is closed off this thread like the fds it sent.
        self.closer.discard(uid, session.held_fds(), session);
        if self.clients_of(uid) == 0 {
            if let Some(count) = self.log_budget.take_gone(uid) {
                self.report_suppressed(uid, count);
            }
        }
        if self.accept_paused {
            self.accept_paused = false;
            self.accept_all();
        }
    }

    /// One line for the warnings the log held back for `uid` (see `logging::PeerBudgets`).
    fn report_suppressed(&self, uid: u32, count: u64) {
        warn!(self.log, #SUPPRESSED_TAG, "suppressed repeated warnings caused by one peer uid";
            "suppressed" => count, "peer_uid" => uid,
            "window_secs" => SUPPRESSION_WINDOW.as_secs());
    }

    fn status(&self, uid: u32) -> StatusInfo {
        // The session being served is out of the map while it is handled.
        let clients = self.sessions.len() + 1;
        let held = self.registry.holdings(uid, self.clients_of(uid) + 1);
        let quotas = self
            .registry
            .quotas()
            .usage(self.registry.totals(clients), uid, held);
        StatusInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: PROTOCOL_VERSION,
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            socket_source: self.control.source_name().to_string(),
            socket_path: self.control.path.as_ref().map(|p| p.display().to_string()),
            config_file: self.config_file.as_ref().map(|p| p.display().to_string()),
            channels: self.registry.channel_count(),
            clients,
            quotas,
            last_reload: self.last_reload.clone(),
        }
    }
}

/// Makes the close of a socket a client passed abortive (`SO_LINGER` on with 0 s: the kernel
/// resets the connection and drops unsent data instead of sleeping out the client's linger),
/// so such fds cannot keep the closer threads busy. Anything else is left as it is.
fn abort_on_close(fd: &OwnedFd) {
    let is_socket = rustix::fs::fstat(fd).is_ok_and(|stat| {
        rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Socket
    });
    if is_socket {
        // Fails harmlessly on sockets without lingering (Unix sockets accept it too).
        let _ = rustix::net::sockopt::set_socket_linger(fd, Some(std::time::Duration::ZERO));
    }
}
