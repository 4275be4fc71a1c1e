//! The config tests: every error a user can make, reported at its line and key.

use super::error::{closest, line_column};
use super::parse::known_keys;
use super::*;
use crate::access::{AccessList, Principal};
use shmem_broker_proto::wire::SlowConsumer;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Cases found by the `config_parser` fuzz target (fuzz/corpus/config_parser/seed-*).
#[test]
fn fuzz_findings_stay_fixed() {
    let err = Config::parse("\r", Path::new("fuzz.toml")).unwrap_err();
    assert!(!err.message.is_empty(), "{err}");
    let err = Config::parse("\"\" = 1", Path::new("fuzz.toml")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("fuzz.toml:1:1: \"\": unknown key"),
        "{err}"
    );
    let text = "version = 1\nmax_capacity = \"2TiB\"\n";
    let err = Config::parse(text, Path::new("fuzz.toml")).unwrap_err();
    assert_eq!(
        (err.line, err.key.as_deref()),
        (Some(2), Some("max_capacity"))
    );
}

#[test]
fn quotas_and_timeouts_are_read() {
    let text = "version = 1\nmax_ring_bytes = \"2GiB\"\nrequest_timeout = \"1500ms\"\n[per_uid]\nmax_clients = 7\nmax_attaches_per_sec = 9\n";
    let config = Config::parse(text, Path::new("q.toml")).expect("valid");
    assert_eq!(config.max_ring_bytes, 2 << 30);
    assert_eq!(config.request_timeout, Duration::from_millis(1500));
    assert_eq!(config.per_uid.max_clients, 7);
    assert_eq!(config.per_uid.max_attaches_per_sec, 9);
    assert_eq!(
        config.per_uid.max_channels,
        PerUidQuotas::default().max_channels
    );
    let err = Config::parse(
        "version = 1\n[per_uid]\nmax_client = 3\n",
        Path::new("q.toml"),
    )
    .unwrap_err();
    assert_eq!(
        (err.line, err.key.as_deref()),
        (Some(3), Some("per_uid.max_client"))
    );
    let err = Config::parse(
        "version = 1\nrequest_timeout = \"10 fortnights\"\n",
        Path::new("q.toml"),
    )
    .unwrap_err();
    assert_eq!(
        (err.line, err.key.as_deref()),
        (Some(2), Some("request_timeout"))
    );
    assert!(err.message.contains("unknown unit"), "{}", err.message);
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/shmem-broker.toml"))
}

/// The error for `text`, as (line, column, key, message).
fn error(text: &str) -> (usize, usize, String, String) {
    let err = parse(text).expect_err("config should be refused");
    (
        err.line.expect("error has a line"),
        err.column.expect("error has a column"),
        err.key.clone().unwrap_or_default(),
        err.message,
    )
}

#[test]
fn example_config_parses() {
    let text = include_str!("../../../config/shmem-broker.toml");
    let config = parse(text).unwrap();
    assert_eq!(config.socket_mode, 0o666);
    assert_eq!(config.default_capacity, 1 << 20);
    assert_eq!(config.max_capacity, 1 << 30);
    assert_eq!(config.admin_gids, vec![0]);
    assert_eq!(config.log_level, Some(slog::Level::Info));
    assert_eq!(config.log_format, Some(LogFormat::Term));
    assert_eq!(config.channels.len(), 4);
    assert_eq!(config.channels[0].name, "scratch");
    assert_eq!(
        (
            config.channels[0].max_producers,
            config.channels[0].max_consumers
        ),
        (1, 1)
    );
    let preview = &config.channels[2];
    assert_eq!(
        (preview.max_consumers, preview.slow_consumer),
        (3, SlowConsumer::Drop)
    );
    assert_eq!(config.channels[3].max_producers, 4);
    assert_eq!(config.channels[0].capacity, 64 << 10);
    assert_eq!(config.channels[0].producers, AccessList::anyone());
    assert_eq!(config.channels[0].consumers, AccessList::anyone());
    assert_eq!(
        config.channels[1].producers,
        AccessList::new(vec![Principal::Uid(0), Principal::Uid(1000)])
    );
    assert_eq!(
        config.channels[1].consumers,
        AccessList::new(vec![Principal::Gid(0), Principal::Gid(44)])
    );
}

