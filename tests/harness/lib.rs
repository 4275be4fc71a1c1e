//! Harness for the shmem-broker integration tests.
//!
//! Every test drives the real binaries: a real `shmem-broker` on a real Unix socket (bound by
//! path, or handed over by `systemd-socket-activate`), real `shmemctl` processes and the real
//! client library. Nothing is mocked.
//!
//! Rules the helpers enforce so the tests stay honest:
//! - every spawned process is owned by a [`Proc`], which SIGKILLs and reaps it on drop (and the
//!   kernel kills it with the test thread that spawned it, should the test binary itself die);
//! - every temp dir is a [`tempfile::TempDir`], removed on drop after its processes are dead;
//! - waiting is polling against a deadline ([`wait_for`]); a timeout fails the test with what was
//!   awaited and the last state seen, never a bare sleep;
//! - when a test panics, the stderr of each process still running (the broker's log included)
//!   is printed, so a CI failure explains itself.
//!
//! Binaries are looked up in `$SHMEM_BROKER_BIN_DIR`, else `$CARGO_TARGET_DIR/debug`, else
//! `<workspace>/target/debug`: build them first with `cargo build --workspace`.
//!
//! Spawn processes from the test's own thread: a child is killed when the thread that spawned
//! it ends (PR_SET_PDEATHSIG), which is what keeps a killed test run from leaking brokers.

pub mod old_kernel;
pub mod raw_ring;
pub mod systemd;
use serde_json::Value;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use shmem_broker_client;

/// How long a test waits for something that should happen promptly (a broker answering, a peer
/// appearing or going away, a process exiting after a signal).
pub const WAIT: Duration = Duration::from_secs(10);
/// Upper bound for one short `shmemctl` command (list, info, create...).
pub const CTL_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How much of a process's stderr is printed when a test fails.
const LOG_TAIL: usize = 16 * 1024;

pub const BROKER_BIN: &str = "shmem-broker";
pub const CTL_BIN: &str = "shmemctl";
/// The unprivileged user the access tests switch to.
pub const NOBODY: u32 = 65534;

// ---------------------------------------------------------------------------------------------
// Paths and binaries

/// The workspace root (the parent of this crate).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the workspace")
        .to_path_buf()
}

/// Where the binaries under test are: `$SHMEM_BROKER_BIN_DIR`, else `$CARGO_TARGET_DIR/debug`,
/// else `<workspace>/target/debug`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = non_empty_env("SHMEM_BROKER_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let target = match non_empty_env("CARGO_TARGET_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        Some(dir) => workspace_dir().join(dir),
        None => workspace_dir().join("target"),
    };
    target.join("debug")
}

fn non_empty_env(name: &str) -> Option<std::ffi::OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

/// The path of one of the workspace's binaries; panics with the fix if it was not built.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    if !path.is_file() {
        panic!(
            "binary {name} not found at {}: run `cargo build --workspace` first",
            path.display()
        );
    }
    path
}

pub fn broker_bin() -> PathBuf {
    binary(BROKER_BIN)
}

pub fn ctl_bin() -> PathBuf {
    binary(CTL_BIN)
}

/// The example config shipped in the repository.
pub fn example_config() -> PathBuf {
    workspace_dir().join("config").join("shmem-broker.toml")
}

/// Finds an external tool in PATH, or panics naming the package that provides it.
pub fn require_tool(tool: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("{tool} not found in PATH: install it (apt-get install {package})")
        })
}

/// A fresh temp dir, removed on drop.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("shmem-broker-test.")
        .tempdir()
        .expect("create a temp dir for the test")
}

// ---------------------------------------------------------------------------------------------
// Waiting

/// Polls `probe` until it returns `Ok`, for at most `timeout`. On timeout the test fails with
/// `what` and the last `Err` the probe gave (its description of the state it saw).
pub fn wait_for<T>(
    timeout: Duration,
    what: impl fmt::Display,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(last) => {
                if Instant::now() >= deadline {
                    panic!("timed out after {timeout:?} waiting for {what}; last state: {last}");
                }
            }
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Work running on a helper thread (a library producer or consumer that may block), joined
/// with a deadline so a hung call fails the test instead of hanging the run. Do not spawn
/// processes inside it (see the module docs).
pub struct Background<T> {
    what: String,
    rx: mpsc::Receiver<T>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl<T: Send + 'static> Background<T> {
    pub fn spawn(what: &str, body: impl FnOnce() -> T + Send + 'static) -> Background<T> {
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(what.to_string())
            .spawn(move || {
                // The receiver may be gone after a timeout; nothing left to tell then.
                let _ = tx.send(body());
            })
            .expect("spawn a helper thread");
        Background {
            what: what.to_string(),
            rx,
            handle: Some(handle),
        }
    }

    /// True once the body has returned or panicked.
    pub fn is_finished(&self) -> bool {
        match &self.handle {
            Some(handle) => handle.is_finished(),
            None => true,
        }
    }

    /// Waits for the result; fails the test after `timeout`. A panic in the body is passed on.
    pub fn join(mut self, timeout: Duration) -> T {
        match self.rx.recv_timeout(timeout) {
            Ok(value) => {
                if let Some(handle) = self.handle.take() {
                    // The body has returned, so the thread is ending; its result is here.
                    let _ = handle.join();
                }
                value
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("{} did not finish within {timeout:?}", self.what)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                match self.handle.take().map(|h| h.join()) {
                    Some(Err(panic)) => std::panic::resume_unwind(panic),
                    _ => panic!("{} ended without a result", self.what),
                }
            }
        }
    }
}

/// Runs `body` on a helper thread and fails the test if it does not finish within `timeout`.
pub fn with_deadline<T: Send + 'static>(
    timeout: Duration,
    what: &str,
    body: impl FnOnce() -> T + Send + 'static,
) -> T {
    Background::spawn(what, body).join(timeout)
}

