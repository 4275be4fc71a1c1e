//! The command lines themselves: shmemctl without a broker, --version, --help, log formats.

use shmem_broker_tests::*;
use std::io::ErrorKind;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};

#[test]
fn ctl_with_missing_socket_says_broker_not_running() {
    let logs = temp_dir();
    let mut cmd = Command::new(ctl_bin());
    cmd.args(["--socket", "/nonexistent/x.sock", "list"]);
    let out = run(cmd, "shmemctl", logs.path(), Stdio::null(), CTL_TIMEOUT);
    out.expect_error(&["broker not running"]);
}

#[test]
fn ctl_with_refused_socket_says_broker_not_running() {
    let dir = temp_dir();
    let socket = dir.path().join("stale.sock");
    drop(UnixListener::bind(&socket).expect("bind a socket to leave behind"));
    let refused = UnixStream::connect(&socket).expect_err("nobody listens on a stale socket");
    assert_eq!(
        refused.kind(),
        ErrorKind::ConnectionRefused,
        "stale socket: {refused}"
    );
    let out = run_ctl(&socket, dir.path(), &["list"], CTL_TIMEOUT);
    out.expect_error(&["broker not running"]);
}

#[test]
fn broker_version_prints_the_package_version() {
    let logs = temp_dir();
    let mut cmd = Command::new(broker_bin());
    cmd.arg("--version");
    let out = run(
        cmd,
        "broker-version",
        logs.path(),
        Stdio::null(),
        CTL_TIMEOUT,
    );
    let stdout = out.expect_success();
    assert!(
        stdout.contains(env!("CARGO_PKG_VERSION")),
        "--version should print {}:\n{out}",
        env!("CARGO_PKG_VERSION")
    );
}

#[test]
fn broker_help_lists_its_flags() {
    let logs = temp_dir();
    let mut cmd = Command::new(broker_bin());
    cmd.arg("--help");
    let out = run(cmd, "broker-help", logs.path(), Stdio::null(), CTL_TIMEOUT);
    let stdout = out.expect_success();
    for flag in [
        "--config",
        "--socket",
        "--check-config",
        "--log-level",
        "--log-format",
        "--version",
    ] {
        assert!(stdout.contains(flag), "--help should list {flag}:\n{out}");
    }
}

#[test]
fn ctl_help_lists_its_commands() {
    let logs = temp_dir();
    let mut cmd = Command::new(ctl_bin());
    cmd.arg("--help");
    let out = run(
        cmd,
        "shmemctl-help",
        logs.path(),
        Stdio::null(),
        CTL_TIMEOUT,
    );
    let stdout = out.expect_success();
    for command in [
        "list", "create", "drop", "info", "status", "send", "recv", "--socket",
    ] {
        assert!(
            stdout.contains(command),
            "shmemctl --help should list {command}:\n{out}"
        );
    }
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    let broker = Broker::start_with(BrokerOptions {
        extra_args: &["--log-format", "json"],
        ..BrokerOptions::default()
    });
    broker.ctl_ok(&["create", "logged", "--capacity", "64KiB"]);
    broker.ctl_ok(&["list"]);
    let log = broker.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        !lines.is_empty(),
        "a broker at --log-level debug that served requests logged nothing"
    );
    for line in lines {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line:?}\nwhole log:\n{log}"));
        assert!(value.is_object(), "log line is not a JSON object: {line:?}");
    }
}
