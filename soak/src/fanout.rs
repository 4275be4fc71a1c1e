//! Fan-out soak (`run --fanout`): one channel with `max_producers = P` and `max_consumers =
//! D + A` under policy `block`, P producer processes, D durable consumers (names `d0`, `d1`,
//! ...) and up to A anonymous consumers, all attaching, detaching and getting SIGKILLed at
//! random. See `fuzz/SOAK.md`.
//!
//! Each producer slot (id 0 .. P-1) carries one numbered stream (`crate::message`): whichever
//! process holds the slot sends its messages 0 .. M-1 in order, resuming where the slot's last
//! holder stopped.
//!
//! What is checked, per consumer and per stream, in the `recv_batch(1, ..)` callback (before
//! the library publishes the read position, so its stores survive a kill exactly as the
//! message does):
//!
//! * every message intact (length, CRC, body), and from the producer `last_producer()` names;
//! * **durable consumers** (state kept across their processes): every stream from message 0,
//!   in order, no gap, until all M are in. A message may come twice in a row only (a) once
//!   after a SIGKILL, as the first message of its stream in the new process, if the killed
//!   process was between accounting for a message of that stream and the return of the
//!   `recv_batch` that read it (README: at-least-once for the one message being read; each
//!   producer's ring has its own read position, so that message stays unread on its ring
//!   until a later process reads that ring, however many processes come and go before), or (b) once per time a producer died in the middle of sending it
//!   and its successor sent it again (the soak's producers resend a message whose send was
//!   cut short; which consumers it had reached by then is unknown, so the copy counts as
//!   "resent", allowed only for messages in the slot's resend log);
//! * **anonymous consumers** (state per process): each stream a gap-free, in-order suffix. Its
//!   first message may be no earlier than what was published before the attach, and no later
//!   than the first message whose send started after the attach returned (README: every
//!   consumer receives every message written after it attached); repeats as in (b). A consumer
//!   still attached at the end must have received every stream to its end.
//!
//! Anything else counts as lost (messages skipped), corrupted, misattributed (not from the
//! producer `last_producer()` named) or repeated, and fails the run.

use crate::message::{Format, Hint};
use crate::{
    attach, connect, fail, kill, stop, wait_readable, Options, Rng, SharedMap, SharedState,
    CHANNEL, NONE,
};
use shmem_broker_client::{Client, ErrorCode, SlowConsumer, TryRecvError};
use std::cell::Cell;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const MAX_STREAMS: usize = 8;
pub const MAX_DURABLE: usize = 8;
pub const MAX_ANONYMOUS: usize = 8;
/// Resends remembered per stream; a consumer lags by at most a ring's worth of messages, and
/// a resend needs a producer SIGKILLed mid-send.
const RESEND_LOG: usize = 512;
const ANOMALIES: usize = 64;

const DURABLE: usize = 0;
const ANONYMOUS: usize = 1;
const KIND_NAMES: [&str; 2] = ["durable", "anonymous"];

/// Exit status of a producer process that found only finished streams' slots free.
const NOTHING_TO_SEND: i32 = 3;

#[repr(C)]
struct Stream {
    /// Messages 0..published went out to every consumer the producer knew.
    published: AtomicU64,
    /// The message being sent: equal to `published` while a send is under way.
    intent: AtomicU64,
    /// The slot's producer sent all M messages and closed.
    done: AtomicU64,
    /// Messages a new producer sent again because its predecessor died sending them.
    resend_count: AtomicU64,
    resends: [AtomicU64; RESEND_LOG],
}

/// One consumer's view: a durable name's across all its processes, or one anonymous process's.
#[repr(C)]
struct Reader {
    /// Next message expected per stream; NONE before the first (anonymous consumers).
    next: [AtomicU64; MAX_STREAMS],
    /// Copies of message `next - 1` accounted to resends.
    repeats: [AtomicU64; MAX_STREAMS],
    /// Anonymous: the first message of a stream is at least `low` and at most `high`.
    low: [AtomicU64; MAX_STREAMS],
    high: [AtomicU64; MAX_STREAMS],
    /// Per stream: 1 from the moment a message of the stream is accounted for until the
    /// `recv_batch` that read it returned (its read position published).
    pending: [AtomicU64; MAX_STREAMS],
    /// Anonymous: attached and bounds set.
    attached: AtomicU64,
    /// Durable: every stream received to its end.
    done: AtomicU64,
    /// Driver to process: detach cleanly.
    stop: AtomicU64,
}

#[repr(C)]
struct Tally {
    starts: AtomicU64,
    messages: AtomicU64,
    bytes: AtomicU64,
    lost: AtomicU64,
    corrupted: AtomicU64,
    misattributed: AtomicU64,
    repeated: AtomicU64,
    redelivered: AtomicU64,
    resent: AtomicU64,
    end_of_stream: AtomicU64,
}

