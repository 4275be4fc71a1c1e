//! The bridge's config file (`--config`, e.g. `/etc/shmem-broker/bridge.toml`): many exports
//! and imports in one process. Parsed with `toml_edit` like the broker's, so every error names
//! `file:line:column: key`, e.g. `bridge.toml:7:1: export[0].chanel: unknown key (did you mean
//! `channel`?)`.
//!
//! ```toml
//! version = 1
//! socket = "/run/shmem-broker/control.sock"   # default: the client library's discovery
//! state_dir = "/var/lib/shmem-bridge"         # default: $STATE_DIRECTORY, else that
//! key_file = "/etc/shmem-broker/bridge.key"   # HMAC key shared by both sides (recommended)
//! [zenoh]
//! mode = "peer"                               # or "client"
//! connect = ["tcp/192.0.2.1:7447"]
//! listen = []
//! [logging]
//! level = "info"
//! format = "term"
//! [[export]]
//! channel = "frames"
//! key = "site/frames"
//! importers = ["hostB"]                       # waited for even while away
//! [[import]]
//! key = "site/frames"
//! channel = "frames"
//! name = "hostB"                              # default: HOSTNAME.CHANNEL
//! capacity = "16MiB"                          # create the channel if missing
//! ```

use std::ops::Range;
use std::path::{Path, PathBuf};

use shmem_broker_client::size::parse_size;
use shmem_broker_daemon::config::{ConfigError, LogFormat};
use toml_edit::{ImDocument, Item, TableLike};

use crate::export::ExportSpec;
use crate::import::ImportSpec;
use crate::wire;

const TOP: &[&str] = &[
    "version",
    "socket",
    "state_dir",
    "key_file",
    "zenoh",
    "logging",
    "export",
    "import",
];
const ZENOH: &[&str] = &["mode", "connect", "listen"];
const LOGGING: &[&str] = &["level", "format"];
const EXPORT: &[&str] = &["channel", "key", "importers"];
const IMPORT: &[&str] = &["key", "channel", "name", "capacity"];

#[derive(Debug, Default)]
pub struct Config {
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub mode: Option<String>,
    pub connect: Vec<String>,
    pub listen: Vec<String>,
    pub level: Option<slog::Level>,
    pub format: Option<LogFormat>,
    pub exports: Vec<ExportSpec>,
    pub imports: Vec<ImportSpec>,
}

/// A table entry: its name, dotted path, where it is, and its value.
type Entry<'t> = (&'t str, String, Option<Range<usize>>, &'t Item);

struct Parser<'a> {
    text: &'a str,
    file: &'a Path,
}

pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: None,
        column: None,
        key: None,
        message: format!("cannot read: {e}"),
    })?;
    parse(&text, path)
}

pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    Parser { text, file }.config()
}