#[test]
fn minimal_file_gives_defaults() {
    let config = parse("version = 1\n").unwrap();
    assert_eq!(
        config,
        Config {
            source: Some(PathBuf::from("/etc/shmem-broker.toml")),
            ..Config::default()
        }
    );
    let defaults = Config::default();
    assert_eq!(defaults.source, None);
    assert_eq!(defaults.socket_mode, 0o666);
    assert_eq!(defaults.default_capacity, 1 << 20);
    assert_eq!(defaults.max_capacity, 1 << 30);
    assert_eq!((defaults.max_channels, defaults.max_clients), (1024, 4096));
    assert!(defaults.channels.is_empty() && defaults.admin_gids.is_empty());
}

#[test]
fn every_setting_is_read() {
    let config = parse(
        r#"
version = 1
socket = "/run/shmem/broker.sock"
socket_mode = "0660"
default_capacity = 65536
max_capacity = "16MiB"
max_channels = 8
max_clients = 32
admin_groups = ["root", "0", "@root"]
logging = { level = "DEBUG", format = "Json" }

[[channel]]
name = "a"
capacity = "5000"      # rounded up to two pages
producers = "root"
consumers = []

[[channel]]
name = "b"
"#,
    )
    .unwrap();
    assert_eq!(config.socket, Some(PathBuf::from("/run/shmem/broker.sock")));
    assert_eq!(config.socket_mode, 0o660);
    assert_eq!(config.default_capacity, 65536);
    assert_eq!(config.max_capacity, 16 << 20);
    assert_eq!((config.max_channels, config.max_clients), (8, 32));
    assert_eq!(config.admin_gids, vec![0, 0, 0]);
    assert_eq!(config.log_level, Some(slog::Level::Debug));
    assert_eq!(config.log_format, Some(LogFormat::Json));
    assert_eq!(config.channels[0].capacity, 8192);
    assert_eq!(
        config.channels[0].producers,
        AccessList::new(vec![Principal::Uid(0)])
    );
    assert_eq!(config.channels[0].consumers, AccessList::new(vec![]));
    assert_eq!(
        config.channels[1].capacity, 65536,
        "defaults to default_capacity"
    );
}

#[test]
fn dotted_keys_and_inline_channels_work() {
    let config = parse(
        "version = 1\nlogging.level = \"warn\"\nchannel = [{ name = \"x\" }, { name = \"y\", capacity = \"8KiB\" }]\n",
    )
    .unwrap();
    assert_eq!(config.log_level, Some(slog::Level::Warning));
    assert_eq!(config.channels.len(), 2);
    assert_eq!(config.channels[1].capacity, 8192);
    // A dotted key's table has no span of its own; errors fall back to the key.
    assert_eq!(
        error("version = 1\n\nlogging.level = \"loud\"\n"),
        (
            3,
            17,
            "logging.level".into(),
            "unknown log level \"loud\" (expected trace, debug, info, warn or error)".into()
        )
    );
    assert_eq!(error("version = 1\nlogging.level.x = 1\n").0, 2);
}

#[test]
fn missing_version_is_reported_at_line_1() {
    let err = parse("# comment\nmax_clients = 5\n").unwrap_err();
    assert_eq!((err.line, err.column), (Some(1), Some(1)));
    assert_eq!(err.key.as_deref(), Some("version"));
    assert_eq!(error("").0, 1);
}

#[test]
fn other_versions_are_refused() {
    assert_eq!(
        error("# v2\nversion = 2\nnew_thing = true\n"),
        (
            2,
            11,
            "version".into(),
            "unsupported config version 2, this broker reads version 1".into()
        )
    );
    let (line, _, key, message) = error("version = \"1\"\n");
    assert_eq!((line, key.as_str()), (1, "version"));
    assert!(message.contains("expected an integer"), "{message}");
}

