//! Zero-copy both ways: [`Loan`] (a message written in place, from
//! [`Producer::loan`](crate::Producer::loan)) and [`Sample`] (a message read in place, from
//! [`Consumer::recv_ref`](crate::Consumer::recv_ref)).
//!
//! # Why a loan may be a `&mut [u8]`
//! A loan is a data frame reserved in the ring but not yet published: its bytes lie past the
//! producer's published position, where an honest consumer never reads, let alone writes.
//! In this process nothing else can reach them while the loan lives: the loan holds the
//! producer mutably borrowed, the producer owns the ring's only [`RingWriter`] in this
//! process (a second one is refused), and the consumer side of a ring only ever reads
//! published bytes, with atomic loads or raw copies. Shared memory from a memfd is always
//! initialised (the kernel hands out zeroed pages, and every byte holds some value from then
//! on), so exposing the bytes as `&mut [u8]` exposes no uninitialised memory; the loan is not
//! zeroed, and holds whatever earlier messages left there.
//!
//! The assumption this rests on: **no other process writes the producer's data area.** With
//! the current ring layout each consumer maps its ring read-write, so a hostile consumer
//! *can* write the bytes of a loan while it is held. That write is outside what Rust's memory
//! model describes (another process, not a thread of this one); what it can do in practice is
//! change bytes of a `u8` slice, which has no invalid values, of a message only that consumer
//! receives (a loan lives in a consumer's ring only when that consumer is the only one it goes
//! to), and the library never reads a loan back to take any decision. Once the ring is split
//! into a producer-written memfd the consumer maps read-only, the assumption is enforced by
//! the kernel. In a fan-out channel with several consumers the loan is a private buffer
//! instead: one consumer able to rewrite a message in its ring before it is copied to the
//! others would be able to forge what they receive.
//!
//! # Why a sample is not a `&[u8]`
//! A published frame still belongs to the producer's memory, and a hostile producer can
//! rewrite it while we hold it. A `&[u8]` promises the bytes do not change while it lives;
//! a concurrent write would make every read through it a data race, which is undefined
//! behaviour under Rust's memory model (the compiler may, for example, read a byte twice and
//! act on two different values). So the safe API of [`Sample`] reads the payload only with
//! atomic loads ([`copy_to`](Sample::copy_to), [`read_at`](Sample::read_at),
//! [`get`](Sample::get), [`to_vec`](Sample::to_vec)): a concurrent write yields some value for
//! each word, never undefined behaviour, and the library validates nothing in the payload. A
//! peer rewriting the bytes can only change what we read, as it could by sending other bytes.
//! [`as_ptr`](Sample::as_ptr) gives the raw pointer, and the `unsafe`
//! [`as_slice`](Sample::as_slice) gives a `&[u8]` to a caller who can promise that nobody
//! writes the bytes while it lives: the producer is trusted (an honest producer never writes a
//! published frame that the consumer has not released).
//!
//! [`RingWriter`]: crate::ring::RingWriter

use std::ops::{Deref, DerefMut};

use crate::consumer::Consumer;
use crate::error::Result;
use crate::lane_writer::LoanSlot;
use crate::producer::Producer;
use crate::ring::Payload;

impl LoanSlot {
    /// The reserved frame, if the loan is one.
    fn payload(self) -> Option<Payload> {
        match self {
            LoanSlot::Lane { payload, .. } => Some(payload),
            LoanSlot::Scratch => None,
        }
    }
}

/// A message being written in place: `len` writable bytes, from
/// [`Producer::loan`](crate::Producer::loan) or [`try_loan`](crate::Producer::try_loan) (and
/// [`AsyncProducer::loan`](crate::AsyncProducer::loan)). It dereferences to `[u8]`; fill it,
/// then [`send`](Self::send) it. Dropped without `send`, it publishes nothing and the next
/// loan or send reuses its space. It is `Send`, so it can be filled across `.await` points on
/// a multi-threaded runtime; the producer stays borrowed meanwhile.
///
/// Where the bytes are, and where a copy remains:
/// - one-to-one channel: a frame reserved in the ring; no copy at all.
/// - fan-out channel with one consumer: a frame reserved in that consumer's ring; no copy.
///   Under policies `drop` and `disconnect`, if that ring is full when the loan is made, or
///   the consumer is owed a loss record, the loan is a private buffer instead, as below.
/// - fan-out channel with several consumers (or none): a private buffer of the producer,
///   copied into every consumer's ring at `send`, one copy per consumer, as
///   [`send`](crate::Producer::send) does. A frame in one consumer's ring cannot be the
///   source: that consumer can write its ring, and could change the message for the others.
///
/// The bytes are not zeroed: they hold earlier messages (of this channel, or of this
/// producer); write all of them. The message goes to the consumers attached when the loan was
/// made; one that attaches while it is being filled gets the next message. See the
/// [module docs](self) for why the `&mut [u8]` is sound, and the assumption it rests on.
pub struct Loan<'a> {
    producer: &'a mut Producer,
    slot: LoanSlot,
    len: usize,
    /// Sent: nothing to abandon on drop.
    sent: bool,
}

