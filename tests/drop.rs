//! Dropping a channel that has peers attached: each attached peer learns "channel dropped"
//! instead of hanging, whether it waits for data or for room.

use shmem_broker_client::Error;
use shmem_broker_tests::*;
use std::fs;
use std::process::Stdio;
use std::sync::mpsc;

/// The calling thread's kernel id, to watch its state in /proc.
fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

/// Waits until thread `tid` of this process sleeps in the kernel (state S), i.e. it is blocked
/// in the library call and not just about to make it.
fn wait_until_thread_sleeps(tid: u32, what: &str) {
    wait_for(WAIT, format!("{what} (thread {tid}) to block"), || {
        let stat = fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
            .map_err(|e| format!("read /proc/self/task/{tid}/stat: {e}"))?;
        // Format: "tid (comm) S ...": the state follows the last ')'.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or("?");
        if state == "S" {
            Ok(())
        } else {
            Err(format!(
                "thread state {state} (R = still running, busy-waiting?)"
            ))
        }
    });
}

#[test]
fn drop_ends_a_following_recv_with_channel_dropped() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "doomed", "--capacity", "64KiB"]);
    let mut recv = broker.spawn_ctl(&["recv", "doomed", "--follow"], Stdio::null(), None);
    broker.wait_for_peer("doomed", recv.pid(), "consumer");
    assert!(
        recv.is_running(),
        "recv --follow exited with nothing to read: {}",
        recv.stderr_text()
    );

    broker.ctl_ok(&["drop", "doomed"]);
    let out = recv.output(WAIT);
    out.expect_error(&["channel dropped", "doomed"]);
    let channels = broker.list();
    assert!(
        find_channel(&channels, "doomed").is_none(),
        "dropped channel still listed: {channels:?}"
    );
    // The name can be used again.
    broker.ctl_ok(&["create", "doomed", "--capacity", "64KiB"]);
}

#[test]
fn drop_wakes_a_library_producer_blocked_on_a_full_ring() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "full", "--capacity", "64KiB"]);
    let socket = broker.socket_path().to_path_buf();
    let (ready_tx, ready_rx) = mpsc::channel();
    let producer = Background::spawn("blocked producer", move || {
        let client = connect(&socket);
        let mut producer = client.producer("full").expect("attach a producer to full");
        let message = [7u8; 4096];
        let accepted = fill_ring(&mut producer, &message, 16);
        ready_tx
            .send((accepted, gettid()))
            .expect("tell the test the ring is full");
        // Nobody reads: this blocks until the channel is dropped.
        match producer.send(&message) {
            Ok(()) => Err("send on a full ring returned Ok after the drop".to_string()),
            Err(e) => Ok((e.to_string(), matches!(e, Error::ChannelDropped { .. }))),
        }
    });
    let (accepted, tid) = ready_rx
        .recv_timeout(WAIT)
        .expect("the producer fills the 64 KiB ring within 10 s");
    assert!(
        accepted >= 8,
        "a 64 KiB ring was full after {accepted} 4 KiB messages"
    );
    wait_until_thread_sleeps(tid, "the producer's send on a full ring");

    broker.ctl_ok(&["drop", "full"]);
    let (message, is_dropped_variant) = producer.join(WAIT).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        message.contains("channel dropped"),
        "the blocked send should fail with \"channel dropped\", got: {message}"
    );
    assert!(
        is_dropped_variant,
        "expected Error::ChannelDropped, got: {message}"
    );
}

#[test]
fn drop_wakes_a_library_consumer_blocked_on_an_empty_ring() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "empty", "--capacity", "64KiB"]);
    let socket = broker.socket_path().to_path_buf();
    let (ready_tx, ready_rx) = mpsc::channel();
    let consumer = Background::spawn("blocked consumer", move || {
        let client = connect(&socket);
        let mut consumer = client
            .consumer("empty")
            .expect("attach a consumer to empty");
        ready_tx
            .send(gettid())
            .expect("tell the test the consumer is attached");
        match consumer.recv() {
            Ok(got) => Err(format!("recv on a dropped channel returned Ok({got:?})")),
            Err(e) => Ok((e.to_string(), matches!(e, Error::ChannelDropped { .. }))),
        }
    });
    let tid = ready_rx
        .recv_timeout(WAIT)
        .expect("the consumer attaches within 10 s");
    wait_until_thread_sleeps(tid, "the consumer's recv on an empty ring");

    broker.ctl_ok(&["drop", "empty"]);
    let (message, is_dropped_variant) = consumer.join(WAIT).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        message.contains("channel dropped"),
        "the blocked recv should fail with \"channel dropped\", got: {message}"
    );
    assert!(
        is_dropped_variant,
        "expected Error::ChannelDropped, got: {message}"
    );
}