#[test]
fn unknown_top_level_key() {
    let (line, column, key, message) = error("version = 1\nmax_channels = 4\n  max_chanels = 5\n");
    assert_eq!((line, column, key.as_str()), (3, 3, "max_chanels"));
    assert_eq!(message, "unknown key (did you mean `max_channels`?)");
    // A typo of `version` is reported as the typo, not as a missing version.
    let (line, _, key, message) = error("verison = 1\n");
    assert_eq!((line, key.as_str()), (1, "verison"));
    assert!(message.contains("did you mean `version`"), "{message}");
    let (_, _, _, message) = error("version = 1\nfrobnicate = 1\n");
    assert!(
        message.contains("expected one of: version, socket"),
        "{message}"
    );
}

#[test]
fn unknown_key_in_second_channel() {
    let text = "version = 1\n\n[[channel]]\nname = \"a\"\n\n[[channel]]\nname = \"b\"\ncapcity = \"1MiB\"\n";
    let err = parse(text).unwrap_err();
    assert_eq!((err.line, err.column), (Some(8), Some(1)));
    assert_eq!(err.key.as_deref(), Some("channel[1].capcity"));
    assert_eq!(
        err.to_string(),
        "/etc/shmem-broker.toml:8:1: channel[1].capcity: unknown key (did you mean `capacity`?)"
    );
}

#[test]
fn misplaced_keys_get_a_hint() {
    // Top-level settings written after a [section] header land in that section.
    let (line, _, key, message) =
        error("version = 1\n[logging]\nlevel = \"info\"\nmax_clients = 3\n");
    assert_eq!((line, key.as_str()), (4, "logging.max_clients"));
    assert!(message.contains("top-level setting"), "{message}");
    let (line, _, key, message) = error("version = 1\ncapacity = \"1MiB\"\n");
    assert_eq!((line, key.as_str()), (2, "capacity"));
    assert!(message.contains("[[channel]]"), "{message}");
    let (line, _, key, message) = error("version = 1\n\n[channel]\nname = \"a\"\n");
    assert_eq!((line, key.as_str()), (3, "channel"));
    assert!(message.contains("double brackets"), "{message}");
}

#[test]
fn bad_capacity_string() {
    let text = "version = 1\n[[channel]]\nname = \"a\"\ncapacity = \"12 parsecs\"\n";
    let (line, column, key, message) = error(text);
    assert_eq!((line, column, key.as_str()), (4, 12, "channel[0].capacity"));
    assert!(message.contains("unknown unit"), "{message}");
}

#[test]
fn capacity_limits() {
    let channel =
        |capacity: &str| format!("version = 1\n[[channel]]\nname = \"a\"\ncapacity = {capacity}\n");
    let (line, _, key, message) = error(&channel("0"));
    assert_eq!((line, key.as_str()), (4, "channel[0].capacity"));
    assert!(message.contains("greater than zero"), "{message}");
    assert!(error(&channel("\"100\""))
        .3
        .contains("below the minimum of 4KiB"));
    assert!(error(&channel("-1")).3.contains("negative"));
    assert!(error(&channel("\"2GiB\""))
        .3
        .contains("above max_capacity (1GiB)"));
    assert!(error(&channel("1.5")).3.contains("expected a size"));
    // Rounding happens before the max_capacity check.
    let (line, _, key, message) = error(
        "version = 1\nmax_capacity = 10000\ndefault_capacity = 8192\n[[channel]]\nname = \"a\"\ncapacity = 9000\n",
    );
    assert_eq!((line, key.as_str()), (6, "channel[0].capacity"));
    assert!(message.contains("12KiB is above"), "{message}");
    // max_capacity below the built-in default_capacity needs default_capacity too.
    let (line, _, key, _) = error("version = 1\nmax_capacity = \"64KiB\"\n");
    assert_eq!((line, key.as_str()), (2, "max_capacity"));
    assert_eq!(
        parse("version = 1\nmax_capacity = \"64KiB\"\ndefault_capacity = \"4KiB\"\n")
            .unwrap()
            .default_capacity,
        4096
    );
    assert_eq!(error("version = 1\nmax_capacity = 100\n").2, "max_capacity");
    assert_eq!(
        error("version = 1\ndefault_capacity = \"2GiB\"\n").2,
        "default_capacity"
    );
}

