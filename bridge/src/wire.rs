//! What the bridges say to each other over Zenoh, on top of the user's key `KEY`:
//!
//! * `KEY`: the exported stream. Each sample's payload is one message, byte for byte; its
//!   attachment ([`Item`]) says whether it is a message, an end-of-stream mark or padding, and carries
//!   its stream positions `from`..`to` in the exported ring. The positions number the stream:
//!   one item's `to` is the next one's `from`, so a receiver that remembers the last `to` it
//!   stored tells a duplicate (`to <= last`) and a gap (`from > last`) apart from the next item.
//!   Small items travel packed, several to a sample ([`Kind::Pack`], [`pack_item`],
//!   [`unpack`]): the sample's attachment spans their positions, its payload holds each
//!   item's header, length and bytes; the receiver takes them one by one as if each had come
//!   alone.
//! * `KEY/@ack/NAME`: the importer named NAME reports ([`Ack`]) the last position it stored in
//!   its local channel and whether it is idle, after storing what it took and every
//!   [`HEARTBEAT`].
//! * `KEY/@importer/NAME`: a liveliness token each importer holds while it runs.
//!
//! `@` chunks are verbatim in Zenoh: a user's `KEY/**` subscription never sees them.
//! Everything here comes from the network and is checked before use: a malformed attachment
//! or ack is logged and ignored, never trusted. With a shared key ([`crate::auth`]) an item's
//! attachment and an ack end with an HMAC-SHA256 tag ([`seal_item`], [`open_item`],
//! [`seal_ack`], [`open_ack`]), checked before anything else is read from the sample.

use std::time::Duration;

use crate::auth::{Auth, Domain, TAG_LEN};

/// How often an importer repeats its ack when nothing else makes it send one.
pub const HEARTBEAT: Duration = Duration::from_millis(250);

const VERSION: u8 = 1;
const KIND_MESSAGE: u8 = 1;
const KIND_END_OF_STREAM: u8 = 2;
const KIND_PADDING: u8 = 3;
const KIND_PACK: u8 = 4;
/// Bytes before each packed item's bytes: its header, then its length (u64, little-endian).
pub const PACKED_HEADER: usize = ITEM_LEN + 8;
const ITEM_LEN: usize = 24;
const ACK_LEN: usize = 24;

/// What a sample of the stream carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Message,
    EndOfStream,
    /// Padding of the exported ring (empty payload): stored nowhere, only recorded, so that
    /// the positions stay contiguous.
    Padding,
    /// Several items in one sample; never stored as such (see [`unpack`]).
    Pack,
}

/// Item flag: the export's channel has policy `drop`; gaps are expected, store past them.
pub const FLAG_LOSSY: u8 = 1;
/// Item flag: the oldest item the exporter still holds (its `from` is the exporter's released
/// position): whatever came before it is gone from the exporter, so a receiver behind it
/// stores it over the gap. Set when it is first published if nothing before it was in flight,
/// else when it is sent again to an importer behind it.
pub const FLAG_OLDEST: u8 = 2;

/// The attachment of one sample of the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Item {
    pub kind: Kind,
    pub flags: u8,
    /// Stream position of the item in the exported ring, and just past it.
    pub from: u64,
    pub to: u64,
}

impl Item {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ITEM_LEN);
        out.push(VERSION);
        out.push(match self.kind {
            Kind::Message => KIND_MESSAGE,
            Kind::EndOfStream => KIND_END_OF_STREAM,
            Kind::Padding => KIND_PADDING,
            Kind::Pack => KIND_PACK,
        });
        out.push(self.flags);
        out.extend_from_slice(&[0; 5]);
        out.extend_from_slice(&self.from.to_le_bytes());
        out.extend_from_slice(&self.to.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Item, String> {
        if bytes.len() != ITEM_LEN {
            return Err(format!(
                "attachment of {} bytes, expected {ITEM_LEN}",
                bytes.len()
            ));
        }
        if bytes[0] != VERSION {
            return Err(format!(
                "attachment version {}, expected {VERSION}",
                bytes[0]
            ));
        }
        let kind = match bytes[1] {
            KIND_MESSAGE => Kind::Message,
            KIND_END_OF_STREAM => Kind::EndOfStream,
            KIND_PADDING => Kind::Padding,
            KIND_PACK => Kind::Pack,
            other => return Err(format!("unknown item kind {other}")),
        };
        let flags = bytes[2];
        if flags & !(FLAG_LOSSY | FLAG_OLDEST) != 0 {
            return Err(format!("unknown item flags {flags:#x}"));
        }
        let from = u64_at(bytes, 8);
        let to = u64_at(bytes, 16);
        if to <= from {
            return Err(format!("item positions {from}..{to} do not advance"));
        }
        Ok(Item {
            kind,
            flags,
            from,
            to,
        })
    }
}

