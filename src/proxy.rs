//! The forwarding path: accept client connections, pick a backend by consistent hashing of the
//! stickiness key, forward the request with its body streamed, stream the response back.
//!
//! Retries follow one rule: a request may go to another connection or backend only while it is
//! certain the backend did not act on it (the connection could not be made, or hyper handed
//! the unsent request back), or when it is idempotent, has an empty body and nothing has been
//! sent to the client yet. Errors become statuses in exactly one place, [`Error::respond`].
//!
//! A request that asks to switch protocols (`Connection: upgrade`, a WebSocket handshake, say)
//! is forwarded with its `Upgrade` header; if the backend answers 101, the two sockets are
//! joined into a tunnel that lives until either side closes it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::{Key, Timeouts};
use crate::head_deadline::{self, Head, Tracked};
use crate::pool::{self, Backend, Report};
use crate::upstream::{self, ConnectError, Paced, Returning, Stalled};
use crate::{admin, balancer, prober};

/// What the client receives: a backend's streamed body, or one of ours.
pub type ResponseBody = Either<Returning, Full<Bytes>>;

/// Distinct backends one request may be offered to when connections fail.
const MAX_BACKENDS_TRIED: usize = 3;

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), besides those named in
/// `Connection`.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const UPGRADE: HeaderValue = HeaderValue::from_static("upgrade");

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no backend is healthy")]
    NoBackend,
    #[error("could not connect to {tried} backend(s), last {addr}: {source}")]
    Connect {
        tried: usize,
        addr: SocketAddr,
        #[source]
        source: ConnectError,
    },
    #[error("backend {addr} sent no response head within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("backend {addr} failed after the request was sent: {source}")]
    Backend {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("backend {addr} left the pool while the request was in flight")]
    Gone { addr: SocketAddr },
    #[error("the client's request body stalled on its way to {addr}")]
    ClientStalled { addr: SocketAddr },
    #[error("backend {addr} switched protocols on a request that did not ask to")]
    UnaskedUpgrade { addr: SocketAddr },
}

impl Error {
    /// The one place errors become statuses: a short JSON body for the client, the cause chain
    /// for the log.
    pub fn respond(&self) -> Response<ResponseBody> {
        let (status, message) = match self {
            Error::NoBackend => (StatusCode::SERVICE_UNAVAILABLE, "no backend is healthy"),
            Error::Connect { .. } => (StatusCode::BAD_GATEWAY, "no backend could be reached"),
            Error::Timeout { .. } => (
                StatusCode::GATEWAY_TIMEOUT,
                "the backend did not answer in time",
            ),
            Error::ClientStalled { .. } => (
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time",
            ),
            Error::Backend { .. } | Error::Gone { .. } | Error::UnaskedUpgrade { .. } => {
                (StatusCode::BAD_GATEWAY, "the backend failed")
            }
        };
        let mut chain = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            source = s.source();
        }
        match self {
            Error::NoBackend => debug!(error = %chain, "request refused"),
            _ => warn!(error = %chain, status = status.as_u16(), "request failed"),
        }
        let body = serde_json::json!({ "error": message, "status": status.as_u16() }).to_string();
        let mut resp = json_response(status, body);
        if matches!(self, Error::NoBackend | Error::Connect { .. }) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

pub fn json_response(status: StatusCode, body: String) -> Response<ResponseBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

pub struct Proxy {
    pool: pool::Reader,
    key: Key,
    timeouts: Timeouts,
    /// One pool of upstream connections per worker thread, so a request and the connection it
    /// rides on stay on one thread and the pools are never contended.
    upstream: Vec<Arc<upstream::Pool>>,
    reports: mpsc::Sender<Report>,
}

/// One worker thread's share of the proxy. Everything a request writes to is owned by one
/// worker, so on the request path no cache line is written by two cores: the upstream pool,
/// the routing copy and its reference count, the counter shard.
struct Worker {
    index: usize,
    proxy: Arc<Proxy>,
    upstream: Arc<upstream::Pool>,
    routing: std::sync::Mutex<LocalRouting>,
    /// Client connections this worker serves; the acceptor reads it to pick a worker.
    open: Arc<AtomicUsize>,
    /// The worker's client connections and tunnels, drained at shutdown.
    drain: Drain,
}

/// The worker's handle on the latest routing, refreshed when the prober publishes a new one.
/// Only the worker's thread locks it, so the lock is never contended.
struct LocalRouting {
    pool: pool::Reader,
    local: pool::Local,
}

impl Worker {
    fn routing(&self) -> pool::Local {
        let mut r = self.routing.lock().unwrap_or_else(|e| e.into_inner());
        // An atomic load per request; the snapshot's lock only when something was published,
        // and a new handle only when the ring itself changed.
        if r.pool.has_changed().unwrap_or(false) {
            let published = Arc::clone(&r.pool.borrow_and_update().routing);
            if !Arc::ptr_eq(&published, r.local.shared()) {
                r.local = pool::Local::new(published);
            }
        }
        r.local.clone()
    }
}

/// What a request knows of the client connection it came on.
struct Client {
    peer: SocketAddr,
    /// The peer's address as a header value, made once per connection for `X-Forwarded-For`.
    peer_ip: Option<HeaderValue>,
    worker: Arc<Worker>,
}

impl Proxy {
    /// A proxy served by `workers` threads (at least one).
    pub fn new(
        pool: pool::Reader,
        key: Key,
        timeouts: Timeouts,
        reports: mpsc::Sender<Report>,
        workers: usize,
    ) -> Proxy {
        Proxy {
            upstream: (0..workers.max(1))
                .map(|_| Arc::new(upstream::Pool::new(timeouts.connect, timeouts.idle)))
                .collect(),
            pool,
            key,
            timeouts,
            reports,
        }
    }
}

impl Worker {
    async fn handle(&self, req: Request<Incoming>, client: &Client) -> Response<ResponseBody> {
        let path = req.uri().path();
        if path == "/_lb" || path.starts_with("/_lb/") {
            let snapshot = Arc::clone(&self.proxy.pool.borrow());
            return admin::respond(&req, &snapshot, &self.proxy.upstream);
        }
        if req.headers().contains_key(prober::PROBE_HEADER) {
            // Another sweeplb (or this one) is probing us: say what we are, never forward.
            let mut resp = json_response(
                StatusCode::MISDIRECTED_REQUEST,
                r#"{"error":"this is a sweeplb balancer, not a backend"}"#.to_string(),
            );
            resp.headers_mut()
                .insert(prober::BALANCER_HEADER, HeaderValue::from_static("1"));
            return resp;
        }
        self.forward(req, client).await
    }

