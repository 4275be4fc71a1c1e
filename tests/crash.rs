//! One producer and one consumer per channel: a second one is refused naming the pid that holds
//! the slot, and a client killed with SIGKILL frees its slot for the next one.

use shmem_broker_tests::*;
use std::process::Stdio;

#[test]
fn killed_consumer_frees_its_slot() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "cam", "--capacity", "64KiB"]);
    let mut first = broker.spawn_ctl(&["recv", "cam", "--follow"], Stdio::null(), None);
    let peer = broker.wait_for_peer("cam", first.pid(), "consumer");
    assert_eq!(
        json_u64(&peer, "uid"),
        u64::from(rustix::process::geteuid().as_raw()),
        "peer: {peer}"
    );

    // While it holds the slot, a second consumer is refused, naming the holder.
    let busy = format!("channel busy: consumer pid {} attached", first.pid());
    broker.ctl(&["recv", "cam"]).expect_error(&[&busy]);

    first.kill9();
    broker.wait_for_no_peers("cam");

    let second = broker.spawn_ctl(&["recv", "cam", "--follow"], Stdio::null(), None);
    broker.wait_for_peer("cam", second.pid(), "consumer");
    let info = broker.info("cam");
    assert_eq!(json_array(&info, "peers").len(), 1, "info: {info}");
}

#[test]
fn second_producer_is_refused_naming_the_first_and_a_killed_producer_frees_the_slot() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "mic", "--capacity", "64KiB"]);
    // stdin stays open (piped, never written), so the first producer stays attached.
    let mut first = broker.spawn_ctl(&["send", "mic"], Stdio::piped(), None);
    broker.wait_for_peer("mic", first.pid(), "producer");

    let busy = format!("channel busy: producer pid {} attached", first.pid());
    broker.ctl(&["send", "mic"]).expect_error(&[&busy]);

    let socket = broker.socket_path().to_path_buf();
    let library_error = with_deadline(WAIT, "library producer attach", move || {
        let client = connect(&socket);
        match client.producer("mic") {
            Ok(_) => "attached a second producer".to_string(),
            Err(e) => e.to_string(),
        }
    });
    assert!(
        library_error.contains(&busy),
        "the library should refuse a second producer with {busy:?}, got: {library_error}"
    );

    first.kill9();
    broker.wait_for_no_peers("mic");

    let mut second = broker.spawn_ctl(&["send", "mic"], Stdio::piped(), None);
    broker.wait_for_peer("mic", second.pid(), "producer");

    // The slot works: what the new producer sends arrives.
    let mut stdin = second
        .take_stdin()
        .expect("piped stdin of the second producer");
    std::io::Write::write_all(&mut stdin, b"after the crash").expect("write to shmemctl send");
    drop(stdin);
    second.output(WAIT).expect_success();
    let received = broker
        .spawn_ctl(&["recv", "mic"], Stdio::null(), None)
        .output(WAIT);
    assert_eq!(received.expect_success(), "after the crash", "{received}");
}

#[test]
fn producer_killed_mid_stream_leaves_no_torn_data() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "torn", "--capacity", "64KiB"]);

    // A producer sends some bytes, which become visible, and is then killed mid-stream.
    let mut first = broker.spawn_ctl(&["send", "torn"], Stdio::piped(), None);
    broker.wait_for_peer("torn", first.pid(), "producer");
    let mut stdin = first.take_stdin().expect("piped stdin of the producer");
    std::io::Write::write_all(&mut stdin, b"first part;").expect("write to shmemctl send");
    // A stream from a pipe that stays open (`tail -f log | shmemctl send ch`) must flow: what
    // send has read is forwarded, not held back until a whole chunk has accumulated.
    wait_for(
        WAIT,
        "shmemctl send to forward the 11 bytes written to its open stdin",
        || {
            let info = broker.info("torn");
            if json_u64(&info, "bytes_written") == 11 {
                Ok(())
            } else {
                Err(info.to_string())
            }
        },
    );
    first.kill9();
    drop(stdin);
    broker.wait_for_no_peers("torn");

    // The next producer continues the stream and ends it.
    let mut second = broker.spawn_ctl(&["send", "torn"], Stdio::piped(), None);
    let mut stdin = second
        .take_stdin()
        .expect("piped stdin of the second producer");
    std::io::Write::write_all(&mut stdin, b"second part").expect("write to shmemctl send");
    drop(stdin);
    second.output(WAIT).expect_success();

    let received = broker
        .spawn_ctl(&["recv", "torn"], Stdio::null(), None)
        .output(WAIT);
    assert_eq!(
        received.expect_success(),
        "first part;second part",
        "{received}"
    );
}
