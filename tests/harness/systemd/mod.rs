//! A real systemd for the tests: [`SystemdLab`] boots `/lib/systemd/systemd` as PID 1 of fresh
//! pid + mount + uts + cgroup namespaces (with a minimal journald), so a test can do what an
//! operator does: `systemctl start shmem-broker.socket`, connect so that systemd socket-activates
//! the broker, `systemctl status/reload/restart/stop`, read `journalctl`, `kill -9` the main
//! process and watch `Restart=` and the file-descriptor store bring it back.
//!
//! The boot script is `tests/systemd/sd-up.sh` (`--exec` mode: the script prepares the work dir,
//! moves itself into a cgroup of its own, unique per lab, and becomes the `unshare` that launches
//! `tests/systemd/sd-init.sh` as the namespace's PID 1). The launcher is a child of the test thread
//! with `PR_SET_PDEATHSIG`, and `unshare --kill-child` takes systemd down with it, so even a
//! killed test run does not leave a systemd behind (the next boot sweeps up the empty cgroup and
//! work dir such a run leaves). Dropping the lab stops systemd (`systemctl exit -f`; if it does
//! not exit in time, everything in the lab's cgroup is killed), removes the lab's cgroups and
//! then its work dir. When the test is failing, the lab's journal is printed first.
//!
//! Everything needs root (CAP_SYS_ADMIN): such tests carry `#[cfg_attr(not(as_root), ignore = "needs root")]` and call
//! [`crate::require_root`] before [`SystemdLab::boot`].
//!
//! Processes inside the lab are run with `nsenter -t PID -m -p`: systemctl and journalctl need the
//! lab's private `/run`, and clients run in the lab's pid namespace like on a real machine (the
//! broker sees their pids). The work dir, and the sockets the lab's units listen on in it, are
//! reachable from the test process directly.
//!
//! [`LabBroker`] installs the project's own `systemd/shmem-broker.{socket,service}` into a lab
//! with only `ExecStart=` and `ListenStream=` rewritten, every hardening line kept.
//!
//! The lab itself is [`lab`] (boot, commands inside, journal, teardown), what it needs of the
//! host [`host`] (cgroups, stale labs, file modes, where labs live), the project's units in a
//! lab [`units`].

mod host;
mod lab;
mod units;

pub use host::reachable_by_services;
pub use lab::SystemdLab;
pub use units::*;

use crate::workspace_dir;
use std::path::PathBuf;
use std::time::Duration;

/// How long booting may take until `systemctl is-system-running` says running (about 0.2 s here).
const BOOT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one systemctl or journalctl call may take.
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long teardown waits for `systemctl exit -f`, and then for systemd to exit, before killing
/// the lab's cgroup.
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(25);
/// Longest path a Unix socket address can hold (sun_path is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// Lines of the lab's journal printed when a test fails.
const JOURNAL_TAIL: &str = "300";

/// The folder with sd-up.sh, sd-init.sh and sd-down.sh.
pub fn scripts_dir() -> PathBuf {
    workspace_dir().join("tests").join("systemd")
}
