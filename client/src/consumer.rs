//! The reading end of a channel: the public API over its lanes ([`LaneReader`]).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::Path;

use crate::attachment::{AttachOptions, Attachment};
use crate::error::{Error, Result, TryRecvError};
use crate::lane_reader::LaneReader;
use crate::ring::{
    AheadItem, BatchOutcome, Payload, Peeked, ReadItem, ReadOutcome, RingError, RingReader,
    SliceSink,
};
use crate::wire::Role;
use crate::zero_copy::{Held, Sample};

/// Reads messages from a channel's ring. Obtained from [`Client::consumer`](crate::Client::consumer).
///
/// A consumer starts at the oldest unread message, whoever read before it: a consumer that
/// detaches and a new one that attaches continue exactly where the first stopped. `recv`
/// returns `Ok(None)` at a producer's end-of-stream mark; calling it again waits for whatever a
/// later producer sends.
///
/// In a channel with several consumers (`max_consumers > 1`) each consumer has rings of its
/// own and receives every message written after it attached; an anonymous one starts at the
/// next message, a durable one ([`Attach::durable`](crate::Attach::durable)) where it
/// stopped. With several producers, their rings are read in turn, each producer's messages
/// in order; [`last_producer`](Self::last_producer) says whose message came last, and each
/// producer's end-of-stream mark is returned as one `Ok(None)`.
///
/// An end-of-stream mark means the producer finished: only [`Producer::close`] writes one. In a
/// one-to-one channel, a producer that went away without it (an error, a signal, a crash) is
/// reported once, after its last message, as [`Error::ProducerGone`](crate::Error::ProducerGone);
/// the next receive waits for the next producer.
///
/// [`Producer::close`]: crate::Producer::close A producer's ring that turns
/// out corrupt, or that its producer flags evicted without cause, costs that ring only: one
/// call returns [`Error::ProducerLost`](crate::Error::ProducerLost) naming the producer, and
/// the next ones read on from the others (that producer's end-of-stream will not come).
pub struct Consumer {
    attachment: Attachment,
    /// Where messages come from: one lane (ring) per producer, one in a one-to-one channel.
    reader: LaneReader,
    /// Private copy of the message a batch callback is looking at.
    scratch: Vec<u8>,
}

/// Where [`Consumer::recv_into_slice`] put a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Landed {
    /// In the caller's buffer: its first this many bytes.
    Buf(usize),
    /// In the spill vector, all of it: the buffer was too small.
    Spill,
}

impl Consumer {
    pub(crate) fn attach(socket: &Path, channel: &str, options: AttachOptions) -> Result<Consumer> {
        let (attachment, rings) = Attachment::open(socket, channel, Role::Consumer, options)?;
        let reader = LaneReader::new(&attachment, rings)?;
        Ok(Consumer {
            attachment,
            reader,
            scratch: Vec::new(),
        })
    }

    /// The id of the producer whose message (or end-of-stream mark) the last receive returned;
    /// `None` before the first, and always in a one-to-one channel.
    pub fn last_producer(&self) -> Option<u32> {
        self.reader.last_producer()
    }

