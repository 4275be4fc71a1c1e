//! The C library from a C programmer's side: `systemd/install.sh` stages the library, header
//! and pkg-config file, the system C compiler builds the two example programs against them
//! through `pkg-config`, and they move 64 MiB to `shmemctl`, from it and to each other (SHA-256
//! checked; zero-copy loans and borrowed receives, and copies), then run under valgrind with no
//! leak and no invalid access; `tests/c/api_check.c` goes through the rest of the API
//! (non-blocking calls, pollable fds, batches, argument checks, create/list/drop).

use shmem_broker_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const SIXTY_FOUR_MIB: u64 = 64 << 20;

/// The staged installation and the two compiled examples.
struct Built {
    _stage: tempfile::TempDir,
    lib_dir: PathBuf,
    send: PathBuf,
    recv: PathBuf,
    api_check: PathBuf,
}

fn build_examples() -> Built {
    let cc = require_tool("cc", "gcc");
    require_tool("pkg-config", "pkg-config");
    let stage = temp_dir();
    let install = Command::new("bash")
        .arg(workspace_dir().join("systemd/install.sh"))
        .args(["--prefix", "/usr/local", "--from"])
        .arg(bin_dir())
        .env("DESTDIR", stage.path())
        .output()
        .expect("run systemd/install.sh");
    assert!(
        install.status.success(),
        "install.sh failed: {}{}",
        String::from_utf8_lossy(&install.stdout),
        String::from_utf8_lossy(&install.stderr)
    );
    let root = stage.path().join("usr/local");
    for file in [
        "include/shmem_broker.h",
        "lib/libshmem_broker.so",
        "lib/libshmem_broker.a",
        "lib/pkgconfig/shmem-broker.pc",
    ] {
        assert!(root.join(file).is_file(), "install.sh installs {file}");
    }
    // A staged install: pkg-config prefixes the paths in the .pc file with the stage.
    let flags = Command::new("pkg-config")
        .args(["--cflags", "--libs", "shmem-broker"])
        .env("PKG_CONFIG_PATH", root.join("lib/pkgconfig"))
        .env("PKG_CONFIG_SYSROOT_DIR", stage.path())
        .output()
        .expect("run pkg-config");
    assert!(flags.status.success(), "pkg-config: {flags:?}");
    let flags = String::from_utf8(flags.stdout).expect("pkg-config output is UTF-8");
    let compile = |source: &str| {
        let name = Path::new(source)
            .file_stem()
            .and_then(|n| n.to_str())
            .expect("a file name");
        let out = stage.path().join(name);
        let status = Command::new(&cc)
            .args([
                "-std=c11",
                "-D_POSIX_C_SOURCE=200809L",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-O2",
            ])
            .arg(workspace_dir().join(source))
            .arg("-o")
            .arg(&out)
            .args(flags.split_whitespace())
            .status()
            .expect("run cc");
        assert!(
            status.success(),
            "cc {source} against the installed library"
        );
        out
    };
    Built {
        send: compile("bindings/c/examples/shmem-cat-send.c"),
        recv: compile("bindings/c/examples/shmem-cat-recv.c"),
        api_check: compile("tests/c/api_check.c"),
        lib_dir: root.join("lib"),
        _stage: stage,
    }
}

/// A C example (under `wrapper` if given) talking to `broker`.
fn c_command(built: &Built, broker: &Broker, program: &Path, wrapper: &[&str]) -> Command {
    let mut cmd = match wrapper.split_first() {
        Some((tool, args)) => {
            let mut cmd = Command::new(tool);
            cmd.args(args).arg(program);
            cmd
        }
        None => Command::new(program),
    };
    cmd.env("SHMEM_BROKER_SOCKET", broker.socket_path())
        .env("LD_LIBRARY_PATH", &built.lib_dir);
    cmd
}

