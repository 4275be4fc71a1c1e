//! The data path of fan-out channels (`max_producers` or `max_consumers` above 1): each
//! producer and consumer pair has a ring of its own, so every ring stays single-producer
//! single-consumer and no consumer ever sees another's data or positions.
//!
//! A producer writes each message into the ring of every consumer queue under the channel's
//! slow-consumer policy ([`FanoutWriter`]); a consumer reads the rings of all producers in
//! turn, so none starves another, and remembers whose message it returned ([`MergedReader`]).
//! Both learn of peers that come and go from the broker's lane events, read only when the
//! control page's counter for their side moved (see [`crate::control`]).

use std::os::fd::OwnedFd;

use crate::attachment::{Attachment, LaneOrFault};
use crate::control::ControlPage;
use crate::error::{Error, Result};
use crate::ring::{Eviction, Payload, RingError, RingReader, RingWriter, SharedRing};
use crate::wire::{Event, LostEnd, Role, SlowConsumer};

/// One ring of a fan-out endpoint: our end of it and how to wake the peer at the other end.
struct Peer<E> {
    /// Producer id (for a consumer) or consumer queue id (for a producer).
    id: u32,
    end: E,
    wake: OwnedFd,
    /// Producers, policy `drop`: messages this consumer missed and has not been told of yet.
    missed: u64,
}

impl<E> Peer<E> {
    fn wake(&self) {
        // EAGAIN means the counter is already huge, i.e. the peer has a wake-up pending.
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }
}

/// The peers of one endpoint, kept in step with the broker through the control page.
struct Membership<E> {
    control: ControlPage,
    role: Role,
    generation: u64,
    peers: Vec<Peer<E>>,
    open: fn(SharedRing) -> Result<E, RingError>,
    /// Lanes whose ring could not be opened (a peer scribbled its header or positions), with
    /// why: skipped, like a ring found corrupt later, and reported once by a consumer. One
    /// bad ring must not fail the endpoint, or its peer could lock everyone out of the channel.
    unopened: Vec<(u32, String)>,
}

impl<E> Membership<E> {
    fn new(
        attachment: &Attachment,
        control: ControlPage,
        role: Role,
        lanes: Vec<LaneOrFault>,
        open: fn(SharedRing) -> Result<E, RingError>,
    ) -> Result<Membership<E>> {
        let mut members = Membership {
            control,
            role,
            generation: attachment.info.generation,
            peers: Vec::new(),
            open,
            unopened: Vec::new(),
        };
        for lane in lanes {
            members.add(lane);
        }
        Ok(members)
    }

    /// Takes a lane the broker handed over, or notes why it could not be opened.
    fn add(&mut self, lane: LaneOrFault) {
        let lane = match lane {
            Ok(lane) => lane,
            Err(unopened) => {
                self.peers.retain(|p| p.id != unopened.0);
                self.unopened.push(unopened);
                return;
            }
        };
        // The lane it replaces goes first: a ring has one writer per process at a time.
        self.peers.retain(|p| p.id != lane.peer);
        match (self.open)(lane.ring) {
            Ok(end) => self.peers.push(Peer {
                id: lane.peer,
                end,
                wake: lane.wake,
                missed: 0,
            }),
            Err(err) => self.unopened.push((lane.peer, err.to_string())),
        }
    }

    /// Applies the broker's lane events if the control page says there are new ones: one
    /// atomic load when nothing changed.
    fn refresh(&mut self, attachment: &mut Attachment) -> Result<()> {
        let now = self.control.generation(self.role);
        if now == self.generation && !attachment.has_lane_events() {
            return Ok(());
        }
        // Every event is applied once, whenever it arrives (each comes exactly once, and only
        // after the attach reply), even one that came later than the bump it belongs to.
        // Events newer than `now` may have been read already (the broker bumps the page, then
        // sends): once applied they count as seen, or the next change would wait for them.
        // Only applied events advance the generation: a bump whose event is not here yet (the
        // broker writes it right after the bump, and before it answers the attach behind it)
        // is looked for again at the next call, so a new consumer's ring is written from the
        // first message sent after its attach returned, by busy endpoints too.
        let mut newest = self.generation;
        for (event, fds) in attachment.take_lane_events() {
            match event {
                Event::LaneAdded { generation, peer } => {
                    let lane = attachment
                        .open_lane(peer, fds)
                        .map_err(|e| (peer, e.to_string()));
                    self.add(lane);
                    newest = newest.max(generation);
                }
                Event::LaneRemoved { generation, peer } => {
                    self.peers.retain(|p| p.id != peer);
                    newest = newest.max(generation);
                }
                _ => {}
            }
        }
        self.generation = newest;
        Ok(())
    }

