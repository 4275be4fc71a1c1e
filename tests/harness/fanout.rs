//! Helpers of the fan-out tests (tests/fanout_*.rs): a channel with many endpoints,
//! self-checking numbered records, and the consumers the broker reports attached.

use crate::*;
use shmem_broker_client::{Client, Consumer, SlowConsumer};
use std::time::Duration;

/// A small ring (16 KiB) that a slow consumer fills quickly, and the message size used with it.
pub const RING: u64 = 16 << 10;
pub const MESSAGE: usize = 100;

/// Generous bound for one library transfer with debug binaries on a 2-core machine.
pub const TRANSFER: Duration = Duration::from_secs(300);

pub fn create(
    client: &Client,
    name: &str,
    capacity: u64,
    producers: u32,
    consumers: u32,
    policy: SlowConsumer,
) {
    client
        .channel(name)
        .capacity(capacity)
        .max_producers(producers)
        .max_consumers(consumers)
        .slow_consumer(policy)
        .create()
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
}

/// A self-checking message (testkit's numbered messages): producer tag, sequence number, then
/// bytes derived from both, so a torn, shifted or mixed-up message is recognised. At least a
/// numbered header long.
pub fn record(producer: u32, seq: u64, len: usize) -> Vec<u8> {
    stamp::numbered(producer, seq, len.max(stamp::HEADER))
}

/// (producer tag, sequence) of a message made by [`record`]; fails the test on anything else.
pub fn parse(message: &[u8]) -> (u32, u64) {
    stamp::check_numbered(message).unwrap_or_else(|e| panic!("{e}"))
}

pub fn attached_consumers(broker: &Broker, channel: &str) -> usize {
    let info = broker.info(channel);
    json_array(&info, "peers")
        .iter()
        .filter(|p| p["role"] == "consumer" && p["attached"] == true)
        .count()
}

pub fn wait_for_consumers(broker: &Broker, channel: &str, count: usize) {
    wait_for(
        WAIT,
        format!("{count} consumers attached to {channel}"),
        || match attached_consumers(broker, channel) {
            n if n == count => Ok(()),
            n => Err(format!("{n} attached: {}", broker.info(channel))),
        },
    );
}

pub fn consumer_peer(broker: &Broker, channel: &str, id: u32) -> Option<serde_json::Value> {
    let info = broker.info(channel);
    json_array(&info, "peers")
        .iter()
        .find(|p| p["role"] == "consumer" && p["id"].as_u64() == Some(u64::from(id)))
        .cloned()
}

/// Receives until end-of-stream, checking each message; returns the sequence numbers.
pub fn drain(consumer: &mut Consumer) -> Vec<u64> {
    let mut seqs = Vec::new();
    while let Some(message) = consumer.recv().expect("recv") {
        seqs.push(parse(&message).1);
    }
    seqs
}
