//! The shared-memory ring of one channel: a sealed memfd holding a one-page header and a data
//! area of `capacity` bytes, in which the producer writes length-prefixed frames and the
//! consumer reads them, and (layout 3) a second sealed one-page memfd, the *ack page*, holding
//! what the consumer writes.
//!
//! # Why not `shmem_ipc::sharedring`
//! We use shmem-ipc for what it does well (memfd creation and sealing, through its `memfd`
//! re-export); the mapping is our own (`mapping.rs`: memmap2's raw mapping, which shmem-ipc
//! uses, is always read-write, and ring layout 3 maps the other side's memfd read-only). Its
//! ring falls short for a broker in three ways:
//! its read and write indices live in each process's private memory (a re-attaching consumer or
//! producer would start at offset 0, so a detach could never resume), a message that wraps takes
//! two publishes (a producer killed in between leaves a torn message), and it writes an eventfd
//! on every empty->non-empty transition (80-90 % of the throughput on this hardware, see
//! `shared/docs/performance-facts.md`). So the positions live in the shared header here.
//!
//! # Layout (version 3), all integers little-endian atomics
//! The ring memfd (written by the producer; the consumer maps it read-only):
//! ```text
//! 0     magic u64 "SHMRING1", layout u32 = 3, flags u32, capacity u64, dropped u32,
//!       evicted u32 (a fan-out producer cut this consumer off: 1 fell behind, 2 corrupt ring),
//!       seal_key u64 (random, even; layout 2)
//! 64    write_pos u64, messages_written u64, bytes_written u64,
//!       messages_lost u64, wakeups u64                            (written by the producer)
//! 128   unused in layout 3 (zero): layouts 1 and 2 keep the consumer's line here
//! 192   unused in layout 3 (zero): layouts 1 and 2 keep consumer_waiting here
//! 256   producer_waiting u32   (producer is asleep on the space_ready eventfd: a ticket)
//! 4096  data[capacity]
//! ```
//! The ack memfd, 4096 bytes (written by the consumer; the producer maps it read-only):
//! ```text
//! 0     read_pos u64, messages_read u64, wakeups u64
//! 64    consumer_waiting u32   (consumer is asleep on the data_ready eventfd: a ticket)
//! ```
//!
//! # Read-only where a side only reads (layout 3)
//! Each side maps the other's memfd from an `O_RDONLY` fd, which the kernel refuses to map
//! writable (`EACCES`), so a consumer cannot scribble on the producer's frames and a producer
//! cannot move the consumer's position. The broker creates both memfds with mode 0600, so a
//! client of another uid cannot reopen its read-only fd writable through `/proc/self/fd` either
//! (seals cannot do this: `F_SEAL_WRITE` would stop the writer too, and `F_SEAL_FUTURE_WRITE`
//! would stop the next producer that attaches to the same ring). A client running as the
//! broker's own uid (or with `CAP_DAC_OVERRIDE`) can reopen it; that uid is trusted anyway.
//!
//! Because neither side may write the other's memory, a waker cannot clear the sleeper's
//! waiting flag as layouts 1 and 2 do (`swap` to 0). Instead the sleeper stores a *ticket*, a
//! number that changes with every sleep and is never 0, and clears it when it wakes; the waker
//! writes the eventfd when it sees a ticket it has not woken yet (`handshake::take_ticket`).
//! A sleeper always stores fresh tickets, which a layout-2 peer reads as a plain "waiting".
//! The waker's memory of the ticket it woke last outlives the sleeper's attachment, so each new
//! reader or writer starts its tickets at a random number: one that started at 1 like its
//! predecessor would sleep on the ticket already woken, and stay asleep.
//! Positions are 64-bit byte counters that only grow; the offset in the data area is
//! `pos % capacity`. Unread bytes are `write_pos - read_pos`, never more than `capacity`, and
//! no position exceeds [`MAX_POSITION`] (so that no sum with one wraps).
//!
//! A frame is a 16-byte header (`len u32`, `kind u16`, `span u16`, `seal u64`) and `len`
//! payload bytes, padded to a multiple of 16. A frame never wraps: when it does not fit before
//! the end of the data area the producer first publishes a PAD frame covering the rest. Kinds:
//! 1 DATA, 2 END_OF_STREAM, 3 PAD, 4 LOST (payload: u64 count of messages this consumer missed
//! here, written by a fan-out producer whose `slow_consumer` policy is `drop`). A frame becomes
//! visible only when the producer stores the new `write_pos` (release), so a producer killed
//! mid-message leaves nothing torn behind: the next producer overwrites the unpublished bytes.
//!
//! # Seals: one cache line to watch instead of two
//! Each publish marks its first frame: `span` says how many 16-byte units the publish covers
//! (0 if more than 65535), and after storing `write_pos` the producer stores
//! `seal = (start + 1) ^ seal_key` there (`start` is that frame's position). A consumer that
//! has caught up watches the seal of the frame it waits for: when it matches, the frame is
//! published (the seal is stored after `write_pos`, so the consumer never gets ahead of it),
//! and its header and first bytes arrive in the same cache-line transfer that brought the seal,
//! instead of one transfer for `write_pos` and another for the frame. A seal is unique to its
//! position, so a stale one from an earlier lap never matches; the random key keeps payload
//! bytes from ever matching by accident. The span tells the consumer how far it may read on
//! without loading `write_pos` (which the producer has by then written for the next publish).
//! While the seal does not match, the consumer watches it, loading `write_pos` only now and
//! then (and always before it sleeps), so seals are only ever a shortcut.
//!
//! Layout 2 (what brokers of protocol versions 3 and 4 created) is layout 3 in one memfd: the
//! consumer's line and waiting flag at offsets 128 and 192 of the header, every byte writable
//! by both sides. Layout 1 (what brokers before protocol version 3 created) is layout 2 without seals: 8-byte frame headers (`len u32`, `kind u32`), frames padded
//! to multiples of 8, no `seal_key`. Both sides read the layout from the ring and follow it;
//! an fd store may still hold rings of layouts 1 and 2, which keep working as they did.
//!
//! # Trust
//! Each side keeps its own position in private memory and treats everything the peer can write
//! (the other position, frame headers, payload bytes) as hostile input: it is read with atomic
//! loads or copied out with `copy_nonoverlapping`, validated against the capacity, and any
//! inconsistency is reported as [`RingError::Corrupt`], never acted on.

use std::collections::BTreeSet;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use shmem_ipc::mem::mfd::{FileSeal, Memfd, MemfdOptions, SealsHashSet};

use crate::wire::{Role, SlowConsumer};

mod handshake;
mod mapping;
mod zero_copy;

use mapping::Mapping;
pub use zero_copy::{Payload, Peeked};

/// The layout new rings get.
pub const LAYOUT_VERSION: u32 = 3;
/// The oldest layout this library still reads and writes.
pub const MIN_LAYOUT_VERSION: u32 = 1;
/// Size of a ring memfd's header page; the data area follows it.
pub const HEADER_SIZE: u64 = 4096;
/// Size of a layout-3 ring's ack memfd (the consumer's page).
pub const ACK_SIZE: u64 = 4096;
const CACHE_LINE: u64 = 64;
/// Data areas are whole pages: `capacity` is a multiple of this.
pub const CAPACITY_GRANULE: u64 = 4096;
/// The smallest data area a ring may have.
pub const MIN_CAPACITY: u64 = CAPACITY_GRANULE;
/// Ring positions are u64 and frame lengths u32: keep capacities well inside both.
pub const MAX_CAPACITY: u64 = 1 << 40;
/// Highest position either side accepts from the header (2^64 - 2^42, a multiple of every
/// frame unit). Positions only grow, by the bytes written, so an honest ring gets here after
/// about 2^64 bytes (58 years at 10 GB/s); anything above came from a hostile peer. Kept this
/// far below 2^64 so that a position plus a lap and a frame (what the sides add to a position
/// they accepted) never wraps.
pub const MAX_POSITION: u64 = u64::MAX - (4 * MAX_CAPACITY - 1);
const _: () = assert!(MAX_POSITION % 64 == 0);
const MAGIC: u64 = u64::from_le_bytes(*b"SHMRING1");

const KIND_DATA: u32 = 1;
const KIND_END_OF_STREAM: u32 = 2;
const KIND_PAD: u32 = 3;
const KIND_LOST: u32 = 4;

/// Why a fan-out producer stopped writing to a consumer's ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eviction {
    /// The ring was full under `slow_consumer = "disconnect"`.
    FellBehind = 1,
    /// The consumer scribbled on the ring.
    Corrupt = 2,
}

impl Eviction {
    /// Why, for the consumer (the broker adds the channel and ring size).
    pub fn reason(self) -> &'static str {
        match self {
            Eviction::FellBehind => {
                "this consumer fell behind: a producer found its ring full, and the channel's \
                 slow_consumer policy is disconnect"
            }
            Eviction::Corrupt => {
                "a producer found this consumer's ring corrupt and stopped writing to it"
            }
        }
    }
}

/// What can go wrong with a ring.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// The peer wrote something inconsistent into the shared memory (what, in words).
    #[error("corrupt ring: {0}")]
    Corrupt(String),
    /// A memfd is not what the broker makes (not a memfd, seals or size wrong, unknown layout,
    /// or this side may not write it).
    #[error("ring memfd rejected: {0}")]
    Rejected(String),
    /// A message larger than the ring carries.
    #[error("message of {len} bytes does not fit in a ring of {capacity} bytes (at most {max} per message)")]
    TooLarge {
        /// The message's length.
        len: usize,
        /// The ring's data bytes.
        capacity: u64,
        /// The largest message it carries.
        max: u64,
    },
    /// A system call on the memfds failed.
    #[error("shared memory: {0}")]
    Io(#[from] std::io::Error),
}

#[repr(C, align(64))]
struct IdentityLine {
    magic: AtomicU64,
    layout: AtomicU32,
    flags: AtomicU32,
    capacity: AtomicU64,
    dropped: AtomicU32,
    evicted: AtomicU32,
    seal_key: AtomicU64,
}

#[repr(C, align(64))]
struct ProducerLine {
    write_pos: AtomicU64,
    messages_written: AtomicU64,
    bytes_written: AtomicU64,
    messages_lost: AtomicU64,
    /// Times this producer woke the consumer (wrote its eventfd after finding it asleep).
    /// Appended: the fields above keep their offsets.
    wakeups: AtomicU64,
}

#[repr(C, align(64))]
struct ConsumerLine {
    read_pos: AtomicU64,
    messages_read: AtomicU64,
    /// Times this consumer woke the producer. Appended: the fields above keep their offsets.
    wakeups: AtomicU64,
}

#[repr(C, align(64))]
struct WaitLine {
    waiting: AtomicU32,
}

#[repr(C)]
struct Header {
    identity: IdentityLine,
    producer: ProducerLine,
    consumer: ConsumerLine,
    consumer_waiting: WaitLine,
    producer_waiting: WaitLine,
}

const _: () = assert!(std::mem::size_of::<Header>() == 320);
const _: () = assert!(std::mem::size_of::<Header>() as u64 <= HEADER_SIZE);

/// A layout-3 ring's ack memfd: what the consumer writes.
#[repr(C)]
struct AckPage {
    consumer: ConsumerLine,
    consumer_waiting: WaitLine,
}

const _: () = assert!(std::mem::size_of::<AckPage>() as u64 <= ACK_SIZE);

/// Largest payload a ring of `capacity` bytes carries in one message (in the current layout;
/// a layout-1 ring takes 8 bytes more).
pub fn max_message_len(capacity: u64) -> u64 {
    FrameFormat::of(LAYOUT_VERSION, 0).max_message_len(capacity)
}

/// How frames are laid out in one ring, by its layout version.
#[derive(Clone, Copy, Debug)]
struct FrameFormat {
    /// Header size; frames start and end at multiples of it.
    unit: u64,
    /// Layout 2: the ring's seal key (see the module docs).
    seal_key: Option<u64>,
    /// The bits of a frame header's second word that are its kind (layout 2: the low half;
    /// the high half is the span).
    kind_mask: u32,
}

impl FrameFormat {
    fn of(layout: u32, seal_key: u64) -> FrameFormat {
        if layout >= 2 {
            FrameFormat {
                unit: 16,
                seal_key: Some(seal_key),
                kind_mask: 0xffff,
            }
        } else {
            FrameFormat {
                unit: 8,
                seal_key: None,
                kind_mask: u32::MAX,
            }
        }
    }

    fn frame_len(self, payload: u64) -> u64 {
        self.unit + payload.div_ceil(self.unit) * self.unit
    }

    fn max_message_len(self, capacity: u64) -> u64 {
        (capacity - self.unit).min(u64::from(u32::MAX) - self.unit)
    }

    /// The seal of the frame at `pos`, in a layout that has seals.
    fn seal(self, pos: u64) -> Option<u64> {
        // Positions stay below MAX_POSITION; wrapping keeps even a stray one from panicking.
        self.seal_key.map(|key| pos.wrapping_add(1) ^ key)
    }
}