#[repr(C)]
struct State {
    streams: [Stream; MAX_STREAMS],
    /// Driver to producer process `i`: detach cleanly.
    producer_stop: [AtomicU64; MAX_STREAMS],
    producer_starts: AtomicU64,
    /// Producers that resumed a send their slot's predecessor died in.
    resumed_in_flight: AtomicU64,
    /// Producer processes that found only finished slots free.
    producers_idle: AtomicU64,
    readers: [[Reader; MAX_DURABLE]; 2],
    tally: [Tally; 2],
    anomaly_count: AtomicU64,
    /// (what, kind << 8 | reader index, stream, seq seen or NONE, expected)
    anomalies: [[AtomicU64; 5]; ANOMALIES],
}

const _: () = assert!(MAX_ANONYMOUS <= MAX_DURABLE);

// SAFETY: repr(C), atomics only.
unsafe impl SharedState for State {}

const ANOMALY_LOST: u64 = 1;
const ANOMALY_CORRUPT: u64 = 2;
const ANOMALY_REPEATED: u64 = 3;
const ANOMALY_MISATTRIBUTED: u64 = 4;
const ANOMALY_EARLY: u64 = 5;
const ANOMALY_SHORT_AT_END: u64 = 6;

impl State {
    fn anomaly(&self, what: u64, who: u64, stream: u64, seen: u64, expected: u64) {
        let i = self.anomaly_count.fetch_add(1, Ordering::SeqCst) as usize;
        if let Some(slot) = self.anomalies.get(i) {
            for (cell, value) in slot.iter().zip([what, who, stream, seen, expected]) {
                cell.store(value, Ordering::SeqCst);
            }
        }
    }

    fn resends_of(&self, stream: usize, seq: u64) -> u64 {
        let log = &self.streams[stream];
        let count = log.resend_count.load(Ordering::SeqCst);
        let kept = count.min(RESEND_LOG as u64);
        (count - kept..count)
            .filter(|&i| log.resends[i as usize % RESEND_LOG].load(Ordering::SeqCst) == seq)
            .count() as u64
    }
}

/// What every child of a run is told on its command line.
struct Setup {
    socket: PathBuf,
    state: PathBuf,
    seed: u64,
    /// Messages per stream.
    per_stream: u64,
    streams: u64,
}

impl Setup {
    fn args(&self) -> Vec<String> {
        vec![
            self.socket.display().to_string(),
            self.state.display().to_string(),
            self.seed.to_string(),
            self.per_stream.to_string(),
            self.streams.to_string(),
        ]
    }

    fn parse(args: &[String]) -> Setup {
        let number = |i: usize| -> u64 {
            args.get(i)
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| fail(&format!("child argument {i}: {args:?}")))
        };
        let setup = Setup {
            socket: PathBuf::from(&args[0]),
            state: PathBuf::from(&args[1]),
            seed: number(2),
            per_stream: number(3),
            streams: number(4),
        };
        if !(1..=MAX_STREAMS as u64).contains(&setup.streams) {
            fail("bad stream count");
        }
        setup
    }

    fn format(&self, capacity: u64) -> Format {
        Format::new(self.seed, self.streams, capacity)
    }
}

fn durable_name(index: usize) -> String {
    format!("d{index}")
}

// ---------------------------------------------------------------------------------------------
// Children

