//! Zero-copy both ways against the real broker: loans (`Producer::loan`/`try_loan`,
//! `AsyncProducer::loan`) and borrowed receives (`Consumer::recv_ref`/`try_recv_ref`,
//! `AsyncConsumer::recv_ref`), one-to-one and fan-out (one consumer: the loan is in its ring;
//! several: a private buffer), thousands of self-checking messages of varied sizes through
//! small rings so that frames wrap and sides wait for each other; a dropped loan publishes
//! nothing; a loan is filled across `.await` points on a multi-threaded runtime; a borrowed
//! sample holds its space until it is dropped.

use shmem_broker_client::{
    AsyncConsumer, AsyncProducer, Client, Consumer, Producer, Sample, SlowConsumer,
};
use shmem_broker_tests::raw_ring::Mapping;
use shmem_broker_tests::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Generous bound for one transfer with debug binaries on a small shared machine.
const TRANSFER: Duration = Duration::from_secs(300);
const MESSAGES: u64 = 3000;

/// Messages numbered from here on are large: a writer starts them at the ring's first byte
/// whenever its consumer borrows in place and has read past the room they need there.
const LARGE: std::ops::Range<u64> = 1 << 32..(1 << 32) + 300;

/// Sizes around frame units, cache lines, pages and the wrap, at least 8 (the sequence); from
/// `LARGE.start` on, 256 KiB to 700 KiB.
fn size(seq: u64) -> usize {
    const SIZES: [usize; 12] = [8, 9, 15, 16, 17, 63, 64, 65, 1000, 4095, 4096, 12000];
    if seq >= LARGE.start {
        return (256 << 10) + (seq % 7) as usize * 70_001;
    }
    SIZES[(seq % 12) as usize] + (seq % 5) as usize
}

/// Writes message `seq` into `buf` in place: its sequence, then bytes derived from it.
fn fill(buf: &mut [u8], seq: u64) {
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    for (i, byte) in buf.iter_mut().enumerate().skip(8) {
        *byte = (seq as usize * 31 + i * 7) as u8;
    }
}

fn expected(seq: u64) -> Vec<u8> {
    let mut out = vec![0; size(seq)];
    fill(&mut out, seq);
    out
}

/// Checks a borrowed sample against message `seq` through every accessor.
fn check(sample: &Sample<'_>, seq: u64) {
    let want = expected(seq);
    assert_eq!(sample.len(), want.len(), "message {seq}: length");
    assert_eq!(sample.to_vec(), want, "message {seq} damaged");
    let mut head = [0u8; 8];
    assert_eq!(sample.copy_to(&mut head), 8);
    assert_eq!(u64::from_le_bytes(head), seq);
    let mid = want.len() / 2;
    let mut part = [0u8; 13];
    let n = sample.read_at(mid, &mut part);
    assert_eq!(&part[..n], &want[mid..(mid + 13).min(want.len())]);
    assert_eq!(sample.get(want.len() - 1), want.last().copied());
    assert_eq!(sample.get(want.len()), None);
    // SAFETY: the producer is this test's, an honest one: nothing writes the message while
    // the sample holds it.
    assert_eq!(unsafe { sample.as_slice() }, &want[..]);
}

/// Receives `count` messages with `recv_ref` (every third with `try_recv_ref`), then the
/// end-of-stream mark.
fn consume(consumer: &mut Consumer, seqs: std::ops::Range<u64>) {
    for seq in seqs {
        if seq % 3 == 1 {
            loop {
                match consumer.try_recv_ref() {
                    Ok(Some(sample)) => {
                        check(&sample, seq);
                        break;
                    }
                    Ok(None) => panic!("end-of-stream before message {seq}"),
                    Err(e) if e.is_empty() => {}
                    Err(e) => panic!("try_recv_ref {seq}: {e}"),
                }
                readable(consumer.ready_fd(), WAIT);
            }
        } else {
            let sample = consumer
                .recv_ref()
                .unwrap_or_else(|e| panic!("recv_ref {seq}: {e}"))
                .unwrap_or_else(|| panic!("end-of-stream before message {seq}"));
            check(&sample, seq);
        }
    }
    assert!(
        consumer.recv_ref().expect("recv_ref").is_none(),
        "end-of-stream after the last message"
    );
}

