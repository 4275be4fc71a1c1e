//! A shared mapping of a ring memfd, writable or read-only as the fd it came from allows.
//!
//! Why not `memmap2` (which shmem-ipc re-exports): its raw mapping is always read-write, and its
//! read-only `Mmap` hands out `&[u8]` over the bytes, which a peer rewriting them would turn into
//! undefined behaviour. Here the mapping is only ever a pointer; the ring reaches the bytes
//! through atomics and raw copies.

use std::os::fd::BorrowedFd;
use std::ptr::NonNull;

use rustix::fs::OFlags;
use rustix::mm::{MapFlags, ProtFlags};

pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
}

// SAFETY: the mapping is plain shared memory reached only through atomics and raw copies; it is
// not tied to the thread that created it.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of `fd` shared: read-write if the fd was opened for writing,
    /// read-only otherwise (an `O_RDONLY` fd cannot be mapped writable: `EACCES`). The caller
    /// has checked that the file is sealed against shrinking and at least `len` bytes long, so
    /// no access within `len` can fault.
    pub(crate) fn new(fd: BorrowedFd<'_>, len: usize) -> std::io::Result<Mapping> {
        let writable = rustix::fs::fcntl_getfl(fd)?.contains(OFlags::RDWR);
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        // SAFETY: a new mapping at an address the kernel picks (no hint), so no existing memory
        // of this process is replaced; it is unmapped exactly once, in `Drop`.
        let ptr =
            unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0) }?;
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| std::io::Error::other("mmap returned a null mapping"))?;
        Ok(Mapping { ptr, len, writable })
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Whether this process may store into the mapping (a store into a read-only one would
    /// kill it with SIGSEGV: the ring never does, it checks this first).
    pub(crate) fn writable(&self) -> bool {
        self.writable
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` are exactly what mmap returned and was given; no reference
        // into the mapping outlives `self` (every accessor borrows the ring that owns it).
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
