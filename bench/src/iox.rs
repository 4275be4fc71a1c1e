//! iceoryx2 publish-subscribe as a peer (issue 14): the `[u8]` slice API between two processes,
//! publisher `loan_slice_uninit` + copy in + `send`, subscriber `receive`, with blocking
//! back-pressure (`RetryUntilDelivered`, no safe overflow: nothing is dropped), the same pinning
//! and sizes as our channels, and every message checked by the same roles.
//!
//! The parent creates the services (so that the two workers only open them, with no race on
//! creation) and keeps them until the run ends. Each worker creates its ports, then waits until
//! it sees its counterpart's port and has run `update_connections()` with it, before it says
//! `ready`: the parent sends `go` only once both have, so no message is sent before both sides
//! are connected (iceoryx2 drops what a publisher sends before the connection exists). A
//! one-byte message ends the stream (our messages are 8 bytes or more); samples still queued
//! when the publisher leaves are delivered (iceoryx2 keeps a departed publisher's connection
//! while it holds data).
//!
//! iceoryx2's subscriber has no blocking receive (that takes a separate event service), so its
//! receiving side busy-polls `receive()`.

use std::cell::Cell;
use std::fmt::Debug;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::port::update_connections::UpdateConnections;
use iceoryx2::prelude::*;
use iceoryx2::service::port_factory::publish_subscribe::PortFactory as PubSub;
use shmem_broker_client::copy::copy_raw;

use crate::plan::Plan;
use crate::results::Rate;
use crate::stats::Samples;
use crate::sys::CorePair;
use crate::transport::{Rx, Stamps, Tx, Wait};
use crate::worker::{run_group, run_pair, Link, Role, Side, Task};

type Service = PubSub<ipc::Service, [u8], ()>;

/// The length of the message that ends a stream: shorter than any message measured (8 B).
const END_LEN: usize = 1;

/// How long a worker waits for its counterpart's port to show up and connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// iceoryx2's errors are Debug + Display but not always `std::error::Error + Send + Sync`.
fn iox<T, E: Debug>(result: Result<T, E>, what: &str) -> Result<T> {
    result.map_err(|err| anyhow!("iceoryx2: {what}: {err:?}"))
}

fn node() -> Result<Node<ipc::Service>> {
    // Quiet unless something fails; our own errors say what happened.
    set_log_level(LogLevel::Error);
    iox(
        NodeBuilder::new()
            // The benchmark and its workers keep their own signal handling (Ctrl-C ends them).
            .signal_handling_mode(SignalHandlingMode::Disabled)
            .create::<ipc::Service>(),
        "creating a node",
    )
}

fn service_name(name: &str) -> Result<ServiceName> {
    iox(ServiceName::new(name), "service name")
}

/// Samples a subscriber may hold queued: as many messages as our ring of the same size holds
/// (its capacity over the message size), at least 2, at most 4096.
pub fn buffer_for(size: usize) -> usize {
    (Plan::capacity_for(size) as usize / size.max(1)).clamp(2, 4096)
}

/// Services created by the parent for one measurement, removed when dropped.
struct Services {
    _node: Node<ipc::Service>,
    _services: Vec<Service>,
    names: Vec<String>,
}

fn create_services(count: usize, size: usize, next_id: &Cell<u32>) -> Result<Services> {
    let node = node()?;
    let mut services = Vec::with_capacity(count);
    let mut names = Vec::with_capacity(count);
    for _ in 0..count {
        let id = next_id.get();
        next_id.set(id.wrapping_add(1));
        let name = format!("shmem-bench/{}/{size}/{id}", std::process::id());
        let service = iox(
            node.service_builder(&service_name(&name)?)
                .publish_subscribe::<[u8]>()
                .max_publishers(1)
                .max_subscribers(1)
                .history_size(0)
                .subscriber_max_buffer_size(buffer_for(size))
                // Back-pressure: a full subscriber queue makes the publisher wait.
                .enable_safe_overflow(false)
                .create(),
            "creating a publish-subscribe service",
        )?;
        services.push(service);
        names.push(name);
    }
    Ok(Services {
        _node: node,
        _services: services,
        names,
    })
}

// ---------------------------------------------------------------------------------------------
// Inside a worker

