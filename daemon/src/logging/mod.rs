//! Logging to stderr: for journald (priority-prefixed lines), as JSON, or for a human.
//!
//! All drains are synchronous and Mutex-wrapped: the daemon is single-threaded, and an async
//! drain could drop the last lines (the ones explaining why it exited) on exit. Write errors are
//! ignored rather than turned into panics, so a closed stderr cannot take the broker down.
//!
//! The drains are in `journal` (journald's native socket, `<P>` lines, prefixed JSON); every
//! format goes through `guard` (escaping, per-peer budgets).

mod guard;
mod journal;

use crate::config::LogFormat;
use slog::{Drain, Level, Logger, OwnedKVList};
use std::io::{self, IsTerminal};
use std::sync::Mutex;

use guard::Guard;
pub use guard::{
    escape_into, PeerLogBudget, PEER_BURST, PEER_PER_SEC, SUPPRESSED_TAG, SUPPRESSION_WINDOW,
};
use journal::{stderr_is_journal, JournalJson, JournalLines};

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
/// terminal escapes, and one peer cannot flood the log (see `guard::PeerBudgets`). The returned
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

#[cfg(test)]
mod tests {
    use super::*;
    use journal::SharedBuf;
    use slog::{info, warn};

    fn text(buf: &SharedBuf) -> String {
        String::from_utf8(buf.take()).expect("log output is UTF-8")
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
    fn build_returns_a_working_logger() {
        for format in [LogFormat::Term, LogFormat::Json] {
            let (log, _budget) = build(Level::Info, format);
            info!(log, "logging smoke test"; "format" => %format);
        }
    }
}
