//! The machine's limits: single-thread memcpy bandwidth and the round trip of one cache line
//! between two cores.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};

use shmem_broker_client::copy;

use crate::results::{AliasedCopy, CoreToCore, Rate};
use crate::stats::{median, Percentiles};
use crate::sys::{self, now_ns, CorePair};

/// memcpy of `size` bytes from one buffer to another, repeated for `budget_ms`, on core `cpu`.
/// Source and destination are reused, so up to the cache size this is a cache-to-cache copy:
/// the same situation as a ring that fits in cache. Median of three runs. Both buffers start on
/// a page: two heap buffers allocated one after the other put the destination 16 bytes past
/// the source modulo 4096, where glibc 2.36's `rep movsb` copy (2 KiB and up) ran at 1.6-2 GB/s
/// instead of 40+ on the AMD EPYC VM, which made the limit a fifth of what the machine does.
pub fn memcpy(size: usize, budget_ms: u64, cpu: Option<usize>) -> Result<Rate> {
    copy_rate(size, 0, budget_ms, cpu, glibc_memcpy)
}

/// The plain copy: `copy_from_slice`, which is glibc's `memcpy`.
fn glibc_memcpy(dst: &mut [u8], src: &[u8]) {
    dst.copy_from_slice(src)
}

/// Destination minus source (modulo the page) of [`aliased_copy`]: inside the band where
/// `rep movsb` crawls on AMD Zen (1-63 bytes), the distance between a 64 KiB ring payload and
/// a receive buffer that landed 16 bytes further into its page.
const ALIASED_DISTANCE: usize = 16;

/// A `size`-byte copy with the destination [`ALIASED_DISTANCE`] bytes past the source modulo
/// the page, through glibc's `memcpy` and through `copy::copy_slice` (what every copy in or
/// out of our rings takes): shows on each CPU whether the slow case exists and that the rings
/// step around it.
pub fn aliased_copy(size: usize, budget_ms: u64, cpu: Option<usize>) -> Result<AliasedCopy> {
    let memcpy = copy_rate(size, ALIASED_DISTANCE, budget_ms / 2, cpu, glibc_memcpy)?;
    let ours = copy_rate(size, ALIASED_DISTANCE, budget_ms / 2, cpu, copy::copy_slice)?;
    Ok(AliasedCopy {
        size,
        distance: ALIASED_DISTANCE,
        memcpy,
        ours,
    })
}

/// `copy` of `size` bytes between two buffers, the source on a page boundary and the
/// destination `distance` bytes into a page, repeated for `budget_ms`; median of three runs.
/// Generic over `copy`, so each copy is inlined into its loop (a call through a pointer would
/// add its cost to every 64 B copy of the limit).
fn copy_rate(
    size: usize,
    distance: usize,
    budget_ms: u64,
    cpu: Option<usize>,
    copy: impl Fn(&mut [u8], &[u8]) + Sync,
) -> Result<Rate> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if let Some(cpu) = cpu {
                    sys::pin_to(cpu)?;
                }
                let mut src_buf = vec![0u8; size + PAGE];
                let mut dst_buf = vec![0u8; size + 2 * PAGE];
                let src = page_aligned(&mut src_buf, size);
                for (i, byte) in src.iter_mut().enumerate() {
                    *byte = (i * 13 + 1) as u8;
                }
                let src: &[u8] = src;
                let dst = &mut page_aligned(&mut dst_buf, size + PAGE)[distance..distance + size];
                let every = (4 * 1024 * 1024 / size).max(1) as u64;
                let mut rates = Vec::new();
                for _ in 0..3 {
                    // One untimed copy so that both buffers are faulted in and warm.
                    copy(dst, src);
                    let start = now_ns();
                    let deadline = start + budget_ms * 1_000_000 / 3;
                    let mut copies = 0u64;
                    loop {
                        copy(black_box(&mut *dst), black_box(src));
                        copies += 1;
                        if copies.is_multiple_of(every) && now_ns() >= deadline {
                            break;
                        }
                    }
                    let secs = (now_ns() - start) as f64 / 1e9;
                    rates.push(Rate {
                        msgs_per_s: copies as f64 / secs,
                        gb_per_s: (copies * size as u64) as f64 / secs / 1e9,
                    });
                }
                let mid =
                    median(&rates.iter().map(|r| r.gb_per_s).collect::<Vec<_>>()).unwrap_or(0.0);
                Ok(rates
                    .into_iter()
                    .find(|r| r.gb_per_s == mid)
                    .unwrap_or_default())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("copy thread panicked"))?
    })
}

const PAGE: usize = 4096;

/// The `size` bytes of `buf` (which has `size + PAGE`) that start on a page boundary.
fn page_aligned(buf: &mut [u8], size: usize) -> &mut [u8] {
    let skip = buf.as_ptr().align_offset(PAGE).min(PAGE);
    &mut buf[skip..skip + size]
}