// ---------------------------------------------------------------------------------------------
// Processes

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

/// Makes the kernel SIGKILL the child when the thread that spawned it ends, so a test binary
/// killed mid-run (timeout, ^C) leaves no broker behind.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of the parent;
    // nothing else runs between fork and exec here.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
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

fn tail(text: &str, max: usize) -> &str {
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
        die_with_parent(&mut cmd);
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

// ---------------------------------------------------------------------------------------------
// The broker

/// How to start a broker.
#[derive(Default, Clone, Copy)]
pub struct BrokerOptions<'a> {
    /// Config file content; `version = 1` when `None`.
    pub config: Option<&'a str>,
    /// Make the temp dir 0755 so other users can reach the socket in it.
    pub world_searchable_dir: bool,
    /// Socket path relative to the temp dir; `control.sock` when `None`.
    pub socket_relative: Option<&'a str>,
    /// More broker arguments, after `--log-level debug`.
    pub extra_args: &'a [&'a str],
    /// Called with the socket path before the broker starts (to leave a stale socket there...).
    pub before_start: Option<&'a dyn Fn(&Path)>,
}

/// A running broker in its own temp dir, killed on drop. Its stderr (started with
/// `--log-level debug`) is kept in the temp dir and printed when a test fails.
pub struct Broker {
    // Field order matters: the process dies before its temp dir is removed.
    proc: Proc,
    socket: PathBuf,
    config_path: PathBuf,
    socket_activated: bool,
    dir: tempfile::TempDir,
}

pub const MINIMAL_CONFIG: &str = "version = 1\n";

impl Broker {
    /// Starts `shmem-broker --config F --socket DIR/control.sock --log-level debug` and waits
    /// until `shmemctl status` answers.
    pub fn start(config: Option<&str>) -> Broker {
        Broker::start_with(BrokerOptions {
            config,
            ..BrokerOptions::default()
        })
    }

    pub fn start_with(options: BrokerOptions<'_>) -> Broker {
        let dir = temp_dir();
        if options.world_searchable_dir {
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
                .expect("chmod 0755 the broker's temp dir");
        }
        let config_path = write_config(dir.path(), options.config.unwrap_or(MINIMAL_CONFIG));
        let socket = dir
            .path()
            .join(options.socket_relative.unwrap_or("control.sock"));
        let mut cmd = Command::new(broker_bin());
        cmd.arg("--config")
            .arg(&config_path)
            .arg("--socket")
            .arg(&socket)
            .arg("--log-level")
            .arg("debug")
            .args(options.extra_args);
        if let Some(prepare) = options.before_start {
            prepare(&socket);
        }
        let proc = Proc::start(cmd, "broker", dir.path(), Stdio::null(), None);
        let mut broker = Broker {
            proc,
            socket,
            config_path,
            socket_activated: false,
            dir,
        };
        broker.wait_ready();
        broker
    }

    /// Starts the broker under `systemd-socket-activate -l DIR/control.sock --fdname=control`.
    /// Returns once the socket is listening; the broker itself starts on the first connection,
    /// so this does not connect.
    pub fn start_socket_activated(config: Option<&str>) -> Broker {
        let activate = require_tool("systemd-socket-activate", "systemd");
        let dir = temp_dir();
        let config_path = write_config(dir.path(), config.unwrap_or(MINIMAL_CONFIG));
        let socket = dir.path().join("control.sock");
        let mut cmd = Command::new(activate);
        cmd.arg("-l")
            .arg(&socket)
            .arg("--fdname=control")
            .arg(broker_bin())
            .arg("--config")
            .arg(&config_path)
            .arg("--log-level")
            .arg("debug");
        let proc = Proc::start(cmd, "broker", dir.path(), Stdio::null(), None);
        let mut broker = Broker {
            proc,
            socket,
            config_path,
            socket_activated: true,
            dir,
        };
        let socket = broker.socket.clone();
        wait_for(WAIT, "systemd-socket-activate to listen", || {
            if let Some(status) = broker.proc.try_status() {
                panic!(
                    "systemd-socket-activate exited ({status}): {}",
                    broker.proc.stderr_text()
                );
            }
            if socket.exists() {
                Ok(())
            } else {
                Err(format!("{} does not exist yet", socket.display()))
            }
        });
        broker
    }

