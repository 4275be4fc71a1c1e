//! Processes the benchmark starts: every one is owned by a [`Proc`], which kills and reaps it
//! when dropped, and is SIGKILLed by the kernel should the benchmark itself die.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub struct Proc {
    name: String,
    child: Child,
    exited: Option<ExitStatus>,
}

impl Proc {
    pub fn spawn(name: impl Into<String>, cmd: &mut Command) -> Result<Proc> {
        let name = name.into();
        // A killed benchmark leaves no broker or worker behind.
        shmem_broker_testkit::process::die_with_parent(cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Proc {
            name,
            child,
            exited: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The exit status if the process has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.name))?;
        }
        Ok(self.exited)
    }

    /// Waits for the process to exit, polling every 50 us (precise enough for the
    /// millisecond-scale commands we time), and kills it after `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!("{} did not finish within {timeout:?}; killed it", self.name);
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Waits for a zero exit status.
    pub fn wait_success(&mut self, timeout: Duration) -> Result<()> {
        let status = self.wait_timeout(timeout)?;
        if !status.success() {
            bail!("{} failed: {status}", self.name);
        }
        Ok(())
    }

    pub fn kill(&mut self) {
        if self.exited.is_none() {
            // Errors mean it is already gone, which is what we want.
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Finds a workspace binary: `explicit` if given, else next to the running benchmark (the same
/// target profile directory: `cargo run --release` finds `target/release/NAME`).
pub fn find_binary(name: &str, explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        if !path.is_file() {
            bail!("{} does not exist", path.display());
        }
        return Ok(path.to_path_buf());
    }
    let exe = std::env::current_exe().context("locating the benchmark binary")?;
    let dir = exe
        .parent()
        .context("the benchmark binary has no parent directory")?;
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} not found: build the workspace first (`cargo build --release --workspace`) \
             or pass its path",
            path.display()
        );
    }
    Ok(path)
}

/// Finds a program on `$PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
