//! The forwarding path: pick a backend by consistent hashing of the stickiness key, forward the
//! request with its body streamed, stream the response back.
//!
//! Retries follow one rule, [`retry`]; errors become statuses in one place, [`Error::respond`].
//! A request that asks to switch protocols (`Connection: upgrade`, a WebSocket handshake, say)
//! is forwarded with its `Upgrade` header; if the backend answers 101, the two sockets are
//! joined into a tunnel that lives until either side closes it.
//!
//! The proxy serves no sockets of its own: [`crate::server`] accepts and drains, and calls a
//! [`Worker`] per request.

mod access;
mod body;
mod error;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod fuzzing;
mod headers;
mod retry;
mod sessions;
mod stats;
mod sticky;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::Body as _;
use http_body_util::{Either, Empty, Full};

use crate::server::OnUpgrade;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::config::{Balance, Timeouts};
use crate::pool::{self, Backend, Report};
use crate::server::Client;
use access::{Access, Session};
use body::{ClientFault, Fault, Paced, RequestBody, Returning};
pub(crate) use error::Error;
pub(crate) use headers::host_problem;
use retry::{Attempt, Decision, Failure};
pub(crate) use stats::TrafficStats;
use stats::WorkerStats;
pub(crate) use sticky::StickyStats;
use sticky::{Plan, Sticky};
use upstream::{ConnectError, Connections, Failed};

/// What the client receives: a backend's streamed body, or one of ours.
pub(crate) type ResponseBody = Either<Returning, Full<Bytes>>;

/// What every worker shares: where the pool is read, the stickiness rules and sessions, the
/// timeouts, and the way back to the prober.
pub(crate) struct Proxy {
    pool: pool::Reader,
    sticky: Sticky,
    /// Replaced whole by a reload; a request copies out what it needs (an atomic load).
    timeouts: ArcSwap<Timeouts>,
    /// One list of idle upstream connections per worker, so a request and the connection it
    /// rides on stay on one thread and the lists are never contended.
    connections: Vec<Arc<Connections>>,
    /// One per worker, beside its connections.
    stats: Vec<Arc<WorkerStats>>,
    reports: mpsc::Sender<Report>,
    /// By when the pool will have settled after start, at the latest.
    settles_by: tokio::time::Instant,
    /// `log.access`: read once per request, changed at run time by a reload.
    access_log: AtomicBool,
    /// Requests held for a backend that autoscaling starts, when none is routed.
    waiting: Arc<pool::Waiting>,
}

/// Upstream connection counters over all workers, for `/_lb/health`.
pub(crate) struct UpstreamStats {
    /// Connections opened to backends since start.
    pub(crate) connects: u64,
    /// Requests sent on a kept-alive connection.
    pub(crate) reused: u64,
    /// Connections idle right now.
    pub(crate) idle: usize,
    /// Idle connections closed because bytes arrived on them.
    pub(crate) unexpected: u64,
}

impl Proxy {
    /// A proxy and its `workers` workers (at least one), to be served one per thread.
    pub(crate) fn new(
        pool: pool::Reader,
        balance: Balance,
        timeouts: Timeouts,
        reports: mpsc::Sender<Report>,
        workers: usize,
        settle_within: Duration,
        waiting: Arc<pool::Waiting>,
    ) -> (Arc<Proxy>, Vec<Worker>) {
        let proxy = Arc::new(Proxy {
            connections: (0..workers.max(1))
                .map(|_| Arc::new(Connections::new(timeouts.connect, timeouts.idle)))
                .collect(),
            stats: (0..workers.max(1)).map(|_| Arc::default()).collect(),
            pool,
            sticky: Sticky::new(balance),
            timeouts: ArcSwap::from_pointee(timeouts),
            reports,
            settles_by: tokio::time::Instant::now() + settle_within,
            access_log: AtomicBool::new(false),
            waiting,
        });
        let workers = proxy
            .connections
            .iter()
            .zip(&proxy.stats)
            .enumerate()
            .map(|(index, (connections, stats))| Worker {
                index,
                proxy: Arc::clone(&proxy),
                connections: Arc::clone(connections),
                stats: Arc::clone(stats),
                routing: std::sync::Mutex::new(LocalRouting {
                    pool: proxy.pool.clone(),
                    local: pool::Local::new(Arc::clone(&proxy.pool.borrow().routing)),
                }),
            })
            .collect();
        (proxy, workers)
    }

