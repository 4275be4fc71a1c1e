//! A ring memfd (or a layout-3 ack page) mapped `MAP_SHARED`, as a hostile peer maps what it is
//! handed: the attack tests and the fuzz targets write positions, flags, counters and headers
//! through it, behind the back of the ring code under test. Since ring layout 3 a peer can map
//! only its own side writable: a producer the ring memfd, a consumer the ack page (offsets
//! below); the other side's fd is read-only, and [`Mapping::try_new`] fails on it with
//! `EACCES`.
//!
//! Everything is done through atomics or plain byte copies within the mapping, checked against
//! its length: whatever the other side does to the bytes, nothing here reads or writes outside.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Offsets in a layout-3 ring's ack page (the consumer's memfd), PROTOCOL.md "The ring".
pub const ACK_READ_POS: usize = 0;
pub const ACK_MESSAGES_READ: usize = 8;
pub const ACK_CONSUMER_WAITING: usize = 64;
/// The broker's count of `producer_gone` events announced to the consumer.
pub const ACK_PRODUCERS_GONE: usize = 128;

/// The first `len` bytes of a memfd, mapped shared; unmapped on drop.
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
    writable: bool,
}

// SAFETY: the mapping is plain shared memory, not tied to the thread that made it; moving the
// owner to another thread changes nothing about who may touch it.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of `fd` read-write (the header page: 4096; the whole ring:
    /// 4096 plus its capacity), failing the test if the kernel refuses.
    pub fn new(fd: impl AsFd, len: u64) -> Mapping {
        Mapping::try_new(fd, len).expect("mmap the ring MAP_SHARED")
    }

    /// [`Mapping::new`], with the kernel's refusal as an error (`EACCES` for a read-only fd).
    pub fn try_new(fd: impl AsFd, len: u64) -> io::Result<Mapping> {
        Mapping::map(fd.as_fd().as_raw_fd(), len, true)
    }

    /// Maps the first `len` bytes of `fd` read-only, as a peer maps the other side's memfd:
    /// only the `load_*` functions and [`Mapping::copy`] may be used on it.
    pub fn read_only(fd: impl AsFd, len: u64) -> io::Result<Mapping> {
        Mapping::map(fd.as_fd().as_raw_fd(), len, false)
    }

    fn map(fd: i32, len: u64, writable: bool) -> io::Result<Mapping> {
        let len = usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh mapping at an address the kernel chooses, replacing nothing; it is
        // only ever touched through atomics and bounded copies within `len`.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, 0) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
            writable,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address the mapping starts at (to find it in /proc/self/maps).
    pub fn start(&self) -> usize {
        self.ptr as usize
    }

    fn check(&self, offset: usize, size: usize) {
        assert!(
            offset % size == 0 && offset.checked_add(size).is_some_and(|e| e <= self.len),
            "offset {offset} (size {size}) is unaligned or outside a {}-byte mapping",
            self.len
        );
    }

    fn check_writable(&self) {
        assert!(self.writable, "a store through a read-only mapping");
    }

    /// The 8-byte word at `offset`, for atomic loads and stores (writable mappings only).
    pub fn u64_at(&self, offset: usize) -> &AtomicU64 {
        self.check_writable();
        self.check(offset, 8);
        // SAFETY: in bounds and aligned (checked above; the mapping is page aligned) in a
        // writable mapping that lives as long as `self`; shared memory is only accessed
        // atomically or by bounded copies.
        unsafe { &*(self.ptr.add(offset) as *const AtomicU64) }
    }

    /// The 4-byte word at `offset`, for atomic loads and stores (writable mappings only).
    pub fn u32_at(&self, offset: usize) -> &AtomicU32 {
        self.check_writable();
        self.check(offset, 4);
        // SAFETY: as in `u64_at`.
        unsafe { &*(self.ptr.add(offset) as *const AtomicU32) }
    }

    /// Loads the 8-byte word at `offset` (any mapping).
    pub fn load_u64(&self, offset: usize) -> u64 {
        self.check(offset, 8);
        // SAFETY: in bounds and aligned (checked above) in a mapping at least readable; only
        // ever loaded from here, atomically, whatever the other side stores meanwhile.
        unsafe { (*(self.ptr.add(offset) as *const AtomicU64)).load(Ordering::SeqCst) }
    }

    /// Loads the 4-byte word at `offset` (any mapping).
    pub fn load_u32(&self, offset: usize) -> u32 {
        self.check(offset, 4);
        // SAFETY: as in `load_u64`.
        unsafe { (*(self.ptr.add(offset) as *const AtomicU32)).load(Ordering::SeqCst) }
    }

    pub fn write_u64(&self, offset: usize, value: u64) {
        self.u64_at(offset).store(value, Ordering::SeqCst);
    }

    pub fn write_u32(&self, offset: usize, value: u32) {
        self.u32_at(offset).store(value, Ordering::SeqCst);
    }

    /// Copies `bytes` to `offset`, cut at the end of the mapping (writable mappings only).
    pub fn write_bytes(&self, offset: usize, bytes: &[u8]) {
        self.check_writable();
        let offset = offset.min(self.len);
        let n = bytes.len().min(self.len - offset);
        // SAFETY: [offset, offset + n) is inside the writable mapping; `bytes` is our own
        // memory, not in the mapping (no overlap: the caller holds no slice into it).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(offset), n) }
    }

    /// Zeroes the whole mapping (writable mappings only): a freshly created ring.
    pub fn zero(&self) {
        self.check_writable();
        // SAFETY: exactly the writable mapping.
        unsafe { std::ptr::write_bytes(self.ptr, 0, self.len) }
    }

    /// A copy of bytes `[start, end)` (cut at the end of the mapping), to compare later.
    pub fn copy(&self, start: usize, end: usize) -> Vec<u8> {
        let end = end.min(self.len);
        let start = start.min(end);
        let mut out = vec![0u8; end - start];
        // SAFETY: [start, end) is inside the mapping; `out` is our own fresh memory.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(start), out.as_mut_ptr(), out.len()) }
        out
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map` mapped; every reference handed out borrowed `self`,
        // so none is left.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
