//! A producer's lanes: writes each message into the ring of every consumer under the channel's
//! slow-consumer policy ([`LaneWriter`]). A one-to-one channel is this with one lane under
//! policy `block`; a fan-out channel has a lane per consumer queue, each ring single-producer
//! single-consumer, so no consumer ever sees another's data or positions.

use std::collections::HashSet;

use crate::attachment::Attachment;
use crate::copy::copy_slice;
use crate::error::{Error, Result};
use crate::grant::Rings;
use crate::lanes::{check_fits, Fault, Lanes, Which};
use crate::ring::{Eviction, MessageBytes, Payload, RingError, RingWriter};
use crate::wire::{LostEnd, Role, SlowConsumer};

/// A producer's rings, one per consumer queue (one in a one-to-one channel).
pub(crate) struct LaneWriter {
    lanes: Lanes<RingWriter>,
    policy: SlowConsumer,
    /// Where zero-copy fills and loans go when they cannot be in a ring: a message must reach
    /// several rings, and each is written separately.
    scratch: Vec<u8>,
}

/// Where a loan's bytes are (see [`LaneWriter::reserve`]).
#[derive(Clone, Copy, Debug)]
pub(crate) enum LoanSlot {
    /// A frame reserved in the ring of the only consumer, `peer`.
    Lane { peer: u32, payload: Payload },
    /// In the private scratch buffer, copied into every ring at send.
    Scratch,
}

impl LaneWriter {
    pub fn new(attachment: &Attachment, (control, lanes): Rings) -> Result<LaneWriter> {
        // A one-to-one channel's producer waits for its one consumer (the broker says `block`
        // for those; this does not depend on it).
        let policy = match control {
            Some(_) => attachment.info.slow_consumer,
            None => SlowConsumer::Block,
        };
        Ok(LaneWriter {
            lanes: Lanes::new(attachment, control, Role::Producer, lanes)?,
            policy,
            scratch: Vec::new(),
        })
    }

    /// Consumer queues this producer writes to now.
    pub fn consumers(&self) -> usize {
        self.lanes.list.len()
    }

    /// One-to-one channels: the published write position of the one ring.
    pub fn position(&self) -> Option<u64> {
        if self.lanes.fanout() {
            return None;
        }
        self.lanes.list.first().map(|l| l.end.position())
    }

    /// Checks the channel is usable and picks up consumers that came or went.
    #[inline(always)]
    fn prepare(&mut self, attachment: &mut Attachment) -> Result<()> {
        self.lanes.prepare(attachment)?;
        // A consumer whose ring could not be opened spoiled it itself: it is skipped, and
        // nobody else needs telling.
        self.lanes.unopened.clear();
        Ok(())
    }

    /// The message goes to one consumer that is not owed a loss record (policy `drop`), so it
    /// can be written in place in that consumer's ring.
    #[inline]
    fn in_ring(&self) -> bool {
        match self.lanes.list.as_slice() {
            [only] => self.policy == SlowConsumer::Block || only.missed == 0,
            _ => false,
        }
    }

    /// Runs `op` on lane `index`'s ring, then wakes its consumer if it sleeps (even a refused
    /// write may have published padding, which it must come and pass). `None`: the ring was
    /// at fault and is gone (see [`fault`](Self::fault)); the lane at `index` is the next one.
    fn on_lane<T>(
        &mut self,
        attachment: &Attachment,
        index: usize,
        op: impl FnOnce(&mut RingWriter) -> Result<T, RingError>,
    ) -> Result<Option<T>> {
        let lane = &mut self.lanes.list[index];
        match op(&mut lane.end) {
            Ok(value) => {
                lane.wake_if_waiting();
                Ok(Some(value))
            }
            Err(err) => self.fault(attachment, index, err).map(|()| None),
        }
    }

    /// A ring error in lane `index`. In a fan-out channel, a ring its consumer scribbled on
    /// concerns that consumer alone: it is flagged evicted (its reads fail with
    /// "disconnected"), woken and dropped, and the others go on. In a one-to-one channel, or
    /// for any other error, it is the producer's error.
    fn fault(&mut self, attachment: &Attachment, index: usize, err: RingError) -> Result<()> {
        match err {
            RingError::Corrupt(_) if self.lanes.fanout() => {
                let lane = self.lanes.list.remove(index);
                lane.end.ring().mark_evicted(Eviction::Corrupt);
                lane.wake();
                Ok(())
            }
            err => Err(Error::ring(&attachment.channel, err)),
        }
    }

