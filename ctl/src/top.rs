//! `shmemctl top`: one row per channel with what it does now (rates over the last interval)
//! and since it was made, under a header line of broker totals. Full-screen with ratatui when
//! standard output is a terminal; otherwise (or with `--once`) one plain snapshot, taken as two
//! looks `--interval` apart so that it has rates.

use std::io::{self, IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::ValueEnum;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line as TextLine;
use ratatui::widgets::{Paragraph, Row, Table};
use ratatui::{DefaultTerminal, Frame};
use shmem_broker_client::size::format_size;
use shmem_broker_client::{Client, Role};

use crate::report::StdoutError;
use crate::snapshot::{self, Rates, Snapshot};

/// What the rows are sorted by (`--sort`, or a key in the live view).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SortKey {
    /// Channel name, A to Z (key `n`)
    Name,
    /// Messages per second, busiest first (key `m`)
    Messages,
    /// Bytes per second (key `b`)
    Bytes,
    /// Fill of the fullest ring (key `f`)
    Fill,
    /// Lag of the slowest consumer, in bytes (key `l`)
    Lag,
    /// Messages lost since the channel was made (key `o`)
    Lost,
    /// Consumers evicted since the channel was made (key `e`)
    Evictions,
    /// Wake-ups per second (key `w`)
    Wakeups,
}

impl SortKey {
    fn from_key(c: char) -> Option<SortKey> {
        Some(match c {
            'n' => SortKey::Name,
            'm' => SortKey::Messages,
            'b' => SortKey::Bytes,
            'f' => SortKey::Fill,
            'l' => SortKey::Lag,
            'o' => SortKey::Lost,
            'e' => SortKey::Evictions,
            'w' => SortKey::Wakeups,
            _ => return None,
        })
    }

    /// The column it sorts.
    fn column(self) -> usize {
        match self {
            SortKey::Name => 0,
            SortKey::Messages => 3,
            SortKey::Bytes => 4,
            SortKey::Fill => 5,
            SortKey::Lag => 6,
            SortKey::Lost => 7,
            SortKey::Evictions => 8,
            SortKey::Wakeups => 9,
        }
    }
}

pub struct Options {
    pub once: bool,
    pub interval: Duration,
    pub sort: SortKey,
}

const COLUMNS: [&str; 10] = [
    "CHANNEL", "PROD", "CONS", "MSG/S", "BYTES/S", "FILL", "LAG", "LOST", "EVICT", "WAKE/S",
];

/// One channel's row, numbers first (for sorting), text made from them.
struct Line {
    name: String,
    producers: String,
    consumers: String,
    rates: Rates,
    fill: f64,
    lag: u64,
    lost: u64,
    evictions: u64,
}

impl Line {
    fn cells(&self) -> [String; 10] {
        [
            self.name.clone(),
            self.producers.clone(),
            self.consumers.clone(),
            format!("{:.0}", self.rates.messages),
            format!("{}/s", format_size(self.rates.bytes as u64)),
            format!("{:.0}%", self.fill * 100.0),
            format_size(self.lag),
            self.lost.to_string(),
            self.evictions.to_string(),
            format!("{:.0}", self.rates.wakeups),
        ]
    }
}

/// The rows of `now`, with rates since `before`.
fn lines(before: Option<&Snapshot>, now: &Snapshot) -> Vec<Line> {
    let secs = before.map_or(0.0, |b| now.at.duration_since(b.at).as_secs_f64());
    now.channels
        .iter()
        .map(|c| {
            let old = before.and_then(|b| b.channels.iter().find(|o| o.name == c.name));
            let rates = match before {
                Some(_) => snapshot::rates(old, c, secs),
                None => Rates::default(),
            };
            Line {
                name: c.name.clone(),
                producers: format!(
                    "{}/{}",
                    snapshot::attached(c, Role::Producer),
                    c.max_producers
                ),
                consumers: format!(
                    "{}/{}",
                    snapshot::attached(c, Role::Consumer),
                    c.max_consumers
                ),
                rates,
                fill: snapshot::fill_ratio(c),
                lag: snapshot::slowest_lag_bytes(c),
                lost: c.messages_lost,
                evictions: c.evictions,
            }
        })
        .collect()
}

