//! The broker core: channels by name, who is attached where, and the policy for every request
//! that touches them. No sockets here: requests come in decoded, outcomes go out as data.
//!
//! This module holds the registry and its read-only views; `lifecycle` makes, reconfigures and
//! removes channels, `attach` attaches and detaches clients and acts on what follows from it
//! (durable consumers dropped, slow consumers evicted).

mod attach;
mod lifecycle;

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::time::Instant;

use shmem_broker_proto::wire::{
    ChannelList, ErrorCode, MonitorEvent, MonitorKind, Reply, Role, SlowConsumer,
};
use slog::Logger;

use crate::access::is_admin;
use crate::channel::{Channel, Notice};
use crate::config::Config;
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
}

fn no_such_channel(name: &str) -> Reply {
    Reply::failure(ErrorCode::NoSuchChannel, format!("no such channel: {name}"))
}
