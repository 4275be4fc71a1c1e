//! `shmem-bench`: measures shmem-broker's channels (one-to-one, and one producer to four
//! consumers) against Unix sockets, pipes and the machine's limits, plus the control plane and
//! the CLI, in one run on one machine, and writes BENCHMARKS.md and two SVG plots.
//!
//! ```sh
//! cargo build --release --workspace
//! cargo run --release -p shmem-broker-bench -- --all --out BENCHMARKS.md --svg docs/bench.svg
//! cargo run --release -p shmem-broker-bench -- --quick      # smoke run, a few seconds
//! cargo run --release -p shmem-broker-bench -- --only fanout # 1 producer to 4 consumers
//! ```

mod broker;
mod cli;
mod control;
mod data;
mod iox;
mod limits;
mod machine;
mod ops_report;
mod ours;
mod peers;
mod plan;
mod plot;
mod proc;
mod report;
mod results;
mod ring;
mod roles;
mod scale;
mod sections;
mod stats;
mod sys;
mod targets;
mod transport;
mod worker;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::broker::{Broker, BIG_CONFIG, DEFAULT_CONFIG};
use crate::control::Control;
use crate::ours::Ours;
use crate::peers::Peers;
use crate::plan::Plan;
use crate::results::{format_size, Fanout, FanoutRate, Results, Series, Throughput};
use crate::sys::CorePair;

