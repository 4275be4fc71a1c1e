//! Hostile peers of fan-out channels against the real broker and `shmemctl`: a producer that
//! writes a wild position into its ring to a consumer, or flags that consumer evicted, costs
//! that ring only (the consumer reads every honest producer's messages, and a durable
//! consumer's queue keeps the other producers' data); counters scribbled to `u64::MAX` in the
//! rings of two producers or two durable consumers neither crash `list`/`info` nor show wrapped
//! numbers (these tests run the debug broker, overflow checks on); a consumer cannot write its
//! producer's ring at all (layout 3: it is handed that memfd read-only).

use serde_json::Value;
use shmem_broker_tests::raw_ring::{Mapping, ACK_MESSAGES_READ};
use shmem_broker_tests::*;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::time::Duration;

/// Offsets in a ring's header (see proto/src/ring.rs).
const MAGIC: usize = 0;
const DROPPED: usize = 24;
const EVICTED: usize = 28;
const WRITE_POS: usize = 64;
const MESSAGES_WRITTEN: usize = 72;
const BYTES_WRITTEN: usize = 80;
const MESSAGES_LOST: usize = 88;

/// Long enough for the broker's housekeeping (every 500 ms) to have looked twice.
const HOUSEKEEPING_TWICE: Duration = Duration::from_millis(1500);

/// A raw fan-out producer's rings, one per consumer queue, in the order of its `lanes`
/// (its fds are `control`, `wait`, then `ring`, `wake` per queue).
fn producer_rings(raw: &RawAttach) -> Vec<(&OwnedFd, &OwnedFd)> {
    raw.lanes()
        .into_iter()
        .map(|lane| (lane.ring, lane.wake))
        .collect()
}

/// What a raw consumer may write: the ack page of each of its lanes, as `messages_read`.
fn scribble_messages_read(consumer: &RawAttach, values: &[u64]) {
    let lanes = consumer.lanes();
    assert_eq!(lanes.len(), values.len(), "{}", consumer.reply);
    for (lane, value) in lanes.iter().zip(values) {
        Mapping::new(lane.ack, 4096).write_u64(ACK_MESSAGES_READ, *value);
    }
}

fn wake(fd: &OwnedFd) {
    rustix::io::write(fd, &1u64.to_ne_bytes()).expect("wake the consumer");
}

/// `shmemctl recv CHANNEL --streams 2` on a channel with two producers, one honest (`shmemctl
/// send`) and one raw that does `attack` to its ring to the consumer (slot 0, as it attaches
/// first). Returns recv's result and what it wrote.
fn recv_beside_a_hostile_producer(
    broker: &Broker,
    channel: &str,
    attack: impl FnOnce(&Mapping),
) -> (CmdOutput, String) {
    broker.ctl_ok(&[
        "create",
        channel,
        "--capacity",
        "64KiB",
        "--max-producers",
        "2",
    ]);
    let out_path = broker.dir().join(format!("{channel}.out"));
    let mut receiver = broker.spawn_ctl(
        &["recv", channel, "--streams", "2"],
        Stdio::null(),
        Some(Stdio::from(File::create(&out_path).expect("create output"))),
    );
    broker.wait_for_peer(channel, receiver.pid(), "consumer");
    let hostile = raw_attach_any(broker.socket_path(), channel, "producer");
    assert_eq!(hostile.reply["result"]["id"], 0, "{}", hostile.reply);
    let rings = producer_rings(&hostile);
    assert_eq!(rings.len(), 1, "one consumer queue: {}", hostile.reply);
    let map = Mapping::new(rings[0].0, 4096);
    attack(&map);
    wake(rings[0].1);
    let input = broker.dir().join(format!("{channel}.in"));
    std::fs::write(&input, "honest line\n".repeat(2000)).expect("write input");
    broker
        .spawn_ctl(
            &["send", channel, "--chunk", "4KiB"],
            Stdio::from(File::open(&input).expect("open input")),
            None,
        )
        .output(WAIT)
        .expect_success();
    let out = receiver.output(WAIT);
    let received = std::fs::read_to_string(&out_path).expect("read output");
    drop(map);
    drop(hostile);
    (out, received)
}

