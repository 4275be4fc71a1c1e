//! The C API of shmem-broker: `libshmem_broker` (shared and static) and `shmem_broker.h`,
//! built on the Rust client library (no second implementation of the ring).
//!
//! Every exported function checks its pointer arguments, catches panics (none crosses into C:
//! it becomes `SHMEM_ERR_PANIC`), and reports failures as a negative code plus a message kept
//! per thread ([`shmem_last_error_message`]). Handles are boxed Rust values the caller owns
//! and gives back with the matching `*_free` function.

#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};

use shmem_broker_client::{
    Client, Consumer, Error, ErrorCode, Loan, Producer, Sample, SlowConsumer, TryRecvError,
    TrySendError,
};

/// Success.
pub const SHMEM_OK: c_int = 0;
/// A non-blocking call could not go on now: no room (send), no message (receive).
pub const SHMEM_WOULD_BLOCK: c_int = 1;
/// Receive: the producer closed its stream here; nothing more will come from it.
pub const SHMEM_END_OF_STREAM: c_int = 2;
/// A NULL pointer where one is required, a string that is not UTF-8, an option out of range.
pub const SHMEM_ERR_INVALID_ARGUMENT: c_int = -1;
/// No broker listens at the socket.
pub const SHMEM_ERR_BROKER_NOT_RUNNING: c_int = -2;
/// The broker refused the request: malformed.
pub const SHMEM_ERR_BAD_REQUEST: c_int = -10;
/// The broker refused the request: protocol version.
pub const SHMEM_ERR_UNSUPPORTED_VERSION: c_int = -11;
/// No channel of that name.
pub const SHMEM_ERR_NO_SUCH_CHANNEL: c_int = -12;
/// A channel of that name exists already.
pub const SHMEM_ERR_CHANNEL_EXISTS: c_int = -13;
/// The channel's producer or consumer places are taken.
pub const SHMEM_ERR_CHANNEL_BUSY: c_int = -14;
/// This uid may not do that.
pub const SHMEM_ERR_PERMISSION_DENIED: c_int = -15;
/// Not a valid channel or consumer name.
pub const SHMEM_ERR_INVALID_NAME: c_int = -16;
/// Capacity out of range.
pub const SHMEM_ERR_INVALID_CAPACITY: c_int = -17;
/// A quota of the broker is reached.
pub const SHMEM_ERR_LIMIT_REACHED: c_int = -18;
/// A durable consumer fell behind while away and was disconnected.
pub const SHMEM_ERR_EVICTED: c_int = -19;
/// No durable consumer of that name.
pub const SHMEM_ERR_NO_SUCH_CONSUMER: c_int = -20;
/// The broker failed otherwise.
pub const SHMEM_ERR_BROKER_INTERNAL: c_int = -21;
/// An administrator dropped the channel.
pub const SHMEM_ERR_CHANNEL_DROPPED: c_int = -30;
/// The broker disconnected this consumer (it fell behind under policy `disconnect`).
pub const SHMEM_ERR_DISCONNECTED: c_int = -31;
/// Fan-out consumers: one producer's ring became unusable; reading on without it.
pub const SHMEM_ERR_PRODUCER_LOST: c_int = -32;
/// One-to-one consumers: the producer went away without closing its stream (once).
pub const SHMEM_ERR_PRODUCER_GONE: c_int = -33;
/// A producer's end-of-stream mark did not fit (policy `drop`); reading on.
pub const SHMEM_ERR_END_OF_STREAM_LOST: c_int = -34;
/// The message is larger than the channel carries.
pub const SHMEM_ERR_MESSAGE_TOO_LARGE: c_int = -35;
/// The shared memory is inconsistent (a peer scribbled on it).
pub const SHMEM_ERR_CORRUPT: c_int = -36;
/// Receive: the buffer is too small; `*len` says how large the message is, and it stays
/// pending for the next receive.
pub const SHMEM_ERR_BUFFER_TOO_SMALL: c_int = -37;
/// The producer has a loan outstanding (send or abandon it first), or the consumer a borrowed
/// message (release it first).
pub const SHMEM_ERR_BUSY: c_int = -38;
/// A system call failed.
pub const SHMEM_ERR_IO: c_int = -40;
/// The broker said something this library does not understand.
pub const SHMEM_ERR_PROTOCOL: c_int = -41;
/// Anything else.
pub const SHMEM_ERR_OTHER: c_int = -98;
/// A bug in the library (a Rust panic), caught at the boundary.
pub const SHMEM_ERR_PANIC: c_int = -99;

/// A connection to the broker, for requests (list, info, create, drop) and to attach.
pub struct ShmemClient {
    client: Client,
}

/// A producer attached to a channel, and the loan it may have outstanding.
///
/// A [`Loan`] borrows its producer mutably, and C holds both at once, so the producer lives in
/// its own allocation (`producer`, from `Box::into_raw`, freed in `Drop`) and the loan borrows
/// it for `'static`: sound because every function that touches the producer first checks that
/// no loan is outstanding (`SHMEM_ERR_BUSY`), and the loan is dropped before the producer.
pub struct ShmemProducer {
    loan: Option<Loan<'static>>,
    producer: *mut Producer,
    /// Fixed for the producer's life, so reading them needs no access to it while a loan is out.
    max_message_len: usize,
    ready_fd: c_int,
}

