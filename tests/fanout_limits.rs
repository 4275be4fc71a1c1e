//! What a fan-out channel checks and tells, through the real broker: older (version 1 or 2)
//! clients, limits and names, config declarations, quotas counting every ring, and a consumer's
//! ready fd.

use shmem_broker_client::wire::SPLIT_RINGS_VERSION;
use shmem_broker_client::{Consumer, Producer, SlowConsumer};
use shmem_broker_tests::fanout::*;
use shmem_broker_tests::*;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::Duration;

#[test]
fn older_clients_are_told_what_they_cannot_do() {
    let broker = Broker::start(None);
    let client = broker.client();
    create(&client, "wide", 64 << 10, 2, 2, SlowConsumer::Block);
    broker.ctl_ok(&["create", "narrow", "--capacity", "64KiB"]);
    let attach = |version: u16, channel: &str| {
        let mut stream = UnixStream::connect(broker.socket_path()).expect("connect");
        let body = format!(r#"{{"op":"attach","channel":"{channel}","role":"consumer"}}"#);
        stream
            .write_all(&request_frame_version(version, 3, body.as_bytes()))
            .expect("send an attach");
        read_one_frame(&mut stream, WAIT)
    };
    let refused = |version: u16, channel: &str, needles: &[&str]| {
        let reply = attach(version, channel);
        assert_eq!(
            reply.version, version,
            "the broker answers a version-{version} client in its version"
        );
        let body = reply.json();
        assert_eq!(body["ok"], false, "reply: {body}");
        assert_eq!(
            body["error"]["code"], "unsupported_version",
            "reply: {body}"
        );
        let message = body["error"]["message"].as_str().unwrap_or_default();
        for needle in needles {
            assert!(
                message.contains(needle),
                "{message:?} should mention {needle:?}"
            );
        }
    };
    // Version 1 cannot have several producers or consumers...
    refused(
        1,
        "wide",
        &["wide", "protocol version 2", "this client speaks version 1"],
    );
    // ...and none before 5 reads the split rings (layout 3) new channels get.
    for version in 1..SPLIT_RINGS_VERSION {
        let speaks = format!("this client speaks version {version}");
        refused(
            version,
            "narrow",
            &["narrow", "layout 3", "protocol version 5", &speaks],
        );
    }
    refused(2, "wide", &["wide", "layout 3", "protocol version 5"]);
    refused(4, "wide", &["wide", "layout 3", "protocol version 5"]);
    let granted = attach(SPLIT_RINGS_VERSION, "narrow");
    assert_eq!(granted.version, SPLIT_RINGS_VERSION);
    let body = granted.json();
    assert_eq!(body["ok"], true, "version 5 attaches: {body}");
    assert_eq!(body["result"]["ring_layout"], 3, "reply: {body}");
    assert_eq!(
        body["result"]["fds"],
        serde_json::json!(["ring", "ack", "data_ready", "space_ready"])
    );
}

#[test]
fn limits_and_names_are_checked_with_clear_errors() {
    let broker = Broker::start(None);
    broker.ctl_ok(&[
        "create",
        "pair",
        "--capacity",
        "64KiB",
        "--max-consumers",
        "2",
        "--slow-consumer",
        "drop",
    ]);
    let info = broker.info("pair");
    assert_eq!(
        (
            json_u64(&info, "max_producers"),
            json_u64(&info, "max_consumers")
        ),
        (1, 2)
    );
    assert_eq!(json_str(&info, "slow_consumer"), "drop");
    broker
        .ctl(&["create", "x", "--max-consumers", "65"])
        .expect_error(&["invalid max_consumers 65", "between 1 and 64"]);
    broker
        .ctl(&["create", "x", "--max-producers", "0"])
        .expect_error(&["invalid max_producers 0"]);
    broker
        .ctl(&["create", "x", "--slow-consumer", "sometimes"])
        .expect_usage_error(&["unknown slow-consumer policy \"sometimes\""]);

    let client = broker.client();
    let _a = client.consumer("pair").expect("first consumer");
    let _b = client.consumer("pair").expect("second consumer");
    let third = client
        .consumer("pair")
        .err()
        .expect("a third consumer must be refused");
    let text = third.to_string();
    assert!(
        text.contains("max_consumers = 2") && text.contains("all are taken"),
        "{text}"
    );
    let producer = client.producer("pair").expect("producer");
    let second = client
        .producer("pair")
        .err()
        .expect("a second producer must be refused");
    assert!(
        second.to_string().contains("channel busy: producer pid"),
        "{second}"
    );
    drop(producer);

    broker.ctl_ok(&["create", "single", "--capacity", "64KiB"]);
    broker
        .ctl(&["recv", "single", "--as", "x"])
        .expect_error(&["single", "durable consumer names need max_consumers > 1"]);
    let list = broker.ctl_ok(&["list"]);
    assert!(
        list.lines()
            .any(|line| line.starts_with("pair ") && line.contains(" 2/")),
        "list counts both consumers of pair: {list}"
    );
}

#[test]
fn config_declares_fanout_channels_and_names_bad_values() {
    let config = "version = 1\n[[channel]]\nname = \"cam\"\nmax_consumers = 3\nslow_consumer = \"disconnect\"\n";
    let broker = Broker::start(Some(config));
    let info = broker.info("cam");
    assert_eq!(json_u64(&info, "max_consumers"), 3, "info: {info}");
    assert_eq!(
        json_str(&info, "slow_consumer"),
        "disconnect",
        "info: {info}"
    );

    for (text, needles) in [
        (
            "version = 1\n[[channel]]\nname = \"cam\"\nslow_consumer = \"sometimes\"\n",
            &[
                ":4:",
                "channel[0].slow_consumer",
                "unknown slow-consumer policy",
            ][..],
        ),
        (
            "version = 1\n[[channel]]\nname = \"cam\"\n\nmax_producers = 100\n",
            &[":5:", "channel[0].max_producers", "above the limit of 64"][..],
        ),
    ] {
        let path = broker.dir().join("bad.toml");
        std::fs::write(&path, text).expect("write config");
        let mut cmd = std::process::Command::new(broker_bin());
        cmd.arg("--check-config").arg("--config").arg(&path);
        let out = run(cmd, "check-config", broker.dir(), Stdio::null(), WAIT);
        out.expect_error(needles);
    }
}

#[test]
fn quotas_count_a_ring_for_every_producer_and_consumer_pair() {
    let broker = Broker::start(Some("version = 1\nmax_ring_bytes = \"1MiB\"\n"));
    broker
        .ctl(&[
            "create",
            "wide",
            "--capacity",
            "256KiB",
            "--max-producers",
            "2",
            "--max-consumers",
            "4",
        ])
        .expect_error(&["max_ring_bytes"]);
    broker.ctl_ok(&[
        "create",
        "fits",
        "--capacity",
        "256KiB",
        "--max-consumers",
        "4",
    ]);
    let status = broker.status();
    let used = json_array(&status, "quotas")
        .iter()
        .find(|q| q["quota"] == "max_ring_bytes" && q.get("uid").is_none())
        .map(|q| json_u64(q, "used"));
    assert_eq!(used, Some(1 << 20), "status: {status}");
    broker.ctl_ok(&["drop", "fits"]);
    broker.ctl_ok(&["create", "again", "--capacity", "1MiB"]);
}

#[test]
fn a_fanout_consumers_ready_fd_is_readable_only_when_a_producer_wrote() {
    let broker = Broker::start(None);
    let client = broker.client();
    create(&client, "epoll", 64 << 10, 2, 2, SlowConsumer::Block);
    let mut consumer = client.consumer("epoll").expect("consumer");
    let mut producers: Vec<Producer> = (0..2)
        .map(|_| client.producer("epoll").expect("producer"))
        .collect();
    let readable = |consumer: &Consumer, timeout: Duration| {
        let fd = consumer.ready_fd();
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        let timeout = rustix::event::Timespec::try_from(timeout).expect("timeout");
        matches!(rustix::event::poll(&mut fds, Some(&timeout)), Ok(n) if n > 0)
    };
    for round in 0..4 {
        let producer = &mut producers[round % 2];
        assert!(consumer.try_recv().is_err_and(|e| e.is_empty()));
        assert!(
            !readable(&consumer, Duration::from_millis(200)),
            "round {round}: readable with nothing to read"
        );
        producer.send(&[round as u8]).expect("send");
        assert!(readable(&consumer, WAIT), "round {round}: no wake-up");
        assert_eq!(
            consumer.try_recv().expect("try_recv"),
            Some(vec![round as u8])
        );
    }
}
