//! Channels kept in systemd's file-descriptor store, so that they, and the unread data in their
//! rings, survive a restart or crash of the broker.
//!
//! Each channel is stored as fds named `ch.NAME.ring` (the ring memfd), `ch.NAME.meta` (a
//! sealed memfd holding the name, capacity, origin, owner and access as JSON) and, once someone
//! has attached, `ch.NAME.data` and `ch.NAME.space` (the eventfds). On start, systemd hands them
//! back through
//! `LISTEN_FDS`/`LISTEN_FDNAMES`; each group is checked (seals, sizes, fd types, metadata) and a bad
//! one is logged, closed and removed from the store, never trusted. Outside systemd
//! (`NOTIFY_SOCKET` unset) nothing is stored.
//!
//! Fan-out channels (several producers or consumers) keep only their metadata: they come back
//! after a restart, but their rings, durable consumers' queues included, do not.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

use sd_notify::NotifyState;
use serde::{Deserialize, Serialize};
use shmem_broker_client::names::validate_channel_name;
use shmem_broker_client::ring::{SharedRing, CAPACITY_GRANULE, MAX_CAPACITY, MIN_CAPACITY};
use shmem_broker_client::wire::{Origin, SlowConsumer, MAX_ENDPOINTS};
use shmem_ipc::mem::mfd::{FileSeal, Memfd, MemfdOptions, SealsHashSet};
use slog::{error, info, warn, Logger};

use crate::access::AccessList;
use crate::channel::{Channel, ChannelMeta, Lane};

const PREFIX: &str = "ch.";
const PARTS: [&str; 4] = ["ring", "data", "space", "meta"];
/// Metadata is a few hundred bytes; anything bigger is not ours.
const MAX_META_LEN: u64 = 64 * 1024;
const META_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct StoredMeta {
    version: u32,
    name: String,
    capacity: u64,
    origin: Origin,
    owner_uid: Option<u32>,
    /// Numeric specs (`*`, `1000`, `@44`): restoring needs no name lookups.
    producers: Vec<String>,
    consumers: Vec<String>,
    #[serde(default = "one")]
    max_producers: u32,
    #[serde(default = "one")]
    max_consumers: u32,
    #[serde(default)]
    slow_consumer: SlowConsumer,
}

fn one() -> u32 {
    1
}

pub struct FdStore {
    enabled: bool,
    log: Logger,
}

impl FdStore {
    pub fn new(log: Logger) -> FdStore {
        FdStore {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            log,
        }
    }

    /// Hands the channel's fds to systemd to keep.
    pub fn save(&self, channel: &Channel) {
        if !self.enabled {
            return;
        }
        if let Err(err) = self.try_save(channel) {
            warn!(self.log, "cannot save channel in systemd's fd store; it will not survive a restart";
                "channel" => channel.name(), "error" => %err);
        }
    }

    fn try_save(&self, channel: &Channel) -> std::io::Result<()> {
        let meta = write_meta(channel)?;
        if let Some((lane, _)) = channel.single_ring() {
            self.store(channel.name(), "ring", lane.memfd.as_file().as_fd())?;
        }
        self.store(channel.name(), "meta", meta.as_file().as_fd())?;
        self.try_save_wake(channel)
    }

    /// Hands systemd a channel's eventfds, made at its first attach.
    pub fn save_wake(&self, channel: &Channel) {
        if !self.enabled {
            return;
        }
        if let Err(err) = self.try_save_wake(channel) {
            warn!(self.log, "cannot save channel eventfds in systemd's fd store";
                "channel" => channel.name(), "error" => %err);
        }
    }

    fn try_save_wake(&self, channel: &Channel) -> std::io::Result<()> {
        if let Some((_, Some((data_ready, space_ready)))) = channel.single_ring() {
            self.store(channel.name(), "data", data_ready)?;
            self.store(channel.name(), "space", space_ready)?;
        }
        Ok(())
    }

