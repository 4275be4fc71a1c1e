//! The sleep/wake handshake of a ring, in one place: the waiting flags, the order of the flag
//! and position accesses, and the fences. The ring (`super`) runs these functions on its
//! shared-memory atomics; the model check below runs the very same functions on loom's
//! atomics, with an eventfd modelled by a mutex and condition variable, over every
//! interleaving and every reordering the memory model allows:
//!
//! ```sh
//! RUSTFLAGS="--cfg loom" cargo test -p shmem-broker-proto --release --lib loom
//! ```
//!
//! A side that cannot go on (the consumer: nothing to read; the producer: no room) stores its
//! waiting flag, then checks the ring once more ([`prepare_to_sleep`]); the other side makes
//! its progress visible ([`publish`] of its position), then checks the flag
//! ([`take_waiting`]) and writes the sleeper's eventfd if it was set. This is Dekker's
//! pattern: with a SeqCst fence between the store and the load on each side, at least one of
//! them sees the other's store, so either the sleeper sees the progress and stays awake, or
//! the waker sees the flag and wakes it.
//!
//! Both waking rules are modelled: `take_waiting` (layouts 1 and 2: the waker clears the flag)
//! and `take_ticket` (layout 3: the waker only reads it, see the ring's module docs).
//!
//! What the model shows: removing either fence, weakening them to AcqRel, or storing the
//! flag after the re-check makes both models end with a thread asleep for ever (loom reports
//! a deadlock). What it does not cover: the ring logic around the handshake (which position
//! the re-check loads: it must be the position itself, not a seal: `Poll::Exact`), and more
//! than one sleep per side: a two-round model reports a deadlock that C++'s memory model
//! forbids (loom orders the waker's `swap` only partially against the sleeper's next flag
//! store, although the swap read an older value), so it is not kept.

use std::sync::atomic::Ordering;

/// A waiting flag (`consumer_waiting`, `producer_waiting`): the atomic operations the
/// handshake needs, and the fence of the same memory model.
pub(crate) trait Flag {
    fn load(&self, order: Ordering) -> u32;
    fn store(&self, value: u32, order: Ordering);
    fn swap(&self, value: u32, order: Ordering) -> u32;
    fn fence(order: Ordering);
}

/// A ring position (`write_pos`, `read_pos`), as far as the handshake is concerned.
pub(crate) trait Position {
    fn load(&self, order: Ordering) -> u64;
    fn store(&self, value: u64, order: Ordering);
    fn fence(order: Ordering);
}

// The handshake runs for every message, from the client crate: `#[inline]` lets it cross
// the crate boundary (without LTO, a plain generic impl here is not inlined there).
impl Flag for std::sync::atomic::AtomicU32 {
    #[inline]
    fn load(&self, order: Ordering) -> u32 {
        self.load(order)
    }
    #[inline]
    fn store(&self, value: u32, order: Ordering) {
        self.store(value, order)
    }
    #[inline]
    fn swap(&self, value: u32, order: Ordering) -> u32 {
        self.swap(value, order)
    }
    #[inline]
    fn fence(order: Ordering) {
        std::sync::atomic::fence(order)
    }
}

impl Position for std::sync::atomic::AtomicU64 {
    #[inline]
    fn load(&self, order: Ordering) -> u64 {
        self.load(order)
    }
    #[inline]
    fn store(&self, value: u64, order: Ordering) {
        self.store(value, order)
    }
    #[inline]
    fn fence(order: Ordering) {
        std::sync::atomic::fence(order)
    }
}

/// Makes a side's progress visible: the new position, after everything it covers (frames
/// written, or frames read out). The fence in [`take_waiting`], which every caller runs after
/// publishing, orders it before the flag load.
#[inline]
pub(crate) fn publish<P: Position>(position: &P, value: u64) {
    position.store(value, Ordering::Release);
}

/// The other side's position, and everything it published up to it. The position may lie in
/// a read-only mapping, where Rust promises only `Relaxed` loads (see `mapping::load_acquire`):
/// a Relaxed load and an Acquire fence.
#[inline]
pub(crate) fn observe<P: Position>(position: &P) -> u64 {
    let value = position.load(Ordering::Relaxed);
    P::fence(Ordering::Acquire);
    value
}

