//! `shmem-bridge import`: subscribes to the key and produces each message into the channel.
//!
//! Received samples go through a queue bounded in bytes ([`QUEUE_BYTES`]): when the local ring
//! is full the producer waits, the queue fills, and Zenoh's callback waits on it, which stops
//! the session reading its link, so the exporter's blocking publications wait in turn. Memory
//! stays at the queue's bound plus Zenoh's own buffers, however slow the local consumer is.
//! A large message (32 KiB or more) waits in the queue as Zenoh's own payload (its receive
//! buffers, one per fragment, no copy; counted in the queue's bound for every buffer it pins) and is written from those
//! fragments straight into the ring ([`Producer::try_send_all`] takes a message in parts):
//! one copy between the network buffers and the ring. (Packed small messages are copied
//! out of their pack.)
//!
//! Each item's positions are checked against the last one stored (see [`crate::wire`]):
//! duplicates (an exporter that restarted, a batch sent again) are dropped and counted, a gap
//! is reported with its size, and the item stored. Items are stored in runs: consecutive
//! messages (and the padding between them) go into the channel with one publish
//! ([`Producer::try_send_all`], all or nothing), recorded first in the state file
//! ([`crate::state`]) with one record for the run, so a restarted importer knows exactly where
//! its channel stands.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use shmem_broker_client::{Client, ErrorCode, MessageBytes, Producer};
use slog::{debug, info, warn, Logger};
use zenoh::bytes::ZBytes;
use zenoh::qos::CongestionControl;
use zenoh::{Session, Wait};

use crate::auth::{Auth, Rejects};
use crate::state::{Record, Resume, StateFile};
use crate::wire::{self, Ack, Item, Kind, Refused, HEARTBEAT};
use crate::{attach_retrying, connect_retrying};

/// Bytes of received payloads waiting for the local ring (one larger sample is let in alone),
/// a payload kept in Zenoh's receive buffers counting for all the buffers it pins.
pub const QUEUE_BYTES: usize = 8 << 20;
const QUEUE_ITEMS: usize = 8192;
/// Payloads at least this long wait in Zenoh's receive buffers as they are; shorter ones are
/// copied out, so that a small sample (a peer can send thousands, one per batch) does not pin
/// a whole receive buffer in the queue.
const KEEP_MIN: usize = 32 << 10;
/// The most one receive buffer (a Zenoh batch) holds: what each part of a kept payload may
/// pin, and what it counts for in the queue's bound.
const RX_BUFFER_MOST: usize = 64 << 10;
/// Ack at least this often while storing a long burst.
const ACK_EVERY: usize = 256;
/// Most items stored as one run (one record, one publish), and taken from the queue at once.
const RUN_ITEMS: usize = 1024;
/// Most bytes (messages with their frames) in one run, and at most a quarter of the channel's
/// ring, so that a run finds room at once while the local consumer keeps up.
const RUN_BYTES: usize = 1 << 20;

#[derive(Clone, Debug)]
pub struct ImportSpec {
    pub key: String,
    pub channel: String,
    /// This importer's name (its acks and liveliness token).
    pub name: String,
    /// Create the channel with this capacity if it does not exist.
    pub create_capacity: Option<u64>,
}

#[derive(Default)]
struct Queue {
    /// Each with the bytes it counts for (see [`queued`]).
    items: VecDeque<(Item, ZBytes, usize)>,
    bytes: usize,
}

/// A received payload as it waits in the queue, and the bytes of memory it counts for: a
/// large one as Zenoh holds it (its parts pin that many receive buffers), a short one copied.
fn queued(payload: &ZBytes) -> (ZBytes, usize) {
    let len = payload.len();
    if len < KEEP_MIN {
        return (ZBytes::from(payload.to_bytes().into_owned()), len);
    }
    let parts = payload.slices().count();
    (
        payload.clone(),
        len.max(parts.saturating_mul(RX_BUFFER_MOST)),
    )
}

