//! A ring's memfds and their mapping: creating and sealing them, checking what a peer or the
//! fd store hands over, sharing them read-only where a side only reads, and the mapped ring
//! (`SharedRing`: its flags, counters and stats) that the writer, the reader and the broker
//! build on.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use shmem_ipc::mem::mfd::{FileSeal, Memfd, MemfdOptions, SealsHashSet};

use super::layout::{
    new_seal_key, AckPage, ConsumerLine, Eviction, FrameFormat, Header, RingStats, ACK_SIZE,
    CAPACITY_GRANULE, HEADER_SIZE, KIND_END_OF_STREAM, LAYOUT_VERSION, MAGIC, MAX_CAPACITY,
    MAX_POSITION, MIN_CAPACITY, MIN_LAYOUT_VERSION,
};
use super::mapping::{load_acquire, Mapping};
use super::RingError;
use crate::wire::{Role, SlowConsumer};

/// A mapped ring: the mappings stay valid as long as this value lives, whatever the peer does
/// to the files, because the memfds are sealed against shrinking.
pub struct SharedRing {
    /// The ring memfd: header and data.
    pub(super) map: Mapping,
    /// Layout 3: the ack memfd (the consumer's page).
    pub(super) ack: Option<Mapping>,
    pub(super) capacity: u64,
    pub(super) layout: u32,
    pub(super) format: FrameFormat,
    /// The ring memfd's device and inode: the same for every mapping of the ring in this
    /// process.
    pub(super) file: (u64, u64),
}

/// The memfds of one ring, as the broker holds them.
pub struct RingFiles {
    /// Header and data: what the producer writes.
    pub ring: Memfd,
    /// Layout 3: the consumer's page. `None` for rings of layouts 1 and 2.
    pub ack: Option<Memfd>,
}

/// The fds one side of a ring is given: each writable if that side writes it, `O_RDONLY`
/// otherwise.
pub struct RingFds {
    /// The ring memfd (header and data).
    pub ring: OwnedFd,
    /// The ack page (layout 3 only).
    pub ack: Option<OwnedFd>,
}

impl RingFiles {
    /// Fds for `side` (`None`: the broker itself, everything writable): the producer gets the
    /// ring writable and the ack page read-only, the consumer the other way round. A layout-1
    /// or 2 ring has one memfd, which both sides write.
    pub fn share(&self, side: Option<Role>) -> std::io::Result<RingFds> {
        let Some(ack) = &self.ack else {
            return Ok(RingFds {
                ring: self.ring.as_file().as_fd().try_clone_to_owned()?,
                ack: None,
            });
        };
        let ring_writable = side != Some(Role::Consumer);
        let ack_writable = side != Some(Role::Producer);
        Ok(RingFds {
            ring: share_memfd(&self.ring, ring_writable)?,
            ack: Some(share_memfd(ack, ack_writable)?),
        })
    }
}

/// A new fd for `memfd`: a duplicate if `writable`, else the file opened again read-only
/// through `/proc/self/fd` (the only way to get an `O_RDONLY` fd of a memfd; the mode 0600 the
/// creator gave it keeps clients of other uids from doing the same towards `O_RDWR`).
///
/// The path names the memfd only where /proc is the proc file system; whatever else is mounted
/// there could hand the client some other file. So the reopened file must be the memfd (same
/// device and inode), else this fails. Opened non-blocking, so that a FIFO there cannot hang
/// the broker before the check; the flag is cleared for the client.
pub(super) fn share_memfd(memfd: &Memfd, writable: bool) -> std::io::Result<OwnedFd> {
    let fd = memfd.as_file().as_fd();
    if writable {
        return fd.try_clone_to_owned();
    }
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let reopened = rustix::fs::open(
        path.as_str(),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC | rustix::fs::OFlags::NONBLOCK,
        rustix::fs::Mode::empty(),
    )?;
    let (memfd_stat, reopened_stat) = (rustix::fs::fstat(fd)?, rustix::fs::fstat(&reopened)?);
    if (memfd_stat.st_dev, memfd_stat.st_ino) != (reopened_stat.st_dev, reopened_stat.st_ino) {
        return Err(std::io::Error::other(format!(
            "{path} is not the memfd (is /proc the proc file system?)"
        )));
    }
    rustix::fs::fcntl_setfl(&reopened, rustix::fs::OFlags::empty())?;
    Ok(reopened)
}