    fn store(
        &self,
        channel: &str,
        part: &str,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> std::io::Result<()> {
        let name = fd_name(channel, part);
        sd_notify::notify_with_fds(&[NotifyState::FdStore, NotifyState::FdName(&name)], &[fd])
    }

    /// Removes a dropped channel's fds from the store.
    pub fn forget(&self, channel: &str) {
        if !self.enabled {
            return;
        }
        for part in PARTS {
            self.remove(&fd_name(channel, part));
        }
    }

    fn remove(&self, name: &str) {
        if let Err(err) =
            sd_notify::notify(&[NotifyState::FdStoreRemove, NotifyState::FdName(name)])
        {
            warn!(self.log, "cannot remove fd from systemd's fd store"; "fd_name" => name,
                "error" => %err);
        }
    }

    /// Rebuilds the channels systemd passed back. Bad entries are logged and discarded.
    pub fn restore(&self, stored: Vec<(OwnedFd, String)>) -> Vec<Channel> {
        let mut groups: BTreeMap<String, BTreeMap<&'static str, Vec<OwnedFd>>> = BTreeMap::new();
        for (fd, name) in stored {
            let parsed = name
                .strip_prefix(PREFIX)
                .and_then(|rest| rest.rsplit_once('.'))
                .and_then(|(channel, part)| {
                    PARTS
                        .iter()
                        .find(|p| **p == part)
                        .map(|p| (channel.to_string(), *p))
                });
            match parsed {
                Some((channel, part)) => groups
                    .entry(channel)
                    .or_default()
                    .entry(part)
                    .or_default()
                    .push(fd),
                None => {
                    warn!(self.log, "discarding unknown fd passed by systemd"; "fd_name" => &name);
                    self.remove(&name);
                }
            }
        }
        let mut channels = Vec::new();
        for (name, parts) in groups {
            match assemble(&name, parts) {
                Ok(channel) => {
                    let unread = channel.info().bytes_unread;
                    info!(self.log, "channel restored from systemd's fd store";
                        "channel" => &name, "capacity" => channel.capacity(), "bytes_unread" => unread);
                    channels.push(channel);
                }
                Err(reason) => {
                    error!(self.log, "discarding stored channel"; "channel" => &name, "reason" => &reason);
                    self.forget(&name);
                }
            }
        }
        channels
    }
}

fn fd_name(channel: &str, part: &str) -> String {
    format!("{PREFIX}{channel}.{part}")
}

fn write_meta(channel: &Channel) -> std::io::Result<Memfd> {
    let meta = &channel.meta;
    let stored = StoredMeta {
        version: META_VERSION,
        name: meta.name.clone(),
        capacity: channel.capacity(),
        origin: meta.origin.clone(),
        owner_uid: meta.owner_uid,
        producers: meta.producers.to_specs(),
        consumers: meta.consumers.to_specs(),
        max_producers: meta.max_producers,
        max_consumers: meta.max_consumers,
        slow_consumer: meta.slow_consumer,
    };
    let json = serde_json::to_vec(&stored).map_err(std::io::Error::other)?;
    let memfd = MemfdOptions::default()
        .allow_sealing(true)
        .close_on_exec(true)
        .create(format!("shmem-broker-meta:{}", meta.name))
        .map_err(std::io::Error::other)?;
    memfd.as_file().write_all(&json)?;
    let mut seals = SealsHashSet::new();
    for seal in [
        FileSeal::SealWrite,
        FileSeal::SealShrink,
        FileSeal::SealGrow,
        FileSeal::SealSeal,
    ] {
        seals.insert(seal);
    }
    memfd.add_seals(&seals).map_err(std::io::Error::other)?;
    Ok(memfd)
}

fn take_one(
    parts: &mut BTreeMap<&'static str, Vec<OwnedFd>>,
    part: &str,
) -> Result<OwnedFd, String> {
    let mut fds = parts.remove(part).unwrap_or_default();
    match fds.len() {
        1 => fds.pop().ok_or_else(|| format!("{part} fd missing")),
        0 => Err(format!("{part} fd missing")),
        n => Err(format!("{n} fds named {part}")),
    }
}

fn assemble(
    name: &str,
    mut parts: BTreeMap<&'static str, Vec<OwnedFd>>,
) -> Result<Channel, String> {
    validate_channel_name(name)?;
    let stored = read_meta(take_one(&mut parts, "meta")?)?;
    if stored.name != name {
        return Err(format!("metadata names channel {:?}", stored.name));
    }
    for count in [stored.max_producers, stored.max_consumers] {
        if !(1..=MAX_ENDPOINTS).contains(&count) {
            return Err(format!("metadata allows {count} producers or consumers"));
        }
    }
    let meta = ChannelMeta {
        name: stored.name,
        origin: stored.origin,
        owner_uid: stored.owner_uid,
        producers: AccessList::parse_all(&stored.producers)?,
        consumers: AccessList::parse_all(&stored.consumers)?,
        max_producers: stored.max_producers,
        max_consumers: stored.max_consumers,
        slow_consumer: stored.slow_consumer,
    };
    if meta.is_fanout() {
        let capacity = stored.capacity;
        if !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) || capacity % CAPACITY_GRANULE != 0 {
            return Err(format!("metadata gives capacity {capacity}"));
        }
        return Channel::assemble(meta, stored.capacity, None, None).map_err(|e| e.to_string());
    }
    let ring_fd = take_one(&mut parts, "ring")?;
    // The eventfds exist once someone attached: both or neither.
    let wake = match (parts.contains_key("data"), parts.contains_key("space")) {
        (false, false) => None,
        _ => {
            let data_ready = take_one(&mut parts, "data")?;
            let space_ready = take_one(&mut parts, "space")?;
            for (part, fd) in [("data", &data_ready), ("space", &space_ready)] {
                if !is_eventfd(fd) {
                    return Err(format!("{part} fd is not an eventfd"));
                }
            }
            Some((data_ready, space_ready))
        }
    };
    let memfd_copy = ring_fd
        .try_clone()
        .map_err(|e| format!("cannot duplicate ring fd: {e}"))?;
    let ring = SharedRing::open(ring_fd, stored.capacity).map_err(|e| e.to_string())?;
    let memfd = Memfd::try_from_file(std::fs::File::from(memfd_copy))
        .map_err(|_| "ring fd is not a memfd".to_string())?;
    Channel::assemble(meta, stored.capacity, Some(Lane { ring, memfd }), wake)
        .map_err(|e| e.to_string())
}

