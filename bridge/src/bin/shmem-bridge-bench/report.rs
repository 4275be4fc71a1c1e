//! The report: one row per size, throughput spreads, latencies and the verdict against Zenoh.

use std::collections::BTreeMap;

use crate::cpu::Cpu;
use crate::measure::*;

/// CPU time spent on one path over its throughput runs of one size, by role, and by thread
/// name for the bridges and the Zenoh processes.
#[derive(Default)]
pub(crate) struct CpuTally {
    pub(crate) bytes: u64,
    pub(crate) roles: Vec<(&'static str, Cpu)>,
    pub(crate) threads: Vec<(&'static str, BTreeMap<String, Cpu>)>,
}

impl CpuTally {
    pub(crate) fn add(&mut self, role: &'static str, cpu: &Cpu) {
        match self.roles.iter_mut().find(|(r, _)| *r == role) {
            Some((_, sum)) => sum.add(cpu),
            None => self.roles.push((role, *cpu)),
        }
    }

    pub(crate) fn add_threads(&mut self, role: &'static str, threads: &BTreeMap<String, Cpu>) {
        let sums = match self.threads.iter_mut().position(|(r, _)| *r == role) {
            Some(i) => &mut self.threads[i].1,
            None => {
                self.threads.push((role, BTreeMap::new()));
                &mut self.threads.last_mut().expect("just pushed").1
            }
        };
        for (name, cpu) in threads {
            sums.entry(name.clone()).or_default().add(cpu);
        }
    }

    fn per_gib(&self, seconds: f64) -> f64 {
        if self.bytes == 0 {
            return 0.0;
        }
        seconds * (1u64 << 30) as f64 / self.bytes as f64
    }

    fn role(&self, role: &str) -> Cpu {
        self.roles
            .iter()
            .filter(|(r, _)| *r == role)
            .fold(Cpu::default(), |mut sum, (_, cpu)| {
                sum.add(cpu);
                sum
            })
    }

    fn total(&self) -> Cpu {
        self.roles.iter().fold(Cpu::default(), |mut sum, (_, cpu)| {
            sum.add(cpu);
            sum
        })
    }

    /// "1.23 (sys 0.45)": seconds per GiB, the kernel's part in parentheses.
    fn cell(&self, cpu: Cpu) -> String {
        format!(
            "{:.2} (sys {:.2})",
            self.per_gib(cpu.total()),
            self.per_gib(cpu.sys)
        )
    }

    /// "exporter: shmem-bridge 0.31, tx-0 0.12": the threads of each process, busiest first,
    /// those over 0.01 s/GiB.
    fn thread_text(&self) -> String {
        self.threads
            .iter()
            .map(|(role, threads)| {
                let mut v: Vec<(&String, f64)> = threads
                    .iter()
                    .map(|(name, cpu)| (name, self.per_gib(cpu.total())))
                    .filter(|(_, s)| *s >= 0.01)
                    .collect();
                v.sort_by(|a, b| b.1.total_cmp(&a.1));
                let list: Vec<String> = v
                    .iter()
                    .map(|(name, s)| format!("`{name}` {s:.2}"))
                    .collect();
                format!("{role}: {}", list.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[derive(Default)]
pub(crate) struct Row {
    pub(crate) size: usize,
    pub(crate) ours: Vec<Outcome>,
    pub(crate) zenoh: Vec<Outcome>,
    pub(crate) socat: Vec<Outcome>,
    pub(crate) ours_lat: Option<Outcome>,
    pub(crate) zenoh_lat: Option<Outcome>,
    pub(crate) socat_lat: Option<Outcome>,
    pub(crate) ours_cpu: CpuTally,
    pub(crate) zenoh_cpu: CpuTally,
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
    out.push_str(
        "\nCPU time per GiB moved (s/GiB, utime + stime over the throughput runs; the kernel's \
         part in parentheses). Ours: the producer and consumer threads (`getrusage`), the \
         bridges and both brokers (`/proc/PID/stat`); raw Zenoh: its publisher and subscriber \
         processes (each includes the bench's copy of the message, as ours' producer and \
         consumer do).\n\n\
         | size | producer | exporter | importer | consumer | brokers | ours total | Zenoh publisher | Zenoh subscriber | Zenoh total | ours / Zenoh |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let (o, z) = (&row.ours_cpu, &row.zenoh_cpu);
        let (ot, zt) = (o.total(), z.total());
        let ratio = if zt.total() > 0.0 {
            format!("{:.2}", o.per_gib(ot.total()) / z.per_gib(zt.total()))
        } else {
            "–".into()
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            size_text(row.size),
            o.cell(o.role("producer")),
            o.cell(o.role("exporter")),
            o.cell(o.role("importer")),
            o.cell(o.role("consumer")),
            o.cell(o.role("brokers")),
            o.cell(ot),
            z.cell(z.role("publisher")),
            z.cell(z.role("subscriber")),
            z.cell(zt),
            ratio,
        ));
    }
    out.push_str("\nBy thread (s/GiB, live threads, by name):\n\n");
    for row in rows {
        out.push_str(&format!(
            "- {}: {}; {}\n",
            size_text(row.size),
            row.ours_cpu.thread_text(),
            row.zenoh_cpu.thread_text()
        ));
    }
    out
}
