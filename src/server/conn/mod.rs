//! HTTP/1.1 with one client, spoken by sweeplb: request heads read ([`request`]), bodies read
//! as the service asks ([`body`]), responses written ([`response`]), keep-alive, pipelining,
//! `Expect: 100-continue` and upgrades to a tunnel.
//!
//! One task per connection, which reads a head, calls the service, and writes the response
//! while the service's body produces it. The connection holds no buffer between requests: the
//! read buffer exists while bytes are in it, and a response is framed into the worker
//! thread's scratch buffer and written with one `writev` per batch of frames.

pub(crate) mod body;
pub(crate) mod request;
mod response;

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures::FutureExt;
use http::{Response, StatusCode};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;

use super::head_deadline::{Head as Deadlines, Watched};
use super::write_deadline::WriteDeadline;
use super::{BoxError, Client, PARK_AFTER, Service, Settings};
use crate::buffers::Scratch;
use crate::http1::Chunked;
use body::{Left, Reader, RequestBody};
use request::Framing;
use response::{Encoder, Exchange, Size};

/// The first read of a head asks for this much room; a head that does not fit gets more.
const HEAD_READ: usize = 4 * 1024;

/// A body frame this large is written from its own buffer rather than copied.
const COPY_UNDER: usize = 4 * 1024;

/// Framed bytes written in one go once they reach this much.
const FLUSH_AT: usize = 64 * 1024;

/// The client's side of a connection that switched protocols: its socket, and the bytes it
/// sent past the request head. Handed to whoever holds the request's [`OnUpgrade`] once the
/// 101 has been written.
pub(crate) struct Upgraded {
    early: Bytes,
    read: Watched<OwnedReadHalf>,
    write: WriteDeadline<OwnedWriteHalf>,
}

/// In a request's extensions when it asks to switch protocols: resolves to the client's
/// socket if the response is a 101. (Clone, as extensions must be; one clone gets it.)
#[derive(Clone)]
pub(crate) struct OnUpgrade(Arc<std::sync::Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl OnUpgrade {
    pub(crate) async fn upgraded(self) -> Result<Upgraded, &'static str> {
        let taken = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        let ended = "the connection ended before switching protocols";
        taken.ok_or(ended)?.await.map_err(|_| ended)
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.early.is_empty() {
            let n = self.early.len().min(buf.remaining());
            buf.put_slice(&self.early[..n]);
            self.early.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.write).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_shutdown(cx)
    }
}

/// Why a connection ended other than by the client's clean close.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Ended {
    #[error("refused a request head: {0}")]
    Refused(#[from] request::Refused),
    #[error("the client closed mid-head")]
    MidHead,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the response body failed: {0}")]
    Body(BoxError),
    #[error("the response body did not match its Content-Length")]
    Length,
}

