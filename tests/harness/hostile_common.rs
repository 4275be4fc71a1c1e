//! Helpers shared by the hostile-client tests (tests/hostile_*.rs): raw requests on a raw
//! connection, and numbered test payloads.

use serde_json::Value;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::{read_one_frame, request_frame, stamp, KIND_REPLY, WAIT};

pub fn connect_raw(socket: &Path) -> UnixStream {
    UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()))
}

/// Sends one request on a raw connection and returns the reply body (which must carry `id`).
pub fn call(stream: &mut UnixStream, id: u32, request: &Value) -> Value {
    stream
        .write_all(&request_frame(id, request.to_string().as_bytes()))
        .unwrap_or_else(|e| panic!("send {request}: {e}"));
    let reply = read_one_frame(stream, WAIT);
    assert_eq!(
        (reply.kind, reply.id),
        (KIND_REPLY, id),
        "reply to {request}"
    );
    reply.json()
}

/// Test payload `i`: a numbered message (testkit) of `len` bytes, at least its header.
pub fn payload(i: u64, len: usize) -> Vec<u8> {
    stamp::numbered(0, i, len.max(stamp::HEADER))
}