/// Runs `sender` and `receiver` (each reading `input` / writing `output`) to the end; both
/// must exit 0, and the output must be the input.
fn transfer(mut sender: Command, mut receiver: Command, input: &Path, output: &Path) {
    let file = |path: &Path, write: bool| {
        let f = if write {
            std::fs::File::create(path)
        } else {
            std::fs::File::open(path)
        };
        Stdio::from(f.unwrap_or_else(|e| panic!("{}: {e}", path.display())))
    };
    let receiver = receiver
        .stdin(Stdio::null())
        .stdout(file(output, true))
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the receiver");
    std::thread::sleep(Duration::from_millis(200));
    let sender = sender
        .stdin(file(input, false))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the sender");
    // A side that dies leaves the other waiting: bounded, and both are reported.
    let (sent, received) = with_deadline(WAIT * 4, "the transfer to finish", move || {
        let sent = sender.wait_with_output().expect("wait for the sender");
        let received = receiver.wait_with_output().expect("wait for the receiver");
        (sent, received)
    });
    assert!(
        sent.status.success() && received.status.success(),
        "sender {}: {}\nreceiver {}: {}",
        sent.status,
        String::from_utf8_lossy(&sent.stderr),
        received.status,
        String::from_utf8_lossy(&received.stderr)
    );
    assert_eq!(
        sha256_file(output),
        sha256_file(input),
        "output equals input"
    );
}

fn ctl(broker: &Broker, args: &[&str]) -> Command {
    let mut cmd = Command::new(ctl_bin());
    cmd.arg("--socket").arg(broker.socket_path()).args(args);
    cmd
}

#[test]
fn c_programs_move_64_mib_to_and_from_shmemctl_and_each_other() {
    let built = build_examples();
    let broker = Broker::start(None);
    let input = broker.dir().join("input");
    write_random_file(&input, SIXTY_FOUR_MIB, 13);
    let with = |mut cmd: Command, args: &[&str]| {
        cmd.args(args);
        cmd
    };
    // By default the examples loan (send) and borrow (receive); --copy goes through buffers.
    for (name, sender, receiver) in [
        (
            "c-to-ctl",
            c_command(&built, &broker, &built.send, &[]),
            ctl(&broker, &["recv"]),
        ),
        (
            "ctl-to-c",
            ctl(&broker, &["send"]),
            c_command(&built, &broker, &built.recv, &[]),
        ),
        (
            "c-to-c",
            with(c_command(&built, &broker, &built.send, &[]), &["--copy"]),
            with(c_command(&built, &broker, &built.recv, &[]), &["--copy"]),
        ),
    ] {
        broker.ctl_ok(&["create", name, "--capacity", "1MiB"]);
        let (mut sender, mut receiver) = (sender, receiver);
        sender.arg(name);
        receiver.arg(name);
        let output = broker.dir().join(format!("{name}.out"));
        transfer(sender, receiver, &input, &output);
    }
}

#[test]
fn c_examples_run_clean_under_valgrind() {
    let valgrind = require_tool("valgrind", "valgrind");
    let built = build_examples();
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "grind", "--capacity", "256KiB"]);
    let input = broker.dir().join("input");
    write_random_file(&input, 2 << 20, 17);
    let valgrind = valgrind.to_str().expect("UTF-8 path");
    let wrapper = [
        valgrind,
        "--quiet",
        "--error-exitcode=99",
        "--leak-check=full",
        "--errors-for-leak-kinds=definite,indirect",
    ];
    let mut sender = c_command(&built, &broker, &built.send, &wrapper);
    let mut receiver = c_command(&built, &broker, &built.recv, &wrapper);
    sender.arg("grind");
    receiver.arg("grind");
    transfer(sender, receiver, &input, &broker.dir().join("grind.out"));
}

/// Runs `tests/c/api_check.c` (under `wrapper` if given) on a fresh channel.
fn run_api_check(built: &Built, wrapper: &[&str]) {
    let broker = Broker::start(None);
    broker.ctl_ok(&["create", "c-api", "--capacity", "64KiB"]);
    let mut cmd = c_command(built, &broker, &built.api_check, wrapper);
    let out = cmd.arg("c-api").output().expect("run api_check");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "api_check ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_c_api_behaves_as_its_header_says() {
    let built = build_examples();
    run_api_check(&built, &[]);
}

#[test]
fn the_c_api_check_runs_clean_under_valgrind() {
    let valgrind = require_tool("valgrind", "valgrind");
    let built = build_examples();
    let valgrind = valgrind.to_str().expect("UTF-8 path");
    run_api_check(
        &built,
        &[
            valgrind,
            "--quiet",
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect",
        ],
    );
}
