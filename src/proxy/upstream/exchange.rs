//! One request and its response on a backend connection, driven from the request's own task:
//! no task per connection and no channel between the request and its socket.
//!
//! The request is written and its response read at once (full duplex): a backend may answer
//! before it has read the whole body, or stream its answer as the body comes. The exchange
//! ends with the response head ([`Link::exchange`]); the body is then a [`Streaming`], which
//! goes on sending whatever is left of the request body, and gives the connection back to
//! the idle list when the response is read to its end, or closes it.
//!
//! A connection holds no buffer while it is idle: the read buffer is dropped when a response
//! ends and made again by the next, and request heads are written from a few buffers each
//! worker thread keeps ([`Scratch`](crate::buffers::Scratch)).

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Empty};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;

use super::codec::{self, BackendError, Chunked, Decoded, Framing, Outgoing, ResponseHead};
use super::{Conn, Connections};
use crate::buffers::Scratch;
use crate::proxy::body::RequestBody;
use crate::server::BoxError;

/// The first read of a response takes up to this much; a read that fills its room doubles the
/// next, up to [`MAX_READ`].
const FIRST_READ: usize = crate::buffers::SIZE;
const MAX_READ: usize = 64 * 1024;

/// Body frames up to this size are copied behind the head (or the chunk size) and go out in
/// one write; larger ones are written from their own buffer.
const COPY_UP_TO: usize = 4 * 1024;

/// A backend connection's socket and what has been read from it but not yet consumed.
pub(crate) struct Link {
    stream: TcpStream,
    buf: BytesMut,
    /// Room the next read asks for.
    read_size: usize,
    /// Bytes read on this connection so far.
    read: u64,
}

/// What an idle connection shows when it is looked at.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Look {
    /// Nothing arrived: it can carry a request.
    Quiet,
    /// Bytes arrived that answer no request.
    Spoiled,
    /// The backend closed it, or it failed.
    Closed,
}

impl Link {
    pub(crate) fn new(stream: TcpStream) -> Link {
        Link {
            stream,
            buf: BytesMut::new(),
            read_size: FIRST_READ,
            read: 0,
        }
    }

    /// Looks at an idle connection without a system call unless the runtime has heard of
    /// something on it: a read is made only when the socket is marked readable (a byte or a
    /// close arrived, or the last read of the response did not show it was drained).
    pub(crate) fn look(&self) -> Look {
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => Look::Quiet,
            Poll::Ready(Err(_)) => Look::Closed,
            Poll::Ready(Ok(())) => match self.stream.try_read(&mut [0u8; 64]) {
                Ok(0) => Look::Closed,
                Ok(_) => Look::Spoiled,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Look::Quiet,
                Err(_) => Look::Closed,
            },
        }
    }

    /// Lets go of the read buffer as the connection goes idle; `false` if bytes were left in
    /// it, which answer no request.
    pub(crate) fn settle(&mut self) -> bool {
        let clean = self.buf.is_empty();
        crate::buffers::give(std::mem::take(&mut self.buf));
        clean
    }

    /// The socket and whatever was read past the response head, for a tunnel.
    pub(crate) fn into_parts(self) -> (TcpStream, BytesMut) {
        (self.stream, self.buf)
    }

    /// Writes `req` and reads its response head, sending the request body as it comes
    /// meanwhile. What is left of the body to send goes with the answer.
    pub(crate) async fn exchange(&mut self, req: Request<RequestBody>) -> Result<Answer, Failed> {
        let (parts, body) = req.into_parts();
        let framing = Outgoing::of(&parts.headers, body.is_end_stream());
        let mut out = Scratch::take();
        codec::encode_request(&parts.method, &parts.uri, &parts.headers, framing, &mut out);
        let mut sending = Sending::new(out, framing, body);
        let read_before = self.read;
        let mut write_failed: Option<io::Error> = None;
        let head = poll_fn(|cx| {
            if write_failed.is_none() && !sending.finished() {
                match sending.poll_send(&mut self.stream, cx) {
                    Poll::Ready(Ok(())) | Poll::Pending => {}
                    Poll::Ready(Err(SendError::Client(e))) => {
                        return Poll::Ready(Err(Broke::Client(e)));
                    }
                    // The backend may have answered before it stopped reading (a 413, say):
                    // the answer is read all the same, and the connection is not reused.
                    Poll::Ready(Err(SendError::Backend(e))) => write_failed = Some(e),
                }
            }
            self.poll_head(cx, &parts.method).map_err(Broke::Backend)
        })
        .await;
        match head {
            Ok(head) => {
                let keep_alive = head.keep_alive && write_failed.is_none();
                Ok(Answer {
                    head,
                    keep_alive,
                    sending: (!sending.finished() && write_failed.is_none()).then_some(sending),
                })
            }
            Err(Broke::Client(e)) => Err(Failed::Client(e)),
            Err(Broke::Backend(error)) => {
                let error = match (error, write_failed) {
                    (BackendError::Closed, Some(w)) => BackendError::Io(w),
                    (error, _) => error,
                };
                Err(Failed::Backend {
                    error,
                    unsent: sending
                        .untouched()
                        .map(|body| Box::new(Request::from_parts(parts, body))),
                    answered: self.read > read_before,
                })
            }
        }
    }

    /// Reads until a whole response head is in the buffer.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        method: &Method,
    ) -> Poll<Result<ResponseHead, BackendError>> {
        loop {
            if let Some(head) = codec::parse_response(&mut self.buf, method)? {
                return Poll::Ready(Ok(head));
            }
            if ready!(self.poll_read(cx))? == 0 {
                return Poll::Ready(Err(BackendError::Closed));
            }
        }
    }

    /// One read into the buffer: the bytes read, 0 at the end of the stream.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() == 0 {
            self.buf = crate::buffers::take();
        } else if self.buf.capacity() - self.buf.len() < self.read_size / 2 {
            self.buf.reserve(self.read_size);
        }
        let room = self.buf.capacity() - self.buf.len();
        let n = ready!(poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf))?;
        self.read += n as u64;
        if n == room {
            self.read_size = (self.read_size * 2).min(MAX_READ);
        }
        Poll::Ready(Ok(n))
    }
}

