//! Channels kept in systemd's file-descriptor store, so that they, and the unread data in their
//! rings, survive a restart or crash of the broker.
//!
//! A one-to-one channel is stored as fds named `ch.NAME.ring` (the ring memfd), `ch.NAME.meta`
//! (a sealed memfd holding the name, capacity, origin, owner and access as JSON) and, once
//! someone has attached, `ch.NAME.data` and `ch.NAME.space` (the eventfds).
//!
//! A fan-out channel (several producers or consumers) keeps what outlives its clients: its
//! producer slots' eventfds `ch.NAME/pP.space`, and for each durable queue (and the single
//! queue of a `max_consumers = 1` channel) its eventfd `ch.NAME/qQ.data` and a ring per slot
//! `ch.NAME/qQ/pP.ring`; its metadata `ch.NAME/mN.meta` also lists the slots and queues, and is
//! replaced (new serial first, then the old one removed) when they change. Anonymous consumers'
//! queues are not kept: they end with their connections. Channel names never contain `/`.
//!
//! On start, systemd hands everything back through `LISTEN_FDS`/`LISTEN_FDNAMES`; each group is
//! checked (seals, sizes, fd types, metadata) and a bad one is logged, closed and removed from
//! the store, never trusted. Outside systemd (`NOTIFY_SOCKET` unset) nothing is stored.
//!
//! This module stores and forgets; `records` holds what is stored (the record types and the
//! metadata memfd), `restore` checks what systemd hands back and rebuilds channels from it.

mod records;
mod restore;

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use sd_notify::NotifyState;
use slog::{error, info, warn, Logger};

use crate::channel::Channel;

use records::{stored_meta, write_meta, write_meta_json, FanoutRecord};
pub use records::{DurableParts, QueueRecord, RestoredQueue};
use restore::{assemble, inode_of, StoredFd};

const PREFIX: &str = "ch.";
const PARTS: [&str; 5] = ["ring", "ack", "data", "space", "meta"];

pub struct FdStore {
    enabled: bool,
    fanout: HashMap<String, FanoutRecord>,
    log: Logger,
}

impl FdStore {
    pub fn new(log: Logger) -> FdStore {
        FdStore {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            fanout: HashMap::new(),
            log,
        }
    }

    /// Hands the channel's fds to systemd to keep (a fan-out channel: what changed since).
    pub fn save(&mut self, channel: &Channel) {
        if !self.enabled {
            return;
        }
        let saved = if channel.meta.is_fanout() {
            self.try_sync_fanout(channel)
        } else {
            self.try_save(channel)
        };
        if let Err(err) = saved {
            warn!(self.log, "cannot save channel in systemd's fd store; it will not survive a restart";
                "channel" => channel.name(), "error" => %err);
        }
    }

    /// Stores a restored channel whose rings were replaced: a fan-out channel's sync sees the
    /// new inodes; a one-to-one channel's ring entry is swapped.
    fn resave(&mut self, channel: &Channel) {
        if !channel.meta.is_fanout() {
            self.remove(&fd_name(channel.name(), "ring"));
            self.remove(&fd_name(channel.name(), "ack"));
        }
        self.save(channel);
    }

    fn try_save(&self, channel: &Channel) -> std::io::Result<()> {
        let meta = write_meta(&stored_meta(channel))?;
        if let Some((lane, _)) = channel.single_ring() {
            self.store(
                &fd_name(channel.name(), "ring"),
                lane.files.ring.as_file().as_fd(),
            )?;
            if let Some(ack) = &lane.files.ack {
                self.store(&fd_name(channel.name(), "ack"), ack.as_file().as_fd())?;
            }
        }
        self.store(&fd_name(channel.name(), "meta"), meta.as_file().as_fd())?;
        self.try_save_wake(channel)
    }

    /// Hands systemd a one-to-one channel's eventfds, made at its first attach.
    pub fn save_wake(&self, channel: &Channel) {
        if !self.enabled {
            return;
        }
        if let Err(err) = self.try_save_wake(channel) {
            warn!(self.log, "cannot save channel eventfds in systemd's fd store";
                "channel" => channel.name(), "error" => %err);
        }
    }

    fn try_save_wake(&self, channel: &Channel) -> std::io::Result<()> {
        if let Some((_, Some((data_ready, space_ready)))) = channel.single_ring() {
            self.store(&fd_name(channel.name(), "data"), data_ready)?;
            self.store(&fd_name(channel.name(), "space"), space_ready)?;
        }
        Ok(())
    }

    /// Brings the store in line with a fan-out channel's durable parts: new fds and metadata
    /// first, then what is gone is removed, so a crash in between loses nothing.
    fn try_sync_fanout(&mut self, channel: &Channel) -> std::io::Result<()> {
        let Some(parts) = channel.durable_parts() else {
            return Ok(());
        };
        let name = channel.name();
        let mut meta = stored_meta(channel);
        meta.slots = parts.slots;
        meta.queues = parts.queues;
        meta.next_queue_id = parts.next_queue_id;
        let (totals, seen) = channel.stored_counts();
        meta.totals = Some(totals);
        meta.seen = seen;
        let json = serde_json::to_vec(&meta).map_err(std::io::Error::other)?;
        let desired: BTreeMap<String, BorrowedFd<'_>> = parts
            .fds
            .into_iter()
            .map(|(suffix, fd)| (fanout_name(name, &suffix), fd))
            .collect();
        let mut record = self.fanout.remove(name).unwrap_or_default();
        let result = self.apply_fanout(name, &mut record, &desired, &json);
        self.fanout.insert(name.to_string(), record);
        result
    }

