//! Hostile clients and faults (tests/hostile_*.rs, tests/faults.rs).

use serde_json::Value;
use std::fs;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::{
    frame_header, parse_frames, require_tool, tail, wait_for, Broker, Frame, Proc, HEADER_LEN,
    KIND_REPLY, KIND_REQUEST, WAIT,
};

/// The open file descriptors of a process: the number of entries in /proc/PID/fd.
pub fn open_fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("list /proc/{pid}/fd: {e}"))
        .count()
}

/// Where each open fd of a process points (`readlink /proc/PID/fd/N`), e.g.
/// `/memfd:name (deleted)` or `pipe:[1234]`. Fds that close while being listed are skipped.
pub fn open_fd_targets(pid: u32) -> Vec<String> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("list /proc/{pid}/fd: {e}"))
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| fs::read_link(entry.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .collect()
}

/// An attach done by hand on the wire (no client library): the connection, which holds the
/// attachment for as long as it is open, the reply body and the fds that came with it.
pub struct RawAttach {
    pub stream: UnixStream,
    pub reply: Value,
    pub fds: Vec<std::os::fd::OwnedFd>,
}

/// One lane of a raw fan-out attach: the ring (the producer's memfd), its ack page (the
/// consumer's) and the eventfd.
pub struct RawLane<'a> {
    pub ring: &'a std::os::fd::OwnedFd,
    pub ack: &'a std::os::fd::OwnedFd,
    pub wake: &'a std::os::fd::OwnedFd,
}

impl RawAttach {
    /// The names the reply gives its fds, in order.
    pub fn fd_names(&self) -> Vec<String> {
        self.reply["result"]["fds"]
            .as_array()
            .map(|names| {
                names
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The first fd named `name` (one-to-one: `ring`, `ack`, `data_ready`, `space_ready`).
    pub fn fd(&self, name: &str) -> &std::os::fd::OwnedFd {
        let names = self.fd_names();
        let index = names
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("no fd named {name} in {names:?}"));
        &self.fds[index]
    }

    /// A fan-out attach's lanes (`ring`, `ack`, `wake` after `control` and `wait`).
    pub fn lanes(&self) -> Vec<RawLane<'_>> {
        let names = self.fd_names();
        assert_eq!(
            names.get(..2),
            Some(&["control".to_string(), "wait".to_string()][..])
        );
        assert_eq!(names.len(), self.fds.len(), "fds: {names:?}");
        self.fds[2..]
            .chunks(3)
            .zip(names[2..].chunks(3))
            .map(|(fds, names)| {
                assert_eq!(names, ["ring", "ack", "wake"], "a layout-3 lane");
                RawLane {
                    ring: &fds[0],
                    ack: &fds[1],
                    wake: &fds[2],
                }
            })
            .collect()
    }
}

/// Reads exactly `buf.len()` bytes with `recvmsg`, collecting any fds passed along.
pub fn read_exact_with_fds(
    stream: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<std::os::fd::OwnedFd>,
) -> io::Result<()> {
    use std::os::fd::AsFd;
    let mut filled = 0;
    while filled < buf.len() {
        let n =
            shmem_broker_client::fdpass::recv_with_fds(stream.as_fd(), &mut buf[filled..], fds)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the broker closed the connection after {filled} bytes"),
            ));
        }
        filled += n;
    }
    Ok(())
}

/// Reads one frame with `recvmsg`: (header kind, id, body as JSON, fds that came with it).
pub fn read_frame_with_fds(
    stream: &UnixStream,
    timeout: Duration,
) -> (Frame, Value, Vec<std::os::fd::OwnedFd>) {
    stream
        .set_read_timeout(Some(timeout))
        .expect("set a read timeout on the test socket");
    let mut fds = Vec::new();
    let mut header = [0u8; HEADER_LEN];
    read_exact_with_fds(stream, &mut header, &mut fds)
        .unwrap_or_else(|e| panic!("reading a frame header from the broker: {e}"));
    assert_eq!(&header[0..4], b"SHMB", "not a frame header: {header:02x?}");
    let len = u32::from_le_bytes([header[12], header[13], header[14], header[15]]) as usize;
    let mut body = vec![0u8; len];
    read_exact_with_fds(stream, &mut body, &mut fds)
        .unwrap_or_else(|e| panic!("reading a {len}-byte frame body from the broker: {e}"));
    let (mut frames, _) = parse_frames(&[header.to_vec(), body].concat());
    let frame = frames.pop().expect("one whole frame was read");
    let json = frame.json();
    (frame, json, fds)
}

/// Attaches to `channel` as `role` ("producer" or "consumer") by writing the request frame
/// ourselves and receiving the reply and its fds with `recvmsg`. Fails the test unless the
/// broker says ok and sends the 4 fds of a one-to-one attach.
pub fn raw_attach(socket: &Path, channel: &str, role: &str) -> RawAttach {
    let raw = raw_attach_any(socket, channel, role);
    assert_eq!(
        raw.fd_names(),
        ["ring", "ack", "data_ready", "space_ready"],
        "a one-to-one attach reply: {}",
        raw.reply
    );
    assert_eq!(raw.fds.len(), 4, "reply: {}", raw.reply);
    raw
}

