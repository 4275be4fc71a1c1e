//! One channel: its rings, eventfds, access rules and who is attached.
//!
//! A channel has producer slots and consumer queues, and one ring ("lane") for every slot and
//! queue pair, so each ring has one writer and one reader. A one-to-one channel (the default:
//! `max_producers = max_consumers = 1`) has slot 0, queue 0 and their single ring, which exists
//! from creation and keeps unread data for whoever attaches next. A fan-out channel adds
//! slots as producers arrive (up to `max_producers`; a slot and its rings outlive its producer,
//! so nothing written is lost) and queues as consumers arrive: an anonymous consumer's queue
//! lives as long as it is attached, a durable one's until it is dropped. With
//! `max_consumers = 1` the one queue exists from creation, as in a one-to-one channel, so the
//! consumer gets everything the producers wrote, whenever it attaches. The broker keeps all
//! fds, so rings and their data outlive any client.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::event::{eventfd, EventfdFlags};
use shmem_broker_proto::control::BrokerControlPage;
use shmem_broker_proto::ring::{
    Eviction, RingFiles, RingStats, SharedRing, HEADER_SIZE, LAYOUT_VERSION,
};
use shmem_broker_proto::wire::{
    AttachInfo, ChannelInfo, ErrorCode, Event, LaneInfo, LostEnd, Origin, PeerInfo, Role,
    SlowConsumer,
};

use crate::access::AccessList;
use crate::peer::PeerCredentials;

/// A consumer queue as systemd's fd store keeps it: its id, and the durable consumer's name
/// (`None`: the single consumer's queue of a `max_consumers = 1` channel) and owner.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueRecord {
    pub id: u32,
    pub name: Option<String>,
    /// The uid that registered the durable name. Absent in records of brokers that did not
    /// keep owners: such a name is claimed by the next uid that attaches to it (it was open to
    /// every admitted consumer until then, so nobody loses anything they had).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_uid: Option<u32>,
}

/// What of a fan-out channel outlives the broker in systemd's fd store: its producer slots,
/// and the queues of durable consumers (and of the single consumer of a `max_consumers = 1`
/// channel) with their rings. Anonymous consumers' queues end with their connections anyway,
/// and the control page is made afresh (sealed against writes, it cannot be mapped writable
/// again).
pub struct DurableParts<'a> {
    pub slots: u32,
    pub next_queue_id: u32,
    pub queues: Vec<QueueRecord>,
    /// Named `p{slot}.space`, `q{queue}.data` and `q{queue}/p{slot}.ring`.
    pub fds: Vec<(String, BorrowedFd<'a>)>,
}

/// A durable queue read back from systemd's fd store.
pub struct RestoredQueue {
    pub record: QueueRecord,
    pub data_ready: Option<OwnedFd>,
    /// One per producer slot, in slot order.
    pub lanes: Vec<Lane>,
}

/// The session an attachment belongs to (the server's connection token).
pub type SessionId = usize;

pub struct Attached {
    pub session: SessionId,
    pub peer: PeerCredentials,
}

/// What identifies a channel and decides who may use it; saved with its fds across restarts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelMeta {
    pub name: String,
    pub origin: Origin,
    pub owner_uid: Option<u32>,
    pub producers: AccessList,
    pub consumers: AccessList,
    pub max_producers: u32,
    pub max_consumers: u32,
    pub slow_consumer: SlowConsumer,
}

impl ChannelMeta {
    /// More than one producer or consumer: a ring per pair, a control page, lane events.
    pub fn is_fanout(&self) -> bool {
        self.max_producers > 1 || self.max_consumers > 1
    }
}

/// An event for another session, with the fds it carries.
pub type Notice = (SessionId, Event, Vec<OwnedFd>);

/// What a successful attach hands the client, and what it tells the others.
pub struct Grant {
    pub info: AttachInfo,
    pub fds: Vec<OwnedFd>,
    pub notices: Vec<Notice>,
    /// The one-to-one channel's eventfds were made just now (to be stored with it).
    pub wake_created: bool,
}

/// Why an attach was refused.
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

fn refuse(code: ErrorCode, message: String) -> Refusal {
    Refusal { code, message }
}

fn new_eventfd() -> std::io::Result<OwnedFd> {
    Ok(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?)
}

/// A ring between one producer slot and one consumer queue.
pub struct Lane {
    /// The broker's own mapping, for counters and to flag a drop.
    pub ring: SharedRing,
    pub files: RingFiles,
    /// The ring's counters when the broker last added them to the channel's totals.
    pub seen: Cell<Counts>,
}

/// Counters taken from rings (what clients stored there: any value, so every sum saturates).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub messages_written: u64,
    pub bytes_written: u64,
    pub messages_read: u64,
    pub messages_lost: u64,
}

impl Counts {
    /// A ring's counters now; a consumer never counts more read than its producer wrote.
    fn of(ring: &SharedRing) -> Counts {
        let stats = ring.stats();
        Counts {
            messages_written: stats.messages_written,
            bytes_written: stats.bytes_written,
            messages_read: stats.messages_read.min(stats.messages_written),
            messages_lost: stats.messages_lost,
        }
    }

    /// How far each counter moved since `before` (a counter that went back moved 0).
    fn since(self, before: Counts) -> Counts {
        Counts {
            messages_written: self
                .messages_written
                .saturating_sub(before.messages_written),
            bytes_written: self.bytes_written.saturating_sub(before.bytes_written),
            messages_read: self.messages_read.saturating_sub(before.messages_read),
            messages_lost: self.messages_lost.saturating_sub(before.messages_lost),
        }
    }
}

/// A channel's running totals, kept by the broker so that they outlive the rings they were
/// counted in (fan-out rings come and go with their consumers) and, through systemd's fd
/// store, the broker itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    /// Per producer slot: what its producers wrote (messages, bytes). Every consumer gets the
    /// same messages, so each observation adds the most any one ring from the slot grew.
    pub written: Vec<(u64, u64)>,
    /// Summed over every consumer's rings.
    pub messages_read: u64,
    pub messages_lost: u64,
    /// Consumers the broker disconnected for falling behind or for a corrupt ring.
    pub evictions: u64,
}

impl Lane {
    fn new(channel: &str, slot: u32, queue: u32, capacity: u64) -> std::io::Result<Lane> {
        let (ring, files) = SharedRing::create(&format!("{channel}:p{slot}:c{queue}"), capacity)
            .map_err(|e| {
                std::io::Error::other(format!("creating ring for channel {channel:?}: {e}"))
            })?;
        Ok(Lane {
            ring,
            files,
            seen: Cell::new(Counts::default()),
        })
    }

    /// The ring's fds for `role`, in the order of [`Lane::fd_names`]: what that side writes
    /// writable, the rest read-only (layout 3; older rings restored from the fd store are one
    /// memfd both sides write).
    fn share(&self, role: Role) -> std::io::Result<Vec<OwnedFd>> {
        let fds = self.files.share(Some(role))?;
        Ok(std::iter::once(fds.ring).chain(fds.ack).collect())
    }

    /// The memfds the broker holds for this lane.
    fn open_fds(&self) -> usize {
        1 + usize::from(self.files.ack.is_some())
    }

    /// The names of the fds [`Lane::share`] gives, as attach replies list them.
    fn fd_names(&self) -> &'static [&'static str] {
        if self.files.ack.is_some() {
            &["ring", "ack"]
        } else {
            &["ring"]
        }
    }
}

