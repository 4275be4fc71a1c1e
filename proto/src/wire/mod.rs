//! The control-socket wire protocol, version 4 (see `PROTOCOL.md` at the repository root).
//! Version 2 added many producers and consumers per channel, version 3 ring layout 2 (sealed
//! frames, see [`ring`](crate::ring)). A broker still answers older clients, and tells them in
//! an `unsupported_version` error when a channel needs a newer version.
//!
//! Every message is a 16-byte little-endian header followed by a UTF-8 JSON body:
//!
//! ```text
//! offset size field
//!      0    4 magic    b"SHMB"
//!      4    2 version  3 (1 and 2 still accepted; replies carry the request's version)
//!      6    2 kind     1 = request, 2 = reply, 3 = event
//!      8    4 id       chosen by the client, echoed in the reply; 0 for events
//!     12    4 length   body bytes (requests <= 64 KiB, replies and events <= 16 MiB)
//! ```
//!
//! Every request gets exactly one reply with the same id. File descriptors (an `attach` reply's
//! ring and eventfds) travel as SCM_RIGHTS on the first byte of the reply that describes them.
//!
//! This module holds the framing (constants, the header, encoding); the messages are in
//! `messages` (requests, replies, events and the values they share) and the bodies of replies
//! in `bodies` (what `attach`, `info`, `list`, `status` and friends return). All are re-exported
//! here, so every type keeps its path `wire::Name`.

mod bodies;
mod messages;

pub use bodies::*;
pub use messages::*;

use serde::Serialize;

/// The four bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"SHMB";
/// The newest protocol version, what this library speaks and the broker answers up to.
pub const PROTOCOL_VERSION: u16 = 5;
/// Oldest version the broker still serves.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// The first version whose clients read ring layout 2.
pub const SEALED_RINGS_VERSION: u16 = 3;
/// The first version whose clients understand the `producer_gone` event.
pub const PRODUCER_GONE_VERSION: u16 = 4;
/// The first version whose clients read ring layout 3 (each ring in two memfds, the other
/// side's mapped read-only, `ack` fds in attach replies and lane events).
pub const SPLIT_RINGS_VERSION: u16 = 5;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 16;
/// Largest request body the broker reads; anything larger is refused before it is buffered.
pub const MAX_REQUEST_BODY: u32 = 64 * 1024;
/// Largest reply or event body a client accepts.
pub const MAX_REPLY_BODY: u32 = 16 * 1024 * 1024;
/// Most producers or consumers one channel may have.
pub const MAX_ENDPOINTS: u32 = 64;
/// Most file descriptors one message carries: a fan-out attach carries its control page and
/// eventfd plus a ring, its ack page and an eventfd per peer.
pub const MAX_FDS_PER_MESSAGE: usize = 2 + 3 * MAX_ENDPOINTS as usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
/// What a frame carries (header bytes 6..8).
pub enum FrameKind {
    /// Client to broker.
    Request = 1,
    /// Broker to client, answering the request with the same id.
    Reply = 2,
    /// Broker to client, unsolicited (id 0).
    Event = 3,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
/// A decoded frame header.
pub struct FrameHeader {
    /// Protocol version of the frame.
    pub version: u16,
    /// What the frame carries.
    pub kind: FrameKind,
    /// Request id, echoed by its reply; 0 for events.
    pub id: u32,
    /// Body bytes that follow the header.
    pub length: u32,
}

/// Why a header could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("not a shmem-broker frame (bad magic {0:02x?})")]
    /// The first four bytes are not [`MAGIC`].
    BadMagic([u8; 4]),
    #[error("unknown frame kind {0}")]
    /// The kind field is not 1, 2 or 3.
    BadKind(u16),
    /// The body is longer than allowed.
    #[error("frame body of {length} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The body length the header announced.
        length: u32,
        /// The limit for this direction.
        limit: u32,
    },
}

impl FrameHeader {
    /// The 16 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&self.version.to_le_bytes());
        out[6..8].copy_from_slice(&(self.kind as u16).to_le_bytes());
        out[8..12].copy_from_slice(&self.id.to_le_bytes());
        out[12..16].copy_from_slice(&self.length.to_le_bytes());
        out
    }

    /// Decodes a header and checks the body length against `max_body`. The version is returned
    /// as sent, so the receiver can answer an unknown version with a proper error reply.
    pub fn decode(bytes: &[u8; HEADER_LEN], max_body: u32) -> Result<FrameHeader, HeaderError> {
        let field = |range: std::ops::Range<usize>| -> [u8; 4] {
            let mut out = [0u8; 4];
            out[..range.len()].copy_from_slice(&bytes[range]);
            out
        };
        let magic = field(0..4);
        if magic != MAGIC {
            return Err(HeaderError::BadMagic(magic));
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        let kind = match u16::from_le_bytes([bytes[6], bytes[7]]) {
            1 => FrameKind::Request,
            2 => FrameKind::Reply,
            3 => FrameKind::Event,
            other => return Err(HeaderError::BadKind(other)),
        };
        let id = u32::from_le_bytes(field(8..12));
        let length = u32::from_le_bytes(field(12..16));
        if length > max_body {
            return Err(HeaderError::TooLarge {
                length,
                limit: max_body,
            });
        }
        Ok(FrameHeader {
            version,
            kind,
            id,
            length,
        })
    }
}

/// Header plus JSON body, ready to write.
pub fn encode_frame(kind: FrameKind, id: u32, body: &impl Serialize) -> Vec<u8> {
    encode_frame_version(PROTOCOL_VERSION, kind, id, body)
}

/// [`encode_frame`] for a peer speaking an older `version`.
pub fn encode_frame_version(
    version: u16,
    kind: FrameKind,
    id: u32,
    body: &impl Serialize,
) -> Vec<u8> {
    // Serializing plain data structs to a Vec cannot fail; fall back to an empty object so a
    // peer still gets a well-formed frame if it ever did.
    let json = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let header = FrameHeader {
        version,
        kind,
        id,
        length: json.len() as u32,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + json.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(&json);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = FrameHeader {
            version: 1,
            kind: FrameKind::Reply,
            id: 7,
            length: 42,
        };
        assert_eq!(FrameHeader::decode(&h.encode(), 100), Ok(h));
    }

    #[test]
    fn header_refuses_garbage_and_giants() {
        let mut bytes = *b"GET / HTTP/1.1\r\n";
        assert!(matches!(
            FrameHeader::decode(&bytes, MAX_REQUEST_BODY),
            Err(HeaderError::BadMagic(_))
        ));
        bytes = FrameHeader {
            version: 1,
            kind: FrameKind::Request,
            id: 1,
            length: u32::MAX,
        }
        .encode();
        assert_eq!(
            FrameHeader::decode(&bytes, MAX_REQUEST_BODY),
            Err(HeaderError::TooLarge {
                length: u32::MAX,
                limit: MAX_REQUEST_BODY
            })
        );
        bytes[6] = 9;
        assert!(matches!(
            FrameHeader::decode(&bytes, MAX_REQUEST_BODY),
            Err(HeaderError::BadKind(9))
        ));
    }
}
