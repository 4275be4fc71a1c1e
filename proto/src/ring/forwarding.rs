//! What a program that forwards a ring's stream elsewhere needs (the bridge: the exporter reads
//! one ring, the importer writes another), with the stream positions as their record:
//!
//! * Reading past what is released ([`RingReader::try_read_ahead`],
//!   [`RingReader::release_to`]): the reader's local position runs ahead of the published one,
//!   which moves only when the caller says the items up to a position are safe elsewhere. Until
//!   then they stay in the ring: a consumer that attaches next starts at the published position
//!   and reads them again, with the same positions. A position the caller passes is checked
//!   against the ends of the items this reader handed out and has not released, never trusted:
//!   a wrong one cannot release half a frame (the next consumer would start inside it) nor
//!   bytes not read yet, and nothing released is read again (the local position only grows).
//! * All-or-nothing writes with a known end ([`RingWriter::end_position`],
//!   [`RingWriter::try_write_all`]): either every message of a run is published, with one
//!   store of the write position, or none is (not even the padding it would start with), and
//!   the position the run ends at is known before it is written, so a writer that records it
//!   first can tell after a crash, from the ring's write position alone, whether the run got
//!   in: only reaching that end means it did.

use super::layout::KIND_DATA;
use super::reader::{ReadItem, ReadOutcome, RingReader, Sink};
use super::writer::RingWriter;
use super::{handshake, RingError};

/// Why [`RingReader::release_to`] refused a position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot release up to stream position {position}: {why}")]
pub struct BadRelease {
    /// The position asked for.
    pub position: u64,
    /// Why it is refused, in words.
    pub why: &'static str,
}

/// One item of [`RingReader::try_read_ahead`]: as [`ReadItem`], but a message comes in the
/// reader's own buffer (a private copy, made once), which the callee may take
/// (`std::mem::take`) to keep the message without copying it again; the next message then
/// goes into a new buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum AheadItem<'a> {
    /// A message's payload, copied out of the ring already.
    Message(&'a mut Vec<u8>),
    /// The producer closed cleanly here.
    EndOfStream,
    /// Padding at the end of a lap with nothing published after it yet.
    Padding,
}

impl AheadItem<'_> {
    /// The item as a [`ReadItem`] (the message borrowed).
    pub fn as_read_item(&self) -> ReadItem<'_> {
        match self {
            AheadItem::Message(bytes) => ReadItem::Message(bytes),
            AheadItem::EndOfStream => ReadItem::EndOfStream,
            AheadItem::Padding => ReadItem::Padding,
        }
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for &[u8] {}
    impl Sealed for &[&[u8]] {}
}

/// A message for [`RingWriter::try_write_all`]: its bytes in one slice, or in several written
/// one after the other into the frame (a network buffer's fragments, without gathering them
/// into one buffer first). Implemented for `&[u8]` and `&[&[u8]]` only (sealed).
pub trait MessageBytes: sealed::Sealed {
    /// The message's length; `None` if its parts' lengths add up past `usize`.
    fn total_len(&self) -> Option<usize>;
    /// Copies the message into `out`, which is [`total_len`](Self::total_len) bytes long.
    fn copy_into(&self, out: &mut [u8]);
}

impl MessageBytes for &[u8] {
    fn total_len(&self) -> Option<usize> {
        Some(self.len())
    }

    fn copy_into(&self, out: &mut [u8]) {
        crate::copy::copy_slice(out, self);
    }
}

impl MessageBytes for &[&[u8]] {
    fn total_len(&self) -> Option<usize> {
        self.iter()
            .try_fold(0usize, |sum, part| sum.checked_add(part.len()))
    }

    fn copy_into(&self, out: &mut [u8]) {
        let mut at = 0;
        for part in self.iter() {
            // `out` is exactly the parts' total length: each part lands inside it.
            crate::copy::copy_slice(&mut out[at..at + part.len()], part);
            at += part.len();
        }
    }
}

