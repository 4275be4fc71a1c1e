//! The control-socket wire protocol, version 4 (see `PROTOCOL.md` at the repository root).
//! Version 2 added many producers and consumers per channel, version 3 ring layout 2 (sealed
//! frames, see [`ring`](crate::ring)). A broker still answers older clients, and tells them in
//! an `unsupported_version` error when a channel needs a newer version.
//!
//! Every message is a 16-byte little-endian header followed by a UTF-8 JSON body:
//!
//! ```text
//! offset size field
//!      0    4 magic    b"SHMB"
//!      4    2 version  3 (1 and 2 still accepted; replies carry the request's version)
//!      6    2 kind     1 = request, 2 = reply, 3 = event
//!      8    4 id       chosen by the client, echoed in the reply; 0 for events
//!     12    4 length   body bytes (requests <= 64 KiB, replies and events <= 16 MiB)
//! ```
//!
//! Every request gets exactly one reply with the same id. File descriptors (an `attach` reply's
//! ring and eventfds) travel as SCM_RIGHTS on the first byte of the reply that describes them.

use serde::{Deserialize, Serialize};

/// The four bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"SHMB";
/// The newest protocol version, what this library speaks and the broker answers up to.
pub const PROTOCOL_VERSION: u16 = 5;
/// Oldest version the broker still serves.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// The first version whose clients read ring layout 2.
pub const SEALED_RINGS_VERSION: u16 = 3;
/// The first version whose clients understand the `producer_gone` event.
pub const PRODUCER_GONE_VERSION: u16 = 4;
/// The first version whose clients read ring layout 3 (each ring in two memfds, the other
/// side's mapped read-only, `ack` fds in attach replies and lane events).
pub const SPLIT_RINGS_VERSION: u16 = 5;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 16;
/// Largest request body the broker reads; anything larger is refused before it is buffered.
pub const MAX_REQUEST_BODY: u32 = 64 * 1024;
/// Largest reply or event body a client accepts.
pub const MAX_REPLY_BODY: u32 = 16 * 1024 * 1024;
/// Most producers or consumers one channel may have.
pub const MAX_ENDPOINTS: u32 = 64;
/// Most file descriptors one message carries: a fan-out attach carries its control page and
/// eventfd plus a ring, its ack page and an eventfd per peer.
pub const MAX_FDS_PER_MESSAGE: usize = 2 + 3 * MAX_ENDPOINTS as usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
/// What a frame carries (header bytes 6..8).
pub enum FrameKind {
    /// Client to broker.
    Request = 1,
    /// Broker to client, answering the request with the same id.
    Reply = 2,
    /// Broker to client, unsolicited (id 0).
    Event = 3,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
/// A decoded frame header.
pub struct FrameHeader {
    /// Protocol version of the frame.
    pub version: u16,
    /// What the frame carries.
    pub kind: FrameKind,
    /// Request id, echoed by its reply; 0 for events.
    pub id: u32,
    /// Body bytes that follow the header.
    pub length: u32,
}

/// Why a header could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("not a shmem-broker frame (bad magic {0:02x?})")]
    /// The first four bytes are not [`MAGIC`].
    BadMagic([u8; 4]),
    #[error("unknown frame kind {0}")]
    /// The kind field is not 1, 2 or 3.
    BadKind(u16),
    /// The body is longer than allowed.
    #[error("frame body of {length} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The body length the header announced.
        length: u32,
        /// The limit for this direction.
        limit: u32,
    },
}

impl FrameHeader {
    /// The 16 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&self.version.to_le_bytes());
        out[6..8].copy_from_slice(&(self.kind as u16).to_le_bytes());
        out[8..12].copy_from_slice(&self.id.to_le_bytes());
        out[12..16].copy_from_slice(&self.length.to_le_bytes());
        out
    }

    /// Decodes a header and checks the body length against `max_body`. The version is returned
    /// as sent, so the receiver can answer an unknown version with a proper error reply.
    pub fn decode(bytes: &[u8; HEADER_LEN], max_body: u32) -> Result<FrameHeader, HeaderError> {
        let field = |range: std::ops::Range<usize>| -> [u8; 4] {
            let mut out = [0u8; 4];
            out[..range.len()].copy_from_slice(&bytes[range]);
            out
        };
        let magic = field(0..4);
        if magic != MAGIC {
            return Err(HeaderError::BadMagic(magic));
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        let kind = match u16::from_le_bytes([bytes[6], bytes[7]]) {
            1 => FrameKind::Request,
            2 => FrameKind::Reply,
            3 => FrameKind::Event,
            other => return Err(HeaderError::BadKind(other)),
        };
        let id = u32::from_le_bytes(field(8..12));
        let length = u32::from_le_bytes(field(12..16));
        if length > max_body {
            return Err(HeaderError::TooLarge {
                length,
                limit: max_body,
            });
        }
        Ok(FrameHeader {
            version,
            kind,
            id,
            length,
        })
    }
}