struct Inbox {
    queue: Mutex<Queue>,
    changed: Condvar,
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called from Zenoh's receive path: waits while the queue is full (that is the
    /// back-pressure), but always takes an item into an empty queue.
    fn push(&self, item: Item, (payload, charge): (ZBytes, usize)) {
        let mut queue = self.lock();
        while !queue.items.is_empty()
            && (queue.bytes.saturating_add(charge) > QUEUE_BYTES
                || queue.items.len() >= QUEUE_ITEMS)
        {
            queue = self.changed.wait(queue).unwrap_or_else(|e| e.into_inner());
        }
        queue.bytes = queue.bytes.saturating_add(charge);
        queue.items.push_back((item, payload, charge));
        drop(queue);
        self.changed.notify_all();
    }

    /// Up to `max` items, waiting up to `timeout` for the first (none if none came).
    fn pop(&self, timeout: Duration, max: usize) -> Vec<(Item, ZBytes)> {
        let deadline = Instant::now() + timeout;
        let mut queue = self.lock();
        loop {
            if !queue.items.is_empty() {
                let count = queue.items.len().min(max);
                let taken: Vec<_> = queue.items.drain(..count).collect();
                let bytes = taken
                    .iter()
                    .fold(0usize, |sum, (_, _, charge)| sum.saturating_add(*charge));
                queue.bytes = queue.bytes.saturating_sub(bytes);
                drop(queue);
                self.changed.notify_all();
                return taken
                    .into_iter()
                    .map(|(item, payload, _)| (item, payload))
                    .collect();
            }
            let now = Instant::now();
            if now >= deadline {
                return Vec::new();
            }
            queue = self
                .changed
                .wait_timeout(queue, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn is_empty(&self) -> bool {
        self.lock().items.is_empty()
    }
}

/// What the heartbeat thread reports.
struct Progress {
    last: AtomicU64,
    busy: AtomicBool,
}

pub fn run(
    session: &Session,
    socket: &Path,
    state_dir: &Path,
    spec: &ImportSpec,
    auth: Option<&Arc<Auth>>,
    log: &Logger,
) -> anyhow::Result<()> {
    let log = log.new(
        slog::o!("import" => spec.channel.clone(), "key" => spec.key.clone(),
                               "importer" => spec.name.clone()),
    );
    let state = StateFile::open(state_dir, &state_file_name(&spec.name))
        .with_context(|| format!("open the state file in {}", state_dir.display()))?;
    let client = connect_retrying(socket, &log);
    if let Some(capacity) = spec.create_capacity {
        match client.channel(&spec.channel).capacity(capacity).create() {
            Ok(_) => info!(log, "created the channel"; "capacity" => capacity),
            Err(e) if e.code() == Some(ErrorCode::ChannelExists) => {}
            Err(e) => bail!("create channel {}: {e}", spec.channel),
        }
    }
    let producer = attach_producer(&client, spec, &log)?;
    let local = producer.position().unwrap_or(0);
    let resume = match state.read()? {
        None => Resume::Fresh,
        Some(record) => record.resume(local),
    };
    let last = match resume {
        Resume::Fresh => None,
        Resume::At(at) => Some(at),
        Resume::ChannelRecreated(at) => {
            warn!(log, "the channel was made anew since the last run: what it held is gone";
                  "resuming_after" => at);
            Some(at)
        }
    };
    info!(log, "importing"; "stored_up_to" => last.map_or("nothing yet".to_string(), |l| l.to_string()),
          "state" => %state.path().display());

    let inbox = Arc::new(Inbox {
        queue: Mutex::default(),
        changed: Condvar::new(),
    });
    let progress = Arc::new(Progress {
        last: AtomicU64::new(last.unwrap_or(0)),
        busy: AtomicBool::new(false),
    });
    let ack_key = wire::ack_key(&spec.key, &spec.name);
    let acks = session
        .declare_publisher(ack_key.clone())
        .congestion_control(CongestionControl::Drop)
        .wait()
        .map_err(|e| anyhow::anyhow!("declare the ack publisher: {e}"))?;
    let _subscriber =
        {
            let inbox = inbox.clone();
            let log = log.clone();
            let (auth, key) = (auth.cloned(), spec.key.clone());
            let rejects = Rejects::new("items");
            session
            .declare_subscriber(spec.key.clone())
            .callback(move |sample| {
                let Some(attachment) = sample.attachment() else {
                    match auth {
                        Some(_) => rejects.add(&log, "a sample without the bridge's attachment"),
                        None => debug!(log, "ignored a sample without the bridge's attachment"),
                    }
                    return;
                };
                // The payload as Zenoh received it: one slice per fragment, never gathered.
                let payload = sample.payload();
                let parts: Vec<&[u8]> = payload.slices().collect();
                match wire::open_item(auth.as_deref(), &key, &attachment.to_bytes(), &parts) {
                    Ok(item) if item.kind == Kind::Pack => match wire::unpack(&payload.to_bytes()) {
                        Ok(items) => {
                            for (item, bytes) in items {
                                inbox.push(item, (ZBytes::from(bytes.to_vec()), bytes.len()));
                            }
                        }
                        Err(e) => debug!(log, "ignored a malformed pack"; "error" => e),
                    },
                    // A large one kept as it is (reference counted), written into the ring from
                    // its parts.
                    Ok(item) => inbox.push(item, queued(payload)),
                    Err(Refused::Unauthenticated(why)) => rejects.add(&log, why),
                    Err(Refused::Malformed(e)) => {
                        debug!(log, "ignored a sample with a malformed attachment"; "error" => e)
                    }
                }
            })
            .wait()
            .map_err(|e| anyhow::anyhow!("subscribe to {}: {e}", spec.key))?
        };
    let _token = session
        .liveliness()
        .declare_token(wire::liveliness_key(&spec.key, &spec.name))
        .wait()
        .map_err(|e| anyhow::anyhow!("declare the liveliness token: {e}"))?;
    {
        let inbox = inbox.clone();
        let progress = progress.clone();
        let (auth, ack_key) = (auth.cloned(), ack_key.clone());
        let acks = session
            .declare_publisher(ack_key.clone())
            .congestion_control(CongestionControl::Drop)
            .wait()
            .map_err(|e| anyhow::anyhow!("declare the heartbeat publisher: {e}"))?;
        std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || loop {
                let ack = Ack {
                    last: progress.last.load(Ordering::Acquire),
                    idle: !progress.busy.load(Ordering::Acquire) && inbox.is_empty(),
                };
                // A lost heartbeat is followed by the next one.
                let _ = acks
                    .put(wire::seal_ack(auth.as_deref(), &ack_key, &ack))
                    .wait();
                std::thread::sleep(HEARTBEAT);
            })
            .context("start the heartbeat thread")?;
    }

    let mut importer = Importer {
        spec,
        client: &client,
        state: &state,
        log: &log,
        producer: Some(producer),
        last,
        run: Run::default(),
        duplicates: Duplicates::default(),
    };
    let mut since_ack = 0;
    loop {
        let items = inbox.pop(HEARTBEAT, RUN_ITEMS);
        if items.is_empty() {
            importer.duplicates.report(&log);
            continue;
        }
        // Stopping: the items stay unstored; the exporter still holds them for the next run.
        let Some(work) = crate::begin_work() else {
            crate::wait_for_the_end();
        };
        progress.busy.store(true, Ordering::Release);
        since_ack += items.len();
        for (item, payload) in items {
            importer.take(item, payload)?;
        }
        importer.store_run()?;
        progress
            .last
            .store(importer.last.unwrap_or(0), Ordering::Release);
        progress.busy.store(false, Ordering::Release);
        if since_ack >= ACK_EVERY || inbox.is_empty() || crate::stopping() {
            since_ack = 0;
            let ack = Ack {
                last: importer.last.unwrap_or(0),
                idle: inbox.is_empty(),
            };
            let _ = acks
                .put(wire::seal_ack(auth.map(|a| &**a), &ack_key, &ack))
                .wait();
        }
        drop(work);
    }
}

/// The state file of an importer: one per name.
fn state_file_name(name: &str) -> String {
    format!("import-{name}.state")
}

fn attach_producer(client: &Client, spec: &ImportSpec, log: &Logger) -> anyhow::Result<Producer> {
    let producer = attach_retrying(log, "producer", || client.producer(&spec.channel))?;
    if producer.position().is_none() {
        bail!(
            "channel {}: import needs a channel with one producer (max_producers = 1): the \
             importer's record is the ring's write position",
            spec.channel
        );
    }
    Ok(producer)
}

/// Duplicates dropped since the last report (logged once a second at most).
#[derive(Default)]
struct Duplicates {
    count: u64,
    first: Option<u64>,
    last_to: u64,
    reported: Option<Instant>,
}

impl Duplicates {
    fn add(&mut self, item: &Item, log: &Logger) {
        self.count += 1;
        self.first.get_or_insert(item.from);
        self.last_to = item.to;
        if self
            .reported
            .map_or(true, |at| at.elapsed() >= Duration::from_secs(1))
        {
            self.report(log);
        }
    }

    fn report(&mut self, log: &Logger) {
        if let Some(first) = self.first.take() {
            info!(log, "duplicates dropped (already stored)"; "count" => self.count,
                  "positions" => format!("{first}..{}", self.last_to));
            self.count = 0;
            self.reported = Some(Instant::now());
        }
    }
}

struct Importer<'a> {
    spec: &'a ImportSpec,
    client: &'a Client,
    state: &'a StateFile,
    log: &'a Logger,
    /// `None` after an end-of-stream mark: the next item attaches a new producer.
    producer: Option<Producer>,
    /// The `to` of the last item taken (stored, or in `run` until [`Importer::store_run`]);
    /// `None` before the first one of a fresh importer.
    last: Option<u64>,
    /// Items taken and not stored yet.
    run: Run,
    duplicates: Duplicates,
}

/// Consecutive items (messages and padding) to store together.
#[derive(Default)]
struct Run {
    /// The `to` of the last item stored before the run's first one (what its record calls
    /// done: a gap stored over is not part of it).
    done: u64,
    items: Vec<(Item, ZBytes)>,
    bytes: usize,
}

impl Importer<'_> {
    fn take(&mut self, item: Item, payload: ZBytes) -> anyhow::Result<()> {
        if item.kind == Kind::Pack {
            // Unpacked on arrival; a pack is never an item of the stream.
            return Ok(());
        }
        if self.last.is_none()
            && item.from > 0
            && item.flags & (wire::FLAG_LOSSY | wire::FLAG_OLDEST) == 0
        {
            // A fresh importer whose subscription matched in the middle of the stream: storing
            // this item would make the earlier items the exporter holds, sent again once this
            // importer reports itself idle and behind, look like duplicates. It waits for the
            // oldest item the exporter holds (flagged), or for position 0.
            debug!(self.log, "joined in the middle of the stream; waiting for the oldest item";
                   "from" => item.from);
            return Ok(());
        }
        if let Some(last) = self.last {
            if item.to <= last {
                self.duplicates.add(&item, self.log);
                return Ok(());
            }
            if item.from < last {
                warn!(self.log, "dropped an item that overlaps what is stored (not from this export's stream?)";
                      "from" => item.from, "to" => item.to, "stored_up_to" => last);
                return Ok(());
            }
            if item.from > last && item.flags & (wire::FLAG_LOSSY | wire::FLAG_OLDEST) == 0 {
                // Items before it were lost on the way (a link cut): the exporter still holds
                // them and sends them again when this importer reports itself idle and behind.
                // Storing this one now would turn their late arrival into duplicates.
                debug!(self.log, "item ahead of the stream dropped; waiting for the rest";
                       "from" => item.from, "stored_up_to" => last);
                return Ok(());
            }
            if item.from > last {
                self.duplicates.report(self.log);
                warn!(self.log, "gap: part of the exported stream never arrived";
                      "missing_positions" => format!("{last}..{}", item.from),
                      "missing_bytes_with_framing" => item.from - last);
                // A run has no hole: what came before the gap is stored first.
                self.store_run()?;
            }
        }
        self.duplicates.report(self.log);
        let done = self.last.unwrap_or(item.from);
        self.last = Some(item.to);
        if item.kind == Kind::EndOfStream {
            self.store_run()?;
            return self.end_of_stream(done, &item);
        }
        if self.run.items.is_empty() {
            self.run.done = done;
        }
        // With its frame's header and alignment (under 32 bytes) in the local ring.
        self.run.bytes = self.run.bytes.saturating_add(payload.len() + 32);
        self.run.items.push((item, payload));
        let capacity = self.producer.as_ref().map_or(u64::MAX, |p| p.capacity());
        let most = usize::try_from(capacity / 4)
            .unwrap_or(usize::MAX)
            .min(RUN_BYTES);
        if self.run.items.len() >= RUN_ITEMS || self.run.bytes >= most {
            self.store_run()?;
        }
        Ok(())
    }

