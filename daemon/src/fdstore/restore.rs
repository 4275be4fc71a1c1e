//! Restoring from systemd's fd store: every group of fds checked (seals, sizes, fd types,
//! metadata) before a channel is rebuilt from it; a bad group is rejected, never trusted.

use std::cell::Cell;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use shmem_broker_proto::names::validate_stored_channel_name;
use shmem_broker_proto::ring::{
    check_sealed_memfd, RingFds, RingFiles, SharedRing, CAPACITY_GRANULE, HEADER_SIZE,
    MAX_CAPACITY, MIN_CAPACITY,
};
use shmem_broker_proto::wire::MAX_ENDPOINTS;
use shmem_ipc::mem::mfd::Memfd;

use crate::access::AccessList;
use crate::channel::{Channel, ChannelMeta, Counts, Lane};

use super::records::{read_meta, FanoutRecord, RestoredQueue, StoredMeta};

/// One fd of a stored channel.
pub(super) struct StoredFd {
    pub(super) path: String,
    pub(super) part: &'static str,
    pub(super) name: String,
    pub(super) fd: OwnedFd,
}

/// A channel rebuilt from the store, with what to tidy up.
pub(super) struct Restored {
    pub(super) channel: Channel,
    /// Fan-out channels: what is in the store now.
    pub(super) fanout: Option<FanoutRecord>,
    /// Fds of the group that were not used (older metadata, leftovers of a change a crash
    /// interrupted): to be removed from the store.
    pub(super) stale: Vec<String>,
    /// Rings a client had scribbled on, replaced by empty ones: which, and why.
    pub(super) replaced: Vec<String>,
}

/// The one fd at `path`/`part`, if present; more than one is an error.
pub(super) fn take(
    entries: &mut Vec<StoredFd>,
    path: &str,
    part: &str,
) -> Result<Option<StoredFd>, String> {
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

pub(super) fn take_one(
    entries: &mut Vec<StoredFd>,
    path: &str,
    part: &str,
) -> Result<StoredFd, String> {
    let what = if path.is_empty() {
        part.to_string()
    } else {
        format!("{path}.{part}")
    };
    take(entries, path, part)?.ok_or_else(|| format!("{what} fd missing"))
}

/// The metadata to use: the plain `meta` of a one-to-one channel, or a fan-out channel's
/// newest `mN.meta`; older ones are stale.
pub(super) fn newest_meta(
    entries: &mut Vec<StoredFd>,
    stale: &mut Vec<String>,
) -> Result<StoredFd, String> {
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

pub(super) fn assemble(name: &str, mut entries: Vec<StoredFd>) -> Result<Restored, String> {
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

pub(super) fn assemble_single(
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

pub(super) fn assemble_fanout(
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
pub(super) fn eventfd_checked(entry: StoredFd) -> Result<StoredFd, String> {
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
pub(super) fn open_lane(
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
            // Placed at its slot's front by `Channel::restore_totals`.
            stream: Cell::new((0, 0)),
        }),
        Err(err) if sealed_and_sized(&files.ring, capacity) => {
            let (ring, files) = SharedRing::create(label, capacity)
                .map_err(|e| format!("cannot replace scribbled ring {label}: {e}"))?;
            replaced.push(format!("{label}: {err}"));
            Ok(Lane {
                ring,
                files,
                seen: Cell::new(Counts::default()),
                stream: Cell::new((0, 0)),
            })
        }
        Err(err) => Err(err.to_string()),
    }
}

/// The inode of `fd` (0 if it cannot be read: then the entry is stored again at the next sync).
pub(super) fn inode_of(fd: BorrowedFd<'_>) -> u64 {
    rustix::fs::fstat(fd).map_or(0, |stat| stat.st_ino)
}

/// Carries the seals the broker put on its rings and has the size of a ring of `capacity`:
/// what only the broker could have made so.
pub(super) fn sealed_and_sized(memfd: &Memfd, capacity: u64) -> bool {
    HEADER_SIZE
        .checked_add(capacity)
        .is_some_and(|len| check_sealed_memfd(memfd.as_file().as_fd(), len).is_ok())
}

pub(super) fn is_eventfd(fd: &OwnedFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .is_ok_and(|target| target.as_os_str() == "anon_inode:[eventfd]")
}
