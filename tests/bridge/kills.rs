//! Bridges killed (SIGKILL) and stopped (SIGTERM) mid-stream, and started again: every message
//! arrives once, in order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shmem_broker_tests::bridge::*;
use shmem_broker_tests::*;

/// Kills `which` bridge with SIGKILL three times mid-stream and starts it again; every message
/// arrives exactly once, in order.
fn survives_sigkill(kill_importer: bool) {
    survives_sigkills(kill_importer, 30_000, 512, 3, Duration::ZERO);
}

/// Kills `which` bridge with SIGKILL `kills` times, evenly through a stream of `count`
/// messages of `len` bytes, and starts it again; every message arrives exactly once, in
/// order. With a `pause`, the consumer stops that long before each kill, so that everything
/// in between fills up: the importer waits for room with a run in hand, and the exporter has
/// its whole ring (256 KiB) published and unreleased.
fn survives_sigkills(kill_importer: bool, count: u64, len: usize, kills: u64, pause: Duration) {
    let mut link = link_one("256KiB");
    let producer = produce(link.a.socket_path().to_path_buf(), "out", count, len);
    let client = link.b.client();
    let mut consumer = client.consumer("in").expect("attach consumer");
    let mut next = 0u64;
    let kills: Vec<u64> = (1..=kills).map(|k| k * count / (kills + 1)).collect();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let message = match consumer.recv() {
            Ok(Some(message)) => message,
            Ok(None) => break,
            // The killed importer was this channel's producer: told once, and its successor
            // resumes the stream.
            Err(shmem_broker_client::Error::ProducerGone { .. }) if kill_importer => continue,
            Err(err) => panic!("recv: {err}"),
        };
        assert!(
            Instant::now() < deadline,
            "stream too slow: {next} of {count}"
        );
        let seq = seq_of(&message, len);
        assert_eq!(
            seq, next,
            "message {seq} where {next} was due (lost or repeated)"
        );
        next += 1;
        if kills.contains(&next) {
            std::thread::sleep(pause);
            if kill_importer {
                link.import.kill9();
                link.import = link_importer(&link.hosts, &link.b, link.state.path());
            } else {
                link.export.kill9();
                link.export = link_exporter(&link.hosts, &link.a);
            }
        }
    }
    assert_eq!(next, count);
    producer.join(WAIT);
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn importing_bridge_sigkilled_mid_stream_loses_and_repeats_nothing() {
    require_root();
    survives_sigkill(true);
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn exporting_bridge_sigkilled_mid_stream_loses_and_repeats_nothing() {
    require_root();
    survives_sigkill(false);
}

/// Small messages travel packed and are stored in runs (one record, one publish of up to a
/// thousand messages): killed eight times while they flow, the importer is mostly inside a
/// run (recorded, publishing, or waiting for room); each restart resumes exactly after what
/// its channel holds.
#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn importing_bridge_sigkilled_inside_runs_of_small_messages_loses_and_repeats_nothing() {
    require_root();
    survives_sigkills(true, 200_000, 64, 8, Duration::ZERO);
}

/// The exporter keeps its whole ring in flight (published, not yet stored remotely) while
/// the remote consumer pauses; killed then, six times, the next exporter reads all of it
/// again with the same positions and the importer drops what it already holds.
#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn exporting_bridge_sigkilled_with_its_whole_ring_in_flight_loses_and_repeats_nothing() {
    require_root();
    survives_sigkills(false, 40_000, 1024, 6, Duration::from_millis(700));
}

/// Large messages (100 kB: published alone, from the exporter's own read buffer, and
/// received in several Zenoh fragments that the importer writes straight into its ring): the
/// exporter killed four times with its ring in flight, the next one re-sends what it holds
/// and the importer drops what it already stored.
#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn exporting_bridge_sigkilled_with_large_messages_in_flight_loses_and_repeats_nothing() {
    require_root();
    survives_sigkills(false, 600, 100_000, 4, Duration::from_millis(700));
}

/// The importer killed four times while it writes large messages from Zenoh's fragments
/// into its ring: each restart resumes exactly after what the channel holds.
#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn importing_bridge_sigkilled_while_storing_large_messages_loses_and_repeats_nothing() {
    require_root();
    survives_sigkills(true, 600, 100_000, 4, Duration::ZERO);
}

/// SIGTERM to either bridge mid-stream: it takes nothing new, finishes what is in flight (the
/// exporter's batch confirmed and released from its ring, the importer's item stored and
/// acked), logs "stopped: drained" and exits 0; started again, the stream goes on with nothing
/// lost or repeated. Because the exporter released its batch before exiting, the next exporter
/// sends nothing twice: the importer never drops a duplicate (a bridge that exits at once
/// leaves its batch unreleased, and the next one sends it again).
#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn sigterm_drains_in_flight_work_and_exits_0() {
    require_root();
    let mut link = link_one("256KiB");
    let (count, len) = (20_000u64, 512);
    let producer = produce(link.a.socket_path().to_path_buf(), "out", count, len);
    // The consumer reads on in its own thread while a bridge drains: the importer can only
    // store the exporter's last batch (and so let it drain) while someone empties "in". It runs
    // in `Background` (joined with a deadline), so a failure here cannot leave it blocked.
    let got = Arc::new(AtomicU64::new(0));
    let client = link.b.client();
    let consumer = Background::spawn("consumer", {
        let got = got.clone();
        move || {
            consume_across_importer_restarts(&client, "in", count, len, true, &mut |n| {
                got.store(n, Ordering::Release)
            })
        }
    });
    let reach = |n: u64| {
        wait_for(WAIT, format!("{n} messages through the bridge"), || {
            let now = got.load(Ordering::Acquire);
            (now >= n || consumer.is_finished())
                .then_some(())
                .ok_or_else(|| format!("{now} so far"))
        });
        // Stopped while the stream still flows, or the drain would have nothing to do.
        let now = got.load(Ordering::Acquire);
        assert!(
            now < count,
            "the stream was through ({now}) before the stop"
        );
    };
    let mut stops = Vec::new();
    reach(count / 3);
    link.export.signal(libc::SIGTERM);
    stops.push((
        "exporter",
        link.export.wait_exit(WAIT),
        link.export.stderr_text(),
    ));
    link.export = link_exporter(&link.hosts, &link.a);
    reach(2 * count / 3);
    link.import.signal(libc::SIGTERM);
    stops.push((
        "importer",
        link.import.wait_exit(WAIT),
        link.import.stderr_text(),
    ));
    let import_logs = link.import.stderr_text();
    link.import = link_importer(&link.hosts, &link.b, link.state.path());
    consumer.join(Duration::from_secs(120));
    producer.join(WAIT);
    assert_eq!(stops.len(), 2);
    for (which, status, log) in &stops {
        assert!(status.success(), "{which} exited {status}: {log}");
        assert!(
            log.contains("stopped: drained"),
            "{which} did not drain: {log}"
        );
    }
    // The importer that ran across the exporter's stop saw nothing twice.
    assert!(
        !import_logs.contains("duplicates dropped"),
        "the restarted exporter sent again what the stopped one had delivered: {import_logs}"
    );
}
