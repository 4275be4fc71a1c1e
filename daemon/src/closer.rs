//! Closing what a client handed us, off the event loop.
//!
//! `close(2)` of the last reference to a file runs that file's release in the closing thread,
//! and some releases sleep: a TCP socket with unsent data and `SO_LINGER` waits up to the linger
//! time, a FUSE file waits for its server to answer `FLUSH`. A client controls both: it can pass
//! such an fd over `SCM_RIGHTS`, or leave it unread in its connection's receive queue, where the
//! kernel drops it when the broker closes that connection. So nothing a client supplied (fds it
//! sent, and the sockets of client connections) is dropped on the event-loop thread: it goes to
//! the closer threads below.
//!
//! On Linux 6.16+ the listener refuses passed fds outright (`SO_PASSRIGHTS`, see `listener`), so
//! only connection sockets with nothing hostile queued come here and every close is quick. On
//! older kernels a hostile client can keep a closer thread asleep for as long as its linger time
//! (or, with a FUSE fd whose server never answers, indefinitely). There are [`CLOSER_THREADS`]
//! of them so one stuck close does not hold back the rest; what a hostile client can still cost
//! is delayed reclaim of fds. Those fds are counted in [`Closer::pending`] (the server counts
//! them against the fd limit, so it refuses clients rather than run out) and per uid in
//! [`Closer::pending_of`] (the server refuses a uid that has too many still being closed).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};

/// Threads closing in parallel: a hostile client must wedge every one of them to delay the
/// others' closes, and each costs only a stack while it waits.
pub const CLOSER_THREADS: usize = 4;

/// Something to drop: its fds (how many it holds) and whose they were.
struct Doomed {
    item: Box<dyn Send>,
    fds: usize,
    uid: u32,
}

#[derive(Default)]
struct Counts {
    total: AtomicUsize,
    by_uid: Mutex<HashMap<u32, usize>>,
}

impl Counts {
    fn add(&self, uid: u32, fds: usize) {
        self.total.fetch_add(fds, Ordering::Relaxed);
        let mut by_uid = self.by_uid.lock().unwrap_or_else(PoisonError::into_inner);
        let count = by_uid.entry(uid).or_insert(0);
        *count = count.saturating_add(fds);
    }

    fn remove(&self, uid: u32, fds: usize) {
        self.total.fetch_sub(fds, Ordering::Relaxed);
        let mut by_uid = self.by_uid.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = by_uid.get_mut(&uid) {
            *count = count.saturating_sub(fds);
            if *count == 0 {
                by_uid.remove(&uid);
            }
        }
    }
}

pub struct Closer {
    queue: Sender<Doomed>,
    counts: Arc<Counts>,
}

impl Closer {
    /// Starts the closer threads.
    pub fn start() -> std::io::Result<Closer> {
        let (queue, work) = channel::<Doomed>();
        let work = Arc::new(Mutex::new(work));
        let counts = Arc::new(Counts::default());
        for index in 0..CLOSER_THREADS {
            let work = Arc::clone(&work);
            let counts = Arc::clone(&counts);
            std::thread::Builder::new()
                .name(format!("closer-{index}"))
                .spawn(move || close_loop(&work, &counts))?;
        }
        Ok(Closer { queue, counts })
    }

    /// Drops `item`, which holds `fds` descriptors that `uid` supplied or controls, on a
    /// closer thread. Never blocks.
    pub fn discard<T: Send + 'static>(&self, uid: u32, fds: usize, item: T) {
        self.counts.add(uid, fds);
        let doomed = Doomed {
            item: Box::new(item),
            fds,
            uid,
        };
        // The receivers live as long as the process (the threads never return while a sender
        // exists), so this only fails if a closer thread panicked; then drop it here rather
        // than leak it.
        if let Err(failed) = self.queue.send(doomed) {
            self.counts.remove(failed.0.uid, failed.0.fds);
        }
    }

    /// Fds handed over and not closed yet.
    pub fn pending(&self) -> usize {
        self.counts.total.load(Ordering::Relaxed)
    }

    /// Fds from `uid`'s connections not closed yet.
    pub fn pending_of(&self, uid: u32) -> usize {
        self.counts
            .by_uid
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&uid)
            .copied()
            .unwrap_or(0)
    }
}

fn close_loop(work: &Mutex<Receiver<Doomed>>, counts: &Counts) {
    loop {
        // The lock is held only while waiting for the next item, not while closing it, so the
        // other threads take the next items while this one sleeps in close(2).
        let next = work.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(doomed) = next else {
            return; // the Closer is gone: the broker is exiting
        };
        let Doomed { item, fds, uid } = doomed;
        drop(item);
        counts.remove(uid, fds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn discarded_fds_are_closed_and_counted_until_then() {
        let closer = Closer::start().expect("start the closer threads");
        let (read_end, write_end) =
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::NONBLOCK).expect("pipe");
        closer.discard(1000, 1, write_end);
        let deadline = Instant::now() + Duration::from_secs(5);
        // EOF on the read end once the write end is closed by a closer thread.
        loop {
            if rustix::io::read(&read_end, &mut [0u8; 1]).ok() == Some(0) {
                break;
            }
            assert!(Instant::now() < deadline, "the write end was never closed");
            std::thread::sleep(Duration::from_millis(10));
        }
        while closer.pending() != 0 || closer.pending_of(1000) != 0 {
            assert!(Instant::now() < deadline, "the count never went back to 0");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
