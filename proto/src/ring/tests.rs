use super::*;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;

use super::reader::POSITION_EVERY;
use crate::wire::Role;
use shmem_ipc::mem::mfd::MemfdOptions;
use std::os::fd::AsFd;

pub(super) fn pair(capacity: u64) -> (RingWriter, RingReader, RingFiles) {
    pair_in(LAYOUT_VERSION, capacity)
}

pub(super) fn pair_in(layout: u32, capacity: u64) -> (RingWriter, RingReader, RingFiles) {
    let (ring, memfd) = SharedRing::create_in_layout("test", capacity, layout).expect("create");
    drop(ring);
    // Each side with the fds the broker gives it (layout 3: the other's memfd read-only).
    let open = |side| {
        let fds = memfd.share(Some(side)).expect("share");
        SharedRing::open(fds, capacity).expect("open")
    };
    (
        RingWriter::new(open(Role::Producer)).expect("writer"),
        RingReader::new(open(Role::Consumer)).expect("reader"),
        memfd,
    )
}

/// Reads until something other than "empty" comes: what only the producer's position
/// shows (a frame without a seal) turns up at the latest at the reader's next load of it.
pub(super) fn read_settled(
    r: &mut RingReader,
    out: &mut Vec<u8>,
) -> Result<ReadOutcome, RingError> {
    for _ in 0..POSITION_EVERY {
        match r.try_read_into(out) {
            Ok(ReadOutcome::Empty) => continue,
            other => return other,
        }
    }
    r.try_read_into(out)
}

pub(super) fn write(w: &mut RingWriter, bytes: &[u8]) -> bool {
    w.try_write_with(bytes.len(), |buf| buf.copy_from_slice(bytes))
        .expect("write")
}

#[test]
fn messages_round_trip_across_the_wrap() {
    // A power-of-two capacity takes offsets with a mask, any other with a division
    // (`SharedRing::offset_of`): both wrap the same.
    let ring = pair(3 * 4096).0;
    assert_eq!(ring.ring().offset_of(3 * 4096 + 100), 100);
    assert_eq!(pair(4096).0.ring().offset_of(5 * 4096 + 100), 100);
    for capacity in [4096, 3 * 4096] {
        for layout in MIN_LAYOUT_VERSION..=LAYOUT_VERSION {
            round_trip_across_the_wrap(layout, capacity);
        }
    }
}

fn round_trip_across_the_wrap(layout: u32, capacity: u64) {
    let (mut w, mut r, _fd) = pair_in(layout, capacity);
    assert_eq!(r.ring().layout(), layout);
    let mut out = Vec::new();
    for i in 0..2000u32 {
        let msg: Vec<u8> = (0..(i % 700)).map(|b| (b ^ i) as u8).collect();
        assert!(write(&mut w, &msg), "room for message {i}");
        assert_eq!(
            r.try_read_into(&mut out).expect("read"),
            ReadOutcome::Message
        );
        assert_eq!(out, msg, "message {i}");
    }
    assert_eq!(r.try_read_into(&mut out).expect("read"), ReadOutcome::Empty);
    assert_eq!(r.ring().stats().messages_written, 2000);
}

#[test]
fn a_frame_whose_seal_never_came_is_read_by_the_position() {
    // As if the producer was killed between storing the position and the seal.
    let (mut w, mut r, _fd) = pair(4096);
    assert!(write(&mut w, b"orphan"));
    w.ring().data_u64(8).store(0, Ordering::SeqCst);
    let mut out = Vec::new();
    // A consumer about to sleep asks the position, and finds it.
    assert!(!r.prepare_to_sleep().expect("arm"), "a message is there");
    assert_eq!(
        r.try_read_into(&mut out).expect("read"),
        ReadOutcome::Message
    );
    assert_eq!(out, b"orphan");
    // A busy poller finds it within POSITION_EVERY polls.
    assert!(write(&mut w, b"second"));
    w.ring().data_u64(32 + 8).store(0, Ordering::SeqCst);
    assert_eq!(r.try_read_into(&mut out).expect("read"), ReadOutcome::Empty);
    assert_eq!(
        read_settled(&mut r, &mut out).expect("read"),
        ReadOutcome::Message
    );
    assert_eq!(out, b"second");
}

