//! Multi-process measurements: two processes ([`run_pair`]), or one producer and several
//! consumers ([`run_fanout`]). The benchmark re-runs its own binary with the hidden `__worker`
//! subcommand for each side; a worker pins itself to its core, attaches (or takes over the fds
//! the parent placed at 3 and from 4 up), prints `ready`, waits for `go` on stdin, runs its
//! role and prints its [`Outcome`] as one JSON line.

use std::io::{BufRead, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use shmem_broker_client::Client;

use crate::proc::Proc;
use crate::roles::{self, Outcome};
use crate::sys::{self, CorePair};
use crate::transport::{
    ChannelRx, ChannelTx, Rx, StreamFanTx, StreamRx, StreamTx, Tx, Wait, RX_FD, TX_FD,
};
use crate::{iox, ring};

pub const WORKER_SUBCOMMAND: &str = "__worker";

/// How long workers may take to start, attach and say `ready`.
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Produce,
    Consume,
    /// Produce with loans, writing only the stamps in place (our channels only).
    ProduceLoan,
    /// Consume with borrowed receives, reading only the stamps (our channels only).
    ConsumeRef,
    Ping,
    Pong,
    StampSend,
    StampRecv,
}

impl Role {
    fn sends(self) -> bool {
        !matches!(self, Role::Consume | Role::ConsumeRef | Role::StampRecv)
    }