    /// Sends one message of up to `max` bytes that `fill` writes (returning how many it
    /// used; 0 of a non-empty `max` sends nothing): straight into the ring when it goes to one
    /// consumer ([`in_ring`](Self::in_ring)) with room for it (or under policy `block`, which
    /// waits for room), else into the scratch buffer and from there into every ring under the
    /// channel's policy. Returns the length sent; `None` when not
    /// `blocking` and a ring under policy `block` has no room (its wake-up armed).
    ///
    /// The common case first, alone and inlined: one consumer, whose ring has the room this
    /// producer already knows of ([`RingWriter::try_write_up_to_fast`]); the rest out of line.
    #[inline(always)]
    pub fn write_up_to<F: FnOnce(&mut [u8]) -> usize>(
        &mut self,
        attachment: &mut Attachment,
        max: usize,
        fill: F,
        blocking: bool,
    ) -> Result<Option<usize>> {
        self.prepare(attachment)?;
        check_fits(attachment, max)?;
        let in_ring = self.in_ring();
        let fill = match self.lanes.list.first_mut() {
            Some(lane) if in_ring => match lane.end.try_write_up_to_fast(max, fill) {
                Ok(used) => {
                    lane.wake_if_waiting();
                    return Ok(Some(used));
                }
                Err(fill) => fill,
            },
            _ => fill,
        };
        self.write_up_to_slow(attachment, max, fill, blocking)
    }

