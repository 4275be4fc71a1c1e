//! The control page of a fan-out channel (one with `max_producers` or `max_consumers` above 1):
//! a one-page sealed memfd the broker alone writes, holding one counter per side that it bumps
//! whenever that side's set of peers changes. Producers and consumers load their counter before
//! every operation (one load of a line that rarely changes, no syscall) and read the broker's
//! events from their connection only when it moved: that is how a producer starts writing to a
//! consumer that just attached at its very next message, without asking the broker per message.
//!
//! # Layout, little-endian atomics
//! ```text
//! 0    magic u64 "SHMCTRL1"
//! 64   producer generation u64  (bumped when a consumer queue comes or goes)
//! 128  consumer generation u64  (bumped when a producer comes)
//! ```
//! The broker maps the page writable, then seals it with `F_SEAL_FUTURE_WRITE` (plus SHRINK,
//! GROW, SEAL): clients can only map it read-only, so a hostile client cannot make the others
//! wait for events that never come. The two mappings are two types: [`BrokerControlPage`]
//! (made by `create`, the only one with `bump`) and [`ControlPage`] (made by `open`, loads
//! only), so no safe code can write through a read-only mapping.

use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{fcntl_add_seals, fcntl_get_seals, fstat, memfd_create, MemfdFlags, SealFlags};
use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};

use crate::wire::Role;

/// Size of a fan-out channel's control page.
pub const CONTROL_SIZE: usize = 4096;
const MAGIC: u64 = u64::from_le_bytes(*b"SHMCTRL1");
const MAGIC_OFFSET: usize = 0;
const PRODUCER_OFFSET: usize = 64;
const CONSUMER_OFFSET: usize = 128;

/// A mapping of the control page; read-only or writable depending on who made it.
struct Mapping {
    base: NonNull<u8>,
}

// SAFETY: the page is shared memory reached only through atomics; it is not tied to a thread.
unsafe impl Send for Mapping {}

impl Mapping {
    fn new(fd: &OwnedFd, prot: ProtFlags) -> std::io::Result<Mapping> {
        // SAFETY: a fresh shared mapping of a whole memfd page at an address the kernel picks;
        // it aliases no Rust object, and the SHRINK seal (checked by `ControlPage::open`, set
        // by `BrokerControlPage::create` before anyone else sees the fd) keeps the page from
        // going away.
        let base = unsafe {
            mmap(
                std::ptr::null_mut(),
                CONTROL_SIZE,
                prot,
                MapFlags::SHARED,
                fd.as_fd(),
                0,
            )?
        };
        let base = NonNull::new(base.cast::<u8>())
            .ok_or_else(|| std::io::Error::other("control page mapped at address 0"))?;
        Ok(Mapping { base })
    }

    /// A word of the page, for atomic loads (and, on the broker's writable mapping only,
    /// atomic writes).
    fn word(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: offsets are constants below CONTROL_SIZE and multiples of 8 within a
        // page-aligned mapping that lives as long as `self`; only atomics touch the page, so
        // the broker writing it concurrently is no data race.
        unsafe { &*(self.base.as_ptr().add(offset) as *const AtomicU64) }
    }

    fn generation(&self, role: Role) -> u64 {
        // Relaxed, then a fence: on a read-only mapping only relaxed atomic loads are
        // guaranteed not to write (std's rules for atomics on read-only memory); the fence
        // gives the Acquire ordering the broker's Release bump pairs with.
        let value = self.word(offset(role)).load(Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Acquire);
        value
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `new` with this length and nothing borrows it past
        // `self`.
        let _ = unsafe { munmap(self.base.as_ptr().cast(), CONTROL_SIZE) };
    }
}

fn offset(role: Role) -> usize {
    match role {
        Role::Producer => PRODUCER_OFFSET,
        Role::Consumer => CONSUMER_OFFSET,
    }
}

/// The broker's control page: the only writable mapping there is of it, so the only type
/// that can [`bump`](Self::bump) (clients get a [`ControlPage`], which only loads).
pub struct BrokerControlPage {
    map: Mapping,
}

impl BrokerControlPage {
    /// Makes a control page: the returned mapping is writable, the memfd handed to clients is
    /// sealed so that nobody else can write it.
    pub fn create(channel: &str) -> std::io::Result<(BrokerControlPage, OwnedFd)> {
        let fd = memfd_create(
            format!("shmem-broker-control:{channel}"),
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        rustix::fs::ftruncate(&fd, CONTROL_SIZE as u64)?;
        let map = Mapping::new(&fd, ProtFlags::READ | ProtFlags::WRITE)?;
        map.word(MAGIC_OFFSET).store(MAGIC, Ordering::Release);
        fcntl_add_seals(
            &fd,
            SealFlags::SHRINK | SealFlags::GROW | SealFlags::FUTURE_WRITE | SealFlags::SEAL,
        )?;
        Ok((BrokerControlPage { map }, fd))
    }

    /// The counter of `role`'s side.
    pub fn generation(&self, role: Role) -> u64 {
        self.map.generation(role)
    }

    /// Announces a change to `role`'s side; returns the new value. The counter only counts
    /// changes (nobody compares it but for "moved"), so it wraps rather than overflows.
    pub fn bump(&self, role: Role) -> u64 {
        self.map
            .word(offset(role))
            .fetch_add(1, Ordering::AcqRel)
            .wrapping_add(1)
    }
}

/// A client's view of a control page: mapped read-only, it can only load the counters. It
/// has no `bump` (an atomic add on a read-only mapping would be a SIGSEGV):
///
/// ```compile_fail
/// use shmem_broker_client::{control::ControlPage, Role};
/// fn announce(page: &ControlPage) -> u64 {
///     page.bump(Role::Producer)
/// }
/// ```
pub struct ControlPage {
    map: Mapping,
}

impl ControlPage {
    /// Maps a control page received from the broker, read-only, after checking its seals
    /// and size.
    pub fn open(fd: &OwnedFd) -> std::io::Result<ControlPage> {
        let seals = fcntl_get_seals(fd)?;
        let needed = SealFlags::SHRINK | SealFlags::FUTURE_WRITE;
        if !seals.contains(needed) {
            return Err(std::io::Error::other(
                "control page is not sealed against writes and shrinking",
            ));
        }
        if fstat(fd)?.st_size != CONTROL_SIZE as i64 {
            return Err(std::io::Error::other("control page has the wrong size"));
        }
        let map = Mapping::new(fd, ProtFlags::READ)?;
        if map.word(MAGIC_OFFSET).load(Ordering::Relaxed) != MAGIC {
            return Err(std::io::Error::other("control page has a bad magic"));
        }
        Ok(ControlPage { map })
    }

    /// The counter of `role`'s side.
    pub fn generation(&self, role: Role) -> u64 {
        self.map.generation(role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_see_bumps_and_cannot_write() {
        let (broker, fd) = BrokerControlPage::create("t").expect("create");
        let client = ControlPage::open(&fd).expect("open");
        assert_eq!(client.generation(Role::Producer), 0);
        assert_eq!(broker.bump(Role::Producer), 1);
        assert_eq!(client.generation(Role::Producer), 1);
        assert_eq!(client.generation(Role::Consumer), 0);
        // SAFETY: a fresh mapping request the kernel must refuse; nothing is ever accessed
        // through it (and it is unmapped with the process if the kernel ever granted it).
        let writable = unsafe {
            mmap(
                std::ptr::null_mut(),
                CONTROL_SIZE,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd.as_fd(),
                0,
            )
        };
        assert!(writable.is_err(), "a client must not map the page writable");
        assert!(rustix::io::write(&fd, b"x").is_err());
    }
}
