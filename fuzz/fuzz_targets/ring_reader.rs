//! The consumer side of a channel ring facing a hostile producer.
//!
//! A 4 KiB ring is created with `SharedRing::create`; a `RingReader` opens it
//! (`SharedRing::open`) with the fds the broker would send a consumer: in layout 3
//! (`RingFiles::share(Some(Role::Consumer))`) the ring memfd `O_RDONLY` and its own ack page
//! writable, so a store by the reader into the producer's memory is a SIGSEGV the fuzzer
//! reports; in layouts 1 and 2 a dup of the one memfd. The fuzz input is a script for the other
//! side, which maps the ring memfd itself (and the ack page read-only, as a producer gets it)
//! and may behave (write well-formed frames and publish them as PROTOCOL.md says) or scribble
//! anything on the header and the data area, interleaved with the reader's calls: `try_read_into`,
//! `try_read_batch`, `has_unread`, `prepare_to_sleep`, `done_sleeping`, `take_producer_waiting`,
//! `stats`, and re-attaching (a new `RingReader` on a new mapping, resuming at the shared
//! `read_pos`).
//!
//! Checks:
//! * the reader never panics and only ever returns `Ok(..)` or `Err(RingError::Corrupt(..))`
//!   (`Rejected` too when re-attaching to a ring whose identity was scribbled on);
//! * it never touches memory outside the ring: ASan for the heap, debug assertions on every
//!   in-ring atomic access, and a PROT_NONE guard page right after the reader's mapping
//!   whenever the address space allows one (a read past the end is a SIGSEGV);
//! * a message it hands out fits in the ring (at most `capacity` minus a frame header);
//! * as long as the producer has only behaved, the reader returns exactly what was sent, in
//!   order, with end-of-stream marks where they were written, and never an error. In layout 3
//!   the producer may write what it likes in the header words layout 3 leaves unused (where
//!   layouts 1 and 2 kept the consumer's line and flag): that is still behaving, and the reader
//!   must not look there.
//!
//! Input: an 8-byte starting position (bits 2-3 pick the ring layout: bit 3 set 1; else bit 2
//! set 3, clear 2; layouts 2 and 3 seal each publish as PROTOCOL.md says; bits 0-1 where it
//! lies: 0 and 1 below
//! 2^62, 2 within a few laps below `MAX_POSITION`, 3 anywhere in the u64 range, so positions
//! near 2^64 are explored, where the reader must refuse to attach), then operations of one
//! opcode byte and its operands (little-endian; missing bytes read as 0). A ring is only
//! "clean" while its positions stay at or below `MAX_POSITION`. `make_seeds.py` writes
//! well-formed examples.
//!
//! The file stays whole (about 800 lines) on purpose: it is one fuzz target, one binary for
//! libFuzzer, and its length is the fixture, one opcode per reader call or hostile store, and
//! the check of each; read apart they would no longer show the model in one place.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shmem_broker_client::ring::{
    BatchOutcome, ReadOutcome, RingError, RingFds, RingFiles, RingReader, SharedRing, ACK_SIZE,
    HEADER_SIZE, MAX_POSITION,
};
use shmem_broker_client::Role;
use shmem_broker_testkit::ring::Mapping;
use std::collections::{HashSet, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

const CAPACITY: u64 = 4096;
const MAP_LEN: usize = (HEADER_SIZE + CAPACITY) as usize;
const RING_NAME: &str = "fuzz-ring";

// Header layout, PROTOCOL.md "The ring" (layouts 1 and 2; layout 3 moves the consumer's line
// and flag to the ack page, at ACK_READ_POS_AT...).
const MAGIC_AT: usize = 0;
const LAYOUT_AT: usize = 8;
const CAPACITY_AT: usize = 16;
const SEAL_KEY_AT: usize = 32;
const WRITE_POS_AT: usize = 64;
const MESSAGES_WRITTEN_AT: usize = 72;
const BYTES_WRITTEN_AT: usize = 80;
const READ_POS_AT: usize = 128;
const MESSAGES_READ_AT: usize = 136;
const CONSUMER_WAITING_AT: usize = 192;
// The ack page of layout 3.
const ACK_READ_POS_AT: usize = 0;
const ACK_MESSAGES_READ_AT: usize = 8;
const ACK_CONSUMER_WAITING_AT: usize = 64;
/// Header bytes a layout-3 reader reads: the identity, the producer line, `producer_waiting`.
/// The producer may write the rest without breaking the protocol.
const LAYOUT_3_READ: [(usize, usize); 3] = [(0, 40), (64, 96), (256, 260)];

const KIND_DATA: u32 = 1;
const KIND_END_OF_STREAM: u32 = 2;
const KIND_PAD: u32 = 3;

/// The ring, created once per process and wiped before every input, and the fuzzer's own
/// mappings of it (the "producer process").
struct Fixture {
    /// The ring memfd and the ack page, as the broker holds them.
    files: RingFiles,
    /// The ring memfd, writable: the producer's.
    raw: Mapping,
    /// The ack page read-only, as a layout-3 producer maps it.
    ack: Mapping,
    /// The ack page writable: only `reset` (the broker setting up a fresh ring) and the
    /// known-issue stand-ins write through it, never the producer.
    ack_broker: Mapping,
    /// Start addresses of mappings of the ring memfd that are not the reader's.
    others: HashSet<usize>,
    /// Guard pages we placed (they stay; a later reader mapping at the same place reuses them).
    guards: HashSet<usize>,
    /// Where to put a guard page before the next attach: the top page of the last reader's
    /// mapping, when the page after it belonged to someone else. The next mapping then lands
    /// just below the guard.
    pending_guard: Option<usize>,
}

fn fixture() -> &'static Mutex<Fixture> {
    static FIXTURE: OnceLock<Mutex<Fixture>> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        // A layout-3 ring; `reset` rewrites the header to the layout an input picks (layouts 1
        // and 2 then use the ring memfd alone, as their brokers did).
        let (ring, files) = SharedRing::create(RING_NAME, CAPACITY).expect("create ring");
        drop(ring);
        let producer = files.share(Some(Role::Producer)).expect("producer fds");
        // Mappings of testkit (the one copy the attack tests use too); they live for the
        // whole process, in the fixture.
        let raw = Mapping::new(&producer.ring, MAP_LEN as u64);
        let ack = Mapping::read_only(producer.ack.as_ref().expect("layout 3"), ACK_SIZE)
            .expect("map the ack page read-only");
        let broker = files.share(None).expect("broker fds");
        let ack_broker = Mapping::new(broker.ack.as_ref().expect("layout 3"), ACK_SIZE);
        let others = ring_mappings()
            .into_iter()
            .map(|(start, _)| start)
            .collect();
        Mutex::new(Fixture {
            files,
            raw,
            ack,
            ack_broker,
            others,
            guards: HashSet::new(),
            pending_guard: None,
        })
    })
}

