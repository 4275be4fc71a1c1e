//! Many producers and consumers per channel, through the real broker: fan-out of a 256 MiB
//! stream to three `shmemctl recv`, a late joiner starting at the next message, each
//! slow-consumer policy, four producers merged fairly into one consumer, a durable consumer
//! killed and re-attached, an anonymous consumer's rings freed, and what an old (version 1 or 2)
//! client is told.

use shmem_broker_client::wire::SPLIT_RINGS_VERSION;
use shmem_broker_client::{Client, Consumer, Error, Producer, SlowConsumer, TryRecvError};
use shmem_broker_tests::*;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// Generous bound for one library transfer with debug binaries on a 2-core machine.
const TRANSFER: Duration = Duration::from_secs(300);

fn create(
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
fn record(producer: u32, seq: u64, len: usize) -> Vec<u8> {
    stamp::numbered(producer, seq, len.max(stamp::HEADER))
}

/// (producer tag, sequence) of a message made by [`record`]; fails the test on anything else.
fn parse(message: &[u8]) -> (u32, u64) {
    stamp::check_numbered(message).unwrap_or_else(|e| panic!("{e}"))
}

fn attached_consumers(broker: &Broker, channel: &str) -> usize {
    let info = broker.info(channel);
    json_array(&info, "peers")
        .iter()
        .filter(|p| p["role"] == "consumer" && p["attached"] == true)
        .count()
}

fn wait_for_consumers(broker: &Broker, channel: &str, count: usize) {
    wait_for(
        WAIT,
        format!("{count} consumers attached to {channel}"),
        || match attached_consumers(broker, channel) {
            n if n == count => Ok(()),
            n => Err(format!("{n} attached: {}", broker.info(channel))),
        },
    );
}

fn consumer_peer(broker: &Broker, channel: &str, id: u32) -> Option<serde_json::Value> {
    let info = broker.info(channel);
    json_array(&info, "peers")
        .iter()
        .find(|p| p["role"] == "consumer" && p["id"].as_u64() == Some(u64::from(id)))
        .cloned()
}

/// Receives until end-of-stream, checking each message; returns the sequence numbers.
fn drain(consumer: &mut Consumer) -> Vec<u64> {
    let mut seqs = Vec::new();
    while let Some(message) = consumer.recv().expect("recv") {
        seqs.push(parse(&message).1);
    }
    seqs
}

#[test]
fn three_consumers_each_get_the_whole_256mib_stream() {
    const SIZE: u64 = 256 << 20;
    let broker = Broker::start(None);
    broker.ctl_ok(&[
        "create",
        "cam",
        "--capacity",
        "1MiB",
        "--max-consumers",
        "3",
    ]);
    let input = broker.dir().join("input.bin");
    let want = write_random_file(&input, SIZE, 0xfa_0001);
    let mut receivers = Vec::new();
    for i in 0..3 {
        let out = File::create(broker.dir().join(format!("out{i}.bin"))).expect("create output");
        receivers.push(broker.spawn_ctl(&["recv", "cam"], Stdio::null(), Some(Stdio::from(out))));
    }
    wait_for_consumers(&broker, "cam", 3);
    let stdin = File::open(&input).expect("open input");
    let sent = broker
        .spawn_ctl(&["send", "cam"], Stdio::from(stdin), None)
        .output(TRANSFER);
    sent.expect_success();
    for (i, mut receiver) in receivers.into_iter().enumerate() {
        receiver.output(TRANSFER).expect_success();
        let path = broker.dir().join(format!("out{i}.bin"));
        assert_eq!(
            file_len(&path),
            SIZE,
            "consumer {i} received {} bytes",
            file_len(&path)
        );
        assert_eq!(
            sha256_file(&path),
            want,
            "consumer {i} received different bytes"
        );
    }
    // Anonymous consumers' rings go with them.
    wait_for(WAIT, "the consumers' rings to be freed", || {
        let info = broker.info("cam");
        match json_u64(&info, "ring_bytes") {
            0 => Ok(()),
            _ => Err(info.to_string()),
        }
    });
}

#[test]
fn a_late_joiner_starts_at_the_next_message() {
    const FIRST: u64 = 1000;
    const TOTAL: u64 = 5000;
    let broker = Broker::start(None);
    let client = broker.client();
    create(&client, "stream", 64 << 10, 1, 2, SlowConsumer::Block);
    let early = client
        .consumer("stream")
        .expect("attach the first consumer");
    let mut producer = client.producer("stream").expect("attach the producer");
    let (written_first, first_written) = mpsc::channel();
    let (go_on, go) = mpsc::channel::<()>();
    let early = Background::spawn("first consumer", move || {
        let mut early = early;
        drain(&mut early)
    });
    let sending = Background::spawn("producer", move || {
        for seq in 0..TOTAL {
            if seq == FIRST {
                written_first.send(()).expect("tell the test");
                go.recv().expect("wait for the late consumer");
            }
            producer
                .send(&record(0, seq, 1 + (seq as usize * 131) % 3000))
                .expect("send");
        }
        producer.close().expect("close");
    });
    first_written
        .recv_timeout(TRANSFER)
        .expect("the producer wrote the first messages");
    let late = client.consumer("stream").expect("attach the late consumer");
    go_on.send(()).expect("let the producer go on");
    let late_seqs = with_deadline(TRANSFER, "late consumer", move || {
        let mut late = late;
        drain(&mut late)
    });
    sending.join(TRANSFER);
    let early_seqs = early.join(TRANSFER);
    assert_eq!(
        early_seqs,
        (0..TOTAL).collect::<Vec<_>>(),
        "the first consumer missed or reordered messages"
    );
    assert_eq!(
        late_seqs.first(),
        Some(&FIRST),
        "a consumer attached after message {} was written must start at message {FIRST}",
        FIRST - 1
    );
    assert_eq!(
        late_seqs,
        (FIRST..TOTAL).collect::<Vec<_>>(),
        "the late consumer missed or reordered messages"
    );
}

/// Consumers joining while a producer streams without pause each get every message whose
/// send started after their attach returned. The broker bumps the control page and then writes
/// the lane event; a busy producer that saw the bump before the event was in its socket used to
/// take the bump as done and write on without the new consumer's ring until the next change
/// (found by the fan-out soak: anonymous consumers missed thousands of messages).
#[test]
fn late_joiners_of_a_busy_producer_get_every_message_sent_after_their_attach() {
    const JOINERS: usize = 60;
    let broker = Broker::start(None);
    let client = broker.client();
    create(&client, "busy", 1 << 20, 1, 2, SlowConsumer::Block);
    let mut early = client.consumer("busy").expect("attach the first consumer");
    let mut producer = client.producer("busy").expect("attach the producer");
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicU64::new(0));
    let early = Background::spawn("first consumer", move || {
        let mut buf = Vec::new();
        while early.recv_into(&mut buf).expect("first consumer recv") {}
    });
    let sending = {
        let (sent, stop) = (sent.clone(), stop.clone());
        Background::spawn("producer", move || {
            let mut seq = 0;
            while stop.load(Ordering::SeqCst) == 0 {
                producer.send(&record(0, seq, 64)).expect("send");
                seq += 1;
                sent.store(seq, Ordering::SeqCst);
            }
            producer.close().expect("close");
        })
    };
    for joiner in 0..JOINERS {
        let mut late = client.consumer("busy").expect("attach a late consumer");
        // Sends that started before this load may or may not reach the new consumer; the one
        // after them must.
        let started_before = sent.load(Ordering::SeqCst) + 1;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let first = loop {
            match late.try_recv() {
                Ok(Some(message)) => break parse(&message).1,
                Ok(None) => panic!("end-of-stream before any message"),
                Err(TryRecvError::Empty) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "joiner {joiner}: no message within 5 s"
                    );
                    readable(late.ready_fd(), Duration::from_millis(10));
                }
                Err(e) => panic!("joiner {joiner}: {e}"),
            }
        };
        assert!(
            first <= started_before,
            "joiner {joiner}: first message {first}, but message {started_before} was sent after its attach returned"
        );
    }
    stop.store(1, Ordering::SeqCst);
    sending.join(TRANSFER);
    early.join(TRANSFER);
}

