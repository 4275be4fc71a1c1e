//! The writing end of a channel.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::Path;

use crate::attachment::{AttachOptions, Attachment, Rings};
use crate::error::{Error, Result, TrySendError};
use crate::fanout::FanoutWriter;
use crate::ring::{RingError, RingWriter};
use crate::wire::Role;
use crate::zero_copy::{Loan, LoanSlot};

/// Writes messages into a channel's ring. Obtained from [`Client::producer`](crate::Client::producer).
///
/// Messages are delivered whole and in order. `send` blocks while the ring is full (back
/// pressure from a slow consumer, or no consumer at all); `try_send` returns
/// [`TrySendError::Full`] instead, after which [`ready_fd`](Self::ready_fd) becomes readable once
/// the consumer frees space, so a producer can sit in epoll/tokio.
///
/// [`close`](Self::close) writes the end-of-stream mark after the last message: it means "the
/// producer finished". A producer dropped without `close` (an error path, a panic) writes no
/// mark, just like one that is killed; in a one-to-one channel the broker tells the consumer,
/// which gets [`Error::ProducerGone`] after the last message instead of an end-of-stream.
///
/// In a channel with several consumers (`max_consumers > 1`) every message goes to each
/// consumer attached at the time, through a ring per consumer; what happens when one of them
/// is full is the channel's slow-consumer policy (wait, drop for that consumer, or disconnect
/// it). With no consumer attached, messages go nowhere.
pub struct Producer {
    attachment: Attachment,
    route: Route,
}

/// Where messages go: the one ring of a one-to-one channel, or every consumer's ring.
enum Route {
    Single(RingWriter),
    Fanout(FanoutWriter),
}

impl Producer {
    pub(crate) fn attach(socket: &Path, channel: &str, options: AttachOptions) -> Result<Producer> {
        let (attachment, rings) = Attachment::open(socket, channel, Role::Producer, options)?;
        let route = match rings {
            Rings::Single(ring) => {
                Route::Single(RingWriter::new(ring).map_err(|e| Error::ring(channel, e))?)
            }
            Rings::Fanout { control, lanes } => {
                Route::Fanout(FanoutWriter::new(&attachment, control, lanes)?)
            }
        };
        Ok(Producer { attachment, route })
    }

    /// One-to-one channels: the published write position, a byte counter just past the last
    /// message or mark the consumer can see; it only grows (`None` in a fan-out channel).
    pub fn position(&self) -> Option<u64> {
        match &self.route {
            Route::Single(writer) => Some(writer.position()),
            Route::Fanout(_) => None,
        }
    }

    /// This producer's id in its channel: what consumers' [`last_producer`] reports.
    ///
    /// [`last_producer`]: crate::Consumer::last_producer
    pub fn id(&self) -> u32 {
        self.attachment.info.id
    }

    /// Consumers this producer writes to (as of its last call); 1 in a one-to-one channel.
    pub fn consumers(&self) -> usize {
        match &self.route {
            Route::Single(_) => 1,
            Route::Fanout(fanout) => fanout.consumers(),
        }
    }

    /// The channel's name.
    pub fn channel(&self) -> &str {
        &self.attachment.channel
    }

    /// False while the broker is away (stopped, crashing, restarting). Data keeps flowing; with
    /// [`reconnect`](crate::Attach::reconnect) the endpoint re-attaches when it is back.
    pub fn broker_connected(&self) -> bool {
        self.attachment.broker_connected()
    }

    /// Ring data bytes.
    pub fn capacity(&self) -> u64 {
        self.attachment.info.capacity
    }

    /// Largest message this channel carries.
    pub fn max_message_len(&self) -> usize {
        crate::ring::max_message_len(self.capacity()) as usize
    }

    /// Sends one message, blocking while the ring is full.
    pub fn send(&mut self, message: &[u8]) -> Result<()> {
        self.send_with(message.len(), |buf| buf.copy_from_slice(message))
    }

    /// Sends one message or returns [`TrySendError::Full`] if the ring is full right now.
    pub fn try_send(&mut self, message: &[u8]) -> Result<(), TrySendError> {
        self.try_send_with(message.len(), |buf| buf.copy_from_slice(message))
    }

