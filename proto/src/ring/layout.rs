//! The ring's format: sizes and limits, the header and ack page (field by field, as both
//! sides map them), frame kinds and frame layout by version, seal keys and sleep tickets.

use std::sync::atomic::{AtomicU32, AtomicU64};

/// The layout new rings get.
pub const LAYOUT_VERSION: u32 = 3;
/// The oldest layout this library still reads and writes.
pub const MIN_LAYOUT_VERSION: u32 = 1;
/// Size of a ring memfd's header page; the data area follows it.
pub const HEADER_SIZE: u64 = 4096;
/// Size of a layout-3 ring's ack memfd (the consumer's page).
pub const ACK_SIZE: u64 = 4096;
pub(super) const CACHE_LINE: u64 = 64;
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
pub(super) const MAGIC: u64 = u64::from_le_bytes(*b"SHMRING1");

pub(super) const KIND_DATA: u32 = 1;
pub(super) const KIND_END_OF_STREAM: u32 = 2;
pub(super) const KIND_PAD: u32 = 3;
pub(super) const KIND_LOST: u32 = 4;

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

#[repr(C, align(64))]
pub(super) struct IdentityLine {
    pub(super) magic: AtomicU64,
    pub(super) layout: AtomicU32,
    pub(super) flags: AtomicU32,
    pub(super) capacity: AtomicU64,
    pub(super) dropped: AtomicU32,
    pub(super) evicted: AtomicU32,
    pub(super) seal_key: AtomicU64,
}

#[repr(C, align(64))]
pub(super) struct ProducerLine {
    pub(super) write_pos: AtomicU64,
    pub(super) messages_written: AtomicU64,
    pub(super) bytes_written: AtomicU64,
    pub(super) messages_lost: AtomicU64,
    /// Times this producer woke the consumer (wrote its eventfd after finding it asleep).
    /// Appended: the fields above keep their offsets.
    pub(super) wakeups: AtomicU64,
}

#[repr(C, align(64))]
pub(super) struct ConsumerLine {
    pub(super) read_pos: AtomicU64,
    pub(super) messages_read: AtomicU64,
    /// Times this consumer woke the producer. Appended: the fields above keep their offsets.
    pub(super) wakeups: AtomicU64,
    /// Nonzero when this consumer accepts padding anywhere in a lap (every consumer of this
    /// library sets it when it attaches): the producer may then start large frames over at the
    /// lap's start (`RingWriter::rewind_if_room_at_start`). Appended: zero in older rings and
    /// under older consumers, which never see a rewind. The consumer's to set; a false claim
    /// only changes where its own frames go.
    pub(super) accepts_rewinds: AtomicU64,
}

#[repr(C, align(64))]
pub(super) struct WaitLine {
    pub(super) waiting: AtomicU32,
}

#[repr(C)]
pub(super) struct Header {
    pub(super) identity: IdentityLine,
    pub(super) producer: ProducerLine,
    pub(super) consumer: ConsumerLine,
    pub(super) consumer_waiting: WaitLine,
    pub(super) producer_waiting: WaitLine,
}

const _: () = assert!(std::mem::size_of::<Header>() == 320);
const _: () = assert!(std::mem::size_of::<Header>() as u64 <= HEADER_SIZE);

/// What the broker writes into a layout-3 ring's ack page. Appended after the consumer's
/// lines: rings created before it (kept in systemd's fd store) hold zero here, which means
/// "nothing announced".
#[repr(C, align(64))]
pub(super) struct BrokerLine {
    /// How many `producer_gone` events the broker has queued for this ring's consumer (each
    /// counted before it is sent). The page is the consumer's, read-only to the producer, so
    /// no producer can hide its predecessor's death; the consumer can scribble it and only
    /// mislead itself.
    pub(super) producers_gone: AtomicU64,
}

/// A layout-3 ring's ack memfd: what the consumer writes, and the broker's line.
#[repr(C)]
pub(super) struct AckPage {
    pub(super) consumer: ConsumerLine,
    pub(super) consumer_waiting: WaitLine,
    pub(super) broker: BrokerLine,
}

const _: () = assert!(std::mem::size_of::<AckPage>() as u64 <= ACK_SIZE);
// The existing fields keep their offsets (0 and 64): rings from the fd store stay readable.
const _: () = assert!(std::mem::offset_of!(AckPage, consumer_waiting) == 64);
const _: () = assert!(std::mem::offset_of!(AckPage, broker) == 128);

/// Largest payload a ring of `capacity` bytes carries in one message (in the current layout;
/// a layout-1 ring takes 8 bytes more).
#[inline]
pub fn max_message_len(capacity: u64) -> u64 {
    FrameFormat::of(LAYOUT_VERSION, 0).max_message_len(capacity)
}

/// How frames are laid out in one ring, by its layout version.
#[derive(Clone, Copy, Debug)]
pub(super) struct FrameFormat {
    /// Header size; frames start and end at multiples of it.
    pub(super) unit: u64,
    /// Layout 2: the ring's seal key (see the ring's module docs).
    pub(super) seal_key: Option<u64>,
    /// The bits of a frame header's second word that are its kind (layout 2: the low half;
    /// the high half is the span).
    pub(super) kind_mask: u32,
}

impl FrameFormat {
    pub(super) fn of(layout: u32, seal_key: u64) -> FrameFormat {
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

    /// Size of a frame carrying `payload` bytes. `unit` is 8 or 16 (see `of`), a power of two,
    /// so rounding up is a mask: this runs for every frame, where a division costs tens of
    /// cycles. Saturating: a huge `payload` (a peer's `len`) gives a huge size, which every
    /// caller then finds larger than the ring.
    #[inline]
    pub(super) fn frame_len(self, payload: u64) -> u64 {
        let mask = self.unit - 1;
        self.unit
            .saturating_add(payload.saturating_add(mask) & !mask)
    }

    /// [`frame_len`](Self::frame_len) of a header's `len` (or any length below 2^32), which
    /// needs no saturation: it stays far below 2^64 with a unit of 8 or 16.
    #[inline(always)]
    pub(super) fn frame_len_u32(self, payload: u32) -> u64 {
        let mask = self.unit - 1;
        self.unit + ((u64::from(payload) + mask) & !mask)
    }

    #[inline]
    pub(super) fn max_message_len(self, capacity: u64) -> u64 {
        (capacity - self.unit).min(u64::from(u32::MAX) - self.unit)
    }

    /// The seal of the frame at `pos`, in a layout that has seals.
    #[inline]
    pub(super) fn seal(self, pos: u64) -> Option<u64> {
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
pub(super) fn first_ticket() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    // Each RandomState has new random keys; the low half of the hash is as random as the rest.
    RandomState::new().hash_one(std::process::id()) as u32
}

/// A random seal key. Even, so that no seal ((pos + 1) ^ key, pos a multiple of 16) is 0,
/// what a fresh ring holds everywhere.
pub(super) fn new_seal_key() -> u64 {
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
