//! How long and how often each measurement runs: the full suite, or the CI smoke run.

pub const SIZES: [usize; 6] = [64, 1 << 10, 4 << 10, 64 << 10, 1 << 20, 4 << 20];

/// Fan-out sizes: small batched messages, a page, and the two large sizes the 1:1 targets use.
pub const FANOUT_SIZES: [usize; 4] = [64, 4 << 10, 64 << 10, 1 << 20];

#[derive(Clone, Debug)]
pub struct Plan {
    pub quick: bool,
    pub sizes: Vec<usize>,
    /// Message sizes of the fan-out section (1 producer to [`Plan::FANOUT_CONSUMERS`]).
    pub fanout_sizes: Vec<usize>,
    /// One throughput run.
    pub throughput_ms: u64,
    /// Throughput runs per point; the median is reported.
    pub throughput_reps: usize,
    /// Ping-pong latency per transport and size, over all rounds.
    pub latency_ms: u64,
    /// Paced (receiver asleep) latency per transport and size, over all rounds.
    pub paced_ms: u64,
    /// Latency runs take turns, transport after transport, this many times, and each
    /// transport's samples are pooled: drift on a noisy machine hits them all alike.
    pub latency_rounds: u64,
    pub attach_iterations: usize,
    pub many_channels: usize,
    pub many_clients: usize,
    pub list_reps: usize,
    pub activation_reps: usize,
    pub cli_bytes: u64,
    pub cli_reps: usize,
    pub memcpy_ms: u64,
    pub core_to_core_ms: u64,
    /// The core-to-core round trip measured between blocks (see [`crate::data::Noise`]).
    pub core_to_core_beside_ms: u64,
    /// Channels busy at once in the scale section.
    pub scale_pairs: Vec<usize>,
    /// Clients attached in the scale section.
    pub scale_clients: Vec<usize>,
}

impl Plan {
    pub fn full() -> Plan {
        Plan {
            quick: false,
            sizes: SIZES.to_vec(),
            fanout_sizes: FANOUT_SIZES.to_vec(),
            throughput_ms: 500,
            throughput_reps: 3,
            latency_ms: 1200,
            paced_ms: 1500,
            latency_rounds: 3,
            attach_iterations: 3000,
            many_channels: 10_000,
            many_clients: 1000,
            list_reps: 7,
            activation_reps: 7,
            cli_bytes: 1 << 30,
            cli_reps: 3,
            memcpy_ms: 300,
            core_to_core_ms: 1000,
            core_to_core_beside_ms: 100,
            scale_pairs: vec![1, 2, 8, 64],
            scale_clients: vec![1000, 10_000],
        }
    }

    /// The smoke run: every code path, tiny budgets, no meaningful numbers.
    pub fn quick() -> Plan {
        Plan {
            quick: true,
            sizes: SIZES.to_vec(),
            // One mid size: a few thousand messages per consumer in the 20 ms budget.
            fanout_sizes: vec![4 << 10],
            throughput_ms: 20,
            throughput_reps: 1,
            latency_ms: 20,
            paced_ms: 30,
            latency_rounds: 1,
            attach_iterations: 50,
            many_channels: 200,
            many_clients: 50,
            list_reps: 1,
            activation_reps: 1,
            cli_bytes: 16 << 20,
            cli_reps: 1,
            memcpy_ms: 10,
            core_to_core_ms: 20,
            core_to_core_beside_ms: 5,
            // The code paths only: the curves are for full runs.
            scale_pairs: vec![1, 2],
            scale_clients: vec![50],
        }
    }

    /// Ring capacity of the channel a message size is measured on: 1 MiB (the broker's
    /// default) up to 64 KiB messages, 16 MiB above.
    pub fn capacity_for(size: usize) -> u64 {
        if size <= 64 << 10 {
            1 << 20
        } else {
            16 << 20
        }
    }

    /// Messages per `send_batch` call for the batched series, which runs up to 4 KiB.
    pub fn batch_for(size: usize) -> usize {
        (64 * 1024 / size).clamp(1, 64)
    }

    /// Pause between paced messages: long enough that the receiver's spin phase (30 us) is over
    /// and it sleeps, plus the time the message itself takes.
    pub fn gap_us_for(size: usize) -> u64 {
        200 + size as u64 / 1000
    }

    pub const BATCHED_MAX_SIZE: usize = 4 << 10;

    /// Sizes the zero-copy series (borrowed receive, loan) are measured at, beside
    /// send/recv_into: where a copy costs more than the call around it.
    pub const ZERO_COPY_SIZES: [usize; 2] = [64 << 10, 1 << 20];

    /// Consumers of the fan-out measurement: the performance issue's 1 producer to 4.
    pub const FANOUT_CONSUMERS: usize = 4;

    /// Whether fan-out measures `size` with batch calls (and the peer with buffered sockets):
    /// below 1 KiB the per-call cost, not the copy, is what one call per message would
    /// measure, and a user moving small messages batches them.
    pub fn fanout_batched(size: usize) -> bool {
        size < 1 << 10
    }
}
