//! Positions near the top of the u64 range, set by a hostile peer (before the victim
//! attaches, or while it runs): reported as corruption, never followed into an overflow.
use super::*;
use std::sync::atomic::Ordering;

use super::layout::{FrameFormat, KIND_DATA, KIND_PAD};
use super::reader::POSITION_EVERY;

const NEAR_THE_END: [u64; 6] = [
    u64::MAX - 15,
    u64::MAX - 31,
    u64::MAX,
    MAX_POSITION + 16,
    u64::MAX - 16 * 4096,
    u64::MAX - (1 << 40),
];

fn shared(capacity: u64) -> (SharedRing, RingFiles) {
    SharedRing::create("hostile", capacity).expect("create")
}

fn reopen(memfd: &RingFiles, capacity: u64) -> SharedRing {
    let fd = memfd.share(None).expect("share");
    SharedRing::open(fd, capacity).expect("open")
}

fn set_positions(ring: &SharedRing, read: u64, write: u64) {
    ring.consumer_side()
        .0
        .read_pos
        .store(read, Ordering::SeqCst);
    ring.header()
        .producer
        .write_pos
        .store(write, Ordering::SeqCst);
}

fn is_corrupt<T: std::fmt::Debug>(result: &Result<T, RingError>) -> bool {
    matches!(result, Err(RingError::Corrupt(_)))
}

/// A producer attaching to (or running on) a ring whose positions a peer set: every write
/// either succeeds within the ring or reports corruption; after a few, corruption.
fn writes_end_in_corruption(writer: Result<RingWriter, RingError>) {
    let mut writer = match writer {
        Ok(writer) => writer,
        Err(err) => {
            assert!(matches!(err, RingError::Corrupt(_)), "{err}");
            return;
        }
    };
    let mut last = Ok(true);
    for _ in 0..64 {
        last = writer.try_write_with(100, |buf| buf.fill(1));
        if last.is_err() {
            break;
        }
        last = writer.try_write_batch(&[b"a", b"b"]).map(|n| n > 0);
        if last.is_err() {
            break;
        }
    }
    assert!(is_corrupt(&last), "{last:?}");
}

fn reads_end_in_corruption(reader: Result<RingReader, RingError>) {
    let mut reader = match reader {
        Ok(reader) => reader,
        Err(err) => {
            assert!(matches!(err, RingError::Corrupt(_)), "{err}");
            return;
        }
    };
    let mut out = Vec::new();
    let mut last = Ok(ReadOutcome::Empty);
    for _ in 0..2 * POSITION_EVERY {
        last = reader.try_read_into(&mut out);
        if last.is_err() {
            break;
        }
        let sleep = reader.prepare_to_sleep();
        if let Err(err) = sleep {
            last = Err(err);
            break;
        }
        reader.done_sleeping();
    }
    assert!(is_corrupt(&last), "{last:?}");
}

#[test]
fn a_writer_attaching_at_positions_near_2_pow_64_reports_corruption() {
    for layout in MIN_LAYOUT_VERSION..=LAYOUT_VERSION {
        for pos in NEAR_THE_END {
            let (ring, memfd) = SharedRing::create_in_layout("h", 4096, layout).expect("ring");
            set_positions(&ring, pos, pos);
            writes_end_in_corruption(RingWriter::new(reopen(&memfd, 4096)));
            // One lap behind: also within `capacity` of each other.
            set_positions(&ring, pos.saturating_sub(4096) & !15, pos);
            writes_end_in_corruption(RingWriter::new(reopen(&memfd, 4096)));
        }
    }
}

#[test]
fn a_reader_attaching_at_positions_near_2_pow_64_reports_corruption() {
    for layout in MIN_LAYOUT_VERSION..=LAYOUT_VERSION {
        for pos in NEAR_THE_END {
            let (ring, memfd) = SharedRing::create_in_layout("h", 4096, layout).expect("ring");
            let unit = FrameFormat::of(layout, 0).unit;
            // A one-unit frame just before `pos`, sealed as a producer would.
            let start = pos.wrapping_sub(unit) & !15;
            set_positions(&ring, start, start.wrapping_add(unit));
            let offset = start % 4096;
            ring.data_u32(offset).store(0, Ordering::SeqCst);
            ring.data_u32(offset + 4).store(KIND_PAD, Ordering::SeqCst);
            reads_end_in_corruption(RingReader::new(reopen(&memfd, 4096)));
            // Equal positions with the next frame sealed at the last one.
            set_positions(&ring, pos, pos);
            let offset = (pos % 4096) & !15;
            ring.data_u32(offset).store(0, Ordering::SeqCst);
            ring.data_u32(offset + 4)
                .store(KIND_DATA | 1 << 16, Ordering::SeqCst);
            let key = ring.header().identity.seal_key.load(Ordering::SeqCst);
            ring.data_u64(offset + 8)
                .store(pos.wrapping_add(1) ^ key, Ordering::SeqCst);
            reads_end_in_corruption(RingReader::new(reopen(&memfd, 4096)));
        }
    }
}

