//! Batches on both sides of a ring: `RingWriter::try_write_batch` and
//! `RingReader::try_read_batch`, with their fast paths for a run of data frames inside one
//! lap (bounded once, then per frame only what a hostile peer could still get wrong).

use std::sync::atomic::Ordering;

use super::files::SharedRing;
use super::layout::KIND_DATA;
use super::reader::{BatchOutcome, Poll, Sink};
use super::{ReadOutcome, RingError, RingReader, RingWriter};

impl RingWriter {
    /// Writes as many of `messages` as fit right now, in order, and makes them visible with a
    /// single publish. Returns how many were written.
    pub fn try_write_batch(&mut self, messages: &[&[u8]]) -> Result<usize, RingError> {
        // One pass sums up the batch: its frames' sizes (what it needs without padding) and
        // payload bytes, and its longest message.
        let mut sum = Batch::default();
        let mut longest = 0;
        for message in messages {
            longest = longest.max(message.len());
            sum.add(self.frame_size(message), message.len());
        }
        self.check_len(longest)?;
        let mut free = self.free_space(sum.frames.min(self.ring.capacity))?;
        let mut written = self.stage_run(messages, sum, &mut free);
        // The rest, if any, pads out the lap first or does not fit: one frame at a time.
        for message in &messages[written..] {
            if !self.stage_copy(message, &mut free) {
                break;
            }
            written += 1;
        }
        self.publish();
        Ok(written)
    }

    /// The size of `message`'s frame, if it is at most `max_message_len` (else a wrong one,
    /// for a message `check_len` refuses): `frame_len` without its saturation, which a length
    /// taken as a u32 and a unit of 8 or 16 (ours, not a peer's) never need.
    #[inline(always)]
    fn frame_size(&self, message: &[u8]) -> u64 {
        let unit = self.ring.format.unit;
        unit + ((u64::from(message.len() as u32) + (unit - 1)) & !(unit - 1))
    }

    /// The batch fast path: stages data frames for the first of `messages` (all checked
    /// against `max_message_len`; `sum` is all of them) that fit both in `free` and before the
    /// end of the lap, where no padding is needed. Usually the whole batch does, which one
    /// comparison says; otherwise a pass without copies finds how many. The copies then need
    /// no check at all. Returns how many; the position and counters move once per run.
    fn stage_run(&mut self, messages: &[&[u8]], sum: Batch, free: &mut u64) -> usize {
        let unit = self.ring.format.unit;
        let offset = self.ring.offset_of(self.staged_pos);
        let room = (*free).min(self.ring.capacity - offset);
        // As in stage_frame: the staged position cannot wrap, but that is refused rather than
        // assumed (the general path then refuses each frame the same way).
        if self.staged_pos.checked_add(room).is_none() {
            return 0;
        }
        let (count, run) = if sum.frames <= room {
            (messages.len(), sum)
        } else {
            let mut run = Batch::default();
            let fits = messages.iter().take_while(|message| {
                let size = self.frame_size(message);
                // run.frames <= room
                let fits = size <= room - run.frames;
                if fits {
                    run.add(size, message.len());
                }
                fits
            });
            (fits.count(), run)
        };
        let run_messages = &messages[..count];
        // SAFETY: the run's frames end at offset + run.frames <= offset + room, inside the
        // data area; unit is 16 in layouts 2 and up, else 8 (FrameFormat::of).
        unsafe {
            if unit == 16 {
                copy_run::<16>(&self.ring, offset, run_messages);
            } else {
                copy_run::<8>(&self.ring, offset, run_messages);
            }
        }
        if count > 0 && self.staged_pos == self.write_pos && self.ring.format.seal_key.is_some() {
            // The run starts the publish: its first frame's span covers the whole run (what
            // put_header does for a single frame; publish widens it if more frames follow).
            self.first_frame = run.frames;
            self.ring
                .data_u32(offset + 4)
                .store(KIND_DATA | self.span(run.frames), Ordering::Relaxed);
        }
        // staged_pos + run.frames <= staged_pos + room, checked above; run.frames <= free.
        self.staged_pos += run.frames;
        *free -= run.frames;
        // Counters come from shared memory a peer may have set to anything: they stop at
        // u64::MAX rather than wrap (or panic).
        self.messages_written = self.messages_written.saturating_add(count as u64);
        self.bytes_written = self.bytes_written.saturating_add(run.payload);
        count
    }
}

/// Writes `messages` (each at most `max_message_len`) as consecutive data frames from data
/// offset `offset` on, headers included (no span). The frame unit is a constant here, so that
/// the loop keeps what it needs in registers across the copies.
///
/// # Safety
///
/// `UNIT` is `ring`'s frame unit and the frames end inside its data area.
unsafe fn copy_run<const UNIT: u64>(ring: &SharedRing, offset: u64, messages: &[&[u8]]) {
    let data = ring.data();
    let mut header = offset;
    for message in messages {
        // SAFETY: the payload [header + UNIT, header + UNIT + len) lies inside the frames, so
        // inside the data area (the caller's promise). A raw copy forms no reference to the
        // shared bytes (the consumer may write them, and only garbles the message it is about
        // to receive), and `message` is the caller's memory, not the mapping: this is the only
        // RingWriter on the ring in this process and it never lends staged bytes out across a
        // call.
        unsafe {
            crate::copy::copy_raw(
                message.as_ptr(),
                data.add((header + UNIT) as usize),
                message.len(),
            );
        }
        // len <= max_message_len < u32::MAX.
        let len = message.len() as u32;
        ring.data_u32(header).store(len, Ordering::Relaxed);
        ring.data_u32(header + 4)
            .store(KIND_DATA, Ordering::Relaxed);
        // frame_len, without the saturation a u32 length and a unit of 8 or 16 never need.
        header += UNIT + ((u64::from(len) + (UNIT - 1)) & !(UNIT - 1));
    }
}

