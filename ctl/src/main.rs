//! `shmemctl`: look at and manage a running shmem-broker, and pipe data through its channels.
//!
//! One job per file: `main.rs` the command line, `pipe.rs` send and recv, `show.rs` the text
//! and JSON output, `report.rs` how errors are said and which exit code they give; `top.rs`,
//! `metrics.rs` (with `serve.rs`, its HTTP endpoint) and `progress.rs` the live view, the
//! Prometheus output and the progress bars, from the looks `snapshot.rs` takes; `record.rs`
//! record and replay, `docs.rs` shell completions and the man page.

mod docs;
mod metrics;
mod pipe;
mod progress;
mod record;
mod report;
mod serve;
mod show;
mod snapshot;
mod top;

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use shmem_broker_client::discovery::client_socket_path;
use shmem_broker_client::names::validate_consumer_name;
use shmem_broker_client::size::{format_size, parse_size};
use shmem_broker_client::wire::ChannelList;
use shmem_broker_client::{ChannelInfo, Client, SlowConsumer};

use report::StdoutError;

/// Control a shmem-broker: list, create and drop channels, inspect them, send and receive data.
///
/// Sizes take binary units only: 4096, 64KiB (or 64K), 16MiB, 1GiB; SI units (16MB) and
/// decimals (1.5GiB) are refused. Exit codes: 0 success, 1 error (one line on stderr), 2 bad
/// command line, 3 recv lost producers' streams, 130/143 send or recv interrupted by
/// SIGINT/SIGTERM.
#[derive(Parser, Debug)]
#[command(name = "shmemctl", version, about)]
struct Args {
    /// Broker socket [default: $SHMEM_BROKER_SOCKET, else the broker's default path]
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// One row per channel: capacity, attached producers and consumers (attached/max),
    /// traffic and fill level
    List {
        /// Print JSON (`{"channels": [...]}`, the fields of `info --json`) instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Create a channel owned by you (needs root or an admin group)
    Create {
        /// Channel name: 1-64 of A-Z a-z 0-9 . _ -, not starting with - or .
        name: String,
        /// Ring size, like 64KiB or 16MiB [default: the broker's default_capacity]
        #[arg(long, value_parser = parse_size)]
        capacity: Option<u64>,
        /// Who else may produce: comma-separated `*`, user, uid, @group, @gid
        #[arg(long, value_delimiter = ',')]
        producers: Vec<String>,
        /// Who else may consume: comma-separated `*`, user, uid, @group, @gid
        #[arg(long, value_delimiter = ',')]
        consumers: Vec<String>,
        /// Producers attached at once, each with its own rings (1 to 64) [default: 1]
        #[arg(long, value_name = "N")]
        max_producers: Option<u32>,
        /// Consumers attached at once, each receiving every message (1 to 64) [default: 1]
        #[arg(long, value_name = "N")]
        max_consumers: Option<u32>,
        /// What a full consumer ring does: block (the producer waits), drop (that consumer
        /// loses the message) or disconnect (that consumer is detached) [default: block]
        #[arg(long, value_name = "POLICY")]
        slow_consumer: Option<SlowConsumer>,
    },
    /// Drop a channel (attached clients get a "channel dropped" error), or with --consumer
    /// one durable consumer of it and its unread messages
    Drop {
        /// The channel to drop
        name: String,
        /// The durable consumer to forget instead of the whole channel
        #[arg(long, value_name = "NAME")]
        consumer: Option<String>,
    },
    /// A channel's details and attached peers (with their pids)
    Info {
        /// The channel to describe
        name: String,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Print what happens at the broker as it happens, one line each: attaches, detaches,
    /// drops, evictions, losses and config reloads (admins see every channel, others those
    /// they may attach to or own)
    Monitor {
        /// Only this channel's events
        name: Option<String>,
        /// Print one JSON object per line instead of text
        #[arg(long)]
        json: bool,
    },
    /// The broker's version, uptime, socket, config and counts
    Status {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Send standard input into a channel as its producer, then mark end-of-stream. If it
    /// fails or is interrupted it leaves no mark, and the receiver learns the stream is cut.
    Send {
        /// The channel to send into
        name: String,
        /// Largest message to cut the input into (at least 1) [default: min(1MiB, a quarter
        /// of the ring)]
        #[arg(long, value_parser = nonzero_size)]
        chunk: Option<u64>,
        /// Skip this many bytes of standard input first (to resume an interrupted send)
        #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "0")]
        skip: u64,
        /// Say on stderr whom the sender waits for when the ring stays full (always on when
        /// stderr is a terminal)
        #[arg(long, short)]
        verbose: bool,
        /// Show the progress bar (bytes, rate, ETA when standard input is a file) on stderr
        /// even when it is no terminal (on a terminal it is always shown)
        #[arg(long)]
        progress: bool,
    },
    /// Write a channel's messages to standard output until end-of-stream. A stream that ends
    /// without its mark (the producer failed, was interrupted or killed) is an error.
    Recv {
        /// The channel to receive from
        name: String,
        /// Keep waiting for the next producer after an end-of-stream mark (or a producer
        /// that went away)
        #[arg(long)]
        follow: bool,
        /// Attach as the durable consumer NAME: the broker keeps its queue while it is away
        /// and it resumes where it stopped (channels with max_consumers > 1)
        #[arg(long = "as", value_name = "NAME")]
        durable: Option<String>,
        /// Stop after this many end-of-stream marks (one per producer that closes)
        #[arg(long, value_name = "N", default_value_t = 1, conflicts_with = "follow",
              value_parser = clap::value_parser!(u64).range(1..))]
        streams: u64,
        /// Stop after writing this many bytes (the rest of the message that crosses the limit
        /// is consumed all the same)
        #[arg(long, value_name = "N", value_parser = nonzero_size)]
        max_bytes: Option<u64>,
        /// Show the progress bar (bytes, rate, ETA with --max-bytes) on stderr even when it
        /// is no terminal (on a terminal it is always shown)
        #[arg(long)]
        progress: bool,
    },
    /// Record a channel's messages into FILE, keeping their boundaries, receive times and
    /// producers (format: docs/record-format.md), until end-of-stream
    Record {
        /// The channel to record
        name: String,
        /// The recording to write (replaced if it exists)
        file: PathBuf,
        /// Stop after this many end-of-stream marks (one per producer that closes)
        #[arg(long, value_name = "N", default_value_t = 1, conflicts_with = "follow",
              value_parser = clap::value_parser!(u64).range(1..))]
        streams: u64,
        /// Keep recording until interrupted (SIGINT/SIGTERM end it at a record boundary)
        #[arg(long)]
        follow: bool,
    },
    /// Send the messages of a recording into a channel as its producer, then mark
    /// end-of-stream. A malformed or truncated file stops the replay with an error and no mark.
    Replay {
        /// The recording to read
        file: PathBuf,
        /// The channel to send into
        name: String,
        /// Send at most this many messages per second, like 1000/s [default: as fast as the
        /// channel takes them]
        #[arg(long, value_name = "N/s", value_parser = record::parse_rate,
              conflicts_with = "as_recorded")]
        rate: Option<u32>,
        /// Keep the gaps between the messages' receive times in the recording
        #[arg(long)]
        as_recorded: bool,
    },
    /// Print a completion script for SHELL on standard output (see the README for where it goes)
    Completions {
        /// bash, zsh or fish (also elvish, powershell)
        shell: clap_complete::Shell,
    },
    /// Print the shmemctl(1) man page (roff) on standard output, or shmemctl-SUBCOMMAND(1);
    /// `--list` names the subcommands. The Debian package runs this at build time.
    #[command(hide = true)]
    Man {
        /// The subcommand whose page to print
        subcommand: Option<String>,
        /// Print the subcommands that have a page, one a line
        #[arg(long, conflicts_with = "subcommand")]
        list: bool,
    },
    /// Live view of every channel, refreshed each interval: producers and consumers attached,
    /// messages/s, bytes/s, fill of the fullest ring, lag of the slowest consumer, losses and
    /// evictions since the channel was made, wake-ups/s; broker totals on top. Keys sort
    /// (n m b f l o e w, r reverses), q quits. With --once, or when standard output is no
    /// terminal, prints one plain snapshot (two looks an interval apart, for the rates).
    Top {
        /// Print one plain snapshot and exit
        #[arg(long)]
        once: bool,
        /// Seconds between looks (0.1 to 3600)
        #[arg(long, value_name = "SECS", default_value = "1", value_parser = interval)]
        interval: std::time::Duration,
        /// Sort rows by this column
        #[arg(long, value_enum, default_value_t = top::SortKey::Name)]
        sort: top::SortKey,
    },
    /// Print the broker's numbers in the OpenMetrics text format (for Prometheus), or with
    /// --textfile write them for node_exporter's textfile collector
    Metrics {
        /// Write DIR/shmem_broker.prom atomically (Prometheus text format 0.0.4, what the
        /// textfile collector reads) instead of printing
        #[arg(long, value_name = "DIR")]
        textfile: Option<PathBuf>,
        /// Serve them over HTTP at http://ADDR/metrics instead (loopback addresses only, like
        /// 127.0.0.1:9477), until killed
        #[arg(long, value_name = "ADDR", conflicts_with = "textfile")]
        listen: Option<std::net::SocketAddr>,
    },
}

