//! Hostile Zenoh peers (`bridge-rogue`): forged items and acks on the key, a flood of small
//! samples against a stalled importer, sessions opened against a listening importer or exporter.

use std::process::{Command, Stdio};
use std::time::Duration;

use shmem_broker_tests::bridge::*;
use shmem_broker_tests::*;

/// A hostile peer on the Zenoh keys (`bridge-rogue`, in host B's namespace) forges an item far
/// ahead of the stream marked "oldest" (with a made-up tag and without one), an ack claiming
/// everything stored, and an importer liveliness token it never acks for, all while real
/// messages flow. With a key file on both bridges every message arrives once, in order, and
/// nothing forged gets in: the importer reports the samples that failed authentication.
/// Without the check, the importer stores the forged item and drops the real ones after it as
/// duplicates (the stream stops, or a message with sequence number u64::MAX shows up).
#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn hostile_publisher_on_the_key_cannot_inject_or_forge_positions() {
    require_root();
    let hosts = Hosts::create();
    let a = Broker::start(None);
    let b = Broker::start(None);
    let state = temp_dir();
    let key_file = state.path().join("bridge.key");
    std::fs::write(&key_file, numbered(0x5eed, 32)).expect("write the key file");
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod the key file");
    let key_arg = ["--key-file", key_file.to_str().expect("utf-8 path")];
    a.ctl_ok(&["create", "out", "--capacity", "256KiB"]);
    let _router = router(&hosts, a.dir());
    let _export = exporter_with(&hosts.a, &a, "out", "test/out", &["hostB"], &key_arg);
    let import = importer_with(
        &hosts.b,
        &b,
        state.path(),
        "in",
        "test/out",
        "hostB",
        &key_arg,
    );
    let mut rogue_cmd = Command::new(require_tool("ip", "iproute2"));
    rogue_cmd
        .args(["netns", "exec", &hosts.b])
        .arg(env!("CARGO_BIN_EXE_bridge-rogue"))
        .args([ROUTER, "test/out", "hostB", "300"]);
    let mut rogue = Proc::start(rogue_cmd, "rogue", b.dir(), Stdio::null(), None);
    wait_for_stdout_or_log(&mut rogue, "forging");
    // The forged samples are flowing before, during and after the real ones.
    std::thread::sleep(Duration::from_millis(500));
    let (count, len) = (3_000u64, 512);
    let producer = produce(a.socket_path().to_path_buf(), "out", count, len);
    let b_socket = b.socket_path().to_path_buf();
    let consumer = Background::spawn("consumer", move || {
        consume_in_order(&connect(&b_socket), "in", count, len, |_| {})
    });
    // A few seconds when nothing forged is believed; an exporter that waits for the rogue's
    // liveliness token (it never acks) holds the stream for as long as the rogue runs.
    consumer.join(Duration::from_secs(60));
    producer.join(WAIT);
    let log = import.stderr_text();
    assert!(
        log.contains("failed authentication"),
        "the importer did not report the forged samples: {log}"
    );
    assert!(
        !log.contains("gap"),
        "the importer stored past a forged position: {log}"
    );
    assert!(
        rogue.is_running(),
        "the rogue stopped early: {}",
        rogue.stderr_text()
    );
}

/// A peer floods the key (no key file: anyone may publish) with small items, each alone in
/// its Zenoh batch, while the importer's channel is full (nobody reads it): the importer's
/// queue fills. A small payload is copied out of Zenoh's receive buffer before it is queued,
/// so the importer stays small (3 MiB more, measured); kept as it came, each 64-byte item pins
/// a receive buffer (67 to 130 MiB more within 10 s, measured, and growing).
#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn small_samples_flooding_a_stalled_importer_do_not_pin_receive_buffers() {
    require_root();
    let hosts = Hosts::create();
    let b = Broker::start(None);
    let state = temp_dir();
    let _router = router(&hosts, b.dir());
    let mut import = importer(&hosts.b, &b, state.path(), "in", "test/out", "hostB");
    let before = vm_rss_kib(import.pid());
    let mut rogue_cmd = Command::new(require_tool("ip", "iproute2"));
    rogue_cmd
        .args(["netns", "exec", &hosts.b])
        .arg(env!("CARGO_BIN_EXE_bridge-rogue"))
        .args([ROUTER, "test/out", "hostB", "300", "flood"]);
    let mut rogue = Proc::start(rogue_cmd, "rogue", b.dir(), Stdio::null(), None);
    wait_for_stdout_or_log(&mut rogue, "forging");
    let mut peak = before;
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(250));
        peak = peak.max(vm_rss_kib(import.pid()));
    }
    eprintln!("importer RSS KiB before {before}, peak {peak}");
    assert!(import.is_running(), "{}", import.stderr_text());
    assert!(
        peak < before + 32 * 1024,
        "the importer grew from {before} KiB to {peak} KiB"
    );
}

