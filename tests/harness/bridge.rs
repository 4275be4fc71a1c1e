//! The two-host lab of the shmem-bridge tests (tests/bridge/): two network namespaces joined
//! by a veth pair (10.77.0.1/24 and 10.77.0.2/24, inside those namespaces only), a broker per
//! host, a Zenoh router (`shmem-bridge router`) in host A's namespace, exporting and importing
//! bridges, all real processes; and the numbered streams the tests send through them, checked
//! message by message (nothing lost, nothing repeated, in order). Needs root (namespaces) and
//! `ip` (iproute2).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::*;

/// The router's endpoint, in host A.
pub const ROUTER: &str = "tcp/10.77.0.1:7447";

static NETNS_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Two namespaces ("hosts") joined by a veth pair; deleted on drop (which deletes the veth).
pub struct Hosts {
    pub a: String,
    pub b: String,
    pub veth_a: String,
    pub veth_b: String,
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
    /// Makes the two namespaces and the link between them.
    pub fn create() -> Hosts {
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
    pub fn link(&self, up: bool) {
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
pub fn bridge(ns: &str, log_dir: &Path, label: &str, args: &[&str]) -> Proc {
    let mut cmd = Command::new(require_tool("ip", "iproute2"));
    cmd.args(["netns", "exec", ns])
        .arg(bridge_bin())
        .args(args)
        .args(["--log-level", "debug"]);
    Proc::start(cmd, label, log_dir, Stdio::null(), None)
}

pub fn router(hosts: &Hosts, log_dir: &Path) -> Proc {
    let mut router = bridge(&hosts.a, log_dir, "router", &["router", "--listen", ROUTER]);
    wait_for_stdout_or_log(&mut router, "zenoh router running");
    router
}

pub fn wait_for_stdout_or_log(proc: &mut Proc, needle: &str) {
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

pub fn exporter(ns: &str, broker: &Broker, channel: &str, key: &str, importers: &[&str]) -> Proc {
    exporter_with(ns, broker, channel, key, importers, &[])
}

/// [`exporter`] with more arguments.
pub fn exporter_with(
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

pub fn importer(
    ns: &str,
    broker: &Broker,
    state: &Path,
    channel: &str,
    key: &str,
    name: &str,
) -> Proc {
    importer_with(ns, broker, state, channel, key, name, &[])
}

/// [`importer`] with more arguments.
pub fn importer_with(
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
pub struct Link {
    pub hosts: Hosts,
    pub a: Broker,
    pub b: Broker,
    pub state: tempfile::TempDir,
    /// Runs for as long as the link.
    pub router: Proc,
    pub export: Proc,
    pub import: Proc,
}

/// `link_one`'s exporter: channel "out" on host A to key test/out, waiting for importer hostB.
pub fn link_exporter(hosts: &Hosts, a: &Broker) -> Proc {
    exporter(&hosts.a, a, "out", "test/out", &["hostB"])
}

/// `link_one`'s importer: key test/out into channel "in" on host B, as hostB, its record in
/// `state` (a restarted one resumes from there).
pub fn link_importer(hosts: &Hosts, b: &Broker, state: &Path) -> Proc {
    importer(&hosts.b, b, state, "in", "test/out", "hostB")
}

/// [`Link`] with both channels of `capacity` ("out" on A, "in" on B), everything running.
pub fn link_one(capacity: &str) -> Link {
    let hosts = Hosts::create();
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
        router,
        export,
        import,
    }
}

/// Message `seq` of a test stream (testkit's numbered messages), at least a header long.
pub fn numbered(seq: u64, len: usize) -> Vec<u8> {
    stamp::numbered(0, seq, len.max(stamp::HEADER))
}

/// The sequence number of a message made by [`numbered`] that is `len` long; fails the test
/// on a torn, shortened or corrupted one.
pub fn seq_of(message: &[u8], len: usize) -> u64 {
    assert_eq!(message.len(), len.max(stamp::HEADER), "message length");
    stamp::check_numbered(message)
        .unwrap_or_else(|e| panic!("corrupted message: {e}"))
        .1
}

/// Sends `count` numbered messages into `channel`, then end-of-stream.
pub fn produce(socket: PathBuf, channel: &'static str, count: u64, len: usize) -> Background<()> {
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
pub fn consume_in_order(
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
pub fn consume_across_importer_restarts(
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