/// [`raw_attach`] to any channel (one with many producers or consumers replies with
/// `control`, `wait`, then `ring`, `ack`, `wake` per peer: [`RawAttach::lanes`]).
pub fn raw_attach_any(socket: &Path, channel: &str, role: &str) -> RawAttach {
    raw_attach_as(socket, channel, role, None)
}

/// [`raw_attach_any`], as durable consumer `name` if given.
pub fn raw_attach_as(socket: &Path, channel: &str, role: &str, name: Option<&str>) -> RawAttach {
    let version = shmem_broker_client::wire::PROTOCOL_VERSION;
    let mut stream = UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()));
    let mut body = serde_json::json!({"op": "attach", "channel": channel, "role": role});
    if let Some(name) = name {
        body["name"] = name.into();
    }
    let body = body.to_string();
    let mut frame = frame_header(version, KIND_REQUEST, 1, body.len() as u32).to_vec();
    frame.extend_from_slice(body.as_bytes());
    stream
        .write_all(&frame)
        .unwrap_or_else(|e| panic!("send the attach request: {e}"));
    let (frame, reply, fds) = read_frame_with_fds(&stream, WAIT);
    assert_eq!(
        (frame.kind, frame.id),
        (KIND_REPLY, 1),
        "attach reply: {reply}"
    );
    assert_eq!(reply["ok"], true, "attach {channel} as {role}: {reply}");
    RawAttach { stream, reply, fds }
}

/// Environment variable that tells a helper test (see [`self_exec_command`]) it runs as a
/// helper process, not as part of a normal test run.
pub const HELPER_ENV: &str = "SHMEM_BROKER_TEST_HELPER";

/// A command that runs this very test binary again, executing only the `#[ignore]`d test
/// `helper_test` as a helper process (with [`HELPER_ENV`] set to 1). Helper tests return at
/// once when that variable is not set, so an `--ignored` run of the suite does nothing with them.
pub fn self_exec_command(helper_test: &str) -> Command {
    let exe = std::env::current_exe().expect("the path of the running test binary");
    self_exec_command_of(&exe, helper_test)
}

fn self_exec_command_of(exe: &Path, helper_test: &str) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        helper_test,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
        "--quiet",
    ])
    .env(HELPER_ENV, "1");
    cmd
}

/// [`self_exec_command`] as another user (through setpriv, supplementary groups cleared). Runs
/// a copy of the test binary kept in the broker's temp dir, which must be searchable by `uid`
/// ([`BrokerOptions::world_searchable_dir`]).
pub fn self_exec_command_as(broker: &Broker, uid: u32, helper_test: &str) -> Command {
    let exe = std::env::current_exe().expect("the path of the running test binary");
    let name = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "test-binary".into());
    let copy = broker.dir().join(format!("helper-{name}"));
    if !copy.exists() {
        // A child copies it, for the reason given in `Broker::ctl_command_as`.
        let status = Command::new("install")
            .arg("-m")
            .arg("0755")
            .arg(&exe)
            .arg(&copy)
            .status()
            .unwrap_or_else(|e| panic!("run install(1) to copy the test binary: {e}"));
        assert!(
            status.success(),
            "install the test binary to {}: {status}",
            copy.display()
        );
    }
    let inner = self_exec_command_of(&copy, helper_test);
    let mut cmd = Command::new(require_tool("setpriv", "util-linux"));
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg(inner.get_program())
        .args(inner.get_args());
    for (key, value) in inner.get_envs() {
        if let Some(value) = value {
            cmd.env(key, value);
        }
    }
    cmd
}

/// Whether this process runs as a helper started by [`self_exec_command`].
pub fn is_helper_process() -> bool {
    std::env::var_os(HELPER_ENV).is_some_and(|v| v == "1")
}

/// Polls a process's captured stdout until a line starting with `prefix` appears; returns the
/// rest of that line. Fails the test if the process exits first or after `timeout`.
pub fn wait_for_stdout_line(proc: &mut Proc, prefix: &str, timeout: Duration) -> String {
    let what = format!(
        "`{}` to print a line starting {prefix:?}",
        proc.command_line()
    );
    wait_for(timeout, what, || {
        let stdout = proc.stdout_text();
        if let Some(rest) = stdout.lines().find_map(|l| l.strip_prefix(prefix)) {
            return Ok(rest.to_string());
        }
        if let Some(status) = proc.try_status() {
            panic!(
                "`{}` exited ({status}) before printing {prefix:?}; stdout: {stdout:?}; stderr: {}",
                proc.command_line(),
                proc.stderr_text()
            );
        }
        Err(format!("stdout so far: {:?}", tail(&stdout, 2048)))
    })
}

/// Sends `message` with `try_send` until the ring reports would-block and returns how many
/// went in. Panics if another error comes, or if more than `at_most` fit (the ring never
/// pushed back).
pub fn fill_ring(
    producer: &mut shmem_broker_client::Producer,
    message: &[u8],
    at_most: usize,
) -> usize {
    let mut accepted = 0;
    loop {
        match producer.try_send(message) {
            Ok(()) => accepted += 1,
            Err(e) if e.is_full() => return accepted,
            Err(e) => panic!("try_send #{accepted}: {e}"),
        }
        assert!(
            accepted <= at_most,
            "try_send never reported would-block: a {}-byte ring took {accepted} messages of {} bytes",
            producer.capacity(),
            message.len()
        );
    }
}