/// `--interval`: seconds, 0.1 to 3600.
fn interval(text: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(0.1..=3600.0).contains(&secs) {
        return Err("must be between 0.1 and 3600 seconds".into());
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

fn nonzero_size(text: &str) -> Result<u64, String> {
    match parse_size(text)? {
        0 => Err("must be at least 1 byte".into()),
        size => Ok(size),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // These two describe shmemctl itself and need no broker.
    let done = match &args.command {
        Command::Completions { shell } => Some(docs::completions(*shell)),
        Command::Man { list: true, .. } => Some(
            say(
                &mut io::stdout().lock(),
                format_args!("{}", docs::subcommands().join("\n")),
            )
            .map_err(anyhow::Error::from),
        ),
        Command::Man { subcommand, .. } => Some(docs::man(subcommand.as_deref())),
        _ => None,
    };
    match done.unwrap_or_else(|| run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report::finish(err),
    }
}

fn run(args: Args) -> Result<()> {
    let socket = client_socket_path(args.socket);
    let client = match Client::connect(&socket) {
        Ok(client) => client,
        Err(shmem_broker_client::Error::Io { source, .. })
            if source.kind() == io::ErrorKind::PermissionDenied =>
        {
            anyhow::bail!(report::permission_hint(&socket))
        }
        Err(e) => return Err(e.into()),
    };
    let mut out = io::stdout().lock();
    match args.command {
        Command::List { json } => {
            let channels = client.list()?;
            // Stdout is line-buffered: a listing of 10,000 channels is some 300,000 lines of
            // JSON, a write(2) each without this buffer. Both printers flush it at the end.
            let mut buffered = io::BufWriter::with_capacity(1 << 16, &mut out);
            let printed = if json {
                show::json(&mut buffered, &ChannelList { channels })
            } else {
                show::table(&mut buffered, &channels)
            };
            printed.map_err(StdoutError)?;
        }
        Command::Create {
            name,
            capacity,
            producers,
            consumers,
            max_producers,
            max_consumers,
            slow_consumer,
        } => {
            let mut new = client
                .channel(&name)
                .producers(producers)
                .consumers(consumers);
            if let Some(capacity) = capacity {
                new = new.capacity(capacity);
            }
            if let Some(count) = max_producers {
                new = new.max_producers(count);
            }
            if let Some(count) = max_consumers {
                new = new.max_consumers(count);
            }
            if let Some(policy) = slow_consumer {
                new = new.slow_consumer(policy);
            }
            let info = new.create()?;
            say(
                &mut out,
                format_args!(
                    "created channel {} ({}{})",
                    info.name,
                    format_size(info.capacity),
                    shape(&info)
                ),
            )?;
        }
        Command::Drop {
            name,
            consumer: Some(consumer),
        } => {
            client.drop_consumer(&name, &consumer)?;
            say(
                &mut out,
                format_args!("dropped durable consumer {consumer} of channel {name}"),
            )?;
        }
        Command::Drop {
            name,
            consumer: None,
        } => {
            client.drop_channel(&name)?;
            say(&mut out, format_args!("dropped channel {name}"))?;
        }
        Command::Info { name, json } => {
            let info = client.info(&name)?;
            let printed = if json {
                show::json(&mut out, &info)
            } else {
                show::info(&mut out, &info)
            };
            printed.map_err(StdoutError)?;
        }
        Command::Monitor { name, json } => {
            let mut monitor = client.monitor(name.as_deref())?;
            drop(client);
            while let Some(event) = monitor.next_event()? {
                show::monitor_line(&mut out, &event, json).map_err(StdoutError)?;
            }
            anyhow::bail!("the broker closed the connection (it stopped or restarted)");
        }
        Command::Status { json } => {
            let status = client.status()?;
            let printed = if json {
                show::json(&mut out, &status)
            } else {
                show::status(&mut out, &status)
            };
            printed.map_err(StdoutError)?;
        }
        Command::Send {
            name,
            chunk,
            skip,
            verbose,
            progress,
        } => {
            drop(out);
            let options = pipe::SendOptions {
                chunk,
                skip,
                verbose,
                progress,
            };
            pipe::send(client, &name, options)?;
        }
        Command::Recv {
            name,
            follow,
            durable,
            streams,
            max_bytes,
            progress,
        } => {
            drop(out);
            if let Some(name) = &durable {
                validate_consumer_name(name).map_err(anyhow::Error::msg)?;
            }
            let options = pipe::RecvOptions {
                durable: durable.as_deref(),
                streams: (!follow).then_some(streams),
                max_bytes,
                progress,
            };
            pipe::recv(client, &name, options)?;
        }
        Command::Top {
            once,
            interval,
            sort,
        } => {
            let options = top::Options {
                once,
                interval,
                sort,
            };
            top::run(&client, options, &mut out)?;
        }
        Command::Metrics {
            listen: Some(addr), ..
        } => {
            let socket = client.socket_path().to_path_buf();
            drop(client);
            serve::serve(&socket, addr)?;
        }
        Command::Metrics { textfile, .. } => {
            let snap = snapshot::Snapshot::take(&client)?;
            metrics::run(&snap, textfile.as_deref(), &mut out)?;
        }
        Command::Record {
            name,
            file,
            streams,
            follow,
        } => {
            drop(out);
            record::record(client, &name, &file, (!follow).then_some(streams))?;
        }
        Command::Replay {
            file,
            name,
            rate,
            as_recorded,
        } => {
            drop(out);
            let pace = match (rate, as_recorded) {
                (Some(rate), _) => record::Pace::Rate(rate),
                (None, true) => record::Pace::AsRecorded,
                (None, false) => record::Pace::Asap,
            };
            record::replay(client, &file, &name, pace)?;
        }
        // Handled in main, before connecting.
        Command::Completions { .. } | Command::Man { .. } => {}
    }
    Ok(())
}

fn say(out: &mut impl io::Write, line: std::fmt::Arguments<'_>) -> Result<(), StdoutError> {
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(StdoutError)
}

/// `, up to 4 producers and 3 consumers, slow consumers: drop` for fan-out channels.
fn shape(info: &ChannelInfo) -> String {
    if info.max_producers == 1 && info.max_consumers == 1 {
        return String::new();
    }
    format!(
        ", up to {} and {}, slow consumers: {}",
        show::count(info.max_producers.into(), "producer"),
        show::count(info.max_consumers.into(), "consumer"),
        info.slow_consumer
    )
}
