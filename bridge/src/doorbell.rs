//! A doorbell: Zenoh's callbacks ring it when an importer reports, so that the exporter, which
//! also waits for its ring, wakes for either at once (an eventfd polled with the consumer's
//! `ready_fd`).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use anyhow::Context;
use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags, Timespec};

pub struct Doorbell {
    fd: OwnedFd,
}

impl Doorbell {
    pub fn new() -> anyhow::Result<Doorbell> {
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .context("create an eventfd")?;
        Ok(Doorbell { fd })
    }

    /// Wakes a `wait` in progress, or makes the next one return at once.
    pub fn ring(&self) {
        // Fails only when the count is at its maximum: then it is readable anyway.
        let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
    }

    /// Waits until the bell rang, `other` (if any) is readable, or `timeout` passed; then
    /// silences the bell.
    pub fn wait(&self, other: Option<BorrowedFd<'_>>, timeout: Duration) {
        let timeout = Timespec {
            tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let mut fds = vec![PollFd::new(&self.fd, PollFlags::IN)];
        if let Some(other) = &other {
            fds.push(PollFd::new(other, PollFlags::IN));
        }
        // An interrupted or failed poll only ends this wait early: the caller looks again.
        let _ = poll(&mut fds, Some(&timeout));
        let mut count = [0u8; 8];
        // Empty (EAGAIN) if it did not ring: nothing to silence.
        let _ = rustix::io::read(self.fd.as_fd(), &mut count);
    }
}
