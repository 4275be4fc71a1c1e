//! Operating the broker (issue 15): `shmemctl top`, `shmemctl metrics` (checked with the
//! Prometheus project's own parsers, from the `prometheus-client` pip package) and the progress
//! bars of `send`/`recv`, against the real broker with real traffic; and the numbers a hostile
//! client can write into its ring (wake-up counters, positions) shown clamped, never crashing
//! the broker or `shmemctl`.
//!
//! One file of about 600 lines on purpose: its length is the independent cases of one area
//! (what an operator sees), sharing the ring offsets and output parsers defined first.

use shmem_broker_tests::raw_ring::Mapping;
use shmem_broker_tests::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

// Header offsets (proto/src/ring.rs, layout 3).
const WRITE_POS: usize = 64;
const PRODUCER_WAKEUPS: usize = 96;
/// The consumer's wake-up counter in its ack page.
const ACK_WAKEUPS: usize = 16;
const CAPACITY: u64 = 64 * 1024;

/// `top --once` output: the row of `channel`, split into its columns.
fn top_row(out: &str, channel: &str) -> Vec<String> {
    out.lines()
        .map(|line| {
            line.split_whitespace()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .find(|cols| cols.first().map(String::as_str) == Some(channel))
        .unwrap_or_else(|| panic!("no row for {channel} in:\n{out}"))
}

#[test]
fn top_once_shows_the_traffic_rate_and_the_attached_counts() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "cam", "--capacity", "1MiB"]);
    broker.ctl_ok(&["create", "fan", "--max-consumers", "3"]);
    broker.ctl_ok(&["create", "idle"]);
    let client = broker.client();
    // fan: one producer and two consumers attached, no traffic.
    let _fan_producer = client.producer("fan").expect("fan producer");
    let _fan_consumers: Vec<_> = (0..2)
        .map(|_| client.consumer("fan").expect("fan consumer"))
        .collect();
    // cam: a producer sending 1000-byte messages until told to stop, a consumer reading them.
    let mut consumer = client.consumer("cam").expect("cam consumer");
    let mut producer = client.producer("cam").expect("cam producer");
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        Background::spawn("cam producer", move || {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                producer.send(&[7u8; 1000]).expect("send");
                sent += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
            producer.close().expect("close");
            sent
        })
    };
    let reader = Background::spawn("cam consumer", move || {
        let mut read = 0u64;
        while consumer.recv().expect("recv").is_some() {
            read += 1;
        }
        read
    });
    let out = broker.ctl(&["top", "--once", "--interval", "1"]);
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join(WAIT);
    assert_eq!(reader.join(WAIT), sent, "the consumer read every message");
    let text = out.expect_success();
    let header = text.lines().next().unwrap_or_default();
    assert!(
        header.contains("channels 3") && header.contains("ring memory"),
        "{out}"
    );
    assert_eq!(
        text.lines()
            .nth(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec![
            "CHANNEL", "PROD", "CONS", "MSG/S", "BYTES/S", "FILL", "LAG", "LOST", "EVICT", "WAKE/S"
        ]),
        "{out}"
    );
    let cam = top_row(text, "cam");
    assert_eq!(cam[1..3], ["1/1", "1/1"], "{out}");
    let rate: f64 = cam[3].parse().expect("MSG/S is a number");
    assert!(rate > 0.0, "cam moved messages during the interval:\n{out}");
    assert_ne!(cam[4], "0B/s", "{out}");
    let fan = top_row(text, "fan");
    assert_eq!(fan[1..4], ["1/1", "2/3", "0"], "{out}");
    let idle = top_row(text, "idle");
    assert_eq!(idle[1..5], ["0/1", "0/1", "0", "0B/s"], "{out}");
}

