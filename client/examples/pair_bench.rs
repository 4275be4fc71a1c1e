//! `pair_bench SOCKET CHANNEL SIZE COUNT`: one producer thread sends COUNT messages of SIZE
//! bytes (`send`) to one consumer thread (`recv_into` a buffer) through CHANNEL, which must
//! exist; prints the seconds from the first send to end-of-stream. The Rust side of the "C
//! against the Rust client" rows of BENCHMARKS.md; `bindings/python/bench/pair_bench.c` is
//! the C side, line for line, and `bindings/python/bench/bench.py` runs both.

use shmem_broker_client::Client;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, channel, size, count] = args.as_slice() else {
        return Err("usage: pair_bench SOCKET CHANNEL SIZE COUNT".into());
    };
    let (size, count): (usize, u64) = (size.parse()?, count.parse()?);
    let client = Client::connect(socket)?;
    let mut consumer = client.consumer(channel)?;
    let mut producer = client.producer(channel)?;
    let start = Instant::now();
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
