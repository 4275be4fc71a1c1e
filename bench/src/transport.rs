//! The two ends of a message transport, as the benchmark roles see them: our channels (through
//! the real client library) and byte streams (Unix socket, pipe) carrying fixed-size messages.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use shmem_broker_client::{Consumer, Producer};

use crate::sys;

/// How a receiver waits for the next message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Wait {
    /// The blocking call: `recv_into` (spins ~30 us, then sleeps on the eventfd), or a blocking
    /// `read(2)`.
    Block,
    /// Busy-polling: `try_recv_into` in a loop, or `read(2)` on an O_NONBLOCK fd in a loop.
    Spin,
}

pub trait Tx {
    fn send(&mut self, message: &[u8]) -> Result<()>;
    fn send_batch(&mut self, messages: &[&[u8]]) -> Result<()>;
    /// End of stream: the receiver's next `recv` returns false.
    fn finish(&mut self) -> Result<()>;
    /// Zero-copy send of a `size`-byte message of which only the stamps (`seq` in the first
    /// and, from 16 bytes, the last 8 bytes) are written, in place.
    fn send_stamps_in_place(&mut self, _size: usize, _seq: u64) -> Result<()> {
        bail!("this transport has no zero-copy send")
    }
}

/// What a borrowed receive reads of a message: its length and its first and last 8 bytes.
pub struct Stamps {
    pub len: usize,
    pub head: [u8; 8],
    pub tail: [u8; 8],
}

pub trait Rx {
    /// The next message into `buf`; false at end of stream.
    fn recv(&mut self, buf: &mut Vec<u8>) -> Result<bool>;
    /// Up to `max` messages handed to `each`; `None` at end of stream.
    fn recv_batch(&mut self, max: usize, each: &mut dyn FnMut(&[u8])) -> Result<Option<usize>>;
    /// Borrowed receive of the next message, reading only its stamps (the last 8 bytes are
    /// meaningful from 16 bytes on); `None` at end of stream.
    fn recv_stamps(&mut self) -> Result<Option<Stamps>> {
        bail!("this transport has no borrowed receive")
    }
}

// ---------------------------------------------------------------------------------------------
// Our channels

pub struct ChannelTx {
    producer: Option<Producer>,
}

impl ChannelTx {
    pub fn new(producer: Producer) -> ChannelTx {
        ChannelTx {
            producer: Some(producer),
        }
    }

    fn producer(&mut self) -> Result<&mut Producer> {
        self.producer.as_mut().context("producer already closed")
    }
}

impl Tx for ChannelTx {
    fn send(&mut self, message: &[u8]) -> Result<()> {
        self.producer()?.send(message).context("Producer::send")
    }

    fn send_batch(&mut self, messages: &[&[u8]]) -> Result<()> {
        self.producer()?
            .send_batch(messages)
            .context("Producer::send_batch")
    }

    fn finish(&mut self) -> Result<()> {
        match self.producer.take() {
            Some(producer) => producer.close().context("Producer::close"),
            None => Ok(()),
        }
    }

    fn send_stamps_in_place(&mut self, size: usize, seq: u64) -> Result<()> {
        let mut loan = self.producer()?.loan(size).context("Producer::loan")?;
        crate::roles::stamp(&mut loan, seq);
        loan.send().context("Loan::send")
    }
}

pub struct ChannelRx {
    consumer: Consumer,
    wait: Wait,
}

impl ChannelRx {
    pub fn new(consumer: Consumer, wait: Wait) -> ChannelRx {
        ChannelRx { consumer, wait }
    }
}

impl Rx for ChannelRx {
    fn recv(&mut self, buf: &mut Vec<u8>) -> Result<bool> {
        match self.wait {
            Wait::Block => self.consumer.recv_into(buf).context("Consumer::recv_into"),
            Wait::Spin => loop {
                match self.consumer.try_recv_into(buf) {
                    Err(e) if e.is_empty() => std::hint::spin_loop(),
                    other => return other.context("Consumer::try_recv_into"),
                }
            },
        }
    }

    fn recv_batch(&mut self, max: usize, each: &mut dyn FnMut(&[u8])) -> Result<Option<usize>> {
        match self.wait {
            Wait::Block => self
                .consumer
                .recv_batch(max, each)
                .context("Consumer::recv_batch"),
            Wait::Spin => loop {
                match self.consumer.try_recv_batch(max, &mut *each) {
                    Err(e) if e.is_empty() => std::hint::spin_loop(),
                    other => return other.context("Consumer::try_recv_batch"),
                }
            },
        }
    }

