//! Numbered messages that check themselves, and the cheap stamps of the benchmarks.
//!
//! **Numbered messages** (the soak, the fan-out, fault and resume tests): message `seq` of
//! stream `s` has a 16-byte header (`seq | s << 56` u64, length u32, CRC-32 of header and body)
//! and a body of pseudo-random bytes drawn from `(seed, s, seq)`, so a message sent twice is
//! sent identically and a torn, shifted, garbled or mixed-up one is told apart. Tests pick the
//! length ([`numbered`], [`check_numbered`]: the whole message is compared with what was sent);
//! the soak draws it from `(seed, s, seq)` ([`Format`]: 1 B .. 64 KiB, mostly small). Soak
//! messages shorter than the header carry its first bytes (the low bytes of `seq`); their stream
//! is told by their length: stream `s` of `n` only uses short lengths `1 + s + n * i`, so no
//! short message of one stream can pass for another stream's.
//!
//! **End stamps** (the benchmarks): the sequence number (or a send time) in the first 8 bytes
//! and again in the last 8 ([`stamp_ends`], [`check_ends`]). They stay a format of their own
//! because a benchmark must not measure its own stamping: writing and checking them costs the
//! same at 64 B and at 1 MiB, where a CRC or a derived body would cost more than the copy.

pub const HEADER: usize = 16;
/// Sequence numbers below 2^56; the top byte of the header's first word is the stream.
const SEQ_MASK: u64 = (1 << 56) - 1;
/// Longest message shorter than the header.
const SHORT_MAX: u64 = HEADER as u64 - 1;

/// SplitMix64: a well-mixed 64-bit value from a counter.
pub fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Where to look for the sequence number of a message too short to carry it: `expected` first,
/// then down to `low`, then up to `high`.
#[derive(Clone, Copy)]
pub struct Hint {
    pub expected: u64,
    pub low: u64,
    pub high: u64,
}

impl Hint {
    /// Around `next`: the message expected, the one before (delivered again) or a few after
    /// (lost ones in between).
    pub fn around(next: u64) -> Hint {
        Hint {
            expected: next,
            low: next.saturating_sub(1),
            high: next.saturating_add(256),
        }
    }
}

#[derive(Clone, Copy)]
pub struct Format {
    seed: u64,
    /// Streams in this run (1 .. 15).
    streams: u64,
    /// The channel's largest message (README: capacity - 16 bytes); longer draws are cut to it.
    max_len: usize,
}

impl Format {
    pub fn new(seed: u64, streams: u64, capacity: u64) -> Format {
        assert!((1..=SHORT_MAX).contains(&streams), "1 to 15 streams");
        Format {
            seed,
            streams,
            max_len: usize::try_from(capacity.saturating_sub(HEADER as u64))
                .unwrap_or(usize::MAX)
                .max(HEADER),
        }
    }

    /// Stream 0's key is the seed itself (the one-to-one soak's messages, as before streams).
    fn key(&self, stream: u64) -> u64 {
        self.seed ^ stream.wrapping_mul(0xA24B_AED4_963E_E407)
    }

    /// Length of message `seq` of `stream`: 1 B .. 64 KiB, mostly small (median about 150 B,
    /// mean about 1.3 KiB).
    pub fn len_of(&self, stream: u64, seq: u64) -> usize {
        let r = splitmix(seq ^ self.key(stream));
        let x = r >> 16;
        // Short lengths of this stream: 1 + stream + streams * i, up to 15.
        let shorts = (SHORT_MAX - 1 - stream) / self.streams + 1;
        (match r % 1000 {
            0..=49 => 1 + stream + self.streams * (x % shorts), // 5 %: shorter than the header
            50..=699 => 16 + x % 241,                           // 65 %: 16-256 B
            700..=949 => 257 + x % 3840,                        // 25 %: 257 B - 4 KiB
            950..=994 => 4097 + x % 12288,                      // 4.5 %: 4-16 KiB
            _ => 16385 + x % 49152,                             // 0.5 %: 16-64 KiB
        } as usize)
            .min(self.max_len)
    }

    /// The 16-byte header of message `seq` of `stream` (with the CRC of header and body).
    fn header(&self, stream: u64, seq: u64, len: usize, body: &[u8]) -> [u8; HEADER] {
        let mut head = [0u8; HEADER];
        head[..8].copy_from_slice(&(seq | stream << 56).to_le_bytes());
        head[8..12].copy_from_slice(&(len as u32).to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head[..12]);
        crc.update(body);
        head[12..].copy_from_slice(&crc.finalize().to_le_bytes());
        head
    }

