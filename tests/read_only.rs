//! Ring layout 3: memory a side only reads is mapped read-only, and cannot be made writable
//! (issue 12). A consumer used to be able to scribble on its producer's frames and position,
//! and a producer on its consumer's, because both mapped the whole ring read-write. Now each
//! ring is two memfds, each side is handed the other's `O_RDONLY`, and the broker makes them
//! mode 0600, so a client of another uid can neither map them writable nor open them again for
//! writing through `/proc/self/fd`. Real broker, real `shmemctl` processes, a real other uid
//! (setpriv) for the reopen.

use serde_json::{json, Value};
use shmem_broker_tests::*;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;

/// A uid other than root (and other than the broker's) for the reopen attack.
const OTHER_UID: u32 = 1000;
const HELPER_SOCKET: &str = "READ_ONLY_HELPER_SOCKET";
const RESULT_LINE: &str = "RESULT ";

/// The permissions (`r--s`, `rw-s`) of `pid`'s mappings of memfds whose name starts with
/// `shmem-broker:CHANNEL:`, split into ring mappings and ack mappings.
fn ring_mappings(pid: u32, channel: &str) -> (Vec<String>, Vec<String>) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/maps: {e}"));
    let prefix = format!("/memfd:shmem-broker:{channel}:");
    let (mut rings, mut acks) = (Vec::new(), Vec::new());
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(perms), Some(path)) = (fields.get(1), fields.get(5)) else {
            continue;
        };
        if !path.starts_with(&prefix) {
            continue;
        }
        if path.ends_with(":ack") {
            acks.push(perms.to_string());
        } else {
            rings.push(perms.to_string());
        }
    }
    (rings, acks)
}

/// `shmemctl send` and `shmemctl recv` on `channel`, both attached; checks each one's
/// mappings, then lets the data through.
fn check_mappings_of_real_clients(broker: &Broker, channel: &str, lanes: usize) {
    let out_path = broker.dir().join(format!("{channel}.out"));
    let mut receiver = broker.spawn_ctl(
        &["recv", channel],
        Stdio::null(),
        Some(Stdio::from(
            std::fs::File::create(&out_path).expect("create output"),
        )),
    );
    broker.wait_for_peer(channel, receiver.pid(), "consumer");
    let mut sender = broker.spawn_ctl(&["send", channel], Stdio::piped(), None);
    broker.wait_for_peer(channel, sender.pid(), "producer");
    let mut stdin = sender.take_stdin().expect("piped stdin of the sender");
    stdin
        .write_all(b"first line\n")
        .expect("write to shmemctl send");
    stdin.flush().expect("flush");

    // The consumer learns of the producer's ring through a lane event (fan-out) or has it from
    // its attach (one-to-one): wait until it is mapped.
    wait_for(WAIT, "the consumer to map its rings", || {
        let (rings, acks) = ring_mappings(receiver.pid(), channel);
        if rings.len() == lanes && acks.len() == lanes {
            Ok((rings, acks))
        } else {
            Err(format!("rings {rings:?}, acks {acks:?}"))
        }
    });
    let (rings, acks) = ring_mappings(receiver.pid(), channel);
    assert!(
        rings.iter().all(|p| p == "r--s"),
        "the consumer maps its producer's ring read-only: {rings:?}"
    );
    assert!(
        acks.iter().all(|p| p == "rw-s"),
        "the consumer writes its own ack page: {acks:?}"
    );
    let (rings, acks) = ring_mappings(sender.pid(), channel);
    assert_eq!(
        (rings.len(), acks.len()),
        (lanes, lanes),
        "{rings:?} {acks:?}"
    );
    assert!(
        rings.iter().all(|p| p == "rw-s"),
        "the producer writes its ring: {rings:?}"
    );
    assert!(
        acks.iter().all(|p| p == "r--s"),
        "the producer maps its consumer's ack page read-only: {acks:?}"
    );

    stdin
        .write_all(b"second line\n")
        .expect("write to shmemctl send");
    drop(stdin);
    sender.output(WAIT).expect_success();
    receiver.output(WAIT).expect_success();
    let received = std::fs::read_to_string(&out_path).expect("read output");
    assert_eq!(received, "first line\nsecond line\n");
}

#[test]
fn each_side_maps_what_it_only_reads_read_only_one_to_one() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "ro", "--capacity", "64KiB"]);
    check_mappings_of_real_clients(&broker, "ro", 1);
}

#[test]
fn each_side_maps_what_it_only_reads_read_only_fan_out() {
    let broker = Broker::start(None);
    broker.ctl_ok(&[
        "create",
        "ro-fan",
        "--capacity",
        "64KiB",
        "--max-producers",
        "2",
        "--max-consumers",
        "2",
    ]);
    check_mappings_of_real_clients(&broker, "ro-fan", 1);
}

