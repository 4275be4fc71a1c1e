//! Fan-out soak (`run --fanout`): one channel with `max_producers = P` and `max_consumers =
//! D + A` under policy `block`, P producer processes, D durable consumers (names `d0`, `d1`,
//! ...) and up to A anonymous consumers, all attaching, detaching and getting SIGKILLed at
//! random. See `fuzz/SOAK.md`.
//!
//! Each producer slot (id 0 .. P-1) carries one numbered stream (`crate::message`): whichever
//! process holds the slot sends its messages 0 .. M-1 in order, resuming where the slot's last
//! holder stopped.
//!
//! What is checked, per consumer and per stream, in the `recv_batch(1, ..)` callback (before
//! the library publishes the read position, so its stores survive a kill exactly as the
//! message does):
//!
//! * every message intact (length, CRC, body), and from the producer `last_producer()` names;
//! * **durable consumers** (state kept across their processes): every stream from message 0,
//!   in order, no gap, until all M are in. A message may come twice in a row only (a) once
//!   after a SIGKILL, as the first message of its stream in the new process, if the killed
//!   process was between accounting for a message of that stream and the return of the
//!   `recv_batch` that read it (README: at-least-once for the one message being read; each
//!   producer's ring has its own read position, so that message stays unread on its ring
//!   until a later process reads that ring, however many processes come and go before), or (b) once per time a producer died in the middle of sending it
//!   and its successor sent it again (the soak's producers resend a message whose send was
//!   cut short; which consumers it had reached by then is unknown, so the copy counts as
//!   "resent", allowed only for messages in the slot's resend log);
//! * **anonymous consumers** (state per process): each stream a gap-free, in-order suffix. Its
//!   first message may be no earlier than what was published before the attach, and no later
//!   than the first message whose send started after the attach returned (README: every
//!   consumer receives every message written after it attached); repeats as in (b). A consumer
//!   still attached at the end must have received every stream to its end.
//!
//! Anything else counts as lost (messages skipped), corrupted, misattributed (not from the
//! producer `last_producer()` named) or repeated, and fails the run.
//!
//! This file holds the state every process of a run shares and the report of its anomalies;
//! [`children`] runs the producers and consumers, [`driver`] the run.

mod children;
mod driver;

pub use children::{consumer_main, producer_main};
pub use driver::run;

use crate::common::{fail, SharedState, NONE};
use shmem_broker_testkit::stamp::Format;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

pub const MAX_STREAMS: usize = 8;
pub const MAX_DURABLE: usize = 8;
pub const MAX_ANONYMOUS: usize = 8;
/// Resends remembered per stream; a consumer lags by at most a ring's worth of messages, and
/// a resend needs a producer SIGKILLed mid-send.
const RESEND_LOG: usize = 512;
const ANOMALIES: usize = 64;

const DURABLE: usize = 0;
const ANONYMOUS: usize = 1;
const KIND_NAMES: [&str; 2] = ["durable", "anonymous"];

/// Exit status of a producer process that found only finished streams' slots free.
const NOTHING_TO_SEND: i32 = 3;

#[repr(C)]
struct Stream {
    /// Messages 0..published went out to every consumer the producer knew.
    published: AtomicU64,
    /// The message being sent: equal to `published` while a send is under way.
    intent: AtomicU64,
    /// The slot's producer sent all M messages and closed.
    done: AtomicU64,
    /// Messages a new producer sent again because its predecessor died sending them.
    resend_count: AtomicU64,
    resends: [AtomicU64; RESEND_LOG],
}

/// One consumer's view: a durable name's across all its processes, or one anonymous process's.
#[repr(C)]
struct Reader {
    /// Next message expected per stream; NONE before the first (anonymous consumers).
    next: [AtomicU64; MAX_STREAMS],
    /// Copies of message `next - 1` accounted to resends.
    repeats: [AtomicU64; MAX_STREAMS],
    /// Anonymous: the first message of a stream is at least `low` and at most `high`.
    low: [AtomicU64; MAX_STREAMS],
    high: [AtomicU64; MAX_STREAMS],
    /// Per stream: 1 from the moment a message of the stream is accounted for until the
    /// `recv_batch` that read it returned (its read position published).
    pending: [AtomicU64; MAX_STREAMS],
    /// Anonymous: attached and bounds set.
    attached: AtomicU64,
    /// Durable: every stream received to its end.
    done: AtomicU64,
    /// Driver to process: detach cleanly.
    stop: AtomicU64,
}

#[repr(C)]
struct Tally {
    starts: AtomicU64,
    messages: AtomicU64,
    bytes: AtomicU64,
    lost: AtomicU64,
    corrupted: AtomicU64,
    misattributed: AtomicU64,
    repeated: AtomicU64,
    redelivered: AtomicU64,
    resent: AtomicU64,
    end_of_stream: AtomicU64,
}