struct ProducerSlot {
    id: u32,
    holder: Option<Attached>,
    /// Written by consumers to wake this slot's producer; made at first use.
    space_ready: Option<OwnedFd>,
    /// Fan-out channels: each queue's ring `bytes_written` from this slot when the current
    /// producer attached (a ring made later started at 0).
    stream_start: Vec<(u32, u64)>,
    /// What the current producer said after `close`: the queues whose ring had no room for
    /// its end-of-stream mark, with the messages each missed before it.
    end_lost: Vec<(u32, u64)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum QueueKind {
    /// The one queue of a one-to-one channel: kept while its consumer is away.
    Default,
    /// A named queue kept while its consumer is away. It belongs to the uid that registered
    /// the name (`None`: restored from an older broker's record, claimed at the next attach).
    Durable { name: String, owner: Option<u32> },
    /// Freed when its consumer detaches.
    Anonymous,
}

struct ConsumerQueue {
    id: u32,
    kind: QueueKind,
    holder: Option<Attached>,
    /// Written by producers to wake this queue's consumer; made at first use.
    data_ready: Option<OwnedFd>,
    /// Indexed like `Channel::slots`: the ring from each producer slot.
    lanes: Vec<Lane>,
}

impl ConsumerQueue {
    fn name(&self) -> Option<&str> {
        match &self.kind {
            QueueKind::Durable { name, .. } => Some(name),
            _ => None,
        }
    }

    /// The uid a durable queue belongs to.
    fn owner(&self) -> Option<u32> {
        match &self.kind {
            QueueKind::Durable { owner, .. } => *owner,
            _ => None,
        }
    }
}

pub struct Channel {
    pub meta: ChannelMeta,
    capacity: u64,
    slots: Vec<ProducerSlot>,
    queues: Vec<ConsumerQueue>,
    next_queue_id: u32,
    /// Fan-out channels: the page whose counters tell clients to read lane events.
    control: Option<(BrokerControlPage, OwnedFd)>,
    /// Durable consumers cut off while away, and why: their next attach is told so once.
    evicted: BTreeMap<String, Eviction>,
    /// No longer in the config: removed as soon as nobody is attached.
    pub pending_removal: bool,
    /// One-to-one channels: the ring's `bytes_written` when the current producer attached.
    stream_start: u64,
    /// One-to-one channels: the last producer went away without end-of-stream (pid, where
    /// its stream stopped, bytes it wrote). Consumers that attach before the next producer
    /// are told too. Cleared when a producer attaches.
    unclean_end: Option<(u32, u64, u64)>,
    /// Running totals, brought up to date from the rings by `observe`.
    totals: RefCell<Totals>,
}

impl Channel {
    pub fn create(meta: ChannelMeta, capacity: u64) -> std::io::Result<Channel> {
        let lane = if meta.is_fanout() {
            None
        } else {
            Some(Lane::new(&meta.name, 0, 0, capacity)?)
        };
        Channel::assemble(meta, capacity, lane, None)
    }

    /// Builds a channel around an existing ring (restored from systemd's fd store, checked by
    /// the caller) or, for fan-out channels, none. `wake` is `(data_ready, space_ready)`.
    pub fn assemble(
        meta: ChannelMeta,
        capacity: u64,
        lane: Option<Lane>,
        wake: Option<(OwnedFd, OwnedFd)>,
    ) -> std::io::Result<Channel> {
        let (data_ready, space_ready) = wake.map_or((None, None), |(d, s)| (Some(d), Some(s)));
        let mut channel = Channel {
            capacity,
            slots: vec![ProducerSlot {
                id: 0,
                holder: None,
                space_ready,
                stream_start: Vec::new(),
                end_lost: Vec::new(),
            }],
            queues: Vec::new(),
            next_queue_id: 1,
            control: None,
            evicted: BTreeMap::new(),
            pending_removal: false,
            stream_start: 0,
            unclean_end: None,
            totals: RefCell::new(Totals::default()),
            meta,
        };
        if let Some(lane) = lane {
            // A waiting flag from before a restart belongs to a client that is gone.
            lane.ring.clear_waiters();
            channel.queues.push(ConsumerQueue {
                id: 0,
                kind: QueueKind::Default,
                holder: None,
                data_ready,
                lanes: vec![lane],
            });
        } else if channel.meta.is_fanout() {
            channel.control = Some(BrokerControlPage::create(&channel.meta.name)?);
            if channel.meta.max_consumers == 1 {
                channel.add_queue(QueueKind::Default)?;
            }
        }
        Ok(channel)
    }

    /// Rebuilds a fan-out channel from systemd's fd store: `slots` are the producer slots'
    /// eventfds (if they were made), `queues` the durable queues with a ring per slot.
    pub fn restore_fanout(
        meta: ChannelMeta,
        capacity: u64,
        slots: Vec<Option<OwnedFd>>,
        queues: Vec<RestoredQueue>,
        next_queue_id: u32,
    ) -> Result<Channel, String> {
        if slots.is_empty() || slots.len() > meta.max_producers as usize {
            return Err(format!(
                "{} producer slots stored, max_producers is {}",
                slots.len(),
                meta.max_producers
            ));
        }
        let control = BrokerControlPage::create(&meta.name).map_err(|e| e.to_string())?;
        let mut channel = Channel {
            capacity,
            slots: slots
                .into_iter()
                .enumerate()
                .map(|(id, space_ready)| ProducerSlot {
                    id: id as u32,
                    holder: None,
                    space_ready,
                    stream_start: Vec::new(),
                    end_lost: Vec::new(),
                })
                .collect(),
            queues: Vec::new(),
            next_queue_id,
            control: Some(control),
            evicted: BTreeMap::new(),
            pending_removal: false,
            stream_start: 0,
            unclean_end: None,
            totals: RefCell::new(Totals::default()),
            meta,
        };
        for queue in queues {
            let id = queue.record.id;
            if queue.lanes.len() != channel.slots.len() {
                return Err(format!(
                    "queue {id} has {} rings for {} producer slots",
                    queue.lanes.len(),
                    channel.slots.len()
                ));
            }
            if channel.queues.iter().any(|q| q.id == id) || id >= next_queue_id {
                return Err(format!("queue id {id} is repeated or out of range"));
            }
            for lane in &queue.lanes {
                // A waiting flag from before the restart belongs to a client that is gone.
                lane.ring.clear_waiters();
            }
            channel.queues.push(ConsumerQueue {
                id,
                kind: match queue.record.name {
                    Some(name) => QueueKind::Durable {
                        name,
                        owner: queue.record.owner_uid,
                    },
                    None => QueueKind::Default,
                },
                holder: None,
                data_ready: queue.data_ready,
                lanes: queue.lanes,
            });
        }
        let has_default = channel.queues.iter().any(|q| q.kind == QueueKind::Default);
        if channel.meta.max_consumers == 1 && !has_default {
            channel
                .add_queue(QueueKind::Default)
                .map_err(|e| e.to_string())?;
        }
        Ok(channel)
    }

    pub fn name(&self) -> &str {
        &self.meta.name
    }

    /// Adds what the rings counted since the last look to the running totals. Called before
    /// any ring goes away and whenever the totals are shown or saved, so nothing counted in a
    /// ring is lost with it.
    fn observe(&self) {
        let mut totals = self.totals.borrow_mut();
        if totals.written.len() < self.slots.len() {
            totals.written.resize(self.slots.len(), (0, 0));
        }
        let mut grew = vec![Counts::default(); self.slots.len()];
        for queue in &self.queues {
            for (slot, lane) in queue.lanes.iter().enumerate() {
                let now = Counts::of(&lane.ring);
                let moved = now.since(lane.seen.replace(now));
                if let Some(grew) = grew.get_mut(slot) {
                    grew.messages_written = grew.messages_written.max(moved.messages_written);
                    grew.bytes_written = grew.bytes_written.max(moved.bytes_written);
                }
                totals.messages_read = totals.messages_read.saturating_add(moved.messages_read);
                totals.messages_lost = totals.messages_lost.saturating_add(moved.messages_lost);
            }
        }
        for (total, grew) in totals.written.iter_mut().zip(grew) {
            total.0 = total.0.saturating_add(grew.messages_written);
            total.1 = total.1.saturating_add(grew.bytes_written);
        }
    }

