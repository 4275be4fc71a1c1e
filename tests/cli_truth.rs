//! shmemctl in a pipeline (issue 17): an end-of-stream only for a producer that finished,
//! never a silent wait, errors said once about the right thing, input checked alike, counts
//! that read right. Every test runs the real shmemctl against a real broker and checks its exit
//! code and its one line of stderr.
//!
//! One file of about 750 lines on purpose: its length is 25 independent cases of one area
//! (shmemctl at either end of a pipeline), sharing a few helpers.

use shmem_broker_tests::*;
use std::fs::File;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A file holding `bytes`, to be a command's standard input.
fn input_file(dir: &Path, name: &str, bytes: &[u8]) -> Stdio {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write an input file");
    Stdio::from(File::open(&path).expect("open the input file"))
}

/// `shmemctl send CHANNEL` with `bytes` as its input, to completion.
fn send(broker: &Broker, channel: &str, bytes: &[u8], extra: &[&str]) -> CmdOutput {
    let mut cmd = broker.ctl_command();
    cmd.args(["send", channel]).args(extra);
    let stdin = input_file(broker.dir(), &format!("{channel}.in"), bytes);
    run(cmd, "shmemctl-send", broker.dir(), stdin, CTL_TIMEOUT)
}

/// `bytes_written` of a channel as `info --json` says, once it reaches `want`.
fn wait_for_bytes_written(broker: &Broker, channel: &str, want: u64) {
    wait_for(WAIT, format!("{want} bytes written to {channel}"), || {
        let info = broker.info(channel);
        match json_u64(&info, "bytes_written") {
            got if got >= want => Ok(()),
            _ => Err(info.to_string()),
        }
    });
}

#[test]
fn a_send_that_fails_leaves_no_end_of_stream_and_recv_says_so() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "eos1", "--capacity", "64KiB"]);
    // The chunk cannot fit: send fails after attaching, before writing anything.
    send(&broker, "eos1", b"hi\n", &["--chunk", "1MiB"]).expect_error(&["does not fit"]);
    let out = broker.ctl(&["recv", "eos1"]);
    out.expect_error(&["went away without end-of-stream after 0 bytes"]);
    assert_eq!(out.status.code(), Some(1), "{out}");

    // Reading a directory fails: same story, and recv says so instead of exiting 0.
    broker.ctl_ok(&["create", "eos2", "--capacity", "64KiB"]);
    let mut cmd = broker.ctl_command();
    cmd.args(["send", "eos2"]);
    let dir = Stdio::from(File::open("/tmp").expect("open /tmp"));
    run(cmd, "shmemctl-send", broker.dir(), dir, CTL_TIMEOUT)
        .expect_error(&["reading standard input", "Is a directory"]);
    let out = broker.ctl(&["recv", "eos2"]);
    out.expect_error(&["producer pid", "went away without end-of-stream"]);
    assert!(out.stdout.is_empty(), "{out}");

    // A send that finishes is still a clean end of stream.
    send(&broker, "eos2", b"fine\n", &[]).expect_success();
    let out = broker.ctl(&["recv", "eos2"]);
    assert_eq!(out.expect_success(), "fine\n", "{out}");
}

/// 768 KiB through a pipe, then the sender is stopped by `signal`: recv gets every byte and
/// then fails naming the sender's pid and the byte count. Returns the sender's pid and
/// output, recv's output and the bytes it wrote.
fn interrupted_sender(signal: libc::c_int) -> (u32, CmdOutput, CmdOutput, u64) {
    const SENT: usize = 786_432;
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "cut", "--capacity", "1MiB"]);
    let output = broker.dir().join("received.bin");
    let mut receiver = broker.spawn_ctl(
        &["recv", "cut"],
        Stdio::null(),
        Some(Stdio::from(File::create(&output).expect("create output"))),
    );
    broker.wait_for_peer("cut", receiver.pid(), "consumer");
    let mut sender = broker.spawn_ctl(&["send", "cut"], Stdio::piped(), None);
    let mut pipe = sender.take_stdin().expect("sender stdin");
    pipe.write_all(&vec![7u8; SENT]).expect("feed the sender");
    // The pipe stays open: the sender is mid-stream when the signal comes.
    wait_for_bytes_written(&broker, "cut", SENT as u64);
    sender.signal(signal);
    let said = sender.output(WAIT);
    let out = receiver.output(WAIT);
    let received = std::fs::metadata(&output).expect("output").len();
    drop(pipe);
    (sender.pid(), said, out, received)
}

