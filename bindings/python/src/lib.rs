//! `shmem_broker._native`: the Python classes of the `shmem-broker` package, over the Rust
//! client library (no second implementation of the ring). The pure-Python part of the package
//! (`python/shmem_broker/`) re-exports them and defines the exception classes.
//!
//! Every call that can wait (connect, attach, send, loan, receive, close) lets go of the GIL
//! while it waits, and wakes every 100 ms to let Python run its signal handlers (Ctrl-C
//! interrupts a wait).
//!
//! Zero-copy memory goes to Python as a [`Lent`] object behind a `memoryview`. The ring bytes
//! must never be reachable from Python once they are published (loan) or given back (borrowed
//! receive), so ending a loan or a borrow first releases the `memoryview` this module handed
//! out and then checks that no other view of it is alive (a slice, a `numpy` array, a
//! `memoryview(view.obj)`); if one is, the call raises `BufferError` and changes nothing. A
//! [`Lent`] also keeps the endpoint's shared state (and so its ring mapping) alive for as long
//! as Python holds a view, whatever happens to the endpoint object.

use std::ffi::c_int;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyBufferError, PyTimeoutError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyMemoryView};
use shmem_broker_client::{
    Client, Consumer, Error, ErrorCode, Loan, Producer, Sample, SlowConsumer, TryRecvError,
    TrySendError,
};

