//! Logging to stderr: for journald (priority-prefixed lines), as JSON, or for a human.
//!
//! All drains are synchronous and Mutex-wrapped: the daemon is single-threaded, and an async
//! drain could drop the last lines (the ones explaining why it exited) on exit. Write errors are
//! ignored rather than turned into panics, so a closed stderr cannot take the broker down.

use crate::config::LogFormat;
use slog::{Drain, Key, Level, Logger, OwnedKVList, Record, KV};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::io::{self, IsTerminal, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Builds the daemon's root logger, writing to stderr and dropping records below `level`.
///
/// Under journald (stderr is the stream named by `JOURNAL_STREAM`), `LogFormat::Term` records go
/// to the journal's native socket with their priority and a field per key-value (`CHANNEL=`,
/// `PEER_UID=`...), so both `journalctl -p` and `journalctl CHANNEL=x` work; if that socket
/// cannot be reached they become stderr lines `<P>message key=value ...` (the priority prefix
/// keeps `journalctl -p` working, the journal adds the timestamp). Under journald
/// `LogFormat::Json` stays JSON with the `<P>` in front. Elsewhere `Json` is one slog-json object
/// per line and `Term` is slog-term's format, colored only when stderr is a terminal.
///
/// Every format goes through [`Guard`]: client-supplied text cannot forge lines or smuggle
/// terminal escapes, and one peer cannot flood the log (see [`PeerBudgets`]). The returned
/// [`PeerLogBudget`] lets the event loop report what was suppressed.
pub fn build(level: Level, format: LogFormat) -> (Logger, PeerLogBudget) {
    let budget = PeerLogBudget::default();
    let journal = stderr_is_journal();
    let log = match (format, journal) {
        (LogFormat::Term, true) => root(JournalLines::native_or(io::stderr()), level, &budget),
        (LogFormat::Json, true) => root(JournalJson::new(io::stderr()), level, &budget),
        (LogFormat::Json, false) => root(slog_json::Json::default(io::stderr()), level, &budget),
        (LogFormat::Term, false) => {
            if io::stderr().is_terminal() {
                // Colors unless NO_COLOR is set or the terminal cannot do them.
                let decorator = slog_term::TermDecorator::new().stderr().build();
                let format = slog_term::FullFormat::new(decorator).use_original_order();
                root(format.build(), level, &budget)
            } else {
                let decorator = slog_term::PlainSyncDecorator::new(io::stderr());
                let format = slog_term::FullFormat::new(decorator).use_original_order();
                root(format.build(), level, &budget)
            }
        }
    };
    (log, budget)
}

fn root<D>(drain: D, level: Level, budget: &PeerLogBudget) -> Logger
where
    D: Drain + Send + 'static,
{
    // Level check before taking the lock; errors are dropped (see the module comment). The
    // guard runs inside the lock, so budgets are counted in the order lines are written.
    let guard = Guard {
        inner: drain,
        budgets: budget.0.clone(),
        empty: OwnedKVList::from(slog::o!()),
    };
    let drain = Mutex::new(guard).filter_level(level).ignore_res();
    Logger::root(drain, slog::o!())
}

// ---------------------------------------------------------------------------------------------
// Escaping and per-peer budgets, for every format

/// The tag of the lines that report suppressed warnings: they pass the budget they report on.
pub const SUPPRESSED_TAG: &str = "suppressed";

/// Warnings a peer uid may cause in a burst, and how many more per second after that.
pub const PEER_BURST: u32 = 10;
pub const PEER_PER_SEC: u32 = 1;
/// How long suppressed warnings are counted before a summary line reports them (sooner when
/// the uid's last connection closes).
pub const SUPPRESSION_WINDOW: Duration = Duration::from_secs(10);

/// Appends `text` with everything that could forge a line or drive a terminal escaped:
/// backslash (so an escape cannot be faked), C0 controls including newline and ESC, DEL, C1
/// controls, and the Unicode bidi overrides and line/paragraph separators that reorder or
/// split what a reader sees. Everything else is kept as is.
pub fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || is_invisible_format(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

/// Bidi marks, embeddings, overrides and isolates; line and paragraph separators.
fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` escaped by [`escape_into`], borrowed when nothing needed escaping.
fn escaped(text: &str) -> std::borrow::Cow<'_, str> {
    let clean = text
        .chars()
        .all(|c| c != '\\' && !c.is_control() && !is_invisible_format(c));
    if clean {
        std::borrow::Cow::Borrowed(text)
    } else {
        let mut out = String::with_capacity(text.len() + 8);
        escape_into(&mut out, text);
        std::borrow::Cow::Owned(out)
    }
}

/// One captured key-value, its type kept so JSON numbers stay numbers.
#[derive(Clone, Debug)]
enum Value {
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    Unit,
    None,
    Text(String),
}

/// Key-values captured from a record or a logger, text already escaped, in slog's order.
#[derive(Clone, Debug, Default)]
struct Captured(Vec<(Key, Value)>);

impl Captured {
    fn of(kv: &dyn KV, record: &Record<'_>) -> Captured {
        let mut captured = Captured::default();
        // Serialization only fails if the serializer does; this one never does.
        let _ = kv.serialize(record, &mut captured);
        captured
    }

    fn uid(&self) -> Option<u64> {
        self.0.iter().find_map(|(key, value)| match value {
            Value::U64(uid) if *key == "peer_uid" => Some(*uid),
            _ => None,
        })
    }
}

impl slog::Serializer for Captured {
    fn emit_arguments(&mut self, key: Key, value: &fmt::Arguments<'_>) -> slog::Result {
        let text = value.to_string();
        self.0.push((key, Value::Text(escaped(&text).into_owned())));
        Ok(())
    }
    fn emit_str(&mut self, key: Key, value: &str) -> slog::Result {
        self.0.push((key, Value::Text(escaped(value).into_owned())));
        Ok(())
    }
    fn emit_char(&mut self, key: Key, value: char) -> slog::Result {
        self.emit_str(key, value.encode_utf8(&mut [0; 4]))
    }
    fn emit_u8(&mut self, key: Key, value: u8) -> slog::Result {
        self.emit_u64(key, value.into())
    }
    fn emit_u16(&mut self, key: Key, value: u16) -> slog::Result {
        self.emit_u64(key, value.into())
    }
    fn emit_u32(&mut self, key: Key, value: u32) -> slog::Result {
        self.emit_u64(key, value.into())
    }
    fn emit_usize(&mut self, key: Key, value: usize) -> slog::Result {
        self.emit_u64(key, u64::try_from(value).unwrap_or(u64::MAX))
    }
    fn emit_u64(&mut self, key: Key, value: u64) -> slog::Result {
        self.0.push((key, Value::U64(value)));
        Ok(())
    }
    fn emit_i8(&mut self, key: Key, value: i8) -> slog::Result {
        self.emit_i64(key, value.into())
    }
    fn emit_i16(&mut self, key: Key, value: i16) -> slog::Result {
        self.emit_i64(key, value.into())
    }
    fn emit_i32(&mut self, key: Key, value: i32) -> slog::Result {
        self.emit_i64(key, value.into())
    }
    fn emit_isize(&mut self, key: Key, value: isize) -> slog::Result {
        self.emit_i64(key, i64::try_from(value).unwrap_or(i64::MAX))
    }
    fn emit_i64(&mut self, key: Key, value: i64) -> slog::Result {
        self.0.push((key, Value::I64(value)));
        Ok(())
    }
    fn emit_f32(&mut self, key: Key, value: f32) -> slog::Result {
        self.emit_f64(key, value.into())
    }
    fn emit_f64(&mut self, key: Key, value: f64) -> slog::Result {
        self.0.push((key, Value::F64(value)));
        Ok(())
    }
    fn emit_bool(&mut self, key: Key, value: bool) -> slog::Result {
        self.0.push((key, Value::Bool(value)));
        Ok(())
    }
    fn emit_unit(&mut self, key: Key) -> slog::Result {
        self.0.push((key, Value::Unit));
        Ok(())
    }
    fn emit_none(&mut self, key: Key) -> slog::Result {
        self.0.push((key, Value::None));
        Ok(())
    }
}

impl KV for Captured {
    fn serialize(
        &self,
        _record: &Record<'_>,
        serializer: &mut dyn slog::Serializer,
    ) -> slog::Result {
        // Replayed in the captured order, so the drain below sees the order slog gave.
        for (key, value) in &self.0 {
            match value {
                Value::U64(v) => serializer.emit_u64(key, *v)?,
                Value::I64(v) => serializer.emit_i64(key, *v)?,
                Value::F64(v) => serializer.emit_f64(key, *v)?,
                Value::Bool(v) => serializer.emit_bool(key, *v)?,
                Value::Unit => serializer.emit_unit(key)?,
                Value::None => serializer.emit_none(key)?,
                Value::Text(v) => serializer.emit_str(key, v)?,
            }
        }
        Ok(())
    }
}

/// The drain in front of every format: escapes the message and every key-value (the record's
/// and the loggers'), and holds back warnings of a peer uid that ran out of budget. Doing it
/// here, not at each call site, covers every value any module logs now or later.
struct Guard<D> {
    inner: D,
    budgets: Arc<Mutex<PeerBudgets>>,
    empty: OwnedKVList,
}

impl<D: Drain> Drain for Guard<D> {
    type Ok = Option<D::Ok>;
    type Err = D::Err;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<Self::Ok, D::Err> {
        let own = Captured::of(&record.kv(), record);
        let inherited = Captured::of(values, record);
        if record.level().is_at_least(Level::Warning) && record.tag() != SUPPRESSED_TAG {
            if let Some(uid) = own.uid().or_else(|| inherited.uid()) {
                let uid = u32::try_from(uid).unwrap_or(u32::MAX);
                let allowed = self
                    .budgets
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .admit(uid, Instant::now());
                if !allowed {
                    return Ok(None);
                }
            }
        }
        let message = record.msg().to_string();
        let message = escaped(&message);
        let args = format_args!("{message}");
        let rstatic = slog::RecordStatic {
            location: record.location(),
            tag: record.tag(),
            level: record.level(),
        };
        let escaped_record = Record::new(&rstatic, &args, slog::BorrowedKV(&own));
        let values = if inherited.0.is_empty() {
            self.empty.clone()
        } else {
            OwnedKVList::from(slog::OwnedKV(inherited))
        };
        self.inner.log(&escaped_record, &values).map(Some)
    }
}

/// Per-uid token buckets for warnings: [`PEER_BURST`] at once, then [`PEER_PER_SEC`] a second.
/// Keyed by uid, not connection, so reconnecting does not refill the bucket; all connections
/// of a uid share it (root's clients too).
#[derive(Default)]
struct PeerBudgets(HashMap<u32, Budget>);

struct Budget {
    tokens: u32,
    refilled: Instant,
    suppressed: u64,
    /// When the first warning now counted in `suppressed` was held back.
    since: Option<Instant>,
}

impl PeerBudgets {
    fn admit(&mut self, uid: u32, now: Instant) -> bool {
        let budget = self.0.entry(uid).or_insert(Budget {
            tokens: PEER_BURST,
            refilled: now,
            suppressed: 0,
            since: None,
        });
        let elapsed = now.saturating_duration_since(budget.refilled).as_secs();
        if elapsed > 0 {
            let refill = u32::try_from(elapsed)
                .unwrap_or(u32::MAX)
                .saturating_mul(PEER_PER_SEC);
            budget.tokens = budget.tokens.saturating_add(refill).min(PEER_BURST);
            budget.refilled += Duration::from_secs(elapsed);
        }
        if budget.tokens > 0 {
            budget.tokens -= 1;
            true
        } else {
            budget.suppressed = budget.suppressed.saturating_add(1);
            budget.since.get_or_insert(now);
            false
        }
    }
}

/// The event loop's handle on the per-peer budgets: it asks which suppressions to report.
#[derive(Clone, Default)]
pub struct PeerLogBudget(Arc<Mutex<PeerBudgets>>);

impl PeerLogBudget {
    /// Suppressions whose window has ended, as (uid, count); they are reset. Budgets that are
    /// full again and owe no report are forgotten, so the map only holds recent peers.
    pub fn take_due(&self, now: Instant) -> Vec<(u32, u64)> {
        let mut budgets = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut due = Vec::new();
        budgets.0.retain(|&uid, budget| {
            if budget
                .since
                .is_some_and(|since| now.saturating_duration_since(since) >= SUPPRESSION_WINDOW)
            {
                due.push((uid, budget.suppressed));
                budget.suppressed = 0;
                budget.since = None;
            }
            let idle = now.saturating_duration_since(budget.refilled).as_secs();
            let refilled = u64::from(budget.tokens)
                .saturating_add(idle.saturating_mul(PEER_PER_SEC.into()))
                >= u64::from(PEER_BURST);
            budget.since.is_some() || !refilled
        });
        due
    }

    /// What `uid` had suppressed and not yet reported, when its last connection closed.
    pub fn take_gone(&self, uid: u32) -> Option<u64> {
        let mut budgets = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let budget = budgets.0.get_mut(&uid)?;
        budget.since = None;
        Some(std::mem::take(&mut budget.suppressed)).filter(|&n| n > 0)
    }
}

/// True when stderr is the journald stream systemd connected us to: `JOURNAL_STREAM` is
/// `<dev>:<inode>` of that stream, and a child that inherited the variable but not the stream
/// (or a redirect in ExecStart) must not be mistaken for it.
fn stderr_is_journal() -> bool {
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
struct JournalLines<W: Write> {
    out: RefCell<W>,
    native: RefCell<Option<std::os::unix::net::UnixDatagram>>,
}

impl<W: Write> JournalLines<W> {
    /// Lines on `out` only (tests).
    #[cfg(test)]
    fn new(out: W) -> Self {
        JournalLines {
            out: RefCell::new(out),
            native: RefCell::new(None),
        }
    }

    /// Native entries when the journal's socket is there, else lines on `out`.
    fn native_or(out: W) -> Self {
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
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl SharedBuf {
    fn take(&self) -> Vec<u8> {
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
struct JournalJson<W: Write> {
    json: slog_json::Json<SharedBuf>,
    buf: SharedBuf,
    out: RefCell<W>,
}

impl<W: Write> JournalJson<W> {
    fn new(out: W) -> Self {
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

    use super::*;
    use slog::{debug, error, info, o, warn};

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
    fn level_filter_drops_lower_records() {
        let buf = SharedBuf::default();
        let log = root(
            JournalLines::new(buf.clone()),
            Level::Warning,
            &PeerLogBudget::default(),
        );
        info!(log, "hidden");
        warn!(log, "shown");
        assert_eq!(text(&buf), "<4>shown\n");
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

    #[test]
    fn build_returns_a_working_logger() {
        for format in [LogFormat::Term, LogFormat::Json] {
            let (log, _budget) = build(Level::Info, format);
            info!(log, "logging smoke test"; "format" => %format);
        }
    }
}