    fn recv_stamps(&mut self) -> Result<Option<Stamps>> {
        let Some(sample) = self.consumer.recv_ref().context("Consumer::recv_ref")? else {
            return Ok(None);
        };
        let (mut head, mut tail) = ([0; 8], [0; 8]);
        sample.copy_to(&mut head);
        sample.read_at(sample.len().saturating_sub(8), &mut tail);
        Ok(Some(Stamps {
            len: sample.len(),
            head,
            tail,
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// Byte streams: messages are fixed-size writes of the message size; the receiver reads exactly
// that many bytes per message.

/// Fd numbers a worker finds its stream ends on.
pub const RX_FD: i32 = 3;
pub const TX_FD: i32 = 4;

/// User-space buffer of the "buffered" stream variant (std's BufWriter/BufReader); 0 means
/// every message is its own write(2) / read(2).
const STREAM_BUFFER: usize = 64 * 1024;

pub struct StreamTx {
    out: Option<BufWriter<File>>,
}

impl StreamTx {
    /// Takes over fd [`TX_FD`], which the parent placed there.
    pub fn from_inherited(buffered: bool) -> StreamTx {
        // SAFETY: the parent dup2'ed the transmitting end onto TX_FD for this role, and nothing
        // else in this process owns it.
        unsafe { StreamTx::from_fd(TX_FD, buffered) }
    }

    /// # Safety
    /// `fd` must be open, and owned by nothing else in this process.
    unsafe fn from_fd(fd: RawFd, buffered: bool) -> StreamTx {
        let file = File::from_raw_fd(fd);
        let capacity = if buffered { STREAM_BUFFER } else { 0 };
        StreamTx {
            out: Some(BufWriter::with_capacity(capacity, file)),
        }
    }

    fn out(&mut self) -> Result<&mut BufWriter<File>> {
        self.out.as_mut().context("stream already finished")
    }
}

impl Tx for StreamTx {
    fn send(&mut self, message: &[u8]) -> Result<()> {
        self.out()?.write_all(message).context("write")
    }

    fn send_batch(&mut self, messages: &[&[u8]]) -> Result<()> {
        for message in messages {
            self.send(message)?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        if let Some(mut out) = self.out.take() {
            out.flush().context("flushing stream")?;
            let file = out.get_ref();
            // A socket's other fd (our receiving end) keeps it open: shut down our direction
            // explicitly so the peer sees end of stream. Pipes are simply closed.
            // SAFETY: plain syscall on an fd we own; ENOTSOCK for a pipe is expected.
            unsafe { libc::shutdown(file.as_raw_fd(), libc::SHUT_WR) };
        }
        Ok(())
    }
}

/// One producer writing every message to several byte streams, one per consumer, in turn: what
/// a user without fan-out channels does. A blocking write to a full stream holds up the
/// others, like a fan-out channel's `block` policy.
pub struct StreamFanTx {
    outs: Vec<StreamTx>,
}

impl StreamFanTx {
    /// Takes over the `count` fds from [`TX_FD`] up, which the parent placed there.
    pub fn from_inherited(count: usize, buffered: bool) -> StreamFanTx {
        let outs = (0..count)
            // SAFETY: the parent dup2'ed one transmitting end onto each of TX_FD..TX_FD+count
            // for this role, and nothing else in this process owns them.
            .map(|i| unsafe { StreamTx::from_fd(TX_FD + i as RawFd, buffered) })
            .collect();
        StreamFanTx { outs }
    }
}

impl Tx for StreamFanTx {
    fn send(&mut self, message: &[u8]) -> Result<()> {
        for out in &mut self.outs {
            out.send(message)?;
        }
        Ok(())
    }

    fn send_batch(&mut self, messages: &[&[u8]]) -> Result<()> {
        for out in &mut self.outs {
            out.send_batch(messages)?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        for out in &mut self.outs {
            out.finish()?;
        }
        Ok(())
    }
}

pub struct StreamRx {
    input: BufReader<File>,
    size: usize,
}

impl StreamRx {
    /// Takes over fd [`RX_FD`], which the parent placed there.
    pub fn from_inherited(size: usize, wait: Wait, buffered: bool) -> Result<StreamRx> {
        if wait == Wait::Spin {
            sys::set_nonblocking(RX_FD)?;
        }
        // SAFETY: the parent dup2'ed the receiving end onto RX_FD for this role, and nothing
        // else in this process owns it.
        let file = unsafe { File::from_raw_fd(RX_FD) };
        let capacity = if buffered { STREAM_BUFFER } else { 0 };
        Ok(StreamRx {
            input: BufReader::with_capacity(capacity, file),
            size,
        })
    }

    /// One read(2), retried on EINTR and (for a busy-polling receiver) EAGAIN.
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize> {
        loop {
            match self.input.read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::hint::spin_loop(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("read"),
            }
        }
    }
}

impl Rx for StreamRx {
    fn recv(&mut self, buf: &mut Vec<u8>) -> Result<bool> {
        buf.resize(self.size, 0);
        let mut filled = 0;
        while filled < self.size {
            let n = self.read_some(&mut buf[filled..])?;
            if n == 0 {
                if filled == 0 {
                    return Ok(false);
                }
                bail!(
                    "stream ended inside a message ({filled} of {} bytes)",
                    self.size
                );
            }
            filled += n;
        }
        Ok(true)
    }

    fn recv_batch(&mut self, _max: usize, each: &mut dyn FnMut(&[u8])) -> Result<Option<usize>> {
        let mut buf = Vec::with_capacity(self.size);
        if !self.recv(&mut buf)? {
            return Ok(None);
        }
        each(&buf);
        Ok(Some(1))
    }
}
