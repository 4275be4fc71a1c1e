//! `AsyncProducer`/`AsyncConsumer` (feature `tokio`) on a multi-threaded runtime against the
//! real broker: thousands of messages through small rings (so both sides park often), peers
//! joining late, a consumer leaving while the producer waits for it, the channel dropped under
//! parked tasks, and the broker killed and restarted under endpoints made with
//! `reconnect(true)`; one-to-one and fan-out.

use shmem_broker_client::{AsyncConsumer, AsyncProducer, Client, Error, Producer, SlowConsumer};
use shmem_broker_tests::*;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::timeout;

const MESSAGES: u64 = 3000;
/// Bound for one whole exchange with debug binaries on a small shared machine.
const EXCHANGE: Duration = Duration::from_secs(120);

/// Message `seq` of `producer`: a numbered message of 16 to 715 bytes.
fn message(producer: u32, seq: u64) -> Vec<u8> {
    stamp::numbered(producer, seq, 16 + (seq % 700) as usize)
}

/// (producer, seq) of a message made by [`message`]; fails the test if it is damaged.
fn parse(bytes: &[u8]) -> (u32, u64) {
    stamp::check_numbered(bytes).unwrap_or_else(|e| panic!("{e}"))
}

fn fanout(client: &Client, name: &str, producers: u32, consumers: u32) {
    client
        .channel(name)
        .capacity(16 << 10)
        .max_producers(producers)
        .max_consumers(consumers)
        .slow_consumer(SlowConsumer::Block)
        .create()
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
}

async fn produce(socket: PathBuf, channel: &'static str, tag: u32, count: u64) -> Producer {
    let producer = connect(&socket).producer(channel).expect("attach producer");
    let mut producer = AsyncProducer::new(producer).expect("async producer");
    for seq in 0..count {
        producer
            .send(&message(tag, seq))
            .await
            .unwrap_or_else(|e| panic!("producer {tag}: send {seq}: {e}"));
    }
    producer.into_inner()
}

/// Writes the end-of-stream mark off the runtime's threads (`close` may wait for room).
async fn close(producer: Producer) {
    tokio::task::spawn_blocking(move || producer.close().expect("close"))
        .await
        .expect("close task");
}

/// Receives until `streams` end-of-stream marks; checks each producer's order; returns how
/// many messages came from each producer tag.
async fn consume(consumer: &mut AsyncConsumer, streams: usize) -> Vec<(u32, u64)> {
    let mut next: Vec<(u32, u64)> = Vec::new();
    let mut ended = 0;
    while ended < streams {
        match consumer.recv().await.expect("recv") {
            None => ended += 1,
            Some(bytes) => {
                let (tag, seq) = parse(&bytes);
                match next.iter_mut().find(|(t, _)| *t == tag) {
                    Some((_, expected)) => {
                        assert_eq!(seq, *expected, "producer {tag}: out of order");
                        *expected += 1;
                    }
                    None => {
                        assert_eq!(seq, 0, "producer {tag}: first message");
                        next.push((tag, 1));
                    }
                }
            }
        }
    }
    next.sort();
    next
}

