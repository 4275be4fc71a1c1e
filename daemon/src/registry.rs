//! The broker core: channels by name, who is attached where, and the policy for every request
//! that touches them. No sockets here: requests come in decoded, outcomes go out as data.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::time::Instant;

use shmem_broker_proto::names::validate_channel_name;
use shmem_broker_proto::ring::{CAPACITY_GRANULE, MIN_CAPACITY};
use shmem_broker_proto::size::format_size;
use shmem_broker_proto::wire::{
    ChannelList, Dropped, ErrorCode, Event, LostEnd, MonitorEvent, MonitorKind, Origin, Reply,
    Role, SlowConsumer, MAX_ENDPOINTS, MIN_PROTOCOL_VERSION, SEALED_RINGS_VERSION,
    SPLIT_RINGS_VERSION,
};
use slog::{info, warn, Logger};

use crate::access::{is_admin, AccessList};
use crate::channel::{ring_budget, Channel, ChannelMeta, Notice, SessionId};
use crate::config::{ChannelConfig, Config};
use crate::fdstore::FdStore;
use crate::peer::PeerCredentials;
use crate::quota::{Holdings, Quotas, Totals};

/// The config values the registry enforces besides quotas.
#[derive(Clone, Debug)]
pub struct Limits {
    pub default_capacity: u64,
    pub max_capacity: u64,
    pub admin_gids: Vec<u32>,
}

impl Limits {
    pub fn from_config(config: &Config) -> Limits {
        Limits {
            default_capacity: config.default_capacity,
            max_capacity: config.max_capacity,
            admin_gids: config.admin_gids.clone(),
        }
    }
}

/// What a request did, for the server to carry out on the sockets.
pub struct Outcome {
    pub reply: Reply,
    /// Fds to send with the reply (an attach's ring and eventfds).
    pub fds: Vec<OwnedFd>,
    /// The session is now attached to this channel.
    pub attached: Option<String>,
    /// Events for other sessions (a drop tells everyone attached; a fan-out attach tells the
    /// other side about the new ring).
    pub events: Vec<Notice>,
}

/// What a new channel is asked to be, besides its name.
pub struct ChannelSpec<'a> {
    pub capacity: Option<u64>,
    pub producers: &'a [String],
    pub consumers: &'a [String],
    pub max_producers: Option<u32>,
    pub max_consumers: Option<u32>,
    pub slow_consumer: Option<SlowConsumer>,
}

impl Outcome {
    fn reply(reply: Reply) -> Outcome {
        Outcome {
            reply,
            fds: Vec::new(),
            attached: None,
            events: Vec::new(),
        }
    }

    fn error(code: ErrorCode, message: impl Into<String>) -> Outcome {
        Outcome::reply(Reply::failure(code, message))
    }
}

/// Sums over all channels, kept up to date as channels come, go and change, so that admitting
/// a connection or creating a channel never walks every channel.
#[derive(Default)]
struct Usage {
    fds: usize,
    ring_bytes: u64,
    /// Channels and ring bytes per owner uid (runtime channels).
    owned: HashMap<u32, (usize, u64)>,
    /// Durable consumer names per owner uid, over all channels.
    durable: HashMap<u32, usize>,
}

impl Usage {
    fn count(&mut self, channel: &Channel) {
        self.fds += channel.open_fds();
        self.ring_bytes += channel.ring_budget();
        if let Some(uid) = channel.meta.owner_uid {
            let owned = self.owned.entry(uid).or_default();
            owned.0 += 1;
            owned.1 += channel.ring_budget();
        }
        for uid in channel.durable_owners() {
            *self.durable.entry(uid).or_default() += 1;
        }
    }

    fn forget(&mut self, channel: &Channel) {
        self.fds = self.fds.saturating_sub(channel.open_fds());
        self.ring_bytes = self.ring_bytes.saturating_sub(channel.ring_budget());
        if let Some(uid) = channel.meta.owner_uid {
            if let Some(owned) = self.owned.get_mut(&uid) {
                owned.0 = owned.0.saturating_sub(1);
                owned.1 = owned.1.saturating_sub(channel.ring_budget());
                if owned.0 == 0 {
                    self.owned.remove(&uid);
                }
            }
        }
        for uid in channel.durable_owners() {
            if let Some(names) = self.durable.get_mut(&uid) {
                *names = names.saturating_sub(1);
                if *names == 0 {
                    self.durable.remove(&uid);
                }
            }
        }
    }
}

