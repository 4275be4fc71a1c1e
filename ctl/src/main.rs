//! `shmemctl`: look at and manage a running shmem-broker, and pipe data through its channels.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use shmem_broker_client::discovery::client_socket_path;
use shmem_broker_client::size::{format_size, parse_size};
use shmem_broker_client::wire::ChannelList;
use shmem_broker_client::{ChannelInfo, Client, Role, SlowConsumer, StatusInfo};

/// Control a shmem-broker: list, create and drop channels, inspect them, send and receive data.
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
    /// One row per channel: capacity, who is attached, traffic and fill level
    List {
        #[arg(long)]
        json: bool,
    },
    /// Create a channel owned by you (needs root or an admin group)
    Create {
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
        name: String,
        /// The durable consumer to forget instead of the whole channel
        #[arg(long, value_name = "NAME")]
        consumer: Option<String>,
    },
    /// A channel's details and attached peers
    Info {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// The broker's version, uptime, socket, config and counts
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Send standard input into a channel as its producer, then mark end-of-stream
    Send {
        name: String,
        /// Largest message to cut the input into [default: min(1MiB, a quarter of the ring)]
        #[arg(long, value_parser = parse_size)]
        chunk: Option<u64>,
    },
    /// Write a channel's messages to standard output until end-of-stream
    Recv {
        name: String,
        /// Keep waiting for the next producer after an end-of-stream mark
        #[arg(long)]
        follow: bool,
        /// Attach as the durable consumer NAME: the broker keeps its queue while it is away
        /// and it resumes where it stopped (channels with max_consumers > 1)
        #[arg(long = "as", value_name = "NAME")]
        durable: Option<String>,
        /// Stop after this many end-of-stream marks (one per producer that closes)
        #[arg(long, value_name = "N", default_value_t = 1, conflicts_with = "follow")]
        streams: u64,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        // `recv` already said on stderr which streams were cut short, one line each.
        Err(err) if err.downcast_ref::<StreamsLost>().is_some() => ExitCode::from(3),
        Err(err) => {
            // One line: the outermost context and its causes.
            let message: Vec<String> = err.chain().map(ToString::to_string).collect();
            eprintln!("shmemctl: error: {}", message.join(": "));
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    let client = Client::connect(client_socket_path(args.socket))?;
    match args.command {
        Command::List { json } => {
            let channels = client.list()?;
            if json {
                print_json(&ChannelList { channels })
            } else {
                print_table(&channels)
            }
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
            println!(
                "created channel {} ({}{})",
                info.name,
                format_size(info.capacity),
                shape(&info)
            );
            Ok(())
        }
        Command::Drop {
            name,
            consumer: Some(consumer),
        } => {
            client.drop_consumer(&name, &consumer)?;
            println!("dropped durable consumer {consumer} of channel {name}");
            Ok(())
        }
        Command::Drop {
            name,
            consumer: None,
        } => {
            client.drop_channel(&name)?;
            println!("dropped channel {name}");
            Ok(())
        }
        Command::Info { name, json } => {
            let info = client.info(&name)?;
            if json {
                print_json(&info)
            } else {
                print_info(&info)
            }
        }
        Command::Status { json } => {
            let status = client.status()?;
            if json {
                print_json(&status)
            } else {
                print_status(&status)
            }
        }
        Command::Send { name, chunk } => send(client, &name, chunk),
        Command::Recv {
            name,
            follow,
            durable,
            streams,
        } => recv(
            client,
            &name,
            durable.as_deref(),
            (!follow).then_some(streams),
        ),
    }
}

/// `, 4 producers, 3 consumers, slow consumers: drop` for fan-out channels.
fn shape(info: &ChannelInfo) -> String {
    if info.max_producers == 1 && info.max_consumers == 1 {
        return String::new();
    }
    format!(
        ", up to {} producers and {} consumers, slow consumers: {}",
        info.max_producers, info.max_consumers, info.slow_consumer
    )
}

fn send(client: Client, name: &str, chunk: Option<u64>) -> Result<()> {
    let mut producer = client.producer(name)?;
    // The producer has its own connection; an idle control connection would only be closed
    // by the broker's request_timeout.
    drop(client);
    let max = producer.max_message_len();
    let chunk = match chunk {
        Some(chunk) => usize::try_from(chunk).unwrap_or(usize::MAX),
        None => (1 << 20).min((producer.capacity() / 4) as usize).max(1),
    };
    anyhow::ensure!(
        (1..=max).contains(&chunk),
        "chunk of {} does not fit channel {name}: at most {max} bytes per message",
        format_size(chunk as u64)
    );
    // Each read(2) lands straight in the ring, and each one is forwarded at once: a pipe that
    // stays open (`tail -f log | shmemctl send ch`) flows now, files come in full chunks.
    let mut stdin = io::stdin().lock();
    loop {
        let mut failure = None;
        let sent = producer.send_up_to(chunk, |buf| match stdin.read(buf) {
            Ok(n) => n,
            Err(e) => {
                failure = Some(e);
                0
            }
        })?;
        match failure {
            Some(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Some(e) => return Err(e).context("reading standard input"),
            None if sent == 0 => break,
            None => {}
        }
    }
    producer.close()?;
    Ok(())
}

/// `recv` delivered everything it could, but this many producers' streams were cut short
/// (their rings were corrupt, or their producer gave up on this consumer without cause).
#[derive(Debug)]
struct StreamsLost(u64);

impl std::fmt::Display for StreamsLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} stream(s) cut short", self.0)
    }
}

