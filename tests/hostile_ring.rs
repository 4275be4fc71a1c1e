//! Hostile peers on the ring against the real broker: attempts to unseal or resize the ring
//! memfd, and scribbled ring headers, frame lengths, kinds and positions. Each test names the
//! claim of SECURITY.md it checks.

use shmem_broker_client::ring::{ReadOutcome, RingFds, RingReader, RingWriter, SharedRing};
use shmem_broker_tests::hostile_common::*;
use shmem_broker_tests::raw_ring::{Mapping, ACK_READ_POS};
use shmem_broker_tests::*;
use std::os::fd::OwnedFd;

// ---------------------------------------------------------------------------------------------
// 5. The ring memfd is sealed: no shrinking, growing or further sealing

/// Everything a hostile peer could try on the ring fd to resize it or make it read-only.
fn assert_ring_fd_is_sealed(ring: &OwnedFd, ring_size: u64) {
    use rustix::fs::SealFlags;
    // A writable fd meets the seals (EPERM); a read-only one (the other side's memfd, since
    // layout 3) is refused before they matter (EBADF or EINVAL: not open for writing).
    let writable = rustix::fs::fcntl_getfl(ring)
        .expect("F_GETFL")
        .contains(rustix::fs::OFlags::RDWR);
    let refused = |result: rustix::io::Result<()>| match result {
        Err(rustix::io::Errno::PERM) => true,
        Err(rustix::io::Errno::BADF | rustix::io::Errno::INVAL) => !writable,
        _ => false,
    };
    let size = || rustix::fs::fstat(ring).expect("fstat the ring").st_size as u64;
    assert_eq!(
        size(),
        ring_size,
        "the ring memfd has the announced ring_size"
    );
    let seals = rustix::fs::fcntl_get_seals(ring).expect("F_GET_SEALS on the ring");
    for (seal, name) in [
        (SealFlags::SHRINK, "F_SEAL_SHRINK"),
        (SealFlags::GROW, "F_SEAL_GROW"),
        (SealFlags::SEAL, "F_SEAL_SEAL"),
    ] {
        assert!(seals.contains(seal), "ring seals {seals:?} lack {name}");
    }
    for (len, what) in [
        (ring_size - 4096, "smaller"),
        (0, "to zero"),
        (ring_size + 4096, "larger"),
    ] {
        assert!(
            refused(rustix::fs::ftruncate(ring, len)),
            "ftruncate {what} ({len} bytes) must fail"
        );
    }
    assert!(
        refused(rustix::fs::fallocate(
            ring,
            rustix::fs::FallocateFlags::empty(),
            ring_size,
            4096
        )),
        "fallocate past the end must fail"
    );
    assert!(
        refused(rustix::io::pwrite(ring, b"grow", ring_size).map(drop)),
        "pwrite past the end must fail"
    );
    for (seal, name) in [
        (SealFlags::WRITE, "F_SEAL_WRITE"),
        (SealFlags::FUTURE_WRITE, "F_SEAL_FUTURE_WRITE"),
    ] {
        assert_eq!(
            rustix::fs::fcntl_add_seals(ring, seal),
            Err(rustix::io::Errno::PERM),
            "F_ADD_SEALS {name} must fail with EPERM"
        );
    }
    assert_eq!(size(), ring_size, "the ring kept its size");
    assert_eq!(
        rustix::fs::fcntl_get_seals(ring).expect("F_GET_SEALS"),
        seals,
        "the seals did not change"
    );
}

fn attach_capacity(raw: &RawAttach) -> (u64, u64) {
    let result = json_field(&raw.reply, "result");
    (json_u64(result, "capacity"), json_u64(result, "ring_size"))
}

