//! What both soak modes share: the state file every process of a run maps, connecting and
//! attaching with retries, the broker and the child processes the driver starts (each dies with
//! the driver, testkit's `die_with_parent`), stopping them, and the driver's random numbers.

use shmem_broker_client::{Client, ErrorCode, Producer};
use shmem_broker_testkit::broker::{self, wait_until_answers};
use shmem_broker_testkit::process::die_with_parent;
use shmem_broker_testkit::ring::Mapping;
use shmem_broker_testkit::stamp::{splitmix, Format};
use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub(crate) const CHANNEL: &str = "soak";
pub(crate) const NONE: u64 = u64::MAX;

/// How long a child waits for the broker to answer, or for a slot its predecessor held.
const PATIENCE: Duration = Duration::from_secs(20);

/// Memory all processes of a run map from one file, so bookkeeping survives any of them being
/// SIGKILLed at any instruction.
///
/// # Safety
///
/// Implementors are `#[repr(C)]` structs of atomics (and arrays of them) only: valid for any
/// bytes, all zeros included, and shared between processes through atomics alone.
pub(crate) unsafe trait SharedState {}

/// The state file of a run, mapped shared (testkit's [`Mapping`]), seen as a `T`.
pub(crate) struct SharedMap<T> {
    map: Mapping,
    _state: std::marker::PhantomData<T>,
}

impl<T: SharedState> SharedMap<T> {
    /// The file's size: `T` rounded up to whole pages.
    const SIZE: usize = std::mem::size_of::<T>().div_ceil(4096) * 4096;

    pub(crate) fn create(path: &Path) -> SharedMap<T> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .unwrap_or_else(|e| fail(&format!("create {}: {e}", path.display())));
        file.set_len(Self::SIZE as u64)
            .unwrap_or_else(|e| fail(&format!("size {}: {e}", path.display())));
        SharedMap::map(&file)
    }

    pub(crate) fn open(path: &Path) -> SharedMap<T> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| fail(&format!("open {}: {e}", path.display())));
        SharedMap::map(&file)
    }

    fn map(file: &std::fs::File) -> SharedMap<T> {
        let map = Mapping::try_new(file, Self::SIZE as u64)
            .unwrap_or_else(|e| fail(&format!("mmap state file: {e}")));
        SharedMap {
            map,
            _state: std::marker::PhantomData,
        }
    }

    pub(crate) fn get(&self) -> &T {
        // The driver sized the file to SIZE before any child ran; a shorter mapping would be a
        // file someone else truncated, which is no soak run.
        assert!(self.map.len() >= std::mem::size_of::<T>());
        // SAFETY: a shared, writable, page-aligned mapping of at least size_of::<T>() bytes
        // that lives as long as `self`; T is all atomics, valid for any bytes (SharedState).
        unsafe { &*(self.map.start() as *const T) }
    }
}

/// Connects to the broker, waiting up to 20 s for it to answer.
pub(crate) fn connect(socket: &Path) -> Client {
    wait_until_answers(socket, PATIENCE, || None).unwrap_or_else(|e| fail(&format!("connect: {e}")))
}

/// Sends message `(stream, seq)` of `len` bytes (`format`'s) without blocking the process
/// for good: while the ring is full, waits on the producer's ready fd and looks at `stop`.
/// Returns false, the message unsent, once `stop` is raised; fails the process (its error
/// prefixed with `label`) on any other error.
pub(crate) fn send(
    producer: &mut Producer,
    format: &Format,
    (stream, seq, len): (u64, u64, usize),
    stop: &AtomicU64,
    label: &str,
) -> bool {
    loop {
        match producer.try_send_with(len, |buf| format.fill(stream, seq, buf)) {
            Ok(()) => return true,
            Err(err) if err.is_full() => {
                if stop.load(Ordering::SeqCst) != 0 {
                    return false;
                }
                wait_readable(producer.ready_fd(), 100);
            }
            Err(err) => fail(&format!("{label}send {seq}: {err}")),
        }
    }
}

/// Starts `BROKER --socket DIR/broker.sock --log-level warn`, its stderr in `DIR/broker.log`,
/// and connects to it once it answers.
pub(crate) fn start_broker(bin: &Path, dir: &Path) -> (Child, Client) {
    let socket = dir.join("broker.sock");
    let log = std::fs::File::create(dir.join("broker.log"))
        .unwrap_or_else(|e| fail(&format!("broker log: {e}")));
    let mut cmd = broker::command(bin, &socket);
    cmd.arg("--log-level")
        .arg("warn")
        .stdin(Stdio::null())
        .stderr(log);
    let mut broker = die_with_parent(&mut cmd)
        .spawn()
        .unwrap_or_else(|e| fail(&format!("start {}: {e}", bin.display())));
    let client = wait_until_answers(&socket, PATIENCE, || {
        broker
            .try_wait()
            .ok()
            .flatten()
            .map(|status| status.to_string())
    })
    .unwrap_or_else(|e| fail(&format!("{e}; see {}", dir.join("broker.log").display())));
    (broker, client)
}

/// Starts this same binary with `args`, its stderr appended to `log`; it dies with the driver.
pub(crate) fn spawn_child(exe: &Path, args: &[String], log: &Path) -> Child {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| fail(&format!("children log: {e}")));
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(Stdio::null()).stderr(log);
    die_with_parent(&mut cmd)
        .spawn()
        .unwrap_or_else(|e| fail(&format!("spawn {args:?}: {e}")))
}

/// Attaches, retrying while the previous holder's connection is still being torn down (its
/// slot, durable name or consumer queue is still taken).
pub(crate) fn attach<T>(
    what: &str,
    mut attach: impl FnMut() -> shmem_broker_client::Result<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match attach() {
            Ok(endpoint) => return endpoint,
            Err(err)
                if matches!(
                    err.code(),
                    Some(ErrorCode::ChannelBusy | ErrorCode::LimitReached)
                ) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(err) => fail(&format!("attach {what}: {err}")),
        }
    }
}

pub(crate) fn fail(message: &str) -> ! {
    eprintln!("soak[{}]: {message}", std::process::id());
    std::process::exit(2);
}

pub(crate) fn wait_readable(fd: impl AsFd, millis: i32) {
    let mut pfd = libc::pollfd {
        fd: fd.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, millis) };
}

pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        splitmix(self.0)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub(crate) fn kill(child: &mut Child) {
    // SAFETY: signalling our own child, not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
}

/// Asks a child to detach cleanly; SIGKILL if it has not within 5 s.
pub(crate) fn stop(child: &mut Child, flag: &AtomicU64) {
    flag.store(1, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            eprintln!(
                "soak: child {} ignored the stop request; killing it",
                child.id()
            );
            kill(child);
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    flag.store(0, Ordering::SeqCst);
}
