//! Quotas: how much of the broker one uid, and everyone together, may hold. Refusals name the
//! quota and its value. Root is held only to the totals.

use std::collections::HashMap;
use std::time::Instant;

use shmem_broker_proto::size::format_size;
use shmem_broker_proto::wire::QuotaUsage;

use crate::config::{Config, PerUidQuotas};

/// What a uid holds right now.
#[derive(Clone, Copy, Debug, Default)]
pub struct Holdings {
    pub clients: usize,
    pub channels: usize,
    pub ring_bytes: u64,
    /// Durable consumer names registered, over all channels.
    pub durable_consumers: usize,
}

/// The broker's totals.
#[derive(Clone, Copy, Debug, Default)]
pub struct Totals {
    pub clients: usize,
    pub channels: usize,
    pub ring_bytes: u64,
}

pub struct Quotas {
    pub max_channels: usize,
    pub max_clients: usize,
    pub max_ring_bytes: u64,
    pub per_uid: PerUidQuotas,
    /// Attach tokens per uid: refilled at `max_attaches_per_sec`, capped at one second's worth.
    attach_tokens: HashMap<u32, (f64, Instant)>,
}

impl Quotas {
    pub fn from_config(config: &Config) -> Quotas {
        Quotas {
            max_channels: config.max_channels,
            max_clients: config.max_clients,
            max_ring_bytes: config.max_ring_bytes,
            per_uid: config.per_uid.clone(),
            attach_tokens: HashMap::new(),
        }
    }

    /// Takes the new limits from a reloaded config, keeping the attach rate state.
    pub fn update(&mut self, config: &Config) {
        let tokens = std::mem::take(&mut self.attach_tokens);
        *self = Quotas {
            attach_tokens: tokens,
            ..Quotas::from_config(config)
        };
    }

    /// May `uid` open one more connection?
    /// May `uid`, which has `uid_clients` connections open, open one more (with
    /// `total_clients` open in all)? Only connection counts matter here, so the caller does not
    /// walk the channels on every accept.
    pub fn admit_client(
        &self,
        uid: u32,
        uid_clients: usize,
        total_clients: usize,
    ) -> Result<(), String> {
        if total_clients >= self.max_clients {
            return Err(format!(
                "too many clients: quota max_clients = {} reached",
                self.max_clients
            ));
        }
        if uid != 0 && uid_clients >= self.per_uid.max_clients {
            return Err(format!(
                "too many connections from uid {uid}: quota per_uid.max_clients = {} reached",
                self.per_uid.max_clients
            ));
        }
        Ok(())
    }

    /// May `uid` create a channel of `capacity` bytes?
    pub fn admit_channel(
        &self,
        uid: u32,
        capacity: u64,
        held: Holdings,
        totals: Totals,
    ) -> Result<(), String> {
        if totals.channels >= self.max_channels {
            return Err(format!(
                "channel limit reached: quota max_channels = {}",
                self.max_channels
            ));
        }
        if totals.ring_bytes + capacity > self.max_ring_bytes {
            return Err(format!(
                "ring memory quota reached: max_ring_bytes = {} ({} in use, {} asked)",
                format_size(self.max_ring_bytes),
                format_size(totals.ring_bytes),
                format_size(capacity)
            ));
        }
        if uid == 0 {
            return Ok(());
        }
        if held.channels >= self.per_uid.max_channels {
            return Err(format!(
                "uid {uid} owns {} channels: quota per_uid.max_channels = {} reached",
                held.channels, self.per_uid.max_channels
            ));
        }
        if held.ring_bytes + capacity > self.per_uid.max_ring_bytes {
            return Err(format!(
                "uid {uid} would own {} of rings: quota per_uid.max_ring_bytes = {}",
                format_size(held.ring_bytes + capacity),
                format_size(self.per_uid.max_ring_bytes)
            ));
        }
        Ok(())
    }

    /// May `uid`, which holds `held` durable consumer names, register one more? Names are
    /// kept until dropped, so without this one uid could take every `max_consumers` place.
    pub fn admit_durable_consumer(&self, uid: u32, held: usize) -> Result<(), String> {
        if uid != 0 && held >= self.per_uid.max_durable_consumers {
            return Err(format!(
                "uid {uid} holds {held} durable consumer names: quota per_uid.max_durable_consumers = {} reached; drop one with `shmemctl drop CHANNEL --consumer NAME`",
                self.per_uid.max_durable_consumers
            ));
        }
        Ok(())
    }