/// Header plus JSON body, ready to write.
pub fn encode_frame(kind: FrameKind, id: u32, body: &impl Serialize) -> Vec<u8> {
    encode_frame_version(PROTOCOL_VERSION, kind, id, body)
}

/// [`encode_frame`] for a peer speaking an older `version`.
pub fn encode_frame_version(
    version: u16,
    kind: FrameKind,
    id: u32,
    body: &impl Serialize,
) -> Vec<u8> {
    // Serializing plain data structs to a Vec cannot fail; fall back to an empty object so a
    // peer still gets a well-formed frame if it ever did.
    let json = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let header = FrameHeader {
        version,
        kind,
        id,
        length: json.len() as u32,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + json.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(&json);
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
/// The side of a channel an endpoint is on.
pub enum Role {
    /// Writes messages.
    Producer,
    /// Reads messages.
    Consumer,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Producer => "producer",
            Role::Consumer => "consumer",
        })
    }
}

/// What a channel does with a consumer whose ring is full when a producer writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlowConsumer {
    /// The producer waits for the slowest consumer: nothing is lost.
    #[default]
    Block,
    /// The slow consumer loses the messages that do not fit and is told how many.
    Drop,
    /// The slow consumer is detached with an error.
    Disconnect,
}

impl SlowConsumer {
    /// The policies' names, as in the protocol and the config file.
    pub const NAMES: [&'static str; 3] = ["block", "drop", "disconnect"];
}

impl std::fmt::Display for SlowConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SlowConsumer::Block => "block",
            SlowConsumer::Drop => "drop",
            SlowConsumer::Disconnect => "disconnect",
        })
    }
}

impl std::str::FromStr for SlowConsumer {
    type Err = String;

    fn from_str(text: &str) -> Result<SlowConsumer, String> {
        match text {
            "block" => Ok(SlowConsumer::Block),
            "drop" => Ok(SlowConsumer::Drop),
            "disconnect" => Ok(SlowConsumer::Disconnect),
            other => Err(format!(
                "unknown slow-consumer policy {other:?} (expected block, drop or disconnect)"
            )),
        }
    }
}

/// A request body. Unknown fields are ignored so newer clients can add optional ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// `status`: the broker's version, uptime, socket, quotas.
    Status,
    /// `list`: every channel.
    List,
    /// `info`: one channel.
    Info {
        /// The channel's name.
        channel: String,
    },
    /// `create`: a new channel (needs root, the broker's uid or an admin group).
    Create {
        /// The new channel's name.
        channel: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        /// Ring data bytes (rounded up to 4 KiB); the broker's default if absent.
        capacity: Option<u64>,
        /// Extra principals allowed to produce (`*`, user, uid, `@group`, `@gid`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        producers: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        /// Extra principals allowed to consume.
        consumers: Vec<String>,
        /// Version 2: producers and consumers that may attach at once (default 1 each).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_producers: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        /// Version 2: consumers that may attach at once (1-64; default 1).
        max_consumers: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        /// Version 2: what a full consumer ring costs (default `block`).
        slow_consumer: Option<SlowConsumer>,
    },
    /// `drop`: removes a channel (its attached endpoints get `channel_dropped`).
    Drop {
        /// The channel's name.
        channel: String,
    },
    /// Version 2: forgets a durable consumer's queue (and its unread data) so producers stop
    /// keeping messages for it.
    DropConsumer {
        /// The channel's name.
        channel: String,
        /// The durable consumer's name.
        consumer: String,
    },
    /// Attach this connection to a channel. The connection then belongs to the attachment: the
    /// broker detaches as soon as it closes. One attachment per connection.
    Attach {
        /// The channel's name.
        channel: String,
        /// Which side to attach as.
        role: Role,
        /// Version 2, consumers of a channel with `max_consumers > 1`: attach as the durable
        /// consumer of this name, whose queue the broker keeps while it is away.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// Version 4, on a fan-out producer's attached connection after `close`: the consumers
    /// whose ring had no room for its end-of-stream mark (policy `drop`), so that the broker
    /// tells them the stream ended instead of that the producer went away.
    EndLost {
        /// The consumers whose ring had no room for the mark.
        lost: Vec<LostEnd>,
    },
    /// Version 4: this connection watches the broker (all channels, or `channel`): it gets
    /// `monitor` events as things happen, and `monitor_dropped` when it fell behind.
    Monitor {
        /// Only this channel; all channels the asker may watch if absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
    },
}

