//! Reading ahead and all-or-nothing sends, the client calls the bridge forwards a channel with
//! (`Consumer::try_recv_ahead` / `release_to`, `Producer::try_send_all` / `end_position`):
//! nothing is released but what the caller names, a position it names is checked (never half a
//! frame, never bytes not read yet, never again what is released), the next consumer gets
//! exactly the unreleased items with the same positions, and a refused send publishes nothing.

use shmem_broker_client::{Error, ReadItem, TryRecvError};
use shmem_broker_tests::*;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(60);

/// One item handed out by a read ahead: positions, and the message (`None`: a mark or padding).
type Seen = (u64, u64, Option<Vec<u8>>);

/// Reads ahead until nothing new is published; every item, in order.
fn read_ahead_all(consumer: &mut shmem_broker_client::Consumer) -> Vec<Seen> {
    let mut seen = Vec::new();
    loop {
        let got = consumer.try_recv_ahead(7, |from, to, item| {
            let bytes = match item {
                ReadItem::Message(bytes) => Some(bytes.to_vec()),
                _ => None,
            };
            seen.push((from, to, bytes));
        });
        match got {
            Ok(n) => assert!(n > 0, "an empty read ahead returns Empty, not 0"),
            Err(TryRecvError::Empty) => return seen,
            Err(e) => panic!("read ahead: {e}"),
        }
    }
}

fn message(seq: u64) -> Vec<u8> {
    let len = 100 + (seq.wrapping_mul(2_654_435_761) % 1800) as usize;
    stamp::numbered(0, seq, stamp::HEADER + len)
}

fn refused(result: shmem_broker_client::Result<()>) -> String {
    match result {
        Err(e @ Error::BadRelease { .. }) => e.to_string(),
        other => panic!("expected BadRelease, got {other:?}"),
    }
}

#[test]
fn read_ahead_releases_only_positions_it_handed_out_and_the_next_consumer_gets_the_rest() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "ahead", "--capacity", "64KiB"]);
    let client = broker.client();
    let mut producer = client.producer("ahead").expect("producer");
    // Half a lap read and released the plain way, so the items below wrap (padding inside).
    let mut consumer = client.consumer("ahead").expect("consumer A");
    for _ in 0..30 {
        producer.send(&[7; 1000]).expect("send");
        assert!(consumer.recv().expect("recv").is_some());
    }
    let start = consumer.position().expect("one-to-one");
    for seq in 0..40 {
        producer.send(&message(seq)).expect("send");
    }
    let items = read_ahead_all(&mut consumer);
    assert_eq!(items.len(), 40, "every message once");
    assert_eq!(items[0].0, start);
    for (seq, pair) in items.windows(2).enumerate() {
        assert_eq!(pair[0].1, pair[1].0, "positions contiguous at item {seq}");
    }
    for (seq, (_, _, bytes)) in items.iter().enumerate() {
        assert_eq!(
            bytes.as_deref(),
            Some(&message(seq as u64)[..]),
            "item {seq}"
        );
    }
    assert!(
        items.last().expect("items").1 - start > 40 * 100,
        "positions count bytes"
    );

    // Positions that are not the end of an unreleased item read ahead: refused, no effect.
    let mid_frame = items[20].1 - 8;
    let past_read = items[39].1 + 8;
    for bad in [mid_frame, past_read, start - 8, 0, u64::MAX] {
        let why = refused(consumer.release_to(bad));
        assert!(why.contains(&bad.to_string()), "{why}");
    }
    consumer.release_to(items[19].1).expect("release 20 items");
    consumer
        .release_to(items[19].1)
        .expect("the released position: nothing to do");
    refused(consumer.release_to(items[9].1));
    // Nothing released is read again, and nothing new came.
    assert!(matches!(
        consumer.try_recv_ahead(10, |_, _, _| panic!("read again")),
        Err(TryRecvError::Empty)
    ));
    drop(consumer);
    broker.wait_for_no_peer_with_role("ahead", "consumer");

    // The next consumer (a one-to-one channel's is the same durable reader) starts at the
    // released position and gets exactly the 20 unreleased items, with the same positions.
    let mut consumer = client.consumer("ahead").expect("consumer B");
    assert_eq!(consumer.position(), Some(items[19].1));
    let again = read_ahead_all(&mut consumer);
    assert_eq!(again, items[20..].to_vec());
    producer.close().expect("close");
    let end = read_ahead_all(&mut consumer);
    assert_eq!(end.len(), 1);
    assert_eq!((end[0].0, end[0].2.as_deref()), (items[39].1, None));
    consumer.release_to(end[0].1).expect("release all");
    let info = broker.info("ahead");
    assert_eq!(json_u64(&info, "bytes_unread"), 0, "info: {info}");
}

