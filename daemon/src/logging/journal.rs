//! Logging to journald: the native socket with a field per key-value, `<P>`-prefixed lines
//! when that socket cannot be reached, and `<P>`-prefixed JSON; and telling whether stderr is
//! the journal stream at all.

use slog::{Drain, Key, Level, OwnedKVList, Record, KV};
use std::cell::RefCell;
use std::fmt;
use std::io::{self, Write};
use std::sync::{Arc, Mutex, PoisonError};

use super::guard::escape_into;

/// True when stderr is the journald stream systemd connected us to: `JOURNAL_STREAM` is
/// `<dev>:<inode>` of that stream, and a child that inherited the variable but not the stream
/// (or a redirect in ExecStart) must not be mistaken for it.
pub(super) fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = rustix::fs::fstat(io::stderr()) else {
        return false;
    };
    #[allow(clippy::unnecessary_cast)] // dev_t and ino_t are not u64 on every target
    let (dev, ino) = (stat.st_dev as u64, stat.st_ino as u64);
    value
        .to_str()
        .is_some_and(|value| journal_stream_matches(value, dev, ino))
}

fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    let Some((want_dev, want_ino)) = value.trim().split_once(':') else {
        return false;
    };
    want_dev.parse() == Ok(dev) && want_ino.parse() == Ok(ino)
}

/// The syslog priority journald reads from a `<P>` line prefix.
fn priority(level: Level) -> u8 {
    match level {
        Level::Critical => 2,
        Level::Error => 3,
        Level::Warning => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// Renders a record as one journald line: `<P>message key=value key=value\n`.
///
/// Record key-values come first, then the logger's (the root logger's first), all in the order
/// they were written. Newlines and other control characters are escaped so a record is
/// always exactly one journal entry; values with spaces, quotes or `=` are quoted.
fn render_journal_line(record: &Record<'_>, values: &OwnedKVList) -> String {
    let mut line = format!("<{}>", priority(record.level()));
    push_escaped(&mut line, &record.msg().to_string());
    for (key, value) in pairs_in_order(record, values) {
        line.push(' ');
        line.push_str(&key);
        line.push('=');
        push_value(&mut line, &value);
    }
    line.push('\n');
    line
}

/// The record's key-values, then the logger's, each in the order they were written.
fn pairs_in_order(record: &Record<'_>, values: &OwnedKVList) -> Vec<(String, String)> {
    let mut own = Pairs::default();
    // Serialization of a KV only fails if the serializer does; Pairs never does.
    let _ = record.kv().serialize(record, &mut own);
    own.0.reverse();
    let mut inherited = Pairs::default();
    let _ = values.serialize(record, &mut inherited);
    inherited.0.reverse();
    own.0.extend(inherited.0);
    own.0
}

/// journald's native protocol socket: structured fields, so `journalctl CHANNEL=frames` works.
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// One journal entry in the native protocol: `MESSAGE` (the same text as the stderr line),
/// `PRIORITY`, `SYSLOG_IDENTIFIER`, and a field per key-value (`channel` becomes `CHANNEL=`, `peer_uid` becomes `PEER_UID=`).
fn render_journal_entry(record: &Record<'_>, values: &OwnedKVList) -> Vec<u8> {
    let mut entry = Vec::with_capacity(256);
    // The message keeps its key-values as text too: `journalctl` shows MESSAGE alone, and an
    // operator must see `file:line: key` of a config error there, not only in a field.
    let line = render_journal_line(record, values);
    let text = line
        .trim_start_matches(|c| c != '>')
        .trim_start_matches('>')
        .trim_end();
    push_field(&mut entry, "MESSAGE", text);
    push_field(
        &mut entry,
        "PRIORITY",
        &priority(record.level()).to_string(),
    );
    push_field(&mut entry, "SYSLOG_IDENTIFIER", "shmem-broker");
    for (key, value) in pairs_in_order(record, values) {
        let name: String = key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        // Names starting with `_` are journald's own trusted fields; never forge those.
        let name = name.trim_start_matches('_');
        if !name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit()) {
            push_field(&mut entry, name, &value);
        }
    }
    entry
}

/// `NAME=value\n`, or the length-prefixed form when the value holds a newline.
fn push_field(entry: &mut Vec<u8>, name: &str, value: &str) {
    entry.extend_from_slice(name.as_bytes());
    if value.contains('\n') {
        entry.push(b'\n');
        entry.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        entry.push(b'=');
    }
    entry.extend_from_slice(value.as_bytes());
    entry.push(b'\n');
}

/// Appends `text` with control characters escaped (`\n`, `\t`, `\u{1b}`...). The text has
/// been through [`Guard`] already; this keeps a journal line one line even without it.
fn push_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push(c),
            c => escape_into(out, c.encode_utf8(&mut [0; 4])),
        }
    }
}

