//! Soak test: the real broker, one channel, many checked messages, and clients that attach,
//! detach and get SIGKILLed at random. See `fuzz/SOAK.md`.
//!
//! ```text
//! shmem-broker-soak run --broker target/release/shmem-broker --messages 100000000
//! ```
//!
//! `run` (the driver) starts the broker on a private socket, creates the channel `soak`, and
//! starts a producer and a consumer process (this same binary, subcommands `producer` and
//! `consumer`). Then, every few milliseconds, it does one random thing: SIGKILL the producer or
//! the consumer and start a new one, ask one of them to detach cleanly and start a new one,
//! leave a role empty for a while, or try to attach a second producer or consumer (which the
//! broker must refuse with `channel_busy` while the slot is held).
//!
//! Messages are those of [`message`] with a single stream: message `seq` (0, 1, 2, ...) has a
//! length drawn from `seq` and carries `seq`, its length and a CRC-32 of everything else.
//!
//! Bookkeeping lives in a small shared-memory file that all processes map, so it survives any
//! of them being killed at any instruction:
//!
//! * The producer stores "about to send `seq`" before each send and "published up to `seq`"
//!   after it. A new producer resumes at the first message not published. If its predecessor
//!   died in the middle of a send, that message may or may not be in the ring (the ring's
//!   `messages_written` cannot tell: it is stored before the write position, so it may count a
//!   message never published): the new producer logs it as resent and sends it again.
//! * The consumer receives with `recv_batch(1, ..)`, whose callback runs before the read
//!   position is published. The callback checks the message and then advances `next` (the one
//!   store that accounts for it). A consumer killed after that store and before the library
//!   publishes its read position gets the message delivered again to its successor: the first
//!   message of a new consumer being `next - 1`, when its predecessor was killed inside that
//!   window, is counted as "redelivered". Another copy of `next - 1` is "resent" if the
//!   producers' log has that many resends of it, else a "duplicate". Any message whose
//!   sequence number jumps ahead of `next` counts the skipped ones as "lost"; any message that
//!   fails its checks counts as "corrupted".
//!
//! Fan-out channels: `run --fanout`, see [`fanout`].
//!
//! The run passes when every message 0..N was delivered in order, with lost = 0,
//! corrupted = 0 and duplicates = 0.

mod fanout;
mod layout;
mod message;

use message::{splitmix, Format, Hint};
use shmem_broker_client::{Client, ErrorCode, TryRecvError};
use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub(crate) const CHANNEL: &str = "soak";
pub(crate) const NONE: u64 = u64::MAX;

// ---------------------------------------------------------------------------------------------
// Shared bookkeeping

const ANOMALIES: usize = 32;
/// Resends remembered; the consumer lags by at most a ring's worth of messages.
const RESEND_LOG: usize = 512;

#[repr(C)]
struct Shared {
    // Producer side.
    /// Messages 0..published are in the ring (or consumed).
    published: AtomicU64,
    /// The message being sent: equal to `published` while a send is under way.
    intent_seq: AtomicU64,
    producer_starts: AtomicU64,
    /// Producers that found their predecessor died mid-send, and sent that message again.
    resumed_in_flight: AtomicU64,
    /// Those messages, in order (the last RESEND_LOG).
    resend_count: AtomicU64,
    resends: [AtomicU64; RESEND_LOG],
    producer_done: AtomicU64,
    // Consumer side.
    /// The next message expected.
    next: AtomicU64,
    lost: AtomicU64,
    corrupted: AtomicU64,
    redelivered: AtomicU64,
    /// Copies of resent messages (a resent message its predecessor had published).
    resent: AtomicU64,
    /// Copies of message `next - 1` accounted to resends.
    repeats: AtomicU64,
    /// 1 from the moment a message is accounted for until the `recv_batch` that read it
    /// returned (its read position published).
    pending: AtomicU64,
    duplicates: AtomicU64,
    end_of_stream_marks: AtomicU64,
    bytes: AtomicU64,
    consumer_starts: AtomicU64,
    anomaly_count: AtomicU64,
    /// (what, seq seen or NONE, next expected, length)
    anomalies: [[AtomicU64; 4]; ANOMALIES],
    // Driver to children: detach cleanly.
    stop_producer: AtomicU64,
    stop_consumer: AtomicU64,
}

