//! Producer functions: send (one, non-blocking, batch), loans, close and free.

use std::ffi::{c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::codes::*;
use crate::guard::*;
use crate::handles::*;

/// Sends one message of `len` bytes, waiting for room.
///
/// # Safety
/// `producer` is a live producer; `data` points to `len` readable bytes (or `len` is 0).
#[no_mangle]
pub unsafe extern "C" fn shmem_send(
    producer: *mut ShmemProducer,
    data: *const c_void,
    len: usize,
) -> c_int {
    guard(|| {
        // SAFETY: the contract.
        let producer = unsafe { handle(producer, "producer") }?;
        // SAFETY: the contract.
        let message = unsafe { bytes_arg(data, len) }?;
        producer.producer()?.send(message)?;
        Ok(SHMEM_OK)
    })
}

/// [`shmem_send`] without waiting: `SHMEM_WOULD_BLOCK` when there is no room now.
///
/// # Safety
/// As [`shmem_send`].
#[no_mangle]
pub unsafe extern "C" fn shmem_try_send(
    producer: *mut ShmemProducer,
    data: *const c_void,
    len: usize,
) -> c_int {
    guard(|| {
        // SAFETY: the contract.
        let producer = unsafe { handle(producer, "producer") }?;
        // SAFETY: the contract.
        let message = unsafe { bytes_arg(data, len) }?;
        match producer.producer()?.try_send(message) {
            Ok(()) => Ok(SHMEM_OK),
            Err(err) => send_failure(err).map(|()| SHMEM_WOULD_BLOCK),
        }
    })
}

/// # Safety
/// `messages` points to `count` valid [`ShmemMessage`]s (or `count` is 0).
pub(crate) unsafe fn batch_arg<'a>(
    messages: *const ShmemMessage,
    count: usize,
) -> Result<Vec<&'a [u8]>, Failure> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if messages.is_null() {
        return Err(invalid("messages is NULL but count is not 0"));
    }
    // SAFETY: `count` valid structs (the contract).
    let messages = unsafe { std::slice::from_raw_parts(messages, count) };
    messages
        .iter()
        // SAFETY: each message's data is `len` readable bytes (the contract).
        .map(|m| unsafe { bytes_arg(m.data, m.len) })
        .collect()
}

/// Sends `count` messages, publishing as many at once as fit, waiting for room as needed.
///
/// # Safety
/// `producer` is a live producer; `messages` points to `count` valid messages.
#[no_mangle]
pub unsafe extern "C" fn shmem_send_batch(
    producer: *mut ShmemProducer,
    messages: *const ShmemMessage,
    count: usize,
) -> c_int {
    guard(|| {
        // SAFETY: the contract.
        let producer = unsafe { handle(producer, "producer") }?;
        // SAFETY: the contract.
        let batch = unsafe { batch_arg(messages, count) }?;
        producer.producer()?.send_batch(&batch)?;
        Ok(SHMEM_OK)
    })
}

/// Sends as many of `count` messages as fit now, in order, and says how many in `*sent`;
/// `SHMEM_WOULD_BLOCK` (and `*sent` 0) when not even the first fits.
///
/// # Safety
/// As [`shmem_send_batch`]; `sent` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn shmem_try_send_batch(
    producer: *mut ShmemProducer,
    messages: *const ShmemMessage,
    count: usize,
    sent: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: the contract.
        let producer = unsafe { handle(producer, "producer") }?;
        // SAFETY: the contract.
        let batch = unsafe { batch_arg(messages, count) }?;
        out_ptr(sent, "sent")?;
        let (code, n) = match producer.producer()?.try_send_batch(&batch) {
            Ok(n) => (SHMEM_OK, n),
            Err(err) => send_failure(err).map(|()| (SHMEM_WOULD_BLOCK, 0))?,
        };
        // SAFETY: not NULL (checked), writable (the contract).
        unsafe { *sent = n };
        Ok(code)
    })
}

/// Lends `len` bytes in the ring (zero-copy send): `*data` is where to write them. Publish
/// with [`shmem_loan_send`], or give the space back with [`shmem_loan_abandon`]; until then
/// this producer's other calls return `SHMEM_ERR_BUSY`. Waits for room like [`shmem_send`].
/// The bytes are not zeroed: write every one of them.
///
/// # Safety
/// `producer` is a live producer; `data` points to writable storage. `*data` is valid for
/// `len` bytes until the loan is sent or abandoned (or the producer freed).
#[no_mangle]
pub unsafe extern "C" fn shmem_loan(
    producer: *mut ShmemProducer,
    len: usize,
    data: *mut *mut c_void,
) -> c_int {
    guard(|| {
        // SAFETY: the contract.
        let producer = unsafe { handle(producer, "producer") }?;
        out_ptr(data, "data")?;
        let ptr = producer.lend(|p| Ok(Some(p.loan(len)?)))?;
        // SAFETY: not NULL (checked), writable (the contract).
        unsafe { *data = ptr.unwrap_or(std::ptr::null_mut()).cast() };
        Ok(SHMEM_OK)
    })
}

