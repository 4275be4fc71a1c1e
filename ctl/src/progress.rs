//! Progress bars for `send` and `recv` (indicatif): bytes, rate, and the ETA when the size is
//! known. On stderr only, and only when stderr is a terminal or `--progress` asks; standard
//! output carries the data and is never touched. A thread samples the byte count four times a
//! second, so the copy loop pays nothing for the bar.

use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

/// How often the bar takes the count.
const TICK: Duration = Duration::from_millis(250);

/// A bar drawn by its own thread until [`Bar::finish`].
pub struct Bar {
    bar: ProgressBar,
    stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
}

/// A bar for `what` (like `send cam`), if stderr is a terminal or `forced`; `total` is the
/// size when it is known; `count` reads the bytes done so far.
pub fn start(
    what: String,
    total: Option<u64>,
    forced: bool,
    count: impl Fn() -> u64 + Send + 'static,
) -> Option<Bar> {
    let target = if io::stderr().is_terminal() {
        ProgressDrawTarget::stderr_with_hz(4)
    } else if forced {
        // indicatif hides its stderr target when stderr is no terminal: `--progress` wants it
        // anyway (a log, a test), as one plain line a second.
        ProgressDrawTarget::term_like_with_hz(Box::new(LineLog), 1)
    } else {
        return None;
    };
    let (bar, template) = match total {
        Some(total) => (
            ProgressBar::with_draw_target(Some(total), target),
            "{prefix} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {wide_bar}",
        ),
        None => (
            ProgressBar::with_draw_target(None, target),
            "{prefix} {bytes} {binary_bytes_per_sec} {elapsed}",
        ),
    };
    // The templates are constants: a bad one is a bug caught by the tests, and the bar then
    // falls back to indicatif's default style rather than failing the transfer.
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.set_prefix(what);
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = {
        let bar = bar.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                bar.set_position(count());
                std::thread::sleep(TICK);
            }
            bar.set_position(count());
        })
    };
    Some(Bar {
        bar,
        stop,
        ticker: Some(ticker),
    })
}

impl Bar {
    /// Takes the last count and draws the bar a last time, left on its line.
    pub fn finish(mut self) {
        self.stop_ticker();
        self.bar.finish();
    }

    fn stop_ticker(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(ticker) = self.ticker.take() {
            // The ticker only sleeps and sets positions: there is nothing to report if it
            // panicked inside indicatif, and the transfer itself is not affected.
            let _ = ticker.join();
        }
    }
}

impl Drop for Bar {
    /// A transfer that failed: the bar stays as it was, and the error line comes after it.
    fn drop(&mut self) {
        if self.ticker.is_some() {
            self.stop_ticker();
            self.bar.abandon();
        }
    }
}

/// stderr as a plain log for `--progress` without a terminal: each draw one line, no cursor
/// movement or escape sequences.
#[derive(Debug)]
struct LineLog;

impl LineLog {
    /// One whole line in one write (stderr is unbuffered), so the log stays line by line
    /// next to other messages on stderr.
    fn write(s: &str) -> io::Result<()> {
        io::stderr().lock().write_all(s.as_bytes())
    }
}

impl TermLike for LineLog {
    fn width(&self) -> u16 {
        80
    }
    fn move_cursor_up(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    // indicatif blanks the old line with spaces before a redraw: that is nothing to log.
    fn write_line(&self, s: &str) -> io::Result<()> {
        self.write_str(s)
    }
    fn write_str(&self, s: &str) -> io::Result<()> {
        let line = s.trim_end();
        if line.is_empty() {
            return Ok(());
        }
        LineLog::write(&format!("{line}\n"))
    }
    fn clear_line(&self) -> io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        io::stderr().flush()
    }
}
