//! The broker under a real systemd, installed from the project's own unit files
//! (systemd/shmem-broker.socket and .service, every hardening line kept; only `ExecStart=` and
//! `ListenStream=` point into the test's lab) and users (systemd/shmem-broker.sysusers):
//! socket activation, `systemctl status`, restart and crash with channels and unread data kept
//! in systemd's fd store, reload with a good and a broken config, stop, and the journal.
//!
//! Needs root (it boots systemd in new namespaces and creates the project's system users on the
//! machine, as an installer would): built by another user, each test is listed as ignored.
//!
//! One file of about 800 lines on purpose: its five tests are long end-to-end scenarios in the
//! same lab (a booted systemd with the project's units), sharing its setup and helpers.

use serde_json::Value;
use shmem_broker_tests::systemd::{
    group_id, user_id, LabBroker, SystemdLab, SERVICE, SERVICE_USER, SOCKET, SOCKET_GROUP,
};
use shmem_broker_tests::{connect, json_array, json_str, json_u64, require_root, wait_for, WAIT};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

const CHANNEL: &str = "frames";
/// `shmemctl send --chunk`: the input file is cut into messages of exactly this size.
const CHUNK: usize = 4096;
/// Messages written with shmemctl before the restart.
const BEFORE_RESTART: usize = 50;
/// Messages written with the client library before the crash.
const BEFORE_CRASH: usize = 37;
/// Deadline for a library producer or consumer.
const LIB_TIMEOUT: Duration = Duration::from_secs(30);

/// Deterministic, distinct content: a header naming the message, then pseudo-random bytes.
fn message(seq: u64, len: usize) -> Vec<u8> {
    let mut out = format!("message {seq:06} ").into_bytes();
    let mut state = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.push(state as u8);
    }
    out.truncate(len);
    out
}

fn assert_same_bytes(what: &str, got: &[u8], want: &[u8]) {
    if got != want {
        let first_difference = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{what}: got {} bytes, expected {} bytes; first difference at offset {first_difference}",
            got.len(),
            want.len()
        );
    }
}

fn channel_info(broker: &LabBroker<'_>, name: &str) -> Value {
    broker.ctl_json(&["info", name])
}

