//! Client library and wire protocol of **shmem-broker**, a broker that hands out named
//! shared-memory channels on one Linux machine.
//!
//! This crate owns everything both sides of the control socket agree on: the framed wire
//! protocol ([`wire`]), passing fds with SCM_RIGHTS ([`fdpass`]), the shared ring layout
//! ([`ring`]), channel names and sizes; and the API programs use: [`Client`], [`Producer`],
//! [`Consumer`].
//!
//! The data path is socket -> attach -> ring: a client asks the broker to attach it to a channel
//! and receives the channel's sealed memfd ring and its two eventfds in one message; from then on
//! messages go from producer to consumer through shared memory, and the broker is not involved.

mod attachment;
mod client;
mod connection;
mod consumer;
pub mod control;
pub mod discovery;
mod error;
mod fanout;
pub mod fdpass;
pub mod names;
mod producer;
pub mod ring;
pub mod size;
pub mod wire;

pub use client::{Attach, Client, CreateOptions, NewChannel};
pub use consumer::Consumer;
pub use error::{Error, Result};
pub use producer::Producer;
pub use ring::ReadItem;
pub use wire::{ChannelInfo, ErrorCode, PeerInfo, Role, SlowConsumer, StatusInfo};