/// What a `monitor` event reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MonitorKind {
    /// A channel was created.
    Create,
    /// A producer or consumer attached.
    Attach,
    /// A producer or consumer detached.
    Detach,
    /// A channel was dropped.
    Drop,
    /// A durable consumer was dropped.
    DropConsumer,
    /// Consumers were disconnected (policy `disconnect`).
    Eviction,
    /// Messages were lost to full rings (policy `drop`).
    Loss,
    /// The config was reloaded, or a reload was rejected.
    Reload,
}

impl std::fmt::Display for MonitorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MonitorKind::Create => "create",
            MonitorKind::Attach => "attach",
            MonitorKind::Detach => "detach",
            MonitorKind::Drop => "drop",
            MonitorKind::DropConsumer => "drop-consumer",
            MonitorKind::Eviction => "eviction",
            MonitorKind::Loss => "loss",
            MonitorKind::Reload => "reload",
        })
    }
}

/// One thing that happened, as a `monitor` event carries it. Strings a client chose (names) or
/// a config file holds (a reload's error) are data: print them escaped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorEvent {
    /// When, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// What happened.
    pub what: MonitorKind,
    /// The channel it happened to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// The role of the peer that attached or detached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// The peer's pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The peer's uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// A durable consumer's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Messages lost (`loss`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Why (`eviction`, a rejected `reload`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A consumer that missed a producer's end-of-stream mark, and the messages it missed just
/// before it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostEnd {
    /// The consumer queue's id.
    pub consumer: u32,
    /// Messages it missed just before the mark.
    pub missed: u64,
}

/// Machine-readable error codes. Clients must treat unknown codes like `Internal`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed frame or JSON, unknown op, out-of-range value.
    BadRequest,
    /// A version this broker does not speak, or that cannot serve this attach.
    UnsupportedVersion,
    /// The named channel does not exist.
    NoSuchChannel,
    /// `create` of an existing name.
    ChannelExists,
    /// The role's slot(s) are taken; the message names who holds them.
    ChannelBusy,
    /// The peer's uid or groups are not allowed.
    PermissionDenied,
    /// Not a valid channel name.
    InvalidName,
    /// Capacity out of range.
    InvalidCapacity,
    /// A quota or `max_consumers` is reached.
    LimitReached,
    /// This connection already holds an attachment.
    AlreadyAttached,
    /// A durable consumer was disconnected for falling behind (policy `disconnect`).
    Evicted,
    /// `drop_consumer` named no durable consumer of the channel.
    NoSuchConsumer,
    #[serde(other)]
    /// Anything else, and every code this library does not know.
    Internal,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
/// The `error` of a failed reply.
pub struct ErrorBody {
    /// What went wrong, for programs.
    pub code: ErrorCode,
    /// What went wrong, for humans.
    pub message: String,
}

/// A reply body: `{"ok":true,"result":{...}}` or `{"ok":false,"error":{"code":..,"message":..}}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reply {
    /// True for success (`result` is set), false for failure (`error` is set).
    pub ok: bool,
    /// Kept as raw JSON text: serialized once by the broker and decoded once, straight into
    /// the caller's type (a list of 10,000 channels never becomes a `Value` tree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<serde_json::value::RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The failure.
    pub error: Option<ErrorBody>,
}

impl Reply {
    /// A successful reply with `result`.
    pub fn success(result: impl Serialize) -> Reply {
        Reply {
            ok: true,
            result: serde_json::value::to_raw_value(&result).ok(),
            error: None,
        }
    }

    /// A failed reply.
    pub fn failure(code: ErrorCode, message: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            result: None,
            error: Some(ErrorBody {
                code,
                message: message.into(),
            }),
        }
    }
}