/// recv delivered all of the honest producer's data, said once on stderr which producer's
/// ring it lost and why, and exited 3 (everything delivered, a stream cut short).
fn assert_honest_data_and_one_notice(out: &CmdOutput, received: &str, why: &str) {
    assert_eq!(
        received,
        "honest line\n".repeat(2000),
        "recv must print every honest message: {out}"
    );
    let notices: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("producer 0"))
        .collect();
    assert_eq!(
        notices.len(),
        1,
        "one stderr line names the producer: {out}"
    );
    assert!(
        notices[0].contains(why) && notices[0].contains("reading on without it"),
        "the line says why ({why:?}): {out}"
    );
    assert_eq!(
        out.stderr.lines().count(),
        1,
        "nothing else on stderr: {out}"
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "exit code 3: a stream was cut short: {out}"
    );
}

#[test]
fn a_producer_writing_a_wild_write_pos_costs_only_its_ring() {
    let mut broker = Broker::start(None);
    let (out, received) = recv_beside_a_hostile_producer(&broker, "wild", |map| {
        map.write_u64(WRITE_POS, 0x0dea_dbee_f000);
    });
    assert_honest_data_and_one_notice(&out, &received, "positions out of range");
    broker.assert_running();
}

#[test]
fn a_producer_flagging_its_consumer_evicted_costs_only_its_ring() {
    let mut broker = Broker::start(None);
    let (out, received) = recv_beside_a_hostile_producer(&broker, "flag", |map| {
        map.write_u32(EVICTED, 1);
    });
    assert_honest_data_and_one_notice(&out, &received, "flagged this consumer evicted");
    assert!(
        !broker.log().contains("slow consumers disconnected"),
        "the broker disconnected nobody: {}",
        broker.log()
    );
    broker.assert_running();
}

#[test]
fn a_producer_flagging_its_ring_dropped_does_not_stop_the_others_messages() {
    let mut broker = Broker::start(None);
    let client = broker.client();
    broker.ctl_ok(&[
        "create",
        "drop-flag",
        "--capacity",
        "64KiB",
        "--max-producers",
        "2",
        "--max-consumers",
        "2",
    ]);
    let mut consumer = client.consumer("drop-flag").expect("attach the consumer");
    let hostile = raw_attach_any(broker.socket_path(), "drop-flag", "producer");
    let rings = producer_rings(&hostile);
    let map = Mapping::new(rings[0].0, 4096);
    map.write_u32(DROPPED, 1);
    wake(rings[0].1);
    let mut honest = client
        .producer("drop-flag")
        .expect("attach the honest producer");
    for i in 0..100u32 {
        honest.send(&i.to_le_bytes()).expect("send");
    }
    honest.close().expect("close");
    let received = with_deadline(WAIT, "the consumer to read the honest stream", move || {
        let mut received = Vec::new();
        while let Some(message) = consumer.recv().expect("recv beside a flagged ring") {
            received.push(u32::from_le_bytes(
                message[..4].try_into().expect("4 bytes"),
            ));
        }
        received
    });
    assert_eq!(received, (0..100).collect::<Vec<_>>());
    drop(map);
    drop(hostile);
    broker.assert_running();
}

#[test]
fn a_producer_flagging_an_away_durable_consumer_leaves_the_other_producers_data() {
    let mut broker = Broker::start(None);
    let client = broker.client();
    // Policy disconnect: the one where a producer may evict, when the ring bears it out.
    broker.ctl_ok(&[
        "create",
        "keep",
        "--capacity",
        "64KiB",
        "--max-producers",
        "2",
        "--max-consumers",
        "2",
        "--slow-consumer",
        "disconnect",
    ]);
    let durable = client
        .attach("keep")
        .durable("d")
        .consumer()
        .expect("attach the durable consumer");
    drop(durable);
    let hostile = raw_attach_any(broker.socket_path(), "keep", "producer");
    let rings = producer_rings(&hostile);
    assert_eq!(rings.len(), 1, "the durable queue: {}", hostile.reply);
    let mut honest = client.producer("keep").expect("attach the honest producer");
    for i in 0..100 {
        honest
            .send(format!("message {i}\n").as_bytes())
            .expect("send");
    }
    honest.close().expect("close");
    {
        let map = Mapping::new(rings[0].0, 4096);
        map.write_u32(EVICTED, 1);
        map.write_u64(MESSAGES_WRITTEN, u64::MAX);
    }
    std::thread::sleep(HOUSEKEEPING_TWICE);
    let out = broker
        .spawn_ctl(
            &["recv", "keep", "--as", "d", "--streams", "1"],
            Stdio::null(),
            None,
        )
        .output(WAIT);
    let expected: String = (0..100).map(|i| format!("message {i}\n")).collect();
    assert_eq!(
        out.expect_success(),
        expected,
        "the durable consumer gets the honest producer's queued messages"
    );
    drop(hostile);
    broker.assert_running();
}