    fn receives(self) -> bool {
        !matches!(self, Role::Produce | Role::ProduceLoan | Role::StampSend)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Link {
    /// Our channels on the broker at `socket`: produce into `tx`, consume from `rx`.
    Channel {
        socket: PathBuf,
        tx: Option<String>,
        rx: Option<String>,
    },
    /// A byte stream: receive on fd 3, send on fd 4.
    Stream { buffered: bool },
    /// Send only, the same bytes to each of `streams` byte streams, on fds 4, 5, ...
    StreamFanOut { buffered: bool, streams: usize },
    /// iceoryx2 publish-subscribe services the parent created: publish on `tx`, subscribe to
    /// `rx`.
    Iceoryx {
        tx: Option<String>,
        rx: Option<String>,
    },
    /// `shmem_ipc::sharedring` rings of `capacity` bytes: the sending ring's memfd, empty and
    /// full eventfds on fds 4, 5, 6 (if `tx`), then the receiving ring's (if `rx`).
    SharedRing { capacity: usize, tx: bool, rx: bool },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Task {
    pub role: Role,
    pub link: Link,
    pub size: usize,
    pub wait: Wait,
    pub budget_ms: u64,
    /// Messages per batch call (0: one call per message).
    pub batch: usize,
    /// Pause between paced messages.
    pub gap_us: u64,
}

// ---------------------------------------------------------------------------------------------
// Inside the worker process

pub fn worker_main(cpu: Option<usize>, task: &str) -> Result<()> {
    let task: Task = serde_json::from_str(task).context("parsing the worker's task")?;
    if let Some(cpu) = cpu {
        sys::pin_to(cpu)?;
    }
    match &task.link {
        Link::Channel { socket, tx, rx } => {
            let client = Client::connect(socket)
                .with_context(|| format!("connecting to {}", socket.display()))?;
            let producer = match tx {
                Some(name) if task.role.sends() => Some(ChannelTx::new(
                    client
                        .attach(name)
                        .busy_poll(task.wait == Wait::Spin)
                        .producer()
                        .with_context(|| format!("attaching producer to {name}"))?,
                )),
                _ => None,
            };
            let consumer = match rx {
                Some(name) if task.role.receives() => Some(ChannelRx::new(
                    client
                        .attach(name)
                        .busy_poll(task.wait == Wait::Spin)
                        .consumer()
                        .with_context(|| format!("attaching consumer to {name}"))?,
                    task.wait,
                )),
                _ => None,
            };
            // Each endpoint holds its own connection; the control one is not needed any more.
            drop(client);
            run(&task, producer, consumer)
        }
        Link::Stream { buffered } => {
            let tx = task
                .role
                .sends()
                .then(|| StreamTx::from_inherited(*buffered));
            let rx = if task.role.receives() {
                Some(StreamRx::from_inherited(task.size, task.wait, *buffered)?)
            } else {
                None
            };
            run(&task, tx, rx)
        }
        Link::StreamFanOut { buffered, streams } => {
            let tx = StreamFanTx::from_inherited(*streams, *buffered);
            run(&task, Some(tx), None::<StreamRx>)
        }
        Link::Iceoryx { tx, rx } => {
            let (tx, rx) = iox::open(
                tx.as_deref(),
                rx.as_deref(),
                task.size,
                task.role.sends(),
                task.role.receives(),
            )?;
            run(&task, tx, rx)
        }
        Link::SharedRing { capacity, tx, rx } => {
            let (tx, rx) = ring::open(*capacity, *tx, *rx, task.size, task.wait)?;
            run(&task, tx, rx)
        }
    }
}

fn run<T: Tx, R: Rx>(task: &Task, tx: Option<T>, rx: Option<R>) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "ready").context("writing to the parent")?;
    stdout.flush().context("writing to the parent")?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading from the parent")?;
    if line.trim() != "go" {
        bail!("expected `go` from the parent, got {line:?}");
    }
    let budget_ns = task.budget_ms * 1_000_000;
    let size = task.size;
    let (mut tx, mut rx) = (tx, rx);
    let tx_needed = || anyhow::anyhow!("{:?} needs a sending end", task.role);
    let rx_needed = || anyhow::anyhow!("{:?} needs a receiving end", task.role);
    let outcome = match task.role {
        Role::Produce if task.batch > 0 => roles::produce_batched(
            tx.as_mut().ok_or_else(tx_needed)?,
            size,
            task.batch,
            budget_ns,
        )?,
        Role::Produce => roles::produce(tx.as_mut().ok_or_else(tx_needed)?, size, budget_ns)?,
        Role::Consume => roles::consume(rx.as_mut().ok_or_else(rx_needed)?, size, task.batch)?,
        Role::ProduceLoan => {
            roles::produce_loaned(tx.as_mut().ok_or_else(tx_needed)?, size, budget_ns)?
        }
        Role::ConsumeRef => roles::consume_ref(rx.as_mut().ok_or_else(rx_needed)?, size)?,
        Role::Ping => roles::ping(
            tx.as_mut().ok_or_else(tx_needed)?,
            rx.as_mut().ok_or_else(rx_needed)?,
            size,
            budget_ns,
        )?,
        Role::Pong => roles::pong(
            tx.as_mut().ok_or_else(tx_needed)?,
            rx.as_mut().ok_or_else(rx_needed)?,
            size,
        )?,
        Role::StampSend => roles::stamp_send(
            tx.as_mut().ok_or_else(tx_needed)?,
            size,
            task.gap_us * 1000,
            budget_ns,
        )?,
        Role::StampRecv => roles::stamp_recv(rx.as_mut().ok_or_else(rx_needed)?, size)?,
    };
    let json = serde_json::to_string(&outcome).context("encoding the outcome")?;
    writeln!(stdout, "{json}").context("writing to the parent")?;
    stdout.flush().context("writing to the parent")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// In the parent

/// One side of a measurement: its task and the fds to place at 3 (receive) and from 4 up
/// (send: one stream, or one per consumer for a fanning-out producer).
pub struct Side {
    pub task: Task,
    pub rx_fd: Option<OwnedFd>,
    pub tx_fds: Vec<OwnedFd>,
}

impl Side {
    pub fn new(task: Task) -> Side {
        Side {
            task,
            rx_fd: None,
            tx_fds: Vec::new(),
        }
    }
}

struct Worker {
    proc: Proc,
    stdin: ChildStdin,
    stdout: std::io::BufReader<ChildStdout>,
}

impl Worker {
    fn spawn(name: String, side: &Side, cpu: Option<usize>) -> Result<Worker> {
        let exe = std::env::current_exe().context("locating the benchmark binary")?;
        let mut cmd = Command::new(exe);
        cmd.arg(WORKER_SUBCOMMAND);
        if let Some(cpu) = cpu {
            cmd.arg("--cpu").arg(cpu.to_string());
        }
        cmd.arg(serde_json::to_string(&side.task).context("encoding a task")?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut moves: Vec<(RawFd, RawFd)> = Vec::new();
        if let Some(fd) = &side.rx_fd {
            moves.push((fd.as_raw_fd(), RX_FD));
        }
        for (i, fd) in side.tx_fds.iter().enumerate() {
            moves.push((fd.as_raw_fd(), TX_FD + i as RawFd));
        }
        // SAFETY: dup_onto only calls fcntl and dup2 (async-signal-safe) and does not allocate.
        unsafe {
            cmd.pre_exec(move || sys::dup_onto(&moves));
        }
        let mut proc = Proc::spawn(name, &mut cmd)?;
        let child = proc.child_mut();
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        Ok(Worker {
            proc,
            stdin,
            stdout: std::io::BufReader::new(stdout),
        })
    }

    /// Reads one line, failing if the worker does not produce it before `deadline`.
    fn read_line(&mut self, deadline: Instant) -> Result<String> {
        let fd = self.stdout.get_ref().as_raw_fd();
        loop {
            if !self.stdout.buffer().is_empty() {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("{} did not answer in time", self.proc.name());
            }
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, 1000) as libc::c_int;
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(err).context("poll on worker stdout");
                }
            } else if rc > 0 {
                break;
            }
        }
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .with_context(|| format!("reading from {}", self.proc.name()))?;
        if line.is_empty() {
            let status = self.proc.wait_timeout(Duration::from_secs(5))?;
            bail!("{} exited ({status}) without a result", self.proc.name());
        }
        Ok(line)
    }

