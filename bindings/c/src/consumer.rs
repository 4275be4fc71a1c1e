//! Consumer functions: receive (copy, borrowed, batch), release and free.

use std::ffi::{c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use shmem_broker_client::{Consumer, Sample};

use crate::codes::*;
use crate::guard::*;
use crate::handles::*;

/// Hands the next message to `buf`, or says how large it is and leaves it in the channel.
///
/// A message there that fits the caller's buffer, in a one-to-one channel, is copied straight
/// to it (one copy, as the Rust client's `recv_into`); anything else is borrowed with
/// `receive` and then copied to `buf` and released, or, if it does not fit, given back unread
/// (`Sample::unread`): it stays in the ring for the next receive, so that a consumer freed
/// after a too-small buffer (a durable one, or one whose successor continues a one-to-one
/// channel) loses nothing. Inlined into each receive function, with the rest out of line.
///
/// # Safety
/// `buf` is NULL or points to `capacity` writable bytes that nothing else uses during the
/// call; `len` is NULL or points to writable storage.
#[inline(always)]
pub(crate) unsafe fn deliver(
    consumer: &mut ShmemConsumer,
    buf: *mut c_void,
    capacity: usize,
    len: *mut usize,
    receive: impl FnOnce(&mut Consumer) -> Result<Option<Option<Sample<'_>>>, Failure>,
) -> Result<c_int, Failure> {
    out_ptr(len, "len")?;
    // One compare: refused while a borrowed message is out or a batch runs.
    consumer.check_not_lent()?;
    // SAFETY: from Box::into_raw, freed only when the handle is; no sample borrows it
    // (checked above), and `&mut` on the handle makes this the only access.
    let target = unsafe { &mut *consumer.consumer };
    // The most common case of all, alone: a message there that fits the caller's buffer,
    // copied straight to it (no sample); anything else goes the general way below.
    if !buf.is_null() {
        // SAFETY: not NULL, `capacity` writable bytes that nothing else touches meanwhile
        // (the caller's contract, from the C one); not ours (the ring's mapping is never
        // handed out writable).
        if let Some(n) = unsafe { target.try_recv_into_raw_fast(buf.cast::<u8>(), capacity) }? {
            // SAFETY: not NULL (checked), writable (the caller's contract).
            unsafe { *len = n };
            return Ok(SHMEM_OK);
        }
    }
    let got = receive(target);
    // SAFETY: the contract.
    unsafe { hand_over(got, buf, capacity, len) }
}

/// The rest of [`deliver`]: a borrowed message copied to `buf` and released, or given back
/// unread when `buf` cannot take it; end-of-stream, would-block or a failure.
///
/// # Safety
/// As [`deliver`]; `len` is not NULL.
#[inline(never)]
unsafe fn hand_over(
    got: Result<Option<Option<Sample<'_>>>, Failure>,
    buf: *mut c_void,
    capacity: usize,
    len: *mut usize,
) -> Result<c_int, Failure> {
    let (code, n) = match got? {
        Some(Some(sample)) => {
            let n = sample.len();
            // SAFETY: not NULL (the caller checked), writable (the contract).
            unsafe { *len = n };
            if n > capacity {
                sample.unread();
                return Err(Failure(
                    SHMEM_ERR_BUFFER_TOO_SMALL,
                    format!(
                        "the message has {n} bytes, the buffer {capacity}; \
                         it stays for the next receive"
                    ),
                ));
            }
            if n > 0 {
                if buf.is_null() {
                    sample.unread();
                    return Err(invalid("buf is NULL"));
                }
                // SAFETY: the source is the message's `n` bytes in the ring mapping, mapped
                // while `sample` lives; `buf` holds `capacity` >= n writable bytes (the
                // contract) that are not the mapping (never handed out writable). A raw copy
                // forms no reference to the shared bytes: a hostile producer rewriting them
                // meanwhile only changes what this message holds, as in the ring's own reads.
                unsafe {
                    shmem_broker_client::copy::copy_raw(sample.as_ptr(), buf.cast::<u8>(), n)
                };
            }
            // Its space goes back to the producer.
            drop(sample);
            return Ok(SHMEM_OK);
        }
        Some(None) => (SHMEM_END_OF_STREAM, 0),
        None => (SHMEM_WOULD_BLOCK, 0),
    };
    // SAFETY: not NULL (the caller checked), writable (the contract).
    unsafe { *len = n };
    Ok(code)
}

/// Receives the next message into `buf` (`capacity` bytes), waiting for one; `*len` is its
/// length. `SHMEM_END_OF_STREAM` (and `*len` 0) when the producer closed its stream. A message
/// larger than `capacity` gives `SHMEM_ERR_BUFFER_TOO_SMALL` with its length in `*len` and
/// stays in the channel: a later receive (by any receive function; after
/// `shmem_consumer_free`, the durable consumer's or the one-to-one channel's next consumer)
/// gets it, after any report due first (another producer's end in a fan-out channel).
///
/// # Safety
/// `consumer` is a live consumer; `buf` points to `capacity` writable bytes; `len` to writable
/// storage.
#[no_mangle]
pub unsafe extern "C" fn shmem_recv(
    consumer: *mut ShmemConsumer,
    buf: *mut c_void,
    capacity: usize,
    len: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: the contract.
        let consumer = unsafe { handle(consumer, "consumer") }?;
        // SAFETY: the contract.
        unsafe { deliver(consumer, buf, capacity, len, |c| Ok(Some(c.recv_ref()?))) }
    })
}

