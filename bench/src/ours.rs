//! Our channels, through the real broker and client library, between two processes, or from
//! one producer to several consumer processes (a fan-out channel).

use std::cell::Cell;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shmem_broker_client::{Client, NewChannel, Role as PeerRole, SlowConsumer};

use crate::broker::Broker;
use crate::plan::Plan;
use crate::results::{FanoutRate, LatencyMode, Rate, Series};
use crate::roles::Outcome;
use crate::stats::Samples;
use crate::sys::CorePair;
use crate::transport::Wait;
use crate::worker::{run_fanout, run_group, run_pair, Link, Role, Side, Task};

/// How long the workers of a fan-out run may take to show up attached at the broker.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Ours<'a> {
    broker: &'a Broker,
    client: Client,
    cores: Option<CorePair>,
    plan: &'a Plan,
    next_id: Cell<u32>,
}

/// A channel created for one measurement and dropped after it (its ring pages are resident
/// once written: keeping dozens of 16 MiB rings around would skew the later runs).
struct TempChannel<'c> {
    client: &'c Client,
    name: String,
}

impl Drop for TempChannel<'_> {
    fn drop(&mut self) {
        if let Err(err) = self.client.drop_channel(&self.name) {
            eprintln!("shmem-bench: dropping channel {}: {err}", self.name);
        }
    }
}

