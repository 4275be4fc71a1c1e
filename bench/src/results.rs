//! What a run measured: the model the report and the plots are drawn from.

use anyhow::{bail, Result};
use serde::Serialize;

use crate::roles::Outcome;
use crate::stats::Percentiles;
use crate::sys::Rss;

/// A throughput series: one line in the throughput plot, one column in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Series {
    /// `Producer::send` + `Consumer::recv_into` (blocking receive).
    OursBlocking,
    /// `Producer::send` + `Consumer::try_recv_into` in a busy loop.
    OursSpin,
    /// `Producer::send_batch` + `Consumer::recv_batch`.
    OursBatched,
    /// `Producer::send` + `Consumer::recv_ref`, reading only the stamps (borrowed receive).
    OursRecvRef,
    /// `Producer::loan` writing only the stamps + `Consumer::recv_ref` reading only them:
    /// zero-copy both ways.
    OursLoan,
    /// Unix stream socketpair, one write(2)/read(2) per message.
    Unix,
    /// Unix stream socketpair through 64 KiB user-space buffers (BufWriter/BufReader).
    UnixBuffered,
    /// Pipe, one write(2)/read(2) per message.
    Pipe,
    /// Single-thread memcpy, one process: the machine's limit.
    Memcpy,
    /// iceoryx2 publish-subscribe: loan + copy in + send; `receive` reading only the stamps
    /// where the sample lies (zero-copy receive, like our `recv_ref`).
    IceoryxZeroCopy,
    /// iceoryx2: loan + copy in + send; `receive` + copy the payload out (like `recv_into`).
    IceoryxCopy,
    /// `shmem_ipc::sharedring`, both sides blocking on its eventfds.
    Ring,
    /// `shmem_ipc::sharedring`, both sides busy-polling.
    RingSpin,
}

