//! Sends numbered messages into a channel, then marks end-of-stream.
//!
//! ```text
//! shmemctl create demo --capacity 1MiB
//! cargo run -p shmem-broker-client --example consumer -- demo &
//! cargo run -p shmem-broker-client --example producer -- demo 1000
//! ```

use shmem_broker_client::Client;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let channel = args.next().unwrap_or_else(|| "demo".to_string());
    let count: u64 = args.next().map_or(Ok(1000), |n| n.parse())?;

    let client = Client::connect_default()?;
    let mut producer = client.producer(&channel)?;
    for seq in 0..count {
        // Zero-copy: the message is written straight into the shared ring.
        let text = format!("message {seq}");
        producer.send_with(text.len(), |slot| slot.copy_from_slice(text.as_bytes()))?;
    }
    producer.close()?;
    eprintln!("sent {count} messages to {channel}");
    Ok(())
}