/// (start, end) of every mapping of the ring memfd (not the ack page) in this process.
fn ring_mappings() -> Vec<(usize, usize)> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let tag = format!("/memfd:shmem-broker:{RING_NAME}");
    let deleted = format!("{tag} (deleted)");
    maps.lines()
        .filter(|line| line.ends_with(&deleted) || line.ends_with(&tag))
        .filter_map(|line| {
            let range = line.split_whitespace().next()?;
            let (start, end) = range.split_once('-')?;
            Some((
                usize::from_str_radix(start, 16).ok()?,
                usize::from_str_radix(end, 16).ok()?,
            ))
        })
        .collect()
}

impl Fixture {
    fn u64_at(&self, offset: usize) -> &AtomicU64 {
        self.raw.u64_at(offset)
    }

    fn u32_at(&self, offset: usize) -> &AtomicU32 {
        self.raw.u32_at(offset)
    }

    fn data_u32(&self, offset: u64) -> &AtomicU32 {
        self.u32_at(HEADER_SIZE as usize + offset as usize)
    }

    fn write_bytes(&self, offset: usize, bytes: &[u8]) {
        self.raw.write_bytes(offset, bytes);
    }

    fn data_u64(&self, offset: u64) -> &AtomicU64 {
        self.u64_at(HEADER_SIZE as usize + offset as usize)
    }

    /// A word of the ack page through the broker's writable mapping.
    fn ack_broker_u64(&self, offset: usize) -> &AtomicU64 {
        self.ack_broker.u64_at(offset)
    }

    /// The consumer's `read_pos` in `format`'s layout, as the producer sees it (through its
    /// read-only mapping of the ack page in layout 3).
    fn read_pos(&self, format: Format) -> u64 {
        if format.layout == 3 {
            self.ack.load_u64(ACK_READ_POS_AT)
        } else {
            self.u64_at(READ_POS_AT).load(Ordering::Acquire)
        }
    }