const ANOMALY_LOST: u64 = 1;
const ANOMALY_CORRUPT: u64 = 2;
const ANOMALY_DUPLICATE: u64 = 3;

/// Memory all processes of a run map from one file, so bookkeeping survives any of them being
/// SIGKILLed at any instruction.
///
/// # Safety
///
/// Implementors are `#[repr(C)]` structs of atomics (and arrays of them) only: valid for any
/// bytes, all zeros included, and shared between processes through atomics alone.
pub(crate) unsafe trait SharedState {}

// SAFETY: repr(C), atomics only.
unsafe impl SharedState for Shared {}

pub(crate) struct SharedMap<T> {
    ptr: *mut T,
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
        // SAFETY: a file of SIZE bytes (set by the driver before any child runs) mapped shared;
        // T is all atomics, valid for any bytes (SharedState).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Self::SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            fail(&format!(
                "mmap state file: {}",
                std::io::Error::last_os_error()
            ));
        }
        SharedMap { ptr: ptr.cast() }
    }

    pub(crate) fn get(&self) -> &T {
        // SAFETY: mapped for the life of the process (never unmapped), page-aligned.
        unsafe { &*self.ptr }
    }
}

impl Shared {
    fn resends_of(&self, seq: u64) -> u64 {
        let count = self.resend_count.load(Ordering::SeqCst);
        let kept = count.min(RESEND_LOG as u64);
        (count - kept..count)
            .filter(|&i| self.resends[i as usize % RESEND_LOG].load(Ordering::SeqCst) == seq)
            .count() as u64
    }