// SAFETY: a loan is an exclusive borrow of the producer (which is `Send`) plus the address of
// bytes inside a mapping that producer owns; moving it to another thread moves that exclusive
// access along, and the mapping is not tied to a thread (`SharedRing` is `Send`).
unsafe impl Send for Loan<'_> {}
// SAFETY: through `&Loan` the bytes can only be read (`Deref`), never written, so sharing
// it between threads is sharing a `&[u8]`; the producer is not reachable through it.
unsafe impl Sync for Loan<'_> {}

impl<'a> Loan<'a> {
    pub(crate) fn new(producer: &'a mut Producer, slot: LoanSlot, len: usize) -> Loan<'a> {
        Loan {
            producer,
            slot,
            len,
            sent: false,
        }
    }

    /// Publishes the message: the consumer(s) can read it from now on. Never waits for room
    /// (the loan secured it), except for a fan-out loan over several consumers made with the
    /// blocking [`Producer::loan`](crate::Producer::loan) under policy `block`, which waits
    /// for room in each ring here, as `send` would.
    pub fn send(mut self) -> Result<()> {
        self.sent = true;
        self.producer.publish_loan(self.slot, self.len)
    }

    /// The message's length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty message (which is sent all the same).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when the bytes are a frame in the one consumer's ring, written in place: then
    /// [`send`](Self::send) only publishes it and never waits. False for a loan in the private
    /// buffer (several consumers, or one owed a loss record), whose `send` copies it into each
    /// ring and may wait for room there (policy `block`). For a caller that must not hold a
    /// lock across a wait (the Python binding's GIL).
    pub fn in_place(&self) -> bool {
        self.slot.payload().is_some()
    }
}

impl Deref for Loan<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self.slot.payload() {
            // SAFETY: the reserved frame's payload is `len` bytes inside the ring mapping,
            // which lives as long as the producer this loan borrows; memfd memory is always
            // initialised; and nothing in this process writes it while `&self` is borrowed
            // (see the module docs for the other processes).
            Some(payload) => unsafe { std::slice::from_raw_parts(payload.ptr, self.len) },
            None => self.producer.scratch(self.len),
        }
    }
}

impl DerefMut for Loan<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self.slot.payload() {
            // SAFETY: as for `deref`, and this is the only reference to the bytes in this
            // process: the loan borrows the producer mutably (so no other write path of this
            // ring runs: a process has one writer per ring), the consumer side reads only
            // published bytes, and `&mut self` rules out any other slice from this loan.
            Some(payload) => unsafe { std::slice::from_raw_parts_mut(payload.ptr, self.len) },
            None => self.producer.scratch_mut(self.len),
        }
    }
}

impl Drop for Loan<'_> {
    fn drop(&mut self) {
        if !self.sent {
            self.producer.abandon_loan(self.slot);
        }
    }
}

impl std::fmt::Debug for Loan<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loan").field("len", &self.len).finish()
    }
}

/// A borrowed message: where it lies in the ring, and whose ring that is.
pub(crate) struct Held {
    pub payload: Payload,
    /// The lane whose ring holds it.
    pub lane: u32,
    /// Fan-out channels: the producer that sent it (that lane's peer).
    pub producer: Option<u32>,
}

/// A message read in place, from [`Consumer::recv_ref`](crate::Consumer::recv_ref) (and
/// [`try_recv_ref`](crate::Consumer::try_recv_ref),
/// [`AsyncConsumer::recv_ref`](crate::AsyncConsumer::recv_ref)). Its space in the ring goes
/// back to the producer when it is dropped, not before: hold it only as long as needed, since
/// a producer waiting for room waits for it. [`unread`](Self::unread) instead gives it back
/// for the next receive.
///
/// It offers what is sound against a producer that rewrites the bytes while we hold them (see
/// the [module docs](self)): reads with atomic loads ([`copy_to`](Self::copy_to),
/// [`read_at`](Self::read_at), [`get`](Self::get), [`to_vec`](Self::to_vec)), the raw
/// pointer ([`as_ptr`](Self::as_ptr)), and, for a trusted producer only, the `unsafe`
/// [`as_slice`](Self::as_slice). Reading only the bytes needed (a header, a field) is where
/// it gains over [`recv_into`](crate::Consumer::recv_into), which copies every message whole.
pub struct Sample<'a> {
    consumer: &'a mut Consumer,
    held: Held,
}