impl RingReader {
    /// Hands up to `max` items after those read so far, released or not, to `each` in order
    /// (each message in `scratch`, which `each` may take, see [`AheadItem`]), with their
    /// stream positions (as [`try_read_batch_confirmed`] does: `from`, `to`, padding
    /// before an item counted in it, padding with nothing after it yet an item of its own),
    /// and releases nothing: they stay in the ring until [`release_to`](Self::release_to)
    /// names their end or a later one. Returns how many (0: nothing new published).
    ///
    /// Any other read that releases (a plain read, a batch, a borrowed sample's release)
    /// releases everything read so far, these items included; a confirmed batch that is
    /// refused goes back to the released position, so these items are read again.
    ///
    /// [`try_read_batch_confirmed`]: Self::try_read_batch_confirmed
    pub fn try_read_ahead(
        &mut self,
        max: usize,
        scratch: &mut Vec<u8>,
        mut each: impl FnMut(u64, u64, AheadItem<'_>),
    ) -> Result<usize, RingError> {
        let mut unread = self.unread(super::reader::Poll::Quick)?;
        if unread == 0 {
            return Ok(0);
        }
        let mut delivered = 0;
        while delivered < max {
            let from = self.read_pos;
            let saved = (self.messages_read, self.missed);
            let item = match self.next_frame(Sink::Buffer(scratch), &mut unread) {
                Ok(ReadOutcome::Message) => AheadItem::Message(scratch),
                Ok(ReadOutcome::EndOfStream) => AheadItem::EndOfStream,
                Ok(ReadOutcome::Empty) if self.read_pos > from => AheadItem::Padding,
                Ok(ReadOutcome::Empty) => break,
                Err(err) => {
                    // Back to the end of the last item handed out, so that whatever follows
                    // starts there (padding or a loss record skipped on the way included).
                    self.read_pos = from;
                    (self.messages_read, self.missed) = saved;
                    return Err(err);
                }
            };
            // Ends only grow: the list stays sorted for `release_to`'s search.
            self.ahead.push_back((self.read_pos, self.messages_read));
            let padding = item == AheadItem::Padding;
            each(from, self.read_pos, item);
            delivered += 1;
            if padding {
                break;
            }
        }
        Ok(delivered)
    }

    /// Releases the items [`try_read_ahead`](Self::try_read_ahead) handed out up to
    /// `position`, which must be the `to` of one of them not released yet (or the released
    /// position itself: nothing to do): one store of the read position, after which
    /// [`take_producer_waiting`](Self::take_producer_waiting) says whether to wake the
    /// producer. Anything else is refused and changes nothing.
    pub fn release_to(&mut self, position: u64) -> Result<(), BadRelease> {
        if position == self.published_pos {
            return Ok(());
        }
        let refuse = |why| Err(BadRelease { position, why });
        if position < self.published_pos {
            return refuse("it is released already");
        }
        if position > self.read_pos {
            return refuse("it is past what was read");
        }
        let Ok(index) = self.ahead.binary_search_by_key(&position, |&(end, _)| end) else {
            return refuse("it is not the end of an item read ahead");
        };
        let (_, messages_read) = self.ahead[index];
        self.ahead.drain(..=index);
        self.publish_read(position, messages_read);
        Ok(())
    }
}

impl RingWriter {
    /// The write position once `lens` (message lengths) are published from here, padding
    /// included where a frame would wrap: where [`try_write_all`](Self::try_write_all), or
    /// writes of the messages one by one, leave it. `None` if a message is longer than the
    /// ring carries.
    pub fn end_position(&self, lens: impl IntoIterator<Item = usize>) -> Option<u64> {
        let capacity = self.ring.capacity;
        let mut pos = self.staged_pos;
        for len in lens {
            self.check_len(len).ok()?;
            let needed = self.ring.frame_len(len as u64);
            let until_end = capacity - self.ring.offset_of(pos);
            if needed > until_end {
                pos = pos.checked_add(until_end)?;
            }
            pos = pos.checked_add(needed)?;
        }
        Some(pos)
    }

