//! What a channel reports: its running totals, kept from the rings' counters (which a client
//! can write anything into), and the `info` view that `status` and `shmemctl` show.

use shmem_broker_proto::ring::{RingStats, SharedRing};
use shmem_broker_proto::wire::{ChannelInfo, PeerInfo, Role};

use super::{Attached, Channel};

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
    pub(super) fn of(ring: &SharedRing) -> Counts {
        let stats = ring.stats();
        Counts {
            messages_written: stats.messages_written,
            bytes_written: stats.bytes_written,
            messages_read: stats.messages_read.min(stats.messages_written),
            messages_lost: stats.messages_lost,
        }
    }

    /// Each counter at the most it has been in `self` or `before`: what the broker remembers
    /// of a ring while its holder stays, so that a counter set back and forth (X, 0, X) is
    /// counted once, not once per climb.
    pub(super) fn highest(self, before: Counts) -> Counts {
        Counts {
            messages_written: self.messages_written.max(before.messages_written),
            bytes_written: self.bytes_written.max(before.bytes_written),
            messages_read: self.messages_read.max(before.messages_read),
            messages_lost: self.messages_lost.max(before.messages_lost),
        }
    }

    /// Each counter at the least of `self` and `other`.
    pub(super) fn lowest(self, other: Counts) -> Counts {
        Counts {
            messages_written: self.messages_written.min(other.messages_written),
            bytes_written: self.bytes_written.min(other.bytes_written),
            messages_read: self.messages_read.min(other.messages_read),
            messages_lost: self.messages_lost.min(other.messages_lost),
        }
    }

    /// How far each counter moved since `before` (a counter that went back moved 0).
    pub(super) fn since(self, before: Counts) -> Counts {
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
    /// Per producer slot: what its producers wrote (messages, bytes): the front of the slot's
    /// stream, the furthest any of its rings got (each ring's counters placed in the stream
    /// where it joined, so a consumer that lags and catches up later is not counted twice).
    pub written: Vec<(u64, u64)>,
    /// Summed over every consumer's rings.
    pub messages_read: u64,
    pub messages_lost: u64,
    /// Consumers the broker disconnected for falling behind or for a corrupt ring.
    pub evictions: u64,
}

impl Channel {
    /// Adds what the rings counted since the last look to the running totals. Called before
    /// any ring goes away and whenever the totals are shown or saved, so nothing counted in a
    /// ring is lost with it.
    pub(super) fn observe(&self) {
        self.observe_rebasing(|_, _| false);
    }

    /// `observe`, and the rings of the lanes `(queue index, slot)` that `handed_over` picks
    /// are remembered at their counters as they are now, not at the most they ever showed:
    /// they go to a new producer or consumer, which writes on from there. Without this a
    /// former holder that set its counters high, let the broker look, and set them back low
    /// before leaving would keep its successor's first messages from being counted.
    pub(super) fn observe_rebasing(&self, handed_over: impl Fn(usize, usize) -> bool) {
        let mut totals = self.totals.borrow_mut();
        if totals.written.len() < self.slots.len() {
            totals.written.resize(self.slots.len(), (0, 0));
        }
        for (queue_index, queue) in self.queues.iter().enumerate() {
            for (slot, lane) in queue.lanes.iter().enumerate() {
                let now = Counts::of(&lane.ring);
                let seen = lane.seen.get();
                let moved = now.since(seen);
                lane.seen.set(if handed_over(queue_index, slot) {
                    now
                } else {
                    now.highest(seen)
                });
                let (messages, bytes) = lane.stream.get();
                let at = (
                    messages.saturating_add(moved.messages_written),
                    bytes.saturating_add(moved.bytes_written),
                );
                lane.stream.set(at);
                if let Some(front) = totals.written.get_mut(slot) {
                    front.0 = front.0.max(at.0);
                    front.1 = front.1.max(at.1);
                }
                totals.messages_read = totals.messages_read.saturating_add(moved.messages_read);
                totals.messages_lost = totals.messages_lost.saturating_add(moved.messages_lost);
            }
        }
    }

    /// Where a ring that joins slot `slot` now starts in its stream: the front, up to date.
    pub(super) fn slot_front(&self, slot: usize) -> (u64, u64) {
        self.observe();
        self.observed_front(slot)
    }

    /// Slot `slot`'s front as of the last `observe` (for callers that just made one).
    pub(super) fn observed_front(&self, slot: usize) -> (u64, u64) {
        self.totals
            .borrow()
            .written
            .get(slot)
            .copied()
            .unwrap_or((0, 0))
    }

    /// The running totals, up to date, as systemd's fd store keeps them.
    pub fn totals(&self) -> Totals {
        self.observe();
        self.totals.borrow().clone()
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
pub(super) fn unread_payload(stats: &RingStats) -> u64 {
    if stats.messages_read >= stats.messages_written {
        return 0;
    }
    stats.bytes_unread.min(stats.bytes_written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::test_support::*;
    use shmem_broker_proto::ring::HEADER_SIZE;
    use shmem_broker_proto::wire::SlowConsumer;
    use std::os::fd::OwnedFd;

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
}