    /// Writes message `seq` of `stream` (whose length is `buf.len()`) into `buf`.
    pub fn fill(&self, stream: u64, seq: u64, buf: &mut [u8]) {
        let len = buf.len();
        if len < HEADER {
            buf.copy_from_slice(&self.header(stream, seq, len, &[])[..len]);
            return;
        }
        let (head, body) = buf.split_at_mut(HEADER);
        let mut state = splitmix(seq ^ self.key(stream) ^ 0x0005_EED0_B0D1);
        for chunk in body.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        let h = self.header(stream, seq, len, body);
        head.copy_from_slice(&h);
    }

    /// Which message this is, `(stream, seq)`, if it is intact. Messages shorter than the
    /// header carry no sequence number of their own: they are matched against the ones
    /// `hint(stream)` says may come.
    pub fn identify(&self, message: &[u8], hint: impl Fn(u64) -> Hint) -> Option<(u64, u64)> {
        let len = message.len();
        if len >= HEADER {
            let word = u64::from_le_bytes(message[..8].try_into().ok()?);
            let (stream, seq) = (word >> 56, word & SEQ_MASK);
            let claimed = u32::from_le_bytes(message[8..12].try_into().ok()?) as usize;
            if stream >= self.streams || claimed != len || self.len_of(stream, seq) != len {
                return None;
            }
            let head = self.header(stream, seq, len, &message[HEADER..]);
            return (head == message[..HEADER]).then_some((stream, seq));
        }
        let stream = (len as u64).checked_sub(1)? % self.streams;
        let hint = hint(stream);
        let matches = |c: u64| {
            self.len_of(stream, c) == len && self.header(stream, c, len, &[])[..len] == *message
        };
        let below = (hint.low..hint.expected).rev();
        let above = hint.expected.saturating_add(1)..=hint.high.min(SEQ_MASK);
        std::iter::once(hint.expected)
            .chain(below)
            .chain(above)
            .find(|&c| c <= SEQ_MASK && matches(c))
            .map(|seq| (stream, seq))
    }
}

/// The format of [`numbered`] messages: the soak's, with the lengths left to the caller.
const NUMBERED: Format = Format {
    seed: 0x7E57_5EED,
    streams: 256,
    max_len: usize::MAX,
};

/// Numbered message `seq` of `stream` (a producer, a generation: below 256), `len` bytes long
/// (at least [`HEADER`]; `seq` below 2^56).
pub fn numbered(stream: u32, seq: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    fill_numbered(stream, seq, &mut out);
    out
}

/// [`numbered`], written in place into `buf` (its length is the message's).
pub fn fill_numbered(stream: u32, seq: u64, buf: &mut [u8]) {
    assert!(
        stream < 256 && seq <= SEQ_MASK && buf.len() >= HEADER,
        "numbered message: stream {stream} < 256, seq {seq} < 2^56, {} bytes >= {HEADER}",
        buf.len()
    );
    NUMBERED.fill(u64::from(stream), seq, buf);
}

/// `(stream, seq)` of a message made by [`numbered`], after checking its length and its CRC
/// (over header and body: a torn, garbled or mixed-up message fails it), or what is wrong with
/// it. The body is not compared byte by byte: the check costs one pass over the message, so a
/// checking consumer keeps up with its producer as an application would.
pub fn check_numbered(message: &[u8]) -> Result<(u32, u64), String> {
    let len = message.len();
    if len < HEADER {
        return Err(format!(
            "a {len}-byte message, too short for a header: {:02x?}",
            message
        ));
    }
    let word = u64::from_le_bytes(message[..8].try_into().map_err(|_| "header")?);
    let (stream, seq) = ((word >> 56) as u32, word & SEQ_MASK);
    let claimed = u32::from_le_bytes(message[8..12].try_into().map_err(|_| "header")?);
    if claimed as usize != len {
        return Err(format!(
            "message {seq} of stream {stream} says {claimed} bytes but has {len}: torn"
        ));
    }
    let head = NUMBERED.header(u64::from(stream), seq, len, &message[HEADER..]);
    if head != message[..HEADER] {
        return Err(format!(
            "message {seq} of stream {stream} ({len} bytes) fails its CRC: garbled or mixed up"
        ));
    }
    Ok((stream, seq))
}