    /// Starts the broker as systemd restarts it with a filled fd store: `LISTEN_FDS` with the
    /// control socket (bound here, named `control`) and `stored`, each under its fd name, so a
    /// test can hand it what another (an older) broker would have left there.
    pub fn start_with_stored_fds(stored: Vec<(std::os::fd::OwnedFd, String)>) -> Broker {
        use std::os::fd::{AsRawFd, OwnedFd};
        let dir = temp_dir();
        let config_path = write_config(dir.path(), MINIMAL_CONFIG);
        let socket = dir.path().join("control.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket)
            .unwrap_or_else(|e| panic!("bind {}: {e}", socket.display()));
        let mut names = vec!["control".to_string()];
        let mut fds = vec![OwnedFd::from(listener)];
        for (fd, name) in stored {
            fds.push(fd);
            names.push(name);
        }
        let mut cmd = Command::new("sh");
        // LISTEN_PID must be the broker's own pid: the shell's, which exec keeps.
        cmd.arg("-c")
            .arg(r#"export LISTEN_PID=$$; exec "$0" "$@""#)
            .arg(broker_bin())
            .arg("--config")
            .arg(&config_path)
            .arg("--log-level")
            .arg("debug")
            .env("LISTEN_FDS", fds.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"));
        let raw: Vec<i32> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        assert!(raw.len() <= 32, "at most 32 fds");
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec. Each fd is
        // first copied above every target number, then moved to 3, 4, ... in order, so no
        // target overwrites a source not yet moved; dup2 leaves the copies without CLOEXEC.
        unsafe {
            cmd.pre_exec(move || {
                // No allocation after fork: a fixed array (checked before the fork).
                let mut high = [0i32; 32];
                for (slot, fd) in high.iter_mut().zip(&raw) {
                    *slot = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100);
                    if *slot < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                for (index, fd) in high[..raw.len()].iter().enumerate() {
                    if libc::dup2(*fd, 3 + index as i32) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let proc = Proc::start(cmd, "broker", dir.path(), Stdio::null(), None);
        drop(fds);
        let mut broker = Broker {
            proc,
            socket,
            config_path,
            socket_activated: true,
            dir,
        };
        broker.wait_ready();
        broker
    }

    fn wait_ready(&mut self) {
        let what = format!(
            "the broker to answer `shmemctl status` on {}",
            self.socket.display()
        );
        let socket = self.socket.clone();
        let dir = self.dir.path().to_path_buf();
        let proc = &mut self.proc;
        wait_for(WAIT, what, || {
            if let Some(status) = proc.try_status() {
                panic!(
                    "the broker exited ({status}) before it answered; its stderr:\n{}",
                    proc.stderr_text()
                );
            }
            let out = run_ctl(&socket, &dir, &["status"], Duration::from_secs(5));
            if out.success() {
                Ok(())
            } else {
                Err(out.to_string())
            }
        });
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn is_socket_activated(&self) -> bool {
        self.socket_activated
    }

    /// The broker's pid (under socket activation: systemd-socket-activate's, which execs the
    /// broker in place).
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn proc_mut(&mut self) -> &mut Proc {
        &mut self.proc
    }

    /// The broker's stderr so far.
    pub fn log(&self) -> String {
        self.proc.stderr_text()
    }

    /// Fails the test if the broker has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.proc.try_status() {
            panic!(
                "the broker died ({status}); its stderr:\n{}",
                tail(&self.log(), LOG_TAIL)
            );
        }
    }

    /// `shmemctl --socket SOCKET`, ready for arguments.
    pub fn ctl_command(&self) -> Command {
        let mut cmd = Command::new(ctl_bin());
        cmd.arg("--socket").arg(&self.socket);
        cmd
    }

    /// `setpriv --reuid=UID --regid=UID --clear-groups shmemctl --socket SOCKET`.
    ///
    /// Runs a copy of shmemctl kept in the broker's temp dir: the build's target dir may sit
    /// where other users cannot reach (under /root, say). The temp dir must be searchable by
    /// `uid` ([`BrokerOptions::world_searchable_dir`]).
    pub fn ctl_command_as(&self, uid: u32) -> Command {
        let copy = self.dir().join("shmemctl-for-other-users");
        if !copy.exists() {
            // Copied by a child process: had this process written the file itself, a child
            // forked meanwhile by another test thread could still hold the write fd when we
            // exec the copy, and exec would fail with ETXTBSY ("Text file busy").
            let status = Command::new("install")
                .arg("-m")
                .arg("0755")
                .arg(ctl_bin())
                .arg(&copy)
                .status()
                .unwrap_or_else(|e| panic!("run install(1) to copy shmemctl: {e}"));
            assert!(
                status.success(),
                "install shmemctl to {}: {status}",
                copy.display()
            );
        }
        let mut cmd = Command::new(require_tool("setpriv", "util-linux"));
        cmd.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .arg(&copy)
            .arg("--socket")
            .arg(&self.socket);
        cmd
    }

    /// Runs `shmemctl --socket SOCKET ARGS...` to completion.
    pub fn ctl(&self, args: &[&str]) -> CmdOutput {
        self.ctl_timeout(args, CTL_TIMEOUT)
    }

    pub fn ctl_timeout(&self, args: &[&str], timeout: Duration) -> CmdOutput {
        run_ctl(&self.socket, self.dir(), args, timeout)
    }

    /// Runs shmemctl as another user (through setpriv).
    pub fn ctl_as(&self, uid: u32, args: &[&str]) -> CmdOutput {
        let mut cmd = self.ctl_command_as(uid);
        cmd.args(args);
        run(cmd, "shmemctl-as", self.dir(), Stdio::null(), CTL_TIMEOUT)
    }

    /// Runs shmemctl, asserts exit 0, returns stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        self.ctl(args).expect_success().to_string()
    }

    /// Runs shmemctl, asserts exit 0, parses stdout as JSON.
    pub fn ctl_json(&self, args: &[&str]) -> Value {
        let out = self.ctl(args);
        let stdout = out.expect_success();
        serde_json::from_str(stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{out}"))
    }

    /// Starts a long-running shmemctl (send/recv). Stdout goes to `stdout`, or a log file.
    pub fn spawn_ctl(&self, args: &[&str], stdin: Stdio, stdout: Option<Stdio>) -> Proc {
        let mut cmd = self.ctl_command();
        cmd.args(args);
        Proc::start(cmd, "shmemctl", self.dir(), stdin, stdout)
    }

    pub fn spawn_ctl_as(&self, uid: u32, args: &[&str], stdin: Stdio) -> Proc {
        let mut cmd = self.ctl_command_as(uid);
        cmd.args(args);
        Proc::start(cmd, "shmemctl-as", self.dir(), stdin, None)
    }

    /// `status --json`.
    pub fn status(&self) -> Value {
        self.ctl_json(&["status", "--json"])
    }

    /// `info NAME --json`.
    pub fn info(&self, channel: &str) -> Value {
        self.ctl_json(&["info", channel, "--json"])
    }

    /// `list --json`, the `channels` array.
    pub fn list(&self) -> Vec<Value> {
        let list = self.ctl_json(&["list", "--json"]);
        json_array(&list, "channels").to_vec()
    }

    /// Polls `info NAME --json` until a peer with `pid` and `role` shows; returns that peer.
    pub fn wait_for_peer(&self, channel: &str, pid: u32, role: &str) -> Value {
        let what = format!("pid {pid} to show as {role} of channel {channel}");
        wait_for(WAIT, what, || {
            let info = self.info(channel);
            let peers = json_array(&info, "peers");
            peers
                .iter()
                .find(|p| p["pid"].as_u64() == Some(u64::from(pid)) && p["role"] == role)
                .cloned()
                .ok_or_else(|| format!("peers = {}", Value::Array(peers.to_vec())))
        })
    }

    /// Polls `info NAME --json` until no peer has `role` ("producer" or "consumer").
    pub fn wait_for_no_peer_with_role(&self, channel: &str, role: &str) {
        wait_for(WAIT, format!("channel {channel} to have no {role}"), || {
            let info = self.info(channel);
            let peers = json_array(&info, "peers");
            if peers.iter().any(|p| p["role"] == role) {
                Err(format!("peers = {}", Value::Array(peers.to_vec())))
            } else {
                Ok(())
            }
        });
    }

    /// Polls `info NAME --json` until `peers` is empty.
    pub fn wait_for_no_peers(&self, channel: &str) {
        wait_for(WAIT, format!("channel {channel} to have no peers"), || {
            let info = self.info(channel);
            let peers = json_array(&info, "peers");
            if peers.is_empty() {
                Ok(())
            } else {
                Err(format!("peers = {}", Value::Array(peers.to_vec())))
            }
        });
    }

    /// A library client connected to this broker.
    pub fn client(&self) -> shmem_broker_client::Client {
        connect(&self.socket)
    }
}

/// Runs `shmemctl --socket SOCKET ARGS...` to completion, logs in `log_dir`.
pub fn run_ctl(socket: &Path, log_dir: &Path, args: &[&str], timeout: Duration) -> CmdOutput {
    let mut cmd = Command::new(ctl_bin());
    cmd.arg("--socket").arg(socket).args(args);
    run(cmd, "shmemctl", log_dir, Stdio::null(), timeout)
}

/// `Client::connect`, failing the test with the error.
pub fn connect(socket: &Path) -> shmem_broker_client::Client {
    shmem_broker_client::Client::connect(socket)
        .unwrap_or_else(|e| panic!("Client::connect({}): {e}", socket.display()))
}

fn write_config(dir: &Path, content: &str) -> PathBuf {
    let path = dir.join("broker.toml");
    fs::write(&path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

// ---------------------------------------------------------------------------------------------
// JSON

/// `value[key]`, failing the test if it is missing.
pub fn json_field<'a>(value: &'a Value, key: &str) -> &'a Value {
    value
        .get(key)
        .unwrap_or_else(|| panic!("JSON has no key {key:?}: {value}"))
}

pub fn json_u64(value: &Value, key: &str) -> u64 {
    json_field(value, key)
        .as_u64()
        .unwrap_or_else(|| panic!("JSON key {key:?} is not an unsigned integer: {value}"))
}

pub fn json_str<'a>(value: &'a Value, key: &str) -> &'a str {
    json_field(value, key)
        .as_str()
        .unwrap_or_else(|| panic!("JSON key {key:?} is not a string: {value}"))
}

pub fn json_array<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    json_field(value, key)
        .as_array()
        .unwrap_or_else(|| panic!("JSON key {key:?} is not an array: {value}"))
}

/// The channel named `name` in a `list --json` array.
pub fn find_channel<'a>(channels: &'a [Value], name: &str) -> Option<&'a Value> {
    channels.iter().find(|c| c["name"] == name)
}

// ---------------------------------------------------------------------------------------------
// Wire protocol (for feeding the broker bytes a well-behaved client never sends)

pub const HEADER_LEN: usize = 16;
pub const KIND_REQUEST: u16 = 1;
pub const KIND_REPLY: u16 = 2;

/// A 16-byte frame header: magic, version, kind, request id, body length (little-endian).
pub fn frame_header(version: u16, kind: u16, id: u32, body_len: u32) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[0..4].copy_from_slice(b"SHMB");
    out[4..6].copy_from_slice(&version.to_le_bytes());
    out[6..8].copy_from_slice(&kind.to_le_bytes());
    out[8..12].copy_from_slice(&id.to_le_bytes());
    out[12..16].copy_from_slice(&body_len.to_le_bytes());
    out
}

