//! The writing end of a channel: the public API over its lanes ([`LaneWriter`]).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::Path;

use crate::attachment::{AttachOptions, Attachment};
use crate::copy::copy_slice;
use crate::error::{Result, TrySendError};
use crate::lane_writer::{LaneWriter, LoanSlot};
use crate::ring::MessageBytes;
use crate::wire::Role;
use crate::zero_copy::Loan;

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
    /// Where messages go: one lane (ring) per consumer, one in a one-to-one channel.
    writer: LaneWriter,
}

impl Producer {
    pub(crate) fn attach(socket: &Path, channel: &str, options: AttachOptions) -> Result<Producer> {
        let (attachment, rings) = Attachment::open(socket, channel, Role::Producer, options)?;
        let writer = LaneWriter::new(&attachment, rings)?;
        Ok(Producer { attachment, writer })
    }

    /// One-to-one channels: the published write position, a byte counter just past the last
    /// message or mark the consumer can see; it only grows (`None` in a fan-out channel).
    pub fn position(&self) -> Option<u64> {
        self.writer.position()
    }

    /// This producer's id in its channel: what consumers' [`last_producer`] reports.
    ///
    /// [`last_producer`]: crate::Consumer::last_producer
    pub fn id(&self) -> u32 {
        self.attachment.info.id
    }