#[test]
fn an_interrupted_send_says_how_far_it_got_and_recv_names_its_pid() {
    let (sender, said, out, received) = interrupted_sender(libc::SIGINT);
    said.expect_error(&["send to cut interrupted by SIGINT after 786432 bytes (768KiB)"]);
    assert_eq!(said.status.code(), Some(130), "{said}");
    out.expect_error(&[&format!(
        "producer pid {} went away without end-of-stream after 786432 bytes",
        sender
    )]);
    assert_eq!(received, 786_432, "recv delivers everything before failing");
}

#[test]
fn a_killed_send_makes_recv_fail_instead_of_hanging() {
    let (sender, _, out, received) = interrupted_sender(libc::SIGKILL);
    out.expect_error(&[&format!(
        "producer pid {} went away without end-of-stream after 786432 bytes",
        sender
    )]);
    assert_eq!(received, 786_432);
}

#[test]
fn recv_follow_waits_for_the_next_producer_after_one_went_away() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "tail", "--capacity", "64KiB"]);
    let mut receiver = broker.spawn_ctl(&["recv", "tail", "--follow"], Stdio::null(), None);
    broker.wait_for_peer("tail", receiver.pid(), "consumer");
    send(&broker, "tail", b"x", &["--chunk", "1MiB"]).expect_error(&["does not fit"]);
    wait_for(WAIT, "recv --follow to report the producer", || {
        let stderr = receiver.stderr_text();
        if stderr.contains("went away without end-of-stream") {
            Ok(stderr)
        } else {
            Err(stderr)
        }
    });
    assert!(receiver.is_running(), "--follow keeps waiting");
    send(&broker, "tail", b"next\n", &[]).expect_success();
    wait_for(WAIT, "the next producer's data", || {
        match receiver.stdout_text().as_str() {
            "next\n" => Ok(()),
            other => Err(other.to_string()),
        }
    });
    receiver.signal(libc::SIGTERM);
    let out = receiver.output(WAIT);
    assert_eq!(out.status.code(), Some(143), "{out}");
    assert!(
        out.stderr
            .contains("recv from tail interrupted by SIGTERM after 5 bytes (5B) in 1 message"),
        "{out}"
    );
}

#[test]
fn send_skip_and_recv_max_bytes_resume_and_cut() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "part", "--capacity", "64KiB"]);
    send(&broker, "part", b"abcdef", &["--skip", "2"]).expect_success();
    let out = broker.ctl(&["recv", "part", "--max-bytes", "3"]);
    assert_eq!(out.expect_success(), "cde", "{out}");
    send(&broker, "part", b"ab", &["--skip", "5"]).expect_error(&["--skip 5", "only 2 bytes"]);
}

#[test]
fn a_missing_broker_is_said_once() {
    let logs = temp_dir();
    let mut cmd = Command::new(ctl_bin());
    cmd.args(["--socket", "/nonexistent/x.sock", "list"]);
    let out = run(cmd, "shmemctl", logs.path(), Stdio::null(), CTL_TIMEOUT);
    let line = out.expect_error(&["broker not running at /nonexistent/x.sock"]);
    assert_eq!(
        line.matches("No such file or directory").count(),
        1,
        "the cause once: {line}"
    );
}

#[test]
fn a_full_stdout_is_blamed_not_shared_memory() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "full", "--capacity", "64KiB"]);
    send(&broker, "full", b"data\n", &[]).expect_success();
    let full = File::options()
        .write(true)
        .open("/dev/full")
        .expect("open /dev/full");
    let mut receiver = broker.spawn_ctl(&["recv", "full"], Stdio::null(), Some(Stdio::from(full)));
    let out = receiver.output(WAIT);
    let line = out.expect_error(&["writing standard output", "No space left on device"]);
    assert!(!line.contains("shared memory"), "{line}");
}

