//! `record` and `replay`: a channel's messages into a file that keeps where each message
//! begins and ends, when it was received and from which producer, and such a file back into a
//! channel. The file format is docs/record-format.md; this module is its only writer and reader.
//!
//! A recording is read as hostile input: every length is checked against what is left of the
//! file before anything is sent, and a file that ends inside a record is an error naming the
//! record, after which `replay` leaves the channel without an end-of-stream mark (its receiver
//! learns the stream was cut, as with an interrupted `send`).

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use shmem_broker_client::names::validate_channel_name;
use shmem_broker_client::size::format_size;
use shmem_broker_client::{Client, Error, TryRecvError};
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::report::{self, Said};
use crate::show::count;

/// First bytes of every recording.
pub const MAGIC: [u8; 8] = *b"SHMBREC\0";
/// The format version this shmemctl writes and the only one it reads.
pub const VERSION: u16 = 1;
/// Magic, version, name length, start time.
const FILE_HEADER_LEN: usize = 8 + 2 + 2 + 8;
/// Kind, 3 reserved bytes, producer, time, length.
const RECORD_HEADER_LEN: usize = 1 + 3 + 4 + 8 + 4;
/// Producer id of a message from a one-to-one channel (the library gives none there).
pub const NO_PRODUCER: u32 = u32::MAX;
/// Longest channel name (the broker's rule, checked again by `validate_channel_name`).
const MAX_NAME_LEN: usize = 64;

/// What one record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A message: the payload follows.
    Message = 1,
    /// The producer's end-of-stream mark (no payload).
    End = 2,
    /// The producer's stream ended without its mark: it went away or its ring was lost.
    Cut = 3,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Kind> {
        match byte {
            1 => Some(Kind::Message),
            2 => Some(Kind::End),
            3 => Some(Kind::Cut),
            _ => None,
        }
    }
}

/// The output file, shared with the signal thread so that an interrupt waits for the record
/// being written and leaves the file ending at a record boundary.
struct Output {
    file: BufWriter<File>,
    messages: u64,
    bytes: u64,
}

impl Output {
    fn record(&mut self, kind: Kind, producer: u32, time_ns: u64, payload: &[u8]) -> Result<()> {
        let len = u32::try_from(payload.len())
            .context("message longer than 4 GiB - 1 (the format's limit)")?;
        let mut header = [0u8; RECORD_HEADER_LEN];
        header[0] = kind as u8;
        header[4..8].copy_from_slice(&producer.to_le_bytes());
        header[8..16].copy_from_slice(&time_ns.to_le_bytes());
        header[16..20].copy_from_slice(&len.to_le_bytes());
        self.file.write_all(&header)?;
        self.file.write_all(payload)?;
        if kind == Kind::Message {
            self.messages += 1;
            self.bytes += payload.len() as u64;
        }
        Ok(())
    }

    fn summary(&self) -> String {
        format!(
            "{} ({})",
            count(self.messages, "message"),
            format_size(self.bytes)
        )
    }
}

/// On SIGINT/SIGTERM: waits for the record being written, flushes the file, says how far
/// `what` got and exits 128 + the signal.
fn on_interrupt(what: String, output: Arc<Mutex<Output>>) -> Result<()> {
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).context("setting up signals")?;
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            let name = if signal == SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
            // The main thread holds the lock only while it writes one record.
            let mut out = output.lock().unwrap_or_else(PoisonError::into_inner);
            let flushed = out.file.flush();
            eprintln!(
                "shmemctl: {what} interrupted by {name} after {}",
                out.summary()
            );
            if let Err(e) = flushed {
                eprintln!("shmemctl: error: writing the recording: {e}");
            }
            std::process::exit(128 + signal);
        }
    });
    Ok(())
}

/// Nanoseconds in `elapsed`, saturating (585 years).
fn nanos(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
}