/// A consumer that scribbled the header of its own ring (slot 0's, which exists from creation)
/// and stayed attached used to lock every producer out ("bad magic"). Since layout 3 it
/// cannot: the ring memfd comes read-only (mapping it writable fails, and so does opening it
/// again for writing: the broker's memfds are mode 0600, see tests/read_only.rs for another
/// uid). What the consumer does own, its ack page, it may scribble: producers go on.
#[test]
fn a_consumer_cannot_scribble_its_ring_header_and_producers_get_in() {
    let broker = Broker::start(None);
    broker.ctl_ok(&[
        "create",
        "hdr",
        "--capacity",
        "64KiB",
        "--max-consumers",
        "2",
    ]);
    let hostile = raw_attach_any(broker.socket_path(), "hdr", "consumer");
    let lanes = hostile.lanes();
    let refused = Mapping::try_new(lanes[0].ring, 4096).err();
    assert_eq!(
        refused.map(|e| e.raw_os_error()),
        Some(Some(libc::EACCES)),
        "a consumer must not be able to map its producer's ring writable"
    );
    let map = Mapping::new(lanes[0].ack, 4096);
    map.write_u64(0, u64::MAX);
    map.write_u64(ACK_MESSAGES_READ, u64::MAX);
    let out_path = broker.dir().join("hdr.out");
    let mut receiver = broker.spawn_ctl(
        &["recv", "hdr"],
        Stdio::null(),
        Some(Stdio::from(File::create(&out_path).expect("create output"))),
    );
    broker.wait_for_peer("hdr", receiver.pid(), "consumer");
    let input = broker.dir().join("hdr.in");
    std::fs::write(&input, "honest line\n".repeat(2000)).expect("write input");
    broker
        .spawn_ctl(
            &["send", "hdr", "--chunk", "4KiB"],
            Stdio::from(File::open(&input).expect("open input")),
            None,
        )
        .output(WAIT)
        .expect_success();
    receiver.output(WAIT).expect_success();
    let received = std::fs::read_to_string(&out_path).expect("read output");
    assert_eq!(received, "honest line\n".repeat(2000));
    drop(map);
    drop(hostile);
}

/// A producer that scribbles the header of its ring to a durable consumer that is away: that
/// consumer's next attach used to fail ("bad magic"), for good, even after the producer left.
/// The broker now replaces a ring whose identity was scribbled once its consumer is away.
#[test]
fn a_producer_scribbling_a_durable_consumers_ring_header_does_not_lock_it_out() {
    let broker = Broker::start(None);
    let client = broker.client();
    broker.ctl_ok(&[
        "create",
        "hdrd",
        "--capacity",
        "64KiB",
        "--max-producers",
        "2",
        "--max-consumers",
        "2",
    ]);
    let durable = client
        .attach("hdrd")
        .durable("d")
        .consumer()
        .expect("attach the durable consumer");
    drop(durable);
    let hostile = raw_attach_any(broker.socket_path(), "hdrd", "producer");
    let rings = producer_rings(&hostile);
    assert_eq!(rings.len(), 1, "the durable queue: {}", hostile.reply);
    Mapping::new(rings[0].0, 4096).write_u64(MAGIC, 0);
    drop(hostile);
    let mut honest = client.producer("hdrd").expect("attach the honest producer");
    for i in 0..100 {
        honest
            .send(format!("message {i}\n").as_bytes())
            .expect("send");
    }
    honest.close().expect("close");
    std::thread::sleep(HOUSEKEEPING_TWICE);
    let out = broker
        .spawn_ctl(
            &["recv", "hdrd", "--as", "d", "--streams", "1"],
            Stdio::null(),
            None,
        )
        .output(WAIT);
    let expected: String = (0..100).map(|i| format!("message {i}\n")).collect();
    assert_eq!(out.expect_success(), expected, "{out}");
}

