//! Telling systemd how the broker is doing (`sd_notify`). Every call is a no-op when
//! `NOTIFY_SOCKET` is unset, i.e. outside systemd.

use sd_notify::NotifyState;
use slog::{debug, Logger};

pub struct Notifier {
    log: Logger,
    last_status: String,
}

impl Notifier {
    pub fn new(log: Logger) -> Notifier {
        Notifier {
            log,
            last_status: String::new(),
        }
    }

    fn send(&self, states: &[NotifyState]) {
        if let Err(err) = sd_notify::notify(states) {
            debug!(self.log, "sd_notify failed"; "error" => %err);
        }
    }

    pub fn ready(&mut self, status: String) {
        self.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
        self.last_status = status;
    }

    /// Updates `STATUS=` when the summary changed.
    pub fn status(&mut self, status: String) {
        if status != self.last_status {
            self.send(&[NotifyState::Status(&status)]);
            self.last_status = status;
        }
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }
}