/// The error codes, the same numbers as the C library's `SHMEM_ERR_*` (`shmem_broker.h`).
mod code {
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
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

/// A failure on its way to Python: a library error, a Python exception (a signal handler's,
/// a `BufferError`), or a timeout.
enum Fail {
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
fn error_code(err: &Error) -> (i32, Option<String>) {
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
    fn into_pyerr(self, py: Python<'_>) -> PyErr {
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

type Outcome<T> = Result<T, Fail>;

/// Runs `body` without the GIL, then turns its failure into a Python exception.
fn unlocked<T: Send>(py: Python<'_>, body: impl Send + FnOnce() -> Outcome<T>) -> PyResult<T> {
    py.detach(body).map_err(|fail| fail.into_pyerr(py))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while the lock was held became a Python exception already; every field the
    // state holds is valid on its own (Options and pointers checked before use), so the state
    // is usable after one.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// When a wait with `timeout` (seconds; `None`: for ever) ends.
fn deadline(timeout: Option<f64>) -> PyResult<Option<Instant>> {
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
fn wait_readable(fd: RawFd, deadline: Option<Instant>) -> Outcome<()> {
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

/// Memory of a ring lent to Python through the buffer protocol (a loan's writable bytes, a
/// borrowed message's read-only bytes), behind the `memoryview`s this module hands out.
#[pyclass(frozen, module = "shmem_broker._native")]
struct Lent {
    /// Where the bytes are, as an address (the class must be Send and Sync).
    addr: usize,
    len: usize,
    readonly: bool,
    state: Mutex<LentState>,
}

struct LentState {
    /// Buffers Python holds now (`__getbuffer__` minus `__releasebuffer__`).
    exports: usize,
    /// Cleared when the loan or borrow ends: no new buffer from then on.
    valid: bool,
    /// The endpoint state whose ring holds the bytes, kept alive (mapped) while buffers
    /// exist.
    keep: Option<Keep>,
}

/// An endpoint's shared state, held only to keep it alive.
type Keep = Arc<dyn Send + Sync>;

impl Lent {
    /// Ends the lending if Python holds no buffer of it any more; `BufferError` otherwise.
    fn end(&self, what: &str) -> PyResult<()> {
        let mut state = lock(&self.state);
        if state.exports > 0 {
            return Err(PyBufferError::new_err(format!(
                "{what}: {} view(s) of it are still alive (a slice, a numpy array, another \
                 memoryview): release or delete them first",
                state.exports
            )));
        }
        state.valid = false;
        state.keep = None;
        Ok(())
    }
}

#[pymethods]
impl Lent {
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let this: &Lent = slf.get();
        let obj = slf.clone().into_any();
        if view.is_null() {
            return Err(PyBufferError::new_err("no view to fill"));
        }
        if this.readonly && (flags & pyo3::ffi::PyBUF_WRITABLE) == pyo3::ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err(
                "a received message is read-only (the producer's memory)",
            ));
        }
        let mut state = lock(&this.state);
        if !state.valid {
            return Err(PyBufferError::new_err(
                "this memory was published or given back: it is no longer yours",
            ));
        }
        let len = isize::try_from(this.len)
            .map_err(|_| PyBufferError::new_err("message too large for a buffer"))?;
        state.exports = state.exports.saturating_add(1);
        // SAFETY: `view` is not NULL (checked) and is the Py_buffer the interpreter asks us
        // to fill. `addr` is `len` bytes inside a ring mapping that stays mapped while this
        // buffer exists: `keep` holds the endpoint's state (and so the mapping) until the
        // lending ends, which `end` refuses while `exports` > 0, and `exports` falls only in
        // `__releasebuffer__`. `obj` takes a reference to us (released by the interpreter
        // with the buffer). The format is a static string Python only reads; `shape` and
        // `strides` point into the view itself, as the buffer protocol allows for 1-D
        // buffers.
        unsafe {
            (*view).obj = obj.into_ptr();
            (*view).buf = this.addr as *mut std::ffi::c_void;
            (*view).len = len;
            (*view).readonly = c_int::from(this.readonly);
            (*view).itemsize = 1;
            (*view).format = if (flags & pyo3::ffi::PyBUF_FORMAT) == pyo3::ffi::PyBUF_FORMAT {
                c"B".as_ptr().cast_mut()
            } else {
                std::ptr::null_mut()
            };
            (*view).ndim = 1;
            (*view).shape = if (flags & pyo3::ffi::PyBUF_ND) == pyo3::ffi::PyBUF_ND {
                &mut (*view).len
            } else {
                std::ptr::null_mut()
            };
            (*view).strides = if (flags & pyo3::ffi::PyBUF_STRIDES) == pyo3::ffi::PyBUF_STRIDES {
                &mut (*view).itemsize
            } else {
                std::ptr::null_mut()
            };
            (*view).suboffsets = std::ptr::null_mut();
            (*view).internal = std::ptr::null_mut();
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut pyo3::ffi::Py_buffer) {
        let mut state = lock(&self.state);
        state.exports = state.exports.saturating_sub(1);
        if state.exports == 0 && !state.valid {
            state.keep = None;
        }
    }

    fn __len__(&self) -> usize {
        self.len
    }
}

/// The memoryview handed out for a lending, and its [`Lent`].
struct Lending {
    view: Py<PyAny>,
    lent: Py<Lent>,
}

/// Makes the `memoryview` for `len` bytes at `addr`, kept alive by `keep`.
fn lend(
    py: Python<'_>,
    addr: usize,
    len: usize,
    readonly: bool,
    keep: Keep,
) -> PyResult<(Lending, Py<PyAny>)> {
    let lent = Py::new(
        py,
        Lent {
            addr,
            len,
            readonly,
            state: Mutex::new(LentState {
                exports: 0,
                valid: true,
                keep: Some(keep),
            }),
        },
    )?;
    let view = PyMemoryView::from(lent.bind(py).as_any())?
        .into_any()
        .unbind();
    Ok((
        Lending {
            view: view.clone_ref(py),
            lent,
        },
        view,
    ))
}

/// Ends a lending: releases the handed-out `memoryview` (touching it afterwards raises
/// `ValueError`), then checks that no other view is alive. On `BufferError` the lending stays
/// (its memoryview released) and the call can be repeated once the views are gone.
fn end_lending(py: Python<'_>, slot: &Mutex<Option<Lending>>, what: &str) -> PyResult<()> {
    let Some(lending) = lock(slot).take() else {
        return Ok(());
    };
    let released = lending
        .view
        .call_method0(py, "release")
        .map_err(|_| {
            PyBufferError::new_err(format!(
                "{what}: its memoryview is exported (a numpy array or another object made \
                 from it is alive): delete that first"
            ))
        })
        .and_then(|_| lending.lent.get().end(what));
    if released.is_err() {
        *lock(slot) = Some(lending);
    }
    released
}

/// The producer, and the loan that may borrow it.
///
/// A [`Loan`] borrows its producer mutably and both live here, so the producer lives in its
/// own allocation (`producer`, from `Box::into_raw`, freed in `close` or `Drop`) and the loan
/// borrows it for `'static`: sound because everything that touches the producer checks first
/// that no loan is out, and the loan is always dropped before the producer.
struct ProducerInner {
    loan: Option<Loan<'static>>,
    /// NULL once closed.
    producer: *mut Producer,
}

// SAFETY: the raw pointer is an owned `Box<Producer>` (Producer is Send); the loan is Send;
// the value is reached only through its Mutex.
unsafe impl Send for ProducerInner {}

impl ProducerInner {
    /// The producer, when it is open and no loan borrows it.
    fn producer(&mut self) -> Outcome<&mut Producer> {
        if self.loan.is_some() {
            return Err(Fail::Code(
                code::BUSY,
                "this producer has a loan outstanding: send() or abandon() it first".into(),
            ));
        }
        // SAFETY: NULL or from Box::into_raw, freed only in close/Drop (which set NULL); no
        // loan borrows it (checked), and `&mut self` (under the Mutex) is the only access.
        unsafe { self.producer.as_mut() }.ok_or_else(closed)
    }

    /// Takes a loan with `take` and keeps it; returns the address of its bytes.
    fn take_loan(
        &mut self,
        take: impl FnOnce(&'static mut Producer) -> Outcome<Option<Loan<'static>>>,
    ) -> Outcome<Option<usize>> {
        self.producer()?;
        // SAFETY: as in `producer`; the `'static` borrow ends when the loan is dropped, which
        // happens before the producer is freed (publish, abandon, close and Drop end the loan
        // first), and nothing else reaches the producer meanwhile (`producer()` refuses).
        let producer: &'static mut Producer = unsafe { &mut *self.producer };
        let Some(mut loan) = take(producer)? else {
            return Ok(None);
        };
        let addr = loan.as_mut_ptr() as usize;
        self.loan = Some(loan);
        Ok(Some(addr))
    }

    /// Closes: end-of-stream if `finish`, else just detaches.
    fn close(&mut self, finish: bool) -> Outcome<()> {
        self.loan = None;
        let raw = std::mem::replace(&mut self.producer, std::ptr::null_mut());
        if raw.is_null() {
            return Ok(());
        }
        // SAFETY: from Box::into_raw, freed once (the field is NULL from now on); no loan
        // borrows it any more (dropped above).
        let producer = unsafe { Box::from_raw(raw) };
        if finish {
            producer.close()?;
        }
        Ok(())
    }
}

impl Drop for ProducerInner {
    fn drop(&mut self) {
        // Without end-of-stream: the consumers learn the producer went away unfinished.
        let _ = self.close(false);
    }
}

/// A non-blocking call's failure. Its would-block (`None`) is handled by every caller before
/// this, so it cannot come here; were it to, it is reported, never taken for success.
fn failure(err: Option<Error>) -> Fail {
    err.map_or_else(
        || Fail::Code(code::OTHER, "would block".into()),
        Fail::Shmem,
    )
}

fn closed() -> Fail {
    Fail::Code(code::INVALID_ARGUMENT, "this endpoint is closed".into())
}

/// A producer attached to a channel. A context manager: leaving the `with` block normally
/// closes the stream (end-of-stream); leaving it by an exception detaches without one, so the
/// consumers learn the stream is incomplete.
#[pyclass(frozen, module = "shmem_broker._native", name = "Producer")]
struct PyProducer {
    inner: Arc<Mutex<ProducerInner>>,
    lending: Mutex<Option<Lending>>,
    channel: String,
    max_message_len: usize,
    fd: RawFd,
}

impl PyProducer {
    /// Ends the outstanding loan: publishes it, or abandons it.
    fn end_loan(&self, py: Python<'_>, publish: bool) -> PyResult<()> {
        end_lending(py, &self.lending, "the loan")?;
        let inner = &self.inner;
        unlocked(py, || {
            let mut inner = lock(inner);
            match inner.loan.take() {
                Some(loan) if publish => Ok(loan.send()?),
                Some(_) => Ok(()),
                None if publish => Err(Fail::Code(
                    code::INVALID_ARGUMENT,
                    "send() without data needs a loan outstanding (producer.loan(n))".into(),
                )),
                None => Ok(()),
            }
        })
    }
}

/// The bytes of a message to send, readable without the GIL.
struct Message {
    addr: usize,
    len: usize,
}

impl Message {
    fn as_slice(&self) -> &[u8] {
        // SAFETY: `addr` is the start of `len` bytes of an immutable `bytes` object (or of our
        // own copy) that the caller keeps alive for the whole send (`send` holds a reference).
        unsafe { std::slice::from_raw_parts(self.addr as *const u8, self.len) }
    }
}

#[pymethods]
impl PyProducer {
    /// Sends `data` (any bytes-like object), waiting up to `timeout` seconds for room (`None`:
    /// for ever; `0`: not at all) and raising `TimeoutError` when none came. Without `data`,
    /// publishes the outstanding loan.
    #[pyo3(signature = (data=None, /, timeout=None))]
    fn send(
        &self,
        py: Python<'_>,
        data: Option<&Bound<'_, PyAny>>,
        timeout: Option<f64>,
    ) -> PyResult<()> {
        let Some(data) = data else {
            return self.end_loan(py, true);
        };
        let deadline = deadline(timeout)?;
        // `bytes` cannot change while we read it, so it is sent from where it lies; any other
        // buffer (bytearray, memoryview, numpy array) could be written by another thread once
        // the GIL is let go, so it is copied first, while the GIL is held.
        let (keep, owned): (Option<Bound<'_, PyBytes>>, Vec<u8>) = match data.cast::<PyBytes>() {
            Ok(bytes) => (Some(bytes.clone()), Vec::new()),
            Err(_) => (None, pyo3::buffer::PyBuffer::<u8>::get(data)?.to_vec(py)?),
        };
        let message = match &keep {
            Some(bytes) => Message {
                addr: bytes.as_bytes().as_ptr() as usize,
                len: bytes.as_bytes().len(),
            },
            None => Message {
                addr: owned.as_ptr() as usize,
                len: owned.len(),
            },
        };
        let (inner, fd) = (&self.inner, self.fd);
        let sent = unlocked(py, || loop {
            let mut inner = lock(inner);
            match inner.producer()?.try_send(message.as_slice()) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full) => {}
                Err(err) => return Err(failure(err.into_failure())),
            }
            drop(inner);
            wait_readable(fd, deadline)?;
        });
        drop(keep);
        sent
    }

    /// Lends `n` bytes of the ring, waiting for room: a writable memoryview to fill, published
    /// by `send()` (or given back by `abandon()`). The bytes are not zeroed. The memoryview is
    /// released by `send()`/`abandon()`; those raise `BufferError` while another view of it
    /// (a slice, a numpy array) is still alive.
    #[pyo3(signature = (n, /, timeout=None))]
    fn loan(&self, py: Python<'_>, n: usize, timeout: Option<f64>) -> PyResult<Py<PyAny>> {
        let deadline = deadline(timeout)?;
        let (inner, fd) = (&self.inner, self.fd);
        let addr = unlocked(py, || loop {
            let mut inner = lock(inner);
            let taken = inner.take_loan(|p| match p.try_loan(n) {
                Ok(loan) => Ok(Some(loan)),
                Err(TrySendError::Full) => Ok(None),
                Err(err) => Err(failure(err.into_failure())),
            })?;
            if let Some(addr) = taken {
                return Ok(addr);
            }
            drop(inner);
            wait_readable(fd, deadline)?;
        })?;
        let (lending, view) = lend(py, addr, n, false, self.inner.clone())?;
        *lock(&self.lending) = Some(lending);
        Ok(view)
    }

    /// Gives the outstanding loan's space back without publishing anything (nothing if none).
    fn abandon(&self, py: Python<'_>) -> PyResult<()> {
        self.end_loan(py, false)
    }

    /// Writes end-of-stream (the consumers learn the stream is complete) and detaches.
    /// An outstanding loan is abandoned first. Closing twice does nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.end_loan(py, false)?;
        let inner = &self.inner;
        unlocked(py, || lock(inner).close(true))
    }

    /// Detaches without end-of-stream: the consumers learn the stream is incomplete.
    fn detach(&self, py: Python<'_>) -> PyResult<()> {
        self.end_loan(py, false)?;
        let inner = &self.inner;
        unlocked(py, || lock(inner).close(false))
    }

    /// The fd that becomes readable when a blocked send or loan may go on (for select/poll).
    /// It belongs to the producer: do not read from or close it.
    fn fileno(&self) -> RawFd {
        self.fd
    }

    /// The largest message this channel carries.
    #[getter]
    fn max_message_len(&self) -> usize {
        self.max_message_len
    }

    #[getter]
    fn channel(&self) -> &str {
        &self.channel
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (exc_type, _exc=None, _tb=None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyAny>>,
        _exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        if exc_type.is_some_and(|t| !t.is_none()) {
            self.detach(py)?;
        } else {
            self.close(py)?;
        }
        Ok(false)
    }
}

/// The consumer, and the borrowed message (sample) that may borrow it; as for
/// [`ProducerInner`].
struct ConsumerInner {
    sample: Option<Sample<'static>>,
    /// NULL once closed.
    consumer: *mut Consumer,
    buffer: Vec<u8>,
}

// SAFETY: the raw pointer is an owned `Box<Consumer>` (Consumer is Send); the sample is Send;
// the value is reached only through its Mutex.
unsafe impl Send for ConsumerInner {}

impl ConsumerInner {
    /// The consumer, when it is open and no sample borrows it.
    fn consumer(&mut self) -> Outcome<&'static mut Consumer> {
        // A sample still here is no longer reachable from Python (its lending ended first):
        // give its space back.
        self.sample = None;
        // SAFETY: NULL or from Box::into_raw, freed only in close (which sets NULL) or Drop;
        // no sample borrows it (dropped above); the `'static` borrow is used only while
        // `&mut self` (under the Mutex) is held, or kept in `self.sample`, which is dropped
        // before the consumer is freed.
        unsafe { self.consumer.as_mut() }.ok_or_else(closed)
    }

    fn close(&mut self) {
        self.sample = None;
        let raw = std::mem::replace(&mut self.consumer, std::ptr::null_mut());
        if !raw.is_null() {
            // SAFETY: from Box::into_raw, freed once (the field is NULL from now on); no
            // sample borrows it any more.
            drop(unsafe { Box::from_raw(raw) });
        }
    }
}

impl Drop for ConsumerInner {
    fn drop(&mut self) {
        self.close();
    }
}

/// A consumer attached to a channel. Iterating over it yields each message (`bytes`) until
/// end-of-stream. A context manager: leaving the `with` block detaches.
#[pyclass(frozen, module = "shmem_broker._native", name = "Consumer")]
struct PyConsumer {
    inner: Arc<Mutex<ConsumerInner>>,
    lending: Mutex<Option<Lending>>,
    channel: String,
    fd: RawFd,
}

/// What one receive found: a message, end-of-stream, or nothing yet.
enum Step<T> {
    Got(T),
    End,
    Empty,
}

impl PyConsumer {
    /// Receives with `step` (non-blocking), waiting on the fd until `deadline`.
    fn receive<T: Send>(
        &self,
        py: Python<'_>,
        timeout: Option<f64>,
        step: impl Send + Sync + Fn(&mut ConsumerInner) -> Outcome<Step<T>>,
    ) -> PyResult<Option<T>> {
        end_lending(py, &self.lending, "the borrowed message")?;
        let deadline = deadline(timeout)?;
        let (inner, fd) = (&self.inner, self.fd);
        unlocked(py, || loop {
            // The lock is held for the step only, never across the wait below (which takes
            // the GIL to run signal handlers: holding both could deadlock with a thread that
            // holds the GIL and wants the lock).
            let found = step(&mut lock(inner))?;
            match found {
                Step::Got(value) => return Ok(Some(value)),
                Step::End => return Ok(None),
                Step::Empty => wait_readable(fd, deadline)?,
            }
        })
    }

    fn recv_bytes(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Py<PyBytes>>> {
        let got = self.receive(py, timeout, |inner| {
            // Taken out of the state while it is read, so no other receive reuses it meanwhile.
            let mut buffer = std::mem::take(&mut inner.buffer);
            match inner.consumer()?.try_recv_into(&mut buffer) {
                Ok(true) => Ok(Step::Got(buffer)),
                Ok(false) => Ok(Step::End),
                Err(TryRecvError::Empty) => {
                    inner.buffer = buffer;
                    Ok(Step::Empty)
                }
                Err(err) => Err(failure(err.into_failure())),
            }
        })?;
        Ok(got.map(|buffer| {
            let bytes = PyBytes::new(py, &buffer).unbind();
            // Back for the next receive to reuse its allocation (held only briefly by others:
            // no receive holds the lock while it waits).
            lock(&self.inner).buffer = buffer;
            bytes
        }))
    }
}

#[pymethods]
impl PyConsumer {
    /// The next message as `bytes`, waiting up to `timeout` seconds (`None`: for ever;
    /// `0`: not at all) and raising `TimeoutError` when none came. `None` at end-of-stream.
    #[pyo3(signature = (timeout=None))]
    fn recv(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Py<PyBytes>>> {
        self.recv_bytes(py, timeout)
    }

    /// Borrowed receive: the next message where it lies in the ring, as a read-only
    /// memoryview (`numpy.frombuffer` reads it without a copy); `None` at end-of-stream.
    /// The view stays valid until the next receive on this consumer, `release()` or close;
    /// those release it and raise `BufferError` while another view of it (a slice, a numpy
    /// array) is alive. The bytes are the producer's shared memory: a hostile producer can
    /// change them while you read; copy what you must trust before checking it.
    #[pyo3(signature = (timeout=None))]
    fn recv_view(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Py<PyAny>>> {
        let got = self.receive(py, timeout, |inner| {
            let consumer = inner.consumer()?;
            match consumer.try_recv_ref() {
                Ok(Some(sample)) => {
                    let found = (sample.as_ptr() as usize, sample.len());
                    inner.sample = Some(sample);
                    Ok(Step::Got(found))
                }
                Ok(None) => Ok(Step::End),
                Err(TryRecvError::Empty) => Ok(Step::Empty),
                Err(err) => Err(failure(err.into_failure())),
            }
        })?;
        let Some((addr, len)) = got else {
            return Ok(None);
        };
        let (lending, view) = lend(py, addr, len, true, self.inner.clone())?;
        *lock(&self.lending) = Some(lending);
        Ok(Some(view))
    }

    /// Gives the borrowed message's space back to the producer now (the next receive would).
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        end_lending(py, &self.lending, "the borrowed message")?;
        lock(&self.inner).sample = None;
        Ok(())
    }

    /// Detaches (a durable consumer keeps its place at the broker). Closing twice does nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        end_lending(py, &self.lending, "the borrowed message")?;
        let inner = &self.inner;
        py.detach(|| lock(inner).close());
        Ok(())
    }

    /// The fd that becomes readable when a message (or end-of-stream, or news) may be there,
    /// for select/poll/asyncio's `add_reader`; then call `recv(timeout=0)` until it raises
    /// `TimeoutError`. It belongs to the consumer: do not read from or close it.
    fn fileno(&self) -> RawFd {
        self.fd
    }

    #[getter]
    fn channel(&self) -> &str {
        &self.channel
    }

    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyBytes>>> {
        self.recv_bytes(py, None)
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (_exc_type=None, _exc=None, _tb=None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: Option<&Bound<'_, PyAny>>,
        _exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }
}

/// A connection to the broker: channel requests, and attaching.
#[pyclass(frozen, module = "shmem_broker._native", name = "Client")]
struct PyClient {
    client: Client,
}

/// JSON from the broker's answer, as Python values (dicts, lists, numbers, strings).
fn to_python<'py>(py: Python<'py>, value: &impl serde::Serialize) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(value)
        .map_err(|e| Fail::Code(code::OTHER, e.to_string()).into_pyerr(py))?;
    py.import("json")?.getattr("loads")?.call1((text,))
}

#[pymethods]
impl PyClient {
    /// Connects to the broker at `socket`, or (`None`) where it listens by default
    /// (`$SHMEM_BROKER_SOCKET`, else the system socket).
    #[new]
    #[pyo3(signature = (socket=None))]
    fn new(py: Python<'_>, socket: Option<std::path::PathBuf>) -> PyResult<PyClient> {
        let client = unlocked(py, || {
            Ok(match socket {
                Some(path) => Client::connect(path)?,
                None => Client::connect_default()?,
            })
        })?;
        Ok(PyClient { client })
    }

    /// The socket this client is connected to.
    #[getter]
    fn socket(&self) -> std::path::PathBuf {
        self.client.socket_path().to_path_buf()
    }

    /// Attaches as a producer of channel `name`; with `reconnect`, it re-attaches by itself
    /// when the broker restarts.
    #[pyo3(signature = (name, *, reconnect=false))]
    fn producer(&self, py: Python<'_>, name: &str, reconnect: bool) -> PyResult<PyProducer> {
        let client = &self.client;
        let producer = unlocked(py, || {
            Ok(client.attach(name).reconnect(reconnect).producer()?)
        })?;
        Ok(PyProducer {
            channel: producer.channel().to_string(),
            max_message_len: producer.max_message_len(),
            fd: producer.ready_fd().as_raw_fd(),
            inner: Arc::new(Mutex::new(ProducerInner {
                loan: None,
                producer: Box::into_raw(Box::new(producer)),
            })),
            lending: Mutex::new(None),
        })
    }

    /// Attaches as a consumer of channel `name`: anonymous, or the durable consumer `durable`
    /// (resuming its queue); with `reconnect`, it re-attaches when the broker restarts.
    #[pyo3(signature = (name, *, durable=None, reconnect=false))]
    fn consumer(
        &self,
        py: Python<'_>,
        name: &str,
        durable: Option<&str>,
        reconnect: bool,
    ) -> PyResult<PyConsumer> {
        let client = &self.client;
        let consumer = unlocked(py, || {
            let mut attach = client.attach(name).reconnect(reconnect);
            if let Some(durable) = durable {
                attach = attach.durable(durable);
            }
            Ok(attach.consumer()?)
        })?;
        Ok(PyConsumer {
            channel: consumer.channel().to_string(),
            fd: consumer.ready_fd().as_raw_fd(),
            inner: Arc::new(Mutex::new(ConsumerInner {
                sample: None,
                consumer: Box::into_raw(Box::new(consumer)),
                buffer: Vec::new(),
            })),
            lending: Mutex::new(None),
        })
    }

    /// Every channel, as dicts (the fields of `shmemctl list --json`).
    fn list<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = &self.client;
        let channels = unlocked(py, || Ok(client.list()?))?;
        to_python(py, &channels)
    }

    /// Channel `name` as a dict (the fields of `shmemctl info --json`).
    fn info<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        let client = &self.client;
        let info = unlocked(py, || Ok(client.info(name)?))?;
        to_python(py, &info)
    }

