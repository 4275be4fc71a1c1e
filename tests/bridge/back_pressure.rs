//! Back-pressure across the bridge and the bridges' memory bounds under a slow remote
//! consumer.

use std::sync::atomic::Ordering;
use std::time::Duration;

use shmem_broker_tests::bridge::*;
use shmem_broker_tests::*;

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn slow_remote_consumer_slows_the_producer_and_bridges_stay_bounded() {
    require_root();
    let mut link = link_one("4MiB");
    let (count, len) = (300u64, 1 << 20);
    let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let producer = {
        let (socket, written) = (link.a.socket_path().to_path_buf(), written.clone());
        Background::spawn("producer", move || {
            let client = connect(&socket);
            let mut producer = client.producer("out").expect("attach producer");
            for seq in 0..count {
                producer.send(&numbered(seq, len)).expect("send");
                written.store(seq + 1, Ordering::Release);
            }
            producer.close().expect("close");
        })
    };
    let (export_pid, import_pid) = (link.export.pid(), link.import.pid());
    let rss_before = (vm_rss_kib(export_pid), vm_rss_kib(import_pid));
    let mut most_ahead = 0u64;
    let mut rss_most = (0u64, 0u64);
    consume_in_order(&link.b.client(), "in", count, len, |got| {
        std::thread::sleep(Duration::from_millis(30));
        most_ahead = most_ahead.max(written.load(Ordering::Acquire).saturating_sub(got));
        let rss = (vm_rss_kib(export_pid), vm_rss_kib(import_pid));
        rss_most = (rss_most.0.max(rss.0), rss_most.1.max(rss.1));
    });
    producer.join(WAIT);
    eprintln!(
        "producer at most {most_ahead} MiB ahead; RSS KiB before {rss_before:?}, peak {rss_most:?}"
    );
    // What can be in between: ring A (4), ring B (4), the importer's queue (8), a batch in
    // the exporter and Zenoh's buffers: a bound, far below the 300 MiB sent.
    assert!(
        most_ahead <= 40,
        "the producer ran {most_ahead} MiB ahead of the consumer: no back-pressure"
    );
    for (name, before, peak) in [
        ("exporter", rss_before.0, rss_most.0),
        ("importer", rss_before.1, rss_most.1),
    ] {
        assert!(
            peak < before + 96 * 1024,
            "{name} grew from {before} KiB to {peak} KiB"
        );
    }
    assert!(link.export.is_running() && link.import.is_running());
}
