//! BENCHMARKS.md: machine, command, tables, and the targets met or missed.

use std::fmt::Write as _;

use crate::ops_report;
use crate::plan::Plan;
use crate::results::{
    format_size, Fanout, FanoutRate, LatencyMode, Rate, Results, Series, Transport,
    FAST_STATE_FACTOR,
};
use crate::sections;
use crate::stats::Percentiles;
use crate::targets::targets;

/// The message size of the latency targets.
pub const LATENCY_TARGET_SIZE: usize = 64;

/// The iceoryx2 release the bench links (bench/Cargo.toml).
const ICEORYX2_VERSION: &str = "0.10";

pub fn fmt_ns(ns: f64) -> String {
    if ns < 1_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

pub fn fmt_secs(secs: f64) -> String {
    fmt_ns(secs * 1e9)
}

pub fn fmt_msgs(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.2} M", rate / 1e6)
    } else if rate >= 1e3 {
        format!("{:.1} k", rate / 1e3)
    } else {
        format!("{rate:.0}")
    }
}

pub fn fmt_mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

pub fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or("–".into(), |r| format!("{r:.2}x"))
}

const TP_SERIES: [Series; 9] = [
    Series::OursBlocking,
    Series::OursSpin,
    Series::OursBatched,
    Series::OursRecvRef,
    Series::OursLoan,
    Series::Unix,
    Series::UnixBuffered,
    Series::Pipe,
    Series::Memcpy,
];

/// Ours / Unix sockets, per-consumer GB/s.
fn fanout_ratio(f: &Fanout) -> Option<f64> {
    ratio(
        f.ours.map(|o| o.per_consumer.gb_per_s),
        f.unix.map(|u| u.per_consumer.gb_per_s),
    )
}

/// Consumers per fan-out run (as measured; the plan's number if nothing ran).
fn fanout_consumers(r: &Results) -> usize {
    r.fanout
        .first()
        .map_or(Plan::FANOUT_CONSUMERS, |f| f.consumers)
}

fn fanout_table(r: &Results, out: &mut String) {
    let consumers = fanout_consumers(r);
    let _ = writeln!(
        out,
        "\n| size | ours msg/s per consumer | ours GB/s per consumer | ours aggregate GB/s \
         ({consumers} consumers) | Unix sockets msg/s per consumer | Unix sockets GB/s per \
         consumer | ours / Unix sockets | messages per consumer per run (ours) |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    let msgs = |rate: Option<FanoutRate>| {
        rate.map_or("–".into(), |r| fmt_msgs(r.per_consumer.msgs_per_s))
    };
    let gbps = |gb: Option<f64>| gb.map_or("–".into(), |g| format!("{g:.2}"));
    for f in &r.fanout {
        let batched = if f.batched { " (batched)" } else { "" };
        let _ = writeln!(
            out,
            "| {}{batched} | {} | {} | {} | {} | {} | {} | {} |",
            format_size(f.size),
            msgs(f.ours),
            gbps(f.ours.map(|o| o.per_consumer.gb_per_s)),
            gbps(f.ours_aggregate_gb_per_s()),
            msgs(f.unix),
            gbps(f.unix.map(|u| u.per_consumer.gb_per_s)),
            fmt_ratio(fanout_ratio(f)),
            f.ours.map_or("–".into(), |o| o.messages.to_string())
        );
    }
}

fn fanout_section(r: &Results, out: &mut String) {
    let consumers = fanout_consumers(r);
    let _ = writeln!(
        out,
        "\n## Fan-out: 1 producer to {consumers} consumers\n\n\
         One producer process and {consumers} consumer processes, **not pinned**: {} busy \
         processes share this machine's {} CPU(s), so the scheduler places them (the 1:1 \
         sections pin their two sides to two cores). Ours: one channel with `max_consumers = \
         {consumers}` and `slow_consumer = block` (the producer waits for the slowest consumer; \
         nothing is lost), a ring of {} per consumer up to 64 KiB messages, {} above; the \
         producer writes every message into each consumer's ring. The consumers attach first, \
         and the producer starts once the broker lists all of them attached (a fan-out \
         consumer receives what is written after it attached). The peer is what a user \
         without fan-out has: the producer writes each message to {consumers} Unix stream \
         sockets in turn, one per consumer, one write(2) per message per socket. Below 1 KiB \
         both batch: ours `send_batch` of {} messages + `recv_batch`, the sockets 64 KiB \
         BufWriter/BufReader. *Per consumer* = messages each consumer received / (last \
         consumer's last receive - producer's first send): every consumer got every message at \
         that rate; *aggregate* = {consumers}x that, the bytes delivered in all. {} ms per run, \
         median of {} runs, ours and the sockets interleaved. Every consumer checks every \
         message's length and sequence number (in its first and last 8 bytes), and a run fails \
         unless each consumer received exactly the messages the producer sent.",
        consumers + 1,
        r.machine.nproc,
        format_size(Plan::capacity_for(64) as usize),
        format_size(Plan::capacity_for(1 << 20) as usize),
        Plan::batch_for(64),
        r.throughput_ms,
        r.throughput_reps
    );
    if r.fanout.is_empty() {
        let _ = writeln!(out, "\nNot measured.");
        return;
    }
    fanout_table(r, out);
}

