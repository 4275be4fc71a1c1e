//! Clients on channels: attach (with every check a request passes), detach, and what follows
//! from them: end-of-stream losses, dropped durable consumers, evicted slow consumers.

use std::time::Instant;

use shmem_broker_proto::wire::{
    Dropped, ErrorCode, LostEnd, MonitorKind, Reply, Role, MIN_PROTOCOL_VERSION,
    SEALED_RINGS_VERSION, SPLIT_RINGS_VERSION,
};
use slog::{info, warn};

use crate::access::is_admin;
use crate::channel::{Notice, SessionId};
use crate::peer::PeerCredentials;

use super::{no_such_channel, watched, Outcome, Registry};

impl Registry {
    /// Attaches `session` to channel `name` in `role` (a consumer optionally as the durable
    /// consumer `consumer_name`); `version` is the protocol version the client speaks.
    pub fn attach(
        &mut self,
        name: &str,
        role: Role,
        consumer_name: Option<&str>,
        version: u16,
        session: SessionId,
        peer: &PeerCredentials,
    ) -> Outcome {
        let Some(channel) = self.channels.get_mut(name).filter(|c| !c.pending_removal) else {
            return Outcome::reply(no_such_channel(name));
        };
        if channel.meta.is_fanout() && version <= MIN_PROTOCOL_VERSION {
            return Outcome::error(
                ErrorCode::UnsupportedVersion,
                format!(
                    "channel {name:?} has max_producers = {} and max_consumers = {}: attaching to it needs protocol version 2 (one ring per producer and consumer pair); this client speaks version {version}",
                    channel.meta.max_producers, channel.meta.max_consumers
                ),
            );
        }
        let layout = channel.ring_layout();
        if layout >= 3 && version < SPLIT_RINGS_VERSION {
            return Outcome::error(
                ErrorCode::UnsupportedVersion,
                format!(
                    "channel {name:?} has rings in layout {layout} (each ring in two memfds, the other side's read-only): attaching to it needs protocol version {SPLIT_RINGS_VERSION}; this client speaks version {version}, which reads layouts up to 2"
                ),
            );
        }
        if layout >= 2 && version < SEALED_RINGS_VERSION {
            return Outcome::error(
                ErrorCode::UnsupportedVersion,
                format!(
                    "channel {name:?} has rings in layout {layout} (sealed frames): attaching to it needs protocol version {SEALED_RINGS_VERSION}; this client speaks version {version}, which reads layout 1 only"
                ),
            );
        }
        let allowed = peer.uid == 0
            || channel.meta.owner_uid == Some(peer.uid)
            || channel.access(role).admits(peer);
        if !allowed {
            warn!(self.log, "attach refused"; "channel" => name, "role" => %role,
                "peer_pid" => peer.pid, "peer_uid" => peer.uid);
            return Outcome::error(
                ErrorCode::PermissionDenied,
                format!(
                    "permission denied: uid {} may not attach to channel {name:?} as {role}",
                    peer.uid
                ),
            );
        }
        if let Err(message) = self.quotas.admit_attach(peer.uid, Instant::now()) {
            warn!(self.log, "attach refused by quota"; "channel" => name, "peer_pid" => peer.pid,
                "peer_uid" => peer.uid, "reason" => &message);
            return Outcome::error(ErrorCode::LimitReached, message);
        }
        // Counted before this channel's share is taken out of the sums below.
        let durable_names = self.usage.durable.get(&peer.uid).copied().unwrap_or(0);
        self.usage.forget(channel);
        let quotas = &self.quotas;
        let admit_new_name = || quotas.admit_durable_consumer(peer.uid, durable_names);
        let granted = match role {
            Role::Producer => channel.attach_producer(session, peer),
            Role::Consumer => channel.attach_consumer(session, peer, consumer_name, admit_new_name),
        };
        self.usage.count(channel);
        let grant = match granted {
            Ok(grant) => grant,
            Err(refusal) => {
                if refusal.code == ErrorCode::Internal {
                    warn!(self.log, "attach failed"; "channel" => name, "error" => &refusal.message);
                }
                return Outcome::error(refusal.code, refusal.message);
            }
        };
        if grant.wake_created {
            self.fd_store.save_wake(channel);
        }
        if channel.meta.is_fanout() {
            // A new producer slot or durable queue, with its rings, outlives the broker.
            self.fd_store.save(channel);
        }
        info!(self.log, "attached"; "channel" => name, "role" => %role, "id" => grant.info.id,
            "consumer_name" => consumer_name, "peer_pid" => peer.pid, "peer_uid" => peer.uid);
        let mut event = watched(MonitorKind::Attach, Some(name));
        event.role = Some(role);
        event.pid = Some(peer.pid);
        event.uid = Some(peer.uid);
        event.name = consumer_name.map(str::to_string);
        self.watch(event);
        Outcome {
            reply: Reply::success(&grant.info),
            fds: grant.fds,
            attached: Some(name.to_string()),
            events: grant.notices,
        }
    }

