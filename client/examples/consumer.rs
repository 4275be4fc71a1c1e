//! Prints the messages of a channel until the producer's end-of-stream mark.
//!
//! ```text
//! cargo run -p shmem-broker-client --example consumer -- demo
//! ```

use shmem_broker_client::Client;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let channel = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "demo".to_string());
    let client = Client::connect_default()?;
    let mut consumer = client.consumer(&channel)?;
    let mut received = 0u64;
    while let Some(message) = consumer.recv()? {
        println!("{}", String::from_utf8_lossy(&message));
        received += 1;
    }
    eprintln!("received {received} messages from {channel}; end of stream");
    Ok(())
}
