//! One channel: the `Channel` type and what it owns (its rings, eventfds, access rules and who
//! is attached).
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
//!
//! The rest of the channel's work is in its submodules: `lanes` (slots, queues and their
//! rings), `attach` (attach, detach, durable names), `evict` (rings a producer flagged or left
//! unsound), `info` (running totals and the `info` view) and `stored` (what systemd's fd store
//! keeps of a channel and its rebuilding from it; the record types are in `fdstore`).

mod attach;
mod evict;
mod info;
mod lanes;
mod stored;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;

use shmem_broker_proto::control::BrokerControlPage;
use shmem_broker_proto::ring::{Eviction, LAYOUT_VERSION};
use shmem_broker_proto::wire::{Event, Origin, Role, SlowConsumer};

use crate::access::AccessList;
use crate::peer::PeerCredentials;

pub use attach::{Grant, Refusal};
pub use info::{Counts, Totals};
pub use lanes::Lane;
use lanes::{ConsumerQueue, ProducerSlot, QueueKind};

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

    pub fn name(&self) -> &str {
        &self.meta.name
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

    /// The layout of this channel's rings: a one-to-one channel's ring may come from an older
    /// broker (restored from the fd store); fan-out lanes are made as needed, in the newest.
    pub fn ring_layout(&self) -> u32 {
        self.single_ring()
            .map_or(LAYOUT_VERSION, |(lane, _)| lane.ring.layout())
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
}

/// Ring memory a channel may come to hold: a ring per producer and consumer pair.
pub fn ring_budget(meta: &ChannelMeta, capacity: u64) -> u64 {
    capacity * u64::from(meta.max_producers) * u64::from(meta.max_consumers)
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    pub(crate) fn meta(
        max_producers: u32,
        max_consumers: u32,
        slow_consumer: SlowConsumer,
    ) -> ChannelMeta {
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

    pub(crate) fn peer(pid: u32) -> PeerCredentials {
        as_uid(pid, 0)
    }

    pub(crate) fn as_uid(pid: u32, uid: u32) -> PeerCredentials {
        PeerCredentials {
            pid,
            uid,
            gid: uid,
            groups: Vec::new(),
        }
    }

    pub(crate) fn lane_added_to(notices: &[Notice]) -> Vec<(SessionId, u32)> {
        notices
            .iter()
            .filter_map(|(session, event, fds)| match event {
                // A ring, its ack page and the eventfd.
                Event::LaneAdded { peer, .. } if fds.len() == 3 => Some((*session, *peer)),
                _ => None,
            })
            .collect()
    }
}