impl ShmemProducer {
    fn new(producer: Producer) -> ShmemProducer {
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
    fn producer(&mut self) -> Result<&mut Producer, Failure> {
        if self.loan.is_some() {
            return Err(Failure(
                SHMEM_ERR_BUSY,
                "this producer has a loan outstanding: send or abandon it first".into(),
            ));
        }
        // SAFETY: `producer` came from Box::into_raw and is freed only in Drop; no loan
        // borrows it (checked above), and `&mut self` makes this the only access.
        Ok(unsafe { &mut *self.producer })
    }

    /// Makes a loan with `take` and keeps it; returns where to write (`None`: would block).
    fn lend(
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
    sample: Option<Sample<'static>>,
    consumer: *mut Consumer,
    /// A message received into here that the caller's buffer could not take yet.
    pending: Option<Vec<u8>>,
    /// `pending`, handed out by a borrowed receive (released with it).
    pending_lent: bool,
    /// Inside a [`shmem_recv_batch`] callback: the consumer is in use further up the stack.
    in_batch: bool,
    buffer: Vec<u8>,
    ready_fd: c_int,
}

impl ShmemConsumer {
    fn new(consumer: Consumer) -> ShmemConsumer {
        let ready_fd = consumer.ready_fd().as_raw_fd();
        ShmemConsumer {
            sample: None,
            consumer: Box::into_raw(Box::new(consumer)),
            pending: None,
            pending_lent: false,
            in_batch: false,
            buffer: Vec::new(),
            ready_fd,
        }
    }

    fn check_not_lent(&self) -> Result<(), Failure> {
        if self.in_batch {
            return Err(Failure(
                SHMEM_ERR_BUSY,
                "called from this consumer's own shmem_recv_batch callback".into(),
            ));
        }
        if self.sample.is_some() || self.pending_lent {
            return Err(Failure(
                SHMEM_ERR_BUSY,
                "this consumer holds a borrowed message: release it first".into(),
            ));
        }
        Ok(())
    }

    /// The consumer, when no sample borrows it.
    fn consumer(&mut self) -> Result<&mut Consumer, Failure> {
        self.check_not_lent()?;
        // SAFETY: from Box::into_raw, freed only in Drop; no sample borrows it (checked), and
        // `&mut self` makes this the only access.
        Ok(unsafe { &mut *self.consumer })
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

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(message: &str) {
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
struct Failure(c_int, String);

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
fn send_failure(err: TrySendError) -> Result<(), Failure> {
    match err.into_failure() {
        None => Ok(()),
        Some(err) => Err(err.into()),
    }
}

/// A would-block (`None`) or a failure of a non-blocking receive.
fn recv_failure(err: TryRecvError) -> Result<(), Failure> {
    match err.into_failure() {
        None => Ok(()),
        Some(err) => Err(err.into()),
    }
}

fn invalid(what: &str) -> Failure {
    Failure(SHMEM_ERR_INVALID_ARGUMENT, what.to_string())
}

/// Runs `body`, turning a failure into its code (message kept for the thread) and a panic into
/// `SHMEM_ERR_PANIC`.
fn guard(body: impl FnOnce() -> Result<c_int, Failure>) -> c_int {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(code)) => code,
        Ok(Err(Failure(code, message))) => {
            set_error(&message);
            code
        }
        Err(_) => {
            set_error("internal error in libshmem_broker (a panic, caught at the C boundary)");
            SHMEM_ERR_PANIC
        }
    }
}

/// Hands `value` to C through `out`, boxed: the caller owns it and frees it with the matching
/// `*_free` function.
///
/// # Safety
/// `out` is not NULL and points to writable storage.
unsafe fn give<T>(out: *mut *mut T, value: T) {
    // SAFETY: the caller's contract.
    unsafe { *out = Box::into_raw(Box::new(value)) };
}

/// Frees a handle [`give`] handed out (NULL is ignored); a panic in its drop stays here.
///
/// # Safety
/// `handle` is NULL or came from [`give`] and is not used afterwards.
unsafe fn free_handle<T>(handle: *mut T) {
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
unsafe fn str_arg<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, Failure> {
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
unsafe fn handle<'a, T>(ptr: *mut T, what: &str) -> Result<&'a mut T, Failure> {
    // SAFETY: the caller's contract; NULL is refused by `as_mut`.
    unsafe { ptr.as_mut() }.ok_or_else(|| invalid(&format!("{what} is NULL")))
}

/// A byte slice from a pointer and length (NULL allowed when `len` is 0).
///
/// # Safety
/// `ptr` points to `len` readable bytes, or `len` is 0.
unsafe fn bytes_arg<'a>(ptr: *const c_void, len: usize) -> Result<&'a [u8], Failure> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(invalid("data is NULL but len is not 0"));
    }
    // SAFETY: not NULL, `len` readable bytes (the caller's contract).
    Ok(unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) })
}

fn out_ptr<T>(out: *mut T, what: &str) -> Result<(), Failure> {
    if out.is_null() {
        return Err(invalid(&format!("{what} is NULL")));
    }
    Ok(())
}

/// Connects to the broker at `socket`, or (NULL) where the broker listens by default
/// (`$SHMEM_BROKER_SOCKET`, else the system socket). On success `*out` is a client the caller
/// frees with [`shmem_client_free`].
///
/// # Safety
/// `socket` is NULL or a NUL-terminated string; `out` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn shmem_client_connect(
    socket: *const c_char,
    out: *mut *mut ShmemClient,
) -> c_int {
    guard(|| {
        out_ptr(out, "out")?;
        let client = if socket.is_null() {
            Client::connect_default()?
        } else {
            // SAFETY: not NULL, NUL-terminated (the contract).
            Client::connect(unsafe { str_arg(socket, "socket") }?)?
        };
        // SAFETY: `out` is not NULL (checked) and writable (the contract).
        unsafe { give(out, ShmemClient { client }) };
        Ok(SHMEM_OK)
    })
}

