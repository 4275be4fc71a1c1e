//! The 1:1 data section: throughput and latency of our channels and of every peer, size by
//! size, the transports interleaved so that drift on a noisy machine hits them all alike.

use anyhow::Result;

use crate::broker::Broker;
use crate::iox::Iceoryx;
use crate::limits;
use crate::ours::Ours;
use crate::peers::{Peers, Stream};
use crate::plan::Plan;
use crate::report;
use crate::results::{
    format_size, Block, Latency, LatencyMode, Rate, Results, Series, Throughput, Transport,
};
use crate::ring::SharedRing;
use crate::stats::{self, Percentiles, Samples};
use crate::sys::CorePair;
use crate::transport::Wait;

/// Everything measured side by side; a member is `None` when its section is not in the run.
pub struct Contenders<'a> {
    pub ours: Option<Ours<'a>>,
    pub peers: Option<Peers<'a>>,
    pub iox: Option<Iceoryx<'a>>,
    pub ring: Option<SharedRing<'a>>,
}

impl Contenders<'_> {
    /// The throughput series measured at `size`, in the order they take turns.
    fn series(&self, size: usize) -> Vec<Series> {
        let mut series = Vec::new();
        if self.ours.is_some() {
            // recv_ref at every size: it is what iceoryx2's zero-copy receive compares with.
            series.extend([Series::OursBlocking, Series::OursSpin, Series::OursRecvRef]);
            if size <= Plan::BATCHED_MAX_SIZE {
                series.push(Series::OursBatched);
            }
            if Plan::ZERO_COPY_SIZES.contains(&size) {
                series.push(Series::OursLoan);
            }
        }
        if self.iox.is_some() {
            series.extend([Series::IceoryxZeroCopy, Series::IceoryxCopy]);
        }
        if self.ring.is_some() {
            series.extend([Series::Ring, Series::RingSpin]);
        }
        if self.peers.is_some() {
            series.extend([Series::Unix, Series::Pipe]);
            if size <= Plan::BATCHED_MAX_SIZE {
                series.push(Series::UnixBuffered);
            }
        }
        series
    }

    fn throughput(&self, series: Series, size: usize) -> Option<Result<Rate>> {
        Some(match series {
            Series::Unix => self.peers.as_ref()?.throughput(Stream::Unix, false, size),
            Series::UnixBuffered => self.peers.as_ref()?.throughput(Stream::Unix, true, size),
            Series::Pipe => self.peers.as_ref()?.throughput(Stream::Pipe, false, size),
            Series::IceoryxZeroCopy => self.iox.as_ref()?.throughput(true, size),
            Series::IceoryxCopy => self.iox.as_ref()?.throughput(false, size),
            Series::Ring => self.ring.as_ref()?.throughput(Wait::Block, size),
            Series::RingSpin => self.ring.as_ref()?.throughput(Wait::Spin, size),
            Series::Memcpy => return None,
            _ => self.ours.as_ref()?.throughput(series, size),
        })
    }

    /// The transports measured in `mode`, in the order they take turns.
    fn transports(&self, mode: LatencyMode) -> Vec<Transport> {
        let mut transports = Vec::new();
        if self.ours.is_some() {
            transports.push(Transport::Ours);
        }
        // iceoryx2's subscriber has no blocking receive: busy-poll only.
        if self.iox.is_some() && mode == LatencyMode::BusyPoll {
            transports.push(Transport::Iceoryx);
        }
        if self.ring.is_some() {
            transports.push(Transport::Ring);
        }
        if self.peers.is_some() {
            transports.extend([Transport::Unix, Transport::Pipe]);
        }
        transports
    }

    fn latency(
        &self,
        transport: Transport,
        mode: LatencyMode,
        size: usize,
        budget: u64,
    ) -> Option<Result<Samples>> {
        Some(match transport {
            Transport::Ours => self.ours.as_ref()?.latency(mode, size, budget),
            Transport::Unix => self
                .peers
                .as_ref()?
                .latency(Stream::Unix, mode, size, budget),
            Transport::Pipe => self
                .peers
                .as_ref()?
                .latency(Stream::Pipe, mode, size, budget),
            Transport::Iceoryx => self.iox.as_ref()?.latency(size, budget),
            Transport::Ring => self.ring.as_ref()?.latency(mode, size, budget),
        })
    }

    fn is_empty(&self) -> bool {
        self.ours.is_none() && self.peers.is_none() && self.iox.is_none() && self.ring.is_none()
    }
}

