//! What the event loop does besides serving requests: every half second, closing stalled
//! connections and consumers evicted for being slow; after every round, telling `monitor`
//! connections what happened; and handing queued events to the sessions they are for.

use std::time::Instant;

use shmem_broker_proto::wire::Event;
use slog::warn;

use super::Server;
use crate::channel::{Notice, SessionId};
use crate::logging::{SUPPRESSED_TAG, SUPPRESSION_WINDOW};

/// What a `monitor` connection may have queued before it is left out of events.
const MONITOR_QUEUE_BYTES: usize = 256 * 1024;

impl Server {
    /// Hands what happened to the `monitor` connections that may see it. Each has a bounded
    /// queue: one that does not read is left out of events (and told how many, once it has
    /// caught up) instead of making the broker buffer without end; the loop never waits on it.
    pub(super) fn tell_monitors(&mut self) {
        let events = self.registry.take_watched();
        if events.is_empty() {
            return;
        }
        let mut woken = Vec::new();
        for session in self.sessions.values_mut() {
            let Some(only) = session.monitor.as_ref().map(|w| w.channel.clone()) else {
                continue;
            };
            let mut told = false;
            for (event, owner) in &events {
                let channel = event.channel.as_deref();
                if only.is_some() && only.as_deref() != channel {
                    continue;
                }
                let visible = match channel {
                    Some(name) => self.registry.may_watch(name, *owner, &session.peer),
                    // Broker-wide events (a reload) are for admins.
                    None => self.registry.is_admin(&session.peer),
                };
                if !visible {
                    continue;
                }
                if session.queued_bytes() >= MONITOR_QUEUE_BYTES {
                    if let Some(watch) = &mut session.monitor {
                        watch.dropped = watch.dropped.saturating_add(1);
                    }
                    continue;
                }
                if let Some(watch) = &mut session.monitor {
                    let count = std::mem::take(&mut watch.dropped);
                    if count > 0 {
                        session.queue_event(&Event::MonitorDropped { count }, Vec::new());
                    }
                }
                session.queue_event(&Event::Monitor(event.clone()), Vec::new());
                told = true;
            }
            if told {
                woken.push(session.id);
            }
        }
        for id in woken {
            self.drive(id);
        }
    }

    /// Closes connections that never completed a request, or left one half-sent, within
    /// `request_timeout`. Clients that are attached or merely idle between requests stay.
    pub(super) fn expire_stalled(&mut self) {
        let now = Instant::now();
        let timeout = self.request_timeout;
        let stalled: Vec<SessionId> = self
            .sessions
            .values()
            .filter(|s| {
                s.stalled_since()
                    .is_some_and(|since| now.duration_since(since) >= timeout)
            })
            .map(|s| s.id)
            .collect();
        for id in stalled {
            if let Some(session) = self.sessions.remove(&id) {
                warn!(self.log, "closing connection: no complete request within request_timeout";
                    "request_timeout_ms" => timeout.as_millis() as u64,
                    "peer_pid" => session.peer.pid, "peer_uid" => session.peer.uid);
                self.close(session);
            }
        }
        self.registry.expire_rate_state(now);
    }

    /// Policy `disconnect`: tells consumers a producer gave up on why, and closes their
    /// connections once that is written.
    pub(super) fn disconnect_slow_consumers(&mut self) {
        let (notices, sessions) = self.registry.evict_slow_consumers();
        for session in &sessions {
            if let Some(session) = self.sessions.get_mut(session) {
                session.attached = None;
            }
        }
        self.deliver(notices);
        for id in sessions {
            if let Some(session) = self.sessions.get_mut(&id) {
                session.closing = true;
            }
            self.drive(id);
        }
    }

    /// Queues events for sessions not being served right now and sends them.
    pub(super) fn deliver(&mut self, notices: Vec<Notice>) {
        let mut woken = Vec::new();
        for (target, event, fds) in notices {
            if let Some(session) = self.sessions.get_mut(&target) {
                if !session.understands(&event) {
                    continue;
                }
                session.queue_event(&event, fds);
                woken.push(target);
            }
        }
        woken.dedup();
        for id in woken {
            self.drive(id);
        }
    }

    /// One line for the warnings the log held back for `uid` (see `logging::guard::PeerBudgets`).
    pub(super) fn report_suppressed(&self, uid: u32, count: u64) {
        warn!(self.log, #SUPPRESSED_TAG, "suppressed repeated warnings caused by one peer uid";
            "suppressed" => count, "peer_uid" => uid,
            "window_secs" => SUPPRESSION_WINDOW.as_secs());
    }
}
