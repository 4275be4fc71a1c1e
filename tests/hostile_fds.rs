//! Hostile clients against the real broker: uninvited fds sent with requests, and stalled
//! connections. Each test names the claim of SECURITY.md it checks.

use serde_json::json;
use shmem_broker_tests::hostile_common::*;
use shmem_broker_tests::old_kernel::start_broker_without_so_passrights;
use shmem_broker_tests::*;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Waits until `stream` is closed by the broker; returns how long that took from `since`.
fn expect_closed_within(
    stream: &mut UnixStream,
    since: Instant,
    within: Duration,
    what: &str,
) -> Duration {
    match read_until_closed(stream, within.saturating_sub(since.elapsed())) {
        ConnectionEnd::Closed(bytes) => {
            let (frames, _) = parse_frames(&bytes);
            for frame in frames {
                assert_ne!(
                    frame.json()["ok"],
                    true,
                    "{what}: answered with success before the close"
                );
            }
            since.elapsed()
        }
        ConnectionEnd::StillOpen(bytes) => panic!(
            "{what}: still open {:?} after connecting (received {} bytes)",
            since.elapsed(),
            bytes.len()
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. File descriptors sent to the broker are closed

/// On kernels with `SO_PASSRIGHTS` the kernel refuses such fds outright
/// (`attacks_broker::passing_a_lingering_socket_is_refused_by_the_kernel`); this is the broker
/// on an older kernel, where they arrive.
#[test]
fn fds_sent_to_the_broker_are_closed_and_the_request_is_still_answered() {
    let (broker, _filter) = start_broker_without_so_passrights(MINIMAL_CONFIG);
    let pid = broker.pid();
    let mut stream = connect_raw(broker.socket_path());
    // Start from a quiet broker: only this connection (the start-up probes have gone).
    let mut id = 0;
    wait_for(
        WAIT,
        "the broker to hold only the test's connection",
        || {
            id += 1;
            let status = call(&mut stream, id, &json!({"op": "status"}));
            match status["result"]["clients"].as_u64() {
                Some(1) => Ok(()),
                _ => Err(status.to_string()),
            }
        },
    );
    let baseline = open_fd_count(pid);

    // Three fds the broker never asked for. Whether it closed its copies is visible from here:
    // a pipe's read end sees EOF only once every copy of the write end is closed, and writing
    // fails with EPIPE only once every copy of the read end is.
    let (eof_probe, write_end_given) = rustix::pipe::pipe().expect("pipe");
    let (read_end_given, epipe_probe) = rustix::pipe::pipe().expect("pipe");
    let memfd = rustix::fs::memfd_create("stray-fd-from-test", rustix::fs::MemfdFlags::CLOEXEC)
        .expect("memfd_create");
    rustix::fs::fcntl_setfl(&eof_probe, rustix::fs::OFlags::NONBLOCK).expect("O_NONBLOCK");
    rustix::fs::fcntl_setfl(&epipe_probe, rustix::fs::OFlags::NONBLOCK).expect("O_NONBLOCK");

    let frame = request_frame(100, br#"{"op":"list"}"#);
    let fds = [
        write_end_given.as_fd(),
        read_end_given.as_fd(),
        memfd.as_fd(),
    ];
    let sent = shmem_broker_client::fdpass::send_with_fds(stream.as_fd(), &frame, &fds)
        .expect("sendmsg a request with 3 fds");
    assert_eq!(sent, frame.len(), "the whole frame went out in one sendmsg");
    drop(write_end_given);
    drop(read_end_given);
    let reply = read_one_frame(&mut stream, WAIT);
    assert_eq!(reply.id, 100);
    let body = reply.json();
    assert_eq!(
        body["ok"], true,
        "a request that came with fds must still be answered: {body}"
    );
    assert!(body["result"]["channels"].is_array(), "list reply: {body}");

    wait_for(
        WAIT,
        "the broker to close the write end of our pipe",
        || match rustix::io::read(&eof_probe, &mut [0u8; 8]) {
            Ok(0) => Ok(()),
            other => Err(format!(
                "read on the pipe's read end: {other:?} (EOF expected)"
            )),
        },
    );
    wait_for(
        WAIT,
        "the broker to close the read end of our pipe",
        || match rustix::io::write(&epipe_probe, b"x") {
            Err(rustix::io::Errno::PIPE) => Ok(()),
            other => Err(format!(
                "write on the pipe's write end: {other:?} (EPIPE expected)"
            )),
        },
    );
    wait_for(
        WAIT,
        "the broker's fd count to return to its level before",
        || {
            let now = open_fd_count(pid);
            let memfds: Vec<String> = open_fd_targets(pid)
                .into_iter()
                .filter(|t| t.contains("stray-fd-from-test"))
                .collect();
            // At most: an earlier connection's fd that the broker closes off its event loop
            // may still have been open when the baseline was taken; a kept fd shows as more.
            if now <= baseline && memfds.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{now} fds open (baseline {baseline}), our memfd held: {memfds:?}"
                ))
            }
        },
    );

    // Many more, some on frames split so the fds arrive with half a header: still closed, and
    // every request still answered.
    for i in 0..100u32 {
        let frame = request_frame(1000 + i, br#"{"op":"status"}"#);
        let copies: Vec<OwnedFd> = (0..3)
            .map(|_| memfd.try_clone().expect("dup the memfd"))
            .collect();
        let borrowed: Vec<BorrowedFd<'_>> = copies.iter().map(|fd| fd.as_fd()).collect();
        let split = if i % 2 == 0 { frame.len() } else { 7 };
        let sent =
            shmem_broker_client::fdpass::send_with_fds(stream.as_fd(), &frame[..split], &borrowed)
                .expect("sendmsg with fds");
        stream
            .write_all(&frame[sent..])
            .expect("send the rest of the frame");
        drop(copies);
        let reply = read_one_frame(&mut stream, WAIT);
        assert_eq!(reply.id, 1000 + i);
        assert_eq!(reply.json()["ok"], true, "request {i}: {}", reply.json());
    }
    wait_for(
        WAIT,
        "the broker's fd count to return to its level before",
        || {
            let now = open_fd_count(pid);
            let held = open_fd_targets(pid)
                .into_iter()
                .filter(|t| t.contains("stray-fd-from-test"))
                .count();
            if now <= baseline && held == 0 {
                Ok(())
            } else {
                Err(format!(
                    "{now} fds open (baseline {baseline}), {held} copies of our memfd held"
                ))
            }
        },
    );
    assert!(
        broker.log().contains("uninvited"),
        "the broker should log the stray fds"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. request_timeout closes stalled connections, not attached or idle ones

#[test]
fn stalled_connections_are_closed_after_request_timeout_but_attached_and_idle_ones_stay() {
    let broker = Broker::start(Some("version = 1\nrequest_timeout = \"1s\"\n"));
    broker.ctl_ok(&["create", "idle", "--capacity", "64KiB"]);
    let recv = broker.spawn_ctl(&["recv", "idle", "--follow"], Stdio::null(), None);
    broker.wait_for_peer("idle", recv.pid(), "consumer");
    let client = broker.client();
    client
        .status()
        .expect("a first request on the control connection");

    // One connection that sends nothing, one that sends half a header.
    let opened = Instant::now();
    let mut silent = connect_raw(broker.socket_path());
    let mut half = connect_raw(broker.socket_path());
    half.write_all(&frame_header(1, KIND_REQUEST, 1, 15)[..7])
        .expect("send half a header");
    let closed_after = expect_closed_within(
        &mut silent,
        opened,
        Duration::from_secs(5),
        "a silent connection",
    );
    let half_closed_after = expect_closed_within(
        &mut half,
        opened,
        Duration::from_secs(5),
        "a connection that sent half a header",
    );
    for (what, after) in [("silent", closed_after), ("half-header", half_closed_after)] {
        assert!(
            after >= Duration::from_millis(900),
            "the {what} connection was closed after {after:?}, before request_timeout = 1s"
        );
    }

    // Let one more full timeout pass, measured the same way, so the attached consumer and the
    // control connection have now been idle for more than twice request_timeout.
    let opened = Instant::now();
    let mut clock = connect_raw(broker.socket_path());
    expect_closed_within(
        &mut clock,
        opened,
        Duration::from_secs(5),
        "a second silent connection",
    );

    let peer = broker.wait_for_peer("idle", recv.pid(), "consumer");
    assert_eq!(json_str(&peer, "role"), "consumer");
    let channels = client
        .list()
        .expect("a control connection idle beyond request_timeout still works");
    assert!(
        channels.iter().any(|c| c.name == "idle"),
        "list: {channels:?}"
    );
    let mut producer = client.producer("idle").expect("attach a producer");
    // A newline, because `shmemctl recv` writes through a line-buffered stdout.
    producer.send(b"after the idle spell\n").expect("send");
    wait_for(WAIT, "the idle consumer to receive the message", || {
        let got = recv.stdout_text();
        if got == "after the idle spell\n" {
            Ok(())
        } else {
            Err(format!("its stdout: {got:?}"))
        }
    });
}
