//! Feature `tokio`: a producer task and a consumer task exchange messages through a small
//! one-to-one channel, each parked on its endpoint's `ready_fd()` while it waits.
//!
//! ```text
//! cargo run -p shmem-broker-client --features tokio --example async_pipe [SOCKET] [COUNT]
//! ```

use shmem_broker_client::{AsyncConsumer, AsyncProducer, Client};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let client = match args.next() {
        Some(socket) => Client::connect(socket)?,
        None => Client::connect_default()?,
    };
    let count: u64 = args.next().map_or(Ok(10_000), |n| n.parse())?;
    client
        .channel("async-pipe-example")
        .capacity(16 * 1024)
        .open_or_create()?;
    let mut consumer = AsyncConsumer::new(client.consumer("async-pipe-example")?)?;
    let mut producer = AsyncProducer::new(client.producer("async-pipe-example")?)?;

    let reader = tokio::spawn(async move {
        let mut received = 0u64;
        while let Some(message) = consumer.recv().await? {
            let seq = u64::from_le_bytes(message[..8].try_into()?);
            if seq != received {
                return Err(format!("message {seq} came in place of {received}").into());
            }
            received += 1;
        }
        Ok::<u64, Box<dyn std::error::Error + Send + Sync>>(received)
    });
    for seq in 0..count {
        let mut message = seq.to_le_bytes().to_vec();
        message.resize(8 + (seq % 200) as usize, 0xa5);
        producer.send(&message).await?;
    }
    // Closing may wait for room for the end-of-stream mark: off the runtime's threads.
    let producer = producer.into_inner();
    tokio::task::spawn_blocking(move || producer.close()).await??;
    let received = reader.await?.map_err(|e| e.to_string())?;
    println!("sent and received {received} messages");
    client.drop_channel("async-pipe-example")?;
    Ok(())
}
