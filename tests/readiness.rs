//! `ready_fd()` tells the truth: a producer or consumer parked in a real epoll instance
//! (edge-triggered, as tokio registers it) is woken by everything that can change what its
//! next `try_*` call returns — a peer joining late, a peer leaving, the channel dropped, the
//! broker going away — in one-to-one and fan-out channels, and is not woken otherwise. And a
//! `try_*` call never waits for the broker.

use rustix::event::epoll;
use shmem_broker_client::{Client, Consumer, Error, Producer, SlowConsumer, TryRecvError};
use shmem_broker_tests::*;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

/// How long "nothing happens" is watched.
const QUIET: Duration = Duration::from_millis(300);

/// An epoll instance watching one endpoint's `ready_fd()`, edge-triggered.
struct Parked(OwnedFd);

impl Parked {
    fn new(fd: impl AsFd) -> Parked {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).expect("epoll_create");
        epoll::add(
            &epoll,
            fd,
            epoll::EventData::new_u64(1),
            epoll::EventFlags::IN | epoll::EventFlags::ET,
        )
        .expect("epoll_ctl ADD");
        Parked(epoll)
    }

    /// True if an edge came within `timeout`.
    fn woken(&self, timeout: Duration) -> bool {
        let mut events = Vec::with_capacity(4);
        let timeout = rustix::event::Timespec::try_from(timeout).expect("timeout");
        let _ = epoll::wait(&self.0, spare(&mut events), Some(&timeout));
        !events.is_empty()
    }
}

fn spare(events: &mut Vec<epoll::Event>) -> rustix::buffer::SpareCapacity<'_, epoll::Event> {
    rustix::buffer::spare_capacity(events)
}

fn fanout(client: &Client, name: &str, producers: u32, consumers: u32, policy: SlowConsumer) {
    client
        .channel(name)
        .capacity(64 << 10)
        .max_producers(producers)
        .max_consumers(consumers)
        .slow_consumer(policy)
        .create()
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
}

/// Parks `consumer` until `try_recv` returns something other than empty, as an event loop
/// would; fails if the fd stays quiet for `WAIT` while the call would not block.
fn recv_parked(consumer: &mut Consumer) -> Result<Option<Vec<u8>>, Error> {
    let parked = Parked::new(consumer.ready_fd());
    loop {
        match consumer.try_recv() {
            Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Failed(e)) => return Err(e),
            Ok(got) => return Ok(got),
            Err(other) => panic!("try_recv: {other}"),
        }
        assert!(
            parked.woken(WAIT),
            "consumer parked on ready_fd was never woken"
        );
    }
}

#[test]
fn a_fanout_consumer_parked_in_epoll_learns_of_a_producer_that_joins_late() {
    let broker = Broker::start(None);
    let client = broker.client();
    fanout(&client, "late", 2, 2, SlowConsumer::Block);
    let socket = broker.socket_path().to_path_buf();
    with_deadline(WAIT * 3, "late producer", move || {
        // The first producer's slot may exist from the start; the second one's is made
        // when it attaches, and announced by a lane event only.
        let first = connect(&socket).producer("late").expect("first producer");
        let mut consumer = connect(&socket).consumer("late").expect("consumer");
        assert!(consumer.try_recv().is_err_and(|e| e.is_empty()));
        let parked = Parked::new(consumer.ready_fd());
        assert!(!parked.woken(QUIET), "woken with nothing sent");
        let writer = std::thread::spawn(move || {
            let mut producer = connect(&socket).producer("late").expect("producer");
            // Long enough for the consumer to apply the new lane and arm it, or not.
            std::thread::sleep(QUIET);
            producer.send(b"first").expect("send");
            producer
        });
        assert!(parked.woken(WAIT), "no wake-up when the producer joined");
        let got = recv_parked(&mut consumer).expect("recv");
        assert_eq!(got.as_deref(), Some(&b"first"[..]));
        drop(writer.join().expect("producer thread"));
        drop(first);
    });
}

#[test]
fn a_one_to_one_consumer_parked_in_epoll_gets_the_first_message_of_a_late_producer() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "late1", "--capacity", "64KiB"]);
    let socket = broker.socket_path().to_path_buf();
    with_deadline(WAIT * 3, "late producer 1:1", move || {
        let mut consumer = connect(&socket).consumer("late1").expect("consumer");
        assert!(consumer.try_recv().is_err_and(|e| e.is_empty()));
        let parked = Parked::new(consumer.ready_fd());
        let mut producer = connect(&socket).producer("late1").expect("producer");
        producer.send(b"hello").expect("send");
        assert!(
            parked.woken(WAIT),
            "no wake-up for the late producer's message"
        );
        assert_eq!(
            recv_parked(&mut consumer).expect("recv").as_deref(),
            Some(&b"hello"[..])
        );
    });
}

