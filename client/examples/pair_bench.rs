//! `pair_bench SOCKET CHANNEL SIZE COUNT [serial]`: one producer thread sends COUNT messages of
//! SIZE bytes (`send`) to one consumer thread (`recv_into` a buffer) through CHANNEL, which
//! must exist; prints the seconds from the first send to end-of-stream. The Rust side of the
//! "C against the Rust client" rows of BENCHMARKS.md; `bindings/python/bench/pair_bench.c` is
//! the C side, line for line, and `bindings/python/bench/bench.py` runs both. With `serial`,
//! one thread sends a burst (at most 1000 messages, at most 4 MiB) and then receives it, over
//! and over: no thread ever waits, so an instruction count (callgrind) is the calls' own.

use shmem_broker_client::Client;
use std::time::Instant;

/// Bytes of one serial burst (frames included): half the 8 MiB channel bench.py creates.
const BURST_BYTES: u64 = 4 << 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (socket, channel, size, count, serial) = match args.as_slice() {
        [socket, channel, size, count] => (socket, channel, size, count, false),
        [socket, channel, size, count, mode] if mode == "serial" => {
            (socket, channel, size, count, true)
        }
        _ => return Err("usage: pair_bench SOCKET CHANNEL SIZE COUNT [serial]".into()),
    };
    let (size, count): (usize, u64) = (size.parse()?, count.parse()?);
    let client = Client::connect(socket)?;
    let mut consumer = client.consumer(channel)?;
    let mut producer = client.producer(channel)?;
    let start = Instant::now();
    if serial {
        let message = vec![0u8; size];
        let mut buf = Vec::with_capacity(size);
        let burst = (BURST_BYTES / (size as u64 + 64)).clamp(1, 1000);
        let mut received = 0u64;
        while received < count {
            let n = burst.min(count - received);
            for _ in 0..n {
                producer.send(&message)?;
            }
            for _ in 0..n {
                if !consumer.recv_into(&mut buf)? {
                    return Err("end-of-stream before the last message".into());
                }
            }
            received += n;
        }
        producer.close()?;
        if consumer.recv_into(&mut buf)? {
            return Err("a message after the last one".into());
        }
        println!("{:.6}", start.elapsed().as_secs_f64());
        return Ok(());
    }
    let sender = std::thread::spawn(move || -> Result<(), shmem_broker_client::Error> {
        let message = vec![0u8; size];
        for _ in 0..count {
            producer.send(&message)?;
        }
        producer.close()
    });
    let mut buf = Vec::with_capacity(size);
    let mut received = 0u64;
    while consumer.recv_into(&mut buf)? {
        received += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    sender
        .join()
        .map_err(|_| "the producer thread panicked")??;
    if received != count {
        return Err(format!("received {received} of {count}").into());
    }
    println!("{seconds:.6}");
    Ok(())
}
