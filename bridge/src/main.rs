//! `shmem-bridge`: carries shmem-broker channels between hosts over Zenoh.
//!
//! ```text
//! shmem-bridge export CHANNEL --key KEYEXPR [--socket PATH] [--connect ENDPOINT | --listen ENDPOINT]
//! shmem-bridge import --key KEYEXPR CHANNEL [--socket PATH] [--connect ENDPOINT | --listen ENDPOINT]
//! shmem-bridge --config /etc/shmem-broker/bridge.toml
//! shmem-bridge router --listen ENDPOINT         # a minimal Zenoh router, where zenohd is not installed
//! ```
//!
//! The exporter is an ordinary consumer of its channel and the importer an ordinary producer
//! (`shmemctl list` shows them). What goes over the wire and the delivery guarantee are in
//! [`wire`], [`export`], [`import`] and [`state`]; the README's "Between hosts" section sums
//! them up.

mod auth;
mod buffers;
mod config;
mod doorbell;
mod export;
mod import;
mod state;
mod wire;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use shmem_broker_client::{discovery, Client, Error as ClientError};
use shmem_broker_daemon::config::LogFormat;
use shmem_broker_daemon::logging;
use slog::{error, info, warn, Logger};
use zenoh::Wait;

use export::ExportSpec;
use import::ImportSpec;

