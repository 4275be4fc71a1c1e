//! One connection to the broker: framed requests and replies, fds on replies, events.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::fdpass::{recv_with_fds, send_with_fds};
use crate::wire::{
    encode_frame, ErrorBody, Event, FrameHeader, FrameKind, Reply, Request, HEADER_LEN,
    MAX_REPLY_BODY, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};

/// How long a request watches for its reply before blocking, and how much of that without
/// yielding the CPU.
const REPLY_SPIN: Duration = Duration::from_micros(60);
const REPLY_SPIN_BEFORE_YIELDING: Duration = Duration::from_micros(5);

/// A broker event and the fds that came with it (a new lane's ring and eventfd).
pub(crate) type EventWithFds = (Event, Vec<OwnedFd>);

pub(crate) struct Connection {
    stream: UnixStream,
    path: PathBuf,
    next_id: u32,
    /// Events that arrived while waiting for a reply, oldest first.
    pending_events: std::collections::VecDeque<EventWithFds>,
}

/// A reply's result with the fds that came with it.
pub(crate) struct Answer {
    pub result: Option<Box<serde_json::value::RawValue>>,
    pub fds: Vec<OwnedFd>,
}

impl Answer {
    /// The result decoded straight from its JSON text into `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        let text = self.result.as_ref().map_or("null", |raw| raw.get());
        serde_json::from_str(text)
            .map_err(|e| Error::Protocol(format!("unexpected reply shape: {e}")))
    }
}

