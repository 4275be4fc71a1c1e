//! The client library's error type: every failure a caller can meet, each saying what is wrong
//! and with which channel.

use std::io;
use std::path::PathBuf;

use crate::ring::RingError;
use crate::wire::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No broker listens at the socket path.
    #[error("broker not running at {}: {source}", path.display())]
    BrokerNotRunning { path: PathBuf, source: io::Error },
    /// The broker refused a request; `message` is its explanation.
    #[error("{message}")]
    Broker { code: ErrorCode, message: String },
    /// An administrator dropped the channel this endpoint is attached to.
    #[error("channel dropped: {channel}")]
    ChannelDropped { channel: String },
    /// The broker detached this consumer: it fell behind in a channel whose slow-consumer
    /// policy is `disconnect`.
    #[error("channel {channel}: disconnected: {reason}")]
    Disconnected { channel: String, reason: String },
    /// Fan-out consumers: the ring from one producer became unusable (it was corrupt, or that
    /// producer marked it evicted where the channel's policy or the ring's state does not
    /// bear that out). Returned once; the consumer reads on from the other producers, and
    /// that producer's end-of-stream mark never comes.
    #[error("channel {channel}: ring of producer {producer}: {reason}; reading on without it")]
    ProducerLost {
        channel: String,
        producer: u32,
        reason: String,
    },
    /// One-to-one consumers: the producer went away (failed, interrupted, killed) without
    /// closing its stream, and everything it wrote has been read. Returned once; the next
    /// receive waits for the next producer.
    #[error(
        "channel {channel}: producer pid {pid} went away without end-of-stream after {bytes} bytes"
    )]
    ProducerGone {
        channel: String,
        pid: u32,
        bytes: u64,
    },
    /// Fan-out consumers, policy `drop`: the producer closed its stream, but its end-of-stream
    /// mark found this consumer's ring full, after `missed` messages that did not fit either.
    /// Returned once, after the last message that did; the other producers are read on.
    #[error(
        "channel {channel}: producer pid {pid} finished, but its end-of-stream mark was lost (ring full, slow_consumer = drop) with {missed} messages missed before it"
    )]
    EndOfStreamLost {
        channel: String,
        pid: u32,
        missed: u64,
    },
    /// A reconnecting endpoint could not take its place again after the broker came back.
    #[error("channel {channel}: {reason}")]
    Reattach { channel: String, reason: String },
    /// The message can never fit in this channel's ring.
    #[error("channel {channel}: message of {len} bytes is larger than the ring allows ({max} bytes per message in a {capacity}-byte ring)")]
    MessageTooLarge {
        channel: String,
        len: usize,
        max: u64,
        capacity: u64,
    },
    /// The peer wrote nonsense into the shared ring (or the ring handed out was not sound).
    #[error("channel {channel}: {source}")]
    Ring { channel: String, source: RingError },
    /// The call does not apply to this kind of channel.
    #[error("channel {channel}: {what} is not supported here")]
    Unsupported { channel: String, what: String },
    /// `try_send` found the ring full or `try_recv` found it empty.
    #[error("operation would block")]
    WouldBlock,
    /// The broker spoke a protocol version this library does not know, or broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

impl Error {
    pub fn is_would_block(&self) -> bool {
        matches!(self, Error::WouldBlock)
    }

    /// The broker's error code, if the broker refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Broker { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn ring(channel: &str, source: RingError) -> Error {
        match source {
            RingError::TooLarge { len, capacity, max } => Error::MessageTooLarge {
                channel: channel.to_string(),
                len,
                max,
                capacity,
            },
            source => Error::Ring {
                channel: channel.to_string(),
                source,
            },
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