    fn index_of(&self, id: u32) -> Option<usize> {
        self.peers.iter().position(|p| p.id == id)
    }
}

/// A fan-out producer's rings, one per consumer queue.
pub(crate) struct FanoutWriter {
    members: Membership<RingWriter>,
    policy: SlowConsumer,
    /// Where zero-copy fills and loans go when they cannot be in a ring: a message must reach
    /// several rings, and copying it out of one consumer's ring into the next would let that
    /// consumer rewrite it for the others (each consumer can write its whole ring today).
    scratch: Vec<u8>,
}

/// Where a fan-out loan's bytes are (see [`FanoutWriter::reserve`]).
#[derive(Clone, Copy, Debug)]
pub(crate) enum FanoutLoan {
    /// In the ring of the only consumer, `peer`.
    Lane { peer: u32, payload: Payload },
    /// In the private scratch buffer, copied into every ring at send.
    Scratch,
}

impl FanoutWriter {
    pub fn new(
        attachment: &Attachment,
        control: ControlPage,
        lanes: Vec<LaneOrFault>,
    ) -> Result<FanoutWriter> {
        Ok(FanoutWriter {
            members: Membership::new(attachment, control, Role::Producer, lanes, RingWriter::new)?,
            policy: attachment.info.slow_consumer,
            scratch: Vec::new(),
        })
    }

    /// Consumer queues this producer writes to now.
    pub fn consumers(&self) -> usize {
        self.members.peers.len()
    }

