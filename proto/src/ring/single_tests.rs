//! The single-message fast paths (`single.rs`): a frame ending exactly at the lap's end, and
//! frame headers a hostile producer made claim more than is published or more than the lap,
//! which are reported as corruption and never read.
use super::tests::{pair, pair_in, read_settled, write};
use super::*;
use std::sync::atomic::Ordering;

fn is_corrupt<T: std::fmt::Debug>(result: &Result<T, RingError>) -> bool {
    matches!(result, Err(RingError::Corrupt(_)))
}

/// Writes and reads `count` messages of 16 bytes (32-byte frames in layouts 2 and 3).
fn pass(w: &mut RingWriter, r: &mut RingReader, count: usize) {
    let mut out = Vec::new();
    for i in 0..count {
        let message = [i as u8; 16];
        assert!(write(w, &message), "room for message {i}");
        assert_eq!(
            r.try_read_into(&mut out).expect("read"),
            ReadOutcome::Message
        );
        assert_eq!(out, message);
    }
}

#[test]
fn a_single_frame_ending_at_the_lap_end_is_written_and_read_in_place() {
    for layout in MIN_LAYOUT_VERSION..=LAYOUT_VERSION {
        let (mut w, mut r, _fd) = pair_in(layout, 4096);
        let unit = w.ring().format.unit;
        // Up to one frame before the end, then a frame that ends exactly at it: no padding.
        let frame = unit + 16;
        let before = (4096 / frame - 1) as usize;
        pass(&mut w, &mut r, before);
        let last = 4096 - before as u64 * frame - unit;
        let message = vec![7u8; last as usize];
        assert!(write(&mut w, &message), "layout {layout}");
        assert_eq!(w.position(), 4096, "layout {layout}: no padding in front");
        let mut out = Vec::new();
        assert_eq!(
            r.try_read_into(&mut out).expect("read"),
            ReadOutcome::Message
        );
        assert_eq!(out, message, "layout {layout}");
        assert_eq!(r.position(), 4096, "layout {layout}");
        // The next lap starts at the ring's first byte.
        assert!(write(&mut w, b"next lap"));
        assert_eq!(
            read_settled(&mut r, &mut out).expect("read"),
            ReadOutcome::Message
        );
        assert_eq!(out, b"next lap");
        assert_eq!(r.try_read_into(&mut out).expect("read"), ReadOutcome::Empty);
    }
}

#[test]
fn a_single_read_into_a_slice_spills_what_does_not_fit() {
    let (mut w, mut r, _fd) = pair(4096);
    let (mut buf, mut spill) = ([0u8; 4], Vec::new());
    assert!(write(&mut w, b"abc"));
    assert!(write(&mut w, b"longer"));
    let mut sink = SliceSink {
        buf: &mut buf,
        spill: &mut spill,
        fitted: Some(99),
    };
    assert_eq!(
        r.try_read_into_slice(&mut sink).expect("read"),
        ReadOutcome::Message
    );
    assert_eq!(sink.fitted, Some(3));
    assert_eq!(
        r.try_read_into_slice(&mut sink).expect("read"),
        ReadOutcome::Message
    );
    assert_eq!(sink.fitted, None, "spilled");
    assert_eq!(&buf[..3], b"abc");
    assert_eq!(spill, b"longer");
}

/// A reader at `4096 - 32` with 64 published bytes ahead of it that it knows of (a batch's
/// span): its frame, ending at the lap's end, and one at the start of the next lap.
fn reader_at_the_lap_end_with_bytes_ahead() -> (RingWriter, RingReader, RingFiles) {
    let (mut w, mut r, fd) = pair(4096);
    pass(&mut w, &mut r, 126);
    let batch: [&[u8]; 3] = [b"first", b"at the end", b"next lap"];
    assert_eq!(w.try_write_batch(&batch).expect("batch"), 3);
    let mut out = Vec::new();
    // Through the batch's seal, which covers all three.
    assert_eq!(
        r.try_read_into(&mut out).expect("read"),
        ReadOutcome::Message
    );
    assert_eq!(out, b"first");
    assert_eq!(r.position(), 4096 - 32);
    (w, r, fd)
}

#[test]
fn a_single_frame_claiming_more_than_the_lap_is_corrupt_not_read() {
    let (w, mut r, _fd) = reader_at_the_lap_end_with_bytes_ahead();
    // 64 bytes: within what is published, but past the end of the lap.
    w.ring().data_u32(4096 - 32).store(40, Ordering::Relaxed);
    let mut out = b"untouched".to_vec();
    assert!(is_corrupt(&r.try_read_into(&mut out)));
    assert_eq!(out, b"untouched", "nothing read");
    assert_eq!(r.position(), 4096 - 32);
    let (mut buf, mut spill) = ([0u8; 64], Vec::new());
    let mut sink = SliceSink {
        buf: &mut buf,
        spill: &mut spill,
        fitted: None,
    };
    assert!(is_corrupt(&r.try_read_into_slice(&mut sink)));
    assert_eq!(r.position(), 4096 - 32);
}

