//! The bodies of replies: what `attach`, `info`, `list`, `status`, `reload`, `quota` and
//! `drop` return.

use serde::{Deserialize, Serialize};

use super::{Role, SlowConsumer};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
/// One endpoint of a channel, as `info` and `list` show it.
pub struct PeerInfo {
    /// 0 for a durable consumer that is away.
    pub pid: u32,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
    /// Its side.
    pub role: Role,
    /// Producer id, or consumer queue id: what a consumer's `last_producer()` reports.
    #[serde(default)]
    pub id: u32,
    /// A durable consumer's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The uid a durable consumer's name belongs to: only it (and root) may attach as it; it,
    /// the channel's owner and admins may drop it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_uid: Option<u32>,
    /// False for a durable consumer whose queue the broker keeps while it is away.
    #[serde(default = "yes")]
    pub attached: bool,
    /// Fill level: bytes in this endpoint's rings not yet read.
    #[serde(default)]
    pub bytes_unread: u64,
    /// Messages written (producer) or read (consumer).
    #[serde(default)]
    pub messages: u64,
    /// Messages lost to slow consumers (policy `drop`).
    #[serde(default)]
    pub messages_lost: u64,
}

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
/// Where a channel comes from.
pub enum Origin {
    /// Declared in the config file.
    Config,
    /// Made by a `create` request.
    Runtime,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
/// A channel, as `info`, `list` and `create` describe it.
pub struct ChannelInfo {
    /// Its name.
    pub name: String,
    /// Ring data bytes.
    pub capacity: u64,
    /// Config file or runtime `create`.
    pub origin: Origin,
    /// The creator's uid for runtime channels.
    pub owner_uid: Option<u32>,
    /// Who may attach as producer / consumer besides root and the owner.
    pub producers: Vec<String>,
    /// Who may attach as consumer besides root and the owner.
    pub consumers: Vec<String>,
    /// Attached endpoints, and durable consumers that are away.
    pub peers: Vec<PeerInfo>,
    /// Data messages written (see PROTOCOL.md for how rings' counters add up).
    pub messages_written: u64,
    /// Payload bytes written.
    pub bytes_written: u64,
    /// Data messages read.
    pub messages_read: u64,
    /// Fill level: message bytes written and not yet read (end-of-stream marks and framing
    /// not counted).
    pub bytes_unread: u64,
    /// Messages consumers lost to a full ring (policy `drop`), over the channel's life.
    #[serde(default)]
    pub messages_lost: u64,
    /// Consumers the broker disconnected (fell behind under policy `disconnect`).
    #[serde(default)]
    pub evictions: u64,
    /// Removed from the config; goes away when its last client detaches.
    #[serde(default)]
    pub pending_removal: bool,
    #[serde(default = "one")]
    /// Producers that may attach at once.
    pub max_producers: u32,
    #[serde(default = "one")]
    /// Consumers that may attach at once.
    pub max_consumers: u32,
    #[serde(default)]
    /// What a full consumer ring costs.
    pub slow_consumer: SlowConsumer,
    /// Ring memory the channel holds now: one ring per producer and consumer pair.
    #[serde(default)]
    pub ring_bytes: u64,
    /// The fullest ring's fill: the most bytes (frames included) written to one of the
    /// channel's rings and not yet read, at most `capacity`. 0 from older brokers.
    #[serde(default)]
    pub fullest_ring_bytes: u64,
    /// Wake-ups (eventfd writes after finding the peer asleep) counted in the channel's rings
    /// that exist now, both sides summed: it goes back when a fan-out consumer's rings go.
    /// Clients write it: informational only. 0 from older brokers.
    #[serde(default)]
    pub wakeups: u64,
}

impl ChannelInfo {
    /// The first attached endpoint in `role`.
    pub fn peer(&self, role: Role) -> Option<&PeerInfo> {
        self.peers.iter().find(|p| p.role == role && p.attached)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
/// The result of `list`.
pub struct ChannelList {
    /// Every channel.
    pub channels: Vec<ChannelInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
/// The result of `status`.
pub struct StatusInfo {
    /// The broker's package version.
    pub version: String,
    /// The highest protocol version the broker speaks.
    pub protocol: u16,
    /// The broker's pid.
    pub pid: u32,
    /// Seconds since the broker started.
    pub uptime_secs: u64,
    /// `systemd` (socket activation) or `bound` (the broker bound the path itself).
    pub socket_source: String,
    /// The socket path, if known.
    pub socket_path: Option<String>,
    /// The config file in use, if any.
    pub config_file: Option<String>,
    /// Channels that exist.
    pub channels: usize,
    /// Open connections, including the one asking.
    pub clients: usize,
    /// Usage against each quota: the broker's totals, then the asking uid's own.
    #[serde(default)]
    pub quotas: Vec<QuotaUsage>,
    /// Version 4: the outcome of the last config reload (SIGHUP), if there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reload: Option<ReloadOutcome>,
}

/// When a config reload happened and whether it took.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    /// Seconds since the Unix epoch.
    pub at_unix_secs: u64,
    /// Whether the new config took effect.
    pub ok: bool,
    /// Why it was rejected (`file:line:column: key: ...`): the previous config stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
/// Usage of one quota.
pub struct QuotaUsage {
    /// The config key, like `max_channels` or `per_uid.max_ring_bytes`.
    pub quota: String,
    /// The uid a per-uid quota is counted for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// What is used now (a count, or bytes for `*ring_bytes`).
    pub used: u64,
    /// The configured limit.
    pub limit: u64,
}

/// The result of `attach`. The fds arrive with this reply, in the order `fds` names them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachInfo {
    /// The channel attached to.
    pub channel: String,
    /// The side attached as.
    pub role: Role,
    /// Ring data bytes.
    pub capacity: u64,
    /// Size of the ring memfd (header page plus data).
    pub ring_size: u64,
    /// Ring layout version (see `ring`).
    pub ring_layout: u32,
    /// One-to-one channels: `["ring", "data_ready", "space_ready"]`. Fan-out channels
    /// (version 2): `["control", "wait"]` then `"ring", "wake"` for each of `lanes`.
    pub fds: Vec<String>,
    /// Version 2: this producer's id, or this consumer's queue id.
    #[serde(default)]
    pub id: u32,
    #[serde(default)]
    /// Version 2: the channel's slow-consumer policy (`block` for one-to-one channels).
    pub slow_consumer: SlowConsumer,
    /// Version 2, fan-out channels: one ring per peer (consumer queues for a producer,
    /// producers for a consumer), in the order of their fds.
    #[serde(default)]
    pub lanes: Vec<LaneInfo>,
    /// The control page's counter for this side when the reply was made.
    #[serde(default)]
    pub generation: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
/// One lane of a fan-out attach.
pub struct LaneInfo {
    /// The producer id (for a consumer) or consumer queue id (for a producer) at the other end.
    pub peer: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
/// The result of `drop` and `drop_consumer`.
pub struct Dropped {
    /// The channel dropped (or whose consumer was).
    pub channel: String,
}
