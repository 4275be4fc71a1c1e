//! What each side of a two-process measurement does, written once for every transport.
//!
//! Every message carries a sequence number (or a timestamp) in its first 8 bytes, and again in
//! its last 8 (messages of 16 bytes and more), and the receiving side checks its length and
//! both copies: a benchmark that lost, reordered or truncated messages fails rather than
//! reporting a number.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::sys::now_ns;
use crate::transport::{Rx, Stamps, Tx};

/// What a worker reports back. Times are CLOCK_MONOTONIC nanoseconds, comparable across the
/// two processes.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Outcome {
    pub start_ns: u64,
    pub end_ns: u64,
    pub messages: u64,
    pub bytes: u64,
    /// Round trips (ping) or one-way delays (stamped receive), in nanoseconds.
    pub samples_ns: Vec<u64>,
}

/// Keep at most this many latency samples (bounds the report's memory and the JSON line).
const MAX_SAMPLES: usize = 400_000;
/// Samples taken in the first part of a latency run are dropped (page faults, cold caches,
/// frequency ramp-up), and always the first few.
const WARMUP_FRACTION: u64 = 10;
const WARMUP_MESSAGES: u64 = 3;
/// However short the budget, a latency run takes at least this many samples.
const MIN_SAMPLES: usize = 5;

fn message(size: usize) -> Vec<u8> {
    // Not zeros: a pattern the copies really have to move.
    (0..size).map(|i| (i * 31 + 7) as u8).collect()
}

// The stamps (sequence number or send time at both ends) are testkit's end stamps.
pub use shmem_broker_testkit::stamp::stamp_ends as stamp;
use shmem_broker_testkit::stamp::{check_stamps, read_stamp};

fn check(buf: &[u8], size: usize, expected: u64) -> Result<()> {
    shmem_broker_testkit::stamp::check_ends(buf, size, expected).map_err(anyhow::Error::msg)
}

/// How often the producer looks at the clock: about every 256 KiB sent.
fn clock_every(size: usize) -> u64 {
    (256 * 1024 / size).max(1) as u64
}

/// Sends `size`-byte messages, one call each, for `budget_ns`, then ends the stream.
pub fn produce(tx: &mut impl Tx, size: usize, budget_ns: u64) -> Result<Outcome> {
    let mut msg = message(size);
    let every = clock_every(size);
    let start = now_ns();
    let deadline = start + budget_ns;
    let mut seq = 0u64;
    loop {
        stamp(&mut msg, seq);
        tx.send(&msg)?;
        seq += 1;
        if seq.is_multiple_of(every) && now_ns() >= deadline {
            break;
        }
    }
    tx.finish()?;
    Ok(Outcome {
        start_ns: start,
        end_ns: now_ns(),
        messages: seq,
        bytes: seq * size as u64,
        samples_ns: Vec::new(),
    })
}

/// Like [`produce`], `batch` messages per `send_batch` call.
pub fn produce_batched(
    tx: &mut impl Tx,
    size: usize,
    batch: usize,
    budget_ns: u64,
) -> Result<Outcome> {
    let mut block: Vec<Vec<u8>> = (0..batch).map(|_| message(size)).collect();
    let every = (clock_every(size) / batch as u64).max(1);
    let start = now_ns();
    let deadline = start + budget_ns;
    let mut seq = 0u64;
    let mut calls = 0u64;
    loop {
        for msg in block.iter_mut() {
            stamp(msg, seq);
            seq += 1;
        }
        let refs: Vec<&[u8]> = block.iter().map(Vec::as_slice).collect();
        tx.send_batch(&refs)?;
        calls += 1;
        if calls.is_multiple_of(every) && now_ns() >= deadline {
            break;
        }
    }
    tx.finish()?;
    Ok(Outcome {
        start_ns: start,
        end_ns: now_ns(),
        messages: seq,
        bytes: seq * size as u64,
        samples_ns: Vec::new(),
    })
}

/// Receives and checks messages until end of stream; `batch` > 0 uses `recv_batch`.
pub fn consume(rx: &mut impl Rx, size: usize, batch: usize) -> Result<Outcome> {
    let mut expected = 0u64;
    let mut start = None;
    if batch == 0 {
        let mut buf = Vec::with_capacity(size);
        while rx.recv(&mut buf)? {
            start.get_or_insert_with(now_ns);
            check(&buf, size, expected)?;
            expected += 1;
        }
    } else {
        let mut failure = None;
        let mut each = |msg: &[u8]| {
            if failure.is_none() {
                failure = check(msg, size, expected).err();
            }
            expected += 1;
        };
        while rx.recv_batch(batch, &mut each)?.is_some() {
            start.get_or_insert_with(now_ns);
        }
        if let Some(err) = failure {
            return Err(err);
        }
    }
    Ok(Outcome {
        start_ns: start.unwrap_or_default(),
        end_ns: now_ns(),
        messages: expected,
        bytes: expected * size as u64,
        samples_ns: Vec::new(),
    })
}

