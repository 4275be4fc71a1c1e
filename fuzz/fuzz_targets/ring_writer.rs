//! The producer side of a channel ring facing a hostile consumer.
//!
//! A 4 KiB ring is created with `SharedRing::create`; a `RingWriter` opens it
//! (`SharedRing::open`) with the fds the broker sends a producer, and so does an honest
//! `RingReader` (the consumer, while it behaves) with a consumer's: in layout 3
//! (`RingFiles::share(Some(role))`) each gets the other's memfd `O_RDONLY` (the writer the ack
//! page, the reader the ring memfd), so a store into the other side's memory is a SIGSEGV the
//! fuzzer reports; in layouts 1 and 2 both get a dup of the one memfd. The fuzz input is a
//! script interleaving the writer's calls (`try_write_with`, `try_write_up_to`, `try_write_batch`,
//! `make_room`, `count_lost` + `try_write_after_gap`, `try_write_gap`,
//! `try_write_end_of_stream`, `can_progress`, `prepare_to_sleep`, `done_sleeping`,
//! `take_consumer_waiting`, `stats`, re-attaching) with the consumer's: honest reads, sleeping
//! (`prepare_to_sleep`, `done_sleeping`) and re-attaching, or
//! hostile stores through the fuzzer's own mapping of what a consumer can write: `read_pos`
//! (anywhere in the u64 range, or near where it is, or near 2^64), `messages_read`, its
//! waiting flag, and in layouts 1 and 2 (one memfd) also the producer's waiting flag, the
//! dropped and evicted words, the producer's own counters, any header word, data bytes; in
//! layout 3 any word or bytes of its ack page (the ring memfd it can only read).
//!
//! Checks:
//! * the writer never panics and returns only `Ok(..)`, `Err(RingError::Corrupt(..))`, or
//!   `TooLarge` exactly when the message is larger than `max_message_len` (`Rejected` too when
//!   re-attaching to a ring whose identity was scribbled on);
//! * the writer changes no header word but its own (the producer line and the waiting flags:
//!   both in layouts 1 and 2, its own in layout 3) and nothing in the ack page, and the honest
//!   reader nothing but the consumer line and its flag (layouts 1 and 2: in the header, with
//!   the producer's flag it clears on a wake-up; layout 3: in the ack page, nothing in the ring
//!   memfd); a store anywhere else (the consumer's position, the identity) would be a wild
//!   write; the slices `fill` gets are exactly the length asked for;
//! * `stats().bytes_unread` never exceeds the capacity;
//! * while the consumer behaves, one wake-up per sleep each way: `take_consumer_waiting` is true
//!   exactly when the reader announced a sleep the writer has not woken yet, and
//!   `take_producer_waiting` exactly when the reader released space since it last looked while
//!   the writer sleeps unwoken, across re-attaches of either side (the broker clears the
//!   waiting flag of the side that left; a side that attaches anew must be woken on its first
//!   sleep, and a new waker wakes a layout-3 sleeper once more);
//! * as long as the consumer has only behaved, the honest reader receives exactly what the
//!   writer said it wrote, in order (loss counts included), and the writer reports no error.
//!
//! Input: an 8-byte starting position (bit 3: layout 1 if set, else bit 2: 3 if set, 2 if
//! clear; bits 0-1: 0 and 1 below
//! 2^62, 2 within a few laps below `MAX_POSITION`, 3 anywhere in the u64 range), then
//! operations of one opcode byte and its operands (little-endian; missing bytes read as 0).
//! `make_seeds.py` writes well-formed examples.
//!
//! The file stays whole (about 800 lines) on purpose: it is one fuzz target, one binary for
//! libFuzzer, and its length is the fixture, one opcode per writer call or consumer move, and
//! the check of each; read apart they would no longer show the model in one place.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shmem_broker_client::ring::{
    BatchOutcome, ReadOutcome, RingError, RingFds, RingFiles, RingReader, RingWriter, SharedRing,
    ACK_SIZE, HEADER_SIZE, MAX_POSITION,
};
use shmem_broker_client::Role;
use shmem_broker_testkit::ring::Mapping;
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

const CAPACITY: u64 = 4096;
const MAP_LEN: usize = (HEADER_SIZE + CAPACITY) as usize;

