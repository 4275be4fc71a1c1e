//! `shmem_broker.Client`: channel requests (list, info, create, drop) and attaching.

use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use shmem_broker_client::{Client, SlowConsumer};

use crate::consumer::*;
use crate::fail::*;
use crate::producer::*;

/// A connection to the broker: channel requests, and attaching.
#[pyclass(frozen, module = "shmem_broker._native", name = "Client")]
pub(crate) struct PyClient {
    client: Client,
}

/// JSON from the broker's answer, as Python values (dicts, lists, numbers, strings).
pub(crate) fn to_python<'py>(
    py: Python<'py>,
    value: &impl serde::Serialize,
) -> PyResult<Bound<'py, PyAny>> {
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
        let closed = Arc::new(AtomicBool::new(false));
        Ok(PyProducer {
            channel: producer.channel().to_string(),
            max_message_len: producer.max_message_len(),
            fd: producer.ready_fd().as_raw_fd(),
            closed: closed.clone(),
            inner: Arc::new(Mutex::new(ProducerInner {
                loan: None,
                view_pending: false,
                producer: Box::into_raw(Box::new(producer)),
                closed,
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
        let closed = Arc::new(AtomicBool::new(false));
        Ok(PyConsumer {
            channel: consumer.channel().to_string(),
            fd: consumer.ready_fd().as_raw_fd(),
            closed: closed.clone(),
            inner: Arc::new(Mutex::new(ConsumerInner {
                sample: None,
                view_pending: false,
                consumer: Box::into_raw(Box::new(consumer)),
                closed,
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
