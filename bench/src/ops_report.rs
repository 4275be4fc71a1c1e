//! BENCHMARKS.md, the control plane, scale and CLI sections.

use std::fmt::Write as _;

use crate::report::{fmt_mib, fmt_ns, fmt_ratio, fmt_secs, ratio};
use crate::results::{format_size, Results, Transport};
use crate::scale;

pub fn control_section(r: &Results, out: &mut String) {
    let _ = writeln!(out, "\n| measurement | result |\n|---|---|");
    if let Some(a) = &r.attach {
        let _ = writeln!(
            out,
            "| attach (`Client::producer` + drop, {} times) | p50 {}, p99 {}, p99.9 {}; {} busy retries |",
            a.latency.samples,
            fmt_ns(a.latency.p50),
            fmt_ns(a.latency.p99),
            fmt_ns(a.latency.p999),
            a.busy_retries
        );
    }
    if let Some(m) = &r.many_channels {
        let _ = writeln!(
            out,
            "| create {} channels (4 KiB rings, one `Client`) | {} ({}/channel) |",
            m.channels,
            fmt_secs(m.create_secs),
            fmt_secs(m.create_secs / m.channels.max(1) as f64)
        );
        if let Some(err) = &m.create_error {
            let _ = writeln!(
                out,
                "| channels wanted | {}; {} |",
                m.wanted,
                err.replace('|', "\\|")
            );
        }
        let _ = writeln!(
            out,
            "| broker open fds with {} channels | {} (RLIMIT_NOFILE {}) |",
            m.channels,
            m.broker_fds,
            m.broker_nofile.map_or("unknown".into(), |n| n.to_string())
        );
        let _ = writeln!(
            out,
            "| `shmemctl list --json` with {} channels (process start to exit, median) | {} ({} KiB of JSON) |",
            m.channels,
            fmt_secs(m.ctl_list_secs),
            m.ctl_list_bytes / 1024
        );
        let _ = writeln!(
            out,
            "| `Client::list` with {} channels (in-process, median) | {} |",
            m.channels,
            fmt_secs(m.client_list_secs)
        );
        if m.channels < m.wanted {
            let scale = m.wanted as f64 / m.channels.max(1) as f64;
            let _ = writeln!(
                out,
                "| *extrapolated linearly to {}* | *create {}, `shmemctl list --json` {}* |",
                m.wanted,
                fmt_secs(m.create_secs * scale),
                fmt_secs(m.ctl_list_secs * scale)
            );
        }
        let _ = writeln!(
            out,
            "| broker RSS with {} channels | {} (anon {}, shmem {}) |",
            m.channels,
            fmt_mib(m.broker_rss.total_kib),
            fmt_mib(m.broker_rss.anon_kib),
            fmt_mib(m.broker_rss.shmem_kib)
        );
    }
    if let Some(c) = &r.many_clients {
        let _ = writeln!(
            out,
            "| attach {} clients (producer/consumer alternately over {} channels of 64 KiB) | {} |",
            c.clients,
            c.channels,
            fmt_secs(c.attach_all_secs)
        );
        for (what, rss) in [
            ("idle", c.rss_idle),
            ("with the channels, no clients", c.rss_channels),
            ("with all clients attached", c.rss_attached),
        ] {
            let _ = writeln!(
                out,
                "| broker VmRSS {what} | {} (anon {}, file {}, shmem {}) |",
                fmt_mib(rss.total_kib),
                fmt_mib(rss.anon_kib),
                fmt_mib(rss.file_kib),
                fmt_mib(rss.shmem_kib)
            );
        }
    }
    if let Some(a) = &r.activation {
        let _ = writeln!(
            out,
            "| first `shmemctl list`, socket-activated broker (list start to exit, median of {}) | {} |",
            a.reps,
            fmt_secs(a.first_list_secs)
        );
        let _ = writeln!(
            out,
            "| same, from starting `systemd-socket-activate` | {} |",
            fmt_secs(a.from_spawn_secs)
        );
        let _ = writeln!(
            out,
            "| second `shmemctl list` (broker running) | {} |",
            fmt_secs(a.warm_list_secs)
        );
    }
}

