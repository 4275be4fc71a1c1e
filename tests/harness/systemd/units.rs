//! The project's own units in a lab: system users as an installer makes them, unit files
//! with only `ExecStart=` and `ListenStream=` rewritten, and [`LabBroker`] to drive the
//! socket-activated broker they start.

use super::host::set_mode;
use super::*;
use crate::{
    broker_bin, ctl_bin, json_array, json_str, require_tool, run, workspace_dir, CmdOutput, Proc,
    CTL_TIMEOUT, WAIT,
};
use serde_json::Value;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Once;
use std::time::Duration;

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
