//! The broker at its file descriptor limit (SECURITY.md, "thousands of connections" and
//! "creating many or large channels"): it refuses channels and clients with an error naming
//! the fd limit, keeps room to let clients in even when channels took what they could, keeps
//! serving the clients it has, and takes new ones again once fds are free. The broker runs
//! with a low RLIMIT_NOFILE (soft and hard, set before it starts, so its own raise to the hard
//! limit cannot lift it), whatever limit the machine gives.

use serde_json::{json, Value};
use shmem_broker_tests::hostile_common::*;
use shmem_broker_tests::*;
use std::os::unix::net::UnixStream;

/// Low enough to run out in a few hundred channels and connections, high enough for the
/// broker's own reserve (333 fds) and its start-up.
const LIMIT: u64 = 1024;

/// The last lines of a broker log, for a failure message.
fn last_lines(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn broker_with_few_fds() -> Broker {
    Broker::start_with(BrokerOptions {
        nofile: Some(LIMIT),
        ..BrokerOptions::default()
    })
}

/// `status` on a new raw connection: its reply (a refusal at connect is a reply with id 0).
fn status_on_new_connection(broker: &Broker) -> (UnixStream, Value) {
    let mut stream = connect_raw(broker.socket_path());
    write_tolerating_close(&mut stream, &request_frame(1, br#"{"op":"status"}"#));
    let bytes = match read_until_reply_or_closed(&mut stream, WAIT) {
        ConnectionEnd::Closed(bytes) | ConnectionEnd::StillOpen(bytes) => bytes,
    };
    let (frames, _) = parse_frames(&bytes);
    let reply = frames.first().map(Frame::json).unwrap_or_else(|| {
        panic!(
            "no reply to status ({} bytes); broker log:\n{}",
            bytes.len(),
            last_lines(&broker.log())
        )
    });
    (stream, reply)
}

fn assert_refused_for_fds(reply: &Value, what: &str) {
    assert_eq!(reply["ok"], false, "{what}: {reply}");
    assert_eq!(reply["error"]["code"], "limit_reached", "{what}: {reply}");
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("out of file descriptors") && message.contains(&LIMIT.to_string()),
        "{what}: the refusal should name the fd limit ({LIMIT}): {reply}"
    );
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn a_broker_out_of_fds_refuses_channels_and_clients_cleanly_and_recovers() {
    require_root();
    let mut broker = broker_with_few_fds();
    let log = broker.log();
    assert!(
        log.contains("file descriptor limit") && log.contains(&format!("RLIMIT_NOFILE: {LIMIT}")),
        "the broker should log its fd limit at start:\n{}",
        last_lines(&log)
    );
    assert!(
        log.contains("RLIMIT_NOFILE is below what max_clients and max_channels may need"),
        "the defaults (4096 clients, 1024 channels) need more than {LIMIT} fds: the broker \
         should warn:\n{}",
        last_lines(&log)
    );

    // 1. Channels until the broker says no: each holds 2 fds, so it must refuse well before
    //    LIMIT / 2, naming the fd limit, not fail on EMFILE from memfd_create.
    let mut control = connect_raw(broker.socket_path());
    let mut created = 0u64;
    let refusal = loop {
        let request =
            json!({"op": "create", "channel": format!("fd{created:04}"), "capacity": 4096});
        let reply = call(&mut control, 1, &request);
        if reply["ok"] != true {
            break reply;
        }
        created += 1;
        assert!(
            created < LIMIT / 2,
            "{created} channels of 2 fds each with RLIMIT_NOFILE {LIMIT} and no refusal"
        );
    };
    assert_refused_for_fds(&refusal, &format!("channel {}", created + 1));
    assert!(created >= 100, "only {created} channels before the refusal");
    broker.assert_running();

    // 2. Channels did not take the fds clients need to get in: a new connection is served
    //    (to list or drop channels), and the existing one still is.
    let (listing, reply) = status_on_new_connection(&broker);
    assert_eq!(
        reply["ok"], true,
        "a new client after the channels: {reply}"
    );
    let status = call(&mut control, 2, &json!({"op": "status"}));
    assert_eq!(status["ok"], true, "{status}");
    drop(listing);

    // 3. Clients until the broker says no, again naming the fd limit; it keeps running and
    //    answers the connections it has.
    let mut held = Vec::new();
    let refusal = loop {
        let (stream, reply) = status_on_new_connection(&broker);
        if reply["ok"] != true {
            break reply;
        }
        held.push(stream);
        assert!(
            held.len() < LIMIT as usize,
            "{} connections with RLIMIT_NOFILE {LIMIT} and no refusal",
            held.len()
        );
    };
    assert_refused_for_fds(&refusal, &format!("connection {}", held.len() + 1));
    broker.assert_running();
    let status = call(&mut control, 3, &json!({"op": "status"}));
    assert_eq!(
        status["ok"], true,
        "an existing client at the fd limit: {status}"
    );

    // 4. Fds freed (clients gone, channels dropped): clients and channels are taken again.
    drop(held);
    for i in 0..created {
        let reply = call(
            &mut control,
            4,
            &json!({"op": "drop", "channel": format!("fd{i:04}")}),
        );
        assert_eq!(reply["ok"], true, "drop fd{i:04}: {reply}");
    }
    wait_for(
        WAIT,
        "a new client once fds are free",
        || match status_on_new_connection(&broker) {
            (_, reply) if reply["ok"] == true => Ok(()),
            (_, reply) => Err(reply.to_string()),
        },
    );
    let reply = call(
        &mut control,
        5,
        &json!({"op": "create", "channel": "after", "capacity": 4096}),
    );
    assert_eq!(reply["ok"], true, "a channel once fds are free: {reply}");
    broker.assert_running();
}