    /// The running totals, up to date, as systemd's fd store keeps them.
    pub fn totals(&self) -> Totals {
        self.observe();
        self.totals.borrow().clone()
    }

    /// Takes back totals saved by an earlier broker (its rings' counters as it last saw them
    /// included, so what was written while no broker ran is counted at the next look).
    pub fn restore_totals(&mut self, totals: Totals, seen: &[(u32, u32, Counts)]) {
        for (queue_id, slot, counts) in seen {
            let lane = self
                .queues
                .iter()
                .find(|q| q.id == *queue_id)
                .and_then(|q| q.lanes.get(*slot as usize));
            if let Some(lane) = lane {
                lane.seen.set(*counts);
            }
        }
        let mut totals = totals;
        // Stored by an earlier broker; still, never more slots than the channel has.
        totals.written.truncate(self.slots.len());
        *self.totals.borrow_mut() = totals;
    }

    /// Each kept (not anonymous) ring's counters as last added to the totals: (queue id,
    /// slot, counts).
    pub fn seen_counts(&self) -> Vec<(u32, u32, Counts)> {
        self.observe();
        self.queues
            .iter()
            .filter(|q| q.kind != QueueKind::Anonymous)
            .flat_map(|q| {
                q.lanes
                    .iter()
                    .enumerate()
                    .map(move |(slot, lane)| (q.id, slot as u32, lane.seen.get()))
            })
            .collect()
    }

    /// What of a fan-out channel systemd's fd store keeps; `None` for one-to-one channels.
    pub fn durable_parts(&self) -> Option<DurableParts<'_>> {
        if !self.meta.is_fanout() {
            return None;
        }
        let mut fds = Vec::new();
        for slot in &self.slots {
            if let Some(fd) = &slot.space_ready {
                fds.push((format!("p{}.space", slot.id), fd.as_fd()));
            }
        }
        let mut queues = Vec::new();
        for queue in self
            .queues
            .iter()
            .filter(|q| q.kind != QueueKind::Anonymous)
        {
            queues.push(QueueRecord {
                id: queue.id,
                name: queue.name().map(str::to_string),
                owner_uid: queue.owner(),
            });
            if let Some(fd) = &queue.data_ready {
                fds.push((format!("q{}.data", queue.id), fd.as_fd()));
            }
            for (slot, lane) in self.slots.iter().zip(&queue.lanes) {
                fds.push((
                    format!("q{}/p{}.ring", queue.id, slot.id),
                    lane.files.ring.as_file().as_fd(),
                ));
                if let Some(ack) = &lane.files.ack {
                    fds.push((
                        format!("q{}/p{}.ack", queue.id, slot.id),
                        ack.as_file().as_fd(),
                    ));
                }
            }
        }
        Some(DurableParts {
            slots: self.slots.len() as u32,
            next_queue_id: self.next_queue_id,
            queues,
            fds,
        })
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The owner of each durable consumer name this channel keeps, for the per-uid quota.
    pub fn durable_owners(&self) -> impl Iterator<Item = u32> + '_ {
        self.queues.iter().filter_map(ConsumerQueue::owner)
    }

    /// Ring memory this channel may come to hold: a ring per producer and consumer pair.
    pub fn ring_budget(&self) -> u64 {
        ring_budget(&self.meta, self.capacity)
    }

    /// The ring of a one-to-one channel and its eventfds (`data_ready`, `space_ready`) once
    /// made: what systemd's fd store keeps.
    pub fn single_ring(&self) -> Option<(&Lane, Option<(BorrowedFd<'_>, BorrowedFd<'_>)>)> {
        if self.meta.is_fanout() {
            return None;
        }
        let queue = self.queues.first()?;
        let lane = queue.lanes.first()?;
        let wake = match (&queue.data_ready, &self.slots[0].space_ready) {
            (Some(d), Some(s)) => Some((d.as_fd(), s.as_fd())),
            _ => None,
        };
        Some((lane, wake))
    }

    /// Rings the channel holds now.
    pub fn ring_count(&self) -> usize {
        self.queues.iter().map(|q| q.lanes.len()).sum()
    }

    pub fn access(&self, role: Role) -> &AccessList {
        match role {
            Role::Producer => &self.meta.producers,
            Role::Consumer => &self.meta.consumers,
        }
    }

    pub fn is_attached(&self) -> bool {
        self.sessions().next().is_some()
    }

    /// Fds the broker holds for this channel.
    pub fn open_fds(&self) -> usize {
        let slot_fds = self
            .slots
            .iter()
            .filter(|s| s.space_ready.is_some())
            .count();
        let queue_fds: usize = self
            .queues
            .iter()
            .map(|q| {
                q.lanes.iter().map(Lane::open_fds).sum::<usize>()
                    + usize::from(q.data_ready.is_some())
            })
            .sum();
        slot_fds + queue_fds + usize::from(self.control.is_some())
    }

    /// Sessions holding `role` here.
    pub fn holders(&self, role: Role) -> Vec<SessionId> {
        match role {
            Role::Producer => self
                .slots
                .iter()
                .filter_map(|s| s.holder.as_ref().map(|a| a.session))
                .collect(),
            Role::Consumer => self
                .queues
                .iter()
                .filter_map(|q| q.holder.as_ref().map(|a| a.session))
                .collect(),
        }
    }

