//! The broker's configuration file (`/etc/shmem-broker.toml` and friends).
//!
//! The file is parsed with `toml_edit`, which keeps the byte span of every key and value, so each
//! error a user can make is reported as `file:line:column: key: message` pointing at the
//! offending key (for unknown keys) or value (for everything else). toml's serde path loses the
//! span of tables made implicitly by dotted keys (`logging.level = "info"`) and cannot tell which
//! `[[channel]]` an unknown key sits in, hence the document walk below instead of derived structs.

use crate::access::{resolve_group, AccessList};
use shmem_broker_proto::names::validate_channel_name;
use shmem_broker_proto::size::{format_size, parse_size};
use shmem_broker_proto::wire::{SlowConsumer, MAX_ENDPOINTS};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use toml_edit::{ImDocument, Item, TableLike, Value};

/// The only config format version this broker reads.
const CONFIG_VERSION: i64 = 1;

/// Channel data areas are mapped in whole pages; capacities are rounded up to this.
const PAGE_SIZE: u64 = 4096;

/// Largest ring the client library maps.
const RING_MAX_CAPACITY: u64 = shmem_broker_proto::ring::MAX_CAPACITY;

/// Smallest capacity a channel may have (one page).
const MIN_CAPACITY: u64 = PAGE_SIZE;

/// `sizeof(sockaddr_un.sun_path)` on Linux, less the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

const TOP_KEYS: &[&str] = &[
    "version",
    "socket",
    "socket_mode",
    "default_capacity",
    "max_capacity",
    "max_channels",
    "max_clients",
    "admin_groups",
    "max_ring_bytes",
    "request_timeout",
    "per_uid",
    "logging",
    "channel",
];
const PER_UID_KEYS: &[&str] = &[
    "max_clients",
    "max_channels",
    "max_ring_bytes",
    "max_attaches_per_sec",
    "max_durable_consumers",
];
const LOGGING_KEYS: &[&str] = &["level", "format"];
const CHANNEL_KEYS: &[&str] = &[
    "name",
    "capacity",
    "producers",
    "consumers",
    "max_producers",
    "max_consumers",
    "slow_consumer",
];

/// How log records are written to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (colored on a terminal).
    Term,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "term" => Ok(LogFormat::Term),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!(
                "unknown log format {text:?} (expected \"term\" or \"json\")"
            )),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Term => "term",
            LogFormat::Json => "json",
        })
    }
}

/// A channel the broker creates at startup from a `[[channel]]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelConfig {
    pub name: String,
    /// Bytes, always a multiple of 4096.
    pub capacity: u64,
    pub producers: AccessList,
    pub consumers: AccessList,
    /// Producers and consumers attached at once (1 and 1 unless the table says more).
    pub max_producers: u32,
    pub max_consumers: u32,
    /// `slow_consumer = "block" | "drop" | "disconnect"`.
    pub slow_consumer: SlowConsumer,
}

/// The broker's settings: built-in defaults, or a file read with [`Config::load`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The file the settings came from; `None` for the built-in defaults.
    pub source: Option<PathBuf>,
    /// `socket = "/path"`: where to bind when not socket-activated.
    pub socket: Option<PathBuf>,
    /// `socket_mode = "0666"`: permission bits of a socket the broker binds itself.
    pub socket_mode: u32,
    /// `default_capacity = "1MiB"`: capacity of a channel that does not name one (multiple of 4096).
    pub default_capacity: u64,
    /// `max_capacity = "1GiB"`: largest capacity any channel may have.
    pub max_capacity: u64,
    pub max_channels: usize,
    pub max_clients: usize,
    /// `admin_groups = ["wheel", "1001"]`, resolved to gids.
    pub admin_gids: Vec<u32>,
    /// `[logging] level = "info"`.
    pub log_level: Option<slog::Level>,
    /// `[logging] format = "term"`.
    pub log_format: Option<LogFormat>,
    /// `max_ring_bytes = "16GiB"`: ring memory of all channels together.
    pub max_ring_bytes: u64,
    /// `request_timeout = "10s"`: a connection that has not completed a request this long after
    /// connecting, or leaves a request half-sent this long, is closed. Attached or otherwise
    /// idle clients that completed a request are never timed out.
    pub request_timeout: Duration,
    /// `[per_uid]`: quotas for each uid other than root.
    pub per_uid: PerUidQuotas,
    /// `[[channel]]` tables, in file order.
    pub channels: Vec<ChannelConfig>,
}

/// `[per_uid]`: what one uid (other than root) may hold at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PerUidQuotas {
    /// Connections open at once.
    pub max_clients: usize,
    /// Channels created with `create` and owned by the uid.
    pub max_channels: usize,
    /// Ring memory of the channels the uid owns.
    pub max_ring_bytes: u64,
    /// Attach requests per second (a burst of this many is allowed).
    pub max_attaches_per_sec: usize,
    /// Durable consumer names registered, over all channels (kept until dropped).
    pub max_durable_consumers: usize,
}

impl Default for PerUidQuotas {
    fn default() -> Self {
        PerUidQuotas {
            max_clients: 1024,
            max_channels: 256,
            max_ring_bytes: 4 << 30,
            max_attaches_per_sec: 1000,
            max_durable_consumers: 64,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            source: None,
            socket: None,
            socket_mode: 0o666,
            default_capacity: 1 << 20,
            max_capacity: 1 << 30,
            max_channels: 1024,
            max_clients: 4096,
            admin_gids: Vec::new(),
            log_level: None,
            log_format: None,
            max_ring_bytes: 16 << 30,
            request_timeout: Duration::from_secs(10),
            per_uid: PerUidQuotas::default(),
            channels: Vec::new(),
        }
    }
}

