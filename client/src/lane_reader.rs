//! A consumer's lanes: reads the rings of all producers in turn, so none starves another, and
//! remembers whose message it returned ([`LaneReader`]). A one-to-one channel is this with one
//! lane.

use std::time::{Duration, Instant};

use crate::attachment::Attachment;
use crate::error::{Error, Result};
use crate::grant::Rings;
use crate::lanes::{Fault, Lane, Lanes, Which};
use crate::ring::{BadRelease, RingError, RingReader};
use crate::wire::Role;

/// Longest a lane waits for a `producer_gone` event its ring's ack page announced before it is
/// read on regardless. The broker counts the event and sends it straight after, so it is
/// normally there within microseconds; it does not come only if the broker died in between
/// (seen as a hang-up: the wait ends at once) or if this process scribbled its own ack page
/// (its count is ours to write: the cost is this wait, once per scribble).
const GONE_PATIENCE: Duration = Duration::from_secs(1);

/// A consumer's rings, one per producer (one in a one-to-one channel), read in turn.
///
/// In a fan-out channel each ring is one producer's to write, and whatever that producer does
/// to it costs that ring alone: a ring found corrupt on any path (read, batch, the check
/// before sleeping) or flagged evicted by its producer without cause is dropped and reported
/// once as [`Error::ProducerLost`], and the others are read on. Only an eviction the channel's
/// policy and the ring's state bear out ([`SharedRing::confirmed_eviction`], the rule the
/// broker applies too) disconnects this consumer. In a one-to-one channel a ring error is the
/// consumer's error: the ring is all there is.
///
/// [`SharedRing::confirmed_eviction`]: crate::ring::SharedRing::confirmed_eviction
pub(crate) struct LaneReader {
    lanes: Lanes<RingReader>,
    /// Where the next read starts looking, one past the ring read last: round-robin.
    cursor: usize,
    /// The producer whose message was given back unread ([`unread`](Self::unread)): its lane
    /// is read first next time, wherever the lane list has moved it meanwhile.
    next_peer: Option<u32>,
    last_producer: Option<u32>,
    /// Messages missed in rings dropped since: they stay counted.
    missed_in_dropped: u64,
}

impl LaneReader {
    pub fn new(attachment: &Attachment, (control, lanes): Rings) -> Result<LaneReader> {
        Ok(LaneReader {
            lanes: Lanes::new(attachment, control, Role::Consumer, lanes)?,
            cursor: 0,
            next_peer: None,
            last_producer: None,
            missed_in_dropped: 0,
        })
    }

    /// Fan-out channels: the producer whose message the last read returned.
    pub fn last_producer(&self) -> Option<u32> {
        self.last_producer.filter(|_| self.lanes.fanout())
    }

    /// One-to-one channels: the stream position of the one ring.
    pub fn position(&self) -> Option<u64> {
        if self.lanes.fanout() {
            return None;
        }
        self.lanes.list.first().map(|l| l.end.position())
    }

    /// A fan-out channel (several rings to read).
    pub fn fanout(&self) -> bool {
        self.lanes.fanout()
    }

    /// Counts come from the producers (LOST records), so they are summed saturating.
    pub fn missed(&self) -> u64 {
        self.lanes
            .list
            .iter()
            .fold(self.missed_in_dropped, |sum, p| {
                sum.saturating_add(p.end.missed())
            })
    }

    /// A ring error in lane `index`: in a fan-out channel a corrupt ring is dropped and
    /// reported once (see the type's docs), else the error is the consumer's.
    fn fault(&mut self, attachment: &Attachment, index: usize, err: RingError) -> Error {
        match err {
            RingError::Corrupt(reason) if self.lanes.fanout() => {
                self.drop_ring(attachment, index, format!("corrupt ring: {reason}"))
            }
            err => Error::ring(&attachment.channel, err),
        }
    }