/// Serves HTTP/1.1 on `stream` until the client closes, an error, or `stop` (an idle
/// connection closes at once; a busy one after its response). A connection that has waited
/// [`PARK_AFTER`] for its next request, with nothing of it read, is handed back to be
/// parked.
pub(crate) async fn serve<S: Service>(
    stream: TcpStream,
    service: &S,
    client: &Client,
    settings: &Settings,
    mut stop: oneshot::Receiver<()>,
) -> Result<Option<TcpStream>, Ended> {
    let deadlines = Deadlines::parking(settings.header_read, settings.idle, Some(PARK_AFTER));
    let (read, write) = stream.into_split();
    let mut side = ReadSide {
        here: Some((
            Reader {
                io: Watched::new(read, Arc::clone(&deadlines)),
                buf: BytesMut::new(),
            },
            Left::Done,
        )),
        away: None,
    };
    let mut writer = Writer {
        io: WriteDeadline::new(write, settings.write_stall),
    };
    let mut stopping = false;
    while let Some((mut rd, _)) = side.here.take() {
        // Waiting for a request's first bytes is all an idle connection does, and this small
        // future all it holds; the rest of the head is read in the request's boxed part.
        if rd.buf.is_empty() {
            let first = tokio::select! {
                biased;
                first = read_pooled(&mut rd.io) => first,
                _ = &mut stop, if !stopping => return Ok(None),
            };
            match first {
                Ok(Some(buf)) => rd.buf = buf,
                Ok(None) if deadlines.park_due() && !stopping => {
                    let read = rd.io.into_inner();
                    return Ok(read.reunite(writer.io.into_inner()).ok());
                }
                Ok(None) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        // Boxed: the request's part (its head, the service's future, ~4.7 KiB for the
        // proxy's, and the response being written) would otherwise make every connection's
        // task that much larger for its whole life, idle or not; boxed, an idle connection
        // holds nothing of it.
        let next = Box::pin(exchange(
            service,
            client,
            rd,
            &mut side,
            &mut writer,
            &deadlines,
            settings,
            &mut stop,
            &mut stopping,
        ))
        .await?;
        match next {
            Next::Request => {}
            Next::Close => {
                let _ = writer.io.shutdown().await;
                return Ok(None);
            }
            Next::Gone => return Ok(None),
            Next::Upgraded(tx, early) => {
                if let Some((rd, _)) = side.here.take() {
                    let _ = tx.send(Upgraded {
                        early,
                        read: rd.io,
                        write: writer.io,
                    });
                }
                return Ok(None);
            }
        }
    }
    Ok(None)
}

/// What a connection does after an exchange.
enum Next {
    /// Reads the next request.
    Request,
    /// Closes.
    Close,
    /// The client left: nothing more to write.
    Gone,
    /// Hands the socket over: the protocol switched.
    Upgraded(oneshot::Sender<Upgraded>, Bytes),
}

/// One request from its first bytes: the rest of its head read, the service called with it,
/// and its response written.
#[allow(clippy::too_many_arguments)]
async fn exchange<S: Service>(
    service: &S,
    client: &Client,
    mut rd: Reader,
    side: &mut ReadSide,
    writer: &mut Writer,
    deadlines: &Arc<Deadlines>,
    settings: &Settings,
    stop: &mut oneshot::Receiver<()>,
    stopping: &mut bool,
) -> Result<Next, Ended> {
    let head = match read_head(&mut rd, settings.max_head).await {
        Ok(head) => head,
        Err(Ended::Refused(refused)) => {
            writer.refuse(refused.status).await;
            return Err(refused.into());
        }
        Err(e) => return Err(e),
    };
    let done = deadlines.request_started();
    client
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let request::Head {
        request,
        framing,
        mut keep_alive,
        expect_continue,
        wants_upgrade,
    } = head;
    let body = match framing {
        Framing::Empty => {
            side.here = Some((rd, Left::Done));
            RequestBody::empty()
        }
        Framing::Length(n) => side.lend(rd, Left::Length(n), expect_continue),
        Framing::Chunked => side.lend(rd, Left::Chunked(Chunked::default()), expect_continue),
    };
    let method = request.method().clone();
    let version = request.version();
    let mut request = request.map(|()| body);
    let upgrade = wants_upgrade.then(|| {
        let (tx, rx) = oneshot::channel();
        request
            .extensions_mut()
            .insert(OnUpgrade(Arc::new(std::sync::Mutex::new(Some(rx)))));
        tx
    });
    // A client that leaves while its request is answered cancels it, as hyper did: the
    // request's future is dropped, and with it the exchange with the backend.
    let response = tokio::select! {
        biased;
        response = service.call(request, client) => response,
        () = side.client_left(settings.max_head) => return Ok(Next::Gone),
    };
    if !*stopping && !matches!(stop.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
        *stopping = true;
    }
    keep_alive &= !*stopping;
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(tx), Some((rd, Left::Done))) = (switching, upgrade, side.here.as_mut()) {
        let ex = Exchange {
            method: &method,
            version,
            keep_alive: false,
        };
        let early = rd.buf.split().freeze();
        writer.respond(response, &ex).await?;
        deadlines.stop_watching();
        return Ok(Next::Upgraded(tx, early));
    }
    let ex = Exchange {
        method: &method,
        version,
        keep_alive: keep_alive && !switching,
    };
    keep_alive = writer.respond(response, &ex).await?;
    drop(done);
    match side.finish() {
        Some(mut rd) if keep_alive => {
            // Empty lines before a request line are ignored (RFC 9112, 2.2); some clients
            // end a request with one. Dropped now, they do not keep a buffer held.
            let blank = rd.buf.iter().take_while(|&&b| matches!(b, b'\r' | b'\n'));
            rd.buf.advance(blank.count());
            if rd.buf.is_empty() {
                // Idle: no buffer held until the next request's bytes come.
                crate::buffers::give(std::mem::take(&mut rd.buf));
            }
            side.here = Some((rd, Left::Done));
            Ok(Next::Request)
        }
        _ => Ok(Next::Close),
    }
}

/// The connection's read side, wherever it is: here, or lent to a request's body, which gives
/// it back when it is read to its end or dropped.
struct ReadSide {
    /// The reader, and what is left of the current request's body in it.
    here: Option<(Reader, Left)>,
    away: Option<oneshot::Receiver<(Reader, Left)>>,
}

impl ReadSide {
    /// Lends `rd` to a body of `left`.
    fn lend(&mut self, rd: Reader, left: Left, expect_continue: bool) -> RequestBody {
        let (tx, rx) = oneshot::channel();
        self.away = Some(rx);
        RequestBody::reading(rd, left, expect_continue, tx)
    }

    /// Resolves when the client closes (or its socket fails) while its request is answered.
    /// Meanwhile it reads ahead: what is left of a body the service dropped, and a pipelined
    /// request's bytes, up to `ahead` bytes.
    async fn client_left(&mut self, ahead: usize) {
        loop {
            let Some((rd, left)) = self.here.as_mut() else {
                match self.away.as_mut() {
                    Some(away) => {
                        let back = away.await;
                        self.away = None;
                        match back {
                            Ok(back) => self.here = Some(back),
                            // The body failed: nothing more to read here.
                            Err(_) => std::future::pending().await,
                        }
                    }
                    None => std::future::pending().await,
                }
                continue;
            };
            while let Ok(Some(_)) = left.take(&mut rd.buf) {}
            if rd.buf.len() >= ahead {
                std::future::pending::<()>().await;
            }
            // Room is made only once the socket is readable: a request whose client sends
            // nothing more (most) costs no buffer and no system call here.
            let socket = rd.io.get_ref().as_ref();
            if std::future::poll_fn(|cx| socket.poll_read_ready(cx))
                .await
                .is_err()
            {
                return;
            }
            rd.buf.reserve(HEAD_READ);
            match tokio_util::io::read_buf(&mut rd.io, &mut rd.buf).await {
                Ok(1..) => {}
                Ok(0) | Err(_) => return,
            }
        }
    }

    /// After a response: the reader, if the connection can go on. What is left of the body
    /// is read from what the client already sent; if it is not all there, or the body failed,
    /// or the service still holds the body, the connection ends.
    fn finish(&mut self) -> Option<Reader> {
        if let Some(mut away) = self.away.take() {
            self.here = away.try_recv().ok();
        }
        let (mut rd, mut left) = self.here.take()?;
        while let Ok(Some(_)) = left.take(&mut rd.buf) {}
        matches!(left, Left::Done).then_some(rd)
    }
}

/// Reads until `reader.buf`, which holds a head's first bytes, holds the whole head.
async fn read_head(reader: &mut Reader, max_head: usize) -> Result<request::Head, Ended> {
    loop {
        if let Some(head) = request::parse(&mut reader.buf, max_head)? {
            return Ok(head);
        }
        if reader.buf.capacity() - reader.buf.len() < 512 {
            reader.buf.reserve(HEAD_READ.max(reader.buf.len()));
        }
        if tokio_util::io::read_buf(&mut reader.io, &mut reader.buf).await? == 0 {
            return Err(Ended::MidHead);
        }
    }
}

/// The first bytes of a head, read into a pooled buffer that is held only while a read
/// brings bytes: an idle connection waits holding none. `None` if the client closed (or
/// idled out) first.
async fn read_pooled(io: &mut Watched<OwnedReadHalf>) -> io::Result<Option<BytesMut>> {
    std::future::poll_fn(|cx| {
        let mut buf = crate::buffers::take();
        match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, &mut buf) {
            Poll::Ready(Ok(1..)) => Poll::Ready(Ok(Some(buf))),
            ended => {
                crate::buffers::give(buf);
                ended.map_ok(|_| None)
            }
        }
    })
    .await
}

