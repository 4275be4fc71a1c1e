//! Single messages' fast paths on both sides of a ring: the common case of one data frame that
//! lies inside the current lap and inside the free space the writer already knows of (or the
//! published bytes the reader already knows of), bounded once, with no padding, no rewind and
//! no loop. Anything else goes the general way (`RingWriter::try_write_up_to_slow`,
//! `RingReader::next_frame`), which reads or reports it.

use std::sync::atomic::Ordering;

use super::layout::{CACHE_LINE, KIND_DATA};
use super::mapping::load_acquire;
use super::writer::REWIND_MIN_FRAME;
use super::{RingError, RingReader, RingWriter, SliceSink};

// A fast-path frame is smaller than REWIND_MIN_FRAME: its span (in units of 8 or 16 bytes)
// always fits the header's 16 bits.
const _: () = assert!(REWIND_MIN_FRAME / 8 <= 0xffff);

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
        match self.try_write_up_to_fast(max, fill) {
            Ok(used) => Ok(Some(used)),
            Err(fill) => self.try_write_up_to_slow(max, fill),
        }
    }

    /// [`try_write_up_to`](Self::try_write_up_to)'s fast path alone, for a caller with a
    /// general path of its own: writes and publishes the message and returns its length if
    /// its frame fits before the end of the lap and in the free space this writer already
    /// knows of (and is smaller than a rewind), else gives `fill` back, not called, with
    /// nothing changed. Cannot fail: it loads nothing the consumer writes.
    #[inline(always)]
    pub fn try_write_up_to_fast<F: FnOnce(&mut [u8]) -> usize>(
        &mut self,
        max: usize,
        fill: F,
    ) -> Result<usize, F> {
        // Too large for a rewind (or for a u32) goes the general way: its size is then a u32's.
        if max as u64 >= REWIND_MIN_FRAME {
            return Err(fill);
        }
        let capacity = self.ring.capacity;
        let offset = self.ring.offset_of(self.staged_pos);
        let needed = self.ring.format.frame_len_u32(max as u32);
        // read_floor <= staged_pos <= read_floor + capacity (see `free_space`).
        let cached_free = capacity - (self.staged_pos - self.read_floor);
        // Fits before the end of the lap (no padding) and in the free space seen last (no load
        // of the consumer's line); smaller than a rewind needs; nothing staged before it. That
        // bounds `max` too: below REWIND_MIN_FRAME (< u32::MAX - unit) and at most
        // capacity - unit, so within `max_message_len`, which `check_len` would ask.
        if needed <= (capacity - offset).min(cached_free)
            && needed < REWIND_MIN_FRAME
            && self.staged_pos == self.write_pos
        {
            return Ok(self.write_one(offset, max, fill));
        }
        Err(fill)
    }

    /// Writes and publishes one data frame of up to `max` bytes at data offset `offset` (the
    /// staged position's), where a frame of `max` bytes fits before the end of the lap and in
    /// the free space, nothing else being staged: what `stage_frame` and `publish` do for it,
    /// without the checks the caller's bound makes redundant. Returns the length used.
    #[inline(always)]
    fn write_one(
        &mut self,
        offset: u64,
        max: usize,
        fill: impl FnOnce(&mut [u8]) -> usize,
    ) -> usize {
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
        // used <= max < REWIND_MIN_FRAME: a u32.
        let size = self.ring.format.frame_len_u32(used as u32);
        let first = self.staged_pos;
        // first + size <= read_floor + capacity, read_floor <= MAX_POSITION (checked by
        // check_positions), which leaves room for far more: no wrap.
        self.staged_pos = first + size;
        self.write_pos = self.staged_pos;
        self.ring
            .data_u32(offset)
            .store(used as u32, Ordering::Relaxed);
        let seal = self.ring.format.seal(first);
        // The span (layouts with seals): this frame alone.
        let span = if seal.is_some() {
            self.first_frame = size;
            // size <= needed < REWIND_MIN_FRAME: fewer than 0xffff units (see the assertion
            // above), which `span` need not check.
            ((size >> self.ring.format.unit.trailing_zeros()) as u32) << 16
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
        self.publish_position(offset, seal);
        used
    }
}

impl RingReader {
    /// [`try_read_into`](Self::try_read_into)'s fast path alone, for a caller with a general
    /// path of its own: true if it read a message into `out` (replacing its contents) and
    /// released its space; false if it does not apply (see `take_data_frame`), with nothing
    /// read or changed: the ring may be empty, or hold something else first, or be corrupt,
    /// which `try_read_into` then says. Cannot fail.
    #[inline(always)]
    pub fn try_read_into_fast(&mut self, out: &mut Vec<u8>) -> bool {
        let Some((start, len)) = self.take_data_frame() else {
            return false;
        };
        self.copy_to_vec(start, len, out);
        self.commit();
        true
    }

