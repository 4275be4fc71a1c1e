//! How `shmemctl` ends: one line on stderr naming the real cause once, and the exit code.

use std::fmt;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::ExitCode;

/// Exit code of a failed command (a malformed command line exits 2, from the parser).
pub const FAILURE: u8 = 1;
/// `recv` delivered what it could, but producers' streams were cut short (it said which).
pub const STREAMS_LOST: u8 = 3;

/// Writing standard output failed: the cause is stdout (a full disk, a closed pipe), never
/// the channel.
#[derive(Debug)]
pub struct StdoutError(pub io::Error);

impl fmt::Display for StdoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "writing standard output: {}", self.0)
    }
}

impl std::error::Error for StdoutError {}

/// An error already said on stderr; only the exit code is left to give.
#[derive(Debug)]
pub struct Said(pub u8);

impl fmt::Display for Said {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exit {}", self.0)
    }
}

impl std::error::Error for Said {}

/// Turns an error into its exit code, saying it on stderr in one line first. A closed
/// standard output (EPIPE: `shmemctl list | head -1`) ends the process quietly by SIGPIPE, as
/// coreutils do.
pub fn finish(err: anyhow::Error) -> ExitCode {
    if let Some(Said(code)) = err.downcast_ref::<Said>() {
        return ExitCode::from(*code);
    }
    if let Some(StdoutError(e)) = err.downcast_ref::<StdoutError>() {
        if e.kind() == io::ErrorKind::BrokenPipe {
            die_of_sigpipe();
        }
    }
    eprintln!("shmemctl: error: {}", one_line(&err));
    ExitCode::from(FAILURE)
}

/// The outermost message and each cause it does not already contain: the client library's
/// errors put their source in their own text, so a plain join would say it twice.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// The one line for a socket this user may not connect to, naming the group that may.
pub fn permission_hint(socket: &Path) -> String {
    let Ok(meta) = std::fs::metadata(socket) else {
        return format!(
            "permission denied on the broker socket {}",
            socket.display()
        );
    };
    let group = group_name(meta.gid()).unwrap_or_else(|| format!("gid {}", meta.gid()));
    format!(
        "permission denied on the broker socket {} (mode {:o}, group {group}): ask an admin to add you to group {group}",
        socket.display(),
        meta.permissions().mode() & 0o7777
    )
}

/// The name of group `gid` from /etc/group (no NSS: a hint, not a decision).
fn group_name(gid: u32) -> Option<String> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id: u32 = fields.nth(1)?.parse().ok()?;
        (id == gid).then(|| name.to_string())
    })
}

/// Ends the process the way a closed pipe ends coreutils: by the default SIGPIPE action.
fn die_of_sigpipe() -> ! {
    // Rust ignores SIGPIPE at startup (so that the broker socket never kills us: it is
    // written with MSG_NOSIGNAL anyway); restoring the default and raising it ends us here.
    let _ = signal_hook::low_level::emulate_default_handler(signal_hook::consts::SIGPIPE);
    std::process::exit(128 + signal_hook::consts::SIGPIPE)
}