    /// A reload's balance settings and timeouts, for the requests and upstream connections
    /// that start from now on; those under way keep what they started with.
    pub(crate) fn reconfigure(&self, balance: Balance, timeouts: Timeouts) {
        self.sticky.set_balance(balance);
        for c in &self.connections {
            c.set_timeouts(timeouts.connect, timeouts.idle);
        }
        self.timeouts.store(Arc::new(timeouts));
    }

    /// Turns the access log on or off for the requests that begin from now on.
    pub(crate) fn set_access_log(&self, on: bool) {
        self.access_log.store(on, Ordering::Relaxed);
    }

    /// Whether a request beginning now is logged: `log.access`, unless `RUST_LOG` silences the
    /// access target. When it is off, this is one relaxed load.
    fn access_log(&self) -> bool {
        self.access_log.load(Ordering::Relaxed) && access::enabled()
    }

    /// Logs an answer the front gave without asking the proxy (a bad `Host`, say).
    pub(crate) fn log_answer(
        &self,
        client: &Client,
        method: &Method,
        uri: &Uri,
        resp: &Response<Full<Bytes>>,
    ) {
        if self.access_log() {
            Access::begin(client.peer, method, uri).answered_by_balancer(resp, Session::NoKey);
        }
    }

    pub(crate) fn sticky_stats(&self) -> StickyStats {
        self.sticky.stats()
    }

    /// The balancer's own responses and the retries, over all workers.
    pub(crate) fn traffic_stats(&self) -> TrafficStats {
        TrafficStats::sum(self.stats.iter().map(|s| &**s))
    }

    /// Keeps each backend's count of active sessions current until `shutdown`.
    pub(crate) async fn keep_tally(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let snapshot = Arc::clone(&self.pool.borrow());
            // New users assigned from here on are kept apart from the tally, so none is lost
            // between reading the sessions and storing the count.
            for m in &snapshot.members {
                m.backend.start_tally();
            }
            let counts = self.sticky.sessions.tally(std::time::Instant::now());
            for m in &snapshot.members {
                m.backend
                    .set_sessions(counts.get(&m.backend.pin).copied().unwrap_or(0));
            }
        }
    }

    pub(crate) fn upstream_stats(&self) -> UpstreamStats {
        let c = &self.connections;
        UpstreamStats {
            connects: c
                .iter()
                .map(|p| p.stats.connects.load(Ordering::Relaxed))
                .sum(),
            reused: c
                .iter()
                .map(|p| p.stats.reused.load(Ordering::Relaxed))
                .sum(),
            idle: c.iter().map(|p| p.idle_count()).sum(),
            unexpected: c
                .iter()
                .map(|p| p.stats.unexpected.load(Ordering::Relaxed))
                .sum(),
        }
    }
}

/// One worker thread's share of the proxy. Everything a request writes to is owned by one
/// worker, so on the request path no cache line is written by two cores: the idle upstream
/// connections, the routing copy and its reference count, the counter shard.
pub(crate) struct Worker {
    index: usize,
    proxy: Arc<Proxy>,
    connections: Arc<Connections>,
    stats: Arc<WorkerStats>,
    routing: std::sync::Mutex<LocalRouting>,
}

/// The worker's handle on the latest routing, refreshed when the prober publishes a new one.
/// Only the worker's thread locks it, so the lock is never contended.
struct LocalRouting {
    pool: pool::Reader,
    local: pool::Local,
}

/// The request a retry sends again: method, target and headers of a request with no body.
type Replay = (Method, Uri, HeaderMap);