#[test]
fn bad_channel_name() {
    let text = "version = 1\n[[channel]]\nname = \"a b\"\n";
    let (line, column, key, message) = error(text);
    assert_eq!((line, column, key.as_str()), (3, 8, "channel[0].name"));
    assert!(message.contains("invalid channel name"), "{message}");
    let (line, _, key, message) = error("version = 1\n[[channel]]\ncapacity = 4096\n");
    assert_eq!((line, key.as_str()), (2, "channel[0].name"));
    assert!(message.starts_with("missing"), "{message}");
}

#[test]
fn duplicate_channel_name() {
    let text = "version = 1\n[[channel]]\nname = \"cam\"\n\n[[channel]]\nname = \"other\"\n\n[[channel]]\nname = \"cam\"\n";
    let (line, column, key, message) = error(text);
    assert_eq!((line, column, key.as_str()), (9, 8, "channel[2].name"));
    assert_eq!(
        message,
        "duplicate channel name \"cam\" (first defined on line 3)"
    );
}

#[test]
fn wrong_types() {
    let (line, column, key, message) = error("version = 1\nmax_channels = \"10\"\n");
    assert_eq!((line, column, key.as_str()), (2, 16, "max_channels"));
    assert_eq!(message, "expected an integer, found a string");
    assert_eq!(
        error("version = 1\nmax_clients = 0\n").3,
        "must be at least 1, not 0"
    );
    assert_eq!(error("version = 1\nsocket = 5\n").2, "socket");
    assert_eq!(error("version = 1\nlogging = \"info\"\n").2, "logging");
    assert_eq!(error("version = 1\nchannel = 3\n").2, "channel");
    assert_eq!(error("version = 1\nchannel = [3]\n").2, "channel[0]");
    assert_eq!(
        error("version = 1\n[logging]\nformat = 1\n").2,
        "logging.format"
    );
    assert_eq!(
        error("version = 1\nwhen = 1979-05-27\n").3,
        "unknown key (expected one of: version, socket, socket_mode, default_capacity, \
         max_capacity, max_channels, max_clients, admin_groups, max_ring_bytes, \
         request_timeout, per_uid, logging, channel)"
    );
    let (line, _, key, message) = error("version = 1\n[[channel]]\nname = 1979-05-27\n");
    assert_eq!((line, key.as_str()), (3, "channel[0].name"));
    assert_eq!(message, "expected a string, found a date/time");
}

#[test]
fn toml_syntax_error() {
    let err = parse("version = 1\n\n[[channel]]\nname = \"unterminated\n").unwrap_err();
    assert_eq!(err.line, Some(4));
    assert_eq!(err.key, None);
    assert!(
        err.to_string().starts_with("/etc/shmem-broker.toml:4:"),
        "{err}"
    );
    let err = parse("version = 1\nversion = 1\n").unwrap_err();
    assert_eq!(err.line, Some(2));
    assert!(err.message.contains("duplicate key"), "{}", err.message);
}

#[test]
fn socket_settings() {
    let (line, _, key, message) = error("version = 1\nsocket = \"run/broker.sock\"\n");
    assert_eq!((line, key.as_str()), (2, "socket"));
    assert!(message.contains("absolute"), "{message}");
    let long = format!("version = 1\nsocket = \"/{}\"\n", "x".repeat(107));
    assert!(error(&long).3.contains("at most 107"));
    assert!(parse(&format!("version = 1\nsocket = \"/{}\"\n", "x".repeat(106))).is_ok());
    for (mode, expected) in [("\"0\"", 0), ("\"777\"", 0o777), ("\"0600\"", 0o600)] {
        let config = parse(&format!("version = 1\nsocket_mode = {mode}\n")).unwrap();
        assert_eq!(config.socket_mode, expected, "{mode}");
    }
    for mode in [
        "\"01777\"",
        "\"0689\"",
        "\"\"",
        "\"rw\"",
        "438",
        "\"77777777777777\"",
    ] {
        let (line, _, key, _) = error(&format!("version = 1\nsocket_mode = {mode}\n"));
        assert_eq!((line, key.as_str()), (2, "socket_mode"), "{mode}");
    }
    assert!(error("version = 1\nsocket_mode = 0o660\n")
        .3
        .contains("quoted octal string"));
}

