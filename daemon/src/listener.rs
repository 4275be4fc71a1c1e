//! Where the control socket comes from: systemd socket activation, or a path the broker binds.
//!
//! The activation environment is read exactly once, here, with `sd_notify::listen_fds_with_names`.
//! `listenfd` is not used: it ignores `LISTEN_FDNAMES` (so it cannot tell the `control` socket
//! from stored fds) and removes `LISTEN_PID`/`LISTEN_FDS` from the environment as it reads.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use rustix::fs::Mode;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use shmem_broker_proto::discovery::default_socket_path;

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
    /// The kernel refuses fds sent to the broker (`SO_PASSRIGHTS` off on the listener, which
    /// every accepted connection inherits). False on kernels before 6.16.
    pub refuses_passed_fds: bool,
}

/// `SO_PASSRIGHTS` (Linux 6.16+), not in the libc crate yet: the asm-generic value, which
/// these architectures use; `None` elsewhere (the broker then behaves as on an older kernel).
#[cfg(any(
    target_arch = "x86",
    target_arch = "x86_64",
    target_arch = "arm",
    target_arch = "aarch64",
    target_arch = "riscv64",
    target_arch = "loongarch64",
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "s390x"
))]
const SO_PASSRIGHTS: Option<libc::c_int> = Some(83);
#[cfg(not(any(
    target_arch = "x86",
    target_arch = "x86_64",
    target_arch = "arm",
    target_arch = "aarch64",
    target_arch = "riscv64",
    target_arch = "loongarch64",
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "s390x"
)))]
const SO_PASSRIGHTS: Option<libc::c_int> = None;

/// Turns off `SO_PASSRIGHTS` on a Unix socket: a peer's `sendmsg` with `SCM_RIGHTS` then fails
/// with `EPERM` and nothing is queued, so no client fd ever reaches the broker. The option
/// belongs to the receiving socket (the sender's setting does not matter), and a connection
/// inherits it from the listener when the client connects, even before `accept`: checked on
/// 6.18, and in the kernel's `unix_stream_connect`. Returns false where the kernel lacks it
/// (`ENOPROTOOPT` before 6.16, `EINVAL` on odd socket types).
pub fn refuse_passed_fds(socket: BorrowedFd<'_>) -> io::Result<bool> {
    let Some(option) = SO_PASSRIGHTS else {
        return Ok(false);
    };
    let off: libc::c_int = 0;
    // SAFETY: `off` is a live c_int and the length passed is exactly its size; the kernel
    // only reads it. The fd is borrowed, so it is open for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            std::ptr::addr_of!(off).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOPROTOOPT | libc::EINVAL) => Ok(false),
        _ => Err(err),
    }
}

/// The fds systemd passed besides the control socket (channels from the fd store), by name.
pub type StoredFds = Vec<(OwnedFd, String)>;

impl ControlSocket {
    /// Takes the activated socket if there is one, else binds `path` (or the default path).
    /// Also returns every other fd systemd passed, for the fd store to take back.
    pub fn open(path: Option<PathBuf>, mode: u32) -> Result<(ControlSocket, StoredFds), String> {
        let (mut socket, stored) = ControlSocket::open_listener(path, mode)?;
        socket.refuses_passed_fds = refuse_passed_fds(socket.listener.as_fd())
            .map_err(|e| format!("cannot set SO_PASSRIGHTS on the control socket: {e}"))?;
        Ok((socket, stored))
    }