#[test]
fn a_fanout_producer_parked_on_a_full_ring_learns_that_its_consumer_left() {
    let broker = Broker::start(None);
    let client = broker.client();
    fanout(&client, "leave", 2, 2, SlowConsumer::Block);
    let socket = broker.socket_path().to_path_buf();
    with_deadline(WAIT * 3, "consumer leaving", move || {
        let consumer = connect(&socket).consumer("leave").expect("consumer");
        let mut producer = connect(&socket).producer("leave").expect("producer");
        let sent = fill_ring(&mut producer, &[5u8; 1000], 100);
        assert!(sent > 0);
        let parked = Parked::new(producer.ready_fd());
        assert!(!parked.woken(QUIET), "woken while the ring is still full");
        drop(consumer);
        assert!(parked.woken(WAIT), "no wake-up when the consumer left");
        producer
            .try_send(&[5u8; 1000])
            .expect("with no consumer left, nothing holds the producer back");
        assert_eq!(producer.consumers(), 0);
    });
}

#[test]
fn a_fanout_producer_parked_on_a_full_ring_learns_of_a_consumer_that_joins() {
    // Two consumers: one reads nothing (the producer waits for it), the other joins late and
    // must get messages from then on; the producer learns of it without sending.
    let broker = Broker::start(None);
    let client = broker.client();
    fanout(&client, "join", 1, 3, SlowConsumer::Block);
    let socket = broker.socket_path().to_path_buf();
    with_deadline(WAIT * 3, "consumer joining", move || {
        let stuck = connect(&socket).consumer("join").expect("consumer");
        let mut producer = connect(&socket).producer("join").expect("producer");
        fill_ring(&mut producer, &[6u8; 1000], 100);
        let parked = Parked::new(producer.ready_fd());
        let late = connect(&socket).consumer("join").expect("late consumer");
        assert!(parked.woken(WAIT), "no wake-up when a consumer joined");
        assert!(producer.try_send(&[6u8; 1000]).is_err_and(|e| e.is_full()));
        assert_eq!(
            producer.consumers(),
            2,
            "the producer sees the new consumer"
        );
        drop(stuck);
        assert!(
            parked.woken(WAIT),
            "no wake-up when the stuck consumer left"
        );
        producer.try_send(b"to the late one").expect("room now");
        let mut late = late;
        assert_eq!(
            recv_parked(&mut late).expect("recv").as_deref(),
            Some(&b"to the late one"[..])
        );
    });
}

#[test]
fn a_parked_endpoint_is_woken_when_the_channel_is_dropped() {
    let broker = Broker::start(None);
    let client = broker.client();
    fanout(&client, "dropme", 2, 2, SlowConsumer::Block);
    broker.ctl_ok(&["create", "dropme1", "--capacity", "64KiB"]);
    let socket = broker.socket_path().to_path_buf();
    let ctl = broker.client();
    with_deadline(WAIT * 3, "drop", move || {
        for name in ["dropme", "dropme1"] {
            let mut consumer = connect(&socket).consumer(name).expect("consumer");
            assert!(consumer.try_recv().is_err_and(|e| e.is_empty()));
            let parked = Parked::new(consumer.ready_fd());
            ctl.drop_channel(name).expect("drop");
            assert!(parked.woken(WAIT), "{name}: no wake-up on drop");
            match recv_parked(&mut consumer) {
                Err(Error::ChannelDropped { .. }) => {}
                other => panic!("{name}: after the drop: {other:?}"),
            }
        }
    });
}

#[test]
fn a_parked_endpoint_is_woken_when_the_broker_goes_away_and_then_left_quiet() {
    let mut broker = Broker::start(None);
    let client = broker.client();
    fanout(&client, "gone", 2, 2, SlowConsumer::Block);
    broker.ctl_ok(&["create", "gone1", "--capacity", "64KiB"]);
    let mut consumers: Vec<(Consumer, Parked)> = ["gone", "gone1"]
        .iter()
        .map(|name| {
            let mut consumer = connect(broker.socket_path())
                .consumer(name)
                .expect("attach");
            assert!(consumer.try_recv().is_err_and(|e| e.is_empty()));
            let parked = Parked::new(consumer.ready_fd());
            (consumer, parked)
        })
        .collect();
    let mut producer: Producer = connect(broker.socket_path()).producer("gone1").expect("p");
    broker.proc_mut().kill9();
    for (consumer, parked) in &mut consumers {
        assert!(parked.woken(WAIT), "{}: no wake-up", consumer.channel());
        assert!(consumer.try_recv().is_err_and(|e| e.is_empty()));
        assert!(!consumer.broker_connected());
        // A hung-up socket is readable for ever: it must have left the watch list.
        assert!(
            !parked.woken(QUIET),
            "{}: ready_fd keeps firing with the broker gone (an event loop would spin)",
            consumer.channel()
        );
    }
    // Data keeps flowing without the broker, and still wakes the parked consumer.
    producer.send(b"still here").expect("send");
    let (consumer, parked) = &mut consumers[1];
    assert!(parked.woken(WAIT));
    assert_eq!(
        consumer.try_recv().expect("try_recv").as_deref(),
        Some(&b"still here"[..])
    );
}