pub struct Registry {
    channels: BTreeMap<String, Channel>,
    usage: Usage,
    limits: Limits,
    quotas: Quotas,
    fd_store: FdStore,
    log: Logger,
    /// What happened since the server last looked, for `monitor` connections, each with the
    /// owner of a channel that no longer exists (who may still see its drop).
    watched: Vec<(MonitorEvent, Option<u32>)>,
    /// Per channel: the loss total last reported to monitors.
    losses_told: BTreeMap<String, u64>,
}

/// Milliseconds since the epoch, for monitor events.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A monitor event about `channel`, the rest to be filled in.
pub fn watched(what: MonitorKind, channel: Option<&str>) -> MonitorEvent {
    MonitorEvent {
        at_unix_ms: now_unix_ms(),
        what,
        channel: channel.map(str::to_string),
        role: None,
        pid: None,
        uid: None,
        name: None,
        count: None,
        detail: None,
    }
}

impl Registry {
    pub fn new(config: &Config, fd_store: FdStore, log: Logger) -> Registry {
        Registry {
            channels: BTreeMap::new(),
            usage: Usage::default(),
            limits: Limits::from_config(config),
            quotas: Quotas::from_config(config),
            fd_store,
            log,
            watched: Vec::new(),
            losses_told: BTreeMap::new(),
        }
    }

    /// Notes an event for monitors.
    pub fn watch(&mut self, event: MonitorEvent) {
        self.watched.push((event, None));
    }

    /// The events noted since the last call.
    pub fn take_watched(&mut self) -> Vec<(MonitorEvent, Option<u32>)> {
        std::mem::take(&mut self.watched)
    }

    /// Notes the messages lost since the last look (rings count them, the broker does not see
    /// them happen: it looks at every housekeeping pass, so that what monitors are told is
    /// what happened since; with no monitor the events go nowhere).
    pub fn look_for_losses(&mut self) {
        for channel in self.channels.values() {
            let lost = channel.totals().messages_lost;
            let told = self
                .losses_told
                .entry(channel.name().to_string())
                .or_insert(0);
            if lost > *told {
                let mut event = watched(MonitorKind::Loss, Some(channel.name()));
                event.count = Some(lost - *told);
                self.watched.push((event, None));
                *told = lost;
            }
        }
    }

    /// Whether `peer` may see what happens to channel `name`: admins see every channel,
    /// others those they may attach to (either way) or own. `owner` answers for a channel
    /// that is gone (dropped).
    pub fn may_watch(&self, name: &str, owner: Option<u32>, peer: &PeerCredentials) -> bool {
        if self.is_admin(peer) {
            return true;
        }
        match self.channels.get(name) {
            Some(channel) => {
                channel.meta.owner_uid == Some(peer.uid)
                    || channel.access(Role::Producer).admits(peer)
                    || channel.access(Role::Consumer).admits(peer)
            }
            None => owner.is_some_and(|uid| uid == peer.uid),
        }
    }

    pub fn is_admin(&self, peer: &PeerCredentials) -> bool {
        peer.uid == 0 || is_admin(peer, &self.limits.admin_gids)
    }

    /// What `uid` holds in channels it owns; `clients` is filled in by the caller.
    pub fn holdings(&self, uid: u32, clients: usize) -> Holdings {
        let (channels, ring_bytes) = self.usage.owned.get(&uid).copied().unwrap_or_default();
        Holdings {
            clients,
            channels,
            ring_bytes,
            durable_consumers: self.usage.durable.get(&uid).copied().unwrap_or(0),
        }
    }

    pub fn totals(&self, clients: usize) -> Totals {
        Totals {
            clients,
            channels: self.channels.len(),
            ring_bytes: self.usage.ring_bytes,
        }
    }

    /// Fds the broker holds for all channels.
    pub fn open_fds(&self) -> usize {
        self.usage.fds
    }

    fn insert(&mut self, channel: Channel) {
        self.usage.count(&channel);
        if let Some(old) = self.channels.insert(channel.name().to_string(), channel) {
            self.usage.forget(&old);
        }
    }

    fn take(&mut self, name: &str) -> Option<Channel> {
        let channel = self.channels.remove(name)?;
        self.usage.forget(&channel);
        Some(channel)
    }

    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    pub fn expire_rate_state(&mut self, now: Instant) {
        self.quotas.expire(now);
    }

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

    fn remove_if_unused(&mut self, name: &str) {
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

    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    pub fn list(&self) -> Reply {
        Reply::success(ChannelList {
            channels: self.channels.values().map(Channel::info).collect(),
        })
    }

    pub fn info(&self, name: &str) -> Reply {
        match self.channels.get(name) {
            Some(channel) => Reply::success(channel.info()),
            None => no_such_channel(name),
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

fn no_such_channel(name: &str) -> Reply {
    Reply::failure(ErrorCode::NoSuchChannel, format!("no such channel: {name}"))
}