/// The worker's end of [`Link::Iceoryx`]: a publisher on `tx`, a subscriber on `rx`, both
/// connected to their counterparts.
pub fn open(
    tx: Option<&str>,
    rx: Option<&str>,
    size: usize,
    sends: bool,
    receives: bool,
) -> Result<(Option<IoxTx>, Option<IoxRx>)> {
    let node = node()?;
    let open = |name: &str| {
        iox(
            node.service_builder(&service_name(name)?)
                .publish_subscribe::<[u8]>()
                .open(),
            "opening a publish-subscribe service",
        )
    };
    let tx = match tx {
        Some(name) if sends => {
            let service = open(name)?;
            let publisher = iox(
                service
                    .publisher_builder()
                    .initial_max_slice_len(size)
                    .max_loaned_samples(1)
                    .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
                    .create(),
                "creating a publisher",
            )?;
            Some((service, publisher))
        }
        _ => None,
    };
    let rx = match rx {
        Some(name) if receives => {
            let service = open(name)?;
            let subscriber = iox(
                service
                    .subscriber_builder()
                    .buffer_size(buffer_for(size))
                    .create(),
                "creating a subscriber",
            )?;
            Some((service, subscriber))
        }
        _ => None,
    };
    // The handshake: each port waits for its counterpart, then connects to it.
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    if let Some((service, publisher)) = &tx {
        connect(deadline, "subscriber", || {
            service.dynamic_config().number_of_subscribers() >= 1
                && publisher.update_connections().is_ok()
        })?;
    }
    if let Some((service, subscriber)) = &rx {
        connect(deadline, "publisher", || {
            service.dynamic_config().number_of_publishers() >= 1
                && subscriber.update_connections().is_ok()
        })?;
    }
    // The node outlives the ports made through it: the receiving end keeps it, or the sending
    // end when there is no receiving one.
    let mut node = Some(node);
    let rx = rx.map(|(service, subscriber)| IoxRx {
        subscriber,
        _service: service,
        _node: node.take(),
    });
    let tx = tx.map(|(service, publisher)| IoxTx {
        publisher: Some(publisher),
        _service: service,
        _node: node.take(),
    });
    Ok((tx, rx))
}

