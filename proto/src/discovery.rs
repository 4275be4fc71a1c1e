//! Where the broker's control socket lives.
//!
//! A broker binds `/run/shmem-broker/control.sock` when run as root (that is also where
//! `shmem-broker.socket` listens) and `$XDG_RUNTIME_DIR/shmem-broker/control.sock` when run by
//! another user. Clients look at an explicit path, then `$SHMEM_BROKER_SOCKET`, then their own
//! user's broker socket if it exists, then the system broker's.

use std::path::PathBuf;

/// Environment variable that overrides the socket path for clients.
pub const SOCKET_ENV: &str = "SHMEM_BROKER_SOCKET";

/// The socket path of the system broker started by `shmem-broker.socket`.
pub const SYSTEM_SOCKET_PATH: &str = "/run/shmem-broker/control.sock";

/// The socket of a broker run by the current (non-root) user, if `XDG_RUNTIME_DIR` is set.
fn user_socket_path() -> Option<PathBuf> {
    std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|dir| !dir.is_empty())
        .map(|dir| PathBuf::from(dir).join("shmem-broker/control.sock"))
}

/// The path a broker binds when given no `--socket` and no `socket` in its config, or why
/// there is none.
pub fn default_socket_path() -> Result<PathBuf, String> {
    if rustix::process::geteuid().is_root() {
        return Ok(PathBuf::from(SYSTEM_SOCKET_PATH));
    }
    user_socket_path().ok_or_else(|| {
        "no socket path: XDG_RUNTIME_DIR is not set and only root may use /run/shmem-broker; \
         pass --socket PATH or set `socket` in the config"
            .to_string()
    })
}

/// The path a client connects to: `explicit`, else `$SHMEM_BROKER_SOCKET`, else the user's own
/// broker if one is listening there, else the system broker.
pub fn client_socket_path(explicit: Option<PathBuf>) -> PathBuf {
    if let Some(path) = explicit {
        return path;
    }
    if let Some(path) = std::env::var_os(SOCKET_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(path);
    }
    if !rustix::process::geteuid().is_root() {
        if let Some(path) = user_socket_path().filter(|p| p.exists()) {
            return path;
        }
    }
    PathBuf::from(SYSTEM_SOCKET_PATH)
}
