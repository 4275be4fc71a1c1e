//! `shmemctl metrics`: the broker's numbers for Prometheus. Standard output gets the
//! OpenMetrics text format (what `prometheus-client` writes); `--textfile DIR` writes the
//! classic Prometheus text format (0.0.4) instead, because node_exporter's textfile collector
//! reads only that one (node_exporter issue 1988): there a counter's `# TYPE` line names it
//! with its `_total` suffix, and there are no `# UNIT` or `# EOF` lines.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::AtomicU64;

use anyhow::{Context, Result};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use shmem_broker_client::Role;

use crate::snapshot::{self, Snapshot};

/// The file `--textfile DIR` writes (node_exporter reads `*.prom`).
pub const TEXTFILE_NAME: &str = "shmem_broker.prom";

type Labels = Vec<(&'static str, String)>;
type Counters = Family<Labels, Counter<u64>>;
type Gauges = Family<Labels, Gauge<u64, AtomicU64>>;
type Ratios = Family<Labels, Gauge<f64, AtomicU64>>;

/// A gauge of a single u64 value.
fn gauge(value: u64) -> Gauge<u64, AtomicU64> {
    let gauge = Gauge::<u64, AtomicU64>::default();
    gauge.set(value);
    gauge
}

/// The snapshot in the OpenMetrics text format, ending with `# EOF`.
pub fn openmetrics(snap: &Snapshot) -> Result<String> {
    let mut registry = Registry::with_prefix("shmem_broker");
    registry.register(
        "channels",
        "Channels that exist",
        gauge(snap.status.channels as u64),
    );
    registry.register(
        "clients",
        "Open connections to the broker, the one asking included",
        gauge(snap.status.clients as u64),
    );
    registry.register_with_unit(
        "uptime",
        "Time since the broker started",
        Unit::Seconds,
        gauge(snap.status.uptime_secs),
    );
    if let Some((used, limit)) = snap.ring_memory() {
        registry.register_with_unit(
            "ring_memory",
            "Ring memory all channels hold",
            Unit::Bytes,
            gauge(used),
        );
        registry.register_with_unit(
            "ring_memory_limit",
            "The broker's ring memory quota (max_ring_bytes)",
            Unit::Bytes,
            gauge(limit),
        );
    }

    let messages = Counters::default();
    let bytes = Counters::default();
    let read = Counters::default();
    let lost = Counters::default();
    let evictions = Counters::default();
    let wakeups = Counters::default();
    let producers = Gauges::default();
    let consumers = Gauges::default();
    let capacity = Gauges::default();
    let ring_memory = Gauges::default();
    let unread = Gauges::default();
    let lag = Gauges::default();
    let fill = Ratios::default();
    for c in &snap.channels {
        let labels: Labels = vec![("channel", c.name.clone())];
        messages.get_or_create(&labels).inc_by(c.messages_written);
        bytes.get_or_create(&labels).inc_by(c.bytes_written);
        read.get_or_create(&labels).inc_by(c.messages_read);
        lost.get_or_create(&labels).inc_by(c.messages_lost);
        evictions.get_or_create(&labels).inc_by(c.evictions);
        wakeups.get_or_create(&labels).inc_by(c.wakeups);
        producers
            .get_or_create(&labels)
            .set(snapshot::attached(c, Role::Producer));
        consumers
            .get_or_create(&labels)
            .set(snapshot::attached(c, Role::Consumer));
        capacity.get_or_create(&labels).set(c.capacity);
        ring_memory.get_or_create(&labels).set(c.ring_bytes);
        unread.get_or_create(&labels).set(c.bytes_unread);
        lag.get_or_create(&labels)
            .set(snapshot::slowest_lag_bytes(c));
        fill.get_or_create(&labels).set(snapshot::fill_ratio(c));
    }
    registry.register(
        "channel_messages",
        "Data messages the channel's producers wrote",
        messages,
    );
    registry.register_with_unit(
        "channel",
        "Payload bytes the channel's producers wrote",
        Unit::Bytes,
        bytes,
    );
    registry.register(
        "channel_read_messages",
        "Data messages the channel's consumers read, summed over consumers",
        read,
    );
    registry.register(
        "channel_lost_messages",
        "Messages consumers lost to a full ring (slow_consumer = drop)",
        lost,
    );
    registry.register(
        "channel_evictions",
        "Consumers the broker disconnected for falling behind or a corrupt ring",
        evictions,
    );
    registry.register(
        "channel_wakeups",
        "Eventfd wake-ups counted in the channel's rings that exist now (resets when a consumer's rings go)",
        wakeups,
    );
    registry.register("channel_producers", "Producers attached now", producers);
    registry.register("channel_consumers", "Consumers attached now", consumers);
    registry.register_with_unit(
        "channel_capacity",
        "Data bytes of each of the channel's rings",
        Unit::Bytes,
        capacity,
    );
    registry.register_with_unit(
        "channel_ring_memory",
        "Ring memory the channel holds (one ring per producer and consumer pair)",
        Unit::Bytes,
        ring_memory,
    );
    registry.register_with_unit(
        "channel_unread",
        "Message bytes written and not yet read, summed over consumers",
        Unit::Bytes,
        unread,
    );
    registry.register_with_unit(
        "channel_slowest_consumer_lag",
        "Message bytes the slowest consumer has yet to read",
        Unit::Bytes,
        lag,
    );
    registry.register(
        "channel_ring_fill_ratio",
        "Fill of the channel's fullest ring, 0 to 1",
        fill,
    );
    let mut text = String::new();
    encode(&mut text, &registry).context("encoding the metrics")?;
    Ok(text)
}

/// The OpenMetrics text `openmetrics` made, as the classic Prometheus text format: counter
/// families named with their `_total` suffix, no `# UNIT` or `# EOF` lines. Only for our own
/// output (names and label values are ours or channel names, which cannot hold a quote, a
/// backslash or a line break).
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Writes `text` to `DIR/shmem_broker.prom` atomically: a temporary file in `dir` (named so
/// that node_exporter, which reads `*.prom`, skips it), made readable by all (node_exporter
/// runs as another user), synced, then renamed over the old file. A reader sees the old file
/// or the new one, never half of one. The temporary file is created with O_EXCL, so a link
/// planted in a shared directory is never followed, and rename replaces a link, not its target.
pub fn write_textfile(dir: &Path, text: &str) -> Result<()> {
    let mut file = tempfile::Builder::new()
        .prefix(".shmem_broker.prom.")
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let path = file.path().display().to_string();
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("setting the mode of {path}"))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.as_file().sync_all())
        .with_context(|| format!("writing {path}"))?;
    let target = dir.join(TEXTFILE_NAME);
    file.persist(&target)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming {path} to {}", target.display()))?;
    Ok(())
}

/// `metrics`: OpenMetrics on `out`, or the textfile in `dir`.
pub fn run(snap: &Snapshot, textfile: Option<&Path>, out: &mut impl std::io::Write) -> Result<()> {
    let text = openmetrics(snap)?;
    match textfile {
        Some(dir) => write_textfile(dir, &prometheus_text(&text)),
        None => {
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .map_err(crate::report::StdoutError)?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn counters_get_their_total_suffix_and_openmetrics_lines_go() {
        let om = "# HELP x_channel_messages Data.\n# TYPE x_channel_messages counter\n\
                  x_channel_messages_total{channel=\"a\"} 3\n# HELP x_fill Fill.\n\
                  # TYPE x_fill gauge\n# UNIT x_fill_bytes bytes\nx_fill 1\n# EOF\n";
        let mut expected = String::new();
        expected.push_str("# HELP x_channel_messages_total Data.\n");
        expected.push_str("# TYPE x_channel_messages_total counter\n");
        expected.push_str("x_channel_messages_total{channel=\"a\"} 3\n");
        expected.push_str("# HELP x_fill Fill.\n# TYPE x_fill gauge\nx_fill 1\n");
        assert_eq!(super::prometheus_text(om), expected);
    }
}
