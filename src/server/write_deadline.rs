//! A client connection's writes, bounded: when a client stops reading, the response it is sent
//! cannot be written, and without a bound it would hold both its connection and the backend's
//! until the backend gave up. A write that can make no progress for `timeouts.body` fails the
//! connection, which closes it, and with it the backend connection its response came on.
//!
//! The timer is made only the first time a write has to wait, and reset, not remade, for later
//! waits: a client that reads as fast as it is written to never costs one.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pin_project_lite::pin_project! {
    pub(crate) struct WriteDeadline<S> {
        #[pin]
        inner: S,
        limit: Duration,
        stall: Option<Pin<Box<tokio::time::Sleep>>>,
        // A write made progress since the timer was last set.
        progressed: bool,
    }
}

impl<S> WriteDeadline<S> {
    pub(crate) fn new(inner: S, limit: Duration) -> WriteDeadline<S> {
        WriteDeadline {
            inner,
            limit,
            stall: None,
            progressed: true,
        }
    }

    pub(crate) fn into_inner(self) -> S {
        self.inner
    }
}

/// What a write returned, checked against the deadline: progress clears it, waiting arms it.
fn watch<T>(
    polled: Poll<io::Result<T>>,
    cx: &mut Context<'_>,
    limit: Duration,
    stall: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    progressed: &mut bool,
) -> Poll<io::Result<T>> {
    if polled.is_ready() {
        *progressed = true;
        return polled;
    }
    let sleep = stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
    if std::mem::take(progressed) {
        // The clock runs from the first wait after progress, not from each poll.
        sleep.as_mut().reset(tokio::time::Instant::now() + limit);
    }
    match sleep.as_mut().poll(cx) {
        Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client read nothing for {limit:?}"),
        ))),
        Poll::Pending => Poll::Pending,
    }
}

impl<S: AsyncRead> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<S: AsyncWrite> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write(cx, buf);
        watch(polled, cx, *this.limit, this.stall, this.progressed)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write_vectored(cx, bufs);
        watch(polled, cx, *this.limit, this.stall, this.progressed)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let polled = this.inner.poll_flush(cx);
        watch(polled, cx, *this.limit, this.stall, this.progressed)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
