//! Ring memory lent to Python (`Lent`, behind a `memoryview`), and ending a loan or borrow only
//! once no view of it is alive.

use std::ffi::c_int;
use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyBufferError;
use pyo3::prelude::*;
use pyo3::types::PyMemoryView;

use crate::fail::*;

/// Memory of a ring lent to Python through the buffer protocol (a loan's writable bytes, a
/// borrowed message's read-only bytes), behind the `memoryview`s this module hands out.
#[pyclass(frozen, module = "shmem_broker._native")]
pub(crate) struct Lent {
    /// Where the bytes are, as an address (the class must be Send and Sync).
    addr: usize,
    len: usize,
    readonly: bool,
    state: Mutex<LentState>,
}

pub(crate) struct LentState {
    /// Buffers Python holds now (`__getbuffer__` minus `__releasebuffer__`).
    exports: usize,
    /// Cleared when the loan or borrow ends: no new buffer from then on.
    valid: bool,
    /// The endpoint state whose ring holds the bytes, kept alive (mapped) while buffers
    /// exist.
    keep: Option<Keep>,
}

/// An endpoint's shared state, held only to keep it alive.
pub(crate) type Keep = Arc<dyn Send + Sync>;

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
pub(crate) struct Lending {
    view: Py<PyAny>,
    lent: Py<Lent>,
}

/// Makes the `memoryview` for `len` bytes at `addr`, kept alive by `keep`.
pub(crate) fn lend(
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
pub(crate) fn end_lending(
    py: Python<'_>,
    slot: &Mutex<Option<Lending>>,
    what: &str,
) -> PyResult<()> {
    let Some(lending) = lock(slot).take() else {
        return Ok(());
    };
    let released = lending
        .view
        .call_method0(py, pyo3::intern!(py, "release"))
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