/// A request frame in the protocol version the library speaks.
pub fn request_frame(id: u32, body: &[u8]) -> Vec<u8> {
    request_frame_version(shmem_broker_client::wire::PROTOCOL_VERSION, id, body)
}

/// A request frame as a client speaking `version` sends it.
pub fn request_frame_version(version: u16, id: u32, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).expect("body fits in u32");
    let mut out = frame_header(version, KIND_REQUEST, id, len).to_vec();
    out.extend_from_slice(body);
    out
}

#[derive(Debug, Clone)]
pub struct Frame {
    pub version: u16,
    pub kind: u16,
    pub id: u32,
    pub body: Vec<u8>,
}

impl Frame {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "frame body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Splits bytes read from the broker into frames; the remainder that is not a whole frame is
/// returned as the second value.
pub fn parse_frames(mut bytes: &[u8]) -> (Vec<Frame>, Vec<u8>) {
    let mut frames = Vec::new();
    while bytes.len() >= HEADER_LEN && &bytes[0..4] == b"SHMB" {
        let len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
        if bytes.len() < HEADER_LEN + len {
            break;
        }
        frames.push(Frame {
            version: u16::from_le_bytes([bytes[4], bytes[5]]),
            kind: u16::from_le_bytes([bytes[6], bytes[7]]),
            id: u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
            body: bytes[HEADER_LEN..HEADER_LEN + len].to_vec(),
        });
        bytes = &bytes[HEADER_LEN + len..];
    }
    (frames, bytes.to_vec())
}

/// What the broker did with a connection we fed something to.
#[derive(Debug)]
pub enum ConnectionEnd {
    /// The broker closed the connection (EOF or reset) after sending these bytes.
    Closed(Vec<u8>),
    /// The connection was still open at the deadline; these bytes had arrived.
    StillOpen(Vec<u8>),
}

/// Reads everything the broker sends until it closes the connection or `timeout` passes.
pub fn read_until_closed(stream: &mut UnixStream, timeout: Duration) -> ConnectionEnd {
    read_until(stream, timeout, false)
}

/// Like [`read_until_closed`], but also returns (as `StillOpen`) as soon as one whole frame
/// has arrived: for abuse that may be answered with an error reply instead of a close.
pub fn read_until_reply_or_closed(stream: &mut UnixStream, timeout: Duration) -> ConnectionEnd {
    read_until(stream, timeout, true)
}

fn read_until(stream: &mut UnixStream, timeout: Duration, stop_at_frame: bool) -> ConnectionEnd {
    let deadline = Instant::now() + timeout;
    let mut received = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return ConnectionEnd::StillOpen(received);
        }
        stream
            .set_read_timeout(Some(left))
            .expect("set a read timeout on the test socket");
        match stream.read(&mut buf) {
            Ok(0) => return ConnectionEnd::Closed(received),
            Ok(n) => {
                received.extend_from_slice(&buf[..n]);
                if stop_at_frame && !parse_frames(&received).0.is_empty() {
                    return ConnectionEnd::StillOpen(received);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return ConnectionEnd::Closed(received)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return ConnectionEnd::StillOpen(received)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("reading from the broker: {e}"),
        }
    }
}

/// Reads one whole frame, failing the test on EOF or timeout.
pub fn read_one_frame(stream: &mut UnixStream, timeout: Duration) -> Frame {
    stream
        .set_read_timeout(Some(timeout))
        .expect("set a read timeout on the test socket");
    let mut header = [0u8; HEADER_LEN];
    stream
        .read_exact(&mut header)
        .unwrap_or_else(|e| panic!("reading a reply header from the broker: {e}"));
    assert_eq!(
        &header[0..4],
        b"SHMB",
        "reply does not start with the magic: {header:02x?}"
    );
    let len = u32::from_le_bytes([header[12], header[13], header[14], header[15]]) as usize;
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .unwrap_or_else(|e| panic!("reading a {len}-byte reply body from the broker: {e}"));
    let (mut frames, rest) = parse_frames(&[header.to_vec(), body].concat());
    assert!(rest.is_empty(), "frame parser left bytes");
    frames.pop().expect("one frame was read")
}

/// Writes all of `bytes`, tolerating the broker closing the connection half-way (EPIPE or
/// ECONNRESET): whether it reads everything we send is its business.
pub fn write_tolerating_close(stream: &mut UnixStream, bytes: &[u8]) {
    match stream.write_all(bytes) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) => {}
        Err(e) => panic!("writing to the broker: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Data

/// xorshift64*: fast, deterministic test data (not for anything that needs real randomness).
pub struct XorShift64(u64);

impl XorShift64 {
    pub fn new(seed: u64) -> Self {
        XorShift64(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

/// Writes `len` pseudo-random bytes to `path`; returns their SHA-256 (hex).
pub fn write_random_file(path: &Path, len: u64, seed: u64) -> String {
    use sha2::Digest;
    let mut rng = XorShift64::new(seed);
    let mut hasher = sha2::Sha256::new();
    let mut file = io::BufWriter::new(
        File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display())),
    );
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        left -= n as u64;
    }
    file.flush()
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    hex(&hasher.finalize())
}

/// SHA-256 of a file (hex).
pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let mut file = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The size of a file, failing the test if it cannot be read.
pub fn file_len(path: &Path) -> u64 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .len()
}

// ---------------------------------------------------------------------------------------------
// Hostile clients and faults (tests/hostile.rs, tests/faults.rs)

/// The open file descriptors of a process: the number of entries in /proc/PID/fd.
pub fn open_fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("list /proc/{pid}/fd: {e}"))
        .count()
}