/// A response head, and what is left of the request body to send.
pub(crate) struct Answer {
    pub(crate) head: ResponseHead,
    keep_alive: bool,
    sending: Option<Sending>,
}

impl Answer {
    /// The response's parts and its body, which owns the connection from now on.
    pub(crate) fn into_response(
        self,
        conn: Conn,
        idle: Arc<Connections>,
    ) -> (http::response::Parts, Streaming) {
        let head = self.head;
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = head.status;
        parts.version = head.version;
        parts.headers = head.headers;
        let state = match head.framing {
            Framing::Empty => State::Length(0),
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunked::default()),
            Framing::UntilClose => State::UntilClose,
        };
        let body = Streaming {
            conn: Some(conn),
            state,
            sending: self.sending,
            keep_alive: self.keep_alive,
            idle,
        };
        (parts, body)
    }
}

/// How an exchange failed before a response head came.
pub(crate) enum Failed {
    /// The client's request body failed (wrapped in `ClientFault` by its `Paced`).
    Client(BoxError),
    Backend {
        error: BackendError,
        /// The request, when not a byte of it was written nor any of its body taken.
        unsent: Option<Box<Request<RequestBody>>>,
        /// Some byte came back on the connection during the exchange.
        answered: bool,
    },
}

/// Why a request could not be written.
enum SendError {
    /// The client's request body failed.
    Client(BoxError),
    Backend(io::Error),
}

/// Why an exchange ended without a response head.
enum Broke {
    Client(BoxError),
    /// Reading failed, or the backend broke the protocol.
    Backend(BackendError),
}

/// A request on its way out: bytes framed and waiting to be written, and the body they come
/// from.
pub(crate) struct Sending {
    out: Scratch,
    /// Written of `out` so far.
    pos: usize,
    /// A large body frame, written after `out`.
    data: Bytes,
    /// The chunk that `data` is ends with CRLF, written after it.
    crlf_after_data: bool,
    framing: Outgoing,
    /// `None` once the body has ended.
    body: Option<RequestBody>,
    /// A frame was taken from the body, or a byte written: the request can no longer be
    /// handed back whole.
    touched: bool,
}

impl Sending {
    fn new(out: Scratch, framing: Outgoing, body: RequestBody) -> Sending {
        Sending {
            out,
            pos: 0,
            data: Bytes::new(),
            crlf_after_data: false,
            framing,
            body: (framing != Outgoing::None).then_some(body),
            touched: false,
        }
    }

    /// Everything is written.
    fn finished(&self) -> bool {
        self.body.is_none() && self.pos == self.out.len() && self.data.is_empty()
    }

    /// The body, if nothing of the request went anywhere yet.
    fn untouched(self) -> Option<RequestBody> {
        if self.touched {
            return None;
        }
        Some(self.body.unwrap_or_else(|| Either::Right(Empty::new())))
    }

