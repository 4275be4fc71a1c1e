//! The three paths under test, each set up in the namespaces and driven from here: ours (brokers
//! and bridges), raw Zenoh, and socat over TCP.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::cpu::{self, Cpu};
use crate::measure::*;
use crate::netns::*;
use crate::{HOST_A, HOST_B};

pub(crate) struct Ours {
    pub(crate) _brokers: [Kid; 2],
    pub(crate) _bridges: [Kid; 2],
    pub(crate) producer: shmem_broker_client::Producer,
    pub(crate) consumer: shmem_broker_client::Consumer,
}

impl Ours {
    pub(crate) fn start(bin_dir: &Path, dir: &Path, hosts: &Hosts) -> Result<Ours> {
        let broker_bin = bin_dir.join("shmem-broker");
        let bridge_bin = bin_dir.join("shmem-bridge");
        let mut brokers = Vec::new();
        let mut clients = Vec::new();
        for name in ["a", "b"] {
            let socket = dir.join(format!("{name}.sock"));
            let config = dir.join(format!("{name}.toml"));
            std::fs::write(&config, "version = 1\n").context("write the broker config")?;
            let mut cmd = Command::new(&broker_bin);
            cmd.arg("--config")
                .arg(&config)
                .arg("--socket")
                .arg(&socket)
                .env_remove("LISTEN_FDS")
                .env_remove("LISTEN_PID")
                .env_remove("NOTIFY_SOCKET")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_to(&dir.join(format!("broker-{name}.log")))?);
            brokers.push(Kid::spawn(&format!("shmem-broker ({name})"), &mut cmd)?);
            let deadline = Instant::now() + Duration::from_secs(10);
            let client = loop {
                match shmem_broker_client::Client::connect(&socket) {
                    Ok(client) => break client,
                    Err(e) if Instant::now() > deadline => {
                        bail!("broker {name} at {}: {e}", socket.display())
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            };
            clients.push(client);
        }
        // Room for several 1 MiB messages in flight on both sides.
        let capacity = 32 << 20;
        clients[0]
            .channel("out")
            .capacity(capacity)
            .create()
            .context("create channel out")?;
        clients[1]
            .channel("in")
            .capacity(capacity)
            .create()
            .context("create channel in")?;
        let listen = format!("tcp/{HOST_A}:7447");
        let export_log = dir.join("export.log");
        let mut export = hosts.exec(&hosts.a, &bridge_bin);
        export
            .args([
                "export",
                "out",
                "--key",
                "bench/bridge",
                "--importer",
                "hostB",
            ])
            .arg("--socket")
            .arg(dir.join("a.sock"))
            .args(["--listen", &listen])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_to(&export_log)?);
        let mut export = Kid::spawn("shmem-bridge export", &mut export)?;
        wait_for_file_text(&export_log, "exporting", &mut export)?;
        let import_log = dir.join("import.log");
        let mut import = hosts.exec(&hosts.b, &bridge_bin);
        import
            .args(["import", "in", "--key", "bench/bridge", "--name", "hostB"])
            .arg("--socket")
            .arg(dir.join("b.sock"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--connect", &listen])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_to(&import_log)?);
        let mut import = Kid::spawn("shmem-bridge import", &mut import)?;
        wait_for_file_text(&import_log, "importing", &mut import)?;
        let producer = clients[0].producer("out").context("attach producer")?;
        let consumer = clients[1].consumer("in").context("attach consumer")?;
        let [a, b]: [Kid; 2] = brokers
            .try_into()
            .map_err(|_| anyhow!("two brokers expected"))?;
        Ok(Ours {
            _brokers: [a, b],
            _bridges: [export, import],
            producer,
            consumer,
        })
    }

    /// The processes on this path besides this one's producer and consumer threads.
    pub(crate) fn processes(&self) -> Vec<(&'static str, u32)> {
        vec![
            ("exporter", self._bridges[0].child.id()),
            ("importer", self._bridges[1].child.id()),
            ("brokers", self._brokers[0].child.id()),
            ("brokers", self._brokers[1].child.id()),
        ]
    }

    /// One run; also the CPU time of the producer thread and of the consumer thread.
    pub(crate) fn measure(
        &mut self,
        size: usize,
        count: u64,
        pace: Option<Duration>,
    ) -> Result<(Outcome, [Cpu; 2])> {
        let producer = &mut self.producer;
        let consumer = &mut self.consumer;
        std::thread::scope(|scope| {
            let sender = scope.spawn(move || {
                let before = cpu::of_this_thread();
                send_paced(size, count, pace, |m| {
                    producer.send(m).context("send into out")
                })?;
                Ok::<_, anyhow::Error>(cpu::of_this_thread().since(&before))
            });
            let before = cpu::of_this_thread();
            let mut tally = Tally::default();
            let mut buf = Vec::with_capacity(size);
            while tally.count < count {
                if !consumer.recv_into(&mut buf).context("recv from in")? {
                    bail!("end-of-stream on in");
                }
                tally.add(&buf);
            }
            let consumer_cpu = cpu::of_this_thread().since(&before);
            let producer_cpu = sender
                .join()
                .map_err(|_| anyhow!("the sender panicked"))??;
            Ok((tally.outcome(), [producer_cpu, consumer_cpu]))
        })
    }
}

/// A child driven by lines on stdin and stdout.
pub(crate) struct Driven {
    pub(crate) kid: Kid,
    pub(crate) stdin: ChildStdin,
    pub(crate) stdout: BufReader<ChildStdout>,
}

impl Driven {
    pub(crate) fn spawn(what: &str, mut cmd: Command) -> Result<Driven> {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut kid = Kid::spawn(what, &mut cmd)?;
        let stdin = kid.child.stdin.take().context("child stdin")?;
        let stdout = BufReader::new(kid.child.stdout.take().context("child stdout")?);
        Ok(Driven { kid, stdin, stdout })
    }

    pub(crate) fn say(&mut self, line: &str) -> Result<()> {
        writeln!(self.stdin, "{line}").with_context(|| format!("tell {}", self.kid.what))
    }

    pub(crate) fn hear(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("{} exited", self.kid.what);
        }
        Ok(line.trim().to_string())
    }

    pub(crate) fn expect(&mut self, word: &str) -> Result<String> {
        let line = self.hear()?;
        if !line.starts_with(word) {
            bail!("{} said {line:?}, expected {word:?}", self.kid.what);
        }
        Ok(line)
    }
}

pub(crate) struct RawZenoh {
    pub(crate) publisher: Driven,
    pub(crate) subscriber: Driven,
}

impl RawZenoh {
    /// The publisher and subscriber processes.
    pub(crate) fn processes(&self) -> Vec<(&'static str, u32)> {
        vec![
            ("publisher", self.publisher.kid.child.id()),
            ("subscriber", self.subscriber.kid.child.id()),
        ]
    }

