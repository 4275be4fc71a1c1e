//! How channels come and go: restored from the fd store, declared by the config (at start
//! and on reload), created and dropped by request, removed once unused.

use std::os::fd::OwnedFd;

use shmem_broker_proto::names::validate_channel_name;
use shmem_broker_proto::ring::{CAPACITY_GRANULE, MIN_CAPACITY};
use shmem_broker_proto::size::format_size;
use shmem_broker_proto::wire::{
    Dropped, ErrorCode, Event, MonitorKind, Origin, Reply, MAX_ENDPOINTS,
};
use slog::{info, warn};

use crate::access::{is_admin, AccessList};
use crate::channel::{ring_budget, Channel, ChannelMeta};
use crate::config::{ChannelConfig, Config};
use crate::peer::PeerCredentials;

use super::{no_such_channel, watched, ChannelSpec, Limits, Outcome, Registry};

impl Registry {
    /// Takes back channels that survived a restart in systemd's fd store.
    pub fn restore(&mut self, stored: Vec<(OwnedFd, String)>) {
        for channel in self.fd_store.restore(stored) {
            self.insert(channel);
        }
    }

    /// Brings the config's channels and limits into effect, at start and on reload: declared
    /// channels are created (or, if they survived a restart, given the config's access rules),
    /// and config channels no longer declared go away once nobody is attached.
    pub fn apply_config(&mut self, config: &Config) -> std::io::Result<()> {
        self.limits = Limits::from_config(config);
        self.quotas.update(config);
        for declared in &config.channels {
            self.apply_declared(declared)?;
        }
        let removed: Vec<String> = self
            .channels
            .values()
            .filter(|c| {
                c.meta.origin == Origin::Config
                    && !config.channels.iter().any(|d| d.name == c.name())
            })
            .map(|c| c.name().to_string())
            .collect();
        for name in removed {
            if let Some(channel) = self.channels.get_mut(&name) {
                if !channel.pending_removal {
                    channel.pending_removal = true;
                    info!(self.log, "channel no longer in config; removing it once detached"; "channel" => &name);
                }
            }
            self.remove_if_unused(&name);
        }
        Ok(())
    }

    fn apply_declared(&mut self, declared: &ChannelConfig) -> std::io::Result<()> {
        let mut meta = ChannelMeta {
            name: declared.name.clone(),
            origin: Origin::Config,
            owner_uid: None,
            producers: declared.producers.clone(),
            consumers: declared.consumers.clone(),
            max_producers: declared.max_producers,
            max_consumers: declared.max_consumers,
            slow_consumer: declared.slow_consumer,
        };
        if let Some(existing) = self.channels.get_mut(&declared.name) {
            self.usage.forget(existing);
            existing.pending_removal = false;
            if existing.capacity() != declared.capacity {
                warn!(self.log, "channel capacity differs from the config; keeping the existing ring and its data (drop the channel to re-create it)";
                    "channel" => &declared.name, "capacity" => existing.capacity(), "configured" => declared.capacity);
            }
            let shape = (existing.meta.max_producers, existing.meta.max_consumers);
            if shape != (meta.max_producers, meta.max_consumers) {
                // Slots, queues and rings are laid out for the old numbers (and their data is
                // in them): a new shape needs a new channel.
                warn!(self.log, "channel max_producers/max_consumers differ from the config; keeping the existing ones and the data in their rings (drop the channel to re-create it)";
                    "channel" => &declared.name, "max_producers" => shape.0, "max_consumers" => shape.1,
                    "configured_max_producers" => declared.max_producers,
                    "configured_max_consumers" => declared.max_consumers);
                (meta.max_producers, meta.max_consumers) = shape;
            }
            if existing.meta != meta {
                existing.meta = meta;
                // The stored metadata keeps the old rules: it is never read for them, since
                // every start applies the config to its channels again, as here.
                info!(self.log, "channel access rules updated from config"; "channel" => &declared.name);
            }
            self.usage.count(existing);
            if existing.meta.is_fanout() {
                self.fd_store.save(existing);
            }
            return Ok(());
        }
        let channel = Channel::create(meta, declared.capacity)?;
        info!(self.log, "channel created from config"; "channel" => &declared.name, "capacity" => declared.capacity,
            "max_producers" => declared.max_producers, "max_consumers" => declared.max_consumers,
            "slow_consumer" => %declared.slow_consumer);
        self.fd_store.save(&channel);
        self.insert(channel);
        Ok(())
    }

    pub(super) fn remove_if_unused(&mut self, name: &str) {
        if self
            .channels
            .get(name)
            .is_some_and(|c| c.pending_removal && !c.is_attached())
        {
            self.take(name);
            self.fd_store.forget(name);
            info!(self.log, "channel removed"; "channel" => name);
        }
    }