    /// Sends all `messages` in order, blocking while the ring is full. Messages that fit are
    /// made visible together with one publish (and at most one wake-up), which is what makes
    /// small messages fast.
    pub fn send_batch(&mut self, messages: &[&[u8]]) -> Result<()> {
        if let Route::Fanout(fanout) = &mut self.route {
            return fanout
                .deliver(&mut self.attachment, messages, true)
                .map(|_| ());
        }
        let mut rest = messages;
        while let Some(first) = rest.first() {
            let sent = self.blocking(first.len(), |w| batch_step(w, rest))?;
            rest = &rest[sent..];
        }
        Ok(())
    }

    /// Sends as many of `messages` as fit now (at least one, else [`TrySendError::Full`]) and
    /// returns how many.
    pub fn try_send_batch(&mut self, messages: &[&[u8]]) -> Result<usize, TrySendError> {
        if let Route::Fanout(fanout) = &mut self.route {
            loop {
                match fanout.deliver(&mut self.attachment, messages, false)? {
                    0 if !messages.is_empty() => {}
                    sent => return Ok(sent),
                }
                if self.attachment.options.busy_poll || !self.attachment.read_broker_events() {
                    return Err(TrySendError::Full);
                }
            }
        }
        match messages.first() {
            None => Ok(0),
            Some(first) => self.non_blocking(first.len(), |w| batch_step(w, messages)),
        }
    }

    /// Zero-copy send: `fill` writes the `len`-byte message straight into the shared ring.
    /// Blocks while the ring is full; `fill` is called exactly once.
    ///
    /// In a fan-out channel this is a [`loan`](Self::loan): in the ring with one consumer, in a
    /// private buffer copied to each ring with several (see [`Loan`]). The buffer is not
    /// zeroed: `fill` must write all of it.
    pub fn send_with(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) -> Result<()> {
        if let Route::Fanout(_) = &self.route {
            let mut loan = self.loan(len)?;
            fill(&mut loan);
            return loan.send();
        }
        let mut fill = Some(fill);
        self.blocking(len, |w| fixed_step(w, len, &mut fill))
    }

    /// Zero-copy send of a message whose length is known only once it is written: waits for
    /// room for `max` bytes, lets `fill` write straight into the ring and return the length it
    /// used, and publishes that much. Returns the length; 0 means `fill` wrote nothing and no
    /// message was sent (unless `max` is 0, which sends an empty message). This is how
    /// `shmemctl send` reads its input straight into the ring:
    ///
    /// ```no_run
    /// # use std::io::Read;
    /// # let client = shmem_broker_client::Client::connect_default()?;
    /// # let mut producer = client.producer("logs")?;
    /// let mut input = std::io::stdin().lock();
    /// while producer.send_up_to(64 * 1024, |buf| input.read(buf).unwrap_or(0))? > 0 {}
    /// producer.close()?;
    /// # Ok::<(), shmem_broker_client::Error>(())
    /// ```
    pub fn send_up_to(
        &mut self,
        max: usize,
        fill: impl FnOnce(&mut [u8]) -> usize,
    ) -> Result<usize> {
        if let Route::Fanout(fanout) = &mut self.route {
            return fanout.deliver_filled(&mut self.attachment, max, fill);
        }
        let mut fill = Some(fill);
        self.blocking(max, |w| {
            w.try_write_up_to(max, |buf| fill.take().map_or(0, |fill| fill(buf)))
        })
    }

    /// Zero-copy send that returns [`TrySendError::Full`] instead of blocking.
    pub fn try_send_with(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(), TrySendError> {
        if let Route::Fanout(_) = &self.route {
            let mut loan = self.try_loan(len)?;
            fill(&mut loan);
            return Ok(loan.send()?);
        }
        let mut fill = Some(fill);
        self.non_blocking(len, |w| fixed_step(w, len, &mut fill))
    }

    /// Lends a writable `len`-byte message in the shared ring (zero-copy), waiting while there
    /// is no room; [`Loan::send`] publishes it, dropping the loan sends nothing. The bytes are
    /// not zeroed: they hold whatever earlier messages left there, so write all of them. See
    /// [`Loan`] for where the bytes are (in a fan-out channel with several consumers, a
    /// private buffer copied at send) and why handing them out is sound.
    ///
    /// ```no_run
    /// # let client = shmem_broker_client::Client::connect_default()?;
    /// # let mut producer = client.producer("frames")?;
    /// let mut loan = producer.loan(4)?;
    /// loan.copy_from_slice(b"ping");
    /// loan.send()?;
    /// # Ok::<(), shmem_broker_client::Error>(())
    /// ```
    pub fn loan(&mut self, len: usize) -> Result<Loan<'_>> {
        let slot = self.reserve(len)?;
        Ok(Loan::new(self, slot, len))
    }