fn consumer_of(socket: &Path, channel: &str) -> AsyncConsumer {
    AsyncConsumer::new(connect(socket).consumer(channel).expect("attach consumer"))
        .expect("async consumer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_thousands_of_messages_to_a_consumer_waiting_for_a_late_producer() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "a1", "--capacity", "16KiB"]);
    let socket = broker.socket_path().to_path_buf();
    let mut consumer = consumer_of(&socket, "a1");
    let reader = tokio::spawn(async move { consume(&mut consumer, 1).await });
    // The consumer parks first; the producer comes later.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let producer = timeout(EXCHANGE, produce(socket, "a1", 7, MESSAGES))
        .await
        .expect("producer in time");
    close(producer).await;
    let got = timeout(EXCHANGE, reader).await.expect("consumer in time");
    assert_eq!(got.expect("consumer task"), vec![(7, MESSAGES)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_thousands_of_messages_from_late_producers_to_every_consumer() {
    let broker = Broker::start(None);
    fanout(&broker.client(), "af", 2, 2);
    let socket = broker.socket_path().to_path_buf();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let mut consumer = consumer_of(&socket, "af");
            tokio::spawn(async move { consume(&mut consumer, 2).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let writers: Vec<_> = (1..=2)
        .map(|tag| tokio::spawn(produce(socket.clone(), "af", tag, MESSAGES)))
        .collect();
    for writer in writers {
        let producer = timeout(EXCHANGE, writer).await.expect("producer in time");
        close(producer.expect("producer task")).await;
    }
    for reader in readers {
        let got = timeout(EXCHANGE, reader).await.expect("consumer in time");
        assert_eq!(
            got.expect("consumer task"),
            vec![(1, MESSAGES), (2, MESSAGES)]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fanout_producer_waiting_for_a_consumer_goes_on_when_that_consumer_leaves() {
    let broker = Broker::start(None);
    fanout(&broker.client(), "leave", 1, 2);
    let socket = broker.socket_path().to_path_buf();
    let mut steady = consumer_of(&socket, "leave");
    let mut quitter = consumer_of(&socket, "leave");
    let reader = tokio::spawn(async move { consume(&mut steady, 1).await });
    let writer = tokio::spawn(produce(socket.clone(), "leave", 3, MESSAGES));
    // The quitter reads a little, then stops reading (the producer waits for it), then leaves.
    for _ in 0..100 {
        quitter.recv().await.expect("recv").expect("a message");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !writer.is_finished(),
        "the producer should be waiting for the quitter"
    );
    drop(quitter);
    let producer = timeout(EXCHANGE, writer)
        .await
        .expect("the producer went on once the consumer left")
        .expect("producer task");
    close(producer).await;
    let got = timeout(EXCHANGE, reader).await.expect("consumer in time");
    assert_eq!(got.expect("consumer task"), vec![(3, MESSAGES)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_tasks_learn_that_the_channel_was_dropped() {
    let broker = Broker::start(None);
    let client = broker.client();
    let socket = broker.socket_path().to_path_buf();
    for fan in [true, false] {
        let (empty, full) = if fan {
            ("empty-f", "full-f")
        } else {
            ("empty-1", "full-1")
        };
        for name in [empty, full] {
            if fan {
                fanout(&client, name, 2, 2);
            } else {
                broker.ctl_ok(&["create", name, "--capacity", "16KiB"]);
            }
        }
        // A consumer waiting for data that never comes.
        let mut consumer = consumer_of(&socket, empty);
        let waiting_consumer = tokio::spawn(async move { consumer.recv().await });
        // A producer waiting for room that a consumer that never reads never frees.
        let stuck = connect(&socket)
            .consumer(full)
            .expect("a consumer that never reads");
        let producer = connect(&socket).producer(full).expect("producer");
        let mut producer = AsyncProducer::new(producer).expect("async producer");
        let waiting_producer = tokio::spawn(async move {
            let mut seq = 0;
            loop {
                if let Err(e) = producer.send(&message(1, seq)).await {
                    return (seq, e);
                }
                seq += 1;
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting_consumer.is_finished() && !waiting_producer.is_finished());
        client.drop_channel(empty).expect("drop");
        client.drop_channel(full).expect("drop");
        let (sent, error) = timeout(WAIT, waiting_producer)
            .await
            .expect("the parked producer woke")
            .expect("producer task");
        assert!(
            matches!(error, Error::ChannelDropped { .. }),
            "{full}: producer after {sent} messages: {error:?}"
        );
        let result = timeout(WAIT, waiting_consumer)
            .await
            .expect("the parked consumer woke")
            .expect("consumer task");
        assert!(
            matches!(result, Err(Error::ChannelDropped { .. })),
            "{empty}: consumer: {result:?}"
        );
        drop(stuck);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_endpoints_keep_exchanging_while_the_broker_restarts_and_learn_its_verdict() {
    // A plain kill and restart: the channel (made at run time, with no fd store) does not come
    // back, so the endpoints, once the broker answers again, learn that it was dropped; until
    // then thousands of messages keep flowing through the ring they already have. A consumer
    // parked on an empty ring is woken while the broker is away so that it re-attaches.
    let mut broker = Broker::start(None);
    broker.ctl_ok(&["create", "live", "--capacity", "16KiB"]);
    let socket = broker.socket_path().to_path_buf();
    let client = connect(&socket);
    let consumer = client
        .attach("live")
        .reconnect(true)
        .consumer()
        .expect("consumer");
    let producer = client
        .attach("live")
        .reconnect(true)
        .producer()
        .expect("producer");
    drop(client);
    let mut consumer = AsyncConsumer::new(consumer).expect("async consumer");
    let mut producer = AsyncProducer::new(producer).expect("async producer");
    let (half_tx, half_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let writer = tokio::spawn(async move {
        for seq in 0..MESSAGES / 2 {
            producer.send(&message(9, seq)).await.expect("send");
        }
        let _ = half_tx.send(());
        go_rx.await.expect("the test lets the producer go on");
        for seq in MESSAGES / 2..MESSAGES {
            producer.send(&message(9, seq)).await.expect("send");
        }
        producer
    });
    let reader = tokio::spawn(async move {
        for seq in 0..MESSAGES {
            let got = consumer.recv().await.expect("recv").expect("a message");
            assert_eq!(parse(&got), (9, seq));
        }
        // Nothing more comes: parked until the restarted broker says the channel is gone.
        let verdict = consumer.recv().await;
        (consumer, verdict)
    });
    half_rx.await.expect("half way");
    broker.proc_mut().kill9();
    go_tx.send(()).expect("producer waiting");
    let producer = timeout(EXCHANGE, writer)
        .await
        .expect("the second half crossed the broker's absence")
        .expect("producer task");
    assert!(!producer.get_ref().broker_connected());
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.restart();
    let (consumer, verdict) = timeout(EXCHANGE, reader)
        .await
        .expect("the parked consumer learned the restarted broker's verdict")
        .expect("consumer task");
    assert!(
        matches!(verdict, Err(Error::ChannelDropped { .. })),
        "after the restart: {verdict:?}"
    );
    drop((consumer, producer));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_fanout_consumer_with_reconnect_learns_it_cannot_reattach() {
    let mut broker = Broker::start(None);
    fanout(&broker.client(), "many", 2, 2);
    let socket = broker.socket_path().to_path_buf();
    let consumer = connect(&socket)
        .attach("many")
        .reconnect(true)
        .consumer()
        .expect("consumer");
    let mut consumer = AsyncConsumer::new(consumer).expect("async consumer");
    let waiting = tokio::spawn(async move { consumer.recv().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.proc_mut().kill9();
    let result = timeout(WAIT, waiting).await.expect("woke").expect("task");
    assert!(matches!(result, Err(Error::Reattach { .. })), "{result:?}");
}
