//! `shmem_broker.Consumer`: receive (copy, borrowed), release, close.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use shmem_broker_client::{Consumer, Sample, TryRecvError};

use crate::fail::*;
use crate::lent::*;

/// The consumer, and the borrowed message (sample) that may borrow it; as for
/// [`ProducerInner`].
pub(crate) struct ConsumerInner {
    pub(crate) sample: Option<Sample<'static>>,
    /// The sample is taken but its memoryview not yet registered in `PyConsumer::lending`
    /// (the thread making it is between the two): nothing may give the sample's space back or
    /// free the consumer meanwhile, or that view would point into reused or unmapped memory.
    pub(crate) view_pending: bool,
    /// NULL once closed.
    pub(crate) consumer: *mut Consumer,
    /// Set where `consumer` is freed; as `ProducerInner::closed`.
    pub(crate) closed: Arc<AtomicBool>,
}

// SAFETY: the raw pointer is an owned `Box<Consumer>` (Consumer is Send); the sample is Send;
// the value is reached only through its Mutex.
unsafe impl Send for ConsumerInner {}

impl ConsumerInner {
    /// The consumer, when it is open and no sample borrows it.
    fn consumer(&mut self) -> Outcome<&'static mut Consumer> {
        self.check_no_view_pending()?;
        // A sample still here is no longer reachable from Python (its lending ended first):
        // give its space back.
        self.sample = None;
        // SAFETY: NULL or from Box::into_raw, freed only in close (which sets NULL) or Drop;
        // no sample borrows it (dropped above); the `'static` borrow is used only while
        // `&mut self` (under the Mutex) is held, or kept in `self.sample`, which is dropped
        // before the consumer is freed.
        unsafe { self.consumer.as_mut() }.ok_or_else(closed)
    }

    /// Refuses while another thread is making the memoryview of a borrowed message.
    pub(crate) fn check_no_view_pending(&self) -> Outcome<()> {
        if self.view_pending {
            return Err(Fail::Code(
                code::BUSY,
                "another thread is borrowing from this consumer right now".into(),
            ));
        }
        Ok(())
    }

    fn close(&mut self) {
        self.sample = None;
        let raw = std::mem::replace(&mut self.consumer, std::ptr::null_mut());
        if !raw.is_null() {
            self.closed.store(true, Ordering::Release);
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
pub(crate) struct PyConsumer {
    pub(crate) inner: Arc<Mutex<ConsumerInner>>,
    pub(crate) lending: Mutex<Option<Lending>>,
    pub(crate) channel: String,
    pub(crate) fd: RawFd,
    /// `ConsumerInner::closed`.
    pub(crate) closed: Arc<AtomicBool>,
}

/// What one receive found: a message, end-of-stream, or nothing yet.
pub(crate) enum Step<T> {
    Got(T),
    End,
    Empty,
}

impl PyConsumer {
    /// Receives with `step` (non-blocking, run holding the GIL: it never waits), letting go
    /// of the GIL to wait on the fd until `deadline`.
    fn receive<T>(
        &self,
        py: Python<'_>,
        timeout: Option<f64>,
        step: impl Fn(&mut ConsumerInner) -> Outcome<Step<T>>,
    ) -> PyResult<Option<T>> {
        end_lending(py, &self.lending, "the borrowed message")?;
        let deadline = deadline(timeout)?;
        let (inner, fd) = (&self.inner, self.fd);
        loop {
            // The lock is held for the step only, never across the wait below (which takes
            // the GIL to run signal handlers: holding both could deadlock with a thread that
            // holds the GIL and wants the lock). A failure becomes an exception after the lock
            // is let go (making it runs Python code).
            let found = step(&mut lock(inner));
            match found.map_err(|fail| fail.into_pyerr(py))? {
                Step::Got(value) => return Ok(Some(value)),
                Step::End => return Ok(None),
                Step::Empty => unlocked(py, || wait_readable(fd, deadline))?,
            }
        }
    }

    /// The next message copied once, from where it lies in the ring into a new `bytes`; the
    /// GIL is let go only to wait.
    fn recv_bytes(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Py<PyBytes>>> {
        self.receive(py, timeout, |inner| try_recv_copy(py, inner))
    }
}

/// One non-blocking receive into a new `bytes`: borrows the message in the ring, copies it
/// into a `bytes` object of its length, and gives its space back at once. If the `bytes`
/// cannot be made (`MemoryError`, say), the message is given back unread, not released: the
/// next receive returns it again (a caller may free memory and retry without losing it).
fn try_recv_copy(py: Python<'_>, inner: &mut ConsumerInner) -> Outcome<Step<Py<PyBytes>>> {
    let sample = match inner.consumer()?.try_recv_ref() {
        Ok(Some(sample)) => sample,
        Ok(None) => return Ok(Step::End),
        Err(TryRecvError::Empty) => return Ok(Step::Empty),
        Err(err) => return Err(failure(err.into_failure())),
    };
    match copy_into_bytes(py, &sample) {
        Ok(bytes) => {
            // Its space goes back to the producer now, before Python sees the bytes.
            drop(sample);
            Ok(Step::Got(bytes))
        }
        Err(fail) => {
            sample.unread();
            Err(fail)
        }
    }
}

/// A new `bytes` holding the message `sample` borrows.
fn copy_into_bytes(py: Python<'_>, sample: &Sample<'_>) -> Outcome<Py<PyBytes>> {
    let len = sample.len();
    let size = pyo3::ffi::Py_ssize_t::try_from(len).map_err(|_| {
        Fail::Code(
            code::MESSAGE_TOO_LARGE,
            format!("a message of {len} bytes is too large for a bytes object"),
        )
    })?;
    // SAFETY: a NULL source asks for an uninitialised `bytes` of `size` bytes, which we own
    // (one reference, nobody else can see it) and fill whole below before anyone reads it.
    let made = unsafe { pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), size) };
    // SAFETY: `made` is a new (owned) reference or NULL with an exception set.
    let bytes = unsafe { Bound::from_owned_ptr_or_err(py, made) }?;
    // SAFETY: `bytes` is a `bytes` object (just made).
    let bytes = unsafe { bytes.cast_into_unchecked::<PyBytes>() };
    // SAFETY: the storage of a `bytes` object, `len` bytes long, not NULL for a valid object.
    let dst = unsafe { pyo3::ffi::PyBytes_AsString(bytes.as_ptr()) }.cast::<u8>();
    // Copied holding the GIL (as `bytes(view)` is), never without it: this thread holds the
    // consumer's lock, and taking the GIL back with it held could deadlock with a thread that
    // holds the GIL and waits for the lock.
    if len > 0 {
        // SAFETY: the source is the message's `len` bytes in the ring mapping, mapped while
        // `sample` lives (it borrows the consumer, which owns the mapping); the destination
        // is the new `bytes`' `len` bytes, written by nobody else (not yet visible to Python)
        // and never overlapping the mapping. A raw copy forms no reference to the shared
        // bytes (as the ring's own reads into a buffer): a hostile producer rewriting them
        // meanwhile only changes what this message holds.
        unsafe { shmem_broker_client::copy::copy_raw(sample.as_ptr(), dst, len) }
    }
    Ok(bytes.unbind())
}

#[pymethods]
impl PyConsumer {
    /// The next message as `bytes`, waiting up to `timeout` seconds (`None`: for ever;
    /// `0`: not at all) and raising `TimeoutError` when none came. `None` at end-of-stream.
    /// A receive that fails once it has the message (`MemoryError` for its `bytes`) leaves
    /// the message in the channel: the next receive returns it. To skip a message too large
    /// to copy, take it with `recv_view()` and `release()` the view.
    #[pyo3(signature = (timeout=None))]
    fn recv(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Py<PyBytes>>> {
        self.recv_bytes(py, timeout)
    }

    /// Borrowed receive: the next message where it lies in the ring, as a read-only
    /// memoryview (`numpy.frombuffer` reads it without a copy); `None` at end-of-stream.
    /// The view stays valid until the next receive on this consumer, `release()` or close;
    /// those release it and raise `BufferError` while another view of it (a slice, a numpy
    /// array) is alive. The bytes are the producer's shared memory: a hostile producer can
    /// change them while you read; copy what you must trust before checking it. If the view
    /// cannot be made (`MemoryError`), the message stays for the next receive.
    #[pyo3(signature = (timeout=None))]
    fn recv_view(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Py<PyAny>>> {
        let got = self.receive(py, timeout, |inner| {
            let consumer = inner.consumer()?;
            match consumer.try_recv_ref() {
                Ok(Some(sample)) => {
                    let found = (sample.as_ptr() as usize, sample.len());
                    inner.sample = Some(sample);
                    inner.view_pending = true;
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
        let (lending, view) = match lend(py, addr, len, true, self.inner.clone()) {
            Ok(made) => made,
            Err(err) => {
                // No view came to be (`MemoryError`, say): the message is given back unread,
                // for the next receive, not released.
                let mut inner = lock(&self.inner);
                if let Some(sample) = inner.sample.take() {
                    sample.unread();
                }
                inner.view_pending = false;
                return Err(err);
            }
        };
        // Registered before the sample may be given back (lock order: lending, then inner).
        let mut lending_slot = lock(&self.lending);
        *lending_slot = Some(lending);
        lock(&self.inner).view_pending = false;
        drop(lending_slot);
        Ok(Some(view))
    }

    /// Gives the borrowed message's space back to the producer now (the next receive would).
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        end_lending(py, &self.lending, "the borrowed message")?;
        let mut inner = lock(&self.inner);
        inner
            .check_no_view_pending()
            .map_err(|fail| fail.into_pyerr(py))?;
        inner.sample = None;
        Ok(())
    }

    /// Detaches (a durable consumer keeps its place at the broker). Closing twice does nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        end_lending(py, &self.lending, "the borrowed message")?;
        let inner = &self.inner;
        unlocked(py, || {
            let mut inner = lock(inner);
            inner.check_no_view_pending()?;
            inner.close();
            Ok(())
        })
    }

    /// The fd that becomes readable when a message (or end-of-stream, or news) may be there,
    /// for select/poll/asyncio's `add_reader`; then call `recv(timeout=0)` until it raises
    /// `TimeoutError`. It belongs to the consumer: do not read from or close it.
    fn fileno(&self) -> PyResult<RawFd> {
        checked_fileno(self.fd, &self.closed)
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
