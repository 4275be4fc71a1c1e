//! The boundary every exported function goes through: the per-thread last error, the
//! conversion of client errors to codes, the panic guard, and the checked argument helpers.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use shmem_broker_client::{Error, ErrorCode, TryRecvError, TrySendError};

use crate::codes::*;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

pub(crate) fn set_error(message: &str) {
    // Messages come from the broker and the OS: never let an inner NUL cut them short.
    let text = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    // `try_with`: a call from a thread-local destructor that runs after ours finds no slot;
    // the message is lost then, but no panic crosses into C.
    let _ = LAST_ERROR.try_with(|last| *last.borrow_mut() = text);
}

/// Why the last call on this thread that failed did so, in words (empty if none failed).
/// The string belongs to the library and stays valid until the next failing call on this
/// thread.
#[no_mangle]
pub extern "C" fn shmem_last_error_message() -> *const c_char {
    LAST_ERROR
        .try_with(|last| last.borrow().as_ptr())
        .unwrap_or(c"".as_ptr())
}

/// A failure to report: a code and the message.
pub(crate) struct Failure(pub(crate) c_int, pub(crate) String);

impl From<Error> for Failure {
    fn from(err: Error) -> Failure {
        let code = match &err {
            Error::BrokerNotRunning { .. } => SHMEM_ERR_BROKER_NOT_RUNNING,
            Error::Broker { code, .. } => match code {
                ErrorCode::BadRequest => SHMEM_ERR_BAD_REQUEST,
                ErrorCode::UnsupportedVersion => SHMEM_ERR_UNSUPPORTED_VERSION,
                ErrorCode::NoSuchChannel => SHMEM_ERR_NO_SUCH_CHANNEL,
                ErrorCode::ChannelExists => SHMEM_ERR_CHANNEL_EXISTS,
                ErrorCode::ChannelBusy | ErrorCode::AlreadyAttached => SHMEM_ERR_CHANNEL_BUSY,
                ErrorCode::PermissionDenied => SHMEM_ERR_PERMISSION_DENIED,
                ErrorCode::InvalidName => SHMEM_ERR_INVALID_NAME,
                ErrorCode::InvalidCapacity => SHMEM_ERR_INVALID_CAPACITY,
                ErrorCode::LimitReached => SHMEM_ERR_LIMIT_REACHED,
                ErrorCode::Evicted => SHMEM_ERR_EVICTED,
                ErrorCode::NoSuchConsumer => SHMEM_ERR_NO_SUCH_CONSUMER,
                _ => SHMEM_ERR_BROKER_INTERNAL,
            },
            Error::ChannelDropped { .. } => SHMEM_ERR_CHANNEL_DROPPED,
            Error::Disconnected { .. } => SHMEM_ERR_DISCONNECTED,
            Error::ProducerLost { .. } => SHMEM_ERR_PRODUCER_LOST,
            Error::ProducerGone { .. } => SHMEM_ERR_PRODUCER_GONE,
            Error::EndOfStreamLost { .. } => SHMEM_ERR_END_OF_STREAM_LOST,
            Error::MessageTooLarge { .. } => SHMEM_ERR_MESSAGE_TOO_LARGE,
            Error::Ring { .. } => SHMEM_ERR_CORRUPT,
            Error::Io { .. } => SHMEM_ERR_IO,
            Error::Protocol(_) => SHMEM_ERR_PROTOCOL,
            _ => SHMEM_ERR_OTHER,
        };
        Failure(code, err.to_string())
    }
}

/// A would-block (`None`) or a failure of a non-blocking send.
pub(crate) fn send_failure(err: TrySendError) -> Result<(), Failure> {
    match err.into_failure() {
        None => Ok(()),
        Some(err) => Err(err.into()),
    }
}

/// A would-block (`None`) or a failure of a non-blocking receive.
pub(crate) fn recv_failure(err: TryRecvError) -> Result<(), Failure> {
    match err.into_failure() {
        None => Ok(()),
        Some(err) => Err(err.into()),
    }
}