/// Records channel `name` into `path` until `streams` producers' streams ended (`None`:
/// until interrupted).
pub fn record(client: Client, name: &str, path: &Path, streams: Option<u64>) -> Result<()> {
    let mut consumer = client.attach(name).reconnect(true).consumer()?;
    drop(client);
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut header = Vec::with_capacity(FILE_HEADER_LEN + name.len());
    header.extend_from_slice(&MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    // The broker accepted the name, so it has at most 64 bytes.
    header.extend_from_slice(&(name.len() as u16).to_le_bytes());
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, nanos);
    header.extend_from_slice(&wall.to_le_bytes());
    header.extend_from_slice(name.as_bytes());
    let mut file = BufWriter::with_capacity(1 << 20, file);
    file.write_all(&header)
        .with_context(|| format!("writing {}", path.display()))?;
    let output = Arc::new(Mutex::new(Output {
        file,
        messages: 0,
        bytes: 0,
    }));
    on_interrupt(format!("record {name}"), output.clone())?;
    let start = Instant::now();
    let write_error = |e: anyhow::Error| e.context(format!("writing {}", path.display()));
    let mut message = Vec::new();
    let mut ends = 0u64;
    let mut cut = 0u64;
    let mut missed = 0;
    loop {
        // Whatever is there is taken without a flush; the file is flushed before waiting, so
        // a recording that is read while it grows ends at the last message received.
        let got = match consumer
            .try_recv_into(&mut message)
            .map_err(TryRecvError::into_failure)
        {
            Ok(got) => Ok(got),
            Err(Some(failure)) => Err(failure),
            Err(None) => {
                output
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .file
                    .flush()
                    .map_err(|e| write_error(e.into()))?;
                consumer.recv_into(&mut message)
            }
        };
        let time = nanos(start.elapsed());
        let producer = consumer.last_producer().unwrap_or(NO_PRODUCER);
        let kind = match got {
            Ok(true) => Kind::Message,
            Ok(false) => Kind::End,
            Err(
                err @ (Error::ProducerLost { .. }
                | Error::ProducerGone { .. }
                | Error::EndOfStreamLost { .. }),
            ) => {
                eprintln!("shmemctl: {err}");
                cut += 1;
                Kind::Cut
            }
            Err(err) => return Err(err.into()),
        };
        if consumer.missed() > missed {
            eprintln!(
                "shmemctl: channel {name}: missed {}: this consumer fell behind (slow_consumer = drop)",
                count(consumer.missed() - missed, "message")
            );
            missed = consumer.missed();
        }
        let payload = if kind == Kind::Message {
            &message[..]
        } else {
            &[]
        };
        let mut out = output.lock().unwrap_or_else(PoisonError::into_inner);
        out.record(kind, producer, time, payload)
            .map_err(write_error)?;
        if kind == Kind::Message {
            continue;
        }
        ends += 1;
        if streams.is_some_and(|wanted| ends >= wanted) {
            out.file.flush().map_err(|e| write_error(e.into()))?;
            eprintln!("shmemctl: recorded {} from {name}", out.summary());
            return match cut {
                0 => Ok(()),
                _ => Err(Said(report::STREAMS_LOST).into()),
            };
        }
    }
}

/// How fast `replay` sends.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// As fast as the channel takes them.
    Asap,
    /// This many messages per second (at least 1).
    Rate(u32),
    /// With the gaps between their receive times in the recording.
    AsRecorded,
}

/// `--rate`: `N/s` or `N`, at least 1 message per second.
pub fn parse_rate(text: &str) -> Result<u32, String> {
    let number = text.strip_suffix("/s").unwrap_or(text);
    match number.parse::<u32>() {
        Ok(0) => Err("must be at least 1/s".into()),
        Ok(rate) => Ok(rate),
        Err(_) => Err(format!(
            "{text:?} is not a rate: messages per second, like 1000/s"
        )),
    }
}

/// One record read from a file.
struct Record {
    kind: Kind,
    time_ns: u64,
}

/// Reads a recording, checking every field; errors name the file and the record.
struct Reader {
    input: BufReader<File>,
    path: PathBuf,
    /// Bytes read so far (for error messages).
    offset: u64,
    /// 1-based number of the record being read.
    index: u64,
}