    fn anomaly(&self, what: u64, seen: u64, expected: u64, len: usize) {
        let i = self.anomaly_count.fetch_add(1, Ordering::SeqCst) as usize;
        if i < ANOMALIES {
            let slot = &self.anomalies[i];
            slot[0].store(what, Ordering::SeqCst);
            slot[1].store(seen, Ordering::SeqCst);
            slot[2].store(expected, Ordering::SeqCst);
            slot[3].store(len as u64, Ordering::SeqCst);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Children

pub(crate) fn connect(socket: &Path) -> Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match Client::connect(socket) {
            Ok(client) => return client,
            Err(err) if Instant::now() < deadline => {
                let _ = err;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(err) => fail(&format!("connect: {err}")),
        }
    }
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

fn producer_main(socket: &Path, state: &Path, seed: u64, total: u64) {
    let shared_map = SharedMap::<Shared>::open(state);
    let shared = shared_map.get();
    let client = connect(socket);
    let mut producer = attach("producer", || client.producer(CHANNEL));
    let format = Format::new(seed, 1, producer.capacity());
    // Nobody else can publish now. If the last producer died sending `published`, whether
    // that message reached the ring cannot be told from outside: the ring's messages_written
    // is stored before its write position (proto/src/ring.rs, `publish`), so it may count a
    // message never published. It is sent again, logged first, and the consumer accepts one
    // copy of it per resend.
    let mut seq = shared.published.load(Ordering::SeqCst);
    if shared.intent_seq.load(Ordering::SeqCst) == seq && seq < total {
        let count = shared.resend_count.load(Ordering::SeqCst);
        shared.resends[count as usize % RESEND_LOG].store(seq, Ordering::SeqCst);
        shared.resend_count.store(count + 1, Ordering::SeqCst);
        shared.resumed_in_flight.fetch_add(1, Ordering::SeqCst);
    }
    shared.producer_starts.fetch_add(1, Ordering::SeqCst);

    while seq < total {
        if shared.stop_producer.load(Ordering::SeqCst) != 0 {
            return; // dropping the producer detaches (and leaves an end-of-stream mark)
        }
        let len = format.len_of(0, seq);
        shared.intent_seq.store(seq, Ordering::SeqCst);
        loop {
            match producer.try_send_with(len, |buf| format.fill(0, seq, buf)) {
                Ok(()) => break,
                Err(err) if err.is_full() => {
                    if shared.stop_producer.load(Ordering::SeqCst) != 0 {
                        shared.intent_seq.store(NONE, Ordering::SeqCst);
                        return;
                    }
                    wait_readable(producer.ready_fd(), 100);
                }
                Err(err) => fail(&format!("send {seq}: {err}")),
            }
        }
        shared.published.store(seq + 1, Ordering::SeqCst);
        seq += 1;
    }
    producer
        .close()
        .unwrap_or_else(|e| fail(&format!("close: {e}")));
    shared.producer_done.store(1, Ordering::SeqCst);
}

fn consumer_main(socket: &Path, state: &Path, seed: u64, total: u64) {
    let shared_map = SharedMap::<Shared>::open(state);
    let shared = shared_map.get();
    let client = connect(socket);
    let mut consumer = attach("consumer", || client.consumer(CHANNEL));
    let format = Format::new(seed, 1, consumer.capacity());
    shared.consumer_starts.fetch_add(1, Ordering::SeqCst);
    // The predecessor was killed between accounting for a message and publishing its read
    // position: that message comes first, again (at-least-once).
    let mut allowance = shared.pending.load(Ordering::SeqCst) != 0;
    let mut first = true;
    let mut account = |message: &[u8]| {
        // Runs before the library publishes the read position: `next` must be stored last.
        shared.pending.store(1, Ordering::SeqCst);
        let next = shared.next.load(Ordering::SeqCst);
        match format
            .identify(message, |_| Hint::around(next))
            .map(|(_, seq)| seq)
        {
            Some(seq) if seq == next => {
                shared
                    .bytes
                    .fetch_add(message.len() as u64, Ordering::Relaxed);
                shared.repeats.store(0, Ordering::SeqCst);
                shared.next.store(next + 1, Ordering::SeqCst);
            }
            Some(seq) if seq < next => {
                if first && seq + 1 == next && std::mem::take(&mut allowance) {
                    shared.redelivered.fetch_add(1, Ordering::SeqCst);
                } else if seq + 1 == next
                    && shared.resends_of(seq) > shared.repeats.load(Ordering::SeqCst)
                {
                    shared.repeats.fetch_add(1, Ordering::SeqCst);
                    shared.resent.fetch_add(1, Ordering::SeqCst);
                } else {
                    shared.duplicates.fetch_add(1, Ordering::SeqCst);
                    shared.anomaly(ANOMALY_DUPLICATE, seq, next, message.len());
                }
            }
            Some(seq) => {
                shared.lost.fetch_add(seq - next, Ordering::SeqCst);
                shared.anomaly(ANOMALY_LOST, seq, next, message.len());
                shared.repeats.store(0, Ordering::SeqCst);
                shared.next.store(seq + 1, Ordering::SeqCst);
            }
            None => {
                shared.corrupted.fetch_add(1, Ordering::SeqCst);
                shared.anomaly(ANOMALY_CORRUPT, NONE, next, message.len());
                shared.repeats.store(0, Ordering::SeqCst);
                shared.next.store(next + 1, Ordering::SeqCst);
            }
        }
        first = false;
    };
    loop {
        if shared.next.load(Ordering::SeqCst) >= total
            || shared.stop_consumer.load(Ordering::SeqCst) != 0
        {
            return;
        }
        match consumer.try_recv_batch(1, &mut account) {
            // Its read position is published.
            Ok(Some(_)) => shared.pending.store(0, Ordering::SeqCst),
            Ok(None) => {
                shared.end_of_stream_marks.fetch_add(1, Ordering::SeqCst);
            }
            Err(err) if err.is_empty() => wait_readable(consumer.ready_fd(), 100),
            // A producer SIGKILLed without end-of-stream, told once; the stream's next producer
            // resumes it, and the sequence numbers judge what arrived.
            Err(TryRecvError::Failed(shmem_broker_client::Error::ProducerGone { .. })) => {}
            Err(err) => fail(&format!("receive: {err}")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Driver

pub(crate) struct Options {
    broker: PathBuf,
    messages: u64,
    capacity: u64,
    seed: u64,
    max_seconds: u64,
    /// Mean milliseconds between two random events.
    event_ms: u64,
    /// Fan-out mode: producer slots (streams), durable and anonymous consumers.
    fanout: bool,
    producers: usize,
    durable: usize,
    anonymous: usize,
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

#[derive(Default)]
struct Events {
    producer_kills: u64,
    consumer_kills: u64,
    producer_detaches: u64,
    consumer_detaches: u64,
    producer_gaps: u64,
    consumer_gaps: u64,
    busy_refusals: u64,
    extra_attaches: u64,
    child_failures: u64,
}

struct Role {
    name: &'static str,
    child: Option<Child>,
    /// Not restarted before this instant (a role left empty on purpose).
    vacant_until: Instant,
}

struct Driver<'a> {
    options: &'a Options,
    socket: PathBuf,
    state: PathBuf,
    exe: PathBuf,
    dir: PathBuf,
}

impl Driver<'_> {
    fn spawn(&self, role: &str) -> Child {
        Command::new(&self.exe)
            .arg(role)
            .arg(&self.socket)
            .arg(&self.state)
            .arg(self.options.seed.to_string())
            .arg(self.options.messages.to_string())
            .stdin(Stdio::null())
            .stderr(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join("children.log"))
                    .expect("children log"),
            )
            .spawn()
            .expect("spawn child")
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

fn run(options: &Options) -> i32 {
    let dir = std::env::temp_dir().join(format!("shmem-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("work dir");
    let state = PathBuf::from(format!("/dev/shm/shmem-soak-{}", std::process::id()));
    let shared_map = SharedMap::<Shared>::create(&state);
    let shared = shared_map.get();
    shared.intent_seq.store(NONE, Ordering::SeqCst);
    let socket = dir.join("broker.sock");
    let mut broker = Command::new(&options.broker)
        .arg("--socket")
        .arg(&socket)
        .arg("--log-level")
        .arg("warn")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(dir.join("broker.log")).expect("broker log"))
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", options.broker.display()));
    let client = connect(&socket);
    let info = client
        .channel(CHANNEL)
        .capacity(options.capacity)
        .create()
        .unwrap_or_else(|e| fail(&format!("create: {e}")));
    println!(
        "soak: broker pid {} on {}, channel {CHANNEL:?} of {} bytes, {} messages, seed {}, work dir {}",
        broker.id(),
        socket.display(),
        info.capacity,
        options.messages,
        options.seed,
        dir.display()
    );
    let driver = Driver {
        options,
        socket: socket.clone(),
        state: state.clone(),
        exe: std::env::current_exe().expect("own path"),
        dir: dir.clone(),
    };
    let mut rng = Rng(options.seed ^ 0xD21E);
    let mut events = Events::default();
    let now = Instant::now();
    let mut producer = Role {
        name: "producer",
        child: Some(driver.spawn("producer")),
        vacant_until: now,
    };
    let mut consumer = Role {
        name: "consumer",
        child: Some(driver.spawn("consumer")),
        vacant_until: now,
    };
    let started = Instant::now();
    let deadline = started + Duration::from_secs(options.max_seconds);
    let mut next_report = started + Duration::from_secs(10);
    let mut next_event = started;
    let mut last_progress = (started, 0u64);
    let finished = loop {
        let now = Instant::now();
        let next = shared.next.load(Ordering::SeqCst);
        if next >= options.messages {
            break true;
        }
        if now > deadline {
            break false;
        }
        if broker.try_wait().ok().flatten().is_some() {
            eprintln!(
                "soak: the broker exited; see {}",
                dir.join("broker.log").display()
            );
            break false;
        }
        // Children that exited by themselves: the producer when it is done, anyone on error.
        for (role, flag_done) in [(&mut producer, true), (&mut consumer, false)] {
            if let Some(child) = role.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let done = flag_done && shared.producer_done.load(Ordering::SeqCst) != 0;
                    if !status.success() {
                        events.child_failures += 1;
                        eprintln!("soak: {} exited with {status}", role.name);
                    }
                    role.child = None;
                    if done {
                        role.vacant_until = deadline + Duration::from_secs(3600);
                    }
                }
            }
            if role.child.is_none() && now >= role.vacant_until {
                role.child = Some(driver.spawn(role.name));
            }
        }
        if events.child_failures > 20 {
            eprintln!(
                "soak: too many child failures; see {}",
                dir.join("children.log").display()
            );
            break false;
        }
        if now >= next_event && shared.producer_done.load(Ordering::SeqCst) == 0 {
            next_event = now + Duration::from_millis(rng.below(2 * options.event_ms + 1));
            match rng.below(100) {
                0..=29 => {
                    if let Some(mut child) = producer.child.take() {
                        kill(&mut child);
                        events.producer_kills += 1;
                    }
                }
                30..=59 => {
                    if let Some(mut child) = consumer.child.take() {
                        kill(&mut child);
                        events.consumer_kills += 1;
                    }
                }
                60..=69 => {
                    if let Some(mut child) = producer.child.take() {
                        stop(&mut child, &shared.stop_producer);
                        events.producer_detaches += 1;
                    }
                }
                70..=79 => {
                    if let Some(mut child) = consumer.child.take() {
                        stop(&mut child, &shared.stop_consumer);
                        events.consumer_detaches += 1;
                    }
                }
                80..=84 => {
                    // Leave a role empty for a while: the ring fills up, or drains.
                    let role = if rng.below(2) == 0 {
                        &mut producer
                    } else {
                        &mut consumer
                    };
                    if let Some(mut child) = role.child.take() {
                        kill(&mut child);
                        if role.name == "producer" {
                            events.producer_kills += 1;
                            events.producer_gaps += 1;
                        } else {
                            events.consumer_kills += 1;
                            events.consumer_gaps += 1;
                        }
                        role.vacant_until =
                            now + Duration::from_millis(50 + rng.below(10 * options.event_ms));
                    }
                }
                _ => {
                    // A second client for a held slot must be refused.
                    let result = if rng.below(2) == 0 {
                        client.producer(CHANNEL).map(drop)
                    } else {
                        client.consumer(CHANNEL).map(drop)
                    };
                    match result {
                        Ok(()) => events.extra_attaches += 1, // the slot happened to be free
                        Err(err) if err.code() == Some(ErrorCode::ChannelBusy) => {
                            events.busy_refusals += 1
                        }
                        Err(err) => {
                            eprintln!("soak: extra attach: {err}");
                            events.child_failures += 1;
                        }
                    }
                }
            }
        }
        if now >= next_report {
            next_report = now + Duration::from_secs(10);
            let rate =
                (next - last_progress.1) as f64 / now.duration_since(last_progress.0).as_secs_f64();
            last_progress = (now, next);
            println!(
                "soak: {:>5.0}s {next:>11} delivered ({rate:.0}/s), {} kills, {} detaches, lost {}, corrupted {}, redelivered {}, duplicates {}",
                now.duration_since(started).as_secs_f64(),
                events.producer_kills + events.consumer_kills,
                events.producer_detaches + events.consumer_detaches,
                shared.lost.load(Ordering::SeqCst),
                shared.corrupted.load(Ordering::SeqCst),
                shared.redelivered.load(Ordering::SeqCst),
                shared.duplicates.load(Ordering::SeqCst),
            );
        }
        std::thread::sleep(Duration::from_micros(500));
    };
    let elapsed = started.elapsed().as_secs_f64();
    for role in [&mut producer, &mut consumer] {
        if let Some(mut child) = role.child.take() {
            if finished && role.name == "consumer" {
                let _ = child.wait(); // it exits by itself after the last message
            } else {
                kill(&mut child);
            }
        }
    }
    let info = client.info(CHANNEL).ok();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(broker.id() as i32, libc::SIGTERM) };
    let broker_status = broker.wait().ok();

    let delivered = shared.next.load(Ordering::SeqCst);
    let lost = shared.lost.load(Ordering::SeqCst);
    let corrupted = shared.corrupted.load(Ordering::SeqCst);
    let duplicates = shared.duplicates.load(Ordering::SeqCst);
    let bytes = shared.bytes.load(Ordering::SeqCst);
    println!(
        "soak: {}",
        if finished {
            "finished"
        } else {
            "STOPPED EARLY"
        }
    );
    println!(
        "  messages delivered in order: {delivered} of {}",
        options.messages
    );
    println!(
        "  bytes: {bytes} ({:.1} GiB), {:.2} s, {:.0} messages/s, {:.0} MiB/s",
        bytes as f64 / (1u64 << 30) as f64,
        elapsed,
        delivered as f64 / elapsed,
        bytes as f64 / elapsed / (1 << 20) as f64
    );
    println!(
        "  producers started {}, SIGKILLed {} ({} left vacant a while), detached cleanly {}; \
         died mid-send and that message sent again {}",
        shared.producer_starts.load(Ordering::SeqCst),
        events.producer_kills,
        events.producer_gaps,
        events.producer_detaches,
        shared.resumed_in_flight.load(Ordering::SeqCst),
    );
    println!(
        "  consumers started {}, SIGKILLed {} ({} left vacant a while), detached cleanly {}",
        shared.consumer_starts.load(Ordering::SeqCst),
        events.consumer_kills,
        events.consumer_gaps,
        events.consumer_detaches,
    );
    println!(
        "  second attaches refused busy {}, accepted while the slot was free {}; end-of-stream marks read {}; child failures {}",
        events.busy_refusals,
        events.extra_attaches,
        shared.end_of_stream_marks.load(Ordering::SeqCst),
        events.child_failures
    );
    if let Some(info) = &info {
        println!(
            "  ring counters: messages_written {}, messages_read {}, bytes_unread {}",
            info.messages_written, info.messages_read, info.bytes_unread
        );
    }
    println!("  broker exit: {broker_status:?}");
    println!(
        "  RESULT: lost={lost} corrupted={corrupted} redelivered={} resent={} duplicates={duplicates}",
        shared.redelivered.load(Ordering::SeqCst),
        shared.resent.load(Ordering::SeqCst),
    );
    let anomalies = shared.anomaly_count.load(Ordering::SeqCst) as usize;
    for slot in shared.anomalies.iter().take(anomalies.min(ANOMALIES)) {
        let what = match slot[0].load(Ordering::SeqCst) {
            ANOMALY_LOST => "lost before",
            ANOMALY_CORRUPT => "corrupted",
            ANOMALY_DUPLICATE => "duplicate",
            _ => "?",
        };
        let seen = slot[1].load(Ordering::SeqCst);
        println!(
            "  anomaly: {what}: seq {} (expected {}), {} bytes",
            if seen == NONE {
                "?".to_string()
            } else {
                seen.to_string()
            },
            slot[2].load(Ordering::SeqCst),
            slot[3].load(Ordering::SeqCst)
        );
    }
    let _ = std::fs::remove_file(&state);
    let ok =
        finished && lost == 0 && corrupted == 0 && duplicates == 0 && events.child_failures == 0;
    if ok {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("  logs kept in {}", dir.display());
    }
    if ok {
        0
    } else {
        1
    }
}

fn parse_size(text: &str) -> u64 {
    shmem_broker_client::size::parse_size(text).unwrap_or_else(|e| fail(&e))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = format!(
        "usage: shmem-broker-soak run --broker PATH [--messages N] [--capacity SIZE] \
         [--seed N] [--max-seconds N] [--event-ms N] {}",
        fanout::usage()
    );
    let usage = usage.as_str();
    match args.first().map(String::as_str) {
        Some(role @ ("producer" | "consumer")) if args.len() == 5 => {
            let socket = Path::new(&args[1]);
            let state = Path::new(&args[2]);
            let seed = args[3].parse().unwrap_or_else(|_| fail("seed"));
            let total = args[4].parse().unwrap_or_else(|_| fail("total"));
            if role == "producer" {
                producer_main(socket, state, seed, total)
            } else {
                consumer_main(socket, state, seed, total)
            }
        }
        Some("fan-producer") => fanout::producer_main(&args[1..]),
        Some("fan-consumer") => fanout::consumer_main(&args[1..]),
        Some("run") => {
            let mut options = Options {
                broker: PathBuf::new(),
                messages: 1_000_000,
                capacity: 1 << 20,
                seed: 1,
                max_seconds: 900,
                event_ms: 20,
                fanout: false,
                producers: 3,
                durable: 2,
                anonymous: 2,
            };
            let mut rest = args[1..].iter();
            while let Some(flag) = rest.next() {
                if flag == "--fanout" {
                    options.fanout = true;
                    continue;
                }
                let value = rest.next().unwrap_or_else(|| fail(usage));
                let number = || -> u64 {
                    value
                        .replace('_', "")
                        .parse()
                        .unwrap_or_else(|_| fail(&format!("{flag}: not a number: {value}")))
                };
                match flag.as_str() {
                    "--broker" => options.broker = PathBuf::from(value),
                    "--messages" => options.messages = number(),
                    "--capacity" => options.capacity = parse_size(value),
                    "--seed" => options.seed = number(),
                    "--max-seconds" => options.max_seconds = number(),
                    "--event-ms" => options.event_ms = number().max(1),
                    "--producers" => options.producers = number() as usize,
                    "--durable" => options.durable = number() as usize,
                    "--anonymous" => options.anonymous = number() as usize,
                    _ => fail(usage),
                }
            }
            if options.broker.as_os_str().is_empty() {
                fail(usage);
            }
            std::process::exit(if options.fanout {
                fanout::run(&options)
            } else {
                run(&options)
            });
        }
        _ => fail(usage),
    }
}
