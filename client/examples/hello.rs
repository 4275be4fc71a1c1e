//! Makes a channel (unless it exists), sends a few messages through it and reads them back.
//!
//! ```text
//! cargo run -p shmem-broker-client --example hello [SOCKET]
//! ```
//!
//! `SOCKET` defaults to the broker's usual path (see `Client::connect_default`). Creating the
//! channel needs root, the broker's uid or an admin group.

use shmem_broker_client::{Client, TryRecvError};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = match std::env::args_os().nth(1) {
        Some(socket) => Client::connect(socket)?,
        None => Client::connect_default()?,
    };
    let info = client
        .channel("hello-example")
        .capacity(64 * 1024)
        .open_or_create()?;
    println!("channel {} of {} bytes", info.name, info.capacity);

    let mut producer = client.producer("hello-example")?;
    let mut consumer = client.consumer("hello-example")?;
    for n in 0..3 {
        producer.send(format!("hello #{n}").as_bytes())?;
    }
    producer.close()?;
    // Blocking receives until the end-of-stream mark the close wrote.
    while let Some(message) = consumer.recv()? {
        println!("received {:?}", String::from_utf8_lossy(&message));
    }
    // Would-block is no error: an empty channel says so distinctly.
    match consumer.try_recv() {
        Err(TryRecvError::Empty) => println!("nothing more for now"),
        Err(other) => return Err(other.into()),
        Ok(message) => println!("unexpected: {message:?}"),
    }
    client.drop_channel("hello-example")?;
    Ok(())
}