#[derive(Parser)]
#[command(
    name = "shmem-bridge",
    version,
    about = "Carry shmem-broker channels between hosts over Zenoh"
)]
struct Cli {
    /// Run the [[export]] and [[import]] tables of this file (see bridge/README.md).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// trace, debug, info, warn or error (default: the config's, else info).
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,
    /// term or json (default: the config's, else term).
    #[arg(long, global = true, value_name = "FORMAT")]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Args, Clone, Default)]
struct Net {
    /// The broker's control socket (default: as shmemctl finds it).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Zenoh endpoint to connect to, like tcp/192.0.2.1:7447 (repeatable).
    #[arg(long, value_name = "ENDPOINT")]
    connect: Vec<String>,
    /// Zenoh endpoint to listen on, like tcp/0.0.0.0:7447 (repeatable).
    #[arg(long, value_name = "ENDPOINT")]
    listen: Vec<String>,
    /// Zenoh mode: peer (default) or client (through a router).
    #[arg(long, value_name = "MODE", value_parser = ["peer", "client"])]
    mode: Option<String>,
    /// Shared key (16+ bytes, mode 0600) authenticating every item and ack with HMAC-SHA256;
    /// samples failing it are dropped and reported. Give the same file to both sides.
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Consume CHANNEL and publish each message on KEYEXPR.
    Export {
        channel: String,
        #[arg(long, value_name = "KEYEXPR")]
        key: String,
        /// An importer to wait for even while it is away, like a durable consumer (repeatable).
        #[arg(long = "importer", value_name = "NAME")]
        importers: Vec<String>,
        #[command(flatten)]
        net: Net,
    },
    /// Subscribe to KEYEXPR and produce each message into CHANNEL.
    Import {
        channel: String,
        #[arg(long, value_name = "KEYEXPR")]
        key: String,
        /// This importer's name, which exporters may wait for (default: HOSTNAME.CHANNEL).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Create CHANNEL with this capacity (like 16MiB) if it does not exist.
        #[arg(long, value_name = "SIZE")]
        create: Option<String>,
        /// Where the importer keeps its record (default: $STATE_DIRECTORY, else
        /// /var/lib/shmem-bridge as root, else $XDG_STATE_HOME/shmem-bridge).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        #[command(flatten)]
        net: Net,
    },
    /// Run a Zenoh router (for setups without zenohd).
    Router {
        #[arg(long, value_name = "ENDPOINT", required = true)]
        listen: Vec<String>,
        #[arg(long, value_name = "ENDPOINT")]
        connect: Vec<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("shmem-bridge: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let file = match &cli.config {
        Some(path) => Some(config::load(path)?),
        None => None,
    };
    let level = match (&cli.log_level, file.as_ref().and_then(|f| f.level)) {
        (Some(text), _) => text
            .parse()
            .map_err(|_| anyhow::anyhow!("unknown log level {text:?}"))?,
        (None, Some(level)) => level,
        (None, None) => slog::Level::Info,
    };
    let format = match (&cli.log_format, file.as_ref().and_then(|f| f.format)) {
        (Some(text), _) => text.parse().map_err(anyhow::Error::msg)?,
        (None, Some(format)) => format,
        (None, None) => LogFormat::Term,
    };
    let (log, _budget) = logging::build(level, format);
    // Zenoh's own logs (tracing), to stderr when RUST_LOG asks for them.
    zenoh::try_init_log_from_env();
    stop_on_signals(&log)?;

    match (cli.command, file) {
        (Some(_), Some(_)) => anyhow::bail!("give either --config or a command, not both"),
        (None, None) => anyhow::bail!(
            "nothing to do: give a command (export, import, router) or --config; see --help"
        ),
        (None, Some(file)) => run_config(file, &log),
        (Some(Command::Router { listen, connect }), None) => {
            let net = Net {
                listen,
                connect,
                ..Net::default()
            };
            let _session = open_session(&net, "router", Receives::Control, Sends::Control, &log)?;
            info!(log, "zenoh router running"; "listen" => net.listen.join(","));
            loop {
                std::thread::park();
            }
        }
        (
            Some(Command::Export {
                channel,
                key,
                importers,
                net,
            }),
            None,
        ) => {
            wire::check_key(&key).map_err(anyhow::Error::msg)?;
            for name in &importers {
                wire::check_name(name).map_err(anyhow::Error::msg)?;
            }
            let auth = load_auth(net.key_file.as_deref(), &log)?;
            let session = open_session(
                &net,
                net.mode.as_deref().unwrap_or("peer"),
                Receives::Control,
                Sends::Messages,
                &log,
            )?;
            let spec = ExportSpec {
                channel,
                key,
                importers,
            };
            export::run(
                &session,
                &socket_path(net.socket),
                &spec,
                auth.as_ref(),
                &log,
            )
        }
        (
            Some(Command::Import {
                channel,
                key,
                name,
                create,
                state_dir,
                net,
            }),
            None,
        ) => {
            wire::check_key(&key).map_err(anyhow::Error::msg)?;
            let name = name.unwrap_or_else(|| default_importer_name(&channel));
            wire::check_name(&name).map_err(anyhow::Error::msg)?;
            let create_capacity = create
                .map(|text| shmem_broker_client::size::parse_size(&text))
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let auth = load_auth(net.key_file.as_deref(), &log)?;
            let session = open_session(
                &net,
                net.mode.as_deref().unwrap_or("peer"),
                Receives::Messages,
                Sends::Control,
                &log,
            )?;
            let spec = ImportSpec {
                key,
                channel,
                name,
                create_capacity,
            };
            let state_dir = state_dir.unwrap_or_else(default_state_dir);
            import::run(
                &session,
                &socket_path(net.socket),
                &state_dir,
                &spec,
                auth.as_ref(),
                &log,
            )
        }
    }
}

/// Every export and import on its own thread, over one Zenoh session; one that fails is
/// logged and started again a second later (the broker may be restarting, a channel may be
/// made again), as a service should.
fn run_config(file: config::Config, log: &Logger) -> anyhow::Result<()> {
    let net = Net {
        socket: file.socket.clone(),
        connect: file.connect.clone(),
        listen: file.listen.clone(),
        mode: file.mode.clone(),
        key_file: file.key_file.clone(),
    };
    let auth = load_auth(net.key_file.as_deref(), log)?;
    let auth = auth.as_ref();
    let receives = if file.imports.is_empty() {
        Receives::Control
    } else {
        Receives::Messages
    };
    let sends = if file.exports.is_empty() {
        Sends::Control
    } else {
        Sends::Messages
    };
    let session = open_session(
        &net,
        net.mode.as_deref().unwrap_or("peer"),
        receives,
        sends,
        log,
    )?;
    let socket = socket_path(net.socket);
    let state_dir = file.state_dir.clone().unwrap_or_else(default_state_dir);
    std::thread::scope(|scope| {
        for spec in &file.exports {
            let (session, socket, log) = (&session, &socket, log.clone());
            scope.spawn(move || loop {
                if let Err(e) = export::run(session, socket, spec, auth, &log) {
                    error!(log, "export stopped; starting it again in 1 s"; "channel" => &spec.channel, "error" => format!("{e:#}"));
                }
                std::thread::sleep(Duration::from_secs(1));
            });
        }
        for spec in &file.imports {
            let (session, socket, state_dir, log) = (&session, &socket, &state_dir, log.clone());
            scope.spawn(move || loop {
                if let Err(e) = import::run(session, socket, state_dir, spec, auth, &log) {
                    error!(log, "import stopped; starting it again in 1 s"; "channel" => &spec.channel, "error" => format!("{e:#}"));
                }
                std::thread::sleep(Duration::from_secs(1));
            });
        }
    });
    Ok(())
}

/// The shared key, if a key file is given; without one, says that anyone who can publish on
/// the keys can inject or forge.
fn load_auth(path: Option<&Path>, log: &Logger) -> anyhow::Result<Option<Arc<auth::Auth>>> {
    match path {
        Some(path) => {
            let auth =
                auth::Auth::load(path).with_context(|| format!("key file {}", path.display()))?;
            info!(log, "items and acks authenticated (HMAC-SHA256)"; "key_file" => %path.display());
            Ok(Some(Arc::new(auth)))
        }
        None => {
            warn!(log, "no key file: anyone who can publish on the Zenoh keys can inject messages or forge positions (see --key-file)");
            Ok(None)
        }
    }
}

fn socket_path(explicit: Option<PathBuf>) -> PathBuf {
    discovery::client_socket_path(explicit)
}

/// Set by SIGTERM/SIGINT: exporters and importers take no new work.
static STOPPING: AtomicBool = AtomicBool::new(false);
/// Exporters holding published, unreleased items and importers storing a run of items.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// How long a stop waits for work in flight (an importer that never acks would hold it).
const DRAIN: Duration = Duration::from_secs(10);

/// A piece of work the process finishes before it stops; see [`begin_work`].
pub struct Work(());

impl Drop for Work {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Starts a piece of work (an exporter's items in flight, an importer's run), or `None` once the process
/// is stopping: the caller then takes nothing new and waits to be ended. The count goes up
/// before the flag is read and the signal thread sets the flag before reading the count (both
/// SeqCst): either the work is refused or the stop waits for it.
pub fn begin_work() -> Option<Work> {
    IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
    let work = Work(());
    (!STOPPING.load(Ordering::SeqCst)).then_some(work)
}

/// Whether a stop signal came.
pub fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

/// Parks the calling thread for good: the signal thread ends the process.
pub fn wait_for_the_end() -> ! {
    loop {
        std::thread::park();
    }
}

/// SIGTERM and SIGINT drain, then exit 0: no exporter reads a new item and no importer takes
/// a new one; an exporter's items in flight are confirmed by its importers and released from
/// its ring, an importer's items taken are stored and acked; at most [`DRAIN`], then exit
/// anyway (what was in flight is sent again by the next run: the exporter releases nothing
/// its importers do not hold, and the importer records each run before storing it, so
/// stopping anywhere is as safe as a SIGKILL). A second signal exits at once.
fn stop_on_signals(log: &Logger) -> anyhow::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT])
        .context("install signal handlers")?;
    let log = log.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let Some(signal) = signals.forever().next() else {
                return;
            };
            info!(log, "stopping: finishing the work in flight"; "signal" => signal);
            STOPPING.store(true, Ordering::SeqCst);
            let deadline = Instant::now() + DRAIN;
            while IN_FLIGHT.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
                if signals.pending().next().is_some() {
                    warn!(log, "second signal: stopping at once");
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            match IN_FLIGHT.load(Ordering::SeqCst) {
                0 => info!(log, "stopped: drained"),
                left => warn!(log, "stopped with work in flight (the next run sends it again)"; "in_flight" => left),
            }
            std::process::exit(0);
        })
        .context("start the signal thread")?;
    Ok(())
}

fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_list(items: &[String]) -> String {
    format!(
        "[{}]",
        items
            .iter()
            .map(|i| json_string(i))
            .collect::<Vec<_>>()
            .join(",")
    )
}

/// Zenoh's receive buffer pool per link of a session that imports (see `open_session`):
/// twice the importer's queue.
const RX_BUFFER_BYTES: usize = 2 * import::QUEUE_BYTES;
/// Sessions (peers, routers) an importing or exporting bridge's Zenoh session links with at
/// most. An importer's link sets up its receive pool when it opens (2.2 MiB of resident memory
/// per session, measured); an exporter's link may queue [`TX_QUEUE_BATCHES`] batches for a
/// peer that subscribes and stops reading (512 KiB each, besides the kernel's socket buffers).
/// Anyone who can reach the port could otherwise grow either by that per connection, up to
/// Zenoh's default of 1000 sessions. Sixteen is plenty for a bridge: behind a router it has
/// one, in peer mode one per remote bridge.
const MAX_BRIDGE_SESSIONS: usize = 16;

/// Batches (64 KiB each) a link of an exporting session may queue for sending, of Zenoh's
/// data priority (Zenoh's default: 2, at most 16). A 1 MiB message goes out in 17 batches:
/// with 2, the exporter's thread waits for the link's transmit task for nearly every batch, a
/// wake-up each way per 64 KiB (the exporter spent 1.35-1.75 CPU s per GiB at 1 MiB, measured
/// with `shmem-bridge-bench`); with 8, 0.98-1.05 (16 did no better). Batches are allocated
/// when first needed: up to 512 KiB per link that falls behind, where Zenoh's default holds
/// 128 KiB.
const TX_QUEUE_BATCHES: usize = 8;

/// What a session receives: an exporter or router only acks and control (Zenoh's defaults),
/// an importer the messages themselves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Receives {
    Control,
    Messages,
}

