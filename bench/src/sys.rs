//! Thin wrappers over the OS facilities the benchmarks need: a clock shared between processes,
//! CPU pinning, the fd limit, and a process's resident memory.

use std::fs;
use std::io;

use anyhow::{bail, Context, Result};

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process of the machine, so a
/// timestamp taken by one process can be compared with one taken by another.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux, so
    // the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The CPUs this process may run on, in ascending order.
pub fn allowed_cpus() -> Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; zeroed is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: we pass the real size of `set`, which the kernel fills in.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("sched_getaffinity");
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, the size of the set.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Pins the calling thread to one CPU.
pub fn pin_to(cpu: usize) -> Result<()> {
    // SAFETY: as above; CPU_SET writes inside the set for cpu < CPU_SETSIZE, checked first.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= libc::CPU_SETSIZE as usize {
        bail!("cpu {cpu} out of range");
    }
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size we pass; 0 means the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("pinning to cpu {cpu}"));
    }
    Ok(())
}

/// Puts this process back under the normal scheduler if it was started under a real-time
/// policy (`chrt -f`), so that the processes it starts from now on inherit the normal one;
/// returns whether it did. More busy-polling real-time processes than CPUs never let the others
/// run: the unpinned scale section's iceoryx2 pairs livelocked that way.
pub fn leave_realtime() -> Result<bool> {
    // SAFETY: plain syscalls on the calling process (pid 0) with a valid sched_param.
    let policy = unsafe { libc::sched_getscheduler(0) };
    if policy != libc::SCHED_FIFO && policy != libc::SCHED_RR {
        return Ok(false);
    }
    let normal = libc::sched_param { sched_priority: 0 };
    // SAFETY: as above.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &normal) } != 0 {
        return Err(io::Error::last_os_error()).context("leaving the real-time policy");
    }
    Ok(true)
}

/// The two cores the two sides of a measurement run on: the first two CPUs we may use, or
/// `None` (no pinning) on a single-CPU machine.
#[derive(Clone, Copy, Debug)]
pub struct CorePair {
    pub a: usize,
    pub b: usize,
}

pub fn core_pair() -> Result<Option<CorePair>> {
    let cpus = allowed_cpus()?;
    Ok(match cpus.as_slice() {
        [a, b, ..] => Some(CorePair { a: *a, b: *b }),
        _ => None,
    })
}

/// Raises RLIMIT_NOFILE to at least `want` (the hard limit too when we may, i.e. as root), so
/// that we and the broker we start (which inherits it) can hold tens of thousands of fds.
/// Returns the soft limit in force afterwards.
pub fn raise_nofile(want: u64) -> Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if limit.rlim_cur >= want {
        return Ok(limit.rlim_cur);
    }
    let raised = libc::rlimit {
        rlim_cur: want,
        rlim_max: limit.rlim_max.max(want),
    };
    // SAFETY: `raised` is a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return Ok(want);
    }
    // Not allowed to raise the hard limit: go as far as it allows.
    let capped = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &capped) } != 0 {
        return Err(io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
    }
    Ok(limit.rlim_max)
}

/// Resident memory of a process, from /proc/PID/status, in KiB.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Rss {
    pub total_kib: u64,
    pub anon_kib: u64,
    pub file_kib: u64,
    pub shmem_kib: u64,
}

pub fn rss_of(pid: u32) -> Result<Rss> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {name} in {path}"))
    };
    Ok(Rss {
        total_kib: field("VmRSS:")?,
        anon_kib: field("RssAnon:")?,
        file_kib: field("RssFile:")?,
        shmem_kib: field("RssShmem:")?,
    })
}

// Handing a worker its fds at fixed numbers: testkit's one copy (also the harness's
// socket-activated broker uses it).
pub use shmem_broker_testkit::process::dup_onto;

/// Puts an fd in non-blocking mode.
pub fn set_nonblocking(fd: i32) -> Result<()> {
    // SAFETY: fcntl on an fd we own; failure is reported, not UB.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("O_NONBLOCK on fd {fd}"));
    }
    Ok(())
}

/// The soft RLIMIT_NOFILE of another process, from /proc/PID/limits.
pub fn nofile_of(pid: u32) -> Option<u64> {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}
