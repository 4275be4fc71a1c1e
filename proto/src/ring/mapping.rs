//! A shared mapping of a ring memfd, writable or read-only as the fd it came from allows.
//!
//! Why not `memmap2` (which shmem-ipc re-exports): its raw mapping is always read-write, and its
//! read-only `Mmap` hands out `&[u8]` over the bytes, which a peer rewriting them would turn into
//! undefined behaviour. Here the mapping is only ever a pointer; the ring reaches the bytes
//! through atomics and raw copies.

use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

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

    #[inline]
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

// Layout 3 maps the peer's memfd read-only, and the ring loads 32- and 64-bit atomics from it.
// Rust promises that an atomic load works on read-only memory only for `Relaxed` loads no wider
// than a per-target limit (std's "Atomic accesses to read-only memory": 8 bytes on the targets
// below, 4 bytes on 32-bit ones, none elsewhere); a wider or stronger load may be built from a
// read-modify-write, which would fault. So the ring is built only where 8-byte loads qualify.
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "loongarch64",
    target_arch = "mips64",
    target_arch = "mips64r6",
    target_arch = "powerpc64",
    target_arch = "riscv64",
    target_arch = "sparc64",
    target_arch = "s390x",
)))]
compile_error!(
    "shmem-broker maps peer memory read-only and loads 64-bit atomics from it, which Rust \
     guarantees only on 64-bit targets whose relaxed 8-byte loads are plain loads"
);

/// A 32- or 64-bit atomic of a ring, for [`load_acquire`].
pub(crate) trait Word {
    type Value;
    fn load_relaxed(&self) -> Self::Value;
}

impl Word for AtomicU32 {
    type Value = u32;
    #[inline]
    fn load_relaxed(&self) -> u32 {
        self.load(Ordering::Relaxed)
    }
}

impl Word for AtomicU64 {
    type Value = u64;
    #[inline]
    fn load_relaxed(&self) -> u64 {
        self.load(Ordering::Relaxed)
    }
}

/// An Acquire load of a word that may lie in a read-only mapping: a `Relaxed` load (the only
/// kind Rust promises on read-only memory) followed by an Acquire fence, which orders every
/// later access after it exactly as an Acquire load would. Every Acquire load of ring memory
/// goes through here, whichever side owns the word, so none is missed; the one exception is
/// `handshake::observe`, which does the same over the handshake's own atomics trait so that
/// loom can model it.
#[inline]
pub(crate) fn load_acquire<W: Word>(word: &W) -> W::Value {
    let value = word.load_relaxed();
    fence(Ordering::Acquire);
    value
}
