//! The broker's configuration file (`/etc/shmem-broker/shmem-broker.toml` and friends): where it
//! is found and read. The work is split by job:
//!
//! * `model`: the settings the daemon runs with, and their defaults;
//! * `parse`: the file's shape, read by the `toml` crate into serde-derived structs with
//!   `deny_unknown_fields` and `Spanned` values; it also works out what toml's errors do not
//!   say (the key path with `[[channel]]` index, the table an unknown key sits in): see there;
//! * `values`: each value's type, range and meaning;
//! * `settings`: from the document to the settings, with the checks across settings;
//! * `error`: `file:line:column: key: message`, and "did you mean" hints.

mod error;
mod model;
mod parse;
mod settings;
mod values;

#[cfg(test)]
mod tests;

pub use error::ConfigError;
pub use model::{ChannelConfig, Config, LogFormat, PerUidQuotas};
pub use values::parse_level;

use error::{io_error_text, line_column, Source};
use std::path::Path;

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
        let source = Source { text, file: path };
        settings::config(source, &parse::read(source)?)
    }
}
