//! The rings of a channel and what they hang from: producer slots, consumer queues, and a lane
//! (ring) for each slot and queue pair, with the eventfds that wake either side.

use std::cell::Cell;
use std::os::fd::OwnedFd;

use rustix::event::{eventfd, EventfdFlags};
use shmem_broker_proto::ring::{RingFiles, SharedRing};
use shmem_broker_proto::wire::{Event, Role};

use super::{Attached, Channel, Counts, Notice, SessionId};

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
    /// Where `seen` lies in its slot's stream: (messages, bytes) its producers had written
    /// when this ring's counters said `seen`. A ring joins at the stream's front (see
    /// [`Channel::slot_front`]) and then moves with its own counters, so consumers that lag
    /// by different amounts all land on the same stream positions.
    pub stream: Cell<(u64, u64)>,
}

impl Lane {
    pub(super) fn new(
        channel: &str,
        slot: u32,
        queue: u32,
        capacity: u64,
    ) -> std::io::Result<Lane> {
        let (ring, files) = SharedRing::create(&format!("{channel}:p{slot}:c{queue}"), capacity)
            .map_err(|e| {
                std::io::Error::other(format!("creating ring for channel {channel:?}: {e}"))
            })?;
        Ok(Lane {
            ring,
            files,
            seen: Cell::new(Counts::default()),
            stream: Cell::new((0, 0)),
        })
    }

    /// The ring's fds for `role`, in the order of [`Lane::fd_names`]: what that side writes
    /// writable, the rest read-only (layout 3; older rings restored from the fd store are one
    /// memfd both sides write).
    pub(super) fn share(&self, role: Role) -> std::io::Result<Vec<OwnedFd>> {
        let fds = self.files.share(Some(role))?;
        Ok(std::iter::once(fds.ring).chain(fds.ack).collect())
    }

    /// The memfds the broker holds for this lane.
    pub(super) fn open_fds(&self) -> usize {
        1 + usize::from(self.files.ack.is_some())
    }

    /// The names of the fds [`Lane::share`] gives, as attach replies list them.
    pub(super) fn fd_names(&self) -> &'static [&'static str] {
        if self.files.ack.is_some() {
            &["ring", "ack"]
        } else {
            &["ring"]
        }
    }
}

pub(super) struct ProducerSlot {
    pub(super) id: u32,
    pub(super) holder: Option<Attached>,
    /// Written by consumers to wake this slot's producer; made at first use.
    pub(super) space_ready: Option<OwnedFd>,
    /// Fan-out channels: each queue's ring `bytes_written` from this slot when the current
    /// producer attached (a ring made later started at 0).
    pub(super) stream_start: Vec<(u32, u64)>,
    /// What the current producer said after `close`: the queues whose ring had no room for
    /// its end-of-stream mark, with the messages each missed before it.
    pub(super) end_lost: Vec<(u32, u64)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum QueueKind {
    /// The one queue of a one-to-one channel: kept while its consumer is away.
    Default,
    /// A named queue kept while its consumer is away. It belongs to the uid that registered
    /// the name (`None`: restored from an older broker's record, claimed at the next attach).
    Durable { name: String, owner: Option<u32> },
    /// Freed when its consumer detaches.
    Anonymous,
}

pub(super) struct ConsumerQueue {
    pub(super) id: u32,
    pub(super) kind: QueueKind,
    pub(super) holder: Option<Attached>,
    /// Written by producers to wake this queue's consumer; made at first use.
    pub(super) data_ready: Option<OwnedFd>,
    /// Indexed like `Channel::slots`: the ring from each producer slot.
    pub(super) lanes: Vec<Lane>,
}

impl ConsumerQueue {
    pub(super) fn name(&self) -> Option<&str> {
        match &self.kind {
            QueueKind::Durable { name, .. } => Some(name),
            _ => None,
        }
    }

    /// The uid a durable queue belongs to.
    pub(super) fn owner(&self) -> Option<u32> {
        match &self.kind {
            QueueKind::Durable { owner, .. } => *owner,
            _ => None,
        }
    }
}

impl Channel {
    pub(super) fn generation(&self, role: Role) -> u64 {
        self.control
            .as_ref()
            .map_or(0, |(page, _)| page.generation(role))
    }

    pub(super) fn bump(&self, role: Role) -> u64 {
        self.control.as_ref().map_or(0, |(page, _)| page.bump(role))
    }

    /// A new producer slot with a ring to every queue; the attached consumers are told.
    pub(super) fn add_slot(&mut self) -> std::io::Result<(usize, Vec<Notice>)> {
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

    /// A new consumer queue with a ring from every slot; the attached producers are told.
    pub(super) fn add_queue(&mut self, kind: QueueKind) -> std::io::Result<(usize, Vec<Notice>)> {
        let id = self.next_queue_id;
        let mut data_ready = None;
        ensure(&mut data_ready)?;
        // Everything that can fail comes first, so that a failure (out of fds) changes nothing.
        let mut lanes = Vec::new();
        let mut told = Vec::new();
        self.observe();
        let fronts: Vec<(u64, u64)> = (0..self.slots.len())
            .map(|s| self.observed_front(s))
            .collect();
        for (slot, front) in self.slots.iter().zip(fronts) {
            let lane = Lane::new(&self.meta.name, slot.id, id, self.capacity)?;
            lane.stream.set(front);
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
    pub(super) fn remove_queue(&mut self, index: usize) -> Vec<Notice> {
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

    pub(super) fn control_fd(&self) -> std::io::Result<OwnedFd> {
        match &self.control {
            Some((_, fd)) => fd.try_clone(),
            None => Err(std::io::Error::other(
                "fan-out channel without a control page",
            )),
        }
    }
}

/// `lane_added` events for `peer`, one per session with the fds it gets.
pub(super) fn lane_added(
    told: Vec<(SessionId, Vec<OwnedFd>)>,
    generation: u64,
    peer: u32,
) -> Vec<Notice> {
    told.into_iter()
        .map(|(session, fds)| (session, Event::LaneAdded { generation, peer }, fds))
        .collect()
}

/// Makes the eventfd if it is not there yet; true if it was made now.
pub(super) fn ensure(fd: &mut Option<OwnedFd>) -> std::io::Result<bool> {
    if fd.is_some() {
        return Ok(false);
    }
    *fd = Some(new_eventfd()?);
    Ok(true)
}

pub(super) fn share(fd: &Option<OwnedFd>) -> std::io::Result<OwnedFd> {
    match fd {
        Some(fd) => fd.try_clone(),
        None => Err(std::io::Error::other("eventfd missing")),
    }
}