/// Where a new reader's or writer's sleep tickets start (its first is the next one): a random
/// number, not a fixed one. A waker remembers the ticket it woke last for as long as it stays
/// attached, across the sleeper's detach, so a side attaching anew whose tickets started where
/// its predecessor's did would sleep on that very ticket and never be woken (see the module
/// docs). A clash is left to chance: 1 in 2^32 per attach (and a blocking receive or send
/// sleeps at most a second).
fn first_ticket() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    // Each RandomState has new random keys; the low half of the hash is as random as the rest.
    RandomState::new().hash_one(std::process::id()) as u32
}

/// A random seal key. Even, so that no seal ((pos + 1) ^ key, pos a multiple of 16) is 0,
/// what a fresh ring holds everywhere.
fn new_seal_key() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::process::id()) & !1
}

/// Counters read from a ring's header, for `shmemctl list`. Values come from shared memory the
/// clients can write, so they are clamped into a sane range rather than trusted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Data messages the producers of this ring published.
    pub messages_written: u64,
    /// Their payload bytes.
    pub bytes_written: u64,
    /// Data messages the consumer read.
    pub messages_read: u64,
    /// Bytes published and not read yet (at most the capacity).
    pub bytes_unread: u64,
    /// Messages a fan-out producer could not fit (slow-consumer policy `drop`).
    pub messages_lost: u64,
    /// Wake-ups both sides counted (each side's own counter, saturating sum).
    pub wakeups: u64,
}

/// A mapped ring: the mappings stay valid as long as this value lives, whatever the peer does
/// to the files, because the memfds are sealed against shrinking.
pub struct SharedRing {
    /// The ring memfd: header and data.
    map: Mapping,
    /// Layout 3: the ack memfd (the consumer's page).
    ack: Option<Mapping>,
    capacity: u64,
    layout: u32,
    format: FrameFormat,
    /// The ring memfd's device and inode: the same for every mapping of the ring in this
    /// process.
    file: (u64, u64),
}

/// The memfds of one ring, as the broker holds them.
pub struct RingFiles {
    /// Header and data: what the producer writes.
    pub ring: Memfd,
    /// Layout 3: the consumer's page. `None` for rings of layouts 1 and 2.
    pub ack: Option<Memfd>,
}

/// The fds one side of a ring is given: each writable if that side writes it, `O_RDONLY`
/// otherwise.
pub struct RingFds {
    /// The ring memfd (header and data).
    pub ring: OwnedFd,
    /// The ack page (layout 3 only).
    pub ack: Option<OwnedFd>,
}

impl RingFiles {
    /// Fds for `side` (`None`: the broker itself, everything writable): the producer gets the
    /// ring writable and the ack page read-only, the consumer the other way round. A layout-1
    /// or 2 ring has one memfd, which both sides write.
    pub fn share(&self, side: Option<Role>) -> std::io::Result<RingFds> {
        let Some(ack) = &self.ack else {
            return Ok(RingFds {
                ring: self.ring.as_file().as_fd().try_clone_to_owned()?,
                ack: None,
            });
        };
        let ring_writable = side != Some(Role::Consumer);
        let ack_writable = side != Some(Role::Producer);
        Ok(RingFds {
            ring: share_memfd(&self.ring, ring_writable)?,
            ack: Some(share_memfd(ack, ack_writable)?),
        })
    }
}

/// A new fd for `memfd`: a duplicate if `writable`, else the file opened again read-only
/// through `/proc/self/fd` (the only way to get an `O_RDONLY` fd of a memfd; the mode 0600 the
/// creator gave it keeps clients of other uids from doing the same towards `O_RDWR`).
fn share_memfd(memfd: &Memfd, writable: bool) -> std::io::Result<OwnedFd> {
    let fd = memfd.as_file().as_fd();
    if writable {
        return fd.try_clone_to_owned();
    }
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    Ok(rustix::fs::open(
        path.as_str(),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?)
}

impl SharedRing {
    /// Creates a ring of `capacity` data bytes (a multiple of 4 KiB) in the current layout:
    /// the ring memfd and the ack memfd, mode 0600, headers initialised, sealed against
    /// shrinking, growing and further sealing, so no client can truncate them (SIGBUS for the
    /// others), grow them, or make them read-only.
    pub fn create(name: &str, capacity: u64) -> Result<(SharedRing, RingFiles), RingError> {
        SharedRing::create_in_layout(name, capacity, LAYOUT_VERSION)
    }

    fn create_in_layout(
        name: &str,
        capacity: u64,
        layout: u32,
    ) -> Result<(SharedRing, RingFiles), RingError> {
        check_capacity(capacity)?;
        let ring_file = sealed_memfd(&format!("shmem-broker:{name}"), HEADER_SIZE + capacity)?;
        let ack_file = match layout {
            3.. => Some(sealed_memfd(&format!("shmem-broker:{name}:ack"), ACK_SIZE)?),
            _ => None,
        };
        let files = RingFiles {
            ring: ring_file,
            ack: ack_file,
        };
        let fds = files.share(None)?;
        let mut ring = SharedRing::map(&fds, capacity)?;
        let seal_key = new_seal_key();
        let id = &ring.header().identity;
        id.layout.store(layout, Ordering::Relaxed);
        id.capacity.store(capacity, Ordering::Relaxed);
        if layout >= 2 {
            id.seal_key.store(seal_key, Ordering::Relaxed);
        }
        id.magic.store(MAGIC, Ordering::Release);
        ring.layout = layout;
        ring.format = FrameFormat::of(layout, seal_key);
        Ok((ring, files))
    }

    /// Maps a ring received from the broker after checking that each fd is a memfd, carries
    /// all three seals, has exactly the announced size, and that the header is intact and its
    /// layout matches the fds (an ack memfd exactly for layout 3). Each memfd is mapped
    /// writable only if its fd is.
    pub fn open(fds: RingFds, capacity: u64) -> Result<SharedRing, RingError> {
        check_capacity(capacity)?;
        check_sealed_memfd(fds.ring.as_fd(), HEADER_SIZE + capacity)?;
        if let Some(ack) = &fds.ack {
            check_sealed_memfd(ack.as_fd(), ACK_SIZE)?;
        }
        let ring = SharedRing::map(&fds, capacity)?;
        let id = &ring.header().identity;
        if id.magic.load(Ordering::Acquire) != MAGIC {
            return Err(RingError::Corrupt("bad magic in ring header".into()));
        }
        let layout = id.layout.load(Ordering::Relaxed);
        if !(MIN_LAYOUT_VERSION..=LAYOUT_VERSION).contains(&layout) {
            return Err(RingError::Rejected(format!(
                "ring layout {layout}, this library reads layouts {MIN_LAYOUT_VERSION} to {LAYOUT_VERSION}"
            )));
        }
        if (layout >= 3) != ring.ack.is_some() {
            return Err(RingError::Rejected(format!(
                "a ring of layout {layout} comes {} an ack memfd",
                if layout >= 3 { "with" } else { "without" }
            )));
        }
        if id.capacity.load(Ordering::Relaxed) != capacity {
            return Err(RingError::Corrupt(
                "capacity in ring header does not match".into(),
            ));
        }
        // Read once: a peer rewriting the key later changes nothing here.
        let format = FrameFormat::of(layout, id.seal_key.load(Ordering::Relaxed));
        Ok(SharedRing {
            format,
            layout,
            ..ring
        })
    }

    fn map(fds: &RingFds, capacity: u64) -> Result<SharedRing, RingError> {
        let len = usize::try_from(HEADER_SIZE + capacity)
            .map_err(|_| RingError::Rejected("ring larger than the address space".into()))?;
        let stat = rustix::fs::fstat(&fds.ring).map_err(std::io::Error::from)?;
        let map = Mapping::new(fds.ring.as_fd(), len)?;
        let ack = match &fds.ack {
            Some(ack) => Some(Mapping::new(ack.as_fd(), ACK_SIZE as usize)?),
            None => None,
        };
        Ok(SharedRing {
            map,
            ack,
            capacity,
            layout: MIN_LAYOUT_VERSION,
            format: FrameFormat::of(MIN_LAYOUT_VERSION, 0),
            file: (stat.st_dev, stat.st_ino),
        })
    }

    /// The data area's size in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    fn frame_len(&self, payload: u64) -> u64 {
        self.format.frame_len(payload)
    }

    /// Whether the identity fields of the header (magic, layout, capacity) still say what they
    /// said when this ring was mapped. A peer can scribble them, and then every later `open` of
    /// the ring fails: the broker replaces such a ring once nobody reads it.
    pub fn identity_intact(&self) -> bool {
        let id = &self.header().identity;
        id.magic.load(Ordering::Relaxed) == MAGIC
            && id.layout.load(Ordering::Relaxed) == self.layout
            && id.capacity.load(Ordering::Relaxed) == self.capacity
    }

    /// The ring's layout version.
    pub fn layout(&self) -> u32 {
        self.layout
    }

    /// Whether this mapping may write what the producer writes (the ring memfd).
    fn producer_writable(&self) -> bool {
        self.map.writable()
    }

    /// Whether this mapping may write what the consumer writes (the ack page in layout 3).
    fn consumer_writable(&self) -> bool {
        self.ack.as_ref().unwrap_or(&self.map).writable()
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping is at least HEADER_SIZE (>= size_of::<Header>()) bytes, page
        // aligned (so aligned for Header), and lives as long as `self`; the seals guarantee the
        // file cannot shrink under it. Every field is an atomic, so concurrent writes by a
        // hostile peer are data the type expects, not undefined behaviour. Fields are only
        // stored to when the mapping is writable (`producer_writable`, `consumer_writable`).
        unsafe { &*(self.map.as_ptr() as *const Header) }
    }

    /// What the consumer writes: its line and waiting flag, in the ack page (layout 3) or in
    /// the header (layouts 1 and 2).
    fn consumer_side(&self) -> (&ConsumerLine, &AtomicU32) {
        match &self.ack {
            Some(ack) => {
                // SAFETY: as for `header`: the ack mapping is ACK_SIZE (>= size_of::<AckPage>())
                // bytes, page aligned, sealed against shrinking, lives as long as `self`, and
                // holds only atomics.
                let page = unsafe { &*(ack.as_ptr() as *const AckPage) };
                (&page.consumer, &page.consumer_waiting.waiting)
            }
            None => {
                let h = self.header();
                (&h.consumer, &h.consumer_waiting.waiting)
            }
        }
    }

    /// Whether a waker must leave the sleeper's flag alone and go by its tickets (layout 3,
    /// where the flag is in memory the waker maps read-only).
    fn wakes_by_ticket(&self) -> bool {
        self.ack.is_some()
    }
    fn data(&self) -> *mut u8 {
        // SAFETY: HEADER_SIZE is within the mapping (its length is HEADER_SIZE + capacity).
        unsafe { self.map.as_ptr().add(HEADER_SIZE as usize) }
    }

    /// An atomic view of a u32 at `offset` (a multiple of 4, below `capacity`) of the data area.
    fn data_u32(&self, offset: u64) -> &AtomicU32 {
        debug_assert!(offset % 4 == 0 && offset + 4 <= self.capacity);
        // SAFETY: callers pass offsets that are frame starts (multiples of the frame unit, 8 or
        // 16, strictly inside the data area: positions are checked to be multiples of it) or
        // words of a frame already checked to end inside it, so the 4 bytes are mapped and
        // aligned. Reading them atomically means a peer writing them concurrently cannot
        // cause undefined behaviour, only odd values, which the callers validate.
        unsafe { &*(self.data().add(offset as usize) as *const AtomicU32) }
    }

    /// An atomic view of a u64 at `offset` (a multiple of 8, below `capacity`) of the data area.
    fn data_u64(&self, offset: u64) -> &AtomicU64 {
        debug_assert!(offset % 8 == 0 && offset + 8 <= self.capacity);
        // SAFETY: as for `data_u32`: callers pass the seal word of a frame start (a multiple of
        // 16 strictly inside the data area, so the 8 bytes are mapped and aligned); a peer
        // writing it concurrently only yields a value the caller compares, never trusts.
        unsafe { &*(self.data().add(offset as usize) as *const AtomicU64) }
    }

    /// Asks the CPU to fetch the cache line at `offset` of the data area: one cross-core
    /// transfer less on the latency path when the fetch overlaps with another.
    fn prefetch(&self, offset: u64) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch is only a hint: it never faults and changes no memory, whatever
        // the address (this one lies inside the mapping anyway); SSE is part of x86_64.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                self.data().wrapping_add(offset as usize) as *const i8,
            )
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = offset;
    }

    /// Writes `len` bytes of the data area starting at `start` to `fd`, all of them, waiting
    /// for a non-blocking fd to take more.
    fn write_out(&self, start: usize, len: usize, fd: BorrowedFd<'_>) -> Result<(), RingError> {
        let mut done = 0;
        while done < len {
            // SAFETY: [start, start+len) lies inside the data area (checked by the caller
            // against the published bytes and the end of the ring). The kernel reads it as
            // plain bytes; no Rust reference to the shared memory is formed, so a hostile
            // producer rewriting it meanwhile only changes the bytes written.
            let n = unsafe {
                libc::write(
                    fd.as_raw_fd(),
                    self.data().add(start + done).cast::<libc::c_void>(),
                    len - done,
                )
            };
            if n >= 0 {
                done += n as usize;
                continue;
            }
            let err = std::io::Error::last_os_error();
            match err.kind() {
                std::io::ErrorKind::Interrupted => {}
                std::io::ErrorKind::WouldBlock => {
                    let mut fds = [rustix::event::PollFd::new(
                        &fd,
                        rustix::event::PollFlags::OUT,
                    )];
                    let _ = rustix::event::poll(&mut fds, None);
                }
                _ => return Err(RingError::Io(err)),
            }
        }
        Ok(())
    }

    /// Marks the ring as belonging to a dropped channel; both sides see it on their next call.
    /// Only the broker calls this; a mapping that may not write the header does nothing.
    pub fn mark_dropped(&self) {
        if self.producer_writable() {
            self.header().identity.dropped.store(1, Ordering::Release);
        }
    }

    /// Whether the broker marked the ring's channel dropped.
    pub fn is_dropped(&self) -> bool {
        self.header().identity.dropped.load(Ordering::Acquire) != 0
    }

    /// Marks the consumer of this ring as cut off by its producer, which writes no more into
    /// it; the consumer and the broker read the cause. Only the producer's (and the broker's)
    /// mapping may write it; any other does nothing.
    pub fn mark_evicted(&self, cause: Eviction) {
        if self.producer_writable() {
            self.header()
                .identity
                .evicted
                .store(cause as u32, Ordering::Release);
        }
    }

    /// Why the producer cut this ring's consumer off, if it did. Any value but the two the
    /// library writes came from a hostile peer and reads as corruption.
    pub fn eviction(&self) -> Option<Eviction> {
        match self.header().identity.evicted.load(Ordering::Acquire) {
            0 => None,
            1 => Some(Eviction::FellBehind),
            _ => Some(Eviction::Corrupt),
        }
    }

    /// The eviction of this ring's consumer that a third party (the broker, or the consumer
    /// itself) may act on: the flag is written by whoever maps the ring, so it counts only if
    /// the channel lets producers evict (`policy` is `disconnect`) and the ring's own state
    /// bears it out (consistent positions with bytes the consumer has not read). A `Corrupt`
    /// flag never counts: either side can write the positions, so nobody can tell who broke
    /// them, and the ring is all that is lost.
    pub fn confirmed_eviction(&self, policy: SlowConsumer) -> Option<Eviction> {
        match self.eviction()? {
            Eviction::FellBehind
                if policy == SlowConsumer::Disconnect
                    && self.unread_if_sound().is_some_and(|unread| unread > 0) =>
            {
                Some(Eviction::FellBehind)
            }
            _ => None,
        }
    }

    /// Unread bytes as the shared positions say, or `None` if they are not consistent (not
    /// frame-aligned, or the write position behind the read position or more than `capacity`
    /// ahead of it): a peer scribbled on them.
    pub fn unread_if_sound(&self) -> Option<u64> {
        let write_pos = self.header().producer.write_pos.load(Ordering::Acquire);
        let read_pos = self.consumer_side().0.read_pos.load(Ordering::Acquire);
        check_positions(read_pos, write_pos, self).ok()
    }

    /// Where the producer's stream stands now: its published position, and whether the last
    /// frame before that position is an end-of-stream mark. The broker asks when a producer's
    /// connection closes, to tell the consumer whether the stream ended cleanly. Everything
    /// here was written by that producer: a hostile one can only misreport its own stream.
    pub fn producer_end(&self) -> (u64, bool) {
        let write_pos = self.header().producer.write_pos.load(Ordering::Acquire);
        let size = self.frame_len(0);
        let unit = self.format.unit;
        let ends_clean = match write_pos.checked_sub(size) {
            // Frames never wrap, so an aligned frame start lies wholly inside the data area.
            Some(start) if write_pos % unit == 0 && self.capacity >= size => {
                let offset = start % self.capacity;
                offset + size <= self.capacity
                    && self.data_u32(offset).load(Ordering::Relaxed) == 0
                    && self.data_u32(offset + 4).load(Ordering::Relaxed) & self.format.kind_mask
                        == KIND_END_OF_STREAM
            }
            _ => false,
        };
        (write_pos, ends_clean)
    }

    /// The counters as the header holds them: any value a peer stored, so callers that add
    /// them up must saturate (the broker's `Channel::info` does).
    pub fn stats(&self) -> RingStats {
        let h = self.header();
        let consumer = self.consumer_side().0;
        let written = h.producer.write_pos.load(Ordering::Acquire);
        let read = consumer.read_pos.load(Ordering::Acquire);
        RingStats {
            messages_written: h.producer.messages_written.load(Ordering::Relaxed),
            bytes_written: h.producer.bytes_written.load(Ordering::Relaxed),
            messages_read: consumer.messages_read.load(Ordering::Relaxed),
            bytes_unread: written.saturating_sub(read).min(self.capacity),
            messages_lost: h.producer.messages_lost.load(Ordering::Relaxed),
            wakeups: h
                .producer
                .wakeups
                .load(Ordering::Relaxed)
                .saturating_add(consumer.wakeups.load(Ordering::Relaxed)),
        }
    }

    /// Clears both waiting flags: used by the broker when nobody is attached any more (after
    /// a restart), where a flag can only belong to a client that is gone.
    pub fn clear_waiters(&self) {
        self.clear_waiter(Role::Producer);
        self.clear_waiter(Role::Consumer);
    }

    /// Clears the waiting flag of the side that detached. Never the other side's: that one
    /// may be asleep right now, and clearing its flag would lose its next wake-up.
    /// Only the broker calls this (its mappings are writable); a mapping that is not writable
    /// where the flag lives is left alone.
    pub fn clear_waiter(&self, side: Role) {
        let (flag, writable) = match side {
            Role::Producer => (
                &self.header().producer_waiting.waiting,
                self.producer_writable(),
            ),
            Role::Consumer => (self.consumer_side().1, self.consumer_writable()),
        };
        if writable {
            flag.store(0, Ordering::Relaxed);
        }
    }
}

