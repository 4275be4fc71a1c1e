//! What a lab needs of the host: removing a lab's cgroup tree, sweeping up what a killed run
//! left, file modes services can reach, and the folder labs live in.

use super::*;
use crate::workspace_dir;
use std::fs::{self};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Removes a cgroup and its descendants (deepest first), retrying while their last processes
/// are still exiting.
pub(super) fn remove_cgroup_tree(cgroup: &Path, timeout: Duration) -> Result<(), String> {
    fn subdirs_deepest_first(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    subdirs_deepest_first(&entry.path(), out);
                }
            }
        }
        out.push(dir.to_path_buf());
    }
    let deadline = Instant::now() + timeout;
    loop {
        let mut dirs = Vec::new();
        subdirs_deepest_first(cgroup, &mut dirs);
        let mut last_error = None;
        for dir in &dirs {
            match fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => last_error = Some(format!("rmdir {}: {e}", dir.display())),
            }
        }
        if !cgroup.exists() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let procs = fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
            return Err(format!(
                "cannot remove cgroup {} within {timeout:?} ({}; processes: {procs:?})",
                cgroup.display(),
                last_error.unwrap_or_default()
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// Removes what labs of killed test runs left behind: their cgroups (empty, their launcher gone)
/// and work dirs (their cgroup gone). Processes are never touched: a killed test's lab dies by
/// itself (PR_SET_PDEATHSIG on the launcher, `unshare --kill-child` on systemd).
pub(super) fn sweep_stale_labs(base: &Path) {
    let Some(root) = cgroup2_root() else { return };
    let Ok(entries) = fs::read_dir(&root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("shmem-broker-lab-") else {
            continue;
        };
        // A name without a pid is not ours to judge: leave it.
        let launcher_alive = match rest.split('-').next().map(str::parse::<u32>) {
            Some(Ok(pid)) => process_alive(pid),
            _ => true,
        };
        let populated = match fs::read_to_string(entry.path().join("cgroup.events")) {
            Ok(events) => events.lines().any(|l| l == "populated 1"),
            Err(_) => true,
        };
        if !launcher_alive && !populated {
            let _ = remove_cgroup_tree(&entry.path(), Duration::from_secs(1));
        }
    }
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with("sdlab.") {
            continue;
        }
        let stale = match fs::read_to_string(entry.path().join("cgroup")) {
            Ok(cgroup) => !Path::new(cgroup.trim()).exists(),
            // Never launched: stale once clearly older than any boot.
            Err(_) => entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > Duration::from_secs(600))),
        };
        if stale {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// The cgroup2 mount (`/sys/fs/cgroup/unified` on hybrid hosts, `/sys/fs/cgroup` on v2 ones).
pub(super) fn cgroup2_root() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        // ... mount-point ... - fstype source options
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// Whether a pid names a live (not zombie) process.
pub(super) fn process_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // pid (comm) STATE ...; comm may contain spaces and parentheses.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

pub(super) fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// Paths a sandboxed service of the lab does not see as they are on the host: the lab's private
/// /run, and what the project's unit hides (ProtectHome=, PrivateTmp=, PrivateDevices=).
const HIDDEN_FROM_SERVICES: &[&str] = &[
    "/tmp", "/var/tmp", "/home", "/root", "/run", "/dev", "/proc", "/sys",
];

/// Whether a sandboxed service running as an unprivileged user (not in the file's group) can
/// reach `path`: not under a path the sandbox hides, every parent dir searchable by others, and
/// the file itself has `other_bits` (e.g. 0o4 to read, 0o1 to execute) for others.
pub fn reachable_by_services(path: &Path, other_bits: u32) -> Result<(), String> {
    let path = path
        .canonicalize()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(hidden) = HIDDEN_FROM_SERVICES.iter().find(|h| path.starts_with(h)) {
        return Err(format!(
            "{} is under {hidden}, which the service's sandbox hides",
            path.display()
        ));
    }
    let mode = fs::metadata(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .mode();
    if mode & other_bits != other_bits {
        return Err(format!("{} has mode {:o}", path.display(), mode & 0o7777));
    }
    for dir in path.ancestors().skip(1) {
        let mode = fs::metadata(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .mode();
        if mode & 0o001 == 0 {
            return Err(format!(
                "{} (mode {:o}) is not searchable by other users",
                dir.display(),
                mode & 0o7777
            ));
        }
    }
    Ok(())
}

/// Where lab work dirs go: `$SHMEM_BROKER_LAB_DIR`, else `<target>/tmp` when services can reach
/// it, else `/var/lib/shmem-broker-tests`. Not /tmp: the project's unit has PrivateTmp=yes, and
/// the broker must read its config in the work dir.
pub(super) fn lab_base_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SHMEM_BROKER_LAB_DIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        return dir;
    }
    let target = crate::bin_dir()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| workspace_dir().join("target"));
    let candidate = target.join("tmp");
    if fs::create_dir_all(&candidate).is_ok()
        && reachable_by_services(&candidate, 0o001).is_ok()
        && candidate
            .join("sdlab.XXXXXX/control.sock")
            .as_os_str()
            .len()
            <= MAX_SOCKET_PATH
    {
        return candidate;
    }
    let fallback = PathBuf::from("/var/lib/shmem-broker-tests");
    fs::create_dir_all(&fallback).unwrap_or_else(|e| panic!("mkdir {}: {e}", fallback.display()));
    set_mode(&fallback, 0o755);
    fallback
}
