//! Moving data: a 256 MiB file through a 1 MiB ring with `shmemctl send`/`recv` in both attach
//! orders, checked by SHA-256; end-of-stream on an empty stream; the library's non-blocking
//! calls and its receive into a caller's slice.

use shmem_broker_tests::*;
use std::fs::File;
use std::process::Stdio;
use std::time::{Duration, Instant};

const BIG: u64 = 256 << 20;
const RING: u64 = 1 << 20;
/// Generous bound for one 256 MiB transfer on a 2-core CI machine with debug binaries.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(600);

fn transfer_big_file(send_first: bool, seed: u64) {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "bulk", "--capacity", "1MiB"]);
    assert_eq!(json_u64(&broker.info("bulk"), "capacity"), RING);

    let input = broker.dir().join("input.bin");
    let output = broker.dir().join("output.bin");
    let want = write_random_file(&input, BIG, seed);
    let stdin = File::open(&input).expect("open the input file for shmemctl send");
    let stdout = File::create(&output).expect("create the output file for shmemctl recv");

    let started = Instant::now();
    let (mut sender, mut receiver);
    if send_first {
        sender = broker.spawn_ctl(&["send", "bulk"], Stdio::from(stdin), None);
        broker.wait_for_peer("bulk", sender.pid(), "producer");
        // With nobody reading, the producer fills the ring and must then wait.
        let unread = wait_for(WAIT, "the ring to fill with no consumer attached", || {
            let info = broker.info("bulk");
            let unread = json_u64(&info, "bytes_unread");
            if unread >= RING / 2 {
                Ok(unread)
            } else {
                Err(info.to_string())
            }
        });
        assert!(
            unread <= RING,
            "{unread} unread bytes in a {RING}-byte ring"
        );
        if let Some(status) = sender.try_status() {
            panic!(
                "`shmemctl send` finished ({status}) before any consumer attached: 256 MiB \
                 cannot fit a 1 MiB ring; stderr: {}",
                sender.stderr_text()
            );
        }
        receiver = broker.spawn_ctl(&["recv", "bulk"], Stdio::null(), Some(Stdio::from(stdout)));
    } else {
        receiver = broker.spawn_ctl(&["recv", "bulk"], Stdio::null(), Some(Stdio::from(stdout)));
        broker.wait_for_peer("bulk", receiver.pid(), "consumer");
        if let Some(status) = receiver.try_status() {
            panic!(
                "`shmemctl recv` exited ({status}) before any producer attached; stderr: {}",
                receiver.stderr_text()
            );
        }
        sender = broker.spawn_ctl(&["send", "bulk"], Stdio::from(stdin), None);
    }

    let sent = sender.output(TRANSFER_TIMEOUT);
    sent.expect_success();
    let received = receiver.output(TRANSFER_TIMEOUT);
    received.expect_success();
    let elapsed = started.elapsed();
    eprintln!(
        "256 MiB through a 1 MiB ring ({} first): {:.1} s, {:.0} MiB/s",
        if send_first { "send" } else { "recv" },
        elapsed.as_secs_f64(),
        256.0 / elapsed.as_secs_f64()
    );

    assert_eq!(
        file_len(&output),
        BIG,
        "recv wrote {} bytes, send read {BIG}",
        file_len(&output)
    );
    let got = sha256_file(&output);
    assert_eq!(
        got, want,
        "SHA-256 of what recv wrote differs from what send read"
    );

    broker.wait_for_no_peers("bulk");
    let info = broker.info("bulk");
    assert_eq!(json_u64(&info, "bytes_written"), BIG, "info: {info}");
    assert_eq!(json_u64(&info, "bytes_unread"), 0, "info: {info}");
    assert_eq!(
        json_u64(&info, "messages_read"),
        json_u64(&info, "messages_written"),
        "every message written was read: {info}"
    );
}

#[test]
fn big_file_send_first_arrives_intact() {
    transfer_big_file(true, 0x5eed_0001);
}

#[test]
fn big_file_recv_first_arrives_intact() {
    transfer_big_file(false, 0x5eed_0002);
}

