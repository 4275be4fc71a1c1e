//! How a call reaches Python: failures and their codes, letting go of the GIL, deadlines, and
//! waits that wake to run Python's signal handlers.

use std::ffi::c_int;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyTimeoutError, PyValueError};
use pyo3::prelude::*;
use shmem_broker_client::{Error, ErrorCode};

/// The error codes, the same numbers as the C library's `SHMEM_ERR_*` (`shmem_broker.h`).
pub(crate) mod code {
    pub const INVALID_ARGUMENT: i32 = -1;
    pub const BROKER_NOT_RUNNING: i32 = -2;
    pub const BAD_REQUEST: i32 = -10;
    pub const UNSUPPORTED_VERSION: i32 = -11;
    pub const NO_SUCH_CHANNEL: i32 = -12;
    pub const CHANNEL_EXISTS: i32 = -13;
    pub const CHANNEL_BUSY: i32 = -14;
    pub const PERMISSION_DENIED: i32 = -15;
    pub const INVALID_NAME: i32 = -16;
    pub const INVALID_CAPACITY: i32 = -17;
    pub const LIMIT_REACHED: i32 = -18;
    pub const EVICTED: i32 = -19;
    pub const NO_SUCH_CONSUMER: i32 = -20;
    pub const BROKER_INTERNAL: i32 = -21;
    pub const CHANNEL_DROPPED: i32 = -30;
    pub const DISCONNECTED: i32 = -31;
    pub const PRODUCER_LOST: i32 = -32;
    pub const PRODUCER_GONE: i32 = -33;
    pub const END_OF_STREAM_LOST: i32 = -34;
    pub const MESSAGE_TOO_LARGE: i32 = -35;
    pub const CORRUPT: i32 = -36;
    pub const BUSY: i32 = -38;
    pub const IO: i32 = -40;
    pub const PROTOCOL: i32 = -41;
    pub const OTHER: i32 = -98;
}

/// How often a wait wakes up to run Python's signal handlers.
pub(crate) const SIGNAL_CHECK: Duration = Duration::from_millis(100);

/// A failure on its way to Python: a library error, a Python exception (a signal handler's,
/// a `BufferError`), or a timeout.
pub(crate) enum Fail {
    Shmem(Error),
    Code(i32, String),
    Py(PyErr),
    Timeout,
}

impl From<Error> for Fail {
    fn from(err: Error) -> Fail {
        Fail::Shmem(err)
    }
}

impl From<PyErr> for Fail {
    fn from(err: PyErr) -> Fail {
        Fail::Py(err)
    }
}

/// The code and the broker's code name of a library error.
pub(crate) fn error_code(err: &Error) -> (i32, Option<String>) {
    let number = match err {
        Error::BrokerNotRunning { .. } => code::BROKER_NOT_RUNNING,
        Error::Broker { code, .. } => match code {
            ErrorCode::BadRequest => code::BAD_REQUEST,
            ErrorCode::UnsupportedVersion => code::UNSUPPORTED_VERSION,
            ErrorCode::NoSuchChannel => code::NO_SUCH_CHANNEL,
            ErrorCode::ChannelExists => code::CHANNEL_EXISTS,
            ErrorCode::ChannelBusy | ErrorCode::AlreadyAttached => code::CHANNEL_BUSY,
            ErrorCode::PermissionDenied => code::PERMISSION_DENIED,
            ErrorCode::InvalidName => code::INVALID_NAME,
            ErrorCode::InvalidCapacity => code::INVALID_CAPACITY,
            ErrorCode::LimitReached => code::LIMIT_REACHED,
            ErrorCode::Evicted => code::EVICTED,
            ErrorCode::NoSuchConsumer => code::NO_SUCH_CONSUMER,
            _ => code::BROKER_INTERNAL,
        },
        Error::ChannelDropped { .. } => code::CHANNEL_DROPPED,
        Error::Disconnected { .. } => code::DISCONNECTED,
        Error::ProducerLost { .. } => code::PRODUCER_LOST,
        Error::ProducerGone { .. } => code::PRODUCER_GONE,
        Error::EndOfStreamLost { .. } => code::END_OF_STREAM_LOST,
        Error::MessageTooLarge { .. } => code::MESSAGE_TOO_LARGE,
        Error::Ring { .. } => code::CORRUPT,
        Error::Io { .. } => code::IO,
        Error::Protocol(_) => code::PROTOCOL,
        _ => code::OTHER,
    };
    // The broker's own name for its refusal ("no_such_channel"), as on the wire.
    let broker_code = err
        .code()
        .and_then(|c| serde_json::to_value(c).ok())
        .and_then(|v| v.as_str().map(str::to_string));
    (number, broker_code)
}