#[test]
fn consumer_cannot_resize_or_reseal_the_ring_and_the_producer_keeps_working() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "sealed-c", "--capacity", "64KiB"]);
    let client = broker.client();
    let mut producer = client
        .producer("sealed-c")
        .expect("attach a library producer");
    for i in 0..10 {
        producer.send(&payload(i, 1000 + i as usize)).expect("send");
    }
    let mut raw = raw_attach(broker.socket_path(), "sealed-c", "consumer");
    let (capacity, ring_size) = attach_capacity(&raw);
    assert_ring_fd_is_sealed(&raw.fds[0], ring_size);
    assert_ring_fd_is_sealed(&raw.fds[1], 4096);
    // The producer goes on (a shrunk file would SIGBUS it here) ...
    for i in 10..20 {
        producer
            .send(&payload(i, 1000 + i as usize))
            .expect("send after the attack");
    }
    // ... and the data is intact, read through the very fd we attacked.
    let (ring, ack) = (raw.fds.remove(0), raw.fds.remove(0));
    let fds = RingFds {
        ring,
        ack: Some(ack),
    };
    let ring = SharedRing::open(fds, capacity).expect("the ring still passes the library's checks");
    let mut reader = RingReader::new(ring).expect("a reader on the ring");
    let mut message = Vec::new();
    for i in 0..20 {
        assert_eq!(
            reader.try_read_into(&mut message).expect("read"),
            ReadOutcome::Message,
            "message {i}"
        );
        assert!(
            message == payload(i, 1000 + i as usize),
            "message {i} is intact"
        );
    }
    assert_eq!(
        reader.try_read_into(&mut message).expect("read"),
        ReadOutcome::Empty
    );
    broker.ctl_ok(&["list"]);
}

