//! systemd/install.sh, staged with DESTDIR into a temp dir (so it touches nothing outside it and
//! runs neither systemd-sysusers nor systemctl): the files land where they should, ExecStart=
//! points at the installed binary, an edited config is never overwritten, and --uninstall
//! removes what was installed but keeps an edited config.

use shmem_broker_tests::{bin_dir, run, temp_dir, workspace_dir, CmdOutput, CTL_TIMEOUT};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const BINARIES: [&str; 3] = ["shmem-broker", "shmemctl", "shmem-bridge"];
const UNITS: [&str; 5] = [
    "shmem-broker.socket",
    "shmem-broker.service",
    "shmem-bridge.service",
    "shmem-broker-metrics.service",
    "shmem-broker-metrics.timer",
];
/// (source in the repository, name in the doc folder)
const DOCS: [(&str, &str); 3] = [
    ("README.md", "README.md"),
    ("PROTOCOL.md", "PROTOCOL.md"),
    ("bridge/README.md", "bridge.md"),
];

fn install_script() -> PathBuf {
    workspace_dir().join("systemd").join("install.sh")
}

/// Runs install.sh with DESTDIR=`destdir`, the binaries from target/debug, and `args`.
fn install(destdir: &Path, logs: &Path, args: &[&str]) -> CmdOutput {
    for bin in BINARIES {
        // Fails with the fix if the workspace was not built.
        shmem_broker_tests::binary(bin);
    }
    let mut cmd = Command::new(install_script());
    cmd.env("DESTDIR", destdir)
        .arg("--from")
        .arg(bin_dir())
        .args(args);
    run(cmd, "install.sh", logs, Stdio::null(), CTL_TIMEOUT)
}

fn install_ok(destdir: &Path, logs: &Path, args: &[&str]) -> String {
    let out = install(destdir, logs, args);
    assert!(
        out.success(),
        "install.sh {} failed:\n{out}",
        args.join(" ")
    );
    out.stdout
}

fn staged(destdir: &Path, path: &str) -> PathBuf {
    destdir.join(path.trim_start_matches('/'))
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn read_text(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{} is not there: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Every file below `dir`, relative to it, sorted.
fn files_below(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let entry = entry.expect("dir entry");
            let path = entry.path();
            if entry.file_type().expect("file type").is_dir() {
                walk(root, &path, out);
            } else {
                out.push(
                    path.strip_prefix(root)
                        .expect("walked path lies under the install root")
                        .display()
                        .to_string(),
                );
            }
        }
    }
    let mut out = Vec::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out.sort();
    out
}

/// Checks one staged install: binaries, units (ExecStart= and Documentation= rewritten, every
/// other line as shipped), sysusers file, docs, config.
fn check_installed(destdir: &Path, bindir: &str, unitdir: &str, sysusersdir: &str, docdir: &str) {
    for bin in BINARIES {
        let installed = staged(destdir, &format!("{bindir}/{bin}"));
        assert_eq!(mode(&installed), 0o755, "{}", installed.display());
        assert!(
            read(&installed) == read(&bin_dir().join(bin)),
            "{} is not a copy of the built {bin}",
            installed.display()
        );
    }
    let doc_url = format!("file://{docdir}/README.md");
    for unit in UNITS {
        let installed = staged(destdir, &format!("{unitdir}/{unit}"));
        assert_eq!(mode(&installed), 0o644, "{}", installed.display());
        let shipped = read_text(&workspace_dir().join("systemd").join(unit));
        let text = read_text(&installed);
        assert_eq!(
            text.lines().count(),
            shipped.lines().count(),
            "{unit}: lines added or lost:\n{text}"
        );
        for (got, want) in text.lines().zip(shipped.lines()) {
            if want.starts_with("ExecStart=") {
                let program = match unit.split('.').next().expect("unit name") {
                    "shmem-broker-metrics" => "shmemctl",
                    program => program,
                };
                let args = want.split_once(' ').map(|(_, a)| a);
                let expected = match args {
                    Some(args) => format!("ExecStart={bindir}/{program} {args}"),
                    None => format!("ExecStart={bindir}/{program}"),
                };
                assert_eq!(got, expected, "{unit}: ExecStart= not rewritten");
            } else if want.starts_with("Documentation=") && want.contains("share/doc/shmem-broker")
            {
                assert_eq!(got, format!("Documentation={doc_url}"), "{unit}");
            } else {
                assert_eq!(
                    got, want,
                    "{unit}: a line changed that should be as shipped"
                );
            }
        }
    }
    let service = read_text(&staged(destdir, &format!("{unitdir}/shmem-broker.service")));
    assert!(
        service
            .lines()
            .any(|l| l == format!("ExecStart={bindir}/shmem-broker")
                || l.starts_with(&format!("ExecStart={bindir}/shmem-broker "))),
        "{service}"
    );
    let sysusers = staged(destdir, &format!("{sysusersdir}/shmem-broker.conf"));
    assert_eq!(
        read(&sysusers),
        read(
            &workspace_dir()
                .join("systemd")
                .join("shmem-broker.sysusers")
        ),
        "{}",
        sysusers.display()
    );
    for (source, name) in DOCS {
        let installed = staged(destdir, &format!("{docdir}/{name}"));
        assert_eq!(
            read(&installed),
            read(&workspace_dir().join(source)),
            "{name}"
        );
    }
}

fn example_config() -> Vec<u8> {
    read(&workspace_dir().join("config").join("shmem-broker.toml"))
}

fn example_bridge_config() -> Vec<u8> {
    read(&workspace_dir().join("config").join("bridge.toml"))
}

