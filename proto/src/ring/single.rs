//! Single messages' fast paths on both sides of a ring: the common case of one data frame that
//! lies inside the current lap and inside the free space the writer already knows of (or the
//! published bytes the reader already knows of), bounded once, with no padding, no rewind and
//! no loop. Anything else goes the general way (`RingWriter::try_write_up_to_slow`,
//! `RingReader::next_frame`), which reads or reports it.

use std::sync::atomic::Ordering;

use super::handshake;
use super::layout::KIND_DATA;
use super::writer::REWIND_MIN_FRAME;
use super::{RingError, RingReader, RingWriter};

impl RingWriter {
    /// Reserves room for up to `max` payload bytes and lets `fill` write the message straight
    /// into the ring, returning its length (0 of a non-empty reservation: no message).
    /// `Ok(None)` if there is no room for `max` bytes right now (and `fill` was not called),
    /// else the length written.
    #[inline]
    pub fn try_write_up_to(
        &mut self,
        max: usize,
        fill: impl FnOnce(&mut [u8]) -> usize,
    ) -> Result<Option<usize>, RingError> {
        let capacity = self.ring.capacity;
        let offset = self.ring.offset_of(self.staged_pos);
        // Saturating: a huge `max` gives a huge size, which the general path refuses.
        let needed = self.ring.frame_len(max as u64);
        // read_floor <= staged_pos <= read_floor + capacity (see `free_space`).
        let cached_free = capacity - (self.staged_pos - self.read_floor);
        // Fits before the end of the lap (no padding) and in the free space seen last (no load
        // of the consumer's line); too small for a rewind; nothing staged before it. That
        // bounds `max` too: below REWIND_MIN_FRAME (< u32::MAX - unit) and at most
        // capacity - unit, so within `max_message_len`, which `check_len` would ask.
        if needed <= (capacity - offset).min(cached_free)
            && needed < REWIND_MIN_FRAME
            && self.staged_pos == self.write_pos
        {
            return Ok(Some(self.write_one(offset, max, fill)));
        }
        self.try_write_up_to_slow(max, fill)
    }

    /// Writes and publishes one data frame of up to `max` bytes at data offset `offset` (the
    /// staged position's), where a frame of `max` bytes fits before the end of the lap and in
    /// the free space, nothing else being staged: what `stage_frame` and `publish` do for it,
    /// without the checks the caller's bound makes redundant. Returns the length used.
    #[inline(always)]
    fn write_one(&mut self, offset: u64, max: usize, fill: impl FnOnce(&mut [u8]) -> usize) -> usize {
        let unit = self.ring.format.unit;
        // SAFETY: the frame [offset, offset + frame_len(max)) lies inside the data area (the
        // caller's bound), so the payload [offset + unit, offset + unit + max) does. Nothing
        // else in this process forms a reference to these bytes, and a hostile consumer
        // writing them only garbles its own message: as in `stage_frame`.
        let payload = unsafe {
            std::slice::from_raw_parts_mut(self.ring.data().add((offset + unit) as usize), max)
        };
        let used = fill(payload).min(max);
        if used == 0 && max > 0 {
            return 0;
        }
        let size = self.ring.frame_len(used as u64);
        let first = self.staged_pos;
        // first + size <= read_floor + capacity, read_floor <= MAX_POSITION (checked by
        // check_positions), which leaves room for far more: no wrap.
        self.staged_pos = first + size;
        self.write_pos = self.staged_pos;
        // used <= max < REWIND_MIN_FRAME: a u32.
        self.ring.data_u32(offset).store(used as u32, Ordering::Relaxed);
        let seal = self.ring.format.seal(first);
        // The span (layouts with seals): this frame alone.
        let span = if seal.is_some() {
            self.first_frame = size;
            self.span(size)
        } else {
            0
        };
        self.ring
            .data_u32(offset + 4)
            .store(KIND_DATA | span, Ordering::Relaxed);
        // Counters come from shared memory a peer may have set to anything: they stop at
        // u64::MAX rather than wrap (or panic).
        self.messages_written = self.messages_written.saturating_add(1);
        self.bytes_written = self.bytes_written.saturating_add(used as u64);
        // As in `publish`: the position (release), then the seal after it, then the counters.
        let h = &self.ring.header().producer;
        handshake::publish(&h.write_pos, self.write_pos);
        if let Some(seal) = seal {
            self.ring
                .data_u64(offset + 8)
                .store(seal, Ordering::Release);
        }
        h.messages_written
            .store(self.messages_written, Ordering::Relaxed);
        h.bytes_written.store(self.bytes_written, Ordering::Relaxed);
        used
    }
}

impl RingReader {
    /// The read fast path: if the frame at the read position is a data frame lying inside
    /// both the `unread` published bytes and the current lap, moves past it (unpublished, as
    /// `next_frame` does) and returns where its payload is (data offset, length). Bounding
    /// the frame by both once leaves two checks against a hostile producer (its kind, its
    /// size); anything else (padding, a mark, a loss record, a frame that fails a check) is
    /// `None`, for `next_frame` to read or report.
    #[inline(always)]
    pub(super) fn take_data_frame(&mut self, unread: u64) -> Option<(usize, usize)> {
        let ring = &self.ring;
        let unit = ring.format.unit;
        let offset = ring.offset_of(self.read_pos);
        // offset < capacity; offset + room <= capacity: every byte below lies in the data area.
        let room = unread.min(ring.capacity - offset);
        if room < unit {
            return None;
        }
        let len = ring.data_u32(offset).load(Ordering::Relaxed);
        let kind = ring.data_u32(offset + 4).load(Ordering::Relaxed) & ring.format.kind_mask;
        let size = ring.frame_len(u64::from(len));
        if kind != KIND_DATA || size > room {
            return None;
        }
        // size <= unread, and read_pos + unread is the position seen last, which never wraps
        // (`unread` checks it): no wrap.
        self.read_pos += size;
        self.messages_read = self.messages_read.saturating_add(1);
        // len < size <= capacity, which is mapped: both fit a usize.
        Some(((offset + unit) as usize, len as usize))
    }
}
