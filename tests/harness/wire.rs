//! Wire protocol (for feeding the broker bytes a well-behaved client never sends).

use serde_json::Value;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

pub const HEADER_LEN: usize = 16;
pub const KIND_REQUEST: u16 = 1;
pub const KIND_REPLY: u16 = 2;

/// A 16-byte frame header: magic, version, kind, request id, body length (little-endian).
pub fn frame_header(version: u16, kind: u16, id: u32, body_len: u32) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[0..4].copy_from_slice(b"SHMB");
    out[4..6].copy_from_slice(&version.to_le_bytes());
    out[6..8].copy_from_slice(&kind.to_le_bytes());
    out[8..12].copy_from_slice(&id.to_le_bytes());
    out[12..16].copy_from_slice(&body_len.to_le_bytes());
    out
}

/// A request frame in the protocol version the library speaks.
pub fn request_frame(id: u32, body: &[u8]) -> Vec<u8> {
    request_frame_version(shmem_broker_client::wire::PROTOCOL_VERSION, id, body)
}

/// A request frame as a client speaking `version` sends it.
pub fn request_frame_version(version: u16, id: u32, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).expect("body fits in u32");
    let mut out = frame_header(version, KIND_REQUEST, id, len).to_vec();
    out.extend_from_slice(body);
    out
}

#[derive(Debug, Clone)]
pub struct Frame {
    pub version: u16,
    pub kind: u16,
    pub id: u32,
    pub body: Vec<u8>,
}

impl Frame {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "frame body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Splits bytes read from the broker into frames; the remainder that is not a whole frame is
/// returned as the second value.
pub fn parse_frames(mut bytes: &[u8]) -> (Vec<Frame>, Vec<u8>) {
    let mut frames = Vec::new();
    while bytes.len() >= HEADER_LEN && &bytes[0..4] == b"SHMB" {
        let len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
        if bytes.len() < HEADER_LEN + len {
            break;
        }
        frames.push(Frame {
            version: u16::from_le_bytes([bytes[4], bytes[5]]),
            kind: u16::from_le_bytes([bytes[6], bytes[7]]),
            id: u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
            body: bytes[HEADER_LEN..HEADER_LEN + len].to_vec(),
        });
        bytes = &bytes[HEADER_LEN + len..];
    }
    (frames, bytes.to_vec())
}

/// What the broker did with a connection we fed something to.
#[derive(Debug)]
pub enum ConnectionEnd {
    /// The broker closed the connection (EOF or reset) after sending these bytes.
    Closed(Vec<u8>),
    /// The connection was still open at the deadline; these bytes had arrived.
    StillOpen(Vec<u8>),
}

/// Reads everything the broker sends until it closes the connection or `timeout` passes.
pub fn read_until_closed(stream: &mut UnixStream, timeout: Duration) -> ConnectionEnd {
    read_until(stream, timeout, false)
}

/// Like [`read_until_closed`], but also returns (as `StillOpen`) as soon as one whole frame
/// has arrived: for abuse that may be answered with an error reply instead of a close.
pub fn read_until_reply_or_closed(stream: &mut UnixStream, timeout: Duration) -> ConnectionEnd {
    read_until(stream, timeout, true)
}

fn read_until(stream: &mut UnixStream, timeout: Duration, stop_at_frame: bool) -> ConnectionEnd {
    let deadline = Instant::now() + timeout;
    let mut received = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return ConnectionEnd::StillOpen(received);
        }
        stream
            .set_read_timeout(Some(left))
            .expect("set a read timeout on the test socket");
        match stream.read(&mut buf) {
            Ok(0) => return ConnectionEnd::Closed(received),
            Ok(n) => {
                received.extend_from_slice(&buf[..n]);
                if stop_at_frame && !parse_frames(&received).0.is_empty() {
                    return ConnectionEnd::StillOpen(received);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return ConnectionEnd::Closed(received)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return ConnectionEnd::StillOpen(received)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("reading from the broker: {e}"),
        }
    }
}

/// Reads one whole frame, failing the test on EOF or timeout.
pub fn read_one_frame(stream: &mut UnixStream, timeout: Duration) -> Frame {
    stream
        .set_read_timeout(Some(timeout))
        .expect("set a read timeout on the test socket");
    let mut header = [0u8; HEADER_LEN];
    stream
        .read_exact(&mut header)
        .unwrap_or_else(|e| panic!("reading a reply header from the broker: {e}"));
    assert_eq!(
        &header[0..4],
        b"SHMB",
        "reply does not start with the magic: {header:02x?}"
    );
    let len = u32::from_le_bytes([header[12], header[13], header[14], header[15]]) as usize;
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .unwrap_or_else(|e| panic!("reading a {len}-byte reply body from the broker: {e}"));
    let (mut frames, rest) = parse_frames(&[header.to_vec(), body].concat());
    assert!(rest.is_empty(), "frame parser left bytes");
    frames.pop().expect("one frame was read")
}

/// Writes all of `bytes`, tolerating the broker closing the connection half-way (EPIPE or
/// ECONNRESET): whether it reads everything we send is its business.
pub fn write_tolerating_close(stream: &mut UnixStream, bytes: &[u8]) {
    match stream.write_all(bytes) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) => {}
        Err(e) => panic!("writing to the broker: {e}"),
    }
}