/// Frees a client (NULL is ignored). Producers and consumers attached through it stay usable.
///
/// # Safety
/// `client` is NULL or came from [`shmem_client_connect`] and is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn shmem_client_free(client: *mut ShmemClient) {
    // SAFETY: NULL or from Box::into_raw in this library, freed once (the contract).
    unsafe { free_handle(client) }
}

/// Creates channel `name` with `options` (NULL: every default). Needs root or an admin group
/// of the broker. With `options->open_existing`, an existing channel is success too.
///
/// # Safety
/// `client` is a live client; `name` a NUL-terminated string; `options` NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn shmem_channel_create(
    client: *mut ShmemClient,
    name: *const c_char,
    options: *const ShmemChannelOptions,
) -> c_int {
    guard(|| {
        // SAFETY: the contract.
        let client = unsafe { handle(client, "client") }?;
        // SAFETY: the contract.
        let name = unsafe { str_arg(name, "name") }?;
        let mut channel = client.client.channel(name);
        let mut open_existing = false;
        // SAFETY: NULL or a valid struct (the contract).
        if let Some(options) = unsafe { options.as_ref() } {
            if options.capacity > 0 {
                channel = channel.capacity(options.capacity);
            }
            if options.max_producers > 0 {
                channel = channel.max_producers(options.max_producers);
            }
            if options.max_consumers > 0 {
                channel = channel.max_consumers(options.max_consumers);
            }
            channel = channel.slow_consumer(match options.slow_consumer {
                0 => SlowConsumer::Block,
                1 => SlowConsumer::Drop,
                2 => SlowConsumer::Disconnect,
                other => return Err(invalid(&format!("slow_consumer {other} is not 0, 1 or 2"))),
            });
            open_existing = options.open_existing != 0;
        }
        if open_existing {
            channel.open_or_create()?;
        } else {
            channel.create()?;
        }
        Ok(SHMEM_OK)
    })
}

/// Drops channel `name` (its attached endpoints learn it with `SHMEM_ERR_CHANNEL_DROPPED`).
///
/// # Safety
/// `client` is a live client; `name` a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn shmem_channel_drop(
    client: *mut ShmemClient,
    name: *const c_char,
) -> c_int {
    guard(|| {
        // SAFETY: the contract.
        let client = unsafe { handle(client, "client") }?;
        // SAFETY: the contract.
        let name = unsafe { str_arg(name, "name") }?;
        client.client.drop_channel(name)?;
        Ok(SHMEM_OK)
    })
}

fn json_out(value: &impl serde::Serialize, out: *mut *mut c_char) -> Result<c_int, Failure> {
    let text = serde_json::to_string(value).map_err(|e| Failure(SHMEM_ERR_OTHER, e.to_string()))?;
    let text = CString::new(text).map_err(|e| Failure(SHMEM_ERR_PROTOCOL, e.to_string()))?;
    // SAFETY: `out` was checked not NULL by the caller of this function.
    unsafe { *out = text.into_raw() };
    Ok(SHMEM_OK)
}

/// Every channel, as a JSON array (the fields of `shmemctl list --json`). `*out` is a string
/// the caller frees with [`shmem_string_free`].
///
/// # Safety
/// `client` is a live client; `out` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn shmem_channel_list_json(
    client: *mut ShmemClient,
    out: *mut *mut c_char,
) -> c_int {
    guard(|| {
        // SAFETY: the contract.
        let client = unsafe { handle(client, "client") }?;
        out_ptr(out, "out")?;
        json_out(&client.client.list()?, out)
    })
}

/// Channel `name` described as a JSON object (the fields of `shmemctl info --json`). `*out` is
/// a string the caller frees with [`shmem_string_free`].
///
/// # Safety
/// `client` is a live client; `name` a NUL-terminated string; `out` writable storage.
#[no_mangle]
pub unsafe extern "C" fn shmem_channel_info_json(
    client: *mut ShmemClient,
    name: *const c_char,
    out: *mut *mut c_char,
) -> c_int {
    guard(|| {
        // SAFETY: the contract.
        let client = unsafe { handle(client, "client") }?;
        // SAFETY: the contract.
        let name = unsafe { str_arg(name, "name") }?;
        out_ptr(out, "out")?;
        json_out(&client.client.info(name)?, out)
    })
}

