//! Children that die with the thread that spawned them, and fds handed to a child at fixed
//! numbers. Both run between fork and exec, where only async-signal-safe calls are allowed.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes the kernel SIGKILL the child when the thread that spawned it ends
/// (`PR_SET_PDEATHSIG`), so a test, bench or soak run killed mid-way (timeout, ^C, a crash)
/// leaves no broker or worker behind. Spawn from the thread that owns the child: the signal
/// comes when that thread ends, not the process.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: the hook only calls prctl, which is async-signal-safe and touches no memory of
    // the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Most fds [`dup_onto`] moves at once (a fixed array: no allocation after fork).
pub const DUP_ONTO_MAX: usize = 32;

/// In a child between fork and exec, duplicates each `(source, target)` fd onto `target`,
/// without `FD_CLOEXEC`, so it survives exec (systemd's `LISTEN_FDS` at 3, 4, ..., a worker's
/// channel fds). Every source is first copied above every target, so a source sitting on
/// another entry's target is not clobbered by an earlier `dup2`. Only async-signal-safe calls.
///
/// # Safety
/// Call only in a `pre_exec` hook, with fds that are open in the parent.
pub unsafe fn dup_onto(fds: &[(RawFd, RawFd)]) -> io::Result<()> {
    let mut moved = [0 as RawFd; DUP_ONTO_MAX];
    if fds.len() > moved.len() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let above = fds
        .iter()
        .map(|&(_, target)| target)
        .max()
        .unwrap_or(0)
        .saturating_add(1);
    for (slot, &(source, _)) in moved.iter_mut().zip(fds) {
        *slot = libc::fcntl(source, libc::F_DUPFD_CLOEXEC, above);
        if *slot < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    for (&copy, &(_, target)) in moved.iter().zip(fds) {
        // dup2 leaves FD_CLOEXEC clear on the new fd: it survives exec.
        if libc::dup2(copy, target) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
