//! The lanes of an endpoint, the one shape every channel has on the client side: a lane is one
//! ring (single-producer single-consumer) and the eventfd that wakes the peer at its other end.
//! A one-to-one channel is one lane and no control page (its wake fd is the attach reply's
//! `data_ready` for a producer, `space_ready` for a consumer); a fan-out channel is the same
//! with a lane per peer, kept in step with the broker through the control page's counters and
//! lane events. Here live the one routine that waits for a lane (spin, arm, sleep), the one
//! that wakes a peer, and the one message-size check.

use std::ops::Range;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use crate::attachment::Attachment;
use crate::control::ControlPage;
use crate::error::{Error, Result};
use crate::grant::LaneOrFault;
use crate::ring::{RingError, RingReader, RingWriter, SharedRing};
use crate::wire::{Event, Role};

/// How long to spin on the ring before sleeping. A wake-up through an eventfd costs tens of
/// microseconds here, so a peer that answers within this window never pays for one.
const SPIN: Duration = Duration::from_micros(30);
const SPIN_BEFORE_YIELDING: Duration = Duration::from_micros(5);

/// The peer id of the one lane of a one-to-one channel (whose attach reply names no peers).
pub(crate) const SOLE_PEER: u32 = 0;

/// Our end of a lane's ring: what the shared lane code needs of a writer or a reader.
pub(crate) trait End: Sized {
    /// `can_resume` can say yes where the operation then finds nothing (a reader's quick
    /// poll trusts a frame's seal; the read checks the positions), so a wait after such a
    /// false alarm skips the spin (see `Lanes::wait`). A writer's answer is exact.
    const SPIN_MAY_MISLEAD: bool;
    /// Takes the ring as this side.
    fn open(ring: SharedRing) -> std::result::Result<Self, RingError>;
    /// After an operation: true if the peer asked to be woken by it (and must be now).
    fn take_peer_waiting(&mut self) -> bool;
    /// What the spin before sleeping waits for: true if an operation needing `needed` bytes
    /// (room for a writer; a reader needs none) should go on now, or if the ring cannot be
    /// made sense of (the next operation reports it). A writer waits for a chunk of room,
    /// not just `needed` ([`RingWriter::can_resume`]); the sleep that follows a spin in vain
    /// takes any room (`prepare_to_sleep`).
    fn can_resume(&mut self, needed: usize) -> bool;
    /// Sets this side's waiting flag; false (do not sleep) if progress became possible.
    fn prepare_to_sleep(&mut self, needed: usize) -> std::result::Result<bool, RingError>;
    /// Withdraws the waiting flag.
    fn done_sleeping(&self);
    /// The ring this end maps.
    fn ring(&self) -> &SharedRing;
}

impl End for RingWriter {
    const SPIN_MAY_MISLEAD: bool = false;
    fn open(ring: SharedRing) -> std::result::Result<Self, RingError> {
        RingWriter::new(ring)
    }
    // Once per sent message: inlined into the caller's send, as the reader's is.
    #[inline]
    fn take_peer_waiting(&mut self) -> bool {
        self.take_consumer_waiting()
    }
    fn can_resume(&mut self, needed: usize) -> bool {
        RingWriter::can_resume(self, needed).unwrap_or(true)
    }
    fn prepare_to_sleep(&mut self, needed: usize) -> std::result::Result<bool, RingError> {
        RingWriter::prepare_to_sleep(self, needed)
    }
    fn done_sleeping(&self) {
        RingWriter::done_sleeping(self)
    }
    fn ring(&self) -> &SharedRing {
        RingWriter::ring(self)
    }
}

