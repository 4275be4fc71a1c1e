//! Scale (issue 14): aggregate throughput against the number of channels busy at once (pairs of
//! processes, all unpinned on the machine's CPUs, blocking), for our channels, iceoryx2 and Unix
//! sockets; and the broker's RSS and attach time against the number of attached clients.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::broker::Broker;
use crate::control::Control;
use crate::iox::Iceoryx;
use crate::ours::Ours;
use crate::plan::Plan;
use crate::results::{ManyClients, Rate, Results, Transport};
use crate::roles::Outcome;
use crate::worker::{run_group, Link, Role, Side, Task};

/// Message size of the channel-count curve.
pub const SIZE: usize = 64 << 10;

/// A broker that admits the largest client count of the curve (plus the control connection).
const CLIENTS_CONFIG: &str = "version = 1\nmax_channels = 20000\nmax_clients = 20000\n";

/// One point of the channel-count curve.
#[derive(Clone, Debug, Serialize)]
pub struct PairsPoint {
    pub transport: Transport,
    pub pairs: usize,
    /// All pairs together: every message received / (last receive - first send).
    pub aggregate: Rate,
}

/// Aggregate rate of `pairs` producer/consumer pairs whose outcomes come in that order; fails
/// unless every consumer received what its producer sent.
pub fn aggregate(outcomes: &[Outcome]) -> Result<Rate> {
    let (mut messages, mut bytes) = (0u64, 0u64);
    for pair in outcomes.chunks(2) {
        let [producer, consumer] = pair else {
            bail!("an odd number of outcomes");
        };
        if producer.messages != consumer.messages {
            bail!(
                "a producer sent {} messages, its consumer received {}",
                producer.messages,
                consumer.messages
            );
        }
        messages += consumer.messages;
        bytes += consumer.bytes;
    }
    let start = outcomes.iter().step_by(2).map(|o| o.start_ns).min();
    let end = outcomes.iter().skip(1).step_by(2).map(|o| o.end_ns).max();
    let elapsed = end.zip(start).map_or(0, |(e, s)| e.saturating_sub(s));
    if elapsed == 0 || messages == 0 {
        bail!("nothing was transferred");
    }
    let secs = elapsed as f64 / 1e9;
    Ok(Rate {
        msgs_per_s: messages as f64 / secs,
        gb_per_s: bytes as f64 / secs / 1e9,
    })
}

/// `pairs` Unix socketpairs, one writer and one reader process each.
pub fn unix_pairs(pairs: usize, budget_ms: u64) -> Result<Rate> {
    let mut sides = Vec::with_capacity(pairs * 2);
    for _ in 0..pairs {
        let (rx, tx) = UnixStream::pair().context("socketpair")?;
        let task = |role| Task {
            role,
            link: Link::Stream { buffered: false },
            size: SIZE,
            wait: crate::transport::Wait::Block,
            budget_ms,
            batch: 0,
            gap_us: 0,
        };
        sides.push(Side {
            task: task(Role::Produce),
            rx_fd: None,
            tx_fds: vec![OwnedFd::from(tx)],
        });
        sides.push(Side {
            task: task(Role::Consume),
            rx_fd: Some(OwnedFd::from(rx)),
            tx_fds: Vec::new(),
        });
    }
    aggregate(&run_group(&format!("unix {pairs} pairs"), sides)?)
}

/// The broker's RSS and attach time with each of `counts` clients attached.
pub fn clients_curve(control: &Control, counts: &[usize], r: &mut Results) {
    for &clients in counts {
        eprintln!("  attaching {clients} clients");
        let what = format!("broker with {clients} clients");
        let point: Option<ManyClients> = r.record(
            &what,
            control.many_clients_with(clients, CLIENTS_CONFIG, &format!("scale{clients}")),
        );
        if let Some(c) = point {
            eprintln!(
                "  {} clients: VmRSS {} KiB, {:.1} µs per attach at the end",
                c.clients,
                c.rss_attached.total_kib,
                c.attach_last_secs * 1e6
            );
            r.scale_clients.push(c);
        }
    }
}

/// The channel-count curve (ours on `broker` if given, iceoryx2, Unix sockets, taking turns
/// at each count) and, with `control`, the client-count curve.
pub fn section(plan: &Plan, broker: Option<&Broker>, control: Option<&Control>, r: &mut Results) {
    eprintln!(
        "shmem-bench: scale, {} messages over 1 to {} pairs at once (unpinned)",
        crate::results::format_size(SIZE),
        plan.scale_pairs.iter().max().unwrap_or(&0)
    );
    if r.record("leaving the real-time policy", crate::sys::leave_realtime()) == Some(true) {
        eprintln!("  (started under a real-time policy: this section runs unpinned, under the normal one)");
    }
    let ours = broker.and_then(|b| r.record("connecting to the broker", Ours::new(b, plan, None)));
    let iox = Iceoryx::new(plan, None);
    for &pairs in &plan.scale_pairs {
        let runs: [(Transport, Option<Result<Rate>>); 3] = [
            (
                Transport::Ours,
                ours.as_ref().map(|o| o.throughput_pairs(pairs, SIZE)),
            ),
            (Transport::Iceoryx, Some(iox.throughput_pairs(pairs, SIZE))),
            (Transport::Unix, Some(unix_pairs(pairs, plan.throughput_ms))),
        ];
        for (transport, result) in runs {
            let Some(result) = result else { continue };
            let what = format!("scale {} {pairs} pairs", transport.label());
            if let Some(aggregate) = r.record(&what, result) {
                eprintln!(
                    "  {pairs:>3} pairs {:<14} {:>8.3} GB/s in all",
                    transport.label(),
                    aggregate.gb_per_s
                );
                r.scale_pairs.push(PairsPoint {
                    transport,
                    pairs,
                    aggregate,
                });
            }
        }
    }
    if let Some(control) = control {
        clients_curve(control, &plan.scale_clients, r);
    }
}
