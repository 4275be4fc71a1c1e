//! The Debian package: packaging/build-deb.sh builds it with cargo-deb (from the debug binaries
//! the other tests run), `dpkg-deb -I`/`-c` show what it holds, and it is installed into a
//! real systemd (a [`SystemdLab`] whose /etc, /usr and /var are overlays, so the host's files,
//! users and dpkg database are untouched): install creates the user and group, enabling the
//! socket and running `shmemctl list` starts the broker, and `dpkg --purge` leaves no user,
//! group, unit, enablement link, socket or config behind.

use shmem_broker_tests::systemd::SystemdLab;
use shmem_broker_tests::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Packaging runs cargo-deb (cargo metadata, stripping, compressing ~80 MB of debug binaries).
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
const INSTALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Every file the package installs (directories left out).
const FILES: &[&str] = &[
    "./etc/shmem-broker/shmem-broker.toml",
    "./usr/bin/shmem-broker",
    "./usr/bin/shmemctl",
    "./usr/lib/systemd/system/shmem-broker-metrics.service",
    "./usr/lib/systemd/system/shmem-broker-metrics.timer",
    "./usr/lib/systemd/system/shmem-broker.service",
    "./usr/lib/systemd/system/shmem-broker.socket",
    "./usr/lib/sysusers.d/shmem-broker.conf",
    "./usr/lib/tmpfiles.d/shmem-broker.conf",
    "./usr/share/bash-completion/completions/shmemctl",
    "./usr/share/doc/shmem-broker/PROTOCOL.md",
    "./usr/share/doc/shmem-broker/README.md",
    "./usr/share/doc/shmem-broker/SECURITY.md",
    "./usr/share/doc/shmem-broker/copyright",
    "./usr/share/doc/shmem-broker/record-format.md",
    "./usr/share/fish/vendor_completions.d/shmemctl.fish",
    "./usr/share/man/man1/shmemctl-completions.1.gz",
    "./usr/share/man/man1/shmemctl-create.1.gz",
    "./usr/share/man/man1/shmemctl-drop.1.gz",
    "./usr/share/man/man1/shmemctl-info.1.gz",
    "./usr/share/man/man1/shmemctl-list.1.gz",
    "./usr/share/man/man1/shmemctl-metrics.1.gz",
    "./usr/share/man/man1/shmemctl-monitor.1.gz",
    "./usr/share/man/man1/shmemctl-record.1.gz",
    "./usr/share/man/man1/shmemctl-recv.1.gz",
    "./usr/share/man/man1/shmemctl-replay.1.gz",
    "./usr/share/man/man1/shmemctl-send.1.gz",
    "./usr/share/man/man1/shmemctl-status.1.gz",
    "./usr/share/man/man1/shmemctl-top.1.gz",
    "./usr/share/man/man1/shmemctl.1.gz",
    "./usr/share/man/man5/shmem-broker.toml.5.gz",
    "./usr/share/man/man8/shmem-broker.8.gz",
    "./usr/share/zsh/vendor-completions/_shmemctl",
];

fn command(program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd
}