#[test]
fn a_ring_full_of_items_read_ahead_holds_the_producer_until_they_are_released() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "held", "--capacity", "64KiB"]);
    let count = 200u64;
    let socket = broker.socket_path().to_path_buf();
    let producer = Background::spawn("producer", move || {
        let client = connect(&socket);
        let mut producer = client.producer("held").expect("producer");
        for seq in 0..count {
            producer.send(&stamp::numbered(0, seq, 4096)).expect("send");
        }
        producer.close().expect("close");
    });
    let client = broker.client();
    let mut consumer = client.consumer("held").expect("consumer");
    let mut items: Vec<Seen> = Vec::new();
    // Read ahead until the ring is full of unreleased items and the producer stops.
    let deadline = Instant::now() + TIMEOUT;
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_millis(500) {
        assert!(Instant::now() < deadline, "the ring never filled");
        let got = read_ahead_all(&mut consumer);
        if !got.is_empty() {
            quiet_since = Instant::now();
        }
        items.extend(got);
        std::thread::sleep(Duration::from_millis(20));
    }
    // 15 messages fill it (and the padding after them is an item of its own).
    let messages = items.iter().filter(|item| item.2.is_some()).count();
    assert!(
        messages <= 15 && !producer.is_finished(),
        "{messages} messages of 4 KiB read ahead in a 64 KiB ring: it released something"
    );
    // Releasing wakes the producer, and the rest follows, read ahead and released as it comes.
    let mut next = 0u64;
    let check = |items: &[Seen], next: &mut u64| {
        for (_, _, bytes) in items {
            let Some(bytes) = bytes else { continue };
            let (_, seq) = stamp::check_numbered(bytes).expect("intact");
            assert_eq!(seq, *next, "lost or repeated");
            *next += 1;
        }
    };
    check(&items, &mut next);
    let mut last = items.last().expect("items").1;
    consumer.release_to(last).expect("release");
    while next < count {
        assert!(Instant::now() < deadline, "stuck after {next} of {count}");
        let got = read_ahead_all(&mut consumer);
        check(&got, &mut next);
        if let Some(item) = got.last() {
            last = item.1;
            consumer.release_to(last).expect("release");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    producer.join(TIMEOUT);
}

#[test]
fn try_send_all_publishes_all_or_nothing_and_end_position_says_where_it_ends() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "all", "--capacity", "64KiB"]);
    let client = broker.client();
    let mut producer = client.producer("all").expect("producer");
    let mut consumer = client.consumer("all").expect("consumer");
    let kib = |n: usize| vec![n as u8; n << 10];
    // Write position near the end of the first lap, the consumer 30 KiB behind it.
    for _ in 0..60 {
        producer.send(&kib(1)).expect("send");
    }
    for _ in 0..30 {
        assert!(consumer.recv().expect("recv").is_some());
    }
    let before = producer.position().expect("one-to-one");
    // Four 8 KiB messages need padding to the lap's end first, more than is free: refused,
    // and nothing is published, not even the padding.
    let four = [kib(8), kib(8), kib(8), kib(8)];
    let four: Vec<&[u8]> = four.iter().map(|m| &m[..]).collect();
    let end = producer.end_position(&four).expect("end");
    assert!(end - before > 4 * 8192, "padding counted: {before}..{end}");
    assert!(!producer.try_send_all(&four).expect("try"));
    assert_eq!(
        producer.position(),
        Some(before),
        "a refused run published something"
    );
    // Three fit with their padding: published together, ending where it was said.
    let end = producer.end_position(&four[..3]).expect("end");
    assert!(producer.try_send_all(&four[..3]).expect("try"));
    assert_eq!(producer.position(), Some(end));
    for _ in 0..30 {
        assert_eq!(consumer.recv().expect("recv"), Some(kib(1)));
    }
    for _ in 0..3 {
        assert_eq!(consumer.recv().expect("recv"), Some(kib(8)));
    }
    // One by one ends at the same place as all at once.
    let end = producer.end_position(&four).expect("end");
    for message in &four {
        producer.send(message).expect("send");
        assert!(consumer.recv().expect("recv").is_some());
    }
    assert_eq!(producer.position(), Some(end));
    // A run that can never be in the ring at once is refused, not cut.
    let huge = vec![four[0]; 9];
    assert!(!producer.try_send_all(&huge).expect("try"));
    assert_eq!(producer.position(), Some(end));
}

/// The bridge's large-message path: messages sent in parts (as Zenoh's fragments come) arrive
/// whole, and a consumer reading ahead may keep the buffer each message was copied into; the
/// items stay unreleased, so the next consumer reads them again.
#[test]
fn messages_sent_in_parts_arrive_whole_and_a_kept_read_ahead_buffer_is_the_message() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "parts", "--capacity", "64KiB"]);
    let client = broker.client();
    let mut producer = client.producer("parts").expect("producer");
    let whole: Vec<Vec<u8>> = (0..3).map(message).collect();
    let parts: Vec<Vec<&[u8]>> = whole
        .iter()
        .map(|m| vec![&m[..10], &m[10..10], &m[10..]])
        .collect();
    let run: Vec<&[&[u8]]> = parts.iter().map(Vec::as_slice).collect();
    let end = producer.end_position(&run).expect("end");
    assert!(producer.try_send_all(&run).expect("send"));
    assert_eq!(producer.position(), Some(end));
    let mut consumer = client.consumer("parts").expect("consumer");
    let mut kept = Vec::new();
    let got = consumer
        .try_recv_ahead_owned(8, |_, _, item| {
            if let shmem_broker_client::AheadItem::Message(bytes) = item {
                kept.push(std::mem::take(bytes));
            }
        })
        .expect("read ahead");
    assert_eq!((got, &kept), (3, &whole));
    drop(consumer);
    let mut next = client.consumer("parts").expect("next consumer");
    let again: Vec<Vec<u8>> = read_ahead_all(&mut next)
        .into_iter()
        .filter_map(|(_, _, bytes)| bytes)
        .collect();
    assert_eq!(again, whole, "unreleased items are read again");
}