/// Anyone who can reach an importing bridge's Zenoh port opens session after session: each
/// link gets the importer's large receive pool, so without a bound on sessions the importer
/// would grow with every connection, up to Zenoh's default of 1000 sessions.
#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn sessions_opened_against_a_listening_importer_are_bounded() {
    require_root();
    let hosts = Hosts::create();
    let b = Broker::start(None);
    let state = temp_dir();
    let socket = b.socket_path().to_str().expect("utf-8 path");
    let state_path = state.path().to_str().expect("utf-8 path");
    let listen = "tcp/10.77.0.2:7449";
    let mut import = bridge(
        &hosts.b,
        b.dir(),
        "import",
        &[
            "import",
            "in",
            "--key",
            "test/out",
            "--name",
            "hostB",
            "--socket",
            socket,
            "--state-dir",
            state_path,
            "--create",
            "1MiB",
            "--mode",
            "peer",
            "--listen",
            listen,
        ],
    );
    wait_for_stdout_or_log(&mut import, "zenoh session open");
    let before = vm_rss_kib(import.pid());
    let (accepted, _rogue) = rogue_sessions(&hosts, &b, listen);
    std::thread::sleep(Duration::from_secs(1));
    let after = vm_rss_kib(import.pid());
    eprintln!("importer RSS KiB before {before}, after {accepted} sessions {after}");
    assert!(import.is_running(), "{}", import.stderr_text());
    // Measured: 2.2 MiB of the importer's memory per session (its receive pool is reserved
    // whole and filled as batches come), 69 MiB for 32 sessions without the bound.
    assert!(accepted <= 16, "the importer accepted {accepted} sessions");
    assert!(
        after < before + 48 * 1024,
        "the importer grew from {before} KiB to {after} KiB"
    );
}

/// Anyone who can reach a listening exporter's Zenoh port opens 32 sessions against it
/// (`bridge-rogue sessions`, from host A): the exporter accepts at most 16, as the importer
/// does. Each accepted session is a link the exporter may queue up to 512 KiB of batches for
/// (a peer that subscribes and stops reading), so without the bound a peer could grow it by
/// that per connection, up to Zenoh's default of 1000 sessions; without it all 32 are accepted.
#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn sessions_opened_against_a_listening_exporter_are_bounded() {
    require_root();
    let hosts = Hosts::create();
    let b = Broker::start(None);
    b.ctl_ok(&["create", "out"]);
    let socket = b.socket_path().to_str().expect("utf-8 path");
    let listen = "tcp/10.77.0.2:7450";
    let mut export = bridge(
        &hosts.b,
        b.dir(),
        "export",
        &[
            "export", "out", "--key", "test/out", "--socket", socket, "--mode", "peer", "--listen",
            listen,
        ],
    );
    wait_for_stdout_or_log(&mut export, "exporting");
    let (accepted, _rogue) = rogue_sessions(&hosts, &b, listen);
    assert!(export.is_running(), "{}", export.stderr_text());
    assert!(accepted <= 16, "the exporter accepted {accepted} sessions");
    assert!(
        accepted > 0,
        "the rogue could not reach the exporter at all"
    );
}

/// `bridge-rogue sessions` from host A: opens 32 sessions against `listen` and holds them for
/// 30 s. Returns how many the listener accepted, and the rogue (which holds them while it
/// lives).
fn rogue_sessions(hosts: &Hosts, broker: &Broker, listen: &str) -> (usize, Proc) {
    let mut rogue_cmd = Command::new(require_tool("ip", "iproute2"));
    rogue_cmd
        .args(["netns", "exec", &hosts.a])
        .arg(env!("CARGO_BIN_EXE_bridge-rogue"))
        .args(["sessions", listen, "32", "30"]);
    let rogue = Proc::start(rogue_cmd, "rogue", broker.dir(), Stdio::null(), None);
    // A refused session takes up to its 2 s connect timeout.
    wait_for(Duration::from_secs(120), "the rogue's sessions", || {
        let log = rogue.stderr_text();
        log.contains("connected").then_some(()).ok_or(log)
    });
    let accepted = rogue
        .stderr_text()
        .lines()
        .find_map(|line| line.strip_prefix("connected ")?.trim().parse().ok())
        .expect("the rogue's count");
    (accepted, rogue)
}
