//! The control plane: attach latency, 10,000 channels, 1,000 clients, and the first request
//! to a socket-activated broker.

use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shmem_broker_client::ErrorCode;

use crate::broker::{self, Broker, BIG_CONFIG};
use crate::proc::{which, Proc};
use crate::results::{Activation, Attach, ManyChannels, ManyClients};
use crate::stats::{median, Percentiles};
use crate::sys::{self, now_ns};

const CTL_TIMEOUT: Duration = Duration::from_secs(60);
/// Channels created before measuring how many fds each one costs the broker.
const PROBE_CHANNELS: usize = 100;
/// Fds left free in the broker for connections: it refuses new clients when it runs low
/// ("broker is out of file descriptors"), and the listing needs one.
const FD_HEADROOM: usize = 1000;

fn fd_count(pid: u32) -> Result<usize> {
    Ok(fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .count())
}

/// Attaches timed on their own at the end of [`Control::many_clients`].
const LAST_ATTACHES: usize = 100;

pub struct Control<'a> {
    pub broker_bin: &'a Path,
    pub ctl_bin: &'a Path,
    pub dir: &'a Path,
}

impl Control<'_> {
    /// `shmemctl ARGS` against `socket`, stdout to `out` (or /dev/null); seconds from spawn to
    /// a successful exit.
    fn ctl(&self, socket: &Path, args: &[&str], out: Option<&Path>) -> Result<f64> {
        let stdout = match out {
            Some(path) => Stdio::from(
                File::create(path).with_context(|| format!("creating {}", path.display()))?,
            ),
            None => Stdio::null(),
        };
        let mut cmd = Command::new(self.ctl_bin);
        cmd.args(args)
            .env("SHMEM_BROKER_SOCKET", socket)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::inherit());
        let start = now_ns();
        let mut proc = Proc::spawn(format!("shmemctl {}", args.join(" ")), &mut cmd)?;
        proc.wait_success(CTL_TIMEOUT)?;
        Ok((now_ns() - start) as f64 / 1e9)
    }

    /// `Client::producer` on an existing channel, then drop, `iterations` times.
    pub fn attach(&self, broker: &Broker, iterations: usize) -> Result<Attach> {
        let client = broker.client()?;
        let name = "bench.attach";
        client
            .channel(name)
            .create()
            .context("creating bench.attach")?;
        let warmup = 20;
        let mut samples = Vec::with_capacity(iterations);
        let mut busy_retries = 0u64;
        for i in 0..warmup + iterations {
            let start = now_ns();
            loop {
                match client.producer(name) {
                    Ok(producer) => {
                        drop(producer);
                        break;
                    }
                    // The broker has not processed the previous producer's hang-up yet.
                    Err(e) if e.code() == Some(ErrorCode::ChannelBusy) => {
                        busy_retries += 1;
                        if busy_retries > 100_000 {
                            bail!("the broker keeps the producer slot busy after detaches");
                        }
                        std::thread::yield_now();
                    }
                    Err(e) => return Err(e).context("attaching a producer"),
                }
            }
            if i >= warmup {
                samples.push(now_ns() - start);
            }
        }
        client.drop_channel(name).context("dropping bench.attach")?;
        Ok(Attach {
            latency: Percentiles::of(&samples, 1.0).context("no attach samples")?,
            busy_retries,
        })
    }

    /// Creates `count` channels on a fresh broker, then lists them.
    pub fn many_channels(&self, count: usize, list_reps: usize) -> Result<ManyChannels> {
        let broker = Broker::start(self.broker_bin, self.dir, "channels", BIG_CONFIG)?;
        let client = broker.client()?;
        let nofile = sys::nofile_of(broker.pid());
        let fds_before = fd_count(broker.pid())?;
        let mut create_error = None;
        let mut created = 0;
        let mut limit = count;
        let start = now_ns();
        while created < limit {
            let name = format!("c{created:05}");
            if let Err(err) = client.channel(&name).capacity(4096).create() {
                // Measure what exists; the report says why there are not more.
                create_error = Some(format!("channel {} of {count}: {err}", created + 1));
                break;
            }
            created += 1;
            if created == PROBE_CHANNELS {
                // A broker at its fd limit stops accepting connections (they wait in the
                // backlog until a client leaves), so stay below it and say so.
                let added = fd_count(broker.pid())?.saturating_sub(fds_before);
                let per_channel = ((added as f64 / PROBE_CHANNELS as f64).round() as usize).max(1);
                if let Some(nofile) = nofile {
                    let room =
                        (nofile as usize).saturating_sub(fds_before + FD_HEADROOM) / per_channel;
                    if room < count {
                        limit = room;
                        create_error = Some(format!(
                            "stopped at {room}: the broker's RLIMIT_NOFILE is {nofile} (the hard \
                             limit here; raising it needs CAP_SYS_RESOURCE) and each channel \
                             holds {per_channel} fds, so {count} channels need about {} fds",
                            fds_before + count * per_channel
                        ));
                    }
                }
            }
        }
        let create_secs = (now_ns() - start) as f64 / 1e9;
        if created == 0 {
            bail!(
                "the broker created no channel: {}",
                create_error.unwrap_or_default()
            );
        }
        let broker_fds = fd_count(broker.pid())?;

        let listing = self.dir.join("list.json");
        self.ctl(broker.socket(), &["list", "--json"], Some(&listing))?;
        let bytes = fs::read(&listing).context("reading the listing")?;
        let parsed: serde_json::Value =
            serde_json::from_slice(&bytes).context("shmemctl list --json output")?;
        let listed = parsed["channels"].as_array().map_or(0, Vec::len);
        if listed != created {
            bail!("shmemctl list --json showed {listed} channels, expected {created}");
        }
        let mut ctl_times = Vec::new();
        let mut client_times = Vec::new();
        for _ in 0..list_reps.max(1) {
            ctl_times.push(self.ctl(broker.socket(), &["list", "--json"], None)?);
            let t = now_ns();
            let channels = client.list().context("Client::list")?;
            client_times.push((now_ns() - t) as f64 / 1e9);
            if channels.len() != created {
                bail!("Client::list returned {} channels", channels.len());
            }
        }
        Ok(ManyChannels {
            wanted: count,
            channels: created,
            create_error,
            create_secs,
            broker_fds,
            broker_nofile: nofile,
            ctl_list_secs: median(&ctl_times).unwrap_or_default(),
            ctl_list_bytes: bytes.len(),
            client_list_secs: median(&client_times).unwrap_or_default(),
            broker_rss: broker.rss()?,
        })
    }

    /// `clients` attachments held at once, alternately producer and consumer over
    /// `clients / 2` channels, and the broker's resident memory.
    pub fn many_clients(&self, clients: usize) -> Result<ManyClients> {
        self.many_clients_with(clients, BIG_CONFIG, "clients")
    }

    /// [`Control::many_clients`] on a broker started with `config` (named `name`).
    pub fn many_clients_with(
        &self,
        clients: usize,
        config: &str,
        name: &str,
    ) -> Result<ManyClients> {
        let broker = Broker::start(self.broker_bin, self.dir, name, config)?;
        let rss_idle = broker.rss()?;
        let client = broker.client()?;
        let channels = clients.div_ceil(2);
        for i in 0..channels {
            client
                .channel(&format!("m{i:04}"))
                .capacity(64 << 10)
                .create()
                .with_context(|| format!("creating channel {i}"))?;
        }
        let rss_channels = broker.rss()?;
        let start = now_ns();
        let mut producers = Vec::with_capacity(channels);
        let mut consumers = Vec::with_capacity(channels);
        // The last attaches show what one costs with that many already attached.
        let last = clients.saturating_sub(LAST_ATTACHES);
        let mut last_start = start;
        for i in 0..clients {
            if i == last {
                last_start = now_ns();
            }
            let name = format!("m{:04}", i / 2);
            if i % 2 == 0 {
                producers.push(
                    client
                        .producer(&name)
                        .with_context(|| format!("attaching client {i} of {clients}"))?,
                );
            } else {
                consumers.push(
                    client
                        .consumer(&name)
                        .with_context(|| format!("attaching client {i} of {clients}"))?,
                );
            }
        }
        let end = now_ns();
        let attach_all_secs = (end - start) as f64 / 1e9;
        let attach_last_secs = (end - last_start) as f64 / 1e9 / (clients - last).max(1) as f64;
        let status = client.status().context("status")?;
        // The endpoints plus this control connection.
        if status.clients < clients {
            bail!(
                "the broker counts {} clients, expected at least {clients}",
                status.clients
            );
        }
        let rss_attached = broker.rss()?;
        drop((producers, consumers));
        Ok(ManyClients {
            clients,
            channels,
            attach_all_secs,
            attach_last_secs,
            rss_idle,
            rss_channels,
            rss_attached,
        })
    }

    /// `systemd-socket-activate -l SOCK --fdname=control shmem-broker`, then the first
    /// `shmemctl list` (which waits in the socket's backlog while the broker starts).
    pub fn activation(&self, reps: usize) -> Result<Activation> {
        let activate = which("systemd-socket-activate")
            .context("systemd-socket-activate not found (Debian package `systemd`)")?;
        let config = self.dir.join("activation.toml");
        fs::write(&config, broker::DEFAULT_CONFIG).context("writing activation.toml")?;
        let mut first = Vec::new();
        let mut from_spawn = Vec::new();
        let mut warm = Vec::new();
        for rep in 0..reps.max(1) {
            let socket = self.dir.join(format!("activated-{rep}.sock"));
            let log_path = self.dir.join(format!("activated-{rep}.log"));
            let log = File::create(&log_path).context("creating the activation log")?;
            let mut cmd = Command::new(&activate);
            cmd.arg("-l")
                .arg(&socket)
                .arg("--fdname=control")
                .arg(self.broker_bin)
                .arg("--config")
                .arg(&config)
                .env_remove("NOTIFY_SOCKET")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log);
            let spawned = now_ns();
            let mut proc = Proc::spawn("systemd-socket-activate", &mut cmd)?;
            wait_for_listener(&socket, &mut proc, &log_path)?;
            let list_start = now_ns();
            let list = self.ctl(&socket, &["list"], None);
            let done = now_ns();
            list.with_context(|| format!("first list; log:\n{}", broker::log_tail(&log_path)))?;
            first.push((done - list_start) as f64 / 1e9);
            from_spawn.push((done - spawned) as f64 / 1e9);
            warm.push(self.ctl(&socket, &["list"], None)?);
            drop(proc);
        }
        Ok(Activation {
            first_list_secs: median(&first).unwrap_or_default(),
            from_spawn_secs: median(&from_spawn).unwrap_or_default(),
            warm_list_secs: median(&warm).unwrap_or_default(),
            reps: first.len(),
        })
    }
}

/// Waits until a Unix socket is bound to `path` and listening (per /proc/net/unix, so no
/// connection is made: the first one must be the measured `shmemctl list`).
fn wait_for_listener(path: &Path, proc: &mut Proc, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let wanted = path.to_string_lossy();
    loop {
        let table = fs::read_to_string("/proc/net/unix").context("reading /proc/net/unix")?;
        // Num RefCount Protocol Flags Type St Inode Path; Flags 00010000 = __SO_ACCEPTCON.
        let listening = table.lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() >= 8 && fields[3] == "00010000" && fields[7] == wanted
        });
        if listening {
            return Ok(());
        }
        if let Some(status) = proc.try_wait()? {
            bail!(
                "systemd-socket-activate exited ({status}); log:\n{}",
                broker::log_tail(log)
            );
        }
        if Instant::now() >= deadline {
            bail!("nothing listens on {}", path.display());
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}
