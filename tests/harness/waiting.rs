//! Waiting: polling against a deadline, and running work in the background with a deadline.

use std::fmt;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::POLL_INTERVAL;

/// Polls `probe` until it returns `Ok`, for at most `timeout`. On timeout the test fails with
/// `what` and the last `Err` the probe gave (its description of the state it saw).
pub fn wait_for<T>(
    timeout: Duration,
    what: impl fmt::Display,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(last) => {
                if Instant::now() >= deadline {
                    panic!("timed out after {timeout:?} waiting for {what}; last state: {last}");
                }
            }
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Work running on a helper thread (a library producer or consumer that may block), joined
/// with a deadline so a hung call fails the test instead of hanging the run. Do not spawn
/// processes inside it (see the module docs).
pub struct Background<T> {
    what: String,
    rx: mpsc::Receiver<T>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl<T: Send + 'static> Background<T> {
    pub fn spawn(what: &str, body: impl FnOnce() -> T + Send + 'static) -> Background<T> {
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(what.to_string())
            .spawn(move || {
                // The receiver may be gone after a timeout; nothing left to tell then.
                let _ = tx.send(body());
            })
            .expect("spawn a helper thread");
        Background {
            what: what.to_string(),
            rx,
            handle: Some(handle),
        }
    }

    /// True once the body has returned or panicked.
    pub fn is_finished(&self) -> bool {
        match &self.handle {
            Some(handle) => handle.is_finished(),
            None => true,
        }
    }

    /// Waits for the result; fails the test after `timeout`. A panic in the body is passed on.
    pub fn join(mut self, timeout: Duration) -> T {
        match self.rx.recv_timeout(timeout) {
            Ok(value) => {
                if let Some(handle) = self.handle.take() {
                    // The body has returned, so the thread is ending; its result is here.
                    let _ = handle.join();
                }
                value
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("{} did not finish within {timeout:?}", self.what)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                match self.handle.take().map(|h| h.join()) {
                    Some(Err(panic)) => std::panic::resume_unwind(panic),
                    _ => panic!("{} ended without a result", self.what),
                }
            }
        }
    }
}

/// Runs `body` on a helper thread and fails the test if it does not finish within `timeout`.
pub fn with_deadline<T: Send + 'static>(
    timeout: Duration,
    what: &str,
    body: impl FnOnce() -> T + Send + 'static,
) -> T {
    Background::spawn(what, body).join(timeout)
}