/// A pipe whose reading end is already closed, as stdout of `head -1` after it exits.
fn closed_pipe() -> Stdio {
    let (read, write) = rustix::pipe::pipe().expect("pipe");
    drop(read);
    Stdio::from(write)
}

#[test]
fn a_closed_stdout_ends_quietly_like_coreutils() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "piped", "--capacity", "64KiB"]);
    send(&broker, "piped", b"data\n", &[]).expect_success();
    for args in [&["list"][..], &["recv", "piped"]] {
        let mut ctl = broker.spawn_ctl(args, Stdio::null(), Some(closed_pipe()));
        let status = ctl.wait_exit(WAIT);
        assert_eq!(
            status.signal(),
            Some(libc::SIGPIPE),
            "`shmemctl {args:?}` into a closed pipe ends by SIGPIPE ({status}); stderr: {}",
            ctl.stderr_text()
        );
        assert_eq!(ctl.stderr_text(), "", "quietly");
    }
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn permission_denied_names_the_socket_group() {
    require_root();
    let broker = Broker::start(Some("version = 1\nsocket_mode = \"0660\"\n"));
    let out = broker.ctl_as(NOBODY, &["list"]);
    let line = out.expect_error(&["permission denied on the broker socket", "group root"]);
    assert!(
        line.contains("ask an admin to add you to group root"),
        "{line}"
    );
    assert_eq!(line.matches("ermission denied").count(), 1, "{line}");
}

#[test]
fn sizes_names_and_counts_are_checked_alike() {
    let broker = Broker::start(None);
    broker
        .ctl(&["create", "x", "--capacity", "16MB"])
        .expect_usage_error(&["SI unit", "KiB, MiB"]);
    broker
        .ctl(&["create", "x", "--capacity", "1.5GiB"])
        .expect_usage_error(&["decimals are not allowed"]);
    broker
        .ctl(&["send", "x", "--chunk", "0"])
        .expect_usage_error(&["at least 1 byte"]);
    broker
        .ctl(&["recv", "x", "--streams", "0"])
        .expect_usage_error(&["--streams"]);
    broker
        .ctl(&["create", "--", "-x"])
        .expect_error(&["invalid channel name \"-x\": may not start with '-'"]);
    broker
        .ctl(&["create", ".x"])
        .expect_error(&["may not start with '.'"]);
    broker
        .ctl(&["recv", "x", "--as", "bad name"])
        .expect_error(&["invalid consumer name \"bad name\""]);
    // The broker refuses them too, whoever asks.
    let refused = broker
        .client()
        .channel(".hidden")
        .create()
        .expect_err("a name starting with '.'");
    assert!(
        refused.to_string().contains("may not start with '.'"),
        "{refused}"
    );

    let made = broker.ctl_ok(&["create", "fan", "--max-consumers", "2"]);
    assert!(made.contains("up to 1 producer and 2 consumers"), "{made}");
}

#[test]
fn help_describes_json_and_positionals() {
    let broker = Broker::start(None);
    let list = broker.ctl_ok(&["list", "--help"]);
    assert!(
        list.contains("--json") && list.contains("Print JSON"),
        "{list}"
    );
    let info = broker.ctl_ok(&["info", "--help"]);
    assert!(info.contains("The channel to describe"), "{info}");
    let top = broker.ctl_ok(&["--help"]);
    assert!(top.contains("SI units (16MB)"), "{top}");
}

#[test]
fn list_counts_peers_so_64_stay_readable() {
    let broker = Broker::start(None);
    broker.ctl_ok(&[
        "create",
        "wide",
        "--max-consumers",
        "64",
        "--capacity",
        "4KiB",
    ]);
    let client = broker.client();
    let consumers: Vec<_> = (0..64)
        .map(|_| client.consumer("wide").expect("consumer"))
        .collect();
    let list = broker.ctl_ok(&["list"]);
    let row = list
        .lines()
        .find(|l| l.starts_with("wide "))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(row.contains(" 0/1 ") && row.contains(" 64/64 "), "{row}");
    assert!(row.len() < 80, "one narrow row: {row}");
    drop(consumers);
}