    /// The fast path for a caller with raw memory and a general path of its own (the C
    /// binding): if the next message is a data frame known to be published, inside the lap
    /// (see `data_frame_ahead`), and no longer than `capacity`, copies it to `buf`, releases
    /// its space and returns its length; else `None`, with nothing read (a longer message is
    /// left for the general path, which spills it), and it cannot fail.
    ///
    /// # Safety
    /// `buf` is not NULL and points to `capacity` bytes writable for the whole call, which
    /// nothing else reads or writes meanwhile (they are not this ring's mapping).
    #[inline(always)]
    pub unsafe fn try_read_into_raw_fast(
        &mut self,
        buf: *mut u8,
        capacity: usize,
    ) -> Option<usize> {
        let (offset, len, size) = self.data_frame_ahead()?;
        if len as usize > capacity {
            return None;
        }
        let (start, len) = self.took(offset, len, size);
        // SAFETY: the source [start, start + len) lies inside the data area (its frame ends
        // inside the lap: `data_frame_ahead`); `buf` holds capacity >= len writable bytes
        // that do not overlap the mapping (the caller's contract). A raw copy forms no
        // reference to the shared bytes: a hostile producer rewriting them while we copy only
        // changes what we receive.
        unsafe { crate::copy::copy_raw(self.ring.data().add(start), buf, len) };
        self.commit();
        Some(len)
    }

    /// [`try_read_into_slice`](Self::try_read_into_slice)'s fast path alone, as
    /// [`try_read_into_fast`](Self::try_read_into_fast) is `try_read_into`'s.
    #[inline(always)]
    pub fn try_read_into_slice_fast(&mut self, sink: &mut SliceSink<'_>) -> bool {
        let Some((start, len)) = self.take_data_frame() else {
            return false;
        };
        self.copy_to_slice(start, len, sink);
        self.commit();
        true
    }

    /// The read fast path: if the frame at the read position is a data frame known to be
    /// published (inside the published bytes seen last, or carrying its seal) and lying inside
    /// the current lap, moves past it (unpublished, as `next_frame` does) and returns where its
    /// payload is (data offset, length). Anything else is `None`; see `data_frame_ahead`.
    #[inline(always)]
    pub(super) fn take_data_frame(&mut self) -> Option<(usize, usize)> {
        let (offset, len, size) = self.data_frame_ahead()?;
        Some(self.took(offset, len, size))
    }

    /// The frame at the read position if it is a data frame known to be published and lying
    /// inside the current lap: its data offset, payload length and size; nothing is read.
    /// Bounding the frame by both once leaves two checks against a hostile producer (its
    /// kind, its size); anything else (an empty ring, padding, a mark, a loss record, a frame
    /// that fails a check, a layout without seals once caught up) is `None`, for `unread` and
    /// `next_frame` to read or report. All it may change is what a seal said was published
    /// (as `unread` would record it), never the read position.
    #[inline(always)]
    fn data_frame_ahead(&mut self) -> Option<(u64, u32, u64)> {
        let ring = &self.ring;
        let capacity = ring.capacity;
        let offset = ring.offset_of(self.read_pos);
        let until_end = capacity - offset;
        // A frame header lies inside the data area wherever it starts: offset is a multiple
        // of the unit (positions are checked to be), and so is the capacity.
        let word = |at| ring.data_u32(at).load(Ordering::Relaxed);
        let cached = self.write_seen - self.read_pos;
        if cached > 0 {
            // Published bytes seen last, as in `unread_cached`.
            let (len, kind) = (word(offset), word(offset + 4) & ring.format.kind_mask);
            let size = ring.format.frame_len_u32(len);
            // size >= unit, so the frame's header is inside the room too.
            if kind != KIND_DATA || size > cached.min(until_end) {
                return None;
            }
            return Some((offset, len, size));
        }
        // Caught up: the frame's seal says whether it came, as in `unread` (which also
        // prefetches the line after the seal's, where a small frame's tail often lies).
        let seal = ring.format.seal(self.read_pos)?;
        ring.prefetch((offset + CACHE_LINE).min(capacity - 1));
        if load_acquire(ring.data_u64(offset + 8)) != seal {
            return None;
        }
        let (len, kind_word) = (word(offset), word(offset + 4));
        let size = ring.format.frame_len_u32(len);
        if kind_word & ring.format.kind_mask != KIND_DATA || size > until_end {
            return None;
        }
        // What the publish covers, if its span says (else the position will, at the next
        // poll), as in `unread`; a seal and span are a peer's to write, so checked.
        let span = u64::from(kind_word >> 16) * ring.format.unit;
        let span = (span >= size && span <= capacity).then_some(span);
        self.write_seen = self.read_pos.checked_add(span.unwrap_or(size))?;
        self.position_due = span.is_none();
        Some((offset, len, size))
    }

    /// Moves past the data frame of `size` bytes at data offset `offset`, holding `len`
    /// payload bytes: where the payload is.
    #[inline(always)]
    fn took(&mut self, offset: u64, len: u32, size: u64) -> (usize, usize) {
        // size <= write_seen - read_pos, and write_seen never wraps (`unread` checks it).
        self.read_pos += size;
        self.messages_read = self.messages_read.saturating_add(1);
        // len < size <= capacity, which is mapped: both fit a usize.
        ((offset + self.ring.format.unit) as usize, len as usize)
    }
}
