//! Hostile ring positions and counters against the real broker and the real `shmemctl`: a
//! peer maps what it may write of the channel's ring (a producer the ring memfd, a consumer
//! its ack page) and writes values near the top of the u64 range, where a sum with them would
//! overflow. The victim must report a
//! corrupt ring (one line, exit 1), never panic (exit 101), and the broker must keep serving.

use shmem_broker_tests::raw_ring::{Mapping, ACK_MESSAGES_READ, ACK_PRODUCERS_GONE, ACK_READ_POS};
use shmem_broker_tests::*;
use std::sync::atomic::Ordering;

// Header offsets (proto/src/ring.rs, layout 3).
const SEAL_KEY: usize = 32;
const WRITE_POS: usize = 64;
const MESSAGES_WRITTEN: usize = 72;
const BYTES_WRITTEN: usize = 80;
const MESSAGES_LOST: usize = 88;
const DATA: usize = 4096;
const CAPACITY: u64 = 64 * 1024;

/// 16 bytes below 2^64: a multiple of the frame unit, so only its size gives it away.
const NEAR_THE_END: u64 = u64::MAX - 15;

fn ring_size(raw: &RawAttach) -> u64 {
    json_u64(json_field(&raw.reply, "result"), "ring_size")
}

#[test]
fn shmemctl_recv_reports_a_corrupt_ring_when_a_producer_set_positions_near_2_pow_64() {
    let mut broker = Broker::start(None);
    broker.ctl_ok(&["create", "near-end-recv", "--capacity", "64KiB"]);
    // The hostile producer attaches first and prepares the ring for the consumer to come: its
    // position 16 bytes below 2^64 and, there, an empty data frame sealed as published. (The
    // read position is the consumer's, in its ack page, which the producer cannot write.)
    let raw = raw_attach(broker.socket_path(), "near-end-recv", "producer");
    let map = Mapping::new(raw.fd("ring"), ring_size(&raw));
    let key = map.u64_at(SEAL_KEY).load(Ordering::SeqCst);
    let offset = DATA + (NEAR_THE_END % CAPACITY) as usize;
    map.write_u32(offset, 0);
    map.write_u32(offset + 4, 1 | 1 << 16); // DATA, a span of 1 unit
    map.u64_at(offset + 8)
        .store(NEAR_THE_END.wrapping_add(1) ^ key, Ordering::SeqCst);
    map.u64_at(WRITE_POS).store(NEAR_THE_END, Ordering::SeqCst);
    let out = broker.ctl(&["recv", "near-end-recv"]);
    assert_eq!(out.status.code(), Some(1), "{out}");
    out.expect_error(&["corrupt ring", "near-end-recv", "positions out of range"]);
    broker.assert_running();
    broker.ctl_ok(&["list"]);
}

#[test]
fn shmemctl_send_reports_a_corrupt_ring_when_a_consumer_set_positions_near_2_pow_64() {
    let mut broker = Broker::start(None);
    broker.ctl_ok(&["create", "near-end-send", "--capacity", "64KiB"]);
    let raw = raw_attach(broker.socket_path(), "near-end-send", "consumer");
    // All a consumer can write: its ack page, where it claims to have read up to 2^64 - 16.
    let map = Mapping::new(raw.fd("ack"), 4096);
    map.u64_at(ACK_READ_POS)
        .store(NEAR_THE_END, Ordering::SeqCst);
    // Standard input is empty: the producer writes its end-of-stream mark after checking the
    // consumer's position against its own.
    let out = broker.ctl(&["send", "near-end-send"]);
    assert_eq!(out.status.code(), Some(1), "{out}");
    out.expect_error(&["corrupt ring", "near-end-send", "positions out of range"]);
    broker.assert_running();
    broker.ctl_ok(&["list"]);
}

#[test]
fn counters_set_to_u64_max_in_several_rings_do_not_crash_the_broker_listing_them() {
    let mut broker = Broker::start(None);
    broker.ctl_ok(&[
        "create",
        "max-counters",
        "--capacity",
        "64KiB",
        "--max-consumers",
        "2",
    ]);
    // Two consumers, each with its ring from one producer; each side scribbles what it may
    // write: the producer its counters in both rings, each consumer its ack page.
    let consumers: Vec<RawAttach> = (0..2)
        .map(|_| raw_attach_any(broker.socket_path(), "max-counters", "consumer"))
        .collect();
    let producer = raw_attach_any(broker.socket_path(), "max-counters", "producer");
    let mut maps = Vec::new();
    for lane in producer.lanes() {
        let map = Mapping::new(lane.ring, CAPACITY + 4096);
        for counter in [MESSAGES_WRITTEN, BYTES_WRITTEN, MESSAGES_LOST] {
            map.u64_at(counter).store(u64::MAX, Ordering::SeqCst);
        }
        maps.push(map);
    }
    for consumer in &consumers {
        let map = Mapping::new(consumer.lanes()[0].ack, 4096);
        map.u64_at(ACK_MESSAGES_READ)
            .store(u64::MAX, Ordering::SeqCst);
        maps.push(map);
    }
    // The broker adds the rings' counters up for `list` and `info`.
    broker.ctl_ok(&["list"]);
    let info = broker.ctl_ok(&["info", "max-counters"]);
    broker.assert_running();
    assert!(info.contains("max-counters"), "{info}");
    let channels = broker.list();
    let channel = find_channel(&channels, "max-counters").expect("listed");
    assert_eq!(json_u64(channel, "messages_read"), u64::MAX, "{channel}");
}

