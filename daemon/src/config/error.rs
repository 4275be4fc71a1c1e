//! How a config error is told: `file:line:column: key: message`, with the line and column
//! worked out from a byte span, and the "did you mean" hints for unknown keys.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

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

/// The text being parsed and the file it came from: turns spans into errors.
#[derive(Clone, Copy)]
pub(super) struct Source<'a> {
    pub text: &'a str,
    pub file: &'a Path,
}

impl Source<'_> {
    /// An error at `span` (a byte range of the text; `None` when there is no place to point at).
    pub fn error(
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

    /// The 1-based line a span starts on.
    pub fn line_of(&self, span: Range<usize>) -> usize {
        line_column(self.text, span.start).0
    }
}

/// An io error's text without the " (os error N)" suffix std appends.
pub(super) fn io_error_text(err: &std::io::Error) -> String {
    let text = err.to_string();
    match (text.rfind(" (os error "), text.ends_with(')')) {
        (Some(at), true) => text[..at].to_string(),
        _ => text,
    }
}

/// 1-based line and character column of a byte offset.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
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

/// The known key closest to `key`, if it is close enough to be a likely typo.
pub(super) fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let normal = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    let key = normal(key);
    known
        .iter()
        .map(|&candidate| (strsim::levenshtein(&key, &normal(candidate)), candidate))
        .filter(|&(distance, candidate)| distance <= (candidate.len() / 3).max(1))
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, candidate)| candidate)
}

/// The keys each table of the file may hold, for the hints of [`unknown_key`].
pub(super) struct KnownKeys {
    pub top: &'static [&'static str],
    pub channel: &'static [&'static str],
    pub logging: &'static [&'static str],
}

/// "unknown key" and the most useful hint: a setting written in the wrong table, a likely
/// typo, or else the keys this table takes. `in_top` says whether the key sits at the top level;
/// `known` are the keys of its own table.
pub(super) fn unknown_key(name: &str, in_top: bool, known: &[&str], keys: &KnownKeys) -> String {
    let mut message = "unknown key".to_string();
    if !in_top && keys.top.contains(&name) {
        message.push_str(&format!(
            " here (`{name}` is a top-level setting: move it above the first [section])"
        ));
    } else if in_top && keys.channel.contains(&name) {
        message.push_str(&format!(" (`{name}` belongs inside a [[channel]] table)"));
    } else if in_top && keys.logging.contains(&name) {
        message.push_str(&format!(" (`{name}` belongs inside the [logging] table)"));
    } else if let Some(suggestion) = closest(name, known) {
        message.push_str(&format!(" (did you mean `{suggestion}`?)"));
    } else {
        message.push_str(&format!(" (expected one of: {})", known.join(", ")));
    }
    message
}

/// "an integer", "a string"... for wrong-type messages, from toml's name of a value's type
/// (`toml::Value::type_str` and `DeValue::type_str` agree).
pub(super) fn describe(type_str: &str) -> &'static str {
    match type_str {
        "string" => "a string",
        "integer" => "an integer",
        "float" => "a float",
        "boolean" => "a boolean",
        "datetime" => "a date/time",
        "array" => "an array",
        "table" => "a table",
        _ => "something else",
    }
}
