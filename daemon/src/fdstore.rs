//! Channels kept in systemd's file-descriptor store, so that they, and the unread data in their
//! rings, survive a restart or crash of the broker.
//!
//! A one-to-one channel is stored as fds named `ch.NAME.ring` (the ring memfd), `ch.NAME.meta`
//! (a sealed memfd holding the name, capacity, origin, owner and access as JSON) and, once
//! someone has attached, `ch.NAME.data` and `ch.NAME.space` (the eventfds).
//!
//! A fan-out channel (several producers or consumers) keeps what outlives its clients: its
//! producer slots' eventfds `ch.NAME/pP.space`, and for each durable queue (and the single
//! queue of a `max_consumers = 1` channel) its eventfd `ch.NAME/qQ.data` and a ring per slot
//! `ch.NAME/qQ/pP.ring`; its metadata `ch.NAME/mN.meta` also lists the slots and queues, and is
//! replaced (new serial first, then the old one removed) when they change. Anonymous consumers'
//! queues are not kept: they end with their connections. Channel names never contain `/`.
//!
//! On start, systemd hands everything back through `LISTEN_FDS`/`LISTEN_FDNAMES`; each group is
//! checked (seals, sizes, fd types, metadata) and a bad one is logged, closed and removed from
//! the store, never trusted. Outside systemd (`NOTIFY_SOCKET` unset) nothing is stored.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;

use sd_notify::NotifyState;
use serde::{Deserialize, Serialize};
use shmem_broker_proto::names::validate_stored_channel_name;
use shmem_broker_proto::ring::{
    check_sealed_memfd, RingFds, RingFiles, SharedRing, CAPACITY_GRANULE, HEADER_SIZE,
    MAX_CAPACITY, MIN_CAPACITY,
};
use shmem_broker_proto::wire::{Origin, SlowConsumer, MAX_ENDPOINTS};
use shmem_ipc::mem::mfd::{FileSeal, Memfd, MemfdOptions, SealsHashSet};
use slog::{error, info, warn, Logger};

use crate::access::AccessList;
use crate::channel::{Channel, ChannelMeta, Counts, Lane, Totals};

/// A consumer queue as systemd's fd store keeps it: its id, and the durable consumer's name
/// (`None`: the single consumer's queue of a `max_consumers = 1` channel) and owner.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueRecord {
    pub id: u32,
    pub name: Option<String>,
    /// The uid that registered the durable name. Absent in records of brokers that did not
    /// keep owners: such a name is claimed by the next uid that attaches to it (it was open to
    /// every admitted consumer until then, so nobody loses anything they had).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_uid: Option<u32>,
}

/// What of a fan-out channel outlives the broker in systemd's fd store: its producer slots,
/// and the queues of durable consumers (and of the single consumer of a `max_consumers = 1`
/// channel) with their rings. Anonymous consumers' queues end with their connections anyway,
/// and the control page is made afresh (sealed against writes, it cannot be mapped writable
/// again).
pub struct DurableParts<'a> {
    pub slots: u32,
    pub next_queue_id: u32,
    pub queues: Vec<QueueRecord>,
    /// Named `p{slot}.space`, `q{queue}.data` and `q{queue}/p{slot}.ring`.
    pub fds: Vec<(String, BorrowedFd<'a>)>,
}

/// A durable queue read back from systemd's fd store.
pub struct RestoredQueue {
    pub record: QueueRecord,
    pub data_ready: Option<OwnedFd>,
    /// One per producer slot, in slot order.
    pub lanes: Vec<Lane>,
}

const PREFIX: &str = "ch.";
const PARTS: [&str; 5] = ["ring", "ack", "data", "space", "meta"];
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
    /// Fan-out channels: producer slots made so far, the durable queues, the next queue id.
    #[serde(default)]
    slots: u32,
    #[serde(default)]
    queues: Vec<QueueRecord>,
    #[serde(default)]
    next_queue_id: u32,
    /// Fan-out channels: the running totals, and the counters of the kept rings as they were
    /// last added to them (a one-to-one channel's totals are its ring's own counters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    totals: Option<Totals>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    seen: Vec<(u32, u32, Counts)>,
}

