//! The shmem-broker daemon.
//!
//! The launcher (`main.rs`: flags, [`config`], [`logging`], [`listener`], [`notify`]) stays apart
//! from the broker core, which follows the data path: [`server`] (one epoll loop) -> [`session`]
//! (one connection, [`decoder`] for its bytes) -> [`registry`] (names, policy, [`quota`]s) ->
//! [`channel`] (the memfd ring and its eventfds), with [`access`] and [`peer`] deciding who may
//! do what, and [`fdstore`] keeping channels across restarts.
//!
//! It is a library only so that tests and fuzz targets can reach the parsers; the program is
//! the `shmem-broker` binary.

pub mod access;
pub mod channel;
pub mod closer;
pub mod config;
pub mod decoder;
pub mod fdstore;
pub mod listener;
pub mod logging;
pub mod notify;
pub mod peer;
pub mod quota;
pub mod registry;
pub mod server;
pub mod session;