impl End for RingReader {
    const SPIN_MAY_MISLEAD: bool = true;
    fn open(ring: SharedRing) -> std::result::Result<Self, RingError> {
        RingReader::new(ring)
    }
    // Once per received message: inlined into the caller's receive, in whatever crate.
    #[inline]
    fn take_peer_waiting(&mut self) -> bool {
        self.take_producer_waiting()
    }
    fn can_resume(&mut self, _: usize) -> bool {
        self.has_unread()
    }
    fn prepare_to_sleep(&mut self, _: usize) -> std::result::Result<bool, RingError> {
        RingReader::prepare_to_sleep(self)
    }
    fn done_sleeping(&self) {
        RingReader::done_sleeping(self)
    }
    fn ring(&self) -> &SharedRing {
        RingReader::ring(self)
    }
}

/// One ring of an endpoint and how to wake the peer at its other end.
pub(crate) struct Lane<E> {
    /// Producer id (for a consumer) or consumer queue id (for a producer); [`SOLE_PEER`] in
    /// a one-to-one channel.
    pub id: u32,
    pub end: E,
    wake: OwnedFd,
    /// Producers, policy `drop`: messages this consumer missed and has not been told of yet.
    pub missed: u64,
    /// Producers: this consumer is still to get the messages being delivered.
    pub pending: bool,
    /// Consumers: the ring's `producers_gone` count (its ack page) up to which the broker's
    /// `producer_gone` events have been read, or that was there when the lane was opened
    /// (events counted before then came with the attach or a lane event already read).
    pub gone_known: u64,
    /// Consumers: since when this lane is not read because its count announced a
    /// `producer_gone` event that has not come yet (see `LaneReader::held_for_gone`).
    pub gone_wait: Option<Instant>,
}

impl<E: End> Lane<E> {
    /// Wakes the peer (the one wake routine). EAGAIN means the counter is already huge, i.e.
    /// the peer has a wake-up pending. Out of line: the per-message check below is inlined.
    #[inline(never)]
    pub fn wake(&self) {
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }

    /// After an operation on the ring (publish, fence, flag): wakes the peer if it sleeps.
    /// Runs once per message on each side: inlined (a flag load and a compare).
    #[inline(always)]
    pub fn wake_if_waiting(&mut self) {
        if self.end.take_peer_waiting() {
            self.wake();
        }
    }
}

/// Which lanes a wait is for.
#[derive(Clone, Copy)]
pub(crate) enum Which {
    /// Any lane making progress will do (a consumer waiting for a message).
    All,
    /// Only this one (a producer waiting for room in one consumer's ring).
    One(usize),
}

/// A ring operation that failed: in lane `index` (the caller decides what that costs), or for
/// the endpoint as a whole.
pub(crate) enum Fault {
    Lane(usize, RingError),
    Endpoint(Error),
}

/// The lanes of one endpoint.
pub(crate) struct Lanes<E> {
    /// Fan-out channels only: the page whose counters say the lanes changed.
    control: Option<ControlPage>,
    role: Role,
    generation: u64,
    pub list: Vec<Lane<E>>,
    /// Lanes whose ring could not be opened (a peer scribbled its header or positions), with
    /// why: skipped, like a ring found corrupt later, and reported once by a consumer. One bad
    /// ring must not fail the endpoint, or its peer could lock everyone out of the channel.
    pub unopened: Vec<(u32, String)>,
    /// The last spin saw progress that the operation after it did not make (a glimpse of a
    /// ring that is corrupt, say): the next wait goes straight to the exact check before
    /// sleeping, which reports it, instead of spinning on it again.
    spin_misled: bool,
}

impl<E: End> Lanes<E> {
    pub fn new(
        attachment: &Attachment,
        control: Option<ControlPage>,
        role: Role,
        lanes: Vec<LaneOrFault>,
    ) -> Result<Lanes<E>> {
        let one_to_one = control.is_none();
        let mut members = Lanes {
            control,
            role,
            generation: attachment.info.generation,
            list: Vec::new(),
            unopened: Vec::new(),
            spin_misled: false,
        };
        for lane in lanes {
            match lane {
                // The one lane of a one-to-one channel is all there is: its fault is the
                // endpoint's.
                Ok(lane) if one_to_one => {
                    let end =
                        E::open(lane.ring).map_err(|e| Error::ring(&attachment.channel, e))?;
                    members.push(lane.peer, end, lane.wake);
                }
                lane => members.add(lane),
            }
        }
        Ok(members)
    }