/// [`shmem_loan`] without waiting: `SHMEM_WOULD_BLOCK` (and `*data` NULL) when there is no
/// room now.
///
/// # Safety
/// As [`shmem_loan`].
#[no_mangle]
pub unsafe extern "C" fn shmem_try_loan(
    producer: *mut ShmemProducer,
    len: usize,
    data: *mut *mut c_void,
) -> c_int {
    guard(|| {
        // SAFETY: the contract.
        let producer = unsafe { handle(producer, "producer") }?;
        out_ptr(data, "data")?;
        let ptr = producer.lend(|p| match p.try_loan(len) {
            Ok(loan) => Ok(Some(loan)),
            Err(err) => send_failure(err).map(|()| None),
        })?;
        // SAFETY: not NULL (checked), writable (the contract).
        unsafe { *data = ptr.unwrap_or(std::ptr::null_mut()).cast() };
        Ok(if ptr.is_some() {
            SHMEM_OK
        } else {
            SHMEM_WOULD_BLOCK
        })
    })
}

/// Publishes the outstanding loan: the consumers can read it from now on.
/// `SHMEM_ERR_INVALID_ARGUMENT` if there is none.
///
/// # Safety
/// `producer` is a live producer; the pointer [`shmem_loan`] gave is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn shmem_loan_send(producer: *mut ShmemProducer) -> c_int {
    guard(|| {
        // SAFETY: the contract.
        let producer = unsafe { handle(producer, "producer") }?;
        let loan = producer
            .loan
            .take()
            .ok_or_else(|| invalid("this producer has no loan outstanding"))?;
        loan.send()?;
        Ok(SHMEM_OK)
    })
}

/// Gives the outstanding loan's space back without publishing anything (nothing if there is
/// none).
///
/// # Safety
/// `producer` is NULL or a live producer; the pointer [`shmem_loan`] gave is not used
/// afterwards.
#[no_mangle]
pub unsafe extern "C" fn shmem_loan_abandon(producer: *mut ShmemProducer) {
    // SAFETY: NULL or live (the contract).
    if let Some(producer) = unsafe { producer.as_mut() } {
        drop(catch_unwind(AssertUnwindSafe(|| producer.loan = None)));
    }
}

/// The largest message this producer's channel carries.
///
/// # Safety
/// `producer` is NULL (0 is returned) or a live producer.
#[no_mangle]
pub unsafe extern "C" fn shmem_producer_max_message_len(producer: *const ShmemProducer) -> usize {
    // SAFETY: NULL or live (the contract).
    unsafe { producer.as_ref() }.map_or(0, |p| p.max_message_len)
}

/// A file descriptor that becomes readable whenever a non-blocking call on this producer may
/// go on (room, a consumer coming or going, the broker's news), for `poll`/`epoll`. It
/// belongs to the producer: do not close it or read from it. -1 for NULL.
///
/// # Safety
/// `producer` is NULL or a live producer.
#[no_mangle]
pub unsafe extern "C" fn shmem_producer_fd(producer: *const ShmemProducer) -> c_int {
    // SAFETY: NULL or live (the contract).
    unsafe { producer.as_ref() }.map_or(-1, |p| p.ready_fd)
}

/// Writes the end-of-stream mark (the consumers learn the stream is complete) and frees the
/// producer, whatever the result (NULL is `SHMEM_ERR_INVALID_ARGUMENT`).
///
/// # Safety
/// `producer` is NULL or a live producer, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn shmem_producer_close(producer: *mut ShmemProducer) -> c_int {
    guard(|| {
        if producer.is_null() {
            return Err(invalid("producer is NULL"));
        }
        // SAFETY: a pointer from Box::into_raw, freed once (the contract).
        let mut handle = unsafe { Box::from_raw(producer) };
        // A loan still out is abandoned: the end-of-stream mark follows what was sent.
        handle.loan = None;
        let raw = std::mem::replace(&mut handle.producer, std::ptr::null_mut());
        drop(handle);
        // SAFETY: from Box::into_raw in ShmemProducer::new; the handle no longer holds it (its
        // Drop skips NULL), so it is freed once, here, and no loan borrows it any more.
        let producer = unsafe { Box::from_raw(raw) };
        producer.close()?;
        Ok(SHMEM_OK)
    })
}

/// Frees a producer without an end-of-stream mark (its consumers learn it went away without
/// finishing). NULL is ignored.
///
/// # Safety
/// `producer` is NULL or a live producer, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn shmem_producer_free(producer: *mut ShmemProducer) {
    // SAFETY: NULL or from Box::into_raw in this library, freed once (the contract).
    unsafe { free_handle(producer) }
}