    fn ring_error(attachment: &Attachment) -> impl Fn(RingError) -> Error + '_ {
        |e| Error::ring(&attachment.channel, e)
    }

    /// Checks the channel is usable and picks up consumers that came or went.
    fn prepare(&mut self, attachment: &mut Attachment) -> Result<()> {
        // The broker flags every ring of a channel it drops, but any one ring's flag may come
        // from the peer at its other end, which must not make this endpoint give up on the
        // others: a fan-out endpoint learns of the drop from the broker's event alone (which
        // wakes a sleeper, and a busy endpoint sees within `BROKER_CHECK_INTERVAL`).
        attachment.ensure_usable(false)?;
        self.members.refresh(attachment)?;
        // A consumer whose ring could not be opened spoiled it itself: it is skipped, and
        // nobody else needs telling.
        self.members.unopened.clear();
        Ok(())
    }

    /// Delivers `messages` in order to every consumer under the channel's policy. Blocking:
    /// returns once all are delivered (policy `block` waits for the slowest consumer).
    /// Non-blocking: delivers as many as go to everyone now and returns how many (0: none).
    pub fn deliver(
        &mut self,
        attachment: &mut Attachment,
        messages: &[&[u8]],
        blocking: bool,
    ) -> Result<usize> {
        self.prepare(attachment)?;
        // Refused the same with or without consumers attached.
        if let Some(len) = messages.iter().map(|m| m.len()).max() {
            check_fits(attachment, len)?;
        }
        match self.policy {
            SlowConsumer::Block if blocking => {
                self.write_waiting(attachment, messages)?;
                Ok(messages.len())
            }
            SlowConsumer::Block => {
                let mut sent = 0;
                for message in messages {
                    if !self.room_everywhere(attachment, message.len())? {
                        break;
                    }
                    self.write_waiting(attachment, std::slice::from_ref(message))?;
                    sent += 1;
                }
                Ok(sent)
            }
            SlowConsumer::Drop | SlowConsumer::Disconnect => {
                for message in messages {
                    self.write_lossy(attachment, message)?;
                }
                Ok(messages.len())
            }
        }
    }

    /// `send_up_to`: `fill` writes up to `max` bytes into a private buffer and returns how
    /// many it used; that message is then delivered, waiting as `deliver` does. Returns the
    /// length sent. (Its length is known only after the fill, so it cannot be a loan.)
    pub fn deliver_filled(
        &mut self,
        attachment: &mut Attachment,
        max: usize,
        fill: impl FnOnce(&mut [u8]) -> usize,
    ) -> Result<usize> {
        self.prepare(attachment)?;
        check_fits(attachment, max)?;
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.resize(max, 0);
        let used = fill(&mut scratch).min(max);
        let result = if used == 0 && max > 0 {
            Ok(0)
        } else {
            self.deliver(attachment, &[&scratch[..used]], true)
                .map(|_| used)
        };
        self.scratch = scratch;
        result
    }

    /// Makes room for a loan of `len` bytes. With one consumer, and unless that consumer is
    /// owed a loss record (policy `drop`), the loan is a frame reserved in its ring: no copy at
    /// all. Otherwise it is the private scratch buffer (not zeroed: it holds earlier messages
    /// of this producer), copied into each ring at send: with several consumers, a loan in one
    /// of their rings would let that consumer rewrite the message before it is copied to the
    /// others. Blocking under policy `block`: waits for room in the one ring; with several
    /// consumers the waiting is left to [`publish_loan`](Self::publish_loan). Non-blocking:
    /// `None` (and `ready_fd()` armed) if a ring under policy `block` has no room; policies
    /// `drop` and `disconnect` never wait: a full ring gets a scratch loan, whose send then
    /// loses the message for that consumer (or disconnects it).
    pub fn reserve(
        &mut self,
        attachment: &mut Attachment,
        len: usize,
        blocking: bool,
    ) -> Result<Option<FanoutLoan>> {
        loop {
            self.prepare(attachment)?;
            check_fits(attachment, len)?;
            let in_ring = match self.members.peers.as_slice() {
                [only] => self.policy == SlowConsumer::Block || only.missed == 0,
                _ => false,
            };
            if !in_ring {
                if !blocking
                    && self.policy == SlowConsumer::Block
                    && !self.room_everywhere(attachment, len)?
                {
                    return Ok(None);
                }
                if self.scratch.len() < len {
                    self.scratch.resize(len, 0);
                }
                return Ok(Some(FanoutLoan::Scratch));
            }
            let peer = &mut self.members.peers[0];
            let reserved = isolate_fault(peer, |w| w.try_reserve(len))
                .map_err(Self::ring_error(attachment))?;
            // Padding may have been published: a consumer asleep must come and pass it.
            if peer.end.take_consumer_waiting() {
                peer.wake();
            }
            match reserved {
                Some(Some(payload)) => {
                    return Ok(Some(FanoutLoan::Lane {
                        peer: peer.id,
                        payload,
                    }))
                }
                // Found corrupt (and flagged evicted): without it, look again.
                None => {
                    self.members.peers.remove(0);
                    continue;
                }
                Some(None) => {}
            }
            match self.policy {
                SlowConsumer::Block if blocking => self.wait_for_room(attachment, 0, len)?,
                // Arms the wake-up, unless room appeared meanwhile: then look again.
                SlowConsumer::Block => {
                    if !self.room_everywhere(attachment, len)? {
                        return Ok(None);
                    }
                }
                SlowConsumer::Drop | SlowConsumer::Disconnect => {
                    if self.scratch.len() < len {
                        self.scratch.resize(len, 0);
                    }
                    return Ok(Some(FanoutLoan::Scratch));
                }
            }
        }
    }

    /// The first `len` bytes of the scratch buffer, to read (a scratch loan made it at least
    /// that long).
    pub fn scratch(&self, len: usize) -> &[u8] {
        &self.scratch[..len.min(self.scratch.len())]
    }

    /// The first `len` bytes of the scratch buffer, for a [`FanoutLoan::Scratch`] loan
    /// (which made it at least that long).
    pub fn scratch_mut(&mut self, len: usize) -> &mut [u8] {
        if self.scratch.len() < len {
            self.scratch.resize(len, 0);
        }
        &mut self.scratch[..len]
    }

    /// Sends a loan of `len` bytes to the consumers known when it was made (one that attached
    /// while it was filled gets the next message, as with a batch being sent): a reserved
    /// frame is published, a scratch loan is copied into every ring under the channel's
    /// policy (blocking under `block` only if the loan was made blocking: a non-blocking one
    /// found room everywhere first, and room only grows).
    pub fn publish_loan(
        &mut self,
        attachment: &mut Attachment,
        loan: FanoutLoan,
        len: usize,
    ) -> Result<()> {
        match loan {
            FanoutLoan::Lane { peer, .. } => {
                // Peers change only in calls the loan's borrow of the producer rules out.
                let Some(index) = self.members.index_of(peer) else {
                    return Ok(());
                };
                let end = &mut self.members.peers[index];
                let sent = isolate_fault(end, |w| w.commit_reserved(len))
                    .map_err(Self::ring_error(attachment))?;
                if end.end.take_consumer_waiting() {
                    end.wake();
                }
                if sent.is_none() {
                    self.members.peers.remove(index);
                }
                Ok(())
            }
            FanoutLoan::Scratch => {
                self.scratch_mut(len);
                let scratch = std::mem::take(&mut self.scratch);
                let message = &scratch[..len];
                let result = match self.policy {
                    SlowConsumer::Block => self.write_waiting(attachment, &[message]),
                    SlowConsumer::Drop | SlowConsumer::Disconnect => {
                        self.write_lossy(attachment, message)
                    }
                };
                self.scratch = scratch;
                result
            }
        }
    }

    /// Forgets a loan: a reserved frame is abandoned (nothing published), a scratch loan
    /// needs nothing.
    pub fn abandon_loan(&mut self, loan: FanoutLoan) {
        if let FanoutLoan::Lane { peer, .. } = loan {
            if let Some(index) = self.members.index_of(peer) {
                self.members.peers[index].end.abandon_reserved();
            }
        }
    }

    /// True if every consumer's ring has room for `len` bytes now. If not, and the caller
    /// will wait on `ready_fd()`, asks that consumer to signal when it frees space.
    fn room_everywhere(&mut self, attachment: &mut Attachment, len: usize) -> Result<bool> {
        let busy_poll = attachment.options.busy_poll;
        if !busy_poll {
            attachment.drain_wakeups();
        }
        let to_error = Self::ring_error(attachment);
        let mut faulty = Vec::new();
        let mut room = true;
        'peers: for peer in &mut self.members.peers {
            loop {
                let room_now = isolate_fault(peer, |w| w.make_room(len)).map_err(&to_error)?;
                // Padding may have been published: a consumer asleep must come and pass it.
                if peer.end.take_consumer_waiting() {
                    peer.wake();
                }
                match room_now {
                    None => {
                        faulty.push(peer.id);
                        continue 'peers;
                    }
                    Some(true) => continue 'peers,
                    Some(false) => {}
                }
                if busy_poll {
                    room = false;
                    break 'peers;
                }
                match isolate_fault(peer, |w| w.prepare_to_sleep(len)).map_err(&to_error)? {
                    None => {
                        faulty.push(peer.id);
                        continue 'peers;
                    }
                    Some(true) => {
                        room = false;
                        break 'peers;
                    }
                    Some(false) => {}
                }
            }
        }
        self.members.peers.retain(|p| !faulty.contains(&p.id));
        Ok(room)
    }

    /// Policy `block`: writes `messages` into every consumer's ring, waiting for room as long
    /// as it takes. A consumer that leaves meanwhile is skipped; one that comes meanwhile gets
    /// the next messages, not these.
    fn write_waiting(&mut self, attachment: &mut Attachment, messages: &[&[u8]]) -> Result<()> {
        let ids: Vec<u32> = self.members.peers.iter().map(|p| p.id).collect();
        for id in ids {
            let mut done = 0;
            while let Some(index) = self.members.index_of(id) {
                let peer = &mut self.members.peers[index];
                let written = isolate_fault(peer, |w| w.try_write_batch(&messages[done..]))
                    .map_err(Self::ring_error(attachment))?;
                let Some(written) = written else {
                    self.members.peers.remove(index);
                    break;
                };
                done += written;
                if peer.end.take_consumer_waiting() {
                    peer.wake();
                }
                let Some(next) = messages.get(done) else {
                    break;
                };
                self.wait_for_room(attachment, index, next.len())?;
            }
        }
        Ok(())
    }

    /// Policies `drop` and `disconnect`: never waits. A consumer whose ring is full loses the
    /// message (and finds a LOST record before its next one) or is evicted.
    fn write_lossy(&mut self, attachment: &mut Attachment, message: &[u8]) -> Result<()> {
        let to_error = Self::ring_error(attachment);
        let mut evicted = Vec::new();
        for peer in &mut self.members.peers {
            let missed = peer.missed;
            let written = isolate_fault(peer, |w| {
                if missed > 0 {
                    w.try_write_after_gap(missed, message)
                } else {
                    w.try_write_with(message.len(), |buf| buf.copy_from_slice(message))
                }
            })
            .map_err(&to_error)?;
            let Some(written) = written else {
                evicted.push(peer.id);
                continue;
            };
            if written {
                peer.missed = 0;
            } else if self.policy == SlowConsumer::Drop {
                peer.missed = peer.missed.saturating_add(1);
                peer.end.count_lost(1);
            } else {
                peer.end.ring().mark_evicted(Eviction::FellBehind);
                evicted.push(peer.id);
            }
            if peer.end.take_consumer_waiting() || !written {
                peer.wake();
            }
        }
        self.members.peers.retain(|p| !evicted.contains(&p.id));
        Ok(())
    }

    /// Waits until the ring of peer `index` has room for `len` bytes (or something changed:
    /// the caller looks again), then re-checks the channel and its consumers.
    fn wait_for_room(
        &mut self,
        attachment: &mut Attachment,
        index: usize,
        len: usize,
    ) -> Result<()> {
        let writer = &mut self.members.peers[index].end;
        // A ring error here shows again (and is dealt with) at the next write.
        if !Attachment::spin(|| writer.can_progress(len).unwrap_or(true)) && {
            attachment.drain_wakeups();
            writer.prepare_to_sleep(len).unwrap_or(false)
        } {
            let slept = attachment.sleep();
            writer.done_sleeping();
            slept?;
        }
        self.prepare(attachment)
    }

    /// Writes the end-of-stream mark to every consumer: waiting for room under policy
    /// `block`, else only where it fits now.
    pub fn close(&mut self, attachment: &mut Attachment) -> Result<()> {
        self.prepare(attachment)?;
        let ids: Vec<u32> = self.members.peers.iter().map(|p| p.id).collect();
        let mut lost = Vec::new();
        for id in ids {
            while let Some(index) = self.members.index_of(id) {
                let peer = &mut self.members.peers[index];
                let missed = peer.missed;
                let written = isolate_fault(peer, |w| {
                    // A consumer that lost the last messages learns of them before the end.
                    let told = missed == 0 || w.try_write_gap(missed)?;
                    Ok((told, w.try_write_end_of_stream()?))
                })
                .map_err(Self::ring_error(attachment))?;
                let Some((told, written)) = written else {
                    self.members.peers.remove(index);
                    break;
                };
                if told {
                    peer.missed = 0;
                }
                if peer.end.take_consumer_waiting() {
                    peer.wake();
                }
                if !written && self.policy == SlowConsumer::Drop {
                    lost.push(LostEnd {
                        consumer: id,
                        missed: if told { 0 } else { missed },
                    });
                }
                if written || self.policy != SlowConsumer::Block {
                    break;
                }
                self.wait_for_room(attachment, index, 0)?;
            }
        }
        if !lost.is_empty() {
            // The broker tells those consumers the stream ended when this producer detaches.
            attachment.tell_end_lost(lost);
        }
        Ok(())
    }
}

