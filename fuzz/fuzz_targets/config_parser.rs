//! Arbitrary text into the broker's config parser, `Config::parse(text, "fuzz.toml")`.
//!
//! Checks:
//! * nothing panics (parsing, or displaying the error);
//! * an error's position is a real place in the text: line 1 ..= (number of '\n') + 1, and a
//!   column from 1 to one past the last character of that line; a column only with a line;
//! * an accepted config is one the broker can run: capacities are whole pages between 4 KiB and
//!   `max_capacity` (and within what a ring can be), channel names valid and unique, counts and
//!   timeouts non-zero, the socket path absolute and short enough for `sockaddr_un`.
//!
//! Input bytes that are not UTF-8 are converted lossily rather than thrown away, so every
//! execution reaches the parser.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shmem_broker_client::names::validate_channel_name;
use shmem_broker_client::ring;
use shmem_broker_daemon::config::Config;
use std::path::Path;

/// Reported bugs that a long run may step over while they are being fixed:
/// `SHMEM_FUZZ_KNOWN=config-empty-message,...` (the list is in fuzz/README.md).
fn known(issue: &str) -> bool {
    static KNOWN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    KNOWN
        .get_or_init(|| std::env::var("SHMEM_FUZZ_KNOWN").unwrap_or_default())
        .split(',')
        .any(|k| k.trim() == issue)
}

fn check_position(text: &str, line: Option<usize>, column: Option<usize>, what: &str) {
    let Some(line) = line else {
        assert!(column.is_none(), "{what}: a column without a line");
        return;
    };
    let lines: Vec<&str> = text.split('\n').collect();
    assert!(
        (1..=lines.len()).contains(&line),
        "{what}: line {line}, but the text has {} line(s)",
        lines.len()
    );
    if let Some(column) = column {
        let width = lines[line - 1].chars().count();
        assert!(
            (1..=width + 1).contains(&column),
            "{what}: column {column}, but line {line} has {width} character(s)"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("fuzz.toml");
    match Config::parse(&text, path) {
        Err(err) => {
            let shown = err.to_string();
            assert!(shown.starts_with("fuzz.toml"), "{shown}");
            assert!(
                !err.message.is_empty() || known("config-empty-message"),
                "error without a message: {shown}"
            );
            // An empty quoted key is shown as `""`, never as nothing between two colons.
            assert!(
                !shown.contains(": : ") || known("config-empty-key"),
                "empty key: {shown}"
            );
            check_position(&text, err.line, err.column, &shown);
        }
        Ok(config) => {
            assert_eq!(config.source.as_deref(), Some(path));
            let page = ring::CAPACITY_GRANULE;
            assert!(config.max_capacity >= ring::MIN_CAPACITY);
            // A ring cannot be larger than ring::MAX_CAPACITY: a config that promises more
            // passes --check-config and then fails at start ("cannot create configured channels").
            let largest_ring = if known("config-capacity-above-ring-max") {
                u64::MAX
            } else {
                ring::MAX_CAPACITY
            };
            for (what, capacity) in std::iter::once(("default_capacity", config.default_capacity))
                .chain(
                    config
                        .channels
                        .iter()
                        .map(|c| (c.name.as_str(), c.capacity)),
                )
            {
                assert!(
                    capacity % page == 0
                        && capacity >= ring::MIN_CAPACITY
                        && capacity <= config.max_capacity
                        && capacity <= largest_ring,
                    "{what}: capacity {capacity} accepted (max_capacity {})",
                    config.max_capacity
                );
            }
            assert!(config.socket_mode <= 0o777);
            assert!(config.max_channels >= 1 && config.max_clients >= 1);
            assert!(config.channels.len() <= config.max_channels);
            assert!(!config.request_timeout.is_zero());
            assert!(config.max_ring_bytes > 0);
            let quotas = &config.per_uid;
            assert!(quotas.max_clients >= 1 && quotas.max_channels >= 1);
            assert!(quotas.max_attaches_per_sec >= 1 && quotas.max_ring_bytes > 0);
            if let Some(socket) = &config.socket {
                assert!(socket.is_absolute() && socket.as_os_str().len() <= 107);
            }
            for (i, channel) in config.channels.iter().enumerate() {
                assert!(
                    validate_channel_name(&channel.name).is_ok(),
                    "{:?}",
                    channel.name
                );
                assert!(
                    !config.channels[..i].iter().any(|c| c.name == channel.name),
                    "duplicate channel {:?} accepted",
                    channel.name
                );
            }
        }
    }
});