    pub fn create(&mut self, name: &str, spec: &ChannelSpec<'_>, peer: &PeerCredentials) -> Reply {
        if !is_admin(peer, &self.limits.admin_gids) {
            warn!(self.log, "create refused"; "channel" => name, "peer_pid" => peer.pid, "peer_uid" => peer.uid);
            return Reply::failure(
                ErrorCode::PermissionDenied,
                format!(
                    "permission denied: uid {} may not create channel {name:?} (needs root or an admin group)",
                    peer.uid
                ),
            );
        }
        if let Err(message) = validate_channel_name(name) {
            return Reply::failure(ErrorCode::InvalidName, message);
        }
        if self.channels.contains_key(name) {
            return Reply::failure(
                ErrorCode::ChannelExists,
                format!("channel already exists: {name}"),
            );
        }
        let requested = spec.capacity.unwrap_or(self.limits.default_capacity);
        if requested < MIN_CAPACITY || requested > self.limits.max_capacity {
            return Reply::failure(
                ErrorCode::InvalidCapacity,
                format!(
                    "invalid capacity {} for channel {name:?}: must be between {} and {} (max_capacity)",
                    format_size(requested),
                    format_size(MIN_CAPACITY),
                    format_size(self.limits.max_capacity)
                ),
            );
        }
        let capacity = requested.div_ceil(CAPACITY_GRANULE) * CAPACITY_GRANULE;
        let endpoints = |key: &str, requested: Option<u32>| match requested {
            None => Ok(1),
            Some(n) if (1..=MAX_ENDPOINTS).contains(&n) => Ok(n),
            Some(n) => Err(Reply::failure(
                ErrorCode::BadRequest,
                format!(
                    "invalid {key} {n} for channel {name:?}: must be between 1 and {MAX_ENDPOINTS}"
                ),
            )),
        };
        let (max_producers, max_consumers) = match (
            endpoints("max_producers", spec.max_producers),
            endpoints("max_consumers", spec.max_consumers),
        ) {
            (Ok(p), Ok(c)) => (p, c),
            (Err(reply), _) | (_, Err(reply)) => return reply,
        };
        let (producers, consumers) = match (
            AccessList::parse_all(spec.producers),
            AccessList::parse_all(spec.consumers),
        ) {
            (Ok(p), Ok(c)) => (p, c),
            (Err(message), _) | (_, Err(message)) => {
                return Reply::failure(
                    ErrorCode::BadRequest,
                    format!("channel {name:?}: {message}"),
                )
            }
        };
        let meta = ChannelMeta {
            name: name.to_string(),
            origin: Origin::Runtime,
            owner_uid: Some(peer.uid),
            producers,
            consumers,
            max_producers,
            max_consumers,
            slow_consumer: spec.slow_consumer.unwrap_or_default(),
        };
        let held = self.holdings(peer.uid, 0);
        if let Err(message) =
            self.quotas
                .admit_channel(peer.uid, ring_budget(&meta, capacity), held, self.totals(0))
        {
            warn!(self.log, "create refused by quota"; "channel" => name, "peer_pid" => peer.pid,
                "peer_uid" => peer.uid, "reason" => &message);
            return Reply::failure(ErrorCode::LimitReached, message);
        }
        match Channel::create(meta, capacity) {
            Ok(channel) => {
                info!(self.log, "channel created"; "channel" => name, "capacity" => capacity,
                    "peer_pid" => peer.pid, "peer_uid" => peer.uid);
                let mut event = watched(MonitorKind::Create, Some(name));
                event.pid = Some(peer.pid);
                event.uid = Some(peer.uid);
                self.watch(event);
                self.fd_store.save(&channel);
                let reply = Reply::success(channel.info());
                self.insert(channel);
                reply
            }
            Err(err) => {
                warn!(self.log, "channel creation failed"; "channel" => name, "error" => %err);
                Reply::failure(
                    ErrorCode::Internal,
                    format!("cannot create channel {name:?}: {err}"),
                )
            }
        }
    }

    pub fn drop_channel(&mut self, name: &str, peer: &PeerCredentials) -> Outcome {
        if !is_admin(peer, &self.limits.admin_gids) {
            warn!(self.log, "drop refused"; "channel" => name, "peer_pid" => peer.pid, "peer_uid" => peer.uid);
            return Outcome::error(
                ErrorCode::PermissionDenied,
                format!(
                    "permission denied: uid {} may not drop channel {name:?} (needs root or an admin group)",
                    peer.uid
                ),
            );
        }
        let Some(channel) = self.take(name) else {
            return Outcome::reply(no_such_channel(name));
        };
        channel.mark_dropped();
        self.fd_store.forget(name);
        let events: Vec<_> = channel
            .sessions()
            .map(|session| {
                (
                    session,
                    Event::ChannelDropped {
                        channel: name.to_string(),
                    },
                    Vec::new(),
                )
            })
            .collect();
        info!(self.log, "channel dropped"; "channel" => name, "attached" => events.len(),
            "peer_pid" => peer.pid, "peer_uid" => peer.uid);
        let mut event = watched(MonitorKind::Drop, Some(name));
        event.pid = Some(peer.pid);
        event.uid = Some(peer.uid);
        self.watched.push((event, channel.meta.owner_uid));
        self.losses_told.remove(name);
        Outcome {
            events,
            ..Outcome::reply(Reply::success(Dropped {
                channel: name.to_string(),
            }))
        }
    }
}
