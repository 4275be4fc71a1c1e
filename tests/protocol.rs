//! Hostile bytes on the control socket: the offending connection is answered with an error or
//! closed, and the broker keeps serving everyone else without ballooning in memory.

use shmem_broker_tests::*;
use std::os::unix::net::UnixStream;
use std::time::Duration;

const CLOSE_WITHIN: Duration = Duration::from_secs(5);

fn connect_raw(broker: &Broker) -> UnixStream {
    UnixStream::connect(broker.socket_path())
        .unwrap_or_else(|e| panic!("connect to {}: {e}", broker.socket_path().display()))
}

/// After abuse: the broker is alive and a normal `shmemctl list` works.
fn assert_still_serving(broker: &mut Broker) {
    broker.assert_running();
    broker.ctl_ok(&["list"]);
    broker.assert_running();
}

/// Describes what came back before the close, for failure messages.
fn describe(bytes: &[u8]) -> String {
    let (frames, rest) = parse_frames(bytes);
    let frames: Vec<String> = frames
        .iter()
        .map(|f| {
            format!(
                "frame(kind {}, id {}, body {})",
                f.kind,
                f.id,
                String::from_utf8_lossy(&f.body)
            )
        })
        .collect();
    format!("{frames:?} + {} unparsed bytes", rest.len())
}

#[test]
fn garbage_bytes_close_the_connection_and_the_broker_keeps_serving() {
    let mut broker = Broker::start(None);
    broker.ctl_ok(&["create", "keep", "--capacity", "64KiB"]);
    let mut stream = connect_raw(&broker);
    let mut garbage = b"GET / HTTP/1.1\r\n\r\n".to_vec();
    let mut noise = vec![0u8; 4096];
    XorShift64::new(0xbad_c0de).fill(&mut noise);
    garbage.extend_from_slice(&noise);
    write_tolerating_close(&mut stream, &garbage);

    match read_until_closed(&mut stream, CLOSE_WITHIN) {
        ConnectionEnd::Closed(bytes) => {
            // An error frame before the close is fine; anything else must not be a success.
            let (frames, _) = parse_frames(&bytes);
            for frame in frames {
                let body = frame.json();
                assert_ne!(
                    body["ok"], true,
                    "garbage was answered with success: {body}"
                );
            }
        }
        ConnectionEnd::StillOpen(bytes) => panic!(
            "the broker kept a connection that sent HTTP and random bytes open for \
             {CLOSE_WITHIN:?}; received: {}",
            describe(&bytes)
        ),
    }
    assert_still_serving(&mut broker);
    assert!(find_channel(&broker.list(), "keep").is_some());
}

#[test]
fn giant_length_prefix_is_refused_without_allocating_it() {
    let mut broker = Broker::start(None);
    let rss_before = vm_rss_kib(broker.pid());
    let mut stream = connect_raw(&broker);
    write_tolerating_close(&mut stream, &frame_header(1, KIND_REQUEST, 7, 0xFFFF_FFF0));
    // A few body bytes, as a client that means it would send.
    write_tolerating_close(&mut stream, b"{\"op\":\"list\"");

    let end = read_until_reply_or_closed(&mut stream, CLOSE_WITHIN);
    let bytes = match &end {
        ConnectionEnd::Closed(bytes) => bytes.clone(),
        // An error reply while the connection stays open is also acceptable.
        ConnectionEnd::StillOpen(bytes) if !bytes.is_empty() => bytes.clone(),
        ConnectionEnd::StillOpen(_) => panic!(
            "a header announcing a 4 GiB body got neither an error reply nor a close within \
             {CLOSE_WITHIN:?}: the broker is waiting for the body"
        ),
    };
    let (frames, _) = parse_frames(&bytes);
    for frame in &frames {
        assert_eq!(
            frame.kind,
            KIND_REPLY,
            "unexpected frame: {}",
            describe(&bytes)
        );
        let body = frame.json();
        assert_eq!(body["ok"], false, "a 4 GiB request was not refused: {body}");
    }
    if let ConnectionEnd::StillOpen(_) = end {
        assert!(
            !frames.is_empty(),
            "the broker sent bytes that are not a frame: {}",
            describe(&bytes)
        );
    }

    assert_still_serving(&mut broker);
    let rss_after = vm_rss_kib(broker.pid());
    assert!(
        rss_after < rss_before + 256 * 1024,
        "broker RSS went from {rss_before} KiB to {rss_after} KiB after a 4 GiB length prefix"
    );
}