#[test]
fn a_blocked_sender_says_whom_it_waits_for() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "stuck", "--capacity", "64KiB"]);
    let input = input_file(broker.dir(), "big.in", &vec![1u8; 256 << 10]);
    let mut sender = broker.spawn_ctl(&["send", "stuck", "--verbose"], input, None);
    wait_for(
        Duration::from_secs(15),
        "the blocked sender's notice",
        || {
            let stderr = sender.stderr_text();
            if stderr.contains("waiting for a consumer to attach") {
                Ok(())
            } else {
                Err(stderr)
            }
        },
    );
    sender.signal(libc::SIGINT);
    let out = sender.output(WAIT);
    assert_eq!(out.status.code(), Some(130), "{out}");
    assert_eq!(
        out.stderr.matches("waiting for").count(),
        1,
        "said once: {out}"
    );
}

#[test]
fn status_shows_the_last_reload_and_why_it_was_rejected() {
    let mut broker = Broker::start(Some("version = 1\n"));
    let status = broker.ctl_ok(&["status"]);
    assert!(!status.contains("reload:"), "no reload yet: {status}");
    std::fs::write(broker.config_path(), "version = 1\n\nfrobnicate = true\n").expect("config");
    broker.proc_mut().signal(libc::SIGHUP);
    let location = format!("{}:3:", broker.config_path().display());
    let status = wait_for(WAIT, "status to show the rejected reload", || {
        let status = broker.ctl_ok(&["status"]);
        match status.lines().find(|l| l.starts_with("reload:")) {
            Some(line) if line.contains("rejected") => Ok(line.to_string()),
            _ => Err(status),
        }
    });
    assert!(
        status.contains(" UTC: rejected") && status.contains(&location),
        "{status}"
    );
    std::fs::write(broker.config_path(), "version = 1\n").expect("config");
    broker.proc_mut().signal(libc::SIGHUP);
    wait_for(WAIT, "status to show the good reload", || {
        let status = broker.ctl_ok(&["status"]);
        if status.contains(" UTC: ok") {
            Ok(())
        } else {
            Err(status)
        }
    });
}

#[test]
fn a_fanout_producer_killed_mid_stream_ends_its_stream_badly() {
    const SENT: usize = 196_608;
    let broker = Broker::start(None);
    broker.ctl_ok(&[
        "create",
        "fan",
        "--max-producers",
        "2",
        "--capacity",
        "1MiB",
    ]);
    let mut receiver = broker.spawn_ctl(&["recv", "fan", "--streams", "2"], Stdio::null(), None);
    broker.wait_for_peer("fan", receiver.pid(), "consumer");
    send(&broker, "fan", b"clean\n", &[]).expect_success();
    let mut sender = broker.spawn_ctl(&["send", "fan"], Stdio::piped(), None);
    let mut pipe = sender.take_stdin().expect("sender stdin");
    pipe.write_all(&vec![7u8; SENT]).expect("feed the sender");
    wait_for_bytes_written(&broker, "fan", (SENT + 6) as u64);
    sender.kill9();
    let out = receiver.output(WAIT);
    out.expect_error(&[&format!(
        "producer pid {} went away without end-of-stream after {SENT} bytes",
        sender.pid()
    )]);
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert_eq!(
        out.stdout.len(),
        SENT + 6,
        "everything before the end is delivered"
    );
    drop(pipe);
}

#[test]
fn recv_on_a_dropped_channel_says_so() {
    let broker = Broker::start(None);
    for args in [
        &["create", "gone1"][..],
        &["create", "gone2", "--max-producers", "2"],
    ] {
        broker.ctl_ok(args);
        let name = args[1];
        let mut receiver = broker.spawn_ctl(&["recv", name], Stdio::null(), None);
        broker.wait_for_peer(name, receiver.pid(), "consumer");
        broker.ctl_ok(&["drop", name]);
        let out = receiver.output(WAIT);
        out.expect_error(&[&format!("channel dropped: {name}")]);
        assert_eq!(out.status.code(), Some(1), "{out}");
    }
}