#[test]
fn unknown_principals_point_at_the_element() {
    let text = "version = 1\n[[channel]]\nname = \"a\"\nproducers = [\n  \"root\",\n  \"no-such-user-xyz\",\n]\n";
    let (line, column, key, message) = error(text);
    assert_eq!(
        (line, column, key.as_str()),
        (6, 3, "channel[0].producers[1]")
    );
    assert_eq!(message, "unknown user \"no-such-user-xyz\"");
    let (line, _, key, message) =
        error("version = 1\n[[channel]]\nname = \"a\"\nconsumers = [\"@no-such-group-xyz\"]\n");
    assert_eq!((line, key.as_str()), (4, "channel[0].consumers[0]"));
    assert!(message.contains("unknown group"), "{message}");
    let (line, _, key, message) =
        error("version = 1\nadmin_groups = [\"root\", \"no-such-group-xyz\"]\n");
    assert_eq!((line, key.as_str()), (2, "admin_groups[1]"));
    assert!(message.contains("unknown group"), "{message}");
    assert_eq!(
        error("version = 1\nadmin_groups = [0]\n").2,
        "admin_groups[0]"
    );
}

#[test]
fn max_channels_below_channel_count() {
    let text =
        "version = 1\nmax_channels = 1\n[[channel]]\nname = \"a\"\n[[channel]]\nname = \"b\"\n";
    let (line, _, key, message) = error(text);
    assert_eq!((line, key.as_str()), (2, "max_channels"));
    assert_eq!(message, "max_channels is 1 but the file defines 2 channels");
}

#[test]
fn error_display_omits_missing_parts() {
    let mut err = ConfigError {
        file: PathBuf::from("/x.toml"),
        line: Some(3),
        column: Some(7),
        key: Some("socket".into()),
        message: "bad".into(),
    };
    assert_eq!(err.to_string(), "/x.toml:3:7: socket: bad");
    err.column = None;
    assert_eq!(err.to_string(), "/x.toml:3: socket: bad");
    err.line = None;
    err.key = None;
    assert_eq!(err.to_string(), "/x.toml: bad");
}

#[test]
fn load_reports_unreadable_files() {
    let err = Config::load(Path::new("/nonexistent/shmem-broker.toml")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/nonexistent/shmem-broker.toml: cannot read: No such file or directory"
    );
    let dir = std::env::temp_dir().join(format!("shmem-broker-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, b"version = 1\n# caf\xe9\n").unwrap();
    let err = Config::load(&file).unwrap_err();
    assert_eq!((err.line, err.column), (Some(2), Some(6)));
    assert_eq!(err.message, "not valid UTF-8");
    std::fs::write(&file, "version = 1\n[[channel]]\nname = \"from-file\"\n").unwrap();
    let config = Config::load(&file).unwrap();
    assert_eq!(config.source.as_deref(), Some(file.as_path()));
    assert_eq!(config.channels[0].name, "from-file");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn log_format_text() {
    assert_eq!("json".parse(), Ok(LogFormat::Json));
    assert_eq!(" TERM ".parse(), Ok(LogFormat::Term));
    assert!("xml".parse::<LogFormat>().is_err());
    assert_eq!(LogFormat::Json.to_string(), "json");
    assert_eq!(LogFormat::Term.to_string(), "term");
}

#[test]
fn suggestions() {
    assert_eq!(closest("capcity", known_keys().channel), Some("capacity"));
    assert_eq!(
        closest("Max-Clients", known_keys().top),
        Some("max_clients")
    );
    assert_eq!(closest("producer", known_keys().channel), Some("producers"));
    assert_eq!(closest("colour", known_keys().channel), None);
    assert_eq!(line_column("ab\ncdé\nf", 7), (2, 4));
    assert_eq!(
        line_column("ab\ncdé\nf", 6),
        (2, 3),
        "inside é: start of the character"
    );
    assert_eq!(line_column("ab\ncdé\nf", 8), (3, 1));
    assert_eq!(line_column("x", 99), (1, 2));
}