    fn apply_fanout(
        &self,
        channel: &str,
        record: &mut FanoutRecord,
        desired: &BTreeMap<String, BorrowedFd<'_>>,
        json: &[u8],
    ) -> std::io::Result<()> {
        for (fd_name, fd) in desired {
            let inode = inode_of(*fd);
            match record.names.get(fd_name) {
                Some(stored) if *stored == inode => continue,
                // A replaced ring: systemd keys entries by name only, so the old one goes
                // first (a crash right here loses that ring's unread data, nothing else).
                Some(_) => self.remove(fd_name),
                None => {}
            }
            self.store(fd_name, *fd)?;
            record.names.insert(fd_name.clone(), inode);
        }
        if record.meta_json != json {
            let old = record.meta_name(channel);
            let memfd = write_meta_json(channel, json)?;
            let serial = record.meta_serial + 1;
            self.store(
                &fanout_name(channel, &format!("m{serial}.meta")),
                memfd.as_file().as_fd(),
            )?;
            record.meta_serial = serial;
            record.meta_json = json.to_vec();
            if let Some(old) = old {
                self.remove(&old);
            }
        }
        let gone: Vec<String> = record
            .names
            .keys()
            .filter(|n| !desired.contains_key(*n))
            .cloned()
            .collect();
        for fd_name in gone {
            self.remove(&fd_name);
            record.names.remove(&fd_name);
        }
        Ok(())
    }

    fn store(&self, name: &str, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        sd_notify::notify_with_fds(&[NotifyState::FdStore, NotifyState::FdName(name)], &[fd])
    }

    /// Removes a dropped channel's fds from the store.
    pub fn forget(&mut self, channel: &str) {
        if !self.enabled {
            return;
        }
        for part in PARTS {
            self.remove(&fd_name(channel, part));
        }
        if let Some(record) = self.fanout.remove(channel) {
            for name in record.names.keys().chain(record.meta_name(channel).iter()) {
                self.remove(name);
            }
        }
    }

    fn remove(&self, name: &str) {
        if let Err(err) =
            sd_notify::notify(&[NotifyState::FdStoreRemove, NotifyState::FdName(name)])
        {
            warn!(self.log, "cannot remove fd from systemd's fd store"; "fd_name" => name,
                "error" => %err);
        }
    }

    /// Rebuilds the channels systemd passed back. Bad entries are logged and discarded.
    pub fn restore(&mut self, stored: Vec<(OwnedFd, String)>) -> Vec<Channel> {
        let mut groups: BTreeMap<String, Vec<StoredFd>> = BTreeMap::new();
        for (fd, name) in stored {
            match parse_name(&name) {
                Some((channel, path, part)) => groups.entry(channel).or_default().push(StoredFd {
                    path,
                    part,
                    name,
                    fd,
                }),
                None => {
                    warn!(self.log, "discarding unknown fd passed by systemd"; "fd_name" => &name);
                    self.remove(&name);
                }
            }
        }
        let mut channels = Vec::new();
        for (name, entries) in groups {
            let names: Vec<String> = entries.iter().map(|e| e.name.clone()).collect();
            match assemble(&name, entries) {
                Ok(restored) => {
                    for stale in &restored.stale {
                        warn!(self.log, "removing stale fd of a stored channel"; "fd_name" => stale);
                        self.remove(stale);
                    }
                    let channel = restored.channel;
                    if let Some(record) = restored.fanout {
                        self.fanout.insert(name.clone(), record);
                    }
                    for ring in &restored.replaced {
                        warn!(self.log, "replaced a stored ring a client had scribbled on; its unread data is lost";
                            "channel" => &name, "ring" => ring);
                    }
                    if !restored.replaced.is_empty() {
                        self.resave(&channel);
                    }
                    let unread = channel.info().bytes_unread;
                    info!(self.log, "channel restored from systemd's fd store";
                        "channel" => &name, "capacity" => channel.capacity(), "bytes_unread" => unread);
                    channels.push(channel);
                }
                Err(reason) => {
                    error!(self.log, "discarding stored channel"; "channel" => &name, "reason" => &reason);
                    for fd_name in names {
                        self.remove(&fd_name);
                    }
                }
            }
        }
        channels
    }
}

fn fd_name(channel: &str, part: &str) -> String {
    format!("{PREFIX}{channel}.{part}")
}

fn fanout_name(channel: &str, suffix: &str) -> String {
    format!("{PREFIX}{channel}/{suffix}")
}

/// `ch.NAME.PART` or `ch.NAME/PATH.PART` -> (NAME, PATH or "", PART).
fn parse_name(name: &str) -> Option<(String, String, &'static str)> {
    let (left, part) = name.strip_prefix(PREFIX)?.rsplit_once('.')?;
    let part = PARTS.iter().find(|p| **p == part)?;
    let (channel, path) = left.split_once('/').unwrap_or((left, ""));
    Some((channel.to_string(), path.to_string(), part))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_for_both_shapes_and_dotted_channel_names() {
        assert_eq!(
            parse_name("ch.cam.front.ring"),
            Some(("cam.front".into(), String::new(), "ring"))
        );
        assert_eq!(
            parse_name("ch.cam.front/q3/p1.ring"),
            Some(("cam.front".into(), "q3/p1".into(), "ring"))
        );
        assert_eq!(
            parse_name("ch.cam/m12.meta"),
            Some(("cam".into(), "m12".into(), "meta"))
        );
        assert_eq!(parse_name("ch.cam.bogus"), None);
        assert_eq!(parse_name("control"), None);
    }
}