/// Builds the package into `out`; returns the .deb.
fn build_package(out: &Path, logs: &Path) -> PathBuf {
    let mut cmd = Command::new(workspace_dir().join("packaging").join("build-deb.sh"));
    // Quickly compressed (build-deb.sh strips): debug binaries otherwise take minutes of xz.
    cmd.env("PROFILE", "dev")
        .env("BUILD", "no")
        .args(["--fast", "--output"])
        .arg(out);
    let built = run(cmd, "build-deb", logs, Stdio::null(), BUILD_TIMEOUT);
    assert!(built.success(), "packaging failed:\n{built}");
    let debs: Vec<PathBuf> = fs::read_dir(out)
        .expect("read the output dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "one .deb in {}: {debs:?}", out.display());
    debs[0].clone()
}

/// `gunzip -c` of a file.
fn gunzip(path: &Path, logs: &Path) -> String {
    let out = run(
        command("gzip", &["-dc", &path.display().to_string()]),
        "gzip",
        logs,
        Stdio::null(),
        CTL_TIMEOUT,
    );
    out.expect_success().to_string()
}

fn check_contents(deb: &Path, logs: &Path) {
    let deb_arg = deb.display().to_string();
    let info = run(
        command("dpkg-deb", &["-I", &deb_arg]),
        "dpkg-deb",
        logs,
        Stdio::null(),
        CTL_TIMEOUT,
    );
    let info = info.expect_success();
    for needle in [
        "Package: shmem-broker",
        "Depends: ",
        "systemd",
        "postinst",
        "prerm",
        "postrm",
        "conffiles",
    ] {
        assert!(
            info.contains(needle),
            "dpkg-deb -I lacks {needle:?}:\n{info}"
        );
    }
    let listing = run(
        command("dpkg-deb", &["-c", &deb_arg]),
        "dpkg-deb",
        logs,
        Stdio::null(),
        CTL_TIMEOUT,
    );
    let mut files: Vec<String> = listing
        .expect_success()
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().nth(5).map(str::to_string))
        .collect();
    files.sort();
    assert_eq!(files, FILES, "the package's files");

    // What the files say: extract and look.
    let root = logs.join("extracted");
    run(
        command("dpkg-deb", &["-x", &deb_arg, &root.display().to_string()]),
        "dpkg-deb",
        logs,
        Stdio::null(),
        CTL_TIMEOUT,
    )
    .expect_success();
    let control = logs.join("control");
    run(
        command(
            "dpkg-deb",
            &["-e", &deb_arg, &control.display().to_string()],
        ),
        "dpkg-deb",
        logs,
        Stdio::null(),
        CTL_TIMEOUT,
    )
    .expect_success();
    let read = |path: PathBuf| {
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    };
    assert_eq!(
        read(control.join("conffiles")).trim(),
        "/etc/shmem-broker/shmem-broker.toml"
    );
    let service = read(root.join("usr/lib/systemd/system/shmem-broker.service"));
    assert!(
        service.contains("\nExecStart=/usr/bin/shmem-broker\n")
            && service.contains("\nExecReload=/usr/bin/shmem-broker --check-config\n")
            && !service.contains("/usr/local"),
        "the unit must run the packaged binary:\n{service}"
    );
    let page = gunzip(&root.join("usr/share/man/man8/shmem-broker.8.gz"), logs);
    assert!(
        page.contains(".TH shmem-broker 8") && page.contains("check\\-config"),
        "shmem-broker(8) from the clap definitions:\n{page}"
    );
    let page = gunzip(&root.join("usr/share/man/man1/shmemctl-replay.1.gz"), logs);
    assert!(
        page.contains(".TH shmemctl-replay 1") && page.contains("as\\-recorded"),
        "shmemctl-replay(1):\n{page}"
    );
    let page = gunzip(
        &root.join("usr/share/man/man5/shmem-broker.toml.5.gz"),
        logs,
    );
    assert!(
        page.contains("max_ring_bytes"),
        "shmem-broker.toml(5):\n{page}"
    );
    let bash = read(root.join("usr/share/bash-completion/completions/shmemctl"));
    assert!(bash.contains("complete -F _shmemctl") && bash.contains("replay"));
    let zsh = read(root.join("usr/share/zsh/vendor-completions/_shmemctl"));
    assert!(zsh.starts_with("#compdef shmemctl") && zsh.contains("record"));
    let fish = read(root.join("usr/share/fish/vendor_completions.d/shmemctl.fish"));
    assert!(fish.contains("complete -c shmemctl") && fish.contains("as-recorded"));
}