/// [`shmem_recv`] without waiting: `SHMEM_WOULD_BLOCK` when no message is there.
///
/// # Safety
/// As [`shmem_recv`].
#[no_mangle]
pub unsafe extern "C" fn shmem_try_recv(
    consumer: *mut ShmemConsumer,
    buf: *mut c_void,
    capacity: usize,
    len: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: the contract.
        let consumer = unsafe { handle(consumer, "consumer") }?;
        // SAFETY: the contract.
        unsafe {
            deliver(consumer, buf, capacity, len, |c| match c.try_recv_ref() {
                Ok(sample) => Ok(Some(sample)),
                Err(err) => recv_failure(err).map(|()| None),
            })
        }
    })
}

/// Lends the next message where it lies in the ring (zero-copy receive), waiting for one:
/// `*data` and `*len` say where and how long. Its space goes back to the producer with
/// [`shmem_recv_ref_release`]; until then this consumer's other calls return
/// `SHMEM_ERR_BUSY`, and a producer waiting for room waits for it. `SHMEM_END_OF_STREAM` (and
/// `*data` NULL, `*len` 0) when the producer closed its stream.
///
/// The bytes are shared memory the producer can write: an honest producer never touches a
/// published message, but a hostile one can change it while you read. Copy out what you must
/// be able to trust before checking it.
///
/// # Safety
/// `consumer` is a live consumer; `data` and `len` point to writable storage. `*data` is valid
/// for `*len` bytes until the release (or the consumer is freed).
#[no_mangle]
pub unsafe extern "C" fn shmem_recv_ref(
    consumer: *mut ShmemConsumer,
    data: *mut *const c_void,
    len: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: the contract.
        let consumer = unsafe { handle(consumer, "consumer") }?;
        // SAFETY: the contract.
        unsafe { borrow_next(consumer, data, len, |c| Ok(Some(c.recv_ref()?))) }
    })
}

/// [`shmem_recv_ref`] without waiting: `SHMEM_WOULD_BLOCK` when no message is there.
///
/// # Safety
/// As [`shmem_recv_ref`].
#[no_mangle]
pub unsafe extern "C" fn shmem_try_recv_ref(
    consumer: *mut ShmemConsumer,
    data: *mut *const c_void,
    len: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: the contract.
        let consumer = unsafe { handle(consumer, "consumer") }?;
        // SAFETY: the contract.
        unsafe {
            borrow_next(consumer, data, len, |c| match c.try_recv_ref() {
                Ok(sample) => Ok(Some(sample)),
                Err(err) => recv_failure(err).map(|()| None),
            })
        }
    })
}