#[test]
fn producer_cannot_resize_or_reseal_the_ring_and_the_consumer_keeps_working() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "sealed-p", "--capacity", "64KiB"]);
    let client = broker.client();
    let mut consumer = client
        .consumer("sealed-p")
        .expect("attach a library consumer");
    let mut raw = raw_attach(broker.socket_path(), "sealed-p", "producer");
    let (capacity, ring_size) = attach_capacity(&raw);
    assert_ring_fd_is_sealed(&raw.fds[0], ring_size);
    assert_ring_fd_is_sealed(&raw.fds[1], 4096);
    let data_ready = raw.fds.remove(2);
    let (ring, ack) = (raw.fds.remove(0), raw.fds.remove(0));
    let fds = RingFds {
        ring,
        ack: Some(ack),
    };
    let ring = SharedRing::open(fds, capacity).expect("the ring still passes the library's checks");
    let mut writer = RingWriter::new(ring).expect("a writer on the ring");
    for i in 0..20u64 {
        let message = payload(i, 500 + i as usize);
        assert!(
            writer
                .try_write_with(message.len(), |slot| slot.copy_from_slice(&message))
                .expect("write"),
            "room for message {i}"
        );
    }
    if writer.take_consumer_waiting() {
        rustix::io::write(&data_ready, &1u64.to_ne_bytes()).expect("wake the consumer");
    }
    let received = with_deadline(
        WAIT,
        "the library consumer to receive 20 messages",
        move || (0..20).map(|_| consumer.recv()).collect::<Vec<_>>(),
    );
    for (i, message) in received.into_iter().enumerate() {
        let message = message
            .unwrap_or_else(|e| panic!("recv {i}: {e}"))
            .unwrap_or_else(|| panic!("recv {i}: unexpected end-of-stream"));
        assert!(
            message == payload(i as u64, 500 + i),
            "message {i} is intact"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 6. A peer scribbling on the ring gets the other side a "corrupt ring" error, nothing worse

const WRITE_POS: usize = 64;
const DATA: usize = 4096;

/// After a scribble: the broker still serves, and dropping and re-creating the channel gives
/// a working channel of the same name.
fn assert_channel_can_be_recreated(broker: &mut Broker, name: &str) {
    broker.assert_running();
    broker.ctl_ok(&["list"]);
    let channels = broker.list();
    let channel =
        find_channel(&channels, name).unwrap_or_else(|| panic!("{name} listed: {channels:?}"));
    assert!(
        json_u64(channel, "bytes_unread") <= json_u64(channel, "capacity"),
        "counters read from a scribbled ring are clamped: {channel}"
    );
    broker.ctl_ok(&["drop", name]);
    broker.ctl_ok(&["create", name, "--capacity", "64KiB"]);
    let client = broker.client();
    let mut producer = client
        .producer(name)
        .expect("attach a producer to the new channel");
    let mut consumer = client
        .consumer(name)
        .expect("attach a consumer to the new channel");
    producer
        .send(b"fresh start")
        .expect("send on the new channel");
    let got = consumer.recv().expect("recv on the new channel");
    assert_eq!(got.as_deref(), Some(&b"fresh start"[..]));
    broker.assert_running();
}

/// An honest library consumer and a raw producer attachment that scribbles with `scribble`;
/// returns what the consumer's `recv` says.
fn consumer_error_after_scribble(
    broker: &Broker,
    name: &str,
    scribble: impl FnOnce(&Mapping),
) -> String {
    let (mut consumer, raw, map) = honest_consumer_and_raw_producer(broker, name);
    // The consumer waits for data while the peer scribbles.
    let waiting = Background::spawn("the honest consumer's recv", move || {
        match consumer.recv() {
            Ok(message) => Err(format!("recv returned {message:?} from a scribbled ring")),
            Err(e) => Ok(e.to_string()),
        }
    });
    scribble(&map);
    rustix::io::write(raw.fd("data_ready"), &1u64.to_ne_bytes()).expect("wake the consumer");
    let result = waiting.join(WAIT);
    drop(map);
    drop(raw);
    result.unwrap_or_else(|e| panic!("{e}"))
}

fn assert_corrupt_ring_error(error: &str, name: &str, detail: &str) {
    for needle in ["corrupt ring", name, detail] {
        assert!(
            error.contains(needle),
            "the error should mention {needle:?}: {error}"
        );
    }
}

#[test]
fn scribbled_write_position_is_a_corrupt_ring_error_for_the_consumer() {
    let mut broker = Broker::start(None);
    let error = consumer_error_after_scribble(&broker, "scribble-pos", |map| {
        map.write_u64(WRITE_POS, 0xDEAD_BEEF_DEAD_BEEF);
    });
    assert_corrupt_ring_error(&error, "scribble-pos", "positions out of range");
    assert_channel_can_be_recreated(&mut broker, "scribble-pos");
}

#[test]
fn scribbled_frame_length_is_a_corrupt_ring_error_for_the_consumer() {
    let mut broker = Broker::start(None);
    let error = consumer_error_after_scribble(&broker, "scribble-len", |map| {
        map.write_u32(DATA, 0x00FF_FFF0); // a data frame far larger than what is published
        map.write_u32(DATA + 4, 1);
        map.write_u64(WRITE_POS, 16);
    });
    assert_corrupt_ring_error(&error, "scribble-len", "overruns");
    assert_channel_can_be_recreated(&mut broker, "scribble-len");
}

#[test]
fn scribbled_frame_kind_is_a_corrupt_ring_error_for_the_consumer() {
    let mut broker = Broker::start(None);
    let error = consumer_error_after_scribble(&broker, "scribble-kind", |map| {
        map.write_u32(DATA, 8);
        map.write_u32(DATA + 4, 0x4242);
        map.write_u64(WRITE_POS, 32); // a 16-byte header and 8 bytes padded to 16
    });
    assert_corrupt_ring_error(&error, "scribble-kind", "unknown frame kind");
    assert_channel_can_be_recreated(&mut broker, "scribble-kind");
}

/// A 64 KiB channel `name` with an honest consumer attached, and a raw producer attachment
/// (kept alive by the caller) whose ring is mapped for scribbling.
fn honest_consumer_and_raw_producer(
    broker: &Broker,
    name: &str,
) -> (shmem_broker_client::Consumer, RawAttach, Mapping) {
    broker.ctl_ok(&["create", name, "--capacity", "64KiB"]);
    let consumer = broker
        .client()
        .consumer(name)
        .expect("attach the honest consumer");
    let raw = raw_attach(broker.socket_path(), name, "producer");
    let (_, ring_size) = attach_capacity(&raw);
    let map = Mapping::new(raw.fd("ring"), ring_size);
    (consumer, raw, map)
}

/// A raw producer publishes, in one store of its position, two good 5-byte messages and then
/// a frame of kind `kind` (5 bytes long, 32-byte frames: a 16-byte header and 5 bytes padded to
/// 16); returns what the honest consumer's `recv_batch` handed over, and its error.
fn batch_with_bad_frame(broker: &Broker, name: &str, kind: u32) -> (Vec<Vec<u8>>, String) {
    let (mut consumer, raw, map) = honest_consumer_and_raw_producer(broker, name);
    let waiting = Background::spawn("the honest consumer's recv_batch", move || {
        let mut got = Vec::new();
        match consumer.recv_batch(64, |m| got.push(m.to_vec())) {
            Ok(n) => Err(format!("recv_batch returned {n:?} from a scribbled ring")),
            Err(e) => Ok((got, e.to_string())),
        }
    });
    for (frame, kind) in [(0, 1), (1, 1), (2, kind)] {
        let at = DATA + 32 * frame;
        map.write_u32(at, 5);
        map.write_u32(at + 4, kind);
        map.write_u64(at + 16, u64::from_le_bytes(*b"message\0"));
    }
    map.write_u64(WRITE_POS, 96);
    rustix::io::write(raw.fd("data_ready"), &1u64.to_ne_bytes()).expect("wake the consumer");
    let result = waiting.join(WAIT);
    drop(map);
    drop(raw);
    result.unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_bad_frame_in_the_middle_of_a_batch_is_a_corrupt_ring_error_after_the_good_ones() {
    let mut broker = Broker::start(None);
    for (name, kind, detail) in [
        ("batch-kind", 0x4242, "unknown frame kind"),
        ("batch-pad", 3, "does not reach the end"),
    ] {
        let (got, error) = batch_with_bad_frame(&broker, name, kind);
        assert_eq!(
            got,
            [b"messa", b"messa"],
            "{name}: the two good messages only"
        );
        assert_corrupt_ring_error(&error, name, detail);
        assert_channel_can_be_recreated(&mut broker, name);
    }
}

#[test]
fn scribbled_read_position_is_a_corrupt_ring_error_for_the_producer() {
    let mut broker = Broker::start(None);
    broker.ctl_ok(&["create", "scribble-read", "--capacity", "64KiB"]);
    let client = broker.client();
    let mut producer = client
        .producer("scribble-read")
        .expect("attach the honest producer");
    producer.send(b"before").expect("send before the scribble");
    let raw = raw_attach(broker.socket_path(), "scribble-read", "consumer");
    let map = Mapping::new(raw.fd("ack"), 4096);
    map.write_u64(ACK_READ_POS, 1 << 40);
    // The producer may go on using room it already knows is free (it never overwrites unread
    // data that way); it must report the scribble, at the latest, when it needs to look at
    // the consumer's position again: within one ring's worth of frames (a 16-byte header and
    // the 5 bytes padded to 16).
    let frames_per_ring = 64 * 1024 / 32;
    let mut sent = 0;
    let error = loop {
        match producer.try_send(b"after") {
            Ok(()) if sent <= frames_per_ring => sent += 1,
            Ok(()) => {
                panic!("{sent} messages went into a 64 KiB ring whose read position is garbage")
            }
            Err(e) => break e.to_string(),
        }
    };
    assert_corrupt_ring_error(&error, "scribble-read", "positions out of range");
    drop(map);
    drop(raw);
    drop(producer);
    assert_channel_can_be_recreated(&mut broker, "scribble-read");
}
