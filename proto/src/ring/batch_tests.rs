//! The batch fast paths (`RingWriter::stage_run`, `RingReader::read_run`): batches across the
//! end of a lap, batches that only partly fit, and a hostile frame in the middle of a batch.
use super::layout::{KIND_LOST, KIND_PAD};
use super::tests::pair_in;
use super::*;
use std::sync::atomic::Ordering;

/// `count` messages of increasing lengths (0 to 40 bytes), each filled with its index.
fn messages(count: usize) -> Vec<Vec<u8>> {
    (0..count).map(|i| vec![i as u8; i % 41]).collect()
}

fn read_all(r: &mut RingReader, max: usize) -> (Vec<Vec<u8>>, Result<BatchOutcome, RingError>) {
    let mut got = Vec::new();
    let mut scratch = Vec::new();
    let outcome = r.try_read_batch(max, &mut scratch, |m| got.push(m.to_vec()));
    (got, outcome)
}

#[test]
fn a_batch_across_the_end_of_the_lap_arrives_whole_in_every_layout() {
    for layout in MIN_LAYOUT_VERSION..=LAYOUT_VERSION {
        let (mut w, mut r, _fd) = pair_in(layout, 4096);
        // Single messages bring the position close to the end of the lap, then are read.
        while w.ring().offset_of(w.position()) < 4096 - 200 {
            assert_eq!(w.try_write_batch(&[&[7; 40]]).expect("write"), 1);
        }
        let before = read_all(&mut r, usize::MAX).0.len() as u64;
        let batch = messages(20);
        let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
        // Part of it fits before the end; the rest goes after padding at the lap's start.
        assert_eq!(
            w.try_write_batch(&refs).expect("write"),
            20,
            "layout {layout}"
        );
        assert!(w.ring().offset_of(w.position()) < 1000, "layout {layout}");
        let (got, outcome) = read_all(&mut r, usize::MAX);
        assert_eq!(outcome.expect("read"), BatchOutcome::Messages(20));
        assert_eq!(got, batch, "layout {layout}: every message once, in order");
        assert_eq!(r.position(), w.position());
        // Counters move by the run as they did by the frame.
        let header = &w.ring().header().producer;
        assert_eq!(header.messages_written.load(Ordering::Relaxed), before + 20);
        let payload: usize = batch.iter().map(Vec::len).sum();
        let bytes = header.bytes_written.load(Ordering::Relaxed);
        assert_eq!(bytes, before * 40 + payload as u64, "layout {layout}");
        let read = r
            .ring()
            .consumer_side()
            .0
            .messages_read
            .load(Ordering::Relaxed);
        assert_eq!(read, before + 20);
    }
}

#[test]
fn a_batch_that_partly_fits_writes_the_messages_that_do_and_the_rest_later() {
    let (mut w, mut r, _fd) = pair_in(LAYOUT_VERSION, 4096);
    let batch = messages(200);
    let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
    let first = w.try_write_batch(&refs).expect("write");
    assert!(first > 0 && first < 200, "{first}");
    assert_eq!(w.try_write_batch(&refs[first..]).expect("full"), 0);
    // Read a few at a time: a run stops at `max`, the next call goes on from there.
    let mut got = Vec::new();
    while got.len() < first {
        let (some, outcome) = read_all(&mut r, 7);
        assert_eq!(outcome.expect("read"), BatchOutcome::Messages(some.len()));
        assert!(some.len() <= 7);
        got.extend(some);
    }
    let mut sent = first;
    while sent < 200 {
        sent += w.try_write_batch(&refs[sent..]).expect("write");
        got.extend(read_all(&mut r, usize::MAX).0);
    }
    assert_eq!(got, batch);
}

/// Writes a batch of five 5-byte messages (frames of 32 bytes at offsets 0, 32, ...), lets
/// `scribble` spoil the third one before the reader looks, and reads them in one batch.
fn read_after_scribble(scribble: impl FnOnce(&SharedRing)) -> (Vec<Vec<u8>>, RingError) {
    let (mut w, mut r, _fd) = pair_in(LAYOUT_VERSION, 4096);
    let batch: Vec<&[u8]> = vec![b"aaaaa", b"bbbbb", b"ccccc", b"ddddd", b"eeeee"];
    assert_eq!(w.try_write_batch(&batch).expect("write"), 5);
    scribble(w.ring());
    let (got, outcome) = read_all(&mut r, usize::MAX);
    let error = outcome.expect_err("a spoilt frame is corruption");
    (got, error)
}

/// What a case does, the scribble, and what its error says.
type Case = (&'static str, fn(&SharedRing), &'static str);

#[test]
fn a_hostile_frame_in_the_middle_of_a_batch_is_reported_as_corrupt() {
    let cases: [Case; 4] = [
        (
            "length past the publish",
            |ring| ring.data_u32(64).store(1_000_000, Ordering::Relaxed),
            "overruns",
        ),
        (
            "unknown kind",
            |ring| ring.data_u32(68).store(0x4242, Ordering::Relaxed),
            "unknown frame kind",
        ),
        (
            "padding short of the end",
            |ring| ring.data_u32(68).store(KIND_PAD, Ordering::Relaxed),
            "does not reach the end",
        ),
        (
            "loss record of the wrong length",
            |ring| ring.data_u32(68).store(KIND_LOST, Ordering::Relaxed),
            "loss record",
        ),
    ];
    for (what, scribble, detail) in cases {
        let (got, error) = read_after_scribble(scribble);
        assert_eq!(
            got,
            [b"aaaaa", b"bbbbb"],
            "{what}: the frames before it only"
        );
        let RingError::Corrupt(message) = error else {
            panic!("{what}: {error:?}");
        };
        assert!(message.contains(detail), "{what}: {message}");
    }
}

#[test]
fn a_frame_longer_than_the_ring_or_the_lap_in_a_batch_is_reported_as_corrupt() {
    // Lengths that overflow a frame size or reach past the end of the lap, as the last frame
    // of a publish and as one in the middle.
    for (at, len) in [
        (64, u32::MAX),
        (64, 4096 - 80),
        (128, u32::MAX - 15),
        (128, 4000),
    ] {
        let (got, error) =
            read_after_scribble(|ring| ring.data_u32(at).store(len, Ordering::Relaxed));
        assert_eq!(got.len() as u64, at / 32, "{at} {len}");
        assert!(
            matches!(error, RingError::Corrupt(_)),
            "{at} {len}: {error:?}"
        );
    }
}
