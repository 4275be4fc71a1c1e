//! Arbitrary client bytes into the broker's request decoder, in arbitrary chunk splits.
//!
//! Input: `[split_mode, split_seed, stream...]`. The stream is fed to a `RequestDecoder` in
//! chunks whose sizes come from the first two bytes (1-byte drips, odd sizes, whole-socket
//! reads...), either pushed whole or the way a broker session reads (at most `room()` bytes,
//! then `push`), draining `next_input()` after each.
//!
//! Checks:
//! * nothing panics;
//! * the decoder never holds more than `MAX_BUFFERED` bytes (`room()` would overflow), `push`
//!   takes exactly what fits, and `room()` accounts for every byte;
//! * a full buffer always yields an input (the decoder cannot wedge a connection);
//! * the inputs, up to the first one that closes the connection, are the same whatever the
//!   chunking (compared with feeding the stream in maximal pieces);
//! * each input carries the id of the frame it is about (0 for bad magic), errors carry a
//!   message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shmem_broker_client::wire::{HEADER_LEN, MAGIC};
use shmem_broker_daemon::decoder::{Input, RequestDecoder, MAX_BUFFERED};

/// What one input was, in comparable form.
#[derive(Debug, PartialEq)]
enum Seen {
    Request(u32, String),
    Invalid(u32, String, bool),
}

fn describe(input: &Input) -> Seen {
    match input {
        Input::Request { id, request, .. } => Seen::Request(*id, format!("{request:?}")),
        Input::Invalid {
            id,
            code,
            message,
            close,
        } => {
            assert!(!message.is_empty(), "error without a message");
            Seen::Invalid(*id, format!("{code:?}"), *close)
        }
    }
}

struct SplitRng(u32);

impl SplitRng {
    fn next(&mut self) -> u32 {
        // xorshift32; never zero.
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }
}

/// How a chunk reaches the decoder.
#[derive(Clone, Copy, PartialEq)]
enum How {
    /// `push` of the whole chunk; the decoder takes what fits.
    Push,
    /// What a broker session does: read at most `room()` bytes, then `push` them, which must
    /// take all of them.
    Session,
}

/// Feeds `stream` in chunks chosen by `next_chunk`, returning every input up to and including
/// the first one after which the broker hangs up (or the end of the stream).
fn decode(stream: &[u8], mut next_chunk: impl FnMut() -> (usize, How)) -> Vec<Seen> {
    let mut decoder = RequestDecoder::default();
    let mut seen = Vec::new();
    let mut at = 0;
    loop {
        while let Some(input) = decoder.next_input() {
            let closing = matches!(input, Input::Invalid { close: true, .. });
            seen.push(describe(&input));
            if closing {
                return seen;
            }
        }
        // `room()` is MAX_BUFFERED - held: it would overflow (panic here) past the limit.
        let room = decoder.room();
        assert!(
            room > 0,
            "decoder full without a complete frame: connection wedged"
        );
        assert_eq!(room == MAX_BUFFERED, decoder.is_empty());
        if at == stream.len() {
            return seen;
        }
        let (want, how) = next_chunk();
        let chunk = &stream[at..(at + want.max(1)).min(stream.len())];
        let taken = match how {
            How::Push => {
                let taken = decoder.push(chunk);
                assert_eq!(taken, chunk.len().min(room), "push took the wrong amount");
                taken
            }
            How::Session => {
                let n = chunk.len().min(room);
                assert_eq!(
                    decoder.push(&chunk[..n]),
                    n,
                    "push refused bytes within room()"
                );
                n
            }
        };
        assert_eq!(decoder.room(), room - taken);
        at += taken;
    }
}

/// Walks the stream frame by frame alongside the inputs: each must carry its frame's id.
fn check_ids(stream: &[u8], seen: &[Seen]) {
    let mut at = 0;
    for item in seen {
        let frame = &stream[at.min(stream.len())..];
        let magic_ok = frame.len() >= 4 && frame[..4] == MAGIC;
        let expected = if magic_ok && frame.len() >= 12 {
            u32::from_le_bytes(frame[8..12].try_into().unwrap())
        } else {
            0
        };
        let (id, closing) = match item {
            Seen::Request(id, _) => (*id, false),
            Seen::Invalid(id, _, close) => (*id, *close),
        };
        assert_eq!(
            id, expected,
            "input at stream offset {at} carries the wrong id"
        );
        if closing {
            return;
        }
        assert!(frame.len() >= HEADER_LEN, "an input from half a header");
        let length = u32::from_le_bytes(frame[12..16].try_into().unwrap()) as usize;
        at += HEADER_LEN + length;
        assert!(at <= stream.len(), "an input from half a frame");
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (mode, seed, stream) = (data[0], data[1], &data[2..]);

    // Reference: maximal pieces through `push`.
    let reference = decode(stream, || (MAX_BUFFERED, How::Push));
    check_ids(stream, &reference);

    // The fuzzer's chunking: sizes up to `max`, through `push` or the session's way.
    let mut rng = SplitRng((u32::from(seed) + 1).wrapping_mul(0x9E37_79B9) | 1);
    let max = match mode & 7 {
        0 => 1,
        1 => 3,
        2 => 16,
        3 => 17,
        4 => 100,
        5 => 4096,
        6 => 65_000,
        _ => MAX_BUFFERED + 1,
    };
    let mix = mode >> 3;
    let chunked = decode(stream, || {
        let size = (rng.next() as usize % max) + 1;
        let how = if (rng.next() >> 8) as u8 & mix & 1 == 0 {
            How::Session
        } else {
            How::Push
        };
        (size, how)
    });
    assert_eq!(
        reference, chunked,
        "the same bytes decoded differently when split differently"
    );
});
