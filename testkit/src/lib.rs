//! The tooling the integration tests (`tests/harness`), the benchmarks (`bench/`), the soak
//! (`soak/`) and the fuzz targets (`fuzz/`) share, in one copy. Not published, not shipped:
//! nothing here runs in the broker or a client program.
//!
//! It owns four things:
//! - [`process`]: children that die with the thread that spawned them (`PR_SET_PDEATHSIG`), and
//!   handing fds to a child at fixed numbers, so a killed test, bench or soak run leaves no
//!   broker or worker behind;
//! - [`broker`]: the command line of a broker on a private socket, and waiting until it answers;
//! - [`stamp`]: numbered messages that check themselves (sequence number, stream, length, a
//!   CRC-32 and a body derived from them), and the cheap head-and-tail stamps the benchmarks
//!   use where stamping a whole message would be what they measure;
//! - [`ring`]: a ring memfd (or an ack page) mapped shared as a hostile peer maps it, to write
//!   positions, flags and counters the protocol says it must not.
//!
//! What stays with each user (their process handles, logs, error style: panics in tests,
//! `anyhow` in the bench, exit codes in the soak) is theirs; this crate returns plain errors.

pub mod broker;
pub mod process;
pub mod ring;
pub mod stamp;