#[test]
fn try_calls_never_wait_for_the_broker() {
    // Peers come and go while a producer and a consumer poll with try_*: every call returns
    // at once (the old client waited up to a second for a lane event after a control-page
    // bump).
    let broker = Broker::start(None);
    let client = broker.client();
    fanout(&client, "quick", 3, 3, SlowConsumer::Drop);
    let socket = broker.socket_path().to_path_buf();
    with_deadline(WAIT * 6, "try calls", move || {
        let mut producer = connect(&socket).producer("quick").expect("producer");
        let mut consumer = connect(&socket).consumer("quick").expect("consumer");
        let churn_socket = socket.clone();
        let churn = std::thread::spawn(move || {
            let client = connect(&churn_socket);
            for _ in 0..20 {
                let p = client.producer("quick").expect("churn producer");
                let c = client.consumer("quick").expect("churn consumer");
                std::thread::sleep(Duration::from_millis(20));
                drop((p, c));
            }
        });
        let mut slowest = Duration::ZERO;
        while !churn.is_finished() {
            let start = Instant::now();
            let _ = producer.try_send(b"tick");
            let _ = consumer.try_recv();
            slowest = slowest.max(start.elapsed());
        }
        churn.join().expect("churn thread");
        assert!(
            slowest < Duration::from_millis(200),
            "a try_send + try_recv took {slowest:?}"
        );
    });
}

#[test]
fn try_calls_do_not_block_when_a_hostile_peer_makes_the_shared_eventfd_blocking() {
    // The eventfds are shared file descriptions: a peer's fcntl(F_SETFL) changes everyone's
    // copy. A producer that clears O_NONBLOCK on its consumer's data_ready must not make that
    // consumer's try_recv (which empties the eventfd before arming) block; nor, from the other
    // side, a consumer a producer's try_send.
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "nonblock-c", "--capacity", "64KiB"]);
    broker.ctl_ok(&["create", "nonblock-p", "--capacity", "64KiB"]);
    let socket = broker.socket_path().to_path_buf();
    with_deadline(WAIT, "try calls on a blocking eventfd", move || {
        let mut consumer = connect(&socket).consumer("nonblock-c").expect("consumer");
        let hostile_producer = raw_attach(&socket, "nonblock-c", "producer");
        rustix::fs::fcntl_setfl(
            hostile_producer.fd("data_ready"),
            rustix::fs::OFlags::empty(),
        )
        .expect("clear O_NONBLOCK");
        for _ in 0..3 {
            assert!(consumer.try_recv().is_err_and(|e| e.is_empty()));
        }
        let mut producer = connect(&socket).producer("nonblock-p").expect("producer");
        let hostile_consumer = raw_attach(&socket, "nonblock-p", "consumer");
        rustix::fs::fcntl_setfl(
            hostile_consumer.fd("space_ready"),
            rustix::fs::OFlags::empty(),
        )
        .expect("clear O_NONBLOCK");
        fill_ring(&mut producer, &[1u8; 1000], 100);
        for _ in 0..3 {
            assert!(producer.try_send(&[1u8; 1000]).is_err_and(|e| e.is_full()));
        }
        drop((hostile_producer, hostile_consumer));
    });
}

/// `broker_connected()` answers for the time of the call: endpoints that have not touched
/// their connection since the broker died (nothing to send, nothing to wait for) say false
/// all the same.
#[test]
fn idle_endpoints_know_at_once_that_the_broker_is_gone() {
    let mut broker = Broker::start(None);
    broker.ctl_ok(&["create", "idle", "--capacity", "16KiB"]);
    let client = broker.client();
    let producer = client.producer("idle").expect("producer");
    let consumer = client.consumer("idle").expect("consumer");
    assert!(producer.broker_connected() && consumer.broker_connected());
    broker.proc_mut().kill9();
    wait_for(WAIT, "both endpoints to say the broker is gone", || match (
        producer.broker_connected(),
        consumer.broker_connected(),
    ) {
        (false, false) => Ok(()),
        both => Err(format!("(producer, consumer) connected: {both:?}")),
    });
}
