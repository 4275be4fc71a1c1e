//! Each slow-consumer policy of a fan-out channel (block, drop, disconnect), with a fast and a
//! slow consumer on one producer, and a producer whose frame must wrap waiting for its consumer
//! (not forever), through the real broker.

use shmem_broker_client::{Client, Consumer, Error, Producer, SlowConsumer, TryRecvError};
use shmem_broker_tests::fanout::*;
use shmem_broker_tests::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

struct SlowSetup {
    broker: Broker,
    client: Client,
    producer: Producer,
    slow: Consumer,
    slow_id: u32,
    fast: Background<(Vec<u64>, u64)>,
    fast_progress: Arc<AtomicU64>,
}

fn slow_setup(policy: SlowConsumer) -> SlowSetup {
    let broker = Broker::start(None);
    let client = broker.client();
    create(&client, "feed", RING, 1, 2, policy);
    let fast = client.consumer("feed").expect("attach the fast consumer");
    let slow = client.consumer("feed").expect("attach the slow consumer");
    let slow_id = json_array(&broker.info("feed"), "peers")
        .iter()
        .filter(|p| p["role"] == "consumer")
        .map(|p| json_u64(p, "id") as u32)
        .max()
        .expect("the slow consumer is listed");
    let producer = client.producer("feed").expect("attach the producer");
    assert_eq!(
        producer.consumers(),
        2,
        "the producer starts with both consumers"
    );
    let fast_progress = Arc::new(AtomicU64::new(0));
    let progress = fast_progress.clone();
    let fast = Background::spawn("fast consumer", move || {
        let mut fast = fast;
        let mut seqs = Vec::new();
        while let Some(message) = fast.recv().expect("fast recv") {
            seqs.push(parse(&message).1);
            progress.fetch_add(1, Ordering::Relaxed);
        }
        (seqs, fast.missed())
    });
    SlowSetup {
        broker,
        client,
        producer,
        slow,
        slow_id,
        fast,
        fast_progress,
    }
}

/// Sends `total` records, never more than a few kilobytes ahead of the fast consumer (whose
/// progress is `fast`): under `drop` and `disconnect` the producer never waits, so only the
/// consumer that does not read at all may overflow its ring, not one merely slower than the
/// sending loop.
fn send_paced(producer: Producer, total: u64, fast: &Arc<AtomicU64>) -> Producer {
    const AHEAD: u64 = 40; // 40 x 112 bytes, well inside the 16 KiB ring
    let fast = fast.clone();
    with_deadline(TRANSFER, "producer", move || {
        let mut producer = producer;
        for seq in 0..total {
            while seq >= fast.load(Ordering::Relaxed) + AHEAD {
                std::thread::yield_now();
            }
            producer.send(&record(0, seq, MESSAGE)).expect("send");
        }
        producer
    })
}

/// Reads whatever `consumer` has now, without waiting.
fn read_available(consumer: &mut Consumer) -> Vec<u64> {
    let mut seqs = Vec::new();
    loop {
        match consumer.try_recv() {
            Ok(Some(message)) => seqs.push(parse(&message).1),
            Ok(None) => panic!("unexpected end-of-stream"),
            Err(TryRecvError::Empty) => return seqs,
            Err(e) => panic!("try_recv: {e}"),
        }
    }
}

