//! Where the broker's socket comes from (bound by path, or handed over by
//! systemd-socket-activate), one broker per socket, stale sockets, and clean shutdown.

use shmem_broker_tests::*;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};

fn socket_mode(path: &std::path::Path) -> u32 {
    let meta = fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    assert!(
        meta.file_type().is_socket(),
        "{} is not a socket",
        path.display()
    );
    meta.permissions().mode() & 0o777
}

#[test]
fn bound_broker_reports_bound_socket_and_its_identity() {
    let broker = Broker::start(None);
    let status = broker.status();
    assert_eq!(
        json_str(&status, "socket_source"),
        "bound",
        "status: {status}"
    );
    assert_eq!(
        json_str(&status, "socket_path"),
        broker.socket_path().to_str().expect("utf-8 temp path"),
        "status: {status}"
    );
    assert_eq!(
        json_u64(&status, "pid"),
        u64::from(broker.pid()),
        "status: {status}"
    );
    assert_eq!(
        json_str(&status, "version"),
        env!("CARGO_PKG_VERSION"),
        "status: {status}"
    );
    assert_eq!(json_u64(&status, "protocol"), 5, "status: {status}");
    assert_eq!(
        json_str(&status, "config_file"),
        broker.config_path().to_str().expect("utf-8 temp path"),
        "status: {status}"
    );
    assert_eq!(json_u64(&status, "channels"), 0, "status: {status}");
    // The connection asking counts as a client.
    assert!(json_u64(&status, "clients") >= 1, "status: {status}");
    json_u64(&status, "uptime_secs");
    assert_eq!(
        socket_mode(broker.socket_path()),
        0o666,
        "a bound socket is 0666 by default"
    );
}

#[test]
fn bound_socket_honours_socket_mode_from_config() {
    let broker = Broker::start(Some("version = 1\nsocket_mode = \"0660\"\n"));
    assert_eq!(socket_mode(broker.socket_path()), 0o660);
}

#[test]
fn bound_broker_creates_the_socket_parent_dir() {
    let broker = Broker::start_with(BrokerOptions {
        socket_relative: Some("run/nested/control.sock"),
        ..BrokerOptions::default()
    });
    assert!(broker.socket_path().ends_with("run/nested/control.sock"));
    let status = broker.status();
    assert_eq!(
        json_str(&status, "socket_path"),
        broker.socket_path().to_str().expect("utf-8 temp path"),
        "status: {status}"
    );
}

#[test]
fn socket_activated_broker_starts_on_first_call_and_reports_systemd() {
    let broker = Broker::start_socket_activated(None);
    let pid = broker.pid();
    let before = proc_exe(pid);
    assert!(
        before.ends_with("systemd-socket-activate"),
        "before any connection, pid {pid} should still be systemd-socket-activate waiting for \
         a client, but it runs {}",
        before.display()
    );

    // The first shmemctl call activates the broker, which answers on the inherited socket.
    let status = broker.status();
    let after = proc_exe(pid);
    assert_eq!(
        after.file_name().and_then(|n| n.to_str()),
        Some(BROKER_BIN),
        "after the first call pid {pid} should have exec'd the broker, runs {}",
        after.display()
    );
    assert_eq!(
        json_str(&status, "socket_source"),
        "systemd",
        "status: {status}"
    );
    assert_eq!(json_u64(&status, "pid"), u64::from(pid), "status: {status}");
    assert_eq!(
        json_str(&status, "socket_path"),
        broker.socket_path().to_str().expect("utf-8 temp path"),
        "status: {status}"
    );

    // It serves like a bound broker.
    broker.ctl_ok(&["create", "activated", "--capacity", "64KiB"]);
    let channels = broker.list();
    let channel = find_channel(&channels, "activated")
        .unwrap_or_else(|| panic!("created channel missing from list: {channels:?}"));
    assert_eq!(json_u64(channel, "capacity"), 64 * 1024);
}

#[test]
fn second_broker_on_a_live_socket_fails_with_already() {
    let broker = Broker::start(None);
    let mut cmd = Command::new(broker_bin());
    cmd.arg("--config")
        .arg(broker.config_path())
        .arg("--socket")
        .arg(broker.socket_path());
    let mut second = Proc::start(cmd, "second-broker", broker.dir(), Stdio::null(), None);
    let out = second.output(WAIT);
    assert!(
        !out.success(),
        "a second broker on a live socket must fail:\n{out}"
    );
    assert!(
        out.stderr.contains("already"),
        "the second broker's stderr should say the socket is already served:\n{out}"
    );
    // The first broker still owns and answers on the socket.
    let status = broker.status();
    assert_eq!(
        json_u64(&status, "pid"),
        u64::from(broker.pid()),
        "status: {status}"
    );
}