/// Where each open fd of a process points (`readlink /proc/PID/fd/N`), e.g.
/// `/memfd:name (deleted)` or `pipe:[1234]`. Fds that close while being listed are skipped.
pub fn open_fd_targets(pid: u32) -> Vec<String> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("list /proc/{pid}/fd: {e}"))
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| fs::read_link(entry.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .collect()
}

impl Broker {
    /// Starts a new broker process with the same config and socket path, after the previous
    /// one has exited (e.g. `proc_mut().kill9()`), and waits until it answers. Only for brokers
    /// started by [`Broker::start`]/[`Broker::start_with`] (extra arguments are not repeated).
    pub fn restart(&mut self) {
        assert!(
            !self.socket_activated,
            "restart() is for brokers that bind their own socket"
        );
        if let Some(pid) = self.proc.is_running().then(|| self.proc.pid()) {
            panic!("restart(): the previous broker (pid {pid}) is still running");
        }
        let mut cmd = Command::new(broker_bin());
        cmd.arg("--config")
            .arg(&self.config_path)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--log-level")
            .arg("debug");
        self.proc = Proc::start(cmd, "broker", self.dir.path(), Stdio::null(), None);
        self.wait_ready();
    }
}

/// An attach done by hand on the wire (no client library): the connection, which holds the
/// attachment for as long as it is open, the reply body and the fds that came with it.
pub struct RawAttach {
    pub stream: UnixStream,
    pub reply: Value,
    pub fds: Vec<std::os::fd::OwnedFd>,
}

