//! The two deadlines of a client connection waiting for a request head, kept apart: the
//! keep-alive idle time (`timeouts.idle`, from the end of the last response, or from the
//! connection's start) and the head's own time (`timeouts.header_read`, from a head's first
//! byte).
//!
//! `header_read` holds on every head, finished or not: a read that arrives more than
//! `header_read` after a head's first byte, with that head still not complete, fails the
//! connection (a client that dribbles), and so does the deadline passing while the server waits for
//! the rest of a head (a client that sent part of one and then nothing: it would otherwise
//! hold its buffer until `timeouts.idle`). An idle connection past `idle` reads as closed by
//! its client, and the server closes it.
//!
//! One timer per connection, armed the first time it waits and then moved lazily: a timer set
//! earlier than the deadline is left to fire and only then moved on, so a busy keep-alive
//! connection, whose idle deadline moves with every request, touches the timer wheel about
//! once per idle period, not per request. (hyper's own `header_read_timeout` made and dropped
//! a timer for every request.)

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the connection's reads and its service share. One connection is served by one task,
/// so the atomics are never contended; they are atomics because a body that reads the socket
/// must be `Send`.
#[derive(Debug)]
pub struct Head {
    opened: Instant,
    limit_ms: u64,
    idle_ms: u64,
    /// When the connection last became idle (its last response written out), in ms since
    /// `opened`; 0 until then.
    idle_since: AtomicU64,
    /// Requests whose response has not been written out yet.
    busy: AtomicU32,
    /// When the first byte of the awaited head was read, in ms since `opened`, plus one;
    /// 0 while none has been.
    first_byte: AtomicU64,
    /// Set once the connection has become a tunnel: its bytes are no longer HTTP.
    off: AtomicBool,
    /// After this long idle (if sooner than `idle_ms`) the connection is to be parked;
    /// `u64::MAX`: never.
    park_ms: u64,
    /// Set when the connection's idle time reached `park_ms`: its reads end as if the client
    /// had closed, and the server parks it rather than closing it.
    park_due: AtomicBool,
}

impl Head {
    /// `limit` for a head from its first byte, `idle` between requests.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn new(limit: Duration, idle: Duration) -> Arc<Head> {
        Head::parking(limit, idle, None)
    }

    /// As [`Head::new`], and a connection idle for `park` (if sooner than `idle`) reads as
    /// closed with [`Head::park_due`] set.
    pub fn parking(limit: Duration, idle: Duration, park: Option<Duration>) -> Arc<Head> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Arc::new(Head {
            opened: Instant::now(),
            limit_ms: ms(limit),
            idle_ms: ms(idle),
            idle_since: AtomicU64::new(0),
            busy: AtomicU32::new(0),
            first_byte: AtomicU64::new(0),
            off: AtomicBool::new(false),
            park_ms: park.map_or(u64::MAX, ms),
            park_due: AtomicBool::new(false),
        })
    }

    /// Whether the connection has idled long enough to be parked.
    pub fn park_due(&self) -> bool {
        self.park_due.load(Ordering::Relaxed)
    }

    /// A head is complete: its request goes to the service.
    pub fn request_started(self: &Arc<Head>) -> Done {
        self.first_byte.store(0, Ordering::Relaxed);
        self.busy.fetch_add(1, Ordering::Relaxed);
        Done(Arc::clone(self))
    }

    /// What the connection waits for now, and until when: `None` while a request is being
    /// answered or the connection is a tunnel.
    fn deadline(&self) -> Option<(Waiting, tokio::time::Instant)> {
        if self.off.load(Ordering::Relaxed) || self.busy.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let (waiting, ms) = match self.first_byte.load(Ordering::Relaxed).checked_sub(1) {
            Some(first) => (Waiting::Head, first.checked_add(self.limit_ms)?),
            None => (
                Waiting::Idle,
                self.idle_since
                    .load(Ordering::Relaxed)
                    .checked_add(self.idle_ms.min(self.park_ms))?,
            ),
        };
        let at = self.opened.checked_add(Duration::from_millis(ms))?;
        Some((waiting, tokio::time::Instant::from_std(at)))
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
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
        let now = self.now_ms().saturating_add(1);
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

/// Held while a request is answered, until its response has been written out.
#[derive(Debug)]
pub struct Done(Arc<Head>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.idle_since.store(self.0.now_ms(), Ordering::Relaxed);
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a connection with no request in flight is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// The first byte of its next request.
    Idle,
    /// The rest of a head it has begun.
    Head,
}

/// A client connection's socket, its reads watched for the head deadline.
pub struct Watched<S> {
    inner: S,
    head: Arc<Head>,
    /// Armed the first time the connection waits, then moved lazily (see the module's text).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, head: Arc<Head>) -> Watched<S> {
        Watched {
            inner,
            head,
            timer: None,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut idle_over = false;
        if let Some((waiting, at)) = self.head.deadline() {
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            if timer.deadline() > at {
                timer.as_mut().reset(at);
            }
            // Fired: the deadline passed, or the timer was set for an earlier one (the last
            // idle period's) and is moved on now.
            while timer.as_mut().poll(cx).is_ready() {
                if tokio::time::Instant::now() >= at {
                    if waiting == Waiting::Head {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "request head not complete within header_read of its first byte",
                        )));
                    }
                    idle_over = true;
                    break;
                }
                timer.as_mut().reset(at);
            }
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            // Idle past `idle` with nothing to read: read as the client's close, so the server
            // ends the connection quietly. A request that is already there is taken.
            // Idle past the park time, sooner than `idle`: the same, and the server parks it.
            Poll::Pending if idle_over => {
                if self.head.park_ms < self.head.idle_ms {
                    self.head.park_due.store(true, Ordering::Relaxed);
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => r?,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_runs_from_a_heads_first_byte_and_only_between_requests() {
        let head = Head::new(Duration::ZERO, Duration::from_secs(60));
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

    #[tokio::test]
    async fn a_head_that_stops_arriving_is_cut_at_its_deadline_an_idle_connection_is_not() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let limit = Duration::from_millis(100);
        let (mut client, server) = tokio::io::duplex(1024);
        let head = Head::new(limit, Duration::from_secs(60));
        let mut io = Watched::new(server, Arc::clone(&head));
        let mut buf = [0u8; 64];

        // Waiting for a first head is idleness, not a head's time: nothing cuts it here.
        let idle = tokio::time::timeout(limit * 3, io.read(&mut buf)).await;
        assert!(idle.is_err(), "an idle connection was cut: {idle:?}");

        // A head in one piece, answered: the next wait is idle again.
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(io.read(&mut buf).await.unwrap() > 0);
        drop(head.request_started());
        let idle = tokio::time::timeout(limit * 3, io.read(&mut buf)).await;
        assert!(idle.is_err(), "an idle connection was cut: {idle:?}");

        // Part of a head, then nothing: cut at the deadline, not left to wait.
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert!(io.read(&mut buf).await.unwrap() > 0);
        let started = std::time::Instant::now();
        let cut = tokio::time::timeout(Duration::from_secs(5), io.read(&mut buf))
            .await
            .expect("cut within 5 s");
        assert_eq!(cut.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= limit / 2, "{:?}", started.elapsed());
    }
}
