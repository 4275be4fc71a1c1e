//! `shmem-bridge export`: the channel's consumer, publishing each message on the key.
//!
//! The exporter reads ahead ([`Consumer::try_recv_ahead_owned`]): it publishes items as they come,
//! several batches in flight, and releases them from the ring ([`Consumer::release_to`]) only
//! up to the last position every importer it waits for has reported stored in its own
//! channel. Until then the items stay in the local ring, so an exporter killed at any point
//! loses nothing: the next one attaches at the released position, reads the same items with
//! the same positions, and the importers drop what they already hold. The window is the ring:
//! once it is full of items not yet stored remotely, the local producer waits for room, so a
//! full remote ring slows the local producer.
//!
//! Which importers it waits for: those named with `--importer` (config `importers`), whether
//! they run or not, like durable consumers, and every importer that is running (its liveliness
//! token is up). With none of either, it releases nothing until one appears. An importer that
//! reports itself idle while behind what was published (it lost items on the way: a link cut,
//! a restart) for two heartbeats is sent everything after its position again.
//!
//! With a key file ([`crate::auth`]) every item is tagged, acks without the right tag are
//! dropped (never counted as stored), and a running importer that is not named is waited for
//! only once it has sent an authenticated ack (so a forged liveliness token cannot hold the
//! export).
//!
//! On a channel whose `slow_consumer` policy is `drop`, none of this: samples are published
//! with Zenoh's drop congestion control, items are released as soon as published, and
//! importers report the gaps.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use anyhow::{bail, Context};
use shmem_broker_client::{AheadItem, Consumer, SlowConsumer, TryRecvError};
use slog::{debug, info, warn, Logger};
use zenoh::bytes::ZBytes;
use zenoh::pubsub::Publisher;
use zenoh::qos::CongestionControl;
use zenoh::sample::SampleKind;
use zenoh::{Session, Wait};

use crate::attach_retrying;
use crate::auth::{Auth, Rejects};
use crate::buffers::Pool;
use crate::doorbell::Doorbell;
use crate::wire::{self, Ack, Item, Kind, Refused, HEARTBEAT};

/// Most items per read; the ring's capacity bounds the bytes in flight.
const MAX_BATCH: usize = 4096;
/// Messages up to this size travel packed, several to a sample ([`wire::pack_item`]): one
/// Zenoh sample per 64-byte message would cost more than the message.
const PACK_ITEM_MAX: usize = 8 << 10;
/// A pack is published once it holds this many bytes (and at the end of each read).
const PACK_BYTES: usize = 60 << 10;
/// Most bytes of free payload buffers kept for reuse (at most the ring's capacity).
const POOL_BYTES: u64 = 16 << 20;

#[derive(Clone, Debug)]
pub struct ExportSpec {
    pub channel: String,
    pub key: String,
    /// Importers to wait for even while they are away.
    pub importers: Vec<String>,
}

/// What the exporter knows of the importers (updated by Zenoh callbacks).
#[derive(Default)]
struct Importers {
    acks: HashMap<String, Ack>,
    live: BTreeSet<String>,
}

/// The importers, and the doorbell the callbacks ring when they change.
type Shared = Arc<(Mutex<Importers>, Doorbell)>;