    fn push(&mut self, id: u32, end: E, wake: OwnedFd) {
        let gone_known = end.ring().producers_gone_announced();
        self.list.push(Lane {
            id,
            end,
            wake,
            missed: 0,
            pending: false,
            gone_known,
            gone_wait: None,
        });
    }

    /// A fan-out channel: lanes come and go, and a fault in one costs that lane only (in a
    /// one-to-one channel it is the endpoint's error, as the lane is all there is).
    pub fn fanout(&self) -> bool {
        self.control.is_some()
    }

    /// Takes a lane the broker handed over, or notes why it could not be opened.
    fn add(&mut self, lane: LaneOrFault) {
        let lane = match lane {
            Ok(lane) => lane,
            Err(unopened) => {
                self.list.retain(|p| p.id != unopened.0);
                self.unopened.push(unopened);
                return;
            }
        };
        // The lane it replaces goes first: a ring has one writer per process at a time.
        self.list.retain(|p| p.id != lane.peer);
        match E::open(lane.ring) {
            Ok(end) => self.push(lane.peer, end, lane.wake),
            Err(err) => self.unopened.push((lane.peer, err.to_string())),
        }
    }

    /// Checks that the channel is usable and applies lane changes: what every operation does
    /// first. A drop is learned from the broker's event alone, never from a ring's `dropped`
    /// flag: since layout 3 that flag lies in the producer's memfd, so a hostile producer could
    /// set it and make its consumer (another user) give up on the channel. The event wakes a
    /// sleeper, and a busy endpoint sees it within the attachment's broker check interval.
    ///
    /// Always inlined, as are `ensure_usable` and the readers' and writers' `prepare` around
    /// it: this runs once per message on each side, and out of line the calls cost more than
    /// the checks (callgrind on `examples/pair_bench.rs`: about 40 instructions a message).
    #[inline(always)]
    pub fn prepare(&mut self, attachment: &mut Attachment) -> Result<()> {
        attachment.ensure_usable()?;
        let now = self
            .control
            .as_ref()
            .map_or(self.generation, |c| c.generation(self.role));
        if now != self.generation || attachment.has_lane_events() {
            self.refresh(attachment);
        }
        Ok(())
    }

    /// Applies the broker's lane events, the control page having said there are new ones or
    /// some having come already. Out of line: `prepare`, which runs once per message, checks
    /// both with one atomic load and one length.
    #[inline(never)]
    fn refresh(&mut self, attachment: &mut Attachment) {
        // Every event is applied once, whenever it arrives (each comes exactly once, and only
        // after the attach reply), even one that came later than the bump it belongs to.
        // Events newer than the page's generation may have been read already (the broker bumps the page, then
        // sends): once applied they count as seen, or the next change would wait for them.
        // Only applied events advance the generation: a bump whose event is not here yet (the
        // broker writes it right after the bump, and before it answers the attach behind it)
        // is looked for again at the next call, so a new consumer's ring is written from the
        // first message sent after its attach returned, by busy endpoints too.
        let mut newest = self.generation;
        for (event, fds) in attachment.take_lane_events() {
            match event {
                Event::LaneAdded { generation, peer } => {
                    let lane = attachment
                        .open_lane(peer, fds)
                        .map_err(|e| (peer, e.to_string()));
                    self.add(lane);
                    newest = newest.max(generation);
                }
                Event::LaneRemoved { generation, peer } => {
                    self.list.retain(|p| p.id != peer);
                    newest = newest.max(generation);
                }
                _ => {}
            }
        }
        self.generation = newest;
    }