#[test]
fn an_interrupted_recv_reports_exactly_what_stdout_took() {
    const SENT: usize = 786_432;
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "count", "--capacity", "1MiB"]);
    let output = broker.dir().join("received.bin");
    let mut receiver = broker.spawn_ctl(
        &["recv", "count"],
        Stdio::null(),
        Some(Stdio::from(File::create(&output).expect("create output"))),
    );
    broker.wait_for_peer("count", receiver.pid(), "consumer");
    let mut sender = broker.spawn_ctl(&["send", "count", "--chunk", "4KiB"], Stdio::piped(), None);
    let mut pipe = sender.take_stdin().expect("sender stdin");
    pipe.write_all(&vec![7u8; SENT]).expect("feed the sender");
    wait_for(
        WAIT,
        "recv to write everything",
        || match std::fs::metadata(&output).map(|m| m.len()) {
            Ok(len) if len == SENT as u64 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    receiver.signal(libc::SIGINT);
    let out = receiver.output(WAIT);
    assert_eq!(out.status.code(), Some(130), "{out}");
    out.expect_error(&[
        "recv from count interrupted by SIGINT after 786432 bytes (768KiB) in 192 messages",
    ]);
    sender.signal(libc::SIGKILL);
    drop(pipe);
}

/// The row of `list` for `channel`.
fn list_row(broker: &Broker, channel: &str) -> String {
    let list = broker.ctl_ok(&["list"]);
    list.lines()
        .find(|l| l.starts_with(&format!("{channel} ")))
        .unwrap_or_else(|| panic!("no row for {channel}: {list}"))
        .to_string()
}

#[test]
fn fanout_totals_survive_the_consumers_leaving() {
    const MIB: usize = 1 << 20;
    let broker = Broker::start(None);
    broker.ctl_ok(&[
        "create",
        "wide",
        "--max-consumers",
        "2",
        "--capacity",
        "1MiB",
    ]);
    let output = |n| broker.dir().join(format!("out{n}.bin"));
    let receivers: Vec<Proc> = (0..2)
        .map(|n| {
            let out = File::create(output(n)).expect("create output");
            let receiver =
                broker.spawn_ctl(&["recv", "wide"], Stdio::null(), Some(Stdio::from(out)));
            broker.wait_for_peer("wide", receiver.pid(), "consumer");
            receiver
        })
        .collect();
    send(&broker, "wide", &vec![5u8; 20 * MIB], &["--chunk", "64KiB"]).expect_success();
    for (n, mut receiver) in receivers.into_iter().enumerate() {
        receiver.output(WAIT).expect_success();
        assert_eq!(
            std::fs::metadata(output(n)).expect("output").len(),
            20 * MIB as u64
        );
    }
    let info = broker.info("wide");
    assert!(
        info["peers"].as_array().is_some_and(|p| p.is_empty()),
        "{info}"
    );
    assert_eq!(json_u64(&info, "bytes_written"), 20 * MIB as u64, "{info}");
    assert_eq!(json_u64(&info, "messages_written"), 320, "{info}");
    assert_eq!(
        json_u64(&info, "messages_read"),
        640,
        "both consumers' reads: {info}"
    );
    assert_eq!(json_u64(&info, "bytes_unread"), 0, "{info}");
    let row = list_row(&broker, "wide");
    let fields: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(fields[fields.len() - 3..], ["320", "20MiB", "0B"], "{row}");
}

#[test]
fn end_of_stream_marks_are_not_unread_payload() {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "marks", "--capacity", "64KiB"]);
    send(&broker, "marks", b"", &[]).expect_success();
    let info = broker.info("marks");
    assert_eq!(json_u64(&info, "bytes_unread"), 0, "only a mark: {info}");
    send(&broker, "marks", b"abc", &[]).expect_success();
    let info = broker.info("marks");
    assert_eq!(json_u64(&info, "bytes_written"), 3, "{info}");
    assert_eq!(
        json_u64(&info, "bytes_unread"),
        3,
        "the message, not its frame or the marks: {info}"
    );
    let row = list_row(&broker, "marks");
    let fields: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        fields[fields.len() - 2..],
        ["3B", "3B"],
        "written, unread: {row}"
    );
}

