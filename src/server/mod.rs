//! Connection plumbing: accepting, worker threads, the request-head deadline, and draining at
//! shutdown. Generic over the [`Service`] it serves and ignorant of what that is, so the
//! balancer and the demo webapp run on the same code without knowing each other.
//!
//! One acceptor hands each connection to the worker thread with the fewest open connections;
//! each worker is a single-threaded runtime that owns its connections and everything its
//! service keeps per worker. A request therefore never crosses threads: no work stealing, no
//! cross-core wake-ups, no shared locks on the hot path.

mod conn;
mod drain;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod fuzzing;
mod head_deadline;
mod lot;
mod write_deadline;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::Body;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

pub(crate) use conn::OnUpgrade;
pub(crate) use conn::body::{BodyError, RequestBody};
use drain::Drain;
use lot::{Lot, Parked};

/// How long a keep-alive connection waits for its next request as a task of its own before it
/// is parked (see `lot.rs`). Past it the connection costs a descriptor and a map entry, not a
/// task; its next request costs two system calls more to bring it back.
const PARK_AFTER: Duration = Duration::from_secs(1);

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a server treats its client connections.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Names the worker threads, for `top` and debuggers.
    pub(crate) name: &'static str,
    /// How long a keep-alive connection may wait for its next request.
    pub(crate) idle: Duration,
    /// A request head must be complete this long after its first byte.
    pub(crate) header_read: Duration,
    /// How long in-flight requests and tunnels may go on once shutdown begins.
    pub(crate) shutdown: Duration,
    /// How long a write to a client may wait for the client to read.
    pub(crate) write_stall: Duration,
    /// The largest request head (request line and headers) in bytes; a larger one, finished
    /// or not, is answered 431 and its connection closed.
    pub(crate) max_head: usize,
}

/// What a server serves. The caller builds one per worker thread, so that whatever a request
/// writes to can belong to its worker alone.
pub(crate) trait Service: Send + Sync + 'static {
    type Body: Body<Data = Bytes, Error: Into<BoxError> + Send> + Send + 'static;

    /// Answers one request that came on `client`'s connection.
    fn call(
        &self,
        req: Request<RequestBody>,
        client: &Client,
    ) -> impl Future<Output = Response<Self::Body>> + Send;

    /// Called once on the worker's runtime as it starts, for upkeep of the worker's own state
    /// (tasks spawned here end with the runtime).
    fn start(&self, _shutdown: &CancellationToken) {}
}

/// What a request knows of the connection it came on.
pub(crate) struct Client {
    pub(crate) peer: SocketAddr,
    /// The address the client connected to.
    pub(crate) local: SocketAddr,
    /// The peer's IP as a header value, made once per connection rather than per request.
    pub(crate) peer_ip: Option<HeaderValue>,
    tasks: TaskTracker,
    /// Requests this connection has brought, the one being answered included.
    requests: std::sync::atomic::AtomicU64,
}

impl Client {
    /// Whether the request being answered is the connection's first.
    pub(crate) fn first_request(&self) -> bool {
        self.requests.load(Ordering::Relaxed) == 1
    }

    /// Runs `task` beside the connection (a tunnel, say): shutdown waits for it as for a
    /// request in flight, until the deadline.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }
}

/// Settings a reload may replace while serving: each new connection reads the current ones
/// (one atomic load), connections already open keep theirs.
pub(crate) type LiveSettings = Arc<ArcSwap<Settings>>;

/// Serves `services` (one per worker) on `listener` until `shutdown`, then lets in-flight
/// requests finish within `settings.shutdown` and closes keep-alive connections.
pub(crate) async fn serve<S: Service>(
    listener: TcpListener,
    services: Vec<Arc<S>>,
    settings: impl Into<LiveSettings>,
    shutdown: CancellationToken,
) {
    let settings: LiveSettings = settings.into();
    let name = settings.load().name;
    let mut workers = Vec::new();
    for (index, service) in services.into_iter().enumerate() {
        let (tx, rx) = mpsc::unbounded_channel();
        let open = Arc::new(AtomicUsize::new(0));
        let (park, parked) = mpsc::unbounded_channel();
        let worker = Worker {
            service,
            open: Arc::clone(&open),
            drain: Drain::new(),
            settings: Arc::clone(&settings),
            park,
        };
        let shutdown = shutdown.clone();
        let thread = std::thread::Builder::new()
            .name(format!("{name}-{index}"))
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(worker.run(rx, parked, shutdown)),
                    Err(e) => warn!(error = %e, "cannot start a worker runtime"),
                }
            });
        match thread {
            Ok(t) => workers.push((tx, open, t)),
            Err(e) => warn!(error = %e, "cannot start a worker thread"),
        }
    }
    if workers.is_empty() {
        warn!("no worker could start; not serving");
        return;
    }
    accept(&listener, &shutdown, |stream, peer| {
        let Some((tx, open, _)) = workers
            .iter()
            .min_by_key(|(_, open, _)| open.load(Ordering::Relaxed))
        else {
            return;
        };
        match stream.into_std() {
            Ok(stream) => {
                open.fetch_add(1, Ordering::Relaxed);
                if tx.send((stream, peer)).is_err() {
                    open.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Err(e) => debug!(%peer, error = %e, "cannot hand a connection to a worker"),
        }
    })
    .await;
    drop(listener);
    info!(server = name, "shutting down: no longer accepting");
    let threads: Vec<_> = workers.into_iter().map(|(_, _, t)| t).collect();
    let joined = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    });
    let _ = joined.await;
}