/// Messages this long carry an end stamp at both ends; shorter ones at the head only.
pub const ENDS_MIN: usize = 16;

/// Writes `value` into the first 8 bytes of `buf` (at least 8 long), and into its last 8 when
/// it is at least [`ENDS_MIN`] long.
pub fn stamp_ends(buf: &mut [u8], value: u64) {
    buf[..8].copy_from_slice(&value.to_le_bytes());
    if buf.len() >= ENDS_MIN {
        let tail = buf.len() - 8;
        buf[tail..].copy_from_slice(&value.to_le_bytes());
    }
}

/// The stamp in the first 8 bytes of `buf`; 0 where it is shorter.
pub fn read_stamp(buf: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = buf.len().min(8);
    bytes[..n].copy_from_slice(&buf[..n]);
    u64::from_le_bytes(bytes)
}

/// Checks a message stamped by [`stamp_ends`]: `size` bytes, `expected` at both ends.
pub fn check_ends(buf: &[u8], size: usize, expected: u64) -> Result<(), String> {
    let tail = read_stamp(&buf[buf.len().saturating_sub(8)..]);
    check_stamps(buf.len(), read_stamp(buf), tail, size, expected)
}

/// [`check_ends`] for a message read in place, of which only the length and the stamps at its
/// head and its tail (its last 8 bytes) were copied out.
pub fn check_stamps(
    len: usize,
    head: u64,
    tail: u64,
    size: usize,
    expected: u64,
) -> Result<(), String> {
    if len != size {
        return Err(format!(
            "message {expected}: got {len} bytes, expected {size}"
        ));
    }
    if head != expected {
        return Err(format!(
            "message {expected}: got sequence number {head} (lost or reordered)"
        ));
    }
    if size >= ENDS_MIN && tail != expected {
        return Err(format!(
            "message {expected}: ends with sequence number {tail} (torn or corrupted)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_messages_check_themselves() {
        for (stream, seq, len) in [(0, 0, 16), (7, 12345, 100), (255, 1 << 40, 70_000)] {
            let mut msg = numbered(stream, seq, len);
            assert_eq!(check_numbered(&msg), Ok((stream, seq)));
            assert!(check_numbered(&msg[..len - 1]).is_err());
            msg[len - 1] ^= 1;
            assert!(check_numbered(&msg).is_err());
        }
        assert!(check_numbered(&[0; 8]).is_err());
    }

    #[test]
    fn end_stamps_catch_wrong_sequence_and_torn_tail() {
        let mut msg = vec![0x5a; 64];
        stamp_ends(&mut msg, 7);
        assert!(check_ends(&msg, 64, 7).is_ok());
        assert!(check_ends(&msg, 64, 8).is_err());
        assert!(check_ends(&msg[..32], 64, 7).is_err());
        msg[60] ^= 1;
        assert!(check_ends(&msg, 64, 7).is_err());
        // Too short for a tail stamp: the head alone is checked.
        let mut small = vec![0x5a; 8];
        stamp_ends(&mut small, 3);
        assert!(check_ends(&small, 8, 3).is_ok());
    }

    #[test]
    fn messages_identify_themselves() {
        for streams in [1, 3, 5] {
            let format = Format::new(7, streams, 1 << 20);
            for stream in 0..streams {
                for seq in 0..20_000u64 {
                    let len = format.len_of(stream, seq);
                    assert!((1..=65536).contains(&len));
                    let mut buf = vec![0u8; len];
                    format.fill(stream, seq, &mut buf);
                    let hint = |_| Hint::around(seq);
                    assert_eq!(
                        format.identify(&buf, hint),
                        Some((stream, seq)),
                        "stream {stream} of {streams}, seq {seq}, len {len}"
                    );
                    if len >= HEADER {
                        buf[len - 1] ^= 1;
                        assert_eq!(format.identify(&buf, hint), None);
                    }
                }
            }
        }
    }

    #[test]
    fn one_stream_keeps_the_one_to_one_lengths() {
        let format = Format::new(7, 1, 1 << 20);
        let shorts = (0..100_000u64)
            .map(|seq| format.len_of(0, seq))
            .filter(|&len| len < HEADER)
            .collect::<std::collections::BTreeSet<_>>();
        assert_eq!(shorts, (1..HEADER).collect());
    }
}
