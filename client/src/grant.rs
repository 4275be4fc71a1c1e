//! The attach handshake: asking the broker for a channel on a new connection, checking the
//! shape of its reply, and turning the granted fds into lanes (a lane event's too).

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use crate::connection::Connection;
use crate::control::ControlPage;
use crate::error::{Error, Result};
use crate::lanes::SOLE_PEER;
use crate::ring::{RingFds, SharedRing};
use crate::wire::{AttachInfo, Request, Role};

/// Whether `names` (an attach reply's `fds`) has the shape this library knows: one-to-one
/// `ring [ack] data_ready space_ready`, fan-out `control wait` then `ring [ack] wake` per lane
/// (`ack` is there for layout-3 rings, which may sit beside older ones restored from an fd
/// store).
fn fd_names_make_sense(names: &[String], fanout: bool, lanes: usize) -> bool {
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let Some(rest) = (if fanout {
        names.strip_prefix(&["control", "wait"][..])
    } else {
        Some(&names[..])
    }) else {
        return false;
    };
    let mut rest = rest;
    let mut groups = 0;
    while let Some(after_ring) = rest.strip_prefix(&["ring"][..]) {
        let after_ack = after_ring.strip_prefix(&["ack"][..]).unwrap_or(after_ring);
        let tail: &[&str] = if fanout {
            &["wake"]
        } else {
            &["data_ready", "space_ready"]
        };
        match after_ack.strip_prefix(tail) {
            Some(next) => rest = next,
            None => return false,
        }
        groups += 1;
    }
    rest.is_empty() && groups == if fanout { lanes } else { 1 }
}

/// What an attach handed over: the control page (fan-out channels only) and the lanes.
pub(crate) type Rings = (Option<ControlPage>, Vec<LaneOrFault>);

/// A lane as handed over, or the peer id and why its ring could not be opened: a peer can
/// scribble on a ring's header, and that must cost that lane only.
pub(crate) type LaneOrFault = std::result::Result<Lane, (u32, String)>;

/// One ring as handed over and the eventfd that wakes the peer at its other end.
pub(crate) struct Lane {
    /// Producer id (for a consumer) or consumer queue id (for a producer); [`SOLE_PEER`] in a
    /// one-to-one channel.
    pub peer: u32,
    pub ring: SharedRing,
    pub wake: OwnedFd,
}

/// What one attach request brought back.
pub(crate) struct Grant {
    pub conn: Connection,
    pub info: AttachInfo,
    pub fds: Vec<OwnedFd>,
    /// The reply has the fan-out shape (control page, own eventfd, a ring per peer).
    fanout: bool,
}

impl Grant {
    /// Attaches over a new connection; `patience` bounds the wait for the broker's answer.
    pub fn request(
        socket: &Path,
        channel: &str,
        role: Role,
        name: Option<&str>,
        patience: Option<Duration>,
    ) -> Result<Grant> {
        let mut conn = Connection::connect(socket)?;
        // A new socket has no timeouts: two syscalls an attach without patience can skip.
        if patience.is_some() {
            conn.set_timeout(patience)?;
        }
        let answer = conn.call(&Request::Attach {
            channel: channel.to_string(),
            role,
            name: name.map(str::to_string),
        })?;
        let info: AttachInfo = answer.decode()?;
        let fanout = info.fds.first().map(String::as_str) == Some("control");
        if !fd_names_make_sense(&info.fds, fanout, info.lanes.len())
            || answer.fds.len() != info.fds.len()
        {
            return Err(Error::Protocol(format!(
                "attach reply carries {} fds named {:?}, which is not the shape of a {} attach \
                 with {} lanes",
                answer.fds.len(),
                info.fds,
                if fanout { "fan-out" } else { "one-to-one" },
                info.lanes.len()
            )));
        }
        Ok(Grant {
            conn,
            info,
            fds: answer.fds,
            fanout,
        })
    }