    /// The consumer's waiting flag in `format`'s layout.
    fn consumer_waiting(&self, format: Format) -> u32 {
        if format.layout == 3 {
            self.ack.load_u32(ACK_CONSUMER_WAITING_AT)
        } else {
            self.u32_at(CONSUMER_WAITING_AT).load(Ordering::Relaxed)
        }
    }

    /// Back to a freshly created ring in `format`'s layout whose positions both stand at
    /// `start`.
    fn reset(&self, start: u64, format: Format) {
        // The broker setting up a fresh ring.
        self.raw.zero();
        self.ack_broker.zero();
        self.u64_at(MAGIC_AT)
            .store(u64::from_le_bytes(*b"SHMRING1"), Ordering::Relaxed);
        self.u32_at(LAYOUT_AT)
            .store(format.layout, Ordering::Relaxed);
        self.u64_at(SEAL_KEY_AT)
            .store(format.seal_key.unwrap_or(0), Ordering::Relaxed);
        self.u64_at(CAPACITY_AT).store(CAPACITY, Ordering::Relaxed);
        self.u64_at(WRITE_POS_AT).store(start, Ordering::Relaxed);
        if format.layout == 3 {
            self.ack_broker_u64(ACK_READ_POS_AT)
                .store(start, Ordering::Relaxed);
        } else {
            self.u64_at(READ_POS_AT).store(start, Ordering::Relaxed);
        }
    }

    /// A consumer attaching: new mappings of the fds the broker sends a consumer (layout 3:
    /// the ring memfd read-only, the ack page writable; layouts 1 and 2: a dup of the one
    /// memfd). Puts a guard page after the new ring mapping when that page is free.
    fn attach(&mut self, format: Format) -> Result<RingReader, RingError> {
        if known("attach-unaligned") && !self.read_pos(format).is_multiple_of(8) {
            // What the fix does: a consumer position that is not a frame boundary is corrupt.
            return Err(RingError::Corrupt(
                "unaligned read_pos (known issue)".into(),
            ));
        }
        if known("counter-overflow") {
            // Stand-in for the fix (wrapping counters): keep the scribbled count from overflowing.
            let count = if format.layout == 3 {
                self.ack_broker_u64(ACK_MESSAGES_READ_AT)
            } else {
                self.u64_at(MESSAGES_READ_AT)
            };
            count.store(
                count.load(Ordering::Relaxed).min(u64::MAX / 2),
                Ordering::Relaxed,
            );
        }
        if let Some(page) = self.pending_guard.take() {
            if place_guard(page) {
                self.guards.insert(page);
            }
        }
        let fds = if format.layout == 3 {
            self.files
                .share(Some(Role::Consumer))
                .expect("consumer fds")
        } else {
            let fd = OwnedFd::from(self.files.ring.as_file().try_clone().expect("dup"));
            RingFds {
                ring: fd,
                ack: None,
            }
        };
        let ring = SharedRing::open(fds, CAPACITY)?;
        self.guard_new_mapping();
        RingReader::new(ring)
    }