// ---------------------------------------------------------------------------------------------
// Counters

/// `list`, `info` and `info --json` answer, the broker lives on, and the JSON totals are
/// saturated or clamped, not wrapped: returns `info --json`.
fn counters_are_shown_clamped(broker: &mut Broker, channel: &str) -> Value {
    broker.ctl_ok(&["list"]);
    broker.ctl_ok(&["info", channel]);
    let info = broker.info(channel);
    broker.assert_running();
    let unread = json_u64(&info, "bytes_unread");
    assert!(
        unread <= json_u64(&info, "ring_bytes"),
        "unread bytes within the ring memory: {info}"
    );
    for peer in json_array(&info, "peers") {
        assert!(
            json_u64(peer, "bytes_unread") <= json_u64(&info, "ring_bytes"),
            "{peer}"
        );
    }
    let listed = broker.list();
    let listed = find_channel(&listed, channel).expect("listed");
    assert_eq!(listed["messages_written"], info["messages_written"]);
    info
}

#[test]
fn counters_scribbled_in_two_producers_rings_are_summed_saturating() {
    let mut broker = Broker::start(None);
    broker.ctl_ok(&[
        "create",
        "count-p",
        "--capacity",
        "64KiB",
        "--max-producers",
        "2",
    ]);
    let first = raw_attach_any(broker.socket_path(), "count-p", "producer");
    let second = raw_attach_any(broker.socket_path(), "count-p", "producer");
    for raw in [&first, &second] {
        let map = Mapping::new(producer_rings(raw)[0].0, 4096);
        for offset in [MESSAGES_WRITTEN, BYTES_WRITTEN, MESSAGES_LOST] {
            map.write_u64(offset, u64::MAX);
        }
    }
    let consumer = raw_attach_any(broker.socket_path(), "count-p", "consumer");
    scribble_messages_read(&consumer, &[u64::MAX, 5]);
    // One ring claims 5 messages read of u64::MAX written: shown as read.
    let info = counters_are_shown_clamped(&mut broker, "count-p");
    assert_eq!(json_u64(&info, "messages_written"), u64::MAX, "{info}");
    assert_eq!(json_u64(&info, "bytes_written"), u64::MAX, "{info}");
    assert_eq!(json_u64(&info, "messages_read"), u64::MAX, "{info}");
    // The channel's counts are the broker's running totals: a ring whose counters go back
    // leaves them as they were (a peer cannot erase what was counted).
    let third = Mapping::new(producer_rings(&first)[0].0, 4096);
    third.write_u64(MESSAGES_WRITTEN, 7);
    let info = counters_are_shown_clamped(&mut broker, "count-p");
    assert_eq!(json_u64(&info, "messages_read"), u64::MAX, "{info}");
    assert_eq!(json_u64(&info, "messages_written"), u64::MAX, "{info}");
    drop(third);
    drop((first, second, consumer));

    // A ring that claims more read than written counts no more than written.
    broker.ctl_ok(&[
        "create",
        "count-q",
        "--capacity",
        "64KiB",
        "--max-producers",
        "2",
    ]);
    let raw = raw_attach_any(broker.socket_path(), "count-q", "producer");
    let map = Mapping::new(producer_rings(&raw)[0].0, 4096);
    map.write_u64(MESSAGES_WRITTEN, 7);
    let consumer = raw_attach_any(broker.socket_path(), "count-q", "consumer");
    scribble_messages_read(&consumer, &[100]);
    let info = counters_are_shown_clamped(&mut broker, "count-q");
    assert_eq!(json_u64(&info, "messages_read"), 7, "clamped: {info}");
    drop(map);
    drop((raw, consumer));
}