#[test]
fn a_sealed_batch_is_read_whole_by_its_span() {
    let (mut w, mut r, _fd) = pair(4096);
    assert_eq!(w.try_write_batch(&[b"a", b"bb", b"ccc"]).expect("batch"), 3);
    // The position is not needed (nor looked at) for what the span covers.
    w.ring()
        .header()
        .producer
        .write_pos
        .store(1 << 40, Ordering::SeqCst);
    let mut got = Vec::new();
    let mut scratch = Vec::new();
    let outcome = r
        .try_read_batch(10, &mut scratch, |m| got.push(m.to_vec()))
        .expect("batch read");
    assert_eq!(outcome, BatchOutcome::Messages(3));
    assert_eq!(got, [&b"a"[..], b"bb", b"ccc"]);
}

#[test]
fn batches_publish_once_and_stop_before_end_of_stream() {
    let (mut w, mut r, _fd) = pair(4096);
    let messages: Vec<Vec<u8>> = (0..300u32).map(|i| i.to_le_bytes().to_vec()).collect();
    let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
    let mut sent = 0;
    let mut got = Vec::new();
    let mut scratch = Vec::new();
    while sent < refs.len() {
        sent += w.try_write_batch(&refs[sent..]).expect("write");
        let outcome = r
            .try_read_batch(usize::MAX, &mut scratch, |m| got.push(m.to_vec()))
            .expect("read");
        assert!(matches!(outcome, BatchOutcome::Messages(n) if n > 0));
    }
    assert_eq!(
        got, messages,
        "every message once, in order, across the wrap"
    );
    assert!(w.try_write_batch(&[b"last"]).expect("write") == 1);
    assert!(w.try_write_end_of_stream().expect("eos"));
    let mut tail = Vec::new();
    let first = r
        .try_read_batch(10, &mut scratch, |m| tail.push(m.to_vec()))
        .expect("read");
    assert_eq!(
        (first, tail),
        (BatchOutcome::Messages(1), vec![b"last".to_vec()])
    );
    let second = r
        .try_read_batch(10, &mut scratch, |_| panic!("no message"))
        .expect("read");
    assert_eq!(second, BatchOutcome::EndOfStream);
    assert_eq!(
        r.try_read_batch(10, &mut scratch, |_| {}).expect("read"),
        BatchOutcome::Empty
    );
}

#[test]
fn variable_length_writes_and_reads_to_an_fd_copy_nothing_extra() {
    let (mut w, mut r, _fd) = pair(4096);
    assert_eq!(
        w.try_write_up_to(1000, |buf| {
            buf[..3].copy_from_slice(b"abc");
            3
        })
        .expect("write"),
        Some(3)
    );
    assert_eq!(
        w.try_write_up_to(1000, |_| 0).expect("write"),
        Some(0),
        "nothing used, no message"
    );
    assert_eq!(
        w.try_write_up_to(5000, |_| 0)
            .err()
            .map(|e| e.to_string().contains("does not fit")),
        Some(true)
    );
    assert!(write(&mut w, b"defg"));
    let (read_end, write_end) = rustix::pipe::pipe().expect("pipe");
    let mut written = 0;
    assert_eq!(
        r.try_read_to_fd(write_end.as_fd(), &mut written)
            .expect("read"),
        ReadOutcome::Message
    );
    assert_eq!(written, 3);
    assert_eq!(
        r.try_read_to_fd(write_end.as_fd(), &mut written)
            .expect("read"),
        ReadOutcome::Message
    );
    assert_eq!(written, 4);
    assert_eq!(
        r.try_read_to_fd(write_end.as_fd(), &mut written)
            .expect("read"),
        ReadOutcome::Empty
    );
    let mut got = [0u8; 16];
    let n = rustix::io::read(&read_end, &mut got).expect("read pipe");
    assert_eq!(&got[..n], b"abcdefg", "exactly the used bytes, in order");
    assert_eq!(r.ring().stats().messages_written, 2);
}