fn connect(deadline: Instant, counterpart: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    while !done() {
        if Instant::now() >= deadline {
            bail!("iceoryx2: no {counterpart} connected within {CONNECT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

pub struct IoxTx {
    publisher: Option<Publisher<ipc::Service, [u8], ()>>,
    _service: Service,
    _node: Option<Node<ipc::Service>>,
}

impl IoxTx {
    fn publisher(&self) -> Result<&Publisher<ipc::Service, [u8], ()>> {
        self.publisher
            .as_ref()
            .context("publisher already finished")
    }
}

impl Tx for IoxTx {
    /// Loan, copy the message in, send; `send` waits while the subscriber's queue is full.
    /// The copy is ours (`copy::copy_raw`, as every peer's copy in this bench), so no side
    /// wins or loses by `rep movsb`'s page-aliasing slow case.
    fn send(&mut self, message: &[u8]) -> Result<()> {
        let mut sample = iox(
            self.publisher()?.loan_slice_uninit(message.len()),
            "Publisher::loan_slice_uninit",
        )?;
        let into = sample.payload_mut();
        // SAFETY: the loan holds message.len() writable bytes (asked for above), our own
        // process's to write; the message is a separate slice.
        unsafe {
            copy_raw(
                message.as_ptr(),
                into.as_mut_ptr().cast::<u8>(),
                message.len(),
            )
        };
        // SAFETY: every byte of the loan was written just above.
        let sample = unsafe { sample.assume_init() };
        iox(sample.send(), "SampleMut::send")?;
        Ok(())
    }

    fn send_batch(&mut self, messages: &[&[u8]]) -> Result<()> {
        for message in messages {
            self.send(message)?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        if self.publisher.is_some() {
            self.send(&[0; END_LEN])?;
        }
        self.publisher = None;
        Ok(())
    }
}

pub struct IoxRx {
    subscriber: Subscriber<ipc::Service, [u8], ()>,
    _service: Service,
    _node: Option<Node<ipc::Service>>,
}

type IoxSample = iceoryx2::sample::Sample<ipc::Service, [u8], ()>;

impl IoxRx {
    /// The next sample, busy-polling; `None` at the end of the stream.
    fn next(&self) -> Result<Option<IoxSample>> {
        loop {
            if let Some(sample) = iox(self.subscriber.receive(), "Subscriber::receive")? {
                if sample.payload().len() == END_LEN {
                    return Ok(None);
                }
                return Ok(Some(sample));
            }
            std::hint::spin_loop();
        }
    }
}

impl Rx for IoxRx {
    /// Receive + copy out: what a caller that keeps the message past the sample does.
    fn recv(&mut self, buf: &mut Vec<u8>) -> Result<bool> {
        let Some(sample) = self.next()? else {
            return Ok(false);
        };
        let payload = sample.payload();
        buf.clear();
        buf.reserve(payload.len());
        // SAFETY: `buf` has room for payload.len() bytes after reserve, a private vector apart
        // from the sample's memory; the copy is ours, as in `send`.
        unsafe {
            copy_raw(payload.as_ptr(), buf.as_mut_ptr(), payload.len());
            buf.set_len(payload.len());
        }
        Ok(true)
    }

    fn recv_batch(&mut self, _max: usize, each: &mut dyn FnMut(&[u8])) -> Result<Option<usize>> {
        let Some(sample) = self.next()? else {
            return Ok(None);
        };
        each(sample.payload());
        Ok(Some(1))
    }

    /// Zero-copy receive: the length and stamps are read where the sample lies.
    fn recv_stamps(&mut self) -> Result<Option<Stamps>> {
        let Some(sample) = self.next()? else {
            return Ok(None);
        };
        let payload = sample.payload();
        let (mut head, mut tail) = ([0u8; 8], [0u8; 8]);
        let n = payload.len().min(8);
        head[..n].copy_from_slice(&payload[..n]);
        tail[..n].copy_from_slice(&payload[payload.len() - n..]);
        Ok(Some(Stamps {
            len: payload.len(),
            head,
            tail,
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// In the parent

pub struct Iceoryx<'a> {
    plan: &'a Plan,
    cores: Option<CorePair>,
    next_id: Cell<u32>,
}

impl<'a> Iceoryx<'a> {
    pub fn new(plan: &'a Plan, cores: Option<CorePair>) -> Iceoryx<'a> {
        Iceoryx {
            plan,
            cores,
            next_id: Cell::new(0),
        }
    }

    fn task(&self, role: Role, tx: Option<&str>, rx: Option<&str>, size: usize) -> Task {
        Task {
            role,
            link: Link::Iceoryx {
                tx: tx.map(str::to_string),
                rx: rx.map(str::to_string),
            },
            size,
            wait: Wait::Spin,
            budget_ms: self.plan.throughput_ms,
            batch: 0,
            gap_us: 0,
        }
    }

    /// One throughput run, publisher on core a, subscriber on core b: `zero_copy` reads each
    /// sample's stamps in place, otherwise each sample is copied out.
    pub fn throughput(&self, zero_copy: bool, size: usize) -> Result<Rate> {
        let services = create_services(1, size, &self.next_id)?;
        let name = services.names[0].as_str();
        let consume = if zero_copy {
            Role::ConsumeRef
        } else {
            Role::Consume
        };
        let producer = self.task(Role::Produce, Some(name), None, size);
        let consumer = self.task(consume, None, Some(name), size);
        let label = format!("iceoryx2 throughput {size} B");
        let (p, c) = run_pair(&label, Side::new(producer), Side::new(consumer), self.cores)?;
        drop(services);
        Rate::from_pair(&p, &c)
    }

    /// `pairs` services busy at once, a publisher and a subscriber process each, all unpinned
    /// (the subscribers busy-poll: iceoryx2 has no blocking receive).
    pub fn throughput_pairs(&self, pairs: usize, size: usize) -> Result<Rate> {
        let services = create_services(pairs, size, &self.next_id)?;
        let mut sides = Vec::with_capacity(pairs * 2);
        for name in &services.names {
            sides.push(Side::new(self.task(Role::Produce, Some(name), None, size)));
            sides.push(Side::new(self.task(Role::Consume, None, Some(name), size)));
        }
        let outcomes = run_group(&format!("iceoryx2 {pairs} pairs"), sides)?;
        drop(services);
        crate::scale::aggregate(&outcomes)
    }

    /// Busy-poll ping-pong over two services, one-way samples (round trip / 2).
    pub fn latency(&self, size: usize, budget_ms: u64) -> Result<Samples> {
        let services = create_services(2, size, &self.next_id)?;
        let (ping, pong) = (services.names[0].as_str(), services.names[1].as_str());
        let mut a = self.task(Role::Ping, Some(ping), Some(pong), size);
        let mut b = self.task(Role::Pong, Some(pong), Some(ping), size);
        a.budget_ms = budget_ms;
        b.budget_ms = budget_ms;
        let label = format!("iceoryx2 latency busy-poll {size} B");
        let (outcome, _) = run_pair(&label, Side::new(a), Side::new(b), self.cores)?;
        drop(services);
        Ok(Samples {
            ns: outcome.samples_ns,
            scale: 0.5,
        })
    }
}
