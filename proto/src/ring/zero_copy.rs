//! The ring's frame logic with the payload left in the ring for the caller: reserve/commit
//! for the producer ([`RingWriter::try_reserve`]) and peek/release for the consumer
//! ([`RingReader::try_peek`]). The client's loans and borrowed samples (`crate::zero_copy`)
//! are built on these; the copying paths stay as they are.

use std::sync::atomic::{AtomicU64, Ordering};

use super::layout::KIND_DATA;
use super::reader::Sink;
use super::{ReadOutcome, RingError, RingReader, RingWriter};

/// Where the payload of one data frame lies in a ring mapping.
///
/// Guarantees the ring gives with it: `ptr` is 8-byte aligned (frames start at multiples of
/// their 8- or 16-byte unit, one header unit before the payload, in a page-aligned data area)
/// and the frame extends at least to the next multiple of 8 bytes past `ptr + len`, inside the
/// data area (frames are padded to their unit). So every 8-byte word that holds a payload
/// byte is mapped and aligned, and can be read with an atomic load ([`Payload::load`]). The
/// pointer is valid as long as the ring's mapping is, i.e. while its writer or reader lives.
#[derive(Clone, Copy, Debug)]
pub struct Payload {
    /// First payload byte.
    pub ptr: *mut u8,
    /// Payload length.
    pub len: usize,
}

impl Payload {
    /// Copies payload bytes `from..from + out.len()` (cut at the end of the payload) into
    /// `out` with relaxed atomic 8-byte loads, and returns how many it copied.
    ///
    /// # Safety
    /// The ring mapping this payload came from must still be mapped (the writer or reader that
    /// made it is alive). Nothing else is needed: the loads are atomic, so a peer rewriting
    /// the bytes at the same time yields some value for each word, never undefined behaviour.
    pub unsafe fn load(&self, from: usize, out: &mut [u8]) -> usize {
        let n = out.len().min(self.len.saturating_sub(from));
        let out = &mut out[..n];
        let mut done = 0;
        while done < n {
            let at = from + done;
            let within = at % 8;
            // SAFETY: `at < len`, so the aligned word holding byte `at` is one the ring
            // guarantees mapped and 8-byte aligned (see the type's docs); the caller
            // guarantees the mapping is still there. An atomic load is sound whatever another
            // process writes to the word meanwhile, and on read-only memory (loads of at most
            // the pointer size are never turned into writes).
            let word = unsafe { AtomicU64::from_ptr(self.ptr.add(at - within).cast::<u64>()) }
                .load(Ordering::Relaxed)
                .to_ne_bytes();
            let take = (8 - within).min(n - done);
            out[done..done + take].copy_from_slice(&word[within..within + take]);
            done += take;
        }
        n
    }
}

/// What [`RingReader::try_peek`] found.
#[derive(Debug)]
pub enum Peeked {
    /// A message, left in the ring until [`RingReader::release`].
    Message(Payload),
    /// The producer closed cleanly here (already released).
    EndOfStream,
    /// Nothing to read right now.
    Empty,
}

impl RingWriter {
    /// Reserves a data frame of `len` payload bytes at the staged position and returns where
    /// its payload lies, for the caller to fill and then [`commit_reserved`] or
    /// [`abandon_reserved`]; nothing is visible to the consumer until the commit. `Ok(None)`
    /// if there is no room right now (padding in front of the frame may have been published,
    /// as by the other writes, so that the consumer passes it and frees the room).
    ///
    /// Until the commit or abandon, no other write may be made through this writer (the
    /// client's `Loan` holds the producer mutably borrowed for that). A reservation that is
    /// neither committed nor abandoned is harmless: the next write stages over it.
    ///
    /// [`commit_reserved`]: Self::commit_reserved
    /// [`abandon_reserved`]: Self::abandon_reserved
    pub fn try_reserve(&mut self, len: usize) -> Result<Option<Payload>, RingError> {
        self.check_len(len)?;
        self.rewind_if_room_at_start(self.ring.frame_len(len as u64))?;
        let mut free = self.free_space(self.room_for(len))?;
        let capacity = self.ring.capacity;
        let needed = self.ring.frame_len(len as u64);
        let until_end = capacity - self.ring.offset_of(self.staged_pos);
        // As in stage_frame: a frame that would wrap starts the next lap behind a PAD frame.
        if (needed > until_end && !self.stage_padding(&mut free)) || free < needed {
            self.publish();
            return Ok(None);
        }
        let offset = self.ring.offset_of(self.staged_pos) + self.ring.format.unit;
        // offset + len <= capacity: the frame fits before the end (checked above), so the
        // payload is inside the data area; `wrapping_add` only computes the address.
        Ok(Some(Payload {
            ptr: self.ring.data().wrapping_add(offset as usize),
            len,
        }))
    }