// Header layout, PROTOCOL.md "The ring" (layouts 1 and 2; layout 3 moves the consumer's line
// and flag to the ack page).
const MAGIC_AT: usize = 0;
const LAYOUT_AT: usize = 8;
const CAPACITY_AT: usize = 16;
const SEAL_KEY_AT: usize = 32;
const WRITE_POS_AT: usize = 64;
const READ_POS_AT: usize = 128;
/// The words a consumer may scribble on besides `read_pos`: flags (dropped/evicted share a
/// word), counters (wake-ups included), `write_pos`, the waiting flags (as u64 words).
const HOSTILE_WORDS: [usize; 11] = [24, 64, 72, 80, 88, 96, 136, 144, 192, 256, 8];
/// Header bytes the writer may change: the producer line (positions and counters, wake-ups at
/// 96) and the two waiting flags.
const WRITER_OWNS: [(usize, usize); 3] = [(64, 104), (192, 196), (256, 260)];
/// Header bytes the reader may change: the consumer line (wake-ups at 144) and the two
/// waiting flags (its own, and the producer's, which it clears on a wake-up).
const READER_OWNS: [(usize, usize); 3] = [(128, 152), (192, 196), (256, 260)];
const CONSUMER_WAITING_AT: usize = 192;
const PRODUCER_WAITING_AT: usize = 256;
// Layout 3: the ack page holds the consumer's line and flag, which the writer only reads, and
// a waker goes by tickets instead of clearing the sleeper's flag.
const ACK_READ_POS_AT: usize = 0;
const ACK_CONSUMER_WAITING_AT: usize = 64;
/// The words of the ack page a hostile consumer scribbles on: `read_pos`, `messages_read`,
/// `wakeups`, `consumer_waiting` (as a u64 word).
const ACK_HOSTILE_WORDS: [usize; 4] = [0, 8, 16, 64];
/// Header bytes the writer may change in layout 3: the producer line and its waiting flag.
const WRITER_OWNS_3: [(usize, usize); 2] = [(64, 104), (256, 260)];
/// Ack bytes the reader may change in layout 3: the consumer line (wake-ups at 16) and its
/// waiting flag.
const READER_OWNS_ACK_3: [(usize, usize); 2] = [(0, 24), (64, 68)];

/// A byte range: start, end (exclusive).
type Range = (usize, usize);

/// The first byte outside the `allowed` ranges (sorted) that differs between two copies of the
/// header. Compares slices (a memcmp), not bytes one by one: this runs after every call.
fn changed_outside(before: &[u8], after: &[u8], allowed: &[(usize, usize)]) -> Option<usize> {
    let mut from = 0;
    for &(start, end) in allowed.iter().chain([&(before.len(), before.len())]) {
        if before[from..start] != after[from..start] {
            let at = before[from..start]
                .iter()
                .zip(&after[from..start])
                .position(|(a, b)| a != b)?;
            return Some(from + at);
        }
        from = end;
    }
    None
}

/// The ring, created once per process and wiped before every input, and the fuzzer's own
/// mappings of it.
struct Fixture {
    /// The ring memfd and the ack page, as the broker holds them.
    files: RingFiles,
    /// The ring memfd, writable: the hostile consumer's in layouts 1 and 2; in layout 3 only
    /// `reset` (the broker setting up a fresh ring) writes through it, and the checks read it.
    raw: Mapping,
    /// The ack page, writable: the hostile consumer's in layout 3.
    ack: Mapping,
}

fn fixture() -> &'static Mutex<Fixture> {
    static FIXTURE: OnceLock<Mutex<Fixture>> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        // A layout-3 ring; `reset` rewrites the header to the layout an input picks (layouts 1
        // and 2 then use the ring memfd alone, as their brokers did).
        let (ring, files) = SharedRing::create("fuzz-writer", CAPACITY).expect("create ring");
        drop(ring);
        let broker = files.share(None).expect("broker fds");
        // Mappings of testkit (the one copy the attack tests use too); they live for the
        // whole process, in the fixture.
        let raw = Mapping::new(&broker.ring, MAP_LEN as u64);
        let ack = Mapping::new(broker.ack.as_ref().expect("layout 3"), ACK_SIZE);
        Mutex::new(Fixture { files, raw, ack })
    })
}

impl Fixture {
    fn u64_at(&self, offset: usize) -> &AtomicU64 {
        self.raw.u64_at(offset)
    }