fn file_in(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// The value of a `Key:\tv1\tv2...` line of /proc/PID/status.
fn status_field<'a>(status: &'a str, key: &str) -> Vec<&'a str> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} line in:\n{status}"))
        .split_whitespace()
        .collect()
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn socket_activation_restart_and_crash_keep_channels() {
    require_root();
    let lab = SystemdLab::boot();
    let broker = LabBroker::install(&lab, "version = 1\n");
    let uid = user_id(SERVICE_USER).expect("sysusers created the service user");
    let gid = group_id(SOCKET_GROUP).expect("sysusers created the socket group");

    // 1. The socket listens; the service starts only when a client connects.
    lab.systemctl_ok(&["start", SOCKET]);
    assert_eq!(lab.show(SOCKET, "ActiveState"), "active");
    assert_eq!(
        lab.show(SERVICE, "ActiveState"),
        "inactive",
        "{SERVICE} runs before any client connected"
    );
    let socket_meta = fs::metadata(broker.socket())
        .unwrap_or_else(|e| panic!("the socket {} is not there: {e}", broker.socket().display()));
    assert_eq!(
        (socket_meta.permissions().mode() & 0o777, socket_meta.gid()),
        (0o660, gid),
        "SocketMode=0660 and SocketGroup={SOCKET_GROUP} (gid {gid}) expected on {}",
        broker.socket().display()
    );

    let listing = broker.ctl_ok(&["list"]);
    assert!(
        listing.starts_with("NAME"),
        "shmemctl list through the activated broker printed:\n{listing}"
    );
    let first_pid = broker.wait_active();
    let status = broker.ctl_json(&["status"]);
    assert_eq!(json_str(&status, "socket_source"), "systemd", "{status}");
    assert_eq!(json_u64(&status, "pid"), u64::from(first_pid), "{status}");
    // The unit's User= and SupplementaryGroups= are in effect.
    let proc_status = broker.proc_status(first_pid);
    assert!(
        status_field(&proc_status, "Uid:")
            .iter()
            .all(|u| *u == uid.to_string()),
        "the broker should run as {SERVICE_USER} (uid {uid}):\n{proc_status}"
    );
    assert!(
        status_field(&proc_status, "Groups:").contains(&gid.to_string().as_str()),
        "the broker should have group {SOCKET_GROUP} (gid {gid}):\n{proc_status}"
    );
    // The sandbox is in effect, not silently skipped: no capabilities, no_new_privs, and a
    // seccomp filter (SystemCallFilter=).
    for (field, expected) in [
        ("CapEff:", "0000000000000000"),
        ("CapBnd:", "0000000000000000"),
        ("NoNewPrivs:", "1"),
        ("Seccomp:", "2"),
    ] {
        assert_eq!(
            status_field(&proc_status, field),
            [expected],
            "{field} of the broker:\n{proc_status}"
        );
    }

    // 2. `systemctl status` shows the broker's STATUS= line.
    let status_out = lab.systemctl(&["status", SERVICE]);
    assert!(status_out.success(), "{status_out}");
    let status_line = status_out
        .stdout
        .lines()
        .find(|line| line.trim_start().starts_with("Status: \""))
        .unwrap_or_else(|| {
            panic!(
                "no Status: line in systemctl status:\n{}",
                status_out.stdout
            )
        });
    assert!(
        status_line.contains("0 channel"),
        "the status line should count 0 channels: {status_line}"
    );

    // 3. A channel with data survives `systemctl restart`, its fds kept in systemd's store.
    assert_eq!(
        lab.show_u64(SERVICE, "NFileDescriptorStore"),
        0,
        "nothing to store before a channel exists"
    );
    broker.ctl_ok(&["create", CHANNEL, "--capacity", "1MiB"]);
    // Structured journal fields: the operator can ask for one channel's events.
    lab.wait_for_journal_line(
        &["-u", SERVICE, &format!("CHANNEL={CHANNEL}")],
        &["channel created"],
    );
    wait_for(WAIT, "NFileDescriptorStore > 0 after create", || match lab
        .show_u64(SERVICE, "NFileDescriptorStore")
    {
        0 => Err("NFileDescriptorStore=0".to_string()),
        n => Ok(n),
    });
    wait_for(WAIT, "STATUS= to count the new channel", || {
        let text = lab.show(SERVICE, "StatusText");
        if text.contains("1 channel") {
            Ok(())
        } else {
            Err(format!("StatusText={text:?}"))
        }
    });

    let input: Vec<u8> = (0..BEFORE_RESTART as u64)
        .flat_map(|seq| message(seq, CHUNK))
        .collect();
    let input_file = file_in(lab.dir(), "before-restart.bin");
    fs::write(&input_file, &input).expect("write the input file");
    broker.send_file(CHANNEL, CHUNK, &input_file);
    let info = channel_info(&broker, CHANNEL);
    assert_eq!(
        (
            json_u64(&info, "messages_written"),
            json_u64(&info, "bytes_written")
        ),
        (BEFORE_RESTART as u64, input.len() as u64),
        "shmemctl send should have written {BEFORE_RESTART} messages of {CHUNK} bytes: {info}"
    );

    lab.systemctl_ok(&["restart", SERVICE]);
    let second_pid = broker.wait_active();
    assert_ne!(
        second_pid, first_pid,
        "restart should start a new broker process"
    );
    assert!(
        broker.channel_names().contains(&CHANNEL.to_string()),
        "channel {CHANNEL} is gone after the restart"
    );
    let info = channel_info(&broker, CHANNEL);
    assert_eq!(
        (
            json_u64(&info, "messages_written"),
            json_u64(&info, "messages_read")
        ),
        (BEFORE_RESTART as u64, 0),
        "unread messages after the restart: {info}"
    );
    let received = broker.recv_to_file(CHANNEL, &file_in(lab.dir(), "after-restart.bin"));
    assert_same_bytes("messages read after the restart", &received, &input);
    let info = channel_info(&broker, CHANNEL);
    assert_eq!(
        (
            json_u64(&info, "messages_read"),
            json_u64(&info, "bytes_unread")
        ),
        (BEFORE_RESTART as u64, 0),
        "the consumer should have read exactly the {BEFORE_RESTART} messages: {info}"
    );

    // 4. kill -9: systemd restarts the broker (Restart=on-failure) and the channel and its
    // unread data are still there. This time the client library writes and reads, from the
    // test process itself, i.e. from outside the lab's pid namespace (the broker sees pid 0).
    let sent: Vec<Vec<u8>> = (0..BEFORE_CRASH)
        .map(|i| message(1000 + i as u64, 1 + (i * 997) % 3000))
        .collect();
    let socket = broker.socket().to_path_buf();
    let to_send = sent.clone();
    shmem_broker_tests::with_deadline(LIB_TIMEOUT, "library producer", move || {
        let client = connect(&socket);
        let mut producer = client
            .producer(CHANNEL)
            .unwrap_or_else(|e| panic!("attach producer: {e}"));
        for message in &to_send {
            producer
                .send(message)
                .unwrap_or_else(|e| panic!("send: {e}"));
        }
        producer.close().unwrap_or_else(|e| panic!("close: {e}"));
    });
    let info = channel_info(&broker, CHANNEL);
    assert_eq!(
        json_u64(&info, "messages_written"),
        (BEFORE_RESTART + BEFORE_CRASH) as u64,
        "{info}"
    );
    assert!(json_array(&info, "peers").is_empty(), "{info}");

    let restarts = lab.show_u64(SERVICE, "NRestarts");
    broker.signal(second_pid, "-9");
    let third_pid = broker.wait_restarted(second_pid, restarts, WAIT);
    assert_ne!(third_pid, second_pid);
    lab.wait_for_journal_line(&["-u", SERVICE], &["status=9/KILL"]);
    assert!(
        broker.channel_names().contains(&CHANNEL.to_string()),
        "channel {CHANNEL} is gone after the crash"
    );
    assert!(lab.show_u64(SERVICE, "NFileDescriptorStore") > 0);
    let info = channel_info(&broker, CHANNEL);
    assert!(
        json_u64(&info, "bytes_unread") > 0,
        "unread data lost: {info}"
    );

    let socket = broker.socket().to_path_buf();
    let received = shmem_broker_tests::with_deadline(LIB_TIMEOUT, "library consumer", move || {
        let client = connect(&socket);
        let mut consumer = client
            .consumer(CHANNEL)
            .unwrap_or_else(|e| panic!("attach consumer: {e}"));
        let mut received = Vec::new();
        while let Some(message) = consumer.recv().unwrap_or_else(|e| panic!("recv: {e}")) {
            received.push(message);
        }
        received
    });
    assert_eq!(
        received.len(),
        sent.len(),
        "expected exactly the {} messages written before the crash",
        sent.len()
    );
    for (i, (got, want)) in received.iter().zip(&sent).enumerate() {
        assert_same_bytes(&format!("message {i} after the crash"), got, want);
    }
    let info = channel_info(&broker, CHANNEL);
    assert_eq!(json_u64(&info, "bytes_unread"), 0, "{info}");

    // 5. drop takes the channel's fds out of the store (FDSTOREREMOVE): a restart does not
    // bring it back.
    broker.ctl_ok(&["drop", CHANNEL]);
    wait_for(
        WAIT,
        "the dropped channel's fds to leave the store",
        || match lab.show_u64(SERVICE, "NFileDescriptorStore") {
            0 => Ok(()),
            n => Err(format!("NFileDescriptorStore={n}")),
        },
    );
    lab.systemctl_ok(&["restart", SERVICE]);
    broker.wait_active();
    assert!(
        !broker.channel_names().contains(&CHANNEL.to_string()),
        "a dropped channel came back after a restart"
    );
}