#[test]
fn top_sorts_by_the_column_asked() {
    let broker = Broker::start(None);
    for name in ["a-small", "b-big"] {
        broker.ctl_ok(&["create", name, "--capacity", "64KiB"]);
    }
    let client = broker.client();
    // b-big holds 40000 unread bytes, a-small 1000: sorted by fill, b-big comes first.
    for (name, len) in [("a-small", 1000), ("b-big", 40_000)] {
        let mut producer = client.producer(name).expect("producer");
        producer.send(&vec![1u8; len]).expect("send");
        producer.close().expect("close");
    }
    let by_fill = broker.ctl_ok(&["top", "--once", "--interval", "0.1", "--sort", "fill"]);
    let order: Vec<&str> = by_fill
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(order, ["b-big", "a-small"], "{by_fill}");
    let by_name = broker.ctl_ok(&["top", "--once", "--interval", "0.1"]);
    let order: Vec<&str> = by_name
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(order, ["a-small", "b-big"], "{by_name}");
}

/// Parses an exposition with the `prometheus_client` Python package's parser (`openmetrics`
/// or `prometheus`, the classic text format) and returns its samples as
/// `[[name, {labels}, value], ...]`.
fn parse_exposition(dir: &Path, format: &str, file: &Path) -> Vec<serde_json::Value> {
    let python = require_tool("python3", "python3");
    let script = r#"
import json, sys
fmt, path = sys.argv[1], sys.argv[2]
if fmt == "openmetrics":
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
else:
    from prometheus_client.parser import text_string_to_metric_families
text = open(path).read()
samples = []
for family in text_string_to_metric_families(text):
    for s in family.samples:
        samples.append([s.name, s.labels, s.value, family.type])
print(json.dumps(samples))
"#;
    let mut cmd = Command::new(python);
    cmd.arg("-c").arg(script).arg(format).arg(file);
    let out = run(cmd, "exposition-parser", dir, Stdio::null(), CTL_TIMEOUT);
    assert!(
        !out.stderr.contains("No module named 'prometheus_client'"),
        "the prometheus-client pip package is missing (.ci/run installs it: pip3 install prometheus-client):\n{out}"
    );
    let stdout = out.expect_success();
    let parsed: serde_json::Value = serde_json::from_str(stdout).expect("parser output is JSON");
    parsed.as_array().expect("a list of samples").clone()
}

/// The value of sample `name` with label channel=`channel` (or no labels when `None`).
fn sample(samples: &[serde_json::Value], name: &str, channel: Option<&str>) -> f64 {
    samples
        .iter()
        .find(|s| s[0] == name && s[1].get("channel").and_then(|c| c.as_str()) == channel)
        .and_then(|s| s[2].as_f64())
        .unwrap_or_else(|| panic!("no sample {name} for {channel:?} in {samples:?}"))
}