/// Sends `count` messages written in place: with `loan`, `try_loan` (waiting on `ready_fd`
/// when full; the probe loan is dropped, which must publish nothing) and `send_with`.
fn produce(producer: &mut Producer, seqs: std::ops::Range<u64>) {
    for seq in seqs {
        let len = size(seq);
        match seq % 3 {
            0 => {
                let mut loan = producer.loan(len).expect("loan");
                assert_eq!(loan.len(), len);
                fill(&mut loan, seq);
                loan.send().expect("send loan");
            }
            1 => {
                while let Err(e) = producer.try_loan(len).map(drop) {
                    assert!(e.is_full(), "try_loan {seq}: {e}");
                    readable(producer.ready_fd(), WAIT);
                }
                // The probe secured room and dropped its loan; nobody else writes here.
                let mut loan = producer.try_loan(len).expect("room after the probe");
                fill(&mut loan, seq);
                loan.send().expect("send loan");
            }
            _ => producer
                .send_with(len, |buf| fill(buf, seq))
                .expect("send_with"),
        }
    }
}

fn fanout(client: &Client, name: &str, capacity: u64, consumers: u32) {
    client
        .channel(name)
        .capacity(capacity)
        .max_consumers(consumers)
        .slow_consumer(SlowConsumer::Block)
        .create()
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
}

/// `consumers` consumers attached first, then a producer sending messages `seqs` in place.
fn round_trip(socket: &Path, channel: &str, consumers: usize, seqs: std::ops::Range<u64>) {
    let readers: Vec<_> = (0..consumers)
        .map(|i| {
            let mut consumer = connect(socket).consumer(channel).expect("attach consumer");
            let seqs = seqs.clone();
            Background::spawn(&format!("consumer {i}"), move || {
                consume(&mut consumer, seqs)
            })
        })
        .collect();
    let mut producer = connect(socket).producer(channel).expect("attach producer");
    produce(&mut producer, seqs);
    producer.close().expect("close");
    for reader in readers {
        reader.join(TRANSFER);
    }
}

#[test]
fn loans_and_borrowed_samples_carry_thousands_of_messages_one_to_one() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "z1", "--capacity", "32KiB"]);
    round_trip(broker.socket_path(), "z1", 1, 0..MESSAGES);
}

#[test]
fn large_borrowed_messages_arrive_intact_while_the_producer_starts_laps_over() {
    // 256-700 KiB through a 2 MiB ring: with a consumer borrowing in place, the producer
    // starts most messages at the ring's first byte, padding the rest of the lap, right
    // behind the consumer; every byte is checked.
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "zl", "--capacity", "2MiB"]);
    round_trip(broker.socket_path(), "zl", 1, LARGE);
    let info = broker.client().info("zl").expect("info");
    let carried: u64 = LARGE.map(|seq| size(seq) as u64).sum();
    assert_eq!(info.bytes_written, carried);
}

#[test]
fn fanout_loans_to_one_consumer_are_in_its_ring_and_carry_thousands_of_messages() {
    let broker = Broker::start(None);
    fanout(&broker.client(), "zf1", 32 << 10, 4);
    round_trip(broker.socket_path(), "zf1", 1, 0..MESSAGES);
}

#[test]
fn fanout_loans_to_several_consumers_carry_thousands_of_messages_to_each() {
    let broker = Broker::start(None);
    fanout(&broker.client(), "zf3", 32 << 10, 4);
    round_trip(broker.socket_path(), "zf3", 3, 0..MESSAGES);
}

/// Loans filled with junk and dropped, around every message (some of them needing padding to
/// start a new lap), then an empty message: the consumers get exactly the messages sent (a
/// published junk loan would show up as a message of another length and content).
fn dropped_loans_publish_nothing(socket: &Path, channel: &str, consumers: usize) {
    const COUNT: u64 = 600;
    let readers: Vec<_> = (0..consumers)
        .map(|i| {
            let mut consumer = connect(socket).consumer(channel).expect("attach consumer");
            Background::spawn(&format!("consumer {i}"), move || {
                for seq in 0..COUNT {
                    let sample = consumer
                        .recv_ref()
                        .unwrap_or_else(|e| panic!("recv_ref {seq}: {e}"))
                        .unwrap_or_else(|| panic!("end-of-stream before message {seq}"));
                    check(&sample, seq);
                }
                let sample = consumer
                    .recv_ref()
                    .expect("recv_ref")
                    .expect("empty message");
                assert!(sample.is_empty(), "a dropped loan was published");
                assert_eq!(sample.to_vec(), Vec::<u8>::new());
                drop(sample);
                assert!(
                    consumer.recv_ref().expect("recv_ref").is_none(),
                    "end-of-stream after the empty message"
                );
            })
        })
        .collect();
    let mut producer = connect(socket).producer(channel).expect("attach producer");
    for seq in 0..COUNT {
        for junk in [size(seq + 7), 0] {
            let mut loan = producer.loan(junk).expect("loan");
            loan.fill(0xee);
            drop(loan);
        }
        let mut loan = producer.loan(size(seq)).expect("loan");
        fill(&mut loan, seq);
        loan.send().expect("send");
    }
    drop(producer.loan(100).expect("loan"));
    producer.loan(0).expect("loan").send().expect("send empty");
    producer.close().expect("close");
    for reader in readers {
        reader.join(TRANSFER);
    }
}

