//! Hostile clients and peers against the real broker: uninvited fds, stalled connections,
//! connection floods and quotas, attempts to unseal or resize the ring, scribbled ring headers,
//! and a consumer that never reads. Each test names the claim of SECURITY.md it checks.
//!
//! Tests that act as another uid (65534) run as root and switch with setpriv; outside CI they
//! skip with a message when not root.

use serde_json::{json, Value};
use shmem_broker_client::ring::{ReadOutcome, RingFds, RingReader, RingWriter, SharedRing};
use shmem_broker_client::{Client, Error};
use shmem_broker_tests::old_kernel::start_broker_without_so_passrights;
use shmem_broker_tests::raw_ring::{Mapping, ACK_READ_POS};
use shmem_broker_tests::*;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Helpers

fn connect_raw(socket: &Path) -> UnixStream {
    UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()))
}

/// Sends one request on a raw connection and returns the reply body (which must carry `id`).
fn call(stream: &mut UnixStream, id: u32, request: &Value) -> Value {
    stream
        .write_all(&request_frame(id, request.to_string().as_bytes()))
        .unwrap_or_else(|e| panic!("send {request}: {e}"));
    let reply = read_one_frame(stream, WAIT);
    assert_eq!(
        (reply.kind, reply.id),
        (KIND_REPLY, id),
        "reply to {request}"
    );
    reply.json()
}

/// The entry for `quota` in a `status` result's `quotas` array.
fn quota<'a>(status: &'a Value, name: &str) -> &'a Value {
    json_array(status, "quotas")
        .iter()
        .find(|q| q["quota"] == name)
        .unwrap_or_else(|| panic!("status has no quota {name:?}: {status}"))
}

/// Waits until `stream` is closed by the broker; returns how long that took from `since`.
fn expect_closed_within(
    stream: &mut UnixStream,
    since: Instant,
    within: Duration,
    what: &str,
) -> Duration {
    match read_until_closed(stream, within.saturating_sub(since.elapsed())) {
        ConnectionEnd::Closed(bytes) => {
            let (frames, _) = parse_frames(&bytes);
            for frame in frames {
                assert_ne!(
                    frame.json()["ok"],
                    true,
                    "{what}: answered with success before the close"
                );
            }
            since.elapsed()
        }
        ConnectionEnd::StillOpen(bytes) => panic!(
            "{what}: still open {:?} after connecting (received {} bytes)",
            since.elapsed(),
            bytes.len()
        ),
    }
}

fn attach_error<T>(result: Result<T, Error>, what: &str) -> Error {
    match result {
        Ok(_) => panic!("{what} succeeded"),
        Err(e) => e,
    }
}

