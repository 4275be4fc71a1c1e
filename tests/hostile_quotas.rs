//! Hostile clients against the real broker: connection floods, attach storms and the quotas
//! that refuse them, naming the quota. Each test names the claim of SECURITY.md it checks.
//!
//! Tests that act as another uid (65534) run as root and switch with setpriv, through a helper
//! process (a test of this file run again as that uid); outside CI they skip with a message
//! when not root.

use serde_json::{json, Value};
use shmem_broker_client::{Client, Error};
use shmem_broker_tests::hostile_common::*;
use shmem_broker_tests::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::Instant;

/// The entry for `quota` in a `status` result's `quotas` array.
fn quota<'a>(status: &'a Value, name: &str) -> &'a Value {
    json_array(status, "quotas")
        .iter()
        .find(|q| q["quota"] == name)
        .unwrap_or_else(|| panic!("status has no quota {name:?}: {status}"))
}

fn attach_error<T>(result: Result<T, Error>, what: &str) -> Error {
    match result {
        Ok(_) => panic!("{what} succeeded"),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------------------
// Helper process: a uid-65534 client that opens many connections at once

const HELPER_SOCKET: &str = "SHMEM_TEST_HELPER_SOCKET";
const HELPER_REQUESTS: &str = "SHMEM_TEST_HELPER_REQUESTS";
const REPLY_LINE: &str = "HELPER-REPLY ";
const DONE_LINE: &str = "HELPER-DONE";

/// Not a test: the body of a helper process started by [`spawn_connection_helper`]. For each
/// request in `$SHMEM_TEST_HELPER_REQUESTS` (a JSON array) it opens a new connection, sends the
/// request, prints the reply as `HELPER-REPLY {"i","us","reply"}` and keeps the connection open;
/// then prints `HELPER-DONE` and holds everything open until its stdin closes.
#[test]
#[ignore = "helper process body: started by other tests in this file"]
fn helper_open_connections() {
    if !is_helper_process() {
        return;
    }
    let socket = std::env::var_os(HELPER_SOCKET).expect("helper: socket path in the environment");
    let requests: Vec<Value> = serde_json::from_str(
        &std::env::var(HELPER_REQUESTS).expect("helper: requests in the environment"),
    )
    .expect("helper: requests are a JSON array");
    let start = Instant::now();
    let mut held = Vec::new();
    let mut out = std::io::stdout().lock();
    for (i, request) in requests.iter().enumerate() {
        let line = match UnixStream::connect(&socket) {
            Err(e) => json!({"i": i, "error": format!("connect: {e}")}),
            Ok(mut stream) => {
                let id = i as u32 + 1;
                write_tolerating_close(
                    &mut stream,
                    &request_frame(id, request.to_string().as_bytes()),
                );
                let us = start.elapsed().as_micros() as u64;
                let line = match read_until_reply_or_closed(&mut stream, WAIT) {
                    ConnectionEnd::StillOpen(bytes) | ConnectionEnd::Closed(bytes) => {
                        match parse_frames(&bytes).0.first() {
                            Some(frame) => {
                                json!({"i": i, "us": us, "id": frame.id, "reply": frame.json()})
                            }
                            None => {
                                json!({"i": i, "us": us, "error": format!("no reply ({} bytes)", bytes.len())})
                            }
                        }
                    }
                };
                held.push(stream);
                line
            }
        };
        writeln!(out, "{REPLY_LINE}{line}").expect("helper: write stdout");
    }
    writeln!(out, "{DONE_LINE}").expect("helper: write stdout");
    out.flush().expect("helper: flush stdout");
    drop(out);
    let mut rest = Vec::new();
    // Holds the connections until the test closes our stdin.
    let _ = std::io::stdin().read_to_end(&mut rest);
    drop(held);
}

/// Starts [`helper_open_connections`] as `uid` with `requests`; returns it (stdin piped: drop
/// the returned stdin to let it go) once it has printed every reply, and the replies.
fn spawn_connection_helper(
    broker: &Broker,
    uid: u32,
    requests: &[Value],
) -> (Proc, std::process::ChildStdin, Vec<Value>) {
    let mut cmd = self_exec_command_as(broker, uid, "helper_open_connections");
    cmd.env(HELPER_SOCKET, broker.socket_path())
        .env(HELPER_REQUESTS, Value::Array(requests.to_vec()).to_string());
    let mut helper = Proc::start(
        cmd,
        "helper-connections",
        broker.dir(),
        Stdio::piped(),
        None,
    );
    let stdin = helper.take_stdin().expect("piped stdin of the helper");
    wait_for_stdout_line(&mut helper, DONE_LINE, WAIT * 3);
    let replies: Vec<Value> = helper
        .stdout_text()
        .lines()
        .filter_map(|l| l.strip_prefix(REPLY_LINE))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("helper line {l:?}: {e}")))
        .collect();
    assert_eq!(replies.len(), requests.len(), "helper replies: {replies:?}");
    (helper, stdin, replies)
}