/// Frees a string this library returned (NULL is ignored).
///
/// # Safety
/// `text` is NULL or came from this library and is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn shmem_string_free(text: *mut c_char) {
    if !text.is_null() {
        // SAFETY: a pointer from CString::into_raw, freed once (the contract).
        drop(unsafe { CString::from_raw(text) });
    }
}

/// The attach both `shmem_*_attach` functions start from: the client's request for
/// `channel`, with the options' reconnect, and the durable name if one is given.
///
/// # Safety
/// `client` is a live client; `channel` NUL-terminated; `options` NULL or valid, its
/// `durable_name` NULL or NUL-terminated.
unsafe fn attach_request<'a>(
    client: *mut ShmemClient,
    channel: *const c_char,
    options: *const ShmemAttachOptions,
) -> Result<(shmem_broker_client::Attach<'a>, Option<&'a str>), Failure> {
    // SAFETY: the contract.
    let client = unsafe { handle(client, "client") }?;
    // SAFETY: the contract.
    let channel = unsafe { str_arg(channel, "channel") }?;
    // SAFETY: NULL or valid (the contract).
    let (name, reconnect) = match unsafe { options.as_ref() } {
        None => (None, false),
        Some(options) if options.durable_name.is_null() => (None, options.reconnect != 0),
        // SAFETY: not NULL, NUL-terminated (the contract).
        Some(options) => (
            Some(unsafe { str_arg(options.durable_name, "durable_name") }?),
            options.reconnect != 0,
        ),
    };
    Ok((client.client.attach(channel).reconnect(reconnect), name))
}

/// Attaches as a producer of `channel` (`options` NULL: no reconnect). `*out` is a producer
/// the caller ends with [`shmem_producer_close`] (end-of-stream) or [`shmem_producer_free`].
///
/// # Safety
/// `client` is a live client; `channel` NUL-terminated; `options` NULL or valid; `out`
/// writable storage.
#[no_mangle]
pub unsafe extern "C" fn shmem_producer_attach(
    client: *mut ShmemClient,
    channel: *const c_char,
    options: *const ShmemAttachOptions,
    out: *mut *mut ShmemProducer,
) -> c_int {
    guard(|| {
        // SAFETY: the contract.
        let (attach, name) = unsafe { attach_request(client, channel, options) }?;
        out_ptr(out, "out")?;
        if name.is_some() {
            return Err(invalid("durable_name is for consumers"));
        }
        let producer = attach.producer()?;
        // SAFETY: `out` is not NULL (checked) and writable (the contract).
        unsafe { give(out, ShmemProducer::new(producer)) };
        Ok(SHMEM_OK)
    })
}

/// Attaches as a consumer of `channel`: anonymous, or the durable consumer
/// `options->durable_name`. `*out` is a consumer the caller frees with
/// [`shmem_consumer_free`].
///
/// # Safety
/// As [`shmem_producer_attach`].
#[no_mangle]
pub unsafe extern "C" fn shmem_consumer_attach(
    client: *mut ShmemClient,
    channel: *const c_char,
    options: *const ShmemAttachOptions,
    out: *mut *mut ShmemConsumer,
) -> c_int {
    guard(|| {
        // SAFETY: the contract.
        let (mut attach, name) = unsafe { attach_request(client, channel, options) }?;
        out_ptr(out, "out")?;
        if let Some(name) = name {
            attach = attach.durable(name);
        }
        let consumer = attach.consumer()?;
        // SAFETY: `out` is not NULL (checked) and writable (the contract).
        unsafe { give(out, ShmemConsumer::new(consumer)) };
        Ok(SHMEM_OK)
    })
}

/// Sends one message of `len` bytes, waiting for room.
///
/// # Safety
/// `producer` is a live producer; `data` points to `len` readable bytes (or `len` is 0).
#[no_mangle]
pub unsafe extern "C" fn shmem_send(
    producer: *mut ShmemProducer,
    data: *const c_void,
    len: usize,
) -> c_int {
    guard(|| {
        // SAFETY: the contract.
        let producer = unsafe { handle(producer, "producer") }?;
        // SAFETY: the contract.
        let message = unsafe { bytes_arg(data, len) }?;
        producer.producer()?.send(message)?;
        Ok(SHMEM_OK)
    })
}

/// [`shmem_send`] without waiting: `SHMEM_WOULD_BLOCK` when there is no room now.
///
/// # Safety
/// As [`shmem_send`].
#[no_mangle]
pub unsafe extern "C" fn shmem_try_send(
    producer: *mut ShmemProducer,
    data: *const c_void,
    len: usize,
) -> c_int {
    guard(|| {
        // SAFETY: the contract.
        let producer = unsafe { handle(producer, "producer") }?;
        // SAFETY: the contract.
        let message = unsafe { bytes_arg(data, len) }?;
        match producer.producer()?.try_send(message) {
            Ok(()) => Ok(SHMEM_OK),
            Err(err) => send_failure(err).map(|()| SHMEM_WOULD_BLOCK),
        }
    })
}

