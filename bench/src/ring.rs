//! The seed's own ring as a peer (issue 14): `shmem_ipc::sharedring` between two processes, a
//! byte ring in a memfd with two eventfds, carrying the same fixed-size messages as the
//! sockets. Blocking sides wait as its API does: `block_until_writable` / `block_until_readable`
//! (a read of the full / empty eventfd, which the other side writes when the ring stops being
//! full / empty); busy-polling sides retry instead. A message whose first 8 bytes are
//! [`END`] ends the stream.
//!
//! The parent creates each ring and hands both workers its memfd and eventfds; the sides map it
//! with `Sender::open` / `Receiver::open`.

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use anyhow::{Context, Result};
use shmem_broker_client::copy::copy_raw;
use shmem_ipc::sharedring::{Receiver, Sender};

use crate::plan::Plan;
use crate::results::{LatencyMode, Rate};
use crate::stats::Samples;
use crate::sys::CorePair;
use crate::transport::{Rx, Tx, Wait, TX_FD};
use crate::worker::{run_pair, Link, Role, Side, Task};

/// The stamp of the message that ends a stream (sequence numbers and timestamps never reach it).
const END: u64 = u64::MAX;

/// Fds per ring: memfd, empty signal, full signal.
const FDS_PER_RING: RawFd = 3;

/// A new ring of `capacity` bytes: its three fds for each side that maps it.
fn new_ring(capacity: usize) -> Result<[OwnedFd; 3]> {
    let ring: Sender<u8> = Sender::new(capacity).context("shmem_ipc::sharedring::Sender::new")?;
    let clone = |file: &File| -> Result<OwnedFd> {
        Ok(file.try_clone().context("duplicating a ring fd")?.into())
    };
    Ok([
        clone(ring.memfd().as_file())?,
        clone(ring.empty_signal())?,
        clone(ring.full_signal())?,
    ])
}

/// The three fds of a ring from `first` on, as the parent placed them.
///
/// # Safety
/// `first`..`first + 3` must be open and owned by nothing else in this process.
unsafe fn inherited(first: RawFd) -> [File; 3] {
    [
        File::from_raw_fd(first),
        File::from_raw_fd(first + 1),
        File::from_raw_fd(first + 2),
    ]
}

/// The worker's ends of [`Link::SharedRing`]: the sending ring's fds from [`TX_FD`] on, then
/// the receiving ring's.
pub fn open(
    capacity: usize,
    tx: bool,
    rx: bool,
    size: usize,
    wait: Wait,
) -> Result<(Option<RingTx>, Option<RingRx>)> {
    let mut next = TX_FD;
    let sender = if tx {
        // SAFETY: the parent dup2'ed this ring's three fds onto next..next+3 for this role, and
        // nothing else in this process owns them.
        let [memfd, empty, full] = unsafe { inherited(next) };
        next += FDS_PER_RING;
        Some(RingTx {
            ring: Sender::open(capacity, memfd, empty, full).context("Sender::open")?,
            wait,
            size,
            finished: false,
        })
    } else {
        None
    };
    let receiver = if rx {
        // SAFETY: as above, for the receiving ring's fds.
        let [memfd, empty, full] = unsafe { inherited(next) };
        Some(RingRx {
            ring: Receiver::open(capacity, memfd, empty, full).context("Receiver::open")?,
            wait,
            size,
        })
    } else {
        None
    };
    Ok((sender, receiver))
}

pub struct RingTx {
    ring: Sender<u8>,
    wait: Wait,
    size: usize,
    finished: bool,
}

impl RingTx {
    fn write_all(&mut self, mut rest: &[u8]) -> Result<()> {
        while !rest.is_empty() {
            let mut written = 0;
            self.ring
                .send_raw(|at, room| {
                    written = room.min(rest.len());
                    // SAFETY: the ring hands us `room` writable bytes at `at`, in the mapping it
                    // owns; we write at most that many, from a slice of at least as many. The
                    // other side is our own worker, which follows the ring's protocol.
                    unsafe { copy_raw(rest.as_ptr(), at, written) };
                    written
                })
                .context("sharedring send")?;
            rest = &rest[written..];
            if written == 0 {
                match self.wait {
                    Wait::Block => {
                        self.ring
                            .block_until_writable()
                            .context("sharedring block_until_writable")?;
                    }
                    Wait::Spin => std::hint::spin_loop(),
                }
            }
        }
        Ok(())
    }
}

impl Tx for RingTx {
    fn send(&mut self, message: &[u8]) -> Result<()> {
        self.write_all(message)
    }

