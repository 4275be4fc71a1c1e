//! Channel administration with shmemctl: create, list, info, drop and their errors; and the
//! library's builder (`open_or_create`) and attachments' lifetime (a slot is free again as soon
//! as the endpoint is dropped, even with children forked meanwhile still holding its fds).

use shmem_broker_client::{Client, ErrorCode};
use shmem_broker_tests::*;
use std::time::{Duration, Instant};

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
            .map(
                |name| match client.channel(&name).capacity(64 * 1024).create() {
                    Ok(_) => format!("create({name:?}) succeeded"),
                    Err(e) => e.to_string(),
                },
            )
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

// ---------------------------------------------------------------------------------------------
// Attachments' lifetime. (This test had a binary of its own while a child forked by another
// test, holding a copy of an endpoint's socket until it exec'd, kept a dropped endpoint's
// connection, and so its slot, alive; endpoints now shut their connection down on drop.)

#[test]
fn a_closed_attachment_frees_its_slot_before_the_next_attach_is_served() {
    // PROTOCOL.md: "the attachment lasts exactly as long as the connection: close it ... and
    // the broker frees the slot at once". A client that drops an endpoint and attaches again
    // must never be refused with "channel busy" naming its own, already closed, attachment.
    // The race is narrow: it takes many quick cycles, while other clients keep the broker
    // accepting connections, to show.
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "again", "--capacity", "1MiB"]);
    let client = broker.client();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let others = {
        let (socket, stop) = (broker.socket_path().to_path_buf(), stop.clone());
        Background::spawn("other clients", move || {
            let mut served = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(other) = Client::connect(&socket) {
                    served += u64::from(other.status().is_ok());
                }
            }
            served
        })
    };
    let mut refused = Vec::new();
    for i in 0..10_000 {
        let result = if i % 2 == 0 {
            client.consumer("again").map(drop)
        } else {
            client.producer("again").map(drop)
        };
        if let Err(e) = result {
            refused.push(format!("cycle {i}: {e}"));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served = others.join(WAIT);
    assert!(served > 0, "the other clients were never served");
    assert!(
        refused.is_empty(),
        "{} of 10000 attaches right after closing the previous attachment were refused \
         (test pid {}); first ones: {:?}",
        refused.len(),
        std::process::id(),
        &refused[..refused.len().min(3)]
    );
}

#[test]
fn a_child_forked_with_an_endpoint_does_not_keep_its_slot_after_the_parent_drops_it() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "forked", "--capacity", "64KiB"]);
    let client = broker.client();
    let producer = client.producer("forked").expect("first producer");
    // The child holds copies of every fd, the producer's socket included, and neither execs
    // nor exits for a long while.
    // SAFETY: the child only calls async-signal-safe functions (sleep, _exit).
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
    if child == 0 {
        // SAFETY: async-signal-safe calls only, in the child.
        unsafe {
            libc::sleep(60);
            libc::_exit(0);
        }
    }
    let reap = |child| {
        // SAFETY: plain syscalls on our own child.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
    };
    drop(producer);
    let start = Instant::now();
    let result = loop {
        match client.producer("forked") {
            Ok(second) => break Ok(second),
            Err(e) if start.elapsed() > Duration::from_secs(3) => break Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    reap(child);
    let second = result.unwrap_or_else(|e| {
        panic!("the slot stayed taken while a forked child held the dropped producer's fds: {e}")
    });
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "the slot came free only after {:?}",
        start.elapsed()
    );
    drop(second);
}

#[test]
fn open_or_create_makes_a_channel_once_and_opens_it_after() {
    let broker = Broker::start(None);
    let client = broker.client();
    let made = client
        .channel("shared")
        .capacity(64 << 10)
        .open_or_create()
        .expect("create");
    assert_eq!(made.capacity, 64 << 10);
    // A second call (with other wishes) gets the existing channel as it is.
    let opened = client
        .channel("shared")
        .capacity(1 << 20)
        .open_or_create()
        .expect("open");
    assert_eq!(opened.name, "shared");
    assert_eq!(opened.capacity, 64 << 10);
    let again = client.channel("shared").create();
    assert_eq!(
        again.expect_err("create of an existing channel").code(),
        Some(ErrorCode::ChannelExists)
    );
    let _: &Client = &client;
}
