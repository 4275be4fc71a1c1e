//! The fan-out soak's driver: starts the broker and a channel with P producer slots and D + A
//! consumers under `block`, keeps every role filled, does one random thing every few
//! milliseconds (SIGKILL, stop, leave empty, attach one more than allowed), and reports.

use super::*;
use crate::common::{attach, kill, spawn_child, start_broker, stop, Rng, SharedMap, CHANNEL};
use crate::Options;
use shmem_broker_client::{Client, ErrorCode, SlowConsumer};
use std::process::Child;
use std::time::{Duration, Instant};

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
        let mut args = vec![what.to_string()];
        args.extend(self.setup.args());
        args.extend_from_slice(extra);
        spawn_child(&self.exe, &args, &self.log)
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
    let (mut broker, client) = start_broker(&options.broker, &dir);
    let socket = dir.join("broker.sock");
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
            counts
                .iter()
                .all(|&(layout, _)| layout == shmem_broker_client::ring::LAYOUT_VERSION)
                && !counts.is_empty()
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