/// Runs `op` on a consumer's ring. A ring its consumer scribbled on concerns that consumer
/// alone: it is flagged evicted (its reads fail with "disconnected") and woken, and `None`
/// tells the caller to drop it and go on with the others. Other errors are the caller's.
fn isolate_fault<T>(
    peer: &mut Peer<RingWriter>,
    op: impl FnOnce(&mut RingWriter) -> Result<T, RingError>,
) -> Result<Option<T>, RingError> {
    match op(&mut peer.end) {
        Ok(value) => Ok(Some(value)),
        Err(RingError::Corrupt(_)) => {
            peer.end.ring().mark_evicted(Eviction::Corrupt);
            peer.wake();
            Ok(None)
        }
        Err(other) => Err(other),
    }
}

/// A message of `len` bytes fits this channel's rings.
fn check_fits(attachment: &Attachment, len: usize) -> Result<()> {
    let max = crate::ring::max_message_len(attachment.info.capacity);
    if len as u64 > max {
        return Err(Error::MessageTooLarge {
            channel: attachment.channel.clone(),
            len,
            max,
            capacity: attachment.info.capacity,
        });
    }
    Ok(())
}

/// A fan-out consumer's rings, one per producer, read in turn.
///
/// Each ring is one producer's to write, and whatever that producer does to it costs that
/// ring alone: a ring found corrupt on any path (read, batch, the check before sleeping) or
/// flagged evicted by its producer without cause is dropped and reported once as
/// [`Error::ProducerLost`], and the others are read on. Only an eviction the channel's
/// policy and the ring's state bear out ([`SharedRing::confirmed_eviction`], the rule the
/// broker applies too) disconnects this consumer.
///
/// [`SharedRing::confirmed_eviction`]: crate::ring::SharedRing::confirmed_eviction
pub(crate) struct MergedReader {
    members: Membership<RingReader>,
    /// Where the next read starts looking, one past the ring read last: round-robin.
    cursor: usize,
    last_producer: Option<u32>,
    /// Messages missed in rings dropped since: they stay counted.
    missed_in_dropped: u64,
    /// The last spin saw data that the read after it did not find (a glimpse of a ring that
    /// is corrupt, say): the next wait goes straight to the exact check before sleeping,
    /// which reports it, instead of spinning on it again.
    spin_misled: bool,
}

