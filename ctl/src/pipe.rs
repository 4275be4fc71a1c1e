//! `send` and `recv`: standard input into a channel, a channel to standard output.
//!
//! Both count what went through; SIGINT or SIGTERM makes them say it on stderr and exit 130
//! or 143 (128 + the signal, as shells report it). A `send` that is interrupted or fails
//! leaves no end-of-stream mark, so the receiver learns its stream did not finish.

use std::io::{self, IsTerminal, Read};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use shmem_broker_client::ring::RingError;
use shmem_broker_client::size::format_size;
use shmem_broker_client::{Client, Error, Role};
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::progress::Bar;
use crate::report::{self, Said, StdoutError};
use crate::show::count;

/// How long a sender waits on a full ring before it says for whom.
const BLOCKED_NOTICE_AFTER: Duration = Duration::from_secs(3);

/// Bytes and messages that went through, shared with the signal and watchdog threads.
#[derive(Default)]
struct Progress {
    bytes: AtomicU64,
    messages: AtomicU64,
    /// Milliseconds since `start` at which a sender began waiting for room (0: not waiting).
    waiting_since_ms: AtomicU64,
}

impl Progress {
    fn add(&self, bytes: usize) {
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.messages.fetch_add(1, Ordering::Relaxed);
    }

    fn summary(&self) -> String {
        let bytes = self.bytes.load(Ordering::Relaxed);
        format!(
            "{} ({}) in {}",
            count(bytes, "byte"),
            format_size(bytes),
            count(self.messages.load(Ordering::Relaxed), "message")
        )
    }
}

/// On SIGINT/SIGTERM: says how far `what` got and exits 128 + the signal. The process ends
/// without closing its endpoint: a producer leaves no end-of-stream mark.
fn on_interrupt(what: &'static str, channel: &str, progress: Arc<Progress>) -> Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("setting up signal handling")?;
    let channel = channel.to_string();
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            let name = if signal == SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
            eprintln!(
                "shmemctl: {what} {channel} interrupted by {name} after {}",
                progress.summary()
            );
            std::process::exit(128 + signal);
        }
    });
    Ok(())
}

pub struct SendOptions {
    pub chunk: Option<u64>,
    pub skip: u64,
    pub verbose: bool,
    /// Show the progress bar even when stderr is no terminal.
    pub progress: bool,
}

/// The bytes left to read on `input` if it is a regular file (for the bar's ETA): its size
/// less where it stands now and what `--skip` will pass over.
fn input_size(input: &impl AsFd, skip: u64) -> Option<u64> {
    let stat = rustix::fs::fstat(input).ok()?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return None;
    }
    let at = rustix::fs::seek(input, rustix::fs::SeekFrom::Current(0)).ok()?;
    let size = u64::try_from(stat.st_size).ok()?;
    Some(size.saturating_sub(at).saturating_sub(skip))
}

/// The progress bar of `what`, counting `progress`'s bytes (finished by hand on success; a
/// failure drops it, which leaves it as it was).
fn bar(what: String, total: Option<u64>, forced: bool, progress: &Arc<Progress>) -> Option<Bar> {
    let progress = progress.clone();
    crate::progress::start(what, total, forced, move || {
        progress.bytes.load(Ordering::Relaxed)
    })
}