#[test]
fn metrics_parse_with_the_prometheus_parsers_and_count_the_traffic_sent() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "one", "--capacity", "1MiB"]);
    broker.ctl_ok(&[
        "create",
        "fan",
        "--capacity",
        "1MiB",
        "--max-consumers",
        "2",
    ]);
    let client = broker.client();
    // one: 100 messages of 1 to 100 bytes, all read; both ends stay attached.
    let mut consumer = client.consumer("one").expect("consumer");
    let mut producer = client.producer("one").expect("producer");
    let mut bytes = 0u64;
    for len in 1..=100usize {
        producer.send(&vec![3u8; len]).expect("send");
        bytes += len as u64;
    }
    for _ in 0..100 {
        consumer.recv().expect("recv").expect("a message");
    }
    // fan: 10 messages of 500 bytes to two consumers; one reads them all, one reads none.
    let mut fan_consumers: Vec<_> = (0..2)
        .map(|_| client.consumer("fan").expect("fan consumer"))
        .collect();
    // Attached after both consumers, the producer gets both lanes in its attach reply.
    let mut fan_producer = client.producer("fan").expect("fan producer");
    assert_eq!(fan_producer.consumers(), 2);
    for _ in 0..10 {
        fan_producer.send(&[9u8; 500]).expect("send");
    }
    for _ in 0..10 {
        fan_consumers[0].recv().expect("recv").expect("a message");
    }

    let dir = temp_dir();
    let text = broker.ctl_ok(&["metrics"]);
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics ends with # EOF:\n{text}"
    );
    let exposition = dir.path().join("stdout.txt");
    fs::write(&exposition, &text).expect("write the exposition");
    let textfile_dir = dir.path().join("textfile");
    fs::create_dir(&textfile_dir).expect("mkdir");
    broker.ctl_ok(&[
        "metrics",
        "--textfile",
        textfile_dir.to_str().expect("utf-8"),
    ]);
    let textfile = textfile_dir.join("shmem_broker.prom");
    let names: Vec<String> = fs::read_dir(&textfile_dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["shmem_broker.prom"], "no temporary file is left");
    assert_eq!(
        fs::metadata(&textfile).expect("stat").permissions().mode() & 0o777,
        0o644,
        "node_exporter, another user, must be able to read it"
    );

    for (format, file) in [("openmetrics", &exposition), ("prometheus", &textfile)] {
        let s = parse_exposition(dir.path(), format, file);
        let one = Some("one");
        let fan = Some("fan");
        let check = |name: &str, channel, want: f64| {
            assert_eq!(
                sample(&s, name, channel),
                want,
                "{format}: {name} {channel:?}"
            );
        };
        check("shmem_broker_channels", None, 2.0);
        check("shmem_broker_channel_messages_total", one, 100.0);
        check("shmem_broker_channel_bytes_total", one, bytes as f64);
        check("shmem_broker_channel_read_messages_total", one, 100.0);
        check("shmem_broker_channel_lost_messages_total", one, 0.0);
        check("shmem_broker_channel_evictions_total", one, 0.0);
        check("shmem_broker_channel_producers", one, 1.0);
        check("shmem_broker_channel_consumers", one, 1.0);
        check("shmem_broker_channel_unread_bytes", one, 0.0);
        check("shmem_broker_channel_ring_fill_ratio", one, 0.0);
        check("shmem_broker_channel_capacity_bytes", one, 1048576.0);
        // Fan-out: each message counted once as written, once per consumer as read; the
        // consumer that read nothing lags by all 5000 bytes.
        check("shmem_broker_channel_messages_total", fan, 10.0);
        check("shmem_broker_channel_bytes_total", fan, 5000.0);
        check("shmem_broker_channel_read_messages_total", fan, 10.0);
        check("shmem_broker_channel_consumers", fan, 2.0);
        check(
            "shmem_broker_channel_slowest_consumer_lag_bytes",
            fan,
            5000.0,
        );
        check(
            "shmem_broker_channel_ring_memory_bytes",
            fan,
            2.0 * 1048576.0,
        );
        let fill = sample(&s, "shmem_broker_channel_ring_fill_ratio", fan);
        assert!(fill > 0.0 && fill < 0.01, "{format}: fill {fill}");
        // Ring memory: both channels' rings, within the broker's quota.
        check("shmem_broker_ring_memory_bytes", None, 3.0 * 1048576.0);
        assert!(sample(&s, "shmem_broker_ring_memory_limit_bytes", None) >= 3.0 * 1048576.0);
        let wakeups = sample(&s, "shmem_broker_channel_wakeups_total", one);
        assert!(wakeups >= 0.0, "{format}");
        let counter_type = s
            .iter()
            .find(|x| x[0] == "shmem_broker_channel_messages_total")
            .map(|x| x[3].clone());
        assert_eq!(counter_type, Some("counter".into()), "{format}");
    }
}

