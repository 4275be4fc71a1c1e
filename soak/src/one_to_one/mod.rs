//! The one-to-one soak (`run`): the state its processes share and the checks their
//! bookkeeping allows ([`children`] runs the producer and consumer, [`driver`] the run).
//!
//! Bookkeeping lives in a small shared-memory file that all processes map, so it survives any
//! of them being killed at any instruction:
//!
//! * The producer stores "about to send `seq`" before each send and "published up to `seq`"
//!   after it. A new producer resumes at the first message not published. If its predecessor
//!   died in the middle of a send, that message may or may not be in the ring (the ring's
//!   `messages_written` cannot tell: it is stored before the write position, so it may count a
//!   message never published): the new producer logs it as resent and sends it again.
//! * The consumer receives with `recv_batch(1, ..)`, whose callback runs before the read
//!   position is published. The callback checks the message and then advances `next` (the one
//!   store that accounts for it). A consumer killed after that store and before the library
//!   publishes its read position gets the message delivered again to its successor: the first
//!   message of a new consumer being `next - 1`, when its predecessor was killed inside that
//!   window, is counted as "redelivered". Another copy of `next - 1` is "resent" if the
//!   producers' log has that many resends of it, else a "duplicate". Any message whose
//!   sequence number jumps ahead of `next` counts the skipped ones as "lost"; any message that
//!   fails its checks counts as "corrupted".
//!
//!
//! The run passes when every message 0..N was delivered in order, with lost = 0,
//! corrupted = 0 and duplicates = 0.

mod children;
mod driver;

pub(crate) use children::{consumer_main, producer_main};
pub(crate) use driver::run;

use crate::common::SharedState;
use std::sync::atomic::{AtomicU64, Ordering};

const ANOMALIES: usize = 32;
/// Resends remembered; the consumer lags by at most a ring's worth of messages.
const RESEND_LOG: usize = 512;

#[repr(C)]
pub(super) struct Shared {
    // Producer side.
    /// Messages 0..published are in the ring (or consumed).
    published: AtomicU64,
    /// The message being sent: equal to `published` while a send is under way.
    intent_seq: AtomicU64,
    producer_starts: AtomicU64,
    /// Producers that found their predecessor died mid-send, and sent that message again.
    resumed_in_flight: AtomicU64,
    /// Those messages, in order (the last RESEND_LOG).
    resend_count: AtomicU64,
    resends: [AtomicU64; RESEND_LOG],
    producer_done: AtomicU64,
    // Consumer side.
    /// The next message expected.
    next: AtomicU64,
    lost: AtomicU64,
    corrupted: AtomicU64,
    redelivered: AtomicU64,
    /// Copies of resent messages (a resent message its predecessor had published).
    resent: AtomicU64,
    /// Copies of message `next - 1` accounted to resends.
    repeats: AtomicU64,
    /// 1 from the moment a message is accounted for until the `recv_batch` that read it
    /// returned (its read position published).
    pending: AtomicU64,
    duplicates: AtomicU64,
    end_of_stream_marks: AtomicU64,
    bytes: AtomicU64,
    consumer_starts: AtomicU64,
    anomaly_count: AtomicU64,
    /// (what, seq seen or NONE, next expected, length)
    anomalies: [[AtomicU64; 4]; ANOMALIES],
    // Driver to children: detach cleanly.
    stop_producer: AtomicU64,
    stop_consumer: AtomicU64,
}

const ANOMALY_LOST: u64 = 1;
const ANOMALY_CORRUPT: u64 = 2;
const ANOMALY_DUPLICATE: u64 = 3;

// SAFETY: repr(C), atomics only.
unsafe impl SharedState for Shared {}

impl Shared {
    pub(super) fn resends_of(&self, seq: u64) -> u64 {
        let count = self.resend_count.load(Ordering::SeqCst);
        let kept = count.min(RESEND_LOG as u64);
        (count - kept..count)
            .filter(|&i| self.resends[i as usize % RESEND_LOG].load(Ordering::SeqCst) == seq)
            .count() as u64
    }

    pub(super) fn anomaly(&self, what: u64, seen: u64, expected: u64, len: usize) {
        let i = self.anomaly_count.fetch_add(1, Ordering::SeqCst) as usize;
        if i < ANOMALIES {
            let slot = &self.anomalies[i];
            slot[0].store(what, Ordering::SeqCst);
            slot[1].store(seen, Ordering::SeqCst);
            slot[2].store(expected, Ordering::SeqCst);
            slot[3].store(len as u64, Ordering::SeqCst);
        }
    }
}