impl Worker {
    /// Starts the worker's upkeep on its own runtime: idle upstream connections past
    /// `timeouts.idle` are closed (every half of it, as it is after a reload).
    pub(crate) fn start(&self, shutdown: &CancellationToken) {
        let (connections, shutdown) = (Arc::clone(&self.connections), shutdown.clone());
        tokio::spawn(async move {
            loop {
                let every = (connections.idle_timeout() / 2).max(Duration::from_secs(1));
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(every) => connections.reap(),
                }
            }
        });
    }

    /// Counts a response the balancer made itself, to a request that arrived at `arrived`.
    pub(crate) fn answered_own<B>(&self, resp: Response<B>, arrived: Instant) -> Response<B> {
        self.stats
            .own
            .record(resp.status().as_u16(), arrived.elapsed());
        resp
    }

    /// Counts a response the balancer made as soon as it read the request's head: it took
    /// microseconds, counted as none, so that no clock is read for it.
    pub(crate) fn answered_at_once<B>(&self, resp: Response<B>) -> Response<B> {
        self.stats
            .own
            .record(resp.status().as_u16(), Duration::ZERO);
        resp
    }

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

    /// No backend is routed: if autoscaling is starting one (and the held requests are under
    /// their limit), waits for the first to be routed, at most `autoscale.hold`, and plans
    /// again. `None` at once when nothing would come.
    async fn wait_for_backend(
        &self,
        headers: &HeaderMap,
        peer: SocketAddr,
    ) -> Option<(sticky::Plan, pool::Local)> {
        let (_held, hold) = self.proxy.waiting.hold()?;
        let mut pool = self.proxy.pool.clone();
        let routed = pool.wait_for(|s| s.healthy() > 0);
        let _ = tokio::time::timeout(hold, routed).await;
        let routing = self.routing();
        let plan = self.proxy.sticky.plan(headers, peer, &routing)?;
        Some((plan, routing))
    }

    /// Forwards one request to the backend its key hashes to, or answers why it cannot.
    pub(crate) async fn forward(
        &self,
        req: Request<crate::server::RequestBody>,
        client: &Client,
    ) -> Response<ResponseBody> {
        let arrived = Instant::now();
        let mut access = self
            .proxy
            .access_log()
            .then(|| Box::new(Access::begin(client.peer, req.method(), req.uri())));
        let mut routing = self.routing();
        let sticky = &self.proxy.sticky;
        if !routing.settled() && sticky.pending(req.headers(), &routing) {
            // Just after start a pin may name a backend the prober has not found yet: wait for
            // the pool to settle rather than send the user away from their session.
            let mut pool = self.proxy.pool.clone();
            let settled = pool.wait_for(|s| s.routing.settled());
            let _ = tokio::time::timeout_at(self.proxy.settles_by, settled).await;
            routing = self.routing();
        }
        let mut plan = sticky.plan(req.headers(), client.peer, &routing);
        if plan.is_none() {
            if let Some((held, r)) = self.wait_for_backend(req.headers(), client.peer).await {
                (plan, routing) = (Some(held), r);
            }
        }
        let Some(plan) = plan else {
            let resp = Error::NoBackend.respond();
            if let Some(access) = access {
                access.answered_by_balancer(&resp, Session::NoKey);
            }
            return self.answered_own(resp.map(Either::Right), arrived);
        };
        let (mut parts, body) = req.into_parts();
        let upgrade = headers::upgrade_asked(&parts)
            .and_then(|protocol| Some((protocol, parts.extensions.remove::<OnUpgrade>()?)));
        headers::prepare_request(&mut parts, client.peer, client.peer_ip.as_ref());
        if let Some((protocol, _)) = &upgrade {
            parts
                .headers
                .insert(header::CONNECTION, headers::UPGRADE.clone());
            parts.headers.insert(header::UPGRADE, protocol.clone());
        }
        let attempt = Attempt::new(&parts.method, body.is_end_stream());
        let replay = attempt.replayable.then(|| {
            (
                parts.method.clone(),
                parts.uri.clone(),
                parts.headers.clone(),
            )
        });
        let body = Paced::from_client(body, self.proxy.timeouts.load().body);
        let req = Request::from_parts(parts, Either::Left(body));
        let upgrade = upgrade.map(|(_, on)| on);
        let sent = self
            .send(
                &routing, &plan, req, attempt, replay, upgrade, client, arrived,
            )
            .await;
        let (mut resp, served) = match sent {
            Ok(served) => served,
            Err(e) => {
                let resp = e.respond();
                if let Some(access) = access {
                    access.answered_by_balancer(&resp, plan.session(None));
                }
                return self.answered_own(resp.map(Either::Right), arrived);
            }
        };
        if let Some(access) = &mut access {
            let backend = routing.backends[served].addr;
            access.answered(resp.status(), Some(backend), plan.session(Some(served)));
        }
        if resp.headers().contains_key(header::TRANSFER_ENCODING) {
            // RFC 9112 §6.3: a Transfer-Encoding overrides any Content-Length. The body was
            // decoded by its Transfer-Encoding and is framed anew for the client, so a
            // Content-Length beside it would tell the client a length it will not get.
            resp.headers_mut().remove(header::CONTENT_LENGTH);
        }
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            // A tunnel's response keeps its own `Connection: upgrade`.
            headers::strip_hop_by_hop(resp.headers_mut());
        }
        if let Some(cookie) = sticky.served(plan, &routing, served) {
            resp.headers_mut().append(header::SET_COOKIE, cookie);
        }
        if let Some(access) = access {
            match resp.body_mut() {
                Either::Left(body) => body.log_to(access),
                // A tunnel: its bytes are not the response's.
                Either::Right(_) => drop(access),
            }
        }
        resp
    }

    /// Offers the request to the plan's candidates in order, as [`retry`] decides after each
    /// failed attempt; the response, and which backend gave it.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        routing: &pool::Local,
        plan: &Plan,
        req: Request<RequestBody>,
        attempt: Attempt,
        replay: Option<Replay>,
        mut upgrade: Option<OnUpgrade>,
        client: &Client,
        arrived: Instant,
    ) -> Result<(Response<ResponseBody>, usize), Error> {
        let again = || {
            let (method, uri, headers) = replay.clone()?;
            let mut r = Request::new(Either::Right(Empty::new()));
            *r.method_mut() = method;
            *r.uri_mut() = uri;
            *r.headers_mut() = headers;
            Some(r)
        };
        let mut unsent = Some(req);
        let mut attempt = attempt;
        // What the client is told if no candidate answers.
        let mut last: Option<Error> = None;
        let (response_timeout, body_timeout) = {
            let t = self.proxy.timeouts.load();
            (t.response, t.body)
        };
        // Why the request goes on to the next candidate: counted once it does.
        let mut moving_on: Option<Failure> = None;
        'backends: for (tried, &index) in plan.candidates.as_slice().iter().enumerate() {
            if let Some(failure) = moving_on.take() {
                self.stats.retried(Decision::NextBackend, failure);
            }
            let backend = &routing.backends[index];
            let addr = backend.addr;
            // A client connection's first request never rides a connection that served
            // someone else (HAProxy's `http-reuse safe`): whatever a misbehaving backend writes
            // late on a shared connection then reaches at most the client it was talking to.
            let conn = if client.first_request() {
                self.connections.connect(addr).await
            } else {
                self.connections.checkout(addr).await
            };
            let mut conn = match conn {
                Ok(c) => c,
                Err(source) => {
                    last = Some(self.unreachable(addr, source, tried + 1));
                    match attempt.decide(Failure::Connect) {
                        Decision::NextBackend => {
                            moving_on = Some(Failure::Connect);
                            continue;
                        }
                        _ => break,
                    }
                }
            };
            // The rule never asks to send again what it has no copy of.
            while let Some(request) = unsent.take().or_else(again) {
                let mut guard = routing.begin_request(index, self.index);
                let reused = conn.reused;
                let sent = conn.link.exchange(request);
                let (failure, error) =
                    match wait_response(sent, response_timeout, backend, &mut conn.wait).await {
                        Waited::Response(Ok(answer))
                            if answer.head.status == StatusCode::SWITCHING_PROTOCOLS =>
                        {
                            match upgrade.take() {
                                Some(on) => {
                                    let took = arrived.elapsed();
                                    routing.answered_now(index, self.index, 101, took);
                                    return Ok((tunnel(answer, on, conn, guard, client), index));
                                }
                                None => (Failure::UnaskedUpgrade, Error::UnaskedUpgrade { addr }),
                            }
                        }
                        Waited::Response(Ok(answer)) => {
                            guard.answered(answer.head.status.as_u16(), arrived);
                            let idle = Arc::clone(&self.connections);
                            let (parts, body) = answer.into_response(conn, idle);
                            let body = Returning::new(Paced::new(body, body_timeout), addr, guard);
                            return Ok((Response::from_parts(parts, Either::Left(body)), index));
                        }
                        Waited::Response(Err(Failed::Client(source))) => {
                            let fault: &(dyn std::error::Error + 'static) = source.as_ref();
                            match ClientFault::find(fault) {
                                Some(Fault::Stalled) => {
                                    (Failure::Client, Error::ClientStalled { addr })
                                }
                                Some(Fault::Gone) => (Failure::Client, Error::ClientGone { addr }),
                                _ => (Failure::Client, Error::ClientMalformed { addr, source }),
                            }
                        }
                        Waited::Response(Err(Failed::Backend {
                            error,
                            unsent: handed_back,
                            answered,
                        })) => {
                            unsent = handed_back.map(|r| *r);
                            let failure = Failure::Exchange {
                                unsent: unsent.is_some(),
                                reused,
                                answered,
                            };
                            (
                                failure,
                                Error::Backend {
                                    addr,
                                    source: error,
                                },
                            )
                        }
                        Waited::TimedOut => (
                            Failure::TimedOut,
                            Error::Timeout {
                                addr,
                                timeout: response_timeout,
                            },
                        ),
                        Waited::Gone => (Failure::Gone, Error::Gone { addr }),
                    };
                let decision = attempt.decide(failure);
                if decision != Decision::Fail {
                    debug!(%addr, ?failure, ?decision, error = %error, "upstream attempt failed");
                }
                match decision {
                    Decision::Fail => return Err(error),
                    Decision::NextBackend => {
                        last = Some(error);
                        moving_on = Some(failure);
                        continue 'backends;
                    }
                    Decision::Reconnect => {
                        self.stats.retried(decision, failure);
                        match self.connections.connect(addr).await {
                            Ok(c) => conn = c,
                            Err(source) => {
                                last = Some(self.unreachable(addr, source, tried + 1));
                                match attempt.decide(Failure::Connect) {
                                    Decision::NextBackend => {
                                        moving_on = Some(Failure::Connect);
                                        continue 'backends;
                                    }
                                    _ => break 'backends,
                                }
                            }
                        }
                    }
                }
            }
            break;
        }
        Err(last.unwrap_or(Error::NoBackend))
    }

    /// A connection to `addr` could not be made: the prober hears of it (the backend leaves
    /// routing at once), and the client would be told so if no other candidate answers.
    fn unreachable(&self, addr: SocketAddr, source: ConnectError, tried: usize) -> Error {
        debug!(%addr, error = %source, "connect to backend failed; trying the next");
        let _ = self.proxy.reports.try_send(Report::ConnectFailed {
            addr,
            reason: source.to_string(),
        });
        Error::Connect {
            tried,
            addr,
            source,
        }
    }
}

