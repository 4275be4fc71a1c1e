//! `shmem-bridge export`: the channel's consumer, publishing each message on the key.
//!
//! The exporter reads with [`Consumer::recv_batch_confirmed`]: a batch (at most what the ring
//! holds) is published, and only once every importer it waits for has reported the batch's
//! last position stored in its own channel does the exporter release the batch from the ring.
//! Until then the messages stay in the local ring, so an exporter killed at any point loses
//! nothing: the next one attaches at the same read position, reads the same items with the
//! same positions, and the importers drop what they already hold. While it waits, the local
//! producer waits for room: a full remote ring slows the local producer.
//!
//! Which importers it waits for: those named with `--importer` (config `importers`), whether
//! they run or not, like durable consumers, and every importer that is running (its liveliness
//! token is up). With none of either, it waits for one to appear instead of publishing into
//! nothing. An importer that reports itself idle while behind the batch (it lost items on the
//! way: a link cut, a restart) for two heartbeats is sent the rest of the batch again.
//!
//! With a key file ([`crate::auth`]) every item is tagged, acks without the right tag are
//! dropped (never counted as stored), and a running importer that is not named is waited for
//! only once it has sent an authenticated ack (so a forged liveliness token cannot hold the
//! export).
//!
//! On a channel whose `slow_consumer` policy is `drop`, none of this: samples are published
//! with Zenoh's drop congestion control, the batch is released at once, and importers report
//! the gaps.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use anyhow::{bail, Context};
use shmem_broker_client::{Consumer, ReadItem, SlowConsumer};
use slog::{debug, info, warn, Logger};
use zenoh::bytes::ZBytes;
use zenoh::pubsub::Publisher;
use zenoh::qos::CongestionControl;
use zenoh::sample::SampleKind;
use zenoh::{Session, Wait};

use crate::attach_retrying;
use crate::auth::{Auth, Rejects};
use crate::wire::{self, Ack, Item, Kind, Refused, HEARTBEAT};

/// Most items per batch; the ring's capacity bounds the bytes.
const MAX_BATCH: usize = 4096;
/// Messages up to this size travel packed, several to a sample ([`wire::pack_item`]): one
/// Zenoh sample per 64-byte message would cost more than the message.
const PACK_ITEM_MAX: usize = 8 << 10;
/// A pack is published once it holds this many bytes (and at the end of each batch).
const PACK_BYTES: usize = 60 << 10;

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

type Shared = Arc<(Mutex<Importers>, Condvar)>;

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
    let shared: Shared = Arc::default();

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
                        shared.1.notify_all();
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
                shared.1.notify_all();
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
        publisher: &publisher,
        shared: &shared,
        log: &log,
        lossy,
        auth: auth.map(|a| &**a),
    };
    let failed = exporter.pump(&mut consumer);
    drop((acks, live));
    failed.map(|never| match never {})
}

struct Exporter<'a> {
    spec: &'a ExportSpec,
    publisher: &'a Publisher<'a>,
    shared: &'a Shared,
    log: &'a Logger,
    lossy: bool,
    auth: Option<&'a Auth>,
}

/// An item published, kept until the importers hold it: header, payload, attachment.
type Pending = (Item, ZBytes, ZBytes);

/// Small items waiting to go out together: the pack's payload, and the positions it spans.
type Pack = RefCell<(Vec<u8>, Option<(u64, u64)>)>;