pub fn cli_section(r: &Results, out: &mut String) {
    let Some(c) = &r.cli else {
        let _ = writeln!(out, "\nNot measured.");
        return;
    };
    let _ = writeln!(
        out,
        "\n| {} MiB from /dev/shm to /dev/null | GB/s (median of {}) |\n|---|---:|",
        c.bytes >> 20,
        c.reps
    );
    let _ = writeln!(
        out,
        "| `shmemctl send ch < FILE` + `shmemctl recv ch > /dev/null` (16 MiB ring, 1 MiB messages) | {:.2} |",
        c.shmemctl_gb_per_s
    );
    let _ = writeln!(
        out,
        "| `socat -u -b 1048576 STDIN UNIX-CONNECT:S < FILE` + `socat -u -b 1048576 UNIX-LISTEN:S STDOUT > /dev/null` | {} |",
        c.socat_gb_per_s
            .map_or("socat not installed".into(), |s| format!("{s:.2}"))
    );
    let _ = writeln!(
        out,
        "| `dd bs=1M < FILE \\| dd bs=1M of=/dev/null` (a pipe) | {} |",
        c.dd_gb_per_s
            .map_or("dd not installed".into(), |s| format!("{s:.2}"))
    );
    for (peer, gbps) in [
        ("socat", c.socat_gb_per_s),
        ("dd through a pipe", c.dd_gb_per_s),
    ] {
        let _ = writeln!(
            out,
            "| shmemctl / {peer} | {} |",
            fmt_ratio(gbps.and_then(|s| ratio(Some(c.shmemctl_gb_per_s), Some(s))))
        );
    }
    let runs = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        out,
        "\nEvery repeat, GB/s: shmemctl {}; socat {}; dd {}.",
        runs(&c.shmemctl_runs),
        runs(&c.socat_runs),
        runs(&c.dd_runs)
    );
}

/// Throughput against channels busy at once, and the broker against attached clients.
pub fn scale_section(r: &Results, out: &mut String) {
    if r.scale_pairs.is_empty() && r.scale_clients.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n## Scale\n\n{} messages over 1 to {} channels busy at once: a producer and a \
         consumer process per channel, all **unpinned** on the machine's {} CPU(s), one {} ms \
         run per point (no repeats: read the shape, not the digits). Ours blocking \
         (`send`/`recv_into`), iceoryx2 with its subscribers busy-polling (it has no blocking \
         receive), Unix socketpairs blocking. *All pairs* = every message received / (last \
         receive - first send); every pair checked like the 1:1 runs.\n",
        format_size(scale::SIZE),
        r.scale_pairs.iter().map(|p| p.pairs).max().unwrap_or(0),
        r.machine.nproc,
        r.throughput_ms
    );
    let mut counts: Vec<usize> = r.scale_pairs.iter().map(|p| p.pairs).collect();
    counts.dedup();
    let transports = [Transport::Ours, Transport::Iceoryx, Transport::Unix];
    let _ = write!(out, "| pairs |");
    for t in transports {
        let _ = write!(out, " {} GB/s (all pairs) |", t.label());
    }
    let _ = writeln!(
        out,
        " ours / iceoryx2 | ours / Unix |\n|---:|---:|---:|---:|---:|---:|"
    );
    for pairs in counts {
        let get = |t| {
            r.scale_pairs
                .iter()
                .find(|p| p.transport == t && p.pairs == pairs)
                .map(|p| p.aggregate.gb_per_s)
        };
        let _ = write!(out, "| {pairs} |");
        for t in transports {
            let _ = write!(
                out,
                " {} |",
                get(t).map_or("–".into(), |g| format!("{g:.2}"))
            );
        }
        let _ = writeln!(
            out,
            " {} | {} |",
            fmt_ratio(ratio(get(Transport::Ours), get(Transport::Iceoryx))),
            fmt_ratio(ratio(get(Transport::Ours), get(Transport::Unix)))
        );
    }
    if r.scale_clients.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nThe broker with more and more clients attached (a fresh broker each, `max_clients = \
         20000`; producer and consumer alternately over channels of 64 KiB; each client its \
         own connection, all in the benchmark's process):\n\n\
         | clients | attach all | one attach, the last 100 (mean) | broker VmRSS attached | anon | shmem |\n\
         |---:|---:|---:|---:|---:|---:|"
    );
    for c in &r.scale_clients {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            c.clients,
            fmt_secs(c.attach_all_secs),
            fmt_ns(c.attach_last_secs * 1e9),
            fmt_mib(c.rss_attached.total_kib),
            fmt_mib(c.rss_attached.anon_kib),
            fmt_mib(c.rss_attached.shmem_kib)
        );
    }
}