    /// Messages this consumer missed since it attached because its ring was full (fan-out
    /// channels with `slow_consumer = "drop"`). Counted as the gaps are reached in the stream.
    pub fn missed(&self) -> u64 {
        self.reader.missed()
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

    /// Receives the next message, blocking until there is one. `Ok(None)` is end-of-stream.
    pub fn recv(&mut self) -> Result<Option<Vec<u8>>> {
        let mut message = Vec::new();
        Ok(self.recv_into(&mut message)?.then_some(message))
    }

    /// Receives the next message into `buf` (reusing its allocation). Returns false at
    /// end-of-stream.
    pub fn recv_into(&mut self, buf: &mut Vec<u8>) -> Result<bool> {
        if let Some(lane) = self.reader.fast_lane(&mut self.attachment)? {
            if lane.end.try_read_into_fast(buf) {
                lane.wake_if_waiting();
                let id = lane.id;
                self.reader.fast_read_done(id);
                return Ok(true);
            }
        }
        self.recv_into_slow(buf)
    }

    /// [`recv_into`](Self::recv_into) past its fast path.
    #[inline(never)]
    fn recv_into_slow(&mut self, buf: &mut Vec<u8>) -> Result<bool> {
        self.blocking(|r, _, _| Ok(message_step(r.try_read_into(buf)?)))
    }

    /// Receives the next message into `buf` when it fits, else into `spill` (reusing its
    /// allocation), blocking until there is one: for a caller with a buffer of its own and
    /// no `Vec`, one copy either way. `Ok(None)` is end-of-stream. The message is consumed
    /// either way; to leave one that does not fit in the channel instead, borrow it with
    /// [`recv_ref`](Self::recv_ref) and give it back with [`Sample::unread`] (the C
    /// binding's `shmem_recv` does).
    ///
    /// ```no_run
    /// # let client = shmem_broker_client::Client::connect_default()?;
    /// # let mut consumer = client.consumer("frames")?;
    /// use shmem_broker_client::Landed;
    /// let (mut buf, mut spill) = ([0u8; 4096], Vec::new());
    /// while let Some(landed) = consumer.recv_into_slice(&mut buf, &mut spill)? {
    ///     let message = match landed {
    ///         Landed::Buf(n) => &buf[..n],
    ///         Landed::Spill => &spill[..], // longer than 4096 bytes
    ///     };
    ///     println!("{} bytes", message.len());
    /// }
    /// # Ok::<(), shmem_broker_client::Error>(())
    /// ```
    // Inlined into the caller: one call per message.
    #[inline]
    pub fn recv_into_slice(
        &mut self,
        buf: &mut [u8],
        spill: &mut Vec<u8>,
    ) -> Result<Option<Landed>> {
        let mut sink = SliceSink {
            buf,
            spill,
            fitted: None,
        };
        if let Some(lane) = self.reader.fast_lane(&mut self.attachment)? {
            if lane.end.try_read_into_slice_fast(&mut sink) {
                lane.wake_if_waiting();
                let id = lane.id;
                self.reader.fast_read_done(id);
                return Ok(Some(sink.fitted.map_or(Landed::Spill, Landed::Buf)));
            }
        }
        self.recv_into_slice_slow(sink.buf, sink.spill)
    }

    /// The common case of a receive into caller memory, for a caller that has a raw pointer
    /// and a general path of its own (the C binding's `shmem_recv`): if the next message is
    /// there, in a one-to-one channel's ring with nothing to report first, and no longer than
    /// `capacity`, copies it to `buf` and returns its length, without waiting; `Ok(None)` and
    /// nothing received otherwise (empty, a longer message, a mark, anything else), for the
    /// caller's general path (the C binding's: [`recv_ref`](Self::recv_ref), then a copy, or
    /// [`Sample::unread`] for a message its buffer cannot take). An error is one the
    /// general path would have returned first (the channel is unusable).
    ///
    /// # Safety
    /// `buf` is not NULL and points to `capacity` bytes writable for the whole call, which
    /// nothing else reads or writes meanwhile (caller memory: never this consumer's ring).
    // Public for the C binding (another crate); hidden from the docs: Rust callers have
    // `recv_into_slice`, which is as fast and safe.
    #[doc(hidden)]
    #[inline(always)]
    pub unsafe fn try_recv_into_raw_fast(
        &mut self,
        buf: *mut u8,
        capacity: usize,
    ) -> Result<Option<usize>> {
        let Some(lane) = self.reader.fast_lane(&mut self.attachment)? else {
            return Ok(None);
        };
        // SAFETY: the caller's contract, passed on.
        let got = unsafe { lane.end.try_read_into_raw_fast(buf, capacity) };
        if got.is_some() {
            lane.wake_if_waiting();
            let id = lane.id;
            self.reader.fast_read_done(id);
        }
        Ok(got)
    }

    /// [`recv_into_slice`](Self::recv_into_slice) past its fast path.
    #[inline(never)]
    fn recv_into_slice_slow(
        &mut self,
        buf: &mut [u8],
        spill: &mut Vec<u8>,
    ) -> Result<Option<Landed>> {
        self.blocking(|r, _, _| read_into_slice(r, buf, spill))
    }

    /// Non-blocking [`recv_into_slice`](Self::recv_into_slice): [`TryRecvError::Empty`] when
    /// empty.
    pub fn try_recv_into_slice(
        &mut self,
        buf: &mut [u8],
        spill: &mut Vec<u8>,
    ) -> Result<Option<Landed>, TryRecvError> {
        self.non_blocking(|r, _, _| read_into_slice(r, buf, spill))
    }

    /// Hands up to `max` messages to `each`, blocking until there is at least one, and frees
    /// their space in the ring with one store. Returns how many, or `None` at end-of-stream.
    /// Each message is copied once, into a buffer the callback borrows.
    pub fn recv_batch(&mut self, max: usize, mut each: impl FnMut(&[u8])) -> Result<Option<usize>> {
        self.blocking(|r, scratch, limit| {
            Ok(batch_step(r.try_read_batch(
                max.min(limit),
                scratch,
                &mut each,
            )?))
        })
    }

    /// Non-blocking [`recv_batch`](Self::recv_batch): [`TryRecvError::Empty`] when empty.
    pub fn try_recv_batch(
        &mut self,
        max: usize,
        mut each: impl FnMut(&[u8]),
    ) -> Result<Option<usize>, TryRecvError> {
        self.non_blocking(|r, scratch, limit| {
            Ok(batch_step(r.try_read_batch(
                max.min(limit),
                scratch,
                &mut each,
            )?))
        })
    }

    /// One-to-one channels: the stream position of the next message, a byte counter that only
    /// grows and names each message for the life of the ring (`None` in a fan-out channel).
    pub fn position(&self) -> Option<u64> {
        self.reader.position()
    }

    /// Hands up to `max` items (messages, end-of-stream marks, and padding that nothing follows
    /// yet) to `each`, with their stream positions `from` and `to` (one item's `to` is the next
    /// one's `from`: every byte of the stream is in exactly one item), blocking until
    /// there is at least one; then calls `confirm` with their count, and releases them from
    /// the ring only if it returns true. Otherwise nothing is consumed and 0 is returned: the
    /// same items come again, to this consumer or to the next one that attaches. `confirm`
    /// may block (e.g. until a remote peer has stored the items): the producer waits for room
    /// meanwhile. One-to-one channels only ([`Error::Unsupported`] in a fan-out channel, whose
    /// consumer reads several rings).
    pub fn recv_batch_confirmed(
        &mut self,
        max: usize,
        mut each: impl FnMut(u64, u64, ReadItem<'_>),
        confirm: impl FnOnce(usize) -> bool,
    ) -> Result<usize> {
        if self.reader.fanout() {
            return Err(self.unsupported_fanout());
        }
        let mut confirm = Some(confirm);
        let mut asked = false;
        self.blocking(|r, scratch, limit| {
            let n = r.try_read_batch_confirmed(max.min(limit), scratch, &mut each, |n| {
                asked = true;
                confirm.take().is_some_and(|ask| ask(n))
            })?;
            // Confirmed or refused, the call is over once asked (0 items if refused).
            Ok(asked.then_some(n))
        })
    }

    /// Reading ahead, for a consumer that passes items on and may release them only once they
    /// are safe elsewhere (the bridge's exporter), with several batches in flight: hands up to
    /// `max` items after those read so far, released or not, to `each` with their stream
    /// positions (as [`recv_batch_confirmed`](Self::recv_batch_confirmed) does), and releases
    /// nothing. They stay in the ring, the producer waiting for room once it is full of them,
    /// until [`release_to`](Self::release_to) names one's `to`. Returns how many, or
    /// [`TryRecvError::Empty`] when nothing new is published (arming
    /// [`ready_fd`](Self::ready_fd) as [`try_recv`](Self::try_recv) does).
    ///
    /// A consumer that detaches (or is killed) with items read ahead leaves them unreleased:
    /// the next one that attaches (the same durable consumer, or any in a one-to-one channel)
    /// reads them again, with the same positions. Any other receive releases everything read
    /// ahead before it (a refused [`recv_batch_confirmed`](Self::recv_batch_confirmed) goes back
    /// to the released position, and reads those items again). One-to-one channels only
    /// ([`Error::Unsupported`] in a fan-out channel).
    ///
    /// ```no_run
    /// # let client = shmem_broker_client::Client::connect_default()?;
    /// # let mut consumer = client.consumer("frames")?;
    /// # fn stored_elsewhere(_from: u64, _to: u64, _item: shmem_broker_client::ReadItem<'_>) {}
    /// let mut last = None;
    /// match consumer.try_recv_ahead(64, |from, to, item| {
    ///     stored_elsewhere(from, to, item);
    ///     last = Some(to);
    /// }) {
    ///     Err(e) if !e.is_empty() => return Err(e.into()),
    ///     _ => {} // some items, or none new yet
    /// }
    /// // ... once the other side confirms it holds everything up to `last`:
    /// if let Some(to) = last {
    ///     consumer.release_to(to)?;
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_recv_ahead(
        &mut self,
        max: usize,
        mut each: impl FnMut(u64, u64, ReadItem<'_>),
    ) -> Result<usize, TryRecvError> {
        self.try_recv_ahead_owned(max, |from, to, item| each(from, to, item.as_read_item()))
    }

    /// [`try_recv_ahead`](Self::try_recv_ahead), each message handed over in the consumer's
    /// own buffer (copied out of the ring once), which `each` may take with `std::mem::take`
    /// to keep the message without copying it again (the next message goes into a new
    /// buffer): what a forwarder that hands large messages on by value wants. The bytes are a
    /// private copy: nothing taken refers to the ring, whatever happens to it afterwards.
    pub fn try_recv_ahead_owned(
        &mut self,
        max: usize,
        mut each: impl FnMut(u64, u64, AheadItem<'_>),
    ) -> Result<usize, TryRecvError> {
        if self.reader.fanout() {
            return Err(self.unsupported_fanout().into());
        }
        self.non_blocking(|r, scratch, limit| {
            let n = r.try_read_ahead(max.min(limit), scratch, &mut each)?;
            Ok((n > 0).then_some(n))
        })
    }

    /// Releases the items [`try_recv_ahead`](Self::try_recv_ahead) handed out, up to and
    /// including the one whose `to` is `position` (one store; a producer waiting for room is
    /// woken). `position` is checked: it must be the `to` of an item read ahead and not
    /// released yet, or the released position itself (nothing to do); anything else is
    /// [`Error::BadRelease`] and releases nothing. Released items are never read again.
    pub fn release_to(&mut self, position: u64) -> Result<()> {
        self.reader
            .release_to(position)
            .map_err(|error| Error::BadRelease {
                channel: self.attachment.channel.clone(),
                error,
            })
    }

    /// The error for a stream-position call in a fan-out channel.
    fn unsupported_fanout(&self) -> Error {
        Error::Unsupported {
            channel: self.attachment.channel.clone(),
            what: "reads with stream positions (one-to-one channels only)".into(),
        }
    }

    /// Writes the next message straight from the ring to `fd` (a file, pipe or socket),
    /// blocking until there is one and until `fd` has taken all of it: the bytes are never
    /// copied in this process. Returns the message's length, `None` at end-of-stream.
    pub fn recv_to_fd(&mut self, fd: BorrowedFd<'_>) -> Result<Option<usize>> {
        let mut written = 0;
        let got = self.blocking(|r, _, _| Ok(message_step(r.try_read_to_fd(fd, &mut written)?)))?;
        Ok(got.then_some(written))
    }

    /// Receives the next message or returns [`TryRecvError::Empty`] if there is none yet.
    /// `Ok(None)` is end-of-stream.
    pub fn try_recv(&mut self) -> Result<Option<Vec<u8>>, TryRecvError> {
        let mut message = Vec::new();
        Ok(self.try_recv_into(&mut message)?.then_some(message))
    }

    /// Non-blocking [`recv_into`](Self::recv_into).
    pub fn try_recv_into(&mut self, buf: &mut Vec<u8>) -> Result<bool, TryRecvError> {
        self.non_blocking(|r, _, _| Ok(message_step(r.try_read_into(buf)?)))
    }

    /// Borrowed receive: the next message left in the shared ring, blocking until there is
    /// one; its space goes back to the producer when the [`Sample`] is dropped (so a producer
    /// waiting for room waits until then). `Ok(None)` is end-of-stream, as for
    /// [`recv`](Self::recv). See [`Sample`] for what it offers and why (a hostile producer
    /// can rewrite the bytes while they are borrowed).
    ///
    /// ```no_run
    /// # let client = shmem_broker_client::Client::connect_default()?;
    /// # let mut consumer = client.consumer("frames")?;
    /// let mut header = [0u8; 16];
    /// while let Some(sample) = consumer.recv_ref()? {
    ///     let n = sample.copy_to(&mut header); // only the bytes needed
    ///     println!("{} bytes, starting {:?}", sample.len(), &header[..n]);
    /// } // dropped here: its space is released
    /// # Ok::<(), shmem_broker_client::Error>(())
    /// ```
    pub fn recv_ref(&mut self) -> Result<Option<Sample<'_>>> {
        let held = self.blocking(|r, _, _| Ok(peek_step(r.try_peek()?)))?;
        Ok(self.hold(held))
    }

    /// Non-blocking [`recv_ref`](Self::recv_ref): [`TryRecvError::Empty`] when empty.
    pub fn try_recv_ref(&mut self) -> Result<Option<Sample<'_>>, TryRecvError> {
        let held = self.try_peek()?;
        Ok(self.hold(held))
    }

    /// One non-blocking borrowed receive, without the borrow: the message stays unreleased
    /// until [`release`](Self::release).
    pub(crate) fn try_peek(&mut self) -> Result<Option<Payload>, TryRecvError> {
        self.non_blocking(|r, _, _| Ok(peek_step(r.try_peek()?)))
    }

    /// The sample for a message `try_peek` left in the ring, naming its lane.
    pub(crate) fn hold(&mut self, payload: Option<Payload>) -> Option<Sample<'_>> {
        let producer = self.last_producer();
        let lane = self.reader.last_lane();
        payload.map(|payload| {
            let held = Held {
                payload,
                lane,
                producer,
            };
            Sample::new(self, held)
        })
    }

    /// Releases a message a borrowed receive left in the ring of `lane` and wakes its
    /// producer if it waits for room.
    pub(crate) fn release(&mut self, lane: u32) {
        self.reader.release(lane);
    }

    /// Gives a message a borrowed receive left in the ring of `lane` back unread, for the next
    /// receive ([`Sample::unread`]).
    pub(crate) fn unread(&mut self, lane: u32) {
        self.reader.unread(lane);
    }

    /// One attempt: checks the channel is still usable, runs `read` on the rings in turn
    /// (with the private scratch buffer and the most messages it may take, see
    /// [`LaneReader::try_read`]; `None`: nothing to read), and wakes a producer that went to
    /// sleep waiting for space. Inlined, as are `blocking` and `LaneReader::try_read`: each
    /// receive function is then one frame over the ring read, its result never copied.
    #[inline(always)]
    fn step<T>(
        &mut self,
        mut read: impl FnMut(&mut RingReader, &mut Vec<u8>, usize) -> Result<Option<T>, RingError>,
    ) -> Result<Option<T>> {
        self.reader
            .try_read(&mut self.attachment, &mut self.scratch, &mut read)
    }

    /// Attempts until `read` finds something, sleeping while the ring is empty.
    #[inline(always)]
    fn blocking<T>(
        &mut self,
        mut read: impl FnMut(&mut RingReader, &mut Vec<u8>, usize) -> Result<Option<T>, RingError>,
    ) -> Result<T> {
        loop {
            if let Some(got) = self.step(&mut read)? {
                return Ok(got);
            }
            self.wait_for_data()?;
        }
    }

    /// One attempt, or [`TryRecvError::Empty`] after arming the wake-up so `ready_fd()` turns
    /// readable when data arrives (not for busy pollers). If data arrived while arming, the
    /// attempt is made again instead.
    fn non_blocking<T>(
        &mut self,
        mut read: impl FnMut(&mut RingReader, &mut Vec<u8>, usize) -> Result<Option<T>, RingError>,
    ) -> Result<T, TryRecvError> {
        loop {
            if let Some(got) = self.step(&mut read)? {
                return Ok(got);
            }
            if self.attachment.options.busy_poll {
                return Err(TryRecvError::Empty);
            }
            // A broker event (a producer came or went, a drop) read now is acted on by the
            // next attempt; none may stay unread, or `ready_fd()` would stay readable.
            if self.attachment.read_broker_events() {
                continue;
            }
            if self.arm()? {
                return Err(TryRecvError::Empty);
            }
        }
    }

    /// Asks the producer(s) to signal `ready_fd()` on their next write; false if data
    /// arrived meanwhile.
    fn arm(&mut self) -> Result<bool> {
        self.reader.arm(&self.attachment)
    }

    fn wait_for_data(&mut self) -> Result<()> {
        self.reader.wait_for_data(&mut self.attachment)
    }

    /// An fd that becomes readable when a `try_recv` that returned [`TryRecvError::Empty`]
    /// may return something else: a message arrived, a producer came or went, the channel was
    /// dropped, the broker detached this consumer or went away (and, with
    /// [`reconnect`](crate::Attach::reconnect), now and then while it is away, to re-attach).
    /// Register it for readability (level- or edge-triggered: each such event makes it
    /// readable anew); on wake-up, call `try_recv` again until it reports would-block, which
    /// leaves the fd quiet. It is an epoll instance: read nothing from it yourself.
    pub fn ready_fd(&self) -> BorrowedFd<'_> {
        self.attachment.ready_fd()
    }