/// Test payload `i`: a numbered message (testkit) of `len` bytes, at least its header.
fn payload(i: u64, len: usize) -> Vec<u8> {
    stamp::numbered(0, i, len.max(stamp::HEADER))
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
// 1. File descriptors sent to the broker are closed

/// On kernels with `SO_PASSRIGHTS` the kernel refuses such fds outright
/// (`attacks_broker::passing_a_lingering_socket_is_refused_by_the_kernel`); this is the broker
/// on an older kernel, where they arrive.
#[test]
fn fds_sent_to_the_broker_are_closed_and_the_request_is_still_answered() {
    let (broker, _filter) = start_broker_without_so_passrights(MINIMAL_CONFIG);
    let pid = broker.pid();
    let mut stream = connect_raw(broker.socket_path());
    // Start from a quiet broker: only this connection (the start-up probes have gone).
    let mut id = 0;
    wait_for(
        WAIT,
        "the broker to hold only the test's connection",
        || {
            id += 1;
            let status = call(&mut stream, id, &json!({"op": "status"}));
            match status["result"]["clients"].as_u64() {
                Some(1) => Ok(()),
                _ => Err(status.to_string()),
            }
        },
    );
    let baseline = open_fd_count(pid);

    // Three fds the broker never asked for. Whether it closed its copies is visible from here:
    // a pipe's read end sees EOF only once every copy of the write end is closed, and writing
    // fails with EPIPE only once every copy of the read end is.
    let (eof_probe, write_end_given) = rustix::pipe::pipe().expect("pipe");
    let (read_end_given, epipe_probe) = rustix::pipe::pipe().expect("pipe");
    let memfd = rustix::fs::memfd_create("stray-fd-from-test", rustix::fs::MemfdFlags::CLOEXEC)
        .expect("memfd_create");
    rustix::fs::fcntl_setfl(&eof_probe, rustix::fs::OFlags::NONBLOCK).expect("O_NONBLOCK");
    rustix::fs::fcntl_setfl(&epipe_probe, rustix::fs::OFlags::NONBLOCK).expect("O_NONBLOCK");

    let frame = request_frame(100, br#"{"op":"list"}"#);
    let fds = [
        write_end_given.as_fd(),
        read_end_given.as_fd(),
        memfd.as_fd(),
    ];
    let sent = shmem_broker_client::fdpass::send_with_fds(stream.as_fd(), &frame, &fds)
        .expect("sendmsg a request with 3 fds");
    assert_eq!(sent, frame.len(), "the whole frame went out in one sendmsg");
    drop(write_end_given);
    drop(read_end_given);
    let reply = read_one_frame(&mut stream, WAIT);
    assert_eq!(reply.id, 100);
    let body = reply.json();
    assert_eq!(
        body["ok"], true,
        "a request that came with fds must still be answered: {body}"
    );
    assert!(body["result"]["channels"].is_array(), "list reply: {body}");

    wait_for(
        WAIT,
        "the broker to close the write end of our pipe",
        || match rustix::io::read(&eof_probe, &mut [0u8; 8]) {
            Ok(0) => Ok(()),
            other => Err(format!(
                "read on the pipe's read end: {other:?} (EOF expected)"
            )),
        },
    );
    wait_for(
        WAIT,
        "the broker to close the read end of our pipe",
        || match rustix::io::write(&epipe_probe, b"x") {
            Err(rustix::io::Errno::PIPE) => Ok(()),
            other => Err(format!(
                "write on the pipe's write end: {other:?} (EPIPE expected)"
            )),
        },
    );
    wait_for(
        WAIT,
        "the broker's fd count to return to its level before",
        || {
            let now = open_fd_count(pid);
            let memfds: Vec<String> = open_fd_targets(pid)
                .into_iter()
                .filter(|t| t.contains("stray-fd-from-test"))
                .collect();
            if now == baseline && memfds.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{now} fds open (baseline {baseline}), our memfd held: {memfds:?}"
                ))
            }
        },
    );

    // Many more, some on frames split so the fds arrive with half a header: still closed, and
    // every request still answered.
    for i in 0..100u32 {
        let frame = request_frame(1000 + i, br#"{"op":"status"}"#);
        let copies: Vec<OwnedFd> = (0..3)
            .map(|_| memfd.try_clone().expect("dup the memfd"))
            .collect();
        let borrowed: Vec<BorrowedFd<'_>> = copies.iter().map(|fd| fd.as_fd()).collect();
        let split = if i % 2 == 0 { frame.len() } else { 7 };
        let sent =
            shmem_broker_client::fdpass::send_with_fds(stream.as_fd(), &frame[..split], &borrowed)
                .expect("sendmsg with fds");
        stream
            .write_all(&frame[sent..])
            .expect("send the rest of the frame");
        drop(copies);
        let reply = read_one_frame(&mut stream, WAIT);
        assert_eq!(reply.id, 1000 + i);
        assert_eq!(reply.json()["ok"], true, "request {i}: {}", reply.json());
    }
    wait_for(
        WAIT,
        "the broker's fd count to return to its level before",
        || {
            let now = open_fd_count(pid);
            let held = open_fd_targets(pid)
                .into_iter()
                .filter(|t| t.contains("stray-fd-from-test"))
                .count();
            if now == baseline && held == 0 {
                Ok(())
            } else {
                Err(format!(
                    "{now} fds open (baseline {baseline}), {held} copies of our memfd held"
                ))
            }
        },
    );
    assert!(
        broker.log().contains("uninvited"),
        "the broker should log the stray fds"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. request_timeout closes stalled connections, not attached or idle ones

#[test]
fn stalled_connections_are_closed_after_request_timeout_but_attached_and_idle_ones_stay() {
    let broker = Broker::start(Some("version = 1\nrequest_timeout = \"1s\"\n"));
    broker.ctl_ok(&["create", "idle", "--capacity", "64KiB"]);
    let recv = broker.spawn_ctl(&["recv", "idle", "--follow"], Stdio::null(), None);
    broker.wait_for_peer("idle", recv.pid(), "consumer");
    let client = broker.client();
    client
        .status()
        .expect("a first request on the control connection");

    // One connection that sends nothing, one that sends half a header.
    let opened = Instant::now();
    let mut silent = connect_raw(broker.socket_path());
    let mut half = connect_raw(broker.socket_path());
    half.write_all(&frame_header(1, KIND_REQUEST, 1, 15)[..7])
        .expect("send half a header");
    let closed_after = expect_closed_within(
        &mut silent,
        opened,
        Duration::from_secs(5),
        "a silent connection",
    );
    let half_closed_after = expect_closed_within(
        &mut half,
        opened,
        Duration::from_secs(5),
        "a connection that sent half a header",
    );
    for (what, after) in [("silent", closed_after), ("half-header", half_closed_after)] {
        assert!(
            after >= Duration::from_millis(900),
            "the {what} connection was closed after {after:?}, before request_timeout = 1s"
        );
    }

    // Let one more full timeout pass, measured the same way, so the attached consumer and the
    // control connection have now been idle for more than twice request_timeout.
    let opened = Instant::now();
    let mut clock = connect_raw(broker.socket_path());
    expect_closed_within(
        &mut clock,
        opened,
        Duration::from_secs(5),
        "a second silent connection",
    );

    let peer = broker.wait_for_peer("idle", recv.pid(), "consumer");
    assert_eq!(json_str(&peer, "role"), "consumer");
    let channels = client
        .list()
        .expect("a control connection idle beyond request_timeout still works");
    assert!(
        channels.iter().any(|c| c.name == "idle"),
        "list: {channels:?}"
    );
    let mut producer = client.producer("idle").expect("attach a producer");
    // A newline, because `shmemctl recv` writes through a line-buffered stdout.
    producer.send(b"after the idle spell\n").expect("send");
    wait_for(WAIT, "the idle consumer to receive the message", || {
        let got = recv.stdout_text();
        if got == "after the idle spell\n" {
            Ok(())
        } else {
            Err(format!("its stdout: {got:?}"))
        }
    });
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

// ---------------------------------------------------------------------------------------------
// 5. The ring memfd is sealed: no shrinking, growing or further sealing

/// Everything a hostile peer could try on the ring fd to resize it or make it read-only.
fn assert_ring_fd_is_sealed(ring: &OwnedFd, ring_size: u64) {
    use rustix::fs::SealFlags;
    // A writable fd meets the seals (EPERM); a read-only one (the other side's memfd, since
    // layout 3) is refused before they matter (EBADF or EINVAL: not open for writing).
    let writable = rustix::fs::fcntl_getfl(ring)
        .expect("F_GETFL")
        .contains(rustix::fs::OFlags::RDWR);
    let refused = |result: rustix::io::Result<()>| match result {
        Err(rustix::io::Errno::PERM) => true,
        Err(rustix::io::Errno::BADF | rustix::io::Errno::INVAL) => !writable,
        _ => false,
    };
    let size = || rustix::fs::fstat(ring).expect("fstat the ring").st_size as u64;
    assert_eq!(
        size(),
        ring_size,
        "the ring memfd has the announced ring_size"
    );
    let seals = rustix::fs::fcntl_get_seals(ring).expect("F_GET_SEALS on the ring");
    for (seal, name) in [
        (SealFlags::SHRINK, "F_SEAL_SHRINK"),
        (SealFlags::GROW, "F_SEAL_GROW"),
        (SealFlags::SEAL, "F_SEAL_SEAL"),
    ] {
        assert!(seals.contains(seal), "ring seals {seals:?} lack {name}");
    }
    for (len, what) in [
        (ring_size - 4096, "smaller"),
        (0, "to zero"),
        (ring_size + 4096, "larger"),
    ] {
        assert!(
            refused(rustix::fs::ftruncate(ring, len)),
            "ftruncate {what} ({len} bytes) must fail"
        );
    }
    assert!(
        refused(rustix::fs::fallocate(
            ring,
            rustix::fs::FallocateFlags::empty(),
            ring_size,
            4096
        )),
        "fallocate past the end must fail"
    );
    assert!(
        refused(rustix::io::pwrite(ring, b"grow", ring_size).map(drop)),
        "pwrite past the end must fail"
    );
    for (seal, name) in [
        (SealFlags::WRITE, "F_SEAL_WRITE"),
        (SealFlags::FUTURE_WRITE, "F_SEAL_FUTURE_WRITE"),
    ] {
        assert_eq!(
            rustix::fs::fcntl_add_seals(ring, seal),
            Err(rustix::io::Errno::PERM),
            "F_ADD_SEALS {name} must fail with EPERM"
        );
    }
    assert_eq!(size(), ring_size, "the ring kept its size");
    assert_eq!(
        rustix::fs::fcntl_get_seals(ring).expect("F_GET_SEALS"),
        seals,
        "the seals did not change"
    );
}

fn attach_capacity(raw: &RawAttach) -> (u64, u64) {
    let result = json_field(&raw.reply, "result");
    (json_u64(result, "capacity"), json_u64(result, "ring_size"))
}

#[test]
fn consumer_cannot_resize_or_reseal_the_ring_and_the_producer_keeps_working() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "sealed-c", "--capacity", "64KiB"]);
    let client = broker.client();
    let mut producer = client
        .producer("sealed-c")
        .expect("attach a library producer");
    for i in 0..10 {
        producer.send(&payload(i, 1000 + i as usize)).expect("send");
    }
    let mut raw = raw_attach(broker.socket_path(), "sealed-c", "consumer");
    let (capacity, ring_size) = attach_capacity(&raw);
    assert_ring_fd_is_sealed(&raw.fds[0], ring_size);
    assert_ring_fd_is_sealed(&raw.fds[1], 4096);
    // The producer goes on (a shrunk file would SIGBUS it here) ...
    for i in 10..20 {
        producer
            .send(&payload(i, 1000 + i as usize))
            .expect("send after the attack");
    }
    // ... and the data is intact, read through the very fd we attacked.
    let (ring, ack) = (raw.fds.remove(0), raw.fds.remove(0));
    let fds = RingFds {
        ring,
        ack: Some(ack),
    };
    let ring = SharedRing::open(fds, capacity).expect("the ring still passes the library's checks");
    let mut reader = RingReader::new(ring).expect("a reader on the ring");
    let mut message = Vec::new();
    for i in 0..20 {
        assert_eq!(
            reader.try_read_into(&mut message).expect("read"),
            ReadOutcome::Message,
            "message {i}"
        );
        assert!(
            message == payload(i, 1000 + i as usize),
            "message {i} is intact"
        );
    }
    assert_eq!(
        reader.try_read_into(&mut message).expect("read"),
        ReadOutcome::Empty
    );
    broker.ctl_ok(&["list"]);
}

