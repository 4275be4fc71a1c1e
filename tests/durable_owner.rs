//! Durable consumer names belong to the uid that registered them (runs as root: other uids
//! through setpriv). Without ownership, any admitted consumer could attach under another
//! user's name and read that user's queued messages, or register names until the channel's
//! `max_consumers` places were gone for good.

use shmem_broker_tests::*;
use std::io::Write;
use std::process::Stdio;

/// A uid other than root and [`NOBODY`] that owns the first durable name.
const ALICE: u32 = 1000;

/// A broker other uids can reach, holding each to two durable names.
fn broker() -> Broker {
    let broker = Broker::start_with(BrokerOptions {
        config: Some("version = 1\n[per_uid]\nmax_durable_consumers = 2\n"),
        world_searchable_dir: true,
        ..BrokerOptions::default()
    });
    broker.ctl_ok(&[
        "create",
        "queue",
        "--capacity",
        "64KiB",
        "--max-consumers",
        "4",
        "--consumers",
        "*",
    ]);
    broker
}

/// Registers durable consumer `name` as `uid` and leaves it away (its queue kept).
fn register_and_leave(broker: &Broker, uid: u32, name: &str) {
    let mut recv = broker.spawn_ctl_as(uid, &["recv", "queue", "--as", name], Stdio::null());
    broker.wait_for_peer("queue", recv.pid(), "consumer");
    recv.kill9();
    wait_for(WAIT, "the durable consumer to be away", || {
        let info = broker.info("queue");
        let away = json_array(&info, "peers").iter().any(|p| {
            p.get("name").and_then(|n| n.as_str()) == Some(name)
                && p.get("attached").and_then(|a| a.as_bool()) == Some(false)
        });
        if away {
            Ok(())
        } else {
            Err(info.to_string())
        }
    });
}

/// Sends `text` and an end-of-stream into channel `queue` as root.
fn send(broker: &Broker, text: &[u8]) {
    let mut send = broker.spawn_ctl(&["send", "queue"], Stdio::piped(), None);
    let mut stdin = send.take_stdin().expect("piped stdin of the producer");
    stdin.write_all(text).expect("write to shmemctl send");
    drop(stdin);
    send.output(WAIT).expect_success();
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn another_uid_cannot_take_or_drop_a_durable_consumers_queue() {
    require_root();
    let broker = broker();
    register_and_leave(&broker, ALICE, "backup");
    send(&broker, b"for alice only");

    let info = broker.info("queue");
    let backup = json_array(&info, "peers")
        .iter()
        .find(|p| p.get("name").and_then(|n| n.as_str()) == Some("backup"))
        .unwrap_or_else(|| panic!("durable consumer backup not in info: {info}"));
    assert_eq!(json_u64(backup, "owner_uid"), u64::from(ALICE), "{backup}");
    let text = broker.ctl_ok(&["info", "queue"]);
    assert!(
        text.contains("\"backup\" owned by uid 1000"),
        "info shows the owner: {text}"
    );

    broker
        .ctl_as(NOBODY, &["recv", "queue", "--as", "backup"])
        .expect_error(&[
            "permission denied",
            "backup",
            "belongs to uid 1000",
            "uid 65534",
        ]);
    broker
        .ctl_as(NOBODY, &["drop", "queue", "--consumer", "backup"])
        .expect_error(&["permission denied", "backup", "belongs to uid 1000"]);

    // Nothing was taken: the owner reads every byte it was sent while away.
    let out = broker.ctl_as(ALICE, &["recv", "queue", "--as", "backup"]);
    assert_eq!(out.expect_success(), "for alice only", "{out}");
    // Its owner may drop it; then the name is free for anyone.
    broker
        .ctl_as(ALICE, &["drop", "queue", "--consumer", "backup"])
        .expect_success();
    register_and_leave(&broker, NOBODY, "backup");
    // The channel's owner (root here) may drop anyone's durable consumer.
    broker.ctl_ok(&["drop", "queue", "--consumer", "backup"]);
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn durable_names_count_against_a_per_uid_quota() {
    require_root();
    let broker = broker();
    register_and_leave(&broker, NOBODY, "n1");
    register_and_leave(&broker, NOBODY, "n2");
    broker
        .ctl_as(NOBODY, &["recv", "queue", "--as", "n3"])
        .expect_error(&[
            "uid 65534",
            "per_uid.max_durable_consumers = 2",
            "shmemctl drop",
        ]);
    // The channel still has room for someone else's name.
    register_and_leave(&broker, ALICE, "mine");
    let status = broker.ctl_as(NOBODY, &["status", "--json"]);
    let status: serde_json::Value =
        serde_json::from_str(status.expect_success()).expect("status --json is JSON");
    let quota = json_array(&status, "quotas")
        .iter()
        .find(|q| json_str(q, "quota") == "per_uid.max_durable_consumers")
        .unwrap_or_else(|| panic!("status shows no durable-name quota: {status}"));
    assert_eq!(
        (json_u64(quota, "used"), json_u64(quota, "limit")),
        (2, 2),
        "{quota}"
    );
}
