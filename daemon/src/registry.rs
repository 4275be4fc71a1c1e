//! The broker core: channels by name, who is attached where, and the policy for every request
//! that touches them. No sockets here: requests come in decoded, outcomes go out as data.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::time::Instant;

use shmem_broker_client::names::validate_channel_name;
use shmem_broker_client::ring::{CAPACITY_GRANULE, MIN_CAPACITY};
use shmem_broker_client::size::format_size;
use shmem_broker_client::wire::{ChannelList, Dropped, ErrorCode, Event, Origin, Reply, Role};
use slog::{info, warn, Logger};

use crate::access::{is_admin, AccessList};
use crate::channel::{Attached, Channel, ChannelMeta, SessionId};
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
    /// Events for other sessions (a drop tells everyone attached).
    pub events: Vec<(SessionId, Event)>,
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

pub struct Registry {
    channels: BTreeMap<String, Channel>,
    limits: Limits,
    quotas: Quotas,
    fd_store: FdStore,
    log: Logger,
}

impl Registry {
    pub fn new(config: &Config, fd_store: FdStore, log: Logger) -> Registry {
        Registry {
            channels: BTreeMap::new(),
            limits: Limits::from_config(config),
            quotas: Quotas::from_config(config),
            fd_store,
            log,
        }
    }

    /// What `uid` holds in channels it owns; `clients` is filled in by the caller.
    pub fn holdings(&self, uid: u32, clients: usize) -> Holdings {
        let owned = self
            .channels
            .values()
            .filter(|c| c.meta.owner_uid == Some(uid));
        let (channels, ring_bytes) =
            owned.fold((0, 0), |(n, bytes), c| (n + 1, bytes + c.capacity()));
        Holdings {
            clients,
            channels,
            ring_bytes,
        }
    }

    pub fn totals(&self, clients: usize) -> Totals {
        Totals {
            clients,
            channels: self.channels.len(),
            ring_bytes: self.channels.values().map(Channel::capacity).sum(),
        }
    }

    /// Fds the broker holds for all channels.
    pub fn open_fds(&self) -> usize {
        self.channels.values().map(Channel::open_fds).sum()
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
            self.channels.insert(channel.name().to_string(), channel);
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
        let meta = ChannelMeta {
            name: declared.name.clone(),
            origin: Origin::Config,
            owner_uid: None,
            producers: declared.producers.clone(),
            consumers: declared.consumers.clone(),
        };
        if let Some(existing) = self.channels.get_mut(&declared.name) {
            existing.pending_removal = false;
            if existing.capacity() != declared.capacity {
                warn!(self.log, "channel capacity differs from the config; keeping the existing ring and its data (drop the channel to re-create it)";
                    "channel" => &declared.name, "capacity" => existing.capacity(), "configured" => declared.capacity);
            }
            if existing.meta != meta {
                existing.meta = meta;
                // The stored metadata keeps the old rules: it is never read for them, since
                // every start applies the config to its channels again, as here.
                info!(self.log, "channel access rules updated from config"; "channel" => &declared.name);
            }
            return Ok(());
        }
        let channel = Channel::create(meta, declared.capacity)?;
        info!(self.log, "channel created from config"; "channel" => &declared.name, "capacity" => declared.capacity);
        self.fd_store.save(&channel);
        self.channels.insert(declared.name.clone(), channel);
        Ok(())
    }

    fn remove_if_unused(&mut self, name: &str) {
        if self
            .channels
            .get(name)
            .is_some_and(|c| c.pending_removal && !c.is_attached())
        {
            self.channels.remove(name);
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

    pub fn create(
        &mut self,
        name: &str,
        capacity: Option<u64>,
        producers: &[String],
        consumers: &[String],
        peer: &PeerCredentials,
    ) -> Reply {
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
        let requested = capacity.unwrap_or(self.limits.default_capacity);
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
        let held = self.holdings(peer.uid, 0);
        if let Err(message) = self
            .quotas
            .admit_channel(peer.uid, capacity, held, self.totals(0))
        {
            warn!(self.log, "create refused by quota"; "channel" => name, "peer_pid" => peer.pid,
                "peer_uid" => peer.uid, "reason" => &message);
            return Reply::failure(ErrorCode::LimitReached, message);
        }
        let (producers, consumers) = match (
            AccessList::parse_all(producers),
            AccessList::parse_all(consumers),
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
        };
        match Channel::create(meta, capacity) {
            Ok(channel) => {
                info!(self.log, "channel created"; "channel" => name, "capacity" => capacity,
                    "peer_pid" => peer.pid, "peer_uid" => peer.uid);
                self.fd_store.save(&channel);
                let reply = Reply::success(channel.info());
                self.channels.insert(name.to_string(), channel);
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
        let Some(channel) = self.channels.remove(name) else {
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
                )
            })
            .collect();
        info!(self.log, "channel dropped"; "channel" => name, "attached" => events.len(),
            "peer_pid" => peer.pid, "peer_uid" => peer.uid);
        Outcome {
            events,
            ..Outcome::reply(Reply::success(Dropped {
                channel: name.to_string(),
            }))
        }
    }

    pub fn attach(
        &mut self,
        name: &str,
        role: Role,
        session: SessionId,
        peer: &PeerCredentials,
    ) -> Outcome {
        let Some(channel) = self.channels.get_mut(name).filter(|c| !c.pending_removal) else {
            return Outcome::reply(no_such_channel(name));
        };
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
        if let Some(holder) = channel.slot(role) {
            return Outcome::error(
                ErrorCode::ChannelBusy,
                format!("channel busy: {role} pid {} attached", holder.peer.pid),
            );
        }
        let fds = match channel.attach_fds() {
            Ok((fds, created)) => {
                if created {
                    self.fd_store.save_wake(channel);
                }
                fds
            }
            Err(err) => {
                warn!(self.log, "attach failed"; "channel" => name, "error" => %err);
                return Outcome::error(
                    ErrorCode::Internal,
                    format!("cannot share channel {name:?}: {err}"),
                );
            }
        };
        *channel.slot(role) = Some(Attached {
            session,
            peer: peer.clone(),
        });
        info!(self.log, "attached"; "channel" => name, "role" => %role,
            "peer_pid" => peer.pid, "peer_uid" => peer.uid);
        Outcome {
            reply: Reply::success(channel.attach_info(role)),
            fds,
            attached: Some(name.to_string()),
            events: Vec::new(),
        }
    }

    /// The session holding `role` on channel `name`, if any.
    pub fn holder(&self, name: &str, role: Role) -> Option<SessionId> {
        let channel = self.channels.get(name)?;
        let slot = match role {
            Role::Producer => &channel.producer,
            Role::Consumer => &channel.consumer,
        };
        slot.as_ref().map(|attached| attached.session)
    }

    /// Frees whatever `session` held on `name` (the connection closed).
    pub fn detach(&mut self, name: &str, session: SessionId) {
        if let Some(channel) = self.channels.get_mut(name) {
            if let Some((role, peer)) = channel.detach(session) {
                info!(self.log, "detached"; "channel" => name, "role" => %role,
                    "peer_pid" => peer.pid, "peer_uid" => peer.uid);
            }
        }
        self.remove_if_unused(name);
    }
}

fn no_such_channel(name: &str) -> Reply {
    Reply::failure(ErrorCode::NoSuchChannel, format!("no such channel: {name}"))
}