impl MergedReader {
    pub fn new(
        attachment: &Attachment,
        control: ControlPage,
        lanes: Vec<LaneOrFault>,
    ) -> Result<MergedReader> {
        Ok(MergedReader {
            members: Membership::new(attachment, control, Role::Consumer, lanes, RingReader::new)?,
            cursor: 0,
            last_producer: None,
            missed_in_dropped: 0,
            spin_misled: false,
        })
    }

    pub fn last_producer(&self) -> Option<u32> {
        self.last_producer
    }

    /// Counts come from the producers (LOST records), so they are summed saturating.
    pub fn missed(&self) -> u64 {
        self.members
            .peers
            .iter()
            .fold(self.missed_in_dropped, |sum, p| {
                sum.saturating_add(p.end.missed())
            })
    }

    /// Stops reading the ring of peer `index`: the error that reports it, once.
    fn drop_ring(&mut self, attachment: &Attachment, index: usize, reason: String) -> Error {
        let peer = self.members.peers.remove(index);
        peer.end.done_sleeping();
        self.missed_in_dropped = self.missed_in_dropped.saturating_add(peer.end.missed());
        self.cursor = 0;
        Error::ProducerLost {
            channel: attachment.channel.clone(),
            producer: peer.id,
            reason,
        }
    }