impl SharedRing {
    /// Creates a ring of `capacity` data bytes (a multiple of 4 KiB) in the current layout:
    /// the ring memfd and the ack memfd, mode 0600, headers initialised, sealed against
    /// shrinking, growing and further sealing, so no client can truncate them (SIGBUS for the
    /// others), grow them, or make them read-only.
    pub fn create(name: &str, capacity: u64) -> Result<(SharedRing, RingFiles), RingError> {
        SharedRing::create_in_layout(name, capacity, LAYOUT_VERSION)
    }

    pub(super) fn create_in_layout(
        name: &str,
        capacity: u64,
        layout: u32,
    ) -> Result<(SharedRing, RingFiles), RingError> {
        check_capacity(capacity)?;
        let ring_file = sealed_memfd(&format!("shmem-broker:{name}"), HEADER_SIZE + capacity)?;
        let ack_file = match layout {
            3.. => Some(sealed_memfd(&format!("shmem-broker:{name}:ack"), ACK_SIZE)?),
            _ => None,
        };
        let files = RingFiles {
            ring: ring_file,
            ack: ack_file,
        };
        let fds = files.share(None)?;
        let mut ring = SharedRing::map(&fds, capacity)?;
        let seal_key = new_seal_key();
        let id = &ring.header().identity;
        id.layout.store(layout, Ordering::Relaxed);
        id.capacity.store(capacity, Ordering::Relaxed);
        if layout >= 2 {
            id.seal_key.store(seal_key, Ordering::Relaxed);
        }
        id.magic.store(MAGIC, Ordering::Release);
        ring.layout = layout;
        ring.format = FrameFormat::of(layout, seal_key);
        Ok((ring, files))
    }

    /// Maps a ring received from the broker after checking that each fd is a memfd, carries
    /// all three seals, has exactly the announced size, and that the header is intact and its
    /// layout matches the fds (an ack memfd exactly for layout 3). Each memfd is mapped
    /// writable only if its fd is.
    pub fn open(fds: RingFds, capacity: u64) -> Result<SharedRing, RingError> {
        check_capacity(capacity)?;
        check_sealed_memfd(fds.ring.as_fd(), HEADER_SIZE + capacity)?;
        if let Some(ack) = &fds.ack {
            check_sealed_memfd(ack.as_fd(), ACK_SIZE)?;
        }
        let ring = SharedRing::map(&fds, capacity)?;
        let id = &ring.header().identity;
        if load_acquire(&id.magic) != MAGIC {
            return Err(RingError::Corrupt("bad magic in ring header".into()));
        }
        let layout = id.layout.load(Ordering::Relaxed);
        if !(MIN_LAYOUT_VERSION..=LAYOUT_VERSION).contains(&layout) {
            return Err(RingError::Rejected(format!(
                "ring layout {layout}, this library reads layouts {MIN_LAYOUT_VERSION} to {LAYOUT_VERSION}"
            )));
        }
        if (layout >= 3) != ring.ack.is_some() {
            return Err(RingError::Rejected(format!(
                "a ring of layout {layout} comes {} an ack memfd",
                if layout >= 3 { "with" } else { "without" }
            )));
        }
        if id.capacity.load(Ordering::Relaxed) != capacity {
            return Err(RingError::Corrupt(
                "capacity in ring header does not match".into(),
            ));
        }
        // Read once: a peer rewriting the key later changes nothing here.
        let format = FrameFormat::of(layout, id.seal_key.load(Ordering::Relaxed));
        Ok(SharedRing {
            format,
            layout,
            ..ring
        })
    }

    pub(super) fn map(fds: &RingFds, capacity: u64) -> Result<SharedRing, RingError> {
        let len = usize::try_from(HEADER_SIZE + capacity)
            .map_err(|_| RingError::Rejected("ring larger than the address space".into()))?;
        let stat = rustix::fs::fstat(&fds.ring).map_err(std::io::Error::from)?;
        let map = Mapping::new(fds.ring.as_fd(), len)?;
        let ack = match &fds.ack {
            Some(ack) => Some(Mapping::new(ack.as_fd(), ACK_SIZE as usize)?),
            None => None,
        };
        Ok(SharedRing {
            map,
            ack,
            capacity,
            layout: MIN_LAYOUT_VERSION,
            format: FrameFormat::of(MIN_LAYOUT_VERSION, 0),
            file: (stat.st_dev, stat.st_ino),
        })
    }

    /// Which ring this is: its memfd's (device, inode), the same in every process that maps
    /// it, and different for a ring that replaced it.
    pub fn file(&self) -> (u64, u64) {
        self.file
    }