    fn u32_at(&self, offset: usize) -> &AtomicU32 {
        self.raw.u32_at(offset)
    }

    fn write_bytes(&self, offset: usize, bytes: &[u8]) {
        // The writer and reader of this process hold no reference into the ring between their
        // calls.
        self.raw.write_bytes(offset, bytes);
    }

    fn ack_u64(&self, offset: usize) -> &AtomicU64 {
        self.ack.u64_at(offset)
    }

    fn write_ack_bytes(&self, offset: usize, bytes: &[u8]) {
        self.ack.write_bytes(offset, bytes);
    }

    /// The consumer's waiting flag in `layout`.
    fn consumer_waiting(&self, layout: u32) -> &AtomicU32 {
        if layout == 3 {
            self.ack.u32_at(ACK_CONSUMER_WAITING_AT)
        } else {
            self.u32_at(CONSUMER_WAITING_AT)
        }
    }

    /// The consumer's `read_pos` in `layout`.
    fn read_pos(&self, layout: u32) -> &AtomicU64 {
        if layout == 3 {
            self.ack_u64(ACK_READ_POS_AT)
        } else {
            self.u64_at(READ_POS_AT)
        }
    }

    /// A copy of the header page and of the ack page, to check what a call changed (nothing
    /// writes them while this copies: the writer and reader only run inside their calls, on
    /// this thread).
    fn snapshot(&self) -> (Vec<u8>, Vec<u8>) {
        (
            self.raw.copy(0, HEADER_SIZE as usize),
            self.ack.copy(0, ACK_SIZE as usize),
        )
    }

    /// Back to a freshly created ring in layout `layout` whose positions both stand at
    /// `start`.
    fn reset(&self, start: u64, layout: u32, seal_key: u64) {
        // No writer or reader exists right now.
        self.raw.zero();
        self.ack.zero();
        self.u64_at(MAGIC_AT)
            .store(u64::from_le_bytes(*b"SHMRING1"), Ordering::Relaxed);
        self.u32_at(LAYOUT_AT).store(layout, Ordering::Relaxed);
        if layout >= 2 {
            self.u64_at(SEAL_KEY_AT).store(seal_key, Ordering::Relaxed);
        }
        self.u64_at(CAPACITY_AT).store(CAPACITY, Ordering::Relaxed);
        self.u64_at(WRITE_POS_AT).store(start, Ordering::Relaxed);
        self.read_pos(layout).store(start, Ordering::Relaxed);
    }

    /// Maps the ring with the fds the broker gives `role` (layout 3: the other side's memfd
    /// read-only; layouts 1 and 2: a dup of the one memfd).
    fn open(&self, layout: u32, role: Role) -> Result<SharedRing, RingError> {
        let fds = if layout == 3 {
            self.files.share(Some(role)).expect("fds of a side")
        } else {
            RingFds {
                ring: OwnedFd::from(self.files.ring.as_file().try_clone().expect("dup")),
                ack: None,
            }
        };
        SharedRing::open(fds, CAPACITY)
    }
}

/// Operands; missing bytes read as zero.
struct Script<'a> {
    data: &'a [u8],
    at: usize,
}

impl Script<'_> {
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.data.len() - self.at);
        out[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        out
    }
    fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
    fn done(&self) -> bool {
        self.at >= self.data.len()
    }
}

/// What the honest reader must find next, while the consumer behaves.
#[derive(Debug, PartialEq)]
enum Expected {
    /// A message, and the total of losses reported before it.
    Data(u64, u32),
    EndOfStream(u64),
}

/// Message contents: a length and a sequence number the payload is derived from, so that
/// the comparison needs no copies.
fn payload(sequence: u32, len: usize) -> Vec<u8> {
    let seed = sequence.wrapping_mul(0x9E37_79B9);
    (0..len)
        .map(|i| (seed.wrapping_add(i as u32 * 31) >> 3) as u8)
        .collect()
}

struct State {
    writer: Option<RingWriter>,
    reader: Option<RingReader>,
    /// True while the consumer has only behaved and positions stayed below MAX_POSITION.
    clean: bool,
    expected: VecDeque<Expected>,
    sequence: u32,
    /// Losses written so far (what the reader's `missed` must reach).
    lost: u64,
    /// Losses earlier readers read (a re-attached reader counts from 0).
    missed_before: u64,
    /// The honest reader announced a sleep (its flag is up), and whether the writer woke it.
    consumer_asleep: bool,
    consumer_woken: bool,
    /// The writer announced a sleep, and whether the reader woke it.
    producer_asleep: bool,
    producer_woken: bool,
    /// The reader released space since its last `take_producer_waiting`.
    freed: bool,
}