impl Series {
    pub fn label(self) -> &'static str {
        match self {
            Series::OursBlocking => "shmem-broker send/recv_into",
            Series::OursSpin => "shmem-broker send/try_recv_into (busy-poll)",
            Series::OursBatched => "shmem-broker send_batch/recv_batch",
            Series::OursRecvRef => "shmem-broker send/recv_ref (reads the stamps only)",
            Series::OursLoan => "shmem-broker loan/recv_ref (stamps written and read in place)",
            Series::Unix => "Unix socket",
            Series::UnixBuffered => "Unix socket, 64 KiB buffered",
            Series::Pipe => "pipe",
            Series::Memcpy => "memcpy (1 thread)",
            Series::IceoryxZeroCopy => "iceoryx2 loan+send/receive (reads the stamps in place)",
            Series::IceoryxCopy => "iceoryx2 loan+send/receive + copy out",
            Series::Ring => "shmem-ipc sharedring (eventfd wake-ups)",
            Series::RingSpin => "shmem-ipc sharedring (busy-poll)",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Series::OursBlocking => "ours",
            Series::OursSpin => "ours busy-poll",
            Series::OursBatched => "ours batched",
            Series::OursRecvRef => "ours recv_ref",
            Series::OursLoan => "ours loan",
            Series::Unix => "unix",
            Series::UnixBuffered => "unix buffered",
            Series::Pipe => "pipe",
            Series::Memcpy => "memcpy",
            Series::IceoryxZeroCopy => "iceoryx2 zero-copy",
            Series::IceoryxCopy => "iceoryx2 copy-out",
            Series::Ring => "shmem-ipc ring",
            Series::RingSpin => "shmem-ipc ring busy-poll",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Rate {
    pub msgs_per_s: f64,
    pub gb_per_s: f64,
}

impl Rate {
    /// From a producer that started at `producer.start_ns` and a consumer that had received
    /// everything at `consumer.end_ns`.
    pub fn from_pair(producer: &Outcome, consumer: &Outcome) -> Result<Rate> {
        if consumer.messages != producer.messages {
            bail!(
                "producer sent {} messages, consumer received {}",
                producer.messages,
                consumer.messages
            );
        }
        let elapsed = consumer.end_ns.saturating_sub(producer.start_ns);
        if elapsed == 0 || consumer.messages == 0 {
            bail!("nothing was transferred");
        }
        let secs = elapsed as f64 / 1e9;
        Ok(Rate {
            msgs_per_s: consumer.messages as f64 / secs,
            gb_per_s: consumer.bytes as f64 / secs / 1e9,
        })
    }
}

/// One fan-out run: what each consumer received per second, and how many messages each
/// received (and checked).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct FanoutRate {
    pub per_consumer: Rate,
    pub messages: u64,
}

impl FanoutRate {
    /// From a producer that started at `producer.start_ns` and consumers each of which must
    /// have received every message it sent. The rate is the one at which *every* consumer got
    /// everything: up to the last consumer's last receive.
    pub fn from_outcomes(producer: &Outcome, consumers: &[Outcome]) -> Result<FanoutRate> {
        if consumers.is_empty() {
            bail!("no consumers");
        }
        for (i, consumer) in consumers.iter().enumerate() {
            if consumer.messages != producer.messages || consumer.bytes != producer.bytes {
                bail!(
                    "producer sent {} messages ({} bytes), consumer {i} received {} ({} bytes)",
                    producer.messages,
                    producer.bytes,
                    consumer.messages,
                    consumer.bytes
                );
            }
        }
        let last = consumers.iter().map(|c| c.end_ns).max().unwrap_or_default();
        let elapsed = last.saturating_sub(producer.start_ns);
        if elapsed == 0 || producer.messages == 0 {
            bail!("nothing was transferred");
        }
        let secs = elapsed as f64 / 1e9;
        Ok(FanoutRate {
            per_consumer: Rate {
                msgs_per_s: producer.messages as f64 / secs,
                gb_per_s: producer.bytes as f64 / secs / 1e9,
            },
            messages: producer.messages,
        })
    }
}

/// One message size of the fan-out measurement: one producer process to `consumers` consumer
/// processes, through our channel and through one Unix socket per consumer.
#[derive(Clone, Debug, Serialize)]
pub struct Fanout {
    pub size: usize,
    pub consumers: usize,
    /// `send_batch` + `recv_batch`, and 64 KiB-buffered sockets for the peer.
    pub batched: bool,
    pub ours: Option<FanoutRate>,
    pub unix: Option<FanoutRate>,
    /// Every run's per-consumer GB/s: the run-to-run noise.
    pub ours_runs: Vec<f64>,
    pub unix_runs: Vec<f64>,
    pub block: Option<usize>,
}

impl Fanout {
    /// Our bytes per second delivered to all consumers together.
    pub fn ours_aggregate_gb_per_s(&self) -> Option<f64> {
        self.ours
            .map(|r| r.per_consumer.gb_per_s * self.consumers as f64)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    pub series: Series,
    pub size: usize,
    /// The median run.
    pub rate: Rate,
    /// Every run, in the order taken: their spread is the run-to-run noise.
    pub runs: Vec<Rate>,
    /// The block ([`Results::blocks`]) it was measured in.
    pub block: Option<usize>,
    /// The core-to-core round trip p50 (ns) measured just before and just after each run, in
    /// the order of `runs` (empty where not measured): the VM changes state within a block.
    pub run_c2c: Vec<[Option<f64>; 2]>,
}

impl Throughput {
    /// The slowest and fastest run, GB/s.
    pub fn range(&self) -> (f64, f64) {
        range(self.runs.iter().map(|r| r.gb_per_s))
            .unwrap_or((self.rate.gb_per_s, self.rate.gb_per_s))
    }
}

/// (min, max) of some values; `None` if there are none.
pub fn range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// A stretch of measurements taken back to back (one message size's throughput series, or one
/// latency mode at one size), with the core-to-core round trip measured just before and just
/// after it: this VM flips between a fast and a slow core-to-core state, which moves
/// small-message results by up to 3x, so results are compared only within one state.
#[derive(Clone, Debug, Serialize)]
pub struct Block {
    pub what: String,
    pub size: usize,
    /// Core-to-core round trip p50 before and after, nanoseconds.
    pub c2c_before_ns: Option<f64>,
    pub c2c_after_ns: Option<f64>,
}

/// The core-to-core state a block ran in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum CpuState {
    /// Within [`FAST_STATE_FACTOR`] of the fastest round trip of the run, before and after.
    Fast,
    /// Slower than that, before and after.
    Slow,
    /// Fast on one side and slow on the other: the state changed during the block.
    Changed,
    Unknown,
}

/// A round trip more than this many times the run's fastest is the slow state (fast 60 ns and
/// slow 300 ns on the AMD VM of issue 14; 106-130 ns, one state, on the Intel one).
pub const FAST_STATE_FACTOR: f64 = 1.5;

impl CpuState {
    pub fn label(self) -> &'static str {
        match self {
            CpuState::Fast => "fast",
            CpuState::Slow => "slow",
            CpuState::Changed => "changed during the block",
            CpuState::Unknown => "not measured",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Transport {
    Ours,
    Unix,
    Pipe,
    /// iceoryx2 publish-subscribe (busy-poll only: its subscriber has no blocking receive).
    Iceoryx,
    /// `shmem_ipc::sharedring`.
    Ring,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::Ours => "shmem-broker",
            Transport::Unix => "Unix socket",
            Transport::Pipe => "pipe",
            Transport::Iceoryx => "iceoryx2",
            Transport::Ring => "shmem-ipc ring",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum LatencyMode {
    /// Ping-pong, both sides busy-polling (try_recv_into / O_NONBLOCK read); RTT / 2.
    BusyPoll,
    /// Ping-pong, both sides in the blocking call (recv_into / blocking read); RTT / 2.
    Blocking,
    /// One message every few hundred microseconds, stamped with CLOCK_MONOTONIC by the sender;
    /// the receiver is asleep in the blocking call when it arrives.
    Asleep,
}

impl LatencyMode {
    pub fn label(self) -> &'static str {
        match self {
            LatencyMode::BusyPoll => "busy-poll",
            LatencyMode::Blocking => "blocking, back-to-back",
            LatencyMode::Asleep => "blocking, receiver asleep",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub transport: Transport,
    pub mode: LatencyMode,
    pub size: usize,
    /// One-way, nanoseconds, all rounds pooled.
    pub one_way: Percentiles,
    /// Each round's own p50: their spread is the run-to-run noise.
    pub round_p50s: Vec<f64>,
    pub block: Option<usize>,
}

impl Latency {
    /// The lowest and highest p50 of a round.
    pub fn p50_range(&self) -> (f64, f64) {
        range(self.round_p50s.iter().copied()).unwrap_or((self.one_way.p50, self.one_way.p50))
    }
}

/// A copy whose destination lies a short distance past its source modulo the page: glibc's
/// `memcpy` against the library's `copy::copy_raw` (which dodges `rep movsb` there).
#[derive(Clone, Debug, Default, Serialize)]
pub struct AliasedCopy {
    pub size: usize,
    /// Destination minus source, modulo 4096.
    pub distance: usize,
    pub memcpy: Rate,
    pub ours: Rate,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CoreToCore {
    /// Round trip of one cache line between the two cores, nanoseconds.
    pub round_trip: Percentiles,
    pub min_ns: f64,
    pub cores: Option<(usize, usize)>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Attach {
    /// Client::producer + drop, nanoseconds.
    pub latency: Percentiles,
    /// Attaches refused as busy because the broker had not yet seen the previous detach.
    pub busy_retries: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ManyChannels {
    /// Channels asked for.
    pub wanted: usize,
    /// Channels created (fewer than wanted if the broker refused one).
    pub channels: usize,
    /// Why creating stopped early.
    pub create_error: Option<String>,
    pub create_secs: f64,
    /// Open fds of the broker with all channels created.
    pub broker_fds: usize,
    /// The broker's RLIMIT_NOFILE (soft).
    pub broker_nofile: Option<u64>,
    /// `shmemctl list --json` with that many channels (process start to exit), median.
    pub ctl_list_secs: f64,
    pub ctl_list_bytes: usize,
    /// `Client::list` in-process, median.
    pub client_list_secs: f64,
    pub broker_rss: Rss,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ManyClients {
    pub clients: usize,
    pub channels: usize,
    pub attach_all_secs: f64,
    /// Mean time of one of the last 100 attaches (with nearly all the others attached).
    pub attach_last_secs: f64,
    pub rss_idle: Rss,
    pub rss_channels: Rss,
    pub rss_attached: Rss,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Activation {
    /// `shmemctl list` started as soon as the socket exists, to its exit (includes the broker
    /// starting), median.
    pub first_list_secs: f64,
    /// From starting systemd-socket-activate to the first list's exit, median.
    pub from_spawn_secs: f64,
    /// A second `shmemctl list` against the now running broker, median.
    pub warm_list_secs: f64,
    pub reps: usize,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CliRun {
    pub bytes: u64,
    pub shmemctl_gb_per_s: f64,
    pub socat_gb_per_s: Option<f64>,
    pub reps: usize,
    /// Every repeat, GB/s: the run-to-run noise.
    pub shmemctl_runs: Vec<f64>,
    pub socat_runs: Vec<f64>,
    /// `dd bs=1M | dd bs=1M of=/dev/null` (coreutils), through a pipe.
    pub dd_gb_per_s: Option<f64>,
    pub dd_runs: Vec<f64>,
}

/// A section that could not run, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    pub what: String,
    pub error: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub nproc: usize,
    pub kernel: String,
    pub date: String,
    pub cores_used: Option<(usize, usize)>,
    pub clocksource: String,
    pub unix_buffers: String,
    pub revision: String,
    /// RLIMIT_NOFILE (soft) in force for the benchmark and the brokers it starts.
    pub nofile: u64,
    pub root: bool,
    /// CPU time / wall time of two busy threads pinned to the two cores, measured at start.
    pub cpu_share: Option<(f64, f64)>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Results {
    pub machine: Machine,
    pub command: String,
    pub quick: bool,
    pub sizes: Vec<usize>,
    pub throughput_ms: u64,
    pub throughput_reps: usize,
    /// Latency budgets per transport and size (ping-pong, paced), split over the rounds.
    pub latency_ms: u64,
    pub paced_ms: u64,
    pub latency_rounds: u64,
    /// Core-to-core measurement between blocks.
    pub core_to_core_beside_ms: u64,
    pub throughput: Vec<Throughput>,
    pub latency: Vec<Latency>,
    pub fanout: Vec<Fanout>,
    pub core_to_core: Option<CoreToCore>,
    /// The page-aliasing copy, memcpy against ours.
    pub aliased_copy: Option<AliasedCopy>,
    /// Blocks of measurements with the core-to-core round trip beside each.
    pub blocks: Vec<Block>,
    pub attach: Option<Attach>,
    pub many_channels: Option<ManyChannels>,
    pub many_clients: Option<ManyClients>,
    /// Aggregate throughput against the number of channels busy at once.
    pub scale_pairs: Vec<crate::scale::PairsPoint>,
    /// The broker with more and more clients attached.
    pub scale_clients: Vec<ManyClients>,
    pub activation: Option<Activation>,
    pub cli: Option<CliRun>,
    /// The bridge section, as shmem-bridge-bench wrote it (Markdown).
    pub bridge: Option<String>,
    pub failures: Vec<Failure>,
    pub wall_secs: f64,
}

impl Results {
    /// The fastest core-to-core round trip (p50) of the run: the fast state's.
    pub fn fastest_c2c(&self) -> Option<f64> {
        let beside = self
            .blocks
            .iter()
            .flat_map(|b| [b.c2c_before_ns, b.c2c_after_ns])
            .flatten();
        let between_runs = self
            .throughput
            .iter()
            .flat_map(|t| t.run_c2c.iter().flatten())
            .flatten()
            .copied();
        let start = self.core_to_core.as_ref().map(|c| c.round_trip.p50);
        range(beside.chain(between_runs).chain(start)).map(|(lo, _)| lo)
    }

    /// The core-to-core state `block` ran in.
    pub fn state(&self, block: Option<usize>) -> CpuState {
        let (Some(block), Some(fastest)) =
            (block.and_then(|b| self.blocks.get(b)), self.fastest_c2c())
        else {
            return CpuState::Unknown;
        };
        let fast = |ns: f64| ns <= fastest * FAST_STATE_FACTOR;
        match (block.c2c_before_ns, block.c2c_after_ns) {
            (Some(a), Some(b)) if fast(a) && fast(b) => CpuState::Fast,
            (Some(a), Some(b)) if !fast(a) && !fast(b) => CpuState::Slow,
            (Some(_), Some(_)) => CpuState::Changed,
            _ => CpuState::Unknown,
        }
    }

    pub fn throughput_entry(&self, series: Series, size: usize) -> Option<&Throughput> {
        self.throughput
            .iter()
            .find(|t| t.series == series && t.size == size)
    }

    pub fn latency_entry(
        &self,
        transport: Transport,
        mode: LatencyMode,
        size: usize,
    ) -> Option<&Latency> {
        self.latency
            .iter()
            .find(|l| l.transport == transport && l.mode == mode && l.size == size)
    }

    pub fn throughput(&self, series: Series, size: usize) -> Option<Rate> {
        self.throughput
            .iter()
            .find(|t| t.series == series && t.size == size)
            .map(|t| t.rate)
    }

    pub fn latency(
        &self,
        transport: Transport,
        mode: LatencyMode,
        size: usize,
    ) -> Option<Percentiles> {
        self.latency
            .iter()
            .find(|l| l.transport == transport && l.mode == mode && l.size == size)
            .map(|l| l.one_way)
    }

    /// Records a section's result, or its failure (the run goes on; the exit status reports it).
    pub fn record<T>(&mut self, what: &str, result: Result<T>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(err) => {
                eprintln!("shmem-bench: {what} failed: {err:#}");
                self.failures.push(Failure {
                    what: what.to_string(),
                    error: format!("{err:#}"),
                });
                None
            }
        }
    }
}

pub fn format_size(size: usize) -> String {
    match size {
        s if s >= 1 << 20 && s % (1 << 20) == 0 => format!("{} MiB", s >> 20),
        s if s >= 1 << 10 && s % (1 << 10) == 0 => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(start_ns: u64, end_ns: u64, messages: u64) -> Outcome {
        Outcome {
            start_ns,
            end_ns,
            messages,
            bytes: messages * 64,
            samples_ns: Vec::new(),
        }
    }

    #[test]
    fn fanout_rate_is_up_to_the_last_consumer() {
        let producer = outcome(1_000, 0, 1000);
        let consumers = [
            outcome(0, 500_001_000, 1000),
            outcome(0, 1_000_001_000, 1000),
        ];
        let rate = FanoutRate::from_outcomes(&producer, &consumers).expect("rate");
        assert_eq!(rate.messages, 1000);
        assert!((rate.per_consumer.msgs_per_s - 1000.0).abs() < 1e-6);
        assert!((rate.per_consumer.gb_per_s - 64e3 / 1e9).abs() < 1e-12);
    }

    #[test]
    fn fanout_rate_refuses_a_consumer_that_missed_messages() {
        let producer = outcome(0, 0, 1000);
        let consumers = [outcome(0, 10, 1000), outcome(0, 10, 999)];
        let err = FanoutRate::from_outcomes(&producer, &consumers).expect_err("short consumer");
        assert!(err.to_string().contains("consumer 1 received 999"), "{err}");
        assert!(FanoutRate::from_outcomes(&producer, &[]).is_err());
    }
}