/// What the helper tries with one fd it was given read-only and one it was given writable.
fn attempts(read_only: &OwnedFd, writable: &OwnedFd) -> Value {
    let errno = |result: rustix::io::Result<()>| match result {
        Ok(()) => json!("ok"),
        Err(e) => json!(e.raw_os_error()),
    };
    let map = |fd: &OwnedFd, prot: rustix::mm::ProtFlags| {
        // SAFETY: a fresh shared mapping of one page of a memfd we hold (both are at least a
        // page), at an address the kernel picks, unmapped at once; nothing reads or writes it.
        errno(unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                4096,
                prot,
                rustix::mm::MapFlags::SHARED,
                fd,
                0,
            )
            .and_then(|ptr| rustix::mm::munmap(ptr, 4096))
        })
    };
    let reopen = |fd: &OwnedFd, flags: rustix::fs::OFlags| {
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        errno(rustix::fs::open(path.as_str(), flags, rustix::fs::Mode::empty()).map(drop))
    };
    let mode = |fd: &OwnedFd| rustix::fs::fstat(fd).map_or(0, |stat| stat.st_mode & 0o7777);
    use rustix::fs::OFlags;
    use rustix::mm::ProtFlags;
    json!({
        "uid": rustix::process::getuid().as_raw(),
        "mode": mode(read_only),
        "map_read": map(read_only, ProtFlags::READ),
        "map_write": map(read_only, ProtFlags::READ | ProtFlags::WRITE),
        "reopen_rdwr": reopen(read_only, OFlags::RDWR),
        "reopen_wronly": reopen(read_only, OFlags::WRONLY),
        "reopen_rdonly": reopen(read_only, OFlags::RDONLY),
        "chmod": errno(rustix::fs::fchmod(read_only, rustix::fs::Mode::from_raw_mode(0o666))),
        "own_map_write": map(writable, ProtFlags::READ | ProtFlags::WRITE),
    })
}

/// Run as another uid by the test below: attaches raw, as the consumer of `ro-c` and the
/// producer of `ro-p`, and prints what each attempt on the other side's memfd gave.
#[test]
#[ignore = "helper process"]
fn helper_try_to_write_the_other_sides_memfd() {
    if !is_helper_process() {
        return;
    }
    let socket = std::env::var_os(HELPER_SOCKET).expect("helper: socket path in the environment");
    let socket = std::path::Path::new(&socket);
    let consumer = raw_attach(socket, "ro-c", "consumer");
    let producer = raw_attach(socket, "ro-p", "producer");
    let results = json!({
        "consumer": attempts(consumer.fd("ring"), consumer.fd("ack")),
        "producer": attempts(producer.fd("ack"), producer.fd("ring")),
    });
    println!("{RESULT_LINE}{results}");
    std::io::stdout().flush().expect("helper: flush stdout");
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn another_uid_cannot_map_or_reopen_the_other_sides_memfd_writable() {
    require_root();
    let broker = Broker::start_with(BrokerOptions {
        world_searchable_dir: true,
        ..BrokerOptions::default()
    });
    for channel in ["ro-c", "ro-p"] {
        broker.ctl_ok(&[
            "create",
            channel,
            "--capacity",
            "64KiB",
            "--producers",
            "*",
            "--consumers",
            "*",
        ]);
    }
    let mut cmd = self_exec_command_as(
        &broker,
        OTHER_UID,
        "helper_try_to_write_the_other_sides_memfd",
    );
    cmd.env(HELPER_SOCKET, broker.socket_path());
    let mut helper = Proc::start(cmd, "helper-read-only", broker.dir(), Stdio::null(), None);
    let out = helper.output(WAIT);
    let text = out.expect_success().to_string();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(RESULT_LINE))
        .unwrap_or_else(|| panic!("the helper printed no result: {out}"));
    let results: Value = serde_json::from_str(line).expect("the helper's result is JSON");
    for side in ["consumer", "producer"] {
        let got = &results[side];
        assert_eq!(got["uid"], OTHER_UID, "{got}");
        assert_eq!(
            got["map_read"], "ok",
            "{side}: reading is what it may do: {got}"
        );
        assert_eq!(
            got["own_map_write"], "ok",
            "{side}: its own memfd is writable: {got}"
        );
        for attempt in ["map_write", "reopen_rdwr", "reopen_wronly", "reopen_rdonly"] {
            assert_eq!(
                got[attempt],
                libc::EACCES,
                "{side}: {attempt} on the other side's memfd must fail with EACCES: {got}"
            );
        }
        assert_ne!(
            got["chmod"], "ok",
            "{side}: it cannot change the mode either: {got}"
        );
        assert_eq!(
            got["mode"], 0o600,
            "the broker's memfds are mode 0600: {got}"
        );
    }
}