#[test]
fn producer_cannot_resize_or_reseal_the_ring_and_the_consumer_keeps_working() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "sealed-p", "--capacity", "64KiB"]);
    let client = broker.client();
    let mut consumer = client
        .consumer("sealed-p")
        .expect("attach a library consumer");
    let mut raw = raw_attach(broker.socket_path(), "sealed-p", "producer");
    let (capacity, ring_size) = attach_capacity(&raw);
    assert_ring_fd_is_sealed(&raw.fds[0], ring_size);
    assert_ring_fd_is_sealed(&raw.fds[1], 4096);
    let data_ready = raw.fds.remove(2);
    let (ring, ack) = (raw.fds.remove(0), raw.fds.remove(0));
    let fds = RingFds {
        ring,
        ack: Some(ack),
    };
    let ring = SharedRing::open(fds, capacity).expect("the ring still passes the library's checks");
    let mut writer = RingWriter::new(ring).expect("a writer on the ring");
    for i in 0..20u64 {
        let message = payload(i, 500 + i as usize);
        assert!(
            writer
                .try_write_with(message.len(), |slot| slot.copy_from_slice(&message))
                .expect("write"),
            "room for message {i}"
        );
    }
    if writer.take_consumer_waiting() {
        rustix::io::write(&data_ready, &1u64.to_ne_bytes()).expect("wake the consumer");
    }
    let received = with_deadline(
        WAIT,
        "the library consumer to receive 20 messages",
        move || (0..20).map(|_| consumer.recv()).collect::<Vec<_>>(),
    );
    for (i, message) in received.into_iter().enumerate() {
        let message = message
            .unwrap_or_else(|e| panic!("recv {i}: {e}"))
            .unwrap_or_else(|| panic!("recv {i}: unexpected end-of-stream"));
        assert!(
            message == payload(i as u64, 500 + i),
            "message {i} is intact"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 6. A peer scribbling on the ring gets the other side a "corrupt ring" error, nothing worse

const WRITE_POS: usize = 64;
const DATA: usize = 4096;

/// After a scribble: the broker still serves, and dropping and re-creating the channel gives
/// a working channel of the same name.
fn assert_channel_can_be_recreated(broker: &mut Broker, name: &str) {
    broker.assert_running();
    broker.ctl_ok(&["list"]);
    let channels = broker.list();
    let channel =
        find_channel(&channels, name).unwrap_or_else(|| panic!("{name} listed: {channels:?}"));
    assert!(
        json_u64(channel, "bytes_unread") <= json_u64(channel, "capacity"),
        "counters read from a scribbled ring are clamped: {channel}"
    );
    broker.ctl_ok(&["drop", name]);
    broker.ctl_ok(&["create", name, "--capacity", "64KiB"]);
    let client = broker.client();
    let mut producer = client
        .producer(name)
        .expect("attach a producer to the new channel");
    let mut consumer = client
        .consumer(name)
        .expect("attach a consumer to the new channel");
    producer
        .send(b"fresh start")
        .expect("send on the new channel");
    let got = consumer.recv().expect("recv on the new channel");
    assert_eq!(got.as_deref(), Some(&b"fresh start"[..]));
    broker.assert_running();
}

/// An honest library consumer and a raw producer attachment that scribbles with `scribble`;
/// returns what the consumer's `recv` says.
fn consumer_error_after_scribble(
    broker: &Broker,
    name: &str,
    scribble: impl FnOnce(&Mapping),
) -> String {
    broker.ctl_ok(&["create", name, "--capacity", "64KiB"]);
    let client = broker.client();
    let mut consumer = client.consumer(name).expect("attach the honest consumer");
    let raw = raw_attach(broker.socket_path(), name, "producer");
    let (_, ring_size) = attach_capacity(&raw);
    let map = Mapping::new(raw.fd("ring"), ring_size);
    // The consumer waits for data while the peer scribbles.
    let waiting = Background::spawn("the honest consumer's recv", move || {
        match consumer.recv() {
            Ok(message) => Err(format!("recv returned {message:?} from a scribbled ring")),
            Err(e) => Ok(e.to_string()),
        }
    });
    scribble(&map);
    rustix::io::write(raw.fd("data_ready"), &1u64.to_ne_bytes()).expect("wake the consumer");
    let result = waiting.join(WAIT);
    drop(map);
    drop(raw);
    result.unwrap_or_else(|e| panic!("{e}"))
}

fn assert_corrupt_ring_error(error: &str, name: &str, detail: &str) {
    for needle in ["corrupt ring", name, detail] {
        assert!(
            error.contains(needle),
            "the error should mention {needle:?}: {error}"
        );
    }
}

#[test]
fn scribbled_write_position_is_a_corrupt_ring_error_for_the_consumer() {
    let mut broker = Broker::start(None);
    let error = consumer_error_after_scribble(&broker, "scribble-pos", |map| {
        map.write_u64(WRITE_POS, 0xDEAD_BEEF_DEAD_BEEF);
    });
    assert_corrupt_ring_error(&error, "scribble-pos", "positions out of range");
    assert_channel_can_be_recreated(&mut broker, "scribble-pos");
}

#[test]
fn scribbled_frame_length_is_a_corrupt_ring_error_for_the_consumer() {
    let mut broker = Broker::start(None);
    let error = consumer_error_after_scribble(&broker, "scribble-len", |map| {
        map.write_u32(DATA, 0x00FF_FFF0); // a data frame far larger than what is published
        map.write_u32(DATA + 4, 1);
        map.write_u64(WRITE_POS, 16);
    });
    assert_corrupt_ring_error(&error, "scribble-len", "overruns");
    assert_channel_can_be_recreated(&mut broker, "scribble-len");
}

#[test]
fn scribbled_frame_kind_is_a_corrupt_ring_error_for_the_consumer() {
    let mut broker = Broker::start(None);
    let error = consumer_error_after_scribble(&broker, "scribble-kind", |map| {
        map.write_u32(DATA, 8);
        map.write_u32(DATA + 4, 0x4242);
        map.write_u64(WRITE_POS, 32); // a 16-byte header and 8 bytes padded to 16
    });
    assert_corrupt_ring_error(&error, "scribble-kind", "unknown frame kind");
    assert_channel_can_be_recreated(&mut broker, "scribble-kind");
}

#[test]
fn scribbled_read_position_is_a_corrupt_ring_error_for_the_producer() {
    let mut broker = Broker::start(None);
    broker.ctl_ok(&["create", "scribble-read", "--capacity", "64KiB"]);
    let client = broker.client();
    let mut producer = client
        .producer("scribble-read")
        .expect("attach the honest producer");
    producer.send(b"before").expect("send before the scribble");
    let raw = raw_attach(broker.socket_path(), "scribble-read", "consumer");
    let map = Mapping::new(raw.fd("ack"), 4096);
    map.write_u64(ACK_READ_POS, 1 << 40);
    // The producer may go on using room it already knows is free (it never overwrites unread
    // data that way); it must report the scribble, at the latest, when it needs to look at
    // the consumer's position again: within one ring's worth of frames (a 16-byte header and
    // the 5 bytes padded to 16).
    let frames_per_ring = 64 * 1024 / 32;
    let mut sent = 0;
    let error = loop {
        match producer.try_send(b"after") {
            Ok(()) if sent <= frames_per_ring => sent += 1,
            Ok(()) => {
                panic!("{sent} messages went into a 64 KiB ring whose read position is garbage")
            }
            Err(e) => break e.to_string(),
        }
    };
    assert_corrupt_ring_error(&error, "scribble-read", "positions out of range");
    drop(map);
    drop(raw);
    drop(producer);
    assert_channel_can_be_recreated(&mut broker, "scribble-read");
}

// ---------------------------------------------------------------------------------------------
// 7. A consumer that never reads only stalls its own producer

#[test]
fn consumer_that_never_reads_blocks_only_its_own_producer() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "stuck", "--capacity", "64KiB"]);
    broker.ctl_ok(&["create", "bulk", "--capacity", "1MiB"]);
    let client = broker.client();
    let mut lazy = client
        .consumer("stuck")
        .expect("attach the consumer that never reads");
    let mut stuck = client.producer("stuck").expect("attach its producer");

    // try_send fills the ring, then reports would-block.
    let message = vec![0x5au8; 1024];
    let sent = fill_ring(&mut stuck, &message, 64);
    assert!(
        sent >= 60,
        "only {sent} KiB fit in a 64 KiB ring before would-block"
    );
    let blocked = Background::spawn("send into a full ring", move || {
        stuck.send(&message).map(|()| stuck)
    });

    // Another channel moves 64 MiB meanwhile, and the broker keeps answering.
    const MESSAGES: u64 = 1024;
    const LEN: usize = 64 * 1024;
    let mut producer = client.producer("bulk").expect("attach the bulk producer");
    let mut consumer = client.consumer("bulk").expect("attach the bulk consumer");
    let started = Instant::now();
    let sender = Background::spawn("bulk producer", move || {
        let mut buf = vec![0u8; LEN];
        for i in 0..MESSAGES {
            stamp::stamp_ends(&mut buf, i);
            producer.send(&buf)?;
        }
        producer.close()
    });
    let receiver = Background::spawn("bulk consumer", move || -> Result<u64, String> {
        let mut buf = Vec::new();
        let mut count = 0u64;
        while consumer.recv_into(&mut buf).map_err(|e| e.to_string())? {
            stamp::check_ends(&buf, LEN, count)?;
            count += 1;
        }
        Ok(count)
    });
    let mut slowest = Duration::ZERO;
    while !receiver.is_finished() && started.elapsed() < Duration::from_secs(30) {
        let asked = Instant::now();
        let channels = client.list().expect("list while data flows");
        slowest = slowest.max(asked.elapsed());
        assert_eq!(channels.len(), 2);
        std::thread::sleep(Duration::from_millis(20));
    }
    sender.join(WAIT).expect("the bulk producer");
    let count = receiver
        .join(WAIT)
        .unwrap_or_else(|e| panic!("bulk consumer: {e}"));
    assert_eq!(count, MESSAGES, "64 MiB in 64 KiB messages");
    assert!(
        slowest < Duration::from_millis(500),
        "list took {slowest:?} while data flowed"
    );

    // The producer of the stuck channel is still blocked (after the whole 64 MiB went by) ...
    assert!(
        !blocked.is_finished(),
        "send into a full ring returned without any consumer reading"
    );
    let info = broker.info("stuck");
    assert_eq!(json_u64(&info, "messages_read"), 0, "{info}");
    // ... and it was waiting for room: one read lets it finish.
    let first = lazy.recv().expect("recv").expect("a message");
    assert_eq!(first.len(), 1024);
    let stuck = blocked
        .join(WAIT)
        .expect("the blocked send completes once there is room");
    drop(stuck);
    drop(lazy);
}