    /// Writes what is framed and frames what the body has ready, until both wait or all is
    /// written.
    fn poll_send(
        &mut self,
        stream: &mut TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SendError>> {
        loop {
            while self.data.is_empty() && self.out.len() - self.pos < MAX_READ {
                let Some(body) = self.body.as_mut() else {
                    break;
                };
                match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        self.touched = true;
                        // Trailers of a request are dropped (RFC 9110 §6.5.1 allows it).
                        if let Ok(data) = frame.into_data() {
                            self.push(data);
                        }
                    }
                    Poll::Ready(None) => {
                        if self.framing == Outgoing::Chunked {
                            self.out.extend_from_slice(b"0\r\n\r\n");
                        }
                        self.body = None;
                    }
                    Poll::Ready(Some(Err(e))) => {
                        self.touched = true;
                        return Poll::Ready(Err(SendError::Client(e)));
                    }
                    Poll::Pending => break,
                }
            }
            if self.pos == self.out.len() && self.data.is_empty() {
                return if self.body.is_none() {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
            let pending = &self.out[self.pos..];
            let written = if self.data.is_empty() {
                Pin::new(&mut *stream).poll_write(cx, pending)
            } else if pending.is_empty() {
                Pin::new(&mut *stream).poll_write(cx, &self.data)
            } else {
                let slices = [IoSlice::new(pending), IoSlice::new(&self.data)];
                Pin::new(&mut *stream).poll_write_vectored(cx, &slices)
            };
            let n = match ready!(written) {
                Ok(0) => {
                    return Poll::Ready(Err(SendError::Backend(io::ErrorKind::WriteZero.into())));
                }
                Ok(n) => n,
                Err(e) => return Poll::Ready(Err(SendError::Backend(e))),
            };
            self.touched = true;
            let from_out = n.min(pending.len());
            self.pos += from_out;
            self.data.advance(n - from_out);
            if self.pos == self.out.len() {
                self.out.clear();
                self.pos = 0;
                if self.data.is_empty() && std::mem::take(&mut self.crlf_after_data) {
                    self.out.extend_from_slice(b"\r\n");
                }
            }
        }
    }

    /// Frames one piece of the body.
    fn push(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        let chunked = self.framing == Outgoing::Chunked;
        if chunked {
            codec::chunk_header(data.len(), &mut self.out);
        }
        if data.len() <= COPY_UP_TO {
            self.out.extend_from_slice(&data);
            if chunked {
                self.out.extend_from_slice(b"\r\n");
            }
        } else {
            self.data = data;
            self.crlf_after_data = chunked;
        }
    }
}

/// A backend's response body as it arrives, decoded from its framing. Owns the connection:
/// read to its end on a connection that may be kept, the connection goes back to the idle
/// list; otherwise it is closed when the body is dropped.
pub(crate) struct Streaming {
    conn: Option<Conn>,
    state: State,
    sending: Option<Sending>,
    keep_alive: bool,
    idle: Arc<Connections>,
}

enum State {
    /// Bytes left.
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    /// Read to its end.
    Done,
}

impl Streaming {
    /// The body has been read to its end: the connection goes back if it can carry another
    /// request: the response said so, the request was all written, and no byte came after it.
    fn finish(&mut self) {
        self.state = State::Done;
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let clean = conn.link.settle();
        if !clean {
            self.idle.unexpected(conn.addr);
        }
        if clean && self.keep_alive && self.sending.is_none() {
            self.idle.checkin(conn);
        }
    }

    fn complete(&self) -> bool {
        match &self.state {
            State::Length(0) | State::Done => true,
            State::Chunked(c) => c.done(),
            _ => false,
        }
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        // A writer may stop polling a body it was told is complete.
        if self.complete() {
            self.finish();
        }
    }
}

impl Body for Streaming {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(sending) = this.sending.as_mut() {
            match sending.poll_send(&mut conn.link.stream, cx) {
                Poll::Ready(Ok(())) => this.sending = None,
                // The request body failed (the client's or the write): the response goes on,
                // the connection ends with it.
                Poll::Ready(Err(_)) => {
                    this.sending = None;
                    this.keep_alive = false;
                }
                Poll::Pending => {}
            }
        }
        loop {
            let buf = &mut conn.link.buf;
            match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Length(0) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                State::Length(left) if !buf.is_empty() => {
                    let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                    *left -= take as u64;
                    let data = buf.split_to(take).freeze();
                    if *left == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Chunked(chunks) => match chunks.decode(buf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::Trailers(map)) => {
                        this.finish();
                        return Poll::Ready(Some(Ok(Frame::trailers(map))));
                    }
                    Ok(Decoded::End) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::More) => {}
                    Err(e) => {
                        this.conn = None;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                },
                State::UntilClose if !buf.is_empty() => {
                    return Poll::Ready(Some(Ok(Frame::data(buf.split().freeze()))));
                }
                State::Length(_) | State::UntilClose => {}
            }
            match ready!(conn.link.poll_read(cx)) {
                Ok(0) => {
                    let error = match this.state {
                        State::Length(left) => BackendError::Truncated(left),
                        State::Chunked(_) => BackendError::TruncatedChunks,
                        _ => {
                            this.keep_alive = false;
                            this.finish();
                            return Poll::Ready(None);
                        }
                    };
                    this.conn = None;
                    return Poll::Ready(Some(Err(error.into())));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(BackendError::Io(e).into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.complete()
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