    /// The data area's size in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    #[inline]
    pub(super) fn frame_len(&self, payload: u64) -> u64 {
        self.format.frame_len(payload)
    }

    /// Where stream position `pos` lies in the data area. Capacities are whole pages and
    /// usually a power of two, where this is a mask instead of a division (which costs tens of
    /// cycles, several times per frame); `capacity` is never 0 (`check_capacity`).
    #[inline]
    pub(super) fn offset_of(&self, pos: u64) -> u64 {
        if self.capacity.is_power_of_two() {
            pos & (self.capacity - 1)
        } else {
            pos % self.capacity
        }
    }

    /// Whether the identity fields of the header (magic, layout, capacity) still say what they
    /// said when this ring was mapped. A peer can scribble them, and then every later `open` of
    /// the ring fails: the broker replaces such a ring once nobody reads it.
    pub fn identity_intact(&self) -> bool {
        let id = &self.header().identity;
        id.magic.load(Ordering::Relaxed) == MAGIC
            && id.layout.load(Ordering::Relaxed) == self.layout
            && id.capacity.load(Ordering::Relaxed) == self.capacity
    }

    /// The ring's layout version.
    pub fn layout(&self) -> u32 {
        self.layout
    }

    /// Whether this mapping may write what the producer writes (the ring memfd).
    pub(super) fn producer_writable(&self) -> bool {
        self.map.writable()
    }

    /// Whether this mapping may write what the consumer writes (the ack page in layout 3).
    pub(super) fn consumer_writable(&self) -> bool {
        self.ack.as_ref().unwrap_or(&self.map).writable()
    }

    #[inline]
    pub(super) fn header(&self) -> &Header {
        // SAFETY: the mapping is at least HEADER_SIZE (>= size_of::<Header>()) bytes, page
        // aligned (so aligned for Header), and lives as long as `self`; the seals guarantee the
        // file cannot shrink under it. Every field is an atomic, so concurrent writes by a
        // hostile peer are data the type expects, not undefined behaviour. Fields are only
        // stored to when the mapping is writable (`producer_writable`, `consumer_writable`).
        unsafe { &*(self.map.as_ptr() as *const Header) }
    }

    /// What the consumer writes: its line and waiting flag, in the ack page (layout 3) or in
    /// the header (layouts 1 and 2).
    #[inline]
    pub(super) fn consumer_side(&self) -> (&ConsumerLine, &AtomicU32) {
        match self.ack_page() {
            Some(page) => (&page.consumer, &page.consumer_waiting.waiting),
            None => {
                let h = self.header();
                (&h.consumer, &h.consumer_waiting.waiting)
            }
        }
    }

    /// The ack page as a whole (layout 3).
    #[inline]
    pub(super) fn ack_page(&self) -> Option<&AckPage> {
        self.ack.as_ref().map(|ack| {
            // SAFETY: as for `header`: the ack mapping is ACK_SIZE (>= size_of::<AckPage>())
            // bytes, page aligned, sealed against shrinking, lives as long as `self`, and holds
            // only atomics, so a peer writing it concurrently yields values, never UB.
            unsafe { &*(ack.as_ptr() as *const AckPage) }
        })
    }

    /// How many `producer_gone` events the broker has announced for this ring's consumer (see
    /// [`announce_producer_gone`](Self::announce_producer_gone)); 0 for rings without an ack
    /// page and for rings created before the count existed. One `Relaxed` load of the
    /// consumer's own page: the consumer's mapping can write it, so it is the consumer's to
    /// believe or not (a wrong value only misleads the consumer itself).
    #[inline]
    pub fn producers_gone_announced(&self) -> u64 {
        self.ack_page()
            .map_or(0, |page| page.broker.producers_gone.load(Ordering::Relaxed))
    }

    /// The broker, before it queues a `producer_gone` event for this ring's consumer: counts
    /// it in the ack page, so a consumer that finds the count ahead of the events it has read
    /// knows one is on its way. Returns the new count (what the event carries), or `None` where
    /// there is no ack page or this mapping may not write it. The value was writable by the
    /// consumer: saturating, never a panic.
    pub fn announce_producer_gone(&self) -> Option<u64> {
        let page = self.ack_page()?;
        if !self.consumer_writable() {
            return None;
        }
        let counter = &page.broker.producers_gone;
        let next = counter.load(Ordering::Relaxed).saturating_add(1);
        // Release: whoever sees the count (or anything the broker did after it) sees it whole.
        counter.store(next, Ordering::Release);
        Some(next)
    }