    pub fn sessions(&self) -> impl Iterator<Item = SessionId> + '_ {
        let producers = self.slots.iter().filter_map(|s| s.holder.as_ref());
        let consumers = self.queues.iter().filter_map(|q| q.holder.as_ref());
        producers.chain(consumers).map(|a| a.session)
    }

    fn generation(&self, role: Role) -> u64 {
        self.control
            .as_ref()
            .map_or(0, |(page, _)| page.generation(role))
    }

    fn bump(&self, role: Role) -> u64 {
        self.control.as_ref().map_or(0, |(page, _)| page.bump(role))
    }

    /// The layout of this channel's rings: a one-to-one channel's ring may come from an older
    /// broker (restored from the fd store); fan-out lanes are made as needed, in the newest.
    pub fn ring_layout(&self) -> u32 {
        self.single_ring()
            .map_or(LAYOUT_VERSION, |(lane, _)| lane.ring.layout())
    }

    fn attach_info(&self, role: Role, id: u32, fds: Vec<&str>, lanes: Vec<LaneInfo>) -> AttachInfo {
        AttachInfo {
            channel: self.meta.name.clone(),
            role,
            capacity: self.capacity,
            ring_size: HEADER_SIZE + self.capacity,
            ring_layout: self.ring_layout(),
            fds: fds.into_iter().map(str::to_string).collect(),
            id,
            slow_consumer: self.meta.slow_consumer,
            lanes,
            generation: self.generation(role),
        }
    }

    pub fn attach_producer(
        &mut self,
        session: SessionId,
        peer: &PeerCredentials,
    ) -> Result<Grant, Refusal> {
        let free = self.slots.iter().position(|s| s.holder.is_none());
        let (index, notices) = match free {
            Some(index) => (index, Vec::new()),
            None if self.slots.len() < self.meta.max_producers as usize => {
                self.add_slot().map_err(internal)?
            }
            None => {
                let pids = pids(self.slots.iter().filter_map(|s| s.holder.as_ref()));
                return Err(refuse(
                    ErrorCode::ChannelBusy,
                    if self.meta.max_producers == 1 {
                        format!("channel busy: producer pid {pids} attached")
                    } else {
                        format!(
                            "channel busy: all {} producers attached (pids {pids}); raise max_producers",
                            self.meta.max_producers
                        )
                    },
                ));
            }
        };
        let grant = if self.meta.is_fanout() {
            ensure(&mut self.slots[index].space_ready).map_err(internal)?;
            let mut fds = vec![
                self.control_fd().map_err(internal)?,
                share(&self.slots[index].space_ready).map_err(internal)?,
            ];
            let mut names = vec!["control", "wait"];
            let mut lanes = Vec::new();
            let (channel, slot, capacity) = (&self.meta.name, self.slots[index].id, self.capacity);
            for queue in &mut self.queues {
                ensure(&mut queue.data_ready).map_err(internal)?;
                if queue.holder.is_none() && !queue.lanes[index].ring.identity_intact() {
                    // A former producer of this slot scribbled on the header of its ring to a
                    // consumer that is away: nobody could open it. The ring held nothing the
                    // new producer could add to, so it starts afresh.
                    queue.lanes[index] =
                        Lane::new(channel, slot, queue.id, capacity).map_err(internal)?;
                }
                let lane = &queue.lanes[index];
                fds.extend(lane.share(Role::Producer).map_err(internal)?);
                fds.push(share(&queue.data_ready).map_err(internal)?);
                names.extend(lane.fd_names());
                names.push("wake");
                lanes.push(LaneInfo { peer: queue.id });
            }
            self.slots[index].end_lost.clear();
            self.slots[index].stream_start = self
                .queues
                .iter()
                .map(|q| (q.id, q.lanes[index].ring.stats().bytes_written))
                .collect();
            let info = self.attach_info(Role::Producer, self.slots[index].id, names, lanes);
            Grant {
                info,
                fds,
                notices,
                wake_created: false,
            }
        } else {
            let grant = self.single_grant(Role::Producer).map_err(internal)?;
            self.unclean_end = None;
            self.stream_start = self.queues[0].lanes[0].ring.stats().bytes_written;
            grant
        };
        self.slots[index].holder = Some(Attached {
            session,
            peer: peer.clone(),
        });
        Ok(grant)
    }

    /// A new producer slot with a ring to every queue; the attached consumers are told.
    fn add_slot(&mut self) -> std::io::Result<(usize, Vec<Notice>)> {
        let id = self.slots.len() as u32;
        let mut space_ready = None;
        ensure(&mut space_ready)?;
        // Everything that can fail comes first, so that a failure (out of fds) changes nothing.
        let mut lanes = Vec::new();
        let mut told = Vec::new();
        for queue in &self.queues {
            let lane = Lane::new(&self.meta.name, id, queue.id, self.capacity)?;
            if let Some(holder) = &queue.holder {
                let mut fds = lane.share(Role::Consumer)?;
                fds.push(share(&space_ready)?);
                told.push((holder.session, fds));
            }
            lanes.push(lane);
        }
        let generation = self.bump(Role::Consumer);
        let notices = lane_added(told, generation, id);
        for (queue, lane) in self.queues.iter_mut().zip(lanes) {
            queue.lanes.push(lane);
        }
        self.slots.push(ProducerSlot {
            id,
            holder: None,
            space_ready,
            stream_start: Vec::new(),
            end_lost: Vec::new(),
        });
        Ok((self.slots.len() - 1, notices))
    }

    /// Attaches a consumer, as durable consumer `name` if given. A durable name belongs to the
    /// uid that registered it: only that uid (and root) may attach as it. `admit_new_name` is
    /// asked before a new durable name is registered (the per-uid quota).
    pub fn attach_consumer(
        &mut self,
        session: SessionId,
        peer: &PeerCredentials,
        name: Option<&str>,
        admit_new_name: impl FnOnce() -> Result<(), String>,
    ) -> Result<Grant, Refusal> {
        let channel = &self.meta.name;
        if name.is_some() && self.meta.max_consumers == 1 {
            return Err(refuse(
                    ErrorCode::BadRequest,
                    format!(
                        "channel {channel:?} has one consumer (max_consumers = 1), which already resumes where the last one stopped; durable consumer names need max_consumers > 1"
                    ),
                ));
        }
        if !self.meta.is_fanout() {
            return self.attach_single_consumer(session, peer);
        }
        let mut notices = Vec::new();
        let existing = match name {
            Some(n) => self.queues.iter().position(|q| q.name() == Some(n)),
            None => self
                .queues
                .iter()
                .position(|q| q.kind == QueueKind::Default),
        };
        let index = match existing {
            Some(index) => {
                // Before the eviction notice: another uid must not take (or even learn) it.
                if let (Some(name), Some(owner)) = (name, self.queues[index].owner()) {
                    if owner != peer.uid && peer.uid != 0 {
                        return Err(not_the_owner(
                            channel,
                            name,
                            owner,
                            peer.uid,
                            "attach as it",
                        ));
                    }
                }
                // The one queue of a single-consumer channel is recorded under the name "".
                if let Some(cause) = self.evicted.remove(name.unwrap_or_default()) {
                    let who = match name {
                        Some(name) => format!("durable consumer {name:?}"),
                        None => "the consumer".to_string(),
                    };
                    return Err(refuse(
                        ErrorCode::Evicted,
                        format!(
                            "{who} of channel {channel:?} was cut off while away ({}): the unread messages of the producer whose ring was full were discarded, the other producers' are kept; attach again to resume",
                            away_cause(cause)
                        ),
                    ));
                }
                if let Some(holder) = &self.queues[index].holder {
                    return Err(refuse(
                        ErrorCode::ChannelBusy,
                        match name {
                            Some(name) => format!(
                                "channel busy: durable consumer {name:?} of channel {channel:?} is attached (pid {})",
                                holder.peer.pid
                            ),
                            None => format!("channel busy: consumer pid {} attached", holder.peer.pid),
                        },
                    ));
                }
                index
            }
            None => {
                if let Some(name) = name {
                    shmem_broker_proto::names::validate_consumer_name(name)
                        .map_err(|m| refuse(ErrorCode::InvalidName, m))?;
                    admit_new_name().map_err(|m| refuse(ErrorCode::LimitReached, m))?;
                }
                if self.queues.len() >= self.meta.max_consumers as usize {
                    let away = self.queues.iter().filter(|q| q.holder.is_none()).count();
                    return Err(refuse(
                        ErrorCode::LimitReached,
                        format!(
                            "channel {channel:?} has max_consumers = {} and all are taken ({} attached, {away} durable away); raise max_consumers or drop a durable consumer",
                            self.meta.max_consumers,
                            self.queues.len() - away
                        ),
                    ));
                }
                let kind = name.map_or(QueueKind::Anonymous, |n| QueueKind::Durable {
                    name: n.to_string(),
                    owner: Some(peer.uid),
                });
                let (index, added) = self.add_queue(kind).map_err(internal)?;
                notices = added;
                index
            }
        };
        let queue = &self.queues[index];
        let mut fds = vec![
            self.control_fd().map_err(internal)?,
            share(&queue.data_ready).map_err(internal)?,
        ];
        let mut names = vec!["control", "wait"];
        let mut lanes = Vec::new();
        for (slot, lane) in self.slots.iter_mut().zip(&queue.lanes) {
            ensure(&mut slot.space_ready).map_err(internal)?;
            fds.extend(lane.share(Role::Consumer).map_err(internal)?);
            fds.push(share(&slot.space_ready).map_err(internal)?);
            names.extend(lane.fd_names());
            names.push("wake");
            lanes.push(LaneInfo { peer: slot.id });
        }
        let info = self.attach_info(Role::Consumer, queue.id, names, lanes);
        let queue = &mut self.queues[index];
        if let QueueKind::Durable {
            owner: owner @ None,
            ..
        } = &mut queue.kind
        {
            // Restored from a broker that kept no owners: the first to attach claims it.
            *owner = Some(peer.uid);
        }
        queue.holder = Some(Attached {
            session,
            peer: peer.clone(),
        });
        Ok(Grant {
            info,
            fds,
            notices,
            wake_created: false,
        })
    }

    fn attach_single_consumer(
        &mut self,
        session: SessionId,
        peer: &PeerCredentials,
    ) -> Result<Grant, Refusal> {
        let queue = &self.queues[0];
        if let Some(holder) = &queue.holder {
            return Err(refuse(
                ErrorCode::ChannelBusy,
                format!("channel busy: consumer pid {} attached", holder.peer.pid),
            ));
        }
        let mut grant = self.single_grant(Role::Consumer).map_err(internal)?;
        if self.slots[0].holder.is_none() {
            if let Some(gone) = self.unclean_end {
                grant.notices.push(self.producer_gone(session, None, gone));
            }
        }
        self.queues[0].holder = Some(Attached {
            session,
            peer: peer.clone(),
        });
        Ok(grant)
    }

    /// The version-1 attach of a one-to-one channel: its ring and both eventfds (made at the
    /// first attach).
    fn single_grant(&mut self, role: Role) -> std::io::Result<Grant> {
        let mut wake_created = ensure(&mut self.slots[0].space_ready)?;
        let queue = &mut self.queues[0];
        wake_created |= ensure(&mut queue.data_ready)?;
        let mut fds = queue.lanes[0].share(role)?;
        fds.push(share(&queue.data_ready)?);
        fds.push(share(&self.slots[0].space_ready)?);
        let mut names = queue.lanes[0].fd_names().to_vec();
        names.extend(["data_ready", "space_ready"]);
        Ok(Grant {
            info: self.attach_info(role, 0, names, Vec::new()),
            fds,
            notices: Vec::new(),
            wake_created,
        })
    }

    /// A new consumer queue with a ring from every slot; the attached producers are told.
    fn add_queue(&mut self, kind: QueueKind) -> std::io::Result<(usize, Vec<Notice>)> {
        let id = self.next_queue_id;
        let mut data_ready = None;
        ensure(&mut data_ready)?;
        // Everything that can fail comes first, so that a failure (out of fds) changes nothing.
        let mut lanes = Vec::new();
        let mut told = Vec::new();
        for slot in &self.slots {
            let lane = Lane::new(&self.meta.name, slot.id, id, self.capacity)?;
            if let Some(holder) = &slot.holder {
                let mut fds = lane.share(Role::Producer)?;
                fds.push(share(&data_ready)?);
                told.push((holder.session, fds));
            }
            lanes.push(lane);
        }
        self.next_queue_id += 1;
        let generation = self.bump(Role::Producer);
        let notices = lane_added(told, generation, id);
        self.queues.push(ConsumerQueue {
            id,
            kind,
            holder: None,
            data_ready,
            lanes,
        });
        Ok((self.queues.len() - 1, notices))
    }

    /// Removes queue `index` and its rings; the attached producers are told to stop writing.
    fn remove_queue(&mut self, index: usize) -> Vec<Notice> {
        self.observe();
        let queue = self.queues.remove(index);
        let generation = self.bump(Role::Producer);
        self.slots
            .iter()
            .filter_map(|s| s.holder.as_ref())
            .map(|holder| {
                (
                    holder.session,
                    Event::LaneRemoved {
                        generation,
                        peer: queue.id,
                    },
                    Vec::new(),
                )
            })
            .collect()
    }

    fn control_fd(&self) -> std::io::Result<OwnedFd> {
        match &self.control {
            Some((_, fd)) => fd.try_clone(),
            None => Err(std::io::Error::other(
                "fan-out channel without a control page",
            )),
        }
    }

    /// Frees what `session` held. Returns its role and credentials, and notices for others
    /// (an anonymous consumer's queue goes away with it).
    pub fn detach(&mut self, session: SessionId) -> Option<(Role, PeerCredentials, Vec<Notice>)> {
        let holds = |a: &Option<Attached>| a.as_ref().is_some_and(|a| a.session == session);
        if let Some(index) = self.slots.iter().position(|s| holds(&s.holder)) {
            let attached = self.slots[index].holder.take()?;
            for queue in &self.queues {
                queue.lanes[index].ring.clear_waiter(Role::Producer);
            }
            let mut notices = Vec::new();
            if self.meta.is_fanout() {
                // Each attached consumer reads its own ring from this slot: whatever this
                // producer left there decides, as below, and costs that consumer's view of
                // this producer only.
                let start = std::mem::take(&mut self.slots[index].stream_start);
                let end_lost = std::mem::take(&mut self.slots[index].end_lost);
                for queue in &self.queues {
                    let (Some(holder), Some(lane)) = (&queue.holder, queue.lanes.get(index)) else {
                        continue;
                    };
                    let (position, clean) = lane.ring.producer_end();
                    if clean {
                        continue;
                    }
                    let from = start
                        .iter()
                        .find(|(q, _)| *q == queue.id)
                        .map_or(0, |(_, bytes)| *bytes);
                    let bytes = lane.ring.stats().bytes_written.saturating_sub(from);
                    let gone = (attached.peer.pid, position, bytes);
                    let mut notice =
                        self.producer_gone(holder.session, Some(self.slots[index].id), gone);
                    if let Event::ProducerGone { end_lost: lost, .. } = &mut notice.1 {
                        *lost = end_lost.iter().find(|(q, _)| *q == queue.id).map(|l| l.1);
                    }
                    notices.push(notice);
                }
            } else if let Some(queue) = self.queues.first() {
                // Whatever the producer left in the ring decides: only `close` writes the
                // end-of-stream mark, so its absence means the producer did not finish. A
                // hostile producer can only misreport its own stream.
                let ring = &queue.lanes[0].ring;
                let (position, clean) = ring.producer_end();
                if !clean {
                    let bytes = ring.stats().bytes_written.saturating_sub(self.stream_start);
                    let gone = (attached.peer.pid, position, bytes);
                    self.unclean_end = Some(gone);
                    if let Some(holder) = &queue.holder {
                        notices.push(self.producer_gone(holder.session, None, gone));
                    }
                }
            }
            return Some((Role::Producer, attached.peer, notices));
        }
        let index = self.queues.iter().position(|q| holds(&q.holder))?;
        let attached = self.queues[index].holder.take()?;
        let notices = if self.queues[index].kind == QueueKind::Anonymous {
            self.remove_queue(index)
        } else {
            for lane in &self.queues[index].lanes {
                lane.ring.clear_waiter(Role::Consumer);
            }
            Vec::new()
        };
        Some((Role::Consumer, attached.peer, notices))
    }

    /// A fan-out producer (`session`) closed its stream under policy `drop`, and its
    /// end-of-stream mark did not fit the rings of the queues in `lost`. Only believed for
    /// rings that turn out to lack the mark when it detaches, and only about its own stream.
    pub fn end_lost(&mut self, session: SessionId, lost: &[LostEnd]) -> Result<(), Refusal> {
        let holds = |s: &&mut ProducerSlot| s.holder.as_ref().is_some_and(|a| a.session == session);
        let policy = self.meta.slow_consumer;
        let queues: Vec<u32> = self.queues.iter().map(|q| q.id).collect();
        let Some(slot) = self.slots.iter_mut().find(holds) else {
            return Err(refuse(
                ErrorCode::BadRequest,
                "end_lost: this connection is not a fan-out producer's".into(),
            ));
        };
        if policy != SlowConsumer::Drop || !self.meta.is_fanout() {
            return Err(refuse(
                ErrorCode::BadRequest,
                "end_lost: only channels with slow_consumer = drop lose end-of-stream marks".into(),
            ));
        }
        // One entry per queue that exists: a list as long as the client likes stays bounded.
        slot.end_lost = queues
            .iter()
            .filter_map(|id| {
                lost.iter()
                    .find(|l| l.consumer == *id)
                    .map(|l| (*id, l.missed))
            })
            .collect();
        Ok(())
    }

    /// The `producer_gone` event for `session`; `producer` is the slot in a fan-out channel.
    fn producer_gone(
        &self,
        session: SessionId,
        producer: Option<u32>,
        (pid, position, bytes): (u32, u64, u64),
    ) -> Notice {
        let event = Event::ProducerGone {
            channel: self.meta.name.clone(),
            pid,
            position,
            bytes,
            producer,
            end_lost: None,
        };
        (session, event, Vec::new())
    }

    /// Forgets durable consumer `name` and its unread data. `uid` asks; `privileged` if it is
    /// an admin or the channel's owner, who may drop any durable consumer; others only their
    /// own.
    pub fn drop_consumer(
        &mut self,
        name: &str,
        uid: u32,
        privileged: bool,
    ) -> Result<Vec<Notice>, Refusal> {
        let channel = &self.meta.name;
        let may_drop = |owner: Option<u32>| privileged || owner == Some(uid);
        let Some(index) = self.queues.iter().position(|q| q.name() == Some(name)) else {
            return Err(refuse(
                ErrorCode::NoSuchConsumer,
                format!("channel {channel:?} has no durable consumer {name:?}"),
            ));
        };
        let owner = self.queues[index].owner();
        if !may_drop(owner) {
            return Err(not_the_owner(
                channel,
                name,
                owner.unwrap_or(0),
                uid,
                "drop it",
            ));
        }
        if let Some(holder) = &self.queues[index].holder {
            return Err(refuse(
                ErrorCode::ChannelBusy,
                format!(
                    "durable consumer {name:?} of channel {channel:?} is attached (pid {}); it must detach first",
                    holder.peer.pid
                ),
            ));
        }
        self.evicted.remove(name);
        Ok(self.remove_queue(index))
    }

    /// Rings a producer flagged evicted, or whose positions are unsound, dealt with one ring at
    /// a time and from what the broker sees itself, never from the flag alone (see
    /// [`SharedRing::confirmed_eviction`]: the flag counts only under policy `disconnect` and
    /// with consistent positions and unread bytes in the ring):
    /// - a consumer that fell behind by that rule is disconnected if attached (the returned
    ///   event says why; its session must be closed), or told at its next attach if it is
    ///   away; an anonymous consumer's queue goes with it, any other queue stays with the
    ///   other producers' data, and only the ring it fell behind in is replaced;
    /// - any other flagged or unsound ring is replaced by an empty one once its consumer is
    ///   away (an attached consumer's library reads on without it), and nobody is disconnected:
    ///   either side can write anything in a ring, so who broke it is unknown, and the ring is
    ///   all it costs.
    ///
    /// Returns the events to send, the sessions to close, and whether rings changed.
    pub fn evict_slow_consumers(&mut self) -> (Vec<Notice>, Vec<SessionId>, bool) {
        let mut notices = Vec::new();
        let mut sessions = Vec::new();
        let mut changed = false;
        if !self.meta.is_fanout() {
            return (notices, sessions, changed);
        }
        let policy = self.meta.slow_consumer;
        for index in (0..self.queues.len()).rev() {
            let queue = &mut self.queues[index];
            let fell_behind = queue
                .lanes
                .iter()
                .any(|l| l.ring.confirmed_eviction(policy).is_some());
            if fell_behind {
                match queue.holder.take() {
                    Some(holder) => {
                        let mut totals = self.totals.borrow_mut();
                        totals.evictions = totals.evictions.saturating_add(1);
                        sessions.push(holder.session);
                        notices.push((
                            holder.session,
                            Event::Disconnected {
                                channel: self.meta.name.clone(),
                                reason: self.eviction_reason(Eviction::FellBehind),
                            },
                            Vec::new(),
                        ));
                    }
                    None => {
                        // The one queue of a single-consumer channel is told under the name "".
                        let name = queue.name().unwrap_or_default().to_string();
                        self.evicted.insert(name, Eviction::FellBehind);
                    }
                }
                if self.queues[index].kind == QueueKind::Anonymous {
                    notices.extend(self.remove_queue(index));
                    changed = true;
                    continue;
                }
            }
            if self.queues[index].holder.is_some() {
                continue;
            }
            for slot in 0..self.queues[index].lanes.len() {
                let ring = &self.queues[index].lanes[slot].ring;
                if ring.eviction().is_none()
                    && ring.unread_if_sound().is_some()
                    && ring.identity_intact()
                {
                    continue;
                }
                // If this fails (out of fds), the next look tries again.
                if let Ok(told) = self.replace_away_lane(index, slot) {
                    notices.extend(told);
                    changed = true;
                }
            }
        }
        (notices, sessions, changed)
    }

    /// Gives away queue `index` an empty ring from slot `slot` in place of the old one; the
    /// slot's producer, if attached, is told to write there.
    fn replace_away_lane(&mut self, index: usize, slot: usize) -> std::io::Result<Vec<Notice>> {
        self.observe();
        let queue = &mut self.queues[index];
        ensure(&mut queue.data_ready)?;
        let lane = Lane::new(
            &self.meta.name,
            self.slots[slot].id,
            queue.id,
            self.capacity,
        )?;
        let told = match &self.slots[slot].holder {
            Some(holder) => {
                let mut fds = lane.share(Role::Producer)?;
                fds.push(share(&queue.data_ready)?);
                vec![(holder.session, fds)]
            }
            None => Vec::new(),
        };
        queue.lanes[slot] = lane;
        let peer = queue.id;
        let generation = self.bump(Role::Producer);
        Ok(lane_added(told, generation, peer))
    }

    /// What an attached consumer that was cut off is told.
    fn eviction_reason(&self, cause: Eviction) -> String {
        match cause {
            Eviction::FellBehind => format!(
                "consumer fell behind: its ring of {} bytes was full and channel {:?} has slow_consumer = disconnect",
                self.capacity, self.meta.name
            ),
            Eviction::Corrupt => format!(
                "a producer of channel {:?} found this consumer's ring corrupt",
                self.meta.name
            ),
        }
    }

    /// Marks every ring dropped and wakes everyone so blocked clients notice at once.
    pub fn mark_dropped(&self) {
        for queue in &self.queues {
            for lane in &queue.lanes {
                lane.ring.mark_dropped();
            }
        }
        let eventfds = self
            .queues
            .iter()
            .filter_map(|q| q.data_ready.as_ref())
            .chain(self.slots.iter().filter_map(|s| s.space_ready.as_ref()));
        for fd in eventfds {
            let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
        }
    }

    pub fn info(&self) -> ChannelInfo {
        let mut info = ChannelInfo {
            name: self.meta.name.clone(),
            capacity: self.capacity,
            origin: self.meta.origin.clone(),
            owner_uid: self.meta.owner_uid,
            producers: self.meta.producers.describe(),
            consumers: self.meta.consumers.describe(),
            peers: Vec::new(),
            messages_written: 0,
            bytes_written: 0,
            messages_read: 0,
            bytes_unread: 0,
            messages_lost: 0,
            evictions: 0,
            pending_removal: self.pending_removal,
            max_producers: self.meta.max_producers,
            max_consumers: self.meta.max_consumers,
            slow_consumer: self.meta.slow_consumer,
            ring_bytes: 0,
            fullest_ring_bytes: 0,
            wakeups: 0,
        };
        let endpoint = |role, id, holder: Option<&Attached>| PeerInfo {
            pid: holder.map_or(0, |a| a.peer.pid),
            uid: holder.map_or(0, |a| a.peer.uid),
            gid: holder.map_or(0, |a| a.peer.gid),
            role,
            id,
            name: None,
            owner_uid: None,
            attached: holder.is_some(),
            bytes_unread: 0,
            messages: 0,
            messages_lost: 0,
        };
        // Every counter below comes from shared memory a client can write anything into: each
        // sum saturates (a debug build would panic on overflow, a release build wrap), and a
        // consumer is never shown to have read more of a ring than its producer wrote there.
        // Unread bytes are clamped to the capacity per ring (`stats`), so their sums stay
        // within the ring memory.
        for (index, slot) in self.slots.iter().enumerate() {
            let mut producer = endpoint(Role::Producer, slot.id, slot.holder.as_ref());
            for lane in self.queues.iter().map(|q| &q.lanes[index]) {
                // Counters are what clients stored in their rings: sums saturate.
                let stats = lane.ring.stats();
                // Every consumer gets the same messages; the busiest ring counts them.
                producer.messages = producer.messages.max(stats.messages_written);
                producer.bytes_unread =
                    producer.bytes_unread.saturating_add(unread_payload(&stats));
                producer.messages_lost = producer.messages_lost.saturating_add(stats.messages_lost);
            }
            if slot.holder.is_some() {
                info.peers.push(producer);
            }
        }
        for queue in &self.queues {
            let mut consumer = endpoint(Role::Consumer, queue.id, queue.holder.as_ref());
            consumer.name = queue.name().map(str::to_string);
            consumer.owner_uid = queue.owner();
            for lane in &queue.lanes {
                let stats = lane.ring.stats();
                let read = stats.messages_read.min(stats.messages_written);
                consumer.messages = consumer.messages.saturating_add(read);
                consumer.bytes_unread =
                    consumer.bytes_unread.saturating_add(unread_payload(&stats));
                consumer.messages_lost = consumer.messages_lost.saturating_add(stats.messages_lost);
                info.ring_bytes = info.ring_bytes.saturating_add(self.capacity);
                // Position-based, already clamped to the capacity by `stats`.
                info.fullest_ring_bytes = info.fullest_ring_bytes.max(stats.bytes_unread);
                info.wakeups = info.wakeups.saturating_add(stats.wakeups);
            }
            info.bytes_unread = info.bytes_unread.saturating_add(consumer.bytes_unread);
            if queue.holder.is_some() || queue.name().is_some() {
                info.peers.push(consumer);
            }
        }
        let totals = self.totals();
        for (messages, bytes) in &totals.written {
            info.messages_written = info.messages_written.saturating_add(*messages);
            info.bytes_written = info.bytes_written.saturating_add(*bytes);
        }
        info.messages_read = totals.messages_read;
        info.messages_lost = totals.messages_lost;
        info.evictions = totals.evictions;
        info
    }
}

