//! `shmem-bridge-bench`: throughput and latency of a channel carried by shmem-bridge between
//! two network namespaces joined by a veth pair (10.78.0.1 and 10.78.0.2, inside those
//! namespaces only), against raw Zenoh publisher-to-subscriber and against `socat` over TCP
//! over the same link, in the same run. Needs root (`ip netns`); without it, it prints a
//! "skipped" section and exits 0.
//!
//! ```sh
//! cargo build --release -p shmem-bridge -p shmem-broker-daemon -p shmemctl
//! sudo target/release/shmem-bridge-bench --out bridge-bench.md      # the BENCHMARKS.md section
//! sudo target/release/shmem-bridge-bench --quick                    # smoke run, a few seconds
//! ```
//!
//! The three paths, each from a sender in host A to a receiver in host B:
//!
//! * **ours**: producer -> channel `out` (broker A) -> `shmem-bridge export` (netns A) ->
//!   Zenoh over the veth -> `shmem-bridge import` (netns B) -> channel `in` (broker B) ->
//!   consumer. The producer and consumer are this process, using the client library.
//! * **zenoh**: a Zenoh publisher (netns A, peer, listening) -> a subscriber (netns B,
//!   connecting): the same Zenoh build, mode and congestion control (block) as the bridge.
//! * **socat**: this process -> Unix socket -> `socat` (netns A) -> TCP over the veth ->
//!   `socat` (netns B) -> Unix socket -> this process.
//!
//! Every message carries its send time (CLOCK_MONOTONIC, one clock for all namespaces) and a
//! sequence number. Throughput: `count` messages sent as fast as the path takes them, bytes
//! over (last arrival - first send), median of the repetitions with min and max. Latency:
//! messages paced (one every millisecond, five for 1 MiB), one-way arrival - send, p50/p99.
//! CPU: the CPU time each process of ours and of raw Zenoh spends per GiB moved over the
//! throughput runs, and by thread ([`cpu`]): steadier than MB/s on a shared machine, and it
//! says where the time goes.

mod cpu;
mod measure;
mod netns;
mod paths;
mod report;
mod zenoh_child;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};

use crate::measure::*;
use crate::netns::*;
use crate::paths::*;
use crate::report::*;
use crate::zenoh_child::*;

pub(crate) const HOST_A: &str = "10.78.0.1";
pub(crate) const HOST_B: &str = "10.78.0.2";
pub(crate) const HEADER: usize = 16;

#[derive(Parser)]
#[command(
    name = "shmem-bridge-bench",
    about = "shmem-bridge over a veth link against raw Zenoh and socat"
)]
struct Args {
    #[command(subcommand)]
    role: Option<Role>,
    /// Smoke run: every path with tiny counts; numbers are noise.
    #[arg(long)]
    quick: bool,
    /// Message sizes in bytes (at least 16).
    #[arg(long, value_delimiter = ',', default_value = "64,65536,1048576")]
    sizes: Vec<usize>,
    /// Throughput repetitions per point (median reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Write the Markdown section here (default: standard output).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where shmem-bridge, shmem-broker and shmemctl are (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Role {
    /// Raw Zenoh publisher (internal: run inside netns A).
    #[command(name = "__zenoh-pub", hide = true)]
    ZenohPub { listen: String },
    /// Raw Zenoh subscriber (internal: run inside netns B).
    #[command(name = "__zenoh-sub", hide = true)]
    ZenohSub { connect: String },
}

