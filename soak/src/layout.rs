//! Which ring layout the broker made: the one place the soak looks at a ring's bytes itself
//! rather than through the client API (which does not say). It reads the first 12 bytes of
//! every ring memfd the broker holds (PROTOCOL.md, "The ring": magic `"SHMRING1"`, then
//! `layout u32`), reopened read-only through `/proc/BROKER/fd` (we are the broker's parent;
//! root, or the same uid with ptrace access). It maps nothing and writes nothing.

use std::os::unix::fs::FileExt;

const MAGIC: &[u8; 8] = b"SHMRING1";

/// How many of the broker's rings are in each layout: `(layout, rings)` sorted by layout, or
/// why it could not look.
pub fn rings_by_layout(broker_pid: u32) -> Result<Vec<(u32, usize)>, String> {
    let dir = format!("/proc/{broker_pid}/fd");
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))?;
    let mut counts = std::collections::BTreeMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        // Only memfds; a socket or eventfd cannot be reopened (and is no ring).
        let is_memfd = std::fs::read_link(&path)
            .is_ok_and(|target| target.to_string_lossy().starts_with("/memfd:"));
        if !is_memfd {
            continue;
        }
        let Ok(file) = std::fs::File::open(&path) else {
            continue; // closed meanwhile
        };
        let mut head = [0u8; 12];
        if file.read_exact_at(&mut head, 0).is_err() || head[..8] != MAGIC[..] {
            continue; // a control page or another memfd
        }
        let layout = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        *counts.entry(layout).or_insert(0) += 1;
    }
    Ok(counts.into_iter().collect())
}