    async fn forward(&self, req: Request<Incoming>, client: &Client) -> Response<ResponseBody> {
        let (hash, new_cookie) = self.proxy.key_of(req.headers(), client.peer);
        let routing = self.routing();
        let result = if routing.backends.is_empty() {
            Err(Error::NoBackend)
        } else {
            let (mut parts, body) = req.into_parts();
            let upgrade = upgrade_asked(&parts)
                .and_then(|protocol| Some((protocol, parts.extensions.remove::<OnUpgrade>()?)));
            prepare_request(&mut parts, client.peer, client.peer_ip.as_ref());
            if let Some((protocol, _)) = &upgrade {
                parts.headers.insert(header::CONNECTION, UPGRADE.clone());
                parts.headers.insert(header::UPGRADE, protocol.clone());
            }
            let replay = (is_idempotent(&parts.method) && body.is_end_stream()).then(|| {
                (
                    parts.method.clone(),
                    parts.uri.clone(),
                    parts.headers.clone(),
                )
            });
            let body = Paced::new(body, self.proxy.timeouts.body);
            let req = Request::from_parts(parts, Either::Left(body));
            self.send(&routing, hash, req, replay, upgrade.map(|(_, on)| on))
                .await
        };
        let mut resp = match result {
            Ok(resp) => resp,
            Err(e) => e.respond(),
        };
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            // A tunnel's response keeps its own `Connection: upgrade`.
            strip_hop_by_hop(resp.headers_mut());
        }
        if let (Some(cookie), Key::Cookie(name)) = (new_cookie, &self.proxy.key) {
            let value = format!("{name}={cookie}; Path=/; HttpOnly; SameSite=Lax");
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
        }
        resp
    }