/// One lane of a raw fan-out attach: the ring (the producer's memfd), its ack page (the
/// consumer's) and the eventfd.
pub struct RawLane<'a> {
    pub ring: &'a std::os::fd::OwnedFd,
    pub ack: &'a std::os::fd::OwnedFd,
    pub wake: &'a std::os::fd::OwnedFd,
}

impl RawAttach {
    /// The names the reply gives its fds, in order.
    pub fn fd_names(&self) -> Vec<String> {
        self.reply["result"]["fds"]
            .as_array()
            .map(|names| {
                names
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The first fd named `name` (one-to-one: `ring`, `ack`, `data_ready`, `space_ready`).
    pub fn fd(&self, name: &str) -> &std::os::fd::OwnedFd {
        let names = self.fd_names();
        let index = names
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("no fd named {name} in {names:?}"));
        &self.fds[index]
    }

    /// A fan-out attach's lanes (`ring`, `ack`, `wake` after `control` and `wait`).
    pub fn lanes(&self) -> Vec<RawLane<'_>> {
        let names = self.fd_names();
        assert_eq!(
            names.get(..2),
            Some(&["control".to_string(), "wait".to_string()][..])
        );
        assert_eq!(names.len(), self.fds.len(), "fds: {names:?}");
        self.fds[2..]
            .chunks(3)
            .zip(names[2..].chunks(3))
            .map(|(fds, names)| {
                assert_eq!(names, ["ring", "ack", "wake"], "a layout-3 lane");
                RawLane {
                    ring: &fds[0],
                    ack: &fds[1],
                    wake: &fds[2],
                }
            })
            .collect()
    }
}

/// Reads exactly `buf.len()` bytes with `recvmsg`, collecting any fds passed along.
pub fn read_exact_with_fds(
    stream: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<std::os::fd::OwnedFd>,
) -> io::Result<()> {
    use std::os::fd::AsFd;
    let mut filled = 0;
    while filled < buf.len() {
        let n =
            shmem_broker_client::fdpass::recv_with_fds(stream.as_fd(), &mut buf[filled..], fds)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the broker closed the connection after {filled} bytes"),
            ));
        }
        filled += n;
    }
    Ok(())
}