pub fn send(client: Client, name: &str, options: SendOptions) -> Result<()> {
    let socket = client.socket_path().to_path_buf();
    let mut producer = client.producer(name)?;
    // The producer has its own connection; an idle control connection would only be closed
    // by the broker's request_timeout.
    drop(client);
    let max = producer.max_message_len();
    let chunk = match options.chunk {
        Some(chunk) => usize::try_from(chunk).unwrap_or(usize::MAX),
        None => (1 << 20).min((producer.capacity() / 4) as usize).max(1),
    };
    anyhow::ensure!(
        chunk <= max,
        "chunk of {} does not fit channel {name}: at most {max} bytes per message",
        format_size(chunk as u64)
    );
    // Unbuffered (std's stdin reads through an 8 KiB buffer that would split each read below
    // in two): a duplicate of fd 0, sharing its offset.
    let mut stdin = std::fs::File::from(
        io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating standard input")?,
    );
    let size = input_size(&stdin, options.skip);
    skip_input(&mut stdin, options.skip)?;
    let mut input = StrideReader::new(stdin, size.is_some());
    let progress = Arc::new(Progress::default());
    on_interrupt("send to", name, progress.clone())?;
    let bar = bar(format!("send {name}"), size, options.progress, &progress);
    let start = Instant::now();
    if options.verbose || io::stderr().is_terminal() {
        watch_for_blocking(socket, name, start, progress.clone());
    }
    // Each read(2) lands straight in the ring, and each one is forwarded at once: a pipe that
    // stays open (`tail -f log | shmemctl send ch`) flows now, files come in full chunks.
    loop {
        let mut failure = None;
        let waiting = start.elapsed().as_millis().max(1) as u64;
        progress.waiting_since_ms.store(waiting, Ordering::Relaxed);
        let sent = producer.send_up_to(chunk, |buf| {
            progress.waiting_since_ms.store(0, Ordering::Relaxed);
            match input.read(buf) {
                Ok(n) => n,
                Err(e) => {
                    failure = Some(e);
                    0
                }
            }
        })?;
        progress.waiting_since_ms.store(0, Ordering::Relaxed);
        match failure {
            Some(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // Leaving without `close`: no end-of-stream mark, the receiver learns it.
            Some(e) => return Err(e).context("reading standard input"),
            None if sent == 0 => break,
            None => progress.add(sent),
        }
    }
    producer.close()?;
    if let Some(bar) = bar {
        bar.finish();
    }
    Ok(())
}

/// Standard input read straight into the ring, except on one stride. The kernel's copy runs at
/// a third of its speed on AMD EPYC when the destination is 16 bytes past the source modulo 64
/// (1 GiB in 1 MiB reads from tmpfs: 0.26 s, and 0.6-0.8 s so), and a ring message starts 16
/// bytes into its frame: from a regular file, whose position says where the source bytes sit in
/// their pages, a read that would land on that stride goes into a buffer of our own placed off
/// it, and is copied into the ring from there (a `memcpy` of cache-hot bytes, a tenth of the
/// read). Message boundaries stay those of the reads.
struct StrideReader {
    input: std::fs::File,
    /// Where the next read starts, for a regular file (a wrong guess only costs speed).
    file_pos: Option<u64>,
    bounce: Vec<u8>,
}

impl StrideReader {
    /// The copy's slow stride: destination this far past the source, modulo `LINE`.
    const SLOW_STRIDE: usize = 16;
    const LINE: usize = 64;

    fn new(input: std::fs::File, regular_file: bool) -> StrideReader {
        let file_pos = regular_file
            .then(|| rustix::fs::seek(&input, rustix::fs::SeekFrom::Current(0)).ok())
            .flatten();
        StrideReader {
            input,
            file_pos,
            bounce: Vec::new(),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let got = match self.file_pos {
            Some(pos) if buf.len() >= 4096 && on_slow_stride(buf.as_ptr() as usize, pos) => {
                self.read_bounced(buf, pos)?
            }
            _ => self.input.read(buf)?,
        };
        self.file_pos = self.file_pos.map(|pos| pos.wrapping_add(got as u64));
        Ok(got)
    }

    fn read_bounced(&mut self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let room = buf.len() + 3 * Self::LINE;
        if self.bounce.len() < room {
            self.bounce.resize(room, 0);
        }
        // The first place in the bounce buffer at the source's offset modulo LINE, or the next
        // one if the ring lies just past it modulo the page: glibc's `memcpy` of more than
        // 2 KiB runs at a twentieth of its speed when the destination is 1-63 bytes past the
        // source modulo 4096 (`rep movsb` on AMD EPYC).
        let base = self.bounce.as_ptr() as usize;
        let mut start = (pos as usize).wrapping_sub(base) % Self::LINE;
        if (buf.as_ptr() as usize).wrapping_sub(base + start) % 4096 < Self::LINE {
            start += Self::LINE;
        }
        let got = self
            .input
            .read(&mut self.bounce[start..start + buf.len()])?;
        buf[..got].copy_from_slice(&self.bounce[start..start + got]);
        Ok(got)
    }
}

/// True if reading into `dst` from file position `pos` puts the destination on the slow stride.
fn on_slow_stride(dst: usize, pos: u64) -> bool {
    (dst as u64).wrapping_sub(pos) % StrideReader::LINE as u64 == StrideReader::SLOW_STRIDE as u64
}

/// Reads and discards the first `skip` bytes of the input (`send --skip`, to resume).
fn skip_input(input: &mut impl Read, skip: u64) -> Result<()> {
    if skip == 0 {
        return Ok(());
    }
    let skipped =
        io::copy(&mut input.take(skip), &mut io::sink()).context("reading standard input")?;
    anyhow::ensure!(
        skipped == skip,
        "--skip {skip}: standard input has only {}",
        count(skipped, "byte")
    );
    Ok(())
}

/// Says once on stderr, per wait, whom a sender waits for when the ring stays full longer
/// than `BLOCKED_NOTICE_AFTER`: asks the broker who consumes the channel.
fn watch_for_blocking(
    socket: std::path::PathBuf,
    name: &str,
    start: Instant,
    progress: Arc<Progress>,
) {
    let name = name.to_string();
    std::thread::spawn(move || {
        let mut told_for = 0;
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let since = progress.waiting_since_ms.load(Ordering::Relaxed);
            let now = start.elapsed().as_millis() as u64;
            if since == 0
                || since == told_for
                || now.saturating_sub(since) < BLOCKED_NOTICE_AFTER.as_millis() as u64
            {
                continue;
            }
            told_for = since;
            eprintln!("shmemctl: send to {name}: {}", waiting_for(&socket, &name));
        }
    });
}

/// Who a blocked sender waits for, as the broker sees it.
fn waiting_for(socket: &Path, name: &str) -> String {
    let info = match Client::connect(socket).and_then(|c| c.info(name)) {
        Ok(info) => info,
        Err(e) => return format!("ring full, waiting for room (cannot ask the broker: {e})"),
    };
    let mut whom: Vec<String> = info
        .peers
        .iter()
        .filter(|p| p.role == Role::Consumer && p.bytes_unread > 0)
        .map(|p| match (&p.name, p.attached) {
            (Some(n), false) => format!("durable consumer {n:?} (away)"),
            (Some(n), true) => format!("durable consumer {n:?} (pid {})", p.pid),
            (None, _) => format!("consumer pid {}", p.pid),
        })
        .collect();
    if whom.is_empty() && !info.peers.iter().any(|p| p.role == Role::Consumer) {
        whom.push("a consumer to attach".into());
    }
    if whom.is_empty() {
        whom.push("the consumer".into());
    }
    format!(
        "ring full for {}s, waiting for {}",
        BLOCKED_NOTICE_AFTER.as_secs(),
        whom.join(", ")
    )
}

pub struct RecvOptions<'a> {
    pub durable: Option<&'a str>,
    /// Stop after this many end-of-stream marks (`None`: follow forever).
    pub streams: Option<u64>,
    pub max_bytes: Option<u64>,
    /// Show the progress bar even when stderr is no terminal.
    pub progress: bool,
}