/// Unsolicited messages from the broker on an attached connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The channel was dropped by an administrator; the attachment is over.
    ChannelDropped {
        /// The channel.
        channel: String,
    },
    /// Version 2, fan-out channels: a peer came; its ring and eventfd (named as in
    /// [`AttachInfo::fds`]: `ring`, `wake`) travel with this event. `generation` is the
    /// control page's counter for this side after the change.
    LaneAdded {
        /// The control page's counter for this side after the change.
        generation: u64,
        /// The new peer: a consumer queue id (producers) or producer id (consumers).
        peer: u32,
    },
    /// A consumer's queue went away (producers only): stop writing to it.
    LaneRemoved {
        /// The control page's counter for this side after the change.
        generation: u64,
        /// The consumer queue that went away.
        peer: u32,
    },
    /// This consumer was detached by the broker; the attachment is over.
    Disconnected {
        /// The channel.
        channel: String,
        /// Why, for humans.
        reason: String,
    },
    /// Version 4, to a connection that sent `monitor`.
    Monitor(MonitorEvent),
    /// Version 4, to a monitor that read too slowly: this many events were left out here.
    MonitorDropped {
        /// Events left out.
        count: u64,
    },
    /// Version 4, one-to-one channels: the producer's connection closed and its stream does
    /// not end with an end-of-stream mark (it failed, was interrupted or killed). `position`
    /// is where its stream stopped in the ring: once the consumer has read up to it, the
    /// stream is over. `bytes` is what that producer wrote while attached.
    ///
    /// Fan-out channels: `producer` names the producer slot (what `last_producer()` reports),
    /// and `position` and `bytes` are about this consumer's ring from it.
    ProducerGone {
        /// The channel.
        channel: String,
        /// The producer that went away.
        pid: u32,
        /// Where its stream stopped in the ring (a byte position).
        position: u64,
        /// Bytes it wrote while attached.
        bytes: u64,
        /// Fan-out channels: the producer's id (what `last_producer()` reports).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        producer: Option<u32>,
        /// Fan-out channels, policy `drop`: the producer closed its stream, but its
        /// end-of-stream mark did not fit this consumer's ring; it missed this many messages
        /// just before it (the ones its ring had no room for).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        end_lost: Option<u64>,
    },
}

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
    /// Ring layout version (see `ring.rs`).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = FrameHeader {
            version: 1,
            kind: FrameKind::Reply,
            id: 7,
            length: 42,
        };
        assert_eq!(FrameHeader::decode(&h.encode(), 100), Ok(h));
    }

    #[test]
    fn header_refuses_garbage_and_giants() {
        let mut bytes = *b"GET / HTTP/1.1\r\n";
        assert!(matches!(
            FrameHeader::decode(&bytes, MAX_REQUEST_BODY),
            Err(HeaderError::BadMagic(_))
        ));
        bytes = FrameHeader {
            version: 1,
            kind: FrameKind::Request,
            id: 1,
            length: u32::MAX,
        }
        .encode();
        assert_eq!(
            FrameHeader::decode(&bytes, MAX_REQUEST_BODY),
            Err(HeaderError::TooLarge {
                length: u32::MAX,
                limit: MAX_REQUEST_BODY
            })
        );
        bytes[6] = 9;
        assert!(matches!(
            FrameHeader::decode(&bytes, MAX_REQUEST_BODY),
            Err(HeaderError::BadKind(9))
        ));
    }

    #[test]
    fn requests_have_a_stable_json_form() {
        let json = serde_json::to_string(&Request::Attach {
            channel: "cam".into(),
            role: Role::Consumer,
            name: None,
        })
        .expect("serialize");
        assert_eq!(json, r#"{"op":"attach","channel":"cam","role":"consumer"}"#);
        let parsed: Request =
            serde_json::from_str(r#"{"op":"create","channel":"x","future_field":1}"#)
                .expect("unknown fields are ignored");
        assert_eq!(
            parsed,
            Request::Create {
                channel: "x".into(),
                capacity: None,
                producers: vec![],
                consumers: vec![],
                max_producers: None,
                max_consumers: None,
                slow_consumer: None,
            }
        );
        let code: ErrorCode = serde_json::from_str(r#""some_future_code""#).expect("other");
        assert_eq!(code, ErrorCode::Internal);
    }
}