/// Appends a value, quoted if it would otherwise be ambiguous in `key=value` form.
fn push_value(out: &mut String, value: &str) {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '=' | '\\'));
    if plain {
        out.push_str(value);
        return;
    }
    out.push('"');
    // Backslashes arrive already doubled by `Guard` (so `\\n` in a value can only be the
    // escape of a newline); only the quote needs escaping inside the quotes.
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            c => push_escaped(out, c.encode_utf8(&mut [0; 4])),
        }
    }
    out.push('"');
}

/// Collects key-values as strings, in the order slog serializes them.
#[derive(Default)]
struct Pairs(Vec<(String, String)>);

impl slog::Serializer for Pairs {
    fn emit_arguments(&mut self, key: Key, value: &fmt::Arguments<'_>) -> slog::Result {
        self.0.push((key.to_string(), value.to_string()));
        Ok(())
    }
}

/// `LogFormat::Term` under journald: native journal entries with structured fields, or a
/// priority-prefixed line on stderr when the journal socket cannot be reached.
pub(super) struct JournalLines<W: Write> {
    out: RefCell<W>,
    native: RefCell<Option<std::os::unix::net::UnixDatagram>>,
}

impl<W: Write> JournalLines<W> {
    /// Lines on `out` only (tests).
    #[cfg(test)]
    pub(super) fn new(out: W) -> Self {
        JournalLines {
            out: RefCell::new(out),
            native: RefCell::new(None),
        }
    }

    /// Native entries when the journal's socket is there, else lines on `out`.
    pub(super) fn native_or(out: W) -> Self {
        let native = std::os::unix::net::UnixDatagram::unbound()
            .ok()
            .filter(|_| std::path::Path::new(JOURNAL_SOCKET).exists());
        JournalLines {
            out: RefCell::new(out),
            native: RefCell::new(native),
        }
    }
}

impl<W: Write> Drain for JournalLines<W> {
    type Ok = ();
    type Err = io::Error;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> io::Result<()> {
        let mut native = self.native.borrow_mut();
        if let Some(socket) = native.as_ref() {
            match socket.send_to(&render_journal_entry(record, values), JOURNAL_SOCKET) {
                Ok(_) => return Ok(()),
                Err(err) => {
                    // Say once why structured fields are missing, then stay on stderr.
                    let note = format!(
                        "<4>cannot write to {JOURNAL_SOCKET} ({err}); logging to stderr without structured fields\n"
                    );
                    *native = None;
                    self.out.borrow_mut().write_all(note.as_bytes())?;
                }
            }
        }
        let line = render_journal_line(record, values);
        // One write_all of the whole line: stderr is unbuffered, so the line is not split.
        self.out.borrow_mut().write_all(line.as_bytes())
    }
}