    /// Attached with `busy_poll`: a would-block asks the peer for no wake-up.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn busy_poll(&self) -> bool {
        self.attachment.options.busy_poll
    }
}

/// A single read: `Some(true)` a message, `Some(false)` end-of-stream, `None` empty.
fn message_step(outcome: ReadOutcome) -> Option<bool> {
    match outcome {
        ReadOutcome::Message => Some(true),
        ReadOutcome::EndOfStream => Some(false),
        ReadOutcome::Empty => None,
    }
}

/// One read into `buf`, or into `spill` for a message longer than `buf`: `Some(Some(_))` where
/// the message landed, `Some(None)` end-of-stream, `None` empty.
#[inline(always)]
fn read_into_slice(
    reader: &mut RingReader,
    buf: &mut [u8],
    spill: &mut Vec<u8>,
) -> Result<Option<Option<Landed>>, RingError> {
    let mut sink = SliceSink {
        buf,
        spill,
        fitted: None,
    };
    Ok(match reader.try_read_into_slice(&mut sink)? {
        ReadOutcome::Message => Some(Some(sink.fitted.map_or(Landed::Spill, Landed::Buf))),
        ReadOutcome::EndOfStream => Some(None),
        ReadOutcome::Empty => None,
    })
}

/// A borrowed read: `Some(Some(_))` a message left in the ring, `Some(None)` end-of-stream,
/// `None` empty.
fn peek_step(peeked: Peeked) -> Option<Option<Payload>> {
    match peeked {
        Peeked::Message(payload) => Some(Some(payload)),
        Peeked::EndOfStream => Some(None),
        Peeked::Empty => None,
    }
}

/// A batch read: `Some(Some(n))` messages, `Some(None)` end-of-stream, `None` empty.
fn batch_step(outcome: BatchOutcome) -> Option<Option<usize>> {
    match outcome {
        BatchOutcome::Messages(n) => Some(Some(n)),
        BatchOutcome::EndOfStream => Some(None),
        BatchOutcome::Empty => None,
    }
}

impl AsRawFd for Consumer {
    fn as_raw_fd(&self) -> RawFd {
        self.ready_fd().as_raw_fd()
    }
}

impl AsFd for Consumer {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ready_fd()
    }
}
