//! Large frames starting the next lap early (`RingWriter::rewind_if_room_at_start`): when,
//! and the bounds on the positions it spends.
use super::tests::{pair, read_settled, write};
use super::writer::REWIND_MIN_FRAME;
use super::*;
use std::sync::atomic::Ordering;

/// Borrows the next message where it lies (as `recv_ref` does), checks it, releases it.
fn borrow(r: &mut RingReader, expected: &[u8]) {
    for _ in 0..=super::reader::POSITION_EVERY {
        match r.try_peek().expect("peek") {
            Peeked::Empty => continue,
            Peeked::Message(payload) => {
                let mut out = vec![0; payload.len];
                // SAFETY: the reader that made the payload is alive.
                assert_eq!(unsafe { payload.load(0, &mut out) }, expected.len());
                assert_eq!(out, expected);
                r.release();
                return;
            }
            Peeked::EndOfStream => panic!("end of stream"),
        }
    }
    panic!("no message");
}

#[test]
fn a_large_frame_starts_the_lap_over_once_its_first_bytes_are_free() {
    let capacity = 2 << 20;
    let (mut w, mut r, _fd) = pair(capacity);
    let large = REWIND_MIN_FRAME as usize;
    let frame = w.ring().frame_len(large as u64);
    let mut out = Vec::new();
    let message = |i: u8| vec![i; large];
    let offset = |w: &RingWriter| w.ring().offset_of(w.write_pos);
    let read = borrow;

    // While the consumer has not read the first frame, the second follows it.
    assert!(write(&mut w, &message(1)));
    assert!(write(&mut w, &message(2)));
    assert_eq!(offset(&w), 2 * frame);
    // Once it has, the third goes to the first byte, behind a PAD the consumer skips.
    read(&mut r, &message(1));
    assert!(write(&mut w, &message(3)));
    assert_eq!(offset(&w), frame, "the lap starts over");
    assert_eq!(w.write_pos, capacity + frame);
    read(&mut r, &message(2));
    // So does a loan.
    let slot = w.try_reserve(large).expect("reserve").expect("room");
    // SAFETY: the reservation's `large` bytes are this writer's until the commit below.
    unsafe { std::ptr::write_bytes(slot.ptr, 4, large) };
    w.commit_reserved(large).expect("commit");
    assert_eq!(offset(&w), 2 * frame, "right behind the frame still unread");
    read(&mut r, &message(3));
    read(&mut r, &message(4));
    let slot = w.try_reserve(large).expect("reserve").expect("room");
    // SAFETY: as above.
    unsafe { std::ptr::write_bytes(slot.ptr, 5, large) };
    w.commit_reserved(large).expect("commit");
    assert_eq!(offset(&w), frame, "a loan starts the lap over too");
    read(&mut r, &message(5));
    // Small frames never do: a PAD per message would cost more than it saves.
    assert!(write(&mut w, &[6; 64]));
    read(&mut r, &[6; 64]);
    let before = offset(&w);
    assert!(write(&mut w, &[7; 64]));
    assert_eq!(offset(&w), before + w.ring().frame_len(64));
    read(&mut r, &[7; 64]);
    assert_eq!(r.try_read_into(&mut out).expect("read"), ReadOutcome::Empty);
    assert_eq!(r.ring().stats().messages_written, 7);
}

#[test]
fn a_rewind_pads_a_tail_of_at_most_sixteen_frames() {
    // 17 frames and a bit: from the end of the first frame, the rest of the lap is more
    // than 16 frames, so the writer carries on; from the end of the second, it rewinds.
    let large = REWIND_MIN_FRAME as usize;
    let capacity = 17 * (REWIND_MIN_FRAME + 4096);
    let (mut w, mut r, _fd) = pair(capacity);
    let frame = w.ring().frame_len(large as u64);
    for (i, expected) in [frame, 2 * frame, frame].into_iter().enumerate() {
        assert!(write(&mut w, &vec![i as u8; large]));
        assert_eq!(w.ring().offset_of(w.write_pos), expected, "frame {i}");
        borrow(&mut r, &vec![i as u8; large]);
    }
}

#[test]
fn a_consumer_that_copies_messages_out_gets_rewinds_too() {
    let large = REWIND_MIN_FRAME as usize;
    let (mut w, mut r, _fd) = pair(2 << 20);
    let frame = w.ring().frame_len(large as u64);
    let mut out = Vec::new();
    let mut copy = |r: &mut RingReader, expected: &[u8]| {
        assert_eq!(
            read_settled(r, &mut out).expect("read"),
            ReadOutcome::Message
        );
        assert_eq!(out, expected);
    };
    assert!(write(&mut w, &vec![1; large]));
    assert!(write(&mut w, &vec![2; large]));
    copy(&mut r, &vec![1; large]);
    assert!(write(&mut w, &vec![3; large]));
    assert_eq!(
        w.ring().offset_of(w.write_pos),
        frame,
        "the lap starts over"
    );
    copy(&mut r, &vec![2; large]);
    copy(&mut r, &vec![3; large]);
}

#[test]
fn a_consumer_that_does_not_accept_rewinds_gets_frames_in_turn() {
    // A consumer of an older version leaves the field zero (and one attaching after it sets
    // it again): its frames go round the whole ring, where it expects padding.
    let large = REWIND_MIN_FRAME as usize;
    let (mut w, mut r, _fd) = pair(2 << 20);
    let frame = w.ring().frame_len(large as u64);
    let accepts = &r.ring().consumer_side().0.accepts_rewinds;
    assert_eq!(
        accepts.load(Ordering::Relaxed),
        1,
        "this library's consumers do"
    );
    accepts.store(0, Ordering::Relaxed);
    let mut out = Vec::new();
    for i in 0..4u8 {
        assert!(write(&mut w, &vec![i; large]));
        assert_eq!(w.ring().offset_of(w.write_pos), (u64::from(i) + 1) * frame);
        assert_eq!(
            read_settled(&mut r, &mut out).expect("read"),
            ReadOutcome::Message
        );
        assert_eq!(out, vec![i; large]);
    }
}