impl State {
    /// Checks a writer call's result; `too_large` says whether `TooLarge` is the answer.
    fn check<T>(&self, result: Result<T, RingError>, too_large: bool, what: &str) -> Option<T> {
        match result {
            Ok(value) => {
                assert!(
                    !too_large,
                    "{what}: accepted a message above max_message_len"
                );
                Some(value)
            }
            Err(RingError::TooLarge { .. }) if too_large => None,
            Err(RingError::Corrupt(_)) if !self.clean => None,
            Err(err) => panic!("{what} (clean: {}): {err:?}", self.clean),
        }
    }

    fn next_message(&mut self, len: usize) -> Vec<u8> {
        self.sequence = self.sequence.wrapping_add(1);
        payload(self.sequence, len)
    }
}

/// Checks what the honest reader got. `last`: the last message of a read; a single read stops
/// right after it, so the reader's loss count is exactly the one before it (`exact`), while a
/// batch may read on over loss records, up to those before the next frame.
fn check_read(
    state: &mut State,
    outcome: Result<ReadOutcome, RingError>,
    out: &[u8],
    last: bool,
    exact: bool,
) {
    let missed = state.missed_before + state.reader.as_ref().map_or(0, RingReader::missed);
    match outcome {
        Ok(ReadOutcome::Message) if state.clean => match state.expected.pop_front() {
            Some(Expected::Data(lost, sequence)) => {
                assert!(
                    out == payload(sequence, out.len()),
                    "wrong message {sequence}"
                );
                let next = match state.expected.front() {
                    Some(Expected::Data(next, _) | Expected::EndOfStream(next)) => *next,
                    None => state.lost,
                };
                if last && exact {
                    assert_eq!(missed, lost, "losses reported before message {sequence}");
                } else if last {
                    assert!(
                        (lost..=next).contains(&missed),
                        "{missed} losses reported after message {sequence} (between {lost} and {next})"
                    );
                }
            }
            other => panic!("a message of {} bytes, expected {other:?}", out.len()),
        },
        Ok(ReadOutcome::EndOfStream) if state.clean => match state.expected.pop_front() {
            Some(Expected::EndOfStream(lost)) => assert_eq!(missed, lost),
            other => panic!("end of stream, expected {other:?}"),
        },
        Ok(ReadOutcome::Empty) if state.clean => {
            assert!(
                state.expected.is_empty(),
                "Empty with {:?} unread",
                state.expected
            );
            assert_eq!(missed, state.lost, "an empty ring, every loss record read");
        }
        Ok(_) => {}
        Err(RingError::Corrupt(_)) if !state.clean => {}
        Err(err) => panic!("reader (clean: {}): {err:?}", state.clean),
    }
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture().lock().unwrap_or_else(|e| e.into_inner());
    let mut script = Script { data, at: 0 };

    let first = script.u64();
    let (layout, unit) = match first & 12 {
        8 | 12 => (1, 8),
        4 => (3, 16),
        _ => (2, 16),
    };
    let start = match first & 3 {
        0 | 1 => first % (1 << 62),
        2 => MAX_POSITION - (first >> 4) % (4 * CAPACITY),
        _ => first,
    } & !(unit - 1);
    fixture.reset(start, layout, first.rotate_left(17) & !1);
    let clean = start <= MAX_POSITION;
    let attach_writer = |clean: bool| match fixture
        .open(layout, Role::Producer)
        .and_then(RingWriter::new)
    {
        Ok(writer) => Some(writer),
        Err(RingError::Corrupt(_) | RingError::Rejected(_)) if !clean => None,
        Err(err) => panic!("writer attach (clean: {clean}): {err:?}"),
    };
    let attach_reader = |clean: bool| match fixture
        .open(layout, Role::Consumer)
        .and_then(RingReader::new)
    {
        Ok(reader) => Some(reader),
        Err(RingError::Corrupt(_) | RingError::Rejected(_)) if !clean => None,
        Err(err) => panic!("reader attach (clean: {clean}): {err:?}"),
    };
    let mut state = State {
        writer: attach_writer(clean),
        reader: attach_reader(clean),
        clean,
        expected: VecDeque::new(),
        sequence: 0,
        lost: 0,
        missed_before: 0,
        consumer_asleep: false,
        consumer_woken: false,
        producer_asleep: false,
        producer_woken: false,
        freed: false,
    };
    let max = state
        .writer
        .as_ref()
        .map_or(CAPACITY - 16, RingWriter::max_message_len) as usize;
    let mut out = Vec::new();
    let mut scratch = Vec::new();

    let mut steps = 0;
    while !script.done() && steps < 512 {
        steps += 1;
        let op = script.u8() % 16;
        let before = fixture.snapshot();
        match op {
            // Writer calls.
            0..=2 => {
                let len = usize::from(script.u16()) % (max + 64);
                let message = state.next_message(len.min(max));
                let sequence = state.sequence;
                let Some(writer) = state.writer.as_mut() else {
                    continue;
                };
                let result = writer.try_write_with(len, |buf| {
                    assert_eq!(buf.len(), len, "fill got a slice of another length");
                    buf.copy_from_slice(&message);
                });
                if state.check(result, len > max, "try_write_with") == Some(true) {
                    state
                        .expected
                        .push_back(Expected::Data(state.lost, sequence));
                }
            }
            3 => {
                let reserve = usize::from(script.u16()) % (max + 1);
                let used = usize::from(script.u16()) % (reserve + 2);
                let message = state.next_message(used.min(reserve));
                let sequence = state.sequence;
                let Some(writer) = state.writer.as_mut() else {
                    continue;
                };
                let result = writer.try_write_up_to(reserve, |buf| {
                    assert_eq!(buf.len(), reserve, "fill got a slice of another length");
                    buf[..message.len()].copy_from_slice(&message);
                    used
                });
                if let Some(Some(n)) = state.check(result, false, "try_write_up_to") {
                    assert_eq!(n, used.min(reserve), "length written");
                    if n > 0 || reserve == 0 {
                        state
                            .expected
                            .push_back(Expected::Data(state.lost, sequence));
                    }
                }
            }
            4 => {
                let count = usize::from(script.u8() % 8) + 1;
                let len = usize::from(script.u8()) * 3;
                let messages: Vec<(u32, Vec<u8>)> = (0..count)
                    .map(|i| {
                        let message = state.next_message(len + i);
                        (state.sequence, message)
                    })
                    .collect();
                let Some(writer) = state.writer.as_mut() else {
                    continue;
                };
                let refs: Vec<&[u8]> = messages.iter().map(|(_, m)| m.as_slice()).collect();
                let result = writer.try_write_batch(&refs);
                if let Some(n) = state.check(result, false, "try_write_batch") {
                    assert!(n <= count);
                    for (sequence, _) in messages.iter().take(n) {
                        state
                            .expected
                            .push_back(Expected::Data(state.lost, *sequence));
                    }
                }
            }
            5 => {
                let len = usize::from(script.u16()) % (max + 64);
                let Some(writer) = state.writer.as_mut() else {
                    continue;
                };
                let result = writer.make_room(len);
                state.check(result, len > max, "make_room");
            }
            6 => {
                let missed = u64::from(script.u8()) + 1;
                let len = usize::from(script.u16()) % (max / 2);
                let message = state.next_message(len);
                let sequence = state.sequence;
                let Some(writer) = state.writer.as_mut() else {
                    continue;
                };
                writer.count_lost(missed);
                let result = writer.try_write_after_gap(missed, &message);
                if state.check(result, false, "try_write_after_gap") == Some(true) {
                    state.lost = state.lost.saturating_add(missed);
                    state
                        .expected
                        .push_back(Expected::Data(state.lost, sequence));
                }
            }
            7 => {
                let missed = script.u64() >> (script.u8() % 64);
                let Some(writer) = state.writer.as_mut() else {
                    continue;
                };
                let result = writer.try_write_gap(missed);
                if state.check(result, false, "try_write_gap") == Some(true) {
                    // Saturating, as the reader counts.
                    state.lost = state.lost.saturating_add(missed);
                }
            }
            8 => {
                let Some(writer) = state.writer.as_mut() else {
                    continue;
                };
                let result = writer.try_write_end_of_stream();
                if state.check(result, false, "try_write_end_of_stream") == Some(true) {
                    state.expected.push_back(Expected::EndOfStream(state.lost));
                }
            }
            9 => {
                let len = usize::from(script.u16()) % (max + 1);
                let sub = script.u8() % 5;
                let Some(writer) = state.writer.as_mut() else {
                    continue;
                };
                match sub {
                    0 => {
                        let result = writer.can_progress(len);
                        state.check(result, false, "can_progress");
                    }
                    1 => {
                        let result = writer.prepare_to_sleep(len);
                        if let Some(sleep) = state.check(result, false, "prepare_to_sleep") {
                            state.producer_asleep = sleep;
                            state.producer_woken = false;
                        }
                    }
                    2 => {
                        writer.done_sleeping();
                        state.producer_asleep = false;
                    }
                    3 => {
                        // Exactly one wake-up per sleep of the consumer.
                        let woke = writer.take_consumer_waiting();
                        if state.clean {
                            assert_eq!(
                                woke,
                                state.consumer_asleep && !state.consumer_woken,
                                "take_consumer_waiting (consumer asleep: {}, woken: {})",
                                state.consumer_asleep,
                                state.consumer_woken
                            );
                        }
                        state.consumer_woken |= woke;
                    }
                    _ => {
                        let stats = writer.ring().stats();
                        assert!(stats.bytes_unread <= CAPACITY, "{stats:?}");
                    }
                }
            }
            // The honest consumer.
            10 => {
                let Some(reader) = state.reader.as_mut() else {
                    continue;
                };
                let before = reader.position();
                let outcome = reader.try_read_into(&mut out);
                // Exactly one wake-up per sleep of the producer, on the first read that
                // released space (this one or a batch since the last look).
                let freed = state.freed || reader.position() != before;
                let woke = reader.take_producer_waiting();
                if state.clean {
                    assert_eq!(
                        woke,
                        freed && state.producer_asleep && !state.producer_woken,
                        "take_producer_waiting (freed: {freed}, producer asleep: {}, woken: {})",
                        state.producer_asleep,
                        state.producer_woken
                    );
                }
                state.producer_woken |= woke;
                state.freed = false;
                check_read(&mut state, outcome, &out, true, true);
            }
            11 => {
                let limit = usize::from(script.u8() % 8) + 1;
                let Some(reader) = state.reader.as_mut() else {
                    continue;
                };
                let mut got = Vec::new();
                let before = reader.position();
                let outcome = reader.try_read_batch(limit, &mut scratch, |m| got.push(m.to_vec()));
                state.freed |= reader.position() != before;
                match outcome {
                    Ok(BatchOutcome::Messages(n)) => {
                        assert_eq!(n, got.len());
                        for (i, message) in got.iter().enumerate() {
                            let last = i + 1 == got.len();
                            let outcome = Ok(ReadOutcome::Message);
                            check_read(&mut state, outcome, message, last, false);
                        }
                    }
                    Ok(BatchOutcome::EndOfStream) => {
                        check_read(&mut state, Ok(ReadOutcome::EndOfStream), &[], true, true)
                    }
                    Ok(BatchOutcome::Empty) => {
                        check_read(&mut state, Ok(ReadOutcome::Empty), &[], true, true)
                    }
                    Err(err) => check_read(&mut state, Err(err), &[], true, true),
                }
            }
            // Either side detaches and comes back (the broker clears the waiting flag of the
            // side that left, as `SharedRing::clear_waiter` does), or the reader sleeps.
            12 => match script.u8() % 4 {
                0 => {
                    state.writer = None;
                    fixture
                        .u32_at(PRODUCER_WAITING_AT)
                        .store(0, Ordering::SeqCst);
                    state.producer_asleep = false;
                    // A new writer has woken nothing yet: in layout 3 it wakes a consumer
                    // asleep on a ticket once more (layouts 1 and 2: the flag is down once
                    // woken).
                    state.consumer_woken &= layout != 3;
                    state.writer = attach_writer(state.clean);
                    continue;
                }
                1 => {
                    let old = state.reader.take();
                    state.missed_before += old.as_ref().map_or(0, RingReader::missed);
                    drop(old);
                    fixture.consumer_waiting(layout).store(0, Ordering::SeqCst);
                    state.consumer_asleep = false;
                    state.freed = false;
                    state.producer_woken &= layout != 3;
                    state.reader = attach_reader(state.clean);
                    continue;
                }
                2 => {
                    let Some(reader) = state.reader.as_mut() else {
                        continue;
                    };
                    match reader.prepare_to_sleep() {
                        Ok(sleep) => {
                            assert!(
                                !(sleep && state.clean && !state.expected.is_empty()),
                                "the reader would sleep with {:?} unread",
                                state.expected
                            );
                            state.consumer_asleep = sleep;
                            state.consumer_woken = false;
                        }
                        Err(RingError::Corrupt(_)) if !state.clean => {}
                        Err(err) => panic!("reader prepare_to_sleep: {err:?}"),
                    }
                }
                _ => {
                    let Some(reader) = state.reader.as_mut() else {
                        continue;
                    };
                    reader.done_sleeping();
                    state.consumer_asleep = false;
                }
            },
            // From here on, hostile.
            13 => {
                state.clean = false;
                let value = script.u64();
                let read_pos = fixture.read_pos(layout).load(Ordering::Relaxed);
                let write_pos = fixture.u64_at(WRITE_POS_AT).load(Ordering::Relaxed);
                let position = match script.u8() % 6 {
                    0 => value,
                    1 => read_pos.wrapping_add(value % 64).wrapping_sub(32),
                    2 => write_pos.wrapping_sub(value % (2 * CAPACITY)),
                    3 => u64::MAX - value % 64,
                    4 => MAX_POSITION.wrapping_add(value % 64).wrapping_sub(32),
                    _ => read_pos.wrapping_add(value % (2 * CAPACITY)),
                };
                fixture.read_pos(layout).store(position, Ordering::SeqCst);
                continue;
            }
            14 => {
                state.clean = false;
                let pick = usize::from(script.u8());
                let value = script.u64();
                if layout == 3 {
                    // What the consumer can write: its ack page.
                    let offset = if pick < 200 {
                        ACK_HOSTILE_WORDS[pick % ACK_HOSTILE_WORDS.len()]
                    } else {
                        (pick * 8) % ACK_SIZE as usize
                    };
                    fixture.ack_u64(offset).store(value, Ordering::SeqCst);
                    continue;
                }
                let offset = if pick < 200 {
                    HOSTILE_WORDS[pick % HOSTILE_WORDS.len()]
                } else {
                    (pick * 8) % HEADER_SIZE as usize
                };
                fixture.u64_at(offset).store(value, Ordering::SeqCst);
                continue;
            }
            _ => {
                state.clean = false;
                let offset = usize::from(script.u16()) % CAPACITY as usize;
                let n = usize::from(script.u8() % 32);
                let bytes: Vec<u8> = (0..n).map(|_| script.u8()).collect();
                if layout == 3 {
                    // The data area is the producer's: bytes of the ack page instead.
                    fixture.write_ack_bytes(offset % ACK_SIZE as usize, &bytes);
                } else {
                    fixture.write_bytes(HEADER_SIZE as usize + offset, &bytes);
                }
                continue;
            }
        }
        // Only the writer's own words may have changed (the reader calls above write the
        // consumer's: they are checked against their own words). In layouts 1 and 2 the ack
        // page is not part of the ring: nobody may change it.
        let after = fixture.snapshot();
        let (header_allowed, ack_allowed): (&[Range], &[Range]) = match (layout, op >= 10) {
            (3, false) => (&WRITER_OWNS_3, &[]),
            (3, true) => (&[], &READER_OWNS_ACK_3),
            (_, false) => (&WRITER_OWNS, &[]),
            (_, true) => (&READER_OWNS, &[]),
        };
        if let Some(at) = changed_outside(&before.0, &after.0, header_allowed) {
            panic!(
                "operation {op} changed header byte {at}: {:#x} -> {:#x}",
                before.0[at], after.0[at]
            );
        }
        if let Some(at) = changed_outside(&before.1, &after.1, ack_allowed) {
            panic!(
                "operation {op} changed ack byte {at}: {:#x} -> {:#x}",
                before.1[at], after.1[at]
            );
        }
        // An honest ring that went past MAX_POSITION (after 2^64 - 2^42 bytes) is reported
        // corrupt from then on.
        if fixture.u64_at(WRITE_POS_AT).load(Ordering::Relaxed) > MAX_POSITION {
            state.clean = false;
        }
    }
});
