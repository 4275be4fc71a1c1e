//! The messages of the protocol: requests, replies, events, and the values they share (roles,
//! policies, error codes, monitor events).

use serde::{Deserialize, Serialize};

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
        /// The ring's `producers_gone` count in its ack page once this event was counted
        /// there (layout-3 rings; the broker counts before it sends). A consumer that finds the
        /// count above the highest of these it has read knows an event is on its way.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        announced: Option<u64>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

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