/// The ticket for a side's next sleep: never 0 (which means awake) and different from the last
/// one, so a waker that goes by tickets ([`take_ticket`]) wakes every sleep once.
#[inline]
pub(crate) fn next_ticket(last: u32) -> u32 {
    last.wrapping_add(1).max(1)
}

/// Before sleeping: announces it in the side's waiting `flag` (storing the sleep's `ticket`),
/// then asks `can_progress` (which must look at the other side's position through [`observe`])
/// once more. `Ok(true)`: sleep on the eventfd now; `Ok(false)`: progress is possible, the
/// flag is withdrawn.
#[inline]
pub(crate) fn prepare_to_sleep<S, F: Flag, E>(
    side: &mut S,
    flag: impl Fn(&S) -> &F,
    ticket: impl Fn(&S) -> u32,
    can_progress: impl FnOnce(&mut S) -> Result<bool, E>,
) -> Result<bool, E> {
    flag(side).store(ticket(side), Ordering::SeqCst);
    F::fence(Ordering::SeqCst);
    if can_progress(side)? {
        done_sleeping(flag(side));
        return Ok(false);
    }
    Ok(true)
}

/// After waking (or deciding not to sleep): withdraws the flag.
#[inline]
pub(crate) fn done_sleeping<F: Flag>(flag: &F) {
    flag.store(0, Ordering::Relaxed);
}

/// After publishing: true if the other side announced that it sleeps, so it must be woken
/// (the flag is cleared: one wake-up per announcement). Costs a fence and a load of a line
/// nobody wrote when nobody sleeps.
#[inline]
pub(crate) fn take_waiting<F: Flag>(flag: &F) -> bool {
    F::fence(Ordering::SeqCst);
    flag.load(Ordering::Relaxed) != 0 && flag.swap(0, Ordering::AcqRel) != 0
}

/// [`take_waiting`] for a flag the waker may only read (layout 3): true if the other side
/// sleeps on a ticket other than `woken`, the one this waker last woke; that ticket is then
/// remembered, so each sleep costs one wake-up. The same fence, then one load.
#[inline]
pub(crate) fn take_ticket<F: Flag>(flag: &F, woken: &mut u32) -> bool {
    F::fence(Ordering::SeqCst);
    let ticket = flag.load(Ordering::Relaxed);
    if ticket == 0 {
        // Awake: whatever it sleeps on next is new to us, even a ticket equal to the last.
        *woken = 0;
        return false;
    }
    if ticket == *woken {
        return false;
    }
    *woken = ticket;
    true
}

#[cfg(all(test, loom))]
mod loom_model {
    use super::*;
    use loom::sync::atomic::{AtomicU32, AtomicU64};
    use loom::sync::{Arc, Condvar, Mutex};
    use loom::thread;

    impl Flag for AtomicU32 {
        fn load(&self, order: Ordering) -> u32 {
            self.load(order)
        }
        fn store(&self, value: u32, order: Ordering) {
            self.store(value, order)
        }
        fn swap(&self, value: u32, order: Ordering) -> u32 {
            self.swap(value, order)
        }
        fn fence(order: Ordering) {
            loom::sync::atomic::fence(order)
        }
    }

    impl Position for AtomicU64 {
        fn load(&self, order: Ordering) -> u64 {
            self.load(order)
        }
        fn store(&self, value: u64, order: Ordering) {
            self.store(value, order)
        }
        fn fence(order: Ordering) {
            loom::sync::atomic::fence(order)
        }
    }

    /// An eventfd (counter mode): `write` adds one, `read` blocks until the count is not 0
    /// and takes it all, `drain` takes it without blocking (what the clients do before
    /// arming). A lost wake-up leaves a thread blocked in `read` for ever, which loom reports
    /// as a deadlock.
    struct EventFd {
        count: Mutex<u64>,
        changed: Condvar,
    }

    impl EventFd {
        fn new() -> EventFd {
            EventFd {
                count: Mutex::new(0),
                changed: Condvar::new(),
            }
        }

        fn write(&self) {
            *self.count.lock().expect("lock") += 1;
            self.changed.notify_one();
        }

        fn read(&self) {
            let mut count = self.count.lock().expect("lock");
            while *count == 0 {
                count = self.changed.wait(count).expect("wait");
            }
            *count = 0;
        }

        fn drain(&self) {
            *self.count.lock().expect("lock") = 0;
        }
    }

