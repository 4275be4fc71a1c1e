//! `shmemctl record` and `shmemctl replay` (docs/record-format.md) against the real broker:
//! a round trip of messages from 1 byte to 1 MiB with every boundary kept, a fan-out channel
//! with two producers recorded with their ids, `--rate` and `--as-recorded` pacing (order and
//! boundaries checked, timing only as a lower bound), and hostile recordings: truncated,
//! lying about a length, malformed headers; each refused with one line and no end-of-stream
//! mark.

use shmem_broker_client::{Client, Consumer, Error, SlowConsumer};
use shmem_broker_tests::*;
use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Generous bound for one transfer with debug binaries on a loaded 2-core machine.
const TRANSFER: Duration = Duration::from_secs(300);
const MAGIC: &[u8; 8] = b"SHMBREC\0";
const NO_PRODUCER: u32 = u32::MAX;

/// One record of a recording, as the format describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    kind: u8,
    producer: u32,
    time_ns: u64,
    payload: Vec<u8>,
}

/// Parses a recording by docs/record-format.md (independently of shmemctl's reader); returns
/// the channel name and the records.
fn parse_recording(path: &Path) -> (String, Vec<Rec>) {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(bytes.len() >= 20, "recording shorter than its header");
    assert_eq!(&bytes[..8], MAGIC, "magic");
    assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 1, "version");
    let name_len = usize::from(u16::from_le_bytes([bytes[10], bytes[11]]));
    let start = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    assert!(start > 0, "start time is wall-clock nanoseconds");
    let name = String::from_utf8(bytes[20..20 + name_len].to_vec()).expect("UTF-8 name");
    let mut at = 20 + name_len;
    let mut records = Vec::new();
    while at < bytes.len() {
        let header = &bytes[at..at + 20];
        assert_eq!(&header[1..4], &[0, 0, 0], "reserved bytes at {at}");
        let len = u32::from_le_bytes(header[16..20].try_into().expect("4 bytes")) as usize;
        records.push(Rec {
            kind: header[0],
            producer: u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")),
            time_ns: u64::from_le_bytes(header[8..16].try_into().expect("8 bytes")),
            payload: bytes[at + 20..at + 20 + len].to_vec(),
        });
        at += 20 + len;
    }
    assert_eq!(at, bytes.len(), "the recording ends inside a record");
    (name, records)
}