    /// Offers the request to the candidates in order, per the retry rule in the module doc.
    async fn send(
        &self,
        routing: &pool::Local,
        hash: u64,
        req: Request<upstream::RequestBody>,
        replay: Option<(Method, Uri, HeaderMap)>,
        mut upgrade: Option<OnUpgrade>,
    ) -> Result<Response<ResponseBody>, Error> {
        let mut req = Some(req);
        let mut next = || -> Option<Request<upstream::RequestBody>> {
            req.take().or_else(|| {
                let (method, uri, headers) = replay.clone()?;
                let mut r = Request::new(Either::Right(Empty::new()));
                *r.method_mut() = method;
                *r.uri_mut() = uri;
                *r.headers_mut() = headers;
                Some(r)
            })
        };
        let mut unsent = next();
        let mut tried = 0;
        let mut last_connect: Option<(SocketAddr, ConnectError)> = None;
        let upstream = &self.upstream;
        let response_timeout = self.proxy.timeouts.response;
        for index in routing.ring.candidates(hash).take(MAX_BACKENDS_TRIED) {
            tried += 1;
            let backend = &routing.backends[index];
            let addr = backend.addr;
            let mut conn = match upstream.checkout(addr).await {
                Ok(c) => c,
                Err(e) => {
                    self.connect_failed(addr, &e);
                    last_connect = Some((addr, e));
                    continue;
                }
            };
            loop {
                // Always present: a request is kept until sent, and only replayable ones loop.
                let Some(request) = unsent.take().or_else(&mut next) else {
                    break;
                };
                let guard = routing.begin_request(index, self.index);
                let reused = conn.reused;
                let outcome = wait_response(
                    conn.send.try_send_request(request),
                    response_timeout,
                    backend,
                )
                .await;
                match outcome {
                    Waited::Response(Ok(resp))
                        if resp.status() == StatusCode::SWITCHING_PROTOCOLS =>
                    {
                        let Some(client) = upgrade.take() else {
                            return Err(Error::UnaskedUpgrade { addr });
                        };
                        return Ok(self.tunnel(resp, client, conn, guard));
                    }
                    Waited::Response(Ok(resp)) => {
                        let (parts, body) = resp.into_parts();
                        let body = Paced::new(body, self.proxy.timeouts.body);
                        let body = Returning::new(body, conn, Arc::clone(upstream), guard);
                        return Ok(Response::from_parts(parts, Either::Left(body)));
                    }
                    Waited::Response(Err(mut e)) => {
                        unsent = e.take_message();
                        let error = e.into_error();
                        if Stalled::caused(&error) {
                            return Err(Error::ClientStalled { addr });
                        }
                        if unsent.is_none() && replay.is_none() {
                            return Err(Error::Backend {
                                addr,
                                source: error,
                            });
                        }
                        debug!(%addr, reused, error = %error, "upstream request failed; retrying");
                        if !reused {
                            // A fresh connection that fails is the backend's fault: next one.
                            break;
                        }
                        // A warm connection may have been closed by the backend just now.
                        conn = match upstream.connect(addr).await {
                            Ok(c) => c,
                            Err(e) => {
                                self.connect_failed(addr, &e);
                                last_connect = Some((addr, e));
                                break;
                            }
                        };
                    }
                    Waited::TimedOut => {
                        return Err(Error::Timeout {
                            addr,
                            timeout: response_timeout,
                        });
                    }
                    Waited::Gone => {
                        if replay.is_none() {
                            return Err(Error::Gone { addr });
                        }
                        break;
                    }
                }
            }
            if unsent.is_none() && replay.is_none() {
                break;
            }
        }
        Err(match last_connect {
            Some((addr, source)) => Error::Connect {
                tried,
                addr,
                source,
            },
            None => Error::NoBackend,
        })
    }

    /// The backend agreed to switch protocols: answers the client's 101 and, once hyper has
    /// handed over both sockets, copies bytes both ways until either side closes. The
    /// upstream connection is the tunnel's from now on, never returned to the pool.
    fn tunnel(
        &self,
        mut resp: Response<Incoming>,
        client: OnUpgrade,
        conn: upstream::Conn,
        guard: pool::InflightGuard,
    ) -> Response<ResponseBody> {
        let addr = conn.addr;
        let backend = hyper::upgrade::on(&mut resp);
        let (mut parts, _) = resp.into_parts();
        let protocol = parts.headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.insert(header::CONNECTION, UPGRADE.clone());
        if let Some(protocol) = protocol {
            parts.headers.insert(header::UPGRADE, protocol);
        }
        self.drain.spawn(async move {
            let _in_flight = guard;
            let (client, backend) = match tokio::try_join!(client, backend) {
                Ok(both) => both,
                Err(e) => {
                    debug!(%addr, error = %e, "upgrade did not complete");
                    return;
                }
            };
            // hyper hands the sockets over only after both sides are done with HTTP.
            drop(conn);
            let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
            match tokio::io::copy_bidirectional(&mut client, &mut backend).await {
                Ok((up, down)) => debug!(%addr, up, down, "tunnel closed"),
                Err(e) => debug!(%addr, error = %e, "tunnel ended"),
            }
        });
        Response::from_parts(parts, Either::Right(Full::new(Bytes::new())))
    }