/// `getent DATABASE NAME` inside the lab: whether it exists there.
fn lab_has(lab: &SystemdLab, database: &str, name: &str) -> bool {
    lab.run(&["getent", database, name], Stdio::null(), CTL_TIMEOUT)
        .success()
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn package_builds_installs_activates_and_purges_cleanly() {
    require_root();
    require_tool("cargo-deb", "cargo-deb (cargo install cargo-deb --locked)");
    require_tool("dpkg-deb", "dpkg");
    let tmp = temp_dir();
    let deb = build_package(&tmp.path().join("out"), tmp.path());
    check_contents(&deb, tmp.path());

    let host_before = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let lab = SystemdLab::boot_overlaid();
    // The lab must be visible to dpkg inside: copy the package into its work dir.
    let in_lab = lab.dir().join("shmem-broker.deb");
    fs::copy(&deb, &in_lab).expect("copy the package into the lab");
    let in_lab = in_lab.display().to_string();
    // A machine that never had the package: earlier tests may have made the users on the host
    // (ensure_sysusers); remove them in the lab's overlay only.
    for (database, name, tool) in [
        ("passwd", "shmem-broker", "userdel"),
        ("group", "shmem-broker", "groupdel"),
        ("group", "shmem", "groupdel"),
    ] {
        if lab_has(&lab, database, name) {
            let out = lab.run(&[tool, name], Stdio::null(), CTL_TIMEOUT);
            assert!(out.success(), "{tool} {name} in the lab:\n{out}");
        }
    }

    // A booted machine has no policy-rc.d; an image (like this one) may have one that forbids
    // every service action (exit 101), which deb-systemd-invoke obeys even for `stop`. The lab
    // plays the booted machine: the file goes, in its overlay only.
    lab.run(
        &["rm", "-f", "/usr/sbin/policy-rc.d"],
        Stdio::null(),
        CTL_TIMEOUT,
    )
    .expect_success();
    let installed = lab.run(&["dpkg", "-i", &in_lab], Stdio::null(), INSTALL_TIMEOUT);
    assert!(installed.success(), "dpkg -i failed:\n{installed}");
    assert!(
        lab_has(&lab, "passwd", "shmem-broker"),
        "install made no user"
    );
    assert!(
        lab_has(&lab, "group", "shmem"),
        "install made no shmem group"
    );
    assert_eq!(
        lab.show("shmem-broker.socket", "UnitFileState"),
        "disabled",
        "installing does not enable the socket by itself"
    );

    lab.systemctl_ok(&["enable", "--now", "shmem-broker.socket"]);
    assert_eq!(lab.show("shmem-broker.service", "ActiveState"), "inactive");
    let listed = lab.run(&["shmemctl", "list"], Stdio::null(), CTL_TIMEOUT);
    let table = listed.expect_success();
    assert!(
        table.contains("scratch") && table.contains("camera.front"),
        "the packaged example config's channels:\n{listed}"
    );
    assert_eq!(
        lab.show("shmem-broker.service", "ActiveState"),
        "active",
        "shmemctl list must have started the broker through the socket"
    );
    let user = lab.show("shmem-broker.service", "User");
    assert_eq!(user, "shmem-broker");
    let status = lab.run(&["shmemctl", "status"], Stdio::null(), CTL_TIMEOUT);
    assert!(
        status
            .expect_success()
            .contains("/etc/shmem-broker/shmem-broker.toml"),
        "the broker reads the packaged config:\n{status}"
    );

    let purged = lab.run(
        &["dpkg", "--purge", "shmem-broker"],
        Stdio::null(),
        INSTALL_TIMEOUT,
    );
    assert!(
        purged.success() && !purged.stderr.contains("could not"),
        "dpkg --purge failed:\n{purged}"
    );
    assert!(
        !lab_has(&lab, "passwd", "shmem-broker"),
        "purge left the user"
    );
    assert!(
        !lab_has(&lab, "passwd", "shmem-broker-metrics"),
        "purge left the metrics timer's user"
    );
    assert!(
        !lab_has(&lab, "group", "shmem-broker"),
        "purge left the user's group"
    );
    assert!(
        !lab_has(&lab, "group", "shmem"),
        "purge left the shmem group"
    );
    for unit in [
        "shmem-broker.socket",
        "shmem-broker.service",
        "shmem-broker-metrics.timer",
    ] {
        assert_eq!(
            lab.show(unit, "LoadState"),
            "not-found",
            "purge left {unit} known to systemd"
        );
        assert_eq!(
            lab.show(unit, "ActiveState"),
            "inactive",
            "{unit} still runs"
        );
    }
    let leftovers = lab.run(
        &[
            "sh",
            "-c",
            "ls -d /run/shmem-broker /etc/shmem-broker /usr/bin/shmemctl /usr/bin/shmem-broker \
             /etc/systemd/system/*/shmem-broker.* 2>/dev/null; \
             dpkg -s shmem-broker 2>&1 | head -1",
        ],
        Stdio::null(),
        CTL_TIMEOUT,
    );
    assert_eq!(
        leftovers.stdout.trim(),
        "dpkg-query: package 'shmem-broker' is not installed and no information is available",
        "purge left files, links or dpkg records:\n{leftovers}"
    );
    drop(lab);
    assert_eq!(
        fs::read_to_string("/etc/passwd").expect("read /etc/passwd"),
        host_before,
        "the lab changed the host's user database"
    );
    assert!(
        !Path::new("/usr/bin/shmemctl").exists(),
        "the host got the package"
    );
}

/// `shmemctl completions SHELL` and the man page generators describe the binaries themselves:
/// they work with no broker anywhere, and a shell clap_complete does not know is refused.
#[test]
fn completions_and_man_pages_need_no_broker() {
    let tmp = temp_dir();
    let nowhere = tmp.path().join("no-broker.sock");
    let ctl = |args: &[&str]| {
        let mut cmd = Command::new(ctl_bin());
        cmd.arg("--socket").arg(&nowhere).args(args);
        run(cmd, "shmemctl", tmp.path(), Stdio::null(), CTL_TIMEOUT)
    };
    for (shell, marker) in [
        ("bash", "complete -F _shmemctl"),
        ("zsh", "#compdef shmemctl"),
        ("fish", "complete -c shmemctl"),
    ] {
        let out = ctl(&["completions", shell]);
        let script = out.expect_success();
        assert!(
            script.contains(marker) && script.contains("replay"),
            "{shell}:\n{out}"
        );
    }
    ctl(&["completions", "tcsh"]).expect_usage_error(&["tcsh"]);
    let page = ctl(&["man"]);
    assert!(page.expect_success().starts_with(".ie") && page.stdout.contains(".TH shmemctl 1"));
    let listed = ctl(&["man", "--list"]);
    let names: Vec<&str> = listed.expect_success().lines().collect();
    assert!(
        names.contains(&"record") && !names.contains(&"man"),
        "{listed}"
    );
    ctl(&["man", "nope"]).expect_error(&["no subcommand \"nope\""]);
    let broker = run(
        command(&broker_bin().display().to_string(), &["--man"]),
        "shmem-broker",
        tmp.path(),
        Stdio::null(),
        CTL_TIMEOUT,
    );
    assert!(broker.expect_success().contains(".TH shmem-broker 8"));
}