/// Reads one frame with `recvmsg`: (header kind, id, body as JSON, fds that came with it).
pub fn read_frame_with_fds(
    stream: &UnixStream,
    timeout: Duration,
) -> (Frame, Value, Vec<std::os::fd::OwnedFd>) {
    stream
        .set_read_timeout(Some(timeout))
        .expect("set a read timeout on the test socket");
    let mut fds = Vec::new();
    let mut header = [0u8; HEADER_LEN];
    read_exact_with_fds(stream, &mut header, &mut fds)
        .unwrap_or_else(|e| panic!("reading a frame header from the broker: {e}"));
    assert_eq!(&header[0..4], b"SHMB", "not a frame header: {header:02x?}");
    let len = u32::from_le_bytes([header[12], header[13], header[14], header[15]]) as usize;
    let mut body = vec![0u8; len];
    read_exact_with_fds(stream, &mut body, &mut fds)
        .unwrap_or_else(|e| panic!("reading a {len}-byte frame body from the broker: {e}"));
    let (mut frames, _) = parse_frames(&[header.to_vec(), body].concat());
    let frame = frames.pop().expect("one whole frame was read");
    let json = frame.json();
    (frame, json, fds)
}

/// Attaches to `channel` as `role` ("producer" or "consumer") by writing the request frame
/// ourselves and receiving the reply and its fds with `recvmsg`. Fails the test unless the
/// broker says ok and sends the 4 fds of a one-to-one attach.
pub fn raw_attach(socket: &Path, channel: &str, role: &str) -> RawAttach {
    let raw = raw_attach_any(socket, channel, role);
    assert_eq!(
        raw.fd_names(),
        ["ring", "ack", "data_ready", "space_ready"],
        "a one-to-one attach reply: {}",
        raw.reply
    );
    assert_eq!(raw.fds.len(), 4, "reply: {}", raw.reply);
    raw
}

/// [`raw_attach`] to any channel (one with many producers or consumers replies with
/// `control`, `wait`, then `ring`, `ack`, `wake` per peer: [`RawAttach::lanes`]).
pub fn raw_attach_any(socket: &Path, channel: &str, role: &str) -> RawAttach {
    raw_attach_as(socket, channel, role, None)
}