    fn connect_failed(&self, addr: SocketAddr, e: &ConnectError) {
        debug!(%addr, error = %e, "connect to backend failed; trying the next");
        let _ = self.proxy.reports.try_send(Report::ConnectFailed {
            addr,
            reason: e.to_string(),
        });
    }
}

impl Proxy {
    /// The hash of a request's stickiness key, and the fresh cookie value to set if it had
    /// none. Hashes the key where it lies: no copy on the request path.
    fn key_of(&self, headers: &HeaderMap, peer: SocketAddr) -> (u64, Option<String>) {
        let fresh = || format!("{:032x}", fastrand::u128(..));
        match &self.key {
            Key::Cookie(name) => match cookie(headers, name) {
                Some(v) => (balancer::key_hash(v.as_bytes()), None),
                None => {
                    let value = fresh();
                    (balancer::key_hash(value.as_bytes()), Some(value))
                }
            },
            Key::Header(name) => match headers.get(name) {
                Some(v) => (balancer::key_hash(v.as_bytes()), None),
                // Without the header there is nothing to stick to: spread.
                None => (balancer::key_hash(fresh().as_bytes()), None),
            },
            Key::ClientIp => match peer.ip() {
                std::net::IpAddr::V4(ip) => (balancer::key_hash(&ip.octets()), None),
                std::net::IpAddr::V6(ip) => (balancer::key_hash(&ip.octets()), None),
            },
        }
    }
}

/// How long a request waits for its response head before it also watches for its backend
/// leaving the pool. Most answers come sooner, and not registering a waiter on the backend's
/// shared signal keeps the fast path free of a lock that every worker would touch.
const WATCH_GONE_AFTER: Duration = Duration::from_millis(100);

enum Waited<T> {
    Response(T),
    TimedOut,
    Gone,
}

/// Waits for a response head, at most `timeout`, or until the backend leaves the pool.
async fn wait_response<F: Future>(
    send: F,
    timeout: Duration,
    backend: &Backend,
) -> Waited<F::Output> {
    let deadline = tokio::time::Instant::now() + timeout;
    tokio::pin!(send);
    let sleep = tokio::time::sleep(timeout.min(WATCH_GONE_AFTER));
    tokio::pin!(sleep);
    tokio::select! {
        biased;
        r = &mut send => return Waited::Response(r),
        _ = &mut sleep => {}
    }
    sleep.as_mut().reset(deadline);
    tokio::select! {
        biased;
        r = &mut send => Waited::Response(r),
        _ = backend.gone().cancelled() => Waited::Gone,
        _ = &mut sleep => Waited::TimedOut,
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, v)| *k == name && !v.is_empty())
        .map(|(_, v)| v.trim_matches('"'))
}

