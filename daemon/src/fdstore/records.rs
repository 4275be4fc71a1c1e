//! What systemd's fd store keeps of a channel besides its rings and eventfds: the record
//! types, and the sealed metadata memfd (written on save, read back and checked on restore).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};
use shmem_broker_proto::wire::{Origin, SlowConsumer};
use shmem_ipc::mem::mfd::{FileSeal, Memfd, MemfdOptions, SealsHashSet};

use crate::channel::{Channel, Counts, Lane, Totals};

use super::fanout_name;

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

/// Metadata is a few hundred bytes; anything bigger is not ours.
pub(super) const MAX_META_LEN: u64 = 64 * 1024;
pub(super) const META_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
pub(super) struct StoredMeta {
    pub(super) version: u32,
    pub(super) name: String,
    pub(super) capacity: u64,
    pub(super) origin: Origin,
    pub(super) owner_uid: Option<u32>,
    /// Numeric specs (`*`, `1000`, `@44`): restoring needs no name lookups.
    pub(super) producers: Vec<String>,
    pub(super) consumers: Vec<String>,
    #[serde(default = "one")]
    pub(super) max_producers: u32,
    #[serde(default = "one")]
    pub(super) max_consumers: u32,
    #[serde(default)]
    pub(super) slow_consumer: SlowConsumer,
    /// Fan-out channels: producer slots made so far, the durable queues, the next queue id.
    #[serde(default)]
    pub(super) slots: u32,
    #[serde(default)]
    pub(super) queues: Vec<QueueRecord>,
    #[serde(default)]
    pub(super) next_queue_id: u32,
    /// Fan-out channels: the running totals, and the counters of the kept rings as they were
    /// last added to them (a one-to-one channel's totals are its ring's own counters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) totals: Option<Totals>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) seen: Vec<(u32, u32, Counts)>,
}

fn one() -> u32 {
    1
}

/// What of a fan-out channel is in the store now, so that a change stores only the difference.
#[derive(Default)]
pub(super) struct FanoutRecord {
    /// Full fd names of the eventfds and rings stored, with the inode each one's fd had: a ring
    /// the broker replaced (a client scribbled on it) keeps its name but not its inode.
    pub(super) names: BTreeMap<String, u64>,
    pub(super) meta_serial: u64,
    pub(super) meta_json: Vec<u8>,
}

impl FanoutRecord {
    pub(super) fn meta_name(&self, channel: &str) -> Option<String> {
        (self.meta_serial > 0).then(|| fanout_name(channel, &format!("m{}.meta", self.meta_serial)))
    }
}

pub(super) fn stored_meta(channel: &Channel) -> StoredMeta {
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

pub(super) fn write_meta(meta: &StoredMeta) -> std::io::Result<Memfd> {
    let json = serde_json::to_vec(meta).map_err(std::io::Error::other)?;
    write_meta_json(&meta.name, &json)
}

pub(super) fn write_meta_json(channel: &str, json: &[u8]) -> std::io::Result<Memfd> {
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

/// The metadata and its JSON text.
pub(super) fn read_meta(fd: OwnedFd) -> Result<(StoredMeta, Vec<u8>), String> {
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
