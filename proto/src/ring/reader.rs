//! The consumer's side of a ring: finding published frames (by seal or by position), copying
//! them out, committing the read position, waking the producer.

use std::collections::VecDeque;
use std::os::fd::BorrowedFd;
use std::sync::atomic::Ordering;

use super::files::{check_positions, count_wakeup, SharedRing};
use super::handshake;
use super::layout::{first_ticket, CACHE_LINE, KIND_DATA, KIND_END_OF_STREAM, KIND_LOST, KIND_PAD};
use super::mapping::load_acquire;
use super::RingError;

/// What the consumer found in the ring.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// A message was copied into the caller's buffer.
    Message,
    /// The producer closed cleanly here.
    EndOfStream,
    /// Nothing to read right now.
    Empty,
}

/// Where a message read from the ring goes.
pub(super) enum Sink<'a, 'b> {
    Buffer(&'a mut Vec<u8>),
    Slice(&'a mut SliceSink<'b>),
    /// The fd, and where to say how many bytes the message had.
    Fd(BorrowedFd<'a>, &'a mut usize),
    /// Left in the ring: where the payload starts in the data area, its length, and the
    /// stream position of its frame.
    Peek(&'a mut Option<(usize, usize, u64)>),
}

/// Where [`RingReader::try_read_into_slice`] copies a message: into `buf` when it fits, else
/// into `spill`. One reference to it is all the read passes along.
#[derive(Debug)]
pub struct SliceSink<'a> {
    /// The caller's buffer.
    pub buf: &'a mut [u8],
    /// Takes a message longer than `buf` (its contents replaced).
    pub spill: &'a mut Vec<u8>,
    /// After a message: its length if it went to `buf`, `None` if it went to `spill`.
    pub fitted: Option<usize>,
}

/// What a batch read found.
#[derive(Debug, PartialEq, Eq)]
pub enum BatchOutcome {
    /// This many messages were handed over.
    Messages(usize),
    /// The producer closed cleanly here (nothing before it in this batch).
    EndOfStream,
    /// Nothing to read right now.
    Empty,
}

/// One item of [`RingReader::try_read_batch_confirmed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadItem<'a> {
    /// A message's payload (copied out of the ring already).
    Message(&'a [u8]),
    /// The producer closed cleanly here.
    EndOfStream,
    /// Padding at the end of a lap with nothing published after it yet.
    Padding,
}

/// Consuming side; resumes at the `read_pos` the previous consumer published.
pub struct RingReader {
    pub(super) ring: SharedRing,
    pub(super) read_pos: u64,
    /// The producer position seen last: while it is ahead of `read_pos` there is no need to
    /// load the shared one again.
    pub(super) write_seen: u64,
    pub(super) messages_read: u64,
    /// Messages the producer said this consumer missed (LOST frames read so far).
    pub(super) missed: u64,
    /// The read position last stored in the header.
    pub(super) published_pos: u64,
    /// Space was freed since the last `take_producer_waiting`.
    pub(super) freed: bool,
    /// Seals only: empty polls since the producer's position was last loaded.
    pub(super) polls_unsealed: u32,
    /// Seals only: the last frame came by its seal, so the next may be the rest of the same
    /// publish (a batch), which only the position shows.
    pub(super) position_due: bool,
    /// Layout 3: the producer's sleep ticket this reader last woke it for.
    pub(super) woken_ticket: u32,
    /// The ticket of this reader's last sleep.
    pub(super) sleep_ticket: u32,
    /// Items read ahead and not released ([`RingReader::try_read_ahead`]): each one's end
    /// (stream position) and the count of messages read up to it, in order; the positions a
    /// release may name.
    pub(super) ahead: VecDeque<(u64, u64)>,
    /// The message [`RingReader::try_peek`] returned last: the stream positions of its frame
    /// and of the frame's end, and the count of messages read before it, for
    /// [`RingReader::unpeek`] to go back to. Kept here, never read back from the ring, so that
    /// nothing a producer writes meanwhile can move where the reader goes back to.
    pub(super) peeked: Option<(u64, u64, u64)>,
}

/// Whether a poll must load the producer's position even when seals say nothing came.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Poll {
    /// Seals may stand in for it (it is loaded once in [`POSITION_EVERY`] polls).
    Quick,
    /// Before sleeping: the sleep protocol pairs with the position, not with seals.
    Exact,
}

/// A consumer watching seals still loads the position once in this many empty polls (and
/// always before it sleeps), so that a frame whose seal never comes (its producer was killed
/// between storing the position and the seal) is read all the same. Not more often: each load
/// takes the position's line from the producer, whose next seal then waits for it back.
pub(super) const POSITION_EVERY: u32 = 1024;

