//! Channels into containers: a producer and a consumer, each in its own user, mount, IPC, PID
//! and network namespace (`unshare --user --map-root-user --mount --ipc --pid --net --fork`,
//! started as an unprivileged uid, as rootless podman does), each chrooted into an empty
//! tmpfs that holds only /usr (read from the host), the shmemctl binary and the bind-mounted
//! socket folder: no /dev/shm, no shared IPC namespace, no network. 64 MiB go through with
//! SHA-256 checked, the broker sees the host uids the kernel reports (not the containers' root),
//! and a channel whose lists do not name those uids refuses them.

use shmem_broker_tests::*;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Host uids of the two containers (root inside each).
const PRODUCER_UID: u32 = 61_001;
const CONSUMER_UID: u32 = 61_002;
const SIZE: u64 = 64 << 20;
const TRANSFER: Duration = Duration::from_secs(300);

/// Runs inside the new namespaces as their root: builds the container's root in a tmpfs,
/// then runs `shmemctl ARGS` chrooted in it. $1: the host's socket folder, $2: shmemctl.
const CONTAINER: &str = r#"
set -eu
sock_dir=$1; ctl=$2; shift 2
R=/mnt
mount -t tmpfs -o mode=755 tmpfs "$R"
mkdir "$R/usr" "$R/run" "$R/run/shmem-broker" "$R/app" "$R/dev" "$R/tmp"
mount --rbind /usr "$R/usr"
ln -s usr/lib "$R/lib"; ln -s usr/lib64 "$R/lib64"; ln -s usr/bin "$R/bin"
mount --bind "$sock_dir" "$R/run/shmem-broker"
touch "$R/app/shmemctl"
mount --bind "$ctl" "$R/app/shmemctl"
exec chroot "$R" "$@"
"#;

struct Lab {
    broker: Broker,
    sock_dir: PathBuf,
    ctl: PathBuf,
}

impl Lab {
    fn start() -> Lab {
        require_tool("unshare", "util-linux");
        require_tool("setpriv", "util-linux");
        let config = format!(
            "version = 1\n\
             [[channel]]\nname = \"boxed\"\ncapacity = \"1MiB\"\n\
             producers = [\"{PRODUCER_UID}\"]\nconsumers = [\"{CONSUMER_UID}\"]\n\
             [[channel]]\nname = \"closed\"\ncapacity = \"64KiB\"\n\
             producers = [\"61003\"]\nconsumers = [\"61003\"]\n"
        );
        let make_dir = |socket: &Path| {
            let dir = socket.parent().expect("the socket has a folder");
            fs::create_dir(dir).expect("create the socket folder");
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        };
        let broker = Broker::start_with(BrokerOptions {
            config: Some(&config),
            world_searchable_dir: true,
            socket_relative: Some("run/control.sock"),
            before_start: Some(&make_dir),
            ..BrokerOptions::default()
        });
        let sock_dir = broker.dir().join("run");
        // A copy the containers' uids can read (the build's target dir may not be reachable).
        let ctl = broker.dir().join("container-shmemctl");
        let status = Command::new("install")
            .args(["-m", "0755"])
            .arg(ctl_bin())
            .arg(&ctl)
            .status()
            .expect("run install(1)");
        assert!(status.success(), "copy shmemctl: {status}");
        Lab {
            broker,
            sock_dir,
            ctl,
        }
    }

    /// `ARGS` run in a fresh container as host uid `uid`.
    fn command(&self, uid: u32, args: &[&str]) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .args([
                "unshare",
                "--user",
                "--map-root-user",
                "--mount",
                "--ipc",
                "--pid",
                "--net",
                "--fork",
                "--",
                "/bin/sh",
                "-c",
                CONTAINER,
                "container",
            ])
            .arg(&self.sock_dir)
            .arg(&self.ctl)
            .args(args);
        cmd
    }

    /// shmemctl in a container as `uid`, talking to the bind-mounted socket.
    fn ctl(&self, uid: u32, args: &[&str]) -> Command {
        let mut all = vec![
            "/app/shmemctl",
            "--socket",
            "/run/shmem-broker/control.sock",
        ];
        all.extend_from_slice(args);
        self.command(uid, &all)
    }

    fn run(&self, cmd: Command) -> CmdOutput {
        run(
            cmd,
            "container",
            self.broker.dir(),
            Stdio::null(),
            CTL_TIMEOUT,
        )
    }
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn containers_in_their_own_namespaces_move_64_mib_and_are_seen_by_their_host_uid() {
    require_root();
    let lab = Lab::start();
    let broker = &lab.broker;

    // What a container sees: root inside, its own pid 1, only the socket in the bind-mounted
    // folder, no /dev/shm, no network but loopback (down).
    let look = lab
        .run(lab.command(
            PRODUCER_UID,
            &[
                "/bin/sh",
                "-c",
                "id -u; echo $$; ls -A /run/shmem-broker; ls -A /dev; ls -A /; cat /proc/net/dev 2>&1 | tail -n +3",
            ],
        ))
        .expect_success()
        .to_string();
    let lines: Vec<&str> = look.lines().collect();
    assert_eq!(lines.first(), Some(&"0"), "root inside:\n{look}");
    assert_eq!(
        lines.get(2),
        Some(&"control.sock"),
        "only the socket:\n{look}"
    );
    assert!(
        !look.contains("shm") && !look.contains("eth"),
        "no /dev/shm, no host network:\n{look}"
    );

    let input = broker.dir().join("input.bin");
    let want = write_random_file(&input, SIZE, 0xc0_47a1);
    let output = broker.dir().join("output.bin");
    let out_file = File::create(&output).expect("create output");

    let mut consumer = Proc::start(
        lab.ctl(CONSUMER_UID, &["recv", "boxed"]),
        "container-recv",
        broker.dir(),
        Stdio::null(),
        Some(Stdio::from(out_file)),
    );
    // The broker sees the host uid the kernel reports for the container's root.
    let peer = wait_for(WAIT, "the containerised consumer to attach", || {
        let info = broker.info("boxed");
        json_array(&info, "peers")
            .iter()
            .find(|p| p["role"] == "consumer")
            .cloned()
            .ok_or_else(|| info.to_string())
    });
    assert_eq!(json_u64(&peer, "uid"), u64::from(CONSUMER_UID), "{peer}");

    let stdin = File::open(&input).expect("open input");
    let mut producer = Proc::start(
        lab.ctl(PRODUCER_UID, &["send", "boxed"]),
        "container-send",
        broker.dir(),
        Stdio::from(stdin),
        None,
    );
    let sent = producer.output(TRANSFER);
    sent.expect_success();
    consumer.output(TRANSFER).expect_success();
    assert_eq!(file_len(&output), SIZE);
    assert_eq!(sha256_file(&output), want, "64 MiB arrived changed");

    // The containers' root is not the broker's root: a channel that does not list their
    // uids refuses both, naming the uid the kernel reported.
    lab.run(lab.ctl(PRODUCER_UID, &["send", "closed"]))
        .expect_error(&[
            "permission denied",
            "closed",
            &format!("uid {PRODUCER_UID}"),
        ]);
    lab.run(lab.ctl(CONSUMER_UID, &["recv", "closed"]))
        .expect_error(&[
            "permission denied",
            "closed",
            &format!("uid {CONSUMER_UID}"),
        ]);
    // And the roles are the lists' own: the consumer's uid may not produce into boxed.
    lab.run(lab.ctl(CONSUMER_UID, &["send", "boxed"]))
        .expect_error(&["permission denied", "boxed", &format!("uid {CONSUMER_UID}")]);
}