/// Sorts by `key`: names A to Z, numbers largest first; `reverse` turns either round.
fn sort(lines: &mut [Line], key: SortKey, reverse: bool) {
    lines.sort_by(|a, b| {
        let by_number = |x: f64, y: f64| y.total_cmp(&x);
        let order = match key {
            SortKey::Name => a.name.cmp(&b.name),
            SortKey::Messages => by_number(a.rates.messages, b.rates.messages),
            SortKey::Bytes => by_number(a.rates.bytes, b.rates.bytes),
            SortKey::Fill => by_number(a.fill, b.fill),
            SortKey::Lag => b.lag.cmp(&a.lag),
            SortKey::Lost => b.lost.cmp(&a.lost),
            SortKey::Evictions => b.evictions.cmp(&a.evictions),
            SortKey::Wakeups => by_number(a.rates.wakeups, b.rates.wakeups),
        }
        .then_with(|| a.name.cmp(&b.name));
        if reverse {
            order.reverse()
        } else {
            order
        }
    });
}

/// The broker totals line.
fn header(now: &Snapshot) -> String {
    let s = &now.status;
    let memory = match now.ring_memory() {
        Some((used, limit)) => format!(
            "ring memory {} of {}",
            format_size(used),
            format_size(limit)
        ),
        None => "ring memory unknown".into(),
    };
    format!(
        "shmem-broker {} pid {} up {}s  clients {}  channels {}  {memory}",
        s.version, s.pid, s.uptime_secs, s.clients, s.channels
    )
}

pub fn run(client: &Client, options: Options, out: &mut impl Write) -> Result<()> {
    if options.once || !io::stdout().is_terminal() {
        let first = Snapshot::take(client)?;
        std::thread::sleep(options.interval);
        let second = Snapshot::take(client)?;
        return plain(out, &first, &second, options.sort).map_err(|e| StdoutError(e).into());
    }
    let mut terminal = ratatui::init();
    let result = live(&mut terminal, client, &options);
    ratatui::restore();
    result
}

/// One snapshot as plain text: the header line, then a table with aligned columns.
fn plain(
    out: &mut impl Write,
    first: &Snapshot,
    second: &Snapshot,
    key: SortKey,
) -> io::Result<()> {
    writeln!(out, "{}", header(second))?;
    let mut rows = lines(Some(first), second);
    sort(&mut rows, key, false);
    let table: Vec<[String; 10]> = std::iter::once(COLUMNS.map(String::from))
        .chain(rows.iter().map(Line::cells))
        .collect();
    let widths: Vec<usize> = (0..COLUMNS.len())
        .map(|i| table.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for row in &table {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, w))| {
                // Names left-aligned, numbers right-aligned.
                if i == 0 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        writeln!(out, "{}", cells.join("  ").trim_end())?;
    }
    out.flush()
}

/// The full-screen view until `q`, Esc or Ctrl-C.
fn live(terminal: &mut DefaultTerminal, client: &Client, options: &Options) -> Result<()> {
    let mut before: Option<Snapshot> = None;
    let mut now = Snapshot::take(client)?;
    let mut key = options.sort;
    let mut reverse = false;
    loop {
        let mut rows = lines(before.as_ref(), &now);
        sort(&mut rows, key, reverse);
        terminal.draw(|frame| draw(frame, &now, &rows, key, reverse))?;
        let left = (now.at + options.interval).saturating_duration_since(Instant::now());
        if !left.is_zero() && event::poll(left)? {
            let Event::Key(press) = event::read()? else {
                continue;
            };
            if press.kind != KeyEventKind::Press {
                continue;
            }
            match press.code {
                KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                KeyCode::Char('c') if press.modifiers.contains(KeyModifiers::CONTROL) => {
                    return Ok(())
                }
                KeyCode::Char('r') => reverse = !reverse,
                KeyCode::Char(c) => {
                    if let Some(new) = SortKey::from_key(c) {
                        key = new;
                    }
                }
                _ => {}
            }
            continue;
        }
        let next = Snapshot::take(client)?;
        before = Some(std::mem::replace(&mut now, next));
    }
}

fn draw(frame: &mut Frame<'_>, now: &Snapshot, rows: &[Line], key: SortKey, reverse: bool) {
    let [top, table_area, help] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(Paragraph::new(header(now)), top);
    let arrow = if reverse { "^" } else { "v" };
    let titles = COLUMNS.iter().enumerate().map(|(i, title)| {
        if i == key.column() {
            format!("{title}{arrow}")
        } else {
            title.to_string()
        }
    });
    let widths = [
        Constraint::Min(12),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(9),
        Constraint::Length(11),
        Constraint::Length(6),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(6),
        Constraint::Length(8),
    ];
    let table = Table::new(rows.iter().map(|l| Row::new(l.cells())), widths)
        .header(Row::new(titles).style(Style::default().add_modifier(Modifier::REVERSED)));
    frame.render_widget(table, table_area);
    frame.render_widget(
        Paragraph::new(TextLine::from(
            "sort: n name  m msg/s  b bytes/s  f fill  l lag  o lost  e evict  w wake/s  r reverse   q quit",
        )),
        help,
    );
}
