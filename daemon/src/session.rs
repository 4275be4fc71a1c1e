//! One client connection: its credentials, the bytes read but not yet framed, and the replies
//! not yet written. Sockets are non-blocking; nothing here ever waits on a client.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use shmem_broker_proto::fdpass::send_with_fds;
use shmem_broker_proto::wire::{
    encode_frame_version, Event, FrameKind, Reply, PRODUCER_GONE_VERSION, PROTOCOL_VERSION,
};
use std::io::IoSliceMut;
use std::mem::MaybeUninit;

use crate::channel::SessionId;
pub use crate::decoder::Input;
use crate::decoder::RequestDecoder;
use crate::peer::PeerCredentials;

/// Replies a client may leave unread before it is disconnected. A well-behaved client reads
/// each reply before its next request, so this only bounds a hostile one.
const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;
const READ_CHUNK: usize = 16 * 1024;

/// The most fds one `SCM_RIGHTS` message can carry (the kernel's `SCM_MAX_FD`). A stream
/// `recvmsg` returns the fds of at most one message, so a control buffer this size is never
/// truncated: under `MSG_CTRUNC` the kernel itself would drop the fds that did not fit, in the
/// calling thread, where a lingering socket's close would stall the event loop.
pub const SCM_MAX_FD: usize = 253;

pub enum ReadStatus {
    /// Read some bytes, and took `stray_fds`, the descriptors the client sent uninvited: the
    /// caller must hand them to the closer, never drop them on the event loop. `truncated`
    /// says the kernel cut the control data anyway (it should not happen; see [`SCM_MAX_FD`]).
    Data {
        stray_fds: Vec<OwnedFd>,
        truncated: bool,
    },
    WouldBlock,
    Closed,
}

struct Outgoing {
    bytes: Vec<u8>,
    sent: usize,
    fds: Vec<OwnedFd>,
    /// A `lane_added` event for this peer (its ring and eventfd are in `fds`).
    lane_added: Option<u32>,
}

pub struct Session {
    pub id: SessionId,
    pub stream: mio::net::UnixStream,
    pub peer: PeerCredentials,
    /// The channel this connection is attached to; the attachment ends with the connection.
    pub attached: Option<String>,
    decoder: RequestDecoder,
    out: VecDeque<Outgoing>,
    queued_bytes: usize,
    /// Hang up once the queued replies are written.
    pub closing: bool,
    /// The protocol version of the client's last request; replies and events use it.
    pub version: u16,
    opened: Instant,
    completed_requests: u64,
    /// When the bytes now buffered started arriving without forming a whole request.
    partial_since: Option<Instant>,
    /// Set once the client sent `monitor`: what it watches.
    pub monitor: Option<Watch>,
    /// `SO_PASSRIGHTS` was turned off on this connection when it was accepted: from then on
    /// the kernel queues no fd in it (see [`Session::holds_no_fds`]).
    pub refuses_fds: bool,
}

/// A `monitor` connection's subscription.
pub struct Watch {
    /// Only this channel's events (`None`: every channel the client may watch).
    pub channel: Option<String>,
    /// Events left out since the client last kept up, to be told before the next one.
    pub dropped: u64,
}

impl Session {
    pub fn new(id: SessionId, stream: mio::net::UnixStream, peer: PeerCredentials) -> Session {
        Session {
            id,
            stream,
            peer,
            attached: None,
            decoder: RequestDecoder::default(),
            out: VecDeque::new(),
            queued_bytes: 0,
            closing: false,
            version: PROTOCOL_VERSION,
            opened: Instant::now(),
            completed_requests: 0,
            partial_since: None,
            monitor: None,
            refuses_fds: false,
        }
    }

    /// Whether closing this connection's socket is sure to drop no fd a client passed: it
    /// refuses fds since it was accepted, and nothing is left unread in it, so no fd sent
    /// before then either (on a stream socket every fd comes with at least one byte, and the
    /// kernel hands it over with the first byte read). A connection made before the listener
    /// refused fds (socket activation, or the moment between `listen` and the broker turning
    /// the option off) may still hold some until it is read to the end.
    pub fn holds_no_fds(&self) -> bool {
        self.refuses_fds && rustix::io::ioctl_fionread(&self.stream).is_ok_and(|queued| queued == 0)
    }

