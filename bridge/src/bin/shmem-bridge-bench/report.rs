//! The report: one row per size, throughput spreads, latencies and the verdict against Zenoh.

use crate::measure::*;

#[derive(Default)]
pub(crate) struct Row {
    pub(crate) size: usize,
    pub(crate) ours: Vec<Outcome>,
    pub(crate) zenoh: Vec<Outcome>,
    pub(crate) socat: Vec<Outcome>,
    pub(crate) ours_lat: Option<Outcome>,
    pub(crate) zenoh_lat: Option<Outcome>,
    pub(crate) socat_lat: Option<Outcome>,
}

/// Median, min, max of the throughputs.
pub(crate) fn spread(runs: &[Outcome]) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = runs.iter().map(|o| o.mb_per_s).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some((v[v.len() / 2], v[0], v[v.len() - 1]))
}

pub(crate) fn size_text(size: usize) -> String {
    if size >= 1 << 20 && size % (1 << 20) == 0 {
        format!("{} MiB", size >> 20)
    } else if size >= 1 << 10 && size % (1 << 10) == 0 {
        format!("{} KiB", size >> 10)
    } else {
        format!("{size} B")
    }
}

pub(crate) fn rate_text(s: Option<(f64, f64, f64)>) -> String {
    match s {
        Some((med, lo, hi)) => format!("{med:.0} ({lo:.0}–{hi:.0})"),
        None => "socat not installed".into(),
    }
}

pub(crate) fn lat_text(o: Option<Outcome>) -> String {
    match o {
        Some(o) => format!("{:.0} / {:.0}", o.p50_us, o.p99_us),
        None => "–".into(),
    }
}

/// Ours against the 80 %-of-Zenoh target, with the spread: "within noise" when the ranges
/// allow either answer.
pub(crate) fn verdict(ours: Option<(f64, f64, f64)>, zenoh: Option<(f64, f64, f64)>) -> String {
    let (Some((om, olo, ohi)), Some((zm, zlo, zhi))) = (ours, zenoh) else {
        return "–".into();
    };
    if zm <= 0.0 || zlo <= 0.0 {
        return "–".into();
    }
    let ratio = om / zm;
    let best = ohi / zlo;
    let worst = olo / zhi;
    let call = if worst >= 0.8 {
        "met"
    } else if best < 0.8 {
        "missed"
    } else {
        "within noise"
    };
    format!("{:.0} % ({call})", ratio * 100.0)
}

pub(crate) fn report(plan: &Plan, rows: &[Row], command: &str) -> String {
    let mut out = String::from("## bridge\n\n");
    out.push_str(
        "A channel carried between two hosts simulated by two network namespaces joined by a \
         veth pair (10.78.0.1 and 10.78.0.2), against raw Zenoh publisher-to-subscriber (same \
         Zenoh build, peer mode, blocking congestion control) and `socat` over TCP on the same \
         link, in the same run. Ours: producer -> broker A -> `shmem-bridge export` -> Zenoh -> \
         `shmem-bridge import` -> broker B -> consumer. socat: Unix socket -> `socat` (A) -> \
         TCP -> `socat` (B) -> Unix socket. Throughput: MB/s, median of the repetitions \
         (min–max), messages sent back to back, bytes over last arrival - first send. \
         Latency: one-way, messages paced (1 ms apart, 5 ms for 1 MiB), p50 / p99 in µs.\n\n",
    );
    if plan.quick {
        out.push_str("Smoke run (`--quick`): tiny counts, the numbers are noise.\n\n");
    }
    out.push_str(&format!("Command: `{command}`\n\n"));
    out.push_str(
        "| size | ours MB/s | raw Zenoh MB/s | socat TCP MB/s | ours / Zenoh (target 80 %) | ours p50 / p99 µs | Zenoh p50 / p99 µs | socat p50 / p99 µs |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let (o, z, s) = (spread(&row.ours), spread(&row.zenoh), spread(&row.socat));
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            size_text(row.size),
            rate_text(o),
            rate_text(z),
            rate_text(s),
            verdict(o, z),
            lat_text(row.ours_lat),
            lat_text(row.zenoh_lat),
            lat_text(row.socat_lat),
        ));
    }
    out
}