#[test]
fn recv_says_when_the_broker_stopped_for_good() {
    let mut broker = Broker::start(None);
    broker.ctl_ok(&["create", "orphan", "--capacity", "64KiB"]);
    let mut receiver = broker.spawn_ctl(&["recv", "orphan"], Stdio::null(), None);
    broker.wait_for_peer("orphan", receiver.pid(), "consumer");
    broker.proc_mut().signal(libc::SIGTERM);
    broker.proc_mut().wait_exit(WAIT);
    let out = receiver.output(Duration::from_secs(15));
    out.expect_error(&[
        "recv from orphan: the broker at",
        "stopped and did not come back within 5s",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out}");
}

#[test]
fn recv_across_a_broker_restart_says_what_became_of_its_channel() {
    let mut broker = Broker::start(None);
    broker.ctl_ok(&["create", "fleeting", "--capacity", "64KiB"]);
    let mut receiver = broker.spawn_ctl(&["recv", "fleeting"], Stdio::null(), None);
    broker.wait_for_peer("fleeting", receiver.pid(), "consumer");
    broker.proc_mut().signal(libc::SIGTERM);
    broker.proc_mut().wait_exit(WAIT);
    // Back within the grace period, without the runtime channel (no fd store here).
    broker.restart();
    let out = receiver.output(Duration::from_secs(15));
    out.expect_error(&["channel dropped: fleeting"]);
}

#[test]
fn a_lost_end_of_stream_mark_is_said_with_the_messages_missed() {
    const CHUNK: usize = 4096;
    const MESSAGES: usize = 64;
    let broker = Broker::start(None);
    broker.ctl_ok(&[
        "create",
        "lossy",
        "--max-consumers",
        "2",
        "--slow-consumer",
        "drop",
        "--capacity",
        "64KiB",
    ]);
    let mut receiver = broker.spawn_ctl(&["recv", "lossy"], Stdio::null(), None);
    broker.wait_for_peer("lossy", receiver.pid(), "consumer");
    // The consumer stops reading: its ring fills, the rest and the end-of-stream mark drop.
    receiver.signal(libc::SIGSTOP);
    send(
        &broker,
        "lossy",
        &vec![3u8; CHUNK * MESSAGES],
        &["--chunk", "4KiB"],
    )
    .expect_success();
    receiver.signal(libc::SIGCONT);
    let out = receiver.output(WAIT);
    let delivered = out.stdout.len() / CHUNK;
    assert!(delivered > 0 && delivered < MESSAGES, "{out}");
    out.expect_error(&[&format!(
        "finished, but its end-of-stream mark was lost (ring full, slow_consumer = drop) with {} messages missed",
        MESSAGES - delivered
    )]);
    assert_eq!(out.status.code(), Some(1), "{out}");
}

/// Waits until a running `shmemctl monitor` printed a line with all of `needles`.
fn wait_for_line(monitor: &Proc, needles: &[&str]) -> String {
    wait_for(WAIT, format!("a monitor line with {needles:?}"), || {
        let text = monitor.stdout_text();
        match text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            Some(line) => Ok(line.to_string()),
            None => Err(text),
        }
    })
}

/// Until `monitor` shows it is subscribed: consumers of `channel` come and go meanwhile.
fn wait_until_watching(broker: &Broker, monitor: &Proc, channel: &str) {
    let client = broker.client();
    wait_for(WAIT, "the monitor to subscribe", || {
        drop(client.consumer(channel).expect("consumer"));
        let text = monitor.stdout_text();
        if text.contains(&format!("attach channel={channel}"))
            || text.contains(&format!("\"what\":\"attach\",\"channel\":\"{channel}\""))
        {
            Ok(())
        } else {
            Err(text)
        }
    });
}