fn one() -> u32 {
    1
}

/// What of a fan-out channel is in the store now, so that a change stores only the difference.
#[derive(Default)]
struct FanoutRecord {
    /// Full fd names of the eventfds and rings stored, with the inode each one's fd had: a ring
    /// the broker replaced (a client scribbled on it) keeps its name but not its inode.
    names: BTreeMap<String, u64>,
    meta_serial: u64,
    meta_json: Vec<u8>,
}

impl FanoutRecord {
    fn meta_name(&self, channel: &str) -> Option<String> {
        (self.meta_serial > 0).then(|| fanout_name(channel, &format!("m{}.meta", self.meta_serial)))
    }
}

pub struct FdStore {
    enabled: bool,
    fanout: HashMap<String, FanoutRecord>,
    log: Logger,
}

impl FdStore {
    pub fn new(log: Logger) -> FdStore {
        FdStore {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            fanout: HashMap::new(),
            log,
        }
    }

    /// Hands the channel's fds to systemd to keep (a fan-out channel: what changed since).
    pub fn save(&mut self, channel: &Channel) {
        if !self.enabled {
            return;
        }
        let saved = if channel.meta.is_fanout() {
            self.try_sync_fanout(channel)
        } else {
            self.try_save(channel)
        };
        if let Err(err) = saved {
            warn!(self.log, "cannot save channel in systemd's fd store; it will not survive a restart";
                "channel" => channel.name(), "error" => %err);
        }
    }

    /// Stores a restored channel whose rings were replaced: a fan-out channel's sync sees the
    /// new inodes; a one-to-one channel's ring entry is swapped.
    fn resave(&mut self, channel: &Channel) {
        if !channel.meta.is_fanout() {
            self.remove(&fd_name(channel.name(), "ring"));
            self.remove(&fd_name(channel.name(), "ack"));
        }
        self.save(channel);
    }

    fn try_save(&self, channel: &Channel) -> std::io::Result<()> {
        let meta = write_meta(&stored_meta(channel))?;
        if let Some((lane, _)) = channel.single_ring() {
            self.store(
                &fd_name(channel.name(), "ring"),
                lane.files.ring.as_file().as_fd(),
            )?;
            if let Some(ack) = &lane.files.ack {
                self.store(&fd_name(channel.name(), "ack"), ack.as_file().as_fd())?;
            }
        }
        self.store(&fd_name(channel.name(), "meta"), meta.as_file().as_fd())?;
        self.try_save_wake(channel)
    }