fn throughput_tables(r: &Results, out: &mut String) {
    let header = |out: &mut String| {
        let _ = write!(out, "| size |");
        for s in TP_SERIES {
            let _ = write!(out, " {} |", s.short());
        }
        let _ = writeln!(out, " ours / unix | ours / pipe | ours / memcpy |");
        let _ = write!(out, "|---:|");
        for _ in TP_SERIES {
            let _ = write!(out, "---:|");
        }
        let _ = writeln!(out, "---:|---:|---:|");
    };
    for (unit, pick) in [
        (
            "GB/s",
            (|r: Rate| format!("{:.2}", r.gb_per_s)) as fn(Rate) -> String,
        ),
        ("messages/s", |r: Rate| fmt_msgs(r.msgs_per_s)),
    ] {
        let _ = writeln!(out, "\n**{unit}**\n");
        header(out);
        for &size in &r.sizes {
            let _ = write!(out, "| {} |", format_size(size));
            for s in TP_SERIES {
                let cell = r.throughput(s, size).map_or("–".into(), pick);
                let _ = write!(out, " {cell} |");
            }
            let ours = r.throughput(Series::OursBlocking, size).map(|t| t.gb_per_s);
            let vs = |s| ratio(ours, r.throughput(s, size).map(|t| t.gb_per_s));
            let _ = writeln!(
                out,
                " {} | {} | {} |",
                fmt_ratio(vs(Series::Unix)),
                fmt_ratio(vs(Series::Pipe)),
                fmt_ratio(vs(Series::Memcpy))
            );
        }
    }
}

/// Our channels beside the other shared-memory transports, like with like: borrowed receive
/// against iceoryx2's zero-copy receive, copying receive against its receive + copy out, and
/// blocking / busy-polling against the bare shmem-ipc ring doing the same.
fn shm_peers_table(r: &Results, out: &mut String) {
    let measured = |s| r.throughput.iter().any(|t| t.series == s);
    if !measured(Series::IceoryxCopy) && !measured(Series::Ring) {
        return;
    }
    let pairs = [
        (Series::OursRecvRef, Series::IceoryxZeroCopy),
        (Series::OursBlocking, Series::IceoryxCopy),
        (Series::OursBlocking, Series::Ring),
        (Series::OursSpin, Series::RingSpin),
    ];
    let _ = writeln!(
        out,
        "\n**Beside other shared-memory transports** (GB/s, messages/s; ratio = ours / peer)\n\n\
         iceoryx2: the `[u8]` publish-subscribe API, publisher `loan_slice_uninit` + copy in + \
         `send` with `RetryUntilDelivered` back-pressure (nothing dropped), subscriber queue of \
         as many samples as our ring holds messages (2 to 4096), both sides connected \
         (`update_connections()` after seeing each other) before the first message. Its \
         subscriber has no blocking receive, so it busy-polls `receive()`. *zero-copy* reads \
         each sample's length and stamps where it lies (like `recv_ref`), *copy-out* copies \
         it into a buffer (like `recv_into`). shmem-ipc ring: `shmem_ipc::sharedring` (the \
         ring this project started from) between the same two processes, a byte ring of our \
         ring's capacity carrying the same fixed-size messages, copied in and out; blocking \
         sides wait as its API does (`block_until_writable` / `block_until_readable` on its \
         eventfds), busy-polling sides retry. Every copy in and out of both peers' shared \
         memory is the one our rings use (`copy::copy_raw`), so no side gains or loses by \
         where its buffers fall in a page (see the page-aliasing copy under the limits)."
    );
    let _ = write!(out, "| size |");
    for (ours, peer) in pairs {
        let _ = write!(out, " {} | {} | ratio |", ours.short(), peer.short());
    }
    let _ = writeln!(out, "\n|---:|{}", "---:|---:|---:|".repeat(pairs.len()));
    let cell = |rate: Option<Rate>| {
        rate.map_or("–".into(), |t| {
            format!("{:.2} ({})", t.gb_per_s, fmt_msgs(t.msgs_per_s))
        })
    };
    for &size in &r.sizes {
        let _ = write!(out, "| {} |", format_size(size));
        for (ours, peer) in pairs {
            let (o, p) = (r.throughput(ours, size), r.throughput(peer, size));
            let x = ratio(o.map(|t| t.gb_per_s), p.map(|t| t.gb_per_s));
            let _ = write!(out, " {} | {} | {} |", cell(o), cell(p), fmt_ratio(x));
        }
        let _ = writeln!(out);
    }
}