impl Connection {
    pub fn connect(path: &Path) -> Result<Connection> {
        let stream = UnixStream::connect(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => Error::BrokerNotRunning {
                path: path.to_path_buf(),
                source,
            },
            _ => Error::io(
                format!("cannot connect to broker at {}", path.display()),
                source,
            ),
        })?;
        Ok(Connection {
            stream,
            path: path.to_path_buf(),
            next_id: 1,
            pending_events: Default::default(),
        })
    }

    /// Bounds how long a request waits on the broker (`None`: as long as it takes).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        self.stream
            .set_read_timeout(timeout)
            .and_then(|()| self.stream.set_write_timeout(timeout))
            .map_err(|e| Error::io("setting broker connection timeout", e))
    }

    pub fn socket(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// Sends `request` and waits for its reply. Broker refusals become [`Error::Broker`].
    pub fn call(&mut self, request: &Request) -> Result<Answer> {
        let (body, fds) = self.exchange(request)?;
        let reply = parse_reply(&body)?;
        Ok(Answer {
            result: reply.result,
            fds,
        })
    }

    /// Sends `request` and returns the reply frame's body and fds (events that came first are
    /// kept for [`read_event`](Self::read_event)).
    fn exchange(&mut self, request: &Request) -> Result<(Vec<u8>, Vec<OwnedFd>)> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let frame = encode_frame(FrameKind::Request, id, request);
        let mut sent = 0;
        while sent < frame.len() {
            match send_with_fds(self.stream.as_fd(), &frame[sent..], &[]) {
                Ok(n) => sent += n,
                Err(err) => return Err(self.refusal_or(err)),
            }
        }
        self.await_reply_briefly();
        loop {
            let (header, body, fds) = self.read_frame()?;
            match header.kind {
                FrameKind::Event => {
                    if let Ok(event) = serde_json::from_slice(&body) {
                        self.pending_events.push_back((event, fds));
                    }
                }
                // Id 0: the broker refused the connection itself (a quota, a framing error).
                FrameKind::Reply if header.id == id || header.id == 0 => return Ok((body, fds)),
                other => {
                    return Err(Error::Protocol(format!(
                        "unexpected {other:?} frame with id {} while waiting for reply {id}",
                        header.id
                    )))
                }
            }
        }
    }

    /// Watches for the reply for a few tens of microseconds before blocking on it: the broker
    /// usually answers within that, and being woken from a blocking read costs a scheduler
    /// wake-up (40 us on a small VM, more than the attach itself). After the first few
    /// microseconds it yields the CPU between looks, in case the broker runs on this one.
    fn await_reply_briefly(&self) {
        let start = std::time::Instant::now();
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        while start.elapsed() < REPLY_SPIN {
            let mut fds = [rustix::event::PollFd::new(
                &self.stream,
                rustix::event::PollFlags::IN,
            )];
            if !matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(0)) {
                return;
            }
            if start.elapsed() >= REPLY_SPIN_BEFORE_YIELDING {
                std::thread::yield_now();
            }
        }
    }

    /// Like [`call`](Self::call), decoding the result into `T`: in one pass over the reply,
    /// where [`Reply`] would first scan a result of megabytes (a list of 10,000 channels) to
    /// keep it as raw text. A reply that does not decode so is decoded again the two-pass way,
    /// for the same errors as [`call`](Self::call) and [`Answer::decode`] give.
    pub fn call_for<T: DeserializeOwned>(&mut self, request: &Request) -> Result<T> {
        let (body, fds) = self.exchange(request)?;
        if let Ok(reply) = serde_json::from_slice::<TypedReply<T>>(&body) {
            broker_error(reply.ok, reply.error)?;
            if let Some(result) = reply.result {
                return Ok(result);
            }
        }
        let reply = parse_reply(&body)?;
        Answer {
            result: reply.result,
            fds,
        }
        .decode()
    }

    /// Reads one event after `poll` said the socket is readable. `Ok(None)` means the broker
    /// closed the connection (it stopped, crashed or restarted).
    pub fn read_event(&mut self) -> Result<Option<EventWithFds>> {
        if let Some(event) = self.pending_events.pop_front() {
            return Ok(Some(event));
        }
        match self.read_frame() {
            Ok((header, body, fds)) if header.kind == FrameKind::Event => {
                match serde_json::from_slice(&body) {
                    Ok(event) => Ok(Some((event, fds))),
                    Err(e) => Err(Error::Protocol(format!("malformed event: {e}"))),
                }
            }
            Ok(_) => Err(Error::Protocol(
                "unexpected reply on an attached connection".into(),
            )),
            Err(Error::Io { source, .. }) if is_hangup(&source) => Ok(None),
            Err(other) => Err(other),
        }
    }

    pub fn has_pending_event(&self) -> bool {
        !self.pending_events.is_empty()
    }

    pub fn take_pending_event(&mut self) -> Option<EventWithFds> {
        self.pending_events.pop_front()
    }

    fn read_frame(&mut self) -> Result<(FrameHeader, Vec<u8>, Vec<OwnedFd>)> {
        let mut fds = Vec::new();
        let mut header_bytes = [0u8; HEADER_LEN];
        self.read_exact(&mut header_bytes, &mut fds)?;
        let header = FrameHeader::decode(&header_bytes, MAX_REPLY_BODY)
            .map_err(|e| Error::Protocol(e.to_string()))?;
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&header.version) {
            return Err(Error::Protocol(format!(
                "broker speaks protocol version {}, this client speaks {PROTOCOL_VERSION}",
                header.version
            )));
        }
        let mut body = vec![0u8; header.length as usize];
        self.read_exact(&mut body, &mut fds)?;
        Ok((header, body, fds))
    }

    fn read_exact(&mut self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> Result<()> {
        let mut filled = 0;
        while filled < buf.len() {
            match recv_with_fds(self.stream.as_fd(), &mut buf[filled..], fds) {
                Ok(0) => {
                    return Err(self.lost(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the broker closed the connection",
                    )))
                }
                Ok(n) => filled += n,
                Err(e) => return Err(self.lost(e)),
            }
        }
        Ok(())
    }

    /// The broker closed the connection before our request went out. It may have said why
    /// first (a quota refusing the connection replies with id 0, then hangs up): report that
    /// rather than the broken pipe. Otherwise the error says the request was not sent.
    fn refusal_or(&mut self, send_error: io::Error) -> Error {
        // Only a closed peer guarantees the read below cannot block.
        let closed = matches!(
            send_error.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        );
        if let Some(Ok((header, body, _))) = closed.then(|| self.read_frame()) {
            if header.kind == FrameKind::Reply {
                if let Ok(Reply {
                    error: Some(error), ..
                }) = serde_json::from_slice::<Reply>(&body)
                {
                    return Error::Broker {
                        code: error.code,
                        message: error.message,
                    };
                }
            }
        }
        self.lost(send_error)
    }

    fn lost(&self, source: io::Error) -> Error {
        Error::io(
            format!("connection to broker at {}", self.path.display()),
            source,
        )
    }
}

/// A reply with its result decoded straight into `T` ([`Connection::call_for`]).
#[derive(serde::Deserialize)]
struct TypedReply<T> {
    ok: bool,
    #[serde(default = "Option::default")]
    result: Option<T>,
    #[serde(default)]
    error: Option<ErrorBody>,
}

/// A reply frame's body, its result kept as raw text; a failure becomes [`Error::Broker`].
fn parse_reply(body: &[u8]) -> Result<Reply> {
    let mut reply: Reply = serde_json::from_slice(body)
        .map_err(|e| Error::Protocol(format!("malformed reply: {e}")))?;
    broker_error(reply.ok, reply.error.take())?;
    Ok(reply)
}

/// The broker's refusal, if the reply is one.
fn broker_error(ok: bool, error: Option<ErrorBody>) -> Result<()> {
    match error.filter(|_| !ok) {
        Some(error) => Err(Error::Broker {
            code: error.code,
            message: error.message,
        }),
        None => Ok(()),
    }
}

fn is_hangup(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
}