fn lock(shared: &Shared) -> MutexGuard<'_, Importers> {
    // A callback that panicked cannot leave the maps half-updated in a way that matters here.
    shared.0.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn run(
    session: &Session,
    socket: &std::path::Path,
    spec: &ExportSpec,
    auth: Option<&Arc<Auth>>,
    log: &Logger,
) -> anyhow::Result<()> {
    let log = log.new(slog::o!("export" => spec.channel.clone(), "key" => spec.key.clone()));
    let shared: Shared = Arc::new((Mutex::default(), Doorbell::new()?));

    let acks = {
        let shared = shared.clone();
        let log = log.clone();
        let auth = auth.cloned();
        let rejects = Rejects::new("acks");
        session
            .declare_subscriber(wire::ack_wildcard(&spec.key))
            .callback(move |sample| {
                let key = sample.key_expr().as_str();
                let Some(name) = wire::importer_of(key).map(str::to_string) else {
                    return;
                };
                match wire::open_ack(auth.as_deref(), key, &sample.payload().to_bytes()) {
                    Ok(ack) => {
                        lock(&shared).acks.insert(name, ack);
                        shared.1.ring();
                    }
                    Err(Refused::Unauthenticated(why)) => rejects.add(&log, why),
                    Err(Refused::Malformed(e)) => {
                        debug!(log, "ignored a malformed ack"; "from" => name, "error" => e)
                    }
                }
            })
            .wait()
            .map_err(|e| anyhow::anyhow!("subscribe to acks: {e}"))?
    };
    let live = {
        let shared = shared.clone();
        let log = log.clone();
        session
            .liveliness()
            .declare_subscriber(wire::liveliness_wildcard(&spec.key))
            .history(true)
            .callback(move |sample| {
                let Some(name) = wire::importer_of(sample.key_expr().as_str()).map(str::to_string)
                else {
                    return;
                };
                let mut importers = lock(&shared);
                if sample.kind() == SampleKind::Put {
                    info!(log, "importer up"; "importer" => &name);
                    importers.live.insert(name);
                } else {
                    info!(log, "importer gone"; "importer" => &name);
                    importers.live.remove(&name);
                }
                drop(importers);
                shared.1.ring();
            })
            .wait()
            .map_err(|e| anyhow::anyhow!("watch importers: {e}"))?
    };

    let client = crate::connect_retrying(socket, &log);
    let mut consumer = attach_retrying(&log, "consumer", || client.consumer(&spec.channel))?;
    let Some(start) = consumer.position() else {
        bail!(
            "channel {}: export needs a one-to-one channel (max_producers = max_consumers = 1); \
             its consumer reads several rings whose positions cannot number one stream",
            spec.channel
        );
    };
    let policy = client
        .info(&spec.channel)
        .with_context(|| format!("info {}", spec.channel))?
        .slow_consumer;
    let lossy = policy == SlowConsumer::Drop;
    let publisher = session
        .declare_publisher(spec.key.clone())
        .congestion_control(if lossy {
            CongestionControl::Drop
        } else {
            CongestionControl::Block
        })
        .wait()
        .map_err(|e| anyhow::anyhow!("declare publisher on {}: {e}", spec.key))?;
    info!(log, "exporting"; "position" => start, "congestion_control" => if lossy { "drop" } else { "block" },
          "importers" => spec.importers.join(","));

    let exporter = Exporter {
        spec,
        pool: Pool::new(usize::try_from(consumer.capacity().min(POOL_BYTES)).unwrap_or(0)),
        publisher: &publisher,
        shared: &shared,
        log: &log,
        lossy,
        auth: auth.map(|a| &**a),
    };
    let failed = exporter.pump(&mut consumer, start);
    drop((acks, live));
    failed.map(|never| match never {})
}

struct Exporter<'a> {
    spec: &'a ExportSpec,
    /// What payloads are published from (see [`crate::buffers`]).
    pool: Arc<Pool>,
    publisher: &'a Publisher<'a>,
    shared: &'a Shared,
    log: &'a Logger,
    lossy: bool,
    auth: Option<&'a Auth>,
}

/// A sample published, kept until the importers hold it: header (its `to` is the end of its
/// last item), payload, attachment.
type Sent = (Item, ZBytes, ZBytes);

/// What is in flight: published, not yet released from the ring.
struct Window {
    /// In order; their positions run from `released` without a hole.
    sent: VecDeque<Sent>,
    /// The ring's released position: where the next exporter would start.
    released: u64,
    /// Small items waiting to go out together: the pack's payload, and the positions it spans.
    pack: (Vec<u8>, Option<(u64, u64)>),
    /// Held while anything is in flight, so that a stop waits for it (see [`crate::Work`]).
    work: Option<crate::Work>,
    /// Since when each importer has been idle and behind at the same position.
    stalled: HashMap<String, (u64, Instant)>,
    /// "No importer yet" was logged for what is in flight.
    announced_wait: bool,
}