impl Parser<'_> {
    fn error(
        &self,
        span: Option<Range<usize>>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = match span {
            Some(span) => {
                let before = &self.text[..span.start.min(self.text.len())];
                let start = before.rfind('\n').map_or(0, |at| at + 1);
                (
                    Some(before.matches('\n').count() + 1),
                    Some(before[start..].chars().count() + 1),
                )
            }
            None => (None, None),
        };
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            key: (!key.is_empty()).then(|| key.to_string()),
            message: message.into(),
        }
    }

    /// `(name, path, span, item)` of a table's entries, refusing unknown keys.
    fn entries<'t>(
        &self,
        table: &'t dyn TableLike,
        prefix: &str,
        known: &[&str],
    ) -> Result<Vec<Entry<'t>>, ConfigError> {
        let mut out = Vec::new();
        for (name, item) in table.iter() {
            let path = if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}.{name}")
            };
            let key_span = table.key(name).and_then(|k| k.span());
            if !known.contains(&name) {
                let hint = match known.iter().find(|k| similar(k, name)) {
                    Some(k) => format!("unknown key (did you mean `{k}`?)"),
                    None => format!("unknown key (expected one of: {})", known.join(", ")),
                };
                return Err(self.error(key_span, &path, hint));
            }
            let span = item.span().or(key_span);
            out.push((name, path, span, item));
        }
        Ok(out)
    }

    fn string(
        &self,
        path: &str,
        span: &Option<Range<usize>>,
        item: &Item,
    ) -> Result<String, ConfigError> {
        item.as_str()
            .map(str::to_string)
            .ok_or_else(|| self.error(span.clone(), path, "expected a string"))
    }

    fn strings(
        &self,
        path: &str,
        span: &Option<Range<usize>>,
        item: &Item,
    ) -> Result<Vec<String>, ConfigError> {
        let array = item
            .as_array()
            .ok_or_else(|| self.error(span.clone(), path, "expected an array of strings"))?;
        array
            .iter()
            .enumerate()
            .map(|(i, value)| {
                value.as_str().map(str::to_string).ok_or_else(|| {
                    self.error(
                        value.span().or(span.clone()),
                        &format!("{path}[{i}]"),
                        "expected a string",
                    )
                })
            })
            .collect()
    }

    fn tables<'t>(
        &self,
        path: &str,
        span: &Option<Range<usize>>,
        item: &'t Item,
    ) -> Result<Vec<&'t dyn TableLike>, ConfigError> {
        match item {
            Item::ArrayOfTables(array) => Ok(array.iter().map(|t| t as &dyn TableLike).collect()),
            _ => Err(self.error(span.clone(), path, format!("expected [[{path}]] tables"))),
        }
    }

    fn config(&self) -> Result<Config, ConfigError> {
        let document = ImDocument::parse(self.text).map_err(|e| {
            let message = e
                .message()
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("; ");
            self.error(
                e.span(),
                "",
                if message.is_empty() {
                    "invalid TOML".into()
                } else {
                    message
                },
            )
        })?;
        let mut config = Config::default();
        let mut version = false;
        for (name, path, span, item) in self.entries(document.as_table(), "", TOP)? {
            match name {
                "version" => {
                    if item.as_integer() != Some(1) {
                        return Err(self.error(
                            span,
                            &path,
                            "unsupported config version (this bridge reads version 1)",
                        ));
                    }
                    version = true;
                }
                "socket" => config.socket = Some(self.string(&path, &span, item)?.into()),
                "state_dir" => config.state_dir = Some(self.string(&path, &span, item)?.into()),
                "key_file" => config.key_file = Some(self.string(&path, &span, item)?.into()),
                "zenoh" => {
                    let table = item
                        .as_table_like()
                        .ok_or_else(|| self.error(span.clone(), &path, "expected a table"))?;
                    for (name, path, span, item) in self.entries(table, "zenoh", ZENOH)? {
                        match name {
                            "mode" => {
                                let mode = self.string(&path, &span, item)?;
                                if mode != "peer" && mode != "client" {
                                    return Err(self.error(span, &path, format!("unknown mode {mode:?} (expected \"peer\" or \"client\")")));
                                }
                                config.mode = Some(mode);
                            }
                            "connect" => config.connect = self.strings(&path, &span, item)?,
                            _ => config.listen = self.strings(&path, &span, item)?,
                        }
                    }
                }
                "logging" => {
                    let table = item
                        .as_table_like()
                        .ok_or_else(|| self.error(span.clone(), &path, "expected a table"))?;
                    for (name, path, span, item) in self.entries(table, "logging", LOGGING)? {
                        let text = self.string(&path, &span, item)?;
                        if name == "level" {
                            config.level = Some(text.parse().map_err(|_| {
                                self.error(
                                    span,
                                    &path,
                                    format!(
                                        "unknown level {text:?} (trace, debug, info, warn, error)"
                                    ),
                                )
                            })?);
                        } else {
                            config.format = Some(
                                text.parse()
                                    .map_err(|e: String| self.error(span, &path, e))?,
                            );
                        }
                    }
                }
                "export" => {
                    for (i, table) in self.tables(&path, &span, item)?.into_iter().enumerate() {
                        config
                            .exports
                            .push(self.export(table, &format!("export[{i}]"))?);
                    }
                }
                _ => {
                    for (i, table) in self.tables(&path, &span, item)?.into_iter().enumerate() {
                        config
                            .imports
                            .push(self.import(table, &format!("import[{i}]"))?);
                    }
                }
            }
        }
        if !version {
            return Err(self.error(
                Some(0..0),
                "version",
                "missing: the file needs `version = 1` at the top",
            ));
        }
        if config.exports.is_empty() && config.imports.is_empty() {
            return Err(self.error(
                Some(0..0),
                "",
                "nothing to do: no [[export]] or [[import]] table",
            ));
        }
        Ok(config)
    }

    fn export(&self, table: &dyn TableLike, prefix: &str) -> Result<ExportSpec, ConfigError> {
        let (mut channel, mut key, mut importers) = (None, None, Vec::new());
        for (name, path, span, item) in self.entries(table, prefix, EXPORT)? {
            match name {
                "channel" => channel = Some(self.string(&path, &span, item)?),
                "key" => {
                    let text = self.string(&path, &span, item)?;
                    wire::check_key(&text).map_err(|e| self.error(span, &path, e))?;
                    key = Some(text);
                }
                _ => {
                    importers = self.strings(&path, &span, item)?;
                    for (i, name) in importers.iter().enumerate() {
                        wire::check_name(name)
                            .map_err(|e| self.error(span.clone(), &format!("{path}[{i}]"), e))?;
                    }
                }
            }
        }
        let span = table_span(table);
        Ok(ExportSpec {
            channel: channel
                .ok_or_else(|| self.error(span.clone(), &format!("{prefix}.channel"), "missing"))?,
            key: key.ok_or_else(|| self.error(span, &format!("{prefix}.key"), "missing"))?,
            importers,
        })
    }

    fn import(&self, table: &dyn TableLike, prefix: &str) -> Result<ImportSpec, ConfigError> {
        let (mut channel, mut key, mut name_, mut capacity) = (None, None, None, None);
        for (name, path, span, item) in self.entries(table, prefix, IMPORT)? {
            match name {
                "channel" => channel = Some(self.string(&path, &span, item)?),
                "key" => {
                    let text = self.string(&path, &span, item)?;
                    wire::check_key(&text).map_err(|e| self.error(span, &path, e))?;
                    key = Some(text);
                }
                "name" => {
                    let text = self.string(&path, &span, item)?;
                    wire::check_name(&text).map_err(|e| self.error(span, &path, e))?;
                    name_ = Some(text);
                }
                _ => {
                    let bytes = match (item.as_str(), item.as_integer()) {
                        (Some(text), _) => {
                            parse_size(text).map_err(|e| self.error(span.clone(), &path, e))?
                        }
                        (None, Some(n)) if n > 0 => n as u64,
                        _ => {
                            return Err(self.error(
                                span,
                                &path,
                                "expected a size like \"16MiB\" or a positive integer",
                            ))
                        }
                    };
                    capacity = Some(bytes);
                }
            }
        }
        let span = table_span(table);
        let channel: String = channel
            .ok_or_else(|| self.error(span.clone(), &format!("{prefix}.channel"), "missing"))?;
        Ok(ImportSpec {
            name: name_.unwrap_or_else(|| crate::default_importer_name(&channel)),
            key: key.ok_or_else(|| self.error(span, &format!("{prefix}.key"), "missing"))?,
            channel,
            create_capacity: capacity,
        })
    }
}

