//! `pair_windows SOCKET CHANNEL SIZE COUNT [WINDOW]`: like `pair_bench` (one producer thread
//! sends COUNT messages of SIZE bytes to one consumer thread, `send` / `recv_into`), but prints
//! the throughput of every WINDOW messages (default 40,000) together with the backlog at the
//! window's end: how many messages the producer had sent that the consumer had not received
//! yet. What showed the ring-fill regimes of BENCHMARKS.md ("No bimodal pairs"): windows with
//! the consumer right behind its producer (backlog 0-1) against windows with it a message or
//! more behind.
//!
//! ```text
//! shmemctl create c --capacity 1MiB
//! taskset -c 0,1 target/release/examples/pair_windows SOCKET c 65536 400000
//! ```

use shmem_broker_client::Client;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (socket, channel, size, count, window) = match args.as_slice() {
        [socket, channel, size, count] => (socket, channel, size, count, "40000"),
        [socket, channel, size, count, window] => (socket, channel, size, count, window.as_str()),
        _ => return Err("usage: pair_windows SOCKET CHANNEL SIZE COUNT [WINDOW]".into()),
    };
    let (size, count, window): (usize, u64, u64) = (size.parse()?, count.parse()?, window.parse()?);
    if window == 0 {
        return Err("WINDOW must be at least 1".into());
    }
    let client = Client::connect(socket)?;
    let mut consumer = client.consumer(channel)?;
    let mut producer = client.producer(channel)?;
    // The producer's count of messages sent; read once a window (a line of its own).
    let sent = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&sent);
    let sender = std::thread::spawn(move || -> Result<(), shmem_broker_client::Error> {
        let message = vec![0u8; size];
        for _ in 0..count {
            producer.send(&message)?;
            counter.fetch_add(1, Ordering::Relaxed);
        }
        producer.close()
    });
    let mut buf = Vec::with_capacity(size);
    let (mut received, mut since) = (0u64, Instant::now());
    while consumer.recv_into(&mut buf)? {
        received += 1;
        if received % window == 0 {
            let now = Instant::now();
            let gbps = (window * size as u64) as f64 / (now - since).as_secs_f64() / 1e9;
            let backlog = sent.load(Ordering::Relaxed).saturating_sub(received);
            println!("{received:>10} messages: {gbps:6.1} GB/s, backlog {backlog}");
            since = now;
        }
    }
    sender
        .join()
        .map_err(|_| "the producer thread panicked")??;
    if received != count {
        return Err(format!("received {received} of {count}").into());
    }
    Ok(())
}