pub fn log_rate(series: Series, size: usize, rate: Rate) {
    eprintln!(
        "  throughput {:>7} {:<24} {:>8.3} GB/s {:>10.0} msg/s",
        format_size(size),
        series.short(),
        rate.gb_per_s,
        rate.msgs_per_s
    );
}

fn log_latency(transport: Transport, mode: LatencyMode, size: usize, p: &Percentiles) {
    eprintln!(
        "  latency    {:>7} {:<14} {:<26} p50 {:>10} p99 {:>10} p99.9 {:>10}",
        format_size(size),
        transport.label(),
        mode.label(),
        report::fmt_ns(p.p50),
        report::fmt_ns(p.p99),
        report::fmt_ns(p.p999)
    );
}

/// What the data section measures, and with what.
pub struct Wanted<'a> {
    pub broker: Option<&'a Broker>,
    pub peers: bool,
    pub iceoryx: bool,
    pub ring: bool,
}

/// Throughput and latency of everything wanted, size by size.
pub fn section(plan: &Plan, cores: Option<CorePair>, wanted: Wanted<'_>, r: &mut Results) {
    let ours = match wanted.broker {
        Some(broker) => r.record("connecting to the broker", Ours::new(broker, plan, cores)),
        None => None,
    };
    let c = Contenders {
        ours,
        peers: wanted.peers.then(|| Peers::new(plan, cores)),
        iox: wanted.iceoryx.then(|| Iceoryx::new(plan, cores)),
        ring: wanted.ring.then(|| SharedRing::new(plan, cores)),
    };
    if c.is_empty() {
        return;
    }
    eprintln!("shmem-bench: throughput and latency");
    let mut noise = Noise::new(plan, cores);
    for &size in &plan.sizes {
        let block = noise.open(r, "throughput", size);
        throughput_block(plan, &c, size, block, &mut noise, r);
        noise.close(r, block);
        for mode in [
            LatencyMode::BusyPoll,
            LatencyMode::Blocking,
            LatencyMode::Asleep,
        ] {
            let block = noise.open(r, mode.label(), size);
            latency_block(plan, &c, mode, size, block, r);
            noise.close(r, block);
        }
    }
}

/// Measures the core-to-core round trip between blocks of measurements and records it with
/// them: the round trip after one block is the one before the next.
pub struct Noise<'a> {
    plan: &'a Plan,
    cores: Option<CorePair>,
    last: Option<f64>,
}

