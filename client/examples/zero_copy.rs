//! Zero-copy both ways: the producer writes each message in place in the shared ring (a loan),
//! the consumer reads it in place (a borrowed sample) and frees its space by dropping it.
//!
//! ```text
//! cargo run -p shmem-broker-client --example zero_copy [SOCKET] [COUNT]
//! ```
//!
//! `SOCKET` defaults to the broker's usual path (see `Client::connect_default`). Creating the
//! channel needs root, the broker's uid or an admin group.

use shmem_broker_client::Client;

/// Each message: a little-endian u64 sequence number, then a payload derived from it.
const MESSAGE_LEN: usize = 1024;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let client = match args.next() {
        Some(socket) => Client::connect(socket)?,
        None => Client::connect_default()?,
    };
    let count: u64 = match args.next() {
        Some(count) => count.to_string_lossy().parse()?,
        None => 1000,
    };
    let info = client
        .channel("zero-copy-example")
        .capacity(64 * 1024)
        .open_or_create()?;
    println!("channel {} of {} bytes", info.name, info.capacity);

    let mut producer = client.producer("zero-copy-example")?;
    let mut consumer = client.consumer("zero-copy-example")?;
    let writer = std::thread::spawn(move || -> Result<(), shmem_broker_client::Error> {
        for seq in 0..count {
            // A writable message in the ring: filled in place, then published by `send`.
            let mut loan = producer.loan(MESSAGE_LEN)?;
            loan[..8].copy_from_slice(&seq.to_le_bytes());
            loan[8..].fill(seq as u8);
            loan.send()?;
        }
        // A loan dropped without `send` publishes nothing.
        drop(producer.loan(MESSAGE_LEN)?);
        producer.close()
    });

    let mut received = 0u64;
    let mut head = [0u8; 8];
    // Each sample points into the ring; its space goes back to the producer when dropped.
    while let Some(sample) = consumer.recv_ref()? {
        sample.copy_to(&mut head);
        let seq = u64::from_le_bytes(head);
        if seq != received || sample.len() != MESSAGE_LEN || sample.get(9) != Some(seq as u8) {
            return Err(format!(
                "message {received} arrived as {seq} ({} bytes)",
                sample.len()
            )
            .into());
        }
        received += 1;
    }
    writer
        .join()
        .map_err(|_| "the producer thread panicked")??;
    println!("sent and received {received} messages in place");
    client.drop_channel("zero-copy-example")?;
    Ok(())
}