#[test]
fn empty_stream_delivers_end_of_stream() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "empty", "--capacity", "64KiB"]);
    let sent = broker
        .spawn_ctl(&["send", "empty"], Stdio::null(), None)
        .output(WAIT);
    sent.expect_success();
    let received = broker
        .spawn_ctl(&["recv", "empty"], Stdio::null(), None)
        .output(WAIT);
    assert_eq!(
        received.expect_success(),
        "",
        "recv of an empty stream: {received}"
    );
    let info = broker.info("empty");
    assert_eq!(json_u64(&info, "messages_written"), 0, "info: {info}");
    assert_eq!(
        json_u64(&info, "bytes_unread"),
        0,
        "end-of-stream was consumed: {info}"
    );
}

#[test]
fn small_text_round_trips_through_shmemctl() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "text", "--capacity", "64KiB"]);
    let text = "hello, shared memory\nsecond line without newline at end";
    let input = broker.dir().join("text.in");
    std::fs::write(&input, text).expect("write the text input");
    let stdin = File::open(&input).expect("open the text input");
    let sent = broker
        .spawn_ctl(&["send", "text"], Stdio::from(stdin), None)
        .output(WAIT);
    sent.expect_success();
    let received = broker
        .spawn_ctl(&["recv", "text"], Stdio::null(), None)
        .output(WAIT);
    assert_eq!(received.expect_success(), text, "{received}");
    let info = broker.info("text");
    assert_eq!(
        json_u64(&info, "bytes_written"),
        text.len() as u64,
        "info: {info}"
    );
}

#[test]
fn library_try_send_and_try_recv_report_would_block() {
    let broker = Broker::start(None);
    let socket = broker.socket_path().to_path_buf();
    let (accepted, received) = with_deadline(Duration::from_secs(60), "library try_*", move || {
        let client = connect(&socket);
        client
            .channel("nb")
            .capacity(64 * 1024)
            .create()
            .expect("create channel nb through the library");
        let mut consumer = client.consumer("nb").expect("attach a consumer to nb");
        match consumer.try_recv() {
            Err(e) => assert!(e.is_empty(), "try_recv on an empty ring: {e}"),
            Ok(got) => panic!("try_recv on an empty ring returned {got:?}"),
        }

        // One attachment per connection: the producer gets its own client.
        let producer_client = connect(&socket);
        let mut producer = producer_client
            .producer("nb")
            .expect("attach a producer to nb");
        let message = [0xABu8; 1000];
        // Each message takes at least its 1000 bytes of the 65536-byte ring.
        let accepted = fill_ring(&mut producer, &message, 65);
        assert!(
            accepted >= 32,
            "a 64 KiB ring was full after {accepted} 1000-byte messages"
        );

        let mut received = 0usize;
        while received < accepted {
            match consumer.recv().expect("recv a buffered message") {
                Some(got) => assert_eq!(got, message, "message #{received} changed"),
                None => panic!("end-of-stream after {received} of {accepted} messages"),
            }
            received += 1;
        }
        match consumer.try_recv() {
            Err(e) => assert!(e.is_empty(), "try_recv on a drained ring: {e}"),
            Ok(got) => panic!("try_recv on a drained ring returned {got:?}"),
        }
        producer.close().expect("close the producer");
        assert!(
            consumer.recv().expect("recv after close").is_none(),
            "after the producer closed, recv reports end-of-stream"
        );
        (accepted, received)
    });
    assert_eq!(accepted, received);
}

