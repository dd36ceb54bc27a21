//! The request-head deadline of a client connection, kept apart from its keep-alive idle time.
//!
//! hyper has one timer for both: `header_read_timeout` runs from the moment a connection starts
//! waiting for a request head, so an idle keep-alive connection and a slowloris client get the
//! same allowance. The proxy gives hyper's timer the idle allowance (`timeouts.idle`) and
//! enforces `timeouts.header_read` here, from the first byte of a head: a read that arrives more
//! than `header_read` after a head's first byte, with that head still not complete, fails the
//! connection. No timer is involved and a head costs one clock read. A client that sends part
//! of a head and then nothing is closed by hyper's idle timer, like any idle connection; one
//! that dribbles is cut at its first byte past the deadline.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the connection's reads and its service share. One connection is served by one task,
/// so the atomics are never contended; they are atomics because hyper wants `Send`.
#[derive(Debug)]
pub struct Head {
    opened: Instant,
    limit_ms: u64,
    /// Requests whose response has not been written out yet.
    busy: AtomicU32,
    /// When the first byte of the awaited head was read, in ms since `opened`, plus one;
    /// 0 while none has been.
    first_byte: AtomicU64,
    /// Set once the connection has become a tunnel: its bytes are no longer HTTP.
    off: AtomicBool,
}

impl Head {
    pub fn new(limit: Duration) -> Arc<Head> {
        Arc::new(Head {
            opened: Instant::now(),
            limit_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
            busy: AtomicU32::new(0),
            first_byte: AtomicU64::new(0),
            off: AtomicBool::new(false),
        })
    }

    /// A head is complete: hyper has called the service with its request.
    pub fn request_started(self: &Arc<Head>) -> Done {
        self.first_byte.store(0, Ordering::Relaxed);
        self.busy.fetch_add(1, Ordering::Relaxed);
        Done(Arc::clone(self))
    }

    /// The connection switched protocols.
    pub fn stop_watching(&self) {
        self.off.store(true, Ordering::Relaxed);
    }

    /// Called with each read that brought bytes; an error when a head has taken too long.
    fn read(&self) -> io::Result<()> {
        if self.off.load(Ordering::Relaxed) || self.busy.load(Ordering::Relaxed) > 0 {
            return Ok(());
        }
        let now = u64::try_from(self.opened.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1);
        match self.first_byte.load(Ordering::Relaxed) {
            0 => {
                self.first_byte.store(now, Ordering::Relaxed);
                Ok(())
            }
            first if now - first > self.limit_ms => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "request head not complete {}ms after its first byte",
                    now - first
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// Held by a response until it has been written out (hyper drops the body then).
#[derive(Debug)]
pub struct Done(Arc<Head>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A client connection's socket, its reads watched for the head deadline.
pub struct Watched<S> {
    inner: S,
    head: Arc<Head>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, head: Arc<Head>) -> Watched<S> {
        Watched { inner, head }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.head.read()?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

pin_project_lite::pin_project! {
    /// A response body that tells the connection when it has been written out.
    pub struct Tracked<B> {
        #[pin]
        inner: B,
        done: Done,
    }
}

impl<B> Tracked<B> {
    pub fn new(inner: B, done: Done) -> Tracked<B> {
        Tracked { inner, done }
    }
}

impl<B: Body<Data = Bytes>> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_runs_from_a_heads_first_byte_and_only_between_requests() {
        let head = Head::new(Duration::ZERO);
        // Bytes between requests start the clock; with no allowance the next read is late...
        head.read().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(head.read().is_err());
        // ...unless the head was complete in between: a request resets it, and bytes read
        // while it is being answered (its body, say) do not count.
        let done = head.request_started();
        head.read().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        head.read().unwrap();
        drop(done);
        head.read().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(head.read().is_err());
        // A tunnel is not HTTP.
        head.stop_watching();
        head.read().unwrap();
    }
}
