//! `bridge-rogue`: a hostile Zenoh peer for tests/bridge/hostile.rs. It does what anyone who can
//! publish on a bridge's keys can do, with the wire format written out here by hand (not taken
//! from the bridge's code): it forges an item far ahead of the stream and marked "oldest" (an
//! importer that takes it stores it and then drops every real item as a duplicate), once with a
//! made-up tag and once without, forges an ack claiming everything stored, and holds an
//! importer liveliness token it never acks for (an exporter that waits for it stalls).
//!
//! With `flood` after SECONDS it instead floods the key with small items (64 bytes, each
//! marked "oldest", positions ascending, no tag), each sent alone (express: its own batch), so
//! that an importer that kept each sample in Zenoh's receive buffer would pin a whole buffer
//! per 64 bytes.
//!
//! With `sessions` first it opens COUNT Zenoh sessions to ENDPOINT (a bridge's listening
//! port), each a link the bridge sets up buffers for, holds them for SECONDS and prints
//! "connected N" (how many the bridge accepted) on stderr once all were tried.
//!
//! ```text
//! bridge-rogue ENDPOINT KEY IMPORTER SECONDS [flood]
//! bridge-rogue sessions ENDPOINT COUNT SECONDS
//! ```
//! Prints "forging" on stderr after the first round, "done N" when SECONDS have passed.

use std::time::{Duration, Instant};

use zenoh::Wait;

/// The bridge's item attachment, version 1: version, kind (1 message), flags (2 oldest),
/// 5 bytes of zero, from, to (little-endian).
fn forged_item(from: u64, to: u64) -> Vec<u8> {
    let mut out = vec![1u8, 1, 2, 0, 0, 0, 0, 0];
    out.extend_from_slice(&from.to_le_bytes());
    out.extend_from_slice(&to.to_le_bytes());
    out
}

/// The bridge's ack, version 1: version, idle, 6 zero bytes, last, 8 zero bytes.
fn forged_ack(last: u64) -> Vec<u8> {
    let mut out = vec![1u8, 0, 0, 0, 0, 0, 0, 0];
    out.extend_from_slice(&last.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out
}

/// Opens `count` client sessions to `endpoint` and holds them for `seconds`.
fn sessions(endpoint: &str, count: usize, seconds: u64) {
    let mut open = Vec::new();
    for _ in 0..count {
        let mut config = zenoh::Config::default();
        for (k, v) in [
            ("mode", "\"client\"".to_string()),
            ("scouting/multicast/enabled", "false".into()),
            ("connect/endpoints", format!("[\"{endpoint}\"]")),
            ("connect/timeout_ms", "2000".into()),
        ] {
            config.insert_json5(k, &v).expect("zenoh config");
        }
        if let Ok(session) = zenoh::open(config).wait() {
            open.push(session);
        }
    }
    eprintln!("connected {}", open.len());
    std::thread::sleep(Duration::from_secs(seconds));
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [mode, endpoint, count, seconds] = &args[..] {
        if mode == "sessions" {
            sessions(
                endpoint,
                count.parse().expect("COUNT"),
                seconds.parse().expect("SECONDS"),
            );
            return;
        }
    }
    let (args, flood) = match &args[..] {
        [rest @ .., last] if last == "flood" => (rest, true),
        all => (all, false),
    };
    let [endpoint, key, importer, seconds] = args else {
        eprintln!("usage: bridge-rogue ENDPOINT KEY IMPORTER SECONDS [flood]");
        std::process::exit(2);
    };
    let seconds: u64 = seconds.parse().expect("SECONDS");
    let mut config = zenoh::Config::default();
    for (k, v) in [
        ("mode", "\"client\"".to_string()),
        ("scouting/multicast/enabled", "false".into()),
        ("connect/endpoints", format!("[\"{endpoint}\"]")),
    ] {
        config.insert_json5(k, &v).expect("zenoh config");
    }
    let session = zenoh::open(config).wait().expect("open the Zenoh session");
    let _token = session
        .liveliness()
        .declare_token(format!("{key}/@importer/rogue"))
        .wait()
        .expect("liveliness token");
    let items = session
        .declare_publisher(key.clone())
        .wait()
        .expect("declare publisher");
    let acks = session
        .declare_publisher(format!("{key}/@ack/{importer}"))
        .wait()
        .expect("declare ack publisher");
    // Far ahead of anything the test sends; payload like a numbered message of the test's.
    let (from, to) = (1u64 << 40, (1u64 << 40) + 4096);
    let mut payload = vec![0xEEu8; 512];
    payload[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut rounds = 0u64;
    if flood {
        let items = session
            .declare_publisher(key.clone())
            .express(true)
            .wait()
            .expect("declare publisher");
        let mut from = 0u64;
        while Instant::now() < deadline {
            for _ in 0..256 {
                items
                    .put(vec![0x66u8; 64])
                    .attachment(forged_item(from, from + 128))
                    .wait()
                    .expect("put");
                from += 128;
            }
            rounds += 1;
            if rounds == 1 {
                eprintln!("forging");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        eprintln!("done {rounds}");
        return;
    }
    while Instant::now() < deadline {
        let untagged = forged_item(from, to);
        let mut tagged = untagged.clone();
        tagged.extend_from_slice(&[0x5A; 32]);
        for attachment in [untagged, tagged] {
            items
                .put(payload.clone())
                .attachment(attachment)
                .wait()
                .expect("put");
        }
        let mut ack = forged_ack(u64::MAX / 2);
        acks.put(ack.clone()).wait().expect("put ack");
        ack.extend_from_slice(&[0x5A; 32]);
        acks.put(ack).wait().expect("put ack");
        rounds += 1;
        if rounds == 1 {
            eprintln!("forging");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("done {rounds}");
}
