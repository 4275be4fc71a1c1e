//! A real `shmem-broker` on a temporary socket, killed when dropped.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use shmem_broker_client::Client;
use shmem_broker_testkit::broker::wait_until_answers;

use crate::proc::Proc;
use crate::sys::{self, Rss};

/// The config the control-plane measurements need: room for 10,000 channels and 1,000 clients.
pub const BIG_CONFIG: &str = "version = 1\nmax_channels = 20000\nmax_clients = 5000\n";

/// The built-in defaults: what the data-path measurements run against.
pub const DEFAULT_CONFIG: &str = "version = 1\n";

pub struct Broker {
    proc: Proc,
    socket: PathBuf,
    log: PathBuf,
}

impl Broker {
    /// Starts `bin` with `config` (written to `dir/NAME.toml`), bound to `dir/NAME.sock`, and
    /// waits until it answers.
    pub fn start(bin: &Path, dir: &Path, name: &str, config: &str) -> Result<Broker> {
        let socket = dir.join(format!("{name}.sock"));
        let config_path = dir.join(format!("{name}.toml"));
        let log = dir.join(format!("{name}.log"));
        fs::write(&config_path, config)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = shmem_broker_testkit::broker::command(bin, &socket);
        cmd.arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let proc = Proc::spawn(format!("shmem-broker ({name})"), &mut cmd)?;
        let mut broker = Broker { proc, socket, log };
        broker.wait_until_serving(Duration::from_secs(10))?;
        Ok(broker)
    }

    fn wait_until_serving(&mut self, timeout: Duration) -> Result<()> {
        let proc = &mut self.proc;
        let answered = wait_until_answers(&self.socket, timeout, || {
            // An error waiting counts as gone: the log tells why.
            match proc.try_wait() {
                Ok(None) => None,
                Ok(Some(status)) => Some(status.to_string()),
                Err(e) => Some(e.to_string()),
            }
        });
        match answered {
            Ok(_) => Ok(()),
            Err(why) => bail!(
                "{why} on {} within {timeout:?}; its log:\n{}",
                self.socket.display(),
                self.log_tail()
            ),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn pid(&self) -> u32 {
        self.proc.id()
    }

    pub fn client(&self) -> Result<Client> {
        Client::connect(&self.socket)
            .with_context(|| format!("connecting to the broker at {}", self.socket.display()))
    }

    pub fn rss(&self) -> Result<Rss> {
        sys::rss_of(self.pid())
    }

    /// The last lines of the broker's stderr, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }
}

pub fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
