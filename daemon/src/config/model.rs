//! What the broker's settings are: the types the rest of the daemon reads, and their built-in
//! defaults. Nothing here reads a file.

use crate::access::AccessList;
use shmem_broker_proto::wire::SlowConsumer;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

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
///
/// [`Config::load`]: super::Config::load
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