    /// Whether a waker must leave the sleeper's flag alone and go by its tickets (layout 3,
    /// where the flag is in memory the waker maps read-only).
    #[inline]
    pub(super) fn wakes_by_ticket(&self) -> bool {
        self.ack.is_some()
    }
    #[inline]
    pub(super) fn data(&self) -> *mut u8 {
        // SAFETY: HEADER_SIZE is within the mapping (its length is HEADER_SIZE + capacity).
        unsafe { self.map.as_ptr().add(HEADER_SIZE as usize) }
    }

    /// An atomic view of a u32 at `offset` (a multiple of 4, below `capacity`) of the data area.
    #[inline]
    pub(super) fn data_u32(&self, offset: u64) -> &AtomicU32 {
        debug_assert!(offset % 4 == 0 && offset + 4 <= self.capacity);
        // SAFETY: callers pass offsets that are frame starts (multiples of the frame unit, 8 or
        // 16, strictly inside the data area: positions are checked to be multiples of it) or
        // words of a frame already checked to end inside it, so the 4 bytes are mapped and
        // aligned. Reading them atomically means a peer writing them concurrently cannot
        // cause undefined behaviour, only odd values, which the callers validate.
        unsafe { &*(self.data().add(offset as usize) as *const AtomicU32) }
    }

    /// An atomic view of a u64 at `offset` (a multiple of 8, below `capacity`) of the data area.
    #[inline]
    pub(super) fn data_u64(&self, offset: u64) -> &AtomicU64 {
        debug_assert!(offset % 8 == 0 && offset + 8 <= self.capacity);
        // SAFETY: as for `data_u32`: callers pass the seal word of a frame start (a multiple of
        // 16 strictly inside the data area, so the 8 bytes are mapped and aligned); a peer
        // writing it concurrently only yields a value the caller compares, never trusts.
        unsafe { &*(self.data().add(offset as usize) as *const AtomicU64) }
    }

