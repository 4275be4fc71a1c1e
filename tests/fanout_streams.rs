//! Fan-out streams through the real broker: a 256 MiB stream to three consumers, late joiners
//! starting at the next message, four producers merged fairly into one consumer, and `shmemctl
//! recv` waiting for every producer's end.

use shmem_broker_client::{SlowConsumer, TryRecvError};
use shmem_broker_tests::fanout::*;
use shmem_broker_tests::*;
use std::collections::HashMap;
use std::fs::File;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

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
