//! The broker: starting one on a private socket (bound, or socket-activated), restarting it,
//! and running `shmemctl` against it.

use serde_json::Value;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use shmem_broker_testkit::broker::wait_until_answers;
use shmem_broker_testkit::process::{dup_onto, DUP_ONTO_MAX};

use crate::{
    broker_bin, ctl_bin, json_array, require_tool, run, tail, temp_dir, wait_for, CmdOutput, Proc,
    CTL_TIMEOUT, LOG_TAIL, WAIT,
};

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
    /// Soft and hard RLIMIT_NOFILE for the broker (lowering needs no privilege), so that a test
    /// can run it out of fds quickly whatever limit the machine gives.
    pub nofile: Option<u64>,
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
        let mut cmd = broker_command(&config_path, &socket);
        cmd.args(options.extra_args);
        if let Some(limit) = options.nofile {
            let limit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            // SAFETY: setrlimit(2) is async-signal-safe, reads a value copied into the closure
            // and changes only the child's own limit.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
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
        // Moved to 3, 4, ... in order, as systemd passes them.
        let moves: Vec<(i32, i32)> = (3..)
            .zip(&fds)
            .map(|(at, fd)| (fd.as_raw_fd(), at))
            .collect();
        assert!(moves.len() <= DUP_ONTO_MAX, "at most {DUP_ONTO_MAX} fds");
        // SAFETY: dup_onto only calls fcntl and dup2 (async-signal-safe) and does not allocate;
        // the fds stay open in this process until the child has started.
        unsafe {
            cmd.pre_exec(move || dup_onto(&moves));
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
        let proc = &mut self.proc;
        let answered = wait_until_answers(&self.socket, WAIT, || {
            proc.try_status().map(|status| status.to_string())
        });
        if let Err(why) = answered {
            panic!(
                "{why} on {} within {WAIT:?}; its stderr:\n{}",
                self.socket.display(),
                tail(&self.proc.stderr_text(), LOG_TAIL)
            );
        }
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

/// `shmem-broker --socket SOCKET --config CONFIG --log-level debug`, as testkit builds a broker
/// command line (environment cleared of systemd's and the client's variables).
fn broker_command(config: &Path, socket: &Path) -> Command {
    let mut cmd = shmem_broker_testkit::broker::command(&broker_bin(), socket);
    cmd.arg("--config")
        .arg(config)
        .arg("--log-level")
        .arg("debug");
    cmd
}

fn write_config(dir: &Path, content: &str) -> PathBuf {
    let path = dir.join("broker.toml");
    fs::write(&path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
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
        let cmd = broker_command(&self.config_path, &self.socket);
        self.proc = Proc::start(cmd, "broker", self.dir.path(), Stdio::null(), None);
        self.wait_ready();
    }
}