/// A config file that could not be read or is wrong, with where and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based.
    pub line: Option<usize>,
    /// 1-based, in characters.
    pub column: Option<usize>,
    /// Dotted path of the offending key, like `channel[1].capacity`.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        f.write_str(": ")?;
        match self.key.as_deref() {
            Some("") => f.write_str("\"\": ")?,
            Some(key) => write!(f, "{key}: ")?,
            None => {}
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The config file read when no path is given, if it exists.
pub const SYSTEM_CONFIG: &str = "/etc/shmem-broker/shmem-broker.toml";

impl Config {
    /// The config the broker runs with: `explicit` if given, else [`SYSTEM_CONFIG`] if it
    /// exists, else the built-in defaults. Used at start and again on every reload.
    pub fn discover(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        match explicit {
            Some(path) => Config::load(path),
            None if Path::new(SYSTEM_CONFIG).exists() => Config::load(Path::new(SYSTEM_CONFIG)),
            None => Ok(Config::default()),
        }
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes = std::fs::read(path).map_err(|err| ConfigError {
            file: path.to_path_buf(),
            line: None,
            column: None,
            key: None,
            message: format!("cannot read: {}", io_error_text(&err)),
        })?;
        let text = String::from_utf8(bytes).map_err(|err| {
            let valid = &err.as_bytes()[..err.utf8_error().valid_up_to()];
            let prefix = String::from_utf8_lossy(valid);
            let (line, column) = line_column(&prefix, prefix.len());
            ConfigError {
                file: path.to_path_buf(),
                line: Some(line),
                column: Some(column),
                key: None,
                message: "not valid UTF-8".into(),
            }
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text; `path` is recorded as the source and named in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Parser { text, file: path }.config()
    }
}

/// Parses `"10s"`, `"500ms"`, `"2m"`, `"1h"`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let number: u64 = digits.parse().map_err(|_| {
        format!(
            "invalid duration {text:?}: expected a number and a unit, like \"10s\" or \"500ms\""
        )
    })?;
    let duration = match unit.trim() {
        "ms" => Duration::from_millis(number),
        "s" | "" => Duration::from_secs(number),
        "m" | "min" => Duration::from_secs(number.saturating_mul(60)),
        "h" => Duration::from_secs(number.saturating_mul(3600)),
        other => {
            return Err(format!(
                "invalid duration {text:?}: unknown unit {other:?} (use ms, s, m, h)"
            ))
        }
    };
    Ok(duration)
}

/// An io error's text without the " (os error N)" suffix std appends.
fn io_error_text(err: &std::io::Error) -> String {
    let text = err.to_string();
    match (text.rfind(" (os error "), text.ends_with(')')) {
        (Some(at), true) => text[..at].to_string(),
        _ => text,
    }
}

/// 1-based line and character column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |at| at + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// Edit distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// The known key closest to `key`, if it is close enough to be a likely typo.
fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let normal = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    let key = normal(key);
    known
        .iter()
        .map(|&candidate| (edit_distance(&key, &normal(candidate)), candidate))
        .filter(|&(distance, candidate)| distance <= (candidate.len() / 3).max(1))
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, candidate)| candidate)
}

/// "an integer", "a string"... for wrong-type messages.
fn describe(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Value(Value::String(_)) => "a string",
        Item::Value(Value::Integer(_)) => "an integer",
        Item::Value(Value::Float(_)) => "a float",
        Item::Value(Value::Boolean(_)) => "a boolean",
        Item::Value(Value::Datetime(_)) => "a date/time",
        Item::Value(Value::Array(_)) => "an array",
        Item::Value(Value::InlineTable(_)) | Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
    }
}

fn parse_level(text: &str) -> Result<slog::Level, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "trace" => Ok(slog::Level::Trace),
        "debug" => Ok(slog::Level::Debug),
        "info" => Ok(slog::Level::Info),
        "warn" | "warning" => Ok(slog::Level::Warning),
        "error" => Ok(slog::Level::Error),
        "critical" => Ok(slog::Level::Critical),
        _ => Err(format!(
            "unknown log level {text:?} (expected trace, debug, info, warn or error)"
        )),
    }
}

/// Rounds a capacity up to whole pages; `None` on overflow.
fn round_to_pages(bytes: u64) -> Option<u64> {
    bytes
        .checked_add(PAGE_SIZE - 1)
        .map(|b| b / PAGE_SIZE * PAGE_SIZE)
}

/// One key of a table and its value, with the dotted path used in messages.
struct Entry<'a> {
    /// The key itself, like `capacity`.
    key: &'a str,
    /// The dotted path, like `channel[1].capacity`.
    path: String,
    key_span: Option<Range<usize>>,
    item: &'a Item,
}

/// One string of a list, like `channel[0].producers[2]`.
struct Element<'a> {
    text: &'a str,
    path: String,
    span: Option<Range<usize>>,
}

impl Entry<'_> {
    /// Where the value is, falling back to the key (tables made by dotted keys have no span).
    fn span(&self) -> Option<Range<usize>> {
        self.item.span().or_else(|| self.key_span.clone())
    }
}

/// The top-level entries, picked out by name once unknown keys have been ruled out.
#[derive(Default)]
struct TopLevel<'a> {
    version: Option<Entry<'a>>,
    socket: Option<Entry<'a>>,
    socket_mode: Option<Entry<'a>>,
    default_capacity: Option<Entry<'a>>,
    max_capacity: Option<Entry<'a>>,
    max_channels: Option<Entry<'a>>,
    max_clients: Option<Entry<'a>>,
    admin_groups: Option<Entry<'a>>,
    max_ring_bytes: Option<Entry<'a>>,
    request_timeout: Option<Entry<'a>>,
    per_uid: Option<Entry<'a>>,
    logging: Option<Entry<'a>>,
    channel: Option<Entry<'a>>,
}

struct Parser<'a> {
    text: &'a str,
    file: &'a Path,
}

