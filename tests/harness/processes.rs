//! Processes: spawning children that die with the test, their output, and what /proc says.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use std::{fmt, io};

use crate::{wait_for, LOG_TAIL, WAIT};

static SPAWN_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A spawned process, SIGKILLed and reaped on drop. Its stderr (and stdout unless redirected
/// elsewhere) goes to files in a log dir, so nothing blocks on a full pipe.
pub struct Proc {
    child: Child,
    label: String,
    command_line: String,
    stdout_path: Option<PathBuf>,
    stderr_path: PathBuf,
    status: Option<ExitStatus>,
}

/// The command line as a person would type it (binaries shown by file name).
pub fn describe_command(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut parts = vec![program];
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        let shown = if arg.starts_with('/') && arg.contains("/target/") {
            Path::new(arg.as_ref())
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| arg.to_string())
        } else {
            arg.to_string()
        };
        if shown.is_empty() || shown.contains(' ') {
            parts.push(format!("{shown:?}"));
        } else {
            parts.push(shown);
        }
    }
    parts.join(" ")
}

pub(crate) fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

impl Proc {
    /// Starts `cmd` with the given stdin; stdout goes to `stdout`, or to a log file when `None`.
    pub fn start(
        mut cmd: Command,
        label: &str,
        log_dir: &Path,
        stdin: Stdio,
        stdout: Option<Stdio>,
    ) -> Proc {
        let n = SPAWN_COUNTER.fetch_add(1, Ordering::Relaxed);
        let stem = format!("{n:04}-{label}");
        let stderr_path = log_dir.join(format!("{stem}.stderr"));
        let stderr = File::create(&stderr_path)
            .unwrap_or_else(|e| panic!("create {}: {e}", stderr_path.display()));
        let (stdout, stdout_path) = match stdout {
            Some(stdout) => (stdout, None),
            None => {
                let path = log_dir.join(format!("{stem}.stdout"));
                let file = File::create(&path)
                    .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
                (Stdio::from(file), Some(path))
            }
        };
        cmd.stdin(stdin)
            .stdout(stdout)
            .stderr(stderr)
            .env_remove("SHMEM_BROKER_SOCKET");
        // A test binary killed mid-run (timeout, ^C) leaves no broker behind.
        shmem_broker_testkit::process::die_with_parent(&mut cmd);
        let command_line = describe_command(&cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{command_line}`: {e}"));
        Proc {
            child,
            label: label.to_string(),
            command_line,
            stdout_path,
            stderr_path,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// The child's stdin, if it was started with `Stdio::piped()`.
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    /// The exit status if the process has exited (reaping it), else `None`.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            match self.child.try_wait() {
                Ok(status) => self.status = status,
                Err(e) => panic!("waitpid on `{}`: {e}", self.command_line),
            }
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Waits for the process to exit, failing the test after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let what = format!("`{}` (pid {}) to exit", self.command_line, self.pid());
        wait_for(timeout, what, || {
            self.try_status()
                .ok_or_else(|| format!("still running; stderr so far: {:?}", self.stderr_text()))
        })
    }

    /// Sends `signal` to the (still running) process.
    pub fn signal(&mut self, signal: libc::c_int) {
        if let Some(status) = self.try_status() {
            panic!(
                "cannot signal `{}`: it already exited ({status}); stderr: {}",
                self.command_line,
                self.stderr_text()
            );
        }
        // SAFETY: plain kill(2) on our own unreaped child, so the pid cannot have been reused.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        if rc != 0 {
            panic!(
                "kill({}, {signal}) on `{}`: {}",
                self.pid(),
                self.command_line,
                io::Error::last_os_error()
            );
        }
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill9(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        self.wait_exit(WAIT)
    }

    pub fn stderr_text(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// Captured stdout (empty when stdout was redirected elsewhere).
    pub fn stdout_text(&self) -> String {
        self.stdout_path
            .as_deref()
            .map(read_lossy)
            .unwrap_or_default()
    }

    /// Everything known about the finished process, as a [`CmdOutput`].
    pub fn output(&mut self, timeout: Duration) -> CmdOutput {
        let status = self.wait_exit(timeout);
        CmdOutput {
            command_line: self.command_line.clone(),
            status,
            stdout: self.stdout_text(),
            stderr: self.stderr_text(),
        }
    }
}

fn read_lossy(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            // Already-exited children make kill fail harmlessly; wait reaps either way.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let stderr = self.stderr_text();
            eprintln!(
                "---- {} (pid {}): `{}` stderr, last {} bytes ----\n{}\n---- end of {} stderr ----",
                self.label,
                self.child.id(),
                self.command_line,
                LOG_TAIL.min(stderr.len()),
                tail(&stderr, LOG_TAIL),
                self.label
            );
        }
    }
}

/// The result of a finished command, printable for assertion messages.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    pub command_line: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` -> {}\n  stdout: {:?}\n  stderr: {:?}",
            self.command_line,
            self.status,
            tail(&self.stdout, 4096),
            tail(&self.stderr, 4096)
        )
    }
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Asserts exit 0 and returns stdout.
    pub fn expect_success(&self) -> &str {
        assert!(self.success(), "expected success:\n{self}");
        &self.stdout
    }

