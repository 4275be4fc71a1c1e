//! CPU time per process (and per thread), so that the report says where the CPU goes per
//! byte moved: on a shared machine wall-clock throughput moves with the load, the CPU a
//! process spends per gibibyte much less. Processes are read from `/proc/PID/stat` (utime and
//! stime of all its threads, live and exited, in clock ticks), threads of this process from
//! `getrusage(RUSAGE_THREAD)` (microseconds), the threads of a child from
//! `/proc/PID/task/*/stat` (live ones only, by name).

use std::collections::BTreeMap;

use anyhow::{anyhow, Context, Result};

/// User and system CPU time, in seconds.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Cpu {
    pub(crate) user: f64,
    pub(crate) sys: f64,
}

impl Cpu {
    pub(crate) fn total(&self) -> f64 {
        self.user + self.sys
    }

    pub(crate) fn since(&self, before: &Cpu) -> Cpu {
        Cpu {
            user: (self.user - before.user).max(0.0),
            sys: (self.sys - before.sys).max(0.0),
        }
    }

    pub(crate) fn add(&mut self, other: &Cpu) {
        self.user += other.user;
        self.sys += other.sys;
    }
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// The name (comm) and CPU time in a `/proc/.../stat` line: the name is in parentheses and may
/// hold spaces and parentheses itself, so the fields are counted after the last ')'.
fn parse_stat(text: &str) -> Option<(String, Cpu)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // Field 3 (state) is fields[0]: utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let hz = ticks_per_second();
    Some((
        name,
        Cpu {
            user: utime as f64 / hz,
            sys: stime as f64 / hz,
        },
    ))
}

/// All the CPU time process `pid` has used so far.
pub(crate) fn of_process(pid: u32) -> Result<Cpu> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    parse_stat(&text)
        .map(|(_, cpu)| cpu)
        .ok_or_else(|| anyhow!("{path}: unexpected format"))
}

/// The CPU time the calling thread has used so far.
pub(crate) fn of_this_thread() -> Cpu {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage; RUSAGE_THREAD exists on Linux.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    if rc != 0 {
        return Cpu::default();
    }
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    Cpu {
        user: secs(usage.ru_utime),
        sys: secs(usage.ru_stime),
    }
}

/// The CPU time of each live thread of `pid` so far, summed by thread name (a pool's threads
/// share one, like Zenoh's `rx-0`, `tx-0`, `net-0`, or a name is cut at 15 bytes).
pub(crate) fn by_thread(pid: u32) -> BTreeMap<String, Cpu> {
    let mut threads: BTreeMap<String, Cpu> = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return threads;
    };
    for task in dir.flatten() {
        // A thread that ended since the listing has no stat left: skipped.
        let Ok(text) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        if let Some((name, cpu)) = parse_stat(&text) {
            threads.entry(name).or_default().add(&cpu);
        }
    }
    threads
}

/// What each thread name used between two [`by_thread`] readings.
pub(crate) fn threads_since(
    after: &BTreeMap<String, Cpu>,
    before: &BTreeMap<String, Cpu>,
) -> BTreeMap<String, Cpu> {
    after
        .iter()
        .map(|(name, cpu)| {
            let was = before.get(name).copied().unwrap_or_default();
            (name.clone(), cpu.since(&was))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_names_parse() {
        let line = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 1 2 3";
        let (name, cpu) = parse_stat(line).expect("parses");
        assert_eq!(name, "a) b (c");
        let hz = ticks_per_second();
        assert_eq!(cpu.user, 250.0 / hz);
        assert_eq!(cpu.sys, 75.0 / hz);
        assert!(parse_stat("42 (x) S 1").is_none());
    }
}