#[test]
fn a_single_frame_claiming_more_than_is_published_is_corrupt_not_read() {
    let (w, mut r, _fd) = reader_at_the_lap_end_with_bytes_ahead();
    // The frame after the lap's end is published: read it, then claim more than the rest.
    let mut out = Vec::new();
    assert_eq!(
        r.try_read_into(&mut out).expect("read"),
        ReadOutcome::Message
    );
    assert_eq!(out, b"at the end");
    // 48 bytes, where 32 are published (the lap has room for it).
    w.ring().data_u32(0).store(20, Ordering::Relaxed);
    out = b"untouched".to_vec();
    assert!(is_corrupt(&r.try_read_into(&mut out)));
    assert_eq!(out, b"untouched", "nothing read");
    assert_eq!(r.position(), 4096);
}

#[test]
fn a_sealed_single_frame_claiming_more_than_the_lap_is_corrupt_not_read() {
    let (mut w, mut r, _fd) = pair(4096);
    pass(&mut w, &mut r, 127);
    assert!(write(&mut w, b"last of the lap"));
    // Its seal says it came; its length runs past the end of the lap.
    w.ring().data_u32(4096 - 32).store(17, Ordering::Relaxed);
    let mut out = b"untouched".to_vec();
    assert!(is_corrupt(&read_settled(&mut r, &mut out)));
    assert_eq!(out, b"untouched", "nothing read");
    assert_eq!(r.position(), 4096 - 32);
}

#[test]
fn a_sealed_single_frame_of_another_kind_goes_the_general_way() {
    let (mut w, mut r, _fd) = pair(4096);
    assert!(write(&mut w, b"message"));
    // Sealed, but not data: the general path reads it, and finds no such kind.
    w.ring().data_u32(4).store(77, Ordering::Relaxed);
    let mut out = b"untouched".to_vec();
    assert!(is_corrupt(&read_settled(&mut r, &mut out)));
    assert_eq!(out, b"untouched");
    assert_eq!(r.position(), 0);
}

#[test]
fn a_single_write_that_outgrows_the_free_space_seen_last_looks_again() {
    let (mut w, mut r, _fd) = pair(4096);
    let mut out = Vec::new();
    // Fill the ring with no reads: the last write finds no room.
    let mut written = 0;
    while write(&mut w, &[1; 100]) {
        written += 1;
    }
    assert_eq!(w.try_write_up_to(100, |_| 100).expect("write"), None);
    for _ in 0..written {
        assert_eq!(
            r.try_read_into(&mut out).expect("read"),
            ReadOutcome::Message
        );
    }
    // The free space the writer knows of is none: the general path loads the consumer's
    // position, and the write goes in.
    assert_eq!(w.try_write_up_to(100, |_| 100).expect("write"), Some(100));
    assert_eq!(
        read_settled(&mut r, &mut out).expect("read"),
        ReadOutcome::Message
    );
    assert_eq!(out.len(), 100);
}

#[test]
fn a_raw_single_read_takes_only_what_fits_and_leaves_the_rest_unread() {
    let (mut w, mut r, _fd) = pair(4096);
    assert!(write(&mut w, b"longer than four"));
    let mut small = [0u8; 4];
    // SAFETY: `small` is 4 writable bytes of this test's own, not the ring's mapping.
    let got = unsafe { r.try_read_into_raw_fast(small.as_mut_ptr(), small.len()) };
    assert_eq!(
        got, None,
        "too long for the buffer: left for the general path"
    );
    assert_eq!(r.position(), 0, "nothing read");
    let mut big = [0u8; 64];
    // SAFETY: as above, 64 bytes.
    let got = unsafe { r.try_read_into_raw_fast(big.as_mut_ptr(), big.len()) };
    assert_eq!(got, Some(16));
    assert_eq!(&big[..16], b"longer than four");
    assert_eq!(r.position(), 32);
    // Empty now: nothing, and nothing changed.
    // SAFETY: as above.
    assert_eq!(
        unsafe { r.try_read_into_raw_fast(big.as_mut_ptr(), big.len()) },
        None
    );
    // A header claiming more than the lap (sealed): not read, and the general path says why.
    pass(&mut w, &mut r, 126);
    assert!(write(&mut w, b"last of the lap"));
    w.ring().data_u32(4096 - 32).store(17, Ordering::Relaxed);
    // SAFETY: as above.
    assert_eq!(
        unsafe { r.try_read_into_raw_fast(big.as_mut_ptr(), big.len()) },
        None
    );
    assert_eq!(r.position(), 4096 - 32);
    let mut out = Vec::new();
    assert!(is_corrupt(&read_settled(&mut r, &mut out)));
}