    /// Creates channel `name` (needs root or an admin group of the broker); `None` takes the
    /// broker's default. `slow_consumer` is "block", "drop" or "disconnect"; with `exist_ok`,
    /// an existing channel is opened as it is. Returns its info.
    #[pyo3(signature = (name, *, capacity=None, max_producers=None, max_consumers=None,
                        slow_consumer=None, exist_ok=false))]
    #[allow(clippy::too_many_arguments)]
    fn create<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        capacity: Option<u64>,
        max_producers: Option<u32>,
        max_consumers: Option<u32>,
        slow_consumer: Option<&str>,
        exist_ok: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let policy = match slow_consumer {
            None => None,
            Some("block") => Some(SlowConsumer::Block),
            Some("drop") => Some(SlowConsumer::Drop),
            Some("disconnect") => Some(SlowConsumer::Disconnect),
            Some(other) => {
                return Err(Fail::Code(
                    code::INVALID_ARGUMENT,
                    format!("slow_consumer {other:?} is not \"block\", \"drop\" or \"disconnect\""),
                )
                .into_pyerr(py))
            }
        };
        let client = &self.client;
        let info = unlocked(py, || {
            let mut channel = client.channel(name);
            if let Some(capacity) = capacity {
                channel = channel.capacity(capacity);
            }
            if let Some(n) = max_producers {
                channel = channel.max_producers(n);
            }
            if let Some(n) = max_consumers {
                channel = channel.max_consumers(n);
            }
            if let Some(policy) = policy {
                channel = channel.slow_consumer(policy);
            }
            Ok(if exist_ok {
                channel.open_or_create()?
            } else {
                channel.create()?
            })
        })?;
        to_python(py, &info)
    }

    /// Drops channel `name` (its attached endpoints get `ChannelDropped`).
    fn drop(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        let client = &self.client;
        unlocked(py, || Ok(client.drop_channel(name)?))
    }
}

#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<PyClient>()?;
    module.add_class::<PyProducer>()?;
    module.add_class::<PyConsumer>()?;
    module.add_class::<Lent>()?;
    Ok(())
}