fn latency_cell(p: Option<Percentiles>) -> String {
    p.map_or("–".into(), |p| {
        format!("{} / {} / {}", fmt_ns(p.p50), fmt_ns(p.p99), fmt_ns(p.p999))
    })
}

/// Every transport measured in some mode, in table order.
const TRANSPORTS: [Transport; 5] = [
    Transport::Ours,
    Transport::Iceoryx,
    Transport::Ring,
    Transport::Unix,
    Transport::Pipe,
];

fn latency_tables(r: &Results, out: &mut String) {
    for mode in [
        LatencyMode::BusyPoll,
        LatencyMode::Blocking,
        LatencyMode::Asleep,
    ] {
        let columns: Vec<Transport> = TRANSPORTS
            .into_iter()
            .filter(|&t| r.latency.iter().any(|l| l.transport == t && l.mode == mode))
            .collect();
        let _ = writeln!(out, "\n**{}** (one-way p50 / p99 / p99.9)\n", mode.label());
        let _ = write!(out, "| size |");
        for t in &columns {
            let _ = write!(out, " {} |", t.label());
        }
        let _ = writeln!(out, " unix p50 / ours p50 | samples (ours) |");
        let _ = writeln!(out, "|---:|{}---:|---:|", "---:|".repeat(columns.len()));
        for &size in &r.sizes {
            let get = |t| r.latency(t, mode, size);
            let ours = get(Transport::Ours);
            let x = ratio(get(Transport::Unix).map(|p| p.p50), ours.map(|p| p.p50));
            let _ = write!(out, "| {} |", format_size(size));
            for &t in &columns {
                let _ = write!(out, " {} |", latency_cell(get(t)));
            }
            let _ = writeln!(
                out,
                " {} | {} |",
                fmt_ratio(x),
                ours.map_or("–".into(), |p| p.samples.to_string())
            );
        }
    }
    if let Some(a) = &r.aliased_copy {
        let _ = writeln!(
            out,
            "\nA {} copy whose destination lies {} bytes past its source modulo 4096 (one \
             thread, page-aligned source): glibc `memcpy` {:.1} GB/s, ours (`copy::copy_raw`, \
             which every copy in or out of a ring takes, and this bench's iceoryx2 and \
             shmem-ipc copies too) {:.1} GB/s. Where `memcpy` is far below ours, this CPU's \
             `rep movsb` has the page-aliasing slow case (AMD Zen) that made 64 KiB pairs \
             bimodal: a receive buffer at the wrong page offset hit it once a ring lap.",
            format_size(a.size),
            a.distance,
            a.memcpy.gb_per_s,
            a.ours.gb_per_s
        );
    }
    if let Some(c) = &r.core_to_core {
        let _ = writeln!(
            out,
            "\nCore-to-core round trip of one cache line (atomic ping-pong between threads on \
             cores {}): p50 {}, p99 {}, min {} (each sample averages 100 round trips).",
            c.cores
                .map_or("unpinned".into(), |(a, b)| format!("{a} and {b}")),
            fmt_ns(c.round_trip.p50),
            fmt_ns(c.round_trip.p99),
            fmt_ns(c.min_ns)
        );
    }
}

fn targets_section(r: &Results, out: &mut String) {
    let _ = writeln!(
        out,
        "\n## Targets\n\nA target is *met* or *missed* only when every repeat of its measurement \
         agrees (ratios are given as median (worst pairing - best pairing) of the repeats); \
         when the spread of the repeats straddles the goal it is *within noise*. *CPU state*: \
         the core-to-core round trip measured just before and after the block the numbers come \
         from (fast: within {FAST_STATE_FACTOR}x of the run's fastest, {}), listed under \
         *Noise* below; ratios compare series measured in the same block, taking turns.\n\n\
         | target | measured | CPU state | |\n|---|---|---|---|",
        r.fastest_c2c().map_or("–".into(), fmt_ns)
    );
    for t in targets(r) {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            t.name,
            t.measured,
            t.state,
            t.verdict.label(r.quick)
        );
    }
}

