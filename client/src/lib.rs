//! Client library and wire protocol of **shmem-broker**, a broker that hands out named
//! shared-memory channels on one Linux machine.
//!
//! This crate owns everything both sides of the control socket agree on: the framed wire
//! protocol ([`wire`]), passing fds with SCM_RIGHTS ([`fdpass`]), the shared ring layout
//! (module `ring`) and control page (module `control`), channel names and sizes; and the API
//! programs use: [`Client`], [`Producer`], [`Consumer`], and their zero-copy paths [`Loan`]
//! (a message written in place) and [`Sample`] (a message read in place).
//!
//! `ring` and `control` are public for the broker, the tests and the fuzz targets of this
//! workspace only (hidden from the docs, no stable API). They are safe to use all the same:
//! the broker's writable control page is its own type, and a process gets at most one
//! `RingWriter` per ring.
//!
//! The data path is socket -> attach -> ring: a client asks the broker to attach it to a channel
//! and receives the channel's sealed memfd ring and its two eventfds in one message; from then on
//! messages go from producer to consumer through shared memory, and the broker is not involved.

#![warn(missing_docs)]

#[cfg(feature = "tokio")]
mod async_io;
mod attachment;
mod client;
mod connection;
mod consumer;
mod error;
mod grant;
mod lane_reader;
mod lane_writer;
mod lanes;
mod producer;
mod zero_copy;

// What the broker and every client agree on lives in `shmem-broker-proto`; the raw ring and
// control-page types stay out of this crate's documented API.
#[doc(hidden)]
pub use shmem_broker_proto::{control, fdpass, ring};
pub use shmem_broker_proto::{discovery, names, size, wire};
// Bulk copies that dodge `rep movsb`'s page-aliasing slow case: what every copy in or out of
// a ring uses, for bindings that copy message bytes themselves.
pub use shmem_broker_proto::copy;

#[cfg(feature = "tokio")]
pub use async_io::{AsyncConsumer, AsyncProducer};
pub use client::{Attach, Client, Monitor, NewChannel};
pub use consumer::{Consumer, Landed};
pub use error::{Error, Result, TryRecvError, TrySendError};
pub use producer::Producer;
pub use ring::{AheadItem, MessageBytes, ReadItem};
pub use wire::{ChannelInfo, ErrorCode, PeerInfo, Role, SlowConsumer, StatusInfo};
pub use zero_copy::{Loan, Sample};
