//! Where the broker's control socket lives.
//!
//! Clients look in order at an explicit path, `$SHMEM_BROKER_SOCKET`, then the daemon's default:
//! `/run/shmem-broker/control.sock` for root, `$XDG_RUNTIME_DIR/shmem-broker/control.sock` for
//! everyone else (falling back to the system path when `XDG_RUNTIME_DIR` is unset, which is where
//! a systemd-managed broker listens).

use std::path::PathBuf;

/// Environment variable that overrides the socket path for clients.
pub const SOCKET_ENV: &str = "SHMEM_BROKER_SOCKET";

/// The socket path of the system broker started by `shmem-broker.socket`.
pub const SYSTEM_SOCKET_PATH: &str = "/run/shmem-broker/control.sock";

/// The path a broker binds when given no `--socket` and no `socket` in its config.
pub fn default_socket_path() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        return PathBuf::from(SYSTEM_SOCKET_PATH);
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("shmem-broker/control.sock"),
        _ => PathBuf::from(SYSTEM_SOCKET_PATH),
    }
}

/// The path a client connects to: `explicit`, else `$SHMEM_BROKER_SOCKET`, else the default.
pub fn client_socket_path(explicit: Option<PathBuf>) -> PathBuf {
    explicit
        .or_else(|| {
            std::env::var_os(SOCKET_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(default_socket_path)
}