/// A producer that sets its ring's counters to X, then 0, then X again between the broker's
/// looks must not have X counted twice: the broker takes what a ring counted only when it grows
/// past the most it showed before.
#[test]
fn counters_that_go_down_and_up_again_are_counted_once() {
    let broker = Broker::start(None);
    broker.ctl_ok(&[
        "create",
        "seesaw",
        "--capacity",
        "64KiB",
        "--max-producers",
        "2",
    ]);
    let raw = raw_attach_any(broker.socket_path(), "seesaw", "producer");
    let map = Mapping::new(producer_rings(&raw)[0].0, 4096);
    for value in [1000, 0, 1000, 0, 1000] {
        map.write_u64(MESSAGES_WRITTEN, value);
        map.write_u64(BYTES_WRITTEN, value * 64);
        broker.ctl_ok(&["info", "seesaw"]);
    }
    let info = broker.info("seesaw");
    assert_eq!(json_u64(&info, "messages_written"), 1000, "{info}");
    assert_eq!(json_u64(&info, "bytes_written"), 64_000, "{info}");
    // It sets them back low and leaves: its successor in the slot writes on from there, and
    // what it writes counts (the broker takes a handed-over ring as it is, not at its peak).
    map.write_u64(MESSAGES_WRITTEN, 10);
    map.write_u64(BYTES_WRITTEN, 640);
    drop(map);
    drop(raw);
    broker.wait_for_no_peer_with_role("seesaw", "producer");
    let next = raw_attach_any(broker.socket_path(), "seesaw", "producer");
    let map = Mapping::new(producer_rings(&next)[0].0, 4096);
    assert_eq!(map.load_u64(MESSAGES_WRITTEN), 10, "the same slot's ring");
    map.write_u64(MESSAGES_WRITTEN, 15);
    map.write_u64(BYTES_WRITTEN, 960);
    let info = broker.info("seesaw");
    assert_eq!(json_u64(&info, "messages_written"), 1005, "{info}");
    assert_eq!(json_u64(&info, "bytes_written"), 64_320, "{info}");
    drop(map);
    drop(next);
}

#[test]
fn counters_scribbled_in_two_durable_consumers_rings_are_summed_saturating() {
    let mut broker = Broker::start(None);
    broker.ctl_ok(&[
        "create",
        "count-c",
        "--capacity",
        "64KiB",
        "--max-consumers",
        "2",
    ]);
    for name in ["a", "b"] {
        let consumer = raw_attach_as(broker.socket_path(), "count-c", "consumer", Some(name));
        scribble_messages_read(&consumer, &[u64::MAX]);
    }
    let raw = raw_attach_any(broker.socket_path(), "count-c", "producer");
    let rings = producer_rings(&raw);
    assert_eq!(rings.len(), 2, "a ring per durable queue: {}", raw.reply);
    for (ring, _) in &rings {
        let map = Mapping::new(ring, 4096);
        for offset in [MESSAGES_WRITTEN, BYTES_WRITTEN, MESSAGES_LOST] {
            map.write_u64(offset, u64::MAX);
        }
    }
    let info = counters_are_shown_clamped(&mut broker, "count-c");
    assert_eq!(json_u64(&info, "messages_read"), u64::MAX, "{info}");
    let producer = json_array(&info, "peers")
        .iter()
        .find(|p| p["role"] == "producer")
        .expect("the producer is listed")
        .clone();
    assert_eq!(json_u64(&producer, "messages_lost"), u64::MAX, "{info}");
    drop(raw);
}

#[test]
fn a_real_drop_still_ends_a_fanout_consumer_and_producer() {
    let broker = Broker::start(None);
    let client = broker.client();
    broker.ctl_ok(&[
        "create",
        "gone",
        "--capacity",
        "16KiB",
        "--max-producers",
        "2",
        "--max-consumers",
        "2",
    ]);
    let mut consumer = client.consumer("gone").expect("attach the consumer");
    let mut producer = client.producer("gone").expect("attach the producer");
    let waiting = Background::spawn("the consumer's recv", move || consumer.recv());
    std::thread::sleep(Duration::from_millis(200));
    broker.ctl_ok(&["drop", "gone"]);
    match waiting.join(WAIT) {
        Err(shmem_broker_client::Error::ChannelDropped { channel }) => assert_eq!(channel, "gone"),
        other => panic!("the blocked consumer should learn of the drop, got {other:?}"),
    }
    let sent = with_deadline(WAIT, "the producer to notice the drop", move || loop {
        if let Err(e) = producer.send(b"after the drop") {
            return e;
        }
    });
    assert!(
        matches!(sent, shmem_broker_client::Error::ChannelDropped { .. }),
        "{sent}"
    );
}
