//! Harness for the shmem-broker integration tests.
//!
//! Every test drives the real binaries: a real `shmem-broker` on a real Unix socket (bound by
//! path, or handed over by `systemd-socket-activate`), real `shmemctl` processes and the real
//! client library. Nothing is mocked.
//!
//! Rules the helpers enforce so the tests stay honest:
//! - every spawned process is owned by a [`Proc`], which SIGKILLs and reaps it on drop (and the
//!   kernel kills it with the test thread that spawned it, should the test binary itself die);
//! - every temp dir is a [`tempfile::TempDir`], removed on drop after its processes are dead;
//! - waiting is polling against a deadline ([`wait_for`]); a timeout fails the test with what was
//!   awaited and the last state seen, never a bare sleep;
//! - when a test panics, the stderr of each process still running (the broker's log included)
//!   is printed, so a CI failure explains itself.
//!
//! Binaries are looked up in `$SHMEM_BROKER_BIN_DIR`, else `$CARGO_TARGET_DIR/debug`, else
//! `<workspace>/target/debug`: build them first with `cargo build --workspace`.
//!
//! Spawn processes from the test's own thread: a child is killed when the thread that spawned
//! it ends (PR_SET_PDEATHSIG), which is what keeps a killed test run from leaking brokers.

// One module per job, all re-exported so tests `use shmem_broker_tests::*`: `paths`, `waiting`,
// `processes`, `broker`, `json`, `wire`, `data`, `hostile`.
pub mod bridge;
pub mod fanout;
pub mod hostile_common;
pub mod old_kernel;
pub mod systemd;

mod broker;
mod data;
mod hostile;
mod json;
mod paths;
mod processes;
mod waiting;
mod wire;

pub use broker::*;
pub use data::*;
pub use hostile::*;
pub use json::*;
pub use paths::*;
pub use processes::*;
pub use waiting::*;
pub use wire::*;

use std::time::Duration;

pub use shmem_broker_client;
/// Rings mapped as a hostile peer maps them: the one copy, shared with the fuzz targets.
pub use shmem_broker_testkit::ring as raw_ring;
/// Numbered messages that check themselves: the one copy, shared with the soak.
pub use shmem_broker_testkit::stamp;

/// How long a test waits for something that should happen promptly (a broker answering, a peer
/// appearing or going away, a process exiting after a signal).
pub const WAIT: Duration = Duration::from_secs(10);
/// Upper bound for one short `shmemctl` command (list, info, create...).
pub const CTL_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How much of a process's stderr is printed when a test fails.
const LOG_TAIL: usize = 16 * 1024;

pub const BROKER_BIN: &str = "shmem-broker";
pub const CTL_BIN: &str = "shmemctl";
/// The unprivileged user the access tests switch to.
pub const NOBODY: u32 = 65534;
