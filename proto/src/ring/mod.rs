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
//! 0     read_pos u64, messages_read u64, wakeups u64,
//!       accepts_rewinds u64    (nonzero: the consumer accepts padding anywhere; see rewinds)
//! 64    consumer_waiting u32   (consumer is asleep on the data_ready eventfd: a ticket)
//! 128   producers_gone u64     (written by the broker: producer_gone events it announced
//!                               to this ring's consumer, each counted before it is sent;
//!                               zero in rings made before it existed)
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
//! the end of the data area the producer first publishes a PAD frame covering the rest (and a
//! large frame may start the next lap early, see `RingWriter::rewind_if_room_at_start`). Kinds:
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
//!
//! # Where each part lives
//! `layout.rs` (sizes, header and ack page, frame format), `files.rs` (the memfds, their
//! checks and mapping: [`SharedRing`]), `writer.rs` ([`RingWriter`]), `reader.rs`
//! ([`RingReader`]), `batches.rs` (both sides' batches and their fast paths), `single.rs` (single messages'
//! fast paths), `zero_copy.rs`
//! (payloads read in place), `forwarding.rs` (reading ahead, all-or-nothing runs),
//! `handshake.rs` (sleep and wake), `mapping.rs` (mmap); tests in `tests.rs`,
//! `hostile_positions.rs`, `rewind_tests.rs`, `batch_tests.rs` and `single_tests.rs`.

mod batches;
mod files;
mod forwarding;
mod handshake;
mod layout;
mod mapping;
mod reader;
mod single;
mod writer;
mod zero_copy;

pub use files::{check_sealed_memfd, RingFds, RingFiles, SharedRing};
pub use forwarding::{AheadItem, BadRelease, MessageBytes};
pub use layout::{
    max_message_len, Eviction, RingStats, ACK_SIZE, CAPACITY_GRANULE, HEADER_SIZE, LAYOUT_VERSION,
    MAX_CAPACITY, MAX_POSITION, MIN_CAPACITY, MIN_LAYOUT_VERSION,
};
pub use reader::{BatchOutcome, ReadItem, ReadOutcome, RingReader, SliceSink};
pub use writer::RingWriter;
pub use zero_copy::{Payload, Peeked};

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

#[cfg(test)]
mod tests;

#[cfg(test)]
mod hostile_positions;

#[cfg(test)]
mod rewind_tests;

#[cfg(test)]
mod batch_tests;

#[cfg(test)]
mod single_tests;