/// A channel with a fast consumer (reading on a thread) and a slow one (attached, not reading),
/// and its producer.
struct SlowSetup {
    broker: Broker,
    client: Client,
    producer: Producer,
    slow: Consumer,
    slow_id: u32,
    fast: Background<(Vec<u64>, u64)>,
    fast_progress: Arc<AtomicU64>,
}

const RING: u64 = 16 << 10;
const MESSAGE: usize = 100;

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
fn four_producers_merge_fairly_into_one_consumer_in_per_producer_order() {
    const PRODUCERS: u32 = 4;
    const PREFILL: u64 = 100;
    const TOTAL: u64 = 5000;
    let broker = Broker::start(None);
    let client = broker.client();
    create(
        &client,
        "merge",
        64 << 10,
        PRODUCERS,
        1,
        SlowConsumer::Block,
    );
    let mut ids = HashMap::new();
    let mut senders = Vec::new();
    let mut resumes = Vec::new();
    let (prefilled_tx, prefilled) = mpsc::channel();
    for tag in 0..PRODUCERS {
        let mut producer = client.producer("merge").expect("attach a producer");
        ids.insert(producer.id(), tag);
        let (resume_tx, resume) = mpsc::channel::<()>();
        resumes.push(resume_tx);
        let prefilled_tx = prefilled_tx.clone();
        senders.push(Background::spawn("producer", move || {
            for seq in 0..TOTAL {
                if seq == PREFILL {
                    prefilled_tx.send(()).expect("tell the test");
                    resume.recv().expect("wait for the test");
                }
                producer
                    .send(&record(tag, seq, 64 + (seq as usize % 200)))
                    .expect("send");
            }
            producer.close().expect("close");
        }));
    }
    assert_eq!(
        ids.len(),
        PRODUCERS as usize,
        "each producer has its own id: {ids:?}"
    );
    for _ in 0..PRODUCERS {
        prefilled
            .recv_timeout(TRANSFER)
            .expect("a producer wrote its first messages");
    }
    // Every producer has PREFILL messages waiting: a fair consumer takes them in turn.
    let mut consumer = client.consumer("merge").expect("attach the consumer");
    let mut order = Vec::new();
    for _ in 0..PREFILL * u64::from(PRODUCERS) {
        let message = consumer
            .recv()
            .expect("recv")
            .expect("a message, not end-of-stream");
        let (tag, seq) = parse(&message);
        let from = consumer
            .last_producer()
            .expect("last_producer after a message");
        assert_eq!(
            ids.get(&from),
            Some(&tag),
            "last_producer() names the producer of the message"
        );
        order.push((tag, seq));
    }
    for window in order.chunks(PRODUCERS as usize) {
        let mut tags: Vec<u32> = window.iter().map(|(tag, _)| *tag).collect();
        tags.sort_unstable();
        assert_eq!(
            tags,
            (0..PRODUCERS).collect::<Vec<_>>(),
            "unfair turn: {window:?}"
        );
    }
    for resume in resumes {
        resume.send(()).expect("let a producer go on");
    }
    let mut rest = with_deadline(TRANSFER, "consumer", move || {
        let mut ends = 0;
        let mut got = Vec::new();
        while ends < PRODUCERS {
            match consumer.recv().expect("recv") {
                Some(message) => got.push(parse(&message)),
                None => ends += 1,
            }
        }
        got
    });
    for sender in senders {
        sender.join(TRANSFER);
    }
    order.append(&mut rest);
    for tag in 0..PRODUCERS {
        let seqs: Vec<u64> = order
            .iter()
            .filter(|(t, _)| *t == tag)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(
            seqs,
            (0..TOTAL).collect::<Vec<_>>(),
            "producer {tag}'s messages: all, once, in order"
        );
    }
}

