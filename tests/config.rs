//! Config validation: `--check-config` exit codes, and errors that name file, line and key.

use shmem_broker_tests::*;
use std::path::Path;
use std::process::{Command, Stdio};

/// Runs `shmem-broker --config FILE --check-config` on `content`; returns (path, output).
fn check_config(dir: &Path, file_name: &str, content: &str) -> (String, CmdOutput) {
    let path = dir.join(file_name);
    std::fs::write(&path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    let mut cmd = Command::new(broker_bin());
    cmd.arg("--config").arg(&path).arg("--check-config");
    let out = run(cmd, "check-config", dir, Stdio::null(), CTL_TIMEOUT);
    (path.to_str().expect("utf-8 temp path").to_string(), out)
}

/// An invalid config and what its error must point at.
struct Bad {
    what: &'static str,
    content: &'static str,
    /// The line the error must name as `FILE:LINE:` (None: just the file).
    line: Option<usize>,
    key: &'static str,
}

const BAD_CONFIGS: &[Bad] = &[
    Bad {
        what: "unknown top-level key",
        content: "# broker config\nversion = 1\ncolour = 1\n",
        line: Some(3),
        key: "colour",
    },
    Bad {
        what: "unparsable channel capacity",
        content: "version = 1\n\n[[channel]]\nname = \"cam\"\ncapacity = \"12 parsecs\"\n",
        line: Some(5),
        key: "capacity",
    },
    Bad {
        what: "missing version",
        content: "# no version here\nmax_channels = 4\n",
        line: None,
        key: "version",
    },
    Bad {
        what: "unsupported version",
        content: "# from the future\nversion = 2\n",
        line: Some(2),
        key: "version",
    },
    Bad {
        what: "unparsable default_capacity",
        content: "version = 1\ndefault_capacity = \"lots\"\n",
        line: Some(2),
        key: "default_capacity",
    },
    Bad {
        what: "wrong type for max_channels",
        content: "version = 1\nmax_channels = \"ten\"\n",
        line: Some(2),
        key: "max_channels",
    },
    Bad {
        what: "unknown log level",
        content: "version = 1\n\n[logging]\nlevel = \"loud\"\n",
        line: Some(4),
        key: "level",
    },
    Bad {
        what: "unknown log format",
        content: "version = 1\n[logging]\nformat = \"xml\"\n",
        line: Some(3),
        key: "format",
    },
    Bad {
        what: "invalid channel name",
        content: "version = 1\n[[channel]]\nname = \"a b\"\n",
        line: Some(3),
        key: "name",
    },
    Bad {
        what: "unknown key inside a channel",
        content: "version = 1\n[[channel]]\nname = \"a\"\n\n[[channel]]\nname = \"b\"\ncapcity = \"1MiB\"\n",
        line: Some(7),
        key: "capcity",
    },
    Bad {
        what: "bad socket_mode",
        content: "version = 1\nsocket_mode = \"0999\"\n",
        line: Some(2),
        key: "socket_mode",
    },
    Bad {
        what: "TOML syntax error",
        content: "version = 1\nmax_clients = \n",
        line: Some(2),
        key: "",
    },
];

#[test]
fn bad_configs_name_file_line_and_key_and_check_config_exits_1() {
    let dir = temp_dir();
    let mut failures = Vec::new();
    for (i, bad) in BAD_CONFIGS.iter().enumerate() {
        let (path, out) = check_config(dir.path(), &format!("bad-{i}.toml"), bad.content);
        let mut problems = Vec::new();
        if out.status.code() != Some(1) {
            problems.push(format!("exit {} (want 1)", out.status));
        }
        let located = match bad.line {
            Some(line) => format!("{path}:{line}:"),
            None => path.clone(),
        };
        if !out.stderr.contains(&located) {
            problems.push(format!("stderr does not contain {located:?}"));
        }
        if !out.stderr.contains(bad.key) {
            problems.push(format!("stderr does not name {:?}", bad.key));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {}\n  config: {:?}\n  stderr: {:?}",
                bad.what,
                problems.join("; "),
                bad.content,
                out.stderr
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad configs were not reported as FILE:LINE:COL: KEY: message with exit 1:\n{}",
        failures.len(),
        BAD_CONFIGS.len(),
        failures.join("\n")
    );
}

#[test]
fn valid_configs_pass_check_config_with_exit_0() {
    let dir = temp_dir();
    let full = r#"# every setting
version = 1
socket = "/run/shmem-broker-test/control.sock"
socket_mode = "0660"
default_capacity = "1MiB"
max_capacity = "64MiB"
max_channels = 16
max_clients = 64
admin_groups = ["root"]

[logging]
level = "info"
format = "json"

[[channel]]
name = "cam0"
capacity = "4MiB"
producers = ["root"]
consumers = ["*"]

[[channel]]
name = "cam1"
producers = ["0", "@0"]
consumers = ["@root"]
"#;
    for (name, content) in [("minimal.toml", MINIMAL_CONFIG), ("full.toml", full)] {
        let (path, out) = check_config(dir.path(), name, content);
        assert_eq!(out.status.code(), Some(0), "{path} is valid:\n{out}");
    }
    assert!(
        !Path::new("/run/shmem-broker-test/control.sock").exists(),
        "--check-config must not bind the configured socket"
    );
}

#[test]
fn example_config_passes_check_config() {
    let example = example_config();
    assert!(
        example.is_file(),
        "the example config {} is missing",
        example.display()
    );
    let logs = temp_dir();
    let mut cmd = Command::new(broker_bin());
    cmd.arg("--config").arg(&example).arg("--check-config");
    let out = run(
        cmd,
        "check-example",
        logs.path(),
        Stdio::null(),
        CTL_TIMEOUT,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "the shipped example config is valid:\n{out}"
    );
}

#[test]
fn broker_refuses_to_start_with_a_bad_config() {
    let dir = temp_dir();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "version = 1\ncolour = 1\n").expect("write the bad config");
    let socket = dir.path().join("control.sock");
    let mut cmd = Command::new(broker_bin());
    cmd.arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(&socket);
    let mut broker = Proc::start(cmd, "broker", dir.path(), Stdio::null(), None);
    let out = broker.output(WAIT);
    assert!(
        !out.success(),
        "a broker with a bad config must not run:\n{out}"
    );
    let located = format!("{}:2:", config.display());
    assert!(
        out.stderr.contains(&located) && out.stderr.contains("colour"),
        "stderr should point at {located} and name `colour`:\n{out}"
    );
}