/// Message bytes in a ring not yet read: what its positions say is unread, less what is not
/// a message (an end-of-stream mark, a loss record or padding left when every message has
/// been read) and never more than was written there.
fn unread_payload(stats: &RingStats) -> u64 {
    if stats.messages_read >= stats.messages_written {
        return 0;
    }
    stats.bytes_unread.min(stats.bytes_written)
}

/// The refusal for a uid that asks to `what` (attach as it, drop it) of someone else's
/// durable consumer.
fn not_the_owner(channel: &str, name: &str, owner: u32, uid: u32, what: &str) -> Refusal {
    refuse(
        ErrorCode::PermissionDenied,
        format!(
            "permission denied: durable consumer {name:?} of channel {channel:?} belongs to uid {owner}; uid {uid} may not {what}"
        ),
    )
}

/// Why a consumer that was away lost its queue.
fn away_cause(cause: Eviction) -> &'static str {
    match cause {
        Eviction::FellBehind => "it fell behind and slow_consumer = disconnect",
        Eviction::Corrupt => "a producer found its ring corrupt",
    }
}

/// `lane_added` events for `peer`, one per session with the fds it gets.
fn lane_added(told: Vec<(SessionId, Vec<OwnedFd>)>, generation: u64, peer: u32) -> Vec<Notice> {
    told.into_iter()
        .map(|(session, fds)| (session, Event::LaneAdded { generation, peer }, fds))
        .collect()
}

