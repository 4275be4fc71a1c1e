//! The event loop: one thread, one epoll set (mio), every socket non-blocking. It waits for
//! events, moves each ready session forward (write what is queued, read and answer requests)
//! and closes a client the moment its connection closes; SIGHUP reloads the config.
//!
//! The rest of the server is in its own files, each a set of `impl Server` methods:
//! `admission` (accepting and refusing connections), `dispatch` (answering one request),
//! `housekeeping` (timeouts, slow consumers, monitors, delivering events).

mod admission;
mod dispatch;
mod housekeeping;

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mio::net::UnixListener;
use mio::{Events, Interest, Poll, Token};
use shmem_broker_proto::wire::{MonitorKind, ReloadOutcome};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slog::{debug, error, info, warn, Logger};

use crate::channel::SessionId;
use crate::closer::Closer;
use crate::config::Config;
use crate::listener::ControlSocket;
use crate::logging::PeerLogBudget;
use crate::notify::Notifier;
use crate::registry::{watched, Registry};
use crate::session::{ReadStatus, Session, SCM_MAX_FD};

pub use admission::fds_wanted;

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
/// Session ids start here and are never reused, so a stale id can never name a newer client.
const FIRST_SESSION: SessionId = 2;
/// Fds from one uid's connections that may wait in the closer before that uid is refused new
/// connections and its connections that send more fds are closed (possible only on kernels
/// without `SO_PASSRIGHTS`, where a client can make closes slow).
const PENDING_CLOSE_PER_UID: usize = 2 * SCM_MAX_FD;
/// How often stalled connections are looked for.
const HOUSEKEEPING: Duration = Duration::from_millis(500);

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
            fd_limit: admission::fd_limit(),
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

    fn clients_of(&self, uid: u32) -> usize {
        self.sessions.values().filter(|s| s.peer.uid == uid).count()
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

    fn close(&mut self, mut session: Session) {
        let _ = self.poll.registry().deregister(&mut session.stream);
        if let Some(channel) = session.attached.take() {
            let notices = self.registry.detach(&channel, session.id);
            self.deliver(notices);
        }
        debug!(self.log, "client disconnected"; "session" => session.id,
            "peer_pid" => session.peer.pid, "peer_uid" => session.peer.uid);
        let uid = session.peer.uid;
        if session.holds_no_fds() {
            // No client fd can be dropped with it, so the close frees bytes only and cannot
            // sleep: done here, it costs no closer-thread wake-up on every detach.
            drop(session);
        } else {
            // Closing the socket drops whatever the client left queued in it (fds included),
            // so it is closed off this thread like the fds it sent.
            self.closer.discard(uid, session.held_fds(), session);
        }
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