/// Takes the next message with `take` and keeps it lent: `take` gives `None` (would block),
/// `Some(None)` (end-of-stream) or the sample.
///
/// # Safety
/// `data` and `len` point to writable storage.
pub(crate) unsafe fn borrow_next(
    consumer: &mut ShmemConsumer,
    data: *mut *const c_void,
    len: *mut usize,
    take: impl FnOnce(&'static mut Consumer) -> Result<Option<Option<Sample<'static>>>, Failure>,
) -> Result<c_int, Failure> {
    out_ptr(data, "data")?;
    out_ptr(len, "len")?;
    consumer.check_not_lent()?;
    // SAFETY: from Box::into_raw, freed only in Drop, after the sample; no sample borrows it
    // (checked), and nothing else touches it while this one lives (every other call checks
    // `check_not_lent` first).
    let target: &'static mut Consumer = unsafe { &mut *consumer.consumer };
    let (code, ptr, n) = match take(target)? {
        None => (SHMEM_WOULD_BLOCK, std::ptr::null(), 0),
        Some(None) => (SHMEM_END_OF_STREAM, std::ptr::null(), 0),
        Some(Some(sample)) => {
            let found = (SHMEM_OK, sample.as_ptr(), sample.len());
            consumer.lend_sample(sample);
            found
        }
    };
    // SAFETY: both checked not NULL, writable (the contract).
    unsafe {
        *data = ptr.cast();
        *len = n;
    }
    Ok(code)
}

/// Releases the message [`shmem_recv_ref`] lent: its space goes back to the producer. Nothing
/// if none is held.
///
/// # Safety
/// `consumer` is NULL or a live consumer; the pointer [`shmem_recv_ref`] gave is not used
/// afterwards.
#[no_mangle]
pub unsafe extern "C" fn shmem_recv_ref_release(consumer: *mut ShmemConsumer) {
    // SAFETY: NULL or live (the contract).
    if let Some(consumer) = unsafe { consumer.as_mut() } {
        drop(catch_unwind(AssertUnwindSafe(|| consumer.release())));
    }
}

/// Receives up to `max` messages, waiting for at least one, calling `each(ctx, data, len)` for
/// each (`data` is valid during the call only); `*count` says how many. `SHMEM_END_OF_STREAM`
/// (and `*count` 0) when the producer closed its stream.
///
/// `each` may not free this consumer; a call into it from `each` gets `SHMEM_ERR_BUSY`.
///
/// # Safety
/// `consumer` is a live consumer; `each` a function safe to call with `ctx`; `count` writable.
#[no_mangle]
pub unsafe extern "C" fn shmem_recv_batch(
    consumer: *mut ShmemConsumer,
    max: usize,
    each: shmem_message_fn,
    ctx: *mut c_void,
    count: *mut usize,
) -> c_int {
    guard(|| {
        let each = each.ok_or_else(|| invalid("each is NULL"))?;
        out_ptr(count, "count")?;
        // The handle is borrowed only around the callbacks, never across them: a callback that
        // calls back into this consumer gets a fresh borrow, sees `Busy::Batch` and is refused
        // (SHMEM_ERR_BUSY) without touching the `Consumer` the batch is using.
        let target = {
            // SAFETY: the contract.
            let handle = unsafe { handle(consumer, "consumer") }?;
            handle.check_not_lent()?;
            handle.busy = Busy::Batch;
            handle.consumer
        };
        // Ends the batch state however the batch ends: returned, failed or panicked.
        let batch = BatchGuard(consumer);
        // SAFETY: from Box::into_raw, freed only when the handle is (which a callback cannot
        // do during the batch); no sample borrows it (checked above) and nothing else reaches
        // it during the batch (`Busy::Batch`).
        let target = unsafe { &mut *target };
        let delivered = target.recv_batch(max.max(1), |message| {
            // SAFETY: `each` may be called with `ctx` (the contract); the bytes live for the
            // call.
            unsafe { each(ctx, message.as_ptr().cast(), message.len()) }
        });
        drop(batch);
        let delivered = match delivered? {
            Some(n) => n,
            None => {
                // SAFETY: not NULL (checked), writable (the contract).
                unsafe { *count = 0 };
                return Ok(SHMEM_END_OF_STREAM);
            }
        };
        // SAFETY: as above.
        unsafe { *count = delivered };
        Ok(SHMEM_OK)
    })
}

/// Puts a consumer handle back to idle when dropped: the end of [`shmem_recv_batch`], on every
/// path out of it (a panic included).
struct BatchGuard(*mut ShmemConsumer);

impl Drop for BatchGuard {
    fn drop(&mut self) {
        // SAFETY: a live handle (shmem_recv_batch's contract) that its callbacks could not free
        // (`shmem_consumer_free` refuses during the batch); no borrow of it is held here, the
        // batch having borrowed it only around its callbacks.
        if let Some(handle) = unsafe { self.0.as_mut() } {
            handle.busy = Busy::Idle;
        }
    }
}

/// A file descriptor that becomes readable whenever a non-blocking call on this consumer may
/// go on (a message, a producer coming or going, end-of-stream, the broker's news), for
/// `poll`/`epoll`. It belongs to the consumer: do not close it or read from it. -1 for NULL.
///
/// # Safety
/// `consumer` is NULL or a live consumer.
#[no_mangle]
pub unsafe extern "C" fn shmem_consumer_fd(consumer: *const ShmemConsumer) -> c_int {
    // SAFETY: NULL or live (the contract).
    unsafe { consumer.as_ref() }.map_or(-1, |c| c.ready_fd)
}

/// Frees a consumer (a durable one keeps its queue at the broker). NULL is ignored.
///
/// # Safety
/// `consumer` is NULL or a live consumer, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn shmem_consumer_free(consumer: *mut ShmemConsumer) {
    // SAFETY: NULL or live (the contract).
    if unsafe { consumer.as_ref() }.is_some_and(|c| c.busy == Busy::Batch) {
        set_error("shmem_consumer_free from the consumer's own shmem_recv_batch callback: ignored");
        return;
    }
    // SAFETY: NULL or from Box::into_raw in this library, freed once (the contract).
    unsafe { free_handle(consumer) }
}