/// The blocks of the run and the core-to-core round trip beside each.
fn noise_section(r: &Results, out: &mut String) {
    let _ = writeln!(
        out,
        "\n## Noise\n\nThe core-to-core round trip (p50 of {} ms of atomic ping-pong) measured \
         between blocks of measurements: this VM can flip between a fast and a slow state \
         every 30 s to a few minutes, which moves small-message results by up to 3x. A block \
         whose round trips before and after disagree changed state while it ran.\n",
        r.core_to_core_beside_ms
    );
    if r.blocks.is_empty() {
        let _ = writeln!(out, "Not measured.");
        return;
    }
    let _ = writeln!(
        out,
        "| block | size | before | after | state |\n|---|---:|---:|---:|---|"
    );
    for (i, b) in r.blocks.iter().enumerate() {
        let ns = |v: Option<f64>| v.map_or("–".into(), fmt_ns);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            b.what,
            format_size(b.size),
            ns(b.c2c_before_ns),
            ns(b.c2c_after_ns),
            r.state(Some(i)).label()
        );
    }
}

/// A run's Markdown: the common preamble of BENCHMARKS.md, and this CPU model's section.
pub struct Rendered {
    pub preamble: String,
    pub section: String,
}

fn preamble() -> String {
    format!(
        "# shmem-broker benchmarks\n\n\
         Measured by `shmem-bench` (crate `bench/`), each section in one run on one machine: our \
         channels through the real broker and client library between two processes and from \
         one producer to four consumer processes, Unix stream sockets and pipes between the \
         same processes, iceoryx2 publish-subscribe (crate `iceoryx2` {ICEORYX2_VERSION}) \
         pinned the same way, the `shmem_ipc::sharedring` ring between two processes, and the \
         machine's own limits. The machines are shared 2-vCPU VMs, so expect run-to-run noise \
         of 10-30 % and more: every section records the noise it measured.\n\n\
         The same kind of VM comes with an Intel Xeon or an AMD EPYC CPU. This file keeps the \
         latest full run per CPU model, a section each: a run replaces only its own model's \
         section, so a regression on one family cannot hide behind the other.\n\n\
         ```sh\ncargo build --release --workspace\n\
         cargo run --release -p shmem-broker-bench -- --all --out BENCHMARKS.md --svg docs/bench.svg\n\
         ```\n\n\
         The full suite takes about 10 minutes; `--quick` is the smoke run CI uses (every code \
         path and every peer once, no meaningful numbers, no verdicts); `--only \
         ours,peers,iceoryx2,ring,fanout,scale,limits,control,cli` and `--sizes 64,65536` \
         narrow a run; `--json FILE` keeps the raw results."
    )
}

/// Where the plots are, relative to the report.
pub struct PlotLinks {
    pub throughput: String,
    pub latency: String,
    pub scale: Option<String>,
}

