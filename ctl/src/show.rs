//! `list`, `info` and `status` as text for people, or JSON (`--json`) for programs.

use std::io::{self, Write};

use shmem_broker_client::size::format_size;
use shmem_broker_client::wire::Event;
use shmem_broker_client::{ChannelInfo, Role, StatusInfo};

/// `1 message`, `2 messages`.
pub fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

pub fn json(out: &mut impl Write, value: &impl serde::Serialize) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    out.flush()
}

/// Endpoints attached in `role`, as a count (the pids are in `info`): 64 producers stay one
/// narrow column.
fn attached(info: &ChannelInfo, role: Role) -> String {
    let n = info
        .peers
        .iter()
        .filter(|p| p.role == role && p.attached)
        .count();
    let max = match role {
        Role::Producer => info.max_producers,
        Role::Consumer => info.max_consumers,
    };
    format!("{n}/{max}")
}

pub fn table(out: &mut impl Write, channels: &[ChannelInfo]) -> io::Result<()> {
    let mut rows = vec![[
        "NAME".to_string(),
        "CAPACITY".into(),
        "PRODUCERS".into(),
        "CONSUMERS".into(),
        "MESSAGES".into(),
        "BYTES".into(),
        "UNREAD".into(),
    ]];
    for c in channels {
        rows.push([
            c.name.clone(),
            format_size(c.capacity),
            attached(c, Role::Producer),
            attached(c, Role::Consumer),
            c.messages_written.to_string(),
            format_size(c.bytes_written),
            format_size(c.bytes_unread),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    out.flush()
}

pub fn info(out: &mut impl Write, c: &ChannelInfo) -> io::Result<()> {
    writeln!(out, "channel:   {}", c.name)?;
    writeln!(
        out,
        "capacity:  {} ({} bytes)",
        format_size(c.capacity),
        c.capacity
    )?;
    let origin = match c.origin {
        shmem_broker_client::wire::Origin::Config => "config",
        shmem_broker_client::wire::Origin::Runtime => "runtime",
    };
    writeln!(out, "origin:    {origin}")?;
    writeln!(
        out,
        "owner uid: {}",
        c.owner_uid.map_or("-".into(), |u| u.to_string())
    )?;
    writeln!(out, "producers: {}", join_or_none(&c.producers))?;
    writeln!(out, "consumers: {}", join_or_none(&c.consumers))?;
    writeln!(
        out,
        "shape:     up to {}, {}; slow consumers: {}; rings {}",
        count(c.max_producers.into(), "producer"),
        count(c.max_consumers.into(), "consumer"),
        c.slow_consumer,
        format_size(c.ring_bytes)
    )?;
    writeln!(
        out,
        "messages:  {} written, {} read, {} lost; {} evicted",
        c.messages_written,
        c.messages_read,
        c.messages_lost,
        count(c.evictions, "consumer")
    )?;
    writeln!(
        out,
        "bytes:     {} written, {} unread",
        format_size(c.bytes_written),
        format_size(c.bytes_unread)
    )?;
    if c.peers.is_empty() {
        writeln!(out, "peers:     none attached")?;
    }
    for p in &c.peers {
        let owner = p
            .owner_uid
            .map_or_else(String::new, |uid| format!(" owned by uid {uid}"));
        let who = match (&p.name, p.attached) {
            (Some(name), true) => format!(
                "{} {} {name:?}{owner} pid {} uid {} gid {}",
                p.role, p.id, p.pid, p.uid, p.gid
            ),
            (Some(name), false) => {
                format!("{} {} {name:?}{owner} (durable, away)", p.role, p.id)
            }
            (None, _) => format!(
                "{} {} pid {} uid {} gid {}",
                p.role, p.id, p.pid, p.uid, p.gid
            ),
        };
        let done = match p.role {
            Role::Producer => "written",
            Role::Consumer => "read",
        };
        writeln!(
            out,
            "peer:      {who}: {} {done}, {} unread, {} lost",
            count(p.messages, "message"),
            format_size(p.bytes_unread),
            p.messages_lost
        )?;
    }
    out.flush()
}

fn join_or_none(list: &[String]) -> String {
    if list.is_empty() {
        "(owner and root only)".into()
    } else {
        list.join(", ")
    }
}

pub fn status(out: &mut impl Write, s: &StatusInfo) -> io::Result<()> {
    writeln!(out, "version:   {} (protocol {})", s.version, s.protocol)?;
    writeln!(out, "pid:       {}", s.pid)?;
    writeln!(out, "uptime:    {}s", s.uptime_secs)?;
    writeln!(
        out,
        "socket:    {} ({})",
        s.socket_path.as_deref().unwrap_or("(unnamed)"),
        s.socket_source
    )?;
    writeln!(
        out,
        "config:    {}",
        s.config_file.as_deref().unwrap_or("(built-in defaults)")
    )?;
    if let Some(reload) = &s.last_reload {
        let when = utc(reload.at_unix_secs);
        match &reload.error {
            None => writeln!(out, "reload:    {when}: ok")?,
            Some(error) => writeln!(
                out,
                "reload:    {when}: rejected, still serving the previous config: {error}"
            )?,
        }
    }
    writeln!(out, "channels:  {}", s.channels)?;
    writeln!(out, "clients:   {}", s.clients)?;
    if !s.quotas.is_empty() {
        writeln!(out, "quotas:")?;
    }
    for q in &s.quotas {
        let (used, limit) = if q.quota.ends_with("ring_bytes") {
            (format_size(q.used), format_size(q.limit))
        } else {
            (q.used.to_string(), q.limit.to_string())
        };
        let who = q.uid.map_or(String::new(), |uid| format!(" (uid {uid})"));
        writeln!(out, "  {:<24} {used} of {limit}{who}", q.quota)?;
    }
    out.flush()
}

/// `2026-11-27 14:05:33 UTC` for seconds since the Unix epoch (the civil calendar from days,
/// after Howard Hinnant's `civil_from_days`).
fn utc(secs: u64) -> String {
    let days = secs / 86_400;
    let rest = secs % 86_400;
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// One line for a monitor event: text (client-chosen strings escaped) or JSON.
pub fn monitor_line(out: &mut impl Write, event: &Event, json: bool) -> io::Result<()> {
    if json {
        serde_json::to_writer(&mut *out, event)?;
        writeln!(out)?;
        return out.flush();
    }
    match event {
        Event::Monitor(e) => {
            let mut line = format!("{} {}", utc(e.at_unix_ms / 1000), e.what);
            if let Some(channel) = &e.channel {
                line.push_str(&format!(" channel={}", channel.escape_debug()));
            }
            if let Some(role) = e.role {
                line.push_str(&format!(" role={role}"));
            }
            if let Some(name) = &e.name {
                line.push_str(&format!(" name={}", name.escape_debug()));
            }
            if let Some(pid) = e.pid {
                line.push_str(&format!(" pid={pid}"));
            }
            if let Some(uid) = e.uid {
                line.push_str(&format!(" uid={uid}"));
            }
            if let Some(count) = e.count {
                line.push_str(&format!(" count={count}"));
            }
            if let Some(detail) = &e.detail {
                line.push_str(&format!(" ({})", detail.escape_debug()));
            }
            writeln!(out, "{line}")?;
        }
        Event::MonitorDropped { count: dropped } => {
            writeln!(
                out,
                "{} dropped: this monitor read too slowly",
                count(*dropped, "event")
            )?;
        }
        // Nothing else comes to a monitor connection.
        _ => return Ok(()),
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(super::utc(1_795_792_000), "2026-11-27 15:06:40 UTC");
    }
}
