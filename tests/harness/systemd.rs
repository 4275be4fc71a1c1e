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

use crate::{
    broker_bin, ctl_bin, json_array, json_str, require_tool, run, workspace_dir, CmdOutput, Proc,
    CTL_TIMEOUT, WAIT,
};
use serde_json::Value;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

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

/// A throwaway systemd, torn down on drop. See the module docs.
pub struct SystemdLab {
    /// The `unshare` launcher (our child); `None` once reaped.
    launcher: Option<Child>,
    /// Host pid of the lab's systemd (PID 1 inside).
    pid: u32,
    /// Our cgroup (under the cgroup2 mount), once sd-up.sh recorded it.
    cgroup: Option<PathBuf>,
    log_dir: PathBuf,
    // Last: removed after the lab is down.
    dir: Option<tempfile::TempDir>,
}

impl SystemdLab {
    /// Boots a lab and waits until its systemd reports `running` (or `degraded`). Panics with
    /// the reason (and the launcher's output) if it cannot. Needs root.
    pub fn boot() -> SystemdLab {
        SystemdLab::boot_with(false)
    }

    /// A lab whose /etc, /usr and /var are overlays of the host's with a tmpfs on top, whose
    /// /tmp is its own, and whose systemd also loads units from /usr/lib/systemd/system, which
    /// starts empty (never the host's units: see sd-init.sh): a package can be installed,
    /// enabled and purged in it (dpkg, systemd-sysusers, useradd) and the host's files, user
    /// database and dpkg database stay as they were. Whatever the lab writes there is gone
    /// with it.
    pub fn boot_overlaid() -> SystemdLab {
        SystemdLab::boot_with(true)
    }