/// `fan-producer SOCKET STATE SEED PER_STREAM STREAMS INDEX`
pub fn producer_main(args: &[String]) {
    if args.len() != 6 {
        fail("fan-producer: bad arguments");
    }
    let setup = Setup::parse(args);
    let index: usize = args[5].parse().unwrap_or_else(|_| fail("producer index"));
    let map = SharedMap::<State>::open(&setup.state);
    let state = map.get();
    let stop = state
        .producer_stop
        .get(index)
        .unwrap_or_else(|| fail("producer index"));
    let client = connect(&setup.socket);
    // The broker hands out the lowest free slot. Slots whose stream is finished are held
    // (not sent to) while asking for another, so a finished slot cannot keep a process from
    // the unfinished one behind it.
    let mut finished_slots = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut producer, stream) = loop {
        match client.producer(CHANNEL) {
            Ok(producer) => {
                let stream = producer.id() as usize;
                if stream >= setup.streams as usize {
                    fail(&format!("producer slot {stream} of {}", setup.streams));
                }
                if state.streams[stream].done.load(Ordering::SeqCst) == 0 {
                    break (producer, stream);
                }
                finished_slots.push(producer);
            }
            Err(err) if err.code() == Some(ErrorCode::ChannelBusy) => {
                if !finished_slots.is_empty() {
                    state.producers_idle.fetch_add(1, Ordering::SeqCst);
                    std::process::exit(NOTHING_TO_SEND);
                }
                if Instant::now() > deadline {
                    fail(&format!("attach producer: {err}"));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(err) => fail(&format!("attach producer: {err}")),
        }
    };
    // Dropping them leaves end-of-stream marks (counted by the consumers, nothing more).
    drop(finished_slots);
    let format = setup.format(producer.capacity());
    let slot = &state.streams[stream];
    // Nobody else can send on this stream now.
    let mut seq = slot.published.load(Ordering::SeqCst);
    if slot.intent.load(Ordering::SeqCst) == seq && seq < setup.per_stream {
        // The last holder died sending `seq`: it may have reached some consumers and not
        // others. Sending it again may repeat it for those; say so before it can arrive.
        let count = slot.resend_count.load(Ordering::SeqCst);
        slot.resends[count as usize % RESEND_LOG].store(seq, Ordering::SeqCst);
        slot.resend_count.store(count + 1, Ordering::SeqCst);
        state.resumed_in_flight.fetch_add(1, Ordering::SeqCst);
    }
    state.producer_starts.fetch_add(1, Ordering::SeqCst);
    let s = stream as u64;
    while seq < setup.per_stream {
        if stop.load(Ordering::SeqCst) != 0 {
            return; // dropping the producer detaches (and leaves end-of-stream marks)
        }
        let len = format.len_of(s, seq);
        slot.intent.store(seq, Ordering::SeqCst);
        loop {
            // Under `block`, a non-blocking send goes to every consumer or to none.
            match producer.try_send_with(len, |buf| format.fill(s, seq, buf)) {
                Ok(()) => break,
                Err(err) if err.is_full() => {
                    if stop.load(Ordering::SeqCst) != 0 {
                        slot.intent.store(NONE, Ordering::SeqCst);
                        return;
                    }
                    wait_readable(producer.ready_fd(), 100);
                }
                Err(err) => fail(&format!("stream {stream}: send {seq}: {err}")),
            }
        }
        slot.published.store(seq + 1, Ordering::SeqCst);
        seq += 1;
    }
    producer
        .close()
        .unwrap_or_else(|e| fail(&format!("stream {stream}: close: {e}")));
    slot.done.store(1, Ordering::SeqCst);
}

/// `fan-consumer SOCKET STATE SEED PER_STREAM STREAMS durable|anonymous INDEX`
pub fn consumer_main(args: &[String]) {
    if args.len() != 7 {
        fail("fan-consumer: bad arguments");
    }
    let setup = Setup::parse(args);
    let kind = match args[5].as_str() {
        "durable" => DURABLE,
        "anonymous" => ANONYMOUS,
        other => fail(&format!("consumer kind {other:?}")),
    };
    let index: usize = args[6].parse().unwrap_or_else(|_| fail("consumer index"));
    let map = SharedMap::<State>::open(&setup.state);
    let state = map.get();
    let reader = state.readers[kind]
        .get(index)
        .unwrap_or_else(|| fail("consumer index"));
    let tally = &state.tally[kind];
    let streams = setup.streams as usize;
    let who = (kind as u64) << 8 | index as u64;
    let client = connect(&setup.socket);

    let mut consumer = if kind == DURABLE {
        let name = durable_name(index);
        attach("durable consumer", || {
            client.attach(CHANNEL).durable(&name).consumer()
        })
    } else {
        // A fresh view; the lower bounds are read before the queue exists.
        reader.attached.store(0, Ordering::SeqCst);
        for s in 0..streams {
            reader.next[s].store(NONE, Ordering::SeqCst);
            reader.repeats[s].store(0, Ordering::SeqCst);
            let published = state.streams[s].published.load(Ordering::SeqCst);
            reader.low[s].store(published, Ordering::SeqCst);
        }
        let consumer = attach("anonymous consumer", || client.consumer(CHANNEL));
        // The queue exists and producers bump into it at their next message: any send that
        // starts after this reads `intent` must reach it.
        for s in 0..streams {
            let stream = &state.streams[s];
            let intent = stream.intent.load(Ordering::SeqCst);
            let published = stream.published.load(Ordering::SeqCst);
            let high = if intent == published {
                published + 1 // that one is under way; the next is not
            } else {
                published
            };
            reader.high[s].store(high, Ordering::SeqCst);
        }
        reader.attached.store(1, Ordering::SeqCst);
        consumer
    };
    tally.starts.fetch_add(1, Ordering::SeqCst);
    let format = setup.format(consumer.capacity());

    // A message a durable consumer's predecessor accounted for without publishing its read
    // position (at-least-once) comes again: allowed once per such stream, as its first.
    let mut allowance = [false; MAX_STREAMS];
    if kind == DURABLE {
        for (s, allowed) in allowance.iter_mut().enumerate().take(streams) {
            *allowed = reader.pending[s].load(Ordering::SeqCst) != 0;
        }
    }
    let mut first_of_stream = [true; MAX_STREAMS];
    // The stream the callback identified, checked against `last_producer()` after the call.
    let identified = Cell::new(None);
    let mut account = |message: &[u8]| {
        // Runs before the library publishes the read position.
        let hint = |s: u64| {
            let s = s as usize;
            match reader.next[s].load(Ordering::SeqCst) {
                NONE => {
                    let high = reader.high[s].load(Ordering::SeqCst);
                    Hint {
                        expected: high,
                        low: reader.low[s].load(Ordering::SeqCst),
                        high: high.saturating_add(256),
                    }
                }
                next => Hint::around(next),
            }
        };
        let Some((s64, seq)) = format.identify(message, hint) else {
            tally.corrupted.fetch_add(1, Ordering::SeqCst);
            state.anomaly(ANOMALY_CORRUPT, who, NONE, NONE, message.len() as u64);
            identified.set(None);
            return;
        };
        identified.set(Some(s64));
        let s = s64 as usize;
        let first = std::mem::replace(&mut first_of_stream[s], false);
        reader.pending[s].store(1, Ordering::SeqCst);
        let next = reader.next[s].load(Ordering::SeqCst);
        let advance = |to: u64| {
            reader.repeats[s].store(0, Ordering::SeqCst);
            tally.messages.fetch_add(1, Ordering::Relaxed);
            tally
                .bytes
                .fetch_add(message.len() as u64, Ordering::Relaxed);
            // Stored last: the one store that accounts for the message.
            reader.next[s].store(to, Ordering::SeqCst);
        };
        if next == NONE {
            let (low, high) = (
                reader.low[s].load(Ordering::SeqCst),
                reader.high[s].load(Ordering::SeqCst),
            );
            if seq > high {
                tally.lost.fetch_add(seq - high, Ordering::SeqCst);
                state.anomaly(ANOMALY_LOST, who, s64, seq, high);
            } else if seq < low {
                tally.repeated.fetch_add(1, Ordering::SeqCst);
                state.anomaly(ANOMALY_EARLY, who, s64, seq, low);
            }
            advance(seq + 1);
        } else if seq == next {
            advance(next + 1);
        } else if seq + 1 == next {
            if first && std::mem::take(&mut allowance[s]) {
                tally.redelivered.fetch_add(1, Ordering::SeqCst);
            } else if state.resends_of(s, seq) > reader.repeats[s].load(Ordering::SeqCst) {
                reader.repeats[s].fetch_add(1, Ordering::SeqCst);
                tally.resent.fetch_add(1, Ordering::SeqCst);
            } else {
                tally.repeated.fetch_add(1, Ordering::SeqCst);
                state.anomaly(ANOMALY_REPEATED, who, s64, seq, next);
            }
        } else if seq < next {
            tally.repeated.fetch_add(1, Ordering::SeqCst);
            state.anomaly(ANOMALY_REPEATED, who, s64, seq, next);
        } else {
            tally.lost.fetch_add(seq - next, Ordering::SeqCst);
            state.anomaly(ANOMALY_LOST, who, s64, seq, next);
            advance(seq + 1);
        }
    };
    let complete = || {
        (0..streams).all(|s| {
            let next = reader.next[s].load(Ordering::SeqCst);
            next != NONE && next >= setup.per_stream
        })
    };
    loop {
        if reader.stop.load(Ordering::SeqCst) != 0 {
            return;
        }
        if kind == DURABLE && complete() {
            reader.done.store(1, Ordering::SeqCst);
            return;
        }
        match consumer.try_recv_batch(1, &mut account) {
            Ok(Some(_)) => {
                let from = consumer.last_producer().map(u64::from);
                let stream = identified.take();
                if let Some(s) = stream {
                    // Its read position is published.
                    reader.pending[s as usize].store(0, Ordering::SeqCst);
                }
                if let Some(s) = stream.filter(|&s| Some(s) != from) {
                    tally.misattributed.fetch_add(1, Ordering::SeqCst);
                    state.anomaly(ANOMALY_MISATTRIBUTED, who, s, NONE, from.unwrap_or(NONE));
                }
            }
            Ok(None) => {
                tally.end_of_stream.fetch_add(1, Ordering::SeqCst);
            }
            Err(err) if err.is_empty() => wait_readable(consumer.ready_fd(), 100),
            // A producer SIGKILLed without end-of-stream, told once; the stream's next producer
            // resumes it, and the sequence numbers judge what arrived.
            Err(TryRecvError::Failed(shmem_broker_client::Error::ProducerGone { .. })) => {}
            Err(err) => fail(&format!(
                "{} consumer {index}: receive: {err}",
                KIND_NAMES[kind]
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Driver

#[derive(Default)]
struct Counts {
    kills: u64,
    detaches: u64,
    vacancies: u64,
}

#[derive(Default)]
struct Events {
    producers: Counts,
    consumers: [Counts; 2],
    refused_busy: u64,
    refused_limit: u64,
    accepted: u64,
    child_failures: u64,
}

struct Role {
    child: Option<Child>,
    /// Not restarted before this instant.
    vacant_until: Instant,
    /// Finished (a durable consumer with everything): never restarted.
    done: bool,
}

impl Role {
    fn new(now: Instant) -> Role {
        Role {
            child: None,
            vacant_until: now,
            done: false,
        }
    }
}

struct Driver {
    setup: Setup,
    exe: PathBuf,
    log: PathBuf,
}

impl Driver {
    fn spawn(&self, what: &str, extra: &[String]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| fail(&format!("children log: {e}")));
        Command::new(&self.exe)
            .arg(what)
            .args(self.setup.args())
            .args(extra)
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| fail(&format!("spawn {what}: {e}")))
    }

    fn spawn_producer(&self, index: usize) -> Child {
        self.spawn("fan-producer", &[index.to_string()])
    }

    fn spawn_consumer(&self, kind: usize, index: usize) -> Child {
        self.spawn(
            "fan-consumer",
            &[KIND_NAMES[kind].into(), index.to_string()],
        )
    }
}

/// A random role of the list that has a process.
fn pick(rng: &mut Rng, roles: &mut [Role]) -> Option<usize> {
    let live: Vec<usize> = (0..roles.len())
        .filter(|&i| roles[i].child.is_some())
        .collect();
    (!live.is_empty()).then(|| live[rng.below(live.len() as u64) as usize])
}

pub fn run(options: &Options) -> i32 {
    let streams = options.producers;
    let (durables, anonymous) = (options.durable, options.anonymous);
    // Durable names need max_consumers > 1.
    if !(1..=MAX_STREAMS).contains(&streams)
        || !(1..=MAX_DURABLE).contains(&durables)
        || anonymous > MAX_ANONYMOUS
        || durables + anonymous < 2
    {
        fail(&format!(
            "--producers 1..={MAX_STREAMS}, --durable 1..={MAX_DURABLE}, --anonymous 0..={MAX_ANONYMOUS}, durable + anonymous >= 2"
        ));
    }
    let per_stream = options.messages.div_ceil(streams as u64).max(1);
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("shmem-soak-{pid}"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail(&format!("work dir: {e}")));
    let state_path = PathBuf::from(format!("/dev/shm/shmem-soak-{pid}"));
    let map = SharedMap::<State>::create(&state_path);
    let state = map.get();
    for stream in &state.streams {
        stream.intent.store(NONE, Ordering::SeqCst);
    }
    let socket = dir.join("broker.sock");
    let broker_log = dir.join("broker.log");
    let mut broker = Command::new(&options.broker)
        .arg("--socket")
        .arg(&socket)
        .arg("--log-level")
        .arg("warn")
        .stdin(Stdio::null())
        .stderr(
            std::fs::File::create(&broker_log)
                .unwrap_or_else(|e| fail(&format!("broker log: {e}"))),
        )
        .spawn()
        .unwrap_or_else(|e| fail(&format!("start {}: {e}", options.broker.display())));
    let client = connect(&socket);
    let max_consumers = (durables + anonymous) as u32;
    let info = client
        .channel(CHANNEL)
        .capacity(options.capacity)
        .max_producers(streams as u32)
        .max_consumers(max_consumers)
        .slow_consumer(SlowConsumer::Block)
        .create()
        .unwrap_or_else(|e| fail(&format!("create: {e}")));
    // Durable queues exist before the first message, so they must receive every one.
    for d in 0..durables {
        drop(attach("durable consumer", || {
            client.attach(CHANNEL).durable(&durable_name(d)).consumer()
        }));
    }
    println!(
        "soak: fan-out, broker pid {} on {}, channel {CHANNEL:?}: {} bytes per ring, max_producers {}, max_consumers {} ({durables} durable + {anonymous} anonymous), policy block; {streams} streams of {per_stream} messages, seed {}, work dir {}",
        broker.id(),
        socket.display(),
        info.capacity,
        info.max_producers,
        info.max_consumers,
        options.seed,
        dir.display()
    );
    let driver = Driver {
        setup: Setup {
            socket: socket.clone(),
            state: state_path.clone(),
            seed: options.seed,
            per_stream,
            streams: streams as u64,
        },
        exe: std::env::current_exe().unwrap_or_else(|e| fail(&format!("own path: {e}"))),
        log: dir.join("children.log"),
    };
    let mut rng = Rng(options.seed ^ 0xFA40);
    let mut events = Events::default();
    let started = Instant::now();
    let mut producers: Vec<Role> = (0..streams).map(|_| Role::new(started)).collect();
    let mut consumers: [Vec<Role>; 2] = [
        (0..durables).map(|_| Role::new(started)).collect(),
        (0..anonymous).map(|_| Role::new(started)).collect(),
    ];
    let deadline = started + Duration::from_secs(options.max_seconds);
    let mut next_report = started + Duration::from_secs(10);
    let mut next_event = started;
    let durable_progress = || -> u64 {
        state.readers[DURABLE][..durables]
            .iter()
            .flat_map(|r| &r.next[..streams])
            .map(|n| n.load(Ordering::SeqCst))
            .sum()
    };
    let all_streams_done = || {
        state.streams[..streams]
            .iter()
            .all(|s| s.done.load(Ordering::SeqCst) != 0)
    };
    let mut last_progress = (started, 0u64);
    let mut last_change = (started, u64::MAX);
    let stall = Duration::from_secs(120);
    let mut stop_reason = None;
    let finished = loop {
        let now = Instant::now();
        let progress = durable_progress();
        if consumers[DURABLE].iter().all(|r| r.done) {
            break true;
        }
        if now > deadline {
            stop_reason = Some("time is up".to_string());
            break false;
        }
        if progress != last_change.1 {
            last_change = (now, progress);
        } else if now.duration_since(last_change.0) > stall {
            stop_reason = Some(format!(
                "no durable consumer progressed for {} s (stalled)",
                stall.as_secs()
            ));
            break false;
        }
        if let Ok(Some(status)) = broker.try_wait() {
            stop_reason = Some(format!("the broker exited ({status})"));
            break false;
        }
        // Reap children that exited by themselves; restart empty roles.
        let streams_done = all_streams_done();
        for (i, role) in producers.iter_mut().enumerate() {
            if let Some(status) = role
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                role.child = None;
                match status.code() {
                    Some(0) => {}
                    Some(NOTHING_TO_SEND) => {
                        role.vacant_until = now + Duration::from_millis(20);
                    }
                    _ => {
                        events.child_failures += 1;
                        eprintln!("soak: producer {i} exited with {status}");
                    }
                }
            }
            if role.child.is_none() && !streams_done && now >= role.vacant_until {
                role.child = Some(driver.spawn_producer(i));
            }
        }
        for (kind, roles) in consumers.iter_mut().enumerate() {
            for (i, role) in roles.iter_mut().enumerate() {
                if let Some(status) = role
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    role.child = None;
                    if !status.success() {
                        events.child_failures += 1;
                        eprintln!(
                            "soak: {} consumer {i} exited with {status}",
                            KIND_NAMES[kind]
                        );
                    } else if kind == DURABLE
                        && state.readers[DURABLE][i].done.load(Ordering::SeqCst) != 0
                    {
                        role.done = true;
                    }
                    if kind == ANONYMOUS {
                        // Anonymous consumers come back at random moments mid-stream.
                        role.vacant_until =
                            now + Duration::from_millis(rng.below(4 * options.event_ms + 1));
                    }
                }
                if role.child.is_none() && !role.done && now >= role.vacant_until {
                    role.child = Some(driver.spawn_consumer(kind, i));
                }
            }
        }
        if events.child_failures > 20 {
            stop_reason = Some("too many child failures".into());
            break false;
        }
        if now >= next_event {
            next_event = now + Duration::from_millis(rng.below(2 * options.event_ms + 1));
            let roll = rng.below(100);
            match roll {
                // SIGKILL one process: a producer, a durable or an anonymous consumer.
                0..=24 => {
                    if let Some(i) = pick(&mut rng, &mut producers) {
                        if let Some(mut child) = producers[i].child.take() {
                            kill(&mut child);
                            events.producers.kills += 1;
                        }
                    }
                }
                25..=59 => {
                    let kind = if roll < 43 { DURABLE } else { ANONYMOUS };
                    if let Some(i) = pick(&mut rng, &mut consumers[kind]) {
                        if let Some(mut child) = consumers[kind][i].child.take() {
                            kill(&mut child);
                            events.consumers[kind].kills += 1;
                            if kind == ANONYMOUS {
                                consumers[kind][i].vacant_until = now
                                    + Duration::from_millis(rng.below(4 * options.event_ms + 1));
                            }
                        }
                    }
                }
                // Ask one to detach cleanly.
                60..=64 => {
                    if let Some(i) = pick(&mut rng, &mut producers) {
                        if let Some(mut child) = producers[i].child.take() {
                            stop(&mut child, &state.producer_stop[i]);
                            events.producers.detaches += 1;
                        }
                    }
                }
                65..=74 => {
                    let kind = if roll < 70 { DURABLE } else { ANONYMOUS };
                    if let Some(i) = pick(&mut rng, &mut consumers[kind]) {
                        if let Some(mut child) = consumers[kind][i].child.take() {
                            stop(&mut child, &state.readers[kind][i].stop);
                            events.consumers[kind].detaches += 1;
                            if kind == DURABLE
                                && state.readers[DURABLE][i].done.load(Ordering::SeqCst) != 0
                            {
                                consumers[kind][i].done = true;
                            }
                        }
                    }
                }
                // SIGKILL one and leave its role empty a while: rings fill up (a durable
                // consumer away blocks every producer) or drain.
                75..=82 => {
                    let which = rng.below(3) as usize;
                    let roles = match which {
                        0 => &mut producers,
                        k => &mut consumers[k - 1],
                    };
                    if let Some(i) = pick(&mut rng, roles) {
                        if let Some(mut child) = roles[i].child.take() {
                            kill(&mut child);
                            roles[i].vacant_until =
                                now + Duration::from_millis(50 + rng.below(10 * options.event_ms));
                            let counts = match which {
                                0 => &mut events.producers,
                                k => &mut events.consumers[k - 1],
                            };
                            counts.kills += 1;
                            counts.vacancies += 1;
                        }
                    }
                }
                // One more attach than the channel allows while its slots are held.
                _ => extra_attach(&client, &mut rng, durables, &mut events),
            }
        }
        if now >= next_report {
            next_report = now + Duration::from_secs(10);
            let rate = (progress - last_progress.1) as f64
                / now.duration_since(last_progress.0).as_secs_f64();
            last_progress = (now, progress);
            let total = |f: fn(&Tally) -> &AtomicU64| -> u64 {
                state
                    .tally
                    .iter()
                    .map(|t| f(t).load(Ordering::SeqCst))
                    .sum()
            };
            println!(
                "soak: {:>5.0}s durable {progress:>10} of {} ({rate:.0}/s), anonymous {}, kills p/d/a {}/{}/{}, lost {}, corrupted {}, repeated {}",
                now.duration_since(started).as_secs_f64(),
                per_stream * (streams * durables) as u64,
                state.tally[ANONYMOUS].messages.load(Ordering::SeqCst),
                events.producers.kills,
                events.consumers[DURABLE].kills,
                events.consumers[ANONYMOUS].kills,
                total(|t| &t.lost),
                total(|t| &t.corrupted),
                total(|t| &t.repeated) + total(|t| &t.misattributed),
            );
        }
        std::thread::sleep(Duration::from_micros(500));
    };
    let elapsed = started.elapsed().as_secs_f64();

    // Anonymous consumers still attached must get every stream to its end.
    let mut anonymous_short = 0;
    let mut anonymous_checked = 0;
    if finished {
        let drain_deadline = Instant::now() + Duration::from_secs(60);
        let missing = |i: usize| -> u64 {
            let reader = &state.readers[ANONYMOUS][i];
            (0..streams)
                .map(|s| match reader.next[s].load(Ordering::SeqCst) {
                    NONE => per_stream.saturating_sub(reader.high[s].load(Ordering::SeqCst)),
                    next => per_stream.saturating_sub(next),
                })
                .sum()
        };
        let attached: Vec<usize> = (0..anonymous)
            .filter(|&i| {
                consumers[ANONYMOUS][i].child.is_some()
                    && state.readers[ANONYMOUS][i].attached.load(Ordering::SeqCst) != 0
            })
            .collect();
        while Instant::now() < drain_deadline && attached.iter().any(|&i| missing(i) > 0) {
            std::thread::sleep(Duration::from_millis(10));
        }
        for &i in &attached {
            // Still there (not killed while draining): its count is final.
            if consumers[ANONYMOUS][i]
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
            {
                anonymous_checked += 1;
                let short = missing(i);
                if short > 0 {
                    anonymous_short += short;
                    state.anomaly(
                        ANOMALY_SHORT_AT_END,
                        (ANONYMOUS as u64) << 8 | i as u64,
                        NONE,
                        NONE,
                        short,
                    );
                }
            }
        }
    }
    for role in producers
        .iter_mut()
        .chain(consumers.iter_mut().flat_map(|r| r.iter_mut()))
    {
        if let Some(mut child) = role.child.take() {
            kill(&mut child);
        }
    }
    let layouts = crate::layout::rings_by_layout(broker.id());
    let info = client.info(CHANNEL).ok();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(broker.id() as i32, libc::SIGTERM) };
    let broker_status = broker.wait().ok();

    let sum = |f: fn(&Tally) -> &AtomicU64| -> u64 {
        state
            .tally
            .iter()
            .map(|t| f(t).load(Ordering::SeqCst))
            .sum()
    };
    let lost = sum(|t| &t.lost) + anonymous_short;
    let corrupted = sum(|t| &t.corrupted);
    let misattributed = sum(|t| &t.misattributed);
    let repeated = sum(|t| &t.repeated);
    let delivered = durable_progress();
    let expected = per_stream * (streams * durables) as u64;
    println!(
        "soak: {}",
        match &stop_reason {
            None => "finished".to_string(),
            Some(why) => format!("STOPPED EARLY: {why}"),
        }
    );
    println!(
        "  durable consumers: reached {delivered} of {expected} stream positions ({durables} consumers x {streams} streams x {per_stream}), {:.2} s, {:.0} messages/s",
        elapsed,
        delivered as f64 / elapsed
    );
    for kind in [DURABLE, ANONYMOUS] {
        let t = &state.tally[kind];
        let c = &events.consumers[kind];
        println!(
            "  {} consumers: started {}, SIGKILLed {} ({} left vacant a while), detached cleanly {}; messages checked {}, bytes {} ({:.1} GiB); lost {}, corrupted {}, misattributed {}, repeated {}, redelivered after a kill {}, resent copies {}; end-of-stream marks {}",
            KIND_NAMES[kind],
            t.starts.load(Ordering::SeqCst),
            c.kills,
            c.vacancies,
            c.detaches,
            t.messages.load(Ordering::SeqCst),
            t.bytes.load(Ordering::SeqCst),
            t.bytes.load(Ordering::SeqCst) as f64 / (1u64 << 30) as f64,
            t.lost.load(Ordering::SeqCst),
            t.corrupted.load(Ordering::SeqCst),
            t.misattributed.load(Ordering::SeqCst),
            t.repeated.load(Ordering::SeqCst),
            t.redelivered.load(Ordering::SeqCst),
            t.resent.load(Ordering::SeqCst),
            t.end_of_stream.load(Ordering::SeqCst),
        );
    }
    if finished {
        println!(
            "  anonymous consumers attached at the end: {anonymous_checked}, messages they were short of every stream's end: {anonymous_short}"
        );
    }
    println!(
        "  producers started {}, SIGKILLed {} ({} left vacant a while), detached cleanly {}; resumed a send cut short {}; found only finished slots free {}",
        state.producer_starts.load(Ordering::SeqCst),
        events.producers.kills,
        events.producers.vacancies,
        events.producers.detaches,
        state.resumed_in_flight.load(Ordering::SeqCst),
        state.producers_idle.load(Ordering::SeqCst),
    );
    println!(
        "  extra attaches refused busy {}, refused at max_consumers {}, accepted while a slot was free {}; child failures {}",
        events.refused_busy, events.refused_limit, events.accepted, events.child_failures
    );
    let layout_ok = match &layouts {
        Ok(counts) => {
            let text: Vec<String> = counts
                .iter()
                .map(|(layout, rings)| format!("{rings} in layout {layout}"))
                .collect();
            println!("  rings the broker held at the end: {}", text.join(", "));
            counts.iter().all(|&(layout, _)| layout == 2) && !counts.is_empty()
        }
        Err(why) => {
            println!("  ring layout not checked: {why}");
            true
        }
    };
    if let Some(info) = &info {
        println!(
            "  channel counters: messages_written {}, messages_read {}, bytes_unread {}, ring_bytes {}",
            info.messages_written, info.messages_read, info.bytes_unread, info.ring_bytes
        );
    }
    println!("  broker exit: {broker_status:?}");
    println!(
        "  RESULT: lost={lost} corrupted={} repeated={repeated} redelivered={} resent={} kills: producers={} durable={} anonymous={} messages={}",
        corrupted + misattributed,
        sum(|t| &t.redelivered),
        sum(|t| &t.resent),
        events.producers.kills,
        events.consumers[DURABLE].kills,
        events.consumers[ANONYMOUS].kills,
        sum(|t| &t.messages),
    );
    print_anomalies(state);
    let _ = std::fs::remove_file(&state_path);
    let ok = finished
        && lost == 0
        && corrupted == 0
        && misattributed == 0
        && repeated == 0
        && events.child_failures == 0
        && layout_ok;
    if ok {
        let _ = std::fs::remove_dir_all(&dir);
        0
    } else {
        println!("  logs kept in {}", dir.display());
        1
    }
}

/// Attaches once more than the channel allows while every slot is held: a producer (refused
/// `channel_busy` while all `max_producers` are attached), a durable consumer under a name
/// (refused `channel_busy` while that name is attached), an anonymous consumer (refused
/// `limit_reached` while all `max_consumers` queues exist). Accepted ones are dropped at once.
fn extra_attach(client: &Client, rng: &mut Rng, durables: usize, events: &mut Events) {
    let (what, result, refusal) = match rng.below(3) {
        0 => (
            "producer",
            client.producer(CHANNEL).map(drop),
            ErrorCode::ChannelBusy,
        ),
        1 => {
            let name = durable_name(rng.below(durables as u64) as usize);
            (
                "durable consumer",
                client.attach(CHANNEL).durable(&name).consumer().map(drop),
                ErrorCode::ChannelBusy,
            )
        }
        _ => (
            "anonymous consumer",
            client.consumer(CHANNEL).map(drop),
            ErrorCode::LimitReached,
        ),
    };
    match result {
        Ok(()) => events.accepted += 1,
        Err(err) if err.code() == Some(refusal) => {
            if refusal == ErrorCode::ChannelBusy {
                events.refused_busy += 1;
            } else {
                events.refused_limit += 1;
            }
        }
        Err(err) => {
            eprintln!("soak: extra {what} attach: {err}");
            events.child_failures += 1;
        }
    }
}

fn print_anomalies(state: &State) {
    let count = state.anomaly_count.load(Ordering::SeqCst) as usize;
    for slot in state.anomalies.iter().take(count.min(ANOMALIES)) {
        let value = |i: usize| slot[i].load(Ordering::SeqCst);
        let show = |v: u64| {
            if v == NONE {
                "?".to_string()
            } else {
                v.to_string()
            }
        };
        let what = match value(0) {
            ANOMALY_LOST => "lost before (seen, expected)",
            ANOMALY_CORRUPT => "corrupted (length)",
            ANOMALY_REPEATED => "repeated (seen, expected)",
            ANOMALY_MISATTRIBUTED => "misattributed (last_producer)",
            ANOMALY_EARLY => "older than the attach (seen, lowest possible)",
            ANOMALY_SHORT_AT_END => "short of the end (missing)",
            _ => "?",
        };
        let who = value(1);
        println!(
            "  anomaly: {} consumer {} stream {}: {what}: {} {}",
            KIND_NAMES.get((who >> 8) as usize).unwrap_or(&"?"),
            who & 0xff,
            show(value(2)),
            show(value(3)),
            show(value(4)),
        );
    }
}

/// The options of this mode, for `main`'s usage text.
pub fn usage() -> &'static str {
    "[--fanout [--producers N] [--durable N] [--anonymous N]]"
}