const GOOD_CONFIG: &str = r#"version = 1

[[channel]]
name = "alpha"
capacity = "64KiB"
"#;

const MORE_CONFIG: &str = r#"
[[channel]]
name = "beta"
"#;

/// `frobnicate` on line 3 is not a config key.
const BROKEN_CONFIG: &str = r#"version = 1

frobnicate = true

[[channel]]
name = "alpha"
"#;

fn sorted_names(broker: &LabBroker<'_>) -> Vec<String> {
    let mut names = broker.channel_names();
    names.sort();
    names
}

fn broker_entries(lab: &SystemdLab, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["-u", SERVICE];
    args.extend_from_slice(extra);
    lab.journal_entries(&args)
        .into_iter()
        .filter(|e| e["SYSLOG_IDENTIFIER"] == "shmem-broker")
        .collect()
}

fn message_of(entry: &Value) -> String {
    entry["MESSAGE"].as_str().unwrap_or_default().to_string()
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn reload_stop_and_journal_priorities() {
    require_root();
    let lab = SystemdLab::boot();
    let broker = LabBroker::install(&lab, GOOD_CONFIG);
    lab.systemctl_ok(&["start", SOCKET]);
    assert_eq!(sorted_names(&broker), ["alpha"]);
    let pid = broker.wait_active();

    // 5a. Reload with one more channel: it appears, same process.
    broker.write_config(&format!("{GOOD_CONFIG}{MORE_CONFIG}"));
    lab.systemctl_ok(&["reload", SERVICE]);
    wait_for(WAIT, "channel beta after the reload", || {
        let names = sorted_names(&broker);
        if names == ["alpha", "beta"] {
            Ok(())
        } else {
            Err(format!("channels {names:?}"))
        }
    });
    assert_eq!(
        broker.wait_active(),
        pid,
        "a reload must not restart the broker"
    );

    // 5b. Reload with a broken config: the error (file:3 and the key) is logged at priority
    // err, and the old channels are still served by the same process.
    broker.write_config(BROKEN_CONFIG);
    // ExecReload= checks the config first: `systemctl reload` fails, the broker is not asked.
    let refused = lab.systemctl(&["reload", SERVICE]);
    assert!(
        !refused.success(),
        "reload of a broken config must fail: {refused}"
    );
    // file:line:column: key
    let location = format!("{}:3:", broker.config_path().display());
    let error_line = lab.wait_for_journal_line(&["-u", SERVICE], &[&location, "frobnicate"]);
    assert!(error_line.contains("shmem-broker["), "{error_line}");
    // A SIGHUP that bypasses the check: the broker rejects the config itself, logs it at err
    // and `shmemctl status` shows the rejection with its location.
    lab.systemctl_ok(&["kill", "--kill-whom=main", "-s", "HUP", SERVICE]);
    lab.wait_for_journal_line(&["-u", SERVICE, "-p", "err"], &[&location, "frobnicate"]);
    let status = wait_for(WAIT, "status to show the rejected reload", || {
        let status = broker.ctl_ok(&["status"]);
        if status.contains("rejected") {
            Ok(status)
        } else {
            Err(status)
        }
    });
    assert!(
        status.contains(&location) && status.contains("frobnicate"),
        "{status}"
    );
    assert_eq!(sorted_names(&broker), ["alpha", "beta"]);
    assert_eq!(
        broker.wait_active(),
        pid,
        "a rejected reload must not restart the broker"
    );

    // 6. Stop: a clean exit, and the broker's lines are in the journal with their priorities.
    lab.systemctl_ok(&["stop", SERVICE]);
    assert_eq!(lab.show(SERVICE, "ActiveState"), "inactive");
    assert_eq!(
        (
            lab.show(SERVICE, "Result"),
            lab.show(SERVICE, "ExecMainStatus")
        ),
        ("success".to_string(), "0".to_string()),
        "the broker should exit 0 on SIGTERM"
    );
    assert_eq!(
        lab.show(SOCKET, "ActiveState"),
        "active",
        "the socket keeps listening"
    );

    let entries = wait_for(WAIT, "the broker's last log lines in the journal", || {
        let entries = broker_entries(&lab, &[]);
        let pid_field = pid.to_string();
        let from_pid = entries
            .iter()
            .filter(|e| e["_PID"] == pid_field.as_str())
            .count();
        // serving, config reloaded, rejected, stopping: at least four lines of the process.
        if from_pid >= 4
            && entries
                .iter()
                .any(|e| message_of(e).starts_with("stopping"))
        {
            Ok(entries)
        } else {
            Err(format!(
                "{} lines: {:?}",
                entries.len(),
                entries.iter().map(message_of).collect::<Vec<_>>()
            ))
        }
    });
    let messages: Vec<String> = entries.iter().map(message_of).collect();
    for entry in &entries {
        let text = message_of(entry);
        assert!(
            !text.starts_with('<'),
            "the <P> prefix should be consumed by journald, not logged: {text:?}"
        );
    }
    let priority_of = |prefix: &str| -> String {
        entries
            .iter()
            .find(|e| message_of(e).starts_with(prefix))
            .map(|e| e["PRIORITY"].as_str().unwrap_or_default().to_string())
            .unwrap_or_else(|| panic!("no broker line starting with {prefix:?} in {messages:#?}"))
    };
    for info_line in ["serving", "config reloaded", "stopping"] {
        assert_eq!(
            priority_of(info_line),
            "6",
            "{info_line:?} should be logged at info"
        );
    }
    assert_eq!(
        priority_of("config reload rejected"),
        "3",
        "the rejected reload should be logged at err"
    );

    let info_messages: Vec<String> = entries
        .iter()
        .filter(|e| e["PRIORITY"] == "6")
        .map(message_of)
        .collect();
    assert!(info_messages.len() >= 3, "{messages:#?}");
    let warning_and_worse: Vec<String> = broker_entries(&lab, &["-p", "warning"])
        .iter()
        .map(message_of)
        .collect();
    for info in &info_messages {
        assert!(
            !warning_and_worse.contains(info),
            "info line {info:?} shows up in journalctl -p warning: {warning_and_worse:#?}"
        );
    }
    let errors: Vec<String> = broker_entries(&lab, &["-p", "err"])
        .iter()
        .map(message_of)
        .collect();
    assert!(
        errors
            .iter()
            .any(|m| m.contains(&location) && m.contains("frobnicate")),
        "journalctl -p err should hold the config error: {errors:#?}"
    );
    assert!(
        warning_and_worse.iter().any(|m| m.contains("frobnicate")),
        "journalctl -p warning should hold the config error too: {warning_and_worse:#?}"
    );
}

/// Endpoints made with `reconnect(true)` keep exchanging data while the broker restarts, take
/// their slots back once it is up again (same ring, from the fd store), and nothing is lost.
#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn reconnecting_endpoints_ride_through_a_restart() {
    require_root();
    const LIVE: &str = "live";
    const TOTAL: u64 = 3000;
    let lab = SystemdLab::boot();
    let broker = LabBroker::install(&lab, "version = 1\n");
    lab.systemctl_ok(&["start", SOCKET]);
    broker.ctl_ok(&["create", LIVE, "--capacity", "64KiB"]);
    let first_pid = broker.wait_active();

    let (progress_tx, progress_rx) = std::sync::mpsc::channel::<u64>();
    let socket = broker.socket().to_path_buf();
    let consumer = shmem_broker_tests::Background::spawn("reconnecting consumer", move || {
        let client = connect(&socket);
        let mut consumer = client
            .attach(LIVE)
            .reconnect(true)
            .consumer()
            .unwrap_or_else(|e| panic!("attach consumer: {e}"));
        let mut expected = 0u64;
        while let Some(m) = consumer
            .recv()
            .unwrap_or_else(|e| panic!("recv after {expected}: {e}"))
        {
            assert_eq!(
                m,
                message(expected, 100 + (expected % 900) as usize),
                "message {expected}"
            );
            expected += 1;
            let _ = progress_tx.send(expected);
        }
        expected
    });
    let socket = broker.socket().to_path_buf();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (close_tx, close_rx) = std::sync::mpsc::channel::<()>();
    let producer = shmem_broker_tests::Background::spawn("reconnecting producer", move || {
        let client = connect(&socket);
        let mut producer = client
            .attach(LIVE)
            .reconnect(true)
            .producer()
            .unwrap_or_else(|e| panic!("attach producer: {e}"));
        for seq in 0..TOTAL {
            if seq == TOTAL / 3 {
                // Hold until the test has restarted the broker, so the rest crosses it.
                go_rx.recv().expect("the test lets the producer go on");
            }
            producer
                .send(&message(seq, 100 + (seq % 900) as usize))
                .unwrap_or_else(|e| panic!("send {seq}: {e}"));
            std::thread::sleep(Duration::from_micros(200));
        }
        // Stay attached until the test has seen both endpoints back at the new broker.
        close_rx.recv().expect("the test lets the producer close");
        producer.close().unwrap_or_else(|e| panic!("close: {e}"));
    });

    wait_for(
        WAIT,
        "the consumer to read the first third",
        || match progress_rx.try_iter().last() {
            Some(n) if n >= TOTAL / 3 => Ok(()),
            other => Err(format!("{other:?} messages so far")),
        },
    );
    lab.systemctl_ok(&["restart", SERVICE]);
    let second_pid = broker.wait_active();
    assert_ne!(first_pid, second_pid, "the broker process was replaced");
    go_tx.send(()).expect("producer still running");

    // Both endpoints take their slots back at the new broker, on the ring it restored.
    wait_for(WAIT, "both endpoints to re-attach", || {
        let info = channel_info(&broker, LIVE);
        let roles: Vec<String> = json_array(&info, "peers")
            .iter()
            .map(|p| json_str(p, "role").to_string())
            .collect();
        if roles.contains(&"producer".to_string()) && roles.contains(&"consumer".to_string()) {
            Ok(())
        } else {
            Err(info.to_string())
        }
    });
    close_tx.send(()).expect("producer still running");
    producer.join(LIB_TIMEOUT);
    assert_eq!(
        consumer.join(LIB_TIMEOUT),
        TOTAL,
        "every message exactly once, in order"
    );
}