fn check_capacity(capacity: u64) -> Result<(), RingError> {
    if !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) || capacity % CAPACITY_GRANULE != 0 {
        return Err(RingError::Rejected(format!(
            "capacity {capacity} must be a multiple of {CAPACITY_GRANULE} between {MIN_CAPACITY} and {MAX_CAPACITY}"
        )));
    }
    Ok(())
}

/// A new memfd of `len` bytes, mode 0600 (see the module docs), sealed against shrinking,
/// growing and further sealing.
fn sealed_memfd(name: &str, len: u64) -> Result<Memfd, RingError> {
    let memfd = MemfdOptions::default()
        .allow_sealing(true)
        .close_on_exec(true)
        .create(name)
        .map_err(memfd_error)?;
    rustix::fs::fchmod(memfd.as_file(), rustix::fs::Mode::from_raw_mode(0o600))
        .map_err(std::io::Error::from)?;
    memfd.as_file().set_len(len)?;
    let mut seals = SealsHashSet::new();
    seals.insert(FileSeal::SealShrink);
    seals.insert(FileSeal::SealGrow);
    seals.insert(FileSeal::SealSeal);
    memfd.add_seals(&seals).map_err(memfd_error)?;
    Ok(memfd)
}

/// Checks that `fd` is a memfd that carries the three seals the broker puts on ring memfds
/// (shrink, grow, seal) and is exactly `len` bytes long, so that mapping `len` bytes of it can
/// never fault and nobody can change its size or seals. Clients run it on what the broker
/// sends; the broker on what systemd's fd store gives back.
pub fn check_sealed_memfd(fd: BorrowedFd<'_>, len: u64) -> Result<(), RingError> {
    use rustix::fs::SealFlags;
    // F_GET_SEALS fails (EINVAL) on anything but a memfd.
    let seals =
        rustix::fs::fcntl_get_seals(fd).map_err(|_| RingError::Rejected("not a memfd".into()))?;
    for (seal, name) in [
        (SealFlags::SHRINK, "F_SEAL_SHRINK"),
        (SealFlags::GROW, "F_SEAL_GROW"),
        (SealFlags::SEAL, "F_SEAL_SEAL"),
    ] {
        if !seals.contains(seal) {
            return Err(RingError::Rejected(format!("missing seal {name}")));
        }
    }
    let size = rustix::fs::fstat(fd).map_err(std::io::Error::from)?.st_size;
    if u64::try_from(size).ok() != Some(len) {
        return Err(RingError::Rejected(format!(
            "memfd is {size} bytes, expected {len}"
        )));
    }
    Ok(())
}

fn memfd_error(err: shmem_ipc::mem::mfd::Error) -> RingError {
    RingError::Rejected(err.to_string())
}

/// Rings this process has a [`RingWriter`] on, by their memfd's device and inode (which stay
/// taken while the writer's mapping keeps the file alive).
static WRITERS: Mutex<BTreeSet<(u64, u64)>> = Mutex::new(BTreeSet::new());

/// Publishing side. There is one at a time per ring: the broker grants one producer per ring,
/// and [`RingWriter::new`] refuses a second writer in the same process whatever the broker
/// did, since two would hand out `&mut` slices of the same bytes. It resumes at the
/// `write_pos` the previous producer published.
pub struct RingWriter {
    ring: SharedRing,
    /// What the consumer can see.
    write_pos: u64,
    /// End of the frames written but not yet published (== write_pos between calls).
    staged_pos: u64,
    /// Lowest read position still possible: the consumer's position never goes backwards.
    read_floor: u64,
    /// Size of the first frame staged since the last publish (what its span says).
    first_frame: u64,
    messages_written: u64,
    bytes_written: u64,
    messages_lost: u64,
    /// Layout 3: the consumer's sleep ticket this writer last woke it for.
    woken_ticket: u32,
    /// The ticket of this writer's last sleep.
    sleep_ticket: u32,
}

impl RingWriter {
    /// A writer on `ring`; `Rejected` if this process already has one on the same ring (any
    /// mapping of the same memfd), `Corrupt` if the header's positions are inconsistent.
    pub fn new(ring: SharedRing) -> Result<RingWriter, RingError> {
        if !ring.producer_writable() {
            return Err(RingError::Rejected(
                "the ring's fd is read-only: this side may only read it".into(),
            ));
        }
        let h = ring.header();
        let write_pos = h.producer.write_pos.load(Ordering::Acquire);
        let read_pos = ring.consumer_side().0.read_pos.load(Ordering::Acquire);
        check_positions(read_pos, write_pos, &ring)?;
        // The set only holds plain keys: a panic elsewhere while it was locked left it intact.
        let mut writers = WRITERS.lock().unwrap_or_else(PoisonError::into_inner);
        if !writers.insert(ring.file) {
            return Err(RingError::Rejected(
                "this process already has a writer on this ring".into(),
            ));
        }
        drop(writers);
        Ok(RingWriter {
            write_pos,
            staged_pos: write_pos,
            read_floor: read_pos,
            first_frame: 0,
            messages_written: h.producer.messages_written.load(Ordering::Relaxed),
            bytes_written: h.producer.bytes_written.load(Ordering::Relaxed),
            messages_lost: h.producer.messages_lost.load(Ordering::Relaxed),
            woken_ticket: 0,
            sleep_ticket: first_ticket(),
            ring,
        })
    }

    /// The published write position: the byte counter just past the last frame the consumer
    /// can see. It only grows, and a producer that attaches next continues from it.
    pub fn position(&self) -> u64 {
        self.write_pos
    }

    /// The mapped ring this writer writes.
    pub fn ring(&self) -> &SharedRing {
        &self.ring
    }

    /// The largest message this ring carries.
    pub fn max_message_len(&self) -> u64 {
        max_message_len(self.ring.capacity)
    }

    fn check_len(&self, len: usize) -> Result<(), RingError> {
        if len as u64 > self.max_message_len() {
            return Err(RingError::TooLarge {
                len,
                capacity: self.ring.capacity,
                max: self.max_message_len(),
            });
        }
        Ok(())
    }

    /// Bytes the producer may stage, counted from the consumer position seen last time; only
    /// if that is less than `wanted` is the shared position loaded again (a cross-core cache
    /// miss the common case avoids). A stale position only ever understates the free space.
    fn free_space(&mut self, wanted: u64) -> Result<u64, RingError> {
        // read_floor <= staged_pos <= read_floor + capacity: both were checked together
        // (check_positions) and staging never goes past the free space.
        let cached = self.ring.capacity - (self.staged_pos - self.read_floor);
        if cached >= wanted {
            return Ok(cached);
        }
        let read_pos = handshake::observe(&self.ring.consumer_side().0.read_pos);
        if read_pos < self.read_floor {
            return Err(RingError::Corrupt(format!(
                "consumer position went backwards ({read_pos} < {})",
                self.read_floor
            )));
        }
        let unread = check_positions(read_pos, self.staged_pos, &self.ring)?;
        self.read_floor = read_pos;
        Ok(self.ring.capacity - unread)
    }

