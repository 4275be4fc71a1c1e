//! The one-to-one soak's driver: starts the broker, the channel and the two roles, then does
//! one random thing every few milliseconds (SIGKILL or stop a role and start a new one, leave a
//! role empty a while, attach a second producer or consumer, which must be refused), and
//! reports the bookkeeping at the end.

use super::{Shared, ANOMALIES, ANOMALY_CORRUPT, ANOMALY_DUPLICATE, ANOMALY_LOST};
use crate::common::{fail, kill, spawn_child, start_broker, stop, Rng, SharedMap, CHANNEL, NONE};
use crate::Options;
use shmem_broker_client::ErrorCode;
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

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
        let args = [
            role.to_string(),
            self.socket.display().to_string(),
            self.state.display().to_string(),
            self.options.seed.to_string(),
            self.options.messages.to_string(),
        ];
        spawn_child(&self.exe, &args, &self.dir.join("children.log"))
    }
}

pub(crate) fn run(options: &Options) -> i32 {
    let dir = std::env::temp_dir().join(format!("shmem-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("work dir");
    let state = PathBuf::from(format!("/dev/shm/shmem-soak-{}", std::process::id()));
    let shared_map = SharedMap::<Shared>::create(&state);
    let shared = shared_map.get();
    shared.intent_seq.store(NONE, Ordering::SeqCst);
    let (mut broker, client) = start_broker(&options.broker, &dir);
    let socket = dir.join("broker.sock");
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
