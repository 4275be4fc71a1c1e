//! `shmem_broker.Producer`: send (one, non-blocking, batch), loans, close.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use pyo3::buffer::PyUntypedBuffer;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use shmem_broker_client::{Loan, Producer, TrySendError};

use crate::fail::*;
use crate::lent::*;

/// The producer, and the loan that may borrow it.
///
/// A [`Loan`] borrows its producer mutably and both live here, so the producer lives in its
/// own allocation (`producer`, from `Box::into_raw`, freed in `close` or `Drop`) and the loan
/// borrows it for `'static`: sound because everything that touches the producer checks first
/// that no loan is out, and the loan is always dropped before the producer.
pub(crate) struct ProducerInner {
    pub(crate) loan: Option<Loan<'static>>,
    /// The loan is taken but its memoryview not yet registered in `PyProducer::lending` (the
    /// thread making it is between the two): nothing may end the loan or free the producer
    /// meanwhile, or that view would point into published or unmapped memory.
    pub(crate) view_pending: bool,
    /// NULL once closed.
    pub(crate) producer: *mut Producer,
    /// Set where `producer` is freed (close, detach, a failed close, drop): its fd is closed
    /// with it, and `fileno()` must not hand out the number any more (the next open file may
    /// take it). Shared with the `PyProducer`, which reads it without the lock.
    pub(crate) closed: Arc<AtomicBool>,
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
        self.view_pending = true;
        Ok(Some(addr))
    }

    /// Refuses while another thread is making the memoryview of a loan.
    fn check_no_view_pending(&self) -> Outcome<()> {
        if self.view_pending {
            return Err(Fail::Code(
                code::BUSY,
                "another thread is lending from this producer right now".into(),
            ));
        }
        Ok(())
    }

    /// Closes: end-of-stream if `finish`, else just detaches.
    fn close(&mut self, finish: bool) -> Outcome<()> {
        self.check_no_view_pending()?;
        self.loan = None;
        let raw = std::mem::replace(&mut self.producer, std::ptr::null_mut());
        if raw.is_null() {
            return Ok(());
        }
        self.closed.store(true, Ordering::Release);
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
        // Without end-of-stream: the consumers learn the producer went away unfinished. No
        // view can be pending here: the thread making one holds a reference to us.
        self.view_pending = false;
        let _ = self.close(false);
    }
}

/// A producer attached to a channel. A context manager: leaving the `with` block normally
/// closes the stream (end-of-stream); leaving it by an exception detaches without one, so the
/// consumers learn the stream is incomplete.
#[pyclass(frozen, module = "shmem_broker._native", name = "Producer")]
pub(crate) struct PyProducer {
    pub(crate) inner: Arc<Mutex<ProducerInner>>,
    pub(crate) lending: Mutex<Option<Lending>>,
    pub(crate) channel: String,
    pub(crate) max_message_len: usize,
    pub(crate) fd: RawFd,
    /// `ProducerInner::closed`.
    pub(crate) closed: Arc<AtomicBool>,
}

impl PyProducer {
    /// Ends the outstanding loan: publishes it, or abandons it. A loan written in place in
    /// the ring is published holding the GIL (that never waits); any other one (fan-out: a
    /// copy into each ring, which may wait for room) without it.
    fn end_loan(&self, py: Python<'_>, publish: bool) -> PyResult<()> {
        end_lending(py, &self.lending, "the loan")?;
        let inner = &self.inner;
        let end = |mut inner: std::sync::MutexGuard<'_, ProducerInner>| {
            inner.check_no_view_pending()?;
            match inner.loan.take() {
                Some(loan) if publish => Ok(loan.send()?),
                Some(_) => Ok(()),
                None if publish => Err(Fail::Code(
                    code::INVALID_ARGUMENT,
                    "send() without data needs a loan outstanding (producer.loan(n))".into(),
                )),
                None => Ok(()),
            }
        };
        let held = lock_holding_gil(py, inner);
        if held.loan.as_ref().is_none_or(Loan::in_place) {
            // Made into an exception once the lock is let go (`end` returns without it).
            end(held).map_err(|fail| fail.into_pyerr(py))
        } else {
            drop(held);
            unlocked(py, || end(lock(inner)))
        }
    }
}

/// Where the bytes of a message to send are: a `bytes` object's own storage, a buffer
/// exported by any other bytes-like object (held for the send), or a copy of a buffer that is
/// not C-contiguous.
enum Source<'py> {
    Bytes(Bound<'py, PyBytes>),
    Buffer(PyUntypedBuffer),
    Copied(Vec<u8>),
}

impl<'py> Source<'py> {
    fn of(py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Source<'py>> {
        if let Ok(bytes) = data.cast::<PyBytes>() {
            return Ok(Source::Bytes(bytes.clone()));
        }
        let buffer = PyUntypedBuffer::get(data)?;
        if buffer.is_c_contiguous() {
            return Ok(Source::Buffer(buffer));
        }
        Ok(Source::Copied(buffer_bytes(py, data)?))
    }

    /// The first byte and the length.
    fn raw(&self) -> (*const u8, usize) {
        match self {
            Source::Bytes(bytes) => (bytes.as_bytes().as_ptr(), bytes.as_bytes().len()),
            Source::Buffer(buffer) => (buffer.buf_ptr().cast_const().cast(), buffer.len_bytes()),
            Source::Copied(owned) => (owned.as_ptr(), owned.len()),
        }
    }
}