/// Where a table is, for "missing key" errors: its first key.
fn table_span(table: &dyn TableLike) -> Option<Range<usize>> {
    table
        .iter()
        .find_map(|(name, _)| table.key(name).and_then(|k| k.span()))
}

/// A likely typo: same letters give or take one or two.
fn similar(known: &str, typed: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (known.chars().collect(), typed.chars().collect());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()] <= (known.len() / 3).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        parse(text, Path::new("bridge.toml"))
            .expect_err("should fail")
            .to_string()
    }

    #[test]
    fn a_full_file_is_read() {
        let config = parse(
            "version = 1\nsocket = \"/tmp/s\"\n[zenoh]\nconnect = [\"tcp/10.77.0.1:7447\"]\n\
             [[export]]\nchannel = \"a\"\nkey = \"k/a\"\nimporters = [\"hostB\"]\n\
             [[import]]\nkey = \"k/b\"\nchannel = \"b\"\nname = \"hostA\"\ncapacity = \"64KiB\"\n",
            Path::new("bridge.toml"),
        )
        .expect("valid");
        assert_eq!(config.exports[0].importers, vec!["hostB".to_string()]);
        assert_eq!(config.imports[0].create_capacity, Some(65536));
        assert_eq!(config.connect, vec!["tcp/10.77.0.1:7447".to_string()]);
    }

    /// config/bridge.toml (installed as /etc/shmem-broker/bridge.toml) is read as shipped,
    /// names every key this parser knows, and is still valid with every commented-out
    /// `#key = value` line switched on.
    #[test]
    fn the_example_config_is_valid_and_shows_every_key() {
        let text = include_str!("../../config/bridge.toml");
        let path = Path::new("config/bridge.toml");
        let config = parse(text, path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.exports.len(), 1);
        assert_eq!(config.imports.len(), 1);
        for key in TOP
            .iter()
            .chain(ZENOH)
            .chain(LOGGING)
            .chain(EXPORT)
            .chain(IMPORT)
        {
            let shown = text.lines().any(|line| {
                let line = line.trim_start_matches('#');
                line.starts_with(&format!("{key} ="))
                    || line.starts_with(&format!("[{key}]"))
                    || line.starts_with(&format!("[[{key}]]"))
            });
            assert!(shown, "config/bridge.toml does not show `{key}`");
        }
        let all_on: String = text
            .lines()
            .map(|line| match line.strip_prefix('#') {
                Some(rest)
                    if rest
                        .split_once(" = ")
                        .is_some_and(|(k, _)| !k.contains(' ')) =>
                {
                    rest
                }
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let config = parse(&all_on, path).unwrap_or_else(|e| panic!("{e}\n{all_on}"));
        assert!(config.socket.is_some() && config.state_dir.is_some());
        assert!(config.key_file.is_some() && !config.connect.is_empty());
        assert_eq!(config.imports[0].create_capacity, Some(16 << 20));
    }

    #[test]
    fn errors_name_file_line_column_and_key() {
        assert_eq!(
            error("version = 1\n[[export]]\nchanel = \"a\"\nkey = \"k\"\n"),
            "bridge.toml:3:1: export[0].chanel: unknown key (did you mean `channel`?)"
        );
        assert_eq!(
            error("version = 1\n[[import]]\nchannel = \"a\"\nkey = \"k/*\"\n"),
            "bridge.toml:4:7: import[0].key: key \"k/*\": must be a concrete Zenoh key (chunks separated by '/', none empty, without * $ @ # ?)"
        );
        assert!(error("[[export]]\nchannel = \"a\"\nkey = \"k\"\n")
            .starts_with("bridge.toml:1:1: version: missing"));
        assert!(
            error("version = 1\n[[import]]\nchannel = \"a\"\n").contains("import[0].key: missing")
        );
        assert!(error("version = 1\n[zenoh]\nmode = \"router\"\n")
            .starts_with("bridge.toml:3:8: zenoh.mode:"));
    }
}
