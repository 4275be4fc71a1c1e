//! What every log format goes through: client-supplied text escaped so it cannot forge lines
//! or drive a terminal, and warnings held back per peer uid so one peer cannot flood the log.

use slog::{Drain, Key, Level, OwnedKVList, Record, KV};
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

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
pub(super) struct Guard<D> {
    pub(super) inner: D,
    pub(super) budgets: Arc<Mutex<PeerBudgets>>,
    pub(super) empty: OwnedKVList,
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
pub(super) struct PeerBudgets(HashMap<u32, Budget>);

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
pub struct PeerLogBudget(pub(super) Arc<Mutex<PeerBudgets>>);

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