/// `recv_into_slice`: a message that fits lands in the
/// caller's buffer (and nothing past its length is touched), a longer one in the spill vector
/// (and the buffer is untouched), in order, across the ring's wrap (padding) and empty
/// messages; the non-blocking form says empty, and end-of-stream is `None`.
#[test]
fn library_recv_into_slice_fills_the_buffer_or_spills_in_order() {
    use shmem_broker_client::Landed;
    const BUF: usize = 1024;
    let broker = Broker::start(None);
    let socket = broker.socket_path().to_path_buf();
    with_deadline(Duration::from_secs(60), "recv_into_slice", move || {
        let client = connect(&socket);
        client
            .channel("slice")
            .capacity(64 * 1024)
            .create()
            .expect("create channel slice through the library");
        let mut consumer = client
            .consumer("slice")
            .expect("attach a consumer to slice");
        let producer_client = connect(&socket);
        let mut producer = producer_client
            .producer("slice")
            .expect("attach a producer to slice");
        let (mut buf, mut spill) = ([0u8; BUF + 8], Vec::new());
        let (buf, guard) = buf.split_at_mut(BUF);
        match consumer.try_recv_into_slice(buf, &mut spill) {
            Err(e) => assert!(e.is_empty(), "try_recv_into_slice on an empty ring: {e}"),
            Ok(got) => panic!("try_recv_into_slice on an empty ring returned {got:?}"),
        }
        // Sizes around the buffer's, and enough bytes to wrap the 64 KiB ring many times.
        let sizes = [0, 1, BUF - 1, BUF, BUF + 1, 7, 5000, 0, BUF, 40_000];
        for round in 0..40usize {
            for (i, &size) in sizes.iter().enumerate() {
                let fill = (round * sizes.len() + i) as u8;
                let message = vec![fill; size];
                producer.send(&message).expect("send");
                buf.fill(0xEE);
                let landed = consumer
                    .recv_into_slice(buf, &mut spill)
                    .expect("recv_into_slice")
                    .expect("a message, not end-of-stream");
                let got = match landed {
                    Landed::Buf(n) => {
                        assert!(
                            buf[n..].iter().all(|&b| b == 0xEE),
                            "bytes past the message written"
                        );
                        &buf[..n]
                    }
                    Landed::Spill => {
                        assert!(
                            buf.iter().all(|&b| b == 0xEE),
                            "a spilled message wrote buf"
                        );
                        &spill[..]
                    }
                };
                assert_eq!(
                    landed == Landed::Spill,
                    size > BUF,
                    "a {size}-byte message landed in {landed:?}"
                );
                assert!(
                    got == &message[..],
                    "round {round}, message {i} ({size} bytes) changed"
                );
            }
        }
        assert!(
            guard.iter().all(|&b| b == 0),
            "bytes past the buffer written"
        );
        producer.close().expect("close the producer");
        assert_eq!(
            consumer
                .recv_into_slice(buf, &mut spill)
                .expect("recv after close"),
            None,
            "after the producer closed, recv_into_slice reports end-of-stream"
        );
    });
}

#[test]
fn ready_fd_is_readable_when_there_is_progress_and_only_then() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "poll", "--capacity", "64KiB"]);
    let socket = broker.socket_path().to_path_buf();
    with_deadline(Duration::from_secs(60), "ready_fd", move || {
        let consumers = connect(&socket);
        let producers = connect(&socket);
        let mut consumer = consumers.consumer("poll").expect("consumer");
        let mut producer = producers.producer("poll").expect("producer");
        let quiet = Duration::from_millis(200);
        let soon = Duration::from_secs(5);
        for round in 0..3u8 {
            assert!(consumer.try_recv().is_err_and(|e| e.is_empty()));
            assert!(
                !readable(consumer.ready_fd(), quiet),
                "round {round}: ready_fd readable with nothing to read (an epoll loop would spin)"
            );
            producer.send(&[round]).expect("send");
            assert!(
                readable(consumer.ready_fd(), soon),
                "round {round}: no wake-up"
            );
            assert_eq!(consumer.try_recv().expect("try_recv"), Some(vec![round]));
        }
        // The producer's side: full ring, then space.
        let full = fill_ring(&mut producer, &[7u8; 1000], 100);
        assert!(
            !readable(producer.ready_fd(), quiet),
            "ready_fd readable while the ring is still full"
        );
        consumer.recv().expect("recv").expect("a message");
        assert!(readable(producer.ready_fd(), soon), "no wake-up on space");
        producer
            .try_send(&[7u8; 1000])
            .expect("room for one message");
        assert!(producer.try_send(&[7u8; 1000]).is_err_and(|e| e.is_full()));
        assert!(
            !readable(producer.ready_fd(), quiet),
            "ready_fd readable again with the ring full (filled {full})"
        );
    });
}
