//! The bodies on the forwarding path: a streamed body with a stall deadline ([`Paced`]), and
//! a backend's response on its way to the client that ends the request's in-flight count and
//! writes its access line once over ([`Returning`]). The upstream connection under a response
//! is given back by the response's own body (`upstream::Streaming`).

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::access::Access;
use super::upstream::Streaming;
use crate::pool::InflightGuard;
use crate::server::BoxError;

/// The body sent upstream: the client's streamed body, or nothing (for a retried request).
pub(crate) type RequestBody =
    http_body_util::Either<Paced<crate::server::RequestBody>, http_body_util::Empty<Bytes>>;

/// The client's request body failed: it stalled, was malformed, or the client left.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body failed: {0}")]
pub(crate) struct ClientFault(#[source] BoxError);

/// What went wrong with a client's request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// No frame for `timeouts.body`.
    Stalled,
    /// The client closed its connection mid-body.
    Gone,
    /// Bad framing (a malformed chunk, say).
    Malformed,
}

impl ClientFault {
    /// The client's fault somewhere down `error`'s chain, if that is what failed.
    pub(crate) fn find(error: &(dyn std::error::Error + 'static)) -> Option<Fault> {
        let fault = chain(error).find_map(|e| e.downcast_ref::<ClientFault>())?;
        let cause = fault.0.as_ref();
        if chain(cause).any(|e| e.is::<Stalled>()) {
            return Some(Fault::Stalled);
        }
        let gone = chain(cause).any(|e| {
            e.downcast_ref::<crate::server::BodyError>()
                .is_some_and(crate::server::BodyError::is_gone)
                || e.downcast_ref::<std::io::Error>().is_some_and(|io| {
                    use std::io::ErrorKind::*;
                    matches!(
                        io.kind(),
                        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
                    )
                })
        });
        Some(if gone { Fault::Gone } else { Fault::Malformed })
    }
}

/// `error` and its sources, in order.
fn chain<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |e| e.source())
}

/// A body, from the client or from a backend, paused longer than `timeouts.body`.
#[derive(Debug, thiserror::Error)]
#[error("the body stalled for {0:?}")]
pub(crate) struct Stalled(Duration);

pin_project_lite::pin_project! {
    /// A streamed body that fails with [`Stalled`] when no frame comes for `limit`. The timer
    /// is made only the first time the body has to wait, so a body that is already there when
    /// it is read (most are) costs no timer at all.
    pub(crate) struct Paced<B> {
        #[pin]
        inner: B,
        limit: Duration,
        stall: Option<Pin<Box<tokio::time::Sleep>>>,
        progressed: bool,
        // The client's request body: its failures are wrapped in `ClientFault`, so that they
        // are never taken for the backend's.
        from_client: bool,
    }
}

impl<B> Paced<B> {
    pub(crate) fn new(inner: B, limit: Duration) -> Paced<B> {
        Paced {
            inner,
            limit,
            stall: None,
            progressed: false,
            from_client: false,
        }
    }

    /// A client's request body on its way upstream.
    pub(crate) fn from_client(inner: B, limit: Duration) -> Paced<B> {
        Paced {
            from_client: true,
            ..Paced::new(inner, limit)
        }
    }
}

impl<B> Body for Paced<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                *this.progressed = true;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let limit = *this.limit;
                let stall = this
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if std::mem::take(this.progressed) {
                    // The clock restarts with each wait, not with each frame.
                    stall.as_mut().reset(tokio::time::Instant::now() + limit);
                }
                match stall.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(Stalled(limit)) as BoxError))),
                    Poll::Pending => Poll::Pending,
                }
            }
        };
        if *this.from_client {
            polled.map_err(|e| Box::new(ClientFault(e)) as BoxError)
        } else {
            polled
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A backend's response body on its way to the client: ends the request's in-flight count
    /// and writes its access line once the body is over. The connection under it is the
    /// body's own business ([`Streaming`]).
    pub(crate) struct Returning {
        #[pin]
        inner: Paced<Streaming>,
        addr: SocketAddr,
        guard: Option<InflightGuard>,
        // The request's access line, written when the body ends or fails (taken and dropped),
        // or with the body (the client went away); `None` when the access log is off.
        access: Option<Box<Access>>,
    }
}

impl Returning {
    pub(crate) fn new(
        inner: Paced<Streaming>,
        addr: SocketAddr,
        guard: InflightGuard,
    ) -> Returning {
        Returning {
            inner,
            addr,
            guard: Some(guard),
            access: None,
        }
    }

    /// Counts the bytes the client is sent into `access`, and writes it when the body is over.
    pub(crate) fn log_to(&mut self, access: Box<Access>) {
        self.access = Some(access);
    }
}

impl Body for Returning {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(access), Some(data)) = (this.access.as_mut(), frame.data_ref()) {
                    access.sent(data.len());
                }
            }
            Poll::Ready(None) => {
                this.guard.take();
                drop(this.access.take());
            }
            Poll::Ready(Some(Err(e))) => {
                // The rest of the response is lost: the connection is closed, the client's cut.
                tracing::warn!(addr = %this.addr, error = %e, "response body cut off");
                this.guard.take();
                drop(this.access.take());
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