/// One attempt to send the `len` bytes at `src` (one copy, straight into the ring).
fn try_send_raw(inner: &mut ProducerInner, src: *const u8, len: usize) -> Outcome<bool> {
    let sent = inner.producer()?.try_send_with(len, |buf| {
        // `buf` is the message's `len` bytes in the ring (or the fan-out scratch buffer);
        // `min` keeps the copy inside both whatever the library hands back.
        let n = buf.len().min(len);
        if n == 0 {
            // An empty buffer's pointer may be NULL, which even a copy of nothing must not get.
            return;
        }
        // SAFETY: `src` is `len` readable bytes that stay valid for the whole call: a `bytes`
        // object's storage or an exported buffer (held by the caller until the send ends;
        // an exporter cannot free or move its memory while exported), or our own copy. `buf`
        // is private or ring memory only this producer writes, never overlapping a Python
        // object. A raw copy forms no reference to the source: another thread or process
        // writing it meanwhile (a numpy op without the GIL, a `shared_memory` buffer) only
        // changes the bytes sent, as `bytes(obj)` would.
        unsafe { shmem_broker_client::copy::copy_raw(src, buf.as_mut_ptr(), n) }
    });
    match sent {
        Ok(()) => Ok(true),
        Err(TrySendError::Full) => Ok(false),
        Err(err) => Err(failure(err.into_failure())),
    }
}

/// Messages at least this long are copied into the ring without the GIL (a large copy takes
/// long enough for other Python threads to want it; letting go of it costs about as much as
/// copying a few KiB); shorter ones are copied holding it, which is cheaper.
pub(crate) const COPY_WITHOUT_GIL: usize = 64 << 10;

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
        let source = Source::of(py, data)?;
        let (src, len) = source.raw();
        // Raw parts, to cross into the GIL-free closures (which `source` keeps valid).
        let src_addr = src as usize;
        let (inner, fd) = (&self.inner, self.fd);
        loop {
            let sent = if len >= COPY_WITHOUT_GIL {
                unlocked(py, || {
                    try_send_raw(&mut lock(inner), src_addr as *const u8, len)
                })?
            } else {
                let attempt = try_send_raw(&mut lock_holding_gil(py, inner), src, len);
                // Made into an exception with the lock let go (that runs Python code).
                attempt.map_err(|fail| fail.into_pyerr(py))?
            };
            if sent {
                drop(source);
                return Ok(());
            }
            // Full: wait for room without the GIL.
            unlocked(py, || wait_readable(fd, deadline))?;
        }
    }

    /// Lends `n` bytes of the ring, waiting for room: a writable memoryview to fill, published
    /// by `send()` (or given back by `abandon()`). The bytes are not zeroed. The memoryview is
    /// released by `send()`/`abandon()`; those raise `BufferError` while another view of it
    /// (a slice, a numpy array) is still alive.
    #[pyo3(signature = (n, /, timeout=None))]
    fn loan(&self, py: Python<'_>, n: usize, timeout: Option<f64>) -> PyResult<Py<PyAny>> {
        let deadline = deadline(timeout)?;
        let (inner, fd) = (&self.inner, self.fd);
        let addr = loop {
            // Tried holding the GIL (it never waits), which is let go only to wait for room.
            let taken = lock_holding_gil(py, inner).take_loan(|p| match p.try_loan(n) {
                Ok(loan) => Ok(Some(loan)),
                Err(TrySendError::Full) => Ok(None),
                Err(err) => Err(failure(err.into_failure())),
            });
            // Made into an exception with the lock let go (that runs Python code).
            if let Some(addr) = taken.map_err(|fail| fail.into_pyerr(py))? {
                break addr;
            }
            unlocked(py, || wait_readable(fd, deadline))?;
        };
        let (lending, view) = match lend(py, addr, n, false, self.inner.clone()) {
            Ok(made) => made,
            Err(err) => {
                // No view came to be: the loan is given back.
                let mut inner = lock_holding_gil(py, &self.inner);
                inner.loan = None;
                inner.view_pending = false;
                return Err(err);
            }
        };
        // Registered before the loan may end (lock order: lending, then inner).
        let mut lending_slot = lock(&self.lending);
        *lending_slot = Some(lending);
        lock_holding_gil(py, &self.inner).view_pending = false;
        drop(lending_slot);
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
    fn fileno(&self) -> PyResult<RawFd> {
        checked_fileno(self.fd, &self.closed)
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

/// The bytes of any object with the buffer protocol, copied. A buffer of another item type (a
/// numpy `float32` array, an `array('i')`) is read as its bytes, through `memoryview.cast('B')`,
/// as `bytes(obj)` would; that needs a C-contiguous buffer (else a `TypeError` saying so).
fn buffer_bytes(py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(buffer) = pyo3::buffer::PyBuffer::<u8>::get(data) {
        return buffer.to_vec(py);
    }
    let bytes = pyo3::types::PyMemoryView::from(data)?.call_method1("cast", ("B",))?;
    pyo3::buffer::PyBuffer::<u8>::get(&bytes)?.to_vec(py)
}