#[test]
fn monitor_prints_attach_detach_loss_reload_and_drop_as_they_happen() {
    let broker = Broker::start(Some("version = 1\n"));
    broker.ctl_ok(&["create", "seen", "--capacity", "64KiB"]);
    broker.ctl_ok(&[
        "create",
        "lossy",
        "--max-consumers",
        "2",
        "--slow-consumer",
        "drop",
        "--capacity",
        "64KiB",
    ]);
    let monitor = broker.spawn_ctl(&["monitor"], Stdio::null(), None);
    wait_until_watching(&broker, &monitor, "seen");

    send(&broker, "seen", b"hello\n", &[]).expect_success();
    wait_for_line(
        &monitor,
        &["attach channel=seen role=producer pid=", "uid=0"],
    );
    wait_for_line(&monitor, &["detach channel=seen role=producer"]);

    // A consumer that never reads loses what does not fit.
    let stalled = broker.client().consumer("lossy").expect("consumer");
    send(
        &broker,
        "lossy",
        &vec![1u8; 256 << 10],
        &["--chunk", "4KiB"],
    )
    .expect_success();
    wait_for_line(&monitor, &["loss channel=lossy count="]);
    drop(stalled);

    // A rejected reload, whose error quotes the file: one line, escaped (the broker's error
    // quotes the key escaped already; shmemctl escapes what it prints again).
    std::fs::write(broker.config_path(), "version = 1\n\"evil\u{1b}[2J\" = 1\n").expect("config");
    let mut broker = broker;
    broker.proc_mut().signal(libc::SIGHUP);
    let line = wait_for_line(&monitor, &["reload (rejected:"]);
    assert!(!line.contains('\u{1b}'), "escaped: {line:?}");

    broker.ctl_ok(&["drop", "seen"]);
    wait_for_line(&monitor, &["drop channel=seen pid="]);

    let json = broker.spawn_ctl(&["monitor", "lossy", "--json"], Stdio::null(), None);
    wait_until_watching(&broker, &json, "lossy");
    let text = json.stdout_text();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines"))
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "monitor" && e["what"] == "attach" && e["channel"] == "lossy"),
        "{text}"
    );
    assert!(!text.contains("seen"), "only channel lossy: {text}");
}

#[test]
fn a_monitor_that_never_reads_does_not_hold_up_the_broker() {
    let broker = Broker::start(None);
    broker.ctl_ok(&[
        "create",
        "busy",
        "--capacity",
        "4KiB",
        "--max-consumers",
        "64",
    ]);
    let client = broker.client();
    let monitor = client.monitor(None).expect("monitor");
    // Thousands of events the monitor does not read: far more than the socket holds.
    for _ in 0..2000 {
        drop(client.consumer("busy").expect("consumer"));
    }
    // The broker answers others at once.
    broker.ctl_ok(&["list"]);
    // Once it reads, the monitor learns it missed events.
    let (tx, rx) = std::sync::mpsc::channel();
    let mut monitor = monitor;
    std::thread::spawn(move || {
        while let Ok(Some(event)) = monitor.next_event() {
            if tx.send(event).is_err() {
                break;
            }
        }
    });
    let dropped = wait_for(WAIT, "a monitor_dropped event", || {
        drop(client.consumer("busy").expect("consumer"));
        while let Ok(event) = rx.try_recv() {
            if let shmem_broker_client::wire::Event::MonitorDropped { count } = event {
                return Ok(count);
            }
        }
        Err("none yet".to_string())
    });
    assert!(dropped > 0);
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn a_monitor_sees_only_channels_its_user_may_attach_to() {
    require_root();
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "open", "--consumers", "*"]);
    broker.ctl_ok(&["create", "secret"]);
    let monitor = broker.spawn_ctl_as(NOBODY, &["monitor"], Stdio::null());
    wait_until_watching(&broker, &monitor, "open");
    let client = broker.client();
    drop(client.consumer("secret").expect("consumer"));
    // Events are told in order: once this one shows, the one before was judged.
    drop(client.producer("open").expect("producer"));
    wait_for_line(&monitor, &["attach channel=open role=producer"]);
    let text = monitor.stdout_text();
    assert!(
        !text.contains("secret"),
        "uid {NOBODY} may not watch channel secret: {text}"
    );
}