    /// [`loan`](Self::loan) that returns [`TrySendError::Full`] instead of waiting, after
    /// which [`ready_fd`](Self::ready_fd) turns readable when there may be room.
    pub fn try_loan(&mut self, len: usize) -> Result<Loan<'_>, TrySendError> {
        let slot = self.try_reserve(len)?;
        Ok(Loan::new(self, slot, len))
    }

    /// Makes room for a loan, waiting as `send` does.
    fn reserve(&mut self, len: usize) -> Result<LoanSlot> {
        if let Route::Fanout(fanout) = &mut self.route {
            return loop {
                if let Some(loan) = fanout.reserve(&mut self.attachment, len, true)? {
                    break Ok(LoanSlot::Fanout(loan));
                }
            };
        }
        self.blocking(len, |w| w.try_reserve(len))
            .map(LoanSlot::Ring)
    }

    /// Makes room for a loan now, or reports [`TrySendError::Full`] with the wake-up armed.
    pub(crate) fn try_reserve(&mut self, len: usize) -> Result<LoanSlot, TrySendError> {
        if let Route::Fanout(fanout) = &mut self.route {
            loop {
                if let Some(loan) = fanout.reserve(&mut self.attachment, len, false)? {
                    return Ok(LoanSlot::Fanout(loan));
                }
                if self.attachment.options.busy_poll || !self.attachment.read_broker_events() {
                    return Err(TrySendError::Full);
                }
            }
        }
        self.non_blocking(len, |w| w.try_reserve(len))
            .map(LoanSlot::Ring)
    }

    /// Publishes a loan of `len` bytes and wakes the consumer(s) if they sleep.
    pub(crate) fn publish_loan(&mut self, slot: LoanSlot, len: usize) -> Result<()> {
        match (&mut self.route, slot) {
            (Route::Fanout(fanout), LoanSlot::Fanout(loan)) => {
                fanout.publish_loan(&mut self.attachment, loan, len)
            }
            (Route::Single(writer), LoanSlot::Ring(_)) => {
                let sent = writer
                    .commit_reserved(len)
                    .map_err(|e| Error::ring(&self.attachment.channel, e));
                if writer.take_consumer_waiting() {
                    self.attachment.wake_peer();
                }
                sent
            }
            _ => Err(Error::Protocol(
                "a loan was sent through a route it was not made on".into(),
            )),
        }
    }

    /// Forgets a loan: nothing is published.
    pub(crate) fn abandon_loan(&mut self, slot: LoanSlot) {
        match (&mut self.route, slot) {
            (Route::Fanout(fanout), LoanSlot::Fanout(loan)) => fanout.abandon_loan(loan),
            (Route::Single(writer), LoanSlot::Ring(_)) => writer.abandon_reserved(),
            _ => {}
        }
    }

    /// The bytes of a loan in the fan-out scratch buffer, to read.
    pub(crate) fn scratch(&self, len: usize) -> &[u8] {
        match &self.route {
            Route::Fanout(fanout) => fanout.scratch(len),
            // Scratch loans are made by fan-out routes only.
            Route::Single(_) => &[],
        }
    }

    /// The bytes of a loan in the fan-out scratch buffer.
    pub(crate) fn scratch_mut(&mut self, len: usize) -> &mut [u8] {
        match &mut self.route {
            Route::Fanout(fanout) => fanout.scratch_mut(len),
            // Scratch loans are made by fan-out routes only.
            Route::Single(_) => &mut [],
        }
    }

    /// One attempt: checks the channel is still usable, runs `write` on the ring (`None`: no
    /// room), and wakes a consumer that went to sleep. Even a refused write may have published
    /// padding, so the wake-up check follows every attempt (publish, fence, flag).
    fn step<T>(
        &mut self,
        write: impl FnOnce(&mut RingWriter) -> Result<Option<T>, RingError>,
    ) -> Result<Option<T>> {
        let writer = single(&mut self.route)?;
        self.attachment.ensure_usable(writer.ring().is_dropped())?;
        let written = write(writer).map_err(|e| Error::ring(&self.attachment.channel, e))?;
        if writer.take_consumer_waiting() {
            self.attachment.wake_peer();
        }
        Ok(written)
    }

    /// Attempts until `write` succeeds, sleeping while there is no room for `needed` bytes.
    fn blocking<T>(
        &mut self,
        needed: usize,
        mut write: impl FnMut(&mut RingWriter) -> Result<Option<T>, RingError>,
    ) -> Result<T> {
        loop {
            if let Some(done) = self.step(&mut write)? {
                return Ok(done);
            }
            self.wait_for_room(needed)?;
        }
    }

    /// One attempt, or [`TrySendError::Full`] after arming the wake-up so `ready_fd()` turns
    /// readable when room appears (not for busy pollers). If room appeared while arming, the
    /// attempt is made again instead.
    fn non_blocking<T>(
        &mut self,
        needed: usize,
        mut write: impl FnMut(&mut RingWriter) -> Result<Option<T>, RingError>,
    ) -> Result<T, TrySendError> {
        loop {
            if let Some(done) = self.step(&mut write)? {
                return Ok(done);
            }
            if self.attachment.options.busy_poll {
                return Err(TrySendError::Full);
            }
            // A broker event read now is acted on by the next attempt; none may stay unread,
            // or `ready_fd()` would stay readable.
            if self.attachment.read_broker_events() {
                continue;
            }
            if self.arm(needed)? {
                return Err(TrySendError::Full);
            }
        }
    }

    /// Asks the consumer to signal `ready_fd()` when it frees space; false if room for
    /// `needed` bytes appeared meanwhile.
    fn arm(&mut self, needed: usize) -> Result<bool> {
        self.attachment.drain_wakeups();
        single(&mut self.route)?
            .prepare_to_sleep(needed)
            .map_err(|e| Error::ring(&self.attachment.channel, e))
    }

    fn wait_for_room(&mut self, len: usize) -> Result<()> {
        let Route::Single(writer) = &mut self.route else {
            return Ok(());
        };
        if Attachment::spin(|| writer.can_progress(len).unwrap_or(true)) {
            return Ok(());
        }
        if self.arm(len)? {
            let slept = self.attachment.sleep();
            single(&mut self.route)?.done_sleeping();
            slept?;
        }
        let dropped = single(&mut self.route)?.ring().is_dropped();
        self.attachment.ensure_usable(dropped)
    }

    /// Writes the end-of-stream mark (waiting for room if needed; in a fan-out channel only
    /// under policy `block`) and detaches.
    pub fn close(mut self) -> Result<()> {
        if let Route::Fanout(fanout) = &mut self.route {
            return fanout.close(&mut self.attachment);
        }
        self.blocking(0, |w| Ok(w.try_write_end_of_stream()?.then_some(())))
    }

    /// An fd that becomes readable when a `try_send` that returned [`TrySendError::Full`] may
    /// return something else: a consumer freed space, a consumer came or went, the channel was
    /// dropped, the broker went away (and, with [`reconnect`](crate::Attach::reconnect), now
    /// and then while it is away, to re-attach). Register it for readability (level- or
    /// edge-triggered: each such event makes it readable anew); on wake-up, call `try_send`
    /// again. A `try_send` that reports would-block leaves it quiet. It is an epoll instance:
    /// read nothing from it yourself.
    pub fn ready_fd(&self) -> BorrowedFd<'_> {
        self.attachment.ready_fd()
    }

    /// Attached with `busy_poll`: a would-block asks the peer for no wake-up.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn busy_poll(&self) -> bool {
        self.attachment.options.busy_poll
    }
}

/// The ring of a one-to-one channel (every fan-out path returns before asking for it).
fn single(route: &mut Route) -> Result<&mut RingWriter> {
    match route {
        Route::Single(writer) => Ok(writer),
        Route::Fanout(_) => Err(Error::Protocol(
            "one-to-one send path used on a fan-out channel".into(),
        )),
    }
}

/// A fixed-length message whose bytes `fill` writes (called at most once).
fn fixed_step(
    writer: &mut RingWriter,
    len: usize,
    fill: &mut Option<impl FnOnce(&mut [u8])>,
) -> Result<Option<()>, RingError> {
    let written = writer.try_write_with(len, |buf| {
        if let Some(fill) = fill.take() {
            fill(buf)
        }
    })?;
    Ok(written.then_some(()))
}

/// As many of `messages` as fit (`None` if not even the first does).
fn batch_step(writer: &mut RingWriter, messages: &[&[u8]]) -> Result<Option<usize>, RingError> {
    let sent = writer.try_write_batch(messages)?;
    Ok((sent > 0).then_some(sent))
}

impl AsRawFd for Producer {
    fn as_raw_fd(&self) -> RawFd {
        self.ready_fd().as_raw_fd()
    }
}

impl AsFd for Producer {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ready_fd()
    }
}