#[test]
fn stale_socket_file_is_replaced() {
    let leave_stale_socket = |socket: &std::path::Path| {
        let listener =
            UnixListener::bind(socket).unwrap_or_else(|e| panic!("bind {}: {e}", socket.display()));
        drop(listener);
        let refused = UnixStream::connect(socket).expect_err("nobody listens on a stale socket");
        assert_eq!(
            refused.kind(),
            ErrorKind::ConnectionRefused,
            "stale socket: {refused}"
        );
    };
    let broker = Broker::start_with(BrokerOptions {
        before_start: Some(&leave_stale_socket),
        ..BrokerOptions::default()
    });
    let status = broker.status();
    assert_eq!(
        json_u64(&status, "pid"),
        u64::from(broker.pid()),
        "status: {status}"
    );
    assert_eq!(
        json_str(&status, "socket_source"),
        "bound",
        "status: {status}"
    );
}

#[test]
fn sigterm_exits_with_status_0() {
    let mut broker = Broker::start(None);
    broker.ctl_ok(&["create", "idle", "--capacity", "64KiB"]);
    broker.proc_mut().signal(libc::SIGTERM);
    let status = broker.proc_mut().wait_exit(WAIT);
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM should end the broker cleanly with 0, got {status}; stderr:\n{}",
        broker.log()
    );
}

#[test]
fn sigterm_with_attached_clients_exits_with_status_0() {
    let mut broker = Broker::start(None);
    broker.ctl_ok(&["create", "busy", "--capacity", "64KiB"]);
    let recv = broker.spawn_ctl(&["recv", "busy", "--follow"], Stdio::null(), None);
    broker.wait_for_peer("busy", recv.pid(), "consumer");
    let send = broker.spawn_ctl(&["send", "busy"], Stdio::piped(), None);
    broker.wait_for_peer("busy", send.pid(), "producer");

    broker.proc_mut().signal(libc::SIGTERM);
    let status = broker.proc_mut().wait_exit(WAIT);
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM with a producer and a consumer attached should still exit 0, got {status}; \
         stderr:\n{}",
        broker.log()
    );
    // recv and send are killed by their guards; what they do once the broker is gone is not
    // part of this test.
    drop((recv, send));
}

/// Each side of a ring gets the other's memfd read-only, which the broker makes by reopening it
/// through /proc/self/fd. A broker started where /proc is hidden must say so at start-up and
/// exit 1, not run and fail every attach with a bare I/O error.
#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn broker_without_proc_fails_at_start_naming_proc() {
    // A private mount namespace whose /proc is an empty tmpfs.
    broker_fails_at_start_naming_proc("mount -t tmpfs none /proc");
}

/// Whatever else is mounted on /proc, a path under /proc/self/fd may name some other file than
/// the memfd: the broker must refuse to hand that out (it checks device and inode) rather than
/// give clients a file it did not create. Here /proc/self/fd/0..63 are plain files of a tmpfs.
#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn broker_with_something_else_on_proc_fails_at_start_naming_proc() {
    broker_fails_at_start_naming_proc(
        "mount -t tmpfs none /proc && mkdir -p /proc/self/fd && \
         for n in $(seq 0 63); do echo decoy > /proc/self/fd/$n; done",
    );
}

/// The same with FIFOs there: opening one for reading would wait for a writer, so the broker
/// opens without waiting, and refuses as above instead of hanging at start-up.
#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn broker_with_fifos_on_proc_fails_at_start_naming_proc() {
    broker_fails_at_start_naming_proc(
        "mount -t tmpfs none /proc && mkdir -p /proc/self/fd && \
         for n in $(seq 0 63); do mkfifo /proc/self/fd/$n; done",
    );
}

/// Starts the broker in a private mount namespace after `prepare` (a shell line) and checks
/// that it exits 1 with one stderr line naming /proc.
fn broker_fails_at_start_naming_proc(prepare: &str) {
    require_root();
    require_tool("unshare", "util-linux");
    let dir = temp_dir();
    let socket = dir.path().join("control.sock");
    let mut cmd = Command::new("unshare");
    // The broker is exec'd inside the namespace once `prepare` has run.
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(format!("{prepare} && exec \"$0\" \"$@\""))
        .arg(broker_bin())
        .arg("--socket")
        .arg(&socket);
    let mut broker = Proc::start(cmd, "broker-without-proc", dir.path(), Stdio::null(), None);
    let out = broker.output(WAIT);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a broker that cannot reopen memfds read-only must exit 1:\n{out}"
    );
    let cause: Vec<&str> = out
        .stderr
        .lines()
        .filter(|line| line.starts_with("shmem-broker: "))
        .collect();
    assert_eq!(
        cause.len(),
        1,
        "one plain line on stderr names the cause:\n{out}"
    );
    assert!(
        cause[0].contains("/proc/self/fd") && cause[0].contains("mounted"),
        "the line should name /proc as the cause:\n{out}"
    );
}