    /// Reads what the socket has, up to one maximal frame of buffered input. Reads go through
    /// a stack buffer, so a connection only keeps the bytes of a request still in progress.
    pub fn fill(&mut self) -> io::Result<ReadStatus> {
        let mut chunk = [0u8; READ_CHUNK];
        let room = self.decoder.room().min(READ_CHUNK);
        if room == 0 {
            return Ok(ReadStatus::WouldBlock);
        }
        let mut stray_fds = Vec::new();
        let result = recv_with_fds(self.stream.as_fd(), &mut chunk[..room], &mut stray_fds);
        // The broker never asks for fds; the caller gets rid of any off the event loop. No
        // fds come with an error, and a read of 0 bytes with fds is reported as data (the next
        // read sees the end), so none are ever dropped here.
        match result {
            Ok((0, _)) if stray_fds.is_empty() => Ok(ReadStatus::Closed),
            Ok((n, truncated)) => {
                self.decoder.push(&chunk[..n]);
                Ok(ReadStatus::Data {
                    stray_fds,
                    truncated,
                })
            }
            Err(err) => match err.kind() {
                io::ErrorKind::WouldBlock => Ok(ReadStatus::WouldBlock),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
                    Ok(ReadStatus::Closed)
                }
                _ => Err(err),
            },
        }
    }

    /// The fds this session holds: its socket and the fds of replies not sent yet.
    pub fn held_fds(&self) -> usize {
        self.out
            .iter()
            .fold(1usize, |n, o| n.saturating_add(o.fds.len()))
    }

    /// Since when this connection has been waiting for the client to finish a request, if it
    /// is: no request yet and not attached, or part of one buffered.
    pub fn stalled_since(&self) -> Option<Instant> {
        self.partial_since
            .or((self.completed_requests == 0 && self.attached.is_none()).then_some(self.opened))
    }

    /// Takes the next complete frame out of the read buffer.
    pub fn next_input(&mut self) -> Option<Input> {
        let input = self.decoder.next_input();
        if input.is_some() {
            self.completed_requests += 1;
        }
        // Bytes that do not form a whole request yet start the stall clock (or keep it going).
        if self.decoder.is_empty() {
            self.partial_since = None;
        } else if input.is_some() {
            self.partial_since = Some(Instant::now());
        } else {
            self.partial_since.get_or_insert_with(Instant::now);
        }
        input
    }

    /// Queues a frame. Returns false if the client has let too much pile up (hang up on it).
    fn push(
        &mut self,
        kind: FrameKind,
        id: u32,
        body: &impl serde::Serialize,
        fds: Vec<OwnedFd>,
        lane_added: Option<u32>,
    ) -> bool {
        let bytes = encode_frame_version(self.version, kind, id, body);
        self.queued_bytes += bytes.len();
        self.out.push_back(Outgoing {
            bytes,
            sent: 0,
            fds,
            lane_added,
        });
        self.queued_bytes <= MAX_QUEUED_BYTES
    }

    /// More is queued for the client than it may leave unread (`MAX_QUEUED_BYTES`): replies
    /// and events alike, so a client that stops reading is disconnected, not buffered for.
    pub fn over_limit(&self) -> bool {
        self.queued_bytes > MAX_QUEUED_BYTES
    }

    /// Whether the client's protocol version knows `event`: older clients would take an
    /// unknown event for a broken connection.
    pub fn understands(&self, event: &Event) -> bool {
        !matches!(event, Event::ProducerGone { .. }) || self.version >= PRODUCER_GONE_VERSION
    }

    /// Queues an event. A ring announced and then withdrawn before the client read the
    /// announcement is dropped from the queue, fds and all: the client never needs it, and an
    /// endpoint that does not read its connection for a while (an idle producer while consumers
    /// come and go) would otherwise make the broker hold two fds per consumer that ever came.
    pub fn queue_event(&mut self, event: &Event, fds: Vec<OwnedFd>) -> bool {
        if let Event::LaneRemoved { peer, .. } = event {
            let mut freed = 0;
            self.out.retain(|o| {
                let stale = o.sent == 0 && o.lane_added == Some(*peer);
                if stale {
                    freed += o.bytes.len();
                }
                !stale
            });
            self.queued_bytes -= freed;
        }
        let lane_added = match event {
            Event::LaneAdded { peer, .. } => Some(*peer),
            _ => None,
        };
        self.push(FrameKind::Event, 0, event, fds, lane_added)
    }

    /// Bytes queued for the client and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    pub fn queue_reply(&mut self, id: u32, reply: &Reply, fds: Vec<OwnedFd>) -> bool {
        self.push(FrameKind::Reply, id, reply, fds, None)
    }

    /// Writes queued frames until done or the socket is full. True when everything is out.
    pub fn flush(&mut self) -> io::Result<bool> {
        while let Some(front) = self.out.front_mut() {
            let fds: Vec<_> = front.fds.iter().map(|fd| fd.as_fd()).collect();
            match send_with_fds(self.stream.as_fd(), &front.bytes[front.sent..], &fds) {
                Ok(n) => {
                    front.sent += n;
                    if n > 0 {
                        // The fds went with the first byte; they must not be sent twice.
                        front.fds.clear();
                    }
                    if front.sent == front.bytes.len() {
                        self.queued_bytes -= front.bytes.len();
                        self.out.pop_front();
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(err) => return Err(err),
            }
        }
        Ok(true)
    }
}

/// Reads into `buf`, appending received fds (close-on-exec) to `fds`. Returns the byte count
/// and whether the control data was truncated. Unlike the client library's helper, the control
/// buffer holds [`SCM_MAX_FD`] fds, so the kernel never drops fds in this thread.
fn recv_with_fds(
    socket: std::os::fd::BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<(usize, bool)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(SCM_MAX_FD))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        match recvmsg(
            socket,
            &mut [IoSliceMut::new(buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
        ) {
            Ok(msg) => break msg,
            Err(rustix::io::Errno::INTR) => continue,
            Err(err) => return Err(err.into()),
        }
    };
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    Ok((
        msg.bytes,
        msg.flags.contains(rustix::net::ReturnFlags::CTRUNC),
    ))
}