#[test]
fn metrics_textfile_replaces_a_planted_link_instead_of_writing_through_it() {
    // The textfile directory may be writable by others (a shared collector directory): a
    // link planted at shmem_broker.prom must be replaced, its target left alone.
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "x"]);
    let dir = temp_dir();
    let victim = dir.path().join("victim");
    fs::write(&victim, "precious\n").expect("write victim");
    let textfiles = dir.path().join("textfiles");
    fs::create_dir(&textfiles).expect("mkdir");
    std::os::unix::fs::symlink(&victim, textfiles.join("shmem_broker.prom")).expect("symlink");
    broker.ctl_ok(&["metrics", "--textfile", textfiles.to_str().expect("utf-8")]);
    assert_eq!(fs::read_to_string(&victim).expect("read"), "precious\n");
    let written = textfiles.join("shmem_broker.prom");
    let meta = fs::symlink_metadata(&written).expect("stat");
    assert!(
        meta.file_type().is_file(),
        "a regular file replaced the link"
    );
    assert!(fs::read_to_string(&written)
        .expect("read")
        .contains("shmem_broker_channel_messages_total{channel=\"x\"} 0"));
    assert_eq!(meta.nlink(), 1);
}

#[test]
fn wakeup_counters_and_positions_a_client_scribbled_are_shown_clamped() {
    let mut broker = Broker::start(None);
    broker.ctl_ok(&[
        "create",
        "scribbled",
        "--capacity",
        "64KiB",
        "--max-consumers",
        "2",
    ]);
    // Two hostile consumers set their wake-up counters (in their ack pages) to u64::MAX, and a
    // hostile producer its own in both rings (the broker sums four of them) and claims the
    // rings far fuller than their capacity. Each writes only what it owns (ring layout 3).
    let consumers: Vec<RawAttach> = (0..2)
        .map(|_| raw_attach_any(broker.socket_path(), "scribbled", "consumer"))
        .collect();
    let producer = raw_attach_any(broker.socket_path(), "scribbled", "producer");
    let mut maps = Vec::new();
    for lane in producer.lanes() {
        let map = Mapping::new(lane.ring, CAPACITY + 4096);
        map.u64_at(PRODUCER_WAKEUPS)
            .store(u64::MAX, Ordering::SeqCst);
        map.u64_at(WRITE_POS).store(1 << 50, Ordering::SeqCst);
        maps.push(map);
    }
    for consumer in &consumers {
        let map = Mapping::new(consumer.lanes()[0].ack, 4096);
        map.u64_at(ACK_WAKEUPS).store(u64::MAX, Ordering::SeqCst);
        maps.push(map);
    }
    let info = broker.info("scribbled");
    broker.assert_running();
    assert_eq!(json_u64(&info, "wakeups"), u64::MAX, "{info}");
    assert_eq!(json_u64(&info, "fullest_ring_bytes"), CAPACITY, "{info}");
    let top = broker.ctl_ok(&["top", "--once", "--interval", "0.1"]);
    let row = top_row(&top, "scribbled");
    assert_eq!(row[5], "100%", "fill is at most 100%:\n{top}");
    assert_eq!(
        row[9], "0",
        "a counter stuck at the maximum moves 0 per second:\n{top}"
    );
    let metrics = broker.ctl_ok(&["metrics"]);
    assert!(
        metrics.contains("shmem_broker_channel_ring_fill_ratio{channel=\"scribbled\"} 1.0"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "shmem_broker_channel_wakeups_total{{channel=\"scribbled\"}} {}",
            u64::MAX
        )),
        "{metrics}"
    );
    broker.assert_running();
}

