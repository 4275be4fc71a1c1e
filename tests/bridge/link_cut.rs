//! The link between the hosts cut and restored mid-stream.

use std::time::Duration;

use shmem_broker_tests::bridge::*;
use shmem_broker_tests::*;

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn link_cut_for_5_s_and_restored() {
    require_root();
    let link = link_one("1MiB");
    let (count, len) = (20_000u64, 1024);
    let producer = produce(link.a.socket_path().to_path_buf(), "out", count, len);
    let mut cut_done = false;
    let client = link.b.client();
    consume_in_order(&client, "in", count, len, |got| {
        if !cut_done && got == count / 3 {
            cut_done = true;
            link.hosts.link(false);
            std::thread::sleep(Duration::from_secs(5));
            link.hosts.link(true);
        }
    });
    assert!(cut_done);
    producer.join(WAIT);
}