/// # Safety
/// `messages` points to `count` valid [`ShmemMessage`]s (or `count` is 0).
unsafe fn batch_arg<'a>(
    messages: *const ShmemMessage,
    count: usize,
) -> Result<Vec<&'a [u8]>, Failure> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if messages.is_null() {
        return Err(invalid("messages is NULL but count is not 0"));
    }
    // SAFETY: `count` valid structs (the contract).
    let messages = unsafe { std::slice::from_raw_parts(messages, count) };
    messages
        .iter()
        // SAFETY: each message's data is `len` readable bytes (the contract).
        .map(|m| unsafe { bytes_arg(m.data, m.len) })
        .collect()
}

/// Sends `count` messages, publishing as many at once as fit, waiting for room as needed.
///
/// # Safety
/// `producer` is a live producer; `messages` points to `count` valid messages.
#[no_mangle]
pub unsafe extern "C" fn shmem_send_batch(
    producer: *mut ShmemProducer,
    messages: *const ShmemMessage,
    count: usize,
) -> c_int {
    guard(|| {
        // SAFETY: the contract.
        let producer = unsafe { handle(producer, "producer") }?;
        // SAFETY: the contract.
        let batch = unsafe { batch_arg(messages, count) }?;
        producer.producer()?.send_batch(&batch)?;
        Ok(SHMEM_OK)
    })
}

/// Sends as many of `count` messages as fit now, in order, and says how many in `*sent`;
/// `SHMEM_WOULD_BLOCK` (and `*sent` 0) when not even the first fits.
///
/// # Safety
/// As [`shmem_send_batch`]; `sent` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn shmem_try_send_batch(
    producer: *mut ShmemProducer,
    messages: *const ShmemMessage,
    count: usize,
    sent: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: the contract.
        let producer = unsafe { handle(producer, "producer") }?;
        // SAFETY: the contract.
        let batch = unsafe { batch_arg(messages, count) }?;
        out_ptr(sent, "sent")?;
        let (code, n) = match producer.producer()?.try_send_batch(&batch) {
            Ok(n) => (SHMEM_OK, n),
            Err(err) => send_failure(err).map(|()| (SHMEM_WOULD_BLOCK, 0))?,
        };
        // SAFETY: not NULL (checked), writable (the contract).
        unsafe { *sent = n };
        Ok(code)
    })
}

/// Lends `len` bytes in the ring (zero-copy send): `*data` is where to write them. Publish
/// with [`shmem_loan_send`], or give the space back with [`shmem_loan_abandon`]; until then
/// this producer's other calls return `SHMEM_ERR_BUSY`. Waits for room like [`shmem_send`].
/// The bytes are not zeroed: write every one of them.
///
/// # Safety
/// `producer` is a live producer; `data` points to writable storage. `*data` is valid for
/// `len` bytes until the loan is sent or abandoned (or the producer freed).
#[no_mangle]
pub unsafe extern "C" fn shmem_loan(
    producer: *mut ShmemProducer,
    len: usize,
    data: *mut *mut c_void,
) -> c_int {
    guard(|| {
        // SAFETY: the contract.
        let producer = unsafe { handle(producer, "producer") }?;
        out_ptr(data, "data")?;
        let ptr = producer.lend(|p| Ok(Some(p.loan(len)?)))?;
        // SAFETY: not NULL (checked), writable (the contract).
        unsafe { *data = ptr.unwrap_or(std::ptr::null_mut()).cast() };
        Ok(SHMEM_OK)
    })
}

/// [`shmem_loan`] without waiting: `SHMEM_WOULD_BLOCK` (and `*data` NULL) when there is no
/// room now.
///
/// # Safety
/// As [`shmem_loan`].
#[no_mangle]
pub unsafe extern "C" fn shmem_try_loan(
    producer: *mut ShmemProducer,
    len: usize,
    data: *mut *mut c_void,
) -> c_int {
    guard(|| {
        // SAFETY: the contract.
        let producer = unsafe { handle(producer, "producer") }?;
        out_ptr(data, "data")?;
        let ptr = producer.lend(|p| match p.try_loan(len) {
            Ok(loan) => Ok(Some(loan)),
            Err(err) => send_failure(err).map(|()| None),
        })?;
        // SAFETY: not NULL (checked), writable (the contract).
        unsafe { *data = ptr.unwrap_or(std::ptr::null_mut()).cast() };
        Ok(if ptr.is_some() {
            SHMEM_OK
        } else {
            SHMEM_WOULD_BLOCK
        })
    })
}

/// Publishes the outstanding loan: the consumers can read it from now on.
/// `SHMEM_ERR_INVALID_ARGUMENT` if there is none.
///
/// # Safety
/// `producer` is a live producer; the pointer [`shmem_loan`] gave is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn shmem_loan_send(producer: *mut ShmemProducer) -> c_int {
    guard(|| {
        // SAFETY: the contract.
        let producer = unsafe { handle(producer, "producer") }?;
        let loan = producer
            .loan
            .take()
            .ok_or_else(|| invalid("this producer has no loan outstanding"))?;
        loan.send()?;
        Ok(SHMEM_OK)
    })
}