/// A 4 KiB ring where one message was read, a second (`[1; 100]`) is unread, and a refused
/// large write published only the padding up to the end of the data area.
fn padding_after_a_message() -> (RingWriter, RingReader, RingFiles) {
    let (mut w, mut r, fd) = pair(4096);
    assert!(write(&mut w, &[0; 100]));
    let mut out = Vec::new();
    assert_eq!(
        r.try_read_into(&mut out).expect("read"),
        ReadOutcome::Message
    );
    assert!(write(&mut w, &[1; 100]));
    assert!(!w
        .try_write_with(4000, |_| {})
        .expect("refused: only the padding fits"));
    (w, r, fd)
}

/// Cases found by the `ring_reader` fuzz target (fuzz/corpus/ring_reader/seed-*).
#[test]
fn fuzz_findings_stay_fixed() {
    // Unaligned positions would make the next frame header straddle the end of the ring.
    let (_w, _r, memfd) = pair(4096);
    let broker = open_again(&memfd, 4096);
    broker
        .consumer_side()
        .0
        .read_pos
        .store(4092, Ordering::SeqCst);
    broker
        .header()
        .producer
        .write_pos
        .store(4100, Ordering::SeqCst);
    let fd = memfd.share(None).expect("share");
    let ring = SharedRing::open(fd, 4096).expect("open");
    assert!(matches!(RingReader::new(ring), Err(RingError::Corrupt(_))));

    // A counter a peer set to u64::MAX wraps instead of panicking.
    let (mut w, mut r, _fd) = pair(4096);
    r.messages_read = u64::MAX;
    assert!(write(&mut w, b"x"));
    let mut out = Vec::new();
    assert_eq!(
        r.try_read_into(&mut out).expect("read"),
        ReadOutcome::Message
    );

    // Message, padding published alone, end-of-stream: a batch hands over the message and
    // leaves the mark for the next call.
    let mut scratch = Vec::new();
    let (mut w, mut r, _fd) = padding_after_a_message();
    assert!(w
        .try_write_end_of_stream()
        .expect("the mark fits after the padding"));
    let first = r
        .try_read_batch(15, &mut scratch, |m| assert_eq!(m, [1; 100]))
        .expect("read");
    assert_eq!(first, BatchOutcome::Messages(1));
    let second = r
        .try_read_batch(15, &mut scratch, |_| panic!("no message"))
        .expect("read");
    assert_eq!(second, BatchOutcome::EndOfStream);

    // A cached producer position that ends at padding: the message published after it is
    // found, not reported as empty.
    let (mut w, mut r, _fd) = padding_after_a_message();
    assert_eq!(
        r.try_read_into(&mut scratch).expect("read"),
        ReadOutcome::Message
    );
    assert!(
        write(&mut w, &[2; 50]),
        "fits at the start after the padding"
    );
    assert_eq!(
        r.try_read_into(&mut scratch).expect("read"),
        ReadOutcome::Message
    );
    assert_eq!(scratch, [2; 50]);
}

#[test]
fn full_ring_refuses_then_accepts() {
    let (mut w, mut r, _fd) = pair(4096);
    let msg = [7u8; 1000];
    let mut written = 0;
    while write(&mut w, &msg) {
        written += 1;
    }
    assert_eq!(written, 4); // 4 frames of 16 + 1008 bytes fill 4096, a fifth does not
    let mut out = Vec::new();
    assert_eq!(
        r.try_read_into(&mut out).expect("read"),
        ReadOutcome::Message
    );
    assert!(write(&mut w, &msg));
    assert!(matches!(
        w.try_write_with(4096, |_| {}),
        Err(RingError::TooLarge { max: 4080, .. })
    ));
    assert!(w.try_write_with(4080, |_| {}).is_ok());
}