/// The ring header's `dropped` flag (offset 24) lies in the producer's memfd since layout 3.
/// A hostile producer of a one-to-one channel sets it and leaves: its consumer must not take
/// the channel for dropped (only the broker's event says so), and reads the next producer's
/// messages.
#[test]
fn a_producer_flagging_a_one_to_one_ring_dropped_does_not_end_the_consumers_channel() {
    const DROPPED: usize = 24;
    let mut broker = Broker::start(None);
    broker.ctl_ok(&["create", "flagged", "--capacity", "64KiB"]);
    let client = broker.client();
    let mut consumer = client.consumer("flagged").expect("attach the consumer");
    let hostile = raw_attach_any(broker.socket_path(), "flagged", "producer");
    let map = Mapping::new(hostile.fd("ring"), 4096);
    map.write_u32(DROPPED, 1);
    let wake: u64 = 1;
    rustix::io::write(hostile.fd("data_ready"), &wake.to_ne_bytes()).expect("wake the consumer");
    drop(map);
    drop(hostile);
    // Its slot is free once the broker has seen it go (max_producers = 1).
    broker.wait_for_no_peer_with_role("flagged", "producer");
    let mut honest = client
        .producer("flagged")
        .expect("attach the honest producer");
    for i in 0..3u8 {
        honest.send(&[i; 8]).expect("send");
    }
    honest.close().expect("close");
    let mut received = Vec::new();
    loop {
        match consumer.recv() {
            Ok(Some(message)) => received.push(message[0]),
            Ok(None) => break,
            // The hostile producer left without end-of-stream: reported, then read on.
            Err(shmem_broker_client::Error::ProducerGone { .. }) => {}
            Err(err) => panic!("the consumer gave up on the channel: {err}"),
        }
    }
    assert_eq!(received, vec![0, 1, 2]);
    broker.assert_running();
}

/// This process's own mapping of channel `channel`'s ack page, reopened writable through
/// `/proc/self/map_files` (the consumer's own memfd, which the client maps and closes: what a
/// buggy or hostile consumer can scribble). Opening `map_files` needs root.
fn own_ack_page(channel: &str) -> Mapping {
    // The broker names it "shmem-broker:CHANNEL:pSLOT:cQUEUE:ack".
    let prefix = format!("/memfd:shmem-broker:{channel}:");
    for entry in std::fs::read_dir("/proc/self/map_files").expect("list /proc/self/map_files") {
        let path = entry.expect("an fd entry").path();
        let Ok(target) = std::fs::read_link(&path) else {
            continue;
        };
        let target = target.to_string_lossy();
        if target.starts_with(&prefix) && target.contains(":ack") {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .expect("reopen our own ack page writable");
            return Mapping::new(file, 4096);
        }
    }
    panic!("no ack page of {channel:?} among this process's mappings");
}

/// The ack page's `producers_gone` count (offset 128) is the broker's announcement of a
/// `producer_gone` event on its way, and the consumer's client does not read past it until the
/// event comes. It lies in the consumer's own memfd, so a consumer that scribbles it (here:
/// u64::MAX, an event that will never come) can mislead only itself, and only for the wait's
/// bound (1 s): a blocking receive and a `try_recv` parked on `ready_fd()` both get the
/// messages.
#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn a_consumer_scribbling_its_own_producers_gone_count_still_receives_within_the_bound() {
    require_root();
    let mut broker = Broker::start(None);
    let client = broker.client();
    for (channel, blocking) in [("scribbled-try", false), ("scribbled-blocking", true)] {
        broker.ctl_ok(&["create", channel, "--capacity", "64KiB"]);
        let mut consumer = client.consumer(channel).expect("attach the consumer");
        let ack = own_ack_page(channel);
        ack.u64_at(ACK_PRODUCERS_GONE)
            .store(u64::MAX, Ordering::SeqCst);
        let mut producer = client.producer(channel).expect("attach the producer");
        for i in 0..3u8 {
            producer.send(&[i; 8]).expect("send");
        }
        producer.close().expect("close");
        // Within WAIT (10 s), for a wait bounded at 1 s: never for ever.
        let received = with_deadline(WAIT, "the scribbling consumer to drain", move || {
            let mut received = Vec::new();
            loop {
                let got = if blocking {
                    consumer.recv()
                } else {
                    match consumer.try_recv() {
                        Err(shmem_broker_client::TryRecvError::Empty) => {
                            // Nothing else will happen on this channel: only the wait's
                            // bound can make ready_fd() readable.
                            assert!(
                                readable(consumer.ready_fd(), WAIT),
                                "ready_fd() stayed quiet after {received:?}"
                            );
                            continue;
                        }
                        Err(shmem_broker_client::TryRecvError::Failed(e)) => Err(e),
                        Ok(got) => Ok(got),
                        Err(e) => panic!("{e}"),
                    }
                };
                match got {
                    Ok(Some(message)) => received.push(message[0]),
                    Ok(None) => break received,
                    Err(err) => panic!("after {received:?}: {err}"),
                }
            }
        });
        assert_eq!(received, vec![0, 1, 2], "{channel}");
        drop(ack);
    }
    broker.assert_running();
}