impl RingReader {
    /// A reader on `ring`, resuming at the consumer's published position; `Rejected` if this
    /// side may not write the consumer's fields, `Corrupt` if the positions are inconsistent.
    pub fn new(ring: SharedRing) -> Result<RingReader, RingError> {
        if !ring.consumer_writable() {
            return Err(RingError::Rejected(
                "the ring's ack fd is read-only: this side may only read it".into(),
            ));
        }
        let consumer = ring.consumer_side().0;
        let read_pos = load_acquire(&consumer.read_pos);
        let write_pos = load_acquire(&ring.header().producer.write_pos);
        check_positions(read_pos, write_pos, &ring)?;
        // Every way this reader reads skips padding wherever it lies, and every way gains from
        // large frames reusing the lap's first slots: measured on the AMD EPYC VM (`shmem-bench
        // --only ours,iceoryx2 --sizes 1048576`, the core-to-core round trip taken beside each
        // run), 1 MiB `recv_into` 6.6 -> 17.6-24.8 GB/s while the two vCPUs shared a cache
        // (75-90 ns round trip) and 3-6 GB/s either way when they did not (450 ns).
        consumer.accepts_rewinds.store(1, Ordering::Relaxed);
        Ok(RingReader {
            read_pos,
            write_seen: write_pos,
            messages_read: consumer.messages_read.load(Ordering::Relaxed),
            woken_ticket: 0,
            sleep_ticket: first_ticket(),
            missed: 0,
            published_pos: read_pos,
            freed: false,
            polls_unsealed: 0,
            position_due: false,
            ahead: VecDeque::new(),
            peeked: None,
            ring,
        })
    }

    /// Messages lost to this consumer so far (slow-consumer policy `drop`), as the producer
    /// reported them in the stream.
    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// The mapped ring this reader reads.
    pub fn ring(&self) -> &SharedRing {
        &self.ring
    }

    /// Published bytes not yet read: the frame whose seal says it came, else what the
    /// producer's position says (loaded afresh, or for a quick poll at least now and then).
    pub(super) fn unread(&mut self, poll: Poll) -> Result<u64, RingError> {
        if self.write_seen == self.read_pos {
            // Probably empty, so polling. Ask for the lines the next frame lands in (a small
            // frame often straddles two) together with the producer's position, so that when
            // it comes both arrive at once instead of one after the other; with seals, the
            // frame's own first line says whether it came, and the position is not needed.
            let capacity = self.ring.capacity;
            let offset = self.ring.offset_of(self.read_pos);
            self.ring.prefetch((offset + CACHE_LINE).min(capacity - 1));
            match self.ring.format.seal(self.read_pos) {
                Some(seal) => {
                    if let Some((size, span)) = self.sealed_frame(offset, seal) {
                        // Without a span (a huge publish) the rest of it is for the position
                        // to say, at the next poll.
                        self.position_due = span.is_none();
                        let published = span.unwrap_or(size);
                        // read_pos <= MAX_POSITION and published <= capacity; checked all
                        // the same, as the seal and span are a peer's to write.
                        self.write_seen =
                            self.read_pos.checked_add(published).ok_or_else(|| {
                                RingError::Corrupt("sealed frame past the last position".into())
                            })?;
                        return Ok(published);
                    }
                    // Not sealed yet. Loading the position now would cost a transfer of
                    // its line, and another of the frame's when the seal lands after it.
                    self.polls_unsealed += 1;
                    let quick = poll == Poll::Quick && !self.position_due;
                    if quick && self.polls_unsealed < POSITION_EVERY {
                        return Ok(0);
                    }
                }
                None => self.ring.prefetch(offset),
            }
        }
        self.polls_unsealed = 0;
        self.position_due = false;
        let write_pos = handshake::observe(&self.ring.header().producer.write_pos);
        let unread = check_positions(self.read_pos, write_pos, &self.ring)?;
        self.write_seen = write_pos;
        Ok(unread)
    }

    /// If the frame at `offset` carries `seal` (it is published): its size, and the bytes its
    /// publish covers if the span says (both checked against the ring; a frame that fails is
    /// left to the position check to report).
    pub(super) fn sealed_frame(&self, offset: u64, seal: u64) -> Option<(u64, Option<u64>)> {
        if load_acquire(self.ring.data_u64(offset + 8)) != seal {
            return None;
        }
        let len = u64::from(self.ring.data_u32(offset).load(Ordering::Relaxed));
        let size = self.ring.frame_len(len);
        let span = u64::from(self.ring.data_u32(offset + 4).load(Ordering::Relaxed) >> 16)
            * self.ring.format.unit;
        let span = (span >= size && span <= self.ring.capacity).then_some(span);
        (size <= self.ring.capacity - offset).then_some((size, span))
    }