fn broker_reachable_by_nobody(config: &str) -> Broker {
    Broker::start_with(BrokerOptions {
        config: Some(config),
        world_searchable_dir: true,
        ..BrokerOptions::default()
    })
}

// ---------------------------------------------------------------------------------------------
// 3. Connection floods hit the per-uid and total client quotas

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn connection_flood_from_one_uid_is_refused_beyond_per_uid_max_clients() {
    require_root();
    let broker = broker_reachable_by_nobody("version = 1\n[per_uid]\nmax_clients = 20\n");

    // Its own status shows uid 65534 its usage against the per-uid quota.
    let status = serde_json::from_str::<Value>(
        broker
            .ctl_as(NOBODY, &["status", "--json"])
            .expect_success(),
    )
    .expect("status --json is JSON");
    let mine = quota(&status, "per_uid.max_clients");
    assert_eq!(
        (
            mine["uid"].as_u64(),
            mine["used"].as_u64(),
            mine["limit"].as_u64()
        ),
        (Some(u64::from(NOBODY)), Some(1), Some(20)),
        "status as uid 65534: {status}"
    );

    let requests = vec![json!({"op": "status"}); 50];
    let (mut helper, stdin, replies) = spawn_connection_helper(&broker, NOBODY, &requests);
    for (i, line) in replies.iter().enumerate() {
        let reply = &line["reply"];
        if i < 20 {
            assert_eq!(
                reply["ok"],
                true,
                "connection {} of 20 allowed: {line}",
                i + 1
            );
            let usage = quota(&reply["result"], "per_uid.max_clients");
            assert_eq!(
                (
                    usage["used"].as_u64(),
                    usage["limit"].as_u64(),
                    usage["uid"].as_u64()
                ),
                (Some(i as u64 + 1), Some(20), Some(u64::from(NOBODY))),
                "usage seen by connection {}: {line}",
                i + 1
            );
        } else {
            assert_eq!(
                reply["ok"],
                false,
                "connection {} is beyond the quota: {line}",
                i + 1
            );
            assert_eq!(reply["error"]["code"], "limit_reached", "{line}");
            let message = reply["error"]["message"].as_str().unwrap_or_default();
            for needle in ["per_uid.max_clients = 20", "uid 65534"] {
                assert!(
                    message.contains(needle),
                    "refusal should name {needle:?}: {line}"
                );
            }
        }
    }

    // Meanwhile root is served, and sees the 20 connections.
    broker.ctl_ok(&["list"]);
    let status = broker.status();
    assert!(json_u64(&status, "clients") >= 21, "status: {status}");

    // Closing the connections gives the quota back.
    drop(stdin);
    helper.wait_exit(WAIT);
    wait_for(WAIT, "uid 65534 to be served again", || {
        let out = broker.ctl_as(NOBODY, &["status", "--json"]);
        if !out.success() {
            return Err(out.to_string());
        }
        let status: Value = serde_json::from_str(&out.stdout).map_err(|e| e.to_string())?;
        let used = quota(&status, "per_uid.max_clients")["used"].as_u64();
        if used == Some(1) {
            Ok(())
        } else {
            Err(status.to_string())
        }
    });
}

/// A raw connection, once the start-up probes are gone and it is the broker's only client.
fn only_connection(broker: &Broker) -> UnixStream {
    wait_for(
        WAIT,
        "the broker to hold only the test's connection",
        || {
            let mut stream = connect_raw(broker.socket_path());
            let status = call(&mut stream, 1, &json!({"op": "status"}));
            match status["result"]["clients"].as_u64() {
                Some(1) => Ok(stream),
                _ => Err(status.to_string()),
            }
        },
    )
}