/// Accepts connections until `shutdown`, handing each to `dispatch`.
async fn accept(
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

/// One worker thread: its service, its connections, and how many are open.
struct Worker<S> {
    service: Arc<S>,
    /// Client connections this worker serves; the acceptor reads it to pick a worker.
    open: Arc<AtomicUsize>,
    /// The worker's connections and the tasks they started, drained at shutdown.
    drain: Drain,
    settings: LiveSettings,
    /// Where the worker's connections go to be parked.
    park: mpsc::UnboundedSender<Parked>,
}

/// What a worker's loop wakes up for.
enum Wake {
    Accepted(std::net::TcpStream, SocketAddr),
    Parking(Parked),
    Resumed,
    Expiry,
    Stop,
}

impl From<Settings> for LiveSettings {
    fn from(settings: Settings) -> LiveSettings {
        Arc::new(ArcSwap::from_pointee(settings))
    }
}

impl<S: Service> Worker<S> {
    /// Serves the connections the acceptor hands over until `shutdown`, then drains.
    async fn run(
        self,
        mut incoming: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
        mut parked: mpsc::UnboundedReceiver<Parked>,
        shutdown: CancellationToken,
    ) {
        let mut settings = self.settings.load_full();
        self.service.start(&shutdown);
        let mut lot = match Lot::new() {
            Ok(lot) => Some(lot),
            Err(e) => {
                warn!(error = %e, "cannot start the parking lot: idle connections close after {PARK_AFTER:?}");
                None
            }
        };
        let mut resumed = Vec::new();
        let mut expiry = tokio::time::interval(Duration::from_secs(1));
        expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let occupied = lot.as_ref().is_some_and(|lot| !lot.is_empty());
            let wake = tokio::select! {
                _ = shutdown.cancelled() => Wake::Stop,
                next = incoming.recv() => match next {
                    Some((stream, peer)) => Wake::Accepted(stream, peer),
                    None => Wake::Stop,
                },
                Some(conn) = parked.recv() => Wake::Parking(conn),
                woke = async { lot.as_mut()?.ready(&mut resumed).await.ok() }, if occupied => match woke {
                    Some(()) => Wake::Resumed,
                    None => Wake::Expiry,
                },
                _ = expiry.tick(), if occupied => Wake::Expiry,
            };
            if !Arc::ptr_eq(&settings, &self.settings.load()) {
                settings = self.settings.load_full();
            }
            match wake {
                Wake::Stop => break,
                Wake::Accepted(stream, peer) => self.adopt(&settings, stream, peer, 0),
                Wake::Parking(conn) => {
                    if !lot.as_mut().is_some_and(|lot| lot.park(conn)) {
                        self.open.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                Wake::Resumed => {
                    for conn in resumed.drain(..) {
                        self.adopt(&settings, conn.stream, conn.peer, conn.requests);
                    }
                }
                Wake::Expiry => {
                    let closed = lot.as_mut().map_or(0, |lot| lot.expire(Instant::now()));
                    self.open.fetch_sub(closed, Ordering::Relaxed);
                }
            }
        }
        // Parked connections are idle ones: they close at once, as an idle task's do.
        parked.close();
        let left =
            lot.map_or(0, |lot| lot.len()) + std::iter::from_fn(|| parked.try_recv().ok()).count();
        self.open.fetch_sub(left, Ordering::Relaxed);
        let settings = self.settings.load_full();
        if !self.drain.wait(settings.shutdown).await {
            warn!(
                server = settings.name,
                connections = self.open.load(Ordering::Relaxed),
                deadline = ?settings.shutdown,
                "shutdown deadline cut off connections with requests in flight or open tunnels"
            );
        } else {
            debug!(server = settings.name, "worker drained");
        }
    }

    /// Takes a connection handed over by the acceptor, or back from the lot, with the
    /// `requests` it has brought so far.
    fn adopt(
        &self,
        settings: &Arc<Settings>,
        stream: std::net::TcpStream,
        peer: SocketAddr,
        requests: u64,
    ) {
        let stream = TcpStream::from_std(stream);
        match stream.and_then(|s| s.local_addr().map(|l| (s, l))) {
            Ok((stream, local)) => self.connection(settings, stream, peer, local, requests),
            Err(_) => {
                self.open.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    fn connection(
        &self,
        settings: &Arc<Settings>,
        stream: TcpStream,
        peer: SocketAddr,
        local: SocketAddr,
        requests: u64,
    ) {
        let client = Client {
            peer,
            local,
            peer_ip: HeaderValue::from_str(&peer.ip().to_string()).ok(),
            tasks: self.drain.tasks(),
            requests: std::sync::atomic::AtomicU64::new(requests),
        };
        let open = Arc::clone(&self.open);
        let service = Arc::clone(&self.service);
        let settings = Arc::clone(settings);
        let park = self.park.clone();
        self.drain.serve(peer, move |stop| async move {
            let ended = conn::serve(stream, &*service, &client, &settings, stop).await;
            if let Ok(Some(stream)) = ended {
                // Idle for PARK_AFTER: the rest of its keep-alive time is spent in the lot.
                let parked = stream.into_std().map(|stream| Parked {
                    stream,
                    peer,
                    requests: client.requests.load(Ordering::Relaxed),
                    until: Instant::now() + settings.idle.saturating_sub(PARK_AFTER),
                });
                if let Ok(parked) = parked
                    && park.send(parked).is_ok()
                {
                    return Ok(());
                }
                open.fetch_sub(1, Ordering::Relaxed);
                return Ok(());
            }
            open.fetch_sub(1, Ordering::Relaxed);
            ended.map(drop)
        });
    }
}
