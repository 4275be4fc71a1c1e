//! A consumer's lanes: reads the rings of all producers in turn, so none starves another, and
//! remembers whose message it returned ([`LaneReader`]). A one-to-one channel is this with one
//! lane.

use crate::attachment::Attachment;
use crate::error::{Error, Result};
use crate::grant::Rings;
use crate::lanes::{Fault, Lanes, Which};
use crate::ring::{RingError, RingReader};
use crate::wire::Role;

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
    last_producer: Option<u32>,
    /// Messages missed in rings dropped since: they stay counted.
    missed_in_dropped: u64,
}

impl LaneReader {
    pub fn new(attachment: &Attachment, (control, lanes): Rings) -> Result<LaneReader> {
        Ok(LaneReader {
            lanes: Lanes::new(attachment, control, Role::Consumer, lanes)?,
            cursor: 0,
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
    /// finds something; wakes each producer that waits for the room a read freed.
    pub fn try_read<T>(
        &mut self,
        attachment: &mut Attachment,
        scratch: &mut Vec<u8>,
        read: &mut impl FnMut(&mut RingReader, &mut Vec<u8>) -> Result<Option<T>, RingError>,
    ) -> Result<Option<T>> {
        self.prepare(attachment)?;
        self.report_gone(attachment)?;
        let count = self.lanes.list.len();
        // No division on this path: with one lane it runs once per message.
        let mut index = self.cursor.min(count);
        for _ in 0..count {
            if index >= count {
                index = 0;
            }
            let lane = &mut self.lanes.list[index];
            let got = match read(&mut lane.end, scratch) {
                Ok(got) => got,
                Err(err) => return Err(self.fault(attachment, index, err)),
            };
            lane.wake_if_waiting();
            if let Some(got) = got {
                self.cursor = index + 1;
                self.last_producer = Some(lane.id);
                self.lanes.progressed();
                return Ok(Some(got));
            }
            index += 1;
        }
        Ok(None)
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