impl Parser<'_> {
    fn error(
        &self,
        span: Option<Range<usize>>,
        key: Option<&str>,
        message: impl Into<String>,
    ) -> ConfigError {
        let position = span.map(|span| line_column(self.text, span.start));
        ConfigError {
            file: self.file.to_path_buf(),
            line: position.map(|(line, _)| line),
            column: position.map(|(_, column)| column),
            key: key.map(str::to_string),
            message: message.into(),
        }
    }

    /// An error about an entry's value.
    fn bad(&self, entry: &Entry<'_>, message: impl Into<String>) -> ConfigError {
        self.error(entry.span(), Some(&entry.path), message)
    }

    fn wrong_type(&self, entry: &Entry<'_>, expected: &str) -> ConfigError {
        self.bad(
            entry,
            format!("expected {expected}, found {}", describe(entry.item)),
        )
    }

    /// The entries of a table, refusing keys not in `known`. `prefix` is the table's own path
    /// (`""` for the top level).
    fn entries<'t>(
        &self,
        table: &'t dyn TableLike,
        prefix: &str,
        known: &[&str],
    ) -> Result<Vec<Entry<'t>>, ConfigError> {
        let mut entries = Vec::new();
        for (name, item) in table.iter() {
            let path = if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}.{name}")
            };
            let key_span = table.key(name).and_then(|key| key.span());
            if !known.contains(&name) {
                let mut message = "unknown key".to_string();
                if !prefix.is_empty() && TOP_KEYS.contains(&name) {
                    message.push_str(&format!(
                        " here (`{name}` is a top-level setting: move it above the first [section])"
                    ));
                } else if prefix.is_empty() && CHANNEL_KEYS.contains(&name) {
                    message.push_str(&format!(" (`{name}` belongs inside a [[channel]] table)"));
                } else if prefix.is_empty() && LOGGING_KEYS.contains(&name) {
                    message.push_str(&format!(" (`{name}` belongs inside the [logging] table)"));
                } else if let Some(suggestion) = closest(name, known) {
                    message.push_str(&format!(" (did you mean `{suggestion}`?)"));
                } else {
                    message.push_str(&format!(" (expected one of: {})", known.join(", ")));
                }
                return Err(self.error(key_span, Some(&path), message));
            }
            entries.push(Entry {
                key: name,
                path,
                key_span,
                item,
            });
        }
        Ok(entries)
    }

    fn string<'e>(&self, entry: &Entry<'e>) -> Result<&'e str, ConfigError> {
        entry
            .item
            .as_str()
            .ok_or_else(|| self.wrong_type(entry, "a string"))
    }

    fn integer(&self, entry: &Entry<'_>) -> Result<i64, ConfigError> {
        entry
            .item
            .as_integer()
            .ok_or_else(|| self.wrong_type(entry, "an integer"))
    }

    /// A count that must be at least 1.
    fn count(&self, entry: &Entry<'_>) -> Result<usize, ConfigError> {
        let value = self.integer(entry)?;
        if value < 1 {
            return Err(self.bad(entry, format!("must be at least 1, not {value}")));
        }
        usize::try_from(value).map_err(|_| self.bad(entry, format!("{value} is too large")))
    }

    /// A size: a string with an optional unit (`"64KiB"`) or an integer number of bytes; never 0.
    fn size(&self, entry: &Entry<'_>) -> Result<u64, ConfigError> {
        let bytes = match entry.item {
            Item::Value(Value::String(text)) => {
                parse_size(text.value()).map_err(|message| self.bad(entry, message))?
            }
            Item::Value(Value::Integer(number)) => {
                let number = *number.value();
                u64::try_from(number)
                    .map_err(|_| self.bad(entry, format!("size cannot be negative ({number})")))?
            }
            _ => {
                return Err(self.wrong_type(
                    entry,
                    "a size (a string like \"64KiB\" or an integer number of bytes)",
                ))
            }
        };
        if bytes == 0 {
            return Err(self.bad(entry, "size must be greater than zero"));
        }
        Ok(bytes)
    }

    /// A channel capacity: at least 4 KiB, rounded UP to a multiple of 4096 (the ring's data
    /// area is mapped in whole pages, so a partial page would be wasted or unusable), and no
    /// more than `max_capacity` after rounding.
    fn capacity(&self, entry: &Entry<'_>, max_capacity: u64) -> Result<u64, ConfigError> {
        let bytes = self.size(entry)?;
        if bytes < MIN_CAPACITY {
            return Err(self.bad(
                entry,
                format!(
                    "capacity {} is below the minimum of {}",
                    format_size(bytes),
                    format_size(MIN_CAPACITY)
                ),
            ));
        }
        let rounded = round_to_pages(bytes)
            .ok_or_else(|| self.bad(entry, format!("capacity {bytes} is too large")))?;
        if rounded > max_capacity {
            return Err(self.bad(
                entry,
                format!(
                    "capacity {} is above max_capacity ({})",
                    format_size(rounded),
                    format_size(max_capacity)
                ),
            ));
        }
        Ok(rounded)
    }

    /// A list of strings (a single string is taken as a one-entry list), each element with its
    /// own path and span so errors point at the element.
    fn string_list<'e>(&self, entry: &Entry<'e>) -> Result<Vec<Element<'e>>, ConfigError> {
        match entry.item {
            Item::Value(Value::String(text)) => Ok(vec![Element {
                text: text.value(),
                path: entry.path.clone(),
                span: entry.span(),
            }]),
            Item::Value(Value::Array(array)) => array
                .iter()
                .enumerate()
                .map(|(index, value)| {
                    let path = format!("{}[{index}]", entry.path);
                    let span = value.span().or_else(|| entry.span());
                    match value.as_str() {
                        Some(text) => Ok(Element { text, path, span }),
                        None => Err(self.error(
                            span,
                            Some(&path),
                            format!("expected a string, found {}", value.type_name()),
                        )),
                    }
                })
                .collect(),
            _ => Err(self.wrong_type(entry, "an array of strings")),
        }
    }

    fn access_list(&self, entry: &Entry<'_>) -> Result<AccessList, ConfigError> {
        let mut list = AccessList::default();
        // One element at a time so an unknown user is reported at its own element, which
        // matters for lists spread over several lines.
        for element in self.string_list(entry)? {
            let one = AccessList::parse_all(&[element.text])
                .map_err(|message| self.error(element.span, Some(&element.path), message))?;
            list.extend(one);
        }
        Ok(list)
    }

    fn config(&self) -> Result<Config, ConfigError> {
        let document = ImDocument::parse(self.text).map_err(|err| {
            // One line, always something to read: toml_edit messages can be empty or span lines.
            let message = match err.message().trim() {
                "" => "invalid TOML".to_string(),
                text => text.lines().map(str::trim).collect::<Vec<_>>().join("; "),
            };
            self.error(err.span(), None, message)
        })?;
        let root = document.as_table();

        // A file for another version may use keys this broker does not know; say so first.
        if let Some((key, item)) = root.get_key_value("version") {
            if item.as_integer() != Some(CONFIG_VERSION) {
                let entry = Entry {
                    key: "version",
                    path: "version".into(),
                    key_span: key.span(),
                    item,
                };
                let found = match item.as_integer() {
                    Some(version) => version.to_string(),
                    None => return Err(self.wrong_type(&entry, "an integer (1)")),
                };
                return Err(self.bad(
                    &entry,
                    format!(
                        "unsupported config version {found}, this broker reads version {CONFIG_VERSION}"
                    ),
                ));
            }
        }

        let mut top = TopLevel::default();
        for entry in self.entries(root, "", TOP_KEYS)? {
            let slot = match entry.key {
                "version" => &mut top.version,
                "socket" => &mut top.socket,
                "socket_mode" => &mut top.socket_mode,
                "default_capacity" => &mut top.default_capacity,
                "max_capacity" => &mut top.max_capacity,
                "max_channels" => &mut top.max_channels,
                "max_clients" => &mut top.max_clients,
                "admin_groups" => &mut top.admin_groups,
                "max_ring_bytes" => &mut top.max_ring_bytes,
                "request_timeout" => &mut top.request_timeout,
                "per_uid" => &mut top.per_uid,
                "logging" => &mut top.logging,
                // `entries` let only TOP_KEYS through.
                _ => &mut top.channel,
            };
            *slot = Some(entry);
        }
        if top.version.is_none() {
            return Err(self.error(
                Some(0..0),
                Some("version"),
                format!("missing: every config file needs `version = {CONFIG_VERSION}` (put it at the top)"),
            ));
        }

        let mut config = Config {
            source: Some(self.file.to_path_buf()),
            ..Config::default()
        };

        if let Some(entry) = &top.socket {
            config.socket = Some(self.socket_path(entry)?);
        }
        if let Some(entry) = &top.socket_mode {
            config.socket_mode = self.socket_mode(entry)?;
        }
        if let Some(entry) = &top.max_capacity {
            let bytes = self.size(entry)?;
            if bytes > RING_MAX_CAPACITY {
                return Err(self.bad(
                    entry,
                    format!(
                        "max_capacity {} is above the largest ring this broker can make ({})",
                        format_size(bytes),
                        format_size(RING_MAX_CAPACITY)
                    ),
                ));
            }
            if bytes < MIN_CAPACITY {
                return Err(self.bad(
                    entry,
                    format!(
                        "max_capacity {} is below the minimum channel capacity of {}",
                        format_size(bytes),
                        format_size(MIN_CAPACITY)
                    ),
                ));
            }
            config.max_capacity = bytes;
        }
        match &top.default_capacity {
            Some(entry) => config.default_capacity = self.capacity(entry, config.max_capacity)?,
            None => {
                if let Some(entry) = &top.max_capacity {
                    if config.default_capacity > config.max_capacity {
                        return Err(self.bad(
                            entry,
                            format!(
                                "max_capacity {} is below the built-in default_capacity of {}; set default_capacity too",
                                format_size(config.max_capacity),
                                format_size(config.default_capacity)
                            ),
                        ));
                    }
                }
            }
        }
        if let Some(entry) = &top.max_channels {
            config.max_channels = self.count(entry)?;
        }
        if let Some(entry) = &top.max_clients {
            config.max_clients = self.count(entry)?;
        }
        if let Some(entry) = &top.admin_groups {
            for element in self.string_list(entry)? {
                // `@wheel` is accepted too, as in access lists.
                let name = element.text.strip_prefix('@').unwrap_or(element.text);
                let gid = resolve_group(name)
                    .map_err(|message| self.error(element.span, Some(&element.path), message))?;
                config.admin_gids.push(gid);
            }
        }
        if let Some(entry) = &top.max_ring_bytes {
            config.max_ring_bytes = self.size(entry)?;
        }
        if let Some(entry) = &top.request_timeout {
            config.request_timeout = self.duration(entry)?;
        }
        if let Some(entry) = &top.per_uid {
            self.per_uid(entry, &mut config.per_uid)?;
        }
        if let Some(entry) = &top.logging {
            self.logging(entry, &mut config)?;
        }
        if let Some(entry) = &top.channel {
            self.channels(entry, &top, &mut config)?;
        }
        Ok(config)
    }

    fn socket_path(&self, entry: &Entry<'_>) -> Result<PathBuf, ConfigError> {
        let text = self.string(entry)?;
        let path = PathBuf::from(text);
        if !path.is_absolute() {
            return Err(self.bad(
                entry,
                format!("socket path {text:?} must be absolute (start with /)"),
            ));
        }
        if text.len() > MAX_SOCKET_PATH {
            return Err(self.bad(
                entry,
                format!(
                    "socket path is {} bytes long; a Unix socket address holds at most {MAX_SOCKET_PATH}",
                    text.len()
                ),
            ));
        }
        Ok(path)
    }

    fn socket_mode(&self, entry: &Entry<'_>) -> Result<u32, ConfigError> {
        let text = match entry.item {
            Item::Value(Value::Integer(_)) => {
                return Err(self.bad(
                    entry,
                    "write the mode as a quoted octal string, like socket_mode = \"0660\"",
                ))
            }
            _ => self.string(entry)?,
        };
        let digits = text.trim();
        if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return Err(self.bad(
                entry,
                format!("invalid mode {text:?}: expected octal digits, like \"0660\""),
            ));
        }
        match u32::from_str_radix(digits, 8) {
            Ok(mode) if mode <= 0o777 => Ok(mode),
            _ => Err(self.bad(
                entry,
                format!(
                    "invalid mode {text:?}: only permission bits (at most 0777) apply to a socket"
                ),
            )),
        }
    }

    fn per_uid(&self, entry: &Entry<'_>, quotas: &mut PerUidQuotas) -> Result<(), ConfigError> {
        let table = entry
            .item
            .as_table_like()
            .ok_or_else(|| self.wrong_type(entry, "a table ([per_uid])"))?;
        for entry in self.entries(table, &entry.path, PER_UID_KEYS)? {
            match entry.key {
                "max_clients" => quotas.max_clients = self.count(&entry)?,
                "max_channels" => quotas.max_channels = self.count(&entry)?,
                "max_ring_bytes" => quotas.max_ring_bytes = self.size(&entry)?,
                "max_attaches_per_sec" => quotas.max_attaches_per_sec = self.count(&entry)?,
                _ => quotas.max_durable_consumers = self.count(&entry)?,
            }
        }
        Ok(())
    }

    /// A duration: `"10s"`, `"500ms"`, `"2m"`, or an integer number of seconds; never 0.
    fn duration(&self, entry: &Entry<'_>) -> Result<Duration, ConfigError> {
        let duration = match entry.item {
            Item::Value(Value::Integer(_)) => {
                let seconds = self.count(entry)?;
                Duration::from_secs(seconds as u64)
            }
            Item::Value(Value::String(text)) => {
                parse_duration(text.value()).map_err(|message| self.bad(entry, message))?
            }
            _ => return Err(self.wrong_type(entry, "a duration like \"10s\" or \"500ms\"")),
        };
        if duration.is_zero() {
            return Err(self.bad(entry, "must be longer than 0"));
        }
        Ok(duration)
    }

    fn logging(&self, entry: &Entry<'_>, config: &mut Config) -> Result<(), ConfigError> {
        let table = entry
            .item
            .as_table_like()
            .ok_or_else(|| self.wrong_type(entry, "a table ([logging])"))?;
        for entry in self.entries(table, &entry.path, LOGGING_KEYS)? {
            let text = self.string(&entry)?;
            if entry.key == "level" {
                config.log_level = Some(parse_level(text).map_err(|m| self.bad(&entry, m))?);
            } else {
                config.log_format = Some(text.parse().map_err(|m| self.bad(&entry, m))?);
            }
        }
        Ok(())
    }

    fn channels(
        &self,
        entry: &Entry<'_>,
        top: &TopLevel<'_>,
        config: &mut Config,
    ) -> Result<(), ConfigError> {
        // `[[channel]]` sections, or `channel = [{ ... }, ...]` written inline.
        let tables: Vec<(&dyn TableLike, Option<Range<usize>>)> = match entry.item {
            Item::ArrayOfTables(array) => array
                .iter()
                .map(|table| (table as &dyn TableLike, table.span()))
                .collect(),
            Item::Value(Value::Array(array)) => {
                let mut tables = Vec::new();
                for (index, value) in array.iter().enumerate() {
                    match value.as_inline_table() {
                        Some(table) => tables.push((table as &dyn TableLike, value.span())),
                        None => {
                            return Err(self.error(
                                value.span(),
                                Some(&format!("channel[{index}]")),
                                format!("expected a table, found {}", value.type_name()),
                            ))
                        }
                    }
                }
                tables
            }
            Item::Table(_) | Item::Value(Value::InlineTable(_)) => {
                return Err(self.bad(
                    entry,
                    "channels are an array of tables: write each one as a [[channel]] section (double brackets)",
                ))
            }
            _ => return Err(self.wrong_type(entry, "[[channel]] tables")),
        };

        if tables.len() > config.max_channels {
            return Err(match &top.max_channels {
                Some(limit) => self.bad(
                    limit,
                    format!(
                        "max_channels is {} but the file defines {} channels",
                        config.max_channels,
                        tables.len()
                    ),
                ),
                None => self.error(
                    tables[config.max_channels].1.clone(),
                    Some(&format!("channel[{}]", config.max_channels)),
                    format!(
                        "more channels than max_channels ({}); raise max_channels",
                        config.max_channels
                    ),
                ),
            });
        }

        // Name and the line it was first defined on, to report duplicates.
        let mut seen: Vec<(String, usize)> = Vec::new();
        for (index, (table, span)) in tables.into_iter().enumerate() {
            let prefix = format!("channel[{index}]");
            let mut name = None;
            let mut capacity = None;
            let mut producers = AccessList::anyone();
            let mut consumers = AccessList::anyone();
            let mut max_producers = 1;
            let mut max_consumers = 1;
            let mut slow_consumer = SlowConsumer::default();
            for entry in self.entries(table, &prefix, CHANNEL_KEYS)? {
                match entry.key {
                    "name" => {
                        let text = self.string(&entry)?;
                        validate_channel_name(text).map_err(|m| self.bad(&entry, m))?;
                        let line = entry
                            .span()
                            .map_or(0, |s| line_column(self.text, s.start).0);
                        if let Some((_, first)) = seen.iter().find(|(seen, _)| seen == text) {
                            return Err(self.bad(
                                &entry,
                                format!("duplicate channel name {text:?} (first defined on line {first})"),
                            ));
                        }
                        seen.push((text.to_string(), line));
                        name = Some(text.to_string());
                    }
                    "capacity" => capacity = Some(self.capacity(&entry, config.max_capacity)?),
                    "producers" => producers = self.access_list(&entry)?,
                    "consumers" => consumers = self.access_list(&entry)?,
                    "max_producers" => max_producers = self.endpoints(&entry)?,
                    "max_consumers" => max_consumers = self.endpoints(&entry)?,
                    _ => {
                        slow_consumer = self
                            .string(&entry)?
                            .parse()
                            .map_err(|m| self.bad(&entry, m))?
                    }
                }
            }
            let name = name.ok_or_else(|| {
                self.error(
                    span,
                    Some(&format!("{prefix}.name")),
                    "missing: every [[channel]] needs a name",
                )
            })?;
            config.channels.push(ChannelConfig {
                name,
                capacity: capacity.unwrap_or(config.default_capacity),
                producers,
                consumers,
                max_producers,
                max_consumers,
                slow_consumer,
            });
        }
        Ok(())
    }

    /// `max_producers` / `max_consumers`: 1 to [`MAX_ENDPOINTS`].
    fn endpoints(&self, entry: &Entry<'_>) -> Result<u32, ConfigError> {
        let count = self.count(entry)?;
        match u32::try_from(count) {
            Ok(n) if n <= MAX_ENDPOINTS => Ok(n),
            _ => Err(self.bad(
                entry,
                format!("{count} is above the limit of {MAX_ENDPOINTS} per channel"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {

    /// Cases found by the `config_parser` fuzz target (fuzz/corpus/config_parser/seed-*).
    #[test]
    fn fuzz_findings_stay_fixed() {
        let err = Config::parse("\r", Path::new("fuzz.toml")).unwrap_err();
        assert!(!err.message.is_empty(), "{err}");
        let err = Config::parse("\"\" = 1", Path::new("fuzz.toml")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("fuzz.toml:1:1: \"\": unknown key"),
            "{err}"
        );
        let text = "version = 1\nmax_capacity = \"2TiB\"\n";
        let err = Config::parse(text, Path::new("fuzz.toml")).unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(2), Some("max_capacity"))
        );
    }

    #[test]
    fn quotas_and_timeouts_are_read() {
        let text = "version = 1\nmax_ring_bytes = \"2GiB\"\nrequest_timeout = \"1500ms\"\n[per_uid]\nmax_clients = 7\nmax_attaches_per_sec = 9\n";
        let config = Config::parse(text, Path::new("q.toml")).expect("valid");
        assert_eq!(config.max_ring_bytes, 2 << 30);
        assert_eq!(config.request_timeout, Duration::from_millis(1500));
        assert_eq!(config.per_uid.max_clients, 7);
        assert_eq!(config.per_uid.max_attaches_per_sec, 9);
        assert_eq!(
            config.per_uid.max_channels,
            PerUidQuotas::default().max_channels
        );
        let err = Config::parse(
            "version = 1\n[per_uid]\nmax_client = 3\n",
            Path::new("q.toml"),
        )
        .unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(3), Some("per_uid.max_client"))
        );
        let err = Config::parse(
            "version = 1\nrequest_timeout = \"10 fortnights\"\n",
            Path::new("q.toml"),
        )
        .unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(2), Some("request_timeout"))
        );
        assert!(err.message.contains("unknown unit"), "{}", err.message);
    }

    use super::*;
    use crate::access::Principal;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/shmem-broker.toml"))
    }

    /// The error for `text`, as (line, column, key, message).
    fn error(text: &str) -> (usize, usize, String, String) {
        let err = parse(text).expect_err("config should be refused");
        (
            err.line.expect("error has a line"),
            err.column.expect("error has a column"),
            err.key.clone().unwrap_or_default(),
            err.message,
        )
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../config/shmem-broker.toml");
        let config = parse(text).unwrap();
        assert_eq!(config.socket_mode, 0o666);
        assert_eq!(config.default_capacity, 1 << 20);
        assert_eq!(config.max_capacity, 1 << 30);
        assert_eq!(config.admin_gids, vec![0]);
        assert_eq!(config.log_level, Some(slog::Level::Info));
        assert_eq!(config.log_format, Some(LogFormat::Term));
        assert_eq!(config.channels.len(), 4);
        assert_eq!(config.channels[0].name, "scratch");
        assert_eq!(
            (
                config.channels[0].max_producers,
                config.channels[0].max_consumers
            ),
            (1, 1)
        );
        let preview = &config.channels[2];
        assert_eq!(
            (preview.max_consumers, preview.slow_consumer),
            (3, SlowConsumer::Drop)
        );
        assert_eq!(config.channels[3].max_producers, 4);
        assert_eq!(config.channels[0].capacity, 64 << 10);
        assert_eq!(config.channels[0].producers, AccessList::anyone());
        assert_eq!(config.channels[0].consumers, AccessList::anyone());
        assert_eq!(
            config.channels[1].producers,
            AccessList::new(vec![Principal::Uid(0), Principal::Uid(1000)])
        );
        assert_eq!(
            config.channels[1].consumers,
            AccessList::new(vec![Principal::Gid(0), Principal::Gid(44)])
        );
    }

    #[test]
    fn minimal_file_gives_defaults() {
        let config = parse("version = 1\n").unwrap();
        assert_eq!(
            config,
            Config {
                source: Some(PathBuf::from("/etc/shmem-broker.toml")),
                ..Config::default()
            }
        );
        let defaults = Config::default();
        assert_eq!(defaults.source, None);
        assert_eq!(defaults.socket_mode, 0o666);
        assert_eq!(defaults.default_capacity, 1 << 20);
        assert_eq!(defaults.max_capacity, 1 << 30);
        assert_eq!((defaults.max_channels, defaults.max_clients), (1024, 4096));
        assert!(defaults.channels.is_empty() && defaults.admin_gids.is_empty());
    }

    #[test]
    fn every_setting_is_read() {
        let config = parse(
            r#"
version = 1
socket = "/run/shmem/broker.sock"
socket_mode = "0660"
default_capacity = 65536
max_capacity = "16MiB"
max_channels = 8
max_clients = 32
admin_groups = ["root", "0", "@root"]
logging = { level = "DEBUG", format = "Json" }

[[channel]]
name = "a"
capacity = "5000"      # rounded up to two pages
producers = "root"
consumers = []

[[channel]]
name = "b"
"#,
        )
        .unwrap();
        assert_eq!(config.socket, Some(PathBuf::from("/run/shmem/broker.sock")));
        assert_eq!(config.socket_mode, 0o660);
        assert_eq!(config.default_capacity, 65536);
        assert_eq!(config.max_capacity, 16 << 20);
        assert_eq!((config.max_channels, config.max_clients), (8, 32));
        assert_eq!(config.admin_gids, vec![0, 0, 0]);
        assert_eq!(config.log_level, Some(slog::Level::Debug));
        assert_eq!(config.log_format, Some(LogFormat::Json));
        assert_eq!(config.channels[0].capacity, 8192);
        assert_eq!(
            config.channels[0].producers,
            AccessList::new(vec![Principal::Uid(0)])
        );
        assert_eq!(config.channels[0].consumers, AccessList::new(vec![]));
        assert_eq!(
            config.channels[1].capacity, 65536,
            "defaults to default_capacity"
        );
    }

    #[test]
    fn dotted_keys_and_inline_channels_work() {
        let config = parse(
            "version = 1\nlogging.level = \"warn\"\nchannel = [{ name = \"x\" }, { name = \"y\", capacity = \"8KiB\" }]\n",
        )
        .unwrap();
        assert_eq!(config.log_level, Some(slog::Level::Warning));
        assert_eq!(config.channels.len(), 2);
        assert_eq!(config.channels[1].capacity, 8192);
        // A dotted key's table has no span of its own; errors fall back to the key.
        assert_eq!(
            error("version = 1\n\nlogging.level = \"loud\"\n"),
            (
                3,
                17,
                "logging.level".into(),
                "unknown log level \"loud\" (expected trace, debug, info, warn or error)".into()
            )
        );
        assert_eq!(error("version = 1\nlogging.level.x = 1\n").0, 2);
    }

    #[test]
    fn missing_version_is_reported_at_line_1() {
        let err = parse("# comment\nmax_clients = 5\n").unwrap_err();
        assert_eq!((err.line, err.column), (Some(1), Some(1)));
        assert_eq!(err.key.as_deref(), Some("version"));
        assert_eq!(error("").0, 1);
    }

    #[test]
    fn other_versions_are_refused() {
        assert_eq!(
            error("# v2\nversion = 2\nnew_thing = true\n"),
            (
                2,
                11,
                "version".into(),
                "unsupported config version 2, this broker reads version 1".into()
            )
        );
        let (line, _, key, message) = error("version = \"1\"\n");
        assert_eq!((line, key.as_str()), (1, "version"));
        assert!(message.contains("expected an integer"), "{message}");
    }

    #[test]
    fn unknown_top_level_key() {
        let (line, column, key, message) =
            error("version = 1\nmax_channels = 4\n  max_chanels = 5\n");
        assert_eq!((line, column, key.as_str()), (3, 3, "max_chanels"));
        assert_eq!(message, "unknown key (did you mean `max_channels`?)");
        // A typo of `version` is reported as the typo, not as a missing version.
        let (line, _, key, message) = error("verison = 1\n");
        assert_eq!((line, key.as_str()), (1, "verison"));
        assert!(message.contains("did you mean `version`"), "{message}");
        let (_, _, _, message) = error("version = 1\nfrobnicate = 1\n");
        assert!(
            message.contains("expected one of: version, socket"),
            "{message}"
        );
    }

    #[test]
    fn unknown_key_in_second_channel() {
        let text = "version = 1\n\n[[channel]]\nname = \"a\"\n\n[[channel]]\nname = \"b\"\ncapcity = \"1MiB\"\n";
        let err = parse(text).unwrap_err();
        assert_eq!((err.line, err.column), (Some(8), Some(1)));
        assert_eq!(err.key.as_deref(), Some("channel[1].capcity"));
        assert_eq!(
            err.to_string(),
            "/etc/shmem-broker.toml:8:1: channel[1].capcity: unknown key (did you mean `capacity`?)"
        );
    }

    #[test]
    fn misplaced_keys_get_a_hint() {
        // Top-level settings written after a [section] header land in that section.
        let (line, _, key, message) =
            error("version = 1\n[logging]\nlevel = \"info\"\nmax_clients = 3\n");
        assert_eq!((line, key.as_str()), (4, "logging.max_clients"));
        assert!(message.contains("top-level setting"), "{message}");
        let (line, _, key, message) = error("version = 1\ncapacity = \"1MiB\"\n");
        assert_eq!((line, key.as_str()), (2, "capacity"));
        assert!(message.contains("[[channel]]"), "{message}");
        let (line, _, key, message) = error("version = 1\n\n[channel]\nname = \"a\"\n");
        assert_eq!((line, key.as_str()), (3, "channel"));
        assert!(message.contains("double brackets"), "{message}");
    }

    #[test]
    fn bad_capacity_string() {
        let text = "version = 1\n[[channel]]\nname = \"a\"\ncapacity = \"12 parsecs\"\n";
        let (line, column, key, message) = error(text);
        assert_eq!((line, column, key.as_str()), (4, 12, "channel[0].capacity"));
        assert!(message.contains("unknown unit"), "{message}");
    }

    #[test]
    fn capacity_limits() {
        let channel = |capacity: &str| {
            format!("version = 1\n[[channel]]\nname = \"a\"\ncapacity = {capacity}\n")
        };
        let (line, _, key, message) = error(&channel("0"));
        assert_eq!((line, key.as_str()), (4, "channel[0].capacity"));
        assert!(message.contains("greater than zero"), "{message}");
        assert!(error(&channel("\"100\""))
            .3
            .contains("below the minimum of 4KiB"));
        assert!(error(&channel("-1")).3.contains("negative"));
        assert!(error(&channel("\"2GiB\""))
            .3
            .contains("above max_capacity (1GiB)"));
        assert!(error(&channel("1.5")).3.contains("expected a size"));
        // Rounding happens before the max_capacity check.
        let (line, _, key, message) = error(
            "version = 1\nmax_capacity = 10000\ndefault_capacity = 8192\n[[channel]]\nname = \"a\"\ncapacity = 9000\n",
        );
        assert_eq!((line, key.as_str()), (6, "channel[0].capacity"));
        assert!(message.contains("12KiB is above"), "{message}");
        // max_capacity below the built-in default_capacity needs default_capacity too.
        let (line, _, key, _) = error("version = 1\nmax_capacity = \"64KiB\"\n");
        assert_eq!((line, key.as_str()), (2, "max_capacity"));
        assert_eq!(
            parse("version = 1\nmax_capacity = \"64KiB\"\ndefault_capacity = \"4KiB\"\n")
                .unwrap()
                .default_capacity,
            4096
        );
        assert_eq!(error("version = 1\nmax_capacity = 100\n").2, "max_capacity");
        assert_eq!(
            error("version = 1\ndefault_capacity = \"2GiB\"\n").2,
            "default_capacity"
        );
    }

    #[test]
    fn bad_channel_name() {
        let text = "version = 1\n[[channel]]\nname = \"a b\"\n";
        let (line, column, key, message) = error(text);
        assert_eq!((line, column, key.as_str()), (3, 8, "channel[0].name"));
        assert!(message.contains("invalid channel name"), "{message}");
        let (line, _, key, message) = error("version = 1\n[[channel]]\ncapacity = 4096\n");
        assert_eq!((line, key.as_str()), (2, "channel[0].name"));
        assert!(message.starts_with("missing"), "{message}");
    }

    #[test]
    fn duplicate_channel_name() {
        let text = "version = 1\n[[channel]]\nname = \"cam\"\n\n[[channel]]\nname = \"other\"\n\n[[channel]]\nname = \"cam\"\n";
        let (line, column, key, message) = error(text);
        assert_eq!((line, column, key.as_str()), (9, 8, "channel[2].name"));
        assert_eq!(
            message,
            "duplicate channel name \"cam\" (first defined on line 3)"
        );
    }

    #[test]
    fn wrong_types() {
        let (line, column, key, message) = error("version = 1\nmax_channels = \"10\"\n");
        assert_eq!((line, column, key.as_str()), (2, 16, "max_channels"));
        assert_eq!(message, "expected an integer, found a string");
        assert_eq!(
            error("version = 1\nmax_clients = 0\n").3,
            "must be at least 1, not 0"
        );
        assert_eq!(error("version = 1\nsocket = 5\n").2, "socket");
        assert_eq!(error("version = 1\nlogging = \"info\"\n").2, "logging");
        assert_eq!(error("version = 1\nchannel = 3\n").2, "channel");
        assert_eq!(error("version = 1\nchannel = [3]\n").2, "channel[0]");
        assert_eq!(
            error("version = 1\n[logging]\nformat = 1\n").2,
            "logging.format"
        );
        assert_eq!(
            error("version = 1\nwhen = 1979-05-27\n").3,
            "unknown key (expected one of: version, socket, socket_mode, default_capacity, \
             max_capacity, max_channels, max_clients, admin_groups, max_ring_bytes, \
             request_timeout, per_uid, logging, channel)"
        );
        let (line, _, key, message) = error("version = 1\n[[channel]]\nname = 1979-05-27\n");
        assert_eq!((line, key.as_str()), (3, "channel[0].name"));
        assert_eq!(message, "expected a string, found a date/time");
    }

    #[test]
    fn toml_syntax_error() {
        let err = parse("version = 1\n\n[[channel]]\nname = \"unterminated\n").unwrap_err();
        assert_eq!(err.line, Some(4));
        assert_eq!(err.key, None);
        assert!(
            err.to_string().starts_with("/etc/shmem-broker.toml:4:"),
            "{err}"
        );
        let err = parse("version = 1\nversion = 1\n").unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(err.message.contains("duplicate key"), "{}", err.message);
    }

    #[test]
    fn socket_settings() {
        let (line, _, key, message) = error("version = 1\nsocket = \"run/broker.sock\"\n");
        assert_eq!((line, key.as_str()), (2, "socket"));
        assert!(message.contains("absolute"), "{message}");
        let long = format!("version = 1\nsocket = \"/{}\"\n", "x".repeat(107));
        assert!(error(&long).3.contains("at most 107"));
        assert!(parse(&format!("version = 1\nsocket = \"/{}\"\n", "x".repeat(106))).is_ok());
        for (mode, expected) in [("\"0\"", 0), ("\"777\"", 0o777), ("\"0600\"", 0o600)] {
            let config = parse(&format!("version = 1\nsocket_mode = {mode}\n")).unwrap();
            assert_eq!(config.socket_mode, expected, "{mode}");
        }
        for mode in [
            "\"01777\"",
            "\"0689\"",
            "\"\"",
            "\"rw\"",
            "438",
            "\"77777777777777\"",
        ] {
            let (line, _, key, _) = error(&format!("version = 1\nsocket_mode = {mode}\n"));
            assert_eq!((line, key.as_str()), (2, "socket_mode"), "{mode}");
        }
        assert!(error("version = 1\nsocket_mode = 0o660\n")
            .3
            .contains("quoted octal string"));
    }

    #[test]
    fn unknown_principals_point_at_the_element() {
        let text = "version = 1\n[[channel]]\nname = \"a\"\nproducers = [\n  \"root\",\n  \"no-such-user-xyz\",\n]\n";
        let (line, column, key, message) = error(text);
        assert_eq!(
            (line, column, key.as_str()),
            (6, 3, "channel[0].producers[1]")
        );
        assert_eq!(message, "unknown user \"no-such-user-xyz\"");
        let (line, _, key, message) =
            error("version = 1\n[[channel]]\nname = \"a\"\nconsumers = [\"@no-such-group-xyz\"]\n");
        assert_eq!((line, key.as_str()), (4, "channel[0].consumers[0]"));
        assert!(message.contains("unknown group"), "{message}");
        let (line, _, key, message) =
            error("version = 1\nadmin_groups = [\"root\", \"no-such-group-xyz\"]\n");
        assert_eq!((line, key.as_str()), (2, "admin_groups[1]"));
        assert!(message.contains("unknown group"), "{message}");
        assert_eq!(
            error("version = 1\nadmin_groups = [0]\n").2,
            "admin_groups[0]"
        );
    }

    #[test]
    fn max_channels_below_channel_count() {
        let text =
            "version = 1\nmax_channels = 1\n[[channel]]\nname = \"a\"\n[[channel]]\nname = \"b\"\n";
        let (line, _, key, message) = error(text);
        assert_eq!((line, key.as_str()), (2, "max_channels"));
        assert_eq!(message, "max_channels is 1 but the file defines 2 channels");
    }

    #[test]
    fn error_display_omits_missing_parts() {
        let mut err = ConfigError {
            file: PathBuf::from("/x.toml"),
            line: Some(3),
            column: Some(7),
            key: Some("socket".into()),
            message: "bad".into(),
        };
        assert_eq!(err.to_string(), "/x.toml:3:7: socket: bad");
        err.column = None;
        assert_eq!(err.to_string(), "/x.toml:3: socket: bad");
        err.line = None;
        err.key = None;
        assert_eq!(err.to_string(), "/x.toml: bad");
    }

    #[test]
    fn load_reports_unreadable_files() {
        let err = Config::load(Path::new("/nonexistent/shmem-broker.toml")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/nonexistent/shmem-broker.toml: cannot read: No such file or directory"
        );
        let dir = std::env::temp_dir().join(format!("shmem-broker-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.toml");
        std::fs::write(&file, b"version = 1\n# caf\xe9\n").unwrap();
        let err = Config::load(&file).unwrap_err();
        assert_eq!((err.line, err.column), (Some(2), Some(6)));
        assert_eq!(err.message, "not valid UTF-8");
        std::fs::write(&file, "version = 1\n[[channel]]\nname = \"from-file\"\n").unwrap();
        let config = Config::load(&file).unwrap();
        assert_eq!(config.source.as_deref(), Some(file.as_path()));
        assert_eq!(config.channels[0].name, "from-file");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn log_format_text() {
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert_eq!(" TERM ".parse(), Ok(LogFormat::Term));
        assert!("xml".parse::<LogFormat>().is_err());
        assert_eq!(LogFormat::Json.to_string(), "json");
        assert_eq!(LogFormat::Term.to_string(), "term");
    }

    #[test]
    fn suggestions() {
        assert_eq!(closest("capcity", CHANNEL_KEYS), Some("capacity"));
        assert_eq!(closest("Max-Clients", TOP_KEYS), Some("max_clients"));
        assert_eq!(closest("producer", CHANNEL_KEYS), Some("producers"));
        assert_eq!(closest("colour", CHANNEL_KEYS), None);
        assert_eq!(line_column("ab\ncdé\nf", 7), (2, 4));
        assert_eq!(
            line_column("ab\ncdé\nf", 6),
            (2, 3),
            "inside é: start of the character"
        );
        assert_eq!(line_column("ab\ncdé\nf", 8), (3, 1));
        assert_eq!(line_column("x", 99), (1, 2));
    }
}