/// Gives the outstanding loan's space back without publishing anything (nothing if there is
/// none).
///
/// # Safety
/// `producer` is NULL or a live producer; the pointer [`shmem_loan`] gave is not used
/// afterwards.
#[no_mangle]
pub unsafe extern "C" fn shmem_loan_abandon(producer: *mut ShmemProducer) {
    // SAFETY: NULL or live (the contract).
    if let Some(producer) = unsafe { producer.as_mut() } {
        drop(catch_unwind(AssertUnwindSafe(|| producer.loan = None)));
    }
}

/// The largest message this producer's channel carries.
///
/// # Safety
/// `producer` is NULL (0 is returned) or a live producer.
#[no_mangle]
pub unsafe extern "C" fn shmem_producer_max_message_len(producer: *const ShmemProducer) -> usize {
    // SAFETY: NULL or live (the contract).
    unsafe { producer.as_ref() }.map_or(0, |p| p.max_message_len)
}

/// A file descriptor that becomes readable whenever a non-blocking call on this producer may
/// go on (room, a consumer coming or going, the broker's news), for `poll`/`epoll`. It
/// belongs to the producer: do not close it or read from it. -1 for NULL.
///
/// # Safety
/// `producer` is NULL or a live producer.
#[no_mangle]
pub unsafe extern "C" fn shmem_producer_fd(producer: *const ShmemProducer) -> c_int {
    // SAFETY: NULL or live (the contract).
    unsafe { producer.as_ref() }.map_or(-1, |p| p.ready_fd)
}

/// Writes the end-of-stream mark (the consumers learn the stream is complete) and frees the
/// producer, whatever the result (NULL is `SHMEM_ERR_INVALID_ARGUMENT`).
///
/// # Safety
/// `producer` is NULL or a live producer, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn shmem_producer_close(producer: *mut ShmemProducer) -> c_int {
    guard(|| {
        if producer.is_null() {
            return Err(invalid("producer is NULL"));
        }
        // SAFETY: a pointer from Box::into_raw, freed once (the contract).
        let mut handle = unsafe { Box::from_raw(producer) };
        // A loan still out is abandoned: the end-of-stream mark follows what was sent.
        handle.loan = None;
        let raw = std::mem::replace(&mut handle.producer, std::ptr::null_mut());
        drop(handle);
        // SAFETY: from Box::into_raw in ShmemProducer::new; the handle no longer holds it (its
        // Drop skips NULL), so it is freed once, here, and no loan borrows it any more.
        let producer = unsafe { Box::from_raw(raw) };
        producer.close()?;
        Ok(SHMEM_OK)
    })
}

/// Frees a producer without an end-of-stream mark (its consumers learn it went away without
/// finishing). NULL is ignored.
///
/// # Safety
/// `producer` is NULL or a live producer, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn shmem_producer_free(producer: *mut ShmemProducer) {
    // SAFETY: NULL or from Box::into_raw in this library, freed once (the contract).
    unsafe { free_handle(producer) }
}

/// Hands the next message (pending or received by `receive`) to `buf`, or says how large it
/// is and keeps it.
fn deliver(
    consumer: &mut ShmemConsumer,
    buf: *mut c_void,
    capacity: usize,
    len: *mut usize,
    receive: impl FnOnce(&mut Consumer, &mut Vec<u8>) -> Result<Option<bool>, Failure>,
) -> Result<c_int, Failure> {
    out_ptr(len, "len")?;
    consumer.check_not_lent()?;
    let message = match consumer.pending.take() {
        Some(message) => message,
        None => {
            let mut buffer = std::mem::take(&mut consumer.buffer);
            match receive(consumer.consumer()?, &mut buffer)? {
                Some(true) => buffer,
                Some(false) => {
                    consumer.buffer = buffer;
                    // SAFETY: not NULL (checked), writable (the caller's contract).
                    unsafe { *len = 0 };
                    return Ok(SHMEM_END_OF_STREAM);
                }
                None => {
                    consumer.buffer = buffer;
                    // SAFETY: as above.
                    unsafe { *len = 0 };
                    return Ok(SHMEM_WOULD_BLOCK);
                }
            }
        }
    };
    // SAFETY: as above.
    unsafe { *len = message.len() };
    if message.len() > capacity {
        let needed = message.len();
        consumer.pending = Some(message);
        return Err(Failure(
            SHMEM_ERR_BUFFER_TOO_SMALL,
            format!("the message has {needed} bytes, the buffer {capacity}; it stays pending"),
        ));
    }
    if !message.is_empty() {
        if buf.is_null() {
            consumer.pending = Some(message);
            return Err(invalid("buf is NULL"));
        }
        // SAFETY: `buf` holds `capacity` >= message.len() writable bytes (the contract), and
        // cannot overlap our own vector.
        unsafe { std::ptr::copy_nonoverlapping(message.as_ptr(), buf.cast::<u8>(), message.len()) };
    }
    consumer.buffer = message;
    Ok(SHMEM_OK)
}

