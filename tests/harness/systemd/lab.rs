//! [`SystemdLab`]: boots a throwaway systemd as PID 1 of fresh namespaces, runs systemctl,
//! journalctl and clients inside it, and takes it down again on drop.

use super::host::{lab_base_dir, remove_cgroup_tree, set_mode, sweep_stale_labs};
use super::*;
use crate::{require_tool, run, CmdOutput, WAIT};
use serde_json::Value;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

    pub(super) fn unit_journal_hint(&self, args: &[&str]) -> String {
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