impl Exporter<'_> {
    fn pump(
        &self,
        consumer: &mut Consumer,
        start: u64,
    ) -> anyhow::Result<std::convert::Infallible> {
        let mut window = Window {
            sent: VecDeque::new(),
            released: start,
            pack: (Vec::new(), None),
            work: None,
            stalled: HashMap::new(),
            announced_wait: false,
        };
        loop {
            self.release_stored(consumer, &mut window)?;
            if window.sent.is_empty() {
                // Nothing in flight: a stop need not wait for this exporter.
                window.work = None;
            }
            match self.read_more(consumer, &mut window)? {
                Some(0) => {}
                Some(_) => continue,
                None => {
                    // Stopping: only acks matter now (the ring may have more, not to be read).
                    self.shared.1.wait(None, HEARTBEAT / 2);
                    continue;
                }
            }
            if window.sent.is_empty() {
                window.work = None;
            }
            // Until a new item is published (the empty read armed `ready_fd`), an importer
            // reports, or half a heartbeat passes (for the resends).
            self.shared.1.wait(Some(consumer.ready_fd()), HEARTBEAT / 2);
        }
    }

    /// Reads and publishes what came after the items in flight; returns how many items, or
    /// `None` if it did not read because the process is stopping (once nothing is in flight
    /// either, the thread waits for the end instead).
    fn read_more(
        &self,
        consumer: &mut Consumer,
        window: &mut Window,
    ) -> anyhow::Result<Option<usize>> {
        if window.work.is_none() {
            match crate::begin_work() {
                Some(work) => window.work = Some(work),
                // Nothing in flight (the work is dropped only then).
                None => crate::wait_for_the_end(),
            }
        } else if crate::stopping() {
            return Ok(None);
        }
        let got = consumer.try_recv_ahead_owned(MAX_BATCH, |from, to, read| {
            let (kind, message) = match read {
                AheadItem::Message(bytes) => (Kind::Message, Some(bytes)),
                AheadItem::EndOfStream => (Kind::EndOfStream, None),
                AheadItem::Padding => (Kind::Padding, None),
            };
            let mut flags = if self.lossy { wire::FLAG_LOSSY } else { 0 };
            if from == window.released {
                flags |= wire::FLAG_OLDEST;
            }
            let item = Item {
                kind,
                flags,
                from,
                to,
            };
            match message {
                Some(bytes) if bytes.len() > PACK_ITEM_MAX => {
                    self.flush(window);
                    // Taken, not copied: the consumer's buffer is already a private copy of
                    // the message (the one copy out of the ring), and Zenoh takes it as is;
                    // the next message is read into a buffer used before.
                    let message = std::mem::replace(bytes, self.pool.take());
                    self.publish(item, message, window);
                    return;
                }
                Some(bytes) => wire::pack_item(&mut window.pack.0, &item, bytes),
                None => wire::pack_item(&mut window.pack.0, &item, &[]),
            }
            let span = window.pack.1.map_or((from, to), |(start, _)| (start, to));
            window.pack.1 = Some(span);
            if window.pack.0.len() >= PACK_BYTES {
                self.flush(window);
            }
        });
        self.flush(window);
        match got {
            Ok(n) => Ok(Some(n)),
            Err(TryRecvError::Empty) => Ok(Some(0)),
            Err(e) => Err(e).with_context(|| format!("read channel {}", self.spec.channel)),
        }
    }

    /// Publishes the pack being filled, if any.
    fn flush(&self, window: &mut Window) {
        let Some((from, to)) = window.pack.1.take() else {
            return;
        };
        let payload = std::mem::replace(&mut window.pack.0, self.pool.take());
        let item = Item {
            kind: Kind::Pack,
            flags: if self.lossy { wire::FLAG_LOSSY } else { 0 },
            from,
            to,
        };
        self.publish(item, payload, window);
    }

    /// Publishes one sample and keeps it until the importers hold it.
    fn publish(&self, item: Item, payload: Vec<u8>, window: &mut Window) {
        let attachment = ZBytes::from(wire::seal_item(self.auth, &self.spec.key, &item, &payload));
        let sample = (item, self.pool.payload(payload), attachment);
        self.put(&sample);
        window.sent.push_back(sample);
    }

    fn put(&self, (item, payload, attachment): &Sent) {
        if let Err(e) = self
            .publisher
            .put(payload.clone())
            .attachment(attachment.clone())
            .wait()
        {
            // Not sent: the importers will report themselves behind, and it is sent again.
            warn!(self.log, "publish failed"; "from" => item.from, "error" => %e);
        }
    }

    /// Releases from the ring every sample all importers waited for hold (all of them on a
    /// `drop` channel), and sends again what an importer idle and behind for two heartbeats
    /// lost on the way.
    fn release_stored(&self, consumer: &mut Consumer, window: &mut Window) -> anyhow::Result<()> {
        let Some(end) = window.sent.back().map(|(item, _, _)| item.to) else {
            return Ok(());
        };
        let (stored, behind) = if self.lossy {
            (end, Vec::new())
        } else {
            let importers = lock(self.shared);
            // With a key, a liveliness token alone (anyone can declare one) is not enough.
            let mut waited: BTreeSet<&str> = importers
                .live
                .iter()
                .filter(|name| self.auth.is_none() || importers.acks.contains_key(*name))
                .map(String::as_str)
                .collect();
            waited.extend(self.spec.importers.iter().map(String::as_str));
            if waited.is_empty() && !window.announced_wait {
                info!(self.log, "no importer yet: holding what was published"; "samples" => window.sent.len());
                window.announced_wait = true;
            }
            let ack = |name: &str| importers.acks.get(name).copied();
            let stored = waited
                .iter()
                .map(|name| ack(name).map_or(0, |a| a.last))
                .min()
                .unwrap_or(window.released);
            let behind: Vec<(String, Ack)> = waited
                .iter()
                .filter_map(|name| ack(name).map(|a| (name.to_string(), a)))
                .filter(|(_, a)| a.last < end)
                .collect();
            (stored, behind)
        };
        // The last sample wholly stored (acks name item ends, which may fall inside a pack).
        let done = window
            .sent
            .iter()
            .take_while(|(item, _, _)| item.to <= stored)
            .count();
        if done > 0 {
            let to = window.sent[done - 1].0.to;
            consumer
                .release_to(to)
                .with_context(|| format!("release channel {}", self.spec.channel))?;
            window.sent.drain(..done);
            window.released = to;
            window.announced_wait = false;
        }
        self.resend_lost(window, &behind);
        Ok(())
    }

    /// Sends again everything after the position of an importer that has been idle and
    /// behind at the same position for two heartbeats (it lost items on the way).
    fn resend_lost(&self, window: &mut Window, behind: &[(String, Ack)]) {
        let now = Instant::now();
        let mut resend_from: Option<u64> = None;
        window
            .stalled
            .retain(|name, _| behind.iter().any(|(b, a)| b == name && a.idle));
        for (name, ack) in behind {
            if !ack.idle {
                continue;
            }
            let since = window
                .stalled
                .entry(name.clone())
                .or_insert((ack.last, now));
            if since.0 != ack.last {
                *since = (ack.last, now);
            } else if now.duration_since(since.1) >= 2 * HEARTBEAT {
                since.1 = now;
                resend_from = Some(resend_from.map_or(ack.last, |r: u64| r.min(ack.last)));
            }
        }
        let Some(from) = resend_from else {
            return;
        };
        // The oldest sample held says so, even if it did not when first sent (items before it
        // were in flight then): an importer behind it stores it over the gap.
        if let Some(first) = window.sent.front_mut() {
            if first.0.from == window.released {
                *first = self.flagged_oldest(first);
            }
        }
        let again: Vec<&Sent> = window
            .sent
            .iter()
            .filter(|(item, _, _)| item.to > from)
            .collect();
        info!(self.log, "sending again what an importer lost on the way";
              "after" => from, "samples" => again.len());
        for sample in again {
            self.put(sample);
        }
    }

    /// `sample` with its first item flagged oldest (sealed again), if it is not yet.
    fn flagged_oldest(&self, sample: &Sent) -> Sent {
        let (mut item, payload, _) = sample.clone();
        let mut bytes = payload.to_bytes().into_owned();
        let changed = if item.kind == Kind::Pack {
            wire::flag_first_packed(&mut bytes)
        } else {
            let before = item.flags;
            item.flags |= wire::FLAG_OLDEST;
            item.flags != before
        };
        if !changed {
            return sample.clone();
        }
        let attachment = ZBytes::from(wire::seal_item(self.auth, &self.spec.key, &item, &bytes));
        (item, ZBytes::from(bytes), attachment)
    }
}