    /// Maps what the broker granted: the control page and a lane per peer of a fan-out
    /// channel, or the one lane of a one-to-one channel (whose wake fd is the eventfd the peer
    /// waits on: `data_ready` for a producer, `space_ready` for a consumer).
    pub fn open(self, channel: &str, role: Role) -> Result<Opened> {
        let fanout = self.fanout;
        let capacity = self.info.capacity;
        let mut fds = NamedFds(self.info.fds.iter().cloned().zip(self.fds).collect());
        let (rings, ring_identity, wait_fd) = if fanout {
            let control_fd = fds.next()?;
            let control = ControlPage::open(&control_fd)
                .map_err(|e| Error::io(format!("control page of channel {channel}"), e))?;
            let wait_fd = nonblocking(fds.next()?)?;
            let mut lanes = Vec::new();
            for lane in &self.info.lanes {
                let (ring, wake) = (fds.next_ring()?, fds.next()?);
                let opened = open_lane(channel, capacity, lane.peer, ring, wake);
                lanes.push(opened.map_err(|e| (lane.peer, e.to_string())));
            }
            ((Some(control), lanes), None, wait_fd)
        } else {
            // One lane, whose wake fd is the eventfd the peer waits on.
            let ring_fd = fds.next_ring()?;
            let data_ready = nonblocking(fds.next()?)?;
            let space_ready = nonblocking(fds.next()?)?;
            let identity = identity(&ring_fd.ring)?;
            let ring = SharedRing::open(ring_fd, capacity).map_err(|e| Error::ring(channel, e))?;
            let (wait_fd, wake) = match role {
                Role::Producer => (space_ready, data_ready),
                Role::Consumer => (data_ready, space_ready),
            };
            let lane = Lane {
                peer: SOLE_PEER,
                ring,
                wake,
            };
            ((None, vec![Ok(lane)]), Some(identity), wait_fd)
        };
        Ok(Opened {
            conn: self.conn,
            info: self.info,
            rings,
            ring_identity,
            wait_fd,
        })
    }
}

/// An attach reply's fds with their names, taken in order.
struct NamedFds(std::collections::VecDeque<(String, OwnedFd)>);

impl NamedFds {
    fn next(&mut self) -> Result<OwnedFd> {
        self.0
            .pop_front()
            .map(|(_, fd)| fd)
            .ok_or_else(|| Error::Protocol("attach reply lost its fds".into()))
    }

    /// A `ring` fd and the `ack` fd after it, if there is one.
    fn next_ring(&mut self) -> Result<RingFds> {
        let ring = self.next()?;
        let ack = match self.0.front() {
            Some((name, _)) if name == "ack" => Some(self.next()?),
            _ => None,
        };
        Ok(RingFds { ring, ack })
    }
}

pub(crate) fn identity(fd: &OwnedFd) -> Result<(u64, u64)> {
    let stat = rustix::fs::fstat(fd).map_err(|e| Error::io("inspecting ring fd", e.into()))?;
    Ok((stat.st_dev, stat.st_ino))
}

/// What [`Grant::open`] made of a grant.
pub(crate) struct Opened {
    pub conn: Connection,
    pub info: AttachInfo,
    pub rings: Rings,
    /// One-to-one channels: the ring memfd's device and inode (see `Attachment`).
    pub ring_identity: Option<(u64, u64)>,
    /// The eventfd this endpoint sleeps on.
    pub wait_fd: OwnedFd,
}

fn nonblocking(fd: OwnedFd) -> Result<OwnedFd> {
    // Sleeping is poll-then-read, so a read must never block even if someone else drained the
    // counter in between.
    rustix::fs::fcntl_setfl(&fd, rustix::fs::OFlags::NONBLOCK)
        .map_err(|e| Error::io("eventfd from broker", e.into()))?;
    Ok(fd)
}

fn open_lane(
    channel: &str,
    capacity: u64,
    peer: u32,
    ring: RingFds,
    wake: OwnedFd,
) -> Result<Lane> {
    Ok(Lane {
        peer,
        ring: SharedRing::open(ring, capacity).map_err(|e| Error::ring(channel, e))?,
        wake: nonblocking(wake)?,
    })
}

/// Turns a lane event's fds into a lane of `channel`.
pub(crate) fn lane_from_event(
    channel: &str,
    capacity: u64,
    peer: u32,
    fds: Vec<OwnedFd>,
) -> Result<Lane> {
    let mut fds = fds.into_iter();
    // A ring, its ack page if it has one (layout 3), and the eventfd.
    let (ring, ack, wake) = match (fds.next(), fds.next(), fds.next(), fds.next()) {
        (Some(ring), Some(wake), None, None) => (ring, None, wake),
        (Some(ring), Some(ack), Some(wake), None) => (ring, Some(ack), wake),
        _ => {
            return Err(Error::Protocol(format!(
                "lane event for peer {peer} of channel {} does not carry a ring and an \
                     eventfd",
                channel
            )))
        }
    };
    open_lane(channel, capacity, peer, RingFds { ring, ack }, wake)
}