#[test]
fn progress_goes_to_stderr_only_with_the_flag_and_never_into_the_data() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "pipe", "--capacity", "64KiB"]);
    let dir = temp_dir();
    let input = dir.path().join("input");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(&input, &data).expect("write input");
    for progress in [true, false] {
        let flag: &[&str] = if progress { &["--progress"] } else { &[] };
        let output = dir.path().join(format!("output-{progress}"));
        let mut recv_args = vec!["recv", "pipe"];
        recv_args.extend(flag);
        let mut recv = broker.spawn_ctl(
            &recv_args,
            Stdio::null(),
            Some(Stdio::from(fs::File::create(&output).expect("create"))),
        );
        broker.wait_for_peer("pipe", recv.pid(), "consumer");
        let mut send_args = vec!["send", "pipe"];
        send_args.extend(flag);
        let mut send = broker.spawn_ctl(
            &send_args,
            Stdio::from(fs::File::open(&input).expect("open input")),
            None,
        );
        let sent = send.output(WAIT);
        let received = recv.output(WAIT);
        sent.expect_success();
        received.expect_success();
        assert!(
            fs::read(&output).expect("read output") == data,
            "stdout carried exactly the data (progress={progress})"
        );
        if progress {
            // The size is known (a file on stdin): the bar has the total and the ETA.
            let last = sent.stderr.lines().last().unwrap_or_default();
            assert!(
                last.starts_with("send pipe") && last.contains("2.86 MiB/2.86 MiB"),
                "{sent}"
            );
            assert!(sent.stderr.contains("ETA"), "{sent}");
            let last = received.stderr.lines().last().unwrap_or_default();
            assert!(
                last.starts_with("recv pipe") && last.contains("2.86 MiB"),
                "{received}"
            );
            for out in [&sent, &received] {
                assert!(!out.stderr.contains('\x1b'), "no escape sequences: {out}");
            }
        } else {
            assert_eq!(sent.stderr, "", "no terminal, no --progress: {sent}");
            assert_eq!(
                received.stderr, "",
                "no terminal, no --progress: {received}"
            );
        }
    }
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn the_metrics_timer_writes_the_textfile_under_a_real_systemd() {
    use shmem_broker_tests::systemd::{
        rewrite_unit_line, service_reachable_binary, LabBroker, SystemdLab, SOCKET,
    };
    require_root();
    let lab = SystemdLab::boot();
    let broker = LabBroker::install(&lab, "version = 1\n");
    lab.systemctl_ok(&["start", SOCKET]);
    broker.ctl_ok(&["create", "watched"]);
    // The project's units, every hardening line kept; only ExecStart= points at the built
    // shmemctl and the lab's socket.
    let ctl = service_reachable_binary(&lab, &ctl_bin());
    let units = workspace_dir().join("systemd");
    let service = fs::read_to_string(units.join("shmem-broker-metrics.service")).expect("read");
    let service = rewrite_unit_line(
        &service,
        "ExecStart=",
        &format!(
            "ExecStart={} --socket {} metrics --textfile %t/shmem-broker-metrics",
            ctl.display(),
            broker.socket().display()
        ),
    );
    let timer = fs::read_to_string(units.join("shmem-broker-metrics.timer")).expect("read");
    lab.install_unit("shmem-broker-metrics.service", &service);
    lab.install_unit("shmem-broker-metrics.timer", &timer);
    lab.daemon_reload();
    lab.systemctl_ok(&["start", "shmem-broker-metrics.timer"]);
    let file = "/run/shmem-broker-metrics/shmem_broker.prom";
    let text = wait_for(WAIT, "the timer's first run to write the textfile", || {
        let out = lab.run(&["cat", file], Stdio::null(), CTL_TIMEOUT);
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(format!("{out}"))
        }
    });
    assert!(
        text.contains("shmem_broker_channel_messages_total{channel=\"watched\"} 0"),
        "{text}"
    );
    // Readable by node_exporter (another user), in a directory it can enter.
    let modes = lab.run(
        &[
            "stat",
            "-c",
            "%a %F %U %n",
            "/run/shmem-broker-metrics",
            file,
        ],
        Stdio::null(),
        CTL_TIMEOUT,
    );
    assert_eq!(
        modes.expect_success(),
        format!(
            "755 directory shmem-broker-metrics /run/shmem-broker-metrics\n\
             644 regular file shmem-broker-metrics {file}\n"
        )
    );
    let result = lab.show("shmem-broker-metrics.service", "Result");
    assert_eq!(result.trim(), "success");
}

