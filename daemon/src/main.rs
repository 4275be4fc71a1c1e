//! `shmem-broker`: the daemon that hands out named shared-memory channels.
//!
//! This file is the launcher: flags, config, logging and the control socket (systemd's or our
//! own). The broker core behind it lives in the library (`lib.rs`): socket -> session ->
//! registry -> channel -> ring, driven by the single-threaded event loop in `server`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use slog::{crit, Level};

use shmem_broker_daemon::config::{parse_level, Config, LogFormat};
use shmem_broker_daemon::fdstore::FdStore;
use shmem_broker_daemon::listener::ControlSocket;
use shmem_broker_daemon::logging::PeerLogBudget;
use shmem_broker_daemon::registry::Registry;
use shmem_broker_daemon::server::{fds_wanted, Server};
use shmem_broker_proto::ring::{SharedRing, MIN_CAPACITY};
use shmem_broker_proto::wire::Role;

/// Broker for named shared-memory channels between processes on one machine.
#[derive(Parser, Debug)]
#[command(name = "shmem-broker", version, about)]
struct Args {
    /// Config file [default: /etc/shmem-broker/shmem-broker.toml if it exists, else built-in defaults]
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Control socket to bind when not socket-activated [default: the config's `socket`, else
    /// /run/shmem-broker/control.sock as root, $XDG_RUNTIME_DIR/shmem-broker/control.sock otherwise]
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Validate the config, print the problem if any, and exit (1 if invalid, 0 if fine)
    #[arg(long)]
    check_config: bool,
    /// Lowest level logged: trace, debug, info, warn, error, critical [default: the config's, else info]
    #[arg(long, value_name = "LEVEL", value_parser = parse_level)]
    log_level: Option<Level>,
    /// term (human) or json (one object per line) [default: the config's, else term]
    #[arg(long, value_name = "FORMAT", value_parser = clap::builder::ValueParser::new(|s: &str| s.parse::<LogFormat>()))]
    log_format: Option<LogFormat>,
    /// Print the shmem-broker(8) man page (roff) and exit: the Debian package generates it
    /// at build time from these very definitions
    #[arg(long, hide = true)]
    man: bool,
}

/// Writes shmem-broker(8) on standard output.
fn print_man() -> ExitCode {
    use clap::CommandFactory;
    use std::io::Write;
    let mut page = Vec::new();
    let rendered = clap_mangen::Man::new(Args::command())
        .section("8")
        .manual("shmem-broker")
        .render(&mut page);
    let mut stdout = std::io::stdout().lock();
    match rendered.and_then(|()| stdout.write_all(&page).and_then(|()| stdout.flush())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shmem-broker: writing the man page: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.man {
        return print_man();
    }
    let config = match Config::discover(args.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("shmem-broker: invalid config: {err}");
            return ExitCode::FAILURE;
        }
    };
    if args.check_config {
        let source = config
            .source
            .as_ref()
            .map_or("built-in defaults".to_string(), |p| p.display().to_string());
        println!("config OK: {source} ({} channels)", config.channels.len());
        return ExitCode::SUCCESS;
    }
    let level = args.log_level.or(config.log_level).unwrap_or(Level::Info);
    let format = args
        .log_format
        .or(config.log_format)
        .unwrap_or(LogFormat::Term);
    let (log, log_budget) = shmem_broker_daemon::logging::build(level, format);
    match run(&args, config, &log, log_budget) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            crit!(log, "{}", message);
            // Also plainly on stderr in case the log level or format hides it.
            eprintln!("shmem-broker: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    args: &Args,
    config: Config,
    log: &slog::Logger,
    log_budget: PeerLogBudget,
) -> Result<(), String> {
    raise_fd_limit(log, &config);
    check_read_only_reopen()?;
    let socket_path = args.socket.clone().or_else(|| config.socket.clone());
    let (control, stored) = ControlSocket::open(socket_path, config.socket_mode)?;
    if !control.refuses_passed_fds {
        slog::info!(log, "this kernel cannot refuse fds sent to the broker (SO_PASSRIGHTS needs Linux 6.16); they are accepted and closed off the event loop");
    }
    let mut registry = Registry::new(&config, FdStore::new(log.clone()), log.clone());
    registry.restore(stored);
    registry
        .apply_config(&config)
        .map_err(|e| format!("cannot create configured channels: {e}"))?;
    let mut server = Server::new(
        control,
        registry,
        args.config.clone(),
        &config,
        log.clone(),
        log_budget,
    )
    .map_err(|e| format!("cannot start event loop: {e}"))?;
    server.run().map_err(|e| format!("event loop failed: {e}"))
}

/// Each side of a ring gets the other side's memfd read-only, which the broker can only make by
/// reopening the memfd through `/proc/self/fd`. Where /proc is not mounted in the broker's
/// namespace every attach would fail with an obscure I/O error, so find out once, at start-up,
/// by sharing a throw-away ring the way an attach does, and name the cause.
fn check_read_only_reopen() -> Result<(), String> {
    let (_ring, files) = SharedRing::create("start-up check", MIN_CAPACITY)
        .map_err(|e| format!("cannot create a ring memfd: {e}"))?;
    files.share(Some(Role::Consumer)).map_err(|e| {
        format!(
            "cannot hand out ring memfds read-only: reopening one through /proc/self/fd failed \
             ({e}); the broker needs the proc file system mounted on /proc in its mount namespace"
        )
    })?;
    Ok(())
}

/// Every attach costs a few fds for a moment, every client one and every channel up to four for
/// its life, so take the whole hard limit the administrator allows rather than the 1024 soft
/// default, log what the limit is, and warn when it is below what the config's `max_clients`
/// and `max_channels` may need (clients are then refused for lack of fds before the quotas).
fn raise_fd_limit(log: &slog::Logger, config: &Config) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    let before = limit.current;
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(err) = setrlimit(Resource::Nofile, raised) {
            slog::warn!(log, "cannot raise RLIMIT_NOFILE to its hard limit"; "error" => %err);
        }
    }
    let show = |n: Option<u64>| n.map_or("unlimited".to_string(), |n| n.to_string());
    let now = getrlimit(Resource::Nofile).current;
    let wanted = fds_wanted(config.max_clients, config.max_channels);
    slog::info!(log, "file descriptor limit"; "RLIMIT_NOFILE" => show(now),
        "was" => show(before), "hard" => show(limit.maximum), "wanted" => wanted);
    if now.is_some_and(|n| n < wanted as u64) {
        slog::warn!(log, "RLIMIT_NOFILE is below what max_clients and max_channels may need: \
            clients and channels will be refused for lack of fds first; raise the hard limit \
            (LimitNOFILE= in the systemd unit, or ulimit -Hn)";
            "RLIMIT_NOFILE" => show(now), "wanted" => wanted,
            "max_clients" => config.max_clients, "max_channels" => config.max_channels);
    }
}