/// [`raw_attach_any`], as durable consumer `name` if given.
pub fn raw_attach_as(socket: &Path, channel: &str, role: &str, name: Option<&str>) -> RawAttach {
    let version = shmem_broker_client::wire::PROTOCOL_VERSION;
    let mut stream = UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()));
    let mut body = serde_json::json!({"op": "attach", "channel": channel, "role": role});
    if let Some(name) = name {
        body["name"] = name.into();
    }
    let body = body.to_string();
    let mut frame = frame_header(version, KIND_REQUEST, 1, body.len() as u32).to_vec();
    frame.extend_from_slice(body.as_bytes());
    stream
        .write_all(&frame)
        .unwrap_or_else(|e| panic!("send the attach request: {e}"));
    let (frame, reply, fds) = read_frame_with_fds(&stream, WAIT);
    assert_eq!(
        (frame.kind, frame.id),
        (KIND_REPLY, 1),
        "attach reply: {reply}"
    );
    assert_eq!(reply["ok"], true, "attach {channel} as {role}: {reply}");
    RawAttach { stream, reply, fds }
}

/// Environment variable that tells a helper test (see [`self_exec_command`]) it runs as a
/// helper process, not as part of a normal test run.
pub const HELPER_ENV: &str = "SHMEM_BROKER_TEST_HELPER";

/// A command that runs this very test binary again, executing only the `#[ignore]`d test
/// `helper_test` as a helper process (with [`HELPER_ENV`] set to 1). Helper tests return at
/// once when that variable is not set, so an `--ignored` run of the suite does nothing with them.
pub fn self_exec_command(helper_test: &str) -> Command {
    let exe = std::env::current_exe().expect("the path of the running test binary");
    self_exec_command_of(&exe, helper_test)
}

fn self_exec_command_of(exe: &Path, helper_test: &str) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        helper_test,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
        "--quiet",
    ])
    .env(HELPER_ENV, "1");
    cmd
}

/// [`self_exec_command`] as another user (through setpriv, supplementary groups cleared). Runs
/// a copy of the test binary kept in the broker's temp dir, which must be searchable by `uid`
/// ([`BrokerOptions::world_searchable_dir`]).
pub fn self_exec_command_as(broker: &Broker, uid: u32, helper_test: &str) -> Command {
    let exe = std::env::current_exe().expect("the path of the running test binary");
    let name = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "test-binary".into());
    let copy = broker.dir().join(format!("helper-{name}"));
    if !copy.exists() {
        // A child copies it, for the reason given in `Broker::ctl_command_as`.
        let status = Command::new("install")
            .arg("-m")
            .arg("0755")
            .arg(&exe)
            .arg(&copy)
            .status()
            .unwrap_or_else(|e| panic!("run install(1) to copy the test binary: {e}"));
        assert!(
            status.success(),
            "install the test binary to {}: {status}",
            copy.display()
        );
    }
    let inner = self_exec_command_of(&copy, helper_test);
    let mut cmd = Command::new(require_tool("setpriv", "util-linux"));
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg(inner.get_program())
        .args(inner.get_args());
    for (key, value) in inner.get_envs() {
        if let Some(value) = value {
            cmd.env(key, value);
        }
    }
    cmd
}

/// Whether this process runs as a helper started by [`self_exec_command`].
pub fn is_helper_process() -> bool {
    std::env::var_os(HELPER_ENV).is_some_and(|v| v == "1")
}

/// Polls a process's captured stdout until a line starting with `prefix` appears; returns the
/// rest of that line. Fails the test if the process exits first or after `timeout`.
pub fn wait_for_stdout_line(proc: &mut Proc, prefix: &str, timeout: Duration) -> String {
    let what = format!(
        "`{}` to print a line starting {prefix:?}",
        proc.command_line()
    );
    wait_for(timeout, what, || {
        let stdout = proc.stdout_text();
        if let Some(rest) = stdout.lines().find_map(|l| l.strip_prefix(prefix)) {
            return Ok(rest.to_string());
        }
        if let Some(status) = proc.try_status() {
            panic!(
                "`{}` exited ({status}) before printing {prefix:?}; stdout: {stdout:?}; stderr: {}",
                proc.command_line(),
                proc.stderr_text()
            );
        }
        Err(format!("stdout so far: {:?}", tail(&stdout, 2048)))
    })
}

/// Sends `message` with `try_send` until the ring reports would-block and returns how many
/// went in. Panics if another error comes, or if more than `at_most` fit (the ring never
/// pushed back).
pub fn fill_ring(
    producer: &mut shmem_broker_client::Producer,
    message: &[u8],
    at_most: usize,
) -> usize {
    let mut accepted = 0;
    loop {
        match producer.try_send(message) {
            Ok(()) => accepted += 1,
            Err(e) if e.is_full() => return accepted,
            Err(e) => panic!("try_send #{accepted}: {e}"),
        }
        assert!(
            accepted <= at_most,
            "try_send never reported would-block: a {}-byte ring took {accepted} messages of {} bytes",
            producer.capacity(),
            message.len()
        );
    }
}