#[test]
fn a_durable_consumer_killed_and_reattached_misses_nothing() {
    const RECORD: usize = 64;
    const TOTAL: u64 = 100_000;
    let broker = Broker::start(None);
    let client = broker.client();
    create(&client, "journal", 256 << 10, 1, 2, SlowConsumer::Block);
    let first_out = broker.dir().join("first.out");
    let mut first = broker.spawn_ctl(
        &["recv", "journal", "--as", "backup"],
        Stdio::null(),
        Some(Stdio::from(
            File::create(&first_out).expect("create output"),
        )),
    );
    broker.wait_for_peer("journal", first.pid(), "consumer");
    let mut producer = client.producer("journal").expect("attach the producer");
    let sending = Background::spawn("producer", move || {
        for seq in 0..TOTAL {
            let mut line = format!("{seq:020} ").into_bytes();
            line.resize(RECORD - 1, b'.');
            line.push(b'\n');
            producer.send(&line).expect("send");
        }
        producer.close().expect("close");
    });
    wait_for(
        TRANSFER,
        "the first consumer to receive some records",
        || match file_len(&first_out) {
            n if n > 200 * RECORD as u64 => Ok(()),
            n => Err(format!("{n} bytes")),
        },
    );
    first.kill9();
    // While it is away the broker keeps its queue, and the producer fills it.
    wait_for(WAIT, "backup to show as away with unread data", || {
        let info = broker.info("journal");
        let away = json_array(&info, "peers")
            .iter()
            .find(|p| p["name"] == "backup" && p["attached"] == false)
            .cloned();
        match away {
            Some(peer) if json_u64(&peer, "bytes_unread") > 0 => Ok(()),
            _ => Err(info.to_string()),
        }
    });
    assert!(
        !sending.is_finished(),
        "the producer cannot finish while backup's ring is full"
    );
    let second_out = broker.dir().join("second.out");
    let second = broker.spawn_ctl(
        &["recv", "journal", "--as", "backup"],
        Stdio::null(),
        Some(Stdio::from(
            File::create(&second_out).expect("create output"),
        )),
    );
    sending.join(TRANSFER);
    let mut second = second;
    second.output(TRANSFER).expect_success();

    let mut bytes = std::fs::read(&first_out).expect("read first output");
    // A record being written when the process died may be cut short; it is delivered again.
    bytes.truncate(bytes.len() / RECORD * RECORD);
    let boundary = bytes.len() / RECORD;
    bytes.extend(std::fs::read(&second_out).expect("read second output"));
    assert_eq!(bytes.len() % RECORD, 0, "outputs hold whole records");
    let seqs: Vec<u64> = bytes
        .chunks(RECORD)
        .map(|r| {
            std::str::from_utf8(&r[..20])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("bad record {:?}", String::from_utf8_lossy(r)))
        })
        .collect();
    // At-least-once for the one message being read at the kill (README): at most one repeat,
    // right at the boundary, and no gap anywhere.
    let mut expected = 0;
    let mut repeats = 0;
    for (index, seq) in seqs.iter().enumerate() {
        if *seq + 1 == expected && index == boundary {
            repeats += 1;
            continue;
        }
        assert_eq!(
            *seq, expected,
            "record {index}: expected {expected}, got {seq} (boundary at {boundary})"
        );
        expected += 1;
    }
    assert_eq!(expected, TOTAL, "all {TOTAL} records arrived");
    assert!(repeats <= 1, "{repeats} repeats");
}