impl std::error::Error for StreamsLost {}

/// Copies messages to standard output until `streams` end-of-stream marks (`None`: forever).
/// A producer's stream that is cut short counts as ended: its mark will never come.
fn recv(client: Client, name: &str, durable: Option<&str>, streams: Option<u64>) -> Result<()> {
    let mut attach = client.attach(name);
    if let Some(durable) = durable {
        attach = attach.durable(durable);
    }
    let mut consumer = attach.consumer()?;
    drop(client);
    // Messages go from the ring to standard output with write(2) and no copy in between.
    let stdout = io::stdout();
    let mut ends = 0;
    let mut missed = 0;
    let mut lost = 0u64;
    loop {
        let message = match consumer.recv_to_fd(stdout.as_fd()) {
            Ok(message) => message,
            Err(err @ shmem_broker_client::Error::ProducerLost { .. }) => {
                eprintln!("shmemctl: {err}");
                lost += 1;
                false
            }
            Err(err) => return Err(err.into()),
        };
        if consumer.missed() > missed {
            eprintln!(
                "shmemctl: channel {name}: missed {} messages: this consumer fell behind (slow_consumer = drop)",
                consumer.missed() - missed
            );
            missed = consumer.missed();
        }
        if !message {
            ends += 1;
            if streams.is_some_and(|wanted| ends >= wanted) {
                return match lost {
                    0 => Ok(()),
                    lost => Err(StreamsLost(lost).into()),
                };
            }
        }
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let mut out = io::BufWriter::new(io::stdout().lock());
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// `pid 12`, `pids 12,13` or `-`: who is attached in `role`.
fn attached(info: &ChannelInfo, role: Role) -> String {
    let pids: Vec<String> = info
        .peers
        .iter()
        .filter(|p| p.role == role && p.attached)
        .map(|p| p.pid.to_string())
        .collect();
    match pids.len() {
        0 => "-".to_string(),
        1 => format!("pid {}", pids[0]),
        _ => format!("pids {}", pids.join(",")),
    }
}

fn print_table(channels: &[ChannelInfo]) -> Result<()> {
    let mut rows = vec![[
        "NAME".to_string(),
        "CAPACITY".into(),
        "PRODUCER".into(),
        "CONSUMER".into(),
        "MESSAGES".into(),
        "BYTES".into(),
        "UNREAD".into(),
    ]];
    for c in channels {
        rows.push([
            c.name.clone(),
            format_size(c.capacity),
            attached(c, Role::Producer),
            attached(c, Role::Consumer),
            c.messages_written.to_string(),
            format_size(c.bytes_written),
            format_size(c.bytes_unread),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = io::stdout().lock();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    Ok(())
}

fn print_info(c: &ChannelInfo) -> Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "channel:   {}", c.name)?;
    writeln!(
        out,
        "capacity:  {} ({} bytes)",
        format_size(c.capacity),
        c.capacity
    )?;
    writeln!(
        out,
        "origin:    {}",
        serde_json::to_value(&c.origin)?.as_str().unwrap_or("?")
    )?;
    writeln!(
        out,
        "owner uid: {}",
        c.owner_uid.map_or("-".into(), |u| u.to_string())
    )?;
    writeln!(out, "producers: {}", join_or_none(&c.producers))?;
    writeln!(out, "consumers: {}", join_or_none(&c.consumers))?;
    writeln!(
        out,
        "shape:     up to {} producers, {} consumers; slow consumers: {}; rings {}",
        c.max_producers,
        c.max_consumers,
        c.slow_consumer,
        format_size(c.ring_bytes)
    )?;
    writeln!(
        out,
        "messages:  {} written, {} read",
        c.messages_written, c.messages_read
    )?;
    writeln!(
        out,
        "bytes:     {} written, {} unread",
        format_size(c.bytes_written),
        format_size(c.bytes_unread)
    )?;
    if c.peers.is_empty() {
        writeln!(out, "peers:     none attached")?;
    }
    for p in &c.peers {
        let owner = p
            .owner_uid
            .map_or_else(String::new, |uid| format!(" owned by uid {uid}"));
        let who = match (&p.name, p.attached) {
            (Some(name), true) => format!(
                "{} {} {name:?}{owner} pid {} uid {} gid {}",
                p.role, p.id, p.pid, p.uid, p.gid
            ),
            (Some(name), false) => {
                format!("{} {} {name:?}{owner} (durable, away)", p.role, p.id)
            }
            (None, _) => format!(
                "{} {} pid {} uid {} gid {}",
                p.role, p.id, p.pid, p.uid, p.gid
            ),
        };
        let done = match p.role {
            Role::Producer => "written",
            Role::Consumer => "read",
        };
        writeln!(
            out,
            "peer:      {who}: {} messages {done}, {} unread, {} lost",
            p.messages,
            format_size(p.bytes_unread),
            p.messages_lost
        )?;
    }
    Ok(())
}

fn join_or_none(list: &[String]) -> String {
    if list.is_empty() {
        "(owner and root only)".into()
    } else {
        list.join(", ")
    }
}

fn print_status(s: &StatusInfo) -> Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "version:   {} (protocol {})", s.version, s.protocol)?;
    writeln!(out, "pid:       {}", s.pid)?;
    writeln!(out, "uptime:    {}s", s.uptime_secs)?;
    writeln!(
        out,
        "socket:    {} ({})",
        s.socket_path.as_deref().unwrap_or("(unnamed)"),
        s.socket_source
    )?;
    writeln!(
        out,
        "config:    {}",
        s.config_file.as_deref().unwrap_or("(built-in defaults)")
    )?;
    writeln!(out, "channels:  {}", s.channels)?;
    writeln!(out, "clients:   {}", s.clients)?;
    if !s.quotas.is_empty() {
        writeln!(out, "quotas:")?;
    }
    for q in &s.quotas {
        let (used, limit) = if q.quota.ends_with("ring_bytes") {
            (format_size(q.used), format_size(q.limit))
        } else {
            (q.used.to_string(), q.limit.to_string())
        };
        let who = q.uid.map_or(String::new(), |uid| format!(" (uid {uid})"));
        writeln!(out, "  {:<24} {used} of {limit}{who}", q.quota)?;
    }
    Ok(())
}