/// Builds a recording by the format (for hostile variants).
fn recording(name: &str, records: &[Rec]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(&1_700_000_000_000_000_000u64.to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    for rec in records {
        out.push(rec.kind);
        out.extend_from_slice(&[0, 0, 0]);
        out.extend_from_slice(&rec.producer.to_le_bytes());
        out.extend_from_slice(&rec.time_ns.to_le_bytes());
        out.extend_from_slice(&(rec.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&rec.payload);
    }
    out
}

fn message(kind_seq: u64, len: usize) -> Rec {
    Rec {
        kind: 1,
        producer: NO_PRODUCER,
        time_ns: kind_seq * 1000,
        payload: payload(0, kind_seq, len),
    }
}

/// A self-describing payload: bytes derived from the producer tag, sequence and position.
fn payload(tag: u8, seq: u64, len: usize) -> Vec<u8> {
    let mut rng = XorShift64::new(seq.wrapping_mul(0x9e37_79b9) ^ u64::from(tag) ^ 1);
    let mut out = vec![0u8; len];
    rng.fill(&mut out);
    if let Some(first) = out.first_mut() {
        *first = tag;
    }
    out
}

/// The sizes of the round trip: 1 B to 1 MiB, around the ring's 8-byte frames and pages.
fn sizes() -> Vec<usize> {
    let mut sizes = vec![
        1,
        2,
        7,
        8,
        9,
        15,
        16,
        17,
        100,
        4095,
        4096,
        4097,
        65_536,
        (1 << 20) - 1,
        1 << 20,
    ];
    let mut rng = XorShift64::new(0x005e_c04d);
    for _ in 0..60 {
        sizes.push(1 + (rng.next_u64() % 200_000) as usize);
    }
    sizes.extend([1 << 20, 1, 1 << 20, 3]);
    sizes
}

fn create(client: &Client, name: &str, capacity: u64, producers: u32, consumers: u32) {
    client
        .channel(name)
        .capacity(capacity)
        .max_producers(producers)
        .max_consumers(consumers)
        .slow_consumer(SlowConsumer::Block)
        .create()
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
}

fn wait_for_consumer(broker: &Broker, channel: &str, pid: u32) {
    broker.wait_for_peer(channel, pid, "consumer");
}

/// Receives until end-of-stream; an error (a stream cut) is returned with what came before.
fn drain(consumer: &mut Consumer) -> (Vec<Vec<u8>>, Result<(), Error>) {
    let mut got = Vec::new();
    loop {
        match consumer.recv() {
            Ok(Some(message)) => got.push(message),
            Ok(None) => return (got, Ok(())),
            Err(e) => return (got, Err(e)),
        }
    }
}

/// Replays `file` into `channel` with `extra` args while a library consumer drains it.
fn replay_and_drain(
    broker: &Broker,
    file: &Path,
    channel: &str,
    extra: &[&str],
) -> (CmdOutput, Vec<Vec<u8>>, Result<(), Error>, Duration) {
    let mut consumer = broker.client().consumer(channel).expect("attach consumer");
    let draining = Background::spawn("replay consumer", move || drain(&mut consumer));
    let file = file.display().to_string();
    let mut args = vec!["replay", file.as_str(), channel];
    args.extend_from_slice(extra);
    let start = Instant::now();
    let out = broker.ctl_timeout(&args, TRANSFER);
    let took = start.elapsed();
    let (got, end) = draining.join(TRANSFER);
    (out, got, end, took)
}

#[test]
fn round_trip_keeps_every_boundary_from_1_byte_to_1_mib() {
    let broker = Broker::start(None);
    let client = broker.client();
    create(&client, "cam", 4 << 20, 1, 1);
    create(&client, "copy", 4 << 20, 1, 1);
    let file = broker.dir().join("cam.rec");
    let mut recorder = broker.spawn_ctl(
        &["record", "cam", &file.display().to_string()],
        Stdio::null(),
        None,
    );
    wait_for_consumer(&broker, "cam", recorder.pid());
    let sizes = sizes();
    let messages: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| payload(0, i as u64, len))
        .collect();
    let mut producer = client.producer("cam").expect("attach producer");
    for m in &messages {
        producer.send(m).expect("send");
    }
    producer.close().expect("close");
    let out = recorder.output(TRANSFER);
    out.expect_success();
    assert!(
        out.stderr
            .contains(&format!("recorded {} messages", messages.len())),
        "{out}"
    );

    let (name, records) = parse_recording(&file);
    assert_eq!(name, "cam");
    let (ends, bodies): (Vec<&Rec>, Vec<&Rec>) = records.iter().partition(|r| r.kind != 1);
    assert_eq!(ends.len(), 1, "one end-of-stream record: {ends:?}");
    assert_eq!(ends[0].kind, 2, "a clean end-of-stream mark");
    assert_eq!(
        records.last().map(|r| r.kind),
        Some(2),
        "the mark comes last"
    );
    assert_eq!(bodies.len(), messages.len());
    for (i, (rec, want)) in bodies.iter().zip(&messages).enumerate() {
        assert_eq!(rec.payload.len(), want.len(), "message {i}: boundary moved");
        assert!(
            rec.payload == *want,
            "message {i} ({} bytes) differs",
            want.len()
        );
        assert_eq!(rec.producer, NO_PRODUCER, "one-to-one: no producer id");
    }
    assert!(
        records.windows(2).all(|w| w[0].time_ns <= w[1].time_ns),
        "receive times go forward"
    );

    // And back into another channel, as fast as it goes: the same messages, one per record.
    let (out, got, end, _) = replay_and_drain(&broker, &file, "copy", &[]);
    out.expect_success();
    end.expect("replay ends with its end-of-stream mark");
    assert_eq!(got.len(), messages.len(), "replayed message count");
    for (i, (got, want)) in got.iter().zip(&messages).enumerate() {
        assert!(
            got == want,
            "replayed message {i} differs ({} bytes)",
            want.len()
        );
    }
}

#[test]
fn fan_out_recording_keeps_each_producers_id_and_order() {
    const PER_PRODUCER: u64 = 300;
    let broker = Broker::start(None);
    let client = broker.client();
    create(&client, "fan", 1 << 20, 2, 2);
    let file = broker.dir().join("fan.rec");
    let mut recorder = broker.spawn_ctl(
        &[
            "record",
            "fan",
            &file.display().to_string(),
            "--streams",
            "2",
        ],
        Stdio::null(),
        None,
    );
    wait_for_consumer(&broker, "fan", recorder.pid());
    let mut ids = Vec::new();
    let mut senders = Vec::new();
    for tag in [1u8, 2] {
        let mut producer = client.producer("fan").expect("attach producer");
        ids.push((tag, producer.id()));
        senders.push(Background::spawn("producer", move || {
            for seq in 0..PER_PRODUCER {
                let len = 1 + (seq as usize * 977 + usize::from(tag) * 13) % 20_000;
                producer.send(&payload(tag, seq, len)).expect("send");
            }
            producer.close().expect("close");
        }));
    }
    for sender in senders {
        sender.join(TRANSFER);
    }
    recorder.output(TRANSFER).expect_success();
    let (_, records) = parse_recording(&file);
    for (tag, id) in ids {
        let mine: Vec<&Rec> = records.iter().filter(|r| r.producer == id).collect();
        let messages: Vec<&Rec> = mine.iter().copied().filter(|r| r.kind == 1).collect();
        assert_eq!(
            messages.len() as u64,
            PER_PRODUCER,
            "producer {id} (tag {tag}): messages recorded under its id"
        );
        for (seq, rec) in messages.iter().enumerate() {
            let len = 1 + (seq * 977 + usize::from(tag) * 13) % 20_000;
            assert!(
                rec.payload == payload(tag, seq as u64, len),
                "producer {id} message {seq}: wrong bytes, boundary or order"
            );
        }
        assert_eq!(
            mine.last().map(|r| r.kind),
            Some(2),
            "producer {id}'s end-of-stream mark is recorded with its id, after its messages"
        );
    }
    assert_eq!(
        records.len() as u64,
        2 * PER_PRODUCER + 2,
        "nothing else recorded"
    );

    // Replayed into a one-to-one channel, the merged order of the recording is kept.
    create(&client, "merged", 1 << 20, 1, 1);
    let (out, got, end, _) = replay_and_drain(&broker, &file, "merged", &[]);
    out.expect_success();
    end.expect("clean end");
    let want: Vec<&Vec<u8>> = records
        .iter()
        .filter(|r| r.kind == 1)
        .map(|r| &r.payload)
        .collect();
    assert_eq!(got.len(), want.len());
    assert!(
        got.iter().zip(want).all(|(g, w)| g == w),
        "merged order changed"
    );
}

#[test]
fn rate_and_as_recorded_pace_the_replay_and_keep_order() {
    let broker = Broker::start(None);
    let client = broker.client();
    create(&client, "paced", 1 << 20, 1, 1);
    // 30 messages of varied sizes, recorded 20 ms apart.
    let records: Vec<Rec> = (0..30u64)
        .map(|i| Rec {
            time_ns: 5_000_000_000 + i * 20_000_000,
            ..message(i, 1 + (i as usize * 1531) % 5000)
        })
        .collect();
    let file = broker.dir().join("paced.rec");
    fs::write(&file, recording("paced", &records)).expect("write recording");
    let want: Vec<Vec<u8>> = records.iter().map(|r| r.payload.clone()).collect();

    // 100/s: message 29 is due 290 ms after the start.
    let (out, got, end, took) = replay_and_drain(&broker, &file, "paced", &["--rate", "100/s"]);
    out.expect_success();
    end.expect("clean end");
    assert!(got == want, "--rate changed order or boundaries");
    assert!(
        took >= Duration::from_millis(280),
        "--rate 100/s sent 30 messages in {took:?}"
    );

    // As recorded: 29 gaps of 20 ms from the first message's time (not from time 0).
    let (out, got, end, took) = replay_and_drain(&broker, &file, "paced", &["--as-recorded"]);
    out.expect_success();
    end.expect("clean end");
    assert!(got == want, "--as-recorded changed order or boundaries");
    assert!(
        took >= Duration::from_millis(560) && took < Duration::from_secs(4),
        "--as-recorded took {took:?} for 580 ms of recording (a 5 s offset must not count)"
    );

    broker
        .ctl(&[
            "replay",
            &file.display().to_string(),
            "paced",
            "--rate",
            "0/s",
        ])
        .expect_usage_error(&["--rate", "at least 1/s"]);
    broker
        .ctl(&[
            "replay",
            &file.display().to_string(),
            "paced",
            "--rate",
            "5/s",
            "--as-recorded",
        ])
        .expect_usage_error(&["--as-recorded"]);
}

/// A replay of a bad file: one error line naming the problem, exit 1, the messages before it
/// delivered, and no end-of-stream mark (the consumer learns the stream was cut).
/// Each case replays into a channel of its own: a one-to-one channel keeps telling a newly
/// attached consumer that the last producer went away (until another producer attaches).
fn replay_refused(broker: &Broker, bytes: &[u8], needles: &[&str], delivered: usize) {
    let file = broker.dir().join("hostile.rec");
    fs::write(&file, bytes).expect("write recording");
    if delivered == 0 {
        // Refused at the header: nothing attaches.
        let out = broker.ctl(&["replay", &file.display().to_string(), "victim"]);
        out.expect_error(needles);
        assert_eq!(out.status.code(), Some(1), "{out}");
        return;
    }
    static CASE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let channel = format!(
        "victim{}",
        CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    create(&broker.client(), &channel, 64 << 10, 1, 1);
    let (out, got, end, _) = replay_and_drain(broker, &file, &channel, &[]);
    out.expect_error(needles);
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert_eq!(
        got.len(),
        delivered,
        "messages before the bad record (then {end:?}):\n{out}"
    );
    assert!(
        matches!(end, Err(Error::ProducerGone { .. })),
        "the consumer must learn the replay did not finish, got {end:?}"
    );
}

#[test]
fn hostile_recordings_are_refused_with_one_line_and_no_end_mark() {
    let broker = Broker::start(None);
    let client = broker.client();
    create(&client, "victim", 64 << 10, 1, 1);
    let good: Vec<Rec> = (0..3).map(|i| message(i, 100)).collect();
    let whole = recording("victim", &good);

    // A record whose length says 4 GiB - 1 in a short file: read as the bytes come (no huge
    // allocation), reported as truncated, never sent as a short message.
    let mut liar = recording("victim", &good);
    liar.extend_from_slice(&[1, 0, 0, 0]);
    liar.extend_from_slice(&0u32.to_le_bytes());
    liar.extend_from_slice(&0u64.to_le_bytes());
    liar.extend_from_slice(&u32::MAX.to_le_bytes());
    liar.extend_from_slice(&[0xaa; 50]);
    replay_refused(
        &broker,
        &liar,
        &[
            "truncated",
            "record 4",
            "4294967295 bytes",
            "ends after 50 bytes",
        ],
        3,
    );

    // Cut inside the last payload, and inside a record header.
    replay_refused(
        &broker,
        &whole[..whole.len() - 1],
        &[
            "truncated",
            "record 3",
            "claims 100 bytes",
            "after 99 bytes",
        ],
        2,
    );
    let mut cut_header = whole.clone();
    cut_header.extend_from_slice(&[1, 0, 0]);
    replay_refused(
        &broker,
        &cut_header,
        &["truncated", "record 4", "3 of its 20"],
        3,
    );

    // Unknown kind, reserved bytes, an end record with a payload.
    let mut bad_kind = whole.clone();
    let header_len = recording("victim", &[]).len();
    bad_kind.extend_from_slice(&recording("victim", &[message(9, 4)])[header_len..]);
    let kind_at = whole.len();
    bad_kind[kind_at] = 7;
    replay_refused(&broker, &bad_kind, &["record 4", "unknown kind 7"], 3);
    let mut reserved = bad_kind.clone();
    reserved[kind_at] = 1;
    reserved[kind_at + 2] = 1;
    replay_refused(&broker, &reserved, &["record 4", "reserved"], 3);
    let end_with_payload = recording(
        "victim",
        &[
            message(0, 10),
            Rec {
                kind: 2,
                ..message(1, 5)
            },
        ],
    );
    replay_refused(
        &broker,
        &end_with_payload,
        &["record 2", "end-of-stream"],
        1,
    );

    // A message larger than the channel takes: refused by name before it is sent.
    let too_big = recording("victim", &[message(0, 10), message(1, 64 << 10)]);
    replay_refused(
        &broker,
        &too_big,
        &["record 2", "does not fit channel victim"],
        1,
    );

    // Headers: not a recording, a future version, a name too long, not a valid name, cut.
    replay_refused(
        &broker,
        b"hello world, not a recording",
        &["not a shmemctl recording"],
        0,
    );
    let mut future = whole.clone();
    future[8] = 2;
    replay_refused(&broker, &future, &["format version 2", "version 1 only"], 0);
    let mut long_name = whole.clone();
    long_name[10..12].copy_from_slice(&65u16.to_le_bytes());
    replay_refused(&broker, &long_name, &["65 bytes", "1 to 64"], 0);
    let mut bad_name = recording("victim", &[]);
    bad_name[20] = b'/';
    replay_refused(&broker, &bad_name, &["not a valid name"], 0);
    replay_refused(&broker, &whole[..15], &["truncated", "header"], 0);
    replay_refused(&broker, &whole[..22], &["truncated", "channel name"], 0);

    // After all that, the channel still works and a good file replays cleanly.
    let file = broker.dir().join("good.rec");
    fs::write(&file, &whole).expect("write");
    let (out, got, end, _) = replay_and_drain(&broker, &file, "victim", &[]);
    out.expect_success();
    end.expect("clean end");
    assert_eq!(got.len(), 3);
}

#[test]
fn record_follow_ends_at_a_record_boundary_on_sigint() {
    let broker = Broker::start(None);
    let client = broker.client();
    create(&client, "live", 1 << 20, 1, 1);
    let file = broker.dir().join("live.rec");
    let mut recorder = broker.spawn_ctl(
        &["record", "live", &file.display().to_string(), "--follow"],
        Stdio::null(),
        None,
    );
    wait_for_consumer(&broker, "live", recorder.pid());
    let mut producer = client.producer("live").expect("attach");
    for i in 0..50u64 {
        producer
            .send(&payload(0, i, 1 + i as usize * 100))
            .expect("send");
    }
    producer.close().expect("close");
    // The mark is recorded and --follow goes on waiting; the file is complete on disk.
    wait_for(
        WAIT,
        "the recording to hold 50 messages and the mark",
        || {
            let len = fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            let want = 20 + 4 + (0..50u64).map(|i| 20 + 1 + i * 100).sum::<u64>() + 20;
            if len == want {
                Ok(())
            } else {
                Err(format!("{len} of {want} bytes"))
            }
        },
    );
    recorder.signal(libc::SIGINT);
    let out = recorder.output(TRANSFER);
    assert_eq!(out.status.code(), Some(130), "{out}");
    assert!(
        out.stderr
            .contains("interrupted by SIGINT after 50 messages"),
        "{out}"
    );
    let (_, records) = parse_recording(&file);
    assert_eq!(records.len(), 51);
}

#[test]
fn a_producer_gone_without_its_mark_is_recorded_as_cut_and_record_exits_3() {
    let broker = Broker::start(None);
    let client = broker.client();
    create(&client, "cut", 1 << 20, 1, 1);
    let file = broker.dir().join("cut.rec");
    let mut recorder = broker.spawn_ctl(
        &["record", "cut", &file.display().to_string()],
        Stdio::null(),
        None,
    );
    wait_for_consumer(&broker, "cut", recorder.pid());
    let mut producer = client.producer("cut").expect("attach");
    for i in 0..5u64 {
        producer.send(&payload(0, i, 1000)).expect("send");
    }
    // Gone without close(): no end-of-stream mark.
    drop(producer);
    let out = recorder.output(TRANSFER);
    assert_eq!(out.status.code(), Some(3), "{out}");
    assert!(
        out.stderr.contains("went away without end-of-stream"),
        "{out}"
    );
    let (_, records) = parse_recording(&file);
    let kinds: Vec<u8> = records.iter().map(|r| r.kind).collect();
    assert_eq!(kinds, [1, 1, 1, 1, 1, 3], "five messages, then the cut");
}
