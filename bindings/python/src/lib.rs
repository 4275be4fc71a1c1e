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

mod client;
mod consumer;
mod fail;
mod lent;
mod producer;

use pyo3::prelude::*;

use client::PyClient;
use consumer::PyConsumer;
use lent::Lent;
use producer::PyProducer;

#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<PyClient>()?;
    module.add_class::<PyProducer>()?;
    module.add_class::<PyConsumer>()?;
    module.add_class::<Lent>()?;
    Ok(())
}