fn main() {
    let args = Args::parse();
    let result = match &args.role {
        Some(Role::ZenohPub { listen }) => zenoh_pub(listen),
        Some(Role::ZenohSub { connect }) => zenoh_sub(connect),
        None => run(&args),
    };
    if let Err(e) = result {
        eprintln!("shmem-bridge-bench: {e:#}");
        std::process::exit(1);
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn skipped(args: &Args, why: &str) -> Result<()> {
    let text = format!("## bridge\n\nskipped: {why}\n");
    emit(args, &text)
}

fn emit(args: &Args, text: &str) -> Result<()> {
    match &args.out {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
        }
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

fn run(args: &Args) -> Result<()> {
    if let Some(bad) = args
        .sizes
        .iter()
        .find(|&&s| !(HEADER..=8 << 20).contains(&s))
    {
        bail!("message size {bad} out of range (16 B to 8 MiB)");
    }
    if !is_root() {
        return skipped(args, "needs root (network namespaces, `ip netns`)");
    }
    let ip_ok = Command::new("ip")
        .args(["netns", "list"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ip_ok {
        return skipped(args, "needs `ip netns` (iproute2) and network namespaces");
    }
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()
            .context("find this binary")?
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| anyhow!("this binary has no directory"))?,
    };
    let socat = ["/usr/bin/socat", "/bin/socat", "/usr/local/bin/socat"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    let plan = Plan {
        quick: args.quick,
        reps: if args.quick { 1 } else { args.reps.max(1) },
    };
    let dir = tempfile::Builder::new()
        .prefix("shmem-bridge-bench.")
        .tempdir()
        .context("create a temporary directory")?;
    let hosts = Hosts::new()?;
    let mut rows = Vec::new();
    let ours = Ours::start(&bin_dir, dir.path(), &hosts)?;
    let raw = RawZenoh::start(&hosts)?;
    let socat = match &socat {
        Some(bin) => Some(Socat::start(bin, dir.path(), &hosts)?),
        None => None,
    };
    let mut raw = raw;
    let mut ours = ours;
    let mut socat = socat;
    for &size in &args.sizes {
        eprintln!("shmem-bridge-bench: {size} B");
        let mut row = Row {
            size,
            ..Row::default()
        };
        // Transports take turns within each repetition: drift on a shared machine hits all.
        for _ in 0..plan.reps {
            let n = plan.throughput_count(size);
            let bytes = n.saturating_mul(size as u64);
            let (outcome, [producer, consumer]) =
                with_cpu(&ours.processes(), &mut row.ours_cpu, || {
                    ours.measure(size, n, None)
                })?;
            row.ours.push(outcome);
            row.ours_cpu.add("producer", &producer);
            row.ours_cpu.add("consumer", &consumer);
            row.ours_cpu.bytes += bytes;
            let outcome = with_cpu(&raw.processes(), &mut row.zenoh_cpu, || {
                raw.measure(size, n, None)
            })?;
            row.zenoh.push(outcome);
            row.zenoh_cpu.bytes += bytes;
            if let Some(socat) = socat.as_mut() {
                row.socat.push(socat.measure(size, n, None)?);
            }
        }
        let (n, pace) = (plan.latency_count(size), Some(pace_for(size)));
        row.ours_lat = Some(ours.measure(size, n, pace)?.0);
        row.zenoh_lat = Some(raw.measure(size, n, pace)?);
        if let Some(socat) = socat.as_mut() {
            row.socat_lat = Some(socat.measure(size, n, pace)?);
        }
        rows.push(row);
    }
    drop((ours, raw, socat));
    let text = report(&plan, &rows, &command_line());
    emit(args, &text)
}

/// Runs `f`, adding the CPU time each of `processes` spent meanwhile to `tally` (by role,
/// and by thread name for all but the brokers).
fn with_cpu<T>(
    processes: &[(&'static str, u32)],
    tally: &mut CpuTally,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let read = || -> Result<Vec<_>> {
        processes
            .iter()
            .map(|&(role, pid)| Ok((role, cpu::of_process(pid)?, cpu::by_thread(pid))))
            .collect()
    };
    let before = read()?;
    let value = f()?;
    let after = read()?;
    for ((role, cpu, threads), (_, was, threads_was)) in after.iter().zip(&before) {
        tally.add(role, &cpu.since(was));
        if *role != "brokers" {
            tally.add_threads(role, &cpu::threads_since(threads, threads_was));
        }
    }
    Ok(value)
}

fn command_line() -> String {
    std::env::args()
        .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
        .collect::<Vec<_>>()
        .join(" ")
}