    fn send_batch(&mut self, messages: &[&[u8]]) -> Result<()> {
        for message in messages {
            self.write_all(message)?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        if !self.finished {
            self.finished = true;
            let mut end = vec![0u8; self.size];
            crate::roles::stamp(&mut end, END);
            self.write_all(&end)?;
        }
        Ok(())
    }
}

pub struct RingRx {
    ring: Receiver<u8>,
    wait: Wait,
    size: usize,
}

impl Rx for RingRx {
    fn recv(&mut self, buf: &mut Vec<u8>) -> Result<bool> {
        buf.resize(self.size, 0);
        let mut filled = 0;
        while filled < self.size {
            let want = self.size - filled;
            let into = &mut buf[filled..];
            let mut read = 0;
            self.ring
                .receive_raw(|at, ready| {
                    read = ready.min(want);
                    // SAFETY: the ring hands us `ready` readable bytes at `at`; we copy at most
                    // that many into `into`, which has room for `want` >= `read`.
                    unsafe { copy_raw(at, into.as_mut_ptr(), read) };
                    read
                })
                .context("sharedring receive")?;
            filled += read;
            if read == 0 {
                match self.wait {
                    Wait::Block => {
                        self.ring
                            .block_until_readable()
                            .context("sharedring block_until_readable")?;
                    }
                    Wait::Spin => std::hint::spin_loop(),
                }
            }
        }
        Ok(buf[..8] != END.to_le_bytes())
    }

    fn recv_batch(&mut self, _max: usize, each: &mut dyn FnMut(&[u8])) -> Result<Option<usize>> {
        let mut buf = Vec::with_capacity(self.size);
        if !self.recv(&mut buf)? {
            return Ok(None);
        }
        each(&buf);
        Ok(Some(1))
    }
}

// ---------------------------------------------------------------------------------------------
// In the parent

pub struct SharedRing<'a> {
    plan: &'a Plan,
    cores: Option<CorePair>,
}

impl<'a> SharedRing<'a> {
    pub fn new(plan: &'a Plan, cores: Option<CorePair>) -> SharedRing<'a> {
        SharedRing { plan, cores }
    }

    fn side(&self, role: Role, rings: Vec<OwnedFd>, tx: bool, rx: bool, size: usize) -> Side {
        Side {
            task: Task {
                role,
                link: Link::SharedRing {
                    capacity: Plan::capacity_for(size) as usize,
                    tx,
                    rx,
                },
                size,
                wait: Wait::Block,
                budget_ms: self.plan.throughput_ms,
                batch: 0,
                gap_us: 0,
            },
            rx_fd: None,
            tx_fds: rings,
        }
    }

    /// One throughput run on a ring of our ring's capacity for `size`, both sides waiting as
    /// `wait` says.
    pub fn throughput(&self, wait: Wait, size: usize) -> Result<Rate> {
        let ring = new_ring(Plan::capacity_for(size) as usize)?;
        let [m, e, f] = ring;
        let dup = |fd: &OwnedFd| fd.try_clone().context("duplicating a ring fd");
        let (m2, e2, f2) = (dup(&m)?, dup(&e)?, dup(&f)?);
        let mut producer = self.side(Role::Produce, vec![m, e, f], true, false, size);
        let mut consumer = self.side(Role::Consume, vec![m2, e2, f2], false, true, size);
        producer.task.wait = wait;
        consumer.task.wait = wait;
        let label = format!("shmem-ipc ring throughput {size} B");
        let (p, c) = run_pair(&label, producer, consumer, self.cores)?;
        Rate::from_pair(&p, &c)
    }

    /// One-way latency samples in `mode`, from a run of `budget` ms.
    pub fn latency(&self, mode: LatencyMode, size: usize, budget: u64) -> Result<Samples> {
        let capacity = Plan::capacity_for(size) as usize;
        let label = format!("shmem-ipc ring latency {} {size} B", mode.label());
        let dup = |fd: &OwnedFd| fd.try_clone().context("duplicating a ring fd");
        match mode {
            LatencyMode::BusyPoll | LatencyMode::Blocking => {
                let wait = if mode == LatencyMode::BusyPoll {
                    Wait::Spin
                } else {
                    Wait::Block
                };
                let [pm, pe, pf] = new_ring(capacity)?;
                let [qm, qe, qf] = new_ring(capacity)?;
                // a sends on ring p and receives on ring q; b the other way round.
                let a_fds = vec![
                    dup(&pm)?,
                    dup(&pe)?,
                    dup(&pf)?,
                    dup(&qm)?,
                    dup(&qe)?,
                    dup(&qf)?,
                ];
                let b_fds = vec![qm, qe, qf, pm, pe, pf];
                let mut a = self.side(Role::Ping, a_fds, true, true, size);
                let mut b = self.side(Role::Pong, b_fds, true, true, size);
                for side in [&mut a, &mut b] {
                    side.task.wait = wait;
                    side.task.budget_ms = budget;
                }
                let (outcome, _) = run_pair(&label, a, b, self.cores)?;
                Ok(Samples {
                    ns: outcome.samples_ns,
                    scale: 0.5,
                })
            }
            LatencyMode::Asleep => {
                let [m, e, f] = new_ring(capacity)?;
                let (m2, e2, f2) = (dup(&m)?, dup(&e)?, dup(&f)?);
                let mut a = self.side(Role::StampSend, vec![m, e, f], true, false, size);
                a.task.gap_us = Plan::gap_us_for(size);
                a.task.budget_ms = budget;
                let mut b = self.side(Role::StampRecv, vec![m2, e2, f2], false, true, size);
                b.task.budget_ms = budget;
                let (_, outcome) = run_pair(&label, a, b, self.cores)?;
                Ok(Samples {
                    ns: outcome.samples_ns,
                    scale: 1.0,
                })
            }
        }
    }
}
