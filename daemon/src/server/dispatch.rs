//! Request dispatch: one decoded request of one session, answered by the registry, with the
//! events it causes queued for the sessions they concern.

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use shmem_broker_proto::wire::{
    ErrorCode, Event, Reply, Request, Role, StatusInfo, PROTOCOL_VERSION,
};
use slog::{info, warn};

use super::Server;
use crate::channel::{Notice, SessionId};
use crate::registry::ChannelSpec;
use crate::session::{Input, Session, Watch};

impl Server {
    /// Answers one input of `session` (a request, or one the decoder refused) and queues the
    /// reply; sessions its events were queued for are added to `woken` for the loop to drive.
    pub(super) fn handle(
        &mut self,
        session: &mut Session,
        input: Input,
        woken: &mut Vec<SessionId>,
    ) {
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
                let reply = match self.channel_fits() {
                    Err(message) => {
                        warn!(self.log, "create refused"; "channel" => &channel,
                            "reason" => &message, "peer_pid" => peer.pid, "peer_uid" => peer.uid);
                        Reply::failure(ErrorCode::LimitReached, message)
                    }
                    Ok(()) => {
                        let spec = ChannelSpec {
                            capacity,
                            producers: &producers,
                            consumers: &consumers,
                            max_producers,
                            max_consumers,
                            slow_consumer,
                        };
                        self.registry.create(&channel, &spec, &peer)
                    }
                };
                (reply, Vec::new())
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
}