    fn boot_with(overlaid: bool) -> SystemdLab {
        assert!(
            rustix::process::geteuid().is_root(),
            "SystemdLab::boot needs root: call require_root() first"
        );
        require_tool("nsenter", "util-linux");
        require_tool("unshare", "util-linux");
        assert!(
            Path::new("/lib/systemd/systemd").is_file(),
            "/lib/systemd/systemd not found: install systemd (apt-get install systemd)"
        );
        let base = lab_base_dir();
        sweep_stale_labs(&base);
        let dir = tempfile::Builder::new()
            .prefix("sdlab.")
            .tempdir_in(&base)
            .unwrap_or_else(|e| panic!("create a lab dir in {}: {e}", base.display()));
        // Services of the lab run as other users and must reach their files in here.
        set_mode(dir.path(), 0o755);
        let log_dir = dir.path().join("logs");
        fs::create_dir(&log_dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", log_dir.display()));

        if overlaid {
            // sd-init.sh looks for this file.
            let marker = dir.path().join("overlay-root");
            fs::write(&marker, "").unwrap_or_else(|e| panic!("write {}: {e}", marker.display()));
        }
        let script = scripts_dir().join("sd-up.sh");
        let launcher_log = dir.path().join("launcher.log");
        let log = File::create(&launcher_log)
            .unwrap_or_else(|e| panic!("create {}: {e}", launcher_log.display()));
        let mut cmd = Command::new(&script);
        cmd.arg("--exec")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup the launcher log fd"))
            .stderr(log);
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                // Own session: a ^C on the test's terminal is not systemd's business.
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // The launcher (and, by unshare --kill-child, systemd) dies with the test thread.
        shmem_broker_testkit::process::die_with_parent(&mut cmd);
        let launcher = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let mut lab = SystemdLab {
            launcher: Some(launcher),
            pid: 0,
            cgroup: None,
            log_dir,
            dir: Some(dir),
        };
        lab.wait_for_systemd();
        lab
    }

    fn wait_for_systemd(&mut self) {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let launcher_pid = self.launcher.as_ref().map_or(0, Child::id);
        // 1. systemd appears as the launcher's child.
        loop {
            if let Some(status) = self.launcher.as_mut().and_then(|l| l.try_wait().ok()?) {
                self.launcher = None;
                panic!(
                    "the systemd lab launcher exited ({status}) before systemd started:\n{}",
                    self.launcher_log()
                );
            }
            let children =
                fs::read_to_string(format!("/proc/{launcher_pid}/task/{launcher_pid}/children"))
                    .unwrap_or_default();
            if let Some(pid) = children
                .split_whitespace()
                .find_map(|p| p.parse::<u32>().ok())
            {
                if fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "systemd")
                {
                    self.pid = pid;
                    break;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {BOOT_TIMEOUT:?} waiting for the lab's systemd to start \
                     (launcher pid {launcher_pid}, children {children:?}):\n{}",
                    self.launcher_log()
                );
            }
            std::thread::sleep(POLL);
        }
        // sd-up.sh wrote the cgroup path before it exec'd unshare.
        let cgroup_file = self.dir().join("cgroup");
        let cgroup = fs::read_to_string(&cgroup_file)
            .unwrap_or_else(|e| panic!("read {}: {e}", cgroup_file.display()));
        self.cgroup = Some(PathBuf::from(cgroup.trim()));
        // 2. the manager answers and reached its target.
        loop {
            let out = self.try_run_quiet(&["systemctl", "is-system-running"]);
            let last = match out {
                Ok(state) if matches!(state.trim(), "running" | "degraded") => return,
                Ok(state) => state.trim().to_string(),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {BOOT_TIMEOUT:?} waiting for the lab's systemd (pid {}) to \
                     be running; last state: {last}\nlauncher output:\n{}",
                    self.pid,
                    self.launcher_log()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    fn launcher_log(&self) -> String {
        fs::read_to_string(self.dir().join("launcher.log")).unwrap_or_default()
    }

    /// The lab's work dir (world-searchable; reachable by the lab's services and the host).
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("lab dir exists until drop").path()
    }

    /// Where unit files go (the lab's unit search path besides a tmpfs /etc/systemd/system).
    pub fn units_dir(&self) -> PathBuf {
        self.dir().join("units")
    }

    /// Where the stdout/stderr of commands run by the helpers are kept.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// Host pid of the lab's systemd.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A command that runs `program` inside the lab (its mount and pid namespaces).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.pid.to_string())
            .args(["-m", "-p", "--"])
            .arg(program);
        cmd
    }

    /// Runs `args` (program first) inside the lab, to completion (failing after `timeout`).
    pub fn run(&self, args: &[&str], stdin: Stdio, timeout: Duration) -> CmdOutput {
        let (program, rest) = args.split_first().expect("a program to run");
        let mut cmd = self.command(program);
        cmd.args(rest);
        let label = Path::new(program)
            .file_name()
            .map_or("cmd".into(), |n| n.to_string_lossy().into_owned());
        run(cmd, &label, &self.log_dir, stdin, timeout)
    }

    /// `systemctl --no-pager ARGS` inside the lab; any exit status.
    pub fn systemctl(&self, args: &[&str]) -> CmdOutput {
        let mut all = vec!["systemctl", "--no-pager"];
        all.extend_from_slice(args);
        self.run(&all, Stdio::null(), SYSTEMCTL_TIMEOUT)
    }

    /// `systemctl ARGS`, which must succeed; returns its stdout.
    pub fn systemctl_ok(&self, args: &[&str]) -> String {
        let out = self.systemctl(args);
        assert!(
            out.success(),
            "systemctl {} failed:\n{out}\n{}",
            args.join(" "),
            self.unit_journal_hint(args)
        );
        out.stdout
    }

    /// One property of a unit (`systemctl show -p PROPERTY --value UNIT`).
    pub fn show(&self, unit: &str, property: &str) -> String {
        self.systemctl_ok(&["show", "-p", property, "--value", unit])
            .trim()
            .to_string()
    }

    /// A numeric property of a unit.
    pub fn show_u64(&self, unit: &str, property: &str) -> u64 {
        let value = self.show(unit, property);
        value
            .parse()
            .unwrap_or_else(|e| panic!("{unit} {property}={value:?} is not a number: {e}"))
    }

    /// `journalctl --no-pager ARGS` inside the lab; any exit status.
    pub fn journalctl(&self, args: &[&str]) -> CmdOutput {
        let mut all = vec!["journalctl", "--no-pager"];
        all.extend_from_slice(args);
        self.run(&all, Stdio::null(), SYSTEMCTL_TIMEOUT)
    }

    /// Journal entries matching `args` (e.g. `["-u", "x.service"]`), parsed from `-o json`.
    pub fn journal_entries(&self, args: &[&str]) -> Vec<Value> {
        let mut all = args.to_vec();
        all.extend_from_slice(&["-o", "json"]);
        let out = self.journalctl(&all);
        assert!(out.success(), "journalctl failed:\n{out}");
        out.stdout
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("journalctl -o json line {line:?}: {e}"))
            })
            .collect()
    }

    /// Polls `journalctl ARGS` (short output) until a line contains every one of `needles`;
    /// returns that line. Lines reach the journal asynchronously, hence the polling.
    pub fn wait_for_journal_line(&self, args: &[&str], needles: &[&str]) -> String {
        let what = format!(
            "a line in `journalctl {}` containing {needles:?}",
            args.join(" ")
        );
        crate::wait_for(WAIT, what, || {
            let out = self.journalctl(args);
            out.stdout
                .lines()
                .find(|line| needles.iter().all(|n| line.contains(n)))
                .map(str::to_string)
                .ok_or_else(|| format!("journal so far:\n{}", out.stdout))
        })
    }

    /// Writes a unit file into the lab's unit folder (call [`SystemdLab::daemon_reload`] after).
    pub fn install_unit(&self, name: &str, content: &str) {
        let path = self.units_dir().join(name);
        fs::write(&path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// `systemctl daemon-reload`.
    pub fn daemon_reload(&self) {
        self.systemctl_ok(&["daemon-reload"]);
    }

    fn unit_journal_hint(&self, args: &[&str]) -> String {
        let units: Vec<&str> = args
            .iter()
            .copied()
            .filter(|a| a.contains(".service") || a.contains(".socket"))
            .collect();
        if units.is_empty() {
            return String::new();
        }
        let mut journal_args = vec!["-n", "50"];
        for unit in &units {
            journal_args.extend_from_slice(&["-u", unit]);
        }
        let out = self.journalctl(&journal_args);
        format!("journal of {units:?}:\n{}", out.stdout)
    }

    /// Runs a command in the lab without the harness (no panics): for boot and teardown.
    fn try_run_quiet(&self, args: &[&str]) -> Result<String, String> {
        self.try_run_quiet_within(args, SYSTEMCTL_TIMEOUT)
    }

    fn try_run_quiet_within(&self, args: &[&str], timeout: Duration) -> Result<String, String> {
        let (program, rest) = args.split_first().expect("a program");
        let mut cmd = self.command(program);
        cmd.args(rest)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().map_err(|e| format!("spawn nsenter: {e}"))?;
        wait_child_output(child, timeout)
    }

    fn teardown(&mut self) -> Result<(), String> {
        let mut problems = Vec::new();
        if let Some(mut launcher) = self.launcher.take() {
            let running = matches!(launcher.try_wait(), Ok(None));
            // Graceful: systemd stops every unit, then exits; unshare follows.
            let asked = if !running {
                Ok(String::new())
            } else if self.pid == 0 {
                Err("systemd never came up".to_string())
            } else {
                self.try_run_quiet_within(&["systemctl", "exit", "-f"], EXIT_TIMEOUT)
            };
            // No point waiting for a systemd that did not take the request.
            let deadline = Instant::now() + if asked.is_ok() { EXIT_TIMEOUT } else { POLL };
            while matches!(launcher.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
            if matches!(launcher.try_wait(), Ok(None)) {
                // Slow, not broken (a loaded machine): everything is killed below, and only a
                // cgroup that cannot be removed (something escaped) fails the test.
                eprintln!(
                    "warning: the lab's systemd (pid {}) did not exit after `systemctl exit -f` ({}); \
                     killed everything in its cgroup",
                    self.pid,
                    match &asked {
                        Ok(_) => format!("waited {EXIT_TIMEOUT:?}"),
                        Err(e) => e.trim().to_string(),
                    }
                );
                // Everything in our cgroup (the launcher, systemd, its services), nothing else;
                // without cgroup.kill (kernel < 5.14), killing the launcher takes systemd down
                // (unshare --kill-child), and with it the whole pid namespace.
                if let Some(cgroup) = &self.cgroup {
                    let _ = fs::write(cgroup.join("cgroup.kill"), "1");
                }
                let _ = launcher.kill();
                let _ = launcher.wait();
            }
        }
        // Recorded by sd-up.sh even when the lab failed before we read it.
        let cgroup = self.cgroup.take().or_else(|| {
            let recorded = fs::read_to_string(self.dir.as_ref()?.path().join("cgroup")).ok()?;
            Some(PathBuf::from(recorded.trim()))
        });
        if let Some(cgroup) = cgroup {
            if let Err(e) = remove_cgroup_tree(&cgroup, WAIT) {
                problems.push(e);
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

impl Drop for SystemdLab {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking && self.pid != 0 && self.launcher.is_some() {
            let journal = self
                .try_run_quiet(&[
                    "journalctl",
                    "--no-pager",
                    "-o",
                    "short-monotonic",
                    "-n",
                    JOURNAL_TAIL,
                ])
                .unwrap_or_else(|e| format!("<cannot read the journal: {e}>"));
            eprintln!(
                "---- systemd lab {}: journal, last {JOURNAL_TAIL} lines ----\n{journal}\n\
                 ---- end of lab journal ----",
                self.pid
            );
        }
        let result = self.teardown();
        // The work dir goes last, after everything that used it is gone.
        if let Some(dir) = self.dir.take() {
            if let Err(e) = dir.close() {
                eprintln!("warning: cannot remove the systemd lab dir: {e}");
            }
        }
        if let Err(problem) = result {
            if panicking {
                eprintln!("systemd lab teardown: {problem}");
            } else {
                panic!("systemd lab teardown: {problem}");
            }
        }
    }
}

/// Waits for a child with piped output, without panicking; kills it after `timeout`.
fn wait_child_output(mut child: Child, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {timeout:?}"));
            }
            Err(e) => return Err(format!("waitpid: {e}")),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("collect output: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Removes a cgroup and its descendants (deepest first), retrying while their last processes
/// are still exiting.
fn remove_cgroup_tree(cgroup: &Path, timeout: Duration) -> Result<(), String> {
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
fn sweep_stale_labs(base: &Path) {
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
fn cgroup2_root() -> Option<PathBuf> {
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
fn process_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // pid (comm) STATE ...; comm may contain spaces and parentheses.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

fn set_mode(path: &Path, mode: u32) {
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
fn lab_base_dir() -> PathBuf {
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

// ---------------------------------------------------------------------------------------------
// The project's units in a lab

pub const SERVICE: &str = "shmem-broker.service";
pub const SOCKET: &str = "shmem-broker.socket";
/// The broker's user and the socket's group, from systemd/shmem-broker.sysusers.
pub const SERVICE_USER: &str = "shmem-broker";
pub const SOCKET_GROUP: &str = "shmem";

/// Creates the project's system users and groups on the host the way an installer does:
/// `systemd-sysusers systemd/shmem-broker.sysusers` (idempotent; once per test binary).
pub fn ensure_sysusers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        require_tool("systemd-sysusers", "systemd");
        let file = workspace_dir()
            .join("systemd")
            .join("shmem-broker.sysusers");
        let out = run(
            {
                let mut cmd = Command::new("systemd-sysusers");
                cmd.arg(&file);
                cmd
            },
            "systemd-sysusers",
            &std::env::temp_dir(),
            Stdio::null(),
            CTL_TIMEOUT,
        );
        assert!(out.success(), "creating the project's users failed:\n{out}");
    });
    assert!(
        user_id(SERVICE_USER).is_some() && group_id(SOCKET_GROUP).is_some(),
        "systemd-sysusers ran, but user {SERVICE_USER:?} or group {SOCKET_GROUP:?} does not exist"
    );
}

/// The uid of a user name, from the host's user database (`getent passwd`).
pub fn user_id(name: &str) -> Option<u32> {
    getent_id("passwd", name)
}

/// The gid of a group name, from the host's group database (`getent group`).
pub fn group_id(name: &str) -> Option<u32> {
    getent_id("group", name)
}

fn getent_id(database: &str, name: &str) -> Option<u32> {
    let out = Command::new("getent")
        .args([database, name])
        .stderr(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run getent: {e}"));
    if !out.status.success() {
        return None;
    }
    // name:password:ID:...
    String::from_utf8_lossy(&out.stdout)
        .split(':')
        .nth(2)
        .and_then(|id| id.trim().parse().ok())
}

/// Replaces the one line starting with `key` (e.g. `ExecStart=`) by `replacement`; panics if the
/// unit does not have exactly one such line.
pub fn rewrite_unit_line(unit: &str, key: &str, replacement: &str) -> String {
    let count = unit.lines().filter(|l| l.starts_with(key)).count();
    assert_eq!(
        count, 1,
        "expected exactly one {key} line in the unit, found {count}:\n{unit}"
    );
    let mut out = String::with_capacity(unit.len() + replacement.len());
    for line in unit.lines() {
        if line.starts_with(key) {
            out.push_str(replacement);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// The project's broker installed in a [`SystemdLab`]: systemd/shmem-broker.socket and
/// .service with `ListenStream=` at `<lab>/control.sock` and `ExecStart=` (and the config check
/// of `ExecReload=`) running the built binary with `--config <lab>/shmem-broker.toml`. Nothing is started.
pub struct LabBroker<'a> {
    lab: &'a SystemdLab,
    socket: PathBuf,
    config: PathBuf,
    broker_bin: PathBuf,
}

impl<'a> LabBroker<'a> {
    /// Creates the users (sysusers), writes `config`, installs the units, daemon-reload.
    pub fn install(lab: &'a SystemdLab, config: &str) -> LabBroker<'a> {
        ensure_sysusers();
        let socket = lab.dir().join("control.sock");
        assert!(
            socket.as_os_str().len() <= MAX_SOCKET_PATH,
            "socket path {} is longer than {MAX_SOCKET_PATH} bytes: set SHMEM_BROKER_LAB_DIR to a \
             shorter folder",
            socket.display()
        );
        let config_path = lab.dir().join("shmem-broker.toml");
        let broker = LabBroker {
            lab,
            socket,
            config: config_path,
            broker_bin: service_reachable_binary(lab, &broker_bin()),
        };
        broker.write_config(config);

        let units = workspace_dir().join("systemd");
        let read = |name: &str| {
            let path = units.join(name);
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        };
        for path in [&broker.broker_bin, &broker.config] {
            let text = path.to_string_lossy();
            assert!(
                !text.chars().any(char::is_whitespace) && !text.contains('%'),
                "{text}: unit files need quoting for this path; use a plainer SHMEM_BROKER_LAB_DIR"
            );
        }
        let service = rewrite_unit_line(
            &read(SERVICE),
            "ExecStart=",
            &format!(
                "ExecStart={} --config {}",
                broker.broker_bin.display(),
                broker.config.display()
            ),
        );
        let service = rewrite_unit_line(
            &service,
            "ExecReload=/usr/local/bin/shmem-broker",
            &format!(
                "ExecReload={} --check-config --config {}",
                broker.broker_bin.display(),
                broker.config.display()
            ),
        );
        let socket_unit = rewrite_unit_line(
            &read(SOCKET),
            "ListenStream=",
            &format!("ListenStream={}", broker.socket.display()),
        );
        lab.install_unit(SERVICE, &service);
        lab.install_unit(SOCKET, &socket_unit);
        lab.daemon_reload();
        broker
    }

    pub fn lab(&self) -> &'a SystemdLab {
        self.lab
    }

    /// The control socket (systemd's ListenStream=), reachable from the host.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The binary the service runs (target/debug/shmem-broker, or a copy in the lab dir when the
    /// service user cannot reach that).
    pub fn broker_bin(&self) -> &Path {
        &self.broker_bin
    }

    /// Replaces the broker's config file (readable by the service user).
    pub fn write_config(&self, content: &str) {
        fs::write(&self.config, content)
            .unwrap_or_else(|e| panic!("write {}: {e}", self.config.display()));
        set_mode(&self.config, 0o644);
    }

    /// A `shmemctl --socket SOCKET ARGS` command run inside the lab (as root).
    pub fn ctl_command(&self, args: &[&str]) -> Command {
        let mut cmd = self.lab.command(ctl_bin());
        cmd.arg("--socket").arg(&self.socket).args(args);
        cmd
    }

    /// Runs shmemctl inside the lab; any exit status.
    pub fn ctl(&self, args: &[&str]) -> CmdOutput {
        run(
            self.ctl_command(args),
            "shmemctl",
            self.lab.log_dir(),
            Stdio::null(),
            CTL_TIMEOUT,
        )
    }

    /// Runs shmemctl inside the lab, which must succeed; returns stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.success(),
            "expected success:\n{out}\n{}",
            self.lab.unit_journal_hint(&[SERVICE])
        );
        out.stdout
    }

    /// `shmemctl ARGS --json`, parsed.
    pub fn ctl_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let stdout = self.ctl_ok(&all);
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("shmemctl {} --json: {e}\n{stdout}", args.join(" ")))
    }

    /// Channel names from `shmemctl list --json`.
    pub fn channel_names(&self) -> Vec<String> {
        let list = self.ctl_json(&["list"]);
        json_array(&list, "channels")
            .iter()
            .map(|c| json_str(c, "name").to_string())
            .collect()
    }

    /// `shmemctl send CHANNEL --chunk CHUNK < FILE` inside the lab; must succeed.
    pub fn send_file(&self, channel: &str, chunk: usize, file: &Path) {
        let input = File::open(file).unwrap_or_else(|e| panic!("open {}: {e}", file.display()));
        let chunk = chunk.to_string();
        let out = run(
            self.ctl_command(&["send", channel, "--chunk", &chunk]),
            "shmemctl-send",
            self.lab.log_dir(),
            Stdio::from(input),
            CTL_TIMEOUT,
        );
        assert!(out.success(), "send failed:\n{out}");
    }

    /// `shmemctl recv CHANNEL > FILE` inside the lab (until end-of-stream); returns the bytes.
    pub fn recv_to_file(&self, channel: &str, file: &Path) -> Vec<u8> {
        let output =
            File::create(file).unwrap_or_else(|e| panic!("create {}: {e}", file.display()));
        let mut proc = Proc::start(
            self.ctl_command(&["recv", channel]),
            "shmemctl-recv",
            self.lab.log_dir(),
            Stdio::null(),
            Some(Stdio::from(output)),
        );
        let out = proc.output(CTL_TIMEOUT);
        assert!(out.success(), "recv failed:\n{out}");
        fs::read(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()))
    }

    /// `kill -SIGNAL PID` inside the lab (a pid in the lab's namespace); must succeed.
    pub fn signal(&self, pid: u32, signal: &str) {
        let out = self
            .lab
            .run(&["kill", signal, &pid.to_string()], Stdio::null(), WAIT);
        assert!(out.success(), "kill {signal} {pid}:\n{out}");
    }

    /// Waits until systemd has restarted the service (more than `restarts_before` restarts)
    /// and a new main process other than `old_pid` is running; returns its pid.
    pub fn wait_restarted(&self, old_pid: u32, restarts_before: u64, timeout: Duration) -> u32 {
        crate::wait_for(timeout, format!("systemd to restart {SERVICE}"), || {
            let n = self.lab.show_u64(SERVICE, "NRestarts");
            let state = self.lab.show(SERVICE, "ActiveState");
            let sub = self.lab.show(SERVICE, "SubState");
            let pid = self.lab.show_u64(SERVICE, "MainPID") as u32;
            if n > restarts_before
                && state == "active"
                && sub == "running"
                && pid != 0
                && pid != old_pid
            {
                Ok(pid)
            } else {
                Err(format!(
                    "NRestarts={n} (was {restarts_before}) ActiveState={state} SubState={sub} MainPID={pid} (was {old_pid})"
                ))
            }
        })
    }

    /// Waits until the service is active (running) with a main pid; returns that pid (in the
    /// lab's pid namespace).
    pub fn wait_active(&self) -> u32 {
        crate::wait_for(
            WAIT,
            format!("{SERVICE} to be active with a main pid"),
            || {
                let state = self.lab.show(SERVICE, "ActiveState");
                let sub = self.lab.show(SERVICE, "SubState");
                let pid = self.lab.show_u64(SERVICE, "MainPID");
                if state == "active" && sub == "running" && pid != 0 {
                    Ok(pid as u32)
                } else {
                    Err(format!("ActiveState={state} SubState={sub} MainPID={pid}"))
                }
            },
        )
    }

    /// `/proc/PID/status` of a process in the lab (pid in the lab's namespace).
    pub fn proc_status(&self, pid: u32) -> String {
        let out = self.lab.run(
            &["cat", &format!("/proc/{pid}/status")],
            Stdio::null(),
            CTL_TIMEOUT,
        );
        assert!(
            out.success(),
            "cannot read the status of pid {pid} in the lab:\n{out}"
        );
        out.stdout
    }
}

/// `binary` if the service user can execute it where it is, else a copy in the lab dir.
pub fn service_reachable_binary(lab: &SystemdLab, binary: &Path) -> PathBuf {
    match reachable_by_services(binary, 0o001) {
        Ok(()) => binary.to_path_buf(),
        Err(why) => {
            let bin_dir = lab.dir().join("bin");
            fs::create_dir_all(&bin_dir)
                .unwrap_or_else(|e| panic!("mkdir {}: {e}", bin_dir.display()));
            set_mode(&bin_dir, 0o755);
            let copy = bin_dir.join(binary.file_name().expect("a binary has a file name"));
            eprintln!(
                "note: the service user cannot run {} ({why}); using a copy at {}",
                binary.display(),
                copy.display()
            );
            fs::copy(binary, &copy)
                .unwrap_or_else(|e| panic!("copy {} to {}: {e}", binary.display(), copy.display()));
            set_mode(&copy, 0o755);
            copy
        }
    }
}