#[derive(Parser)]
#[command(
    name = "shmem-bench",
    about = "Benchmark shmem-broker channels against Unix sockets, pipes and the machine's limits"
)]
struct Args {
    #[command(subcommand)]
    worker: Option<Hidden>,
    /// Run every section (the default unless --only is given)
    #[arg(long)]
    all: bool,
    /// Smoke run: every code path with tiny budgets, well under a minute; numbers are noise
    #[arg(long)]
    quick: bool,
    /// Run only these sections
    #[arg(long, value_enum, value_delimiter = ',', conflicts_with = "all")]
    only: Vec<Section>,
    /// Message sizes in bytes, fan-out included [default: 64,1024,4096,65536,1048576,4194304;
    /// fan-out 64,4096,65536,1048576]
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Write the Markdown report here (default: standard output)
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write plots: `--svg docs/bench.svg` writes docs/bench-throughput.svg and
    /// docs/bench-latency.svg
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Write every raw result as JSON here
    #[arg(long)]
    json: Option<PathBuf>,
    /// The broker binary [default: shmem-broker next to this binary]
    #[arg(long)]
    broker: Option<PathBuf>,
    /// The CLI binary [default: shmemctl next to this binary]
    #[arg(long)]
    ctl: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Hidden {
    /// One side of a two-process measurement (internal)
    #[command(name = "__worker", hide = true)]
    Worker {
        #[arg(long)]
        cpu: Option<usize>,
        task: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Section {
    /// Machine limits: memcpy, core-to-core round trip
    Limits,
    /// Our channels: throughput and latency
    Ours,
    /// Unix socket and pipe: throughput and latency
    Peers,
    /// iceoryx2 publish-subscribe: throughput (zero-copy and copy-out receive) and busy-poll
    /// latency
    Iceoryx2,
    /// The seed's shmem_ipc::sharedring between two processes: throughput and latency
    Ring,
    /// One producer to 4 consumer processes: our fan-out channel against 4 Unix sockets
    Fanout,
    /// Attach, 10k channels, 1k clients, socket activation
    Control,
    /// shmemctl send|recv against socat and dd
    Cli,
    /// Throughput against channels busy at once (ours, iceoryx2, Unix sockets); broker RSS and
    /// attach time against attached clients
    Scale,
    /// shmem-bridge over a veth link against raw Zenoh and socat over TCP (needs root; runs
    /// shmem-bridge-bench from the same folder)
    Bridge,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Hidden::Worker { cpu, task }) = &args.worker {
        return match worker::worker_main(*cpu, task) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("shmem-bench worker: {err:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("shmem-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the suite; false if a section failed (the report says which).
fn run(args: &Args) -> Result<bool> {
    let started = Instant::now();
    let plan = if args.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    let mut plan = plan;
    if !args.sizes.is_empty() {
        if let Some(bad) = args.sizes.iter().find(|&&s| !(8..=8 << 20).contains(&s)) {
            anyhow::bail!("message size {bad} out of range (8 B to 8 MiB)");
        }
        plan.sizes = args.sizes.clone();
        plan.fanout_sizes = args.sizes.clone();
    }
    let wants = |s: Section| args.only.is_empty() || args.only.contains(&s);
    let nofile = sys::raise_nofile(65_536)?;
    let cores = sys::core_pair()?;
    let dir = tempfile::Builder::new()
        .prefix("shmem-bench.")
        .tempdir()
        .context("creating a temporary directory")?;
    let needs_binaries = wants(Section::Ours)
        || wants(Section::Fanout)
        || wants(Section::Scale)
        || wants(Section::Control)
        || wants(Section::Cli);
    let (broker_bin, ctl_bin) = if needs_binaries {
        (
            Some(proc::find_binary("shmem-broker", args.broker.as_deref())?),
            Some(proc::find_binary("shmemctl", args.ctl.as_deref())?),
        )
    } else {
        (None, None)
    };
    if nofile < 40_000 {
        eprintln!(
            "shmem-bench: RLIMIT_NOFILE is {nofile} (raising the hard limit needs \
             CAP_SYS_RESOURCE): the broker may run out of fds before 10,000 channels (2 each) \
             or 10,000 clients over 5,000 channels (about 30,000 fds)"
        );
    }

    let mut machine = machine::describe(cores);
    machine.nofile = nofile;
    // SAFETY: geteuid cannot fail.
    machine.root = unsafe { libc::geteuid() } == 0;
    let mut r = Results {
        machine,
        command: command_line(),
        quick: plan.quick,
        sizes: plan.sizes.clone(),
        throughput_ms: plan.throughput_ms,
        throughput_reps: plan.throughput_reps,
        latency_ms: plan.latency_ms,
        paced_ms: plan.paced_ms,
        latency_rounds: plan.latency_rounds,
        core_to_core_beside_ms: plan.core_to_core_beside_ms,
        ..Results::default()
    };

    if wants(Section::Limits) {
        limits_section(&plan, cores, &mut r);
    }
    let wants_data_broker = wants(Section::Ours)
        || wants(Section::Fanout)
        || wants(Section::Cli)
        || wants(Section::Scale);
    let data_broker = match &broker_bin {
        Some(bin) if wants_data_broker => r.record(
            "starting the broker",
            Broker::start(bin, dir.path(), "data", DEFAULT_CONFIG),
        ),
        _ => None,
    };
    let data = [
        Section::Ours,
        Section::Peers,
        Section::Iceoryx2,
        Section::Ring,
    ];
    if data.into_iter().any(wants) {
        let wanted = data::Wanted {
            broker: data_broker.as_ref().filter(|_| wants(Section::Ours)),
            peers: wants(Section::Peers),
            iceoryx: wants(Section::Iceoryx2),
            ring: wants(Section::Ring),
        };
        data::section(&plan, cores, wanted, &mut r);
    }
    if wants(Section::Fanout) {
        fanout_section(&plan, cores, data_broker.as_ref(), &mut r);
    }
    if let (true, Some(broker_bin), Some(ctl_bin)) =
        (wants(Section::Control), &broker_bin, &ctl_bin)
    {
        let control = Control {
            broker_bin,
            ctl_bin,
            dir: dir.path(),
        };
        control_section(&plan, &control, &mut r);
    }
    if wants(Section::Scale) {
        let control = broker_bin
            .as_ref()
            .zip(ctl_bin.as_ref())
            .map(|(broker_bin, ctl_bin)| Control {
                broker_bin,
                ctl_bin,
                dir: dir.path(),
            });
        scale::section(&plan, data_broker.as_ref(), control.as_ref(), &mut r);
    }
    if let (true, Some(broker), Some(ctl_bin)) = (wants(Section::Cli), &data_broker, &ctl_bin) {
        eprintln!(
            "shmem-bench: CLI, {} through shmemctl, socat and dd",
            format_size(plan.cli_bytes as usize)
        );
        r.cli = r.record(
            "CLI end to end",
            cli::run(ctl_bin, broker, dir.path(), plan.cli_bytes, plan.cli_reps),
        );
    }
    drop(data_broker);
    if wants(Section::Bridge) {
        eprintln!("shmem-bench: bridge (shmem-bridge-bench)");
        r.bridge = r.record("bridge", bridge_section(&plan));
    }
    r.wall_secs = started.elapsed().as_secs_f64();
    write_outputs(args, &r)?;
    Ok(r.failures.is_empty())
}

/// The bridge section's Markdown, from `shmem-bridge-bench` (its own binary, so that this one
/// does not link Zenoh): it needs root and network namespaces and says "skipped" without them;
/// `--quick` makes it a tiny run.
fn bridge_section(plan: &Plan) -> Result<String> {
    let bin = match proc::find_binary("shmem-bridge-bench", None) {
        Ok(bin) => bin,
        Err(_) => {
            return Ok("## bridge\n\nskipped: shmem-bridge-bench not built \
                       (`cargo build --release -p shmem-bridge`)\n"
                .into())
        }
    };
    let mut cmd = std::process::Command::new(&bin);
    if plan.quick {
        cmd.arg("--quick");
    }
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        anyhow::bail!("{} exited {}", bin.display(), out.status);
    }
    String::from_utf8(out.stdout).context("shmem-bridge-bench wrote something not UTF-8")
}

fn limits_section(plan: &Plan, cores: Option<CorePair>, r: &mut Results) {
    eprintln!("shmem-bench: machine limits");
    r.machine.cpu_share = r.record(
        "CPU share of two busy threads",
        limits::cpu_share(cores, plan.core_to_core_ms),
    );
    if let Some((a, b)) = r.machine.cpu_share {
        eprintln!("  two busy threads get {a:.2} and {b:.2} of a CPU each");
    }
    r.core_to_core = r.record(
        "core-to-core round trip",
        limits::core_to_core(cores, plan.core_to_core_ms),
    );
    r.aliased_copy = r.record(
        "copy at a page-aliasing distance",
        limits::aliased_copy(64 * 1024, plan.memcpy_ms, cores.map(|c| c.a)),
    );
    if let Some(a) = &r.aliased_copy {
        eprintln!(
            "  64 KiB copy {} bytes past its source modulo 4096: memcpy {:.1} GB/s, ours {:.1} GB/s",
            a.distance, a.memcpy.gb_per_s, a.ours.gb_per_s
        );
    }
    for &size in &plan.sizes {
        if let Some(rate) = r.record(
            &format!("memcpy {}", format_size(size)),
            limits::memcpy(size, plan.memcpy_ms, cores.map(|c| c.a)),
        ) {
            data::log_rate(Series::Memcpy, size, rate);
            r.throughput.push(Throughput {
                series: Series::Memcpy,
                size,
                rate,
                runs: vec![rate],
                block: None,
                run_c2c: Vec::new(),
            });
        }
    }
}

fn log_fanout(label: &str, size: usize, consumers: usize, rate: FanoutRate) {
    eprintln!(
        "  fan-out    {:>7} {:<14} {:>8.3} GB/s {:>10.0} msg/s per consumer, {:>8.3} GB/s to all \
         {consumers}, {} messages each",
        format_size(size),
        label,
        rate.per_consumer.gb_per_s,
        rate.per_consumer.msgs_per_s,
        rate.per_consumer.gb_per_s * consumers as f64,
        rate.messages
    );
}

/// The run whose GB/s is the median of `runs`.
fn median_run(runs: &[FanoutRate]) -> Option<FanoutRate> {
    let gbps: Vec<f64> = runs.iter().map(|r| r.per_consumer.gb_per_s).collect();
    let mid = stats::median(&gbps)?;
    runs.iter()
        .copied()
        .find(|r| r.per_consumer.gb_per_s == mid)
}

/// One producer to [`Plan::FANOUT_CONSUMERS`] consumer processes, size by size: our fan-out
/// channel and one Unix socket per consumer, interleaved run by run like the 1:1 section.
/// Ours needs the broker; without it only the sockets run.
fn fanout_section(plan: &Plan, cores: Option<CorePair>, broker: Option<&Broker>, r: &mut Results) {
    let ours = match broker {
        Some(broker) => r.record("connecting to the broker", Ours::new(broker, plan, None)),
        None => None,
    };
    let peers = Peers::new(plan, None);
    let consumers = Plan::FANOUT_CONSUMERS;
    eprintln!(
        "shmem-bench: fan-out, 1 producer to {consumers} consumers ({} processes, unpinned, on \
         {} CPUs)",
        consumers + 1,
        r.machine.nproc
    );
    let mut noise = data::Noise::new(plan, cores);
    for &size in &plan.fanout_sizes {
        let block = noise.open(r, "fan-out", size);
        let (mut ours_runs, mut unix_runs) = (Vec::new(), Vec::new());
        for _ in 0..plan.throughput_reps {
            if let Some(o) = &ours {
                let what = format!("fan-out ours {}", format_size(size));
                ours_runs.extend(r.record(&what, o.fanout(size, consumers)));
            }
            let what = format!("fan-out unix {}", format_size(size));
            unix_runs.extend(r.record(&what, peers.fanout(size, consumers)));
        }
        let row = Fanout {
            size,
            consumers,
            batched: Plan::fanout_batched(size),
            ours: median_run(&ours_runs),
            unix: median_run(&unix_runs),
            ours_runs: ours_runs.iter().map(|f| f.per_consumer.gb_per_s).collect(),
            unix_runs: unix_runs.iter().map(|f| f.per_consumer.gb_per_s).collect(),
            block: Some(block),
        };
        noise.close(r, block);
        for (label, rate) in [("ours", row.ours), ("unix sockets", row.unix)] {
            if let Some(rate) = rate {
                log_fanout(label, size, consumers, rate);
            }
        }
        r.fanout.push(row);
    }
}

fn control_section(plan: &Plan, control: &Control, r: &mut Results) {
    eprintln!("shmem-bench: control plane");
    let attach = Broker::start(control.broker_bin, control.dir, "attach", BIG_CONFIG)
        .and_then(|broker| control.attach(&broker, plan.attach_iterations));
    r.attach = r.record("attach latency", attach);
    if let Some(a) = &r.attach {
        eprintln!(
            "  attach p50 {} p99 {}",
            report::fmt_ns(a.latency.p50),
            report::fmt_ns(a.latency.p99)
        );
    }
    r.many_channels = r.record(
        "many channels",
        control.many_channels(plan.many_channels, plan.list_reps),
    );
    if let Some(m) = &r.many_channels {
        eprintln!(
            "  {} channels: created in {:.3} s, shmemctl list --json {:.1} ms",
            m.channels,
            m.create_secs,
            m.ctl_list_secs * 1e3
        );
    }
    r.many_clients = r.record("many clients", control.many_clients(plan.many_clients));
    if let Some(c) = &r.many_clients {
        eprintln!(
            "  {} clients: broker VmRSS {} KiB",
            c.clients, c.rss_attached.total_kib
        );
    }
    r.activation = r.record(
        "socket activation",
        control.activation(plan.activation_reps),
    );
    if let Some(a) = &r.activation {
        eprintln!(
            "  socket activation: first list {:.1} ms",
            a.first_list_secs * 1e3
        );
    }
}

/// `docs/bench.svg` -> `docs/bench-SLUG-{throughput,latency,scale}.svg`, SLUG the CPU model's
/// (each model's section of BENCHMARKS.md has its own plots).
fn plot_paths(svg: &Path, slug: &str) -> [PathBuf; 3] {
    let stem = svg.with_extension("");
    ["throughput", "latency", "scale"].map(|what| {
        let mut s = stem.clone().into_os_string();
        s.push(format!("-{slug}-{what}.svg"));
        PathBuf::from(s)
    })
}

/// `target` as a link from a file in `from_dir`: relative when it lies below it.
fn link_from(from_dir: &Path, target: &Path) -> String {
    let absolute = |p: &Path| -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir().unwrap_or_default().join(p)
        }
    };
    let (from, to) = (absolute(from_dir), absolute(target));
    to.strip_prefix(&from)
        .map(Path::to_path_buf)
        .unwrap_or(to)
        .display()
        .to_string()
}

fn write_outputs(args: &Args, r: &Results) -> Result<()> {
    let mut plot_links = None;
    if let Some(svg) = &args.svg {
        let [tp, lat, sc] = plot_paths(svg, &sections::slug(&r.machine.cpu_model));
        if let Some(parent) = tp.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        plot::throughput(r, &tp)?;
        plot::latency(r, &lat)?;
        let scale = !r.scale_pairs.is_empty();
        if scale {
            plot::scale(r, &sc)?;
        }
        eprintln!("shmem-bench: wrote {} and {}", tp.display(), lat.display());
        let report_dir = args
            .out
            .as_deref()
            .and_then(Path::parent)
            .unwrap_or(Path::new(""));
        plot_links = Some(report::PlotLinks {
            throughput: link_from(report_dir, &tp),
            latency: link_from(report_dir, &lat),
            scale: scale.then(|| link_from(report_dir, &sc)),
        });
    }
    let rendered = report::render(r, plot_links);
    let model = &r.machine.cpu_model;
    match &args.out {
        Some(path) => {
            // Only this CPU model's section of an existing report is replaced.
            let existing = match fs::read_to_string(path) {
                Ok(text) => Some(text),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
                Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
            };
            let markdown = sections::merge(
                existing.as_deref(),
                &rendered.preamble,
                model,
                &rendered.section,
            );
            fs::write(path, &markdown).with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "shmem-bench: wrote the {model} section of {}",
                path.display()
            );
        }
        None => print!(
            "{}",
            sections::merge(None, &rendered.preamble, model, &rendered.section)
        ),
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(r).context("encoding the results")?;
        fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The command as a user would type it to reproduce this run.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!(
        "cargo run --release -p shmem-broker-bench -- {}",
        args.join(" ")
    )
}
