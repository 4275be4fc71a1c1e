//! A consumer that never reads, and one that scribbles its fan-out ring, against the real broker:
//! each harms only itself and its own producer. Each test names the claim of SECURITY.md it
//! checks.

use serde_json::json;
use shmem_broker_tests::hostile_common::*;
use shmem_broker_tests::raw_ring::{Mapping, ACK_READ_POS};
use shmem_broker_tests::*;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// 7. A consumer that never reads only stalls its own producer

#[test]
fn consumer_that_never_reads_blocks_only_its_own_producer() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "stuck", "--capacity", "64KiB"]);
    broker.ctl_ok(&["create", "bulk", "--capacity", "1MiB"]);
    let client = broker.client();
    let mut lazy = client
        .consumer("stuck")
        .expect("attach the consumer that never reads");
    let mut stuck = client.producer("stuck").expect("attach its producer");

    // try_send fills the ring, then reports would-block.
    let message = vec![0x5au8; 1024];
    let sent = fill_ring(&mut stuck, &message, 64);
    assert!(
        sent >= 60,
        "only {sent} KiB fit in a 64 KiB ring before would-block"
    );
    let blocked = Background::spawn("send into a full ring", move || {
        stuck.send(&message).map(|()| stuck)
    });

    // Another channel moves 64 MiB meanwhile, and the broker keeps answering.
    const MESSAGES: u64 = 1024;
    const LEN: usize = 64 * 1024;
    let mut producer = client.producer("bulk").expect("attach the bulk producer");
    let mut consumer = client.consumer("bulk").expect("attach the bulk consumer");
    let started = Instant::now();
    let sender = Background::spawn("bulk producer", move || {
        let mut buf = vec![0u8; LEN];
        for i in 0..MESSAGES {
            stamp::stamp_ends(&mut buf, i);
            producer.send(&buf)?;
        }
        producer.close()
    });
    let receiver = Background::spawn("bulk consumer", move || -> Result<u64, String> {
        let mut buf = Vec::new();
        let mut count = 0u64;
        while consumer.recv_into(&mut buf).map_err(|e| e.to_string())? {
            stamp::check_ends(&buf, LEN, count)?;
            count += 1;
        }
        Ok(count)
    });
    let mut slowest = Duration::ZERO;
    while !receiver.is_finished() && started.elapsed() < Duration::from_secs(30) {
        let asked = Instant::now();
        let channels = client.list().expect("list while data flows");
        slowest = slowest.max(asked.elapsed());
        assert_eq!(channels.len(), 2);
        std::thread::sleep(Duration::from_millis(20));
    }
    sender.join(WAIT).expect("the bulk producer");
    let count = receiver
        .join(WAIT)
        .unwrap_or_else(|e| panic!("bulk consumer: {e}"));
    assert_eq!(count, MESSAGES, "64 MiB in 64 KiB messages");
    assert!(
        slowest < Duration::from_millis(500),
        "list took {slowest:?} while data flowed"
    );

    // The producer of the stuck channel is still blocked (after the whole 64 MiB went by) ...
    assert!(
        !blocked.is_finished(),
        "send into a full ring returned without any consumer reading"
    );
    let info = broker.info("stuck");
    assert_eq!(json_u64(&info, "messages_read"), 0, "{info}");
    // ... and it was waiting for room: one read lets it finish.
    let first = lazy.recv().expect("recv").expect("a message");
    assert_eq!(first.len(), 1024);
    let stuck = blocked
        .join(WAIT)
        .expect("the blocked send completes once there is room");
    drop(stuck);
    drop(lazy);
}

#[test]
fn a_consumer_scribbling_its_fanout_ring_is_cut_off_and_the_others_keep_receiving() {
    let mut broker = Broker::start(None);
    let client = broker.client();
    client
        .channel("mob")
        .capacity(64 << 10)
        .max_consumers(2)
        .create()
        .expect("create a channel with two consumers");
    let mut honest = client.consumer("mob").expect("attach the honest consumer");
    let raw = raw_attach_any(broker.socket_path(), "mob", "consumer");
    assert_eq!(
        raw.reply["result"]["fds"],
        json!(["control", "wait", "ring", "ack", "wake"]),
        "a fan-out attach: {}",
        raw.reply
    );
    let map = Mapping::new(raw.lanes()[0].ack, 4096);
    let mut producer = client.producer("mob").expect("attach the producer");
    assert_eq!(producer.consumers(), 2);
    // The hostile consumer claims a read position the producer never wrote; the producer
    // finds out when it next looks at that position (the ring is full from its view).
    map.write_u64(ACK_READ_POS, 12_345);
    const COUNT: u64 = 2000;
    let reading = Background::spawn("the honest consumer", move || {
        for i in 0..COUNT {
            let got = honest.recv().expect("recv").expect("a message");
            assert_eq!(got, payload(i, 100), "message {i} to the honest consumer");
        }
    });
    for i in 0..COUNT {
        producer
            .send(&payload(i, 100))
            .unwrap_or_else(|e| panic!("send {i} must not fail for a peer's scribbling: {e}"));
    }
    reading.join(WAIT);
    assert_eq!(
        producer.consumers(),
        1,
        "the producer stopped writing to the scribbled ring"
    );
    // The broker disconnects nobody for a ring found corrupt: either side can write its
    // positions, so the producer's flag cannot say who broke them, and the ring is all it
    // costs (attacks_fanout.rs: a producer's flag does not cut a consumer off either). The
    // scribbler stays attached, and its ring is replaced with an empty one once it leaves.
    let mut stream = raw.stream;
    std::thread::sleep(Duration::from_millis(1500));
    match read_until_closed(&mut stream, Duration::from_millis(200)) {
        ConnectionEnd::StillOpen(_) => {}
        ConnectionEnd::Closed(bytes) => panic!(
            "the broker disconnected a consumer on a producer's word: {:?}",
            String::from_utf8_lossy(&bytes)
        ),
    }
    assert!(
        !broker.log().contains("slow consumers disconnected"),
        "{}",
        broker.log()
    );
    drop(map);
    broker.assert_running();
}