#[test]
fn a_running_writer_facing_a_read_position_near_2_pow_64_reports_corruption() {
    for pos in NEAR_THE_END {
        let (ring, memfd) = shared(4096);
        let writer = RingWriter::new(reopen(&memfd, 4096));
        set_positions(&ring, pos, 0);
        writes_end_in_corruption(writer);
    }
}

#[test]
fn a_running_reader_facing_a_write_position_near_2_pow_64_reports_corruption() {
    for pos in NEAR_THE_END {
        let (ring, memfd) = shared(4096);
        let reader = RingReader::new(reopen(&memfd, 4096));
        ring.header()
            .producer
            .write_pos
            .store(pos, Ordering::SeqCst);
        reads_end_in_corruption(reader);
    }
}

#[test]
fn a_ring_runs_up_to_the_last_position_then_reports_corruption() {
    let (ring, memfd) = shared(4096);
    let start = MAX_POSITION - 2 * 4096;
    set_positions(&ring, start, start);
    let mut writer = RingWriter::new(reopen(&memfd, 4096)).expect("writer");
    let mut reader = RingReader::new(reopen(&memfd, 4096)).expect("reader");
    let mut out = Vec::new();
    let outcome = (0..100).find_map(|i| {
        match writer.try_write_with(1000, |buf| buf.fill(i)) {
            Ok(true) => {}
            other => return Some(other),
        }
        match reader.try_read_into(&mut out) {
            Ok(ReadOutcome::Message) => {
                assert_eq!(out, [i; 1000]);
                None
            }
            Ok(other) => panic!("{other:?}"),
            Err(err) => Some(Err(err)),
        }
    });
    assert!(
        matches!(outcome, Some(Err(RingError::Corrupt(_)))),
        "{outcome:?}"
    );
}

#[test]
fn counters_a_peer_set_to_the_maximum_do_not_overflow() {
    let (ring, memfd) = shared(4096);
    let h = ring.header();
    for counter in [
        &h.producer.messages_written,
        &h.producer.bytes_written,
        &h.producer.messages_lost,
        &h.producer.wakeups,
        &ring.consumer_side().0.messages_read,
        &ring.consumer_side().0.wakeups,
    ] {
        counter.store(u64::MAX, Ordering::SeqCst);
    }
    let mut writer = RingWriter::new(reopen(&memfd, 4096)).expect("writer");
    let mut reader = RingReader::new(reopen(&memfd, 4096)).expect("reader");
    writer.count_lost(u64::MAX);
    assert!(writer.try_write_after_gap(u64::MAX, b"x").expect("write"));
    assert!(writer.try_write_with(3, |b| b.fill(2)).expect("write"));
    let mut out = Vec::new();
    for _ in 0..2 {
        assert_eq!(
            reader.try_read_into(&mut out).expect("read"),
            ReadOutcome::Message
        );
    }
    assert_eq!(reader.missed(), u64::MAX);
    // Both sides find the other asleep and count a wake-up on top of a counter the peer
    // set to the maximum: it saturates, and so does the sum in `stats`.
    ring.consumer_side().1.store(1, Ordering::SeqCst);
    h.producer_waiting.waiting.store(1, Ordering::SeqCst);
    assert!(writer.take_consumer_waiting());
    assert!(reader.take_producer_waiting());
    let stats = ring.stats();
    assert_eq!(stats.messages_written, u64::MAX);
    assert_eq!(stats.messages_read, u64::MAX);
    assert_eq!(stats.wakeups, u64::MAX);
    assert_eq!(h.producer.wakeups.load(Ordering::SeqCst), u64::MAX);
}

#[test]
fn a_consumer_cannot_make_the_writer_skip_positions_past_half_the_space() {
    use super::writer::{REWIND_MIN_FRAME, REWIND_UNTIL_POSITION};
    // Each rewind skips the rest of a lap (a consumer can trigger one per frame by claiming
    // to have read it); past the half, frames follow each other as if there were none.
    let capacity = 2 << 20;
    let lap_start = |pos: u64| pos & !(capacity - 1);
    for (start, rewinds) in [
        (lap_start(REWIND_UNTIL_POSITION) - 2 * capacity, true),
        (lap_start(REWIND_UNTIL_POSITION) + capacity, false),
    ] {
        let (ring, memfd) = shared(capacity);
        set_positions(&ring, start, start);
        // What every consumer of this library says (and one that lies can say).
        let consumer = ring.consumer_side().0;
        consumer.accepts_rewinds.store(1, Ordering::SeqCst);
        let mut writer = RingWriter::new(reopen(&memfd, capacity)).expect("writer");
        let frame = writer.ring().frame_len(REWIND_MIN_FRAME);
        for i in 0..2 {
            let written = writer.try_write_with(REWIND_MIN_FRAME as usize, |buf| buf.fill(i));
            assert!(written.expect("write"), "room for frame {i}");
            // What a consumer writes: "read it all".
            consumer.read_pos.store(writer.write_pos, Ordering::SeqCst);
        }
        let expected = if rewinds { frame } else { 2 * frame };
        assert_eq!(
            writer.ring().offset_of(writer.write_pos),
            expected,
            "from {start:#x}"
        );
    }
}