    /// Asks the CPU to fetch the cache line at `offset` of the data area: one cross-core
    /// transfer less on the latency path when the fetch overlaps with another.
    #[inline]
    pub(super) fn prefetch(&self, offset: u64) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch is only a hint: it never faults and changes no memory, whatever
        // the address (this one lies inside the mapping anyway); SSE is part of x86_64.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                self.data().wrapping_add(offset as usize) as *const i8,
            )
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = offset;
    }

    /// Writes `len` bytes of the data area starting at `start` to `fd`, all of them, waiting
    /// for a non-blocking fd to take more.
    pub(super) fn write_out(
        &self,
        start: usize,
        len: usize,
        fd: BorrowedFd<'_>,
    ) -> Result<(), RingError> {
        let mut done = 0;
        while done < len {
            // SAFETY: [start, start+len) lies inside the data area (checked by the caller
            // against the published bytes and the end of the ring). The kernel reads it as
            // plain bytes; no Rust reference to the shared memory is formed, so a hostile
            // producer rewriting it meanwhile only changes the bytes written.
            let n = unsafe {
                libc::write(
                    fd.as_raw_fd(),
                    self.data().add(start + done).cast::<libc::c_void>(),
                    len - done,
                )
            };
            if n >= 0 {
                done += n as usize;
                continue;
            }
            let err = std::io::Error::last_os_error();
            match err.kind() {
                std::io::ErrorKind::Interrupted => {}
                std::io::ErrorKind::WouldBlock => {
                    let mut fds = [rustix::event::PollFd::new(
                        &fd,
                        rustix::event::PollFlags::OUT,
                    )];
                    let _ = rustix::event::poll(&mut fds, None);
                }
                _ => return Err(RingError::Io(err)),
            }
        }
        Ok(())
    }

    /// Marks the ring as belonging to a dropped channel; both sides see it on their next call.
    /// Only the broker calls this; a mapping that may not write the header does nothing.
    pub fn mark_dropped(&self) {
        if self.producer_writable() {
            self.header().identity.dropped.store(1, Ordering::Release);
        }
    }

    /// Whether the broker marked the ring's channel dropped.
    pub fn is_dropped(&self) -> bool {
        load_acquire(&self.header().identity.dropped) != 0
    }

    /// Marks the consumer of this ring as cut off by its producer, which writes no more into
    /// it; the consumer and the broker read the cause. Only the producer's (and the broker's)
    /// mapping may write it; any other does nothing.
    pub fn mark_evicted(&self, cause: Eviction) {
        if self.producer_writable() {
            self.header()
                .identity
                .evicted
                .store(cause as u32, Ordering::Release);
        }
    }

    /// Why the producer cut this ring's consumer off, if it did. Any value but the two the
    /// library writes came from a hostile peer and reads as corruption.
    pub fn eviction(&self) -> Option<Eviction> {
        match load_acquire(&self.header().identity.evicted) {
            0 => None,
            1 => Some(Eviction::FellBehind),
            _ => Some(Eviction::Corrupt),
        }
    }

    /// The eviction of this ring's consumer that a third party (the broker, or the consumer
    /// itself) may act on: the flag is written by whoever maps the ring, so it counts only if
    /// the channel lets producers evict (`policy` is `disconnect`) and the ring's own state
    /// bears it out (consistent positions with bytes the consumer has not read). A `Corrupt`
    /// flag never counts: either side can write the positions, so nobody can tell who broke
    /// them, and the ring is all that is lost.
    pub fn confirmed_eviction(&self, policy: SlowConsumer) -> Option<Eviction> {
        match self.eviction()? {
            Eviction::FellBehind
                if policy == SlowConsumer::Disconnect
                    && self.unread_if_sound().is_some_and(|unread| unread > 0) =>
            {
                Some(Eviction::FellBehind)
            }
            _ => None,
        }
    }

    /// Unread bytes as the shared positions say, or `None` if they are not consistent (not
    /// frame-aligned, or the write position behind the read position or more than `capacity`
    /// ahead of it): a peer scribbled on them.
    pub fn unread_if_sound(&self) -> Option<u64> {
        let write_pos = load_acquire(&self.header().producer.write_pos);
        let read_pos = load_acquire(&self.consumer_side().0.read_pos);
        check_positions(read_pos, write_pos, self).ok()
    }

    /// Where the producer's stream stands now: its published position, and whether the last
    /// frame before that position is an end-of-stream mark. The broker asks when a producer's
    /// connection closes, to tell the consumer whether the stream ended cleanly. Everything
    /// here was written by that producer: a hostile one can only misreport its own stream.
    pub fn producer_end(&self) -> (u64, bool) {
        let write_pos = load_acquire(&self.header().producer.write_pos);
        let size = self.frame_len(0);
        let unit = self.format.unit;
        let ends_clean = match write_pos.checked_sub(size) {
            // Frames never wrap, so an aligned frame start lies wholly inside the data area.
            Some(start) if write_pos % unit == 0 && self.capacity >= size => {
                let offset = self.offset_of(start);
                offset + size <= self.capacity
                    && self.data_u32(offset).load(Ordering::Relaxed) == 0
                    && self.data_u32(offset + 4).load(Ordering::Relaxed) & self.format.kind_mask
                        == KIND_END_OF_STREAM
            }
            _ => false,
        };
        (write_pos, ends_clean)
    }

    /// The counters as the header holds them: any value a peer stored, so callers that add
    /// them up must saturate (the broker's `Channel::info` does).
    pub fn stats(&self) -> RingStats {
        let h = self.header();
        let consumer = self.consumer_side().0;
        let written = load_acquire(&h.producer.write_pos);
        let read = load_acquire(&consumer.read_pos);
        RingStats {
            messages_written: h.producer.messages_written.load(Ordering::Relaxed),
            bytes_written: h.producer.bytes_written.load(Ordering::Relaxed),
            messages_read: consumer.messages_read.load(Ordering::Relaxed),
            bytes_unread: written.saturating_sub(read).min(self.capacity),
            messages_lost: h.producer.messages_lost.load(Ordering::Relaxed),
            wakeups: h
                .producer
                .wakeups
                .load(Ordering::Relaxed)
                .saturating_add(consumer.wakeups.load(Ordering::Relaxed)),
        }
    }

    /// Clears both waiting flags: used by the broker when nobody is attached any more (after
    /// a restart), where a flag can only belong to a client that is gone.
    pub fn clear_waiters(&self) {
        self.clear_waiter(Role::Producer);
        self.clear_waiter(Role::Consumer);
    }

    /// Clears the waiting flag of the side that detached. Never the other side's: that one
    /// may be asleep right now, and clearing its flag would lose its next wake-up.
    /// Only the broker calls this (its mappings are writable); a mapping that is not writable
    /// where the flag lives is left alone.
    pub fn clear_waiter(&self, side: Role) {
        let (flag, writable) = match side {
            Role::Producer => (
                &self.header().producer_waiting.waiting,
                self.producer_writable(),
            ),
            Role::Consumer => (self.consumer_side().1, self.consumer_writable()),
        };
        if writable {
            flag.store(0, Ordering::Relaxed);
        }
    }
}

