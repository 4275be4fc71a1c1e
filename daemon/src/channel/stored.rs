//! A channel as systemd's fd store keeps it: the parts that outlive the broker and the
//! rebuilding of a channel (and its totals) from them.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use shmem_broker_proto::control::BrokerControlPage;

use super::lanes::{ConsumerQueue, Lane, ProducerSlot, QueueKind};
use super::{Channel, ChannelMeta, Counts, Totals};
use crate::fdstore::{DurableParts, QueueRecord, RestoredQueue};

impl Channel {
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
                // No more than the ring shows now: a ring replaced at restore (its header was
                // scribbled) starts at 0, and its new counts must not wait to pass the old.
                lane.seen.set(counts.lowest(Counts::of(&lane.ring)));
            }
        }
        let mut totals = totals;
        // Stored by an earlier broker; still, never more slots than the channel has.
        totals.written.truncate(self.slots.len());
        // The store keeps no stream positions: each kept ring is placed at its slot's front
        // as last saved (exact for rings level with the front; one that lagged counts its lag
        // once more as it catches up).
        for queue in &self.queues {
            for (lane, front) in queue.lanes.iter().zip(&totals.written) {
                lane.stream.set(*front);
            }
        }
        *self.totals.borrow_mut() = totals;
    }

    /// What the fd store keeps of the counts, from one look: the totals, and each kept (not
    /// anonymous) ring's counters as added to them, (queue id, slot, counts). One look, so
    /// nothing counted between two looks is in one and not the other (lost or counted twice
    /// after a restart).
    pub fn stored_counts(&self) -> (Totals, Vec<(u32, u32, Counts)>) {
        self.observe();
        let totals = self.totals.borrow().clone();
        (totals, self.kept_seen())
    }

    fn kept_seen(&self) -> Vec<(u32, u32, Counts)> {
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
}
