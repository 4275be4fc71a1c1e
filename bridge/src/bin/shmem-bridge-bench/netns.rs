//! The two network namespaces joined by a veth pair, and the children run in them.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{HOST_A, HOST_B};

pub(crate) struct Hosts {
    pub(crate) a: String,
    pub(crate) b: String,
}

pub(crate) fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("run ip {args:?}"))?;
    if !out.status.success() {
        bail!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Hosts {
    pub(crate) fn new() -> Result<Hosts> {
        let tag = std::process::id();
        let hosts = Hosts {
            a: format!("shbbA{tag}"),
            b: format!("shbbB{tag}"),
        };
        let (va, vb) = (format!("sbba{tag}"), format!("sbbb{tag}"));
        ip(&["netns", "add", &hosts.a])?;
        ip(&["netns", "add", &hosts.b])?;
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])?;
        ip(&["link", "set", &va, "netns", &hosts.a])?;
        ip(&["link", "set", &vb, "netns", &hosts.b])?;
        for (ns, dev, addr) in [
            (&hosts.a, &va, format!("{HOST_A}/24")),
            (&hosts.b, &vb, format!("{HOST_B}/24")),
        ] {
            ip(&["-n", ns, "addr", "add", &addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(hosts)
    }

    pub(crate) fn exec(&self, ns: &str, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(program);
        cmd
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A child killed when dropped.
pub(crate) struct Kid {
    pub(crate) child: Child,
    pub(crate) what: String,
}

impl Kid {
    pub(crate) fn spawn(what: &str, cmd: &mut Command) -> Result<Kid> {
        let child = cmd.spawn().with_context(|| format!("start {what}"))?;
        Ok(Kid {
            child,
            what: what.to_string(),
        })
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn wait_for_file_text(path: &Path, needle: &str, kid: &mut Kid) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return Ok(());
        }
        if let Some(status) = kid.child.try_wait()? {
            bail!("{} exited ({status}): {text}", kid.what);
        }
        if Instant::now() > deadline {
            bail!("{} did not log {needle:?} within 30 s: {text}", kid.what);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn log_to(path: &Path) -> Result<std::fs::File> {
    std::fs::File::create(path).with_context(|| format!("create {}", path.display()))
}
