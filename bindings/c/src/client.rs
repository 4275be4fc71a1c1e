//! Client functions: connect, create, drop, list and describe channels, and attach as a
//! producer or consumer.

use std::ffi::{c_char, c_int, CString};

use shmem_broker_client::{Client, SlowConsumer};

use crate::codes::*;
use crate::guard::*;
use crate::handles::*;
// For the documentation's links only.
#[cfg(doc)]
use crate::{
    consumer::shmem_consumer_free, producer::shmem_producer_close, producer::shmem_producer_free,
};

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

pub(crate) fn json_out(
    value: &impl serde::Serialize,
    out: *mut *mut c_char,
) -> Result<c_int, Failure> {
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
pub(crate) unsafe fn attach_request<'a>(
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
