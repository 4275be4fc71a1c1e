//! One channel: the broker-owned ring memfd, its two eventfds, its access rules and who is
//! attached. The broker keeps the fds for the channel's whole life, so the ring and its unread
//! data outlive any client.

use std::os::fd::{AsFd, OwnedFd};

use rustix::event::{eventfd, EventfdFlags};
use shmem_broker_client::ring::{SharedRing, HEADER_SIZE, LAYOUT_VERSION};
use shmem_broker_client::wire::{AttachInfo, ChannelInfo, Origin, PeerInfo, Role};
use shmem_ipc::mem::mfd::Memfd;

use crate::access::AccessList;
use crate::peer::PeerCredentials;

/// The session an attachment belongs to (the server's connection token).
pub type SessionId = usize;

pub struct Attached {
    pub session: SessionId,
    pub peer: PeerCredentials,
}

/// What identifies a channel and decides who may use it; saved with its fds across restarts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelMeta {
    pub name: String,
    pub origin: Origin,
    pub owner_uid: Option<u32>,
    pub producers: AccessList,
    pub consumers: AccessList,
}

/// The fds that make up a channel's shared state.
pub struct ChannelFds {
    pub memfd: Memfd,
    /// Made at the first attach: a channel nobody has used costs the broker one fd, not three,
    /// so the fd limit allows several times more idle channels.
    pub wake: Option<WakeFds>,
}

/// The two eventfds of a channel.
pub struct WakeFds {
    /// Written by the producer to wake a sleeping consumer.
    pub data_ready: OwnedFd,
    /// Written by the consumer to wake a sleeping producer.
    pub space_ready: OwnedFd,
}

impl WakeFds {
    fn new() -> std::io::Result<WakeFds> {
        let flags = EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK;
        Ok(WakeFds {
            data_ready: eventfd(0, flags)?,
            space_ready: eventfd(0, flags)?,
        })
    }
}

pub struct Channel {
    pub meta: ChannelMeta,
    /// The broker's own mapping, for counters and to flag a drop.
    ring: SharedRing,
    fds: ChannelFds,
    pub producer: Option<Attached>,
    pub consumer: Option<Attached>,
    /// No longer in the config: removed as soon as nobody is attached.
    pub pending_removal: bool,
}

impl Channel {
    pub fn create(meta: ChannelMeta, capacity: u64) -> std::io::Result<Channel> {
        let name = &meta.name;
        let (ring, memfd) = SharedRing::create(name, capacity).map_err(|e| {
            std::io::Error::other(format!("creating ring for channel {name:?}: {e}"))
        })?;
        Ok(Channel::assemble(
            meta,
            ring,
            ChannelFds { memfd, wake: None },
        ))
    }

    /// Rebuilds a channel from fds kept by systemd; `ring` was mapped and checked by the caller.
    pub fn assemble(meta: ChannelMeta, ring: SharedRing, fds: ChannelFds) -> Channel {
        // A waiting flag from before the restart belongs to a client that is gone.
        ring.clear_waiters();
        Channel {
            meta,
            ring,
            fds,
            producer: None,
            consumer: None,
            pending_removal: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.meta.name
    }

    pub fn fds(&self) -> &ChannelFds {
        &self.fds
    }

    pub fn capacity(&self) -> u64 {
        self.ring.capacity()
    }

    pub fn slot(&mut self, role: Role) -> &mut Option<Attached> {
        match role {
            Role::Producer => &mut self.producer,
            Role::Consumer => &mut self.consumer,
        }
    }

    pub fn access(&self, role: Role) -> &AccessList {
        match role {
            Role::Producer => &self.meta.producers,
            Role::Consumer => &self.meta.consumers,
        }
    }

    pub fn is_attached(&self) -> bool {
        self.producer.is_some() || self.consumer.is_some()
    }

    /// Copies of the fds an attach hands out, in the order `AttachInfo::fds` names them, and
    /// whether the eventfds were made just now (so the caller can store them).
    pub fn attach_fds(&mut self) -> std::io::Result<(Vec<OwnedFd>, bool)> {
        let created = self.fds.wake.is_none();
        if created {
            self.fds.wake = Some(WakeFds::new()?);
        }
        let Some(wake) = &self.fds.wake else {
            return Err(std::io::Error::other("channel eventfds missing"));
        };
        let fds = vec![
            self.fds.memfd.as_file().as_fd().try_clone_to_owned()?,
            wake.data_ready.try_clone()?,
            wake.space_ready.try_clone()?,
        ];
        Ok((fds, created))
    }

    /// Fds the broker holds for this channel.
    pub fn open_fds(&self) -> usize {
        if self.fds.wake.is_some() {
            3
        } else {
            1
        }
    }

    pub fn attach_info(&self, role: Role) -> AttachInfo {
        AttachInfo {
            channel: self.meta.name.clone(),
            role,
            capacity: self.capacity(),
            ring_size: HEADER_SIZE + self.capacity(),
            ring_layout: LAYOUT_VERSION,
            fds: vec!["ring".into(), "data_ready".into(), "space_ready".into()],
        }
    }

    /// Frees the slot held by `session`, if any, and returns its role.
    pub fn detach(&mut self, session: SessionId) -> Option<(Role, PeerCredentials)> {
        for role in [Role::Producer, Role::Consumer] {
            let slot = self.slot(role);
            if slot.as_ref().is_some_and(|a| a.session == session) {
                let attached = slot.take()?;
                self.ring.clear_waiters();
                return Some((role, attached.peer));
            }
        }
        None
    }

    /// Marks the ring dropped and wakes both sides so blocked clients notice at once.
    pub fn mark_dropped(&self) {
        self.ring.mark_dropped();
        for fd in self
            .fds
            .wake
            .iter()
            .flat_map(|w| [&w.data_ready, &w.space_ready])
        {
            let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
        }
    }

    pub fn sessions(&self) -> impl Iterator<Item = SessionId> + '_ {
        self.producer
            .iter()
            .chain(self.consumer.iter())
            .map(|a| a.session)
    }

    pub fn info(&self) -> ChannelInfo {
        let stats = self.ring.stats();
        let peer = |role, a: &Attached| PeerInfo {
            pid: a.peer.pid,
            uid: a.peer.uid,
            gid: a.peer.gid,
            role,
        };
        ChannelInfo {
            name: self.meta.name.clone(),
            capacity: self.capacity(),
            origin: self.meta.origin.clone(),
            owner_uid: self.meta.owner_uid,
            producers: self.meta.producers.describe(),
            consumers: self.meta.consumers.describe(),
            peers: self
                .producer
                .iter()
                .map(|a| peer(Role::Producer, a))
                .chain(self.consumer.iter().map(|a| peer(Role::Consumer, a)))
                .collect(),
            messages_written: stats.messages_written,
            bytes_written: stats.bytes_written,
            messages_read: stats.messages_read,
            bytes_unread: stats.bytes_unread,
            pending_removal: self.pending_removal,
        }
    }
}