/// `WATCHDOG=1` comes from the event loop: a live broker keeps the watchdog fed well past its
/// timeout, and a wedged one (SIGSTOP stands in for a stuck loop) is restarted by systemd.
/// The unit's `WatchdogSec=10s`/`TimeoutStopSec=10s` are shortened to 1 s to keep this quick.
#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn watchdog_keeps_a_live_broker_and_restarts_a_wedged_one() {
    require_root();
    let lab = SystemdLab::boot();
    let broker = LabBroker::install(&lab, "version = 1\n");
    let unit_path = lab.units_dir().join(SERVICE);
    let unit = fs::read_to_string(&unit_path).expect("read the installed service unit");
    let unit =
        shmem_broker_tests::systemd::rewrite_unit_line(&unit, "WatchdogSec=", "WatchdogSec=1s");
    let unit = shmem_broker_tests::systemd::rewrite_unit_line(
        &unit,
        "TimeoutStopSec=",
        "TimeoutStopSec=1s",
    );
    lab.install_unit(SERVICE, &unit);
    lab.daemon_reload();
    lab.systemctl_ok(&["start", SOCKET]);
    // A channel nobody has attached to yet is stored without eventfds; it must come back too.
    broker.ctl_ok(&["create", "idle", "--capacity", "64KiB"]);
    let pid = broker.wait_active();

    // Fed: the last-ping timestamp keeps moving for several timeouts, and nothing restarts.
    let mut last = lab.show_u64(SERVICE, "WatchdogTimestampMonotonic");
    for round in 0..4 {
        last = wait_for(WAIT, format!("watchdog ping {round} after {last}"), || {
            let now = lab.show_u64(SERVICE, "WatchdogTimestampMonotonic");
            if now > last {
                Ok(now)
            } else {
                Err(format!("WatchdogTimestampMonotonic={now}"))
            }
        });
    }
    assert_eq!(
        lab.show_u64(SERVICE, "NRestarts"),
        0,
        "a fed watchdog never fires"
    );
    assert_eq!(lab.show_u64(SERVICE, "MainPID") as u32, pid);

    // Wedged: the loop stops, the pings stop, systemd restarts the service.
    broker.signal(pid, "-STOP");
    let restarted = broker.wait_restarted(pid, 0, Duration::from_secs(30));
    assert_ne!(restarted, pid);
    lab.wait_for_journal_line(&["-u", SERVICE], &["Watchdog timeout"]);
    assert!(
        broker.channel_names().contains(&"idle".to_string()),
        "the never-attached channel survived the restart"
    );
    let input = file_in(lab.dir(), "idle.bin");
    fs::write(&input, b"first use after a restart").expect("write input");
    broker.send_file("idle", 4096, &input);
    let received = broker.recv_to_file("idle", &file_in(lab.dir(), "idle.out"));
    assert_eq!(received, b"first use after a restart");
}