    /// Room a frame of `payload` bytes needs now, counting the padding it may need first.
    fn room_for(&self, payload: usize) -> u64 {
        let until_end = self.ring.capacity - self.staged_pos % self.ring.capacity;
        let needed = self.ring.frame_len(payload as u64);
        if needed > until_end {
            until_end + needed
        } else {
            needed
        }
    }

    /// Writes a data frame of `len` payload bytes filled in by `fill`, straight in the ring.
    /// Returns `Ok(false)` without calling `fill` if there is no room right now.
    pub fn try_write_with(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<bool, RingError> {
        let written = self.try_write_up_to(len, |buf| {
            fill(buf);
            len
        })?;
        Ok(written.is_some())
    }

    /// Reserves room for up to `max` payload bytes and lets `fill` write the message straight
    /// into the ring, returning its length (0 of a non-empty reservation: no message).
    /// `Ok(None)` if there is no room for `max` bytes right now (and `fill` was not called),
    /// else the length written.
    pub fn try_write_up_to(
        &mut self,
        max: usize,
        fill: impl FnOnce(&mut [u8]) -> usize,
    ) -> Result<Option<usize>, RingError> {
        self.check_len(max)?;
        let mut free = self.free_space(self.room_for(max))?;
        let mut used = None;
        let staged = self.stage_frame(
            KIND_DATA,
            max,
            |buf| {
                let n = fill(buf).min(max);
                used = Some(n);
                n
            },
            &mut free,
        );
        self.publish();
        Ok(if staged { used } else { None })
    }

    /// Writes as many of `messages` as fit right now, in order, and makes them visible with a
    /// single publish. Returns how many were written.
    pub fn try_write_batch(&mut self, messages: &[&[u8]]) -> Result<usize, RingError> {
        let mut wanted: u64 = 0;
        for message in messages {
            self.check_len(message.len())?;
            wanted = wanted.saturating_add(self.ring.frame_len(message.len() as u64));
        }
        let mut free = self.free_space(wanted.min(self.ring.capacity))?;
        let mut written = 0;
        for message in messages {
            if !self.stage_frame(
                KIND_DATA,
                message.len(),
                |buf| {
                    buf.copy_from_slice(message);
                    message.len()
                },
                &mut free,
            ) {
                break;
            }
            written += 1;
        }
        self.publish();
        Ok(written)
    }

    /// True if a data frame of `len` bytes fits right now. A frame that must start a new lap
    /// gets its padding published first (the consumer skips it), so that the answer turns true
    /// once the consumer has passed it, which is what `can_progress` and the wake-ups expect:
    /// without it, a frame longer than the free space minus the tail would never fit.
    pub fn make_room(&mut self, len: usize) -> Result<bool, RingError> {
        self.check_len(len)?;
        let needed = self.ring.frame_len(len as u64);
        let until_end = self.ring.capacity - self.staged_pos % self.ring.capacity;
        if needed > until_end {
            let mut free = self.free_space(until_end)?;
            if !self.stage_padding(&mut free) {
                return Ok(false);
            }
            self.publish();
        }
        Ok(self.free_space(needed)? >= needed)
    }

    /// Counts `count` messages this ring's consumer did not get (it was full); the count is
    /// in the header for `shmemctl info` and goes in-band with [`try_write_after_gap`].
    ///
    /// [`try_write_after_gap`]: Self::try_write_after_gap
    pub fn count_lost(&mut self, count: u64) {
        self.messages_lost = self.messages_lost.saturating_add(count);
        self.ring
            .header()
            .producer
            .messages_lost
            .store(self.messages_lost, Ordering::Relaxed);
    }

    /// Writes a LOST frame saying `missed` messages are gone here, then `message`, and
    /// publishes both together; `Ok(false)` (nothing written) unless both fit now.
    pub fn try_write_after_gap(&mut self, missed: u64, message: &[u8]) -> Result<bool, RingError> {
        self.check_len(message.len())?;
        let wanted = (self.ring.frame_len(8) + self.ring.frame_len(message.len() as u64)) * 2;
        let mut free = self.free_space(wanted.min(self.ring.capacity))?;
        let saved = (self.staged_pos, self.messages_written, self.bytes_written);
        let staged = self.stage_lost(missed, &mut free)
            && self.stage_frame(
                KIND_DATA,
                message.len(),
                |buf| {
                    buf.copy_from_slice(message);
                    message.len()
                },
                &mut free,
            );
        if !staged {
            // Nothing of a half-staged pair may become visible; the bytes were never published.
            (self.staged_pos, self.messages_written, self.bytes_written) = saved;
            return Ok(false);
        }
        self.publish();
        Ok(true)
    }

    /// Writes a LOST frame alone (before an end-of-stream mark); `Ok(false)` if it does not
    /// fit now.
    pub fn try_write_gap(&mut self, missed: u64) -> Result<bool, RingError> {
        let mut free = self.free_space(self.room_for(8))?;
        let written = self.stage_lost(missed, &mut free);
        self.publish();
        Ok(written)
    }

    fn stage_lost(&mut self, missed: u64, free: &mut u64) -> bool {
        self.stage_frame(
            KIND_LOST,
            8,
            |buf| {
                buf.copy_from_slice(&missed.to_le_bytes());
                8
            },
            free,
        )
    }

    /// Writes the end-of-stream mark. Returns `Ok(false)` if there is no room right now.
    pub fn try_write_end_of_stream(&mut self) -> Result<bool, RingError> {
        let mut free = self.free_space(self.room_for(0))?;
        let written = self.stage_frame(KIND_END_OF_STREAM, 0, |_| 0, &mut free);
        self.publish();
        Ok(written)
    }

    /// Writes one frame of up to `len` payload bytes at the staged position, unpublished;
    /// `fill` returns how many it used. False if it does not fit in `free` bytes (a padding
    /// frame may have been staged all the same). A fill that uses nothing of a non-empty
    /// reservation stages no frame.
    fn stage_frame(
        &mut self,
        kind: u32,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> usize,
        free: &mut u64,
    ) -> bool {
        let capacity = self.ring.capacity;
        let needed = self.ring.frame_len(len as u64);
        let until_end = capacity - self.staged_pos % capacity;
        // The frame would wrap: pad out the tail first (a complete frame of its own), then the
        // frame starts at offset 0 once the consumer has freed room there.
        if needed > until_end && !self.stage_padding(free) {
            return false;
        }
        if *free < needed {
            return false;
        }
        let offset = self.staged_pos % capacity;
        // SAFETY: offset + needed <= capacity (the frame fits before the end, checked above),
        // so the payload range [offset + unit, offset + unit + len) lies inside the mapped
        // data area. In this process nothing else forms a reference to these bytes: this is
        // the only RingWriter on the ring here (`RingWriter::new` refuses a second one), the
        // slice lives only during `fill`, and a RingReader reads only bytes the writer has
        // published, through raw copies. Another process (a hostile consumer) may write them
        // concurrently, outside what Rust's model sees: it can only garble the message it is
        // itself about to receive; u8 has no invalid values and the library never reads this
        // slice back for any decision (a `fill` that reads back what it wrote may see the
        // peer's bytes).
        let payload = unsafe {
            std::slice::from_raw_parts_mut(
                self.ring
                    .data()
                    .add((offset + self.ring.format.unit) as usize),
                len,
            )
        };
        let used = fill(payload).min(len);
        if used == 0 && len > 0 {
            return true;
        }
        let size = self.ring.frame_len(used as u64);
        // The staged position is at most MAX_POSITION + capacity (check_positions and the
        // free space bound it), so this cannot wrap; it is refused rather than assumed.
        let Some(end) = self.staged_pos.checked_add(size) else {
            return false;
        };
        self.put_header(offset, used as u32, kind, size);
        self.staged_pos = end;
        *free -= size;
        if kind == KIND_DATA {
            // Counters come from shared memory a peer may have set to anything: they stop at
            // u64::MAX rather than wrap (or panic).
            self.messages_written = self.messages_written.saturating_add(1);
            self.bytes_written = self.bytes_written.saturating_add(used as u64);
        }
        true
    }

    /// Stages a PAD frame over the rest of the lap; false if the tail is not free yet.
    fn stage_padding(&mut self, free: &mut u64) -> bool {
        let offset = self.staged_pos % self.ring.capacity;
        let until_end = self.ring.capacity - offset;
        // As in stage_frame: the advance cannot wrap, but is refused rather than assumed.
        let end = match self.staged_pos.checked_add(until_end) {
            Some(end) if *free >= until_end => end,
            _ => return false,
        };
        let len = (until_end - self.ring.format.unit) as u32;
        self.put_header(offset, len, KIND_PAD, until_end);
        self.staged_pos = end;
        *free -= until_end;
        true
    }

    /// Writes the header of a `size`-byte frame at `offset`. With seals, the first frame of a
    /// publish also gets its span, as if it were the only frame (`publish` corrects that).
    fn put_header(&mut self, offset: u64, len: u32, kind: u32, size: u64) {
        let span = if self.staged_pos == self.write_pos && self.ring.format.seal_key.is_some() {
            self.first_frame = size;
            self.span(size)
        } else {
            0
        };
        self.ring.data_u32(offset).store(len, Ordering::Relaxed);
        self.ring
            .data_u32(offset + 4)
            .store(kind | span, Ordering::Relaxed);
    }

    /// The span field (high half of the kind word) for a publish of `bytes`; 0 (the consumer
    /// asks the position instead) if it does not fit.
    fn span(&self, bytes: u64) -> u32 {
        u32::try_from(bytes / self.ring.format.unit)
            .ok()
            .filter(|&units| units <= 0xffff)
            .map_or(0, |units| units << 16)
    }

    /// Makes everything staged visible to the consumer with one release store.
    fn publish(&mut self) {
        if self.staged_pos == self.write_pos {
            return;
        }
        let first = self.write_pos;
        self.write_pos = self.staged_pos;
        let offset = first % self.ring.capacity;
        let seal = self.ring.format.seal(first);
        if seal.is_some() && self.write_pos - first != self.first_frame {
            // More than one frame: the first one's span (written as if it were alone, so a
            // single message stores its header once) must cover them all. Rewriting a line
            // the consumer watches costs a transfer, so only batches pay it.
            let word = self.ring.data_u32(offset + 4);
            let kind = word.load(Ordering::Relaxed) & self.ring.format.kind_mask;
            word.store(kind | self.span(self.write_pos - first), Ordering::Relaxed);
        }
        let h = &self.ring.header().producer;
        // Release suffices: the fence in `take_consumer_waiting`, which always follows a
        // publish, orders this store before the waiting-flag load.
        handshake::publish(&h.write_pos, self.write_pos);
        if let Some(seal) = seal {
            // After write_pos (release after release): a consumer that sees the seal also
            // sees the position covering the frame, and never gets ahead of it.
            self.ring
                .data_u64(offset + 8)
                .store(seal, Ordering::Release);
        }
        // The counters come last: a producer killed in between leaves them short of what was
        // published, never counting a message nobody can read (the next writer starts from
        // them). Only `info` shows them.
        h.messages_written
            .store(self.messages_written, Ordering::Relaxed);
        h.bytes_written.store(self.bytes_written, Ordering::Relaxed);
    }

    /// After publishing: true if the consumer said it is going to sleep and must be woken.
    /// Pairs with [`RingReader::prepare_to_sleep`] (store flag, then re-check the ring).
    pub fn take_consumer_waiting(&mut self) -> bool {
        let flag = self.ring.consumer_side().1;
        let wake = if self.ring.wakes_by_ticket() {
            handshake::take_ticket(flag, &mut self.woken_ticket)
        } else {
            handshake::take_waiting(flag)
        };
        if wake {
            count_wakeup(&self.ring.header().producer.wakeups);
        }
        wake
    }

    /// True if a write of `payload` bytes would make progress now (write the frame, or at least
    /// the padding in front of it).
    pub fn can_progress(&mut self, payload: usize) -> Result<bool, RingError> {
        let needed = self.ring.frame_len(payload as u64);
        let until_end = self.ring.capacity - self.staged_pos % self.ring.capacity;
        let free = self.free_space(u64::MAX)?;
        Ok(if needed > until_end {
            free >= until_end
        } else {
            free >= needed
        })
    }

    /// Announces that the producer is about to block for space. Returns false (do not sleep) if
    /// space appeared in the meantime.
    pub fn prepare_to_sleep(&mut self, needed_payload: usize) -> Result<bool, RingError> {
        self.sleep_ticket = handshake::next_ticket(self.sleep_ticket);
        handshake::prepare_to_sleep(
            self,
            |w| &w.ring.header().producer_waiting.waiting,
            |w| w.sleep_ticket,
            |w| w.can_progress(needed_payload),
        )
    }

    /// After waking (or deciding not to sleep): withdraws the producer's waiting flag.
    pub fn done_sleeping(&self) {
        handshake::done_sleeping(&self.ring.header().producer_waiting.waiting);
    }
}

impl Drop for RingWriter {
    fn drop(&mut self) {
        WRITERS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.ring.file);
    }
}