/// Like [`produce`], with loans: each message is written in place, only its stamps (the rest
/// of the loan holds whatever was there), so no byte of it is copied.
pub fn produce_loaned(tx: &mut impl Tx, size: usize, budget_ns: u64) -> Result<Outcome> {
    let every = clock_every(size);
    let start = now_ns();
    let deadline = start + budget_ns;
    let mut seq = 0u64;
    loop {
        tx.send_stamps_in_place(size, seq)?;
        seq += 1;
        if seq.is_multiple_of(every) && now_ns() >= deadline {
            break;
        }
    }
    tx.finish()?;
    Ok(Outcome {
        start_ns: start,
        end_ns: now_ns(),
        messages: seq,
        bytes: seq * size as u64,
        samples_ns: Vec::new(),
    })
}

/// Like [`consume`], with borrowed receives that read only the stamps: the length and both
/// sequence numbers are checked, and no other byte is copied.
pub fn consume_ref(rx: &mut impl Rx, size: usize) -> Result<Outcome> {
    let mut expected = 0u64;
    let mut start = None;
    while let Some(Stamps { len, head, tail }) = rx.recv_stamps()? {
        start.get_or_insert_with(now_ns);
        let (head, tail) = (u64::from_le_bytes(head), u64::from_le_bytes(tail));
        check_stamps(len, head, tail, size, expected).map_err(anyhow::Error::msg)?;
        expected += 1;
    }
    Ok(Outcome {
        start_ns: start.unwrap_or_default(),
        end_ns: now_ns(),
        messages: expected,
        bytes: expected * size as u64,
        samples_ns: Vec::new(),
    })
}

/// Ping-pong initiator: sends a message, waits for the echo, records the round trip. One clock
/// read per round trip: a sample runs from the end of one echo to the end of the next, so it
/// also holds the checking and stamping in between (a few ns), but not a second clock read
/// (about 11 ns here, as much as the checking many times over).
pub fn ping(tx: &mut impl Tx, rx: &mut impl Rx, size: usize, budget_ns: u64) -> Result<Outcome> {
    let mut msg = message(size);
    let mut back = Vec::with_capacity(size);
    let start = now_ns();
    let warm = start + budget_ns / WARMUP_FRACTION;
    let deadline = start + budget_ns;
    let mut samples = Vec::new();
    let mut seq = 0u64;
    let mut t0 = now_ns();
    loop {
        stamp(&mut msg, seq);
        tx.send(&msg)?;
        if !rx.recv(&mut back)? {
            bail!("the echoing side ended the stream");
        }
        let t1 = now_ns();
        check(&back, size, seq)?;
        seq += 1;
        if t0 >= warm && seq > WARMUP_MESSAGES {
            samples.push(t1 - t0);
        }
        t0 = t1;
        if (t1 >= deadline && samples.len() >= MIN_SAMPLES) || samples.len() >= MAX_SAMPLES {
            break;
        }
    }
    tx.finish()?;
    Ok(Outcome {
        start_ns: start,
        end_ns: now_ns(),
        messages: seq,
        bytes: seq * size as u64,
        samples_ns: samples,
    })
}

/// Ping-pong responder: echoes every message until end of stream.
pub fn pong(tx: &mut impl Tx, rx: &mut impl Rx, size: usize) -> Result<Outcome> {
    let mut buf = Vec::with_capacity(size);
    let mut messages = 0u64;
    while rx.recv(&mut buf)? {
        tx.send(&buf)?;
        messages += 1;
    }
    tx.finish()?;
    Ok(Outcome {
        messages,
        bytes: messages * size as u64,
        ..Outcome::default()
    })
}

/// Paced sender: one message every `gap_ns`, stamped with the send time, so that the receiver
/// has gone to sleep by the time each message arrives.
pub fn stamp_send(tx: &mut impl Tx, size: usize, gap_ns: u64, budget_ns: u64) -> Result<Outcome> {
    let mut msg = message(size);
    let start = now_ns();
    let deadline = start + budget_ns;
    let mut messages = 0u64;
    loop {
        let t = now_ns();
        let enough = messages >= WARMUP_MESSAGES + MIN_SAMPLES as u64;
        if (t >= deadline && enough) || messages as usize >= MAX_SAMPLES {
            break;
        }
        stamp(&mut msg, t);
        tx.send(&msg)?;
        messages += 1;
        let next = t + gap_ns;
        let now = now_ns();
        if next > now {
            std::thread::sleep(std::time::Duration::from_nanos(next - now));
        }
    }
    tx.finish()?;
    Ok(Outcome {
        start_ns: start,
        end_ns: now_ns(),
        messages,
        bytes: messages * size as u64,
        samples_ns: Vec::new(),
    })
}

/// Paced receiver: records receive time minus the sender's stamp (a one-way delay).
pub fn stamp_recv(rx: &mut impl Rx, size: usize) -> Result<Outcome> {
    let mut buf = Vec::with_capacity(size);
    let mut samples = Vec::new();
    let mut messages = 0u64;
    while rx.recv(&mut buf)? {
        let t = now_ns();
        if buf.len() != size {
            bail!("got {} bytes, expected {size}", buf.len());
        }
        let sent = read_stamp(&buf);
        messages += 1;
        // The first few wake-ups pay for page faults and cold caches.
        if messages > WARMUP_MESSAGES {
            samples.push(t.saturating_sub(sent));
        }
    }
    Ok(Outcome {
        end_ns: now_ns(),
        messages,
        bytes: messages * size as u64,
        samples_ns: samples,
        ..Outcome::default()
    })
}