    /// Writes all of `messages` (each in one slice or in parts, see [`MessageBytes`]) and
    /// publishes them with one store if they all fit right now; else publishes nothing at all,
    /// not even padding (`Ok(false)`). Either way the write
    /// position is then where [`end_position`](Self::end_position) said, or where it was.
    /// Messages that need more than the ring's capacity together never fit at once.
    pub fn try_write_all<M: MessageBytes>(&mut self, messages: &[M]) -> Result<bool, RingError> {
        let mut lens = Vec::with_capacity(messages.len());
        for message in messages {
            // A length past usize is longer than any ring: refused as too large.
            let len = message.total_len().unwrap_or(usize::MAX);
            self.check_len(len)?;
            lens.push(len);
        }
        let Some(end) = self.end_position(lens.iter().copied()) else {
            return Ok(false);
        };
        let wanted = end - self.staged_pos;
        if wanted > self.ring.capacity {
            return Ok(false);
        }
        let mut free = self.free_space(wanted)?;
        let saved = self.staged();
        for (message, &len) in messages.iter().zip(&lens) {
            let fill = |buf: &mut [u8]| {
                message.copy_into(buf);
                len
            };
            if !self.stage_frame(KIND_DATA, len, fill, &mut free) {
                // Staged bytes are not published: forgetting them undoes everything.
                self.unstage(saved);
                return Ok(false);
            }
        }
        debug_assert_eq!(self.staged_pos, end);
        self.publish();
        Ok(true)
    }
}

impl RingReader {
    /// Publishes `position` as the consumer's read position (one store), and `messages_read`.
    fn publish_read(&mut self, position: u64, messages_read: u64) {
        let h = self.ring.consumer_side().0;
        h.messages_read
            .store(messages_read, std::sync::atomic::Ordering::Relaxed);
        handshake::publish(&h.read_pos, position);
        self.published_pos = position;
        self.freed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::pair;
    use super::super::SharedRing;
    use super::*;
    use crate::wire::Role;

    /// Every item `try_read_ahead` hands out until nothing new: positions and message bytes.
    fn read_all(r: &mut RingReader) -> Vec<(u64, u64, Option<Vec<u8>>)> {
        let (mut seen, mut scratch) = (Vec::new(), Vec::new());
        while r
            .try_read_ahead(3, &mut scratch, |from, to, item| {
                let bytes = match item {
                    AheadItem::Message(bytes) => Some(bytes.to_vec()),
                    _ => None,
                };
                seen.push((from, to, bytes));
            })
            .expect("read ahead")
            > 0
        {}
        seen
    }

    #[test]
    fn only_ends_of_items_read_ahead_are_released_and_a_new_reader_gets_the_rest() {
        let (mut w, mut r, memfd) = pair(4096);
        let messages: Vec<Vec<u8>> = (0..12u8).map(|i| vec![i; 100 + 20 * i as usize]).collect();
        // Half a lap first, so that the items wrap (padding folded into the next item).
        assert!(w.try_write_all(&[&[0; 2000][..]]).expect("write"));
        assert_eq!(read_all(&mut r).len(), 1);
        r.release_to(r.position()).expect("release the first");
        let refs: Vec<&[u8]> = messages.iter().map(|m| &m[..]).collect();
        let mut written = 0;
        while written < refs.len() && w.try_write_all(&refs[written..written + 1]).expect("w") {
            written += 1;
        }
        let items = read_all(&mut r);
        assert_eq!(items.len(), written);
        assert!(written > 6, "{written} written");
        for (i, item) in items.iter().enumerate() {
            assert_eq!(item.2.as_deref(), Some(&messages[i][..]));
        }
        let released = items[0].0;
        for bad in [
            items[3].1 - 1,
            items[3].1 + 8,
            r.position() + 8,
            released - 8,
            u64::MAX,
        ] {
            assert!(r.release_to(bad).is_err(), "{bad} accepted");
        }
        r.release_to(items[3].1).expect("release four");
        assert!(r.release_to(items[2].1).is_err(), "released twice");
        // A new reader (the next consumer) starts at the released position, with the same
        // items and positions.
        let ring = SharedRing::open(memfd.share(Some(Role::Consumer)).expect("share"), 4096)
            .expect("open");
        drop(r);
        let mut next = RingReader::new(ring).expect("reader");
        assert_eq!(next.position(), items[3].1);
        assert_eq!(read_all(&mut next), items[4..].to_vec());
    }

    #[test]
    fn a_run_that_does_not_fit_publishes_nothing_not_even_its_padding() {
        let (mut w, mut r, _memfd) = pair(4096);
        assert!(w.try_write_all(&[&[1; 3000][..]]).expect("write"));
        assert_eq!(read_all(&mut r).len(), 1);
        // The 3000-byte message is read, not released; after a 500-byte one, the padding to
        // the lap's end would fit, the three 900-byte messages after it would not.
        assert!(w.try_write_all(&[&[2; 500][..]]).expect("write"));
        let before = w.write_pos;
        let run: [&[u8]; 3] = [&[3; 900], &[4; 900], &[5; 900]];
        let end = w.end_position(run.iter().map(|m| m.len())).expect("end");
        assert!(!w.try_write_all(&run).expect("try"));
        assert_eq!((w.write_pos, w.staged_pos), (before, before));
        let items = read_all(&mut r);
        assert_eq!(items.len(), 1, "only the 500-byte message: {items:?}");
        r.release_to(items[0].1).expect("release");
        assert!(w.try_write_all(&run).expect("try"));
        assert_eq!(w.write_pos, end);
        let items = read_all(&mut r);
        assert_eq!(items.len(), 3);
        assert_eq!(items[2].1, end);
    }

    #[test]
    fn a_message_written_in_parts_is_read_as_one_and_a_taken_buffer_is_kept() {
        let (mut w, mut r, _memfd) = pair(4096);
        let (a, b, c) = (vec![1u8; 700], vec![2u8; 5], vec![3u8; 1300]);
        let parts: [&[u8]; 3] = [&a, &b, &c];
        let run: [&[&[u8]]; 2] = [&parts, &parts[1..2]];
        let end = w.end_position([2005, 5]).expect("end");
        assert!(w.try_write_all(&run).expect("write"));
        assert_eq!(w.write_pos, end);
        let (mut kept, mut scratch) = (Vec::new(), Vec::new());
        let n = r
            .try_read_ahead(8, &mut scratch, |_, _, item| {
                if let AheadItem::Message(bytes) = item {
                    kept.push(std::mem::take(bytes));
                }
            })
            .expect("read");
        assert_eq!(n, 2);
        assert_eq!(kept[0], [&a[..], &b[..], &c[..]].concat());
        assert_eq!(kept[1], b);
    }
}