    /// The channel's producer, attaching a new one after an end-of-stream.
    fn producer(&mut self) -> anyhow::Result<&mut Producer> {
        Ok(match self.producer {
            Some(ref mut producer) => producer,
            None => self
                .producer
                .insert(attach_producer(self.client, self.spec, self.log)?),
        })
    }

    /// Passes an end-of-stream mark on (after the run before it, stored up to `done`).
    fn end_of_stream(&mut self, done: u64, item: &Item) -> anyhow::Result<()> {
        let producer = self.producer()?;
        let local_before = producer.position().unwrap_or(0);
        // The mark is a frame header, as an empty message is.
        let local_after = producer
            .end_position::<&[u8]>(&[&[]])
            .context("room for an end-of-stream mark")?;
        let record = Record {
            done,
            local_before,
            local_after,
            next: item.to,
        };
        self.write(&record)?;
        if let Some(producer) = self.producer.take() {
            producer
                .close()
                .with_context(|| format!("end-of-stream into {}", self.spec.channel))?;
        }
        info!(self.log, "end-of-stream passed on"; "position" => item.to);
        Ok(())
    }

    /// Stores the run: each part with one record, then one publish of all its messages (or,
    /// when they do not all fit now, its first message alone, waiting for room).
    fn store_run(&mut self) -> anyhow::Result<()> {
        let run = std::mem::take(&mut self.run);
        let mut done = run.done;
        let mut rest = &run.items[..];
        while let Some((last, _)) = rest.last() {
            // Each message in the parts Zenoh received it in.
            let parts: Vec<Vec<&[u8]>> = rest
                .iter()
                .filter(|(item, _)| item.kind == Kind::Message)
                .map(|(_, payload)| payload.slices().collect())
                .collect();
            let messages: Vec<&[&[u8]]> = parts.iter().map(Vec::as_slice).collect();
            let (stored, end) = if self.store(done, last.to, &messages, true)? {
                (last.to, rest.len())
            } else {
                // Not all fit now: up to the first message (padding before it included).
                let first = rest
                    .iter()
                    .position(|(item, _)| item.kind == Kind::Message)
                    .unwrap_or(rest.len() - 1);
                let to = rest[first].0.to;
                self.store(done, to, &messages[..1], false)?;
                (to, first + 1)
            };
            done = stored;
            rest = &rest[end..];
        }
        Ok(())
    }

