//! The soak's messages: numbered, checksummed streams, one per producer slot (one stream in a
//! one-to-one channel).
//!
//! Message `seq` of stream `s` has a length drawn from `(seed, s, seq)` (1 B .. 64 KiB, mostly
//! small), a 16-byte header (`seq | s << 56` u64, length u32, CRC-32 of header and body) and a
//! body of pseudo-random bytes drawn from `(seed, s, seq)`, so a message sent twice is sent
//! identically. Messages shorter than the header carry its first bytes (the low bytes of
//! `seq`); their stream is told by their length: stream `s` of `n` only uses short lengths
//! `1 + s + n * i`, so no short message of one stream can pass for another stream's.

pub const HEADER: usize = 16;
/// Sequence numbers below 2^56; the top byte of the header's first word is the stream.
const SEQ_MASK: u64 = (1 << 56) - 1;
/// Longest message shorter than the header.
const SHORT_MAX: u64 = HEADER as u64 - 1;

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

#[cfg(test)]
mod tests {
    use super::*;

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