#[test]
fn top_on_a_terminal_is_full_screen_sorts_on_a_key_and_quits_on_q() {
    // A real pseudo-terminal: script(1) runs top on one and forwards our keys to it.
    let script = require_tool("script", "bsdutils");
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "on-screen"]);
    let command = format!(
        "stty cols 120 rows 20; {} --socket {} top",
        ctl_bin().display(),
        broker.socket_path().display()
    );
    let mut cmd = Command::new(script);
    cmd.args(["-qfec", &command, "/dev/null"]);
    let mut top = Proc::start(cmd, "top-on-a-pty", broker.dir(), Stdio::piped(), None);
    let mut keys = top.take_stdin().expect("script's stdin");
    use std::io::Write as _;
    std::thread::sleep(Duration::from_millis(1500));
    keys.write_all(b"b").expect("press b");
    keys.flush().expect("flush");
    std::thread::sleep(Duration::from_millis(500));
    keys.write_all(b"q").expect("press q");
    keys.flush().expect("flush");
    let out = top.output(WAIT);
    let screen = out.expect_success();
    assert!(
        screen.contains("\x1b[?1049h"),
        "entered the alternate screen:\n{out}"
    );
    assert!(
        screen.contains("on-screen"),
        "drew the channel's row:\n{out}"
    );
    // ratatui redraws only the cells that changed: on `b` the sort mark leaves column 8 of
    // the header row (right after CHANNEL) and lands after BYTES/S.
    assert!(screen.contains("CHANNELv"), "sorted by name first:\n{out}");
    assert!(
        screen.contains("\x1b[2;8H\x1b[7m "),
        "b moved the sort mark off CHANNEL:\n{out}"
    );
    let moved_to = screen.split("\x1b[2;").skip(1).find_map(|rest| {
        let (column, cell) = rest.split_once('H')?;
        (cell.starts_with('v') && column != "8").then(|| column.to_string())
    });
    assert!(
        moved_to.is_some(),
        "b put the sort mark on another column:\n{out}"
    );
    assert!(
        screen.contains("\x1b[?1049l"),
        "left the alternate screen on q:\n{out}"
    );
}

/// One HTTP/1.1 GET of `path` from `addr`: the whole response as text.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to shmemctl metrics");
    stream
        .set_read_timeout(Some(CTL_TIMEOUT))
        .expect("read timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    response
}

#[test]
fn metrics_over_http_on_loopback_only_and_a_silent_client_holds_nobody_up() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "served"]);
    let refused = broker.ctl(&["metrics", "--listen", "0.0.0.0:9477"]);
    refused.expect_error(&["--listen 0.0.0.0:9477", "only a loopback address"]);

    let mut server = broker.spawn_ctl(&["metrics", "--listen", "127.0.0.1:0"], Stdio::null(), None);
    let addr = wait_for(WAIT, "shmemctl to say where it listens", || {
        let said = server.stderr_text();
        said.lines()
            .find_map(|l| l.strip_prefix("shmemctl: serving http://"))
            .and_then(|rest| rest.strip_suffix("/metrics"))
            .map(String::from)
            .ok_or(said)
    });
    // A client that connects and never sends a request: the next scrape is answered all the
    // same, once the server has given up on it (2 s).
    let _silent = std::net::TcpStream::connect(&addr).expect("connect");
    let started = std::time::Instant::now();
    let response = http_get(&addr, "/metrics");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a silent client held the scrape up for {:?}",
        started.elapsed()
    );
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(head.contains("application/openmetrics-text"), "{response}");
    let dir = temp_dir();
    let file = dir.path().join("scraped.txt");
    fs::write(&file, body).expect("write the body");
    let samples = parse_exposition(dir.path(), "openmetrics", &file);
    assert_eq!(
        sample(&samples, "shmem_broker_channel_producers", Some("served")),
        0.0
    );
    assert_eq!(sample(&samples, "shmem_broker_channels", None), 1.0);
    // Anything but /metrics: 404; an endless head: refused without reading it all.
    assert!(http_get(&addr, "/").starts_with("HTTP/1.1 404"));
    let long = format!("/metrics?{}", "x".repeat(20_000));
    assert!(http_get(&addr, &long).starts_with("HTTP/1.1 431"));
    assert!(server.is_running(), "{}", server.stderr_text());
}