/// A producer that found its ring full resumes from its spin on a quarter of the ring free,
/// not on the first frame that fits; `can_progress` (what the sleep and the send use) still
/// says yes as soon as one frame fits.
#[test]
fn a_full_ring_lets_its_producer_resume_on_a_chunk_of_room() {
    let (mut w, mut r, _fd) = pair(16384);
    let msg = [7u8; 1008]; // frames of 1024 bytes: 16 fill the ring
    while write(&mut w, &msg) {}
    let mut out = Vec::new();
    for freed in 1..=4 {
        assert_eq!(
            r.try_read_into(&mut out).expect("read"),
            ReadOutcome::Message
        );
        assert!(w.can_progress(msg.len()).expect("can_progress"));
        // 4 KiB (a quarter of 16 KiB) free only after the fourth frame is read.
        assert_eq!(
            w.can_resume(msg.len()).expect("can_resume"),
            freed == 4,
            "{freed} read"
        );
    }
    // A ring larger than 1 MiB: the chunk stops at RESUME_CHUNK_MAX.
    let (mut w, mut r, _fd) = pair(4 << 20);
    let msg = vec![7u8; 65_536 - 16];
    while write(&mut w, &msg) {}
    let frames = (writer::RESUME_CHUNK_MAX / 65_536) as usize;
    for read in 1..=frames {
        assert_eq!(
            r.try_read_into(&mut out).expect("read"),
            ReadOutcome::Message
        );
        assert_eq!(w.can_resume(msg.len()).expect("can_resume"), read == frames);
    }
}

#[test]
fn a_new_reader_resumes_where_the_old_one_stopped() {
    let (mut w, mut r, memfd) = pair(8192);
    for i in 0..10u8 {
        assert!(write(&mut w, &[i; 100]));
    }
    let mut out = Vec::new();
    for i in 0..4u8 {
        r.try_read_into(&mut out).expect("read");
        assert_eq!(out, vec![i; 100]);
    }
    drop(r);
    let fd = memfd.share(None).expect("share");
    let mut r2 = RingReader::new(SharedRing::open(fd, 8192).expect("open")).expect("reader");
    for i in 4..10u8 {
        assert_eq!(
            r2.try_read_into(&mut out).expect("read"),
            ReadOutcome::Message
        );
        assert_eq!(out, vec![i; 100]);
    }
    assert!(w.try_write_end_of_stream().expect("eos"));
    assert_eq!(
        r2.try_read_into(&mut out).expect("read"),
        ReadOutcome::EndOfStream
    );
}

#[test]
fn scribbled_positions_and_frames_are_reported_not_followed() {
    let (mut w, mut r, _fd) = pair(4096);
    assert!(write(&mut w, b"hello"));
    let mut out = Vec::new();
    // Read through its seal: the position is not even looked at.
    assert_eq!(
        r.try_read_into(&mut out).expect("read"),
        ReadOutcome::Message
    );
    // The next frame (at 32) carries no seal, so the reader goes by the position.
    w.ring()
        .header()
        .producer
        .write_pos
        .store(1 << 40, Ordering::SeqCst);
    assert!(matches!(
        read_settled(&mut r, &mut out),
        Err(RingError::Corrupt(_))
    ));
    w.ring()
        .header()
        .producer
        .write_pos
        .store(64, Ordering::SeqCst);
    w.ring().data_u32(32).store(1_000_000, Ordering::Relaxed);
    assert!(matches!(
        read_settled(&mut r, &mut out),
        Err(RingError::Corrupt(_))
    ));
    w.ring().data_u32(32).store(5, Ordering::Relaxed);
    w.ring().data_u32(36).store(99, Ordering::Relaxed);
    assert!(matches!(
        read_settled(&mut r, &mut out),
        Err(RingError::Corrupt(_))
    ));
    r.ring()
        .consumer_side()
        .0
        .read_pos
        .store(u64::MAX, Ordering::SeqCst);
    // The writer trusts the consumer position it saw last until that runs out of room;
    // then it loads the scribbled one and refuses to go on.
    let outcome = (0..100).find_map(|_| match w.try_write_with(500, |_| {}) {
        Ok(true) => None,
        other => Some(other),
    });
    assert!(
        matches!(outcome, Some(Err(RingError::Corrupt(_)))),
        "{outcome:?}"
    );
}