    /// Publishes the frame [`try_reserve`](Self::try_reserve) reserved for `len` bytes (the
    /// same `len`), whose payload the caller has written. `Corrupt` if the consumer's position
    /// turned inconsistent meanwhile (nothing is published then).
    pub fn commit_reserved(&mut self, len: usize) -> Result<(), RingError> {
        self.check_len(len)?;
        // The room was there at the reservation and the consumer only frees more (a read
        // position going backwards is reported by free_space), so this finds it again.
        let mut free = self.free_space(self.ring.frame_len(len as u64))?;
        // The payload is already in place: the fill only says how much of it is used.
        if !self.stage_frame(KIND_DATA, len, |_| len, &mut free) {
            self.abandon_reserved();
            return Err(RingError::Corrupt(
                "the room reserved for a message is gone".into(),
            ));
        }
        self.publish();
        Ok(())
    }

    /// Forgets a reservation: nothing of it (nor the padding staged in front of it) becomes
    /// visible, and the next write reuses the space.
    pub fn abandon_reserved(&mut self) {
        self.staged_pos = self.write_pos;
    }
}

impl RingReader {
    /// Finds the next message (skipping padding and loss records) and leaves it in the ring:
    /// its space is not released, to the producer, until [`release`](Self::release). An
    /// end-of-stream mark, or padding alone, is released at once, as by `try_read_into`.
    ///
    /// Until the release, no other read may be made through this reader (the client's
    /// `Sample` holds the consumer mutably borrowed for that); a release that never comes is
    /// made by the next read.
    pub fn try_peek(&mut self) -> Result<Peeked, RingError> {
        let mut unread = self.unread_cached()?;
        if unread == 0 {
            return Ok(Peeked::Empty);
        }
        let mut at = None;
        // A peek stops at the first message: only it counts in `messages_read`.
        let messages_before = self.messages_read;
        self.peeked = None;
        let outcome = self.next_frame(Sink::Peek(&mut at), &mut unread);
        match (outcome, at) {
            (Ok(ReadOutcome::Message), Some((start, len, frame))) => {
                self.peeked = Some((frame, self.read_pos, messages_before));
                Ok(Peeked::Message(Payload {
                    // `start + len` is inside the data area: next_frame checked the frame
                    // ends there.
                    ptr: self.ring.data().wrapping_add(start),
                    len,
                }))
            }
            (outcome, _) => {
                self.commit();
                match outcome? {
                    ReadOutcome::EndOfStream => Ok(Peeked::EndOfStream),
                    // A message always records where it is: this arm is only "empty".
                    ReadOutcome::Message | ReadOutcome::Empty => Ok(Peeked::Empty),
                }
            }
        }
    }

    /// Releases the message [`try_peek`](Self::try_peek) returned (and anything skipped before
    /// it): one store of the read position. Then [`take_producer_waiting`] says whether to
    /// wake the producer.
    ///
    /// [`take_producer_waiting`]: Self::take_producer_waiting
    pub fn release(&mut self) {
        // `commit` settles the peek too.
        self.commit();
    }

