//! Fake backends: the real demo webapp, an HTTP backend with a handler of the test's own, and
//! a raw-socket backend for misbehaviour hyper would not produce. Each can be killed.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Net;

/// A backend that can be killed: its listener and every connection end at once.
pub struct Backend {
    pub addr: SocketAddr,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Backend {
    /// Returns once the listener and every connection are closed, as after a crash.
    pub async fn kill(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn reusable_listener(addr: SocketAddr) -> TcpListener {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("reuseaddr");
    socket
        .bind(addr)
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    socket.listen(1024).expect("listen")
}

/// Listens on `addr` and runs `conn` on each accepted connection until the backend is killed:
/// any TCP service, HTTP or not.
pub fn tcp<F, Fut>(addr: SocketAddr, conn: F) -> Backend
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = reusable_listener(addr);
    let stop = CancellationToken::new();
    let token = stop.clone();
    let tasks = TaskTracker::new();
    let conns = tasks.clone();
    tasks.spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = token.cancelled() => break,
                a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            };
            let serve = conn(stream);
            let token = token.clone();
            conns.spawn(async move {
                tokio::select! {
                    _ = serve => {}
                    _ = token.cancelled() => {}
                }
            });
        }
    });
    Backend { addr, stop, tasks }
}

/// The real demo webapp on `addr`.
pub fn webapp(addr: SocketAddr) -> Backend {
    webapp_named(addr, "sweeplb-webapp")
}

pub fn webapp_named(addr: SocketAddr, app: &str) -> Backend {
    serve_webapp(addr, Arc::new(sweeplb::webapp::Webapp::new(app)))
}

/// A webapp the test keeps a handle on (to drain it, say) served on `addr`.
pub fn serve_webapp(addr: SocketAddr, app: Arc<sweeplb::webapp::Webapp>) -> Backend {
    custom(addr, move |req| {
        let app = Arc::clone(&app);
        async move { app.handle(req, addr).await }
    })
}

/// Webapps on `net` at each of `lasts` (the last octet).
pub fn webapps(net: &Net, lasts: &[u8]) -> Vec<Backend> {
    lasts.iter().map(|&i| webapp(net.addr(i))).collect()
}

pub fn addrs(backends: &[Backend]) -> Vec<SocketAddr> {
    backends.iter().map(|b| b.addr).collect()
}

/// A backend answering every request with `handler` (plus an `x-backend-ip` header, as the
/// webapp sends); connections die with it.
pub fn custom<F, Fut>(addr: SocketAddr, handler: F) -> Backend
where
    F: Fn(http::Request<Incoming>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = http::Response<Full<Bytes>>> + Send + 'static,
{
    let ip: http::HeaderValue = addr
        .ip()
        .to_string()
        .parse()
        .expect("an IP is a header value");
    tcp(addr, move |stream| {
        let (handler, ip) = (handler.clone(), ip.clone());
        let service = service_fn(move |req| {
            let (handler, ip) = (handler.clone(), ip.clone());
            async move {
                let mut resp = handler(req).await;
                resp.headers_mut().entry("x-backend-ip").or_insert(ip);
                Ok::<_, Infallible>(resp)
            }
        });
        async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        }
    })
}

/// What a raw backend answers the prober: a healthy `GET /health`, connection closed.
pub const HEALTH_OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";

/// A backend on raw sockets, for what a well-behaved HTTP server would never do. A connection
/// whose first request is `GET /health` (the prober's: one request a connection) is answered
/// [`HEALTH_OK`]; any other is handed to `serve` with what was read of its first request (the
/// head, maybe some body).
pub fn raw<F, Fut>(addr: SocketAddr, serve: F) -> Backend
where
    F: Fn(TcpStream, Vec<u8>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tcp(addr, move |mut stream| {
        let serve = serve.clone();
        async move {
            let Some(head) = read_request_head(&mut stream).await else {
                return;
            };
            if head.starts_with(b"GET /health ") {
                let _ = stream.write_all(HEALTH_OK).await;
            } else {
                serve(stream, head).await;
            }
        }
    })
}

/// A raw backend that answers every request (but the prober's) with `answer`, bytes as they
/// are, then waits for the peer to close.
pub fn canned(addr: SocketAddr, answer: &'static [u8]) -> Backend {
    raw(addr, move |mut s, _| async move {
        if s.write_all(answer).await.is_ok() {
            let _ = s.readable().await;
        }
    })
}

/// Reads off a raw socket until a request head is complete; what was read (the head, maybe
/// some body), or `None` if the peer closed first.
pub async fn read_request_head(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(n @ 1..) => head.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
    Some(head)
}

pub fn text(status: u16, body: &str) -> http::Response<Full<Bytes>> {
    let mut r = http::Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = http::StatusCode::from_u16(status).expect("valid status");
    r
}

/// `resp` with `headers` added.
pub fn with_headers(
    mut resp: http::Response<Full<Bytes>>,
    headers: &[(&'static str, &str)],
) -> http::Response<Full<Bytes>> {
    for (name, value) in headers {
        let value = value.parse().expect("a valid header value");
        resp.headers_mut().insert(*name, value);
    }
    resp
}