#[test]
fn one_writer_per_ring_in_a_process() {
    let (w, _r, memfd) = pair(4096);
    let second = RingWriter::new(open_again(&memfd, 4096));
    assert!(
        matches!(second, Err(RingError::Rejected(_))),
        "{:?}",
        second.err()
    );
    // Another ring is another matter, and the place is free again once the writer goes.
    let (_other, _r2, _fd2) = pair(4096);
    drop(w);
    assert!(RingWriter::new(open_again(&memfd, 4096)).is_ok());
}

fn open_again(memfd: &RingFiles, capacity: u64) -> SharedRing {
    let fd = memfd.share(None).expect("share");
    SharedRing::open(fd, capacity).expect("open")
}

#[test]
fn rejects_unsealed_or_wrong_sized_memfds() {
    let memfd = MemfdOptions::default()
        .allow_sealing(true)
        .create("plain")
        .expect("memfd");
    memfd.as_file().set_len(HEADER_SIZE + 4096).expect("len");
    let fds = RingFds {
        ring: OwnedFd::from(memfd.into_file()),
        ack: None,
    };
    let err = SharedRing::open(fds, 4096).err().expect("refused");
    assert!(err.to_string().contains("missing seal"), "{err}");
    let (_ring, memfd) = SharedRing::create("x", 8192).expect("create");
    let fd = memfd.share(None).expect("share");
    let err = SharedRing::open(fd, 4096).err().expect("refused");
    assert!(err.to_string().contains("expected"), "{err}");
}

#[test]
fn a_gap_is_reported_in_band_where_it_happened() {
    let (mut w, mut r, _memfd) = pair(4096);
    assert!(write(&mut w, b"before"));
    w.count_lost(3);
    assert!(w.try_write_after_gap(3, b"after").expect("write"));
    w.count_lost(2);
    assert!(w.try_write_gap(2).expect("gap"));
    assert!(w.try_write_end_of_stream().expect("eos"));
    let mut out = Vec::new();
    assert_eq!(
        r.try_read_into(&mut out).expect("read"),
        ReadOutcome::Message
    );
    assert_eq!((out.as_slice(), r.missed()), (&b"before"[..], 0));
    assert_eq!(
        r.try_read_into(&mut out).expect("read"),
        ReadOutcome::Message
    );
    assert_eq!((out.as_slice(), r.missed()), (&b"after"[..], 3));
    assert_eq!(
        r.try_read_into(&mut out).expect("read"),
        ReadOutcome::EndOfStream
    );
    assert_eq!(r.missed(), 5);
    assert_eq!(r.ring().stats().messages_lost, 5);
}

#[test]
fn a_batch_stopping_before_the_mark_counts_a_loss_record_once() {
    let (mut w, mut r, _memfd) = pair(4096);
    assert!(write(&mut w, b"last"));
    assert!(w.try_write_gap(2).expect("gap"));
    assert!(w.try_write_end_of_stream().expect("eos"));
    let mut scratch = Vec::new();
    let first = r.try_read_batch(10, &mut scratch, |_| {}).expect("read");
    assert_eq!((first, r.missed()), (BatchOutcome::Messages(1), 0));
    let second = r.try_read_batch(10, &mut scratch, |_| {}).expect("read");
    assert_eq!((second, r.missed()), (BatchOutcome::EndOfStream, 2));
}