impl<'a> Noise<'a> {
    pub fn new(plan: &'a Plan, cores: Option<CorePair>) -> Noise<'a> {
        Noise {
            plan,
            cores,
            last: None,
        }
    }

    fn measure(&self, r: &mut Results) -> Option<f64> {
        let measured = limits::core_to_core(self.cores, self.plan.core_to_core_beside_ms);
        let c2c = r.record("core-to-core round trip beside a block", measured)?;
        Some(c2c.round_trip.p50)
    }

    /// Starts a block; its index in [`Results::blocks`].
    pub fn open(&mut self, r: &mut Results, what: &str, size: usize) -> usize {
        let before = match self.last.take() {
            Some(ns) => Some(ns),
            None => self.measure(r),
        };
        r.blocks.push(Block {
            what: what.to_string(),
            size,
            c2c_before_ns: before,
            c2c_after_ns: None,
        });
        r.blocks.len() - 1
    }

    /// Measures between two runs of a block: the round trip after one run is the one before
    /// the next, and the last one is the block's "after".
    fn between_runs(&mut self, r: &mut Results) -> Option<f64> {
        self.last = self.measure(r);
        self.last
    }

    pub fn close(&mut self, r: &mut Results, block: usize) {
        let after = match self.last.take() {
            Some(ns) => Some(ns),
            None => self.measure(r),
        };
        if let Some(b) = r.blocks.get_mut(block) {
            b.c2c_after_ns = after;
            let state = r.state(Some(block));
            eprintln!(
                "  core-to-core round trip {} before, {} after ({})",
                r.blocks[block]
                    .c2c_before_ns
                    .map_or("–".into(), report::fmt_ns),
                after.map_or("–".into(), report::fmt_ns),
                state.label()
            );
        }
        self.last = after;
    }
}

/// Every throughput series at `size`, the series taking turns run by run; the median run of
/// each is kept. The core-to-core round trip is measured between runs, so that a spread can be
/// told apart from the VM changing state in the middle of the block.
fn throughput_block(
    plan: &Plan,
    c: &Contenders<'_>,
    size: usize,
    block: usize,
    noise: &mut Noise<'_>,
    r: &mut Results,
) {
    let series = c.series(size);
    let mut rates: Vec<Vec<Rate>> = vec![Vec::new(); series.len()];
    let mut run_c2c: Vec<Vec<[Option<f64>; 2]>> = vec![Vec::new(); series.len()];
    let mut before = r.blocks.get(block).and_then(|b| b.c2c_before_ns);
    for _ in 0..plan.throughput_reps {
        for (i, &s) in series.iter().enumerate() {
            let Some(result) = c.throughput(s, size) else {
                continue;
            };
            let what = format!("throughput {} {}", s.short(), format_size(size));
            let rate = r.record(&what, result);
            let after = noise.between_runs(r);
            if let Some(rate) = rate {
                rates[i].push(rate);
                run_c2c[i].push([before, after]);
            }
            before = after;
        }
    }
    for (i, &s) in series.iter().enumerate() {
        let runs: Vec<f64> = rates[i].iter().map(|rate| rate.gb_per_s).collect();
        let Some(mid) = stats::median(&runs) else {
            continue;
        };
        if let Some(&rate) = rates[i].iter().find(|rate| rate.gb_per_s == mid) {
            log_rate(s, size, rate);
            r.throughput.push(Throughput {
                series: s,
                size,
                rate,
                runs: rates[i].clone(),
                block: Some(block),
                run_c2c: run_c2c[i].clone(),
            });
        }
    }
}

/// Every transport's latency in `mode` at `size`, the transports taking turns round by round
/// and each one's samples pooled.
fn latency_block(
    plan: &Plan,
    c: &Contenders<'_>,
    mode: LatencyMode,
    size: usize,
    block: usize,
    r: &mut Results,
) {
    let transports = c.transports(mode);
    let budget = match mode {
        LatencyMode::Asleep => plan.paced_ms,
        LatencyMode::BusyPoll | LatencyMode::Blocking => plan.latency_ms,
    } / plan.latency_rounds;
    let mut pooled: Vec<(Transport, Samples, Vec<f64>)> = Vec::new();
    for _ in 0..plan.latency_rounds {
        for &transport in &transports {
            let Some(result) = c.latency(transport, mode, size, budget) else {
                continue;
            };
            let what = format!(
                "latency {} {} {}",
                transport.label(),
                mode.label(),
                format_size(size)
            );
            let Some(samples) = r.record(&what, result) else {
                continue;
            };
            let round_p50 = Percentiles::of(&samples.ns, samples.scale).map(|p| p.p50);
            match pooled.iter_mut().find(|(t, _, _)| *t == transport) {
                Some((_, pool, p50s)) => {
                    pool.ns.extend(samples.ns);
                    p50s.extend(round_p50);
                }
                None => pooled.push((transport, samples, round_p50.into_iter().collect())),
            }
        }
    }
    for (transport, samples, round_p50s) in pooled {
        let Some(one_way) = Percentiles::of(&samples.ns, samples.scale) else {
            continue;
        };
        log_latency(transport, mode, size, &one_way);
        r.latency.push(Latency {
            transport,
            mode,
            size,
            one_way,
            round_p50s,
            block: Some(block),
        });
    }
}