impl Exporter<'_> {
    fn pump(&self, consumer: &mut Consumer) -> anyhow::Result<std::convert::Infallible> {
        let pending: RefCell<Vec<Pending>> = RefCell::new(Vec::new());
        // The batch in flight (stopping waits for it), or refused because stopping.
        let work: RefCell<Option<crate::Work>> = RefCell::new(None);
        let refused = Cell::new(false);
        let pack: Pack = RefCell::new((Vec::new(), None));
        let first = Cell::new(true);
        loop {
            pending.borrow_mut().clear();
            first.set(true);
            consumer
                .recv_batch_confirmed(
                    MAX_BATCH,
                    |from, to, read| {
                        if refused.get() {
                            return;
                        }
                        if work.borrow().is_none() {
                            match crate::begin_work() {
                                Some(started) => *work.borrow_mut() = Some(started),
                                None => {
                                    refused.set(true);
                                    return;
                                }
                            }
                        }
                        let (kind, bytes) = match read {
                            ReadItem::Message(bytes) => (Kind::Message, bytes),
                            ReadItem::EndOfStream => (Kind::EndOfStream, &[][..]),
                            ReadItem::Padding => (Kind::Padding, &[][..]),
                        };
                        let mut flags = if self.lossy { wire::FLAG_LOSSY } else { 0 };
                        if first.replace(false) {
                            flags |= wire::FLAG_OLDEST;
                        }
                        let item = Item {
                            kind,
                            flags,
                            from,
                            to,
                        };
                        if bytes.len() > PACK_ITEM_MAX {
                            self.flush(&pack, &pending);
                            self.publish(item, bytes.to_vec(), &pending);
                            return;
                        }
                        let full = {
                            let mut pack = pack.borrow_mut();
                            wire::pack_item(&mut pack.0, &item, bytes);
                            let span = pack.1.map_or((from, to), |(start, _)| (start, to));
                            pack.1 = Some(span);
                            pack.0.len() >= PACK_BYTES
                        };
                        if full {
                            self.flush(&pack, &pending);
                        }
                    },
                    // A refused batch stays in the ring for the next run.
                    |_| {
                        self.flush(&pack, &pending);
                        !refused.get() && self.confirmed(&pending.borrow())
                    },
                )
                .with_context(|| format!("read channel {}", self.spec.channel))?;
            // Released (or left in the ring): no longer in flight.
            drop(work.borrow_mut().take());
            if refused.get() {
                crate::wait_for_the_end();
            }
        }
    }

    /// Publishes the pack being filled, if any.
    fn flush(&self, pack: &Pack, pending: &RefCell<Vec<Pending>>) {
        let (payload, span) = {
            let mut pack = pack.borrow_mut();
            (std::mem::take(&mut pack.0), pack.1.take())
        };
        let Some((from, to)) = span else {
            return;
        };
        let item = Item {
            kind: Kind::Pack,
            flags: if self.lossy { wire::FLAG_LOSSY } else { 0 },
            from,
            to,
        };
        self.publish(item, payload, pending);
    }

    /// Publishes one sample and keeps it until the batch is confirmed.
    fn publish(&self, item: Item, payload: Vec<u8>, pending: &RefCell<Vec<Pending>>) {
        let attachment = ZBytes::from(wire::seal_item(self.auth, &self.spec.key, &item, &payload));
        let sample = (item, ZBytes::from(payload), attachment);
        self.put(&sample);
        pending.borrow_mut().push(sample);
    }

    fn put(&self, (item, payload, attachment): &Pending) {
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

    /// Returns (true) once every importer waited for holds the whole batch.
    fn confirmed(&self, batch: &[Pending]) -> bool {
        let Some(end) = batch.last().map(|(item, _, _)| item.to) else {
            return true;
        };
        if self.lossy {
            return true;
        }
        // Since when each importer has been idle and behind at the same position.
        let mut stalled: HashMap<String, (u64, Instant)> = HashMap::new();
        let mut announced_wait = false;
        let mut importers = lock(self.shared);
        loop {
            // With a key, a liveliness token alone (anyone can declare one) is not enough.
            let mut waited: BTreeSet<String> = importers
                .live
                .iter()
                .filter(|name| self.auth.is_none() || importers.acks.contains_key(*name))
                .cloned()
                .collect();
            waited.extend(self.spec.importers.iter().cloned());
            let behind: Vec<(String, Option<Ack>)> = waited
                .iter()
                .filter_map(|name| {
                    let ack = importers.acks.get(name).copied();
                    (ack.map_or(0, |a| a.last) < end).then(|| (name.clone(), ack))
                })
                .collect();
            if !waited.is_empty() && behind.is_empty() {
                return true;
            }
            if waited.is_empty() && !announced_wait {
                info!(self.log, "no importer yet: holding the batch"; "messages" => batch.len());
                announced_wait = true;
            }
            let now = Instant::now();
            let mut resend_from: Option<u64> = None;
            for (name, ack) in &behind {
                let Some(ack) = ack else { continue };
                if !ack.idle {
                    stalled.remove(name);
                    continue;
                }
                let since = stalled.entry(name.clone()).or_insert((ack.last, now));
                if since.0 != ack.last {
                    *since = (ack.last, now);
                } else if now.duration_since(since.1) >= 2 * HEARTBEAT {
                    since.1 = now;
                    resend_from = Some(resend_from.map_or(ack.last, |r: u64| r.min(ack.last)));
                }
            }
            if let Some(from) = resend_from {
                drop(importers);
                let again: Vec<_> = batch.iter().filter(|(item, _, _)| item.to > from).collect();
                info!(self.log, "sending again what an importer lost on the way";
                      "after" => from, "messages" => again.len());
                for sample in again {
                    self.put(sample);
                }
                importers = lock(self.shared);
                continue;
            }
            importers = self
                .shared
                .1
                .wait_timeout(importers, HEARTBEAT / 2)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}
