//! The importer's one durable fact: which position of the exported stream its local channel
//! holds, kept so that a restarted importer neither stores an item twice nor skips one.
//!
//! Before it stores an item, the importer writes (one `pwrite` of 32 bytes, which a SIGKILL
//! cannot tear) the record `done, local_before, next`: `done` is the `to` of the last item
//! known to be in the channel, `local_before` the channel's write position before this item,
//! `next` the item's `to`. After a restart the channel's write position says which it was: if
//! it is still `local_before`, the item never got in (last = `done`); if it moved on, it did
//! (last = `next`). The ring publishes an item with one store of its write position, so there
//! is no window in which the item is half in: this holds across a SIGKILL at any instruction.
//!
//! Limits: the importer must be the channel's only producer (another producer moving the write
//! position while the importer is away looks like the item got in), and the record is not
//! fsynced: it survives the process, not a machine crash.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"SHMBRIM1";
const LEN: usize = 32;

/// What the record says after a restart, judged against the channel's write position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// No record: the importer starts with whatever comes first.
    Fresh,
    /// The stream position the channel holds up to.
    At(u64),
    /// The channel's write position went backwards (it was dropped and made again): the
    /// record's items are gone with the old ring; resume after `done`, say so.
    ChannelRecreated(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub done: u64,
    pub local_before: u64,
    pub next: u64,
}

impl Record {
    pub fn resume(&self, local_now: u64) -> Resume {
        use std::cmp::Ordering::*;
        match local_now.cmp(&self.local_before) {
            Equal => Resume::At(self.done),
            Greater => Resume::At(self.next),
            Less => Resume::ChannelRecreated(self.done),
        }
    }
}

pub struct StateFile {
    file: File,
    path: PathBuf,
}

impl StateFile {
    /// Opens (creating, mode 0600) `dir/name`, creating `dir` (0700) if needed.
    pub fn open(dir: &Path, name: &str) -> io::Result<StateFile> {
        fs::create_dir_all(dir)?;
        let path = dir.join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)?;
        Ok(StateFile { file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored record; `Ok(None)` for a new (empty) file, an error for anything else that
    /// is not a record this program wrote.
    pub fn read(&self) -> io::Result<Option<Record>> {
        let mut buf = [0u8; LEN + 1];
        let n = self.file.read_at(&mut buf, 0)?;
        if n == 0 {
            return Ok(None);
        }
        if n != LEN || &buf[..8] != MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: not an importer state record ({n} bytes); remove it to start afresh",
                    self.path.display()
                ),
            ));
        }
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&buf[at..at + 8]);
            u64::from_le_bytes(w)
        };
        Ok(Some(Record {
            done: word(8),
            local_before: word(16),
            next: word(24),
        }))
    }

    /// Writes the record with one pwrite at offset 0 (all or nothing against a kill).
    pub fn write(&self, record: &Record) -> io::Result<()> {
        let mut buf = [0u8; LEN];
        buf[..8].copy_from_slice(MAGIC);
        buf[8..16].copy_from_slice(&record.done.to_le_bytes());
        buf[16..24].copy_from_slice(&record.local_before.to_le_bytes());
        buf[24..32].copy_from_slice(&record.next.to_le_bytes());
        let n = self.file.write_at(&buf, 0)?;
        if n != LEN {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("{}: short write ({n} of {LEN} bytes)", self.path.display()),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_resume_follows_the_channel() {
        let dir = std::env::temp_dir().join(format!("shmem-bridge-state-{}", std::process::id()));
        let state = StateFile::open(&dir, "x.state").expect("open");
        assert_eq!(state.read().expect("read"), None);
        let record = Record {
            done: 10,
            local_before: 4096,
            next: 20,
        };
        state.write(&record).expect("write");
        assert_eq!(state.read().expect("read"), Some(record));
        assert_eq!(record.resume(4096), Resume::At(10));
        assert_eq!(record.resume(4200), Resume::At(20));
        assert_eq!(record.resume(0), Resume::ChannelRecreated(10));
        fs::write(state.path(), b"garbage").expect("overwrite");
        assert!(state.read().is_err());
        fs::remove_dir_all(&dir).expect("clean up");
    }
}