#[test]
fn install_keeps_an_edited_config_and_uninstall_removes_the_rest() {
    let tmp = temp_dir();
    let destdir = tmp.path().join("stage");
    let logs = tmp.path();
    let config = staged(&destdir, "/etc/shmem-broker/shmem-broker.toml");
    let config_new = staged(&destdir, "/etc/shmem-broker/shmem-broker.toml.new");

    // First install: default prefix /usr/local, units in /etc/systemd/system.
    let stdout = install_ok(&destdir, logs, &[]);
    check_installed(
        &destdir,
        "/usr/local/bin",
        "/etc/systemd/system",
        "/usr/local/lib/sysusers.d",
        "/usr/local/share/doc/shmem-broker",
    );
    assert_eq!(read(&config), example_config());
    assert!(!config_new.exists());
    let bridge_config = staged(&destdir, "/etc/shmem-broker/bridge.toml");
    assert_eq!(read(&bridge_config), example_bridge_config());
    assert!(
        stdout.contains("installed") && stdout.contains("/usr/local/bin/shmem-broker"),
        "install.sh should say what it does:\n{stdout}"
    );
    let expected_files = [
        "etc/shmem-broker/bridge.toml",
        "etc/shmem-broker/shmem-broker.toml",
        "etc/systemd/system/shmem-bridge.service",
        "etc/systemd/system/shmem-broker-metrics.service",
        "etc/systemd/system/shmem-broker-metrics.timer",
        "etc/systemd/system/shmem-broker.service",
        "etc/systemd/system/shmem-broker.socket",
        "usr/local/bin/shmem-bridge",
        "usr/local/bin/shmem-broker",
        "usr/local/bin/shmemctl",
        "usr/local/include/shmem_broker.h",
        "usr/local/lib/libshmem_broker.a",
        "usr/local/lib/libshmem_broker.so",
        "usr/local/lib/pkgconfig/shmem-broker.pc",
        "usr/local/lib/sysusers.d/shmem-broker.conf",
        "usr/local/share/doc/shmem-broker/PROTOCOL.md",
        "usr/local/share/doc/shmem-broker/README.md",
        "usr/local/share/doc/shmem-broker/bridge.md",
    ];
    assert_eq!(files_below(&destdir), expected_files);

    // Unchanged config: a second install leaves it and adds no .new.
    install_ok(&destdir, logs, &[]);
    assert_eq!(read(&config), example_config());
    assert!(
        !config_new.exists(),
        "no .new when the config is the example"
    );

    // Edited config: a second install keeps it, puts the example next to it, and says so.
    let edited = format!(
        "{}\n# edited by the administrator\n",
        String::from_utf8_lossy(&example_config())
    );
    fs::write(&config, &edited).expect("write the edited config");
    let stdout = install_ok(&destdir, logs, &[]);
    assert!(
        read_text(&config) == edited,
        "install.sh overwrote an edited config"
    );
    assert_eq!(read(&config_new), example_config());
    assert!(
        stdout.contains("shmem-broker.toml.new"),
        "install.sh should say where the new example went:\n{stdout}"
    );
    check_installed(
        &destdir,
        "/usr/local/bin",
        "/etc/systemd/system",
        "/usr/local/lib/sysusers.d",
        "/usr/local/share/doc/shmem-broker",
    );

    // Uninstall: everything goes but the edited config.
    let stdout = install_ok(&destdir, logs, &["--uninstall"]);
    assert_eq!(
        files_below(&destdir),
        ["etc/shmem-broker/shmem-broker.toml"],
        "uninstall should remove all but the edited config:\n{stdout}"
    );
    assert!(read_text(&config) == edited, "the edited config changed");
    assert!(
        stdout.contains("kept") && stdout.contains("shmem-broker.toml"),
        "uninstall should say it kept the edited config:\n{stdout}"
    );
    assert!(!staged(&destdir, "/usr/local/share/doc/shmem-broker").exists());

    // Once the config is the example again, uninstall removes it and its folder too.
    fs::write(&config, example_config()).expect("restore the example config");
    install_ok(&destdir, logs, &["--uninstall"]);
    assert_eq!(files_below(&destdir), Vec::<String>::new());
    assert!(!staged(&destdir, "/etc/shmem-broker").exists());
}

#[test]
fn prefix_usr_puts_units_in_usr_lib() {
    let tmp = temp_dir();
    let destdir = tmp.path().join("stage");
    install_ok(&destdir, tmp.path(), &["--prefix", "/usr"]);
    check_installed(
        &destdir,
        "/usr/bin",
        "/usr/lib/systemd/system",
        "/usr/lib/sysusers.d",
        "/usr/share/doc/shmem-broker",
    );
    assert!(!staged(&destdir, "/etc/systemd").exists());
    install_ok(&destdir, tmp.path(), &["--prefix", "/usr", "--uninstall"]);
    assert_eq!(files_below(&destdir), Vec::<String>::new());
}

#[test]
fn bad_arguments_are_refused_and_install_nothing() {
    let tmp = temp_dir();
    let destdir = tmp.path().join("stage");
    let relative = install(&destdir, tmp.path(), &["--prefix", "usr/local"]);
    relative.expect_error(&["--prefix", "absolute"]);
    let unknown = install(&destdir, tmp.path(), &["--frobnicate"]);
    unknown.expect_error(&["--frobnicate"]);

    // --from a folder without the binaries: a clear error naming what is missing.
    let empty = tmp.path().join("no-binaries");
    fs::create_dir(&empty).expect("create an empty directory");
    let mut cmd = Command::new(install_script());
    cmd.env("DESTDIR", &destdir).arg("--from").arg(&empty);
    let out = run(cmd, "install.sh", tmp.path(), Stdio::null(), CTL_TIMEOUT);
    out.expect_error(&[
        &empty.join("shmem-broker").display().to_string(),
        "cargo build --release",
    ]);
    assert_eq!(files_below(&destdir), Vec::<String>::new());
}