    pub(crate) fn start(hosts: &Hosts) -> Result<RawZenoh> {
        let me = std::env::current_exe().context("find this binary")?;
        let endpoint = format!("tcp/{HOST_A}:7448");
        let mut cmd = hosts.exec(&hosts.a, &me);
        cmd.args(["__zenoh-pub", &endpoint]);
        let publisher = Driven::spawn("zenoh publisher", cmd)?;
        std::thread::sleep(Duration::from_millis(300));
        let mut cmd = hosts.exec(&hosts.b, &me);
        cmd.args(["__zenoh-sub", &endpoint]);
        let mut subscriber = Driven::spawn("zenoh subscriber", cmd)?;
        subscriber.expect("ready")?;
        let mut raw = RawZenoh {
            publisher,
            subscriber,
        };
        raw.publisher.expect("ready")?;
        Ok(raw)
    }

    pub(crate) fn measure(
        &mut self,
        size: usize,
        count: u64,
        pace: Option<Duration>,
    ) -> Result<Outcome> {
        self.subscriber.say(&count.to_string())?;
        self.subscriber.expect("armed")?;
        let pace_ns = pace.map_or(0, |p| p.as_nanos() as u64);
        self.publisher.say(&format!("{size} {count} {pace_ns}"))?;
        self.publisher.expect("sent")?;
        let done = self.subscriber.expect("done")?;
        let numbers: Vec<f64> = done
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("subscriber said {done:?}"))?;
        let [mb_per_s, p50_us, p99_us] = numbers[..] else {
            bail!("subscriber said {done:?}");
        };
        Ok(Outcome {
            mb_per_s,
            p50_us,
            p99_us,
        })
    }
}

pub(crate) struct Socat {
    pub(crate) _relays: [Kid; 2],
    pub(crate) send: UnixStream,
    pub(crate) recv: UnixStream,
}

impl Socat {
    pub(crate) fn start(bin: &Path, dir: &Path, hosts: &Hosts) -> Result<Socat> {
        let out_path = dir.join("socat-out.sock");
        let in_path = dir.join("socat-in.sock");
        let listener = UnixListener::bind(&out_path).context("bind the receiving socket")?;
        // Host B: TCP in, Unix socket out (to this process).
        let mut b = hosts.exec(&hosts.b, bin);
        b.args(["-u", "-b", "1048576"])
            .arg("TCP-LISTEN:7449,reuseaddr,nodelay")
            .arg(format!("UNIX-CONNECT:{}", out_path.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let b = Kid::spawn("socat (B)", &mut b)?;
        // Host A: Unix socket in (from this process), TCP out.
        let mut a = hosts.exec(&hosts.a, bin);
        a.args(["-u", "-b", "1048576"])
            .arg(format!("UNIX-LISTEN:{}", in_path.display()))
            .arg(format!("TCP:{HOST_B}:7449,nodelay,retry=50,interval=0.1"))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let a = Kid::spawn("socat (A)", &mut a)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let send = loop {
            match UnixStream::connect(&in_path) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => bail!("socat (A) not listening: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let (recv, _) = listener.accept().context("accept socat (B)")?;
        Ok(Socat {
            _relays: [a, b],
            send,
            recv,
        })
    }

    pub(crate) fn measure(
        &mut self,
        size: usize,
        count: u64,
        pace: Option<Duration>,
    ) -> Result<Outcome> {
        let send = &mut self.send;
        let recv = &mut self.recv;
        std::thread::scope(|scope| {
            let sender = scope.spawn(move || {
                send_paced(size, count, pace, |m| {
                    send.write_all(m).context("write to socat")
                })
            });
            let mut tally = Tally::default();
            let mut buf = vec![0u8; size];
            while tally.count < count {
                recv.read_exact(&mut buf).context("read from socat")?;
                tally.add(&buf);
            }
            sender
                .join()
                .map_err(|_| anyhow!("the sender panicked"))??;
            Ok(tally.outcome())
        })
    }
}