/// What the consumer found in the ring.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// A message was copied into the caller's buffer.
    Message,
    /// The producer closed cleanly here.
    EndOfStream,
    /// Nothing to read right now.
    Empty,
}

/// Where a message read from the ring goes.
enum Sink<'a> {
    Buffer(&'a mut Vec<u8>),
    /// The fd, and where to say how many bytes the message had.
    Fd(BorrowedFd<'a>, &'a mut usize),
    /// Left in the ring: where the payload starts in the data area, and its length.
    Peek(&'a mut Option<(usize, usize)>),
}

/// What a batch read found.
#[derive(Debug, PartialEq, Eq)]
pub enum BatchOutcome {
    /// This many messages were handed over.
    Messages(usize),
    /// The producer closed cleanly here (nothing before it in this batch).
    EndOfStream,
    /// Nothing to read right now.
    Empty,
}

/// One item of [`RingReader::try_read_batch_confirmed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadItem<'a> {
    /// A message's payload (copied out of the ring already).
    Message(&'a [u8]),
    /// The producer closed cleanly here.
    EndOfStream,
    /// Padding at the end of a lap with nothing published after it yet.
    Padding,
}

/// Consuming side; resumes at the `read_pos` the previous consumer published.
pub struct RingReader {
    ring: SharedRing,
    read_pos: u64,
    /// The producer position seen last: while it is ahead of `read_pos` there is no need to
    /// load the shared one again.
    write_seen: u64,
    messages_read: u64,
    /// Messages the producer said this consumer missed (LOST frames read so far).
    missed: u64,
    /// The read position last stored in the header.
    published_pos: u64,
    /// Space was freed since the last `take_producer_waiting`.
    freed: bool,
    /// Seals only: empty polls since the producer's position was last loaded.
    polls_unsealed: u32,
    /// Seals only: the last frame came by its seal, so the next may be the rest of the same
    /// publish (a batch), which only the position shows.
    position_due: bool,
    /// Layout 3: the producer's sleep ticket this reader last woke it for.
    woken_ticket: u32,
    /// The ticket of this reader's last sleep.
    sleep_ticket: u32,
}

/// Whether a poll must load the producer's position even when seals say nothing came.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Poll {
    /// Seals may stand in for it (it is loaded once in [`POSITION_EVERY`] polls).
    Quick,
    /// Before sleeping: the sleep protocol pairs with the position, not with seals.
    Exact,
}

/// A consumer watching seals still loads the position once in this many empty polls (and
/// always before it sleeps), so that a frame whose seal never comes (its producer was killed
/// between storing the position and the seal) is read all the same. Not more often: each load
/// takes the position's line from the producer, whose next seal then waits for it back.
const POSITION_EVERY: u32 = 1024;

impl RingReader {
    /// A reader on `ring`, resuming at the consumer's published position; `Rejected` if this
    /// side may not write the consumer's fields, `Corrupt` if the positions are inconsistent.
    pub fn new(ring: SharedRing) -> Result<RingReader, RingError> {
        if !ring.consumer_writable() {
            return Err(RingError::Rejected(
                "the ring's ack fd is read-only: this side may only read it".into(),
            ));
        }
        let consumer = ring.consumer_side().0;
        let read_pos = consumer.read_pos.load(Ordering::Acquire);
        let write_pos = ring.header().producer.write_pos.load(Ordering::Acquire);
        check_positions(read_pos, write_pos, &ring)?;
        Ok(RingReader {
            read_pos,
            write_seen: write_pos,
            messages_read: consumer.messages_read.load(Ordering::Relaxed),
            woken_ticket: 0,
            sleep_ticket: first_ticket(),
            missed: 0,
            published_pos: read_pos,
            freed: false,
            polls_unsealed: 0,
            position_due: false,
            ring,
        })
    }

    /// Messages lost to this consumer so far (slow-consumer policy `drop`), as the producer
    /// reported them in the stream.
    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// The mapped ring this reader reads.
    pub fn ring(&self) -> &SharedRing {
        &self.ring
    }

    /// Published bytes not yet read: the frame whose seal says it came, else what the
    /// producer's position says (loaded afresh, or for a quick poll at least now and then).
    fn unread(&mut self, poll: Poll) -> Result<u64, RingError> {
        if self.write_seen == self.read_pos {
            // Probably empty, so polling. Ask for the lines the next frame lands in (a small
            // frame often straddles two) together with the producer's position, so that when
            // it comes both arrive at once instead of one after the other; with seals, the
            // frame's own first line says whether it came, and the position is not needed.
            let capacity = self.ring.capacity;
            let offset = self.read_pos % capacity;
            self.ring.prefetch((offset + CACHE_LINE).min(capacity - 1));
            match self.ring.format.seal(self.read_pos) {
                Some(seal) => {
                    if let Some((size, span)) = self.sealed_frame(offset, seal) {
                        // Without a span (a huge publish) the rest of it is for the position
                        // to say, at the next poll.
                        self.position_due = span.is_none();
                        let published = span.unwrap_or(size);
                        // read_pos <= MAX_POSITION and published <= capacity; checked all
                        // the same, as the seal and span are a peer's to write.
                        self.write_seen =
                            self.read_pos.checked_add(published).ok_or_else(|| {
                                RingError::Corrupt("sealed frame past the last position".into())
                            })?;
                        return Ok(published);
                    }
                    // Not sealed yet. Loading the position now would cost a transfer of
                    // its line, and another of the frame's when the seal lands after it.
                    self.polls_unsealed += 1;
                    let quick = poll == Poll::Quick && !self.position_due;
                    if quick && self.polls_unsealed < POSITION_EVERY {
                        return Ok(0);
                    }
                }
                None => self.ring.prefetch(offset),
            }
        }
        self.polls_unsealed = 0;
        self.position_due = false;
        let write_pos = handshake::observe(&self.ring.header().producer.write_pos);
        let unread = check_positions(self.read_pos, write_pos, &self.ring)?;
        self.write_seen = write_pos;
        Ok(unread)
    }

    /// If the frame at `offset` carries `seal` (it is published): its size, and the bytes its
    /// publish covers if the span says (both checked against the ring; a frame that fails is
    /// left to the position check to report).
    fn sealed_frame(&self, offset: u64, seal: u64) -> Option<(u64, Option<u64>)> {
        if self.ring.data_u64(offset + 8).load(Ordering::Acquire) != seal {
            return None;
        }
        let len = u64::from(self.ring.data_u32(offset).load(Ordering::Relaxed));
        let size = self.ring.frame_len(len);
        let span = u64::from(self.ring.data_u32(offset + 4).load(Ordering::Relaxed) >> 16)
            * self.ring.format.unit;
        let span = (span >= size && span <= self.ring.capacity).then_some(span);
        (size <= self.ring.capacity - offset).then_some((size, span))
    }

    /// Like `unread`, but trusts the position seen last while it still shows unread bytes.
    fn unread_cached(&mut self) -> Result<u64, RingError> {
        if self.write_seen > self.read_pos {
            return Ok(self.write_seen - self.read_pos);
        }
        self.unread(Poll::Quick)
    }

    /// True if there is something to read (or the ring is inconsistent, which the next read
    /// reports).
    pub fn has_unread(&mut self) -> bool {
        self.unread(Poll::Quick).map_or(true, |n| n > 0)
    }

    /// Copies the next message into `out` (replacing its contents), skipping padding.
    pub fn try_read_into(&mut self, out: &mut Vec<u8>) -> Result<ReadOutcome, RingError> {
        let mut unread = self.unread_cached()?;
        if unread == 0 {
            // Just loaded: a poll of an empty ring ends here, with one load (and prefetch).
            return Ok(ReadOutcome::Empty);
        }
        let outcome = self.next_frame(Sink::Buffer(out), &mut unread);
        self.commit();
        outcome
    }

    /// Hands up to `max` available messages to `each` (through the private buffer `scratch`)
    /// and releases their space with a single store. Stops before an end-of-stream mark unless
    /// it is the first thing read.
    pub fn try_read_batch(
        &mut self,
        max: usize,
        scratch: &mut Vec<u8>,
        mut each: impl FnMut(&[u8]),
    ) -> Result<BatchOutcome, RingError> {
        let mut unread = self.unread(Poll::Quick)?;
        if unread == 0 {
            return Ok(BatchOutcome::Empty);
        }
        let mut delivered = 0;
        let result = loop {
            if delivered == max {
                break Ok(BatchOutcome::Messages(delivered));
            }
            let before = (self.read_pos, self.missed);
            match self.next_frame(Sink::Buffer(scratch), &mut unread) {
                Ok(ReadOutcome::Message) => {
                    each(scratch);
                    delivered += 1;
                }
                // The mark ends a batch that has messages; it is read by the next call, so the
                // caller learns of both. (Going back over skipped padding is harmless; a loss
                // record skipped on the way is counted again then, so its count is undone.)
                Ok(ReadOutcome::EndOfStream) if delivered > 0 => {
                    (self.read_pos, self.missed) = before;
                    break Ok(BatchOutcome::Messages(delivered));
                }
                Ok(ReadOutcome::EndOfStream) => break Ok(BatchOutcome::EndOfStream),
                Ok(ReadOutcome::Empty) if delivered == 0 => break Ok(BatchOutcome::Empty),
                Ok(ReadOutcome::Empty) => break Ok(BatchOutcome::Messages(delivered)),
                Err(err) => break Err(err),
            }
        };
        self.commit();
        result
    }

    /// The stream position this reader is at: the byte counter of the next frame, which
    /// equals the position last published between calls. It only grows, names each frame
    /// uniquely for the life of the ring, and is what a consumer that attaches next starts at.
    pub fn position(&self) -> u64 {
        self.read_pos
    }