pub fn render(r: &Results, plot_names: Option<PlotLinks>) -> Rendered {
    let m = &r.machine;
    let mut out = String::new();
    if r.quick {
        let _ = writeln!(
            out,
            "> **Smoke run (`--quick`)**: tiny budgets and counts to exercise every code path. \
             These numbers are not measurements; run without `--quick` for those.\n"
        );
    }
    let _ = writeln!(out, "Run: `{}`\n", r.command);
    let _ = writeln!(out, "| machine | |\n|---|---|");
    let _ = writeln!(out, "| CPU | {} |", m.cpu_model);
    let _ = writeln!(out, "| nproc | {} |", m.nproc);
    let _ = writeln!(out, "| kernel | {} |", m.kernel);
    let _ = writeln!(out, "| clocksource | {} |", m.clocksource);
    let _ = writeln!(out, "| date | {} |", m.date);
    let _ = writeln!(out, "| source | {} |", m.revision);
    let _ = writeln!(
        out,
        "| sides pinned to | {} |",
        m.cores_used
            .map_or("not pinned (one CPU)".into(), |(a, b)| format!(
                "cores {a} and {b}"
            ))
    );
    let _ = writeln!(out, "| socket buffers | {} |", m.unix_buffers);
    if let Some((a, b)) = m.cpu_share {
        let _ = writeln!(
            out,
            "| CPU two busy threads get (CPU time / wall time, pinned to the two cores) | {a:.2} and {b:.2} |"
        );
    }
    let _ = writeln!(out, "| run time | {:.0} s |", r.wall_secs);

    targets_section(r, &mut out);
    if !r.failures.is_empty() {
        let _ = writeln!(out, "\n## Failed sections\n");
        for f in &r.failures {
            let _ = writeln!(out, "* **{}**: `{}`", f.what, f.error.replace('\n', " "));
        }
    }

    let _ = writeln!(out, "\n## Throughput\n");
    let _ = writeln!(
        out,
        "Producer on one core, consumer on the other, each its own process; {} ms per run, \
         median of {} runs. Throughput = messages received / (consumer's last receive - \
         producer's first send), both CLOCK_MONOTONIC. Rings: {} up to 64 KiB messages, {} \
         above. `ours` = `send` + `recv_into`; `ours busy-poll` = `send` + `try_recv_into` in a \
         loop; `ours batched` (up to 4 KiB) = `send_batch` of {} messages + `recv_batch`. \
         Peers write each message with one write(2) and read exactly its size; `unix buffered` \
         goes through 64 KiB BufWriter/BufReader (user-space batching, for comparison with \
         `ours batched`). memcpy: one thread, the same two page-aligned buffers over and over (in \
         cache up to the cache size). Every receiver checks every message's sequence number; \
         the core-to-core round trip is measured between runs (the bimodal check compares \
         runs in the same state).",
        r.throughput_ms,
        r.throughput_reps,
        format_size(Plan::capacity_for(64) as usize),
        format_size(Plan::capacity_for(1 << 20) as usize),
        Plan::batch_for(64)
    );
    throughput_tables(r, &mut out);
    shm_peers_table(r, &mut out);
    if let Some(PlotLinks { throughput, .. }) = &plot_names {
        let _ = writeln!(out, "\n![throughput against message size]({throughput})");
    }

    fanout_section(r, &mut out);

    let _ = writeln!(out, "\n## Latency\n");
    let _ = writeln!(
        out,
        "One-way latency. *busy-poll* and *blocking, back-to-back*: ping-pong over two channels \
         (two sockets / two pipes), round trip measured by the initiator (one clock read per \
         round trip) and halved; each side sends a message of the given size. *busy-poll*: \
         `try_recv_into` in a loop / read(2) on an O_NONBLOCK fd in a loop. *blocking, \
         back-to-back*: `recv_into` (which spins about 30 µs before sleeping on the eventfd, so \
         a prompt peer never sleeps) / blocking read(2). *blocking, receiver asleep*: one \
         message every 200 µs + 1 µs per KB, the sender stamps CLOCK_MONOTONIC into it, the \
         receiver (asleep in `recv_into` / read(2)) subtracts it from its receive time: this is \
         the wake-up path. Each figure pools {} rounds of {} ms (receiver asleep: {} ms), the \
         transports taking turns, so that drift on a noisy machine hits them all alike.",
        r.latency_rounds,
        r.latency_ms / r.latency_rounds.max(1),
        r.paced_ms / r.latency_rounds.max(1)
    );
    latency_tables(r, &mut out);
    if let Some(PlotLinks { latency, .. }) = &plot_names {
        let _ = writeln!(out, "\n![latency against message size]({latency})");
    }
    ops_report::scale_section(r, &mut out);
    if let Some(scale) = plot_names.as_ref().and_then(|p| p.scale.as_ref()) {
        let _ = writeln!(
            out,
            "\n![throughput against channels busy at once]({scale})"
        );
    }

    noise_section(r, &mut out);

    let _ = writeln!(out, "\n## Control plane\n");
    let _ = writeln!(
        out,
        "Fresh brokers with `version = 1`, `max_channels = 20000`, `max_clients = 5000` \
         (default logging, to a file), run as {}. The benchmark raises RLIMIT_NOFILE (which \
         the brokers inherit) towards 65536; it got {}.",
        if r.machine.root {
            "root, so per-uid quotas do not apply"
        } else {
            "a normal user"
        },
        r.machine.nofile
    );
    ops_report::control_section(r, &mut out);

    let _ = writeln!(out, "\n## End to end with the CLI\n");
    let _ = writeln!(
        out,
        "A file in /dev/shm piped through each pair of commands; neither side pinned. Timed \
         from starting the sender until both have exited. 1 GiB in a full run (a smoke run \
         moves 16 MiB), the three taking turns."
    );
    ops_report::cli_section(r, &mut out);
    if let Some(bridge) = &r.bridge {
        out.push('\n');
        out.push_str(bridge);
    }
    Rendered {
        preamble: preamble(),
        section: format!("## {}\n\n{}", m.cpu_model, sections::demote(&out)),
    }
}