#[test]
fn request_body_just_above_64_kib_is_refused_and_the_broker_keeps_serving() {
    let mut broker = Broker::start(None);
    let mut stream = connect_raw(&broker);
    // A well-formed JSON request, padded past the limit.
    let body = format!("{{\"op\":\"list\",\"pad\":\"{}\"}}", "p".repeat(64 * 1024));
    assert!(body.len() > 64 * 1024);
    write_tolerating_close(&mut stream, &request_frame(9, body.as_bytes()));
    match read_until_reply_or_closed(&mut stream, CLOSE_WITHIN) {
        ConnectionEnd::Closed(bytes) | ConnectionEnd::StillOpen(bytes) if !bytes.is_empty() => {
            let (frames, _) = parse_frames(&bytes);
            assert!(!frames.is_empty(), "not a frame: {}", describe(&bytes));
            for frame in frames {
                let reply = frame.json();
                assert_eq!(
                    reply["ok"], false,
                    "an oversized request was served: {reply}"
                );
            }
        }
        ConnectionEnd::Closed(_) => {}
        ConnectionEnd::StillOpen(_) => panic!(
            "a {}-byte request body got neither an error reply nor a close within \
             {CLOSE_WITHIN:?}",
            body.len()
        ),
    }
    assert_still_serving(&mut broker);
}

#[test]
fn well_formed_request_gets_a_reply_with_its_id() {
    // The control case for the tests above: the same framing with a valid request succeeds,
    // so the refusals are about the abuse, not about how this file builds frames.
    let broker = Broker::start(None);
    let mut stream = connect_raw(&broker);
    write_tolerating_close(&mut stream, &request_frame(42, br#"{"op":"status"}"#));
    let reply = read_one_frame(&mut stream, CLOSE_WITHIN);
    assert_eq!(reply.kind, KIND_REPLY);
    assert_eq!(reply.id, 42);
    let body = reply.json();
    assert_eq!(body["ok"], true, "status reply: {body}");
    assert_eq!(
        body["result"]["pid"].as_u64(),
        Some(u64::from(broker.pid())),
        "status reply: {body}"
    );
}

#[test]
fn unknown_protocol_version_gets_an_error_reply_or_close() {
    let mut broker = Broker::start(None);
    let mut stream = connect_raw(&broker);
    let body = br#"{"op":"status"}"#;
    let mut frame = frame_header(99, KIND_REQUEST, 5, body.len() as u32).to_vec();
    frame.extend_from_slice(body);
    write_tolerating_close(&mut stream, &frame);
    // Either an error reply (the connection may stay open) or a close.
    let bytes = match read_until_reply_or_closed(&mut stream, CLOSE_WITHIN) {
        ConnectionEnd::Closed(bytes) => bytes,
        ConnectionEnd::StillOpen(bytes) if !bytes.is_empty() => bytes,
        ConnectionEnd::StillOpen(_) => {
            panic!("a version-99 request got neither a reply nor a close within {CLOSE_WITHIN:?}")
        }
    };
    let (frames, _) = parse_frames(&bytes);
    for frame in frames {
        let reply = frame.json();
        assert_eq!(reply["ok"], false, "version 99 was served: {reply}");
    }
    assert_still_serving(&mut broker);
}

#[test]
fn many_abrupt_connections_do_not_hurt_the_broker() {
    let mut broker = Broker::start(None);
    for i in 0..200u32 {
        let mut stream = connect_raw(&broker);
        // Half a header, then hang up.
        write_tolerating_close(&mut stream, &frame_header(1, KIND_REQUEST, i, 10)[..7]);
    }
    assert_still_serving(&mut broker);
    // Hung-up connections are forgotten: only the one asking remains.
    wait_for(WAIT, "the broker to forget 200 hung-up connections", || {
        let status = broker.status();
        if json_u64(&status, "clients") <= 2 {
            Ok(())
        } else {
            Err(status.to_string())
        }
    });
}