fn read_meta(fd: OwnedFd) -> Result<StoredMeta, String> {
    let memfd = Memfd::try_from_file(std::fs::File::from(fd))
        .map_err(|_| "meta fd is not a memfd".to_string())?;
    let seals = memfd.seals().map_err(|e| format!("meta seals: {e}"))?;
    if !seals.contains(&FileSeal::SealWrite) {
        return Err("meta memfd is not sealed against writes".into());
    }
    let len = memfd
        .as_file()
        .metadata()
        .map_err(|e| format!("meta size: {e}"))?
        .len();
    if len > MAX_META_LEN {
        return Err(format!("meta memfd of {len} bytes is too large"));
    }
    let mut bytes = vec![0u8; len as usize];
    memfd
        .as_file()
        .read_exact_at(&mut bytes, 0)
        .map_err(|e| format!("reading meta: {e}"))?;
    let stored: StoredMeta =
        serde_json::from_slice(&bytes).map_err(|e| format!("meta is not valid: {e}"))?;
    if stored.version != META_VERSION {
        return Err(format!(
            "meta version {} (this broker reads {META_VERSION})",
            stored.version
        ));
    }
    Ok(stored)
}

fn is_eventfd(fd: &OwnedFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .is_ok_and(|target| target.as_os_str() == "anon_inode:[eventfd]")
}
