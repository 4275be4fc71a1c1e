//! Who may attach, create and drop (runs as root: it switches to uid 65534 with setpriv).

use shmem_broker_tests::*;
use std::process::Stdio;

fn broker_reachable_by_nobody() -> Broker {
    // The bound socket is 0666 by default; the temp dir must let uid 65534 reach it.
    let broker = Broker::start_with(BrokerOptions {
        world_searchable_dir: true,
        ..BrokerOptions::default()
    });
    let probe = broker.ctl_as(NOBODY, &["status"]);
    assert!(
        probe.success(),
        "uid {NOBODY} cannot run `shmemctl status` on the 0666 socket in a 0755 dir:\n{probe}"
    );
    broker
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn unlisted_uid_is_refused_attach_with_channel_and_uid_named() {
    require_root();
    let broker = broker_reachable_by_nobody();
    broker.ctl_ok(&["create", "secret", "--capacity", "64KiB"]);
    let info = broker.info("secret");
    assert_eq!(json_u64(&info, "owner_uid"), 0, "created by root: {info}");

    let needles = ["permission denied", "secret", "uid 65534"];
    broker
        .ctl_as(NOBODY, &["recv", "secret"])
        .expect_error(&needles);
    broker
        .ctl_as(NOBODY, &["send", "secret"])
        .expect_error(&needles);
    let info = broker.info("secret");
    assert!(
        json_array(&info, "peers").is_empty(),
        "refused peers attached: {info}"
    );
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn listed_uid_is_admitted_as_consumer_only() {
    require_root();
    let broker = broker_reachable_by_nobody();
    broker.ctl_ok(&[
        "create",
        "shared",
        "--capacity",
        "64KiB",
        "--consumers",
        "65534",
    ]);

    let recv = broker.spawn_ctl_as(NOBODY, &["recv", "shared", "--follow"], Stdio::null());
    let peer = broker.wait_for_peer("shared", recv.pid(), "consumer");
    assert_eq!(json_u64(&peer, "uid"), u64::from(NOBODY), "peer: {peer}");
    assert_eq!(json_u64(&peer, "gid"), u64::from(NOBODY), "peer: {peer}");

    // Consumer rights do not make it a producer.
    broker.ctl_as(NOBODY, &["send", "shared"]).expect_error(&[
        "permission denied",
        "shared",
        "uid 65534",
    ]);

    // Data flows from a root producer to the uid-65534 consumer.
    let mut send = broker.spawn_ctl(&["send", "shared"], Stdio::piped(), None);
    let mut stdin = send.take_stdin().expect("piped stdin of the producer");
    std::io::Write::write_all(&mut stdin, b"for nobody").expect("write to shmemctl send");
    drop(stdin);
    send.output(WAIT).expect_success();
    wait_for(WAIT, "the uid-65534 consumer to print the message", || {
        let got = recv.stdout_text();
        if got == "for nobody" {
            Ok(())
        } else {
            Err(format!("its stdout so far: {got:?}"))
        }
    });
    drop(recv);
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn group_listed_in_access_list_is_admitted() {
    require_root();
    let broker = broker_reachable_by_nobody();
    broker.ctl_ok(&[
        "create",
        "by-group",
        "--capacity",
        "64KiB",
        "--producers",
        "@65534",
    ]);
    let send = broker.spawn_ctl_as(NOBODY, &["send", "by-group"], Stdio::piped());
    let peer = broker.wait_for_peer("by-group", send.pid(), "producer");
    assert_eq!(json_u64(&peer, "uid"), u64::from(NOBODY), "peer: {peer}");
    broker.ctl_as(NOBODY, &["recv", "by-group"]).expect_error(&[
        "permission denied",
        "by-group",
        "uid 65534",
    ]);
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn non_admin_cannot_create_or_drop() {
    require_root();
    let broker = broker_reachable_by_nobody();
    broker
        .ctl_as(NOBODY, &["create", "mine", "--capacity", "64KiB"])
        .expect_error(&["permission denied", "mine", "uid 65534"]);
    assert!(find_channel(&broker.list(), "mine").is_none());

    broker.ctl_ok(&["create", "kept", "--capacity", "64KiB", "--consumers", "*"]);
    broker.ctl_as(NOBODY, &["drop", "kept"]).expect_error(&[
        "permission denied",
        "kept",
        "uid 65534",
    ]);
    assert!(find_channel(&broker.list(), "kept").is_some());
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn admin_group_member_may_create_and_drop() {
    require_root();
    let broker = Broker::start_with(BrokerOptions {
        config: Some("version = 1\nadmin_groups = [\"65534\"]\n"),
        world_searchable_dir: true,
        ..BrokerOptions::default()
    });
    broker
        .ctl_as(NOBODY, &["create", "delegated", "--capacity", "64KiB"])
        .expect_success();
    let info = broker.info("delegated");
    assert_eq!(
        json_u64(&info, "owner_uid"),
        u64::from(NOBODY),
        "info: {info}"
    );
    broker
        .ctl_as(NOBODY, &["drop", "delegated"])
        .expect_success();
    assert!(find_channel(&broker.list(), "delegated").is_none());
}
