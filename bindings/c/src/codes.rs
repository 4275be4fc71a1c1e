//! The codes every exported function returns: success, would-block and end-of-stream, and
//! one negative code per failure.

use std::ffi::c_int;

/// Success.
pub const SHMEM_OK: c_int = 0;
/// A non-blocking call could not go on now: no room (send), no message (receive).
pub const SHMEM_WOULD_BLOCK: c_int = 1;
/// Receive: the producer closed its stream here; nothing more will come from it.
pub const SHMEM_END_OF_STREAM: c_int = 2;
/// A NULL pointer where one is required, a string that is not UTF-8, an option out of range.
pub const SHMEM_ERR_INVALID_ARGUMENT: c_int = -1;
/// No broker listens at the socket.
pub const SHMEM_ERR_BROKER_NOT_RUNNING: c_int = -2;
/// The broker refused the request: malformed.
pub const SHMEM_ERR_BAD_REQUEST: c_int = -10;
/// The broker refused the request: protocol version.
pub const SHMEM_ERR_UNSUPPORTED_VERSION: c_int = -11;
/// No channel of that name.
pub const SHMEM_ERR_NO_SUCH_CHANNEL: c_int = -12;
/// A channel of that name exists already.
pub const SHMEM_ERR_CHANNEL_EXISTS: c_int = -13;
/// The channel's producer or consumer places are taken.
pub const SHMEM_ERR_CHANNEL_BUSY: c_int = -14;
/// This uid may not do that.
pub const SHMEM_ERR_PERMISSION_DENIED: c_int = -15;
/// Not a valid channel or consumer name.
pub const SHMEM_ERR_INVALID_NAME: c_int = -16;
/// Capacity out of range.
pub const SHMEM_ERR_INVALID_CAPACITY: c_int = -17;
/// A quota of the broker is reached.
pub const SHMEM_ERR_LIMIT_REACHED: c_int = -18;
/// A durable consumer fell behind while away and was disconnected.
pub const SHMEM_ERR_EVICTED: c_int = -19;
/// No durable consumer of that name.
pub const SHMEM_ERR_NO_SUCH_CONSUMER: c_int = -20;
/// The broker failed otherwise.
pub const SHMEM_ERR_BROKER_INTERNAL: c_int = -21;
/// An administrator dropped the channel.
pub const SHMEM_ERR_CHANNEL_DROPPED: c_int = -30;
/// The broker disconnected this consumer (it fell behind under policy `disconnect`).
pub const SHMEM_ERR_DISCONNECTED: c_int = -31;
/// Fan-out consumers: one producer's ring became unusable; reading on without it.
pub const SHMEM_ERR_PRODUCER_LOST: c_int = -32;
/// One-to-one consumers: the producer went away without closing its stream (once).
pub const SHMEM_ERR_PRODUCER_GONE: c_int = -33;
/// A producer's end-of-stream mark did not fit (policy `drop`); reading on.
pub const SHMEM_ERR_END_OF_STREAM_LOST: c_int = -34;
/// The message is larger than the channel carries.
pub const SHMEM_ERR_MESSAGE_TOO_LARGE: c_int = -35;
/// The shared memory is inconsistent (a peer scribbled on it).
pub const SHMEM_ERR_CORRUPT: c_int = -36;
/// Receive: the buffer is too small; `*len` says how large the message is, and it stays in
/// the channel (a too-small or NULL buffer never loses a message): a receive with room for
/// it gets it, after any report due first (another producer's end in a fan-out channel).
pub const SHMEM_ERR_BUFFER_TOO_SMALL: c_int = -37;
/// The producer has a loan outstanding (send or abandon it first), or the consumer a borrowed
/// message (release it first).
pub const SHMEM_ERR_BUSY: c_int = -38;
/// A system call failed.
pub const SHMEM_ERR_IO: c_int = -40;
/// The broker said something this library does not understand.
pub const SHMEM_ERR_PROTOCOL: c_int = -41;
/// Anything else.
pub const SHMEM_ERR_OTHER: c_int = -98;
/// A bug in the library (a Rust panic), caught at the boundary.
pub const SHMEM_ERR_PANIC: c_int = -99;