pub(crate) fn invalid(what: &str) -> Failure {
    Failure(SHMEM_ERR_INVALID_ARGUMENT, what.to_string())
}

/// Runs `body`, turning a failure into its code (message kept for the thread) and a panic into
/// `SHMEM_ERR_PANIC`.
///
/// Inlined, with the failures out of line: the per-message calls (`shmem_send`, `shmem_recv`)
/// then cost what the Rust client's do, plus the panic guard's one call.
#[inline(always)]
pub(crate) fn guard(body: impl FnOnce() -> Result<c_int, Failure>) -> c_int {
    // The failure is turned into its code inside, so only a `c_int` crosses the guard.
    let run = || match body() {
        Ok(code) => code,
        Err(failure) => failed(failure),
    };
    catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|_| panicked())
}

#[cold]
#[inline(never)]
fn failed(Failure(code, message): Failure) -> c_int {
    set_error(&message);
    code
}

#[cold]
#[inline(never)]
fn panicked() -> c_int {
    set_error("internal error in libshmem_broker (a panic, caught at the C boundary)");
    SHMEM_ERR_PANIC
}

/// Hands `value` to C through `out`, boxed: the caller owns it and frees it with the matching
/// `*_free` function.
///
/// # Safety
/// `out` is not NULL and points to writable storage.
pub(crate) unsafe fn give<T>(out: *mut *mut T, value: T) {
    // SAFETY: the caller's contract.
    unsafe { *out = Box::into_raw(Box::new(value)) };
}

/// Frees a handle [`give`] handed out (NULL is ignored); a panic in its drop stays here.
///
/// # Safety
/// `handle` is NULL or came from [`give`] and is not used afterwards.
pub(crate) unsafe fn free_handle<T>(handle: *mut T) {
    if !handle.is_null() {
        drop(catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: from Box::into_raw in `give`, freed once (the caller's contract).
            drop(unsafe { Box::from_raw(handle) })
        })));
    }
}

/// A `&str` from a C string that must not be NULL.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that outlives the returned borrow.
pub(crate) unsafe fn str_arg<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(invalid(&format!("{what} is NULL")));
    }
    // SAFETY: not NULL (checked) and NUL-terminated (the caller's contract).
    unsafe { CStr::from_ptr(ptr) }
        .to_str()
        .map_err(|_| invalid(&format!("{what} is not UTF-8")))
}

/// `&mut T` from a handle pointer that must not be NULL.
///
/// # Safety
/// `ptr` is NULL or a live handle of this library not used by another thread meanwhile.
#[inline(always)]
pub(crate) unsafe fn handle<'a, T>(ptr: *mut T, what: &str) -> Result<&'a mut T, Failure> {
    // SAFETY: the caller's contract; NULL is refused by `as_mut`.
    unsafe { ptr.as_mut() }.ok_or_else(|| null_arg(what))
}

/// A byte slice from a pointer and length (NULL allowed when `len` is 0).
///
/// # Safety
/// `ptr` points to `len` readable bytes, or `len` is 0.
#[inline(always)]
pub(crate) unsafe fn bytes_arg<'a>(ptr: *const c_void, len: usize) -> Result<&'a [u8], Failure> {
    // The pointer first: a message with one is one test.
    if !ptr.is_null() {
        // SAFETY: not NULL, `len` readable bytes (the caller's contract).
        return Ok(unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) });
    }
    if len == 0 {
        return Ok(&[]);
    }
    Err(invalid("data is NULL but len is not 0"))
}

#[inline(always)]
pub(crate) fn out_ptr<T>(out: *mut T, what: &str) -> Result<(), Failure> {
    if out.is_null() {
        return Err(null_arg(what));
    }
    Ok(())
}

/// "`what` is NULL".
#[cold]
#[inline(never)]
fn null_arg(what: &str) -> Failure {
    invalid(&format!("{what} is NULL"))
}