    fn prepare(&mut self, attachment: &mut Attachment) -> Result<()> {
        // As for the producer: the drop is learned from the broker's event only.
        attachment.ensure_usable(false)?;
        // Rings the broker replaced come in first, so a flag on the old one is not reported.
        self.members.refresh(attachment)?;
        if let Some((producer, reason)) = self.members.unopened.pop() {
            return Err(Error::ProducerLost {
                channel: attachment.channel.clone(),
                producer,
                reason: format!("its ring could not be opened: {reason}"),
            });
        }
        let policy = attachment.info.slow_consumer;
        let flagged = self.members.peers.iter().position(|p| {
            // One load per ring when nothing is flagged.
            p.end.ring().eviction().is_some()
        });
        let Some(index) = flagged else {
            return Ok(());
        };
        if let Some(cause) = self.members.peers[index]
            .end
            .ring()
            .confirmed_eviction(policy)
        {
            // The broker applies the same rule to the same ring, and disconnects this
            // consumer at its next look; the ring stays, so every call says so until then.
            return Err(Error::Disconnected {
                channel: attachment.channel.clone(),
                reason: cause.reason().into(),
            });
        }
        let reason = format!(
            "its producer stopped writing to it and flagged this consumer evicted, which the \
             channel's slow_consumer policy ({policy}) and the ring's state do not bear out"
        );
        Err(self.drop_ring(attachment, index, reason))
    }