    /// Gives the message [`try_peek`](Self::try_peek) returned back unread: the next read
    /// (peek or copy) finds it again, as if it had not been read. Its space stays the
    /// consumer's, `messages_read` is as before the peek, and padding or loss records
    /// skipped on the way to it stay skipped (the losses stay counted once in
    /// [`missed`](Self::missed)) and are published as read: the published position is then
    /// the frame's, and a producer waiting for that room is to be woken
    /// ([`take_producer_waiting`](Self::take_producer_waiting)).
    ///
    /// The position gone back to is the one this reader recorded at the peek, never read
    /// back from the ring, and lies between the published position and the local one: a
    /// producer rewriting the frame meanwhile cannot move it, and the next read checks the
    /// frame afresh, as every read does. Does nothing if the last peek found no message or
    /// was released already, or if another read moved the reader since (which `try_peek`'s
    /// contract rules out; the client's `Sample` holds the consumer borrowed).
    pub fn unpeek(&mut self) {
        let Some((frame, end, messages_read)) = self.peeked.take() else {
            return;
        };
        // The reader is still just past the peeked frame, and nothing was published since
        // the peek: going back re-reads exactly that frame.
        if self.read_pos == end && self.published_pos <= frame {
            self.read_pos = frame;
            self.messages_read = messages_read;
            // Padding or a loss record skipped on the way is consumed: published, so that
            // the published position (what `position()` reports and the next consumer
            // starts at) is the given-back frame's, and the producer may reuse that room.
            self.commit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::pair;
    use super::super::SharedRing;
    use super::*;

    fn load_all(payload: Payload) -> Vec<u8> {
        let mut out = vec![0; payload.len];
        // SAFETY: the test's reader and writer (and so the mapping) outlive this call.
        assert_eq!(unsafe { payload.load(0, &mut out) }, payload.len);
        out
    }

    #[test]
    fn reserved_frames_round_trip_across_the_wrap_and_abandoned_ones_leave_nothing() {
        let (mut w, mut r, _fd) = pair(4096);
        for i in 0..3000usize {
            let len = i % 1500;
            let payload = w.try_reserve(len).expect("reserve").expect("room");
            // SAFETY: the reservation is inside the mapping and nobody else writes it.
            let buf = unsafe { std::slice::from_raw_parts_mut(payload.ptr, len) };
            buf.iter_mut()
                .enumerate()
                .for_each(|(j, b)| *b = (i ^ j) as u8);
            if i % 7 == 3 {
                w.abandon_reserved();
                assert!(matches!(r.try_peek().expect("peek"), Peeked::Empty));
                continue;
            }
            w.commit_reserved(len).expect("commit");
            let Peeked::Message(got) = r.try_peek().expect("peek") else {
                panic!("message {i} missing");
            };
            assert_eq!(got.len, len);
            let bytes = load_all(got);
            assert!(bytes.iter().enumerate().all(|(j, &b)| b == (i ^ j) as u8));
            // Partial loads at every alignment.
            for from in [0, 1, 7, 8, 9, len / 2, len] {
                let mut part = vec![0; 11];
                // SAFETY: as above.
                let n = unsafe { got.load(from, &mut part) };
                assert_eq!(n, 11.min(len.saturating_sub(from)));
                assert_eq!(&part[..n], &bytes[from.min(len)..from.min(len) + n]);
            }
            r.release();
        }
    }

    /// A message given back after padding (it did not fit before the end of the lap): the
    /// padding is consumed and published, so the published position is the message's and a
    /// reader that takes over the ring (the next consumer) starts at that message.
    #[test]
    fn a_message_given_back_after_padding_is_where_the_next_reader_starts() {
        let (mut w, mut r, memfd) = pair(4096);
        assert!(w.try_write_with(3000, |b| b.fill(1)).expect("write"));
        let mut out = Vec::new();
        assert_eq!(
            r.try_read_into(&mut out).expect("read"),
            ReadOutcome::Message
        );
        let before = r.published_pos;
        let second: Vec<u8> = (0..2000u32).map(|i| (i * 3) as u8).collect();
        assert!(w
            .try_write_with(2000, |b| b.copy_from_slice(&second))
            .expect("write"));
        let Peeked::Message(got) = r.try_peek().expect("peek") else {
            panic!("no message");
        };
        assert_eq!(load_all(got), second);
        r.unpeek();
        assert!(r.published_pos > before, "the padding is published");
        assert_eq!(r.published_pos, r.read_pos);
        assert_eq!(
            r.published_pos % 4096,
            0,
            "at the lap's start, where the message is"
        );
        drop(r);
        let fd = memfd.share(None).expect("share");
        let mut next = RingReader::new(SharedRing::open(fd, 4096).expect("open")).expect("reader");
        assert_eq!(
            next.try_read_into(&mut out).expect("read"),
            ReadOutcome::Message
        );
        assert_eq!(out, second);
    }

    #[test]
    fn an_unpeeked_message_is_read_again_whole_and_keeps_its_space() {
        let (mut w, mut r, _fd) = pair(4096);
        let big: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        // A loss record in front, counted once whatever is given back.
        assert!(w.try_write_after_gap(5, &big).expect("write"));
        assert!(w.try_write_with(10, |b| b.fill(9)).expect("write"));
        let (published, messages) = (r.published_pos, r.messages_read);
        let Peeked::Message(got) = r.try_peek().expect("peek") else {
            panic!("no message");
        };
        assert_eq!(load_all(got), big);
        assert_eq!(r.missed(), 5);
        let past = r.position();
        r.unpeek();
        // The message is not released (no room for another like it), the counts are as
        // before; the loss record in front of it is read and published.
        assert!(!r.take_producer_waiting());
        assert!(r.published_pos > published);
        assert_eq!(r.published_pos, r.read_pos);
        assert_eq!(r.messages_read, messages);
        assert_eq!(r.missed(), 5);
        assert!(r.position() < past);
        assert!(w.try_reserve(3000).expect("reserve").is_none());
        // A second unpeek (nothing peeked) does nothing.
        r.unpeek();
        assert!(r.position() < past);
        // Read again by the next peek, and by a copying read after another give-back.
        for copy in [false, true] {
            if copy {
                let mut out = Vec::new();
                assert_eq!(
                    r.try_read_into(&mut out).expect("read"),
                    ReadOutcome::Message
                );
                assert_eq!(out, big);
                break;
            }
            let Peeked::Message(again) = r.try_peek().expect("peek") else {
                panic!("the message given back is gone");
            };
            assert_eq!(load_all(again), big);
            assert_eq!(r.position(), past);
            r.unpeek();
        }
        assert_eq!(r.missed(), 5);
        assert_eq!(r.messages_read, messages + 1);
        let mut out = Vec::new();
        assert_eq!(
            r.try_read_into(&mut out).expect("read"),
            ReadOutcome::Message
        );
        assert_eq!(out, [9; 10]);
    }

    #[test]
    fn messages_given_back_across_the_wrap_come_again_in_order() {
        let (mut w, mut r, _fd) = pair(4096);
        let mut next_read = 0usize;
        for i in 0..3000usize {
            let fill = |b: &mut [u8]| {
                b.iter_mut()
                    .enumerate()
                    .for_each(|(j, x)| *x = (i ^ j) as u8)
            };
            while !w.try_write_with(i % 1500, fill).expect("write") {
                // Full: read one, given back first, then released.
                for release in [false, true] {
                    let Peeked::Message(got) = r.try_peek().expect("peek") else {
                        panic!("message {next_read} missing");
                    };
                    let bytes = load_all(got);
                    assert_eq!(bytes.len(), next_read % 1500);
                    assert!(bytes
                        .iter()
                        .enumerate()
                        .all(|(j, &b)| b == (next_read ^ j) as u8));
                    if release {
                        r.release();
                    } else {
                        r.unpeek();
                    }
                }
                next_read += 1;
            }
        }
    }

    #[test]
    fn a_frame_rewritten_while_given_back_is_checked_again() {
        let (mut w, mut r, _fd) = pair(4096);
        assert!(w.try_write_with(100, |b| b.fill(1)).expect("write"));
        let at = r.position();
        assert!(matches!(r.try_peek().expect("peek"), Peeked::Message(_)));
        // While the message is held, a hostile producer makes the frame's length overrun the
        // ring: the position given back to is the one the reader recorded, not one worked out
        // from the frame now, and the next read checks the frame as every read does.
        w.ring
            .data_u32(w.ring.offset_of(at))
            .store(u32::MAX - 64, Ordering::Relaxed);
        r.unpeek();
        assert_eq!(r.position(), at);
        assert!(matches!(r.try_peek(), Err(RingError::Corrupt(_))));
        assert_eq!(r.position(), at);
        let mut out = Vec::new();
        assert!(matches!(
            r.try_read_into(&mut out),
            Err(RingError::Corrupt(_))
        ));
    }

    #[test]
    fn a_peeked_message_keeps_its_space_until_released() {
        let (mut w, mut r, _fd) = pair(4096);
        assert!(w.try_reserve(3000).expect("reserve").is_some());
        w.commit_reserved(3000).expect("commit");
        assert!(matches!(r.try_peek().expect("peek"), Peeked::Message(_)));
        assert!(w.try_reserve(3000).expect("reserve").is_none());
        r.release();
        assert!(w.try_reserve(3000).expect("reserve").is_some());
    }
}
