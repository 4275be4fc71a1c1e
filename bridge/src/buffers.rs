//! Buffers the exporter publishes from, used again once Zenoh and the window are done with
//! them. A large message is copied out of the ring once, into a buffer that becomes the Zenoh
//! payload as it is; the buffer comes back here when the last holder drops it (the window, on
//! release, or Zenoh's transmission). Reusing it instead of allocating a fresh one per message
//! spares the kernel from faulting in and zeroing new pages for every megabyte read, which
//! cost the exporter more than the copy itself.
//!
//! Bounded: at most `most` bytes of capacity wait here; anything beyond is freed.

use std::sync::{Arc, Mutex};

use zenoh::bytes::ZBytes;

pub struct Pool {
    /// Free buffers (empty, with capacity), and the sum of their capacities.
    free: Mutex<(Vec<Vec<u8>>, usize)>,
    most: usize,
}

impl Pool {
    pub fn new(most: usize) -> Arc<Pool> {
        Arc::new(Pool {
            free: Mutex::new((Vec::new(), 0)),
            most,
        })
    }

    /// An empty buffer: one used before if any is free, else a new one.
    pub fn take(&self) -> Vec<u8> {
        let mut free = self.lock();
        match free.0.pop() {
            Some(buf) => {
                free.1 = free.1.saturating_sub(buf.capacity());
                buf
            }
            None => Vec::new(),
        }
    }

    /// `buf` as a Zenoh payload (not copied), back to this pool once dropped.
    pub fn payload(self: &Arc<Self>, buf: Vec<u8>) -> ZBytes {
        ZBytes::from(bytes::Bytes::from_owner(Recycled {
            buf,
            pool: self.clone(),
        }))
    }

    fn put(&self, mut buf: Vec<u8>) {
        // Only its capacity is used again: the next message is copied over it from the start.
        buf.clear();
        let mut free = self.lock();
        let kept = free.1.saturating_add(buf.capacity());
        if kept <= self.most {
            free.0.push(buf);
            free.1 = kept;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<Vec<u8>>, usize)> {
        // The list is consistent between statements: a panic elsewhere cannot leave it torn.
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A published buffer on its way back to its pool.
struct Recycled {
    buf: Vec<u8>,
    pool: Arc<Pool>,
}

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_once_dropped_and_the_pool_stays_bounded() {
        let pool = Pool::new(3000);
        let mut first = pool.take();
        first.extend_from_slice(&[7; 2000]);
        let payload = pool.payload(first);
        assert_eq!(payload.to_bytes().as_ref(), &[7; 2000][..]);
        let copy = payload.clone();
        drop(payload);
        assert_eq!(pool.take().capacity(), 0, "still held by a clone");
        drop(copy);
        let again = pool.take();
        assert!(again.is_empty() && again.capacity() >= 2000);
        // Two buffers of 2000 bytes would pass the bound: the second is freed.
        drop(pool.payload(again));
        drop(pool.payload(vec![1; 2000]));
        assert!(pool.take().capacity() >= 2000);
        assert_eq!(pool.take().capacity(), 0);
    }
}