    /// Asserts the documented error form: a non-zero exit code (not a crash) and exactly one
    /// line on stderr, containing every one of `needles`. Returns that line.
    pub fn expect_error(&self, needles: &[&str]) -> String {
        assert!(
            !self.success(),
            "expected failure, but it succeeded:\n{self}"
        );
        assert!(
            self.status.code().is_some(),
            "expected an error exit, but the process died by a signal:\n{self}"
        );
        assert!(
            !self.stderr.contains("panicked"),
            "expected an error message, but the program panicked:\n{self}"
        );
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|line| !line.trim().is_empty())
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "expected exactly one line on stderr, got {}:\n{self}",
            lines.len()
        );
        for needle in needles {
            assert!(
                lines[0].contains(needle),
                "expected stderr to mention {needle:?}:\n{self}"
            );
        }
        lines[0].to_string()
    }
}

impl CmdOutput {
    /// Asserts a refused command line (argument parsing): a non-zero exit code (not a crash)
    /// and a stderr naming every one of `needles`. Unlike [`CmdOutput::expect_error`] it allows
    /// the argument parser's usage hint on further lines.
    pub fn expect_usage_error(&self, needles: &[&str]) -> &str {
        assert!(
            !self.success(),
            "expected failure, but it succeeded:\n{self}"
        );
        assert!(
            self.status.code().is_some() && !self.stderr.contains("panicked"),
            "expected an error exit, but the program crashed:\n{self}"
        );
        for needle in needles {
            assert!(
                self.stderr.contains(needle),
                "expected stderr to mention {needle:?}:\n{self}"
            );
        }
        &self.stderr
    }
}

/// Runs `cmd` to completion (failing the test after `timeout`), stdout and stderr captured.
pub fn run(
    cmd: Command,
    label: &str,
    log_dir: &Path,
    stdin: Stdio,
    timeout: Duration,
) -> CmdOutput {
    let mut proc = Proc::start(cmd, label, log_dir, stdin, None);
    proc.output(timeout)
}

/// Reads the resident set size of a process in KiB from /proc/PID/status.
pub fn vm_rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS line in /proc/{pid}/status:\n{status}"))
}

/// The executable a process currently runs.
pub fn proc_exe(pid: u32) -> PathBuf {
    fs::read_link(format!("/proc/{pid}/exe"))
        .unwrap_or_else(|e| panic!("readlink /proc/{pid}/exe: {e}"))
}

/// Whether `fd` turns readable within `timeout`.
pub fn readable(fd: std::os::fd::BorrowedFd<'_>, timeout: Duration) -> bool {
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let timeout = rustix::event::Timespec::try_from(timeout).expect("timeout");
    matches!(rustix::event::poll(&mut fds, Some(&timeout)), Ok(n) if n > 0)
}

/// Fails the test unless it runs as root. Tests that call this carry
/// `#[cfg_attr(not(as_root), ignore = "needs root")]`: built by a normal user they are listed
/// as ignored, so a summary never counts them as passed; built by root (CI) they run, and this
/// only catches a suite built as root and run as someone else.
pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root: it was built as root (cfg as_root) but runs as uid {}",
        rustix::process::geteuid().as_raw()
    );
}