    /// [`write_up_to`](Self::write_up_to) past its fast path.
    #[inline(never)]
    fn write_up_to_slow(
        &mut self,
        attachment: &mut Attachment,
        max: usize,
        fill: impl FnOnce(&mut [u8]) -> usize,
        blocking: bool,
    ) -> Result<Option<usize>> {
        let mut fill = Some(fill);
        loop {
            self.prepare(attachment)?;
            check_fits(attachment, max)?;
            if !self.in_ring() {
                break;
            }
            let written = self.on_lane(attachment, 0, |w| {
                w.try_write_up_to(max, |buf| fill.take().map_or(0, |fill| fill(buf)))
            })?;
            match written {
                Some(Some(used)) => return Ok(Some(used)),
                Some(None) => {}
                // The ring was dropped: without it, look again.
                None => continue,
            }
            match self.policy {
                SlowConsumer::Block if blocking => self.wait_for_room(attachment, 0, max)?,
                // Arms the wake-up, unless room appeared meanwhile: then look again.
                SlowConsumer::Block => {
                    if !self.room_everywhere(attachment, max)? {
                        return Ok(None);
                    }
                }
                // Never waits: the message is lost for that consumer (or it is evicted), as
                // any other message that finds its ring full.
                SlowConsumer::Drop | SlowConsumer::Disconnect => break,
            }
        }
        if !blocking
            && self.policy == SlowConsumer::Block
            && !self.room_everywhere(attachment, max)?
        {
            return Ok(None);
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        if scratch.len() < max {
            scratch.resize(max, 0);
        }
        let used = fill
            .take()
            .map_or(0, |fill| fill(&mut scratch[..max]))
            .min(max);
        let result = if used == 0 && max > 0 {
            Ok(Some(0))
        } else {
            self.spread(attachment, &scratch[..used])
                .map(|()| Some(used))
        };
        self.scratch = scratch;
        result
    }

    /// Delivers `messages` in order to every consumer under the channel's policy. Blocking:
    /// returns once all are delivered (policy `block` waits for the slowest consumer).
    /// Non-blocking: delivers as many as go to everyone now and returns how many (0: none,
    /// and the wake-up armed).
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
            SlowConsumer::Block => self.write_now(attachment, messages),
            SlowConsumer::Drop | SlowConsumer::Disconnect => {
                for message in messages {
                    self.write_lossy(attachment, message)?;
                }
                Ok(messages.len())
            }
        }
    }

    /// One-to-one channels: where the write position will be once `messages` are written.
    pub fn end_position<M: MessageBytes>(&self, messages: &[M]) -> Option<u64> {
        if self.lanes.fanout() {
            return None;
        }
        let lane = self.lanes.list.first()?;
        let lens: Option<Vec<usize>> = messages.iter().map(M::total_len).collect();
        lane.end.end_position(lens?)
    }

    /// One-to-one channels: all of `messages` with one publish if they fit now, else none.
    pub fn deliver_all<M: MessageBytes>(
        &mut self,
        attachment: &mut Attachment,
        messages: &[M],
    ) -> Result<bool> {
        self.prepare(attachment)?;
        // A length past usize is longer than any ring: refused as too long.
        let lens = messages.iter().map(|m| m.total_len().unwrap_or(usize::MAX));
        if let Some(len) = lens.max() {
            check_fits(attachment, len)?;
        }
        if self.lanes.fanout() {
            return Err(Error::Unsupported {
                channel: attachment.channel.clone(),
                what: "all-or-nothing batches (one-to-one channels only)".into(),
            });
        }
        if self.lanes.list.is_empty() {
            return Ok(false);
        }
        // A dropped ring (`None`) took nothing.
        Ok(self
            .on_lane(attachment, 0, |w| w.try_write_all(messages))?
            .unwrap_or(false))
    }

    /// Policy `block`, not waiting: as many of `messages` as fit in every ring now. With one
    /// consumer that is a batch with one publish (what makes small messages fast); with
    /// several, one message at a time, each once it fits everywhere.
    fn write_now(&mut self, attachment: &mut Attachment, messages: &[&[u8]]) -> Result<usize> {
        let Some(first) = messages.first() else {
            return Ok(0);
        };
        while self.lanes.list.len() == 1 {
            match self.on_lane(attachment, 0, |w| w.try_write_batch(messages))? {
                Some(0) => {}
                Some(sent) => return Ok(sent),
                // The ring was dropped: the message goes to no one.
                None => continue,
            }
            if !self.room_everywhere(attachment, first.len())? {
                return Ok(0);
            }
        }
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

    /// One message from the scratch buffer into every ring, under the channel's policy.
    fn spread(&mut self, attachment: &mut Attachment, message: &[u8]) -> Result<()> {
        match self.policy {
            SlowConsumer::Block => self.write_waiting(attachment, &[message]),
            SlowConsumer::Drop | SlowConsumer::Disconnect => self.write_lossy(attachment, message),
        }
    }

    /// Makes room for a loan of `len` bytes. When the message goes to one consumer
    /// ([`in_ring`](Self::in_ring)), the loan is a frame reserved in its ring: no copy at all.
    /// Otherwise it is the private scratch buffer (not zeroed: it holds earlier messages of
    /// this producer), copied into each ring at send: with several consumers, a loan in one
    /// of their rings would be copied from a ring that consumer maps too. Blocking under
    /// policy `block`: waits for room in the one ring; with several consumers the waiting is
    /// left to [`publish_loan`](Self::publish_loan). Non-blocking: `None` (and `ready_fd()`
    /// armed) if a ring under policy `block` has no room; policies `drop` and `disconnect`
    /// never wait: a full ring gets a scratch loan, whose send then loses the message for
    /// that consumer (or disconnects it).
    pub fn reserve(
        &mut self,
        attachment: &mut Attachment,
        len: usize,
        blocking: bool,
    ) -> Result<Option<LoanSlot>> {
        loop {
            self.prepare(attachment)?;
            check_fits(attachment, len)?;
            if !self.in_ring() {
                if !blocking
                    && self.policy == SlowConsumer::Block
                    && !self.room_everywhere(attachment, len)?
                {
                    return Ok(None);
                }
                return Ok(Some(self.scratch_loan(len)));
            }
            match self.on_lane(attachment, 0, |w| w.try_reserve(len))? {
                Some(Some(payload)) => {
                    let peer = self.lanes.list[0].id;
                    return Ok(Some(LoanSlot::Lane { peer, payload }));
                }
                Some(None) => {}
                // The ring was dropped: without it, look again.
                None => continue,
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
                    return Ok(Some(self.scratch_loan(len)))
                }
            }
        }
    }

    fn scratch_loan(&mut self, len: usize) -> LoanSlot {
        if self.scratch.len() < len {
            self.scratch.resize(len, 0);
        }
        LoanSlot::Scratch
    }

    /// The first `len` bytes of the scratch buffer, to read (a scratch loan made it at least
    /// that long).
    pub fn scratch(&self, len: usize) -> &[u8] {
        &self.scratch[..len.min(self.scratch.len())]
    }

    /// The first `len` bytes of the scratch buffer, for a [`LoanSlot::Scratch`] loan (which
    /// made it at least that long).
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
        loan: LoanSlot,
        len: usize,
    ) -> Result<()> {
        match loan {
            LoanSlot::Lane { peer, .. } => {
                // Lanes change only in calls the loan's borrow of the producer rules out.
                let Some(index) = self.lanes.index_of(peer) else {
                    return Ok(());
                };
                self.on_lane(attachment, index, |w| w.commit_reserved(len))
                    .map(drop)
            }
            LoanSlot::Scratch => {
                let scratch = std::mem::take(&mut self.scratch);
                let message = &scratch[..len.min(scratch.len())];
                let result = self.spread(attachment, message);
                self.scratch = scratch;
                result
            }
        }
    }

    /// Forgets a loan: a reserved frame is abandoned (nothing published), a scratch loan
    /// needs nothing.
    pub fn abandon_loan(&mut self, loan: LoanSlot) {
        if let LoanSlot::Lane { peer, .. } = loan {
            if let Some(index) = self.lanes.index_of(peer) {
                self.lanes.list[index].end.abandon_reserved();
            }
        }
    }

    /// True if every consumer's ring has room for `len` bytes now. If not, and the caller
    /// will wait on `ready_fd()`, asks that consumer to signal when it frees space.
    fn room_everywhere(&mut self, attachment: &mut Attachment, len: usize) -> Result<bool> {
        let busy_poll = attachment.options.busy_poll;
        let mut index = 0;
        while index < self.lanes.list.len() {
            match self.on_lane(attachment, index, |w| w.make_room(len))? {
                Some(true) => index += 1,
                Some(false) if busy_poll => return Ok(false),
                Some(false) => match self.lanes.arm(attachment, Which::One(index), len) {
                    Ok(true) => return Ok(false),
                    // Room appeared meanwhile: look again.
                    Ok(false) => {}
                    Err(Fault::Lane(index, err)) => self.fault(attachment, index, err)?,
                    Err(Fault::Endpoint(err)) => return Err(err),
                },
                // Dropped: the next lane is at `index` now.
                None => {}
            }
        }
        Ok(true)
    }

    /// Policy `block`: writes `messages` into every consumer's ring, waiting for room as long
    /// as it takes. A consumer that leaves meanwhile is skipped; one that comes meanwhile gets
    /// the next messages, not these.
    fn write_waiting(&mut self, attachment: &mut Attachment, messages: &[&[u8]]) -> Result<()> {
        for lane in &mut self.lanes.list {
            lane.pending = true;
        }
        while let Some(first) = self.lanes.list.iter().position(|l| l.pending) {
            let id = self.lanes.list[first].id;
            let mut done = 0;
            while let Some(index) = self.lanes.index_of(id) {
                let rest = &messages[done..];
                let Some(written) = self.on_lane(attachment, index, |w| w.try_write_batch(rest))?
                else {
                    break;
                };
                done += written;
                let Some(next) = messages.get(done) else {
                    self.lanes.list[index].pending = false;
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
        let mut index = 0;
        while index < self.lanes.list.len() {
            let missed = self.lanes.list[index].missed;
            let written = self.on_lane(attachment, index, |w| {
                if missed > 0 {
                    w.try_write_after_gap(missed, message)
                } else {
                    w.try_write_with(message.len(), |buf| copy_slice(buf, message))
                }
            })?;
            let Some(written) = written else {
                continue;
            };
            let lane = &mut self.lanes.list[index];
            if written {
                lane.missed = 0;
            } else {
                // A consumer asleep on a full ring is woken all the same, to make room.
                lane.wake();
                if self.policy == SlowConsumer::Drop {
                    lane.missed = lane.missed.saturating_add(1);
                    lane.end.count_lost(1);
                } else {
                    lane.end.ring().mark_evicted(Eviction::FellBehind);
                    self.lanes.list.remove(index);
                    continue;
                }
            }
            index += 1;
        }
        Ok(())
    }

    /// Waits until the ring of lane `index` has room for `len` bytes (or something changed:
    /// the caller looks again), then re-checks the channel and its consumers.
    fn wait_for_room(
        &mut self,
        attachment: &mut Attachment,
        index: usize,
        len: usize,
    ) -> Result<()> {
        match self.lanes.wait(attachment, Which::One(index), len) {
            // A ring error shows again (and is dealt with) at the next write.
            Ok(()) | Err(Fault::Lane(..)) => {}
            Err(Fault::Endpoint(err)) => return Err(err),
        }
        self.prepare(attachment)
    }

    /// Writes the end-of-stream mark to every consumer: waiting for room under policy
    /// `block`, else only where it fits now.
    pub fn close(&mut self, attachment: &mut Attachment) -> Result<()> {
        self.prepare(attachment)?;
        let mut lost = Vec::new();
        // Rings done with (marked, or told through the broker), by identity. Not a flag set on
        // the lanes at the start: a consumer that attaches while this waits for room in
        // another's ring comes in as a new lane, and a ring the broker replaces meanwhile comes
        // in as a new ring; each is owed the mark as much as the others, and none gets two.
        let mut done: HashSet<(u64, u64)> = HashSet::new();
        while let Some(first) = self
            .lanes
            .list
            .iter()
            .position(|lane| !done.contains(&lane.end.ring().file()))
        {
            let id = self.lanes.list[first].id;
            while let Some(index) = self.lanes.index_of(id) {
                done.insert(self.lanes.list[index].end.ring().file());
                let missed = self.lanes.list[index].missed;
                let written = self.on_lane(attachment, index, |w| {
                    // A consumer that lost the last messages learns of them before the end:
                    // no end mark without the loss record in front of it (where the record
                    // does not fit, the broker tells the loss and the end, see below).
                    let told = missed == 0 || w.try_write_gap(missed)?;
                    Ok((told, told && w.try_write_end_of_stream()?))
                })?;
                let Some((told, written)) = written else {
                    break;
                };
                let lane = &mut self.lanes.list[index];
                if told {
                    lane.missed = 0;
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
