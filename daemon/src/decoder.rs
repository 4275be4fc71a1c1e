//! The broker's side of the wire framing: bytes from one client in, requests (or what is wrong
//! with the bytes) out. Pure, so it can be fuzzed without sockets.

use shmem_broker_proto::wire::{
    ErrorCode, FrameHeader, FrameKind, HeaderError, Request, HEADER_LEN, MAGIC, MAX_REQUEST_BODY,
    MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};

/// The next thing a client said.
pub enum Input {
    Request {
        id: u32,
        /// The protocol version the client speaks (answer in the same).
        version: u16,
        request: Request,
    },
    /// Something unacceptable: answer with this error, and hang up if `close`.
    Invalid {
        id: u32,
        code: ErrorCode,
        message: String,
        close: bool,
    },
}

/// Buffers at most one maximal frame (header plus 64 KiB body): a client can never make the
/// broker allocate more, whatever length it claims.
#[derive(Default)]
pub struct RequestDecoder {
    buf: Vec<u8>,
}

/// Most bytes buffered for one client.
pub const MAX_BUFFERED: usize = HEADER_LEN + MAX_REQUEST_BODY as usize;

impl RequestDecoder {
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Bytes that may still be buffered.
    pub fn room(&self) -> usize {
        MAX_BUFFERED - self.buf.len()
    }

    /// Appends bytes; returns how many fit (all of them if no more than `room()`).
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let take = bytes.len().min(MAX_BUFFERED - self.buf.len());
        self.buf.extend_from_slice(&bytes[..take]);
        take
    }

    /// Takes the next complete frame out of the buffer: a request, or what is wrong with the
    /// bytes. `None` until a whole frame has arrived.
    pub fn next_input(&mut self) -> Option<Input> {
        let prefix = self.buf.len().min(MAGIC.len());
        if self.buf[..prefix] != MAGIC[..prefix] {
            return Some(invalid(
                0,
                ErrorCode::BadRequest,
                "not a shmem-broker frame (bad magic)",
                true,
            ));
        }
        let header_bytes: &[u8; HEADER_LEN] = self.buf.get(..HEADER_LEN)?.try_into().ok()?;
        let header = match FrameHeader::decode(header_bytes, MAX_REQUEST_BODY) {
            Ok(header) => header,
            Err(err) => {
                let id = u32::from_le_bytes([
                    header_bytes[8],
                    header_bytes[9],
                    header_bytes[10],
                    header_bytes[11],
                ]);
                let message = match err {
                    HeaderError::TooLarge { length, limit } => {
                        format!("request of {length} bytes exceeds the limit of {limit} bytes")
                    }
                    other => other.to_string(),
                };
                return Some(invalid(id, ErrorCode::BadRequest, &message, true));
            }
        };
        let frame_len = HEADER_LEN + header.length as usize;
        if self.buf.len() < frame_len {
            return None;
        }
        let body: Vec<u8> = self.buf.drain(..frame_len).skip(HEADER_LEN).collect();
        if self.buf.is_empty() {
            // Idle connections hold no buffer: a thousand clients cost a thousand small structs.
            self.buf = Vec::new();
        }
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&header.version) {
            return Some(invalid(
                header.id,
                ErrorCode::UnsupportedVersion,
                &format!(
                    "protocol version {} is not supported; this broker speaks versions {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}",
                    header.version
                ),
                false,
            ));
        }
        if header.kind != FrameKind::Request {
            return Some(invalid(
                header.id,
                ErrorCode::BadRequest,
                "clients may only send requests",
                true,
            ));
        }
        Some(match serde_json::from_slice(&body) {
            Ok(request) => Input::Request {
                id: header.id,
                version: header.version,
                request,
            },
            Err(err) => invalid(
                header.id,
                ErrorCode::BadRequest,
                &format!("malformed request: {err}"),
                false,
            ),
        })
    }
}

fn invalid(id: u32, code: ErrorCode, message: &str, close: bool) -> Input {
    Input::Invalid {
        id,
        code,
        message: message.to_string(),
        close,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shmem_broker_proto::wire::encode_frame;

    #[test]
    fn splits_a_stream_into_requests() {
        let mut bytes = encode_frame(FrameKind::Request, 7, &Request::List);
        bytes.extend(encode_frame(FrameKind::Request, 8, &Request::Status));
        let mut decoder = RequestDecoder::default();
        decoder.push(&bytes[..5]);
        assert!(
            decoder.next_input().is_none(),
            "half a header is not a request"
        );
        decoder.push(&bytes[5..]);
        assert!(matches!(
            decoder.next_input(),
            Some(Input::Request {
                id: 7,
                request: Request::List,
                ..
            })
        ));
        assert!(matches!(
            decoder.next_input(),
            Some(Input::Request {
                id: 8,
                request: Request::Status,
                ..
            })
        ));
        assert!(decoder.next_input().is_none() && decoder.is_empty());
    }

    #[test]
    fn refuses_garbage_giants_and_other_versions() {
        let mut decoder = RequestDecoder::default();
        decoder.push(b"GET / HTTP/1.1\r\n");
        assert!(matches!(
            decoder.next_input(),
            Some(Input::Invalid { close: true, .. })
        ));

        let mut decoder = RequestDecoder::default();
        let header = FrameHeader {
            version: 1,
            kind: FrameKind::Request,
            id: 3,
            length: 0xFFFF_FFF0,
        };
        decoder.push(&header.encode());
        match decoder.next_input() {
            Some(Input::Invalid {
                id: 3,
                close: true,
                message,
                ..
            }) => assert!(message.contains("exceeds")),
            _ => panic!("an oversized length must be refused"),
        }

        let mut decoder = RequestDecoder::default();
        let mut frame = encode_frame(FrameKind::Request, 4, &Request::List);
        frame[4] = 9;
        decoder.push(&frame);
        assert!(matches!(
            decoder.next_input(),
            Some(Input::Invalid {
                id: 4,
                code: ErrorCode::UnsupportedVersion,
                close: false,
                ..
            })
        ));
        assert!(decoder.is_empty(), "the unsupported frame is skipped whole");
    }

    #[test]
    fn never_buffers_more_than_one_frame() {
        let mut decoder = RequestDecoder::default();
        let big = vec![0u8; 10 * MAX_BUFFERED];
        assert_eq!(decoder.push(&big), MAX_BUFFERED);
        assert_eq!(decoder.push(b"more"), 0);
    }
}
