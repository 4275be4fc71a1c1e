//! A consumer that detaches and a new one that attaches resume exactly where the first left
//! off: no message lost, none repeated, none altered.

use shmem_broker_tests::*;
use std::time::Duration;

const N: u64 = 10_000;
/// Messages consumer A reads before it is dropped.
const A_READS: usize = 3_000;
const CAPACITY: u64 = 256 * 1024;
const TIMEOUT: Duration = Duration::from_secs(120);

/// Message `seq`: a numbered message (testkit) whose size derives from `seq` too.
fn message(seq: u64) -> Vec<u8> {
    let len = if seq % 500 == 7 {
        64 * 1024
    } else {
        (seq.wrapping_mul(2_654_435_761) % 6000) as usize
    };
    stamp::numbered(0, seq, stamp::HEADER + len)
}

/// The sequence number of a received message, after checking it is exactly what was sent.
fn check(received: &[u8], index: usize) -> u64 {
    let (_, seq) =
        stamp::check_numbered(received).unwrap_or_else(|e| panic!("message #{index}: {e}"));
    assert!(
        seq < N,
        "message #{index} carries sequence number {seq}, beyond {N}"
    );
    assert!(
        received == message(seq).as_slice(),
        "message #{index} (seq {seq}) is not the message of that number"
    );
    seq
}

#[test]
fn consumer_reattach_resumes_without_gap_or_repeat() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "seq", "--capacity", "256KiB"]);
    assert_eq!(json_u64(&broker.info("seq"), "capacity"), CAPACITY);

    let socket = broker.socket_path().to_path_buf();
    let producer = Background::spawn("producer", move || {
        let client = connect(&socket);
        let mut producer = client.producer("seq").expect("attach the producer to seq");
        for seq in 0..N {
            producer
                .send(&message(seq))
                .unwrap_or_else(|e| panic!("send #{seq}: {e}"));
        }
        producer.close().expect("close the producer");
    });

    let socket = broker.socket_path().to_path_buf();
    let first = with_deadline(TIMEOUT, "consumer A", move || {
        let client = connect(&socket);
        let mut consumer = client.consumer("seq").expect("attach consumer A to seq");
        let mut seen = Vec::with_capacity(A_READS);
        while seen.len() < A_READS {
            match consumer.recv().expect("consumer A recv") {
                Some(msg) => seen.push(check(&msg, seen.len())),
                None => panic!("end-of-stream after {} of {N} messages", seen.len()),
            }
        }
        drop(consumer);
        drop(client);
        seen
    });

    broker.wait_for_no_peer_with_role("seq", "consumer");
    let info = broker.info("seq");
    assert_eq!(
        json_u64(&info, "messages_read"),
        A_READS as u64,
        "after consumer A read {A_READS} messages and detached: {info}"
    );
    if producer.is_finished() {
        // Surfaces the producer's own panic, if it had one.
        producer.join(TIMEOUT);
        panic!("the producer finished all {N} messages with consumer A gone: the ring cannot hold them");
    }

    let socket = broker.socket_path().to_path_buf();
    let second = with_deadline(TIMEOUT, "consumer B", move || {
        let client = connect(&socket);
        let mut consumer = client.consumer("seq").expect("attach consumer B to seq");
        let mut seen = Vec::new();
        while let Some(msg) = consumer.recv().expect("consumer B recv") {
            seen.push(check(&msg, A_READS + seen.len()));
            assert!(
                seen.len() <= N as usize,
                "consumer B got more than {N} messages"
            );
        }
        seen
    });
    producer.join(TIMEOUT);

    let all: Vec<u64> = first.iter().chain(second.iter()).copied().collect();
    if let Some(index) = (0..all.len()).find(|&i| all[i] != i as u64) {
        panic!(
            "sequence broken at position {index} (consumer {}): expected {index}, got {}; \
             around it: {:?}",
            if index < A_READS { "A" } else { "B" },
            all[index],
            &all[index.saturating_sub(3)..(index + 4).min(all.len())]
        );
    }
    assert_eq!(
        all.len() as u64,
        N,
        "received {} of {N} messages",
        all.len()
    );

    let info = broker.info("seq");
    assert_eq!(json_u64(&info, "messages_written"), N, "info: {info}");
    assert_eq!(json_u64(&info, "messages_read"), N, "info: {info}");
    assert_eq!(json_u64(&info, "bytes_unread"), 0, "info: {info}");
}