    /// Takes one attach token for `uid`.
    pub fn admit_attach(&mut self, uid: u32, now: Instant) -> Result<(), String> {
        if uid == 0 {
            return Ok(());
        }
        let rate = self.per_uid.max_attaches_per_sec as f64;
        let (tokens, last) = self.attach_tokens.entry(uid).or_insert((rate, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(rate);
        *last = now;
        if *tokens < 1.0 {
            return Err(format!(
                "uid {uid} attaches too often: quota per_uid.max_attaches_per_sec = {}",
                self.per_uid.max_attaches_per_sec
            ));
        }
        *tokens -= 1.0;
        Ok(())
    }

    /// Forgets rate state older than a second (a full bucket is the same as no entry).
    pub fn expire(&mut self, now: Instant) {
        self.attach_tokens
            .retain(|_, (_, last)| now.duration_since(*last).as_secs() < 1);
    }

    pub fn usage(&self, totals: Totals, uid: u32, held: Holdings) -> Vec<QuotaUsage> {
        let total = |quota: &str, used: u64, limit: u64| QuotaUsage {
            quota: quota.into(),
            uid: None,
            used,
            limit,
        };
        let mine = |quota: &str, used: u64, limit: u64| QuotaUsage {
            quota: quota.into(),
            uid: Some(uid),
            used,
            limit,
        };
        let mut usage = vec![
            total(
                "max_channels",
                totals.channels as u64,
                self.max_channels as u64,
            ),
            total(
                "max_clients",
                totals.clients as u64,
                self.max_clients as u64,
            ),
            total("max_ring_bytes", totals.ring_bytes, self.max_ring_bytes),
        ];
        if uid != 0 {
            usage.extend([
                mine(
                    "per_uid.max_channels",
                    held.channels as u64,
                    self.per_uid.max_channels as u64,
                ),
                mine(
                    "per_uid.max_clients",
                    held.clients as u64,
                    self.per_uid.max_clients as u64,
                ),
                mine(
                    "per_uid.max_ring_bytes",
                    held.ring_bytes,
                    self.per_uid.max_ring_bytes,
                ),
                mine(
                    "per_uid.max_durable_consumers",
                    held.durable_consumers as u64,
                    self.per_uid.max_durable_consumers as u64,
                ),
            ]);
        }
        usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn quotas() -> Quotas {
        let config = Config {
            per_uid: PerUidQuotas {
                max_clients: 2,
                max_channels: 1,
                max_ring_bytes: 8192,
                max_attaches_per_sec: 3,
                max_durable_consumers: 1,
            },
            max_ring_bytes: 1 << 20,
            ..Config::default()
        };
        Quotas::from_config(&config)
    }

    #[test]
    fn refusals_name_the_quota() {
        let q = quotas();
        let held = Holdings {
            clients: 2,
            channels: 1,
            ring_bytes: 4096,
            durable_consumers: 0,
        };
        let err = q.admit_durable_consumer(1000, 1).unwrap_err();
        assert!(
            err.contains("per_uid.max_durable_consumers = 1") && err.contains("uid 1000"),
            "{err}"
        );
        assert!(
            q.admit_durable_consumer(0, 1).is_ok(),
            "root is only held to totals"
        );
        let err = q.admit_client(1000, held.clients, 0).unwrap_err();
        assert!(
            err.contains("per_uid.max_clients = 2") && err.contains("uid 1000"),
            "{err}"
        );
        assert!(
            q.admit_client(0, held.clients, 0).is_ok(),
            "root is only held to totals"
        );
        let err = q
            .admit_channel(1000, 4096, held, Totals::default())
            .unwrap_err();
        assert!(err.contains("per_uid.max_channels = 1"), "{err}");
        let err = q
            .admit_channel(
                1000,
                8192,
                Holdings {
                    channels: 0,
                    ..held
                },
                Totals::default(),
            )
            .unwrap_err();
        assert!(err.contains("per_uid.max_ring_bytes = 8KiB"), "{err}");
        let totals = Totals {
            ring_bytes: 1 << 20,
            ..Totals::default()
        };
        let err = q
            .admit_channel(0, 4096, Holdings::default(), totals)
            .unwrap_err();
        assert!(err.contains("max_ring_bytes = 1MiB"), "{err}");
    }

    #[test]
    fn attach_rate_is_a_token_bucket() {
        let mut q = quotas();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(q.admit_attach(1000, t0).is_ok());
        }
        let err = q.admit_attach(1000, t0).unwrap_err();
        assert!(err.contains("per_uid.max_attaches_per_sec = 3"), "{err}");
        assert!(
            q.admit_attach(1001, t0).is_ok(),
            "other uids are not affected"
        );
        assert!(
            q.admit_attach(1000, t0 + Duration::from_millis(400))
                .is_ok(),
            "refilled"
        );
    }
}