    /// Reading /proc/self/maps on every attach would cost most of the run (and feed the
    /// fuzzer string comparisons that have nothing to do with the ring), so it is done on a
    /// sample of attaches: a reader's mapping usually lands where the previous one was, so a
    /// guard placed once keeps serving. `SHMEM_FUZZ_STATS=1` prints how often it does.
    fn guard_new_mapping(&mut self) {
        static ATTACHES: AtomicU64 = AtomicU64::new(0);
        static SAMPLED: AtomicU64 = AtomicU64::new(0);
        static GUARDED: AtomicU64 = AtomicU64::new(0);
        let attaches = ATTACHES.fetch_add(1, Ordering::Relaxed) + 1;
        if !(attaches.is_power_of_two() || attaches.is_multiple_of(1024)) {
            return;
        }
        let sampled = SAMPLED.fetch_add(1, Ordering::Relaxed) + 1;
        for (start, end) in ring_mappings() {
            if self.others.contains(&start) {
                continue;
            }
            if self.guards.contains(&end) {
                GUARDED.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if place_guard(end) {
                self.guards.insert(end);
                GUARDED.fetch_add(1, Ordering::Relaxed);
            } else {
                self.pending_guard = Some(end - 4096);
            }
        }
        if sampled.is_multiple_of(64) && std::env::var_os("SHMEM_FUZZ_STATS").is_some() {
            eprintln!(
                "ring_reader: guard page after the reader's mapping in {} of {sampled} sampled attaches ({attaches} attaches)",
                GUARDED.load(Ordering::Relaxed)
            );
        }
    }
}

/// Maps a PROT_NONE page at `at` unless something is already there.
fn place_guard(at: usize) -> bool {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping; it fails with EEXIST if
    // the page is taken.
    let guard = unsafe {
        libc::mmap(
            at as *mut libc::c_void,
            4096,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if guard as usize == at {
        return true;
    }
    if guard != libc::MAP_FAILED {
        // An old kernel that ignored the flag and put it elsewhere.
        // SAFETY: the mapping we just got.
        unsafe { libc::munmap(guard, 4096) };
    }
    false
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
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
    fn done(&self) -> bool {
        self.at >= self.data.len()
    }
}

#[derive(PartialEq)]
enum Expected {
    Data(Vec<u8>),
    EndOfStream,
}

impl std::fmt::Debug for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expected::Data(m) => write!(f, "Data{:?}", summary([m])),
            Expected::EndOfStream => f.write_str("EndOfStream"),
        }
    }
}

/// The layout and frame format of the ring under test.
#[derive(Clone, Copy)]
struct Format {
    layout: u32,
    /// Frame header size; frames start and end at multiples of it.
    unit: u64,
    /// Layouts 2 and 3.
    seal_key: Option<u64>,
}

/// The producer: well-behaved when asked to send, hostile on other operations.
struct Producer {
    format: Format,
    /// Its private write position (resumed from the header on re-attach).
    write_pos: u64,
    messages: u64,
    bytes: u64,
    sequence: u32,
}

impl Producer {
    /// Stages frames as RingWriter does: a frame that would cross the end of the data area is
    /// preceded by a padding frame. Publishes whatever was staged (padding included) with one
    /// store. Returns the frames published (a prefix of `frames`).
    fn send(&mut self, ring: &Fixture, frames: &[(u32, Vec<u8>)]) -> usize {
        let unit = self.format.unit;
        let read_pos = ring.read_pos(self.format);
        if read_pos > self.write_pos
            || self.write_pos - read_pos > CAPACITY
            || !self.write_pos.is_multiple_of(unit)
            || self.write_pos > u64::MAX - 2 * CAPACITY
        {
            return 0; // scribbled on: a real producer would report corruption here
        }
        let mut free = CAPACITY - (self.write_pos - read_pos);
        let mut staged = self.write_pos;
        let mut sent = 0;
        for (kind, payload) in frames {
            let size = unit + (payload.len() as u64).div_ceil(unit) * unit;
            let offset = staged % CAPACITY;
            let until_end = CAPACITY - offset;
            if size > until_end {
                if free < until_end {
                    break;
                }
                ring.data_u32(offset)
                    .store((until_end - unit) as u32, Ordering::Relaxed);
                ring.data_u32(offset + 4).store(KIND_PAD, Ordering::Relaxed);
                staged += until_end;
                free -= until_end;
            }
            if free < size {
                break;
            }
            let offset = staged % CAPACITY;
            ring.write_bytes(HEADER_SIZE as usize + (offset + unit) as usize, payload);
            ring.data_u32(offset)
                .store(payload.len() as u32, Ordering::Relaxed);
            ring.data_u32(offset + 4).store(*kind, Ordering::Relaxed);
            staged += size;
            free -= size;
            sent += 1;
            if *kind == KIND_DATA {
                self.messages += 1;
                self.bytes += payload.len() as u64;
            }
        }
        if staged != self.write_pos {
            let first = self.write_pos;
            let first_offset = first % CAPACITY;
            if self.format.seal_key.is_some() {
                // The first frame's span covers the whole publish (0 if it cannot say).
                let units = (staged - first) / unit;
                let span = if units <= 0xffff { units as u32 } else { 0 };
                let word = ring.data_u32(first_offset + 4);
                let kind = word.load(Ordering::Relaxed) & 0xffff;
                word.store(kind | span << 16, Ordering::Relaxed);
            }
            self.write_pos = staged;
            ring.u64_at(WRITE_POS_AT).store(staged, Ordering::SeqCst);
            ring.u64_at(MESSAGES_WRITTEN_AT)
                .store(self.messages, Ordering::Relaxed);
            ring.u64_at(BYTES_WRITTEN_AT)
                .store(self.bytes, Ordering::Relaxed);
            if let Some(key) = self.format.seal_key {
                ring.data_u64(first_offset + 8)
                    .store((first + 1) ^ key, Ordering::SeqCst);
            }
        }
        sent
    }