#[repr(align(128))]
struct Line(AtomicU64);

/// Round trips per timed sample: reading the clock costs about as much as a round trip.
const TRIPS_PER_SAMPLE: u64 = 100;
/// Samples a core-to-core measurement takes at the least.
const MIN_SAMPLES: usize = 5;

/// Atomic ping-pong of one cache line between threads pinned to the two cores: thread a writes
/// an odd number and waits for the next even one, thread b answers. Samples are averages over
/// 100 round trips.
pub fn core_to_core(cores: Option<CorePair>, budget_ms: u64) -> Result<CoreToCore> {
    let line = Arc::new(Line(AtomicU64::new(0)));
    let done = Arc::new(AtomicU64::new(0));
    let responder = {
        let line = Arc::clone(&line);
        let done = Arc::clone(&done);
        std::thread::Builder::new()
            .name("c2c-b".into())
            .spawn(move || -> Result<()> {
                if let Some(c) = cores {
                    sys::pin_to(c.b)?;
                }
                let mut expect = 1u64;
                while done.load(Ordering::Relaxed) == 0 {
                    if line.0.load(Ordering::Acquire) == expect {
                        line.0.store(expect + 1, Ordering::Release);
                        expect += 2;
                    } else {
                        std::hint::spin_loop();
                    }
                }
                Ok(())
            })
            .context("starting the responder thread")?
    };
    let initiator = {
        let line = Arc::clone(&line);
        let done = Arc::clone(&done);
        std::thread::Builder::new()
            .name("c2c-a".into())
            .spawn(move || -> Result<Vec<u64>> {
                let pinned = match cores {
                    Some(c) => sys::pin_to(c.a),
                    None => Ok(()),
                };
                if let Err(err) = pinned {
                    done.store(1, Ordering::Relaxed);
                    return Err(err);
                }
                let start = now_ns();
                let warm = start + budget_ms * 1_000_000 / 10;
                let deadline = start + budget_ms * 1_000_000;
                let mut value = 1u64;
                let mut samples = Vec::new();
                loop {
                    let t0 = now_ns();
                    for _ in 0..TRIPS_PER_SAMPLE {
                        line.0.store(value, Ordering::Release);
                        while line.0.load(Ordering::Acquire) != value + 1 {
                            std::hint::spin_loop();
                        }
                        value += 2;
                    }
                    let t1 = now_ns();
                    if t0 >= warm {
                        samples.push((t1 - t0) / TRIPS_PER_SAMPLE);
                    }
                    // However short the budget (and however often this thread is descheduled
                    // on a busy machine), end with a few samples.
                    if t1 >= deadline && samples.len() >= MIN_SAMPLES {
                        break;
                    }
                }
                done.store(1, Ordering::Relaxed);
                Ok(samples)
            })
            .context("starting the initiator thread")?
    };
    let samples = initiator
        .join()
        .map_err(|_| anyhow::anyhow!("initiator thread panicked"))??;
    responder
        .join()
        .map_err(|_| anyhow::anyhow!("responder thread panicked"))??;
    let round_trip = Percentiles::of(&samples, 1.0).context("no core-to-core samples")?;
    Ok(CoreToCore {
        round_trip,
        min_ns: samples.iter().copied().min().unwrap_or_default() as f64,
        cores: cores.map(|c| (c.a, c.b)),
    })
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the thread CPU clock always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// How much CPU two busy threads pinned to the two cores actually get (thread CPU time /
/// wall time, each): on an oversubscribed VM this is well below 1, and every two-process
/// measurement runs in that situation.
pub fn cpu_share(cores: Option<CorePair>, budget_ms: u64) -> Result<(f64, f64)> {
    let spin = move |cpu: Option<usize>| -> Result<f64> {
        if let Some(cpu) = cpu {
            sys::pin_to(cpu)?;
        }
        let (wall0, cpu0) = (now_ns(), thread_cpu_ns());
        let deadline = wall0 + budget_ms * 1_000_000;
        let mut x = 0u64;
        while now_ns() < deadline {
            for _ in 0..1000 {
                x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
            }
        }
        Ok((thread_cpu_ns() - cpu0) as f64 / (now_ns() - wall0) as f64)
    };
    std::thread::scope(|scope| {
        let a = scope.spawn(|| spin(cores.map(|c| c.a)));
        let b = scope.spawn(|| spin(cores.map(|c| c.b)));
        let a = a
            .join()
            .map_err(|_| anyhow::anyhow!("busy thread panicked"))??;
        let b = b
            .join()
            .map_err(|_| anyhow::anyhow!("busy thread panicked"))??;
        Ok((a, b))
    })
}
