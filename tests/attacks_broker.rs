//! Attacks on the broker process itself, against the real binary:
//!
//! 1. a client passing a TCP socket whose close lingers 20 s (with a request, or left unread in
//!    a connection the broker then closes) must not stall anyone else's requests;
//! 2. a socket directory another user controls must be refused (they could swap the socket for
//!    a symlink and have a root broker chmod any file), and the socket gets its mode without a
//!    path;
//! 3. client-supplied names cannot forge log lines or smuggle terminal escapes, and one peer's
//!    flood of warnings is bounded.
//!
//! Kernels before 6.16 have no `SO_PASSRIGHTS`, so fds do reach the broker there: the fd
//! attacks also run against a broker that meets such a kernel
//! ([`shmem_broker_tests::old_kernel`]).

use serde_json::{json, Value};
use shmem_broker_tests::old_kernel::start_broker_without_so_passrights;
use shmem_broker_tests::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long another uid's request may take while an attack is under way.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);
/// The linger the attacker sets; a stalled broker would take about this long to answer.
const LINGER: Duration = Duration::from_secs(20);
/// An uid that is neither root nor nobody, as the attacker owning a directory.
const ATTACKER: u32 = 1000;

// ---------------------------------------------------------------------------------------------
// 1. A lingering socket passed to the broker

/// A TCP connection to a loopback listener that never accepts or reads, with its send buffer
/// full (unsent data the peer's zero window holds back) and `SO_LINGER` 20 s: the last close of
/// it sleeps until the linger runs out. The listener must outlive the attack.
fn lingering_socket() -> (TcpListener, OwnedFd) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback TCP listener");
    let addr = listener.local_addr().expect("its address");
    let mut stream = TcpStream::connect(addr).expect("connect to it");
    stream.set_nonblocking(true).expect("O_NONBLOCK");
    let chunk = vec![0x5au8; 64 * 1024];
    let mut sent = 0usize;
    let deadline = Instant::now() + WAIT;
    loop {
        match stream.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                // The peer's receive buffer may still be taking data in; full once it stays put.
                std::thread::sleep(Duration::from_millis(50));
                match stream.write(&chunk) {
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("fill the TCP socket: {e}"),
                }
            }
            Err(e) => panic!("fill the TCP socket: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "the TCP socket never filled ({sent} bytes)"
        );
    }
    rustix::net::sockopt::set_socket_linger(&stream, Some(LINGER)).expect("SO_LINGER 20 s");
    (listener, OwnedFd::from(stream))
}

/// The last lines of a broker log, for a failure message.
fn last_lines(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Runs `shmemctl status` as nobody and returns how long it took; it must succeed.
fn timed_status_of_another_uid(broker: &Broker) -> Duration {
    let started = Instant::now();
    let out = broker.ctl_as(NOBODY, &["status"]);
    let took = started.elapsed();
    assert!(out.success(), "status as nobody: {out}");
    took
}

fn connect_raw(socket: &Path) -> UnixStream {
    UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()))
}

/// On this kernel (6.16+) the broker refuses passed fds at the socket: the attacker's
/// `sendmsg` fails with EPERM, nothing is queued, and everyone is served at once.
#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn passing_a_lingering_socket_is_refused_by_the_kernel() {
    require_root();
    let broker = Broker::start_with(BrokerOptions {
        world_searchable_dir: true,
        ..BrokerOptions::default()
    });
    if broker.log().contains("refuses_passed_fds: false") {
        eprintln!("SKIPPED the kernel check: this kernel has no SO_PASSRIGHTS (before 6.16)");
        return;
    }
    let (_tcp_listener, tcp) = lingering_socket();
    let stream = connect_raw(broker.socket_path());
    let frame = request_frame(1, br#"{"op":"status"}"#);
    let sent = shmem_broker_client::fdpass::send_with_fds(stream.as_fd(), &frame, &[tcp.as_fd()]);
    assert_eq!(
        sent.map_err(|e| e.raw_os_error()),
        Err(Some(libc::EPERM)),
        "the kernel should refuse fds sent to the broker"
    );
    drop(tcp);
    let took = timed_status_of_another_uid(&broker);
    assert!(took < ANSWER_WITHIN, "status as nobody took {took:?}");
}

