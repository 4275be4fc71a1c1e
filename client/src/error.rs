//! The client library's error type: every failure a caller can meet, each saying what is wrong
//! and with which channel.

use std::io;
use std::path::PathBuf;

use crate::ring::{BadRelease, RingError};
use crate::wire::ErrorCode;

/// Every failure of this library. New kinds of failure may come in later versions, so a
/// `match` on it needs a wildcard arm.
///
/// Its `Display` says what went wrong without repeating its [`source`](std::error::Error::source),
/// so printing the chain (as `anyhow` and most error reporters do) shows each cause once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No broker listens at the socket path.
    #[error("broker not running at {}", path.display())]
    BrokerNotRunning {
        /// The socket path tried.
        path: PathBuf,
        /// Why connecting failed (no such file, connection refused).
        #[source]
        source: io::Error,
    },
    /// The broker refused a request; `message` is its explanation.
    #[error("{message}")]
    Broker {
        /// What kind of refusal (stable, for programs to branch on).
        code: ErrorCode,
        /// The broker's explanation, for humans.
        message: String,
    },
    /// An administrator dropped the channel this endpoint is attached to.
    #[error("channel dropped: {channel}")]
    ChannelDropped {
        /// The channel.
        channel: String,
    },
    /// The broker detached this consumer: it fell behind in a channel whose slow-consumer
    /// policy is `disconnect`.
    #[error("channel {channel}: disconnected: {reason}")]
    Disconnected {
        /// The channel.
        channel: String,
        /// Why, as the broker put it.
        reason: String,
    },
    /// Fan-out consumers: the ring from one producer became unusable (it was corrupt, or that
    /// producer marked it evicted where the channel's policy or the ring's state does not
    /// bear that out). Returned once; the consumer reads on from the other producers, and
    /// that producer's end-of-stream mark never comes.
    #[error("channel {channel}: ring of producer {producer}: {reason}; reading on without it")]
    ProducerLost {
        /// The channel.
        channel: String,
        /// The producer id whose ring is given up.
        producer: u32,
        /// What was wrong with it.
        reason: String,
    },
    /// One-to-one consumers: the producer went away (failed, interrupted, killed) without
    /// closing its stream, and everything it wrote has been read. Returned once; the next
    /// receive waits for the next producer.
    #[error(
        "channel {channel}: producer pid {pid} went away without end-of-stream after {bytes} bytes"
    )]
    ProducerGone {
        /// The channel.
        channel: String,
        /// The producer that went away.
        pid: u32,
        /// Bytes it wrote while attached.
        bytes: u64,
    },
    /// Fan-out consumers, policy `drop`: the producer closed its stream, but its end-of-stream
    /// mark found this consumer's ring full, after `missed` messages that did not fit either.
    /// Returned once, after the last message that did; the other producers are read on.
    #[error(
        "channel {channel}: producer pid {pid} finished, but its end-of-stream mark was lost (ring full, slow_consumer = drop) with {missed} messages missed before it"
    )]
    EndOfStreamLost {
        /// The channel.
        channel: String,
        /// The producer that finished.
        pid: u32,
        /// Messages that did not fit before the mark.
        missed: u64,
    },
    /// A reconnecting endpoint could not take its place again after the broker came back.
    #[error("channel {channel}: {reason}")]
    Reattach {
        /// The channel.
        channel: String,
        /// Why the endpoint cannot go on.
        reason: String,
    },
    /// The message can never fit in this channel's ring.
    #[error("channel {channel}: message of {len} bytes is larger than the ring allows ({max} bytes per message in a {capacity}-byte ring)")]
    MessageTooLarge {
        /// The channel.
        channel: String,
        /// The message's length.
        len: usize,
        /// The largest message the channel carries.
        max: u64,
        /// The channel's ring capacity.
        capacity: u64,
    },
    /// The peer wrote nonsense into the shared ring (or the ring handed out was not sound).
    /// (The ring's error is part of the message, not a separate source: it is the whole story.)
    #[error("channel {channel}: {error}")]
    Ring {
        /// The channel.
        channel: String,
        /// What is wrong with the ring.
        error: RingError,
    },
    /// The call does not apply to this kind of channel.
    #[error("channel {channel}: {what} is not supported here")]
    Unsupported {
        /// The channel.
        channel: String,
        /// What was asked.
        what: String,
    },
    /// A one-to-one consumer was asked to release up to a stream position that is not the end
    /// of an item it read ahead and has not released ([`Consumer::release_to`]); nothing was
    /// released.
    ///
    /// [`Consumer::release_to`]: crate::Consumer::release_to
    #[error("channel {channel}: {error}")]
    BadRelease {
        /// The channel.
        channel: String,
        /// The position, and why it is refused.
        error: BadRelease,
    },
    /// The broker spoke a protocol version this library does not know, or broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A system call failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },
}

impl Error {
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
            error => Error::Ring {
                channel: channel.to_string(),
                error,
            },
        }
    }
}

/// `Result` with this library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why [`Consumer::try_recv`](crate::Consumer::try_recv) (and the other `try_recv*` calls)
/// returned no message: the channel is empty for now, which is no failure, or a real failure.
///
/// After [`Empty`](TryRecvError::Empty), wait for
/// [`Consumer::ready_fd`](crate::Consumer::ready_fd) to turn readable, then try again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TryRecvError {
    /// No message is there yet.
    #[error("no message yet")]
    Empty,
    /// The receive failed.
    #[error(transparent)]
    Failed(#[from] Error),
}

impl TryRecvError {
    /// True if the channel was merely empty.
    pub fn is_empty(&self) -> bool {
        matches!(self, TryRecvError::Empty)
    }

    /// The failure, if this is one (`None` for [`Empty`](TryRecvError::Empty)).
    pub fn into_failure(self) -> Option<Error> {
        match self {
            TryRecvError::Empty => None,
            TryRecvError::Failed(error) => Some(error),
        }
    }
}

/// Why [`Producer::try_send`](crate::Producer::try_send) (and the other `try_send*` calls)
/// sent nothing: no room for now, which is no failure, or a real failure.
///
/// After [`Full`](TrySendError::Full), wait for
/// [`Producer::ready_fd`](crate::Producer::ready_fd) to turn readable, then try again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrySendError {
    /// No room for the message yet.
    #[error("no room for the message yet")]
    Full,
    /// The send failed.
    #[error(transparent)]
    Failed(#[from] Error),
}

impl TrySendError {
    /// True if there was merely no room.
    pub fn is_full(&self) -> bool {
        matches!(self, TrySendError::Full)
    }

    /// The failure, if this is one (`None` for [`Full`](TrySendError::Full)).
    pub fn into_failure(self) -> Option<Error> {
        match self {
            TrySendError::Full => None,
            TrySendError::Failed(error) => Some(error),
        }
    }
}
