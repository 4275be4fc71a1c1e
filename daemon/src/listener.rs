//! Where the control socket comes from: systemd socket activation, or a path the broker binds.
//!
//! The activation environment is read exactly once, here, with `sd_notify::listen_fds_with_names`.
//! `listenfd` is not used: it ignores `LISTEN_FDNAMES` (so it cannot tell the `control` socket
//! from stored fds) and removes `LISTEN_PID`/`LISTEN_FDS` from the environment as it reads.

use std::fs;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use rustix::net::{AddressFamily, SocketType};
use shmem_broker_client::discovery::default_socket_path;

/// The fd name `shmem-broker.socket` gives its socket (`FileDescriptorName=control`).
pub const CONTROL_FD_NAME: &str = "control";

pub enum Source {
    /// Passed in by systemd (or `systemd-socket-activate`).
    Systemd,
    /// Bound by the broker at this path, with the inode it created (to unlink only its own).
    Bound { path: PathBuf, inode: (u64, u64) },
}

pub struct ControlSocket {
    pub listener: UnixListener,
    pub source: Source,
    /// The filesystem path clients use, when there is one.
    pub path: Option<PathBuf>,
}

/// The fds systemd passed besides the control socket (channels from the fd store), by name.
pub type StoredFds = Vec<(OwnedFd, String)>;

impl ControlSocket {
    /// Takes the activated socket if there is one, else binds `path` (or the default path).
    /// Also returns every other fd systemd passed, for the fd store to take back.
    pub fn open(path: Option<PathBuf>, mode: u32) -> Result<(ControlSocket, StoredFds), String> {
        match activation_fds()? {
            Some((listener, stored)) => {
                let path = rustix::net::getsockname(&listener)
                    .ok()
                    .and_then(|addr| rustix::net::SocketAddrUnix::try_from(addr).ok())
                    .and_then(|addr| {
                        addr.path()
                            .map(|p| PathBuf::from(p.to_string_lossy().into_owned()))
                    });
                Ok((
                    ControlSocket {
                        listener,
                        source: Source::Systemd,
                        path,
                    },
                    stored,
                ))
            }
            None => {
                let path = match path {
                    Some(path) => path,
                    None => default_socket_path()?,
                };
                bind(&path, mode).map(|socket| (socket, Vec::new()))
            }
        }
    }

    pub fn source_name(&self) -> &'static str {
        match self.source {
            Source::Systemd => "systemd",
            Source::Bound { .. } => "bound",
        }
    }

    /// Removes the socket file if the broker bound it and it is still the same inode (a newer
    /// broker may have replaced it).
    pub fn remove_path(&self) {
        if let Source::Bound { path, inode } = &self.source {
            if let Ok(meta) = fs::symlink_metadata(path) {
                if (meta.dev(), meta.ino()) == *inode {
                    let _ = fs::remove_file(path);
                }
            }
        }
    }
}

fn activation_fds() -> Result<Option<(UnixListener, StoredFds)>, String> {
    let fds: Vec<(i32, String)> = sd_notify::listen_fds_with_names()
        .map_err(|e| format!("bad socket activation environment: {e}"))?
        .collect();
    if fds.is_empty() {
        return Ok(None);
    }
    // The fd named "control"; a lone unnamed fd (systemd-socket-activate without --fdname) is
    // the control socket too.
    let chosen = fds
        .iter()
        .position(|(_, name)| name == CONTROL_FD_NAME)
        .or_else(|| (fds.len() == 1).then_some(0))
        .ok_or_else(|| {
            let names: Vec<_> = fds.iter().map(|(_, n)| n.as_str()).collect();
            format!(
                "socket activation passed {} fds named {names:?}, none named {CONTROL_FD_NAME:?}",
                fds.len()
            )
        })?;
    let mut listener = None;
    let mut stored = Vec::new();
    for (index, (raw, name)) in fds.into_iter().enumerate() {
        // SAFETY (fd ownership, no memory involved): systemd passed these fds to this process
        // and nothing else in it has taken them; this function is the only reader of the
        // activation environment and runs once.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if index == chosen {
            listener = Some(fd);
        } else {
            stored.push((fd, name));
        }
    }
    let fd = listener.ok_or("activation fd vanished")?;
    let is_unix_listener = rustix::net::sockopt::socket_domain(&fd).ok()
        == Some(AddressFamily::UNIX)
        && rustix::net::sockopt::socket_type(&fd).ok() == Some(SocketType::STREAM)
        && rustix::net::sockopt::socket_acceptconn(&fd).unwrap_or(false);
    if !is_unix_listener {
        return Err("the activated fd is not a listening Unix stream socket (check ListenStream= in shmem-broker.socket)".into());
    }
    Ok(Some((UnixListener::from(fd), stored)))
}

fn bind(path: &Path, mode: u32) -> Result<ControlSocket, String> {
    let shown = path.display();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create socket directory {}: {e}", dir.display()))?;
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => return Err(format!("another broker is already running on {shown}")),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                fs::remove_file(path)
                    .map_err(|e| format!("cannot remove stale socket {shown}: {e}"))?;
            }
            Err(e) => return Err(format!("cannot check existing socket {shown}: {e}")),
        },
        Ok(_) => {
            return Err(format!(
                "{shown} exists and is not a socket; refusing to replace it"
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot inspect {shown}: {e}")),
    }
    let listener = UnixListener::bind(path).map_err(|e| format!("cannot bind {shown}: {e}"))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set mode {mode:o} on {shown}: {e}"))?;
    let meta = fs::symlink_metadata(path).map_err(|e| format!("cannot inspect {shown}: {e}"))?;
    Ok(ControlSocket {
        listener,
        source: Source::Bound {
            path: path.to_path_buf(),
            inode: (meta.dev(), meta.ino()),
        },
        path: Some(path.to_path_buf()),
    })
}