/// Without SO_PASSRIGHTS (older kernel): a request carrying the lingering socket is answered,
/// the socket is closed off the event loop, and another uid's status answers at once.
#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn a_lingering_socket_sent_with_a_request_does_not_stall_other_clients() {
    require_root();
    let (broker, _started_by) = start_broker_without_so_passrights(MINIMAL_CONFIG);
    assert!(
        !broker.log().contains("refuses_passed_fds: true"),
        "the broker should see a kernel without SO_PASSRIGHTS: {}",
        broker.log()
    );
    let (_tcp_listener, tcp) = lingering_socket();
    let mut stream = connect_raw(broker.socket_path());
    let frame = request_frame(7, br#"{"op":"list"}"#);
    let sent = shmem_broker_client::fdpass::send_with_fds(stream.as_fd(), &frame, &[tcp.as_fd()])
        .expect("sendmsg a request with the lingering socket");
    assert_eq!(sent, frame.len());
    drop(tcp); // the broker now holds the last reference
    std::thread::sleep(Duration::from_millis(200));
    let took = timed_status_of_another_uid(&broker);
    assert!(
        took < ANSWER_WITHIN,
        "status as nobody took {took:?}: the broker stalled closing the lingering socket"
    );
    let started = Instant::now();
    let reply = read_one_frame(&mut stream, WAIT);
    assert_eq!((reply.id, reply.json()["ok"].clone()), (7, json!(true)));
    assert!(
        started.elapsed() < ANSWER_WITHIN,
        "the attacker's own request was answered only after {:?}",
        started.elapsed()
    );
    wait_for(WAIT, "the stray fd to be logged", || {
        if broker.log().contains("uninvited") {
            Ok(())
        } else {
            Err("no `uninvited` line yet".to_string())
        }
    });
}

