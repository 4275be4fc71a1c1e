//! Bytes plus file descriptors over a Unix stream socket.
//!
//! `passfd` sends one fd per `sendmsg` and sets CLOEXEC only after `recvmsg` returns (a window in
//! which a concurrent fork+exec leaks the fd); `sendfd` sends many but also receives without
//! `MSG_CMSG_CLOEXEC`. An attach must deliver its ring and eventfds atomically and close-on-exec,
//! so this uses rustix's `sendmsg`/`recvmsg`, which does both.

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use crate::wire::MAX_FDS_PER_MESSAGE;

/// Sends `bytes` with `fds` attached to the first byte. Returns how many bytes went out (a
/// non-blocking socket may take fewer); the fds are sent iff the return value is non-zero.
pub fn send_with_fds(
    socket: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many fds for one message",
        ));
    }
    loop {
        match sendmsg(
            socket,
            &[IoSlice::new(bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::INTR) => continue,
            Err(err) => return Err(err.into()),
        }
    }
}

/// Reads into `buf`, appending any received fds (already close-on-exec) to `fds`; dropping
/// them closes them, so a caller that expected none just lets them go.
pub fn recv_with_fds(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        match recvmsg(
            socket,
            &mut [IoSliceMut::new(buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(msg) => break msg,
            Err(rustix::io::Errno::INTR) => continue,
            Err(err) => return Err(err.into()),
        }
    };
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    // Under MSG_CTRUNC the kernel has already closed the fds that did not fit; the bytes are
    // still good, and callers check the fd count they expect.
    Ok(msg.bytes)
}
