//! The one-to-one soak's child processes: a producer that resumes where its predecessor
//! stopped, and a consumer that checks every message against the shared bookkeeping.

use super::{Shared, ANOMALY_CORRUPT, ANOMALY_DUPLICATE, ANOMALY_LOST, RESEND_LOG};
use crate::common::{attach, connect, fail, send, wait_readable, SharedMap, CHANNEL, NONE};
use shmem_broker_client::TryRecvError;
use shmem_broker_testkit::stamp::{Format, Hint};
use std::path::Path;
use std::sync::atomic::Ordering;

pub(crate) fn producer_main(socket: &Path, state: &Path, seed: u64, total: u64) {
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
        if !send(
            &mut producer,
            &format,
            (0, seq, len),
            &shared.stop_producer,
            "",
        ) {
            shared.intent_seq.store(NONE, Ordering::SeqCst);
            return;
        }
        shared.published.store(seq + 1, Ordering::SeqCst);
        seq += 1;
    }
    producer
        .close()
        .unwrap_or_else(|e| fail(&format!("close: {e}")));
    shared.producer_done.store(1, Ordering::SeqCst);
}

pub(crate) fn consumer_main(socket: &Path, state: &Path, seed: u64, total: u64) {
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