    /// Consumers this producer writes to (as of its last call); 1 in a one-to-one channel.
    pub fn consumers(&self) -> usize {
        self.writer.consumers()
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
    // Inlined into the caller: the C binding's `shmem_send` then makes one call per message.
    #[inline]
    pub fn send(&mut self, message: &[u8]) -> Result<()> {
        self.send_with(message.len(), |buf| copy_slice(buf, message))
    }

    /// Sends one message or returns [`TrySendError::Full`] if the ring is full right now.
    pub fn try_send(&mut self, message: &[u8]) -> Result<(), TrySendError> {
        self.try_send_with(message.len(), |buf| copy_slice(buf, message))
    }

    /// Sends all `messages` in order, blocking while the ring is full. Messages that fit are
    /// made visible together with one publish (and at most one wake-up), which is what makes
    /// small messages fast.
    pub fn send_batch(&mut self, messages: &[&[u8]]) -> Result<()> {
        self.writer
            .deliver(&mut self.attachment, messages, true)
            .map(drop)
    }

    /// Sends as many of `messages` as fit now (at least one, else [`TrySendError::Full`]) and
    /// returns how many.
    pub fn try_send_batch(&mut self, messages: &[&[u8]]) -> Result<usize, TrySendError> {
        if messages.is_empty() {
            return Ok(0);
        }
        self.non_blocking(|writer, attachment| {
            let sent = writer.deliver(attachment, messages, false)?;
            Ok((sent > 0).then_some(sent))
        })
    }

    /// One-to-one channels: the write position once `messages` are sent from here, as
    /// [`try_send_all`](Self::try_send_all) or sends one by one leave it (padding included
    /// where a message must start a new lap of the ring). `None` in a fan-out channel or if a
    /// message can never fit. A producer that records this before sending knows afterwards,
    /// from [`position`](Self::position) alone, whether the messages got in: only once the
    /// position reaches it (an earlier position moved only by padding means they did not).
    pub fn end_position<M: MessageBytes>(&self, messages: &[M]) -> Option<u64> {
        self.writer.end_position(messages)
    }

    /// One-to-one channels: sends all of `messages` with one publish if they all fit right
    /// now, else sends none and publishes nothing, not even padding (`Ok(false)`; wait for
    /// [`ready_fd`](Self::ready_fd) or send fewer): the consumer, and a producer that looks
    /// at [`position`](Self::position) after a crash, sees all of them or none.
    /// [`Error::Unsupported`] in a fan-out channel. Messages that need more than the ring's
    /// capacity together never fit at once. Each message is one slice (`&[u8]`) or several
    /// written one after the other (`&[&[u8]]`, see [`MessageBytes`]): a message received in
    /// fragments goes into the ring without being gathered into one buffer first.
    pub fn try_send_all<M: MessageBytes>(&mut self, messages: &[M]) -> Result<bool> {
        self.writer.deliver_all(&mut self.attachment, messages)
    }

    /// Zero-copy send: `fill` writes the `len`-byte message straight into the shared ring.
    /// Blocks while the ring is full; `fill` is called exactly once.
    ///
    /// In a fan-out channel with several consumers `fill` writes a private buffer copied to
    /// each ring (see [`Loan`]). The buffer is not zeroed: `fill` must write all of it.
    pub fn send_with(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) -> Result<()> {
        let fill = |buf: &mut [u8]| {
            fill(buf);
            len
        };
        self.writer
            .write_up_to(&mut self.attachment, len, fill, true)
            .map(drop)
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
        let sent = self
            .writer
            .write_up_to(&mut self.attachment, max, fill, true)?;
        // A blocking write always ends with the message sent.
        Ok(sent.unwrap_or(0))
    }

    /// Zero-copy send that returns [`TrySendError::Full`] instead of blocking.
    pub fn try_send_with(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(), TrySendError> {
        // Called at most once: only the attempt that sends calls it.
        let mut fill = Some(fill);
        self.non_blocking(|writer, attachment| {
            let fill = |buf: &mut [u8]| {
                if let Some(fill) = fill.take() {
                    fill(buf);
                }
                len
            };
            Ok(writer.write_up_to(attachment, len, fill, false)?.map(drop))
        })
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
        let slot = loop {
            if let Some(slot) = self.writer.reserve(&mut self.attachment, len, true)? {
                break slot;
            }
        };
        Ok(Loan::new(self, slot, len))
    }

    /// [`loan`](Self::loan) that returns [`TrySendError::Full`] instead of waiting, after
    /// which [`ready_fd`](Self::ready_fd) turns readable when there may be room.
    pub fn try_loan(&mut self, len: usize) -> Result<Loan<'_>, TrySendError> {
        let slot = self.try_reserve(len)?;
        Ok(Loan::new(self, slot, len))
    }

    /// Makes room for a loan now, or reports [`TrySendError::Full`] with the wake-up armed.
    pub(crate) fn try_reserve(&mut self, len: usize) -> Result<LoanSlot, TrySendError> {
        self.non_blocking(|writer, attachment| writer.reserve(attachment, len, false))
    }

    /// Publishes a loan of `len` bytes and wakes the consumer(s) if they sleep.
    pub(crate) fn publish_loan(&mut self, slot: LoanSlot, len: usize) -> Result<()> {
        self.writer.publish_loan(&mut self.attachment, slot, len)
    }

    /// Forgets a loan: nothing is published.
    pub(crate) fn abandon_loan(&mut self, slot: LoanSlot) {
        self.writer.abandon_loan(slot)
    }

    /// The bytes of a scratch loan, to read.
    pub(crate) fn scratch(&self, len: usize) -> &[u8] {
        self.writer.scratch(len)
    }

    /// The bytes of a scratch loan.
    pub(crate) fn scratch_mut(&mut self, len: usize) -> &mut [u8] {
        self.writer.scratch_mut(len)
    }

    /// Attempts until `attempt` succeeds or reports no room (`None`, with the wake-up armed
    /// so `ready_fd()` turns readable when room appears, except for busy pollers): then
    /// [`TrySendError::Full`]. A broker event read meanwhile is acted on by another attempt;
    /// none may stay unread, or `ready_fd()` would stay readable.
    fn non_blocking<T>(
        &mut self,
        mut attempt: impl FnMut(&mut LaneWriter, &mut Attachment) -> Result<Option<T>>,
    ) -> Result<T, TrySendError> {
        loop {
            if let Some(done) = attempt(&mut self.writer, &mut self.attachment)? {
                return Ok(done);
            }
            if self.attachment.options.busy_poll || !self.attachment.read_broker_events() {
                return Err(TrySendError::Full);
            }
        }
    }

    /// Writes the end-of-stream mark (waiting for room if needed; in a fan-out channel only
    /// under policy `block`) and detaches.
    pub fn close(mut self) -> Result<()> {
        self.writer.close(&mut self.attachment)
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
