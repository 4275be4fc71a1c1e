//! The peers: a Unix stream socketpair and a pipe between two processes, carrying the same
//! messages as fixed-size writes (the receiver reads exactly the message size); and, against
//! fan-out channels, one producer writing each message to one Unix socket per consumer.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use anyhow::{Context, Result};

use crate::plan::Plan;
use crate::results::{FanoutRate, LatencyMode, Rate};
use crate::stats::Samples;
use crate::sys::CorePair;
use crate::transport::Wait;
use crate::worker::{run_fanout, run_pair, Link, Role, Side, Task};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Unix,
    Pipe,
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two fds pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error()).context("pipe2");
    }
    // SAFETY: pipe2 succeeded, so both fds are open and ours alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn socketpair() -> Result<(OwnedFd, OwnedFd)> {
    let (a, b) = UnixStream::pair().context("socketpair")?;
    Ok((a.into(), b.into()))
}

/// One direction: (receiving end, sending end).
fn one_way(stream: Stream) -> Result<(OwnedFd, OwnedFd)> {
    match stream {
        Stream::Unix => socketpair(),
        Stream::Pipe => pipe(),
    }
}

/// Both directions, one socket or pipe each (so that a busy-polling receiver's O_NONBLOCK does
/// not touch the sending fd): ((a's rx, a's tx), (b's rx, b's tx)).
#[allow(clippy::type_complexity)]
fn two_way(stream: Stream) -> Result<((OwnedFd, OwnedFd), (OwnedFd, OwnedFd))> {
    match stream {
        Stream::Unix => {
            let (b_rx, a_tx) = socketpair()?;
            let (a_rx, b_tx) = socketpair()?;
            Ok(((a_rx, a_tx), (b_rx, b_tx)))
        }
        Stream::Pipe => {
            let (b_rx, a_tx) = pipe()?;
            let (a_rx, b_tx) = pipe()?;
            Ok(((a_rx, a_tx), (b_rx, b_tx)))
        }
    }
}

pub struct Peers<'a> {
    plan: &'a Plan,
    cores: Option<CorePair>,
}

impl<'a> Peers<'a> {
    pub fn new(plan: &'a Plan, cores: Option<CorePair>) -> Peers<'a> {
        Peers { plan, cores }
    }

    fn task(&self, role: Role, buffered: bool, size: usize, wait: Wait, budget_ms: u64) -> Task {
        Task {
            role,
            link: Link::Stream { buffered },
            size,
            wait,
            budget_ms,
            batch: 0,
            gap_us: 0,
        }
    }

    pub fn throughput(&self, stream: Stream, buffered: bool, size: usize) -> Result<Rate> {
        let (rx, tx) = one_way(stream)?;
        let budget = self.plan.throughput_ms;
        let producer = Side {
            task: self.task(Role::Produce, buffered, size, Wait::Block, budget),
            rx_fd: None,
            tx_fds: vec![tx],
        };
        let consumer = Side {
            task: self.task(Role::Consume, buffered, size, Wait::Block, budget),
            rx_fd: Some(rx),
            tx_fds: Vec::new(),
        };
        let label = format!("{stream:?} throughput {size} B");
        let (p, c) = run_pair(&label, producer, consumer, self.cores)?;
        Rate::from_pair(&p, &c)
    }

    /// One fan-out run: one producer process writing every message to `consumers` Unix stream
    /// sockets in turn, one per consumer process; what a user without fan-out channels would
    /// do. Sizes that our side batches go through 64 KiB BufWriter/BufReader here.
    pub fn fanout(&self, size: usize, consumers: usize) -> Result<FanoutRate> {
        let buffered = Plan::fanout_batched(size);
        let budget = self.plan.throughput_ms;
        let mut tx_fds = Vec::with_capacity(consumers);
        let mut readers = Vec::with_capacity(consumers);
        for _ in 0..consumers {
            let (rx, tx) = socketpair()?;
            tx_fds.push(tx);
            readers.push(Side {
                task: self.task(Role::Consume, buffered, size, Wait::Block, budget),
                rx_fd: Some(rx),
                tx_fds: Vec::new(),
            });
        }
        let mut task = self.task(Role::Produce, buffered, size, Wait::Block, budget);
        task.link = Link::StreamFanOut {
            buffered,
            streams: consumers,
        };
        let producer = Side {
            task,
            rx_fd: None,
            tx_fds,
        };
        let label = format!("Unix fan-out 1 to {consumers} {size} B");
        let (p, c) = run_fanout(&label, producer, readers, || Ok(()))?;
        FanoutRate::from_outcomes(&p, &c)
    }

    /// One-way latency samples in `mode`, from a run of `budget` ms.
    pub fn latency(
        &self,
        stream: Stream,
        mode: LatencyMode,
        size: usize,
        budget: u64,
    ) -> Result<Samples> {
        let label = format!("{stream:?} latency {} {size} B", mode.label());
        let (samples, scale) = match mode {
            LatencyMode::BusyPoll | LatencyMode::Blocking => {
                let wait = if mode == LatencyMode::BusyPoll {
                    Wait::Spin
                } else {
                    Wait::Block
                };
                let ((a_rx, a_tx), (b_rx, b_tx)) = two_way(stream)?;
                let a = Side {
                    task: self.task(Role::Ping, false, size, wait, budget),
                    rx_fd: Some(a_rx),
                    tx_fds: vec![a_tx],
                };
                let b = Side {
                    task: self.task(Role::Pong, false, size, wait, budget),
                    rx_fd: Some(b_rx),
                    tx_fds: vec![b_tx],
                };
                (run_pair(&label, a, b, self.cores)?.0.samples_ns, 0.5)
            }
            LatencyMode::Asleep => {
                let (rx, tx) = one_way(stream)?;
                let mut sender = self.task(Role::StampSend, false, size, Wait::Block, budget);
                sender.gap_us = Plan::gap_us_for(size);
                let a = Side {
                    task: sender,
                    rx_fd: None,
                    tx_fds: vec![tx],
                };
                let b = Side {
                    task: self.task(Role::StampRecv, false, size, Wait::Block, budget),
                    rx_fd: Some(rx),
                    tx_fds: Vec::new(),
                };
                (run_pair(&label, a, b, self.cores)?.1.samples_ns, 1.0)
            }
        };
        Ok(Samples { ns: samples, scale })
    }
}