/// The backend agreed to switch protocols: answers the client's 101 and, once the server has handed
/// over the client's socket, copies bytes both ways until either side closes. The upstream
/// connection is the tunnel's from now on, never returned to the idle list; what the backend
/// sent right behind its 101 goes to the client first.
fn tunnel(
    answer: upstream::Answer,
    client_side: OnUpgrade,
    conn: upstream::Conn,
    mut guard: pool::InflightGuard,
    client: &Client,
) -> Response<ResponseBody> {
    guard.tunnel();
    let addr = conn.addr;
    let head = answer.head;
    let protocol = head.headers.get(header::UPGRADE).cloned();
    let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
    *resp.status_mut() = head.status;
    *resp.headers_mut() = head.headers;
    let fields = resp.headers_mut();
    headers::strip_hop_by_hop(fields);
    fields.insert(header::CONNECTION, headers::UPGRADE.clone());
    if let Some(protocol) = protocol {
        fields.insert(header::UPGRADE, protocol);
    }
    client.spawn(async move {
        let _in_flight = guard;
        let client = match client_side.upgraded().await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                debug!(%addr, error = %e, "upgrade did not complete");
                return;
            }
        };
        let (mut backend, early) = conn.link.into_parts();
        let mut client = client;
        if !early.is_empty() {
            if let Err(e) = client.write_all(&early).await {
                debug!(%addr, error = %e, "tunnel ended");
                return;
            }
        }
        match tokio::io::copy_bidirectional(&mut client, &mut backend).await {
            Ok((up, down)) => debug!(%addr, up, down, "tunnel closed"),
            Err(e) => debug!(%addr, error = %e, "tunnel ended"),
        }
    });
    resp
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

