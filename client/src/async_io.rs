//! Async endpoints for tokio (feature `tokio`): [`AsyncProducer`] and [`AsyncConsumer`] wrap a
//! [`Producer`] or [`Consumer`] and wait on its [`ready_fd`](Consumer::ready_fd) through
//! [`AsyncFd`], so a task parked in `send`/`recv` is woken by everything that can change the
//! outcome: data or room, a peer joining or leaving, a drop, a detach, the broker going away
//! (and, with [`reconnect`](crate::Attach::reconnect), coming back).
//!
//! Every wait is "try, and only on would-block wait for the fd": the `try_*` call arms the
//! wake-up before it reports would-block, so a wake-up can come early but never be missed.
//!
//! [`AsyncProducer::loan`] lends a message in the ring that can be filled across `.await`
//! points (a [`Loan`] is `Send`) and [`AsyncConsumer::recv_ref`] lends a received one; both
//! are the zero-copy paths of [`Producer::loan`] and [`Consumer::recv_ref`]. Closing writes the end-of-stream mark and may wait for room: do it
//! with [`AsyncProducer::into_inner`] and [`Producer::close`] on a blocking thread
//! (`tokio::task::spawn_blocking`), or drop the producer.

use std::io;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::consumer::Consumer;
use crate::error::{Error, Result, TryRecvError, TrySendError};
use crate::producer::Producer;
use crate::zero_copy::{Loan, Sample};

/// A [`Producer`] whose sends are futures. Made inside a tokio runtime with the I/O driver
/// enabled (`new` panics elsewhere, like every tokio I/O type).
pub struct AsyncProducer {
    inner: AsyncFd<Producer>,
}

/// A [`Consumer`] whose receives are futures. Made inside a tokio runtime with the I/O driver
/// enabled (`new` panics elsewhere, like every tokio I/O type).
pub struct AsyncConsumer {
    inner: AsyncFd<Consumer>,
}

fn register<T: std::os::fd::AsRawFd>(endpoint: T, busy_poll: bool) -> Result<AsyncFd<T>> {
    if busy_poll {
        // A busy-polling endpoint does not ask its peer for wake-ups: a task would sleep for
        // ever.
        return Err(Error::io(
            "an async endpoint needs wake-ups",
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "the endpoint was attached with busy_poll(true)",
            ),
        ));
    }
    // SAFETY: `as_raw_fd()` of a `Producer`/`Consumer` is its `ready_fd()`: the epoll instance
    // its attachment makes once and owns until the endpoint is dropped (a re-attach changes
    // what that instance watches, never the fd), so it stays open and the same for as long as
    // the `AsyncFd` owns the endpoint. Nothing a peer does can close or replace it.
    unsafe { AsyncFd::register_with_interest(endpoint, Interest::READABLE) }
        .map_err(|e| Error::io("registering ready_fd with the tokio reactor", e.into()))
}

impl AsyncProducer {
    /// Wraps `producer`. Fails outside a tokio runtime with I/O enabled, and for a producer
    /// attached with [`busy_poll`](crate::Attach::busy_poll).
    pub fn new(producer: Producer) -> Result<AsyncProducer> {
        let busy_poll = producer.busy_poll();
        Ok(AsyncProducer {
            inner: register(producer, busy_poll)?,
        })
    }