/// What a session sends: an importer or router only acks, control and what it forwards
/// (Zenoh's defaults), an exporter the messages themselves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sends {
    Control,
    Messages,
}

fn open_session(
    net: &Net,
    mode: &str,
    receives: Receives,
    sends: Sends,
    log: &Logger,
) -> anyhow::Result<zenoh::Session> {
    let mut config = zenoh::Config::default();
    let set = |config: &mut zenoh::Config, key: &str, value: String| {
        config
            .insert_json5(key, &value)
            .map_err(|e| anyhow::anyhow!("zenoh config {key} = {value}: {e}"))
    };
    set(&mut config, "mode", json_string(mode))?;
    // Zenoh's receive buffers (one per 64 KiB batch) come from a pool of this many bytes per
    // link, else are allocated and zeroed afresh. The default pool holds one buffer, and an
    // importer keeps a large message's fragments until they are in its ring (its queue bound,
    // 8 MiB): with the default, every batch received would be new pages for the kernel to
    // fault in and zero.
    if receives == Receives::Messages {
        set(
            &mut config,
            "transport/link/rx/buffer_size",
            RX_BUFFER_BYTES.to_string(),
        )?;
    }
    if sends == Sends::Messages {
        set(
            &mut config,
            "transport/link/tx/queue/size/data",
            TX_QUEUE_BATCHES.to_string(),
        )?;
    }
    if receives == Receives::Messages || sends == Sends::Messages {
        set(
            &mut config,
            "transport/unicast/max_sessions",
            MAX_BRIDGE_SESSIONS.to_string(),
        )?;
    }
    if net.connect.is_empty() && net.listen.is_empty() {
        info!(
            log,
            "no Zenoh endpoint given: using Zenoh's defaults (peer mode, multicast scouting)"
        );
    } else {
        // Endpoints given: talk to those only, no multicast scouting on the local networks.
        set(&mut config, "scouting/multicast/enabled", "false".into())?;
        // Zenoh's defaults stay where nothing is given (a peer also listens on a port of its
        // own, which the router's gossip tells other peers, so that peers link up directly).
        if !net.connect.is_empty() {
            set(&mut config, "connect/endpoints", json_list(&net.connect))?;
        }
        if !net.listen.is_empty() {
            set(&mut config, "listen/endpoints", json_list(&net.listen))?;
        }
    }
    let session = zenoh::open(config)
        .wait()
        .map_err(|e| anyhow::anyhow!("open the Zenoh session: {e}"))?;
    info!(log, "zenoh session open"; "mode" => mode, "zid" => %session.zid(),
          "connect" => net.connect.join(","), "listen" => net.listen.join(","));
    Ok(session)
}

/// `HOSTNAME.CHANNEL`, with anything a key chunk may not hold replaced by `_`.
pub fn default_importer_name(channel: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}.{channel}", host.trim())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':') {
                c
            } else {
                '_'
            }
        })
        .take(128)
        .collect()
}

fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY").filter(|d| !d.is_empty()) {
        // systemd's StateDirectory=: the first of a colon-separated list.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string();
        return PathBuf::from(first);
    }
    if rustix_is_root() {
        return PathBuf::from("/var/lib/shmem-bridge");
    }
    match std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        Some(dir) => Path::new(&dir).join("shmem-bridge"),
        None => Path::new(&std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
            .join(".local/state/shmem-bridge"),
    }
}

fn rustix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Connects to the broker, trying again every second while it is not there.
pub fn connect_retrying(socket: &Path, log: &Logger) -> Client {
    let mut said = String::new();
    loop {
        match Client::connect(socket) {
            Ok(client) => return client,
            Err(e) => {
                let text = e.to_string();
                if text != said {
                    warn!(log, "cannot reach the broker yet; trying again every second"; "error" => &text);
                    said = text;
                }
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Attaches, trying again every half second while the broker says no for a reason that may
/// pass (no such channel yet, busy, broker restarting). Other errors are returned.
pub fn attach_retrying<T>(
    log: &Logger,
    role: &str,
    mut attach: impl FnMut() -> Result<T, ClientError>,
) -> anyhow::Result<T> {
    let mut said = String::new();
    loop {
        match attach() {
            Ok(endpoint) => return Ok(endpoint),
            Err(
                e @ (ClientError::Broker { .. }
                | ClientError::BrokerNotRunning { .. }
                | ClientError::Io { .. }),
            ) => {
                let text = e.to_string();
                if text != said {
                    warn!(log, "cannot attach yet; trying again"; "role" => role, "error" => &text);
                    said = text;
                }
            }
            Err(e) => return Err(e).context(format!("attach as {role}")),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
