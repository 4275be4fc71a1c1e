//! Bulk and stream transfer across the link: 1 GiB with a SHA-256, both directions at
//! once, one export fanned out to two importers.

use std::process::Stdio;
use std::time::{Duration, Instant};

use shmem_broker_tests::bridge::*;
use shmem_broker_tests::*;

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn one_gib_from_host_a_to_host_b_with_sha256() {
    require_root();
    let link = link_one("16MiB");
    let len: u64 = std::env::var("SHMEM_BRIDGE_TEST_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30);
    let input = link.a.dir().join("input");
    let sha = write_random_file(&input, len, 16);
    let output = link.b.dir().join("output");
    let started = Instant::now();
    let mut send = link.a.spawn_ctl(
        &["send", "out"],
        Stdio::from(std::fs::File::open(&input).expect("open input")),
        None,
    );
    let mut recv = link.b.spawn_ctl(
        &["recv", "in"],
        Stdio::null(),
        Some(Stdio::from(
            std::fs::File::create(&output).expect("create output"),
        )),
    );
    let timeout = Duration::from_secs(600);
    assert!(
        send.wait_exit(timeout).success(),
        "send: {}",
        send.stderr_text()
    );
    assert!(
        recv.wait_exit(timeout).success(),
        "recv: {}",
        recv.stderr_text()
    );
    eprintln!("{len} bytes across the bridge in {:?}", started.elapsed());
    assert_eq!(file_len(&output), len);
    assert_eq!(sha256_file(&output), sha, "SHA-256 differs");
    // The bridges are ordinary endpoints to their brokers.
    let info = link.a.info("out");
    let exporter_attached = json_array(&info, "peers").iter().any(|p| {
        json_u64(p, "pid") == u64::from(link.export.pid()) && json_str(p, "role") == "consumer"
    });
    assert!(
        exporter_attached,
        "the exporter is a consumer of out: {info}"
    );
    drop(link);
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn both_directions_at_once() {
    require_root();
    let hosts = Hosts::create();
    let a = Broker::start(None);
    let b = Broker::start(None);
    let state = temp_dir();
    for broker in [&a, &b] {
        broker.ctl_ok(&["create", "out", "--capacity", "1MiB"]);
        broker.ctl_ok(&["create", "in", "--capacity", "1MiB"]);
    }
    let _router = router(&hosts, a.dir());
    let _ea = exporter(&hosts.a, &a, "out", "test/a-to-b", &["hostB"]);
    let _eb = exporter(&hosts.b, &b, "out", "test/b-to-a", &["hostA"]);
    let _ia = importer(&hosts.a, &a, state.path(), "in", "test/b-to-a", "hostA");
    let _ib = importer(&hosts.b, &b, state.path(), "in", "test/a-to-b", "hostB");
    let (count, len) = (20_000, 1000);
    let pa = produce(a.socket_path().to_path_buf(), "out", count, len);
    let pb = produce(b.socket_path().to_path_buf(), "out", count, len);
    let a_socket = a.socket_path().to_path_buf();
    let ca = Background::spawn("consumer on A", move || {
        consume_in_order(&connect(&a_socket), "in", count, len, |_| {})
    });
    consume_in_order(&b.client(), "in", count, len, |_| {});
    ca.join(Duration::from_secs(120));
    pa.join(WAIT);
    pb.join(WAIT);
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn fan_out_to_two_remote_importers() {
    require_root();
    let hosts = Hosts::create();
    let a = Broker::start(None);
    let b = Broker::start(None);
    let state = temp_dir();
    a.ctl_ok(&["create", "out", "--capacity", "1MiB"]);
    let _router = router(&hosts, a.dir());
    let _export = exporter(&hosts.a, &a, "out", "test/fan", &["b1", "b2"]);
    let _i1 = importer(&hosts.b, &b, state.path(), "in1", "test/fan", "b1");
    let _i2 = importer(&hosts.b, &b, state.path(), "in2", "test/fan", "b2");
    let (count, len) = (5_000, 4096);
    let producer = produce(a.socket_path().to_path_buf(), "out", count, len);
    // Both consumers on threads of their own, joined with a deadline: a stalled stream fails
    // the test instead of hanging the run.
    let consumers: Vec<_> = ["in1", "in2"]
        .into_iter()
        .map(|channel| {
            let socket = b.socket_path().to_path_buf();
            Background::spawn(channel, move || {
                consume_in_order(&connect(&socket), channel, count, len, |_| {})
            })
        })
        .collect();
    for consumer in consumers {
        consumer.join(Duration::from_secs(120));
    }
    producer.join(WAIT);
}