/// Appends `item` with its bytes to a pack's payload.
pub fn pack_item(pack: &mut Vec<u8>, item: &Item, bytes: &[u8]) {
    pack.extend_from_slice(&item.encode());
    pack.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    pack.extend_from_slice(bytes);
}

/// Flags the first item of a pack's payload (made by [`pack_item`]) [`FLAG_OLDEST`]; true if
/// that changed it.
pub fn flag_first_packed(pack: &mut [u8]) -> bool {
    // The flags are the third byte of an item's header (see `Item::encode`).
    match pack.get_mut(2) {
        Some(flags) if *flags & FLAG_OLDEST == 0 => {
            *flags |= FLAG_OLDEST;
            true
        }
        _ => false,
    }
}

/// The items of a pack's payload, each checked like a sample's attachment (a pack inside a
/// pack, a length past the end, bytes on a padding or end-of-stream item: refused whole).
pub fn unpack(mut payload: &[u8]) -> Result<Vec<(Item, &[u8])>, String> {
    let mut items = Vec::new();
    while !payload.is_empty() {
        if payload.len() < PACKED_HEADER {
            return Err(format!(
                "pack: {} bytes left, less than a header",
                payload.len()
            ));
        }
        let item = Item::decode(&payload[..ITEM_LEN])?;
        let len = usize::try_from(u64_at(payload, ITEM_LEN))
            .ok()
            .filter(|&len| len <= payload.len() - PACKED_HEADER)
            .ok_or_else(|| "pack: an item longer than the pack".to_string())?;
        if item.kind == Kind::Pack || (item.kind != Kind::Message && len != 0) {
            return Err(format!(
                "pack: a {:?} item of {len} bytes inside",
                item.kind
            ));
        }
        items.push((item, &payload[PACKED_HEADER..PACKED_HEADER + len]));
        payload = &payload[PACKED_HEADER + len..];
    }
    Ok(items)
}

/// An importer's report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The `to` of the last item stored in the importer's channel (0: none yet).
    pub last: u64,
    /// Nothing received is waiting to be stored: if `last` is behind what was sent, the rest
    /// was lost on the way (a link cut, the importer restarting) and must be sent again.
    pub idle: bool,
}

impl Ack {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ACK_LEN);
        out.push(VERSION);
        out.push(u8::from(self.idle));
        out.extend_from_slice(&[0; 6]);
        out.extend_from_slice(&self.last.to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Ack, String> {
        if bytes.len() != ACK_LEN || bytes[0] != VERSION || bytes[1] > 1 {
            return Err(format!("malformed ack of {} bytes", bytes.len()));
        }
        Ok(Ack {
            idle: bytes[1] == 1,
            last: u64_at(bytes, 8),
        })
    }
}

/// Why a sample was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not something a bridge of this version sends.
    Malformed(String),
    /// Fails authentication (no tag, a wrong one, or a tag where no key is configured).
    Unauthenticated(&'static str),
}

/// The attachment of `item` published on `key` with `payload`: its header, then its tag.
pub fn seal_item(auth: Option<&Auth>, key: &str, item: &Item, payload: &[u8]) -> Vec<u8> {
    let mut out = item.encode();
    if let Some(auth) = auth {
        let tag = auth.tag(Domain::Item, key, &out, &[payload]);
        out.extend_from_slice(&tag);
    }
    out
}

/// The item a sample on `key` carries, if its attachment is well-formed and, with a key,
/// its tag is right (checked first: nothing of a forged sample is read). The payload comes
/// in the parts Zenoh received it in.
pub fn open_item(
    auth: Option<&Auth>,
    key: &str,
    attachment: &[u8],
    payload: &[&[u8]],
) -> Result<Item, Refused> {
    let header = authenticated(auth, Domain::Item, key, attachment, payload, ITEM_LEN)?;
    Item::decode(header).map_err(Refused::Malformed)
}

/// An ack published on `ack_key` (which names the importer), tagged with a key.
pub fn seal_ack(auth: Option<&Auth>, ack_key: &str, ack: &Ack) -> Vec<u8> {
    let mut out = ack.encode();
    if let Some(auth) = auth {
        let tag = auth.tag(Domain::Ack, ack_key, &out, &[]);
        out.extend_from_slice(&tag);
    }
    out
}

pub fn open_ack(auth: Option<&Auth>, ack_key: &str, bytes: &[u8]) -> Result<Ack, Refused> {
    let header = authenticated(auth, Domain::Ack, ack_key, bytes, &[], ACK_LEN)?;
    Ack::decode(header).map_err(Refused::Malformed)
}

