//! End to end with the CLI: `shmemctl send ch < FILE` into `shmemctl recv ch > /dev/null`,
//! against `socat` moving the same file through a Unix socket and `dd` through a pipe. FILE lives in /dev/shm so the
//! disk is not what is measured. Neither side is pinned: this is what a user running the
//! commands gets.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::broker::Broker;
use crate::proc::{which, Proc};
use crate::results::CliRun;
use crate::stats::median;
use crate::sys::now_ns;

const TIMEOUT: Duration = Duration::from_secs(120);
/// socat's transfer block: the same 1 MiB as `shmemctl send`'s default chunk.
const SOCAT_BLOCK: &str = "1048576";

/// A file of `bytes` pseudo-random bytes in /dev/shm, unlinked as soon as it is created: it
/// lives as long as the open file, so nothing is left behind however the benchmark ends.
fn shm_file(bytes: u64) -> Result<File> {
    let path = PathBuf::from(format!("/dev/shm/shmem-bench-{}.dat", std::process::id()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    fs::remove_file(&path).with_context(|| format!("unlinking {}", path.display()))?;
    let mut block = vec![0u8; 1 << 20];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in block.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
    let mut out = BufWriter::new(&file);
    let mut written = 0;
    while written < bytes {
        let n = (bytes - written).min(block.len() as u64) as usize;
        out.write_all(&block[..n])
            .context("writing the test file")?;
        written += n as u64;
    }
    out.flush().context("writing the test file")?;
    drop(out);
    Ok(file)
}

/// The file, rewound, as a child's stdin (the dup shares the offset: one reader at a time).
fn stdin_from(file: &mut File) -> Result<Stdio> {
    file.seek(SeekFrom::Start(0))
        .context("rewinding the test file")?;
    Ok(Stdio::from(
        file.try_clone().context("dup of the test file")?,
    ))
}

fn wait_both(a: &mut Proc, b: &mut Proc) -> Result<()> {
    a.wait_success(TIMEOUT)?;
    b.wait_success(TIMEOUT)
}

fn shmemctl_once(
    ctl: &Path,
    broker: &Broker,
    file: &mut File,
    bytes: u64,
    rep: usize,
) -> Result<f64> {
    let client = broker.client()?;
    let channel = format!("bench.cli.{rep}");
    client
        .channel(&channel)
        .capacity(16 << 20)
        .create()
        .with_context(|| format!("creating {channel}"))?;
    let mut recv = Command::new(ctl);
    recv.args(["recv", &channel])
        .env("SHMEM_BROKER_SOCKET", broker.socket())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut receiver = Proc::spawn("shmemctl recv", &mut recv)?;
    // Let the receiver attach first, as a user starting `recv` and then `send` would.
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.info(&channel)?.peers.is_empty() {
        if Instant::now() >= deadline {
            bail!("shmemctl recv did not attach");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut send = Command::new(ctl);
    send.args(["send", &channel])
        .env("SHMEM_BROKER_SOCKET", broker.socket())
        .stdin(stdin_from(file)?)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let start = now_ns();
    let mut sender = Proc::spawn("shmemctl send", &mut send)?;
    wait_both(&mut sender, &mut receiver)?;
    let secs = (now_ns() - start) as f64 / 1e9;
    let info = client.info(&channel)?;
    if info.bytes_written != bytes {
        bail!(
            "shmemctl send wrote {} of {bytes} bytes",
            info.bytes_written
        );
    }
    client.drop_channel(&channel)?;
    Ok(secs)
}

fn socat_once(socat: &Path, dir: &Path, file: &mut File, rep: usize) -> Result<f64> {
    let socket = dir.join(format!("socat-{rep}.sock"));
    let mut listen = Command::new(socat);
    listen
        .args(["-u", "-b", SOCAT_BLOCK])
        .arg(format!("UNIX-LISTEN:{}", socket.display()))
        .arg("STDOUT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut receiver = Proc::spawn("socat (listen)", &mut listen)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if receiver.try_wait()?.is_some() || Instant::now() >= deadline {
            bail!("socat did not start listening on {}", socket.display());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut connect = Command::new(socat);
    connect
        .args(["-u", "-b", SOCAT_BLOCK, "STDIN"])
        .arg(format!("UNIX-CONNECT:{}", socket.display()))
        .stdin(stdin_from(file)?)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let start = now_ns();
    let mut sender = Proc::spawn("socat (connect)", &mut connect)?;
    wait_both(&mut sender, &mut receiver)?;
    Ok((now_ns() - start) as f64 / 1e9)
}

/// `dd bs=1M < FILE | dd bs=1M of=/dev/null`: the same bytes through a pipe, what a shell
/// pipeline without either tool would get.
fn dd_once(dd: &Path, file: &mut File) -> Result<f64> {
    let mut send = Command::new(dd);
    send.args(["bs=1M", "status=none"])
        .stdin(stdin_from(file)?)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let start = now_ns();
    let mut sender = Proc::spawn("dd (send)", &mut send)?;
    let pipe = sender
        .child_mut()
        .stdout
        .take()
        .context("dd's stdout pipe")?;
    let mut recv = Command::new(dd);
    recv.args(["bs=1M", "of=/dev/null", "status=none"])
        .stdin(Stdio::from(pipe))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut receiver = Proc::spawn("dd (receive)", &mut recv)?;
    wait_both(&mut sender, &mut receiver)?;
    Ok((now_ns() - start) as f64 / 1e9)
}

pub fn run(ctl: &Path, broker: &Broker, dir: &Path, bytes: u64, reps: usize) -> Result<CliRun> {
    let mut file = shm_file(bytes)?;
    let socat = which("socat");
    let dd = which("dd");
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut pipe = Vec::new();
    for rep in 0..reps.max(1) {
        ours.push(bytes as f64 / shmemctl_once(ctl, broker, &mut file, bytes, rep)? / 1e9);
        if let Some(socat) = &socat {
            theirs.push(bytes as f64 / socat_once(socat, dir, &mut file, rep)? / 1e9);
        }
        if let Some(dd) = &dd {
            pipe.push(bytes as f64 / dd_once(dd, &mut file)? / 1e9);
        }
    }
    if socat.is_none() {
        eprintln!("shmem-bench: socat not found (Debian package `socat`): CLI comparison skipped");
    }
    Ok(CliRun {
        bytes,
        shmemctl_gb_per_s: median(&ours).unwrap_or_default(),
        socat_gb_per_s: median(&theirs),
        reps: ours.len(),
        dd_gb_per_s: median(&pipe),
        shmemctl_runs: ours,
        socat_runs: theirs,
        dd_runs: pipe,
    })
}