/// Waits for a response head, at most `timeout`, or until the backend leaves the pool, on the
/// connection's `timer`. The timer is moved lazily: one set earlier than this wait's first
/// deadline (by an earlier request) is left to fire and only then moved on, so back-to-back
/// requests on a connection touch the timer wheel about once per [`WATCH_GONE_AFTER`], not
/// once each.
async fn wait_response<F: Future>(
    send: F,
    timeout: Duration,
    backend: &Backend,
    timer: &mut upstream::ResponseTimer,
) -> Waited<F::Output> {
    let now = tokio::time::Instant::now();
    let watch_from = now + timeout.min(WATCH_GONE_AFTER);
    tokio::pin!(send);
    if timer.deadline() > watch_from {
        timer.as_mut().reset(watch_from);
    }
    loop {
        tokio::select! {
            biased;
            r = &mut send => return Waited::Response(r),
            _ = timer.as_mut() => {}
        }
        if tokio::time::Instant::now() >= watch_from {
            break;
        }
        timer.as_mut().reset(watch_from);
    }
    timer.as_mut().reset(now + timeout);
    tokio::select! {
        biased;
        r = &mut send => Waited::Response(r),
        _ = backend.gone().cancelled() => Waited::Gone,
        _ = timer.as_mut() => Waited::TimedOut,
    }
}