fn memfd_in(dir: &str, name: &str) -> bool {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries.flatten().any(|e| {
                std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().contains(name))
            })
        })
        .unwrap_or(false)
}

fn mapped_here(name: &str) -> bool {
    let mut maps = String::new();
    File::open("/proc/self/maps")
        .and_then(|mut f| f.read_to_string(&mut maps))
        .expect("read /proc/self/maps");
    maps.contains(name)
}

#[test]
fn an_anonymous_consumers_rings_are_freed_when_it_leaves() {
    const CAPACITY: u64 = 4 << 20;
    let broker = Broker::start(None);
    let client = broker.client();
    create(&client, "view", CAPACITY, 1, 3, SlowConsumer::Block);
    let broker_fds = format!("/proc/{}/fd", broker.pid());
    let mut producer = client.producer("view").expect("attach the producer");
    let consumer = client
        .consumer("view")
        .expect("attach an anonymous consumer");
    let ring = "shmem-broker:view:p0:c1";
    assert_eq!(json_u64(&broker.info("view"), "ring_bytes"), CAPACITY);
    assert!(
        memfd_in(&broker_fds, ring),
        "the broker holds the consumer's ring {ring}"
    );
    producer.send(b"hello").expect("send");
    assert!(mapped_here(ring), "producer and consumer map the ring");
    drop(consumer);
    wait_for(WAIT, "the ring to leave the broker", || {
        let info = broker.info("view");
        match (json_u64(&info, "ring_bytes"), memfd_in(&broker_fds, ring)) {
            (0, false) => Ok(()),
            state => Err(format!("{state:?}: {info}")),
        }
    });
    // The producer lets go of it at its next call.
    wait_for(WAIT, "the producer to unmap the ring", || {
        producer.send(b"anyone?").map_err(|e| e.to_string())?;
        if mapped_here(ring) {
            Err(format!(
                "{ring} still mapped, producer writes to {} consumers",
                producer.consumers()
            ))
        } else {
            Ok(())
        }
    });
    assert_eq!(producer.consumers(), 0);
    let too_big = producer
        .send(&vec![0u8; 5 << 20])
        .expect_err("larger than the ring");
    assert!(
        matches!(too_big, Error::MessageTooLarge { .. }),
        "refused even with no consumer attached: {too_big}"
    );

    // A durable consumer's ring stays while it is away, until it is dropped.
    let durable = client
        .attach("view")
        .durable("keep")
        .consumer()
        .expect("attach durable");
    drop(durable);
    wait_for(WAIT, "keep to show as away", || {
        let info = broker.info("view");
        let away = json_array(&info, "peers")
            .iter()
            .any(|p| p["name"] == "keep" && p["attached"] == false);
        if away && json_u64(&info, "ring_bytes") == CAPACITY {
            Ok(())
        } else {
            Err(info.to_string())
        }
    });
    broker.ctl_ok(&["drop", "view", "--consumer", "keep"]);
    let info = broker.info("view");
    assert_eq!(json_u64(&info, "ring_bytes"), 0, "info: {info}");
    assert!(
        json_array(&info, "peers")
            .iter()
            .all(|p| p["name"] != "keep"),
        "info: {info}"
    );
    broker
        .ctl(&["drop", "view", "--consumer", "keep"])
        .expect_error(&["no durable consumer \"keep\""]);
}