/// What some messages of a batch add up to.
#[derive(Clone, Copy, Default)]
struct Batch {
    /// Their frames' bytes, without padding.
    frames: u64,
    /// Their payload bytes.
    payload: u64,
}

impl Batch {
    #[inline(always)]
    fn add(&mut self, frame: u64, payload: usize) {
        // Saturating: the caller's slices may repeat the same bytes any number of times.
        self.frames = self.frames.saturating_add(frame);
        self.payload = self.payload.saturating_add(payload as u64);
    }
}

impl RingReader {
    /// Hands up to `max` available messages to `each` (through the private buffer `scratch`)
    /// and releases their space with a single store. Stops before an end-of-stream mark unless
    /// it is the first thing read.
    pub fn try_read_batch(
        &mut self,
        max: usize,
        scratch: &mut Vec<u8>,
        mut each: impl FnMut(&[u8]),
    ) -> Result<BatchOutcome, RingError> {
        let mut unread = self.unread(Poll::Quick)?;
        if unread == 0 {
            return Ok(BatchOutcome::Empty);
        }
        let mut delivered = 0;
        let result = loop {
            if delivered < max {
                match self.read_run(max - delivered, &mut unread, scratch, &mut each) {
                    Ok(n) => delivered += n,
                    Err(err) => break Err(err),
                }
            }
            if delivered == max {
                break Ok(BatchOutcome::Messages(delivered));
            }
            // What the run left (padding, a mark, a loss record, the end of the lap or of the
            // published bytes, a frame that fails a check): one frame the general way.
            let before = (self.read_pos, self.missed);
            match self.next_frame(Sink::Buffer(scratch), &mut unread) {
                Ok(ReadOutcome::Message) => {
                    each(scratch);
                    delivered += 1;
                }
                // The mark ends a batch that has messages; it is read by the next call, so the
                // caller learns of both. (Going back over skipped padding is harmless; a loss
                // record skipped on the way is counted again then, so its count is undone.)
                Ok(ReadOutcome::EndOfStream) if delivered > 0 => {
                    (self.read_pos, self.missed) = before;
                    break Ok(BatchOutcome::Messages(delivered));
                }
                Ok(ReadOutcome::EndOfStream) => break Ok(BatchOutcome::EndOfStream),
                Ok(ReadOutcome::Empty) if delivered == 0 => break Ok(BatchOutcome::Empty),
                Ok(ReadOutcome::Empty) => break Ok(BatchOutcome::Messages(delivered)),
                Err(err) => break Err(err),
            }
        };
        self.commit();
        result
    }

    /// The batch fast path: hands the data frames that follow one another from the read
    /// position to `each` (at most `max`, through `scratch`), as long as each lies inside both
    /// the `unread` published bytes and the current lap. Bounding the run by both once leaves
    /// each frame two checks (its kind, its size against what is left of the run) against a
    /// hostile producer; anything else ends the run, for `next_frame` to read or report.
    /// Returns how many messages it handed over; the position and counters move once per run.
    fn read_run(
        &mut self,
        max: usize,
        unread: &mut u64,
        scratch: &mut Vec<u8>,
        each: &mut impl FnMut(&[u8]),
    ) -> Result<usize, RingError> {
        let ring = &self.ring;
        let (unit, kind_mask, data) = (ring.format.unit, ring.format.kind_mask, ring.data());
        let offset = ring.offset_of(self.read_pos);
        // offset < capacity; offset + room <= capacity: every byte below lies in the data area.
        let room = (*unread).min(ring.capacity - offset);
        let (mut at, mut count) = (0, 0);
        while count < max && room - at >= unit {
            let header = offset + at;
            let len = ring.data_u32(header).load(Ordering::Relaxed);
            let kind = ring.data_u32(header + 4).load(Ordering::Relaxed) & kind_mask;
            let size = ring.frame_len(u64::from(len));
            if kind != KIND_DATA || size > room - at {
                break;
            }
            // len < size <= capacity, which is mapped: it fits a usize.
            let len = len as usize;
            if scratch.len() < len {
                // Grows once to the longest message; later ones reuse it without zeroing.
                scratch.resize(len, 0);
            }
            let out = &mut scratch[..len];
            // SAFETY: the payload [header + unit, header + size) lies inside the run, so inside
            // the data area; `out` is len writable private bytes, never overlapping the shared
            // mapping. A raw copy forms no reference to the shared bytes: a hostile producer
            // rewriting them while we copy only changes what we receive.
            unsafe {
                crate::copy::copy_raw(data.add((header + unit) as usize), out.as_mut_ptr(), len);
            }
            each(out);
            at += size;
            count += 1;
        }
        // at <= unread, and read_pos + unread is a position the checks accepted.
        self.read_pos = self.read_pos.checked_add(at).ok_or_else(|| {
            RingError::Corrupt(format!("frame at offset {offset} ends past 2^64"))
        })?;
        *unread -= at;
        self.messages_read = self.messages_read.saturating_add(count as u64);
        Ok(count)
    }
}