/// Ring memory a channel may come to hold: a ring per producer and consumer pair.
pub fn ring_budget(meta: &ChannelMeta, capacity: u64) -> u64 {
    capacity * u64::from(meta.max_producers) * u64::from(meta.max_consumers)
}

/// Makes the eventfd if it is not there yet; true if it was made now.
fn ensure(fd: &mut Option<OwnedFd>) -> std::io::Result<bool> {
    if fd.is_some() {
        return Ok(false);
    }
    *fd = Some(new_eventfd()?);
    Ok(true)
}

fn share(fd: &Option<OwnedFd>) -> std::io::Result<OwnedFd> {
    match fd {
        Some(fd) => fd.try_clone(),
        None => Err(std::io::Error::other("eventfd missing")),
    }
}

fn internal(err: std::io::Error) -> Refusal {
    refuse(ErrorCode::Internal, format!("cannot share channel: {err}"))
}

fn pids<'a>(holders: impl Iterator<Item = &'a Attached>) -> String {
    holders
        .map(|a| a.peer.pid.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(max_producers: u32, max_consumers: u32, slow_consumer: SlowConsumer) -> ChannelMeta {
        ChannelMeta {
            name: "t".into(),
            origin: Origin::Runtime,
            owner_uid: Some(0),
            producers: AccessList::anyone(),
            consumers: AccessList::anyone(),
            max_producers,
            max_consumers,
            slow_consumer,
        }
    }

    fn peer(pid: u32) -> PeerCredentials {
        as_uid(pid, 0)
    }

    fn as_uid(pid: u32, uid: u32) -> PeerCredentials {
        PeerCredentials {
            pid,
            uid,
            gid: uid,
            groups: Vec::new(),
        }
    }

    fn lane_added_to(notices: &[Notice]) -> Vec<(SessionId, u32)> {
        notices
            .iter()
            .filter_map(|(session, event, fds)| match event {
                // A ring, its ack page and the eventfd.
                Event::LaneAdded { peer, .. } if fds.len() == 3 => Some((*session, *peer)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn one_to_one_keeps_the_version_1_shape() {
        let mut channel = Channel::create(meta(1, 1, SlowConsumer::Block), 4096).expect("create");
        assert_eq!(
            channel.open_fds(),
            2,
            "an idle channel holds its ring and ack page only"
        );
        let grant = channel
            .attach_producer(1, &peer(10))
            .ok()
            .expect("producer");
        assert_eq!(grant.info.fds, ["ring", "ack", "data_ready", "space_ready"]);
        assert!(grant.wake_created && grant.notices.is_empty());
        let refused = channel.attach_producer(2, &peer(11)).err().expect("busy");
        assert_eq!(refused.code, ErrorCode::ChannelBusy);
        assert!(refused.message.contains("pid 10"), "{}", refused.message);
        let named = channel
            .attach_consumer(3, &peer(12), Some("x"), || Ok(()))
            .err();
        assert_eq!(named.map(|r| r.code), Some(ErrorCode::BadRequest));
    }

    #[test]
    fn pairs_get_rings_and_the_other_side_is_told() {
        let mut channel = Channel::create(meta(2, 3, SlowConsumer::Block), 4096).expect("create");
        let first = channel
            .attach_consumer(1, &peer(10), None, || Ok(()))
            .ok()
            .expect("c1");
        assert_eq!(
            first.info.fds,
            ["control", "wait", "ring", "ack", "wake"],
            "slot 0 exists"
        );
        let producer = channel.attach_producer(2, &peer(11)).ok().expect("p0");
        assert_eq!(
            producer.info.lanes,
            vec![LaneInfo {
                peer: first.info.id
            }]
        );
        // A second producer gets a new slot; the attached consumer hears of its ring.
        let second = channel.attach_producer(3, &peer(12)).ok().expect("p1");
        assert_eq!(second.info.id, 1);
        assert_eq!(lane_added_to(&second.notices), vec![(1, 1)]);
        // A new consumer: both producers hear of it.
        let late = channel
            .attach_consumer(4, &peer(13), Some("keep"), || Ok(()))
            .ok()
            .expect("c2");
        assert_eq!(late.info.lanes.len(), 2);
        let told: Vec<SessionId> = lane_added_to(&late.notices).iter().map(|n| n.0).collect();
        assert_eq!(told, vec![2, 3]);
        assert_eq!(channel.info().ring_bytes, 4 * 4096);
        // The anonymous consumer's rings go with it; the durable one's stay.
        let (_, _, gone) = channel.detach(1).expect("detach c1");
        assert_eq!(gone.len(), 2, "both producers told to stop writing to it");
        channel.detach(4).expect("detach c2");
        assert_eq!(channel.info().ring_bytes, 2 * 4096);
        let away = channel.info().peers.into_iter().find(|p| !p.attached);
        assert_eq!(away.and_then(|p| p.name), Some("keep".to_string()));
        assert!(channel.drop_consumer("keep", 0, true).is_ok());
        assert_eq!(channel.info().ring_bytes, 0);
    }

    /// Fills `lane`'s ring with 100-byte messages, as a producer would.
    fn fill(lane: &Lane) {
        let ring = SharedRing::open(lane.files.share(None).expect("share"), 4096).expect("open");
        let mut writer = shmem_broker_proto::ring::RingWriter::new(ring).expect("writer");
        while writer
            .try_write_with(100, |buf| buf.fill(7))
            .expect("write")
        {}
    }

    #[test]
    fn only_a_consumer_that_really_fell_behind_is_disconnected_and_its_queue_kept() {
        let mut channel =
            Channel::create(meta(1, 2, SlowConsumer::Disconnect), 4096).expect("create");
        channel
            .attach_consumer(1, &peer(10), None, || Ok(()))
            .ok()
            .expect("c1");
        channel
            .attach_consumer(2, &peer(11), Some("keep"), || Ok(()))
            .ok()
            .expect("c2");
        channel.detach(2).expect("keep goes away");
        // The flag alone proves nothing: with nothing unread, nobody fell behind. The away
        // queue's flagged ring is replaced by an empty one; the attached consumer's is left.
        for queue in &channel.queues {
            queue.lanes[0].ring.mark_evicted(Eviction::FellBehind);
        }
        let (_, sessions, changed) = channel.evict_slow_consumers();
        assert!(sessions.is_empty(), "nobody disconnected on a flag alone");
        assert!(changed, "the away queue's flagged ring was replaced");
        assert_eq!(channel.queues[1].lanes[0].ring.eviction(), None);
        assert!(channel.queues[0].lanes[0].ring.eviction().is_some());
        // Full rings and the flag, under policy disconnect: that is falling behind.
        for queue in &channel.queues {
            fill(&queue.lanes[0]);
            queue.lanes[0].ring.mark_evicted(Eviction::FellBehind);
        }
        let (notices, sessions, _) = channel.evict_slow_consumers();
        assert_eq!(sessions, vec![1]);
        assert!(notices
            .iter()
            .any(|(s, e, _)| *s == 1 && matches!(e, Event::Disconnected { .. })));
        let refused = channel
            .attach_consumer(3, &peer(12), Some("keep"), || Ok(()))
            .err();
        assert_eq!(refused.map(|r| r.code), Some(ErrorCode::Evicted));
        assert!(channel
            .attach_consumer(3, &peer(12), Some("keep"), || Ok(()))
            .is_ok());
        assert_eq!(
            channel.queues.len(),
            1,
            "the anonymous queue went with its consumer"
        );
    }

    #[test]
    fn counters_a_client_scribbled_are_summed_saturating_and_clamped() {
        let mut channel = Channel::create(meta(2, 2, SlowConsumer::Block), 4096).expect("create");
        channel.attach_producer(1, &peer(10)).ok().expect("p0");
        channel.attach_producer(2, &peer(11)).ok().expect("p1");
        channel
            .attach_consumer(3, &peer(12), Some("a"), || Ok(()))
            .ok()
            .expect("c0");
        channel
            .attach_consumer(4, &peer(13), Some("b"), || Ok(()))
            .ok()
            .expect("c1");
        // The producer's counters in the ring's header, the consumer's in its ack page: what
        // each side can write.
        let scribble = |fd: &OwnedFd, offsets: &[usize]| {
            let len = HEADER_SIZE as usize;
            // SAFETY: a fresh shared mapping of the memfd's first page (both are at least a
            // page), written with atomics at aligned offsets inside it, and unmapped below.
            unsafe {
                let base = rustix::mm::mmap(
                    std::ptr::null_mut(),
                    len,
                    rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                    rustix::mm::MapFlags::SHARED,
                    fd,
                    0,
                )
                .expect("mmap");
                for offset in offsets {
                    let word =
                        &*(base.cast::<u8>().add(*offset) as *const std::sync::atomic::AtomicU64);
                    word.store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
                }
                rustix::mm::munmap(base, len).expect("munmap");
            }
        };
        for queue in &channel.queues {
            for lane in &queue.lanes {
                let fds = lane.files.share(None).expect("share");
                scribble(&fds.ring, &[64, 72, 80, 88, 96]);
                scribble(fds.ack.as_ref().expect("layout 3"), &[8, 16]);
            }
        }
        let info = channel.info();
        assert_eq!(info.messages_written, u64::MAX);
        assert_eq!(info.bytes_written, u64::MAX);
        assert_eq!(info.messages_read, u64::MAX);
        assert!(info.bytes_unread <= info.ring_bytes);
        assert!(info.peers.iter().all(|p| p.messages_lost == u64::MAX));
        assert_eq!(info.wakeups, u64::MAX);
        assert!(info.fullest_ring_bytes <= info.capacity);
    }

    #[test]
    fn a_durable_name_belongs_to_the_uid_that_made_it() {
        let mut channel = Channel::create(meta(1, 3, SlowConsumer::Block), 4096).expect("create");
        let ok = || Ok(());
        channel
            .attach_consumer(1, &as_uid(10, 1000), Some("backup"), ok)
            .ok()
            .expect("uid 1000 registers backup");
        channel.detach(1).expect("backup goes away");
        let taken = channel
            .attach_consumer(2, &as_uid(11, 65534), Some("backup"), ok)
            .err()
            .expect("another uid may not attach as backup");
        assert_eq!(taken.code, ErrorCode::PermissionDenied);
        assert!(
            taken.message.contains("belongs to uid 1000"),
            "{}",
            taken.message
        );
        let dropped = channel.drop_consumer("backup", 65534, false).err();
        assert_eq!(dropped.map(|r| r.code), Some(ErrorCode::PermissionDenied));
        let away = channel.info().peers.into_iter().find(|p| !p.attached);
        assert_eq!(away.and_then(|p| p.owner_uid), Some(1000));
        assert_eq!(channel.durable_owners().collect::<Vec<_>>(), vec![1000]);
        // Its owner and root may attach; the quota is asked only for new names.
        let quota = || Err("quota".to_string());
        assert!(channel
            .attach_consumer(3, &as_uid(12, 1000), Some("backup"), quota)
            .is_ok());
        channel.detach(3).expect("detach");
        assert!(channel
            .attach_consumer(4, &peer(13), Some("backup"), quota)
            .is_ok());
        channel.detach(4).expect("detach");
        let refused = channel
            .attach_consumer(5, &as_uid(14, 1000), Some("other"), quota)
            .err();
        assert_eq!(refused.map(|r| r.code), Some(ErrorCode::LimitReached));
        // Its owner may drop it, as may the privileged.
        assert!(channel.drop_consumer("backup", 1000, false).is_ok());
    }
}
