//! Soak test: the real broker, one channel, many checked messages, and clients that attach,
//! detach and get SIGKILLed at random. See `fuzz/SOAK.md`.
//!
//! ```text
//! shmem-broker-soak run --broker target/release/shmem-broker --messages 100000000
//! ```
//!
//! `run` (the driver) starts the broker on a private socket, creates the channel `soak`, and
//! starts a producer and a consumer process (this same binary, subcommands `producer` and
//! `consumer`). Then, every few milliseconds, it does one random thing: SIGKILL the producer or
//! the consumer and start a new one, ask one of them to detach cleanly and start a new one,
//! leave a role empty for a while, or try to attach a second producer or consumer (which the
//! broker must refuse with `channel_busy` while the slot is held).
//!
//! Messages are testkit's numbered messages (`shmem_broker_testkit::stamp::Format`) with a
//! single stream: message `seq` (0, 1, 2, ...) has a length drawn from `seq` and carries `seq`,
//! its length and a CRC-32 of everything else.
//!
//! The one-to-one mode is [`one_to_one`] (its bookkeeping and checks), the fan-out mode
//! (`run --fanout`) [`fanout`]; what both share is in [`common`],.
//!
//! Either run passes when every message was delivered in order, with nothing lost, corrupted
//! or duplicated.

mod common;
mod fanout;
mod layout;
mod one_to_one;

use common::fail;
use std::path::{Path, PathBuf};

pub(crate) struct Options {
    broker: PathBuf,
    messages: u64,
    capacity: u64,
    seed: u64,
    max_seconds: u64,
    /// Mean milliseconds between two random events.
    event_ms: u64,
    /// Fan-out mode: producer slots (streams), durable and anonymous consumers.
    fanout: bool,
    producers: usize,
    durable: usize,
    anonymous: usize,
}

fn parse_size(text: &str) -> u64 {
    shmem_broker_client::size::parse_size(text).unwrap_or_else(|e| fail(&e))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = format!(
        "usage: shmem-broker-soak run --broker PATH [--messages N] [--capacity SIZE] \
         [--seed N] [--max-seconds N] [--event-ms N] {}",
        fanout::usage()
    );
    let usage = usage.as_str();
    match args.first().map(String::as_str) {
        Some(role @ ("producer" | "consumer")) if args.len() == 5 => {
            let socket = Path::new(&args[1]);
            let state = Path::new(&args[2]);
            let seed = args[3].parse().unwrap_or_else(|_| fail("seed"));
            let total = args[4].parse().unwrap_or_else(|_| fail("total"));
            if role == "producer" {
                one_to_one::producer_main(socket, state, seed, total)
            } else {
                one_to_one::consumer_main(socket, state, seed, total)
            }
        }
        Some("fan-producer") => fanout::producer_main(&args[1..]),
        Some("fan-consumer") => fanout::consumer_main(&args[1..]),
        Some("run") => {
            let mut options = Options {
                broker: PathBuf::new(),
                messages: 1_000_000,
                capacity: 1 << 20,
                seed: 1,
                max_seconds: 900,
                event_ms: 20,
                fanout: false,
                producers: 3,
                durable: 2,
                anonymous: 2,
            };
            let mut rest = args[1..].iter();
            while let Some(flag) = rest.next() {
                if flag == "--fanout" {
                    options.fanout = true;
                    continue;
                }
                let value = rest.next().unwrap_or_else(|| fail(usage));
                let number = || -> u64 {
                    value
                        .replace('_', "")
                        .parse()
                        .unwrap_or_else(|_| fail(&format!("{flag}: not a number: {value}")))
                };
                match flag.as_str() {
                    "--broker" => options.broker = PathBuf::from(value),
                    "--messages" => options.messages = number(),
                    "--capacity" => options.capacity = parse_size(value),
                    "--seed" => options.seed = number(),
                    "--max-seconds" => options.max_seconds = number(),
                    "--event-ms" => options.event_ms = number().max(1),
                    "--producers" => options.producers = number() as usize,
                    "--durable" => options.durable = number() as usize,
                    "--anonymous" => options.anonymous = number() as usize,
                    _ => fail(usage),
                }
            }
            if options.broker.as_os_str().is_empty() {
                fail(usage);
            }
            std::process::exit(if options.fanout {
                fanout::run(&options)
            } else {
                one_to_one::run(&options)
            });
        }
        _ => fail(usage),
    }
}
