//! Channel administration with shmemctl: create, list, info, drop and their errors.

use shmem_broker_tests::*;

fn my_uid() -> u64 {
    u64::from(rustix::process::geteuid().as_raw())
}

#[test]
fn create_list_info_drop_round_trip() {
    let broker = Broker::start(None);
    assert!(
        broker.list().is_empty(),
        "a broker without config channels lists none"
    );

    broker.ctl_ok(&["create", "frames", "--capacity", "64KiB"]);
    let channels = broker.list();
    assert_eq!(channels.len(), 1, "list after one create: {channels:?}");
    let listed = find_channel(&channels, "frames")
        .unwrap_or_else(|| panic!("created channel missing from list: {channels:?}"));
    assert_eq!(json_u64(listed, "capacity"), 64 * 1024, "channel: {listed}");
    assert_eq!(json_str(listed, "origin"), "runtime", "channel: {listed}");
    assert_eq!(json_u64(listed, "owner_uid"), my_uid(), "channel: {listed}");
    assert!(json_array(listed, "peers").is_empty(), "channel: {listed}");
    json_array(listed, "producers");
    json_array(listed, "consumers");
    for counter in [
        "messages_written",
        "bytes_written",
        "bytes_unread",
        "messages_read",
    ] {
        assert_eq!(
            json_u64(listed, counter),
            0,
            "{counter} of a new channel: {listed}"
        );
    }

    let info = broker.info("frames");
    assert_eq!(
        &info, listed,
        "info --json and list --json describe the channel alike"
    );

    let plain = broker.ctl_ok(&["list"]);
    assert!(
        plain.contains("frames"),
        "plain `list` should name the channel:\n{plain}"
    );
    let plain_info = broker.ctl_ok(&["info", "frames"]);
    assert!(
        plain_info.contains("frames"),
        "plain `info` should name the channel:\n{plain_info}"
    );
    assert_eq!(json_u64(&broker.status(), "channels"), 1);

    broker.ctl_ok(&["drop", "frames"]);
    let channels = broker.list();
    assert!(
        find_channel(&channels, "frames").is_none(),
        "dropped channel still listed: {channels:?}"
    );
    assert_eq!(json_u64(&broker.status(), "channels"), 0);
    broker
        .ctl(&["info", "frames", "--json"])
        .expect_error(&["no such channel: frames"]);

    // The name is free again.
    broker.ctl_ok(&["create", "frames", "--capacity", "128KiB"]);
    assert_eq!(json_u64(&broker.info("frames"), "capacity"), 128 * 1024);
}

#[test]
fn create_twice_says_already_exists() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "dup", "--capacity", "64KiB"]);
    broker
        .ctl(&["create", "dup", "--capacity", "64KiB"])
        .expect_error(&["channel already exists: dup"]);
    assert_eq!(broker.list().len(), 1);
}

#[test]
fn drop_missing_says_no_such_channel() {
    let broker = Broker::start(None);
    broker
        .ctl(&["drop", "ghost"])
        .expect_error(&["no such channel: ghost"]);
}

#[test]
fn invalid_names_are_refused() {
    let broker = Broker::start(None);
    let too_long = "x".repeat(65);
    for name in ["a b", too_long.as_str(), "a/b", "../up"] {
        broker
            .ctl(&["create", name, "--capacity", "64KiB"])
            .expect_error(&["invalid channel name"]);
    }
    assert!(broker.list().is_empty(), "no invalid name may be created");
    // 64 characters is the longest valid name.
    let longest = "y".repeat(64);
    broker.ctl_ok(&["create", &longest, "--capacity", "64KiB"]);
    assert!(find_channel(&broker.list(), &longest).is_some());
}

#[test]
fn invalid_names_are_refused_through_the_library_too() {
    let broker = Broker::start(None);
    let socket = broker.socket_path().to_path_buf();
    let too_long = "z".repeat(65);
    let errors = with_deadline(WAIT, "library create with bad names", move || {
        let client = connect(&socket);
        ["a b".to_string(), too_long]
            .into_iter()
            .map(|name| match client.create(&name, Some(64 * 1024)) {
                Ok(_) => format!("create({name:?}) succeeded"),
                Err(e) => e.to_string(),
            })
            .collect::<Vec<_>>()
    });
    for error in errors {
        assert!(
            error.contains("invalid channel name"),
            "library error: {error}"
        );
    }
    assert!(broker.list().is_empty());
}

#[test]
fn create_without_capacity_uses_default_capacity() {
    let broker = Broker::start(Some("version = 1\ndefault_capacity = \"256KiB\"\n"));
    broker.ctl_ok(&["create", "dflt"]);
    assert_eq!(json_u64(&broker.info("dflt"), "capacity"), 256 * 1024);
}

#[test]
fn create_with_unparsable_capacity_names_the_value() {
    let broker = Broker::start(None);
    broker
        .ctl(&["create", "odd", "--capacity", "12 parsecs"])
        .expect_usage_error(&["12 parsecs"]);
    assert!(broker.list().is_empty());
}

#[test]
fn create_above_max_capacity_is_refused() {
    let broker = Broker::start(Some("version = 1\nmax_capacity = \"1MiB\"\n"));
    broker
        .ctl(&["create", "huge", "--capacity", "2MiB"])
        .expect_error(&["capacity"]);
    assert!(broker.list().is_empty());
    broker.ctl_ok(&["create", "fits", "--capacity", "1MiB"]);
}

#[test]
fn max_channels_limits_creates() {
    let broker = Broker::start(Some("version = 1\nmax_channels = 2\n"));
    broker.ctl_ok(&["create", "one", "--capacity", "64KiB"]);
    broker.ctl_ok(&["create", "two", "--capacity", "64KiB"]);
    broker
        .ctl(&["create", "three", "--capacity", "64KiB"])
        .expect_error(&[]);
    assert_eq!(broker.list().len(), 2);
}

#[test]
fn config_channels_are_listed_with_origin_config() {
    let broker = Broker::start(Some(
        "version = 1\n\n[[channel]]\nname = \"cam0\"\ncapacity = \"2MiB\"\n\n\
         [[channel]]\nname = \"cam1\"\ncapacity = \"64KiB\"\n",
    ));
    let channels = broker.list();
    assert_eq!(channels.len(), 2, "config channels: {channels:?}");
    let cam0 = find_channel(&channels, "cam0").expect("cam0 from the config is listed");
    assert_eq!(json_u64(cam0, "capacity"), 2 << 20, "cam0: {cam0}");
    assert_eq!(json_str(cam0, "origin"), "config", "cam0: {cam0}");
    assert!(
        json_field(cam0, "owner_uid").is_null(),
        "config channels have no owner: {cam0}"
    );
    let cam1 = find_channel(&channels, "cam1").expect("cam1 from the config is listed");
    assert_eq!(json_u64(cam1, "capacity"), 64 << 10, "cam1: {cam1}");

    broker.ctl_ok(&["create", "rt", "--capacity", "64KiB"]);
    assert_eq!(json_str(&broker.info("rt"), "origin"), "runtime");
    broker
        .ctl(&["create", "cam0", "--capacity", "64KiB"])
        .expect_error(&["channel already exists: cam0"]);
}