    /// The sessions holding `role` on channel `name`.
    pub fn holders(&self, name: &str, role: Role) -> Vec<SessionId> {
        self.channels
            .get(name)
            .map_or_else(Vec::new, |c| c.holders(role))
    }

    /// Frees whatever `session` held on `name` (the connection closed). Returns events for the
    /// others (producers stop writing to an anonymous consumer that left).
    pub fn detach(&mut self, name: &str, session: SessionId) -> Vec<Notice> {
        let mut notices = Vec::new();
        if let Some(channel) = self.channels.get_mut(name) {
            self.usage.forget(channel);
            let detached = channel.detach(session);
            self.usage.count(channel);
            if let Some((role, peer, told)) = detached {
                info!(self.log, "detached"; "channel" => name, "role" => %role,
                    "peer_pid" => peer.pid, "peer_uid" => peer.uid);
                notices = told;
                let mut event = watched(MonitorKind::Detach, Some(name));
                event.role = Some(role);
                event.pid = Some(peer.pid);
                event.uid = Some(peer.uid);
                self.watched.push((event, None));
                if channel.meta.is_fanout() {
                    // The totals, with what the rings that went with this peer counted.
                    self.fd_store.save(channel);
                }
            }
        }
        self.remove_if_unused(name);
        notices
    }

    /// A fan-out producer attached to `name` through `session` lost its end-of-stream mark
    /// in the rings of the consumers in `lost` ([`Channel::end_lost`]).
    pub fn end_lost(&mut self, name: Option<&str>, session: SessionId, lost: &[LostEnd]) -> Reply {
        let channel = name.and_then(|name| self.channels.get_mut(name));
        let Some(channel) = channel else {
            return Reply::failure(
                ErrorCode::BadRequest,
                "end_lost: this connection is not attached to a channel",
            );
        };
        match channel.end_lost(session, lost) {
            Ok(()) => Reply::success(()),
            Err(refusal) => Reply::failure(refusal.code, refusal.message),
        }
    }

    /// Drops durable consumer `consumer` of channel `name`: its owner, the channel's owner
    /// and admins may.
    pub fn drop_consumer(&mut self, name: &str, consumer: &str, peer: &PeerCredentials) -> Outcome {
        let Some(channel) = self.channels.get_mut(name) else {
            return Outcome::reply(no_such_channel(name));
        };
        let privileged =
            is_admin(peer, &self.limits.admin_gids) || channel.meta.owner_uid == Some(peer.uid);
        self.usage.forget(channel);
        let dropped = channel.drop_consumer(consumer, peer.uid, privileged);
        self.usage.count(channel);
        if dropped.is_ok() {
            self.fd_store.save(channel);
        }
        match dropped {
            Ok(events) => {
                info!(self.log, "durable consumer dropped"; "channel" => name, "consumer_name" => consumer,
                    "peer_pid" => peer.pid, "peer_uid" => peer.uid);
                let mut event = watched(MonitorKind::DropConsumer, Some(name));
                event.name = Some(consumer.to_string());
                event.pid = Some(peer.pid);
                event.uid = Some(peer.uid);
                self.watch(event);
                Outcome {
                    events,
                    ..Outcome::reply(Reply::success(Dropped {
                        channel: name.to_string(),
                    }))
                }
            }
            Err(refusal) => Outcome::error(refusal.code, refusal.message),
        }
    }

    /// Consumers that fell behind (policy `disconnect`) and rings a producer flagged or that
    /// are unsound, as each channel judges them ([`Channel::evict_slow_consumers`]): events
    /// to send, and the sessions to close after sending them.
    pub fn evict_slow_consumers(&mut self) -> (Vec<Notice>, Vec<SessionId>) {
        let mut notices = Vec::new();
        let mut sessions = Vec::new();
        for channel in self.channels.values_mut() {
            self.usage.forget(channel);
            let (told, evicted, rings_changed) = channel.evict_slow_consumers();
            self.usage.count(channel);
            if rings_changed {
                self.fd_store.save(channel);
                info!(self.log, "flagged or unsound rings dealt with"; "channel" => channel.name());
            }
            if !evicted.is_empty() {
                warn!(self.log, "slow consumers disconnected"; "channel" => channel.name(),
                    "attached" => evicted.len());
                let mut event = watched(MonitorKind::Eviction, Some(channel.name()));
                event.count = Some(evicted.len() as u64);
                event.detail = Some("fell behind (slow_consumer = disconnect)".into());
                self.watched.push((event, None));
            }
            notices.extend(told);
            sessions.extend(evicted);
        }
        (notices, sessions)
    }
}
