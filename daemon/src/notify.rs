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

    /// `RELOADING=1` with the timestamp systemd (253+) requires; `ready` ends the reload.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[
                NotifyState::Reloading,
                now,
                NotifyState::Status("reloading config"),
            ]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }
}