/// The header of a sealed sample once its tag is checked.
fn authenticated<'b>(
    auth: Option<&Auth>,
    domain: Domain,
    key: &str,
    sealed: &'b [u8],
    payload: &[&[u8]],
    header_len: usize,
) -> Result<&'b [u8], Refused> {
    match auth {
        None if sealed.len() == header_len + TAG_LEN => Err(Refused::Unauthenticated(
            "the sender authenticates its samples: give this bridge the same --key-file",
        )),
        None => Ok(sealed),
        Some(_) if sealed.len() != header_len + TAG_LEN => Err(Refused::Unauthenticated(
            "no tag (the sender has no key file?)",
        )),
        Some(auth) => {
            let (header, tag) = sealed.split_at(header_len);
            if auth.verify(domain, key, header, payload, tag) {
                Ok(header)
            } else {
                Err(Refused::Unauthenticated("wrong tag"))
            }
        }
    }
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

pub fn ack_key(key: &str, importer: &str) -> String {
    format!("{key}/@ack/{importer}")
}

pub fn ack_wildcard(key: &str) -> String {
    format!("{key}/@ack/*")
}

pub fn liveliness_key(key: &str, importer: &str) -> String {
    format!("{key}/@importer/{importer}")
}

pub fn liveliness_wildcard(key: &str) -> String {
    format!("{key}/@importer/*")
}

/// The importer name at the end of an ack or liveliness key.
pub fn importer_of(key_expr: &str) -> Option<&str> {
    key_expr.rsplit('/').next().filter(|name| !name.is_empty())
}

/// A key the bridge publishes on: a concrete key expression (no wildcards, no `@` chunks of
/// its own, nothing Zenoh would refuse).
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("empty key".into());
    }
    if key
        .split('/')
        .any(|chunk| chunk.is_empty() || chunk.contains(['*', '$', '@', '#', '?']))
    {
        return Err(format!(
            "key {key:?}: must be a concrete Zenoh key (chunks separated by '/', none empty, without * $ @ # ?)"
        ));
    }
    zenoh::key_expr::KeyExpr::try_from(key.to_string())
        .map(|_| ())
        .map_err(|e| format!("key {key:?}: {e}"))
}

/// An importer name: one key chunk of letters, digits and `. _ - :`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "importer name {name:?}: 1-128 characters of A-Z a-z 0-9 . _ - :"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_and_acks_round_trip_and_garbage_is_refused() {
        let item = Item {
            kind: Kind::EndOfStream,
            flags: FLAG_OLDEST,
            from: 7,
            to: 4096,
        };
        assert_eq!(Item::decode(&item.encode()), Ok(item));
        let ack = Ack {
            last: 99,
            idle: true,
        };
        assert_eq!(Ack::decode(&ack.encode()), Ok(ack));
        assert!(Item::decode(&[1; 23]).is_err());
        let mut backwards = item.encode();
        backwards[16..24].copy_from_slice(&3u64.to_le_bytes());
        assert!(Item::decode(&backwards).is_err());
        assert!(Ack::decode(&[9; 24]).is_err());
    }

    #[test]
    fn packs_round_trip_and_bad_packs_are_refused() {
        let a = Item {
            kind: Kind::Message,
            flags: FLAG_OLDEST,
            from: 0,
            to: 16,
        };
        let b = Item {
            kind: Kind::EndOfStream,
            flags: 0,
            from: 16,
            to: 24,
        };
        let mut pack = Vec::new();
        pack_item(&mut pack, &a, b"hello");
        pack_item(&mut pack, &b, b"");
        assert_eq!(unpack(&pack), Ok(vec![(a, &b"hello"[..]), (b, &b""[..])]));
        // Flagging the first item oldest (a resend of the oldest pack held) changes it alone.
        let mut unflagged = Vec::new();
        pack_item(&mut unflagged, &Item { flags: 0, ..a }, b"hello");
        pack_item(&mut unflagged, &b, b"");
        assert!(flag_first_packed(&mut unflagged));
        assert!(!flag_first_packed(&mut unflagged));
        assert_eq!(unflagged, pack);
        assert!(unpack(&pack[..pack.len() - 1]).is_err());
        let mut long = Vec::new();
        pack_item(&mut long, &a, b"x");
        long[ITEM_LEN..PACKED_HEADER].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(unpack(&long).is_err());
        let mut nested = Vec::new();
        pack_item(
            &mut nested,
            &Item {
                kind: Kind::Pack,
                ..a
            },
            b"",
        );
        assert!(unpack(&nested).is_err());
        let mut eos_bytes = Vec::new();
        pack_item(&mut eos_bytes, &b, b"x");
        assert!(unpack(&eos_bytes).is_err());
    }

    #[test]
    fn keys_and_names_are_checked() {
        assert!(check_key("site/frames").is_ok());
        for bad in ["", "a//b", "a/*", "a/@x", "a/b$", "/a"] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
        assert!(check_name("host-b:frames").is_ok());
        assert!(check_name("a/b").is_err());
        assert_eq!(importer_of("k/@ack/hostB"), Some("hostB"));
    }
}