// SAFETY: a sample is an exclusive borrow of the consumer (which is `Send`) plus the address
// of bytes in a mapping that consumer owns, read only with atomic loads; none of that is tied
// to a thread.
unsafe impl Send for Sample<'_> {}
// SAFETY: every `&self` method reads the bytes with atomic loads or returns a raw pointer
// (`as_slice` is unsafe, its contract covers all threads), so concurrent use from several
// threads is as sound as from one.
unsafe impl Sync for Sample<'_> {}

impl<'a> Sample<'a> {
    pub(crate) fn new(consumer: &'a mut Consumer, held: Held) -> Sample<'a> {
        Sample { consumer, held }
    }

    /// Gives the message back unread, instead of releasing it: the next receive on this
    /// consumer returns it again (the same message, from the same producer), whichever way it
    /// receives (borrowed or copied). For a caller that borrowed a message and then could not
    /// take it (no memory for its copy, a buffer too small): the message is not lost, it waits
    /// for the next try.
    ///
    /// The message's space stays taken (a producer waiting for room goes on waiting, unless
    /// padding skipped on the way to the message frees enough), and the consumer's counts ([`missed`](Consumer::missed),
    /// [`position`](Consumer::position)) are as if the message had not been read yet; a loss
    /// record read on the way to it stays counted once. In a fan-out channel the message's
    /// producer is the next one read; a report due first
    /// ([`ProducerGone`](crate::Error::ProducerGone) of another producer, say) still comes
    /// first, and the message after it. The message is checked again when it is read again,
    /// as every message is: a producer that rewrote it meanwhile can change what comes, as it
    /// could by sending something else, but not where the consumer reads next.
    pub fn unread(self) {
        // Not dropped: the drop would release the message.
        let mut this = std::mem::ManuallyDrop::new(self);
        let lane = this.held.lane;
        this.consumer.unread(lane);
    }

    /// The message's length.
    pub fn len(&self) -> usize {
        self.held.payload.len
    }

    /// True for an empty message.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fan-out channels: the producer that sent it (`None` in a one-to-one channel).
    pub fn producer(&self) -> Option<u32> {
        self.held.producer
    }

    /// Copies the first `out.len()` bytes of the message (all of it if it is shorter) into
    /// `out`, and returns how many.
    pub fn copy_to(&self, out: &mut [u8]) -> usize {
        self.read_at(0, out)
    }

    /// Copies bytes `offset..offset + out.len()` of the message (cut at its end) into `out`,
    /// and returns how many (0 for an offset at or past the end).
    pub fn read_at(&self, offset: usize, out: &mut [u8]) -> usize {
        // SAFETY: the payload lies in the mapping of a ring the consumer this sample borrows
        // owns, so it is still mapped (the ring guarantees the rest: `Payload`'s docs).
        unsafe { self.held.payload.load(offset, out) }
    }

    /// Byte `index` of the message, `None` past its end.
    pub fn get(&self, index: usize) -> Option<u8> {
        let mut byte = [0];
        (self.read_at(index, &mut byte) == 1).then_some(byte[0])
    }

    /// The message copied into a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0; self.len()];
        self.copy_to(&mut out);
        out
    }

    /// The first byte of the message in the shared mapping, valid for [`len`](Self::len)
    /// bytes while the sample lives. Reading through it is the caller's responsibility: the
    /// producer can write these bytes at any time (use atomic or volatile reads, or
    /// [`as_slice`](Self::as_slice) under its contract).
    pub fn as_ptr(&self) -> *const u8 {
        self.held.payload.ptr
    }

    /// The message as a slice, without copying.
    ///
    /// # Safety
    /// No process may write these bytes while the slice lives. That holds when the producer
    /// is trusted: an honest producer never writes a published message before the consumer
    /// releases it (on the sample's drop). A hostile producer can rewrite it at any time, and
    /// then reads through the slice are a data race (undefined behaviour); against such a
    /// producer use the safe accessors.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` bytes inside the mapping, which lives as long as `self`; memfd memory
        // is initialised; the caller promises nobody writes them meanwhile.
        unsafe { std::slice::from_raw_parts(self.held.payload.ptr, self.len()) }
    }
}

impl Drop for Sample<'_> {
    fn drop(&mut self) {
        self.consumer.release(self.held.lane);
    }
}

impl std::fmt::Debug for Sample<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sample")
            .field("len", &self.len())
            .field("producer", &self.held.producer)
            .finish()
    }
}

// What the `Send` impls above rely on: the endpoints themselves move between threads.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<Producer>();
    send::<Consumer>();
};