    /// One pass over the producers' rings, starting after the one read last, until `read`
    /// finds something.
    pub fn try_read<T>(
        &mut self,
        attachment: &mut Attachment,
        scratch: &mut Vec<u8>,
        read: &mut impl FnMut(&mut RingReader, &mut Vec<u8>) -> Result<Option<T>, RingError>,
    ) -> Result<Option<T>> {
        self.prepare(attachment)?;
        self.report_gone(attachment)?;
        let count = self.members.peers.len();
        for step in 0..count {
            let index = (self.cursor + step) % count;
            let peer = &mut self.members.peers[index];
            let got = match read(&mut peer.end, scratch) {
                Ok(got) => got,
                // One producer's scribbling must not stop the others' messages: report it
                // once, then read on without that ring.
                Err(RingError::Corrupt(reason)) => {
                    return Err(self.drop_ring(
                        attachment,
                        index,
                        format!("corrupt ring: {reason}"),
                    ))
                }
                Err(other) => return Err(Error::ring(&attachment.channel, other)),
            };
            if peer.end.take_producer_waiting() {
                peer.wake();
            }
            if let Some(got) = got {
                self.cursor = (index + 1) % count;
                self.last_producer = Some(peer.id);
                self.spin_misled = false;
                return Ok(Some(got));
            }
        }
        Ok(None)
    }

    /// Releases the message a borrowed receive left in producer `peer`'s ring (the one
    /// [`last_producer`](Self::last_producer) named), and wakes that producer if it waits for
    /// room.
    pub fn release(&mut self, peer: u32) {
        // Rings change only in calls the sample's borrow of the consumer rules out.
        if let Some(index) = self.members.index_of(peer) {
            let end = &mut self.members.peers[index];
            end.end.release();
            if end.end.take_producer_waiting() {
                end.wake();
            }
        }
    }

    /// A producer that went away without end-of-stream, or whose mark did not fit our ring (as
    /// the broker told), is reported once,
    /// as soon as everything it wrote to our ring from it has been read; the others are read
    /// on. One whose ring is no longer read (replaced, dropped) is forgotten.
    fn report_gone(&mut self, attachment: &mut Attachment) -> Result<()> {
        let peers = &self.members.peers;
        attachment
            .producers_gone
            .retain(|(producer, ..)| peers.iter().any(|p| p.id == *producer));
        let done = attachment
            .producers_gone
            .iter()
            .position(|(producer, _, position, ..)| {
                peers
                    .iter()
                    .any(|p| p.id == *producer && p.end.position() >= *position)
            });
        let Some(index) = done else {
            return Ok(());
        };
        let (producer, pid, _, bytes, end_lost) = attachment.producers_gone.remove(index);
        self.last_producer = Some(producer);
        let channel = attachment.channel.clone();
        Err(match end_lost {
            Some(missed) => Error::EndOfStreamLost {
                channel,
                pid,
                missed,
            },
            None => Error::ProducerGone {
                channel,
                pid,
                bytes,
            },
        })
    }

    /// Asks every producer to signal when it writes; false (and nothing armed) if some ring
    /// already has data. A ring found corrupt here (the exact check of its positions) is
    /// dropped and reported like one found corrupt by a read.
    pub fn arm(&mut self, attachment: &Attachment) -> Result<bool> {
        attachment.drain_wakeups();
        for index in 0..self.members.peers.len() {
            match self.members.peers[index].end.prepare_to_sleep() {
                Ok(true) => {}
                Ok(false) => {
                    self.disarm();
                    return Ok(false);
                }
                Err(RingError::Corrupt(reason)) => {
                    self.disarm();
                    return Err(self.drop_ring(
                        attachment,
                        index,
                        format!("corrupt ring: {reason}"),
                    ));
                }
                Err(other) => {
                    self.disarm();
                    return Err(Error::ring(&attachment.channel, other));
                }
            }
        }
        Ok(true)
    }

    fn disarm(&self) {
        for peer in &self.members.peers {
            peer.end.done_sleeping();
        }
    }

    /// Spins briefly, then sleeps until a producer writes or the broker says something.
    pub fn wait_for_data(&mut self, attachment: &mut Attachment) -> Result<()> {
        let peers = &mut self.members.peers;
        // `has_unread` says true for a ring it cannot make sense of, for the read to report;
        // a quick read may not look at the positions, so after one such false alarm the
        // exact check in `arm` decides.
        if !std::mem::take(&mut self.spin_misled)
            && Attachment::spin(|| peers.iter_mut().any(|p| p.end.has_unread()))
        {
            self.spin_misled = true;
            return Ok(());
        }
        if self.arm(attachment)? {
            let slept = attachment.sleep();
            self.disarm();
            slept?;
        }
        Ok(())
    }
}