#[test]
fn older_clients_are_told_what_they_cannot_do() {
    let broker = Broker::start(None);
    let client = broker.client();
    create(&client, "wide", 64 << 10, 2, 2, SlowConsumer::Block);
    broker.ctl_ok(&["create", "narrow", "--capacity", "64KiB"]);
    let attach = |version: u16, channel: &str| {
        let mut stream = UnixStream::connect(broker.socket_path()).expect("connect");
        let body = format!(r#"{{"op":"attach","channel":"{channel}","role":"consumer"}}"#);
        stream
            .write_all(&request_frame_version(version, 3, body.as_bytes()))
            .expect("send an attach");
        read_one_frame(&mut stream, WAIT)
    };
    let refused = |version: u16, channel: &str, needles: &[&str]| {
        let reply = attach(version, channel);
        assert_eq!(
            reply.version, version,
            "the broker answers a version-{version} client in its version"
        );
        let body = reply.json();
        assert_eq!(body["ok"], false, "reply: {body}");
        assert_eq!(
            body["error"]["code"], "unsupported_version",
            "reply: {body}"
        );
        let message = body["error"]["message"].as_str().unwrap_or_default();
        for needle in needles {
            assert!(
                message.contains(needle),
                "{message:?} should mention {needle:?}"
            );
        }
    };
    // Version 1 cannot have several producers or consumers...
    refused(
        1,
        "wide",
        &["wide", "protocol version 2", "this client speaks version 1"],
    );
    // ...and none before 5 reads the split rings (layout 3) new channels get.
    for version in 1..SPLIT_RINGS_VERSION {
        let speaks = format!("this client speaks version {version}");
        refused(
            version,
            "narrow",
            &["narrow", "layout 3", "protocol version 5", &speaks],
        );
    }
    refused(2, "wide", &["wide", "layout 3", "protocol version 5"]);
    refused(4, "wide", &["wide", "layout 3", "protocol version 5"]);
    let granted = attach(SPLIT_RINGS_VERSION, "narrow");
    assert_eq!(granted.version, SPLIT_RINGS_VERSION);
    let body = granted.json();
    assert_eq!(body["ok"], true, "version 5 attaches: {body}");
    assert_eq!(body["result"]["ring_layout"], 3, "reply: {body}");
    assert_eq!(
        body["result"]["fds"],
        serde_json::json!(["ring", "ack", "data_ready", "space_ready"])
    );
}

#[test]
fn limits_and_names_are_checked_with_clear_errors() {
    let broker = Broker::start(None);
    broker.ctl_ok(&[
        "create",
        "pair",
        "--capacity",
        "64KiB",
        "--max-consumers",
        "2",
        "--slow-consumer",
        "drop",
    ]);
    let info = broker.info("pair");
    assert_eq!(
        (
            json_u64(&info, "max_producers"),
            json_u64(&info, "max_consumers")
        ),
        (1, 2)
    );
    assert_eq!(json_str(&info, "slow_consumer"), "drop");
    broker
        .ctl(&["create", "x", "--max-consumers", "65"])
        .expect_error(&["invalid max_consumers 65", "between 1 and 64"]);
    broker
        .ctl(&["create", "x", "--max-producers", "0"])
        .expect_error(&["invalid max_producers 0"]);
    broker
        .ctl(&["create", "x", "--slow-consumer", "sometimes"])
        .expect_usage_error(&["unknown slow-consumer policy \"sometimes\""]);

    let client = broker.client();
    let _a = client.consumer("pair").expect("first consumer");
    let _b = client.consumer("pair").expect("second consumer");
    let third = client
        .consumer("pair")
        .err()
        .expect("a third consumer must be refused");
    let text = third.to_string();
    assert!(
        text.contains("max_consumers = 2") && text.contains("all are taken"),
        "{text}"
    );
    let producer = client.producer("pair").expect("producer");
    let second = client
        .producer("pair")
        .err()
        .expect("a second producer must be refused");
    assert!(
        second.to_string().contains("channel busy: producer pid"),
        "{second}"
    );
    drop(producer);

    broker.ctl_ok(&["create", "single", "--capacity", "64KiB"]);
    broker
        .ctl(&["recv", "single", "--as", "x"])
        .expect_error(&["single", "durable consumer names need max_consumers > 1"]);
    let list = broker.ctl_ok(&["list"]);
    assert!(
        list.lines()
            .any(|line| line.starts_with("pair ") && line.contains(" 2/")),
        "list counts both consumers of pair: {list}"
    );
}

#[test]
fn config_declares_fanout_channels_and_names_bad_values() {
    let config = "version = 1\n[[channel]]\nname = \"cam\"\nmax_consumers = 3\nslow_consumer = \"disconnect\"\n";
    let broker = Broker::start(Some(config));
    let info = broker.info("cam");
    assert_eq!(json_u64(&info, "max_consumers"), 3, "info: {info}");
    assert_eq!(
        json_str(&info, "slow_consumer"),
        "disconnect",
        "info: {info}"
    );

    for (text, needles) in [
        (
            "version = 1\n[[channel]]\nname = \"cam\"\nslow_consumer = \"sometimes\"\n",
            &[
                ":4:",
                "channel[0].slow_consumer",
                "unknown slow-consumer policy",
            ][..],
        ),
        (
            "version = 1\n[[channel]]\nname = \"cam\"\n\nmax_producers = 100\n",
            &[":5:", "channel[0].max_producers", "above the limit of 64"][..],
        ),
    ] {
        let path = broker.dir().join("bad.toml");
        std::fs::write(&path, text).expect("write config");
        let mut cmd = std::process::Command::new(broker_bin());
        cmd.arg("--check-config").arg("--config").arg(&path);
        let out = run(cmd, "check-config", broker.dir(), Stdio::null(), WAIT);
        out.expect_error(needles);
    }
}

#[test]
fn quotas_count_a_ring_for_every_producer_and_consumer_pair() {
    let broker = Broker::start(Some("version = 1\nmax_ring_bytes = \"1MiB\"\n"));
    broker
        .ctl(&[
            "create",
            "wide",
            "--capacity",
            "256KiB",
            "--max-producers",
            "2",
            "--max-consumers",
            "4",
        ])
        .expect_error(&["max_ring_bytes"]);
    broker.ctl_ok(&[
        "create",
        "fits",
        "--capacity",
        "256KiB",
        "--max-consumers",
        "4",
    ]);
    let status = broker.status();
    let used = json_array(&status, "quotas")
        .iter()
        .find(|q| q["quota"] == "max_ring_bytes" && q.get("uid").is_none())
        .map(|q| json_u64(q, "used"));
    assert_eq!(used, Some(1 << 20), "status: {status}");
    broker.ctl_ok(&["drop", "fits"]);
    broker.ctl_ok(&["create", "again", "--capacity", "1MiB"]);
}

#[test]
fn a_fanout_consumers_ready_fd_is_readable_only_when_a_producer_wrote() {
    let broker = Broker::start(None);
    let client = broker.client();
    create(&client, "epoll", 64 << 10, 2, 2, SlowConsumer::Block);
    let mut consumer = client.consumer("epoll").expect("consumer");
    let mut producers: Vec<Producer> = (0..2)
        .map(|_| client.producer("epoll").expect("producer"))
        .collect();
    let readable = |consumer: &Consumer, timeout: Duration| {
        let fd = consumer.ready_fd();
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        let timeout = rustix::event::Timespec::try_from(timeout).expect("timeout");
        matches!(rustix::event::poll(&mut fds, Some(&timeout)), Ok(n) if n > 0)
    };
    for round in 0..4 {
        let producer = &mut producers[round % 2];
        assert!(consumer.try_recv().is_err_and(|e| e.is_empty()));
        assert!(
            !readable(&consumer, Duration::from_millis(200)),
            "round {round}: readable with nothing to read"
        );
        producer.send(&[round as u8]).expect("send");
        assert!(readable(&consumer, WAIT), "round {round}: no wake-up");
        assert_eq!(
            consumer.try_recv().expect("try_recv"),
            Some(vec![round as u8])
        );
    }
}

#[test]
fn shmemctl_recv_waits_for_every_producers_end_and_reports_losses() {
    let broker = Broker::start(None);
    broker.ctl_ok(&[
        "create",
        "pair",
        "--capacity",
        "64KiB",
        "--max-producers",
        "2",
    ]);
    let out_path = broker.dir().join("merged.out");
    let mut receiver = broker.spawn_ctl(
        &["recv", "pair", "--streams", "2"],
        Stdio::null(),
        Some(Stdio::from(File::create(&out_path).expect("create output"))),
    );
    broker.wait_for_peer("pair", receiver.pid(), "consumer");
    let mut inputs = Vec::new();
    for (i, text) in ["first producer\n", "second producer\n"].iter().enumerate() {
        let path = broker.dir().join(format!("in{i}"));
        std::fs::write(&path, text.repeat(1000)).expect("write input");
        let input = File::open(&path).expect("open input");
        broker
            .spawn_ctl(
                &["send", "pair", "--chunk", "4KiB"],
                Stdio::from(input),
                None,
            )
            .output(WAIT)
            .expect_success();
        inputs.push(text.repeat(1000));
        if i == 0 {
            // Once the first stream and its end-of-stream mark are read, recv must still be
            // there: the check means nothing before it has read that far.
            wait_for(WAIT, "recv to read the first stream to its end", || {
                if let Some(status) = receiver.try_status() {
                    panic!("recv --streams 2 stopped at the first end-of-stream ({status})");
                }
                let info = broker.info("pair");
                match json_array(&info, "peers")
                    .iter()
                    .find(|p| p["role"] == "consumer")
                {
                    Some(c) if json_u64(c, "messages") > 0 && json_u64(c, "bytes_unread") == 0 => {
                        Ok(())
                    }
                    _ => Err(info.to_string()),
                }
            });
            std::thread::sleep(Duration::from_millis(200));
            assert!(
                receiver.try_status().is_none(),
                "recv --streams 2 stopped at the first end-of-stream"
            );
        }
    }
    receiver.output(WAIT).expect_success();
    let merged = std::fs::read_to_string(&out_path).expect("read output");
    assert_eq!(merged.len(), inputs.iter().map(String::len).sum::<usize>());
    for text in ["first producer\n", "second producer\n"] {
        assert_eq!(
            merged.matches(text).count(),
            1000,
            "all of {text:?} arrived"
        );
    }

    // A consumer that falls behind under policy drop is told how many messages it missed.
    let client = broker.client();
    create(&client, "lossy", RING, 1, 2, SlowConsumer::Drop);
    let mut slow = broker.spawn_ctl(&["recv", "lossy"], Stdio::null(), Some(Stdio::null()));
    broker.wait_for_peer("lossy", slow.pid(), "consumer");
    slow.signal(libc::SIGSTOP);
    let mut producer = client.producer("lossy").expect("producer");
    for seq in 0..1000 {
        producer.send(&record(0, seq, MESSAGE)).expect("send");
    }
    slow.signal(libc::SIGCONT);
    // After the gap the next message fits; with it comes the count of those missed.
    wait_for(
        WAIT,
        "the slow consumer to drain its ring",
        || match consumer_peer(&broker, "lossy", 1).map(|p| json_u64(&p, "bytes_unread")) {
            Some(0) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    producer
        .send(&record(0, 1000, MESSAGE))
        .expect("send after the gap");
    producer.close().expect("close");
    let out = slow.output(WAIT);
    let stderr = out.expect_success().to_string() + &out.stderr;
    assert!(
        stderr.contains("shmemctl: channel lossy: missed ")
            && stderr.contains("slow_consumer = drop"),
        "recv reports the loss: {out}"
    );
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

#[test]
fn an_idle_producer_does_not_make_the_broker_hold_fds_for_consumers_that_left() {
    let broker = Broker::start(None);
    let client = broker.client();
    create(&client, "idle", 4096, 1, 2, SlowConsumer::Block);
    let _producer = client.producer("idle").expect("producer that never sends");
    let broker_fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", broker.pid()))
            .expect("broker fds")
            .count()
    };
    let cycle = || drop(client.consumer("idle").expect("consumer"));
    for _ in 0..20 {
        cycle();
    }
    let settled = wait_for(WAIT, "the broker to settle", || {
        Ok::<_, String>(broker_fds())
    });
    for _ in 0..300 {
        cycle();
    }
    // Each consumer that came and went announced a ring and an eventfd to the producer, which
    // never read them; the broker drops an announcement withdrawn before it was read.
    wait_for(WAIT, "the broker's fds to stay flat", || {
        let now = broker_fds();
        if now <= settled + 8 {
            Ok(())
        } else {
            Err(format!("{now} fds, {settled} after the first 20 consumers"))
        }
    });
}