/// The write side of a client connection.
struct Writer {
    io: WriteDeadline<OwnedWriteHalf>,
}

impl Writer {
    /// Answers a refused head and lets the connection close.
    async fn refuse(&mut self, status: StatusCode) {
        let mut out = Scratch::take();
        response::encode_refusal(status, &mut out);
        let _ = self.io.write_all(&out).await;
        let _ = self.io.shutdown().await;
    }

    /// Writes `response` whole; whether the connection may carry another request.
    async fn respond<B>(&mut self, response: Response<B>, ex: &Exchange<'_>) -> Result<bool, Ended>
    where
        B: Body<Data = Bytes, Error: Into<BoxError>>,
    {
        let (parts, body) = response.into_parts();
        let size = if body.is_end_stream() {
            Size::Empty
        } else {
            match body.size_hint().exact() {
                Some(n) => Size::Exact(n),
                None => Size::Unknown,
            }
        };
        let mut out = Scratch::take();
        let (mut encoder, keep_alive) = response::encode_head(&parts, size, ex, &mut out);
        drop(parts);
        if encoder == Encoder::Length(0) {
            // No body (or none allowed): the body is not read, as hyper did not read it.
            drop(body);
            self.write_out(&mut out, None).await.map(|()| keep_alive)
        } else {
            self.write_body(body, &mut encoder, &mut out)
                .await
                .map(|()| keep_alive)
        }
    }

    async fn write_body<B>(
        &mut self,
        body: B,
        encoder: &mut Encoder,
        out: &mut Vec<u8>,
    ) -> Result<(), Ended>
    where
        B: Body<Data = Bytes, Error: Into<BoxError>>,
    {
        let body = std::pin::pin!(body);
        let mut body = body;
        loop {
            // A frame that is ready joins what is framed already; only when the body has to
            // wait does what is framed go out.
            let frame = match std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).now_or_never()
            {
                Some(frame) => frame,
                None => {
                    self.write_out(out, None).await?;
                    std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await
                }
            };
            let frame = match frame {
                None => {
                    match *encoder {
                        Encoder::Length(0) | Encoder::UntilClose => {}
                        Encoder::Length(_) => return Err(Ended::Length),
                        Encoder::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
                    }
                    return self.write_out(out, None).await;
                }
                Some(Err(e)) => return Err(Ended::Body(e.into())),
                Some(Ok(frame)) => frame,
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    if let (Ok(trailers), Encoder::Chunked) = (frame.into_trailers(), *encoder) {
                        response::encode_trailers(&trailers, out);
                        *encoder = Encoder::Length(0);
                        return self.write_out(out, None).await;
                    }
                    continue;
                }
            };
            if data.is_empty() {
                continue;
            }
            match encoder {
                Encoder::Length(left) => {
                    if data.len() as u64 > *left {
                        return Err(Ended::Length);
                    }
                    *left -= data.len() as u64;
                }
                Encoder::Chunked => crate::http1::chunk_header(data.len(), out),
                Encoder::UntilClose => {}
            }
            let chunked = *encoder == Encoder::Chunked;
            if data.len() < COPY_UNDER {
                out.extend_from_slice(&data);
                if chunked {
                    out.extend_from_slice(b"\r\n");
                }
                if out.len() >= FLUSH_AT {
                    self.write_out(out, None).await?;
                }
            } else {
                self.write_out(out, Some((data, chunked))).await?;
            }
            if *encoder == Encoder::Length(0) {
                // The whole length is framed: the body is not asked for more.
                return self.write_out(out, None).await;
            }
        }
    }

    /// Writes `out` and then `data` (and a chunk's CRLF after it), as one `writev` where the
    /// socket takes it all; `out` is left empty.
    async fn write_out(
        &mut self,
        out: &mut Vec<u8>,
        data: Option<(Bytes, bool)>,
    ) -> Result<(), Ended> {
        let (data, crlf): (&[u8], &[u8]) = match &data {
            Some((d, true)) => (d, b"\r\n"),
            Some((d, false)) => (d, b""),
            None => (b"", b""),
        };
        let mut slices = [IoSlice::new(out), IoSlice::new(data), IoSlice::new(crlf)];
        let mut slices: &mut [IoSlice<'_>] = &mut slices;
        IoSlice::advance_slices(&mut slices, 0);
        while !slices.is_empty() {
            let n = self.io.write_vectored(slices).await?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero).into());
            }
            IoSlice::advance_slices(&mut slices, n);
        }
        out.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    struct Hello;

    impl Service for Hello {
        type Body = Full<Bytes>;

        async fn call(&self, _: http::Request<RequestBody>, _: &Client) -> Response<Full<Bytes>> {
            Response::new(Full::new(Bytes::from_static(b"hello")))
        }
    }

    /// Serves one connection on this thread (whose buffer pool is the one looked at) and
    /// sends `request` on it; its response read, the connection is left open and idle.
    async fn idle_after(request: &[u8]) -> tokio::net::TcpStream {
        let listener = TcpListener::bind("127.77.200.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let settings = Settings {
            name: "test",
            idle: Duration::from_secs(60),
            header_read: Duration::from_secs(10),
            shutdown: Duration::from_secs(1),
            write_stall: Duration::from_secs(10),
            max_head: 64 * 1024,
        };
        let (_stop_tx, stop) = oneshot::channel();
        tokio::spawn(async move {
            let _keep = _stop_tx;
            let client = Client {
                peer,
                local: peer,
                peer_ip: None,
                tasks: tokio_util::task::TaskTracker::new(),
                requests: std::sync::atomic::AtomicU64::new(0),
            };
            let _ = serve(stream, &Hello, &client, &settings, stop).await;
        });
        client.write_all(request).await.unwrap();
        let mut got = Vec::new();
        while !got.ends_with(b"hello") {
            let mut chunk = [0; 1024];
            let n = client.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
        // The server's task goes on from its response to waiting for the next request.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        client
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_read_buffer() {
        let before = crate::buffers::pooled();
        let _open = idle_after(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert_eq!(crate::buffers::pooled(), before + 1);
    }

    #[tokio::test]
    async fn an_empty_line_after_a_request_does_not_keep_a_buffer_held() {
        let before = crate::buffers::pooled();
        let mut open = idle_after(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\r\n").await;
        assert_eq!(crate::buffers::pooled(), before + 1);
        // And the connection still serves its next request.
        open.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        while !got.ends_with(b"hello") {
            let mut chunk = [0; 1024];
            let n = open.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&chunk[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"), "{got:?}");
    }
}