/// Copies messages to standard output until `streams` end-of-stream marks (`None`: forever).
/// A stream that did not end cleanly (its producer went away, its ring was lost) ends `recv`
/// with an error, unless it follows (then it says so and waits for the next producer).
pub fn recv(client: Client, name: &str, options: RecvOptions<'_>) -> Result<()> {
    // A restart keeps the channel's ring (systemd's fd store): recv takes its place again and
    // reads on. One that brings another ring, or a fan-out channel's, ends recv with a line.
    let mut attach = client.attach(name).reconnect(true);
    if let Some(durable) = options.durable {
        attach = attach.durable(durable);
    }
    let mut consumer = attach.consumer()?;
    let socket = client.socket_path().to_path_buf();
    drop(client);
    let progress = Arc::new(Progress::default());
    on_interrupt("recv from", name, progress.clone())?;
    watch_broker(socket, name, progress.clone());
    let bar = bar(
        format!("recv {name}"),
        options.max_bytes,
        options.progress,
        &progress,
    );
    let outcome = receive(&mut consumer, name, &options, &progress);
    if let (Some(bar), Ok(())) = (bar, &outcome) {
        bar.finish();
    }
    outcome
}

/// The receive loop of `recv`.
fn receive(
    consumer: &mut shmem_broker_client::Consumer,
    name: &str,
    options: &RecvOptions<'_>,
    progress: &Progress,
) -> Result<()> {
    let stdout = io::stdout();
    let follow = options.streams.is_none();
    let mut message = Vec::new();
    let mut ends = 0;
    let mut missed = 0;
    let mut lost = 0u64;
    let mut gone = 0u64;
    loop {
        // Without --max-bytes each message goes straight from the ring to stdout, never
        // copied here; the count is taken per message, so an interrupt reports exactly the
        // messages stdout took. --max-bytes may cut a message, so it takes a copy.
        let step = match options.max_bytes {
            None => consumer.recv_to_fd(stdout.as_fd()).map(|got| match got {
                Some(len) => {
                    progress.add(len);
                    Received::Written
                }
                None => Received::End,
            }),
            Some(_) => consumer.recv_into(&mut message).map(|got| match got {
                true => Received::Copied,
                false => Received::End,
            }),
        };
        let received = match step {
            Ok(got) => got,
            // Writing stdout from the ring failed: stdout is to blame (a full disk, a closed
            // pipe), not the channel.
            Err(Error::Ring {
                error: RingError::Io(e),
                ..
            }) => return Err(StdoutError(e).into()),
            Err(err @ Error::ProducerLost { .. }) => {
                eprintln!("shmemctl: {err}");
                lost += 1;
                Received::End
            }
            Err(err @ (Error::ProducerGone { .. } | Error::EndOfStreamLost { .. })) if follow => {
                eprintln!("shmemctl: {err}; waiting for the next producer");
                continue;
            }
            // A stream that ended badly still ends: the last one fails recv with its own
            // line, an earlier one is said now and fails recv at the end.
            Err(err @ (Error::ProducerGone { .. } | Error::EndOfStreamLost { .. })) => {
                ends += 1;
                if options.streams.is_some_and(|wanted| ends >= wanted) {
                    return Err(err.into());
                }
                eprintln!("shmemctl: {err}");
                gone += 1;
                continue;
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
        if let Received::Written = received {
            continue;
        }
        if let Received::Copied = received {
            let done = progress.bytes.load(Ordering::Relaxed);
            let room = options
                .max_bytes
                .map_or(u64::MAX, |max| max.saturating_sub(done));
            let take = message
                .len()
                .min(usize::try_from(room).unwrap_or(usize::MAX));
            write_all(stdout.as_fd(), &message[..take])?;
            progress.add(take);
            if options
                .max_bytes
                .is_some_and(|max| done + take as u64 >= max)
            {
                return Ok(());
            }
            continue;
        }
        ends += 1;
        if options.streams.is_some_and(|wanted| ends >= wanted) {
            return match (lost, gone) {
                (0, 0) => Ok(()),
                (0, _) => Err(Said(report::FAILURE).into()),
                _ => Err(Said(report::STREAMS_LOST).into()),
            };
        }
    }
}

/// How long recv waits for a broker that went away before it gives up on it.
const BROKER_GRACE: Duration = Duration::from_secs(5);
/// How often recv looks for the broker.
const BROKER_PROBE_EVERY: Duration = Duration::from_secs(1);

/// Ends recv (exit 1, one line) once no broker has answered on the socket for
/// `BROKER_GRACE` and nothing came through meanwhile: the broker stopped for good, and no
/// producer-gone or dropped-channel news can come any more. "Answered" is a connect that
/// succeeds, so a socket-activated broker's socket, held by systemd, counts as a broker (the
/// connect starts it). While data flows, recv reads on: the ring works without the broker.
fn watch_broker(socket: std::path::PathBuf, name: &str, progress: Arc<Progress>) {
    let name = name.to_string();
    std::thread::spawn(move || {
        let mut away_since: Option<Instant> = None;
        let mut last_bytes = progress.bytes.load(Ordering::Relaxed);
        loop {
            std::thread::sleep(BROKER_PROBE_EVERY);
            let bytes = progress.bytes.load(Ordering::Relaxed);
            let moved = bytes != last_bytes;
            last_bytes = bytes;
            if moved || std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                away_since = None;
                continue;
            }
            let since = *away_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= BROKER_GRACE {
                eprintln!(
                    "shmemctl: error: recv from {name}: the broker at {} stopped and did not come back within {}s (after {})",
                    socket.display(),
                    BROKER_GRACE.as_secs(),
                    progress.summary()
                );
                std::process::exit(i32::from(report::FAILURE));
            }
        }
    });
}

/// What one receive did.
enum Received {
    /// A message went from the ring to stdout (and was counted).
    Written,
    /// A message is in the buffer, to be written.
    Copied,
    /// A stream ended (cleanly, or its ring was lost).
    End,
}

/// Writes all of `bytes` to `fd` with write(2), no buffer in between (the count that a
/// signal reports is what stdout took).
fn write_all(fd: std::os::fd::BorrowedFd<'_>, mut bytes: &[u8]) -> Result<(), StdoutError> {
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(rustix::io::Errno::INTR) => {}
            // A non-blocking stdout (inherited that way): wait until it takes more.
            Err(rustix::io::Errno::AGAIN) => {
                let mut fds = [rustix::event::PollFd::new(
                    &fd,
                    rustix::event::PollFlags::OUT,
                )];
                let _ = rustix::event::poll(&mut fds, None);
            }
            Err(e) => return Err(StdoutError(e.into())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{on_slow_stride, StrideReader};
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn only_sixteen_bytes_past_the_source_modulo_64_is_the_slow_stride() {
        assert!(on_slow_stride(0x1010, 0));
        assert!(on_slow_stride(0x1010 + 64 * 1000, 0x40));
        for off in [0, 8, 32, 48] {
            assert!(!on_slow_stride(0x1000 + off, 0), "{off}");
        }
    }

    /// Reads on and off the stride give the file's bytes, message for message, in order.
    #[test]
    fn reads_on_the_slow_stride_still_deliver_every_byte_with_their_boundaries() {
        let data: Vec<u8> = (0..3 * 65536 + 100)
            .map(|i| (i * 13 + i / 97) as u8)
            .collect();
        let mut file = tempfile::tempfile().expect("temp file");
        file.write_all(&data).expect("write");
        file.seek(SeekFrom::Start(0)).expect("rewind");
        let mut reader = StrideReader::new(file, true);
        let mut ring = vec![0u8; 65536 + 128];
        let mut out = Vec::new();
        let mut bounced = 0;
        for shift in [16usize, 0, 32, 16, 48] {
            // A destination 16 past the source modulo 64 for `shift` 16 (file position 0
            // or a multiple of 64 at the first, then 65536 further on each time).
            let base = ring.as_ptr() as usize;
            let at = (64 - base % 64) % 64 + shift;
            bounced += usize::from(on_slow_stride(base + at, reader.file_pos.unwrap_or(0)));
            let got = reader.read(&mut ring[at..at + 65536]).expect("read");
            out.extend_from_slice(&ring[at..at + got]);
            if got == 0 {
                break;
            }
        }
        assert_eq!(bounced, 2, "two reads were on the stride");
        assert!(
            !reader.bounce.is_empty(),
            "and went through the bounce buffer"
        );
        assert_eq!(out, data);
    }
}