#[test]
fn connections_beyond_max_clients_are_refused_naming_the_quota_even_for_root() {
    let broker = Broker::start(Some("version = 1\nmax_clients = 5\n"));
    // Wait until the start-up probes are gone and ours is the only connection.
    let first = only_connection(&broker);
    let mut held = vec![first];
    for n in 2..=5u64 {
        let mut stream = connect_raw(broker.socket_path());
        let status = call(&mut stream, 1, &json!({"op": "status"}));
        assert_eq!(
            status["result"]["clients"].as_u64(),
            Some(n),
            "connection {n}: {status}"
        );
        held.push(stream);
    }
    let mut sixth = connect_raw(broker.socket_path());
    write_tolerating_close(&mut sixth, &request_frame(1, br#"{"op":"status"}"#));
    let bytes = match read_until_reply_or_closed(&mut sixth, WAIT) {
        ConnectionEnd::Closed(bytes) | ConnectionEnd::StillOpen(bytes) => bytes,
    };
    let (frames, _) = parse_frames(&bytes);
    let reply = frames
        .first()
        .unwrap_or_else(|| panic!("the 6th connection got no reply ({} bytes)", bytes.len()))
        .json();
    assert_eq!(
        reply["ok"], false,
        "6th connection with max_clients = 5: {reply}"
    );
    assert_eq!(reply["error"]["code"], "limit_reached", "{reply}");
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("max_clients = 5"),
        "refusal should name the quota: {reply}"
    );
    // Root is held to the totals too.
    let mut seventh = connect_raw(broker.socket_path());
    write_tolerating_close(&mut seventh, &request_frame(1, br#"{"op":"list"}"#));
    let bytes = match read_until_reply_or_closed(&mut seventh, WAIT) {
        ConnectionEnd::Closed(bytes) | ConnectionEnd::StillOpen(bytes) => bytes,
    };
    let (frames, _) = parse_frames(&bytes);
    let reply = frames.first().map(Frame::json);
    assert_eq!(
        reply
            .as_ref()
            .and_then(|r| r["error"]["message"].as_str())
            .map(|m| m.contains("max_clients = 5")),
        Some(true),
        "root's 6th connection should be refused naming max_clients = 5: {reply:?}"
    );

    drop(held.pop());
    wait_for(WAIT, "a freed connection slot to be usable", || {
        let out = broker.ctl(&["list"]);
        if out.success() {
            Ok(())
        } else {
            Err(out.to_string())
        }
    });
}

#[test]
fn a_client_refused_at_connect_reports_the_quota_not_a_broken_pipe() {
    // The broker refuses a connection over quota by sending an error reply (id 0) and closing.
    // A client that writes its request after that close must still report the broker's reason.
    let broker = Broker::start(Some("version = 1\nmax_clients = 1\n"));
    let hold = only_connection(&broker);
    let refusals_before = broker.log().matches("client refused").count();
    let client = Client::connect(broker.socket_path()).expect("connect() itself succeeds");
    wait_for(
        WAIT,
        "the broker to refuse the library's connection",
        || {
            let refusals = broker.log().matches("client refused").count();
            if refusals > refusals_before {
                Ok(())
            } else {
                Err(format!("{refusals} refusals logged"))
            }
        },
    );
    let error = attach_error(client.status(), "status over max_clients = 1").to_string();
    assert!(
        error.contains("max_clients = 1"),
        "the library should report the broker's refusal (quota max_clients = 1), got: {error}"
    );
    drop(hold);
}

// ---------------------------------------------------------------------------------------------
// 4. Quotas on create and on attach

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn create_quotas_refuse_naming_the_quota_and_its_value() {
    require_root();
    let broker = broker_reachable_by_nobody(
        "version = 1\nadmin_groups = [\"65534\"]\nmax_channels = 4\nmax_ring_bytes = \"1MiB\"\n\
         [per_uid]\nmax_channels = 2\nmax_ring_bytes = \"192KiB\"\n",
    );
    // uid 65534 (an admin through its group) may own 2 channels...
    broker
        .ctl_as(NOBODY, &["create", "n1", "--capacity", "64KiB"])
        .expect_success();
    broker
        .ctl_as(NOBODY, &["create", "n2", "--capacity", "64KiB"])
        .expect_success();
    broker
        .ctl_as(NOBODY, &["create", "n3", "--capacity", "4KiB"])
        .expect_error(&["per_uid.max_channels = 2", "uid 65534"]);
    // ... of at most 192 KiB together.
    broker.ctl_as(NOBODY, &["drop", "n2"]).expect_success();
    broker
        .ctl_as(NOBODY, &["create", "n2", "--capacity", "192KiB"])
        .expect_error(&["per_uid.max_ring_bytes = 192KiB", "uid 65534"]);
    broker
        .ctl_as(NOBODY, &["create", "n2", "--capacity", "128KiB"])
        .expect_success();
    let status: Value = serde_json::from_str(
        broker
            .ctl_as(NOBODY, &["status", "--json"])
            .expect_success(),
    )
    .expect("status --json is JSON");
    assert_eq!(
        quota(&status, "per_uid.max_channels")["used"].as_u64(),
        Some(2),
        "{status}"
    );
    assert_eq!(
        quota(&status, "per_uid.max_ring_bytes")["used"].as_u64(),
        Some(192 * 1024),
        "{status}"
    );

    // Root is held only to the totals: 1 MiB of rings, 4 channels.
    broker.ctl_ok(&["create", "r1", "--capacity", "512KiB"]);
    broker
        .ctl(&["create", "r2", "--capacity", "512KiB"])
        .expect_error(&["max_ring_bytes = 1MiB"]);
    broker.ctl_ok(&["create", "r2", "--capacity", "4KiB"]);
    broker
        .ctl(&["create", "r3", "--capacity", "4KiB"])
        .expect_error(&["max_channels = 4"]);
    let names: Vec<String> = broker
        .list()
        .iter()
        .map(|c| json_str(c, "name").to_string())
        .collect();
    assert_eq!(
        names,
        ["n1", "n2", "r1", "r2"],
        "refused creates must leave nothing behind"
    );
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn attach_storm_from_one_uid_is_refused_beyond_max_attaches_per_sec() {
    require_root();
    let broker = broker_reachable_by_nobody("version = 1\n[per_uid]\nmax_attaches_per_sec = 5\n");
    let client = broker.client();
    let names: Vec<String> = (0..12).map(|i| format!("r{i}")).collect();
    for name in &names {
        client
            .channel(name)
            .capacity(4096)
            .consumers([NOBODY.to_string()])
            .create()
            .unwrap_or_else(|e| panic!("create {name}: {e}"));
    }
    let requests: Vec<Value> = names
        .iter()
        .map(|name| json!({"op": "attach", "channel": name, "role": "consumer"}))
        .collect();
    let (_helper, _stdin, replies) = spawn_connection_helper(&broker, NOBODY, &requests);
    let ok: Vec<bool> = replies.iter().map(|l| l["reply"]["ok"] == true).collect();
    let span_s = (replies[replies.len() - 1]["us"].as_u64().unwrap_or(0)
        - replies[0]["us"].as_u64().unwrap_or(0)) as f64
        / 1e6;
    assert!(
        ok[..5].iter().all(|&o| o),
        "a burst of 5 is allowed: {replies:?}"
    );
    // A token bucket of 5/s admits at most 5 + 5 per second elapsed (+1 for rounding).
    let allowed = 5 + (5.0 * span_s).ceil() as usize;
    let admitted = ok.iter().filter(|&&o| o).count();
    assert!(
        admitted <= allowed,
        "{admitted} of 12 attaches within {span_s:.3}s were admitted, at most {allowed} expected: {replies:?}"
    );
    for line in replies.iter().filter(|l| l["reply"]["ok"] != true) {
        let reply = &line["reply"];
        assert_eq!(reply["error"]["code"], "limit_reached", "{line}");
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        for needle in ["max_attaches_per_sec = 5", "uid 65534"] {
            assert!(
                message.contains(needle),
                "refusal should name {needle:?}: {line}"
            );
        }
    }
    assert!(admitted < 12, "no attach was refused: {replies:?}");

    // Root is not rate-limited: 12 attaches in a row all succeed.
    let held: Vec<RawAttach> = names
        .iter()
        .map(|name| raw_attach(broker.socket_path(), name, "producer"))
        .collect();
    assert_eq!(held.len(), 12);
}