pub(super) fn check_capacity(capacity: u64) -> Result<(), RingError> {
    if !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) || capacity % CAPACITY_GRANULE != 0 {
        return Err(RingError::Rejected(format!(
            "capacity {capacity} must be a multiple of {CAPACITY_GRANULE} between {MIN_CAPACITY} and {MAX_CAPACITY}"
        )));
    }
    Ok(())
}

/// A new memfd of `len` bytes, mode 0600 (see the ring's module docs), sealed against shrinking,
/// growing and further sealing.
pub(super) fn sealed_memfd(name: &str, len: u64) -> Result<Memfd, RingError> {
    let memfd = MemfdOptions::default()
        .allow_sealing(true)
        .close_on_exec(true)
        .create(name)
        .map_err(memfd_error)?;
    rustix::fs::fchmod(memfd.as_file(), rustix::fs::Mode::from_raw_mode(0o600))
        .map_err(std::io::Error::from)?;
    memfd.as_file().set_len(len)?;
    let mut seals = SealsHashSet::new();
    seals.insert(FileSeal::SealShrink);
    seals.insert(FileSeal::SealGrow);
    seals.insert(FileSeal::SealSeal);
    memfd.add_seals(&seals).map_err(memfd_error)?;
    Ok(memfd)
}

/// Checks that `fd` is a memfd that carries the three seals the broker puts on ring memfds
/// (shrink, grow, seal) and is exactly `len` bytes long, so that mapping `len` bytes of it can
/// never fault and nobody can change its size or seals. Clients run it on what the broker
/// sends; the broker on what systemd's fd store gives back.
pub fn check_sealed_memfd(fd: BorrowedFd<'_>, len: u64) -> Result<(), RingError> {
    use rustix::fs::SealFlags;
    // F_GET_SEALS fails (EINVAL) on anything but a memfd.
    let seals =
        rustix::fs::fcntl_get_seals(fd).map_err(|_| RingError::Rejected("not a memfd".into()))?;
    for (seal, name) in [
        (SealFlags::SHRINK, "F_SEAL_SHRINK"),
        (SealFlags::GROW, "F_SEAL_GROW"),
        (SealFlags::SEAL, "F_SEAL_SEAL"),
    ] {
        if !seals.contains(seal) {
            return Err(RingError::Rejected(format!("missing seal {name}")));
        }
    }
    let size = rustix::fs::fstat(fd).map_err(std::io::Error::from)?.st_size;
    if u64::try_from(size).ok() != Some(len) {
        return Err(RingError::Rejected(format!(
            "memfd is {size} bytes, expected {len}"
        )));
    }
    Ok(())
}

pub(super) fn memfd_error(err: shmem_ipc::mem::mfd::Error) -> RingError {
    RingError::Rejected(err.to_string())
}

/// Counts one wake-up in the waker's own counter, for `shmemctl top`. Only this side writes
/// it (a load and a store, no locked instruction on the wake path); the peer may scribble on
/// it, so it saturates rather than wraps, and nobody takes a decision from it.
pub(super) fn count_wakeup(counter: &AtomicU64) {
    let now = counter.load(Ordering::Relaxed);
    counter.store(now.saturating_add(1), Ordering::Relaxed);
}

/// Checks a pair of positions (one of them, or both, read from the header) and returns the
/// unread bytes between them.
pub(super) fn check_positions(
    read_pos: u64,
    write_pos: u64,
    ring: &SharedRing,
) -> Result<u64, RingError> {
    let (capacity, unit) = (ring.capacity, ring.format.unit);
    // Frames start at multiples of the frame unit: any other position was written by a hostile
    // peer, and following it would read a frame header across the end of the data area.
    // Positions above MAX_POSITION would wrap the sums both sides make with them.
    let aligned = read_pos % unit == 0 && write_pos % unit == 0;
    match write_pos.checked_sub(read_pos) {
        Some(unread) if aligned && unread <= capacity && write_pos <= MAX_POSITION => Ok(unread),
        _ => Err(RingError::Corrupt(format!(
            "positions out of range (read {read_pos}, write {write_pos}, capacity {capacity})"
        ))),
    }
}
