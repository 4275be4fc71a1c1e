//! What the broker does about rings a producer flagged or left unsound: disconnecting a
//! consumer that fell behind, telling an away one at its next attach, replacing broken rings.

use shmem_broker_proto::ring::Eviction;
use shmem_broker_proto::wire::{Event, Role};

use super::lanes::{ensure, lane_added, share, Lane, QueueKind};
use super::{Channel, Notice, SessionId};

impl Channel {
    /// Rings a producer flagged evicted, or whose positions are unsound, dealt with one ring at
    /// a time and from what the broker sees itself, never from the flag alone (see
    /// [`SharedRing::confirmed_eviction`](shmem_broker_proto::ring::SharedRing::confirmed_eviction): the flag counts only under policy `disconnect` and
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
    pub(super) fn replace_away_lane(
        &mut self,
        index: usize,
        slot: usize,
    ) -> std::io::Result<Vec<Notice>> {
        let front = self.slot_front(slot);
        let queue = &mut self.queues[index];
        ensure(&mut queue.data_ready)?;
        let lane = Lane::new(
            &self.meta.name,
            self.slots[slot].id,
            queue.id,
            self.capacity,
        )?;
        lane.stream.set(front);
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
    pub(super) fn eviction_reason(&self, cause: Eviction) -> String {
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
}

/// Why a consumer that was away lost its queue.
pub(super) fn away_cause(cause: Eviction) -> &'static str {
    match cause {
        Eviction::FellBehind => "it fell behind and slow_consumer = disconnect",
        Eviction::Corrupt => "a producer found its ring corrupt",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::test_support::*;
    use shmem_broker_proto::ring::SharedRing;
    use shmem_broker_proto::wire::{ErrorCode, SlowConsumer};

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
}