    /// The header fields of the handshake, one ring, and the channel's two eventfds.
    struct Ring {
        /// Layout 3: wakers only read the flags and go by tickets.
        by_ticket: bool,
        write_pos: AtomicU64,
        read_pos: AtomicU64,
        consumer_waiting: AtomicU32,
        producer_waiting: AtomicU32,
        data_ready: EventFd,
        space_ready: EventFd,
    }

    impl Ring {
        fn new(write_pos: u64, by_ticket: bool) -> Arc<Ring> {
            Arc::new(Ring {
                by_ticket,
                write_pos: AtomicU64::new(write_pos),
                read_pos: AtomicU64::new(0),
                consumer_waiting: AtomicU32::new(0),
                producer_waiting: AtomicU32::new(0),
                data_ready: EventFd::new(),
                space_ready: EventFd::new(),
            })
        }

        /// The producer's side of a publish (RingWriter::publish, then the caller's
        /// take_consumer_waiting and eventfd write).
        fn produce(&self, write_pos: u64) {
            publish(&self.write_pos, write_pos);
            if self.take(&self.consumer_waiting) {
                self.data_ready.write();
            }
        }

        /// The waker's check: take_ticket (layout 3) or take_waiting, as the ring says.
        fn take(&self, flag: &AtomicU32) -> bool {
            if self.by_ticket {
                take_ticket(flag, &mut 0)
            } else {
                take_waiting(flag)
            }
        }

        /// The consumer's side of a read (RingReader::commit, then take_producer_waiting and
        /// the eventfd write).
        fn consume(&self, read_pos: u64) {
            publish(&self.read_pos, read_pos);
            if self.take(&self.producer_waiting) {
                self.space_ready.write();
            }
        }

        /// Consumer::wait_for_data: until the producer's position passes `read_pos`, drain,
        /// arm (RingReader::prepare_to_sleep, whose exact poll loads write_pos), sleep.
        fn wait_for_data(&self, read_pos: u64) {
            while observe(&self.write_pos) <= read_pos {
                self.data_ready.drain();
                let can_read = |ring: &mut &Ring| Ok::<_, ()>(observe(&ring.write_pos) > read_pos);
                let asleep =
                    prepare_to_sleep(&mut &*self, |ring| &ring.consumer_waiting, |_| 1, can_read);
                if asleep == Ok(true) {
                    self.data_ready.read();
                    done_sleeping(&self.consumer_waiting);
                }
            }
        }

        /// Producer::wait_for_room: until the consumer's position reaches `read_pos`, the
        /// same with RingWriter::prepare_to_sleep (can_progress loads read_pos).
        fn wait_for_room(&self, read_pos: u64) {
            while observe(&self.read_pos) < read_pos {
                self.space_ready.drain();
                let room = |ring: &mut &Ring| Ok::<_, ()>(observe(&ring.read_pos) >= read_pos);
                let asleep =
                    prepare_to_sleep(&mut &*self, |ring| &ring.producer_waiting, |_| 1, room);
                if asleep == Ok(true) {
                    self.space_ready.read();
                    done_sleeping(&self.producer_waiting);
                }
            }
        }
    }

    #[test]
    fn loom_a_consumer_going_to_sleep_is_woken_by_the_publish_it_waits_for() {
        consumer_woken(false);
    }

    #[test]
    fn loom_a_consumer_going_to_sleep_is_woken_by_ticket() {
        consumer_woken(true);
    }

    #[test]
    fn loom_a_producer_waiting_for_room_is_woken_by_the_read_that_frees_it() {
        producer_woken(false);
    }

    #[test]
    fn loom_a_producer_waiting_for_room_is_woken_by_ticket() {
        producer_woken(true);
    }

    fn consumer_woken(by_ticket: bool) {
        loom::model(move || {
            let ring = Ring::new(0, by_ticket);
            let producer = {
                let ring = ring.clone();
                thread::spawn(move || ring.produce(16))
            };
            ring.wait_for_data(0);
            producer.join().expect("producer");
        });
    }

    fn producer_woken(by_ticket: bool) {
        loom::model(move || {
            // A full ring: one 16-byte frame in a ring of 16 bytes.
            let ring = Ring::new(16, by_ticket);
            let consumer = {
                let ring = ring.clone();
                thread::spawn(move || ring.consume(16))
            };
            ring.wait_for_room(16);
            consumer.join().expect("consumer");
        });
    }
}