#[test]
fn a_gap_and_its_message_go_in_together_or_not_at_all() {
    let (mut w, mut r, _memfd) = pair(4096);
    let big = vec![7u8; 4000];
    assert!(write(&mut w, &big));
    // 88 bytes left: room for the LOST record but not for it and a 100-byte message.
    assert!(!w.try_write_after_gap(1, &[1u8; 100]).expect("write"));
    let mut out = Vec::new();
    assert_eq!(
        r.try_read_into(&mut out).expect("read"),
        ReadOutcome::Message
    );
    assert_eq!(r.try_read_into(&mut out).expect("read"), ReadOutcome::Empty);
    assert_eq!(r.missed(), 0, "nothing of the refused pair became visible");
}

#[test]
fn a_malformed_loss_record_is_corruption() {
    let (mut w, mut r, _memfd) = pair(4096);
    assert!(w.try_write_gap(1).expect("gap"));
    w.ring().data_u32(0).store(4, Ordering::SeqCst);
    let mut out = Vec::new();
    let err = r.try_read_into(&mut out).expect_err("refused");
    assert!(err.to_string().contains("loss record of 4 bytes"), "{err}");
}

#[test]
fn skipping_padding_alone_wakes_a_producer_waiting_for_space() {
    let (mut w, mut r, _memfd) = pair(4096);
    let mut out = Vec::new();
    assert!(write(&mut w, &[1u8; 3000]));
    assert_eq!(
        r.try_read_into(&mut out).expect("read"),
        ReadOutcome::Message
    );
    assert!(!r.take_producer_waiting(), "nobody is waiting yet");
    // 3500 bytes do not fit after the 1072-byte tail: the producer pads the tail and
    // waits for the consumer to pass it.
    assert!(!write(&mut w, &[2u8; 3500]));
    assert!(
        w.prepare_to_sleep(3500).expect("prepare"),
        "the producer must wait"
    );
    assert_eq!(r.try_read_into(&mut out).expect("read"), ReadOutcome::Empty);
    assert!(
        r.take_producer_waiting(),
        "passing the padding freed the space the producer waits for: it must be woken"
    );
    assert!(!r.take_producer_waiting(), "one wake-up per freeing");
    assert_eq!(r.ring().stats().wakeups, 1, "the wake-up was counted once");
}

#[test]
fn make_room_pads_a_frame_that_must_start_a_new_lap() {
    let (mut w, mut r, _memfd) = pair(4096);
    let mut out = Vec::new();
    assert!(write(&mut w, &[1u8; 3000]));
    assert_eq!(
        r.try_read_into(&mut out).expect("read"),
        ReadOutcome::Message
    );
    // 3500 bytes fit only at offset 0, after the consumer has passed the 1072-byte tail.
    assert!(!w.make_room(3500).expect("room"));
    assert!(
        w.prepare_to_sleep(3500).expect("prepare"),
        "nothing to do but wait for the consumer"
    );
    assert_eq!(r.try_read_into(&mut out).expect("read"), ReadOutcome::Empty);
    assert!(
        r.take_producer_waiting(),
        "passing the padding wakes the producer"
    );
    w.done_sleeping();
    assert!(w.make_room(3500).expect("room"));
    assert!(write(&mut w, &[2u8; 3500]));
    assert_eq!(
        r.try_read_into(&mut out).expect("read"),
        ReadOutcome::Message
    );
    assert_eq!(out, vec![2u8; 3500]);
}

