//! A ring memfd mapped `MAP_SHARED` and writable, as a hostile peer maps the rings it is handed:
//! the attack tests write positions, flags, counters and headers through it. Since ring layout
//! 3 a peer can map only its own side writable: a producer the ring memfd, a consumer the ack
//! page (offsets below).

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// The first `len` bytes of a ring memfd, mapped read-write and shared.
pub struct Mapping {
    ptr: *mut std::ffi::c_void,
    len: usize,
}

/// Offsets in a layout-3 ring's ack page (the consumer's memfd).
pub const ACK_READ_POS: usize = 0;
pub const ACK_MESSAGES_READ: usize = 8;
pub const ACK_CONSUMER_WAITING: usize = 64;

impl Mapping {
    /// Maps the first `len` bytes of `fd` (the header page: 4096; the whole ring: 4096 plus
    /// its capacity).
    pub fn new(fd: &OwnedFd, len: u64) -> Mapping {
        Mapping::try_new(fd, len).expect("mmap the ring MAP_SHARED")
    }

    /// [`Mapping::new`], with the kernel's refusal as an error (`EACCES` for a read-only fd).
    pub fn try_new(fd: &OwnedFd, len: u64) -> std::io::Result<Mapping> {
        let len = usize::try_from(len).expect("ring fits in memory");
        // SAFETY: a fresh mapping of a memfd we hold, at an address the kernel chooses; it is
        // only ever touched through atomics within `len` (see `word`, `write_u32`).
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                fd,
                0,
            )
        }?;
        Ok(Mapping { ptr, len })
    }

    /// The 8-byte word at `offset`, for atomic loads and stores.
    pub fn word(&self, offset: usize) -> &AtomicU64 {
        assert!(offset & 7 == 0 && offset + 8 <= self.len);
        // SAFETY: in bounds and aligned (checked above) in a mapping that lives as long as
        // `self`; shared memory is only accessed atomically.
        unsafe { &*(self.ptr.cast::<u8>().add(offset) as *const AtomicU64) }
    }

    pub fn write_u64(&self, offset: usize, value: u64) {
        self.word(offset).store(value, Ordering::SeqCst);
    }

    pub fn write_u32(&self, offset: usize, value: u32) {
        assert!(offset & 3 == 0 && offset + 4 <= self.len);
        // SAFETY: as in `word`.
        let word = unsafe { &*(self.ptr.cast::<u8>().add(offset) as *const AtomicU32) };
        word.store(value, Ordering::SeqCst);
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped; nothing refers to it any more.
        let _ = unsafe { rustix::mm::munmap(self.ptr, self.len) };
    }
}