/// Receives the next message into `buf` (`capacity` bytes), waiting for one; `*len` is its
/// length. `SHMEM_END_OF_STREAM` (and `*len` 0) when the producer closed its stream. A message
/// larger than `capacity` gives `SHMEM_ERR_BUFFER_TOO_SMALL` with its length in `*len` and
/// stays pending for the next receive.
///
/// # Safety
/// `consumer` is a live consumer; `buf` points to `capacity` writable bytes; `len` to writable
/// storage.
#[no_mangle]
pub unsafe extern "C" fn shmem_recv(
    consumer: *mut ShmemConsumer,
    buf: *mut c_void,
    capacity: usize,
    len: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: the contract.
        let consumer = unsafe { handle(consumer, "consumer") }?;
        deliver(consumer, buf, capacity, len, |c, buffer| {
            Ok(Some(c.recv_into(buffer)?))
        })
    })
}

/// [`shmem_recv`] without waiting: `SHMEM_WOULD_BLOCK` when no message is there.
///
/// # Safety
/// As [`shmem_recv`].
#[no_mangle]
pub unsafe extern "C" fn shmem_try_recv(
    consumer: *mut ShmemConsumer,
    buf: *mut c_void,
    capacity: usize,
    len: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: the contract.
        let consumer = unsafe { handle(consumer, "consumer") }?;
        deliver(consumer, buf, capacity, len, |c, buffer| {
            match c.try_recv_into(buffer) {
                Ok(more) => Ok(Some(more)),
                Err(err) => recv_failure(err).map(|()| None),
            }
        })
    })
}

/// Lends the next message where it lies in the ring (zero-copy receive), waiting for one:
/// `*data` and `*len` say where and how long. Its space goes back to the producer with
/// [`shmem_recv_ref_release`]; until then this consumer's other calls return
/// `SHMEM_ERR_BUSY`, and a producer waiting for room waits for it. `SHMEM_END_OF_STREAM` (and
/// `*data` NULL, `*len` 0) when the producer closed its stream.
///
/// The bytes are shared memory the producer can write: an honest producer never touches a
/// published message, but a hostile one can change it while you read. Copy out what you must
/// be able to trust before checking it.
///
/// # Safety
/// `consumer` is a live consumer; `data` and `len` point to writable storage. `*data` is valid
/// for `*len` bytes until the release (or the consumer is freed).
#[no_mangle]
pub unsafe extern "C" fn shmem_recv_ref(
    consumer: *mut ShmemConsumer,
    data: *mut *const c_void,
    len: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: the contract.
        let consumer = unsafe { handle(consumer, "consumer") }?;
        // SAFETY: the contract.
        unsafe { borrow_next(consumer, data, len, |c| Ok(Some(c.recv_ref()?))) }
    })
}

/// [`shmem_recv_ref`] without waiting: `SHMEM_WOULD_BLOCK` when no message is there.
///
/// # Safety
/// As [`shmem_recv_ref`].
#[no_mangle]
pub unsafe extern "C" fn shmem_try_recv_ref(
    consumer: *mut ShmemConsumer,
    data: *mut *const c_void,
    len: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: the contract.
        let consumer = unsafe { handle(consumer, "consumer") }?;
        // SAFETY: the contract.
        unsafe {
            borrow_next(consumer, data, len, |c| match c.try_recv_ref() {
                Ok(sample) => Ok(Some(sample)),
                Err(err) => recv_failure(err).map(|()| None),
            })
        }
    })
}