impl Fail {
    /// The Python exception: `shmem_broker.errors` picks the class for the code.
    pub(crate) fn into_pyerr(self, py: Python<'_>) -> PyErr {
        let (number, broker_code, message) = match self {
            Fail::Py(err) => return err,
            Fail::Timeout => return PyTimeoutError::new_err("timed out"),
            Fail::Code(number, message) => (number, None, message),
            Fail::Shmem(err) => {
                let (number, broker_code) = error_code(&err);
                (number, broker_code, err.to_string())
            }
        };
        let made = py
            .import("shmem_broker.errors")
            .and_then(|m| m.getattr("_from_native"))
            .and_then(|f| f.call1((number, broker_code, message)));
        match made {
            Ok(exception) => PyErr::from_value(exception),
            Err(err) => err,
        }
    }
}

pub(crate) type Outcome<T> = Result<T, Fail>;

/// Runs `body` without the GIL, then turns its failure into a Python exception.
pub(crate) fn unlocked<T: Send>(
    py: Python<'_>,
    body: impl Send + FnOnce() -> Outcome<T>,
) -> PyResult<T> {
    py.detach(body).map_err(|fail| fail.into_pyerr(py))
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while the lock was held became a Python exception already; every field the
    // state holds is valid on its own (Options and pointers checked before use), so the state
    // is usable after one.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// [`lock`] for a caller holding the GIL, which it never blocks on the lock with: a
/// producer's lock is held without the GIL across waits for room (`close` writing
/// end-of-stream, a fan-out loan's publish), and the consumer that would make that room may
/// be a thread of this interpreter, which needs the GIL to run. While the lock is taken, this
/// lets go of the GIL until the holder lets the lock go, then tries again.
pub(crate) fn lock_holding_gil<'a, T: Send>(
    py: Python<'_>,
    mutex: &'a Mutex<T>,
) -> MutexGuard<'a, T> {
    loop {
        match mutex.try_lock() {
            Ok(guard) => return guard,
            Err(TryLockError::Poisoned(poisoned)) => return poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => py.detach(|| drop(lock(mutex))),
        }
    }
}

/// When a wait with `timeout` (seconds; `None`: for ever) ends.
pub(crate) fn deadline(timeout: Option<f64>) -> PyResult<Option<Instant>> {
    match timeout {
        None => Ok(None),
        Some(t) if t.is_finite() && t >= 0.0 => Ok(Some(
            Instant::now() + Duration::try_from_secs_f64(t).unwrap_or(Duration::MAX / 4),
        )),
        Some(t) => Err(PyValueError::new_err(format!(
            "timeout {t} is not a number of seconds >= 0"
        ))),
    }
}

/// Waits until `fd` is readable, `deadline` passes (`Fail::Timeout`) or SIGNAL_CHECK passed
/// (to run Python's signal handlers: an exception from one ends the wait).
pub(crate) fn wait_readable(fd: RawFd, deadline: Option<Instant>) -> Outcome<()> {
    let mut slice = SIGNAL_CHECK;
    if let Some(deadline) = deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Fail::Timeout);
        }
        slice = slice.min(left);
    }
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // Rounded up, so a short wait is not a busy loop.
    let ms = c_int::try_from(slice.as_micros().div_ceil(1000)).unwrap_or(c_int::MAX);
    // SAFETY: one valid pollfd, for the duration of the call.
    let ready = unsafe { libc::poll(&mut pollfd, 1, ms) };
    if ready <= 0 {
        // Timed out or interrupted: give Python's signal handlers their turn.
        Python::attach(|py| py.check_signals())?;
    }
    Ok(())
}

/// A non-blocking call's failure. Its would-block (`None`) is handled by every caller before
/// this, so it cannot come here; were it to, it is reported, never taken for success.
pub(crate) fn failure(err: Option<Error>) -> Fail {
    err.map_or_else(
        || Fail::Code(code::OTHER, "would block".into()),
        Fail::Shmem,
    )
}

/// An endpoint's `fileno()`: `ValueError` once it is closed, as for Python's own files (its fd
/// is closed with it, and a number handed out then could name a file opened since).
pub(crate) fn checked_fileno(fd: RawFd, closed: &AtomicBool) -> PyResult<RawFd> {
    if closed.load(Ordering::Acquire) {
        return Err(PyValueError::new_err("fileno() of a closed endpoint"));
    }
    Ok(fd)
}

pub(crate) fn closed() -> Fail {
    Fail::Code(code::INVALID_ARGUMENT, "this endpoint is closed".into())
}