    fn payload(&mut self, len: usize, fill: u8) -> Vec<u8> {
        self.sequence = self.sequence.wrapping_add(1);
        let seed = self.sequence.wrapping_mul(0x9E37_79B9) ^ u32::from(fill);
        (0..len)
            .map(|i| (seed.wrapping_add(i as u32 * 31) >> 3) as u8)
            .collect()
    }
}

/// Reported bugs that the fuzzer may step over while they are being fixed, so a long run can
/// look for others: `SHMEM_FUZZ_KNOWN=batch-eos-after-pad,...` (see fuzz/README.md).
fn known(issue: &str) -> bool {
    static KNOWN: OnceLock<Vec<String>> = OnceLock::new();
    KNOWN
        .get_or_init(|| {
            std::env::var("SHMEM_FUZZ_KNOWN")
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().to_string())
                .collect()
        })
        .iter()
        .any(|k| k == issue)
}

/// Messages as (length, checksum) for readable assertion failures.
fn summary<'a>(messages: impl IntoIterator<Item = &'a Vec<u8>>) -> Vec<(usize, u32)> {
    messages
        .into_iter()
        .map(|m| {
            let sum = m.iter().fold(0u32, |h, &b| h.rotate_left(5) ^ u32::from(b));
            (m.len(), sum)
        })
        .collect()
}

fn check_error(err: RingError, clean: bool, what: &str) {
    assert!(
        !clean,
        "{what} failed although the producer followed the protocol: {err}"
    );
    assert!(
        matches!(err, RingError::Corrupt(_)),
        "{what}: unexpected error kind: {err:?}"
    );
}

fn check_message(message: &[u8], format: Format) {
    assert!(
        message.len() as u64 <= CAPACITY - format.unit,
        "a {}-byte message out of a {CAPACITY}-byte ring",
        message.len()
    );
}

