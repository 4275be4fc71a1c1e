//! The fan-out soak's child processes: a producer that takes the lowest free slot with an
//! unfinished stream and resumes it, and durable or anonymous consumers that check every
//! message of every stream against the shared bookkeeping (the rules are in the module above).

use super::*;
use crate::common::{attach, connect, send, wait_readable, SharedMap, CHANNEL};
use shmem_broker_client::{ErrorCode, TryRecvError};
use shmem_broker_testkit::stamp::Hint;
use std::cell::Cell;
use std::time::{Duration, Instant};

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
    let label = format!("stream {stream}: ");
    while seq < setup.per_stream {
        if stop.load(Ordering::SeqCst) != 0 {
            return; // dropping the producer detaches (and leaves end-of-stream marks)
        }
        let len = format.len_of(s, seq);
        slot.intent.store(seq, Ordering::SeqCst);
        // Under `block`, a non-blocking send goes to every consumer or to none.
        if !send(&mut producer, &format, (s, seq, len), stop, &label) {
            slot.intent.store(NONE, Ordering::SeqCst);
            return;
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