/// Without SO_PASSRIGHTS: the lingering socket waits unread in the queue of a connection
/// the broker stopped reading (its replies are not read), then the client hangs up; closing
/// that connection must not stall the broker.
/// 3000 `status` requests in one buffer: more replies than the broker's send buffer holds.
fn status_flood() -> Vec<u8> {
    let mut flood = Vec::new();
    for id in 0..3000u32 {
        flood.extend_from_slice(&request_frame(id, br#"{"op":"status"}"#));
    }
    flood
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn a_lingering_socket_left_unread_in_a_closed_connection_does_not_stall_other_clients() {
    require_root();
    let (broker, _started_by) = start_broker_without_so_passrights(MINIMAL_CONFIG);
    let (_tcp_listener, tcp) = lingering_socket();
    let stream = connect_raw(broker.socket_path());
    // Requests whose replies are never read: the broker's send buffer fills and it stops
    // reading this connection until it can write again.
    (&stream)
        .write_all(&status_flood())
        .expect("send the flood");
    std::thread::sleep(Duration::from_millis(500));
    let sent = shmem_broker_client::fdpass::send_with_fds(stream.as_fd(), b" ", &[tcp.as_fd()])
        .expect("queue the lingering socket behind the flood");
    assert_eq!(sent, 1);
    drop(tcp);
    std::thread::sleep(Duration::from_millis(200));
    drop(stream); // the broker closes its end, the lingering socket still in its queue
    std::thread::sleep(Duration::from_millis(200));
    let took = timed_status_of_another_uid(&broker);
    assert!(
        took < ANSWER_WITHIN,
        "status as nobody took {took:?}: the broker stalled closing the connection"
    );
    assert!(
        !broker.log().contains("uninvited"),
        "the fd should have stayed unread in the queue (the test did not attack what it says)"
    );
}

/// A connection made before the broker turned passed fds off on its listener (socket
/// activation: this connection is what starts the broker) can hold an fd queued before it was
/// accepted. The broker closes connections that refuse fds and have nothing left unread on its
/// event loop; this one must still go to a closer thread, or its close would sleep out the
/// linger there.
#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn a_lingering_socket_queued_before_the_broker_started_does_not_stall_other_clients() {
    require_root();
    let broker = Broker::start_socket_activated(None);
    let (_tcp_listener, tcp) = lingering_socket();
    let stream = connect_raw(broker.socket_path());
    // Sent at once, while the broker is still starting: the listener it inherits from
    // systemd-socket-activate took fds when this connection was made.
    (&stream)
        .write_all(&status_flood())
        .expect("send the flood");
    let sent = shmem_broker_client::fdpass::send_with_fds(stream.as_fd(), b" ", &[tcp.as_fd()])
        .expect("queue the lingering socket before the broker is up");
    assert_eq!(sent, 1);
    drop(tcp);
    // The broker starts, answers until its send buffer is full and stops reading.
    std::thread::sleep(Duration::from_millis(500));
    drop(stream);
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let out = broker.ctl_timeout(&["status"], LINGER * 2);
    let took = started.elapsed();
    assert!(out.success(), "status: {out}");
    assert!(
        took < ANSWER_WITHIN,
        "status took {took:?}: the broker stalled closing the connection"
    );
    let log = broker.log();
    assert!(
        log.contains("refuses_passed_fds: true") && !log.contains("uninvited"),
        "the broker should refuse fds from then on and the fd stay unread in the queue (the \
         test did not attack what it says):\n{}",
        last_lines(&log)
    );
}

// ---------------------------------------------------------------------------------------------
// 2. The socket directory and the socket's mode

/// A root-owned 0755 temp dir, so uid 1000 can reach what is created in it.
fn searchable_temp_dir() -> tempfile::TempDir {
    let dir = temp_dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod 0755 the temp dir");
    dir
}

fn broker_command(dir: &Path, socket: &Path, config: &str) -> Command {
    let config_path = dir.join("broker.toml");
    std::fs::write(&config_path, config).expect("write the config");
    let mut cmd = shmem_broker_testkit::broker::command(&broker_bin(), socket);
    cmd.arg("--config").arg(&config_path);
    cmd
}

/// The broker failed, saying all of `needles` on stderr; returns its stderr.
fn expect_refusal(out: &CmdOutput, needles: &[&str]) -> String {
    assert!(!out.success(), "the broker should refuse to start: {out}");
    for needle in needles {
        assert!(
            out.stderr.contains(needle),
            "stderr lacks {needle:?}: {out}"
        );
    }
    out.stderr.clone()
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn root_broker_refuses_a_socket_directory_owned_by_another_user() {
    require_root();
    let dir = searchable_temp_dir();
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).expect("mkdir");
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::os::unix::fs::chown(&theirs, Some(ATTACKER), Some(ATTACKER)).expect("chown");
    let socket = theirs.join("control.sock");
    let out = run(
        broker_command(dir.path(), &socket, MINIMAL_CONFIG),
        "broker",
        dir.path(),
        Stdio::null(),
        WAIT,
    );
    let refusal = format!("refusing socket directory {}", theirs.display());
    let stderr = expect_refusal(&out, &[&refusal, "owned by uid 1000", "0755", "symlink"]);
    assert!(!socket.exists(), "nothing may be bound there: {stderr}");

    // Root-owned but writable by others, even sticky: refused for the socket's own directory.
    let open = dir.path().join("open");
    std::fs::create_dir(&open).expect("mkdir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let out = run(
        broker_command(dir.path(), &open.join("control.sock"), MINIMAL_CONFIG),
        "broker",
        dir.path(),
        Stdio::null(),
        WAIT,
    );
    expect_refusal(
        &out,
        &[
            "refusing socket directory",
            "1777",
            "writable by group or others",
        ],
    );

    // A parent the broker would create the directory in, owned by the attacker: refused too.
    let nested = theirs.join("made/by/broker/control.sock");
    let out = run(
        broker_command(dir.path(), &nested, MINIMAL_CONFIG),
        "broker",
        dir.path(),
        Stdio::null(),
        WAIT,
    );
    expect_refusal(&out, &["refusing socket directory", "owned by uid 1000"]);
    assert!(
        !theirs.join("made/by").exists(),
        "created into their directory"
    );
}

#[test]
fn socket_gets_socket_mode_under_a_restrictive_umask() {
    for mode in ["0660", "0666", "0600"] {
        let dir = temp_dir();
        let socket = dir.path().join("control.sock");
        let config = format!("version = 1\nsocket_mode = \"{mode}\"\n");
        let mut cmd = broker_command(dir.path(), &socket, &config);
        // SAFETY: umask(2) is async-signal-safe and touches nothing but the child's umask.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0o077);
                Ok(())
            });
        }
        let mut broker = Proc::start(cmd, "broker", dir.path(), Stdio::null(), None);
        let answered = shmem_broker_testkit::broker::wait_until_answers(&socket, WAIT, || {
            broker.try_status().map(|status| status.to_string())
        });
        if let Err(why) = answered {
            panic!("{why}: {}", broker.stderr_text());
        }
        let got = std::fs::symlink_metadata(&socket).expect("lstat").mode() & 0o7777;
        assert_eq!(
            format!("{got:04o}"),
            mode,
            "socket mode under umask 077 with socket_mode {mode}"
        );
        broker.signal(libc::SIGTERM);
        broker.wait_exit(WAIT);
    }
}

const RACE_SOCKET: &str = "SHMEM_TEST_RACE_SOCKET";
const RACE_VICTIM: &str = "SHMEM_TEST_RACE_VICTIM";
const RACE_UNTIL: &str = "SHMEM_TEST_RACE_SECS";