#[repr(C)]
struct State {
    streams: [Stream; MAX_STREAMS],
    /// Driver to producer process `i`: detach cleanly.
    producer_stop: [AtomicU64; MAX_STREAMS],
    producer_starts: AtomicU64,
    /// Producers that resumed a send their slot's predecessor died in.
    resumed_in_flight: AtomicU64,
    /// Producer processes that found only finished slots free.
    producers_idle: AtomicU64,
    readers: [[Reader; MAX_DURABLE]; 2],
    tally: [Tally; 2],
    anomaly_count: AtomicU64,
    /// (what, kind << 8 | reader index, stream, seq seen or NONE, expected)
    anomalies: [[AtomicU64; 5]; ANOMALIES],
}

const _: () = assert!(MAX_ANONYMOUS <= MAX_DURABLE);

// SAFETY: repr(C), atomics only.
unsafe impl SharedState for State {}

const ANOMALY_LOST: u64 = 1;
const ANOMALY_CORRUPT: u64 = 2;
const ANOMALY_REPEATED: u64 = 3;
const ANOMALY_MISATTRIBUTED: u64 = 4;
const ANOMALY_EARLY: u64 = 5;
const ANOMALY_SHORT_AT_END: u64 = 6;

impl State {
    fn anomaly(&self, what: u64, who: u64, stream: u64, seen: u64, expected: u64) {
        let i = self.anomaly_count.fetch_add(1, Ordering::SeqCst) as usize;
        if let Some(slot) = self.anomalies.get(i) {
            for (cell, value) in slot.iter().zip([what, who, stream, seen, expected]) {
                cell.store(value, Ordering::SeqCst);
            }
        }
    }

    fn resends_of(&self, stream: usize, seq: u64) -> u64 {
        let log = &self.streams[stream];
        let count = log.resend_count.load(Ordering::SeqCst);
        let kept = count.min(RESEND_LOG as u64);
        (count - kept..count)
            .filter(|&i| log.resends[i as usize % RESEND_LOG].load(Ordering::SeqCst) == seq)
            .count() as u64
    }
}

/// What every child of a run is told on its command line.
struct Setup {
    socket: PathBuf,
    state: PathBuf,
    seed: u64,
    /// Messages per stream.
    per_stream: u64,
    streams: u64,
}

impl Setup {
    fn args(&self) -> Vec<String> {
        vec![
            self.socket.display().to_string(),
            self.state.display().to_string(),
            self.seed.to_string(),
            self.per_stream.to_string(),
            self.streams.to_string(),
        ]
    }

    fn parse(args: &[String]) -> Setup {
        let number = |i: usize| -> u64 {
            args.get(i)
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| fail(&format!("child argument {i}: {args:?}")))
        };
        let setup = Setup {
            socket: PathBuf::from(&args[0]),
            state: PathBuf::from(&args[1]),
            seed: number(2),
            per_stream: number(3),
            streams: number(4),
        };
        if !(1..=MAX_STREAMS as u64).contains(&setup.streams) {
            fail("bad stream count");
        }
        setup
    }

    fn format(&self, capacity: u64) -> Format {
        Format::new(self.seed, self.streams, capacity)
    }
}

fn durable_name(index: usize) -> String {
    format!("d{index}")
}

fn print_anomalies(state: &State) {
    let count = state.anomaly_count.load(Ordering::SeqCst) as usize;
    for slot in state.anomalies.iter().take(count.min(ANOMALIES)) {
        let value = |i: usize| slot[i].load(Ordering::SeqCst);
        let show = |v: u64| {
            if v == NONE {
                "?".to_string()
            } else {
                v.to_string()
            }
        };
        let what = match value(0) {
            ANOMALY_LOST => "lost before (seen, expected)",
            ANOMALY_CORRUPT => "corrupted (length)",
            ANOMALY_REPEATED => "repeated (seen, expected)",
            ANOMALY_MISATTRIBUTED => "misattributed (last_producer)",
            ANOMALY_EARLY => "older than the attach (seen, lowest possible)",
            ANOMALY_SHORT_AT_END => "short of the end (missing)",
            _ => "?",
        };
        let who = value(1);
        println!(
            "  anomaly: {} consumer {} stream {}: {what}: {} {}",
            KIND_NAMES.get((who >> 8) as usize).unwrap_or(&"?"),
            who & 0xff,
            show(value(2)),
            show(value(3)),
            show(value(4)),
        );
    }
}

/// The options of this mode, for `main`'s usage text.
pub fn usage() -> &'static str {
    "[--fanout [--producers N] [--durable N] [--anonymous N]]"
}
