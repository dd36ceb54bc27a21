//! Buffers, pooled per worker thread. A connection, on either side, holds a read buffer only
//! while bytes are in it: when it goes idle its buffer comes back here for the next
//! connection that reads, as HAProxy and Sōzu take theirs from a pool, where hyper kept 8 KiB
//! per connection for its whole life. Heads and small body frames are written from a
//! [`Scratch`] buffer, held only while they are written.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

use bytes::BytesMut;

/// The room a pooled buffer has, and what a first read asks for.
pub(crate) const SIZE: usize = 4 * 1024;

/// Buffers kept per thread, at most.
const KEEP: usize = 128;

/// Buffers that grew past this are not kept.
const KEEP_UP_TO: usize = 16 * 1024;

thread_local! {
    static POOL: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least [`SIZE`] bytes.
pub(crate) fn take() -> BytesMut {
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        while let Some(mut buf) = pool.pop() {
            // Reclaimed only if nothing shares its memory any longer; one that something
            // still shares is let go, and freed when that goes.
            if buf.try_reclaim(SIZE) && buf.capacity() <= KEEP_UP_TO {
                return Some(buf);
            }
        }
        None
    })
    .unwrap_or_else(|| BytesMut::with_capacity(SIZE))
}

/// Takes back `buf` once its bytes have all been used. Its memory may still be shared for a
/// moment (a response's last body bytes, on their way to the client, are a slice of it): it
/// is reclaimed when it is taken again, by then mostly free.
pub(crate) fn give(buf: BytesMut) {
    if !buf.is_empty() || buf.capacity() == 0 {
        return;
    }
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() < KEEP {
            pool.push(buf);
        }
    });
}

/// A buffer to frame heads and small body frames in before they are written, taken from the
/// few each worker thread keeps and given back when dropped.
pub(crate) struct Scratch(Vec<u8>);

/// Scratch buffers kept per thread, and the largest kept.
const SCRATCH_KEEP: usize = 64;
const SCRATCH_KEEP_UP_TO: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

impl Scratch {
    pub(crate) fn take() -> Scratch {
        let spare = SCRATCH.try_with(|s| s.borrow_mut().pop()).ok().flatten();
        Scratch(spare.unwrap_or_else(|| Vec::with_capacity(1024)))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        if buf.capacity() <= SCRATCH_KEEP_UP_TO {
            buf.clear();
            let _ = SCRATCH.try_with(|s| {
                let mut s = s.borrow_mut();
                if s.len() < SCRATCH_KEEP {
                    s.push(buf);
                }
            });
        }
    }
}

impl Deref for Scratch {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

/// Buffers in this thread's pool now.
#[cfg(test)]
pub(crate) fn pooled() -> usize {
    POOL.with(|p| p.borrow().len())
}