    pub fn index_of(&self, id: u32) -> Option<usize> {
        self.list.iter().position(|p| p.id == id)
    }

    fn range(&self, which: Which) -> Range<usize> {
        match which {
            Which::All => 0..self.list.len(),
            Which::One(index) => {
                let len = self.list.len();
                index.min(len)..index.saturating_add(1).min(len)
            }
        }
    }

    /// An operation made progress: the next wait spins again.
    pub fn progressed(&mut self) {
        self.spin_misled = false;
    }

    /// The one wait: spins briefly until lane(s) `which` can make progress for `needed`
    /// bytes, else asks their peers for a wake-up and sleeps until one comes, the broker
    /// says something, or the sleep bound passes. The caller looks again either way.
    pub fn wait(
        &mut self,
        attachment: &mut Attachment,
        which: Which,
        needed: usize,
    ) -> std::result::Result<(), Fault> {
        let range = self.range(which);
        let lanes = &mut self.list[range];
        // A lane held for a `producer_gone` event has data that must not be read yet: the
        // wait is for the event (on the broker connection, which `sleep` watches).
        if !std::mem::take(&mut self.spin_misled)
            && spin(|| {
                lanes
                    .iter_mut()
                    .any(|l| l.gone_wait.is_none() && l.end.can_resume(needed))
            })
        {
            self.spin_misled = E::SPIN_MAY_MISLEAD;
            return Ok(());
        }
        if self.arm(attachment, which, needed)? {
            let slept = attachment.sleep();
            self.disarm(which);
            slept.map_err(Fault::Endpoint)?;
        }
        Ok(())
    }

    /// Asks the peers of lanes `which` to signal the endpoint's wait fd (and so `ready_fd()`)
    /// when they make progress; false (and nothing left armed) if progress became possible
    /// meanwhile. The wait fd is emptied first, never after a flag is set (which could
    /// swallow the wake-up for that very flag).
    pub fn arm(
        &mut self,
        attachment: &Attachment,
        which: Which,
        needed: usize,
    ) -> std::result::Result<bool, Fault> {
        attachment.drain_wakeups();
        for index in self.range(which) {
            // Held for a broker event (see `wait`): its data is there already, and the event
            // wakes `ready_fd()` through the broker connection.
            if self.list[index].gone_wait.is_some() {
                continue;
            }
            let armed = self.list[index].end.prepare_to_sleep(needed);
            match armed {
                Ok(true) => {}
                Ok(false) => {
                    self.disarm(which);
                    return Ok(false);
                }
                Err(err) => {
                    self.disarm(which);
                    return Err(Fault::Lane(index, err));
                }
            }
        }
        Ok(true)
    }

    pub fn disarm(&self, which: Which) {
        for lane in &self.list[self.range(which)] {
            lane.end.done_sleeping();
        }
    }
}

/// The one message-size check: a message of `len` bytes fits this channel's rings. Made before
/// any ring is touched, so it is refused the same with or without peers attached.
#[inline]
pub(crate) fn check_fits(attachment: &Attachment, len: usize) -> Result<()> {
    let capacity = attachment.info.capacity;
    let max = crate::ring::max_message_len(capacity);
    if len as u64 > max {
        return Err(Error::MessageTooLarge {
            channel: attachment.channel.clone(),
            len,
            max,
            capacity,
        });
    }
    Ok(())
}

/// Spins briefly until `ready()`; true if it became ready. After the first few microseconds
/// it yields the CPU between looks: a peer that answers at once is caught by the pure spin,
/// and one that is waiting for this very CPU (more busy processes than cores, as with a
/// producer and several consumers on a small machine) gets it.
fn spin(mut ready: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        for _ in 0..64 {
            if ready() {
                return true;
            }
            std::hint::spin_loop();
        }
        let spun = start.elapsed();
        if spun >= SPIN {
            return false;
        }
        if spun >= SPIN_BEFORE_YIELDING {
            std::thread::yield_now();
        }
    }
}
