//! What each value may be: its type, its range, and what it means (sizes, durations, modes,
//! log levels, access lists), each error pointing at the value itself.
//!
//! Sizes use the client library's `parse_size`/`format_size` so that the config, `shmemctl`
//! and the client accept the same spellings ("64KiB", "1MiB", plain bytes); a crate such as
//! `bytesize` or `parse-size` would accept different ones ("1MB" as 10^6 or 2^20) in the config
//! than in the rest of the tools. Durations use `humantime`.

use super::error::{describe, Source};
use super::parse::{Leaf, StringList};
use super::ConfigError;
use crate::access::{resolve_group, AccessList};
use shmem_broker_proto::size::{format_size, parse_size};
use shmem_broker_proto::wire::MAX_ENDPOINTS;
use std::ops::Range;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;
use toml::{Spanned, Value};

/// Channel data areas are mapped in whole pages; capacities are rounded up to this.
pub(super) const PAGE_SIZE: u64 = 4096;

/// Largest ring the client library maps.
pub(super) const RING_MAX_CAPACITY: u64 = shmem_broker_proto::ring::MAX_CAPACITY;

/// Smallest capacity a channel may have (one page).
pub(super) const MIN_CAPACITY: u64 = PAGE_SIZE;

/// `sizeof(sockaddr_un.sun_path)` on Linux, less the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// The log levels `[logging] level` and `--log-level` accept. `critical` is taken too (the
/// config always took it), though only the broker's fatal errors are logged at it.
pub fn parse_level(text: &str) -> Result<slog::Level, String> {
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

/// Parses `"10s"`, `"500ms"`, `"2m"`, `"1h"` (anything `humantime` reads), or bare digits as
/// seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return trimmed
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| format!("invalid duration {text:?}: the number is too large"));
    }
    humantime::parse_duration(trimmed).map_err(|err| match err {
        humantime::DurationError::UnknownUnit { unit, .. } => {
            format!("invalid duration {text:?}: unknown unit {unit:?} (use ms, s, m, h)")
        }
        humantime::DurationError::Empty
        | humantime::DurationError::NumberExpected(_)
        | humantime::DurationError::InvalidCharacter(_) => format!(
            "invalid duration {text:?}: expected a number and a unit, like \"10s\" or \"500ms\""
        ),
        other => format!("invalid duration {text:?}: {other}"),
    })
}

/// Rounds a capacity up to whole pages; `None` on overflow.
fn round_to_pages(bytes: u64) -> Option<u64> {
    bytes
        .checked_add(PAGE_SIZE - 1)
        .map(|b| b / PAGE_SIZE * PAGE_SIZE)
}

/// One value of the file and the dotted path it is reported under (`channel[1].capacity`).
pub(super) struct Field<'a> {
    pub source: Source<'a>,
    pub path: String,
    pub value: &'a Leaf,
}

impl<'a> Field<'a> {
    pub fn new(source: Source<'a>, path: impl Into<String>, value: &'a Leaf) -> Self {
        Field {
            source,
            path: path.into(),
            value,
        }
    }

    /// An error about this value, pointing at it.
    pub fn bad(&self, message: impl Into<String>) -> ConfigError {
        self.source
            .error(Some(self.value.span()), Some(&self.path), message)
    }

    fn wrong_type(&self, expected: &str) -> ConfigError {
        self.bad(format!(
            "expected {expected}, found {}",
            describe(self.value.get_ref().type_str())
        ))
    }

