//! The handles C holds (client, producer, consumer: boxed Rust values) and the plain structs
//! it passes in (channel and attach options, batch messages, the batch callback).

use std::ffi::{c_char, c_int, c_void};
use std::os::fd::AsRawFd;

use shmem_broker_client::{Client, Consumer, Loan, Producer, Sample};

use crate::codes::*;
use crate::guard::*;
// For the documentation's links only.
#[cfg(doc)]
use crate::consumer::shmem_recv_batch;

/// A connection to the broker, for requests (list, info, create, drop) and to attach.
pub struct ShmemClient {
    pub(crate) client: Client,
}

/// A producer attached to a channel, and the loan it may have outstanding.
///
/// A [`Loan`] borrows its producer mutably, and C holds both at once, so the producer lives in
/// its own allocation (`producer`, from `Box::into_raw`, freed in `Drop`) and the loan borrows
/// it for `'static`: sound because every function that touches the producer first checks that
/// no loan is outstanding (`SHMEM_ERR_BUSY`), and the loan is dropped before the producer.
pub struct ShmemProducer {
    pub(crate) loan: Option<Loan<'static>>,
    pub(crate) producer: *mut Producer,
    /// Fixed for the producer's life, so reading them needs no access to it while a loan is out.
    pub(crate) max_message_len: usize,
    pub(crate) ready_fd: c_int,
}

impl ShmemProducer {
    pub(crate) fn new(producer: Producer) -> ShmemProducer {
        let max_message_len = producer.max_message_len();
        let ready_fd = producer.ready_fd().as_raw_fd();
        ShmemProducer {
            loan: None,
            producer: Box::into_raw(Box::new(producer)),
            max_message_len,
            ready_fd,
        }
    }

    /// The producer, when no loan borrows it.
    #[inline(always)]
    pub(crate) fn producer(&mut self) -> Result<&mut Producer, Failure> {
        if self.loan.is_some() {
            return Err(loan_outstanding());
        }
        // SAFETY: `producer` came from Box::into_raw and is freed only in Drop; no loan
        // borrows it (checked above), and `&mut self` makes this the only access.
        Ok(unsafe { &mut *self.producer })
    }

    /// Makes a loan with `take` and keeps it; returns where to write (`None`: would block).
    pub(crate) fn lend(
        &mut self,
        take: impl FnOnce(&'static mut Producer) -> Result<Option<Loan<'static>>, Failure>,
    ) -> Result<Option<*mut u8>, Failure> {
        self.producer()?;
        // SAFETY: as in `producer`; the `'static` borrow ends when the loan is dropped, which
        // happens before the producer is freed (send, abandon and Drop all end the loan
        // first), and nothing else touches the producer meanwhile (`producer()` refuses).
        let producer: &'static mut Producer = unsafe { &mut *self.producer };
        let Some(mut loan) = take(producer)? else {
            return Ok(None);
        };
        let ptr = loan.as_mut_ptr();
        self.loan = Some(loan);
        Ok(Some(ptr))
    }
}

#[cold]
#[inline(never)]
fn loan_outstanding() -> Failure {
    Failure(
        SHMEM_ERR_BUSY,
        "this producer has a loan outstanding: send or abandon it first".into(),
    )
}

impl Drop for ShmemProducer {
    fn drop(&mut self) {
        // An unsent loan publishes nothing; it must end before its producer.
        self.loan = None;
        if !self.producer.is_null() {
            // SAFETY: from Box::into_raw in `new`, freed exactly once, here (close() takes it
            // out and leaves NULL); no loan borrows it any more.
            drop(unsafe { Box::from_raw(self.producer) });
        }
    }
}

/// A consumer attached to a channel, and the borrowed message it may be holding.
///
/// As for [`ShmemProducer`]: a [`Sample`] borrows its consumer mutably, so the consumer lives
/// in its own allocation and every function that touches it first checks that no sample is
/// held.
pub struct ShmemConsumer {
    /// What the handle is doing besides being idle: one field, so the per-message calls pay
    /// one compare for all of it. Changed only together with what it summarises (`sample`),
    /// by the methods below and the batch's guard.
    pub(crate) busy: Busy,
    pub(crate) sample: Option<Sample<'static>>,
    pub(crate) consumer: *mut Consumer,
    pub(crate) ready_fd: c_int,
}

/// What a consumer handle is in the middle of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Busy {
    /// Nothing: a receive goes straight to the ring.
    Idle,
    /// A borrowed message (`sample`) is out: every other call is refused.
    Sample,
    /// Inside a [`shmem_recv_batch`] callback: the consumer is in use further up the stack,
    /// every other call is refused.
    Batch,
}

