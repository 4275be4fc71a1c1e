//! The totals `info` reports for a fan-out channel (`messages_written`, `bytes_written`)
//! against what its producer really sent, when its consumers read at different speeds.

use shmem_broker_client::{Consumer, SlowConsumer, TryRecvError};
use shmem_broker_tests::*;

const COUNT: u64 = 48;
const LEN: usize = 1024;

/// Takes at most `max` messages without waiting; true once end-of-stream came.
fn take(consumer: &mut Consumer, max: usize, got: &mut u64) -> bool {
    let mut buf = Vec::new();
    for _ in 0..max {
        match consumer.try_recv_into(&mut buf) {
            Ok(true) => {
                assert_eq!(buf.len(), LEN, "message {got}");
                *got += 1;
            }
            Ok(false) => return true,
            Err(TryRecvError::Empty) => return false,
            Err(err) => panic!("receive: {err}"),
        }
    }
    false
}

/// Under policy `block` the producer writes each message into the first consumer's ring
/// before it waits for room in the second's, so while it waits the two rings' counters differ
/// by one. The broker used to add, at every look, the most any ring had grown since the last
/// look, which counted the slow ring's catch-up again each time; the totals must instead be the
/// furthest any ring got in the stream.
#[test]
fn fanout_totals_count_each_message_once_when_consumers_lag_unevenly() {
    let broker = Broker::start(None);
    let client = broker.client();
    client
        .channel("uneven")
        .capacity(4096)
        .max_consumers(2)
        .slow_consumer(SlowConsumer::Block)
        .create()
        .expect("create");
    // Attached in this order, the fast consumer's ring is the one written first.
    let mut fast = client.attach("uneven").consumer().expect("fast consumer");
    let mut slow = client.attach("uneven").consumer().expect("slow consumer");
    let socket = broker.socket_path().to_path_buf();
    let producer = Background::spawn("producer", move || {
        let client = connect(&socket);
        let mut producer = client.attach("uneven").producer().expect("producer");
        for _ in 0..COUNT {
            producer.send(&[7u8; LEN]).expect("send");
        }
        producer.close().expect("close");
    });
    let (mut fast_got, mut slow_got) = (0, 0);
    let (mut fast_done, mut slow_done) = (false, false);
    wait_for(WAIT, "both consumers to reach end-of-stream", || {
        // The fast one takes everything there is, the broker looks (as `shmemctl info` or the
        // metrics timer would), then the slow one takes a single message.
        fast_done = fast_done || take(&mut fast, usize::MAX, &mut fast_got);
        broker.info("uneven");
        slow_done = slow_done || take(&mut slow, 1, &mut slow_got);
        broker.info("uneven");
        if fast_done && slow_done {
            Ok(())
        } else {
            Err(format!("fast got {fast_got}, slow got {slow_got}"))
        }
    });
    producer.join(WAIT);
    assert_eq!((fast_got, slow_got), (COUNT, COUNT));
    let info = broker.info("uneven");
    assert_eq!(json_u64(&info, "messages_written"), COUNT, "{info}");
    assert_eq!(
        json_u64(&info, "bytes_written"),
        COUNT * LEN as u64,
        "{info}"
    );
    assert_eq!(json_u64(&info, "messages_read"), 2 * COUNT, "{info}");
}