impl Reader {
    /// Opens a recording and checks its header.
    fn open(path: &Path) -> Result<Reader> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut reader = Reader {
            input: BufReader::with_capacity(1 << 20, file),
            path: path.to_path_buf(),
            offset: 0,
            index: 0,
        };
        reader.header()?;
        Ok(reader)
    }

    fn fail(&self, what: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!("{}: {what}", self.path.display())
    }

    /// Fills `buf` entirely; `Ok(n < buf.len())` only when the file ends first.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match self.input.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.fail(format_args!("reading: {e}"))),
            }
        }
        self.offset += got as u64;
        Ok(got)
    }

    /// Checks the file header. The recorded channel's name is checked but not kept: any
    /// channel can take the replay.
    fn header(&mut self) -> Result<()> {
        let mut fixed = [0u8; FILE_HEADER_LEN];
        let got = self.fill(&mut fixed)?;
        if got < MAGIC.len() || fixed[..MAGIC.len()] != MAGIC {
            return Err(self.fail("not a shmemctl recording (no SHMBREC header)"));
        }
        if got < FILE_HEADER_LEN {
            return Err(self.fail(format_args!(
                "truncated: the file ends inside its {FILE_HEADER_LEN}-byte header, after {got} bytes"
            )));
        }
        let version = u16::from_le_bytes([fixed[8], fixed[9]]);
        if version != VERSION {
            return Err(self.fail(format_args!(
                "format version {version}, this shmemctl reads version {VERSION} only"
            )));
        }
        let name_len = usize::from(u16::from_le_bytes([fixed[10], fixed[11]]));
        if name_len == 0 || name_len > MAX_NAME_LEN {
            return Err(self.fail(format_args!(
                "channel name of {name_len} bytes in the header (1 to {MAX_NAME_LEN} allowed)"
            )));
        }
        let mut name = vec![0u8; name_len];
        if self.fill(&mut name)? < name_len {
            return Err(self.fail("truncated: the file ends inside the channel name"));
        }
        match String::from_utf8(name) {
            Ok(name) if validate_channel_name(&name).is_ok() => Ok(()),
            _ => Err(self.fail("the channel name in the header is not a valid name")),
        }
    }

    /// The next record, its payload in `payload`; `None` at the end of the file (between
    /// records).
    fn next(&mut self, payload: &mut Vec<u8>) -> Result<Option<Record>> {
        self.index += 1;
        let at = self.offset;
        let mut header = [0u8; RECORD_HEADER_LEN];
        match self.fill(&mut header)? {
            0 => return Ok(None),
            RECORD_HEADER_LEN => {}
            got => {
                return Err(self.fail(format_args!(
                    "truncated: record {} at byte {at} has {got} of its {RECORD_HEADER_LEN} header bytes",
                    self.index
                )))
            }
        }
        let kind = Kind::from_byte(header[0]).ok_or_else(|| {
            self.fail(format_args!(
                "record {} at byte {at}: unknown kind {}",
                self.index, header[0]
            ))
        })?;
        if header[1..4] != [0, 0, 0] {
            return Err(self.fail(format_args!(
                "record {} at byte {at}: reserved bytes are not zero",
                self.index
            )));
        }
        let time_ns = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(header[16..20].try_into().unwrap_or_default());
        if kind != Kind::Message && len != 0 {
            return Err(self.fail(format_args!(
                "record {} at byte {at}: an end-of-stream record with a {len}-byte payload",
                self.index
            )));
        }
        payload.clear();
        // Read as the bytes come, never allocated from the length alone: a record claiming
        // 4 GiB in a short file costs only what the file holds.
        let got = (&mut self.input)
            .take(u64::from(len))
            .read_to_end(payload)
            .map_err(|e| self.fail(format_args!("reading: {e}")))?;
        self.offset += got as u64;
        if got < len as usize {
            return Err(self.fail(format_args!(
                "truncated: record {} at byte {at} claims {} but the file ends after {}",
                self.index,
                count(len.into(), "byte"),
                count(got as u64, "byte")
            )));
        }
        Ok(Some(Record { kind, time_ns }))
    }
}

/// Sends the messages recorded in `path` into channel `name` as its producer at `pace`, then
/// marks end-of-stream. A file that turns out malformed or truncated stops the replay there,
/// without the mark.
pub fn replay(client: Client, path: &Path, name: &str, pace: Pace) -> Result<()> {
    let mut reader = Reader::open(path)?;
    let mut producer = client.producer(name)?;
    drop(client);
    let max = producer.max_message_len();
    let progress = Arc::new(Mutex::new(Replayed::default()));
    on_replay_interrupt(format!("replay into {name}"), progress.clone())?;
    let start = Instant::now();
    let mut first_time = None;
    let mut payload = Vec::new();
    let mut sent = 0u64;
    while let Some(record) = reader.next(&mut payload)? {
        if record.kind != Kind::Message {
            // One producer replays everything; its own mark comes at the end.
            continue;
        }
        anyhow::ensure!(
            payload.len() <= max,
            "{}: record {}: a message of {} does not fit channel {name} (at most {max} bytes per message)",
            path.display(),
            reader.index,
            format_size(payload.len() as u64)
        );
        let due = match pace {
            Pace::Asap => None,
            Pace::Rate(rate) => {
                let nanos = u128::from(sent) * 1_000_000_000 / u128::from(rate);
                Some(Duration::from_nanos(
                    u64::try_from(nanos).unwrap_or(u64::MAX),
                ))
            }
            Pace::AsRecorded => {
                let first = *first_time.get_or_insert(record.time_ns);
                Some(Duration::from_nanos(record.time_ns.saturating_sub(first)))
            }
        };
        if let Some(due) = due {
            let at = start.checked_add(due).with_context(|| {
                format!(
                    "{}: record {}: its time is beyond what this clock can wait for",
                    path.display(),
                    reader.index
                )
            })?;
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
        }
        producer.send(&payload)?;
        sent += 1;
        let mut done = progress.lock().unwrap_or_else(PoisonError::into_inner);
        done.messages = sent;
        done.bytes += payload.len() as u64;
    }
    producer.close()?;
    Ok(())
}

/// What a replay sent, for the interrupt line.
#[derive(Default)]
struct Replayed {
    messages: u64,
    bytes: u64,
}

/// On SIGINT/SIGTERM: says how far the replay got and exits 128 + the signal, without an
/// end-of-stream mark.
fn on_replay_interrupt(what: String, progress: Arc<Mutex<Replayed>>) -> Result<()> {
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).context("setting up signals")?;
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            let name = if signal == SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
            let done = progress.lock().unwrap_or_else(PoisonError::into_inner);
            eprintln!(
                "shmemctl: {what} interrupted by {name} after {} ({})",
                count(done.messages, "message"),
                format_size(done.bytes)
            );
            std::process::exit(128 + signal);
        }
    });
    Ok(())
}