impl ShmemConsumer {
    pub(crate) fn new(consumer: Consumer) -> ShmemConsumer {
        let ready_fd = consumer.ready_fd().as_raw_fd();
        ShmemConsumer {
            busy: Busy::Idle,
            sample: None,
            consumer: Box::into_raw(Box::new(consumer)),
            ready_fd,
        }
    }

    /// Refuses (`SHMEM_ERR_BUSY`) while a borrowed message is out or a batch runs.
    #[inline(always)]
    pub(crate) fn check_not_lent(&self) -> Result<(), Failure> {
        match self.busy {
            Busy::Idle => Ok(()),
            Busy::Sample | Busy::Batch => Err(self.lent()),
        }
    }

    /// Why [`check_not_lent`](Self::check_not_lent) refused.
    #[cold]
    #[inline(never)]
    fn lent(&self) -> Failure {
        let why = if self.busy == Busy::Batch {
            "called from this consumer's own shmem_recv_batch callback"
        } else {
            "this consumer holds a borrowed message: release it first"
        };
        Failure(SHMEM_ERR_BUSY, why.into())
    }

    /// Keeps a borrowed message until [`release`](Self::release).
    pub(crate) fn lend_sample(&mut self, sample: Sample<'static>) {
        self.sample = Some(sample);
        self.busy = Busy::Sample;
    }

    /// Ends a borrowed message: the sample's space goes back to the producer. Nothing
    /// otherwise (in a batch, the batch's guard ends it).
    pub(crate) fn release(&mut self) {
        if self.busy == Busy::Sample {
            let sample = self.sample.take();
            self.busy = Busy::Idle;
            drop(sample);
        }
    }
}

impl Drop for ShmemConsumer {
    fn drop(&mut self) {
        self.sample = None;
        // SAFETY: from Box::into_raw in `new`, freed exactly once, here; no sample borrows it
        // any more.
        drop(unsafe { Box::from_raw(self.consumer) });
    }
}

/// How to create a channel; zeroed fields take the broker's defaults.
#[repr(C)]
pub struct ShmemChannelOptions {
    /// Ring data bytes per producer/consumer pair (0: the broker's default_capacity).
    pub capacity: u64,
    /// Producers attached at once, 1 to 64 (0: 1).
    pub max_producers: u32,
    /// Consumers attached at once, 1 to 64 (0: 1).
    pub max_consumers: u32,
    /// What a full consumer ring costs: 0 block, 1 drop, 2 disconnect.
    pub slow_consumer: i32,
    /// Non-zero: succeed if the channel exists already (open it as it is).
    pub open_existing: i32,
}

/// How to attach; a zeroed struct (or NULL) attaches anonymously without reconnecting.
#[repr(C)]
pub struct ShmemAttachOptions {
    /// Consumers: attach as this durable consumer (NUL-terminated), resuming its queue; NULL
    /// for an anonymous consumer. Must be NULL for producers.
    pub durable_name: *const c_char,
    /// Non-zero: re-attach by itself when the broker restarts.
    pub reconnect: i32,
}

/// One message of a batch send.
#[repr(C)]
pub struct ShmemMessage {
    /// The message's bytes (may be NULL when `len` is 0).
    pub data: *const c_void,
    /// Its length.
    pub len: usize,
}

/// Called by [`shmem_recv_batch`] for each message: `data` is valid for `len` bytes during
/// the call only.
pub type shmem_message_fn =
    Option<unsafe extern "C" fn(ctx: *mut c_void, data: *const c_void, len: usize)>;
