//! Who may attach to a channel and what they get: attach and detach of producers and
//! consumers, durable consumer names and their owners, and the events the others are told.

use std::os::fd::OwnedFd;

use shmem_broker_proto::ring::{SharedRing, HEADER_SIZE};
use shmem_broker_proto::wire::{
    AttachInfo, ErrorCode, Event, LaneInfo, LostEnd, Role, SlowConsumer,
};

use super::evict::away_cause;
use super::lanes::{ensure, share, Lane, ProducerSlot, QueueKind};
use super::{Attached, Channel, Notice, SessionId};
use crate::peer::PeerCredentials;

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

pub(super) fn refuse(code: ErrorCode, message: String) -> Refusal {
    Refusal { code, message }
}

impl Channel {
    pub(super) fn attach_info(
        &self,
        role: Role,
        id: u32,
        fds: Vec<&str>,
        lanes: Vec<LaneInfo>,
    ) -> AttachInfo {
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
        // This slot's rings are the new producer's from here on.
        self.observe_rebasing(|_, slot| slot == index);
        let grant = if self.meta.is_fanout() {
            ensure(&mut self.slots[index].space_ready).map_err(internal)?;
            let mut fds = vec![
                self.control_fd().map_err(internal)?,
                share(&self.slots[index].space_ready).map_err(internal)?,
            ];
            let mut names = vec!["control", "wait"];
            let mut lanes = Vec::new();
            // Just observed (above).
            let front = self.observed_front(index);
            let (channel, slot, capacity) = (&self.meta.name, self.slots[index].id, self.capacity);
            for queue in &mut self.queues {
                ensure(&mut queue.data_ready).map_err(internal)?;
                if queue.holder.is_none() && !queue.lanes[index].ring.identity_intact() {
                    // A former producer of this slot scribbled on the header of its ring to a
                    // consumer that is away: nobody could open it. The ring held nothing the
                    // new producer could add to, so it starts afresh.
                    queue.lanes[index] =
                        Lane::new(channel, slot, queue.id, capacity).map_err(internal)?;
                    queue.lanes[index].stream.set(front);
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
        // This queue's rings are the new consumer's from here on.
        self.observe_rebasing(|queue, _| queue == index);
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

    pub(super) fn attach_single_consumer(
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
        self.observe_rebasing(|queue, _| queue == 0);
        let mut grant = self.single_grant(Role::Consumer).map_err(internal)?;
        if self.slots[0].holder.is_none() {
            if let Some(gone) = self.unclean_end {
                let ring = &self.queues[0].lanes[0].ring;
                grant
                    .notices
                    .push(self.producer_gone(session, None, ring, gone));
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
    pub(super) fn single_grant(&mut self, role: Role) -> std::io::Result<Grant> {
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
                    let mut notice = self.producer_gone(
                        holder.session,
                        Some(self.slots[index].id),
                        &lane.ring,
                        gone,
                    );
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
                        notices.push(self.producer_gone(holder.session, None, ring, gone));
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

    /// The `producer_gone` event for `session`, the consumer of `ring`; `producer` is the slot
    /// in a fan-out channel. Counted in the ring's ack page first (the caller sends the notice
    /// after this returns), so a consumer that sees the count knows the event is on its way and
    /// reads it before it reads past the producer's end (PROTOCOL.md, "producer_gone").
    pub(super) fn producer_gone(
        &self,
        session: SessionId,
        producer: Option<u32>,
        ring: &SharedRing,
        (pid, position, bytes): (u32, u64, u64),
    ) -> Notice {
        let announced = ring.announce_producer_gone();
        let event = Event::ProducerGone {
            channel: self.meta.name.clone(),
            pid,
            position,
            bytes,
            producer,
            end_lost: None,
            announced,
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
}

/// The refusal for a uid that asks to `what` (attach as it, drop it) of someone else's
/// durable consumer.
pub(super) fn not_the_owner(
    channel: &str,
    name: &str,
    owner: u32,
    uid: u32,
    what: &str,
) -> Refusal {
    refuse(
        ErrorCode::PermissionDenied,
        format!(
            "permission denied: durable consumer {name:?} of channel {channel:?} belongs to uid {owner}; uid {uid} may not {what}"
        ),
    )
}

pub(super) fn internal(err: std::io::Error) -> Refusal {
    refuse(ErrorCode::Internal, format!("cannot share channel: {err}"))
}

pub(super) fn pids<'a>(holders: impl Iterator<Item = &'a Attached>) -> String {
    holders
        .map(|a| a.peer.pid.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::test_support::*;

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