fuzz_target!(|data: &[u8]| {
    let mut fixture = fixture().lock().unwrap_or_else(|e| e.into_inner());
    let mut script = Script { data, at: 0 };

    // Both positions start at the same place, a multiple of the frame unit (so the first
    // frames may need padding); only hostile operations change that. Above MAX_POSITION no
    // ring is clean: the reader must refuse it.
    let first = script.u64();
    let format = if first & 8 != 0 {
        Format {
            layout: 1,
            unit: 8,
            seal_key: None,
        }
    } else {
        Format {
            layout: if first & 4 != 0 { 3 } else { 2 },
            unit: 16,
            seal_key: Some(first.rotate_left(17) & !1),
        }
    };
    let start = match first & 3 {
        0 | 1 => first % (1 << 62),
        2 => MAX_POSITION - (first >> 4) % (4 * CAPACITY),
        _ => first,
    } & !(format.unit - 1);
    fixture.reset(start, format);
    let mut producer = Producer {
        format,
        write_pos: start,
        messages: 0,
        bytes: 0,
        sequence: 0,
    };
    // While true, the producer has done nothing but follow the protocol, so the reader must
    // deliver exactly `expected`.
    let mut clean = start <= MAX_POSITION;
    let mut expected: VecDeque<Expected> = VecDeque::new();
    let mut reader = match fixture.attach(format) {
        Ok(reader) => Some(reader),
        Err(RingError::Corrupt(_)) if !clean => None,
        Err(err) => panic!("attach to a fresh ring at {start}: {err:?}"),
    };
    if !clean {
        assert!(reader.is_none(), "attached at {start}, above MAX_POSITION");
    }
    let mut out = Vec::new();
    let mut scratch = Vec::new();

    let mut steps = 0;
    while !script.done() && steps < 512 {
        steps += 1;
        match script.u8() % 16 {
            // Well-formed data frame.
            0..=2 => {
                let len = (script.u16() as u64 % (CAPACITY - 7)) as usize;
                let fill = script.u8();
                let payload = producer.payload(len, fill);
                if producer.send(&fixture, &[(KIND_DATA, payload.clone())]) == 1 {
                    expected.push_back(Expected::Data(payload));
                }
            }
            // Several frames, one publish (try_write_batch).
            3 => {
                let count = usize::from(script.u8() % 8) + 1;
                let len = usize::from(script.u8()) * 3;
                let frames: Vec<(u32, Vec<u8>)> = (0..count)
                    .map(|i| (KIND_DATA, producer.payload(len + i, i as u8)))
                    .collect();
                let sent = producer.send(&fixture, &frames);
                for (_, payload) in frames.into_iter().take(sent) {
                    expected.push_back(Expected::Data(payload));
                }
            }
            4 => {
                if producer.send(&fixture, &[(KIND_END_OF_STREAM, Vec::new())]) == 1 {
                    expected.push_back(Expected::EndOfStream);
                }
            }
            5 => {
                let Some(reader) = reader.as_mut() else {
                    continue;
                };
                match reader.try_read_into(&mut out) {
                    Ok(ReadOutcome::Message) => {
                        check_message(&out, format);
                        if clean {
                            match expected.pop_front() {
                                Some(Expected::Data(want)) => assert!(
                                    want == out,
                                    "wrong message: got {:?}, sent {:?}",
                                    summary([&out]),
                                    summary([&want])
                                ),
                                other => panic!(
                                    "got a message {:?}, expected {other:?}",
                                    summary([&out])
                                ),
                            }
                        }
                    }
                    Ok(ReadOutcome::EndOfStream) => {
                        if clean {
                            assert_eq!(expected.pop_front(), Some(Expected::EndOfStream));
                        }
                    }
                    Ok(ReadOutcome::Empty) => {
                        if clean && !known("empty-after-pad") {
                            assert!(expected.is_empty(), "Empty with {expected:?} unread");
                        }
                    }
                    Err(err) => check_error(err, clean, "try_read_into"),
                }
            }
            6 => {
                let Some(reader) = reader.as_mut() else {
                    continue;
                };
                let max = usize::from(script.u8() % 16);
                let mut got = Vec::new();
                match reader.try_read_batch(max, &mut scratch, |m| {
                    check_message(m, format);
                    got.push(m.to_vec())
                }) {
                    Ok(outcome) => {
                        if clean {
                            // A batch may stop early (the reader trusts the producer position
                            // it loaded last while that still shows unread bytes), but it must
                            // hand over at least one message if one is there, the messages in
                            // order, and stop before an end-of-stream mark.
                            let data_ahead = expected
                                .iter()
                                .take_while(|e| matches!(e, Expected::Data(_)))
                                .count()
                                .min(max);
                            match outcome {
                                BatchOutcome::Messages(n) if max == 0 => {
                                    assert!(n == 0 && got.is_empty())
                                }
                                BatchOutcome::Messages(n) => {
                                    assert!(
                                        n == got.len() && n >= 1 && n <= data_ahead,
                                        "batch of {n} with {expected:?} unread (max {max})"
                                    );
                                    for message in &got {
                                        match expected.pop_front() {
                                            Some(Expected::Data(want)) => assert!(
                                                want == *message,
                                                "wrong message in batch: got {:?}, sent {:?}",
                                                summary([message]),
                                                summary([&want])
                                            ),
                                            other => panic!("batch message, expected {other:?}"),
                                        }
                                    }
                                }
                                BatchOutcome::EndOfStream
                                    if known("batch-eos-after-pad") && data_ahead > 0 =>
                                {
                                    // It handed out messages, then consumed the mark behind
                                    // padding.
                                    for _ in &got {
                                        expected.pop_front();
                                    }
                                    assert_eq!(expected.pop_front(), Some(Expected::EndOfStream));
                                }
                                BatchOutcome::EndOfStream => {
                                    assert!(
                                        got.is_empty()
                                            && expected.pop_front() == Some(Expected::EndOfStream),
                                        "EndOfStream after {:?} with {expected:?} unread",
                                        summary(&got)
                                    );
                                }
                                BatchOutcome::Empty => assert!(
                                    expected.is_empty() || known("empty-after-pad"),
                                    "batch Empty with {expected:?} unread"
                                ),
                            }
                        } else if let BatchOutcome::Messages(n) = outcome {
                            assert_eq!(n, got.len());
                        }
                    }
                    Err(err) => check_error(err, clean, "try_read_batch"),
                }
            }
            7 => {
                let Some(reader) = reader.as_mut() else {
                    continue;
                };
                match script.u8() % 6 {
                    0 => {
                        let unread = reader.has_unread();
                        if clean {
                            // Padding alone counts as unread, so only one direction holds.
                            assert!(unread || expected.is_empty());
                        }
                    }
                    1 => match reader.prepare_to_sleep() {
                        Ok(sleep) => {
                            if clean && !expected.is_empty() {
                                assert!(!sleep, "would sleep with messages unread");
                            }
                        }
                        Err(err) => check_error(err, clean, "prepare_to_sleep"),
                    },
                    2 => reader.done_sleeping(),
                    3 => {
                        let _ = reader.take_producer_waiting();
                    }
                    4 => {
                        let stats = reader.ring().stats();
                        assert!(stats.bytes_unread <= CAPACITY);
                    }
                    _ => {
                        let _ = reader.ring().is_dropped();
                        let _ = fixture.consumer_waiting(format);
                    }
                }
            }
            // The consumer detaches (or dies) and a new one attaches.
            8 => {
                reader = None;
                match fixture.attach(format) {
                    Ok(new) => reader = Some(new),
                    Err(RingError::Corrupt(_) | RingError::Rejected(_)) if !clean => {}
                    Err(err) => panic!("re-attach failed (clean: {clean}): {err:?}"),
                }
            }
            // A new producer resumes at the published write position.
            9 => producer.write_pos = fixture.u64_at(WRITE_POS_AT).load(Ordering::Acquire),
            // From here on, hostile.
            10 => {
                clean = false;
                let value = script.u64();
                let position = match script.u8() % 4 {
                    0 => value,
                    1 => producer.write_pos.wrapping_add(value % 64).wrapping_sub(32),
                    2 => fixture
                        .read_pos(format)
                        .wrapping_add(value % (2 * CAPACITY)),
                    _ => u64::MAX - value % 64,
                };
                fixture
                    .u64_at(WRITE_POS_AT)
                    .store(position, Ordering::SeqCst);
            }
            11 => {
                let offset = usize::from(script.u16()) * 8 % HEADER_SIZE as usize;
                let value = script.u64();
                // Layout 3: a word the reader does not read is the producer's to fill.
                let unused = format.layout == 3
                    && LAYOUT_3_READ
                        .iter()
                        .all(|&(start, end)| offset + 8 <= start || offset >= end);
                clean &= unused;
                fixture.u64_at(offset).store(value, Ordering::SeqCst);
            }
            12 => {
                clean = false;
                let offset = usize::from(script.u16()) % MAP_LEN;
                let bytes = script.bytes::<4>();
                fixture.write_bytes(offset, &bytes);
            }
            13 => {
                clean = false;
                let offset = (u64::from(script.u16()) * 8) % CAPACITY;
                let len = script.u32();
                let kind = script.u32() % 5;
                fixture.data_u32(offset).store(len, Ordering::Relaxed);
                fixture.data_u32(offset + 4).store(kind, Ordering::Relaxed);
            }
            14 => {
                clean = false;
                let offset = usize::from(script.u16()) % CAPACITY as usize;
                let n = usize::from(script.u8() % 32);
                let bytes: Vec<u8> = (0..n).map(|_| script.u8()).collect();
                fixture.write_bytes(HEADER_SIZE as usize + offset, &bytes);
            }
            // The consumer's position. Layout 3 keeps it in the ack page, which the producer
            // cannot write: it writes where layouts 1 and 2 kept it, which the reader must
            // ignore (the ring stays clean).
            _ => {
                clean &= format.layout == 3;
                let value = script.u64();
                let position = match script.u8() % 4 {
                    3 => u64::MAX - value % 64,
                    0 => value,
                    1 => producer.write_pos.wrapping_sub(value % (2 * CAPACITY)),
                    _ => producer.write_pos.wrapping_add(value % 16).wrapping_sub(8),
                };
                fixture
                    .u64_at(READ_POS_AT)
                    .store(position, Ordering::SeqCst);
            }
        }
        // An honest producer that went past MAX_POSITION (after 2^64 - 2^42 bytes) makes the
        // reader report corruption: not a clean ring any more.
        if producer.write_pos > MAX_POSITION {
            clean = false;
        }
    }
    drop(reader);
});