    /// Records, then stores `messages` (the items up to position `next` after `done`) with one
    /// publish: `try_all`, only if all fit now (false if not: nothing stored, nothing
    /// published); else waiting for room, which `messages` must then be one at most.
    fn store(
        &mut self,
        done: u64,
        next: u64,
        messages: &[&[&[u8]]],
        try_all: bool,
    ) -> anyhow::Result<bool> {
        let channel = self.spec.channel.clone();
        let producer = self.producer()?;
        let local_before = producer.position().unwrap_or(0);
        let local_after = producer.end_position(messages).with_context(|| {
            format!("channel {channel}: the messages cannot be in its ring at once")
        })?;
        let record = Record {
            // Padding alone puts nothing in the channel: recorded as stored at once.
            done: if messages.is_empty() { next } else { done },
            local_before,
            local_after,
            next,
        };
        self.write(&record)?;
        if messages.is_empty() {
            return Ok(true);
        }
        let producer = self.producer()?;
        if try_all {
            return producer
                .try_send_all(messages)
                .with_context(|| format!("send into {channel}"));
        }
        for message in messages {
            // The length fitted the ring (end_position above): it adds up.
            let len = message.total_len().unwrap_or(usize::MAX);
            producer
                .send_with(len, |buf| message.copy_into(buf))
                .with_context(|| format!("send into {channel}"))?;
        }
        Ok(true)
    }

    fn write(&self, record: &Record) -> anyhow::Result<()> {
        self.state
            .write(record)
            .with_context(|| format!("write {}", self.state.path().display()))
    }
}
