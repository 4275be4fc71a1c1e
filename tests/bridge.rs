//! shmem-bridge between two simulated hosts: two network namespaces joined by a veth pair
//! (10.77.0.1/24 and 10.77.0.2/24, inside those namespaces only), a broker per host, a Zenoh
//! router (`shmem-bridge router`) in host A's namespace, an exporting bridge in A and importing
//! bridges in B, all real processes. Needs root (namespaces) and `ip` (iproute2).
//!
//! Messages in these tests carry their own sequence number, so "nothing lost, nothing
//! repeated, in order" is checked message by message; bulk transfers check a SHA-256.
//!
//! One file of about 750 lines on purpose: its eleven tests share the two-host lab (namespaces,
//! veth, brokers, router) defined here, and each is one independent case of the bridge.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shmem_broker_tests::*;

const ROUTER: &str = "tcp/10.77.0.1:7447";

static NETNS_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Two namespaces ("hosts") joined by a veth pair; deleted on drop (which deletes the veth).
struct Hosts {
    a: String,
    b: String,
    veth_a: String,
    veth_b: String,
}

fn ip(args: &[&str]) {
    let out = Command::new(require_tool("ip", "iproute2"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Hosts {
    fn new() -> Hosts {
        let n = NETNS_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}x{n}", std::process::id());
        let hosts = Hosts {
            a: format!("shbrA{tag}"),
            b: format!("shbrB{tag}"),
            veth_a: format!("sba{tag}"),
            veth_b: format!("sbb{tag}"),
        };
        ip(&["netns", "add", &hosts.a]);
        ip(&["netns", "add", &hosts.b]);
        ip(&[
            "link",
            "add",
            &hosts.veth_a,
            "type",
            "veth",
            "peer",
            "name",
            &hosts.veth_b,
        ]);
        ip(&["link", "set", &hosts.veth_a, "netns", &hosts.a]);
        ip(&["link", "set", &hosts.veth_b, "netns", &hosts.b]);
        for (ns, dev, addr) in [
            (&hosts.a, &hosts.veth_a, "10.77.0.1/24"),
            (&hosts.b, &hosts.veth_b, "10.77.0.2/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        hosts
    }

    /// `ip link set dev up|down` on both ends of the link.
    fn link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.a, "link", "set", &self.veth_a, state]);
        ip(&["-n", &self.b, "link", "set", &self.veth_b, state]);
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn bridge_bin() -> PathBuf {
    binary("shmem-bridge")
}

/// `ip netns exec NS shmem-bridge ARGS` (ip execs the bridge in place: its pid is the bridge's).
fn bridge(ns: &str, log_dir: &Path, label: &str, args: &[&str]) -> Proc {
    let mut cmd = Command::new(require_tool("ip", "iproute2"));
    cmd.args(["netns", "exec", ns])
        .arg(bridge_bin())
        .args(args)
        .args(["--log-level", "debug"]);
    Proc::start(cmd, label, log_dir, Stdio::null(), None)
}

fn router(hosts: &Hosts, log_dir: &Path) -> Proc {
    let mut router = bridge(&hosts.a, log_dir, "router", &["router", "--listen", ROUTER]);
    wait_for_stdout_or_log(&mut router, "zenoh router running");
    router
}

fn wait_for_stdout_or_log(proc: &mut Proc, needle: &str) {
    wait_for(
        WAIT,
        format!("{needle:?} in the log of `{}`", proc.command_line()),
        || {
            if let Some(status) = proc.try_status() {
                panic!(
                    "`{}` exited ({status}): {}",
                    proc.command_line(),
                    proc.stderr_text()
                );
            }
            let log = proc.stderr_text();
            if log.contains(needle) {
                Ok(())
            } else {
                Err(log.lines().last().unwrap_or("").to_string())
            }
        },
    );
}

fn exporter(ns: &str, broker: &Broker, channel: &str, key: &str, importers: &[&str]) -> Proc {
    exporter_with(ns, broker, channel, key, importers, &[])
}

/// [`exporter`] with more arguments.
fn exporter_with(
    ns: &str,
    broker: &Broker,
    channel: &str,
    key: &str,
    importers: &[&str],
    extra: &[&str],
) -> Proc {
    let socket = broker
        .socket_path()
        .to_str()
        .expect("utf-8 path")
        .to_string();
    let mut args = vec![
        "export",
        channel,
        "--key",
        key,
        "--socket",
        &socket,
        "--mode",
        "client",
        "--connect",
        ROUTER,
    ];
    for name in importers {
        args.extend(["--importer", name]);
    }
    args.extend(extra);
    let mut proc = bridge(ns, broker.dir(), "export", &args);
    wait_for_stdout_or_log(&mut proc, "exporting");
    proc
}

fn importer(ns: &str, broker: &Broker, state: &Path, channel: &str, key: &str, name: &str) -> Proc {
    importer_with(ns, broker, state, channel, key, name, &[])
}

/// [`importer`] with more arguments.
fn importer_with(
    ns: &str,
    broker: &Broker,
    state: &Path,
    channel: &str,
    key: &str,
    name: &str,
    extra: &[&str],
) -> Proc {
    let socket = broker.socket_path().to_str().expect("utf-8 path");
    let state = state.to_str().expect("utf-8 path");
    let mut args = vec![
        "import",
        channel,
        "--key",
        key,
        "--name",
        name,
        "--socket",
        socket,
        "--state-dir",
        state,
        "--create",
        "1MiB",
        "--mode",
        "client",
        "--connect",
        ROUTER,
    ];
    args.extend(extra);
    let mut proc = bridge(ns, broker.dir(), "import", &args);
    wait_for_stdout_or_log(&mut proc, "importing");
    proc
}

/// One exported channel from host A to host B: brokers, router, exporter, importer.
struct Link {
    hosts: Hosts,
    a: Broker,
    b: Broker,
    state: tempfile::TempDir,
    _router: Proc,
    export: Proc,
    import: Proc,
}

/// `link_one`'s exporter: channel "out" on host A to key test/out, waiting for importer hostB.
fn link_exporter(hosts: &Hosts, a: &Broker) -> Proc {
    exporter(&hosts.a, a, "out", "test/out", &["hostB"])
}

/// `link_one`'s importer: key test/out into channel "in" on host B, as hostB, its record in
/// `state` (a restarted one resumes from there).
fn link_importer(hosts: &Hosts, b: &Broker, state: &Path) -> Proc {
    importer(&hosts.b, b, state, "in", "test/out", "hostB")
}

fn link_one(capacity: &str) -> Link {
    let hosts = Hosts::new();
    let a = Broker::start(None);
    let b = Broker::start(None);
    let state = temp_dir();
    a.ctl_ok(&["create", "out", "--capacity", capacity]);
    b.ctl_ok(&["create", "in", "--capacity", capacity]);
    let router = router(&hosts, a.dir());
    let export = link_exporter(&hosts, &a);
    let import = link_importer(&hosts, &b, state.path());
    Link {
        hosts,
        a,
        b,
        state,
        _router: router,
        export,
        import,
    }
}

/// A numbered message: 8-byte sequence number, then `len - 8` bytes derived from it.
/// Message `seq` of a test stream (testkit's numbered messages), at least a header long.
fn numbered(seq: u64, len: usize) -> Vec<u8> {
    stamp::numbered(0, seq, len.max(stamp::HEADER))
}

/// The sequence number of a message made by [`numbered`] that is `len` long; fails the test
/// on a torn, shortened or corrupted one.
fn seq_of(message: &[u8], len: usize) -> u64 {
    assert_eq!(message.len(), len.max(stamp::HEADER), "message length");
    stamp::check_numbered(message)
        .unwrap_or_else(|e| panic!("corrupted message: {e}"))
        .1
}

/// Sends `count` numbered messages into `channel`, then end-of-stream.
fn produce(socket: PathBuf, channel: &'static str, count: u64, len: usize) -> Background<()> {
    Background::spawn("producer", move || {
        let client = connect(&socket);
        let mut producer = client.producer(channel).expect("attach producer");
        for seq in 0..count {
            producer.send(&numbered(seq, len)).expect("send");
        }
        producer.close().expect("close");
    })
}

/// Receives until end-of-stream, asserting each message is the next number exactly (nothing
/// lost, nothing repeated, in order) and intact; `each` runs after every message.
fn consume_in_order(
    client: &shmem_broker_client::Client,
    channel: &str,
    count: u64,
    len: usize,
    mut each: impl FnMut(u64),
) {
    consume_across_importer_restarts(client, channel, count, len, false, &mut each)
}

/// [`consume_in_order`], where `importer_restarts`: the importer (the channel's producer) is
/// stopped and started again, and each stop is reported once as a stream that did not end.
fn consume_across_importer_restarts(
    client: &shmem_broker_client::Client,
    channel: &str,
    count: u64,
    len: usize,
    importer_restarts: bool,
    each: &mut dyn FnMut(u64),
) {
    let mut consumer = client.consumer(channel).expect("attach consumer");
    let mut next = 0u64;
    loop {
        let message = match consumer.recv() {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(shmem_broker_client::Error::ProducerGone { .. }) if importer_restarts => continue,
            Err(err) => panic!("recv: {err}"),
        };
        let seq = seq_of(&message, len);
        assert_eq!(
            seq, next,
            "message {seq} where {next} was due (lost or repeated)"
        );
        next += 1;
        each(next);
    }
    assert_eq!(
        next, count,
        "end-of-stream after {next} of {count} messages"
    );
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn one_gib_from_host_a_to_host_b_with_sha256() {
    require_root();
    let link = link_one("16MiB");
    let len: u64 = std::env::var("SHMEM_BRIDGE_TEST_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30);
    let input = link.a.dir().join("input");
    let sha = write_random_file(&input, len, 16);
    let output = link.b.dir().join("output");
    let started = Instant::now();
    let mut send = link.a.spawn_ctl(
        &["send", "out"],
        Stdio::from(std::fs::File::open(&input).expect("open input")),
        None,
    );
    let mut recv = link.b.spawn_ctl(
        &["recv", "in"],
        Stdio::null(),
        Some(Stdio::from(
            std::fs::File::create(&output).expect("create output"),
        )),
    );
    let timeout = Duration::from_secs(600);
    assert!(
        send.wait_exit(timeout).success(),
        "send: {}",
        send.stderr_text()
    );
    assert!(
        recv.wait_exit(timeout).success(),
        "recv: {}",
        recv.stderr_text()
    );
    eprintln!("{len} bytes across the bridge in {:?}", started.elapsed());
    assert_eq!(file_len(&output), len);
    assert_eq!(sha256_file(&output), sha, "SHA-256 differs");
    // The bridges are ordinary endpoints to their brokers.
    let info = link.a.info("out");
    let exporter_attached = json_array(&info, "peers").iter().any(|p| {
        json_u64(p, "pid") == u64::from(link.export.pid()) && json_str(p, "role") == "consumer"
    });
    assert!(
        exporter_attached,
        "the exporter is a consumer of out: {info}"
    );
    drop(link);
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn both_directions_at_once() {
    require_root();
    let hosts = Hosts::new();
    let a = Broker::start(None);
    let b = Broker::start(None);
    let state = temp_dir();
    for broker in [&a, &b] {
        broker.ctl_ok(&["create", "out", "--capacity", "1MiB"]);
        broker.ctl_ok(&["create", "in", "--capacity", "1MiB"]);
    }
    let _router = router(&hosts, a.dir());
    let _ea = exporter(&hosts.a, &a, "out", "test/a-to-b", &["hostB"]);
    let _eb = exporter(&hosts.b, &b, "out", "test/b-to-a", &["hostA"]);
    let _ia = importer(&hosts.a, &a, state.path(), "in", "test/b-to-a", "hostA");
    let _ib = importer(&hosts.b, &b, state.path(), "in", "test/a-to-b", "hostB");
    let (count, len) = (20_000, 1000);
    let pa = produce(a.socket_path().to_path_buf(), "out", count, len);
    let pb = produce(b.socket_path().to_path_buf(), "out", count, len);
    let a_socket = a.socket_path().to_path_buf();
    let ca = Background::spawn("consumer on A", move || {
        consume_in_order(&connect(&a_socket), "in", count, len, |_| {})
    });
    consume_in_order(&b.client(), "in", count, len, |_| {});
    ca.join(Duration::from_secs(120));
    pa.join(WAIT);
    pb.join(WAIT);
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn fan_out_to_two_remote_importers() {
    require_root();
    let hosts = Hosts::new();
    let a = Broker::start(None);
    let b = Broker::start(None);
    let state = temp_dir();
    a.ctl_ok(&["create", "out", "--capacity", "1MiB"]);
    let _router = router(&hosts, a.dir());
    let _export = exporter(&hosts.a, &a, "out", "test/fan", &["b1", "b2"]);
    let _i1 = importer(&hosts.b, &b, state.path(), "in1", "test/fan", "b1");
    let _i2 = importer(&hosts.b, &b, state.path(), "in2", "test/fan", "b2");
    let (count, len) = (5_000, 4096);
    let producer = produce(a.socket_path().to_path_buf(), "out", count, len);
    // Both consumers on threads of their own, joined with a deadline: a stalled stream fails
    // the test instead of hanging the run.
    let consumers: Vec<_> = ["in1", "in2"]
        .into_iter()
        .map(|channel| {
            let socket = b.socket_path().to_path_buf();
            Background::spawn(channel, move || {
                consume_in_order(&connect(&socket), channel, count, len, |_| {})
            })
        })
        .collect();
    for consumer in consumers {
        consumer.join(Duration::from_secs(120));
    }
    producer.join(WAIT);
}

/// Kills `which` bridge with SIGKILL three times mid-stream and starts it again; every message
/// arrives exactly once, in order.
fn survives_sigkill(kill_importer: bool) {
    survives_sigkills(kill_importer, 30_000, 512, 3, Duration::ZERO);
}

/// Kills `which` bridge with SIGKILL `kills` times, evenly through a stream of `count`
/// messages of `len` bytes, and starts it again; every message arrives exactly once, in
/// order. With a `pause`, the consumer stops that long before each kill, so that everything
/// in between fills up: the importer waits for room with a run in hand, and the exporter has
/// its whole ring (256 KiB) published and unreleased.
fn survives_sigkills(kill_importer: bool, count: u64, len: usize, kills: u64, pause: Duration) {
    let mut link = link_one("256KiB");
    let producer = produce(link.a.socket_path().to_path_buf(), "out", count, len);
    let client = link.b.client();
    let mut consumer = client.consumer("in").expect("attach consumer");
    let mut next = 0u64;
    let kills: Vec<u64> = (1..=kills).map(|k| k * count / (kills + 1)).collect();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let message = match consumer.recv() {
            Ok(Some(message)) => message,
            Ok(None) => break,
            // The killed importer was this channel's producer: told once, and its successor
            // resumes the stream.
            Err(shmem_broker_client::Error::ProducerGone { .. }) if kill_importer => continue,
            Err(err) => panic!("recv: {err}"),
        };
        assert!(
            Instant::now() < deadline,
            "stream too slow: {next} of {count}"
        );
        let seq = seq_of(&message, len);
        assert_eq!(
            seq, next,
            "message {seq} where {next} was due (lost or repeated)"
        );
        next += 1;
        if kills.contains(&next) {
            std::thread::sleep(pause);
            if kill_importer {
                link.import.kill9();
                link.import = link_importer(&link.hosts, &link.b, link.state.path());
            } else {
                link.export.kill9();
                link.export = link_exporter(&link.hosts, &link.a);
            }
        }
    }
    assert_eq!(next, count);
    producer.join(WAIT);
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn importing_bridge_sigkilled_mid_stream_loses_and_repeats_nothing() {
    require_root();
    survives_sigkill(true);
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn exporting_bridge_sigkilled_mid_stream_loses_and_repeats_nothing() {
    require_root();
    survives_sigkill(false);
}

/// Small messages travel packed and are stored in runs (one record, one publish of up to a
/// thousand messages): killed eight times while they flow, the importer is mostly inside a
/// run (recorded, publishing, or waiting for room); each restart resumes exactly after what
/// its channel holds.
#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn importing_bridge_sigkilled_inside_runs_of_small_messages_loses_and_repeats_nothing() {
    require_root();
    survives_sigkills(true, 200_000, 64, 8, Duration::ZERO);
}

/// The exporter keeps its whole ring in flight (published, not yet stored remotely) while
/// the remote consumer pauses; killed then, six times, the next exporter reads all of it
/// again with the same positions and the importer drops what it already holds.
#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn exporting_bridge_sigkilled_with_its_whole_ring_in_flight_loses_and_repeats_nothing() {
    require_root();
    survives_sigkills(false, 40_000, 1024, 6, Duration::from_millis(700));
}

/// Large messages (100 kB: published alone, from the exporter's own read buffer, and
/// received in several Zenoh fragments that the importer writes straight into its ring): the
/// exporter killed four times with its ring in flight, the next one re-sends what it holds
/// and the importer drops what it already stored.
#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn exporting_bridge_sigkilled_with_large_messages_in_flight_loses_and_repeats_nothing() {
    require_root();
    survives_sigkills(false, 600, 100_000, 4, Duration::from_millis(700));
}

/// The importer killed four times while it writes large messages from Zenoh's fragments
/// into its ring: each restart resumes exactly after what the channel holds.
#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn importing_bridge_sigkilled_while_storing_large_messages_loses_and_repeats_nothing() {
    require_root();
    survives_sigkills(true, 600, 100_000, 4, Duration::ZERO);
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn link_cut_for_5_s_and_restored() {
    require_root();
    let link = link_one("1MiB");
    let (count, len) = (20_000u64, 1024);
    let producer = produce(link.a.socket_path().to_path_buf(), "out", count, len);
    let mut cut_done = false;
    let client = link.b.client();
    consume_in_order(&client, "in", count, len, |got| {
        if !cut_done && got == count / 3 {
            cut_done = true;
            link.hosts.link(false);
            std::thread::sleep(Duration::from_secs(5));
            link.hosts.link(true);
        }
    });
    assert!(cut_done);
    producer.join(WAIT);
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn slow_remote_consumer_slows_the_producer_and_bridges_stay_bounded() {
    require_root();
    let mut link = link_one("4MiB");
    let (count, len) = (300u64, 1 << 20);
    let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let producer = {
        let (socket, written) = (link.a.socket_path().to_path_buf(), written.clone());
        Background::spawn("producer", move || {
            let client = connect(&socket);
            let mut producer = client.producer("out").expect("attach producer");
            for seq in 0..count {
                producer.send(&numbered(seq, len)).expect("send");
                written.store(seq + 1, Ordering::Release);
            }
            producer.close().expect("close");
        })
    };
    let (export_pid, import_pid) = (link.export.pid(), link.import.pid());
    let rss_before = (vm_rss_kib(export_pid), vm_rss_kib(import_pid));
    let mut most_ahead = 0u64;
    let mut rss_most = (0u64, 0u64);
    consume_in_order(&link.b.client(), "in", count, len, |got| {
        std::thread::sleep(Duration::from_millis(30));
        most_ahead = most_ahead.max(written.load(Ordering::Acquire).saturating_sub(got));
        let rss = (vm_rss_kib(export_pid), vm_rss_kib(import_pid));
        rss_most = (rss_most.0.max(rss.0), rss_most.1.max(rss.1));
    });
    producer.join(WAIT);
    eprintln!(
        "producer at most {most_ahead} MiB ahead; RSS KiB before {rss_before:?}, peak {rss_most:?}"
    );
    // What can be in between: ring A (4), ring B (4), the importer's queue (8), a batch in
    // the exporter and Zenoh's buffers: a bound, far below the 300 MiB sent.
    assert!(
        most_ahead <= 40,
        "the producer ran {most_ahead} MiB ahead of the consumer: no back-pressure"
    );
    for (name, before, peak) in [
        ("exporter", rss_before.0, rss_most.0),
        ("importer", rss_before.1, rss_most.1),
    ] {
        assert!(
            peak < before + 96 * 1024,
            "{name} grew from {before} KiB to {peak} KiB"
        );
    }
    assert!(link.export.is_running() && link.import.is_running());
}

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
    let hosts = Hosts::new();
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
    let hosts = Hosts::new();
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
    let hosts = Hosts::new();
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
    let mut rogue_cmd = Command::new(require_tool("ip", "iproute2"));
    rogue_cmd
        .args(["netns", "exec", &hosts.a])
        .arg(env!("CARGO_BIN_EXE_bridge-rogue"))
        .args(["sessions", listen, "32", "30"]);
    let rogue = Proc::start(rogue_cmd, "rogue", b.dir(), Stdio::null(), None);
    // A refused session takes up to its 2 s connect timeout.
    wait_for(Duration::from_secs(120), "the rogue's sessions", || {
        let log = rogue.stderr_text();
        log.contains("connected").then_some(()).ok_or(log)
    });
    std::thread::sleep(Duration::from_secs(1));
    let after = vm_rss_kib(import.pid());
    eprintln!(
        "importer RSS KiB before {before}, after the sessions {after}: {}",
        rogue.stderr_text().trim()
    );
    assert!(import.is_running(), "{}", import.stderr_text());
    let accepted: usize = rogue
        .stderr_text()
        .lines()
        .find_map(|line| line.strip_prefix("connected ")?.trim().parse().ok())
        .expect("the rogue's count");
    // Measured: 2.2 MiB of the importer's memory per session (its receive pool is reserved
    // whole and filled as batches come), 69 MiB for 32 sessions without the bound.
    assert!(accepted <= 16, "the importer accepted {accepted} sessions");
    assert!(
        after < before + 48 * 1024,
        "the importer grew from {before} KiB to {after} KiB"
    );
}

/// SIGTERM to either bridge mid-stream: it takes nothing new, finishes what is in flight (the
/// exporter's batch confirmed and released from its ring, the importer's item stored and
/// acked), logs "stopped: drained" and exits 0; started again, the stream goes on with nothing
/// lost or repeated. Because the exporter released its batch before exiting, the next exporter
/// sends nothing twice: the importer never drops a duplicate (a bridge that exits at once
/// leaves its batch unreleased, and the next one sends it again).
#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn sigterm_drains_in_flight_work_and_exits_0() {
    require_root();
    let mut link = link_one("256KiB");
    let (count, len) = (20_000u64, 512);
    let producer = produce(link.a.socket_path().to_path_buf(), "out", count, len);
    // The consumer reads on in its own thread while a bridge drains: the importer can only
    // store the exporter's last batch (and so let it drain) while someone empties "in". It runs
    // in `Background` (joined with a deadline), so a failure here cannot leave it blocked.
    let got = Arc::new(AtomicU64::new(0));
    let client = link.b.client();
    let consumer = Background::spawn("consumer", {
        let got = got.clone();
        move || {
            consume_across_importer_restarts(&client, "in", count, len, true, &mut |n| {
                got.store(n, Ordering::Release)
            })
        }
    });
    let reach = |n: u64| {
        wait_for(WAIT, format!("{n} messages through the bridge"), || {
            let now = got.load(Ordering::Acquire);
            (now >= n || consumer.is_finished())
                .then_some(())
                .ok_or_else(|| format!("{now} so far"))
        });
        // Stopped while the stream still flows, or the drain would have nothing to do.
        let now = got.load(Ordering::Acquire);
        assert!(
            now < count,
            "the stream was through ({now}) before the stop"
        );
    };
    let mut stops = Vec::new();
    reach(count / 3);
    link.export.signal(libc::SIGTERM);
    stops.push((
        "exporter",
        link.export.wait_exit(WAIT),
        link.export.stderr_text(),
    ));
    link.export = link_exporter(&link.hosts, &link.a);
    reach(2 * count / 3);
    link.import.signal(libc::SIGTERM);
    stops.push((
        "importer",
        link.import.wait_exit(WAIT),
        link.import.stderr_text(),
    ));
    let import_logs = link.import.stderr_text();
    link.import = link_importer(&link.hosts, &link.b, link.state.path());
    consumer.join(Duration::from_secs(120));
    producer.join(WAIT);
    assert_eq!(stops.len(), 2);
    for (which, status, log) in &stops {
        assert!(status.success(), "{which} exited {status}: {log}");
        assert!(
            log.contains("stopped: drained"),
            "{which} did not drain: {log}"
        );
    }
    // The importer that ran across the exporter's stop saw nothing twice.
    assert!(
        !import_logs.contains("duplicates dropped"),
        "the restarted exporter sent again what the stopped one had delivered: {import_logs}"
    );
}