/// A fan-out channel's durable queue, with its unread messages, is kept in the fd store across a
/// restart and a kill -9; an anonymous consumer's is not (it ends with its connection).
#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn a_durable_consumers_queue_survives_restart_and_crash() {
    require_root();
    const FAN: &str = "fan";
    const COUNT: u64 = 100;
    let lab = SystemdLab::boot();
    let broker = LabBroker::install(&lab, "version = 1\n");
    lab.systemctl_ok(&["start", SOCKET]);
    broker.ctl_ok(&[
        "create",
        FAN,
        "--capacity",
        "64KiB",
        "--max-producers",
        "2",
        "--max-consumers",
        "3",
    ]);
    let first_pid = broker.wait_active();
    let socket = broker.socket().to_path_buf();
    {
        let client = connect(&socket);
        drop(
            client
                .attach(FAN)
                .durable("keep")
                .consumer()
                .unwrap_or_else(|e| panic!("attach the durable consumer: {e}")),
        );
        let mut anonymous = client
            .consumer(FAN)
            .unwrap_or_else(|e| panic!("attach an anonymous consumer: {e}"));
        let mut producer = client
            .producer(FAN)
            .unwrap_or_else(|e| panic!("attach the producer: {e}"));
        for seq in 0..COUNT {
            producer
                .send(&message(seq, 200))
                .unwrap_or_else(|e| panic!("send {seq}: {e}"));
        }
        producer.close().unwrap_or_else(|e| panic!("close: {e}"));
        // The anonymous consumer reads everything and leaves: its reads stay counted.
        for seq in 0..COUNT {
            let got = anonymous
                .recv()
                .unwrap_or_else(|e| panic!("recv {seq}: {e}"));
            assert_eq!(got, Some(message(seq, 200)), "message {seq}");
        }
        assert_eq!(anonymous.recv().ok(), Some(None), "end-of-stream");
    }
    let kept = |what: &str| {
        let info = channel_info(&broker, FAN);
        // The channel's totals outlive the anonymous consumer's rings and the broker.
        assert_eq!(json_u64(&info, "messages_written"), COUNT, "{what}: {info}");
        assert_eq!(
            json_u64(&info, "bytes_written"),
            COUNT * 200,
            "{what}: {info}"
        );
        assert_eq!(json_u64(&info, "messages_read"), COUNT, "{what}: {info}");
        let peers = json_array(&info, "peers");
        let keep = peers
            .iter()
            .find(|p| p["name"] == "keep")
            .unwrap_or_else(|| panic!("{what}: the durable consumer is gone: {info}"));
        assert_eq!(keep["attached"], false, "{what}: {info}");
        assert!(json_u64(keep, "bytes_unread") > 0, "{what}: {info}");
        assert_eq!(
            json_u64(&info, "ring_bytes"),
            64 << 10,
            "{what}: only the durable queue's ring is kept: {info}"
        );
    };
    // The anonymous consumer's connection closed with its scope; the broker frees its queue
    // when it reads the hang-up, which may come after a request on another connection.
    wait_for(WAIT, "the anonymous consumer's queue to go", || {
        let info = channel_info(&broker, FAN);
        let attached = json_array(&info, "peers")
            .iter()
            .any(|p| p["role"] == "consumer" && p["attached"] == true);
        if attached {
            Err(info.to_string())
        } else {
            Ok(())
        }
    });
    kept("before the restart");

    lab.systemctl_ok(&["restart", SERVICE]);
    let second_pid = broker.wait_active();
    assert_ne!(first_pid, second_pid);
    kept("after a restart");

    let restarts = lab.show_u64(SERVICE, "NRestarts");
    broker.signal(second_pid, "-9");
    let third_pid = broker.wait_restarted(second_pid, restarts, WAIT);
    assert_ne!(third_pid, second_pid);
    kept("after kill -9");

    let client = connect(&socket);
    let mut keep = client
        .attach(FAN)
        .durable("keep")
        .consumer()
        .unwrap_or_else(|e| panic!("re-attach the durable consumer: {e}"));
    for seq in 0..COUNT {
        let got = keep
            .recv()
            .unwrap_or_else(|e| panic!("recv {seq}: {e}"))
            .unwrap_or_else(|| panic!("end-of-stream after {seq} messages"));
        assert_eq!(got, message(seq, 200), "message {seq}");
    }
    assert_eq!(keep.recv().ok(), Some(None), "the producer's end-of-stream");
    let log = lab.journalctl(&["-u", SERVICE]).stdout;
    assert!(
        !log.contains("discarding stored channel"),
        "nothing stored was discarded:\n{log}"
    );
}
