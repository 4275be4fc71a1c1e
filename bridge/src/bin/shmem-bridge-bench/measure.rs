//! What every path measures with: the time stamp and sequence number each message carries,
//! the tally of one run's arrivals, pacing, and the plan of sizes and counts.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::HEADER;

pub(crate) fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

pub(crate) fn stamp(message: &mut [u8], seq: u64) {
    message[8..16].copy_from_slice(&seq.to_le_bytes());
    message[..8].copy_from_slice(&now_ns().to_le_bytes());
}

pub(crate) fn word(bytes: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(w)
}

/// One run's arrivals.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) count: u64,
    pub(crate) bytes: u64,
    pub(crate) first_send: Option<u64>,
    pub(crate) last_recv: u64,
    pub(crate) latencies: Vec<u64>,
}

impl Tally {
    pub(crate) fn add(&mut self, message: &[u8]) {
        let now = now_ns();
        if message.len() < HEADER {
            return;
        }
        let sent = word(message, 0);
        self.first_send.get_or_insert(sent);
        self.last_recv = now;
        self.latencies.push(now.saturating_sub(sent));
        self.count += 1;
        self.bytes += message.len() as u64;
    }

    pub(crate) fn outcome(mut self) -> Outcome {
        self.latencies.sort_unstable();
        let pick = |q: f64| {
            let n = self.latencies.len();
            if n == 0 {
                return 0.0;
            }
            let i = ((n as f64 - 1.0) * q).round() as usize;
            self.latencies[i.min(n - 1)] as f64 / 1000.0
        };
        let secs = self.last_recv.saturating_sub(self.first_send.unwrap_or(0)) as f64 / 1e9;
        Outcome {
            mb_per_s: if secs > 0.0 {
                self.bytes as f64 / secs / 1e6
            } else {
                0.0
            },
            p50_us: pick(0.50),
            p99_us: pick(0.99),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Outcome {
    pub(crate) mb_per_s: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
}

/// Sends `count` messages of `size` bytes through `send`, one every `pace` (none: at once).
pub(crate) fn send_paced(
    size: usize,
    count: u64,
    pace: Option<Duration>,
    mut send: impl FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let mut message = vec![0xA5u8; size];
    let start = Instant::now();
    for seq in 0..count {
        if let Some(pace) = pace {
            let due = start + pace.saturating_mul(seq as u32);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        stamp(&mut message, seq);
        send(&message)?;
    }
    Ok(())
}

pub(crate) fn pace_for(size: usize) -> Duration {
    if size >= 512 << 10 {
        Duration::from_millis(5)
    } else {
        Duration::from_millis(1)
    }
}

/// How much one measurement moves.
pub(crate) struct Plan {
    pub(crate) quick: bool,
    pub(crate) reps: usize,
}

impl Plan {
    pub(crate) fn throughput_count(&self, size: usize) -> u64 {
        let (bytes, most) = if self.quick {
            (1u64 << 20, 500u64)
        } else {
            (512u64 << 20, 400_000u64)
        };
        (bytes / size as u64).clamp(20, most)
    }

    pub(crate) fn latency_count(&self, size: usize) -> u64 {
        match (self.quick, size >= 512 << 10) {
            (true, _) => 20,
            (false, false) => 2000,
            (false, true) => 400,
        }
    }
}