    /// Hands up to `max` available items (messages, end-of-stream marks, and padding read with
    /// nothing after it) to `each` in order, each with its stream positions (`from`, `to`: the
    /// reader's position before and after it, padding before it included, so that one item's
    /// `to` is the next one's `from` and every byte of the stream is in exactly one item), then asks
    /// `confirm` with their count. Only if it returns true is their space released (one
    /// store); otherwise the reader goes back to where it was, as if nothing had been read.
    /// `confirm` is not called when nothing was read.
    pub fn try_read_batch_confirmed(
        &mut self,
        max: usize,
        scratch: &mut Vec<u8>,
        mut each: impl FnMut(u64, u64, ReadItem<'_>),
        confirm: impl FnOnce(usize) -> bool,
    ) -> Result<usize, RingError> {
        let mut unread = self.unread(Poll::Quick)?;
        if unread == 0 {
            return Ok(0);
        }
        let saved = (self.messages_read, self.missed);
        let mut delivered = 0;
        while delivered < max {
            let from = self.read_pos;
            match self.next_frame(Sink::Buffer(scratch), &mut unread) {
                Ok(ReadOutcome::Message) => each(from, self.read_pos, ReadItem::Message(scratch)),
                Ok(ReadOutcome::EndOfStream) => each(from, self.read_pos, ReadItem::EndOfStream),
                // Padding skipped and nothing after it yet: an item of its own, so that the
                // positions stay contiguous whatever is released.
                Ok(ReadOutcome::Empty) if self.read_pos > from => {
                    each(from, self.read_pos, ReadItem::Padding);
                    delivered += 1;
                    break;
                }
                Ok(ReadOutcome::Empty) => break,
                Err(err) => {
                    self.rewind(saved);
                    return Err(err);
                }
            }
            delivered += 1;
        }
        if delivered == 0 {
            return Ok(0);
        }
        if confirm(delivered) {
            self.commit();
            Ok(delivered)
        } else {
            self.rewind(saved);
            Ok(0)
        }
    }

    /// Back to the last published position, forgetting what was read since.
    fn rewind(&mut self, (messages_read, missed): (u64, u64)) {
        self.read_pos = self.published_pos;
        self.messages_read = messages_read;
        self.missed = missed;
    }

    /// Writes the next message straight from the ring to `fd` (blocking until all of it is
    /// written), skipping padding: no copy in this process at all. `written` is set to the
    /// message's length when one was written.
    pub fn try_read_to_fd(
        &mut self,
        fd: BorrowedFd<'_>,
        written: &mut usize,
    ) -> Result<ReadOutcome, RingError> {
        let mut unread = self.unread_cached()?;
        if unread == 0 {
            return Ok(ReadOutcome::Empty);
        }
        let outcome = self.next_frame(Sink::Fd(fd, written), &mut unread);
        self.commit();
        outcome
    }

    /// Reads the frame at the local read position, out of `unread` published bytes, without
    /// publishing the new position.
    fn next_frame(
        &mut self,
        mut sink: Sink<'_>,
        unread: &mut u64,
    ) -> Result<ReadOutcome, RingError> {
        let capacity = self.ring.capacity;
        loop {
            if *unread == 0 {
                // The bytes counted so far are used up (possibly by padding just skipped):
                // only the producer's current position can say whether more came since.
                *unread = self.unread(Poll::Quick)?;
                if *unread == 0 {
                    return Ok(ReadOutcome::Empty);
                }
            }
            let offset = self.read_pos % capacity;
            let until_end = capacity - offset;
            if *unread < self.ring.format.unit {
                return Err(RingError::Corrupt(format!(
                    "{unread} unread bytes cannot hold a frame"
                )));
            }
            let len = u64::from(self.ring.data_u32(offset).load(Ordering::Relaxed));
            let kind =
                self.ring.data_u32(offset + 4).load(Ordering::Relaxed) & self.ring.format.kind_mask;
            let size = self.ring.frame_len(len);
            if size > *unread || size > until_end {
                return Err(RingError::Corrupt(format!(
                    "frame of {len} bytes at offset {offset} overruns the {} published bytes",
                    (*unread).min(until_end)
                )));
            }
            match kind {
                KIND_PAD if size != until_end => {
                    return Err(RingError::Corrupt(format!(
                        "padding at offset {offset} does not reach the end of the ring"
                    )));
                }
                KIND_PAD | KIND_END_OF_STREAM => {}
                KIND_LOST if len != 8 => {
                    return Err(RingError::Corrupt(format!(
                        "loss record of {len} bytes at offset {offset}"
                    )));
                }
                KIND_LOST => {
                    let word = |at| u32::from_le(self.ring.data_u32(at).load(Ordering::Relaxed));
                    let count_at = offset + self.ring.format.unit;
                    let (low, high) = (word(count_at), word(count_at + 4));
                    let count = u64::from(low) | (u64::from(high) << 32);
                    self.missed = self.missed.saturating_add(count);
                }
                KIND_DATA => {
                    let start = (offset + self.ring.format.unit) as usize;
                    match &mut sink {
                        Sink::Buffer(out) => {
                            out.clear();
                            out.reserve(len as usize);
                            // SAFETY: the source range [offset + unit, offset + unit + len) lies
                            // inside the data area (its frame's size <= until_end), `out` has
                            // room for len bytes after reserve, and the two never overlap
                            // (private heap vs shared mapping). A raw copy forms no reference to
                            // the shared bytes: a hostile producer rewriting them while we copy
                            // only changes what we receive; we copy them out before looking at
                            // any.
                            unsafe {
                                std::ptr::copy_nonoverlapping(
                                    self.ring.data().add(start),
                                    out.as_mut_ptr(),
                                    len as usize,
                                );
                                out.set_len(len as usize);
                            }
                        }
                        Sink::Fd(fd, written) => {
                            self.ring.write_out(start, len as usize, *fd)?;
                            **written = len as usize;
                        }
                        Sink::Peek(at) => **at = Some((start, len as usize)),
                    }
                    self.messages_read = self.messages_read.saturating_add(1);
                }
                other => {
                    return Err(RingError::Corrupt(format!(
                        "unknown frame kind {other} at offset {offset}"
                    )))
                }
            }
            // size <= unread, and read_pos + unread is a position the checks accepted.
            self.read_pos = self.read_pos.checked_add(size).ok_or_else(|| {
                RingError::Corrupt(format!("frame at offset {offset} ends past 2^64"))
            })?;
            *unread -= size;
            match kind {
                KIND_DATA => return Ok(ReadOutcome::Message),
                KIND_END_OF_STREAM => return Ok(ReadOutcome::EndOfStream),
                _ => continue,
            }
        }
    }

    /// Publishes the local read position (releasing the space) with one store, if it moved: a
    /// poll of an empty ring writes nothing.
    fn commit(&mut self) {
        if self.read_pos == self.published_pos {
            return;
        }
        let h = self.ring.consumer_side().0;
        h.messages_read.store(self.messages_read, Ordering::Relaxed);
        // Release suffices: the fence in `take_producer_waiting`, which callers run after every
        // read, orders it before the waiting-flag load.
        handshake::publish(&h.read_pos, self.read_pos);
        self.published_pos = self.read_pos;
        self.freed = true;
    }

    /// After a read: true if it freed space (a message, or only padding skipped) and the
    /// producer is asleep waiting for space, so it must be woken. Costs nothing when nothing
    /// was freed.
    pub fn take_producer_waiting(&mut self) -> bool {
        if !std::mem::take(&mut self.freed) {
            return false;
        }
        let flag = &self.ring.header().producer_waiting.waiting;
        let wake = if self.ring.wakes_by_ticket() {
            handshake::take_ticket(flag, &mut self.woken_ticket)
        } else {
            handshake::take_waiting(flag)
        };
        if wake {
            count_wakeup(&self.ring.consumer_side().0.wakeups);
        }
        wake
    }

    /// Announces that the consumer is about to block. Returns false (do not sleep) if data
    /// arrived in the meantime.
    pub fn prepare_to_sleep(&mut self) -> Result<bool, RingError> {
        self.sleep_ticket = handshake::next_ticket(self.sleep_ticket);
        handshake::prepare_to_sleep(
            self,
            |r| r.ring.consumer_side().1,
            |r| r.sleep_ticket,
            |r| Ok(r.unread(Poll::Exact)? > 0),
        )
    }

    /// After waking (or deciding not to sleep): withdraws the consumer's waiting flag.
    pub fn done_sleeping(&self) {
        handshake::done_sleeping(self.ring.consumer_side().1);
    }
}

/// Counts one wake-up in the waker's own counter, for `shmemctl top`. Only this side writes
/// it (a load and a store, no locked instruction on the wake path); the peer may scribble on
/// it, so it saturates rather than wraps, and nobody takes a decision from it.
fn count_wakeup(counter: &AtomicU64) {
    let now = counter.load(Ordering::Relaxed);
    counter.store(now.saturating_add(1), Ordering::Relaxed);
}

/// Checks a pair of positions (one of them, or both, read from the header) and returns the
/// unread bytes between them.
fn check_positions(read_pos: u64, write_pos: u64, ring: &SharedRing) -> Result<u64, RingError> {
    let (capacity, unit) = (ring.capacity, ring.format.unit);
    // Frames start at multiples of the frame unit: any other position was written by a hostile
    // peer, and following it would read a frame header across the end of the data area.
    // Positions above MAX_POSITION would wrap the sums both sides make with them.
    let aligned = read_pos % unit == 0 && write_pos % unit == 0;
    match write_pos.checked_sub(read_pos) {
        Some(unread) if aligned && unread <= capacity && write_pos <= MAX_POSITION => Ok(unread),
        _ => Err(RingError::Corrupt(format!(
            "positions out of range (read {read_pos}, write {write_pos}, capacity {capacity})"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    pub(super) fn pair(capacity: u64) -> (RingWriter, RingReader, RingFiles) {
        pair_in(LAYOUT_VERSION, capacity)
    }

    fn pair_in(layout: u32, capacity: u64) -> (RingWriter, RingReader, RingFiles) {
        let (ring, memfd) = SharedRing::create_in_layout("test", capacity, layout).expect("create");
        drop(ring);
        // Each side with the fds the broker gives it (layout 3: the other's memfd read-only).
        let open = |side| {
            let fds = memfd.share(Some(side)).expect("share");
            SharedRing::open(fds, capacity).expect("open")
        };
        (
            RingWriter::new(open(Role::Producer)).expect("writer"),
            RingReader::new(open(Role::Consumer)).expect("reader"),
            memfd,
        )
    }

    /// Reads until something other than "empty" comes: what only the producer's position
    /// shows (a frame without a seal) turns up at the latest at the reader's next load of it.
    fn read_settled(r: &mut RingReader, out: &mut Vec<u8>) -> Result<ReadOutcome, RingError> {
        for _ in 0..POSITION_EVERY {
            match r.try_read_into(out) {
                Ok(ReadOutcome::Empty) => continue,
                other => return other,
            }
        }
        r.try_read_into(out)
    }

    fn write(w: &mut RingWriter, bytes: &[u8]) -> bool {
        w.try_write_with(bytes.len(), |buf| buf.copy_from_slice(bytes))
            .expect("write")
    }

    #[test]
    fn messages_round_trip_across_the_wrap() {
        for layout in MIN_LAYOUT_VERSION..=LAYOUT_VERSION {
            round_trip_across_the_wrap(layout);
        }
    }

    fn round_trip_across_the_wrap(layout: u32) {
        let (mut w, mut r, _fd) = pair_in(layout, 4096);
        assert_eq!(r.ring().layout(), layout);
        let mut out = Vec::new();
        for i in 0..2000u32 {
            let msg: Vec<u8> = (0..(i % 700)).map(|b| (b ^ i) as u8).collect();
            assert!(write(&mut w, &msg), "room for message {i}");
            assert_eq!(
                r.try_read_into(&mut out).expect("read"),
                ReadOutcome::Message
            );
            assert_eq!(out, msg, "message {i}");
        }
        assert_eq!(r.try_read_into(&mut out).expect("read"), ReadOutcome::Empty);
        assert_eq!(r.ring().stats().messages_written, 2000);
    }

    #[test]
    fn a_frame_whose_seal_never_came_is_read_by_the_position() {
        // As if the producer was killed between storing the position and the seal.
        let (mut w, mut r, _fd) = pair(4096);
        assert!(write(&mut w, b"orphan"));
        w.ring().data_u64(8).store(0, Ordering::SeqCst);
        let mut out = Vec::new();
        // A consumer about to sleep asks the position, and finds it.
        assert!(!r.prepare_to_sleep().expect("arm"), "a message is there");
        assert_eq!(
            r.try_read_into(&mut out).expect("read"),
            ReadOutcome::Message
        );
        assert_eq!(out, b"orphan");
        // A busy poller finds it within POSITION_EVERY polls.
        assert!(write(&mut w, b"second"));
        w.ring().data_u64(32 + 8).store(0, Ordering::SeqCst);
        assert_eq!(r.try_read_into(&mut out).expect("read"), ReadOutcome::Empty);
        assert_eq!(
            read_settled(&mut r, &mut out).expect("read"),
            ReadOutcome::Message
        );
        assert_eq!(out, b"second");
    }

    #[test]
    fn a_sealed_batch_is_read_whole_by_its_span() {
        let (mut w, mut r, _fd) = pair(4096);
        assert_eq!(w.try_write_batch(&[b"a", b"bb", b"ccc"]).expect("batch"), 3);
        // The position is not needed (nor looked at) for what the span covers.
        w.ring()
            .header()
            .producer
            .write_pos
            .store(1 << 40, Ordering::SeqCst);
        let mut got = Vec::new();
        let mut scratch = Vec::new();
        let outcome = r
            .try_read_batch(10, &mut scratch, |m| got.push(m.to_vec()))
            .expect("batch read");
        assert_eq!(outcome, BatchOutcome::Messages(3));
        assert_eq!(got, [&b"a"[..], b"bb", b"ccc"]);
    }

    #[test]
    fn batches_publish_once_and_stop_before_end_of_stream() {
        let (mut w, mut r, _fd) = pair(4096);
        let messages: Vec<Vec<u8>> = (0..300u32).map(|i| i.to_le_bytes().to_vec()).collect();
        let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        let mut sent = 0;
        let mut got = Vec::new();
        let mut scratch = Vec::new();
        while sent < refs.len() {
            sent += w.try_write_batch(&refs[sent..]).expect("write");
            let outcome = r
                .try_read_batch(usize::MAX, &mut scratch, |m| got.push(m.to_vec()))
                .expect("read");
            assert!(matches!(outcome, BatchOutcome::Messages(n) if n > 0));
        }
        assert_eq!(
            got, messages,
            "every message once, in order, across the wrap"
        );
        assert!(w.try_write_batch(&[b"last"]).expect("write") == 1);
        assert!(w.try_write_end_of_stream().expect("eos"));
        let mut tail = Vec::new();
        let first = r
            .try_read_batch(10, &mut scratch, |m| tail.push(m.to_vec()))
            .expect("read");
        assert_eq!(
            (first, tail),
            (BatchOutcome::Messages(1), vec![b"last".to_vec()])
        );
        let second = r
            .try_read_batch(10, &mut scratch, |_| panic!("no message"))
            .expect("read");
        assert_eq!(second, BatchOutcome::EndOfStream);
        assert_eq!(
            r.try_read_batch(10, &mut scratch, |_| {}).expect("read"),
            BatchOutcome::Empty
        );
    }

    #[test]
    fn variable_length_writes_and_reads_to_an_fd_copy_nothing_extra() {
        let (mut w, mut r, _fd) = pair(4096);
        assert_eq!(
            w.try_write_up_to(1000, |buf| {
                buf[..3].copy_from_slice(b"abc");
                3
            })
            .expect("write"),
            Some(3)
        );
        assert_eq!(
            w.try_write_up_to(1000, |_| 0).expect("write"),
            Some(0),
            "nothing used, no message"
        );
        assert_eq!(
            w.try_write_up_to(5000, |_| 0)
                .err()
                .map(|e| e.to_string().contains("does not fit")),
            Some(true)
        );
        assert!(write(&mut w, b"defg"));
        let (read_end, write_end) = rustix::pipe::pipe().expect("pipe");
        let mut written = 0;
        assert_eq!(
            r.try_read_to_fd(write_end.as_fd(), &mut written)
                .expect("read"),
            ReadOutcome::Message
        );
        assert_eq!(written, 3);
        assert_eq!(
            r.try_read_to_fd(write_end.as_fd(), &mut written)
                .expect("read"),
            ReadOutcome::Message
        );
        assert_eq!(written, 4);
        assert_eq!(
            r.try_read_to_fd(write_end.as_fd(), &mut written)
                .expect("read"),
            ReadOutcome::Empty
        );
        let mut got = [0u8; 16];
        let n = rustix::io::read(&read_end, &mut got).expect("read pipe");
        assert_eq!(&got[..n], b"abcdefg", "exactly the used bytes, in order");
        assert_eq!(r.ring().stats().messages_written, 2);
    }

    /// A 4 KiB ring where one message was read, a second (`[1; 100]`) is unread, and a refused
    /// large write published only the padding up to the end of the data area.
    fn padding_after_a_message() -> (RingWriter, RingReader, RingFiles) {
        let (mut w, mut r, fd) = pair(4096);
        assert!(write(&mut w, &[0; 100]));
        let mut out = Vec::new();
        assert_eq!(
            r.try_read_into(&mut out).expect("read"),
            ReadOutcome::Message
        );
        assert!(write(&mut w, &[1; 100]));
        assert!(!w
            .try_write_with(4000, |_| {})
            .expect("refused: only the padding fits"));
        (w, r, fd)
    }

    /// Cases found by the `ring_reader` fuzz target (fuzz/corpus/ring_reader/seed-*).
    #[test]
    fn fuzz_findings_stay_fixed() {
        // Unaligned positions would make the next frame header straddle the end of the ring.
        let (_w, _r, memfd) = pair(4096);
        let broker = open_again(&memfd, 4096);
        broker
            .consumer_side()
            .0
            .read_pos
            .store(4092, Ordering::SeqCst);
        broker
            .header()
            .producer
            .write_pos
            .store(4100, Ordering::SeqCst);
        let fd = memfd.share(None).expect("share");
        let ring = SharedRing::open(fd, 4096).expect("open");
        assert!(matches!(RingReader::new(ring), Err(RingError::Corrupt(_))));

        // A counter a peer set to u64::MAX wraps instead of panicking.
        let (mut w, mut r, _fd) = pair(4096);
        r.messages_read = u64::MAX;
        assert!(write(&mut w, b"x"));
        let mut out = Vec::new();
        assert_eq!(
            r.try_read_into(&mut out).expect("read"),
            ReadOutcome::Message
        );

        // Message, padding published alone, end-of-stream: a batch hands over the message and
        // leaves the mark for the next call.
        let mut scratch = Vec::new();
        let (mut w, mut r, _fd) = padding_after_a_message();
        assert!(w
            .try_write_end_of_stream()
            .expect("the mark fits after the padding"));
        let first = r
            .try_read_batch(15, &mut scratch, |m| assert_eq!(m, [1; 100]))
            .expect("read");
        assert_eq!(first, BatchOutcome::Messages(1));
        let second = r
            .try_read_batch(15, &mut scratch, |_| panic!("no message"))
            .expect("read");
        assert_eq!(second, BatchOutcome::EndOfStream);

        // A cached producer position that ends at padding: the message published after it is
        // found, not reported as empty.
        let (mut w, mut r, _fd) = padding_after_a_message();
        assert_eq!(
            r.try_read_into(&mut scratch).expect("read"),
            ReadOutcome::Message
        );
        assert!(
            write(&mut w, &[2; 50]),
            "fits at the start after the padding"
        );
        assert_eq!(
            r.try_read_into(&mut scratch).expect("read"),
            ReadOutcome::Message
        );
        assert_eq!(scratch, [2; 50]);
    }

    #[test]
    fn full_ring_refuses_then_accepts() {
        let (mut w, mut r, _fd) = pair(4096);
        let msg = [7u8; 1000];
        let mut written = 0;
        while write(&mut w, &msg) {
            written += 1;
        }
        assert_eq!(written, 4); // 4 frames of 16 + 1008 bytes fill 4096, a fifth does not
        let mut out = Vec::new();
        assert_eq!(
            r.try_read_into(&mut out).expect("read"),
            ReadOutcome::Message
        );
        assert!(write(&mut w, &msg));
        assert!(matches!(
            w.try_write_with(4096, |_| {}),
            Err(RingError::TooLarge { max: 4080, .. })
        ));
        assert!(w.try_write_with(4080, |_| {}).is_ok());
    }

    #[test]
    fn a_new_reader_resumes_where_the_old_one_stopped() {
        let (mut w, mut r, memfd) = pair(8192);
        for i in 0..10u8 {
            assert!(write(&mut w, &[i; 100]));
        }
        let mut out = Vec::new();
        for i in 0..4u8 {
            r.try_read_into(&mut out).expect("read");
            assert_eq!(out, vec![i; 100]);
        }
        drop(r);
        let fd = memfd.share(None).expect("share");
        let mut r2 = RingReader::new(SharedRing::open(fd, 8192).expect("open")).expect("reader");
        for i in 4..10u8 {
            assert_eq!(
                r2.try_read_into(&mut out).expect("read"),
                ReadOutcome::Message
            );
            assert_eq!(out, vec![i; 100]);
        }
        assert!(w.try_write_end_of_stream().expect("eos"));
        assert_eq!(
            r2.try_read_into(&mut out).expect("read"),
            ReadOutcome::EndOfStream
        );
    }

    #[test]
    fn scribbled_positions_and_frames_are_reported_not_followed() {
        let (mut w, mut r, _fd) = pair(4096);
        assert!(write(&mut w, b"hello"));
        let mut out = Vec::new();
        // Read through its seal: the position is not even looked at.
        assert_eq!(
            r.try_read_into(&mut out).expect("read"),
            ReadOutcome::Message
        );
        // The next frame (at 32) carries no seal, so the reader goes by the position.
        w.ring()
            .header()
            .producer
            .write_pos
            .store(1 << 40, Ordering::SeqCst);
        assert!(matches!(
            read_settled(&mut r, &mut out),
            Err(RingError::Corrupt(_))
        ));
        w.ring()
            .header()
            .producer
            .write_pos
            .store(64, Ordering::SeqCst);
        w.ring().data_u32(32).store(1_000_000, Ordering::Relaxed);
        assert!(matches!(
            read_settled(&mut r, &mut out),
            Err(RingError::Corrupt(_))
        ));
        w.ring().data_u32(32).store(5, Ordering::Relaxed);
        w.ring().data_u32(36).store(99, Ordering::Relaxed);
        assert!(matches!(
            read_settled(&mut r, &mut out),
            Err(RingError::Corrupt(_))
        ));
        r.ring()
            .consumer_side()
            .0
            .read_pos
            .store(u64::MAX, Ordering::SeqCst);
        // The writer trusts the consumer position it saw last until that runs out of room;
        // then it loads the scribbled one and refuses to go on.
        let outcome = (0..100).find_map(|_| match w.try_write_with(500, |_| {}) {
            Ok(true) => None,
            other => Some(other),
        });
        assert!(
            matches!(outcome, Some(Err(RingError::Corrupt(_)))),
            "{outcome:?}"
        );
    }

    #[test]
    fn one_writer_per_ring_in_a_process() {
        let (w, _r, memfd) = pair(4096);
        let second = RingWriter::new(open_again(&memfd, 4096));
        assert!(
            matches!(second, Err(RingError::Rejected(_))),
            "{:?}",
            second.err()
        );
        // Another ring is another matter, and the place is free again once the writer goes.
        let (_other, _r2, _fd2) = pair(4096);
        drop(w);
        assert!(RingWriter::new(open_again(&memfd, 4096)).is_ok());
    }

    fn open_again(memfd: &RingFiles, capacity: u64) -> SharedRing {
        let fd = memfd.share(None).expect("share");
        SharedRing::open(fd, capacity).expect("open")
    }

    #[test]
    fn rejects_unsealed_or_wrong_sized_memfds() {
        let memfd = MemfdOptions::default()
            .allow_sealing(true)
            .create("plain")
            .expect("memfd");
        memfd.as_file().set_len(HEADER_SIZE + 4096).expect("len");
        let fds = RingFds {
            ring: OwnedFd::from(memfd.into_file()),
            ack: None,
        };
        let err = SharedRing::open(fds, 4096).err().expect("refused");
        assert!(err.to_string().contains("missing seal"), "{err}");
        let (_ring, memfd) = SharedRing::create("x", 8192).expect("create");
        let fd = memfd.share(None).expect("share");
        let err = SharedRing::open(fd, 4096).err().expect("refused");
        assert!(err.to_string().contains("expected"), "{err}");
    }

    #[test]
    fn a_gap_is_reported_in_band_where_it_happened() {
        let (mut w, mut r, _memfd) = pair(4096);
        assert!(write(&mut w, b"before"));
        w.count_lost(3);
        assert!(w.try_write_after_gap(3, b"after").expect("write"));
        w.count_lost(2);
        assert!(w.try_write_gap(2).expect("gap"));
        assert!(w.try_write_end_of_stream().expect("eos"));
        let mut out = Vec::new();
        assert_eq!(
            r.try_read_into(&mut out).expect("read"),
            ReadOutcome::Message
        );
        assert_eq!((out.as_slice(), r.missed()), (&b"before"[..], 0));
        assert_eq!(
            r.try_read_into(&mut out).expect("read"),
            ReadOutcome::Message
        );
        assert_eq!((out.as_slice(), r.missed()), (&b"after"[..], 3));
        assert_eq!(
            r.try_read_into(&mut out).expect("read"),
            ReadOutcome::EndOfStream
        );
        assert_eq!(r.missed(), 5);
        assert_eq!(r.ring().stats().messages_lost, 5);
    }

    #[test]
    fn a_batch_stopping_before_the_mark_counts_a_loss_record_once() {
        let (mut w, mut r, _memfd) = pair(4096);
        assert!(write(&mut w, b"last"));
        assert!(w.try_write_gap(2).expect("gap"));
        assert!(w.try_write_end_of_stream().expect("eos"));
        let mut scratch = Vec::new();
        let first = r.try_read_batch(10, &mut scratch, |_| {}).expect("read");
        assert_eq!((first, r.missed()), (BatchOutcome::Messages(1), 0));
        let second = r.try_read_batch(10, &mut scratch, |_| {}).expect("read");
        assert_eq!((second, r.missed()), (BatchOutcome::EndOfStream, 2));
    }

    #[test]
    fn a_gap_and_its_message_go_in_together_or_not_at_all() {
        let (mut w, mut r, _memfd) = pair(4096);
        let big = vec![7u8; 4000];
        assert!(write(&mut w, &big));
        // 88 bytes left: room for the LOST record but not for it and a 100-byte message.
        assert!(!w.try_write_after_gap(1, &[1u8; 100]).expect("write"));
        let mut out = Vec::new();
        assert_eq!(
            r.try_read_into(&mut out).expect("read"),
            ReadOutcome::Message
        );
        assert_eq!(r.try_read_into(&mut out).expect("read"), ReadOutcome::Empty);
        assert_eq!(r.missed(), 0, "nothing of the refused pair became visible");
    }

    #[test]
    fn a_malformed_loss_record_is_corruption() {
        let (mut w, mut r, _memfd) = pair(4096);
        assert!(w.try_write_gap(1).expect("gap"));
        w.ring().data_u32(0).store(4, Ordering::SeqCst);
        let mut out = Vec::new();
        let err = r.try_read_into(&mut out).expect_err("refused");
        assert!(err.to_string().contains("loss record of 4 bytes"), "{err}");
    }

    #[test]
    fn skipping_padding_alone_wakes_a_producer_waiting_for_space() {
        let (mut w, mut r, _memfd) = pair(4096);
        let mut out = Vec::new();
        assert!(write(&mut w, &[1u8; 3000]));
        assert_eq!(
            r.try_read_into(&mut out).expect("read"),
            ReadOutcome::Message
        );
        assert!(!r.take_producer_waiting(), "nobody is waiting yet");
        // 3500 bytes do not fit after the 1072-byte tail: the producer pads the tail and
        // waits for the consumer to pass it.
        assert!(!write(&mut w, &[2u8; 3500]));
        assert!(
            w.prepare_to_sleep(3500).expect("prepare"),
            "the producer must wait"
        );
        assert_eq!(r.try_read_into(&mut out).expect("read"), ReadOutcome::Empty);
        assert!(
            r.take_producer_waiting(),
            "passing the padding freed the space the producer waits for: it must be woken"
        );
        assert!(!r.take_producer_waiting(), "one wake-up per freeing");
        assert_eq!(r.ring().stats().wakeups, 1, "the wake-up was counted once");
    }

    #[test]
    fn make_room_pads_a_frame_that_must_start_a_new_lap() {
        let (mut w, mut r, _memfd) = pair(4096);
        let mut out = Vec::new();
        assert!(write(&mut w, &[1u8; 3000]));
        assert_eq!(
            r.try_read_into(&mut out).expect("read"),
            ReadOutcome::Message
        );
        // 3500 bytes fit only at offset 0, after the consumer has passed the 1072-byte tail.
        assert!(!w.make_room(3500).expect("room"));
        assert!(
            w.prepare_to_sleep(3500).expect("prepare"),
            "nothing to do but wait for the consumer"
        );
        assert_eq!(r.try_read_into(&mut out).expect("read"), ReadOutcome::Empty);
        assert!(
            r.take_producer_waiting(),
            "passing the padding wakes the producer"
        );
        w.done_sleeping();
        assert!(w.make_room(3500).expect("room"));
        assert!(write(&mut w, &[2u8; 3500]));
        assert_eq!(
            r.try_read_into(&mut out).expect("read"),
            ReadOutcome::Message
        );
        assert_eq!(out, vec![2u8; 3500]);
    }

    /// Layout 3 wakes by tickets: a waker remembers the ticket it last woke. A side that
    /// attaches anew (a new `RingReader` or `RingWriter` on the same ring) must not sleep on
    /// that same ticket, or the waker takes it for a sleep already woken and never wakes it.
    #[test]
    fn a_consumer_that_attaches_anew_is_woken_on_its_first_sleep() {
        let (mut w, mut r, memfd) = pair(4096);
        let mut out = Vec::new();
        assert!(r.prepare_to_sleep().expect("prepare"), "empty: sleep");
        assert!(write(&mut w, b"one"));
        assert!(w.take_consumer_waiting(), "the first consumer is woken");
        r.done_sleeping();
        assert_eq!(
            read_settled(&mut r, &mut out).expect("read"),
            ReadOutcome::Message
        );
        drop(r);
        // The next consumer (the producer wrote nothing meanwhile, so it never saw the flag
        // down) sleeps, and the producer writes.
        let open = memfd.share(Some(Role::Consumer)).expect("share");
        let mut r = RingReader::new(SharedRing::open(open, 4096).expect("open")).expect("reader");
        assert!(r.prepare_to_sleep().expect("prepare"), "empty: sleep");
        assert!(write(&mut w, b"two"));
        assert!(
            w.take_consumer_waiting(),
            "the new consumer sleeps and data came: it must be woken"
        );
    }

    #[test]
    fn a_producer_that_attaches_anew_is_woken_on_its_first_sleep() {
        let (mut w, mut r, memfd) = pair(4096);
        let mut out = Vec::new();
        // Wrap the ring: a 3000-byte message read, then 1000 and (after padding) 2000 unread,
        // so that 1000 bytes are free, not enough for the next 2000.
        assert!(write(&mut w, &[1u8; 3000]));
        assert_eq!(
            read_settled(&mut r, &mut out).expect("read"),
            ReadOutcome::Message
        );
        assert!(write(&mut w, &[2u8; 1000]));
        assert!(write(&mut w, &[3u8; 2000]));
        assert!(w.prepare_to_sleep(2000).expect("prepare"), "full: sleep");
        assert_eq!(
            read_settled(&mut r, &mut out).expect("read"),
            ReadOutcome::Message
        );
        assert!(r.take_producer_waiting(), "the first producer is woken");
        w.done_sleeping();
        drop(w);
        // The next producer (the consumer freed nothing meanwhile, so it never saw the flag
        // down) waits for more room than there is, and the consumer frees some.
        let open = memfd.share(Some(Role::Producer)).expect("share");
        let mut w = RingWriter::new(SharedRing::open(open, 4096).expect("open")).expect("writer");
        assert!(w.prepare_to_sleep(3000).expect("prepare"), "full: sleep");
        assert_eq!(
            read_settled(&mut r, &mut out).expect("read"),
            ReadOutcome::Message
        );
        assert!(
            r.take_producer_waiting(),
            "the new producer sleeps and room came: it must be woken"
        );
    }
}

#[cfg(test)]
mod hostile_positions {
    //! Positions near the top of the u64 range, set by a hostile peer (before the victim
    //! attaches, or while it runs): reported as corruption, never followed into an overflow.
    use super::*;

    const NEAR_THE_END: [u64; 6] = [
        u64::MAX - 15,
        u64::MAX - 31,
        u64::MAX,
        MAX_POSITION + 16,
        u64::MAX - 16 * 4096,
        u64::MAX - (1 << 40),
    ];

    fn shared(capacity: u64) -> (SharedRing, RingFiles) {
        SharedRing::create("hostile", capacity).expect("create")
    }

    fn reopen(memfd: &RingFiles, capacity: u64) -> SharedRing {
        let fd = memfd.share(None).expect("share");
        SharedRing::open(fd, capacity).expect("open")
    }

    fn set_positions(ring: &SharedRing, read: u64, write: u64) {
        ring.consumer_side()
            .0
            .read_pos
            .store(read, Ordering::SeqCst);
        ring.header()
            .producer
            .write_pos
            .store(write, Ordering::SeqCst);
    }

    fn is_corrupt<T: std::fmt::Debug>(result: &Result<T, RingError>) -> bool {
        matches!(result, Err(RingError::Corrupt(_)))
    }

    /// A producer attaching to (or running on) a ring whose positions a peer set: every write
    /// either succeeds within the ring or reports corruption; after a few, corruption.
    fn writes_end_in_corruption(writer: Result<RingWriter, RingError>) {
        let mut writer = match writer {
            Ok(writer) => writer,
            Err(err) => {
                assert!(matches!(err, RingError::Corrupt(_)), "{err}");
                return;
            }
        };
        let mut last = Ok(true);
        for _ in 0..64 {
            last = writer.try_write_with(100, |buf| buf.fill(1));
            if last.is_err() {
                break;
            }
            last = writer.try_write_batch(&[b"a", b"b"]).map(|n| n > 0);
            if last.is_err() {
                break;
            }
        }
        assert!(is_corrupt(&last), "{last:?}");
    }

    fn reads_end_in_corruption(reader: Result<RingReader, RingError>) {
        let mut reader = match reader {
            Ok(reader) => reader,
            Err(err) => {
                assert!(matches!(err, RingError::Corrupt(_)), "{err}");
                return;
            }
        };
        let mut out = Vec::new();
        let mut last = Ok(ReadOutcome::Empty);
        for _ in 0..2 * POSITION_EVERY {
            last = reader.try_read_into(&mut out);
            if last.is_err() {
                break;
            }
            let sleep = reader.prepare_to_sleep();
            if let Err(err) = sleep {
                last = Err(err);
                break;
            }
            reader.done_sleeping();
        }
        assert!(is_corrupt(&last), "{last:?}");
    }

    #[test]
    fn a_writer_attaching_at_positions_near_2_pow_64_reports_corruption() {
        for layout in MIN_LAYOUT_VERSION..=LAYOUT_VERSION {
            for pos in NEAR_THE_END {
                let (ring, memfd) = SharedRing::create_in_layout("h", 4096, layout).expect("ring");
                set_positions(&ring, pos, pos);
                writes_end_in_corruption(RingWriter::new(reopen(&memfd, 4096)));
                // One lap behind: also within `capacity` of each other.
                set_positions(&ring, pos.saturating_sub(4096) & !15, pos);
                writes_end_in_corruption(RingWriter::new(reopen(&memfd, 4096)));
            }
        }
    }

    #[test]
    fn a_reader_attaching_at_positions_near_2_pow_64_reports_corruption() {
        for layout in MIN_LAYOUT_VERSION..=LAYOUT_VERSION {
            for pos in NEAR_THE_END {
                let (ring, memfd) = SharedRing::create_in_layout("h", 4096, layout).expect("ring");
                let unit = FrameFormat::of(layout, 0).unit;
                // A one-unit frame just before `pos`, sealed as a producer would.
                let start = pos.wrapping_sub(unit) & !15;
                set_positions(&ring, start, start.wrapping_add(unit));
                let offset = start % 4096;
                ring.data_u32(offset).store(0, Ordering::SeqCst);
                ring.data_u32(offset + 4).store(KIND_PAD, Ordering::SeqCst);
                reads_end_in_corruption(RingReader::new(reopen(&memfd, 4096)));
                // Equal positions with the next frame sealed at the last one.
                set_positions(&ring, pos, pos);
                let offset = (pos % 4096) & !15;
                ring.data_u32(offset).store(0, Ordering::SeqCst);
                ring.data_u32(offset + 4)
                    .store(KIND_DATA | 1 << 16, Ordering::SeqCst);
                let key = ring.header().identity.seal_key.load(Ordering::SeqCst);
                ring.data_u64(offset + 8)
                    .store(pos.wrapping_add(1) ^ key, Ordering::SeqCst);
                reads_end_in_corruption(RingReader::new(reopen(&memfd, 4096)));
            }
        }
    }

    #[test]
    fn a_running_writer_facing_a_read_position_near_2_pow_64_reports_corruption() {
        for pos in NEAR_THE_END {
            let (ring, memfd) = shared(4096);
            let writer = RingWriter::new(reopen(&memfd, 4096));
            set_positions(&ring, pos, 0);
            writes_end_in_corruption(writer);
        }
    }

    #[test]
    fn a_running_reader_facing_a_write_position_near_2_pow_64_reports_corruption() {
        for pos in NEAR_THE_END {
            let (ring, memfd) = shared(4096);
            let reader = RingReader::new(reopen(&memfd, 4096));
            ring.header()
                .producer
                .write_pos
                .store(pos, Ordering::SeqCst);
            reads_end_in_corruption(reader);
        }
    }

    #[test]
    fn a_ring_runs_up_to_the_last_position_then_reports_corruption() {
        let (ring, memfd) = shared(4096);
        let start = MAX_POSITION - 2 * 4096;
        set_positions(&ring, start, start);
        let mut writer = RingWriter::new(reopen(&memfd, 4096)).expect("writer");
        let mut reader = RingReader::new(reopen(&memfd, 4096)).expect("reader");
        let mut out = Vec::new();
        let outcome = (0..100).find_map(|i| {
            match writer.try_write_with(1000, |buf| buf.fill(i)) {
                Ok(true) => {}
                other => return Some(other),
            }
            match reader.try_read_into(&mut out) {
                Ok(ReadOutcome::Message) => {
                    assert_eq!(out, [i; 1000]);
                    None
                }
                Ok(other) => panic!("{other:?}"),
                Err(err) => Some(Err(err)),
            }
        });
        assert!(
            matches!(outcome, Some(Err(RingError::Corrupt(_)))),
            "{outcome:?}"
        );
    }

    #[test]
    fn counters_a_peer_set_to_the_maximum_do_not_overflow() {
        let (ring, memfd) = shared(4096);
        let h = ring.header();
        for counter in [
            &h.producer.messages_written,
            &h.producer.bytes_written,
            &h.producer.messages_lost,
            &h.producer.wakeups,
            &ring.consumer_side().0.messages_read,
            &ring.consumer_side().0.wakeups,
        ] {
            counter.store(u64::MAX, Ordering::SeqCst);
        }
        let mut writer = RingWriter::new(reopen(&memfd, 4096)).expect("writer");
        let mut reader = RingReader::new(reopen(&memfd, 4096)).expect("reader");
        writer.count_lost(u64::MAX);
        assert!(writer.try_write_after_gap(u64::MAX, b"x").expect("write"));
        assert!(writer.try_write_with(3, |b| b.fill(2)).expect("write"));
        let mut out = Vec::new();
        for _ in 0..2 {
            assert_eq!(
                reader.try_read_into(&mut out).expect("read"),
                ReadOutcome::Message
            );
        }
        assert_eq!(reader.missed(), u64::MAX);
        // Both sides find the other asleep and count a wake-up on top of a counter the peer
        // set to the maximum: it saturates, and so does the sum in `stats`.
        ring.consumer_side().1.store(1, Ordering::SeqCst);
        h.producer_waiting.waiting.store(1, Ordering::SeqCst);
        assert!(writer.take_consumer_waiting());
        assert!(reader.take_producer_waiting());
        let stats = ring.stats();
        assert_eq!(stats.messages_written, u64::MAX);
        assert_eq!(stats.messages_read, u64::MAX);
        assert_eq!(stats.wakeups, u64::MAX);
        assert_eq!(h.producer.wakeups.load(Ordering::SeqCst), u64::MAX);
    }
}
