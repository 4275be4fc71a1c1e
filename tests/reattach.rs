//! A client that closes an attachment and attaches again at once is never told "busy" about
//! its own closed attachment.
//!
//! This test has a binary of its own: when other tests in the same process fork children (to
//! exec helpers), a child briefly holds copies of this test's sockets between fork and exec, so
//! the "closed" connection is really still open for a moment and the broker rightly keeps the
//! slot. Alone in its process, every close is a real close.

use shmem_broker_client::Client;
use shmem_broker_tests::{Background, Broker, WAIT};

#[test]
fn a_closed_attachment_frees_its_slot_before_the_next_attach_is_served() {
    // PROTOCOL.md: "the attachment lasts exactly as long as the connection: close it ... and
    // the broker frees the slot at once". A client that drops an endpoint and attaches again
    // must never be refused with "channel busy" naming its own, already closed, attachment.
    // The race is narrow: it takes many quick cycles, while other clients keep the broker
    // accepting connections, to show.
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "again", "--capacity", "1MiB"]);
    let client = broker.client();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let others = {
        let (socket, stop) = (broker.socket_path().to_path_buf(), stop.clone());
        Background::spawn("other clients", move || {
            let mut served = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(other) = Client::connect(&socket) {
                    served += u64::from(other.status().is_ok());
                }
            }
            served
        })
    };
    let mut refused = Vec::new();
    for i in 0..10_000 {
        let result = if i % 2 == 0 {
            client.consumer("again").map(drop)
        } else {
            client.producer("again").map(drop)
        };
        if let Err(e) = result {
            refused.push(format!("cycle {i}: {e}"));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served = others.join(WAIT);
    assert!(served > 0, "the other clients were never served");
    assert!(
        refused.is_empty(),
        "{} of 10000 attaches right after closing the previous attachment were refused \
         (test pid {}); first ones: {:?}",
        refused.len(),
        std::process::id(),
        &refused[..refused.len().min(3)]
    );
}