/// Layout 3 wakes by tickets: a waker remembers the ticket it last woke. A side that
/// attaches anew (a new `RingReader` or `RingWriter` on the same ring) must not sleep on
/// that same ticket, or the waker takes it for a sleep already woken and never wakes it.
#[test]
fn a_consumer_that_attaches_anew_is_woken_on_its_first_sleep() {
    let (mut w, mut r, memfd) = pair(4096);
    let mut out = Vec::new();
    assert!(r.prepare_to_sleep().expect("prepare"), "empty: sleep");
    assert!(write(&mut w, b"one"));
    assert!(w.take_consumer_waiting(), "the first consumer is woken");
    r.done_sleeping();
    assert_eq!(
        read_settled(&mut r, &mut out).expect("read"),
        ReadOutcome::Message
    );
    drop(r);
    // The next consumer (the producer wrote nothing meanwhile, so it never saw the flag
    // down) sleeps, and the producer writes.
    let open = memfd.share(Some(Role::Consumer)).expect("share");
    let mut r = RingReader::new(SharedRing::open(open, 4096).expect("open")).expect("reader");
    assert!(r.prepare_to_sleep().expect("prepare"), "empty: sleep");
    assert!(write(&mut w, b"two"));
    assert!(
        w.take_consumer_waiting(),
        "the new consumer sleeps and data came: it must be woken"
    );
}

#[test]
fn a_producer_that_attaches_anew_is_woken_on_its_first_sleep() {
    let (mut w, mut r, memfd) = pair(4096);
    let mut out = Vec::new();
    // Wrap the ring: a 3000-byte message read, then 1000 and (after padding) 2000 unread,
    // so that 1000 bytes are free, not enough for the next 2000.
    assert!(write(&mut w, &[1u8; 3000]));
    assert_eq!(
        read_settled(&mut r, &mut out).expect("read"),
        ReadOutcome::Message
    );
    assert!(write(&mut w, &[2u8; 1000]));
    assert!(write(&mut w, &[3u8; 2000]));
    assert!(w.prepare_to_sleep(2000).expect("prepare"), "full: sleep");
    assert_eq!(
        read_settled(&mut r, &mut out).expect("read"),
        ReadOutcome::Message
    );
    assert!(r.take_producer_waiting(), "the first producer is woken");
    w.done_sleeping();
    drop(w);
    // The next producer (the consumer freed nothing meanwhile, so it never saw the flag
    // down) waits for more room than there is, and the consumer frees some.
    let open = memfd.share(Some(Role::Producer)).expect("share");
    let mut w = RingWriter::new(SharedRing::open(open, 4096).expect("open")).expect("writer");
    assert!(w.prepare_to_sleep(3000).expect("prepare"), "full: sleep");
    assert_eq!(
        read_settled(&mut r, &mut out).expect("read"),
        ReadOutcome::Message
    );
    assert!(
        r.take_producer_waiting(),
        "the new producer sleeps and room came: it must be woken"
    );
}

/// The broker's count of `producer_gone` events in the ack page: counted by the broker's
/// mapping only (a producer's, which maps the page read-only, counts nothing), seen by the
/// consumer, saturating at a value the consumer scribbled, and zero for a layout without an
/// ack page.
#[test]
fn producers_gone_count_is_the_brokers_to_write_and_saturates() {
    let (writer, reader, files) = pair(4096);
    let broker = SharedRing::open(files.share(None).expect("share"), 4096).expect("open");
    assert_eq!(reader.ring().producers_gone_announced(), 0, "a new ring");
    assert_eq!(broker.announce_producer_gone(), Some(1));
    assert_eq!(broker.announce_producer_gone(), Some(2));
    assert_eq!(
        writer.ring().announce_producer_gone(),
        None,
        "read-only to the producer"
    );
    assert_eq!(reader.ring().producers_gone_announced(), 2);
    assert_eq!(writer.ring().producers_gone_announced(), 2);
    // The consumer's own page: it may scribble the count, the broker saturates on it.
    let ack = reader.ring().ack_page().expect("layout 3");
    ack.broker.producers_gone.store(u64::MAX, Ordering::Relaxed);
    assert_eq!(broker.announce_producer_gone(), Some(u64::MAX));
    let (_, old, _) = pair_in(2, 4096);
    assert_eq!(
        old.ring().producers_gone_announced(),
        0,
        "layout 2: no ack page"
    );
}