impl<'a> Ours<'a> {
    pub fn new(broker: &'a Broker, plan: &'a Plan, cores: Option<CorePair>) -> Result<Ours<'a>> {
        Ok(Ours {
            client: broker.client()?,
            broker,
            cores,
            plan,
            next_id: Cell::new(0),
        })
    }

    fn channel(&self, what: &str, size: usize) -> Result<TempChannel<'_>> {
        self.channel_with(what, size, |new| new)
    }

    /// A channel for `size`-byte messages, with the ring capacity for that size and whatever
    /// else `shape` sets.
    fn channel_with(
        &self,
        what: &str,
        size: usize,
        shape: impl FnOnce(NewChannel<'_>) -> NewChannel<'_>,
    ) -> Result<TempChannel<'_>> {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let name = format!("bench.{what}.{size}.{id}");
        shape(
            self.client
                .channel(&name)
                .capacity(Plan::capacity_for(size)),
        )
        .create()
        .with_context(|| format!("creating channel {name}"))?;
        Ok(TempChannel {
            client: &self.client,
            name,
        })
    }

    fn link(&self, tx: Option<&TempChannel>, rx: Option<&TempChannel>) -> Link {
        Link::Channel {
            socket: self.broker.socket().to_path_buf(),
            tx: tx.map(|c| c.name.clone()),
            rx: rx.map(|c| c.name.clone()),
        }
    }

    fn task(&self, role: Role, link: Link, size: usize, wait: Wait, budget_ms: u64) -> Task {
        Task {
            role,
            link,
            size,
            wait,
            budget_ms,
            batch: 0,
            gap_us: 0,
        }
    }

    /// One throughput run: producer on core a, consumer on core b.
    pub fn throughput(&self, series: Series, size: usize) -> Result<Rate> {
        let channel = self.channel("tp", size)?;
        let (wait, batch) = match series {
            Series::OursSpin => (Wait::Spin, 0),
            Series::OursBatched => (Wait::Block, Plan::batch_for(size)),
            _ => (Wait::Block, 0),
        };
        let budget = self.plan.throughput_ms;
        let (produce, consume) = match series {
            Series::OursRecvRef => (Role::Produce, Role::ConsumeRef),
            Series::OursLoan => (Role::ProduceLoan, Role::ConsumeRef),
            _ => (Role::Produce, Role::Consume),
        };
        let mut producer = self.task(produce, self.link(Some(&channel), None), size, wait, budget);
        producer.batch = batch;
        let mut consumer = self.task(consume, self.link(None, Some(&channel)), size, wait, budget);
        // The consumer hands up to 4 producer batches at a time to its callback.
        consumer.batch = batch * 4;
        let label = format!("{} {size} B", series.short());
        let (p, c) = run_pair(&label, Side::new(producer), Side::new(consumer), self.cores)?;
        Rate::from_pair(&p, &c)
    }

    /// `pairs` channels busy at once, a producer and a consumer process each, all unpinned
    /// and blocking: their aggregate rate.
    pub fn throughput_pairs(&self, pairs: usize, size: usize) -> Result<Rate> {
        let channels = (0..pairs)
            .map(|_| self.channel("scale", size))
            .collect::<Result<Vec<_>>>()?;
        let budget = self.plan.throughput_ms;
        let mut sides = Vec::with_capacity(pairs * 2);
        for channel in &channels {
            let link = |tx, rx| self.link(tx, rx);
            sides.push(Side::new(self.task(
                Role::Produce,
                link(Some(channel), None),
                size,
                Wait::Block,
                budget,
            )));
            sides.push(Side::new(self.task(
                Role::Consume,
                link(None, Some(channel)),
                size,
                Wait::Block,
                budget,
            )));
        }
        let outcomes = run_group(&format!("ours {pairs} pairs"), sides)?;
        crate::scale::aggregate(&outcomes)
    }

    /// One fan-out run: one producer, `consumers` consumers, each its own process, on a channel
    /// with `max_consumers = consumers` and policy `block`, so no consumer may miss a message.
    /// Small messages go in batches (see [`Plan::fanout_batched`]).
    pub fn fanout(&self, size: usize, consumers: usize) -> Result<FanoutRate> {
        let max_consumers = u32::try_from(consumers).context("too many consumers")?;
        let channel = self.channel_with("fanout", size, |new| {
            new.max_consumers(max_consumers)
                .slow_consumer(SlowConsumer::Block)
        })?;
        let batch = if Plan::fanout_batched(size) {
            Plan::batch_for(size)
        } else {
            0
        };
        let budget = self.plan.throughput_ms;
        let mut producer = self.task(
            Role::Produce,
            self.link(Some(&channel), None),
            size,
            Wait::Block,
            budget,
        );
        producer.batch = batch;
        let readers = (0..consumers)
            .map(|_| {
                let mut consumer = self.task(
                    Role::Consume,
                    self.link(None, Some(&channel)),
                    size,
                    Wait::Block,
                    budget,
                );
                // As in the 1:1 runs: up to 4 producer batches per callback round.
                consumer.batch = batch * 4;
                Side::new(consumer)
            })
            .collect();
        let label = format!("ours fan-out 1 to {consumers} {size} B");
        let (p, c) = run_fanout(&label, Side::new(producer), readers, || {
            wait_for_fanout_peers(&self.client, &channel.name, consumers)
        })?;
        FanoutRate::from_outcomes(&p, &c)
    }

    /// One-way latency samples in `mode`, from a run of `budget` ms.
    pub fn latency(&self, mode: LatencyMode, size: usize, budget: u64) -> Result<Samples> {
        let label = format!("ours latency {} {size} B", mode.label());
        let outcome: Outcome;
        let scale;
        match mode {
            LatencyMode::BusyPoll | LatencyMode::Blocking => {
                let wait = if mode == LatencyMode::BusyPoll {
                    Wait::Spin
                } else {
                    Wait::Block
                };
                let ping = self.channel("ping", size)?;
                let pong = self.channel("pong", size)?;
                let a = self.task(
                    Role::Ping,
                    self.link(Some(&ping), Some(&pong)),
                    size,
                    wait,
                    budget,
                );
                let b = self.task(
                    Role::Pong,
                    self.link(Some(&pong), Some(&ping)),
                    size,
                    wait,
                    budget,
                );
                outcome = run_pair(&label, Side::new(a), Side::new(b), self.cores)?.0;
                scale = 0.5;
            }
            LatencyMode::Asleep => {
                let channel = self.channel("paced", size)?;
                let mut a = self.task(
                    Role::StampSend,
                    self.link(Some(&channel), None),
                    size,
                    Wait::Block,
                    budget,
                );
                a.gap_us = Plan::gap_us_for(size);
                let b = self.task(
                    Role::StampRecv,
                    self.link(None, Some(&channel)),
                    size,
                    Wait::Block,
                    budget,
                );
                outcome = run_pair(&label, Side::new(a), Side::new(b), self.cores)?.1;
                scale = 1.0;
            }
        }
        Ok(Samples {
            ns: outcome.samples_ns,
            scale,
        })
    }
}

/// Waits until the broker lists `consumers` attached consumers and one attached producer on
/// `channel`: a fan-out consumer receives only what is written after it attached, so the
/// producer must not start before all of them are in.
fn wait_for_fanout_peers(client: &Client, channel: &str, consumers: usize) -> Result<()> {
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    loop {
        let info = client
            .info(channel)
            .with_context(|| format!("asking the broker about {channel}"))?;
        let attached = |role| {
            info.peers
                .iter()
                .filter(|p| p.role == role && p.attached)
                .count()
        };
        let (c, p) = (attached(PeerRole::Consumer), attached(PeerRole::Producer));
        if c == consumers && p == 1 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{channel}: {c} of {consumers} consumers and {p} of 1 producer attached after \
                 {ATTACH_TIMEOUT:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