/// The protocol an HTTP/1.1 request asks to switch to: its `Upgrade` header, when
/// `Connection` names `upgrade` (RFC 9110 §7.8).
fn upgrade_asked(parts: &http::request::Parts) -> Option<HeaderValue> {
    if parts.version != Version::HTTP_11 {
        return None;
    }
    let protocol = parts.headers.get(header::UPGRADE)?;
    parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
        .then(|| protocol.clone())
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Removes hop-by-hop headers, including every header that `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names is cheaper than nine removals.
    if !headers
        .keys()
        .any(|k| k == header::UPGRADE || HOP_BY_HOP.contains(k))
    {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

fn prepare_request(
    parts: &mut http::request::Parts,
    peer: SocketAddr,
    peer_ip: Option<&HeaderValue>,
) {
    strip_hop_by_hop(&mut parts.headers);
    // Upstream speaks HTTP/1.1 whatever the client spoke, with an origin-form target.
    parts.version = Version::HTTP_11;
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let authority = parts.uri.authority().map(|a| a.as_str().to_string());
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        if let Ok(uri) = path.parse() {
            parts.uri = uri;
        }
        if let Some(host) = authority.and_then(|a| HeaderValue::from_str(&a).ok()) {
            parts.headers.insert(header::HOST, host);
        }
    }
    let forwarded_for = match (combined(&parts.headers, &X_FORWARDED_FOR), peer_ip) {
        (None, Some(ip)) => Some(ip.clone()),
        (prior, _) => {
            let ip = peer.ip();
            let list = prior.map_or_else(|| ip.to_string(), |p| format!("{p}, {ip}"));
            HeaderValue::from_str(&list).ok()
        }
    };
    if let Some(v) = forwarded_for {
        parts.headers.insert(X_FORWARDED_FOR, v);
    }
    parts
        .headers
        .insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if let Some(host) = parts.headers.get(header::HOST).cloned() {
        parts.headers.insert(X_FORWARDED_HOST, host);
    }
}

/// All values of a header joined as one list, as a recipient may combine them.
fn combined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// Serves clients on `listener` until `shutdown`, then lets in-flight requests finish within
/// `timeouts.shutdown` and closes keep-alive connections.
///
/// One acceptor hands each connection to the worker thread with the fewest open connections;
/// each worker is a single-threaded runtime that owns its client connections, its upstream
/// connections and its pool of idle ones. A request and its upstream exchange therefore never
/// cross threads: no work stealing, no cross-core wake-ups, no shared locks on the hot path.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, shutdown: CancellationToken) {
    let mut workers = Vec::new();
    for (index, upstream) in proxy.upstream.iter().enumerate() {
        let (tx, rx) = mpsc::unbounded_channel();
        let load = Arc::new(AtomicUsize::new(0));
        let published = Arc::clone(&proxy.pool.borrow().routing);
        let worker = Arc::new(Worker {
            index,
            proxy: Arc::clone(&proxy),
            upstream: Arc::clone(upstream),
            routing: std::sync::Mutex::new(LocalRouting {
                pool: proxy.pool.clone(),
                local: pool::Local::new(published),
            }),
            open: Arc::clone(&load),
            drain: Drain::new(),
        });
        let shutdown = shutdown.clone();
        let i = index;
        let thread = std::thread::Builder::new()
            .name(format!("sweeplb-worker-{i}"))
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(work(rx, worker, shutdown)),
                    Err(e) => warn!(error = %e, "cannot start a worker runtime"),
                }
            });
        match thread {
            Ok(t) => workers.push((tx, load, t)),
            Err(e) => warn!(error = %e, "cannot start a worker thread"),
        }
    }
    if workers.is_empty() {
        warn!("no worker could start; not serving");
        return;
    }
    accept(&listener, &shutdown, |stream, peer| {
        let Some((tx, load, _)) = workers
            .iter()
            .min_by_key(|(_, load, _)| load.load(Ordering::Relaxed))
        else {
            return;
        };
        match stream.into_std() {
            Ok(stream) => {
                load.fetch_add(1, Ordering::Relaxed);
                if tx.send((stream, peer)).is_err() {
                    load.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Err(e) => debug!(%peer, error = %e, "cannot hand a connection to a worker"),
        }
    })
    .await;
    drop(listener);
    info!("shutting down: no longer accepting");
    let threads: Vec<_> = workers.into_iter().map(|(_, _, t)| t).collect();
    let joined = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    });
    let _ = joined.await;
}

/// One worker: serves the connections the acceptor hands it until `shutdown`, then drains.
async fn work(
    mut incoming: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
    worker: Arc<Worker>,
    shutdown: CancellationToken,
) {
    let timeouts = &worker.proxy.timeouts;
    let mut http = hyper::server::conn::http1::Builder::new();
    // hyper's head timer runs from when a connection starts waiting, so it is given the idle
    // allowance; `header_read` is counted from a head's first byte (see `head_deadline`). The
    // timer is what makes `header_read_timeout` real: without one hyper silently skips it.
    http.timer(TokioTimer::new())
        .header_read_timeout(timeouts.idle.max(timeouts.header_read))
        .keep_alive(true);
    let reaper = {
        let (pool, shutdown) = (Arc::clone(&worker.upstream), shutdown.clone());
        let every = (timeouts.idle / 2).max(Duration::from_secs(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => pool.reap(),
                }
            }
        })
    };
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = incoming.recv() => match next {
                Some(c) => c,
                None => break,
            },
        };
        let Ok(stream) = TcpStream::from_std(stream) else {
            worker.open.fetch_sub(1, Ordering::Relaxed);
            continue;
        };
        let head = Head::new(timeouts.header_read);
        let io = head_deadline::Watched::new(stream, Arc::clone(&head));
        let client = Arc::new(Client {
            peer,
            peer_ip: HeaderValue::from_str(&peer.ip().to_string()).ok(),
            worker: Arc::clone(&worker),
        });
        let service = service_fn(move |req| {
            let client = Arc::clone(&client);
            let done = head.request_started();
            let head = Arc::clone(&head);
            async move {
                let resp = client.worker.handle(req, &client).await;
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    head.stop_watching();
                }
                Ok::<_, Infallible>(resp.map(|body| Tracked::new(body, done)))
            }
        });
        let open = Arc::clone(&worker.open);
        serve_connection(&http, &worker.drain, io, peer, service, move || {
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    if !worker.drain.wait(timeouts.shutdown).await {
        warn!(
            connections = worker.open.load(Ordering::Relaxed),
            deadline = ?timeouts.shutdown,
            "shutdown deadline cut off connections with requests in flight or open tunnels"
        );
    } else {
        debug!("worker drained");
    }
    reaper.abort();
}

/// Accepts connections until `shutdown`, handing each to `dispatch`. Shared with the demo
/// webapp.
pub(crate) async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    mut dispatch: impl FnMut(TcpStream, SocketAddr),
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or similar: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        dispatch(stream, peer);
    }
}

/// The connections (and tunnels) one server runs, so that shutdown can ask each to finish what
/// it is doing and wait for them.
///
/// Each connection is told to stop through a oneshot of its own. Every poll of a connection
/// also polls its stop signal, and a oneshot is polled with atomics alone, where a shared
/// cancellation token takes locks: watching the token per connection cost 4-7% of throughput.
pub(crate) struct Drain {
    tasks: TaskTracker,
    stops: Arc<std::sync::Mutex<Stops>>,
}

#[derive(Default)]
struct Stops {
    next: u64,
    open: std::collections::HashMap<u64, tokio::sync::oneshot::Sender<()>>,
}

impl Drain {
    pub(crate) fn new() -> Drain {
        Drain {
            tasks: TaskTracker::new(),
            stops: Arc::default(),
        }
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// A stop signal for a new connection, and the key that forgets it when it ends.
    fn register(&self) -> (u64, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut stops = self.stops.lock().unwrap_or_else(|e| e.into_inner());
        stops.next += 1;
        let id = stops.next;
        stops.open.insert(id, tx);
        (id, rx)
    }

    /// At shutdown: asks every connection to finish (an idle one closes at once, a busy one
    /// after its response), then waits for them and the tunnels to end, at most `deadline`;
    /// false if some were still open when it passed.
    pub(crate) async fn wait(&self, deadline: Duration) -> bool {
        // Dropping a connection's sender is its signal.
        self.stops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .open
            .clear();
        self.tasks.close();
        tokio::time::timeout(deadline, self.tasks.wait())
            .await
            .is_ok()
    }
}

/// Serves one connection with `service` on the current runtime, in `drain`: at shutdown an
/// idle connection is closed and a busy one after its response. `done` runs when it ends.
pub(crate) fn serve_connection<I, S, B>(
    http: &hyper::server::conn::http1::Builder,
    drain: &Drain,
    stream: I,
    peer: SocketAddr,
    service: S,
    done: impl FnOnce() + Send + 'static,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = http
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let (id, stop) = drain.register();
    let stops = Arc::clone(&drain.stops);
    drain.spawn(async move {
        tokio::pin!(conn);
        let ended = tokio::select! {
            biased;
            ended = conn.as_mut() => ended,
            // Sent or dropped: either way, the server is shutting down.
            _ = stop => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        stops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .open
            .remove(&id);
        if let Err(e) = ended {
            debug!(%peer, error = %e, "client connection ended with an error");
        }
        done();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; sweeplb=abc"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&h, "sweeplb"), Some("abc"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "sweep"), None);
        h.insert(header::COOKIE, HeaderValue::from_static("sweeplb="));
        assert_eq!(cookie(&h, "sweeplb"), None);
    }

    #[test]
    fn forwarded_headers_append_the_peer() {
        let req = Request::get("http://example.test/a?b")
            .header(X_FORWARDED_FOR, "127.9.8.7")
            .header(X_FORWARDED_PROTO, "https")
            .body(())
            .unwrap();
        let (mut parts, ()) = req.into_parts();
        prepare_request(&mut parts, "127.0.0.1:5555".parse().unwrap(), None);
        assert_eq!(parts.uri, "/a?b");
        assert_eq!(parts.headers[header::HOST], "example.test");
        assert_eq!(parts.headers[X_FORWARDED_FOR], "127.9.8.7, 127.0.0.1");
        assert_eq!(parts.headers[X_FORWARDED_PROTO], "http");
        assert_eq!(parts.headers[X_FORWARDED_HOST], "example.test");
    }
}