    /// Hands systemd a one-to-one channel's eventfds, made at its first attach.
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
            self.store(&fd_name(channel.name(), "data"), data_ready)?;
            self.store(&fd_name(channel.name(), "space"), space_ready)?;
        }
        Ok(())
    }

    /// Brings the store in line with a fan-out channel's durable parts: new fds and metadata
    /// first, then what is gone is removed, so a crash in between loses nothing.
    fn try_sync_fanout(&mut self, channel: &Channel) -> std::io::Result<()> {
        let Some(parts) = channel.durable_parts() else {
            return Ok(());
        };
        let name = channel.name();
        let mut meta = stored_meta(channel);
        meta.slots = parts.slots;
        meta.queues = parts.queues;
        meta.next_queue_id = parts.next_queue_id;
        meta.totals = Some(channel.totals());
        meta.seen = channel.seen_counts();
        let json = serde_json::to_vec(&meta).map_err(std::io::Error::other)?;
        let desired: BTreeMap<String, BorrowedFd<'_>> = parts
            .fds
            .into_iter()
            .map(|(suffix, fd)| (fanout_name(name, &suffix), fd))
            .collect();
        let mut record = self.fanout.remove(name).unwrap_or_default();
        let result = self.apply_fanout(name, &mut record, &desired, &json);
        self.fanout.insert(name.to_string(), record);
        result
    }

    fn apply_fanout(
        &self,
        channel: &str,
        record: &mut FanoutRecord,
        desired: &BTreeMap<String, BorrowedFd<'_>>,
        json: &[u8],
    ) -> std::io::Result<()> {
        for (fd_name, fd) in desired {
            let inode = inode_of(*fd);
            match record.names.get(fd_name) {
                Some(stored) if *stored == inode => continue,
                // A replaced ring: systemd keys entries by name only, so the old one goes
                // first (a crash right here loses that ring's unread data, nothing else).
                Some(_) => self.remove(fd_name),
                None => {}
            }
            self.store(fd_name, *fd)?;
            record.names.insert(fd_name.clone(), inode);
        }
        if record.meta_json != json {
            let old = record.meta_name(channel);
            let memfd = write_meta_json(channel, json)?;
            let serial = record.meta_serial + 1;
            self.store(
                &fanout_name(channel, &format!("m{serial}.meta")),
                memfd.as_file().as_fd(),
            )?;
            record.meta_serial = serial;
            record.meta_json = json.to_vec();
            if let Some(old) = old {
                self.remove(&old);
            }
        }
        let gone: Vec<String> = record
            .names
            .keys()
            .filter(|n| !desired.contains_key(*n))
            .cloned()
            .collect();
        for fd_name in gone {
            self.remove(&fd_name);
            record.names.remove(&fd_name);
        }
        Ok(())
    }

    fn store(&self, name: &str, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        sd_notify::notify_with_fds(&[NotifyState::FdStore, NotifyState::FdName(name)], &[fd])
    }

    /// Removes a dropped channel's fds from the store.
    pub fn forget(&mut self, channel: &str) {
        if !self.enabled {
            return;
        }
        for part in PARTS {
            self.remove(&fd_name(channel, part));
        }
        if let Some(record) = self.fanout.remove(channel) {
            for name in record.names.keys().chain(record.meta_name(channel).iter()) {
                self.remove(name);
            }
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
    pub fn restore(&mut self, stored: Vec<(OwnedFd, String)>) -> Vec<Channel> {
        let mut groups: BTreeMap<String, Vec<StoredFd>> = BTreeMap::new();
        for (fd, name) in stored {
            match parse_name(&name) {
                Some((channel, path, part)) => groups.entry(channel).or_default().push(StoredFd {
                    path,
                    part,
                    name,
                    fd,
                }),
                None => {
                    warn!(self.log, "discarding unknown fd passed by systemd"; "fd_name" => &name);
                    self.remove(&name);
                }
            }
        }
        let mut channels = Vec::new();
        for (name, entries) in groups {
            let names: Vec<String> = entries.iter().map(|e| e.name.clone()).collect();
            match assemble(&name, entries) {
                Ok(restored) => {
                    for stale in &restored.stale {
                        warn!(self.log, "removing stale fd of a stored channel"; "fd_name" => stale);
                        self.remove(stale);
                    }
                    let channel = restored.channel;
                    if let Some(record) = restored.fanout {
                        self.fanout.insert(name.clone(), record);
                    }
                    for ring in &restored.replaced {
                        warn!(self.log, "replaced a stored ring a client had scribbled on; its unread data is lost";
                            "channel" => &name, "ring" => ring);
                    }
                    if !restored.replaced.is_empty() {
                        self.resave(&channel);
                    }
                    let unread = channel.info().bytes_unread;
                    info!(self.log, "channel restored from systemd's fd store";
                        "channel" => &name, "capacity" => channel.capacity(), "bytes_unread" => unread);
                    channels.push(channel);
                }
                Err(reason) => {
                    error!(self.log, "discarding stored channel"; "channel" => &name, "reason" => &reason);
                    for fd_name in names {
                        self.remove(&fd_name);
                    }
                }
            }
        }
        channels
    }
}

fn fd_name(channel: &str, part: &str) -> String {
    format!("{PREFIX}{channel}.{part}")
}

fn fanout_name(channel: &str, suffix: &str) -> String {
    format!("{PREFIX}{channel}/{suffix}")
}

/// `ch.NAME.PART` or `ch.NAME/PATH.PART` -> (NAME, PATH or "", PART).
fn parse_name(name: &str) -> Option<(String, String, &'static str)> {
    let (left, part) = name.strip_prefix(PREFIX)?.rsplit_once('.')?;
    let part = PARTS.iter().find(|p| **p == part)?;
    let (channel, path) = left.split_once('/').unwrap_or((left, ""));
    Some((channel.to_string(), path.to_string(), part))
}

/// One fd of a stored channel.
struct StoredFd {
    path: String,
    part: &'static str,
    name: String,
    fd: OwnedFd,
}

/// A channel rebuilt from the store, with what to tidy up.
struct Restored {
    channel: Channel,
    /// Fan-out channels: what is in the store now.
    fanout: Option<FanoutRecord>,
    /// Fds of the group that were not used (older metadata, leftovers of a change a crash
    /// interrupted): to be removed from the store.
    stale: Vec<String>,
    /// Rings a client had scribbled on, replaced by empty ones: which, and why.
    replaced: Vec<String>,
}

fn stored_meta(channel: &Channel) -> StoredMeta {
    let meta = &channel.meta;
    StoredMeta {
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
        slots: 0,
        queues: Vec::new(),
        next_queue_id: 0,
        totals: None,
        seen: Vec::new(),
    }
}

fn write_meta(meta: &StoredMeta) -> std::io::Result<Memfd> {
    let json = serde_json::to_vec(meta).map_err(std::io::Error::other)?;
    write_meta_json(&meta.name, &json)
}

fn write_meta_json(channel: &str, json: &[u8]) -> std::io::Result<Memfd> {
    let memfd = MemfdOptions::default()
        .allow_sealing(true)
        .close_on_exec(true)
        .create(format!("shmem-broker-meta:{channel}"))
        .map_err(std::io::Error::other)?;
    memfd.as_file().write_all(json)?;
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

/// The one fd at `path`/`part`, if present; more than one is an error.
fn take(entries: &mut Vec<StoredFd>, path: &str, part: &str) -> Result<Option<StoredFd>, String> {
    let mut found: Vec<StoredFd> = Vec::new();
    let mut index = 0;
    while index < entries.len() {
        if entries[index].path == path && entries[index].part == part {
            found.push(entries.swap_remove(index));
        } else {
            index += 1;
        }
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        n => Err(format!("{n} fds named {path}.{part}")),
    }
}

fn take_one(entries: &mut Vec<StoredFd>, path: &str, part: &str) -> Result<StoredFd, String> {
    let what = if path.is_empty() {
        part.to_string()
    } else {
        format!("{path}.{part}")
    };
    take(entries, path, part)?.ok_or_else(|| format!("{what} fd missing"))
}

/// The metadata to use: the plain `meta` of a one-to-one channel, or a fan-out channel's
/// newest `mN.meta`; older ones are stale.
fn newest_meta(entries: &mut Vec<StoredFd>, stale: &mut Vec<String>) -> Result<StoredFd, String> {
    let serial = |e: &StoredFd| -> Option<u64> {
        if e.path.is_empty() {
            Some(0)
        } else {
            e.path.strip_prefix('m')?.parse().ok()
        }
    };
    let mut metas: Vec<(u64, StoredFd)> = Vec::new();
    let mut index = 0;
    while index < entries.len() {
        if entries[index].part == "meta" {
            let entry = entries.swap_remove(index);
            match serial(&entry) {
                Some(n) => metas.push((n, entry)),
                None => stale.push(entry.name),
            }
        } else {
            index += 1;
        }
    }
    metas.sort_by_key(|(n, _)| *n);
    let newest = metas.pop().ok_or("meta fd missing")?;
    stale.extend(metas.into_iter().map(|(_, e)| e.name));
    Ok(newest.1)
}

fn assemble(name: &str, mut entries: Vec<StoredFd>) -> Result<Restored, String> {
    validate_stored_channel_name(name)?;
    let mut stale = Vec::new();
    let meta_fd = newest_meta(&mut entries, &mut stale)?;
    let meta_name = meta_fd.name.clone();
    let mut replaced = Vec::new();
    let (stored, json) = read_meta(meta_fd.fd)?;
    if stored.name != name {
        return Err(format!("metadata names channel {:?}", stored.name));
    }
    for count in [stored.max_producers, stored.max_consumers] {
        if !(1..=MAX_ENDPOINTS).contains(&count) {
            return Err(format!("metadata allows {count} producers or consumers"));
        }
    }
    let capacity = stored.capacity;
    if !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) || capacity % CAPACITY_GRANULE != 0 {
        return Err(format!("metadata gives capacity {capacity}"));
    }
    let meta = ChannelMeta {
        name: stored.name.clone(),
        origin: stored.origin.clone(),
        owner_uid: stored.owner_uid,
        producers: AccessList::parse_all(&stored.producers)?,
        consumers: AccessList::parse_all(&stored.consumers)?,
        max_producers: stored.max_producers,
        max_consumers: stored.max_consumers,
        slow_consumer: stored.slow_consumer,
    };
    let (channel, fanout) = if meta.is_fanout() {
        let mut record = FanoutRecord {
            meta_serial: meta_name
                .rsplit_once("/m")
                .and_then(|(_, rest)| rest.strip_suffix(".meta"))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
            meta_json: json,
            ..FanoutRecord::default()
        };
        let channel = assemble_fanout(meta, &stored, &mut entries, &mut record, &mut replaced)?;
        (channel, Some(record))
    } else {
        let channel = assemble_single(meta, capacity, &mut entries, &mut replaced)?;
        (channel, None)
    };
    stale.extend(entries.into_iter().map(|e| e.name));
    Ok(Restored {
        replaced,
        channel,
        fanout,
        stale,
    })
}

fn assemble_single(
    meta: ChannelMeta,
    capacity: u64,
    entries: &mut Vec<StoredFd>,
    replaced: &mut Vec<String>,
) -> Result<Channel, String> {
    let ring_fd = take_one(entries, "", "ring")?.fd;
    // Layout 3 rings have one; older ones, which keep working, do not.
    let ack_fd = take(entries, "", "ack")?.map(|entry| entry.fd);
    // The eventfds exist once someone attached: both or neither.
    let data = take(entries, "", "data")?;
    let space = take(entries, "", "space")?;
    let wake = match (data, space) {
        (None, None) => None,
        (Some(data), Some(space)) => Some((eventfd_checked(data)?.fd, eventfd_checked(space)?.fd)),
        _ => return Err("one of the two eventfds is missing".into()),
    };
    let label = format!("{}:p0:c0", meta.name);
    let lane = open_lane(ring_fd, ack_fd, capacity, &label, replaced)?;
    Channel::assemble(meta, capacity, Some(lane), wake).map_err(|e| e.to_string())
}

fn assemble_fanout(
    meta: ChannelMeta,
    stored: &StoredMeta,
    entries: &mut Vec<StoredFd>,
    record: &mut FanoutRecord,
    replaced: &mut Vec<String>,
) -> Result<Channel, String> {
    let mut used = |entry: StoredFd| {
        record.names.insert(entry.name, inode_of(entry.fd.as_fd()));
        entry.fd
    };
    let mut slots = Vec::new();
    for slot in 0..stored.slots.max(1) {
        let space = take(entries, &format!("p{slot}"), "space")?;
        slots.push(match space {
            Some(entry) => Some(eventfd_checked(entry).map(&mut used)?),
            None => None,
        });
    }
    let mut queues = Vec::new();
    for queue in &stored.queues {
        let data = take(entries, &format!("q{}", queue.id), "data")?;
        let data_ready = match data {
            Some(entry) => Some(eventfd_checked(entry).map(&mut used)?),
            None => None,
        };
        let mut lanes = Vec::new();
        for slot in 0..slots.len() {
            let path = format!("q{}/p{slot}", queue.id);
            let ring = used(take_one(entries, &path, "ring")?);
            let ack = take(entries, &path, "ack")?.map(&mut used);
            let label = format!("{}:p{slot}:c{}", stored.name, queue.id);
            lanes.push(open_lane(ring, ack, stored.capacity, &label, replaced)?);
        }
        queues.push(RestoredQueue {
            record: queue.clone(),
            data_ready,
            lanes,
        });
    }
    let mut channel = Channel::restore_fanout(
        meta,
        stored.capacity,
        slots,
        queues,
        stored.next_queue_id.max(1),
    )?;
    if let Some(totals) = &stored.totals {
        channel.restore_totals(totals.clone(), &stored.seen);
    }
    Ok(channel)
}

/// The entry's fd if it is an eventfd (the entry is handed back for bookkeeping).
fn eventfd_checked(entry: StoredFd) -> Result<StoredFd, String> {
    if is_eventfd(&entry.fd) {
        Ok(entry)
    } else {
        Err(format!("{} is not an eventfd", entry.name))
    }
}

/// Maps a stored ring. A ring whose header a client scribbled on (its seals and size, which
/// no client can change, still right) is replaced by an empty one, named in `replaced`: its
/// unread data is lost, but the channel and its other rings are kept. Losing the whole channel
/// over one ring would let any client of it do what only an admin's `drop` may.
fn open_lane(
    ring_fd: OwnedFd,
    ack_fd: Option<OwnedFd>,
    capacity: u64,
    label: &str,
    replaced: &mut Vec<String>,
) -> Result<Lane, String> {
    let as_memfd = |fd: &OwnedFd, what: &str| {
        let copy = fd
            .try_clone()
            .map_err(|e| format!("cannot duplicate {what} fd: {e}"))?;
        Memfd::try_from_file(std::fs::File::from(copy))
            .map_err(|_| format!("{what} fd is not a memfd"))
    };
    let files = RingFiles {
        ring: as_memfd(&ring_fd, "ring")?,
        ack: ack_fd.as_ref().map(|fd| as_memfd(fd, "ack")).transpose()?,
    };
    let fds = RingFds {
        ring: ring_fd,
        ack: ack_fd,
    };
    match SharedRing::open(fds, capacity) {
        Ok(ring) => Ok(Lane {
            ring,
            files,
            seen: Cell::new(Counts::default()),
        }),
        Err(err) if sealed_and_sized(&files.ring, capacity) => {
            let (ring, files) = SharedRing::create(label, capacity)
                .map_err(|e| format!("cannot replace scribbled ring {label}: {e}"))?;
            replaced.push(format!("{label}: {err}"));
            Ok(Lane {
                ring,
                files,
                seen: Cell::new(Counts::default()),
            })
        }
        Err(err) => Err(err.to_string()),
    }
}

/// The inode of `fd` (0 if it cannot be read: then the entry is stored again at the next sync).
fn inode_of(fd: BorrowedFd<'_>) -> u64 {
    rustix::fs::fstat(fd).map_or(0, |stat| stat.st_ino)
}

/// Carries the seals the broker put on its rings and has the size of a ring of `capacity`:
/// what only the broker could have made so.
fn sealed_and_sized(memfd: &Memfd, capacity: u64) -> bool {
    HEADER_SIZE
        .checked_add(capacity)
        .is_some_and(|len| check_sealed_memfd(memfd.as_file().as_fd(), len).is_ok())
}

/// The metadata and its JSON text.
fn read_meta(fd: OwnedFd) -> Result<(StoredMeta, Vec<u8>), String> {
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
    Ok((stored, bytes))
}

fn is_eventfd(fd: &OwnedFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .is_ok_and(|target| target.as_os_str() == "anon_inode:[eventfd]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_for_both_shapes_and_dotted_channel_names() {
        assert_eq!(
            parse_name("ch.cam.front.ring"),
            Some(("cam.front".into(), String::new(), "ring"))
        );
        assert_eq!(
            parse_name("ch.cam.front/q3/p1.ring"),
            Some(("cam.front".into(), "q3/p1".into(), "ring"))
        );
        assert_eq!(
            parse_name("ch.cam/m12.meta"),
            Some(("cam".into(), "m12".into(), "meta"))
        );
        assert_eq!(parse_name("ch.cam.bogus"), None);
        assert_eq!(parse_name("control"), None);
    }
}