    pub fn string(&self) -> Result<&'a str, ConfigError> {
        self.value
            .get_ref()
            .as_str()
            .ok_or_else(|| self.wrong_type("a string"))
    }

    /// A string parsed with `FromStr` (log format, slow-consumer policy).
    pub fn parsed<T: FromStr<Err = String>>(&self) -> Result<T, ConfigError> {
        self.string()?.parse().map_err(|m| self.bad(m))
    }

    pub fn level(&self) -> Result<slog::Level, ConfigError> {
        parse_level(self.string()?).map_err(|m| self.bad(m))
    }

    fn integer(&self) -> Result<i64, ConfigError> {
        self.value
            .get_ref()
            .as_integer()
            .ok_or_else(|| self.wrong_type("an integer"))
    }

    /// A count that must be at least 1.
    pub fn count(&self) -> Result<usize, ConfigError> {
        let value = self.integer()?;
        if value < 1 {
            return Err(self.bad(format!("must be at least 1, not {value}")));
        }
        usize::try_from(value).map_err(|_| self.bad(format!("{value} is too large")))
    }

    /// `max_producers` / `max_consumers`: 1 to [`MAX_ENDPOINTS`].
    pub fn endpoints(&self) -> Result<u32, ConfigError> {
        let count = self.count()?;
        match u32::try_from(count) {
            Ok(n) if n <= MAX_ENDPOINTS => Ok(n),
            _ => Err(self.bad(format!(
                "{count} is above the limit of {MAX_ENDPOINTS} per channel"
            ))),
        }
    }

    /// A size: a string with an optional unit (`"64KiB"`) or an integer number of bytes; never 0.
    pub fn size(&self) -> Result<u64, ConfigError> {
        let bytes = match self.value.get_ref() {
            Value::String(text) => parse_size(text).map_err(|message| self.bad(message))?,
            Value::Integer(number) => u64::try_from(*number)
                .map_err(|_| self.bad(format!("size cannot be negative ({number})")))?,
            _ => {
                return Err(self
                    .wrong_type("a size (a string like \"64KiB\" or an integer number of bytes)"))
            }
        };
        if bytes == 0 {
            return Err(self.bad("size must be greater than zero"));
        }
        Ok(bytes)
    }

    /// A channel capacity: at least 4 KiB, rounded UP to a multiple of 4096 (the ring's data
    /// area is mapped in whole pages, so a partial page would be wasted or unusable), and no
    /// more than `max_capacity` after rounding.
    pub fn capacity(&self, max_capacity: u64) -> Result<u64, ConfigError> {
        let bytes = self.size()?;
        if bytes < MIN_CAPACITY {
            return Err(self.bad(format!(
                "capacity {} is below the minimum of {}",
                format_size(bytes),
                format_size(MIN_CAPACITY)
            )));
        }
        let rounded = round_to_pages(bytes)
            .ok_or_else(|| self.bad(format!("capacity {bytes} is too large")))?;
        if rounded > max_capacity {
            return Err(self.bad(format!(
                "capacity {} is above max_capacity ({})",
                format_size(rounded),
                format_size(max_capacity)
            )));
        }
        Ok(rounded)
    }

    /// A duration: `"10s"`, `"500ms"`, `"2m"`, or an integer number of seconds; never 0.
    pub fn duration(&self) -> Result<Duration, ConfigError> {
        let duration = match self.value.get_ref() {
            Value::Integer(_) => Duration::from_secs(self.count()? as u64),
            Value::String(text) => parse_duration(text).map_err(|message| self.bad(message))?,
            _ => return Err(self.wrong_type("a duration like \"10s\" or \"500ms\"")),
        };
        if duration.is_zero() {
            return Err(self.bad("must be longer than 0"));
        }
        Ok(duration)
    }

    pub fn socket_path(&self) -> Result<PathBuf, ConfigError> {
        let text = self.string()?;
        let path = PathBuf::from(text);
        if !path.is_absolute() {
            return Err(self.bad(format!(
                "socket path {text:?} must be absolute (start with /)"
            )));
        }
        if text.len() > MAX_SOCKET_PATH {
            return Err(self.bad(format!(
                "socket path is {} bytes long; a Unix socket address holds at most {MAX_SOCKET_PATH}",
                text.len()
            )));
        }
        Ok(path)
    }

    pub fn socket_mode(&self) -> Result<u32, ConfigError> {
        if let Value::Integer(_) = self.value.get_ref() {
            return Err(
                self.bad("write the mode as a quoted octal string, like socket_mode = \"0660\"")
            );
        }
        let text = self.string()?;
        let digits = text.trim();
        if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return Err(self.bad(format!(
                "invalid mode {text:?}: expected octal digits, like \"0660\""
            )));
        }
        match u32::from_str_radix(digits, 8) {
            Ok(mode) if mode <= 0o777 => Ok(mode),
            _ => Err(self.bad(format!(
                "invalid mode {text:?}: only permission bits (at most 0777) apply to a socket"
            ))),
        }
    }
}

/// One string of a list, with its own path (`channel[0].producers[2]`) and span.
pub(super) struct Element<'a> {
    pub text: &'a str,
    pub path: String,
    pub span: Range<usize>,
}

/// The strings of a list (a single string is a one-entry list), each with its own path and
/// span so errors point at the element.
pub(super) fn string_list<'a>(
    source: Source<'_>,
    path: &str,
    list: &'a Spanned<StringList>,
) -> Result<Vec<Element<'a>>, ConfigError> {
    match list.get_ref() {
        StringList::One(text) => Ok(vec![Element {
            text,
            path: path.to_string(),
            span: list.span(),
        }]),
        StringList::Many(elements) => elements
            .iter()
            .enumerate()
            .map(|(index, value)| {
                let path = format!("{path}[{index}]");
                match value.get_ref().as_str() {
                    Some(text) => Ok(Element {
                        text,
                        path,
                        span: value.span(),
                    }),
                    None => Err(source.error(
                        Some(value.span()),
                        Some(&path),
                        format!(
                            "expected a string, found {}",
                            describe(value.get_ref().type_str())
                        ),
                    )),
                }
            })
            .collect(),
        StringList::Other(what) => Err(source.error(
            Some(list.span()),
            Some(path),
            format!("expected an array of strings, found {what}"),
        )),
    }
}

/// `producers` / `consumers`: users and `@groups`, each resolved where it is written.
pub(super) fn access_list(
    source: Source<'_>,
    path: &str,
    list: &Spanned<StringList>,
) -> Result<AccessList, ConfigError> {
    let mut access = AccessList::default();
    // One element at a time so an unknown user is reported at its own element, which
    // matters for lists spread over several lines.
    for element in string_list(source, path, list)? {
        let one = AccessList::parse_all(&[element.text])
            .map_err(|message| source.error(Some(element.span), Some(&element.path), message))?;
        access.extend(one);
    }
    Ok(access)
}

/// `admin_groups`: group names or gids (`@wheel` too, as in access lists), resolved to gids.
pub(super) fn admin_gids(
    source: Source<'_>,
    list: &Spanned<StringList>,
) -> Result<Vec<u32>, ConfigError> {
    string_list(source, "admin_groups", list)?
        .into_iter()
        .map(|element| {
            let name = element.text.strip_prefix('@').unwrap_or(element.text);
            resolve_group(name)
                .map_err(|message| source.error(Some(element.span), Some(&element.path), message))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration(" 10s "), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("2min"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("10 fortnights")
            .unwrap_err()
            .contains("unknown unit \"fortnights\""));
        assert!(parse_duration("")
            .unwrap_err()
            .contains("expected a number"));
        assert!(parse_duration("99999999999999999999").is_err());
    }

    #[test]
    fn one_level_parser_for_config_and_flag() {
        assert_eq!(parse_level(" Warning "), Ok(slog::Level::Warning));
        assert_eq!(parse_level("critical"), Ok(slog::Level::Critical));
        assert!(parse_level("loud").is_err());
    }
}
