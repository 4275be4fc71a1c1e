//! What the shmem-broker daemon and its clients agree on, and nothing else: the control
//! socket's frames and messages ([`wire`], passing fds with them: [`fdpass`]), where the socket
//! is by default ([`discovery`]), the shared-memory ring ([`ring`]: layouts, and the writer and
//! reader every side runs on it) and a fan-out channel's control page ([`control`]), and the
//! rules for channel names and sizes ([`names`], [`size`]).
//!
//! The daemon depends on this crate only, so the privileged process links no client API; the
//! client library (`shmem-broker-client`) builds `Producer` and `Consumer` on it and
//! re-exports [`wire`], [`names`], [`size`] and [`discovery`]. [`ring`] and [`control`] are raw
//! shared-memory types for the two sides' own use: PROTOCOL.md is their specification, and a
//! program that moves data wants the client library instead.

#![warn(missing_docs)]

pub mod control;
pub mod copy;
pub mod discovery;
pub mod fdpass;
pub mod names;
pub mod ring;
pub mod size;
pub mod wire;