/// Not a test: the attacker (uid 1000, owner of the socket's directory). Whenever the socket
/// appears it swaps it for a symlink to the victim file, and clears leftover symlinks so the
/// next broker start gets going.
#[test]
#[ignore = "helper process body: started by root_broker_never_chmods_through_a_swapped_symlink"]
fn helper_swap_socket_for_symlink() {
    if !is_helper_process() {
        return;
    }
    let socket = PathBuf::from(std::env::var_os(RACE_SOCKET).expect("socket path"));
    let victim = PathBuf::from(std::env::var_os(RACE_VICTIM).expect("victim path"));
    let secs: u64 = std::env::var(RACE_UNTIL)
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("seconds");
    let staged = socket.with_file_name("staged-link");
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut swaps = 0u64;
    while Instant::now() < deadline {
        if let Ok(meta) = std::fs::symlink_metadata(&socket) {
            if meta.file_type().is_symlink() {
                continue;
            }
            let _ = std::fs::remove_file(&staged);
            if std::os::unix::fs::symlink(&victim, &staged).is_ok()
                && std::fs::rename(&staged, &socket).is_ok()
            {
                swaps += 1;
            }
        }
    }
    println!("SWAPS {swaps}");
}

/// The attack itself: root brokers start again and again on a socket in uid 1000's directory
/// while uid 1000 swaps the socket for a symlink to a root-owned 0600 file. The file's mode
/// must never change (with `chmod(path)` after `bind` it became the socket mode).
#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn root_broker_never_chmods_through_a_swapped_symlink() {
    require_root();
    let dir = searchable_temp_dir();
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).expect("mkdir");
    std::os::unix::fs::chown(&theirs, Some(ATTACKER), Some(ATTACKER)).expect("chown");
    let victim_dir = dir.path().join("root-only");
    std::fs::create_dir(&victim_dir).expect("mkdir");
    let victim = victim_dir.join("shadow");
    std::fs::write(&victim, "secret\n").expect("write the victim");
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let socket = theirs.join("control.sock");

    let exe = std::env::current_exe().expect("test binary");
    let copy = dir.path().join("attacker-helper");
    std::fs::copy(&exe, &copy).expect("copy the test binary");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let race_secs = 6;
    let mut attacker = Command::new(&copy);
    attacker
        .args([
            "--exact",
            "helper_swap_socket_for_symlink",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
            "--quiet",
        ])
        .env(HELPER_ENV, "1")
        .env(RACE_SOCKET, &socket)
        .env(RACE_VICTIM, &victim)
        .env(RACE_UNTIL, race_secs.to_string())
        .uid(ATTACKER)
        .gid(ATTACKER);
    let mut attacker = Proc::start(attacker, "attacker", dir.path(), Stdio::null(), None);

    let config = "version = 1\nsocket_mode = \"0666\"\n";
    let deadline = Instant::now() + Duration::from_secs(race_secs - 1);
    let mut starts = 0;
    while Instant::now() < deadline {
        starts += 1;
        let mut broker = Proc::start(
            broker_command(dir.path(), &socket, config),
            "broker",
            dir.path(),
            Stdio::null(),
            None,
        );
        // Give it time to bind (old code) or refuse (new code), then stop it.
        let started = Instant::now();
        while broker.is_running() && started.elapsed() < Duration::from_millis(100) {
            std::thread::sleep(Duration::from_millis(2));
        }
        if broker.is_running() {
            broker.kill9();
        }
        let mode = std::fs::metadata(&victim).expect("stat the victim").mode() & 0o7777;
        assert_eq!(
            mode, 0o600,
            "start {starts}: root changed the victim's mode through the swapped symlink; broker stderr: {}",
            broker.stderr_text()
        );
    }
    attacker.wait_exit(WAIT);
    eprintln!(
        "{starts} broker starts raced the attacker ({})",
        attacker.stdout_text().trim()
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Log injection and flooding

const FORGED: &str = "\n... INFO channel dropped, channel: secret, peer_uid: 0";
const ESCAPE: &str = "\x1b[31m";

/// A create by nobody (refused, and logged with the channel name) and an attach by root to a
/// channel that does not exist, both naming `evil`.
fn send_injections(broker: &Broker, evil: &str) {
    let out = broker.ctl_as(NOBODY, &["create", evil]);
    assert!(!out.success(), "create by nobody must be refused: {out}");
    let mut stream = connect_raw(broker.socket_path());
    let body = json!({"op": "attach", "channel": evil, "role": "consumer"}).to_string();
    stream
        .write_all(&request_frame(1, body.as_bytes()))
        .expect("send the attach");
    let reply = read_one_frame(&mut stream, WAIT);
    assert_eq!(reply.json()["ok"], false, "{}", reply.json());
    wait_for(WAIT, "the refusal to be logged", || {
        if broker.log().contains("secret") {
            Ok(())
        } else {
            Err("no line mentions the name yet".to_string())
        }
    });
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn names_with_newlines_and_escapes_cannot_forge_term_log_lines() {
    require_root();
    let broker = Broker::start_with(BrokerOptions {
        world_searchable_dir: true,
        extra_args: &["--log-format", "term"],
        ..BrokerOptions::default()
    });
    let evil = format!("cam{FORGED}{ESCAPE}red");
    send_injections(&broker, &evil);
    let log = broker.log();
    assert!(!log.contains('\x1b'), "a raw ESC reached the log:\n{log}");
    for line in log.lines() {
        assert!(
            !line.starts_with("..."),
            "a forged line in the log: {line:?}\n{log}"
        );
        if line.contains("channel dropped, channel: secret") {
            assert!(
                line.contains("cam\\n... INFO") && line.contains("\\u{1b}[31mred"),
                "the name should appear escaped within its own line: {line:?}"
            );
        }
    }
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn names_with_newlines_and_escapes_stay_inside_json_log_values() {
    require_root();
    let broker = Broker::start_with(BrokerOptions {
        world_searchable_dir: true,
        extra_args: &["--log-format", "json"],
        ..BrokerOptions::default()
    });
    let evil = format!("cam{FORGED}\u{202e}{ESCAPE}red");
    send_injections(&broker, &evil);
    let log = broker.log();
    assert!(!log.contains('\x1b'), "a raw ESC reached the log:\n{log}");
    let mut seen = 0;
    for line in log.lines() {
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line:?}"));
        let Some(channel) = value["channel"].as_str() else {
            continue;
        };
        if channel.contains("secret") {
            seen += 1;
            assert!(
                !channel.contains(['\n', '\x1b', '\u{202e}']),
                "control characters reached a JSON value: {channel:?}"
            );
            assert!(
                channel.contains("\\n... INFO") && channel.contains("\\u{202e}\\u{1b}[31m"),
                "{channel:?}"
            );
        }
    }
    assert!(seen >= 1, "the refusals should be logged:\n{log}");
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn a_flood_of_bad_requests_is_rate_limited_per_uid_and_others_are_still_logged() {
    require_root();
    let broker = Broker::start_with(BrokerOptions {
        world_searchable_dir: true,
        extra_args: &["--log-format", "json"],
        ..BrokerOptions::default()
    });
    let started = Instant::now();
    let mut stream = connect_raw(broker.socket_path());
    let mut flood = Vec::new();
    for id in 1..=2000u32 {
        flood.extend_from_slice(&request_frame(id, b"{not json"));
    }
    let mut reader = stream.try_clone().expect("clone the stream");
    let replies = std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = reader.read_to_end(&mut sink);
        sink
    });
    stream.write_all(&flood).expect("send 2,000 bad requests");
    // Another uid's event while root is over budget: still logged.
    let out = broker.ctl_as(NOBODY, &["create", "nobodys-channel"]);
    assert!(!out.success(), "create by nobody must be refused: {out}");
    stream
        .write_all(&request_frame(9999, br#"{"op":"status"}"#))
        .expect("send a last request");
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let bytes = replies.join().expect("reader thread");
    let (frames, _) = parse_frames(&bytes);
    assert!(
        frames.iter().any(|f| f.id == 9999),
        "every request is still answered ({} replies)",
        frames.len()
    );
    let elapsed = started.elapsed().as_secs();
    let entries = |log: &str| -> Vec<Value> {
        log.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .collect()
    };
    let summary = wait_for(WAIT, "the suppressed-count line for uid 0", || {
        entries(&broker.log())
            .into_iter()
            .find(|e| e["peer_uid"] == 0 && e["suppressed"].as_u64().is_some())
            .ok_or_else(|| "none yet".to_string())
    });
    let log = entries(&broker.log());
    let bad = log
        .iter()
        .filter(|e| e["msg"] == "bad request" && e["peer_uid"] == 0)
        .count() as u64;
    let budget = 10 + elapsed + 2;
    assert!(
        bad <= budget,
        "{bad} `bad request` lines for one uid in {elapsed} s (budget {budget})"
    );
    let suppressed = summary["suppressed"].as_u64().unwrap_or(0);
    assert!(
        bad + suppressed >= 2000 - 2 && suppressed > 0,
        "{bad} logged + {suppressed} suppressed should account for 2,000 bad requests: {summary}"
    );
    assert!(
        log.iter()
            .any(|e| e["peer_uid"] == NOBODY && e["channel"] == "nobodys-channel"),
        "nobody's refused create should still be logged"
    );
}
