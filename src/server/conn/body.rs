//! A request's body as a service reads it ([`RequestBody`]). While a body is being read it owns
//! the connection's read side ([`Reader`]); at its end, or when the service drops it, it hands
//! the read side back, so the connection reads the next request from where the body stopped.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::oneshot;

use super::super::head_deadline::Watched;
use crate::http1::{ChunkError, Chunked, Decoded};

/// How much room a body read asks for.
const BODY_READ: usize = 16 * 1024;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The read side of a client connection: its socket, watched for the head deadlines, and the
/// bytes read but not used yet. Holds no buffer while the connection idles.
pub(crate) struct Reader {
    pub(super) io: Watched<OwnedReadHalf>,
    pub(super) buf: BytesMut,
}

/// Where a body stands.
#[derive(Debug)]
pub(super) enum Left {
    /// This many bytes more.
    Length(u64),
    Chunked(Chunked),
    Done,
}

impl Left {
    /// Takes what of the body is in `buf`: the next frame, or `None` if more bytes are needed
    /// (or the body is over: see [`Left::Done`]).
    pub(super) fn take(&mut self, buf: &mut BytesMut) -> Result<Option<Frame<Bytes>>, ChunkError> {
        match self {
            Left::Done => Ok(None),
            Left::Length(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                *left -= n as u64;
                let data = buf.split_to(n).freeze();
                if *left == 0 {
                    *self = Left::Done;
                }
                Ok(Some(Frame::data(data)))
            }
            Left::Chunked(chunks) => match chunks.decode(buf)? {
                Decoded::Data(data) => Ok(Some(Frame::data(data))),
                Decoded::Trailers(map) => {
                    *self = Left::Done;
                    Ok(Some(Frame::trailers(map)))
                }
                Decoded::End => {
                    *self = Left::Done;
                    Ok(None)
                }
                Decoded::More => Ok(None),
            },
        }
    }
}

/// A request body failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("the client closed its connection before the end of the body")]
    Incomplete,
    #[error("malformed chunked body: {0}")]
    Malformed(#[from] ChunkError),
    #[error("reading the body: {0}")]
    Io(#[from] io::Error),
}

impl BodyError {
    /// The client went away mid-body, rather than sending a malformed one.
    pub(crate) fn is_gone(&self) -> bool {
        use std::io::ErrorKind::*;
        match self {
            BodyError::Incomplete => true,
            BodyError::Io(e) => matches!(
                e.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
            ),
            BodyError::Malformed(_) => false,
        }
    }
}

/// A request's body: nothing, or bytes read from the client as the service asks for them.
pub(crate) struct RequestBody(Option<Box<Reading>>);

/// A body being read, and the way back to its connection.
struct Reading {
    reader: Option<Reader>,
    left: Left,
    /// Bytes of the `100 Continue` still to write, if the client waits for one.
    continue_owed: usize,
    back: Option<oneshot::Sender<(Reader, Left)>>,
    failed: bool,
}

impl RequestBody {
    /// A request without a body.
    pub(crate) fn empty() -> RequestBody {
        RequestBody(None)
    }

    /// A body read from `reader`; the read side goes back through `back` when the body ends
    /// or is dropped.
    pub(super) fn reading(
        reader: Reader,
        left: Left,
        expect_continue: bool,
        back: oneshot::Sender<(Reader, Left)>,
    ) -> RequestBody {
        RequestBody(Some(Box::new(Reading {
            reader: Some(reader),
            left,
            continue_owed: if expect_continue { CONTINUE.len() } else { 0 },
            back: Some(back),
            failed: false,
        })))
    }
}

impl Reading {
    fn give_back(&mut self) {
        if let (Some(reader), Some(back)) = (self.reader.take(), self.back.take()) {
            let left = std::mem::replace(&mut self.left, Left::Done);
            // A failed body leaves the connection unusable: it is not handed back.
            if !self.failed {
                let _ = back.send((reader, left));
            }
        }
    }

    /// Writes what is owed of the `100 Continue`, straight to the socket.
    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(reader) = &self.reader else {
            return Poll::Ready(Ok(()));
        };
        let stream = reader.io.get_ref().as_ref();
        while self.continue_owed > 0 {
            let from = CONTINUE.len() - self.continue_owed;
            match stream.try_write(&CONTINUE[from..]) {
                Ok(n) => self.continue_owed -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(stream.poll_write_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            let Some(reader) = self.reader.as_mut() else {
                return Poll::Ready(None);
            };
            match self.left.take(&mut reader.buf) {
                Ok(Some(frame)) => {
                    if matches!(self.left, Left::Done) {
                        self.give_back();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(None) if matches!(self.left, Left::Done) => {
                    self.give_back();
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(e) => {
                    self.failed = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            if self.continue_owed > 0 {
                if let Err(e) = ready!(self.poll_continue(cx)) {
                    self.failed = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            let Some(reader) = self.reader.as_mut() else {
                return Poll::Ready(None);
            };
            reader.buf.reserve(BODY_READ);
            match ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut reader.io),
                cx,
                &mut reader.buf
            )) {
                Ok(0) => {
                    self.failed = true;
                    return Poll::Ready(Some(Err(BodyError::Incomplete)));
                }
                Ok(_) => {}
                Err(e) => {
                    self.failed = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        self.give_back();
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.0.as_mut() {
            Some(reading) => reading.poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(|r| matches!(r.left, Left::Done))
    }

    fn size_hint(&self) -> SizeHint {
        match self.0.as_ref().map(|r| &r.left) {
            None | Some(Left::Done) => SizeHint::with_exact(0),
            Some(Left::Length(n)) => SizeHint::with_exact(*n),
            Some(Left::Chunked(_)) => SizeHint::default(),
        }
    }
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("RequestBody(empty)"),
            Some(r) => write!(f, "RequestBody({:?})", r.left),
        }
    }
}
