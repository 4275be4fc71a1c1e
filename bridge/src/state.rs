//! The importer's one durable fact: which position of the exported stream its local channel
//! holds, kept so that a restarted importer neither stores an item twice nor skips one.
//!
//! Before it stores a run of items (messages, and the exported ring's padding between them),
//! the importer writes (one `pwrite` of 40 bytes, which a SIGKILL cannot tear) the record
//! `done, local_before, local_after, next`: `done` is the `to` of the last item known to be in
//! the channel, `local_before` the channel's write position before the run, `local_after` the
//! position once the run is in ([`Producer::end_position`]), `next` the run's last `to`. The
//! run's messages are published together with one store of the write position
//! ([`Producer::try_send_all`]: all of them or none; a run that does not fit now is cut down
//! to its first message, recorded again), so after a restart that position says which it
//! was: if it reached `local_after`, the run got in (last = `next`); if not (still
//! `local_before`, or moved only by padding published before a message that waits for room at
//! the start of the ring), none of it did (last = `done`). No part of a run is ever in the
//! channel alone: this holds across a SIGKILL at any instruction.
//!
//! A record of the first version (32 bytes, no `local_after`, one item per record) is read
//! as one whose run took any movement of the position.
//!
//! [`Producer::end_position`]: shmem_broker_client::Producer::end_position
//! [`Producer::try_send_all`]: shmem_broker_client::Producer::try_send_all
//!
//! Limits: the importer must be the channel's only producer (another producer moving the write
//! position while the importer is away looks like the item got in), and the record is not
//! fsynced: it survives the process, not a machine crash.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"SHMBRIM2";
const LEN: usize = 40;
/// The first version: `done, local_before, next`.
const MAGIC_V1: &[u8; 8] = b"SHMBRIM1";
const LEN_V1: usize = 32;

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
    pub local_after: u64,
    pub next: u64,
}

impl Record {
    pub fn resume(&self, local_now: u64) -> Resume {
        if local_now < self.local_before {
            Resume::ChannelRecreated(self.done)
        } else if local_now >= self.local_after {
            Resume::At(self.next)
        } else {
            Resume::At(self.done)
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
        let v1 = n == LEN_V1 && &buf[..8] == MAGIC_V1;
        if !v1 && (n != LEN || &buf[..8] != MAGIC) {
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
        if v1 {
            // Its item got in if the position moved at all.
            return Ok(Some(Record {
                done: word(8),
                local_before: word(16),
                local_after: word(16).saturating_add(1),
                next: word(24),
            }));
        }
        Ok(Some(Record {
            done: word(8),
            local_before: word(16),
            local_after: word(24),
            next: word(32),
        }))
    }

    /// Writes the record with one pwrite at offset 0 (all or nothing against a kill).
    pub fn write(&self, record: &Record) -> io::Result<()> {
        let mut buf = [0u8; LEN];
        buf[..8].copy_from_slice(MAGIC);
        buf[8..16].copy_from_slice(&record.done.to_le_bytes());
        buf[16..24].copy_from_slice(&record.local_before.to_le_bytes());
        buf[24..32].copy_from_slice(&record.local_after.to_le_bytes());
        buf[32..40].copy_from_slice(&record.next.to_le_bytes());
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
            local_after: 4200,
            next: 20,
        };
        state.write(&record).expect("write");
        assert_eq!(state.read().expect("read"), Some(record));
        assert_eq!(record.resume(4096), Resume::At(10));
        // Moved by padding only (the run's first message waits at the ring's start): not in.
        assert_eq!(record.resume(4150), Resume::At(10));
        assert_eq!(record.resume(4200), Resume::At(20));
        assert_eq!(record.resume(0), Resume::ChannelRecreated(10));
        // A record of the first version: any movement meant its item got in.
        let mut v1 = Vec::from(&MAGIC_V1[..]);
        for word in [10u64, 4096, 20] {
            v1.extend_from_slice(&word.to_le_bytes());
        }
        fs::write(state.path(), &v1).expect("write v1");
        let old = state.read().expect("read v1").expect("a record");
        assert_eq!(old.resume(4096), Resume::At(10));
        assert_eq!(old.resume(4097), Resume::At(20));
        fs::write(state.path(), b"garbage").expect("overwrite");
        assert!(state.read().is_err());
        fs::remove_dir_all(&dir).expect("clean up");
    }
}