#[test]
fn a_dropped_loan_publishes_nothing_and_the_next_message_arrives_intact() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "zd", "--capacity", "16KiB"]);
    dropped_loans_publish_nothing(broker.socket_path(), "zd", 1);
    fanout(&broker.client(), "zd1", 16 << 10, 2);
    dropped_loans_publish_nothing(broker.socket_path(), "zd1", 1);
    fanout(&broker.client(), "zd2", 16 << 10, 2);
    dropped_loans_publish_nothing(broker.socket_path(), "zd2", 2);
}

/// A producer whose next message does not fit while a consumer holds a sample: it proceeds
/// only once that sample is dropped.
fn a_held_sample_keeps_its_space(socket: &Path, channel: &str, consumers: usize) {
    let mut readers: Vec<Consumer> = (0..consumers)
        .map(|_| connect(socket).consumer(channel).expect("attach consumer"))
        .collect();
    let mut producer = connect(socket).producer(channel).expect("attach producer");
    // 3000 bytes of a 4 KiB ring: a second one fits only once the first is released.
    let big = |seq: u64| {
        let mut message = vec![0; 3000];
        fill(&mut message, seq);
        message
    };
    producer.send(&big(0)).expect("first message");
    let (holder, others) = readers.split_first_mut().expect("a consumer");
    // Everyone else releases the first message at once.
    for consumer in others.iter_mut() {
        let sample = consumer.recv_ref().expect("recv_ref").expect("message");
        assert_eq!(sample.to_vec(), big(0));
    }
    let sample = holder.recv_ref().expect("recv_ref").expect("message");
    assert_eq!(sample.to_vec(), big(0));
    let sender = Background::spawn("blocked producer", move || {
        producer.send(&big(1)).expect("second message");
        producer
    });
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        !sender.is_finished(),
        "the producer went on while the sample still held the space"
    );
    assert_eq!(sample.to_vec(), big(0), "the held message was overwritten");
    drop(sample);
    let producer = sender.join(WAIT * 3);
    for consumer in &mut readers {
        let sample = consumer.recv_ref().expect("recv_ref").expect("message");
        assert_eq!(sample.to_vec(), big(1));
    }
    drop(producer);
}

#[test]
fn a_borrowed_sample_frees_its_space_only_when_dropped() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "zh", "--capacity", "4KiB"]);
    a_held_sample_keeps_its_space(broker.socket_path(), "zh", 1);
    fanout(&broker.client(), "zh2", 4 << 10, 2);
    a_held_sample_keeps_its_space(broker.socket_path(), "zh2", 2);
}