    /// Stops reading the ring of lane `index`: the error that reports it, once.
    fn drop_ring(&mut self, attachment: &Attachment, index: usize, reason: String) -> Error {
        let lane = self.lanes.list.remove(index);
        lane.end.done_sleeping();
        self.missed_in_dropped = self.missed_in_dropped.saturating_add(lane.end.missed());
        self.cursor = 0;
        Error::ProducerLost {
            channel: attachment.channel.clone(),
            producer: lane.id,
            reason,
        }
    }

    /// Checks the channel is usable, picks up producers that came or went, and reports a
    /// fan-out ring that could not be opened or that its producer flagged evicted.
    #[inline(always)]
    fn prepare(&mut self, attachment: &mut Attachment) -> Result<()> {
        // Rings the broker replaced come in first, so a flag on the old one is not reported.
        self.lanes.prepare(attachment)?;
        if !self.lanes.fanout() {
            return Ok(());
        }
        self.check_fanout_rings(attachment)
    }

    /// Fan-out: reports a ring that could not be opened or that its producer flagged evicted.
    #[inline(never)]
    fn check_fanout_rings(&mut self, attachment: &Attachment) -> Result<()> {
        if let Some((producer, reason)) = self.lanes.unopened.pop() {
            return Err(Error::ProducerLost {
                channel: attachment.channel.clone(),
                producer,
                reason: format!("its ring could not be opened: {reason}"),
            });
        }
        let policy = attachment.info.slow_consumer;
        // One load per ring when nothing is flagged.
        let flagged = self
            .lanes
            .list
            .iter()
            .position(|p| p.end.ring().eviction().is_some());
        let Some(index) = flagged else {
            return Ok(());
        };
        if let Some(cause) = self.lanes.list[index].end.ring().confirmed_eviction(policy) {
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
    /// finds something; wakes each producer that waits for the room a read freed. `read` is
    /// told how many messages it may take at most: one while a producer of that ring is to
    /// be reported gone, so a batch stops at that producer's last message.
    ///
    /// A lane whose ack page announces more `producer_gone` events than have been read is not
    /// read until they come (`held_for_gone`): each is due at the end of a producer's stream,
    /// and the frames after that end (its successor's, or the end-of-stream) must not be
    /// handed out before it. Per read that is one `Relaxed` load of a line of our own ack page
    /// and a compare, plus a length for the batch limit. The count is loaded before the read
    /// loads the ring's positions, not after: a consumer descheduled between the two loads
    /// while, just then, its producer dies, the broker counts and the next producer attaches
    /// and writes, can still read that next producer's first frames before the report (which
    /// then follows them). Closing that window would take the ring read's own position load,
    /// inside `RingReader`, which this per-message path leaves alone.
    ///
    /// Always inlined, into each receive function (each has its own `read`): the result then
    /// reaches the caller without a copy through memory at every level.
    #[inline(always)]
    pub fn try_read<T>(
        &mut self,
        attachment: &mut Attachment,
        scratch: &mut Vec<u8>,
        read: &mut impl FnMut(&mut RingReader, &mut Vec<u8>, usize) -> Result<Option<T>, RingError>,
    ) -> Result<Option<T>> {
        'again: loop {
            self.prepare(attachment)?;
            self.report_gone(attachment)?;
            if let Some(peer) = self.next_peer.take() {
                if let Some(index) = self.lanes.index_of(peer) {
                    self.cursor = index;
                }
            }
            let count = self.lanes.list.len();
            // No division on this path: with one lane it runs once per message.
            let mut index = self.cursor.min(count);
            for _ in 0..count {
                if index >= count {
                    index = 0;
                }
                let lane = &self.lanes.list[index];
                if lane.end.ring().producers_gone_announced() > lane.gone_known {
                    match self.held_for_gone(attachment, index) {
                        Gone::Read => {}
                        // Reports and lanes are brought up to date before anything written
                        // after the events is read.
                        Gone::Came => continue 'again,
                        Gone::Held => {
                            index += 1;
                            continue;
                        }
                    }
                }
                let limit = if attachment.producers_gone.is_empty() {
                    usize::MAX
                } else {
                    self.limit_for(attachment, index)
                };
                let lane = &mut self.lanes.list[index];
                let got = match read(&mut lane.end, scratch, limit) {
                    Ok(got) => got,
                    Err(err) => return Err(self.fault(attachment, index, err)),
                };
                let lane = &mut self.lanes.list[index];
                lane.wake_if_waiting();
                if let Some(got) = got {
                    self.cursor = index + 1;
                    self.last_producer = Some(lane.id);
                    self.lanes.progressed();
                    return Ok(Some(got));
                }
                index += 1;
            }
            return Ok(None);
        }
    }

    /// The common case of a single read, ahead of [`try_read`](Self::try_read) and inlined
    /// into the receive: the lane to read if it is a one-to-one channel's, with no producer
    /// to report gone or announced (else `None`: `try_read` looks the general way, which is
    /// what it would have done). A ring read's fast path then reads its ring; if that read a
    /// message, the caller wakes the producer if it waits ([`Lane::wake_if_waiting`]) and
    /// calls [`fast_read_done`](Self::fast_read_done), as `try_read` does after a read.
    #[inline(always)]
    pub fn fast_lane(
        &mut self,
        attachment: &mut Attachment,
    ) -> Result<Option<&mut Lane<RingReader>>> {
        self.lanes.prepare(attachment)?;
        let fanout = self.lanes.fanout();
        let [lane] = self.lanes.list.as_mut_slice() else {
            return Ok(None);
        };
        // As in `try_read`: a report due first, or a lane held for an event still to come.
        if fanout
            || !attachment.producers_gone.is_empty()
            || lane.end.ring().producers_gone_announced() > lane.gone_known
        {
            return Ok(None);
        }
        Ok(Some(lane))
    }

    /// After a message read from [`fast_lane`](Self::fast_lane)'s lane, whose id is `id`.
    #[inline(always)]
    pub fn fast_read_done(&mut self, id: u32) {
        self.last_producer = Some(id);
        self.cursor = 1;
        self.lanes.progressed();
    }

    /// The most messages a read of lane `index` may take: one while a producer of its ring is
    /// to be reported gone (the report is due after that producer's last message, and
    /// `report_gone` looks before every read).
    #[inline(never)]
    fn limit_for(&self, attachment: &Attachment, index: usize) -> usize {
        let id = self.lanes.list[index].id;
        if attachment.producers_gone.iter().any(|g| g.0 == id) {
            1
        } else {
            usize::MAX
        }
    }

    /// Lane `index`'s ack page counts more `producer_gone` events than have been read: reads
    /// the broker's events (without waiting). `Came` if any came (the caller starts over, so
    /// a report now due is made first); `Read` if the lane may be read (all announced events
    /// are in, or the wait is given up: the broker connection is gone, or `GONE_PATIENCE`
    /// passed, after which it is read as if nothing had been announced, the behaviour of
    /// clients that ignore the count); `Held` if it must wait: a blocking receive sleeps until
    /// the broker writes (`Lanes::wait` skips held lanes), a `try_*` call reports would-block
    /// with `ready_fd()` watching the broker connection and a timer for the bound.
    #[inline(never)]
    fn held_for_gone(&mut self, attachment: &mut Attachment, index: usize) -> Gone {
        let lanes = &mut self.lanes.list;
        let id = lanes[index].id;
        // Loaded before the events are read: every event counted up to here is in the
        // connection by then (the broker counts, then sends).
        let announced = lanes[index].end.ring().producers_gone_announced();
        let taken = attachment.take_gone_announced(id, |p| lanes.iter().any(|l| l.id == p));
        let came = attachment.read_broker_events();
        let lane = &mut lanes[index];
        let taken = taken.max(attachment.take_gone_announced(id, |_| true));
        lane.gone_known = lane.gone_known.max(taken);
        if lane.gone_known >= announced {
            lane.gone_wait = None;
            return Gone::Came;
        }
        if came {
            return Gone::Came;
        }
        let since = *lane.gone_wait.get_or_insert_with(Instant::now);
        let deadline = since + GONE_PATIENCE;
        if !attachment.broker_was_connected() || Instant::now() >= deadline {
            // Given up: this count is taken as read, so the lane is not held for it again.
            lane.gone_known = announced;
            lane.gone_wait = None;
            return Gone::Read;
        }
        attachment.wake_ready_at(deadline);
        Gone::Held
    }

    /// Releases the message a borrowed receive left in lane `peer`'s ring, and wakes that
    /// producer if it waits for room.
    pub fn release(&mut self, peer: u32) {
        // Rings change only in calls the sample's borrow of the consumer rules out.
        if let Some(index) = self.lanes.index_of(peer) {
            let lane = &mut self.lanes.list[index];
            lane.end.release();
            lane.wake_if_waiting();
        }
    }

    /// Gives the message a borrowed receive left in lane `peer`'s ring back unread
    /// ([`RingReader::unpeek`]), and makes that lane the next one read, so that the next
    /// receive finds the same message first (unless a report is due first, or the lane is
    /// held for one; see [`try_read`](Self::try_read)). The message's space stays taken;
    /// padding skipped on the way to it is freed, which may wake its producer.
    pub fn unread(&mut self, peer: u32) {
        // Rings change only in calls the sample's borrow of the consumer rules out.
        if let Some(index) = self.lanes.index_of(peer) {
            let lane = &mut self.lanes.list[index];
            lane.end.unpeek();
            lane.wake_if_waiting();
            self.next_peer = Some(peer);
        }
    }

    /// One-to-one channels: releases the ring up to `position`, an end of an item read ahead
    /// ([`RingReader::release_to`] checks it), and wakes the producer if it waits for room.
    pub fn release_to(&mut self, position: u64) -> std::result::Result<(), BadRelease> {
        let fanout = self.lanes.fanout();
        let Some(lane) = self.lanes.list.first_mut().filter(|_| !fanout) else {
            return Err(BadRelease {
                position,
                why: "the consumer has no ring of its own to release",
            });
        };
        lane.end.release_to(position)?;
        lane.wake_if_waiting();
        Ok(())
    }

    /// The lane the last read came from: whose ring a borrowed message is in.
    pub fn last_lane(&self) -> u32 {
        self.last_producer.unwrap_or(crate::lanes::SOLE_PEER)
    }

    /// A producer that went away without end-of-stream, or whose mark did not fit our ring (as
    /// the broker told), is reported once, as soon as everything it wrote to our ring has been
    /// read; the others are read on. One whose ring is no longer read (replaced, dropped) is
    /// forgotten.
    #[inline(always)]
    fn report_gone(&mut self, attachment: &mut Attachment) -> Result<()> {
        if attachment.producers_gone.is_empty() {
            return Ok(());
        }
        self.report_gone_now(attachment)
    }

    #[inline(never)]
    fn report_gone_now(&mut self, attachment: &mut Attachment) -> Result<()> {
        let lanes = &self.lanes.list;
        attachment
            .producers_gone
            .retain(|(producer, ..)| lanes.iter().any(|p| p.id == *producer));
        let done = attachment
            .producers_gone
            .iter()
            .position(|(producer, _, position, ..)| {
                lanes
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
    /// already has data.
    pub fn arm(&mut self, attachment: &Attachment) -> Result<bool> {
        self.lanes
            .arm(attachment, Which::All, 0)
            .map_err(|fault| self.on_fault(attachment, fault))
    }

    /// Spins briefly, then sleeps until a producer writes or the broker says something.
    pub fn wait_for_data(&mut self, attachment: &mut Attachment) -> Result<()> {
        self.lanes
            .wait(attachment, Which::All, 0)
            .map_err(|fault| self.on_fault(attachment, fault))
    }

    fn on_fault(&mut self, attachment: &Attachment, fault: Fault) -> Error {
        match fault {
            Fault::Lane(index, err) => self.fault(attachment, index, err),
            Fault::Endpoint(err) => err,
        }
    }
}

/// What `LaneReader::held_for_gone` found.
enum Gone {
    /// Read the lane.
    Read,
    /// Broker events came: start the pass over.
    Came,
    /// Do not read the lane now.
    Held,
}