    /// Like `unread`, but trusts the position seen last while it still shows unread bytes.
    pub(super) fn unread_cached(&mut self) -> Result<u64, RingError> {
        if self.write_seen > self.read_pos {
            return Ok(self.write_seen - self.read_pos);
        }
        self.unread(Poll::Quick)
    }

    /// True if there is something to read (or the ring is inconsistent, which the next read
    /// reports).
    #[inline]
    pub fn has_unread(&mut self) -> bool {
        self.unread(Poll::Quick).map_or(true, |n| n > 0)
    }

    /// Copies the next message into `out` (replacing its contents), skipping padding.
    #[inline]
    pub fn try_read_into(&mut self, out: &mut Vec<u8>) -> Result<ReadOutcome, RingError> {
        if self.try_read_into_fast(out) {
            return Ok(ReadOutcome::Message);
        }
        self.read_into_slow(out)
    }

    /// [`try_read_into`](Self::try_read_into) where its fast path (`single.rs`) does not
    /// apply.
    #[inline(never)]
    fn read_into_slow(&mut self, out: &mut Vec<u8>) -> Result<ReadOutcome, RingError> {
        let mut unread = self.unread_cached()?;
        if unread == 0 {
            // Just loaded: a poll of an empty ring ends here, with one load (and prefetch).
            return Ok(ReadOutcome::Empty);
        }
        let outcome = self.next_frame(Sink::Buffer(out), &mut unread);
        self.commit();
        outcome
    }

    /// Copies the next message into `sink.buf` if it fits (`sink.fitted` is then its length),
    /// else into `sink.spill` (replacing its contents; `sink.fitted` is `None`), skipping
    /// padding: either way the message is read, once, and its space released.
    #[inline]
    pub fn try_read_into_slice(
        &mut self,
        sink: &mut SliceSink<'_>,
    ) -> Result<ReadOutcome, RingError> {
        if self.try_read_into_slice_fast(sink) {
            return Ok(ReadOutcome::Message);
        }
        self.read_into_slice_slow(sink)
    }

    /// [`try_read_into_slice`](Self::try_read_into_slice) where its fast path (`single.rs`)
    /// does not apply.
    #[inline(never)]
    fn read_into_slice_slow(&mut self, sink: &mut SliceSink<'_>) -> Result<ReadOutcome, RingError> {
        sink.fitted = None;
        let mut unread = self.unread_cached()?;
        if unread == 0 {
            return Ok(ReadOutcome::Empty);
        }
        let outcome = self.next_frame(Sink::Slice(sink), &mut unread);
        self.commit();
        outcome
    }

    /// The stream position this reader is at: the byte counter of the next frame, which
    /// equals the position last published between calls. It only grows, names each frame
    /// uniquely for the life of the ring, and is what a consumer that attaches next starts at.
    #[inline]
    pub fn position(&self) -> u64 {
        self.read_pos
    }

