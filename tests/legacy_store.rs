//! Rings an older broker left in systemd's fd store keep working after an upgrade. Brokers of
//! protocol versions 3 and 4 made each ring one memfd in layout 2 (both sides write it); this
//! broker makes layout 3 (two memfds) but serves a stored layout-2 ring as it is, with its
//! unread messages, to new clients and to the old clients still mapping it. A stored ring of a
//! layout this broker does not know is refused with the reason in the log and replaced by an
//! empty one, keeping the channel. The store is handed over the way systemd does it after a
//! restart (`LISTEN_FDS` with fd names), built here byte by byte as an older broker left it.

use serde_json::json;
use shmem_broker_tests::*;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::Stdio;

const CAPACITY: u64 = 64 * 1024;
const HEADER_SIZE: u64 = 4096;
const SEAL_KEY: u64 = 0x5eed_1234_5678_9abc;

/// A sealed memfd with `bytes` at the offsets given (the rest zero).
fn sealed_memfd(name: &str, len: u64, writes: &[(u64, &[u8])], seal_writes: bool) -> OwnedFd {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .expect("memfd_create");
    rustix::fs::ftruncate(&fd, len).expect("size the memfd");
    for (offset, bytes) in writes {
        rustix::io::pwrite(&fd, bytes, *offset).expect("write the memfd");
    }
    let mut seals = SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL;
    if seal_writes {
        seals |= SealFlags::WRITE;
    }
    rustix::fs::fcntl_add_seals(&fd, seals).expect("seal the memfd");
    fd
}

/// A ring as brokers of protocol versions 3 and 4 made it (layout 2, client/src/ring.rs of
/// that time): one memfd, header then data, holding `messages` published with seals.
fn layout_2_ring(layout: u32, messages: &[&[u8]]) -> OwnedFd {
    let mut header = vec![0u8; 320];
    header[0..8].copy_from_slice(b"SHMRING1");
    header[8..12].copy_from_slice(&layout.to_le_bytes());
    header[16..24].copy_from_slice(&CAPACITY.to_le_bytes());
    header[32..40].copy_from_slice(&SEAL_KEY.to_le_bytes());
    let mut data = Vec::new();
    let mut bytes_written = 0u64;
    for message in messages {
        let start = data.len() as u64;
        let size = 16 + (message.len() as u64).div_ceil(16) * 16;
        let span = (size / 16) as u32;
        data.extend_from_slice(&(message.len() as u32).to_le_bytes());
        data.extend_from_slice(&(1u32 | span << 16).to_le_bytes()); // DATA, its span
        data.extend_from_slice(&((start + 1) ^ SEAL_KEY).to_le_bytes());
        data.extend_from_slice(message);
        data.resize((start + size) as usize, 0);
        bytes_written += message.len() as u64;
    }
    let write_pos = data.len() as u64;
    header[64..72].copy_from_slice(&write_pos.to_le_bytes());
    header[72..80].copy_from_slice(&(messages.len() as u64).to_le_bytes());
    header[80..88].copy_from_slice(&bytes_written.to_le_bytes());
    sealed_memfd(
        "shmem-broker:legacy",
        HEADER_SIZE + CAPACITY,
        &[(0, &header), (HEADER_SIZE, &data)],
        false,
    )
}

/// The channel's stored metadata (fd store meta version 1, unchanged since).
fn meta(name: &str) -> OwnedFd {
    let json = json!({
        "version": 1,
        "name": name,
        "capacity": CAPACITY,
        "origin": "runtime",
        "owner_uid": null,
        "producers": ["*"],
        "consumers": ["*"],
    })
    .to_string();
    sealed_memfd(
        "shmem-broker-meta",
        json.len() as u64,
        &[(0, json.as_bytes())],
        true,
    )
}

/// The attach reply a client of protocol `version` gets for `channel` as consumer.
fn attach_reply(broker: &Broker, version: u16, channel: &str) -> serde_json::Value {
    let mut stream = UnixStream::connect(broker.socket_path()).expect("connect");
    let body = format!(r#"{{"op":"attach","channel":"{channel}","role":"consumer"}}"#);
    stream
        .write_all(&request_frame_version(version, 7, body.as_bytes()))
        .expect("send an attach");
    read_one_frame(&mut stream, WAIT).json()
}

#[test]
fn a_stored_layout_2_ring_keeps_its_messages_and_serves_old_and_new_clients() {
    let broker = Broker::start_with_stored_fds(vec![
        (
            layout_2_ring(2, &[b"kept 1\n", b"kept 2\n"]),
            "ch.old.ring".to_string(),
        ),
        (meta("old"), "ch.old.meta".to_string()),
    ]);
    assert!(
        broker
            .log()
            .contains("channel restored from systemd's fd store"),
        "{}",
        broker.log()
    );
    // A version-4 client (which reads layouts up to 2) may still attach to it ...
    let old = attach_reply(&broker, 4, "old");
    assert_eq!(old["ok"], true, "{old}");
    assert_eq!(old["result"]["ring_layout"], 2, "{old}");
    assert_eq!(
        old["result"]["fds"],
        json!(["ring", "data_ready", "space_ready"]),
        "a layout-2 ring has no ack page: {old}"
    );
    // ... and this version's shmemctl reads what was left there, then what is sent now.
    let out_path = broker.dir().join("old.out");
    let mut receiver = broker.spawn_ctl(
        &["recv", "old"],
        Stdio::null(),
        Some(Stdio::from(
            std::fs::File::create(&out_path).expect("create output"),
        )),
    );
    broker.wait_for_peer("old", receiver.pid(), "consumer");
    let mut sender = broker.spawn_ctl(&["send", "old"], Stdio::piped(), None);
    let mut stdin = sender.take_stdin().expect("piped stdin");
    stdin.write_all(b"sent after the upgrade\n").expect("write");
    drop(stdin);
    sender.output(WAIT).expect_success();
    receiver.output(WAIT).expect_success();
    assert_eq!(
        std::fs::read_to_string(&out_path).expect("read output"),
        "kept 1\nkept 2\nsent after the upgrade\n"
    );
}

#[test]
fn a_stored_ring_of_an_unknown_layout_is_refused_with_the_reason_and_replaced() {
    let broker = Broker::start_with_stored_fds(vec![
        (
            layout_2_ring(9, &[b"unreadable\n"]),
            "ch.future.ring".to_string(),
        ),
        (meta("future"), "ch.future.meta".to_string()),
    ]);
    let log = broker.log();
    for needle in [
        "replaced a stored ring",
        "future",
        "ring layout 9, this library reads layouts 1 to 3",
    ] {
        assert!(
            log.contains(needle),
            "the log should say {needle:?}:\n{log}"
        );
    }
    let fresh = attach_reply(
        &broker,
        shmem_broker_client::wire::PROTOCOL_VERSION,
        "future",
    );
    assert_eq!(fresh["ok"], true, "{fresh}");
    assert_eq!(fresh["result"]["ring_layout"], 3, "a new ring: {fresh}");
}