#[test]
fn slow_consumer_block_makes_the_producer_wait_and_loses_nothing() {
    const TOTAL: u64 = 2000;
    let s = slow_setup(SlowConsumer::Block);
    let mut producer = s.producer;
    let sending = Background::spawn("producer", move || {
        for seq in 0..TOTAL {
            producer.send(&record(0, seq, MESSAGE)).expect("send");
        }
        producer.close().expect("close");
    });
    // The slow consumer's ring fills; the producer must then wait for it, holding up the
    // fast one too (it gets each message only as the slow ring takes it).
    wait_for(WAIT, "the slow consumer's ring to fill", || {
        let peer = consumer_peer(&s.broker, "feed", s.slow_id).ok_or("slow consumer gone")?;
        // Unread counts message bytes; a 100-byte message takes a 128-byte frame.
        match json_u64(&peer, "bytes_unread") {
            n if (n + 2 * MESSAGE as u64) * 128 / MESSAGE as u64 > RING => Ok(()),
            n => Err(format!("{n} bytes unread: {peer}")),
        }
    });
    let stalled_at = s.fast_progress.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !sending.is_finished(),
        "the producer finished although a consumer read nothing"
    );
    assert_eq!(
        s.fast_progress.load(Ordering::Relaxed),
        stalled_at,
        "the producer went on writing while the slow consumer's ring was full"
    );
    assert!(
        stalled_at < TOTAL / 2,
        "{stalled_at} messages reached the fast consumer"
    );

    let mut slow = s.slow;
    let slow_seqs = with_deadline(TRANSFER, "slow consumer", move || {
        let seqs = drain(&mut slow);
        (seqs, slow.missed())
    });
    sending.join(TRANSFER);
    let (fast_seqs, fast_missed) = s.fast.join(TRANSFER);
    let all: Vec<u64> = (0..TOTAL).collect();
    assert_eq!(
        slow_seqs,
        (all.clone(), 0),
        "the slow consumer lost messages under policy block"
    );
    assert_eq!(
        (fast_seqs, fast_missed),
        (all, 0),
        "the fast consumer lost messages"
    );
    drop(s.client);
}

#[test]
fn slow_consumer_drop_loses_what_does_not_fit_and_says_how_many() {
    const TOTAL: u64 = 2000;
    let s = slow_setup(SlowConsumer::Drop);
    // Never waits for the slow consumer, whose ring is full after ~140 messages.
    let producer = send_paced(s.producer, TOTAL, &s.fast_progress);
    let mut slow = s.slow;
    let kept = read_available(&mut slow);
    assert!(
        !kept.is_empty() && (kept.len() as u64) < TOTAL,
        "slow consumer got {} messages",
        kept.len()
    );
    assert_eq!(
        kept,
        (0..kept.len() as u64).collect::<Vec<_>>(),
        "the messages that fit arrive in order"
    );
    let lost = TOTAL - kept.len() as u64;
    let peer = consumer_peer(&s.broker, "feed", s.slow_id).expect("slow consumer listed");
    assert_eq!(
        json_u64(&peer, "messages_lost"),
        lost,
        "info counts the losses: {peer}"
    );
    assert_eq!(
        slow.missed(),
        0,
        "the gap is reported where it is, not before"
    );
    let text = s.broker.ctl_ok(&["info", "feed"]);
    assert!(
        text.contains(&format!("{lost} lost")),
        "shmemctl info shows the slow consumer's losses: {text}"
    );

    // The next message that fits comes after the gap, and the consumer is told its size.
    let mut producer = producer;
    producer
        .send(&record(0, TOTAL, MESSAGE))
        .expect("send after the gap");
    producer.close().expect("close");
    let rest = with_deadline(WAIT, "slow consumer after the gap", move || {
        let seqs = drain(&mut slow);
        (seqs, slow.missed())
    });
    assert_eq!(
        rest,
        (vec![TOTAL], lost),
        "after the gap: the next message and the count of those missed"
    );
    let (fast_seqs, fast_missed) = s.fast.join(TRANSFER);
    assert_eq!(
        fast_seqs,
        (0..=TOTAL).collect::<Vec<_>>(),
        "the fast consumer got everything"
    );
    assert_eq!(fast_missed, 0);
    drop(s.client);
}