    /// Hands up to `max` available items (messages, end-of-stream marks, and padding read with
    /// nothing after it) to `each` in order, each with its stream positions (`from`, `to`: the
    /// reader's position before and after it, padding before it included, so that one item's
    /// `to` is the next one's `from` and every byte of the stream is in exactly one item), then asks
    /// `confirm` with their count. Only if it returns true is their space released (one
    /// store); otherwise the reader goes back to where it was, as if nothing had been read.
    /// `confirm` is not called when nothing was read.
    pub fn try_read_batch_confirmed(
        &mut self,
        max: usize,
        scratch: &mut Vec<u8>,
        mut each: impl FnMut(u64, u64, ReadItem<'_>),
        confirm: impl FnOnce(usize) -> bool,
    ) -> Result<usize, RingError> {
        let mut unread = self.unread(Poll::Quick)?;
        if unread == 0 {
            return Ok(0);
        }
        let saved = (self.messages_read, self.missed);
        let mut delivered = 0;
        while delivered < max {
            let from = self.read_pos;
            match self.next_frame(Sink::Buffer(scratch), &mut unread) {
                Ok(ReadOutcome::Message) => each(from, self.read_pos, ReadItem::Message(scratch)),
                Ok(ReadOutcome::EndOfStream) => each(from, self.read_pos, ReadItem::EndOfStream),
                // Padding skipped and nothing after it yet: an item of its own, so that the
                // positions stay contiguous whatever is released.
                Ok(ReadOutcome::Empty) if self.read_pos > from => {
                    each(from, self.read_pos, ReadItem::Padding);
                    delivered += 1;
                    break;
                }
                Ok(ReadOutcome::Empty) => break,
                Err(err) => {
                    self.rewind(saved);
                    return Err(err);
                }
            }
            delivered += 1;
        }
        if delivered == 0 {
            return Ok(0);
        }
        if confirm(delivered) {
            self.commit();
            Ok(delivered)
        } else {
            self.rewind(saved);
            Ok(0)
        }
    }

    /// Back to the last published position, forgetting what was read since (read ahead too).
    pub(super) fn rewind(&mut self, (messages_read, missed): (u64, u64)) {
        self.ahead.clear();
        self.peeked = None;
        self.read_pos = self.published_pos;
        self.messages_read = messages_read;
        self.missed = missed;
    }

    /// Writes the next message straight from the ring to `fd` (blocking until all of it is
    /// written), skipping padding: no copy in this process at all. `written` is set to the
    /// message's length when one was written.
    pub fn try_read_to_fd(
        &mut self,
        fd: BorrowedFd<'_>,
        written: &mut usize,
    ) -> Result<ReadOutcome, RingError> {
        let mut unread = self.unread_cached()?;
        if unread == 0 {
            return Ok(ReadOutcome::Empty);
        }
        let outcome = self.next_frame(Sink::Fd(fd, written), &mut unread);
        self.commit();
        outcome
    }

    /// Reads the frame at the local read position, out of `unread` published bytes, without
    /// publishing the new position.
    pub(super) fn next_frame(
        &mut self,
        mut sink: Sink<'_, '_>,
        unread: &mut u64,
    ) -> Result<ReadOutcome, RingError> {
        let capacity = self.ring.capacity;
        loop {
            if *unread == 0 {
                // The bytes counted so far are used up (possibly by padding just skipped):
                // only the producer's current position can say whether more came since.
                *unread = self.unread(Poll::Quick)?;
                if *unread == 0 {
                    return Ok(ReadOutcome::Empty);
                }
            }
            let offset = self.ring.offset_of(self.read_pos);
            let until_end = capacity - offset;
            if *unread < self.ring.format.unit {
                return Err(RingError::Corrupt(format!(
                    "{unread} unread bytes cannot hold a frame"
                )));
            }
            let len = u64::from(self.ring.data_u32(offset).load(Ordering::Relaxed));
            let kind =
                self.ring.data_u32(offset + 4).load(Ordering::Relaxed) & self.ring.format.kind_mask;
            let size = self.ring.frame_len(len);
            if size > *unread || size > until_end {
                return Err(RingError::Corrupt(format!(
                    "frame of {len} bytes at offset {offset} overruns the {} published bytes",
                    (*unread).min(until_end)
                )));
            }
            match kind {
                KIND_PAD if size != until_end => {
                    return Err(RingError::Corrupt(format!(
                        "padding at offset {offset} does not reach the end of the ring"
                    )));
                }
                KIND_PAD | KIND_END_OF_STREAM => {}
                KIND_LOST if len != 8 => {
                    return Err(RingError::Corrupt(format!(
                        "loss record of {len} bytes at offset {offset}"
                    )));
                }
                KIND_LOST => {
                    let word = |at| u32::from_le(self.ring.data_u32(at).load(Ordering::Relaxed));
                    let count_at = offset + self.ring.format.unit;
                    let (low, high) = (word(count_at), word(count_at + 4));
                    let count = u64::from(low) | (u64::from(high) << 32);
                    self.missed = self.missed.saturating_add(count);
                }
                KIND_DATA => {
                    let start = (offset + self.ring.format.unit) as usize;
                    match &mut sink {
                        Sink::Buffer(out) => self.copy_to_vec(start, len as usize, out),
                        Sink::Slice(sink) => self.copy_to_slice(start, len as usize, sink),
                        Sink::Fd(fd, written) => {
                            self.ring.write_out(start, len as usize, *fd)?;
                            **written = len as usize;
                        }
                        Sink::Peek(at) => **at = Some((start, len as usize, self.read_pos)),
                    }
                    self.messages_read = self.messages_read.saturating_add(1);
                }
                other => {
                    return Err(RingError::Corrupt(format!(
                        "unknown frame kind {other} at offset {offset}"
                    )))
                }
            }
            // size <= unread, and read_pos + unread is a position the checks accepted.
            self.read_pos = self.read_pos.checked_add(size).ok_or_else(|| {
                RingError::Corrupt(format!("frame at offset {offset} ends past 2^64"))
            })?;
            *unread -= size;
            match kind {
                KIND_DATA => return Ok(ReadOutcome::Message),
                KIND_END_OF_STREAM => return Ok(ReadOutcome::EndOfStream),
                _ => continue,
            }
        }
    }

    /// Copies the `len` payload bytes at data offset `start` into `sink.buf` if they fit
    /// (`sink.fitted` is then `len`), else into `sink.spill`. The caller has checked that they
    /// lie inside the data area.
    #[inline(always)]
    pub(super) fn copy_to_slice(&self, start: usize, len: usize, sink: &mut SliceSink<'_>) {
        match sink.buf.get_mut(..len) {
            Some(out) => {
                // SAFETY: the source range [start, start + len) lies inside the data area
                // (the caller's check), `out` is len writable bytes, and the two never overlap
                // (a `&mut [u8]` is never our shared mapping, which only ever lends raw
                // pointers and shared reads). A raw copy forms no reference to the shared
                // bytes: a hostile producer rewriting them while we copy only changes what we
                // receive.
                unsafe {
                    crate::copy::copy_raw(self.ring.data().add(start), out.as_mut_ptr(), len);
                }
                sink.fitted = Some(len);
            }
            None => {
                self.copy_to_vec(start, len, sink.spill);
                sink.fitted = None;
            }
        }
    }

    /// Copies the `len` payload bytes at data offset `start` into `out` (replacing its
    /// contents). The caller has checked that they lie inside the data area.
    #[inline(always)]
    pub(super) fn copy_to_vec(&self, start: usize, len: usize, out: &mut Vec<u8>) {
        out.clear();
        out.reserve(len);
        // SAFETY: the source range [start, start + len) lies inside the data area (the
        // caller's check: its frame's size <= until_end), `out` has room for len bytes after
        // reserve, and the two never overlap (private heap vs shared mapping). A raw copy
        // forms no reference to the shared bytes: a hostile producer rewriting them while we
        // copy only changes what we receive; we copy them out before looking at any.
        unsafe {
            crate::copy::copy_raw(self.ring.data().add(start), out.as_mut_ptr(), len);
            out.set_len(len);
        }
    }

    /// Publishes the local read position (releasing the space, and whatever was read ahead)
    /// with one store, if it moved: a poll of an empty ring writes nothing.
    #[inline]
    pub(super) fn commit(&mut self) {
        // Whatever was peeked is settled by any publish: nothing to give back any more.
        self.peeked = None;
        if self.read_pos == self.published_pos {
            return;
        }
        self.ahead.clear();
        let h = self.ring.consumer_side().0;
        h.messages_read.store(self.messages_read, Ordering::Relaxed);
        // Release suffices: the fence in `take_producer_waiting`, which callers run after every
        // read, orders it before the waiting-flag load.
        handshake::publish(&h.read_pos, self.read_pos);
        self.published_pos = self.read_pos;
        self.freed = true;
    }

    /// After a read: true if it freed space (a message, or only padding skipped) and the
    /// producer is asleep waiting for space, so it must be woken. Costs nothing when nothing
    /// was freed.
    #[inline]
    pub fn take_producer_waiting(&mut self) -> bool {
        if !std::mem::take(&mut self.freed) {
            return false;
        }
        let flag = &self.ring.header().producer_waiting.waiting;
        let wake = if self.ring.wakes_by_ticket() {
            handshake::take_ticket(flag, &mut self.woken_ticket)
        } else {
            handshake::take_waiting(flag)
        };
        if wake {
            count_wakeup(&self.ring.consumer_side().0.wakeups);
        }
        wake
    }

    /// Announces that the consumer is about to block. Returns false (do not sleep) if data
    /// arrived in the meantime.
    pub fn prepare_to_sleep(&mut self) -> Result<bool, RingError> {
        self.sleep_ticket = handshake::next_ticket(self.sleep_ticket);
        handshake::prepare_to_sleep(
            self,
            |r| r.ring.consumer_side().1,
            |r| r.sleep_ticket,
            |r| Ok(r.unread(Poll::Exact)? > 0),
        )
    }

    /// After waking (or deciding not to sleep): withdraws the consumer's waiting flag.
    pub fn done_sleeping(&self) {
        handshake::done_sleeping(self.ring.consumer_side().1);
    }
}