/// Async: every message's loan is filled in two halves with `.await` points between (the
/// task may resume on another worker thread); consumers use the async borrowed receive.
async fn async_round_trip(socket: PathBuf, channel: &'static str, consumers: usize) {
    let readers: Vec<_> = (0..consumers)
        .map(|_| {
            let consumer = connect(&socket).consumer(channel).expect("attach consumer");
            let mut consumer = AsyncConsumer::new(consumer).expect("async consumer");
            tokio::spawn(async move {
                for seq in 0..MESSAGES {
                    let sample = consumer
                        .recv_ref()
                        .await
                        .unwrap_or_else(|e| panic!("recv_ref {seq}: {e}"))
                        .unwrap_or_else(|| panic!("end-of-stream before {seq}"));
                    check(&sample, seq);
                    if seq % 500 == 0 {
                        // Held across an await too.
                        tokio::task::yield_now().await;
                        check(&sample, seq);
                    }
                }
                assert!(consumer.recv_ref().await.expect("recv_ref").is_none());
            })
        })
        .collect();
    let producer = connect(&socket).producer(channel).expect("attach producer");
    let writer = tokio::spawn(async move {
        let mut producer = AsyncProducer::new(producer).expect("async producer");
        for seq in 0..MESSAGES {
            let message = expected(seq);
            let mut loan = producer.loan(message.len()).await.expect("loan");
            let half = message.len() / 2;
            loan[..half].copy_from_slice(&message[..half]);
            tokio::task::yield_now().await;
            if seq % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            loan[half..].copy_from_slice(&message[half..]);
            loan.send().expect("send");
        }
        producer.into_inner()
    });
    let producer = tokio::time::timeout(TRANSFER, writer)
        .await
        .expect("producer in time")
        .expect("producer task");
    tokio::task::spawn_blocking(move || producer.close().expect("close"))
        .await
        .expect("close task");
    for reader in readers {
        tokio::time::timeout(TRANSFER, reader)
            .await
            .expect("consumer in time")
            .expect("consumer task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loan_is_filled_across_awaits_on_a_multi_thread_runtime() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "za", "--capacity", "16KiB"]);
    async_round_trip(broker.socket_path().to_path_buf(), "za", 1).await;
    fanout(&broker.client(), "za2", 16 << 10, 2);
    async_round_trip(broker.socket_path().to_path_buf(), "za2", 2).await;
}

/// A consumer of a fan-out channel that would rewrite the data area of its ring while the
/// producer fills loans for it and for an honest consumer. Since ring layout 3 it cannot: the
/// ring comes read-only (mapping it writable fails with EACCES). It scribbles what it owns,
/// its ack page (positions, counters, flag), without pause; the honest consumer gets every
/// message intact.
#[test]
fn a_consumer_rewriting_its_ring_cannot_change_a_loan_sent_to_another() {
    const CAPACITY: u64 = 16 << 10;
    const HEADER: usize = 4096;
    let broker = Broker::start(None);
    let socket = broker.socket_path();
    broker
        .client()
        .channel("zx")
        .capacity(CAPACITY)
        .max_consumers(2)
        .slow_consumer(SlowConsumer::Drop)
        .create()
        .expect("create zx");
    let hostile = raw_attach_any(socket, "zx", "consumer");
    let lane = &hostile.lanes()[0];
    assert_eq!(
        Mapping::try_new(lane.ring, HEADER as u64 + CAPACITY)
            .err()
            .and_then(|e| e.raw_os_error()),
        Some(libc::EACCES),
        "a consumer must not be able to map its ring writable"
    );
    let ack_fd = lane.ack.try_clone().expect("dup the ack fd");
    let mut honest = connect(socket)
        .consumer("zx")
        .expect("attach honest consumer");
    let mut producer = connect(socket).producer("zx").expect("attach producer");
    let stop = Arc::new(AtomicBool::new(false));
    let scribbling = Arc::clone(&stop);
    let scribbler = Background::spawn("scribbler", move || {
        let ack = Mapping::new(&ack_fd, 4096);
        let mut passes = 0u64;
        while !scribbling.load(Ordering::Relaxed) {
            for offset in (0..4096).step_by(8) {
                ack.u64_at(offset).store(
                    passes.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    Ordering::Relaxed,
                );
            }
            passes += 1;
        }
        passes
    });
    for seq in 0..2000u64 {
        let mut loan = producer.loan(4000).expect("loan");
        fill(&mut loan, seq);
        // A producer may take its time filling a loan; the scribbler runs meanwhile.
        std::thread::sleep(Duration::from_micros(50));
        loan.send().expect("send");
        let sample = honest.recv_ref().expect("recv_ref").expect("not the end");
        let mut want = vec![0; 4000];
        fill(&mut want, seq);
        assert_eq!(
            sample.to_vec(),
            want,
            "message {seq} reached the honest consumer altered"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let passes = scribbler.join(WAIT);
    assert!(passes > 10, "the scribbler ran {passes} passes only");
    drop(hostile);
}

/// 3000-byte message `seq` (a 4 KiB ring holds one).
fn big(seq: u64) -> Vec<u8> {
    let mut message = vec![0; 3000];
    fill(&mut message, seq);
    message
}

/// One-to-one: a sample given back unread comes again, whole, to the next receive (borrowed
/// or copied), as many times as it is given back; its space stays taken meanwhile and the
/// consumer's position does not move.
#[test]
fn a_sample_given_back_unread_comes_again_to_the_next_receive() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "zu", "--capacity", "4KiB"]);
    let socket = broker.socket_path();
    let mut consumer = connect(socket).consumer("zu").expect("attach consumer");
    let mut producer = connect(socket).producer("zu").expect("attach producer");
    producer.send(&big(0)).expect("send");
    producer.send(b"small").expect("send");
    let before = consumer.position();
    for _ in 0..3 {
        let sample = consumer.recv_ref().expect("recv_ref").expect("message");
        assert_eq!(sample.to_vec(), big(0));
        sample.unread();
        assert_eq!(
            consumer.position(),
            before,
            "giving back moved the consumer"
        );
        let full = producer
            .try_send(&big(1))
            .expect_err("room while given back");
        assert!(full.is_full(), "{full}");
    }
    let sample = consumer
        .try_recv_ref()
        .expect("try_recv_ref")
        .expect("message");
    assert_eq!(sample.to_vec(), big(0));
    sample.unread();
    assert_eq!(consumer.recv().expect("recv"), Some(big(0)));
    assert_eq!(consumer.recv().expect("recv"), Some(b"small".to_vec()));
    assert_eq!(consumer.missed(), 0);
}

/// Fan-out: a sample given back comes again before the other producers' messages (the
/// consumer reads its producers' rings in turn), from the same producer; a durable consumer
/// that gives one back and detaches finds it again when it comes back; a loss record read on
/// the way to a sample given back stays counted once.
#[test]
fn fanout_and_durable_samples_given_back_come_again_from_the_same_producer() {
    let broker = Broker::start(None);
    let client = broker.client();
    client
        .channel("zuf")
        .capacity(4096)
        .max_producers(2)
        .max_consumers(2)
        .slow_consumer(SlowConsumer::Drop)
        .create()
        .expect("create zuf");
    let socket = broker.socket_path();
    let mut consumer = connect(socket).consumer("zuf").expect("attach consumer");
    let mut durable = connect(socket)
        .attach("zuf")
        .durable("d")
        .consumer()
        .expect("attach the durable consumer");
    let mut producers: Vec<Producer> = (0..2)
        .map(|_| connect(socket).producer("zuf").expect("attach producer"))
        .collect();
    for (i, producer) in producers.iter_mut().enumerate() {
        producer
            .send(format!("from {i}, first").as_bytes())
            .expect("send");
        producer
            .send(format!("from {i}, second").as_bytes())
            .expect("send");
    }
    let mut got = Vec::new();
    for _ in 0..4 {
        let sample = consumer.recv_ref().expect("recv_ref").expect("message");
        let (bytes, from) = (sample.to_vec(), sample.producer());
        sample.unread();
        for _ in 0..2 {
            let again = consumer.recv_ref().expect("recv_ref").expect("message");
            assert_eq!(again.to_vec(), bytes, "another message came first");
            assert_eq!(again.producer(), from);
            again.unread();
        }
        assert_eq!(consumer.recv().expect("recv"), Some(bytes.clone()));
        assert_eq!(consumer.last_producer(), from);
        got.push(String::from_utf8(bytes).expect("text"));
    }
    got.sort();
    assert_eq!(
        got,
        [
            "from 0, first",
            "from 0, second",
            "from 1, first",
            "from 1, second"
        ]
    );

    // Durable: given back, detached, attached again: the same message first.
    let sample = durable.recv_ref().expect("recv_ref").expect("message");
    let (bytes, from) = (sample.to_vec(), sample.producer());
    sample.unread();
    drop(durable);
    let mut durable = connect(socket)
        .attach("zuf")
        .durable("d")
        .consumer()
        .expect("attach the durable consumer again");
    let sample = durable.recv_ref().expect("recv_ref").expect("message");
    assert_eq!(
        sample.to_vec(),
        bytes,
        "the durable consumer lost the message"
    );
    assert_eq!(sample.producer(), from);
    drop(sample);
    drop(durable);

    // Loss: 10 large messages into a ring that holds one, read, then one more after the gap.
    let producer = &mut producers[0];
    for seq in 0..10 {
        producer.send(&big(seq)).expect("send");
    }
    while consumer.try_recv().is_ok_and(|m| m.is_some()) {}
    let lost = consumer.missed();
    producer.send(&big(10)).expect("send after the gap");
    let sample = consumer.recv_ref().expect("recv_ref").expect("message");
    assert_eq!(sample.to_vec(), big(10));
    sample.unread();
    let missed = consumer.missed();
    assert!(missed > lost, "no loss record before message 10");
    let sample = consumer.recv_ref().expect("recv_ref").expect("message");
    assert_eq!(sample.to_vec(), big(10));
    drop(sample);
    assert_eq!(consumer.missed(), missed, "the loss was counted twice");
}