    /// Sends one message, waiting (without blocking the thread) while there is no room.
    /// Cancel-safe: a future dropped before it completes has sent nothing.
    pub async fn send(&mut self, message: &[u8]) -> Result<()> {
        loop {
            match self.inner.get_mut().try_send(message) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full) => {}
                Err(TrySendError::Failed(e)) => return Err(e),
            }
            self.wait().await?;
        }
    }

    /// Sends as many of `messages` as fit once there is room for the first, and returns how
    /// many (at least one, unless `messages` is empty). Cancel-safe like [`send`](Self::send).
    pub async fn send_batch(&mut self, messages: &[&[u8]]) -> Result<usize> {
        if messages.is_empty() {
            return Ok(0);
        }
        loop {
            match self.inner.get_mut().try_send_batch(messages) {
                Ok(sent) => return Ok(sent),
                Err(TrySendError::Full) => {}
                Err(TrySendError::Failed(e)) => return Err(e),
            }
            self.wait().await?;
        }
    }

    /// Lends a writable `len`-byte message in the ring once there is room (see
    /// [`Producer::loan`] and [`Loan`]); fill it, across `.await` points if need be, then
    /// [`send`](Loan::send) it (which does not wait). Cancel-safe: a future dropped before it
    /// completes has reserved nothing, and a loan dropped unsent publishes nothing.
    pub async fn loan(&mut self, len: usize) -> Result<Loan<'_>> {
        let slot = loop {
            match self.inner.get_mut().try_reserve(len) {
                Ok(slot) => break slot,
                Err(TrySendError::Full) => {}
                Err(TrySendError::Failed(e)) => return Err(e),
            }
            self.wait().await?;
        };
        Ok(Loan::new(self.inner.get_mut(), slot, len))
    }

    /// Waits for `ready_fd()` to fire, then forgets that readiness: the caller tries again
    /// after every wake-up, so an early or stale one costs one try and none is lost.
    async fn wait(&mut self) -> Result<()> {
        let mut guard = self
            .inner
            .readable_mut()
            .await
            .map_err(|e| Error::io("waiting on ready_fd", e))?;
        guard.clear_ready();
        Ok(())
    }

    /// The producer.
    pub fn get_ref(&self) -> &Producer {
        self.inner.get_ref()
    }

    /// The producer, for its other calls (`try_*`, `id`, `consumers`, ...).
    pub fn get_mut(&mut self) -> &mut Producer {
        self.inner.get_mut()
    }

    /// Unregisters from the reactor and returns the producer (to [`close`](Producer::close)
    /// it on a blocking thread, say).
    pub fn into_inner(self) -> Producer {
        self.inner.into_inner()
    }
}

impl AsyncConsumer {
    /// Wraps `consumer`. Fails outside a tokio runtime with I/O enabled, and for a consumer
    /// attached with [`busy_poll`](crate::Attach::busy_poll).
    pub fn new(consumer: Consumer) -> Result<AsyncConsumer> {
        let busy_poll = consumer.busy_poll();
        Ok(AsyncConsumer {
            inner: register(consumer, busy_poll)?,
        })
    }

    /// Receives the next message, waiting (without blocking the thread) until there is one.
    /// `Ok(None)` is a producer's end-of-stream, as for [`Consumer::recv`]. Cancel-safe: a
    /// future dropped before it completes has taken nothing from the channel.
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>> {
        let mut message = Vec::new();
        Ok(self.recv_into(&mut message).await?.then_some(message))
    }

    /// Receives the next message into `buf` (reusing its allocation); false at
    /// end-of-stream. Cancel-safe like [`recv`](Self::recv).
    pub async fn recv_into(&mut self, buf: &mut Vec<u8>) -> Result<bool> {
        loop {
            match self.inner.get_mut().try_recv_into(buf) {
                Ok(got) => return Ok(got),
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Failed(e)) => return Err(e),
            }
            let mut guard = self
                .inner
                .readable_mut()
                .await
                .map_err(|e| Error::io("waiting on ready_fd", e))?;
            // Tried again after every wake-up: an early or stale one costs one try.
            guard.clear_ready();
        }
    }

    /// Borrowed receive: the next message left in the ring, waiting (without blocking the
    /// thread) until there is one; its space is released when the [`Sample`] is dropped.
    /// `Ok(None)` is end-of-stream. See [`Consumer::recv_ref`]. Cancel-safe like
    /// [`recv`](Self::recv).
    pub async fn recv_ref(&mut self) -> Result<Option<Sample<'_>>> {
        let payload = loop {
            match self.inner.get_mut().try_peek() {
                Ok(payload) => break payload,
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Failed(e)) => return Err(e),
            }
            let mut guard = self
                .inner
                .readable_mut()
                .await
                .map_err(|e| Error::io("waiting on ready_fd", e))?;
            guard.clear_ready();
        };
        Ok(self.inner.get_mut().hold(payload))
    }

    /// The consumer.
    pub fn get_ref(&self) -> &Consumer {
        self.inner.get_ref()
    }

    /// The consumer, for its other calls (`try_*`, `last_producer`, `missed`, ...).
    pub fn get_mut(&mut self) -> &mut Consumer {
        self.inner.get_mut()
    }

    /// Unregisters from the reactor and returns the consumer.
    pub fn into_inner(self) -> Consumer {
        self.inner.into_inner()
    }
}