    fn expect_ready(&mut self, deadline: Instant) -> Result<()> {
        let line = self.read_line(deadline)?;
        if line.trim() != "ready" {
            bail!("{} said {line:?} instead of ready", self.proc.name());
        }
        Ok(())
    }

    fn go(&mut self) -> Result<()> {
        self.stdin
            .write_all(b"go\n")
            .and_then(|()| self.stdin.flush())
            .with_context(|| format!("starting {}", self.proc.name()))
    }

    fn outcome(mut self, deadline: Instant) -> Result<Outcome> {
        let line = self.read_line(deadline)?;
        let outcome = serde_json::from_str(&line)
            .with_context(|| format!("{} reported {line:?}", self.proc.name()))?;
        let left = deadline.saturating_duration_since(Instant::now());
        self.proc.wait_success(left.max(Duration::from_secs(1)))?;
        Ok(outcome)
    }
}

/// Runs side `a` on core `a` and side `b` on core `b` at the same time; returns both outcomes.
/// The parent's copies of the sides' fds are closed once the workers have theirs, so that end
/// of stream reaches the reader.
pub fn run_pair(
    label: &str,
    a: Side,
    b: Side,
    cores: Option<CorePair>,
) -> Result<(Outcome, Outcome)> {
    let budget = Duration::from_millis(a.task.budget_ms.max(b.task.budget_ms));
    let setup_deadline = Instant::now() + SETUP_TIMEOUT;
    let mut wb = Worker::spawn(format!("{label} [b]"), &b, cores.map(|c| c.b))?;
    let mut wa = Worker::spawn(format!("{label} [a]"), &a, cores.map(|c| c.a))?;
    drop((a, b));
    wb.expect_ready(setup_deadline)?;
    wa.expect_ready(setup_deadline)?;
    wb.go()?;
    wa.go()?;
    let run_deadline = Instant::now() + budget * 3 + Duration::from_secs(30);
    let oa = wa.outcome(run_deadline)?;
    let ob = wb.outcome(run_deadline)?;
    Ok((oa, ob))
}

/// Runs one producer and its consumers at the same time, all unpinned: the fan-out has more
/// processes than the machine may have cores, so the scheduler places them. The consumers
/// start and attach first (a fan-out consumer gets only what is written after it attached);
/// `before_go` runs once all are ready (e.g. to wait until the broker lists every consumer).
/// Returns the producer's outcome and the consumers', in the order given.
pub fn run_fanout(
    label: &str,
    producer: Side,
    consumers: Vec<Side>,
    before_go: impl FnOnce() -> Result<()>,
) -> Result<(Outcome, Vec<Outcome>)> {
    let budget = Duration::from_millis(producer.task.budget_ms);
    let setup_deadline = Instant::now() + SETUP_TIMEOUT;
    let mut readers = Vec::with_capacity(consumers.len());
    for (i, side) in consumers.into_iter().enumerate() {
        readers.push(Worker::spawn(
            format!("{label} [consumer {i}]"),
            &side,
            None,
        )?);
    }
    for reader in &mut readers {
        reader.expect_ready(setup_deadline)?;
    }
    let mut writer = Worker::spawn(format!("{label} [producer]"), &producer, None)?;
    drop(producer);
    writer.expect_ready(setup_deadline)?;
    before_go()?;
    for reader in &mut readers {
        reader.go()?;
    }
    writer.go()?;
    let run_deadline = Instant::now() + budget * 3 + Duration::from_secs(30);
    let produced = writer.outcome(run_deadline)?;
    let consumed = readers
        .into_iter()
        .map(|reader| reader.outcome(run_deadline))
        .collect::<Result<Vec<_>>>()?;
    Ok((produced, consumed))
}

/// Runs all `sides` at the same time, unpinned (more processes than cores: the scheduler
/// places them); returns their outcomes in the order given.
pub fn run_group(label: &str, sides: Vec<Side>) -> Result<Vec<Outcome>> {
    let budget = Duration::from_millis(sides.iter().map(|s| s.task.budget_ms).max().unwrap_or(0));
    let setup_deadline = Instant::now() + SETUP_TIMEOUT;
    let mut workers = Vec::with_capacity(sides.len());
    for (i, side) in sides.into_iter().enumerate() {
        workers.push(Worker::spawn(format!("{label} [{i}]"), &side, None)?);
    }
    for worker in &mut workers {
        worker.expect_ready(setup_deadline)?;
    }
    for worker in &mut workers {
        worker.go()?;
    }
    let run_deadline = Instant::now() + budget * 3 + Duration::from_secs(60);
    workers
        .into_iter()
        .map(|worker| worker.outcome(run_deadline))
        .collect()
}