    fn open_listener(
        path: Option<PathBuf>,
        mode: u32,
    ) -> Result<(ControlSocket, StoredFds), String> {
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
                        refuses_passed_fds: false,
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

/// Binds the control socket at `path` with `mode`, in a directory no other user can write to.
///
/// The mode is set without a path: `fchmod` on the socket before `bind`, which on Linux gives
/// the new node that mode minus the umask, and the umask is 0 during `bind`. (A `chmod(path)`
/// after `bind` follows a symlink that whoever can write to the directory swapped in, and makes
/// a root broker chmod any file.) The directory check is what stops that swap, and an attacker's
/// socket placed there first.
fn bind(path: &Path, mode: u32) -> Result<ControlSocket, String> {
    let shown = path.display();
    let name = path
        .file_name()
        .ok_or_else(|| format!("socket path {shown} does not name a file"))?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    create_socket_dir(dir)?;
    // Check the real directory, and bind there: every ancestor of it is then checked, and the
    // path cannot be redirected by a symlink in a directory someone else controls.
    let dir = fs::canonicalize(dir)
        .map_err(|e| format!("cannot resolve socket directory {}: {e}", dir.display()))?;
    check_socket_dir(&dir)?;
    let real = dir.join(name);
    let real_shown = real.display();
    match fs::symlink_metadata(&real) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(&real) {
            Ok(_) => return Err(format!("another broker is already running on {shown}")),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                fs::remove_file(&real)
                    .map_err(|e| format!("cannot remove stale socket {real_shown}: {e}"))?;
            }
            Err(e) => return Err(format!("cannot check existing socket {real_shown}: {e}")),
        },
        Ok(_) => {
            return Err(format!(
                "{real_shown} exists and is not a socket; refusing to replace it"
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot inspect {real_shown}: {e}")),
    }
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| format!("cannot create a socket for {shown}: {e}"))?;
    rustix::fs::fchmod(&socket, Mode::from_raw_mode(mode & 0o777))
        .map_err(|e| format!("cannot set mode {mode:o} on the socket for {shown}: {e}"))?;
    let address = SocketAddrUnix::new(&real)
        .map_err(|e| format!("socket path {real_shown} is too long: {e}"))?;
    // The broker is single-threaded here (the closer threads start with the event loop), so
    // the process-wide umask is 0 for this bind only.
    let umask = rustix::process::umask(Mode::empty());
    let bound = rustix::net::bind(&socket, &address);
    rustix::process::umask(umask);
    bound.map_err(|e| format!("cannot bind {real_shown}: {e}"))?;
    rustix::net::listen(&socket, libc::SOMAXCONN)
        .map_err(|e| format!("cannot listen on {real_shown}: {e}"))?;
    let meta =
        fs::symlink_metadata(&real).map_err(|e| format!("cannot inspect {real_shown}: {e}"))?;
    if !meta.file_type().is_socket() || meta.mode() & 0o7777 != mode & 0o777 {
        return Err(format!(
            "{real_shown} has mode {:o} after bind, not {:o}",
            meta.mode() & 0o7777,
            mode & 0o777
        ));
    }
    Ok(ControlSocket {
        listener: UnixListener::from(socket),
        source: Source::Bound {
            path: real.clone(),
            inode: (meta.dev(), meta.ino()),
        },
        path: Some(path.to_path_buf()),
        refuses_passed_fds: false,
    })
}

/// Creates the socket directory and missing parents, 0755 (never the umask's idea), each
/// only after checking the directory it goes into.
fn create_socket_dir(dir: &Path) -> Result<(), String> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_socket_dir(parent)?;
        let real = fs::canonicalize(parent)
            .map_err(|e| format!("cannot resolve {}: {e}", parent.display()))?;
        check_dir_chain(&real, false)?;
    }
    match fs::DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(format!(
            "cannot create socket directory {}: {e}",
            dir.display()
        )),
    }
}

/// The socket's own directory must be owned by root or the broker's uid and writable by no
/// one else; so must each ancestor, except that a sticky ancestor (like /tmp) may be
/// world-writable: others cannot rename what they do not own in it.
fn check_socket_dir(dir: &Path) -> Result<(), String> {
    check_dir_chain(dir, true)
}

fn check_dir_chain(dir: &Path, own_dir_strict: bool) -> Result<(), String> {
    let me = rustix::process::geteuid().as_raw();
    for (depth, ancestor) in dir.ancestors().enumerate() {
        let meta = fs::symlink_metadata(ancestor)
            .map_err(|e| format!("cannot inspect {}: {e}", ancestor.display()))?;
        let mode = meta.mode() & 0o7777;
        let owner = meta.uid();
        let sticky = mode & 0o1000 != 0;
        let strict = depth == 0 && own_dir_strict;
        let subject = if depth == 0 {
            "it".to_string()
        } else {
            format!("its ancestor {}", ancestor.display())
        };
        let why = if owner != 0 && owner != me {
            format!("{subject} is owned by uid {owner} (mode {mode:04o}), not by root or the broker's uid {me}")
        } else if mode & 0o022 != 0 && (strict || !sticky) {
            let note = if sticky {
                " (the sticky bit is not enough for the socket's own directory)"
            } else {
                ""
            };
            format!("{subject} (owner uid {owner}, mode {mode:04o}) is writable by group or others{note}")
        } else {
            continue;
        };
        return Err(format!(
            "refusing socket directory {}: {why}; another user could replace the socket with a \
             symlink (and make the broker chmod a file of their choice) or with their own socket. \
             Use a directory owned by root or uid {me} that group and others cannot write",
            dir.display()
        ));
    }
    Ok(())
}
