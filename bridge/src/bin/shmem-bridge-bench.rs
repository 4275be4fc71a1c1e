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

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use zenoh::qos::CongestionControl;
use zenoh::Wait;

const HOST_A: &str = "10.78.0.1";
const HOST_B: &str = "10.78.0.2";
const HEADER: usize = 16;

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

fn now_ns() -> u64 {
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

fn stamp(message: &mut [u8], seq: u64) {
    message[8..16].copy_from_slice(&seq.to_le_bytes());
    message[..8].copy_from_slice(&now_ns().to_le_bytes());
}

fn word(bytes: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(w)
}

/// One run's arrivals.
#[derive(Default)]
struct Tally {
    count: u64,
    bytes: u64,
    first_send: Option<u64>,
    last_recv: u64,
    latencies: Vec<u64>,
}

impl Tally {
    fn add(&mut self, message: &[u8]) {
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

    fn outcome(mut self) -> Outcome {
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
struct Outcome {
    mb_per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

/// Sends `count` messages of `size` bytes through `send`, one every `pace` (none: at once).
fn send_paced(
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

fn pace_for(size: usize) -> Duration {
    if size >= 512 << 10 {
        Duration::from_millis(5)
    } else {
        Duration::from_millis(1)
    }
}

/// How much one measurement moves.
struct Plan {
    quick: bool,
    reps: usize,
}

impl Plan {
    fn throughput_count(&self, size: usize) -> u64 {
        let (bytes, most) = if self.quick {
            (1u64 << 20, 500u64)
        } else {
            (512u64 << 20, 400_000u64)
        };
        (bytes / size as u64).clamp(20, most)
    }

    fn latency_count(&self, size: usize) -> u64 {
        match (self.quick, size >= 512 << 10) {
            (true, _) => 20,
            (false, false) => 2000,
            (false, true) => 400,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Raw Zenoh children (run by `ip netns exec`), driven over stdin/stdout:
//   publisher: prints "ready" once a subscriber matches; then per line "SIZE COUNT PACE_NS"
//              sends, prints "sent".
//   subscriber: prints "ready"; per line "COUNT" prints "armed", then when COUNT arrived
//               "done MB_PER_S P50_US P99_US".

fn zenoh_session(mode_listen: Option<&str>, connect: Option<&str>) -> Result<zenoh::Session> {
    let mut config = zenoh::Config::default();
    let mut set = |key: &str, value: String| {
        config
            .insert_json5(key, &value)
            .map_err(|e| anyhow!("zenoh config {key}: {e}"))
    };
    // As the bridge does with endpoints: peer mode, no multicast scouting.
    set("mode", "\"peer\"".into())?;
    set("scouting/multicast/enabled", "false".into())?;
    if let Some(listen) = mode_listen {
        set("listen/endpoints", format!("[\"{listen}\"]"))?;
    }
    if let Some(connect) = connect {
        set("connect/endpoints", format!("[\"{connect}\"]"))?;
    }
    zenoh::open(config)
        .wait()
        .map_err(|e| anyhow!("open the Zenoh session: {e}"))
}

fn zenoh_pub(listen: &str) -> Result<()> {
    let session = zenoh_session(Some(listen), None)?;
    let publisher = session
        .declare_publisher("bench/raw")
        .congestion_control(CongestionControl::Block)
        .wait()
        .map_err(|e| anyhow!("declare publisher: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let matching = publisher
            .matching_status()
            .wait()
            .map_err(|e| anyhow!("matching status: {e}"))?
            .matching();
        if matching {
            break;
        }
        if Instant::now() > deadline {
            bail!("no subscriber matched within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("ready");
    for line in std::io::stdin().lock().lines() {
        let line = line.context("read a command")?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("command {line:?}"))?;
        let [size, count, pace_ns] = fields[..] else {
            bail!("command {line:?}: want SIZE COUNT PACE_NS");
        };
        let pace = (pace_ns > 0).then(|| Duration::from_nanos(pace_ns));
        send_paced(size as usize, count, pace, |message| {
            publisher
                .put(message.to_vec())
                .wait()
                .map_err(|e| anyhow!("put: {e}"))
        })?;
        println!("sent");
    }
    Ok(())
}

fn zenoh_sub(connect: &str) -> Result<()> {
    let session = zenoh_session(None, Some(connect))?;
    let state: Arc<(Mutex<Tally>, Condvar)> = Arc::default();
    let _subscriber = {
        let state = state.clone();
        session
            .declare_subscriber("bench/raw")
            .callback(move |sample| {
                let payload = sample.payload().to_bytes();
                let mut tally = state.0.lock().unwrap_or_else(|e| e.into_inner());
                tally.add(&payload);
                drop(tally);
                state.1.notify_all();
            })
            .wait()
            .map_err(|e| anyhow!("declare subscriber: {e}"))?
    };
    println!("ready");
    for line in std::io::stdin().lock().lines() {
        let line = line.context("read a command")?;
        let count: u64 = line
            .trim()
            .parse()
            .with_context(|| format!("command {line:?}"))?;
        *state.0.lock().unwrap_or_else(|e| e.into_inner()) = Tally::default();
        println!("armed");
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut tally = state.0.lock().unwrap_or_else(|e| e.into_inner());
        while tally.count < count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("{} of {count} messages within 300 s", tally.count);
            }
            tally = state
                .1
                .wait_timeout(tally, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let outcome = std::mem::take(&mut *tally).outcome();
        drop(tally);
        println!(
            "done {} {} {}",
            outcome.mb_per_s, outcome.p50_us, outcome.p99_us
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The driver.

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
            row.ours.push(ours.measure(size, n, None)?);
            row.zenoh.push(raw.measure(size, n, None)?);
            if let Some(socat) = socat.as_mut() {
                row.socat.push(socat.measure(size, n, None)?);
            }
        }
        let (n, pace) = (plan.latency_count(size), Some(pace_for(size)));
        row.ours_lat = Some(ours.measure(size, n, pace)?);
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

fn command_line() -> String {
    std::env::args()
        .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Default)]
struct Row {
    size: usize,
    ours: Vec<Outcome>,
    zenoh: Vec<Outcome>,
    socat: Vec<Outcome>,
    ours_lat: Option<Outcome>,
    zenoh_lat: Option<Outcome>,
    socat_lat: Option<Outcome>,
}

/// Median, min, max of the throughputs.
fn spread(runs: &[Outcome]) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = runs.iter().map(|o| o.mb_per_s).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some((v[v.len() / 2], v[0], v[v.len() - 1]))
}

fn size_text(size: usize) -> String {
    if size >= 1 << 20 && size % (1 << 20) == 0 {
        format!("{} MiB", size >> 20)
    } else if size >= 1 << 10 && size % (1 << 10) == 0 {
        format!("{} KiB", size >> 10)
    } else {
        format!("{size} B")
    }
}

fn rate_text(s: Option<(f64, f64, f64)>) -> String {
    match s {
        Some((med, lo, hi)) => format!("{med:.0} ({lo:.0}–{hi:.0})"),
        None => "socat not installed".into(),
    }
}

fn lat_text(o: Option<Outcome>) -> String {
    match o {
        Some(o) => format!("{:.0} / {:.0}", o.p50_us, o.p99_us),
        None => "–".into(),
    }
}

/// Ours against the 80 %-of-Zenoh target, with the spread: "within noise" when the ranges
/// allow either answer.
fn verdict(ours: Option<(f64, f64, f64)>, zenoh: Option<(f64, f64, f64)>) -> String {
    let (Some((om, olo, ohi)), Some((zm, zlo, zhi))) = (ours, zenoh) else {
        return "–".into();
    };
    if zm <= 0.0 || zlo <= 0.0 {
        return "–".into();
    }
    let ratio = om / zm;
    let best = ohi / zlo;
    let worst = olo / zhi;
    let call = if worst >= 0.8 {
        "met"
    } else if best < 0.8 {
        "missed"
    } else {
        "within noise"
    };
    format!("{:.0} % ({call})", ratio * 100.0)
}

fn report(plan: &Plan, rows: &[Row], command: &str) -> String {
    let mut out = String::from("## bridge\n\n");
    out.push_str(
        "A channel carried between two hosts simulated by two network namespaces joined by a \
         veth pair (10.78.0.1 and 10.78.0.2), against raw Zenoh publisher-to-subscriber (same \
         Zenoh build, peer mode, blocking congestion control) and `socat` over TCP on the same \
         link, in the same run. Ours: producer -> broker A -> `shmem-bridge export` -> Zenoh -> \
         `shmem-bridge import` -> broker B -> consumer. socat: Unix socket -> `socat` (A) -> \
         TCP -> `socat` (B) -> Unix socket. Throughput: MB/s, median of the repetitions \
         (min–max), messages sent back to back, bytes over last arrival - first send. \
         Latency: one-way, messages paced (1 ms apart, 5 ms for 1 MiB), p50 / p99 in µs.\n\n",
    );
    if plan.quick {
        out.push_str("Smoke run (`--quick`): tiny counts, the numbers are noise.\n\n");
    }
    out.push_str(&format!("Command: `{command}`\n\n"));
    out.push_str(
        "| size | ours MB/s | raw Zenoh MB/s | socat TCP MB/s | ours / Zenoh (target 80 %) | ours p50 / p99 µs | Zenoh p50 / p99 µs | socat p50 / p99 µs |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let (o, z, s) = (spread(&row.ours), spread(&row.zenoh), spread(&row.socat));
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            size_text(row.size),
            rate_text(o),
            rate_text(z),
            rate_text(s),
            verdict(o, z),
            lat_text(row.ours_lat),
            lat_text(row.zenoh_lat),
            lat_text(row.socat_lat),
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Network namespaces and children.

struct Hosts {
    a: String,
    b: String,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("run ip {args:?}"))?;
    if !out.status.success() {
        bail!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Hosts {
    fn new() -> Result<Hosts> {
        let tag = std::process::id();
        let hosts = Hosts {
            a: format!("shbbA{tag}"),
            b: format!("shbbB{tag}"),
        };
        let (va, vb) = (format!("sbba{tag}"), format!("sbbb{tag}"));
        ip(&["netns", "add", &hosts.a])?;
        ip(&["netns", "add", &hosts.b])?;
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])?;
        ip(&["link", "set", &va, "netns", &hosts.a])?;
        ip(&["link", "set", &vb, "netns", &hosts.b])?;
        for (ns, dev, addr) in [
            (&hosts.a, &va, format!("{HOST_A}/24")),
            (&hosts.b, &vb, format!("{HOST_B}/24")),
        ] {
            ip(&["-n", ns, "addr", "add", &addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(hosts)
    }

    fn exec(&self, ns: &str, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(program);
        cmd
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A child killed when dropped.
struct Kid {
    child: Child,
    what: String,
}

impl Kid {
    fn spawn(what: &str, cmd: &mut Command) -> Result<Kid> {
        let child = cmd.spawn().with_context(|| format!("start {what}"))?;
        Ok(Kid {
            child,
            what: what.to_string(),
        })
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_file_text(path: &Path, needle: &str, kid: &mut Kid) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return Ok(());
        }
        if let Some(status) = kid.child.try_wait()? {
            bail!("{} exited ({status}): {text}", kid.what);
        }
        if Instant::now() > deadline {
            bail!("{} did not log {needle:?} within 30 s: {text}", kid.what);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn log_to(path: &Path) -> Result<std::fs::File> {
    std::fs::File::create(path).with_context(|| format!("create {}", path.display()))
}

struct Ours {
    _brokers: [Kid; 2],
    _bridges: [Kid; 2],
    producer: shmem_broker_client::Producer,
    consumer: shmem_broker_client::Consumer,
}

impl Ours {
    fn start(bin_dir: &Path, dir: &Path, hosts: &Hosts) -> Result<Ours> {
        let broker_bin = bin_dir.join("shmem-broker");
        let bridge_bin = bin_dir.join("shmem-bridge");
        let mut brokers = Vec::new();
        let mut clients = Vec::new();
        for name in ["a", "b"] {
            let socket = dir.join(format!("{name}.sock"));
            let config = dir.join(format!("{name}.toml"));
            std::fs::write(&config, "version = 1\n").context("write the broker config")?;
            let mut cmd = Command::new(&broker_bin);
            cmd.arg("--config")
                .arg(&config)
                .arg("--socket")
                .arg(&socket)
                .env_remove("LISTEN_FDS")
                .env_remove("LISTEN_PID")
                .env_remove("NOTIFY_SOCKET")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_to(&dir.join(format!("broker-{name}.log")))?);
            brokers.push(Kid::spawn(&format!("shmem-broker ({name})"), &mut cmd)?);
            let deadline = Instant::now() + Duration::from_secs(10);
            let client = loop {
                match shmem_broker_client::Client::connect(&socket) {
                    Ok(client) => break client,
                    Err(e) if Instant::now() > deadline => {
                        bail!("broker {name} at {}: {e}", socket.display())
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            };
            clients.push(client);
        }
        // Room for several 1 MiB messages in flight on both sides.
        let capacity = 32 << 20;
        clients[0]
            .channel("out")
            .capacity(capacity)
            .create()
            .context("create channel out")?;
        clients[1]
            .channel("in")
            .capacity(capacity)
            .create()
            .context("create channel in")?;
        let listen = format!("tcp/{HOST_A}:7447");
        let export_log = dir.join("export.log");
        let mut export = hosts.exec(&hosts.a, &bridge_bin);
        export
            .args([
                "export",
                "out",
                "--key",
                "bench/bridge",
                "--importer",
                "hostB",
            ])
            .arg("--socket")
            .arg(dir.join("a.sock"))
            .args(["--listen", &listen])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_to(&export_log)?);
        let mut export = Kid::spawn("shmem-bridge export", &mut export)?;
        wait_for_file_text(&export_log, "exporting", &mut export)?;
        let import_log = dir.join("import.log");
        let mut import = hosts.exec(&hosts.b, &bridge_bin);
        import
            .args(["import", "in", "--key", "bench/bridge", "--name", "hostB"])
            .arg("--socket")
            .arg(dir.join("b.sock"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--connect", &listen])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_to(&import_log)?);
        let mut import = Kid::spawn("shmem-bridge import", &mut import)?;
        wait_for_file_text(&import_log, "importing", &mut import)?;
        let producer = clients[0].producer("out").context("attach producer")?;
        let consumer = clients[1].consumer("in").context("attach consumer")?;
        let [a, b]: [Kid; 2] = brokers
            .try_into()
            .map_err(|_| anyhow!("two brokers expected"))?;
        Ok(Ours {
            _brokers: [a, b],
            _bridges: [export, import],
            producer,
            consumer,
        })
    }

    fn measure(&mut self, size: usize, count: u64, pace: Option<Duration>) -> Result<Outcome> {
        let producer = &mut self.producer;
        let consumer = &mut self.consumer;
        std::thread::scope(|scope| {
            let sender = scope.spawn(move || {
                send_paced(size, count, pace, |m| {
                    producer.send(m).context("send into out")
                })
            });
            let mut tally = Tally::default();
            let mut buf = Vec::with_capacity(size);
            while tally.count < count {
                if !consumer.recv_into(&mut buf).context("recv from in")? {
                    bail!("end-of-stream on in");
                }
                tally.add(&buf);
            }
            sender
                .join()
                .map_err(|_| anyhow!("the sender panicked"))??;
            Ok(tally.outcome())
        })
    }
}

/// A child driven by lines on stdin and stdout.
struct Driven {
    kid: Kid,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Driven {
    fn spawn(what: &str, mut cmd: Command) -> Result<Driven> {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut kid = Kid::spawn(what, &mut cmd)?;
        let stdin = kid.child.stdin.take().context("child stdin")?;
        let stdout = BufReader::new(kid.child.stdout.take().context("child stdout")?);
        Ok(Driven { kid, stdin, stdout })
    }

    fn say(&mut self, line: &str) -> Result<()> {
        writeln!(self.stdin, "{line}").with_context(|| format!("tell {}", self.kid.what))
    }

    fn hear(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("{} exited", self.kid.what);
        }
        Ok(line.trim().to_string())
    }

    fn expect(&mut self, word: &str) -> Result<String> {
        let line = self.hear()?;
        if !line.starts_with(word) {
            bail!("{} said {line:?}, expected {word:?}", self.kid.what);
        }
        Ok(line)
    }
}

struct RawZenoh {
    publisher: Driven,
    subscriber: Driven,
}

impl RawZenoh {
    fn start(hosts: &Hosts) -> Result<RawZenoh> {
        let me = std::env::current_exe().context("find this binary")?;
        let endpoint = format!("tcp/{HOST_A}:7448");
        let mut cmd = hosts.exec(&hosts.a, &me);
        cmd.args(["__zenoh-pub", &endpoint]);
        let publisher = Driven::spawn("zenoh publisher", cmd)?;
        std::thread::sleep(Duration::from_millis(300));
        let mut cmd = hosts.exec(&hosts.b, &me);
        cmd.args(["__zenoh-sub", &endpoint]);
        let mut subscriber = Driven::spawn("zenoh subscriber", cmd)?;
        subscriber.expect("ready")?;
        let mut raw = RawZenoh {
            publisher,
            subscriber,
        };
        raw.publisher.expect("ready")?;
        Ok(raw)
    }

    fn measure(&mut self, size: usize, count: u64, pace: Option<Duration>) -> Result<Outcome> {
        self.subscriber.say(&count.to_string())?;
        self.subscriber.expect("armed")?;
        let pace_ns = pace.map_or(0, |p| p.as_nanos() as u64);
        self.publisher.say(&format!("{size} {count} {pace_ns}"))?;
        self.publisher.expect("sent")?;
        let done = self.subscriber.expect("done")?;
        let numbers: Vec<f64> = done
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("subscriber said {done:?}"))?;
        let [mb_per_s, p50_us, p99_us] = numbers[..] else {
            bail!("subscriber said {done:?}");
        };
        Ok(Outcome {
            mb_per_s,
            p50_us,
            p99_us,
        })
    }
}

struct Socat {
    _relays: [Kid; 2],
    send: UnixStream,
    recv: UnixStream,
}

impl Socat {
    fn start(bin: &Path, dir: &Path, hosts: &Hosts) -> Result<Socat> {
        let out_path = dir.join("socat-out.sock");
        let in_path = dir.join("socat-in.sock");
        let listener = UnixListener::bind(&out_path).context("bind the receiving socket")?;
        // Host B: TCP in, Unix socket out (to this process).
        let mut b = hosts.exec(&hosts.b, bin);
        b.args(["-u", "-b", "1048576"])
            .arg("TCP-LISTEN:7449,reuseaddr,nodelay")
            .arg(format!("UNIX-CONNECT:{}", out_path.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let b = Kid::spawn("socat (B)", &mut b)?;
        // Host A: Unix socket in (from this process), TCP out.
        let mut a = hosts.exec(&hosts.a, bin);
        a.args(["-u", "-b", "1048576"])
            .arg(format!("UNIX-LISTEN:{}", in_path.display()))
            .arg(format!("TCP:{HOST_B}:7449,nodelay,retry=50,interval=0.1"))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let a = Kid::spawn("socat (A)", &mut a)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let send = loop {
            match UnixStream::connect(&in_path) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => bail!("socat (A) not listening: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let (recv, _) = listener.accept().context("accept socat (B)")?;
        Ok(Socat {
            _relays: [a, b],
            send,
            recv,
        })
    }

    fn measure(&mut self, size: usize, count: u64, pace: Option<Duration>) -> Result<Outcome> {
        let send = &mut self.send;
        let recv = &mut self.recv;
        std::thread::scope(|scope| {
            let sender = scope.spawn(move || {
                send_paced(size, count, pace, |m| {
                    send.write_all(m).context("write to socat")
                })
            });
            let mut tally = Tally::default();
            let mut buf = vec![0u8; size];
            while tally.count < count {
                recv.read_exact(&mut buf).context("read from socat")?;
                tally.add(&buf);
            }
            sender
                .join()
                .map_err(|_| anyhow!("the sender panicked"))??;
            Ok(tally.outcome())
        })
    }
}