#[test]
fn a_consumer_scribbling_its_fanout_ring_is_cut_off_and_the_others_keep_receiving() {
    let mut broker = Broker::start(None);
    let client = broker.client();
    client
        .channel("mob")
        .capacity(64 << 10)
        .max_consumers(2)
        .create()
        .expect("create a channel with two consumers");
    let mut honest = client.consumer("mob").expect("attach the honest consumer");
    let raw = raw_attach_any(broker.socket_path(), "mob", "consumer");
    assert_eq!(
        raw.reply["result"]["fds"],
        json!(["control", "wait", "ring", "ack", "wake"]),
        "a fan-out attach: {}",
        raw.reply
    );
    let map = Mapping::new(raw.lanes()[0].ack, 4096);
    let mut producer = client.producer("mob").expect("attach the producer");
    assert_eq!(producer.consumers(), 2);
    // The hostile consumer claims a read position the producer never wrote; the producer
    // finds out when it next looks at that position (the ring is full from its view).
    map.write_u64(ACK_READ_POS, 12_345);
    const COUNT: u64 = 2000;
    let reading = Background::spawn("the honest consumer", move || {
        for i in 0..COUNT {
            let got = honest.recv().expect("recv").expect("a message");
            assert_eq!(got, payload(i, 100), "message {i} to the honest consumer");
        }
    });
    for i in 0..COUNT {
        producer
            .send(&payload(i, 100))
            .unwrap_or_else(|e| panic!("send {i} must not fail for a peer's scribbling: {e}"));
    }
    reading.join(WAIT);
    assert_eq!(
        producer.consumers(),
        1,
        "the producer stopped writing to the scribbled ring"
    );
    // The broker disconnects nobody for a ring found corrupt: either side can write its
    // positions, so the producer's flag cannot say who broke them, and the ring is all it
    // costs (attacks_fanout.rs: a producer's flag does not cut a consumer off either). The
    // scribbler stays attached, and its ring is replaced with an empty one once it leaves.
    let mut stream = raw.stream;
    std::thread::sleep(Duration::from_millis(1500));
    match read_until_closed(&mut stream, Duration::from_millis(200)) {
        ConnectionEnd::StillOpen(_) => {}
        ConnectionEnd::Closed(bytes) => panic!(
            "the broker disconnected a consumer on a producer's word: {:?}",
            String::from_utf8_lossy(&bytes)
        ),
    }
    assert!(
        !broker.log().contains("slow consumers disconnected"),
        "{}",
        broker.log()
    );
    drop(map);
    broker.assert_running();
}