#[test]
fn slow_consumer_disconnect_detaches_it_with_a_clear_error() {
    const TOTAL: u64 = 2000;
    let s = slow_setup(SlowConsumer::Disconnect);
    let mut producer = send_paced(s.producer, TOTAL, &s.fast_progress);
    assert_eq!(
        producer.consumers(),
        1,
        "the producer stopped writing to the slow consumer"
    );
    let mut slow = s.slow;
    match slow.recv() {
        Err(err @ Error::Disconnected { .. }) => {
            let text = err.to_string();
            for needle in ["feed", "fell behind", "disconnect"] {
                assert!(
                    text.contains(needle),
                    "error {text:?} should mention {needle:?}"
                );
            }
        }
        other => panic!("the slow consumer should be disconnected, got {other:?}"),
    }
    wait_for(
        WAIT,
        "the broker to detach the slow consumer",
        || match consumer_peer(&s.broker, "feed", s.slow_id) {
            None => Ok(()),
            Some(peer) => Err(peer.to_string()),
        },
    );
    producer
        .send(&record(0, TOTAL, MESSAGE))
        .expect("send after the eviction");
    producer.close().expect("close");
    let (fast_seqs, _) = s.fast.join(TRANSFER);
    assert_eq!(
        fast_seqs,
        (0..=TOTAL).collect::<Vec<_>>(),
        "the fast consumer is not affected"
    );
    assert!(
        s.broker.log().contains("slow consumers disconnected"),
        "the broker logs the eviction"
    );
    drop(s.client);
}

#[test]
fn try_send_of_a_frame_that_must_wrap_waits_for_the_consumer_not_forever() {
    let broker = Broker::start(None);
    let client = broker.client();
    create(&client, "wrap", 4096, 1, 2, SlowConsumer::Block);
    let mut consumer = client.consumer("wrap").expect("consumer");
    let mut producer = client.producer("wrap").expect("producer");
    producer.send(&[1u8; 3000]).expect("send");
    assert_eq!(consumer.recv().expect("recv"), Some(vec![1u8; 3000]));
    // 3500 bytes fit only after the consumer passes the padding at the end of the lap.
    let mut producer =
        with_deadline(
            WAIT,
            "try_send before the consumer moved",
            move || match producer.try_send(&[2u8; 3500]) {
                Err(e) if e.is_full() => producer,
                other => panic!("expected would-block, got {other:?}"),
            },
        );
    let reading = Background::spawn("consumer", move || consumer.recv().expect("recv"));
    with_deadline(
        WAIT,
        "try_send once the consumer passed the padding",
        move || loop {
            match producer.try_send(&[2u8; 3500]) {
                Ok(()) => break,
                Err(e) if e.is_full() => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => panic!("try_send: {e}"),
            }
        },
    );
    assert_eq!(reading.join(WAIT), Some(vec![2u8; 3500]));
}

/// Policy `drop`: a consumer that missed the last messages must learn it before the end of the
/// stream. When its ring has room for the end-of-stream mark (16 bytes) but not for the loss
/// record in front of it (32), the producer used to write the mark alone: the consumer saw a
/// clean end and never learned of the lost message. Now the mark is not written either, and
/// the broker tells the consumer at the producer's detach (`EndOfStreamLost`, with the count).
#[test]
fn drop_policy_never_writes_an_end_mark_without_the_loss_record_before_it() {
    let broker = Broker::start(None);
    let client = broker.client();
    create(&client, "tight", 4096, 1, 2, SlowConsumer::Drop);
    let mut consumer = client.consumer("tight").expect("attach the consumer");
    let mut producer = client.producer("tight").expect("attach the producer");
    // Frames are 16 bytes of header plus the payload in 16-byte units, in a 4096-byte ring.
    producer.send(&[1u8; 2032]).expect("send A"); // [0, 2048)
    let a = consumer.recv().expect("receive A").expect("A");
    assert_eq!(a.len(), 2032);
    producer.send(&[2u8; 2032]).expect("send B"); // [2048, 4096)
    producer.send(&[3u8; 2016]).expect("send C"); // [0, 2032): 16 bytes free, mid-ring
                                                  // No room for D (a 32-byte frame): the consumer misses it (policy drop never waits).
    producer.send(&[4u8; 16]).expect("send D, which is lost");
    producer.close().expect("close");
    let b = consumer.recv().expect("receive B").expect("B");
    assert_eq!(b, vec![2u8; 2032]);
    let c = consumer.recv().expect("receive C").expect("C");
    assert_eq!(c, vec![3u8; 2016]);
    match consumer.recv() {
        Err(Error::EndOfStreamLost { missed, .. }) => {
            assert_eq!(missed, 1, "the lost message is counted")
        }
        other => panic!("expected EndOfStreamLost with 1 missed, got {other:?}"),
    }
}