/// Takes the next message with `take` and keeps it lent: `take` gives `None` (would block),
/// `Some(None)` (end-of-stream) or the sample.
///
/// # Safety
/// `data` and `len` point to writable storage.
unsafe fn borrow_next(
    consumer: &mut ShmemConsumer,
    data: *mut *const c_void,
    len: *mut usize,
    take: impl FnOnce(&'static mut Consumer) -> Result<Option<Option<Sample<'static>>>, Failure>,
) -> Result<c_int, Failure> {
    out_ptr(data, "data")?;
    out_ptr(len, "len")?;
    consumer.check_not_lent()?;
    let (code, ptr, n) = if let Some(pending) = &consumer.pending {
        // A message a too-small buffer left pending: lent from our own memory.
        consumer.pending_lent = true;
        (SHMEM_OK, pending.as_ptr(), pending.len())
    } else {
        // SAFETY: from Box::into_raw, freed only in Drop, after the sample; no sample borrows
        // it (checked), and nothing else touches it while this one lives (every other call
        // checks `check_not_lent` first).
        let target: &'static mut Consumer = unsafe { &mut *consumer.consumer };
        match take(target)? {
            None => (SHMEM_WOULD_BLOCK, std::ptr::null(), 0),
            Some(None) => (SHMEM_END_OF_STREAM, std::ptr::null(), 0),
            Some(Some(sample)) => {
                let found = (SHMEM_OK, sample.as_ptr(), sample.len());
                consumer.sample = Some(sample);
                found
            }
        }
    };
    // SAFETY: both checked not NULL, writable (the contract).
    unsafe {
        *data = ptr.cast();
        *len = n;
    }
    Ok(code)
}

/// Releases the message [`shmem_recv_ref`] lent: its space goes back to the producer. Nothing
/// if none is held.
///
/// # Safety
/// `consumer` is NULL or a live consumer; the pointer [`shmem_recv_ref`] gave is not used
/// afterwards.
#[no_mangle]
pub unsafe extern "C" fn shmem_recv_ref_release(consumer: *mut ShmemConsumer) {
    // SAFETY: NULL or live (the contract).
    if let Some(consumer) = unsafe { consumer.as_mut() } {
        drop(catch_unwind(AssertUnwindSafe(|| {
            consumer.sample = None;
            if std::mem::take(&mut consumer.pending_lent) {
                consumer.pending = None;
            }
        })));
    }
}

/// Receives up to `max` messages, waiting for at least one, calling `each(ctx, data, len)` for
/// each (`data` is valid during the call only); `*count` says how many. `SHMEM_END_OF_STREAM`
/// (and `*count` 0) when the producer closed its stream.
///
/// `each` may not free this consumer; a call into it from `each` gets `SHMEM_ERR_BUSY`.
///
/// # Safety
/// `consumer` is a live consumer; `each` a function safe to call with `ctx`; `count` writable.
#[no_mangle]
pub unsafe extern "C" fn shmem_recv_batch(
    consumer: *mut ShmemConsumer,
    max: usize,
    each: shmem_message_fn,
    ctx: *mut c_void,
    count: *mut usize,
) -> c_int {
    guard(|| {
        let each = each.ok_or_else(|| invalid("each is NULL"))?;
        out_ptr(count, "count")?;
        // The handle is borrowed only around the callbacks, never across them: a callback that
        // calls back into this consumer gets a fresh borrow, sees `in_batch` and is refused
        // (SHMEM_ERR_BUSY) without touching the `Consumer` the batch is using.
        let (pending, target) = {
            // SAFETY: the contract.
            let handle = unsafe { handle(consumer, "consumer") }?;
            handle.check_not_lent()?;
            handle.in_batch = true;
            (handle.pending.take(), handle.consumer)
        };
        let delivered = match pending {
            Some(message) => {
                // SAFETY: `each` may be called with `ctx` (the contract); the bytes are ours
                // and live for the call.
                unsafe { each(ctx, message.as_ptr().cast(), message.len()) };
                Ok(Some(1))
            }
            None => {
                // SAFETY: from Box::into_raw, freed only when the handle is (which a callback
                // cannot do while `in_batch` is set); no sample borrows it (checked above) and
                // nothing else reaches it during the batch (`in_batch`).
                let target = unsafe { &mut *target };
                target.recv_batch(max.max(1), |message| {
                    // SAFETY: as above; the bytes live for the call.
                    unsafe { each(ctx, message.as_ptr().cast(), message.len()) }
                })
            }
        };
        // SAFETY: the contract (still live: the callbacks could not free it).
        unsafe { handle(consumer, "consumer") }?.in_batch = false;
        let delivered = match delivered? {
            Some(n) => n,
            None => {
                // SAFETY: not NULL (checked), writable (the contract).
                unsafe { *count = 0 };
                return Ok(SHMEM_END_OF_STREAM);
            }
        };
        // SAFETY: as above.
        unsafe { *count = delivered };
        Ok(SHMEM_OK)
    })
}

/// A file descriptor that becomes readable whenever a non-blocking call on this consumer may
/// go on (a message, a producer coming or going, end-of-stream, the broker's news), for
/// `poll`/`epoll`. It belongs to the consumer: do not close it or read from it. -1 for NULL.
///
/// # Safety
/// `consumer` is NULL or a live consumer.
#[no_mangle]
pub unsafe extern "C" fn shmem_consumer_fd(consumer: *const ShmemConsumer) -> c_int {
    // SAFETY: NULL or live (the contract).
    unsafe { consumer.as_ref() }.map_or(-1, |c| c.ready_fd)
}

/// Frees a consumer (a durable one keeps its queue at the broker). NULL is ignored.
///
/// # Safety
/// `consumer` is NULL or a live consumer, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn shmem_consumer_free(consumer: *mut ShmemConsumer) {
    // SAFETY: NULL or live (the contract).
    if unsafe { consumer.as_ref() }.is_some_and(|c| c.in_batch) {
        set_error("shmem_consumer_free from the consumer's own shmem_recv_batch callback: ignored");
        return;
    }
    // SAFETY: NULL or from Box::into_raw in this library, freed once (the contract).
    unsafe { free_handle(consumer) }
}

#[cfg(test)]
mod tests {
    /// The header in include/ is what cbindgen makes from this source now;
    /// `SHMEM_BLESS=1 cargo test -p shmem-broker-c` rewrites it.
    #[test]
    fn the_kept_header_is_current() {
        let dir = env!("CARGO_MANIFEST_DIR");
        let config = cbindgen::Config::from_file(format!("{dir}/cbindgen.toml")).expect("config");
        let mut generated = Vec::new();
        cbindgen::Builder::new()
            .with_crate(dir)
            .with_config(config)
            .generate()
            .expect("cbindgen")
            .write(&mut generated);
        let path = format!("{dir}/include/shmem_broker.h");
        if std::env::var_os("SHMEM_BLESS").is_some() {
            std::fs::write(&path, &generated).expect("write the header");
        }
        let kept = std::fs::read(&path).unwrap_or_default();
        assert!(
            kept == generated,
            "{path} is out of date: run SHMEM_BLESS=1 cargo test -p shmem-broker-c"
        );
    }
}
