//! A broker on a private socket: the command line that starts one, and waiting until it
//! answers. Spawning it (with [`crate::process::die_with_parent`]), its log and its lifetime
//! stay with the caller: the test harness keeps a `Proc` that prints the broker's stderr when a
//! test fails, the bench and the soak keep theirs.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use shmem_broker_client::Client;

/// How often [`wait_until_answers`] tries again.
const POLL: Duration = Duration::from_millis(5);

/// `BIN --socket SOCKET`, with the environment cleared of what would make the broker take a
/// socket from systemd or report to it (`LISTEN_*`, `NOTIFY_SOCKET`) or point a client
/// elsewhere (`SHMEM_BROKER_SOCKET`). Add `--config`, `--log-level` and the rest as needed.
pub fn command(bin: &Path, socket: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--socket")
        .arg(socket)
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("SHMEM_BROKER_SOCKET");
    cmd
}

/// Why a broker did not answer.
#[derive(Debug)]
pub enum NotAnswering {
    /// The process exited first; what `exited` said about it.
    Exited(String),
    /// Still nothing after the timeout; the last error seen.
    TimedOut(String),
}

impl std::fmt::Display for NotAnswering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotAnswering::Exited(status) => write!(f, "the broker exited ({status})"),
            NotAnswering::TimedOut(last) => write!(f, "the broker did not answer: {last}"),
        }
    }
}

/// Polls until a client connected to `socket` gets an answer to a `status` request (the same
/// request `shmemctl status` sends), and returns that client. Before each try, `exited` is
/// asked whether the broker process is gone (its exit status, or `None` while it runs; a
/// caller that did not start the broker passes `|| None`).
pub fn wait_until_answers(
    socket: &Path,
    timeout: Duration,
    mut exited: impl FnMut() -> Option<String>,
) -> Result<Client, NotAnswering> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = exited() {
            return Err(NotAnswering::Exited(status));
        }
        let last = match Client::connect(socket) {
            Ok(client) => match client.status() {
                Ok(_) => return Ok(client),
                Err(e) => format!("status on {}: {e}", socket.display()),
            },
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(NotAnswering::TimedOut(last));
        }
        std::thread::sleep(POLL);
    }
}