/// A `Write` into a shared buffer, so the JSON drain's output can be picked up and prefixed.
#[derive(Clone, Default)]
pub(super) struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl SharedBuf {
    pub(super) fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Write for SharedBuf {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `LogFormat::Json` under journald: `<P>{"ts":...,"level":...,"msg":...}`.
pub(super) struct JournalJson<W: Write> {
    json: slog_json::Json<SharedBuf>,
    buf: SharedBuf,
    out: RefCell<W>,
}

impl<W: Write> JournalJson<W> {
    pub(super) fn new(out: W) -> Self {
        let buf = SharedBuf::default();
        JournalJson {
            json: slog_json::Json::default(buf.clone()),
            buf,
            out: RefCell::new(out),
        }
    }
}

impl<W: Write> Drain for JournalJson<W> {
    type Ok = ();
    type Err = io::Error;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> io::Result<()> {
        let result = self.json.log(record, values);
        // Taken even on error, so a half-written object never leaks into the next line.
        let json = self.buf.take();
        result?;
        let mut line = format!("<{}>", priority(record.level())).into_bytes();
        line.extend_from_slice(&json);
        self.out.borrow_mut().write_all(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging::root;
    use crate::logging::PeerLogBudget;
    use slog::{debug, error, info, o, warn, Logger};

    #[test]
    fn journal_entries_carry_structured_fields() {
        use slog::{o, Drain};
        let captured = Arc::new(Mutex::new(Vec::new()));
        struct Capture(Arc<Mutex<Vec<u8>>>);
        impl Drain for Capture {
            type Ok = ();
            type Err = slog::Never;
            fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
                *self.0.lock().unwrap_or_else(PoisonError::into_inner) =
                    render_journal_entry(record, values);
                Ok(())
            }
        }
        let log = Logger::root(Capture(captured.clone()).fuse(), o!("_forged" => "x"));
        slog::warn!(log, "attach refused"; "channel" => "cam", "peer_uid" => 1000, "note" => "two\nlines");
        let entry = captured
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let text = String::from_utf8_lossy(&entry);
        assert!(
            text.starts_with(
                "MESSAGE=attach refused channel=cam peer_uid=1000 note=\"two\\nlines\" _forged=x\n\
                 PRIORITY=4\nSYSLOG_IDENTIFIER=shmem-broker\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("\nCHANNEL=cam\n") && text.contains("\nPEER_UID=1000\n"),
            "{text}"
        );
        assert!(
            text.contains("\nFORGED=x\n"),
            "a leading underscore is stripped: {text}"
        );
        let mut binary = b"NOTE\n".to_vec();
        binary.extend_from_slice(&9u64.to_le_bytes());
        binary.extend_from_slice(b"two\nlines\n");
        assert!(
            entry.windows(binary.len()).any(|w| w == binary.as_slice()),
            "{text}"
        );
    }

    /// A drain that renders with `render_journal_line` into a buffer the test can read.
    fn capture() -> (Logger, SharedBuf) {
        let buf = SharedBuf::default();
        (
            root(
                JournalLines::new(buf.clone()),
                Level::Trace,
                &PeerLogBudget::default(),
            ),
            buf,
        )
    }

    fn text(buf: &SharedBuf) -> String {
        String::from_utf8(buf.take()).expect("log output is UTF-8")
    }

    #[test]
    fn journal_line_has_priority_message_and_pairs_in_order() {
        let (log, buf) = capture();
        let log = log.new(o!("conn" => 7, "peer" => "uid=1000"));
        info!(log, "channel created"; "name" => "cam0", "capacity" => 4096);
        assert_eq!(
            text(&buf),
            "<6>channel created name=cam0 capacity=4096 conn=7 peer=\"uid=1000\"\n"
        );
        let log = log.new(o!("channel" => "cam0", "role" => "producer"));
        warn!(log, "slow consumer"; "lag" => 3);
        assert_eq!(
            text(&buf),
            "<4>slow consumer lag=3 conn=7 peer=\"uid=1000\" channel=cam0 role=producer\n"
        );
    }

    #[test]
    fn journal_line_priorities() {
        let (log, buf) = capture();
        slog::crit!(log, "c");
        error!(log, "e");
        warn!(log, "w");
        info!(log, "i");
        debug!(log, "d");
        slog::trace!(log, "t");
        // slog compiles trace (and, in release builds, debug) out by default; accept that.
        let out = text(&buf);
        assert!(out.starts_with("<2>c\n<3>e\n<4>w\n<6>i\n"), "{out}");
        for line in out.lines().skip(4) {
            assert!(line.starts_with("<7>"), "{out}");
        }
    }

    #[test]
    fn journal_line_escapes_so_a_record_stays_one_line() {
        let (log, buf) = capture();
        info!(log, "two\nlines"; "path" => "/a b", "q" => "say \"hi\"", "empty" => "", "nl" => "x\ny");
        assert_eq!(
            text(&buf),
            "<6>two\\nlines path=\"/a b\" q=\"say \\\"hi\\\"\" empty=\"\" nl=\"x\\ny\"\n"
        );
    }

    #[test]
    fn journal_json_is_prefixed_json() {
        let buf = SharedBuf::default();
        let log = root(
            JournalJson::new(buf.clone()),
            Level::Info,
            &PeerLogBudget::default(),
        );
        error!(log, "boom"; "errno" => 5);
        let out = text(&buf);
        let json = out.strip_prefix("<3>").expect("priority prefix");
        assert!(json.ends_with('\n') && json.lines().count() == 1, "{out}");
        let value: serde_json::Value = serde_json::from_str(json).expect("valid JSON");
        assert_eq!(value["msg"], "boom");
        assert_eq!(value["level"], "ERRO");
        assert_eq!(value["errno"], 5);
        assert!(value["ts"].as_str().is_some_and(|ts| ts.contains('T')));
    }

    #[test]
    fn journal_stream_variable() {
        assert!(journal_stream_matches("8:12345", 8, 12345));
        assert!(!journal_stream_matches("8:12345", 8, 1));
        assert!(!journal_stream_matches("9:12345", 8, 12345));
        assert!(!journal_stream_matches("garbage", 8, 12345));
        assert!(!journal_stream_matches("", 0, 0));
    }
}
