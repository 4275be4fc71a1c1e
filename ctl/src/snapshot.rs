//! One look at the broker (`status` and `list`), and the per-channel numbers `top` and
//! `metrics` derive from it. Every counter came from rings that clients write, summed with
//! saturation by the broker: the arithmetic here saturates too and never trusts a ratio to be
//! in range.

use std::time::Instant;

use anyhow::Result;
use shmem_broker_client::{ChannelInfo, Client, Role, StatusInfo};

/// The broker's answers to `status` and `list`, and when they were taken.
pub struct Snapshot {
    pub status: StatusInfo,
    pub channels: Vec<ChannelInfo>,
    pub at: Instant,
}

impl Snapshot {
    pub fn take(client: &Client) -> Result<Snapshot> {
        let status = client.status()?;
        let channels = client.list()?;
        Ok(Snapshot {
            status,
            channels,
            at: Instant::now(),
        })
    }

    /// Ring memory in use and its broker-wide limit (`max_ring_bytes`), if the broker said.
    pub fn ring_memory(&self) -> Option<(u64, u64)> {
        self.status
            .quotas
            .iter()
            .find(|q| q.quota == "max_ring_bytes" && q.uid.is_none())
            .map(|q| (q.used, q.limit))
    }
}

/// Endpoints attached in `role` now.
pub fn attached(info: &ChannelInfo, role: Role) -> u64 {
    info.peers
        .iter()
        .filter(|p| p.role == role && p.attached)
        .count() as u64
}

/// The lag of the slowest consumer: the most message bytes any one consumer (durable ones
/// away included) has yet to read.
pub fn slowest_lag_bytes(info: &ChannelInfo) -> u64 {
    info.peers
        .iter()
        .filter(|p| p.role == Role::Consumer)
        .map(|p| p.bytes_unread)
        .max()
        .unwrap_or(0)
}

/// How full the fullest ring is, 0.0 to 1.0 (a broker that does not say gives 0).
pub fn fill_ratio(info: &ChannelInfo) -> f64 {
    if info.capacity == 0 {
        return 0.0;
    }
    (info.fullest_ring_bytes as f64 / info.capacity as f64).clamp(0.0, 1.0)
}

/// Per-second rates of one channel between two snapshots.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub messages: f64,
    pub bytes: f64,
    pub wakeups: f64,
}

/// The rates of `now` since `before` over `secs` seconds. A counter that went back (a fan-out
/// consumer's rings went, or a client rewrote it) moved 0; a channel new since `before` shows
/// no rate until the next look.
pub fn rates(before: Option<&ChannelInfo>, now: &ChannelInfo, secs: f64) -> Rates {
    if secs <= 0.0 {
        return Rates::default();
    }
    let moved = |old: Option<u64>, new: u64| match old {
        Some(old) => new.saturating_sub(old) as f64 / secs,
        None => 0.0,
    };
    Rates {
        messages: moved(before.map(|b| b.messages_written), now.messages_written),
        bytes: moved(before.map(|b| b.bytes_written), now.bytes_written),
        wakeups: moved(before.map(|b| b.wakeups), now.wakeups),
    }
}
