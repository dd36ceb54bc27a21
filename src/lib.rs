//! sweeplb: a load balancer that finds its backends by sweeping a subnet.
//!
//! Codemap, in the order data flows:
//!
//! - [`config`]: `config.yaml` parsed into a serde tree, validated into a typed [`Config`]
//!   (`config/validate.rs`, including the routed-range rule); a file is read up to 1 MiB and
//!   checked for flow nesting before the YAML parser sees it.
//! - `discovery`: the prober, the pool's one writer. `discovery/mod.rs` schedules sweeps and
//!   member checks; `probe.rs` is one health check, `health.rs` the rise/fall hysteresis,
//!   `targets.rs` the address walk and the balancer's own addresses (never probed).
//! - `pool`: the immutable `Snapshot` the prober publishes through a `watch` channel.
//! - [`balancer`]: the consistent-hash ring and the pinning cookie (`balancer/pin.rs`): the
//!   ring picks a user's first backend, the pin keeps them there; pure, synchronous, no I/O.
//! - `proxy`: forwarding. `proxy/mod.rs` picks the backend and sends; `retry.rs` is the retry
//!   rule as a table, `error.rs` maps failures to 502/503/504/408 (the empty-pool 503 too),
//!   `headers.rs` the `Host` rule, the hop-by-hop and `X-Forwarded-*` rules, `upstream.rs` keep-alive
//!   connections to backends, `body.rs` streamed bodies with their stall deadline,
//!   `sticky.rs` the key, the pin resolved against the pool and the cookie a response sets,
//!   `sessions.rs` the session table (active sessions, moves counted once).
//! - `server`: HTTP/1.1 with clients for any service: accepting, worker threads, one connection
//!   spoken by sweeplb (`conn/`: request heads, bodies, responses), the request-head deadline
//!   (`head_deadline.rs`) and size cap, the write deadline for clients that stop reading
//!   (`write_deadline.rs`), draining at shutdown (`drain.rs`).
//! - `http1`, `buffers`: what both HTTP/1.1 sides share (chunked coding, `Content-Length`), and
//!   the per-thread pool of read buffers.
//! - `front`: the balancer's service: a bad `Host` answered 400, `/_lb/*` to `admin`,
//!   everything else to `proxy`.
//! - `admin`: the `/_lb/*` endpoints (`admin/health.rs`: `/_lb/health`; `admin/metrics.rs`:
//!   `/_lb/metrics`; `admin/dashboard.rs`: the page at `/_lb/`), read-only over the snapshot,
//!   the proxy's and the prober's counters; `admin/access.rs` the `admin.allow` rule. With
//!   `admin.listen` they are served on a listener of their own (`front::AdminFront`).
//! - `autoscale`: the containers of one service started, drained and stopped to match the
//!   in-flight load (`autoscale/decide.rs` the rule, `autoscale/engine/` the Docker Engine API);
//!   it reads the pool and acts on membership only through the prober's commands.
//! - [`reload`]: hot reload, a new config compared with the running one (`reload::diff`) and
//!   handed to each component's live handle, or refused whole.
//! - `identity`: the identity proof (`discovery.identity_secret`): a nonce per probe, the
//!   HMAC a backend answers with, bound to its address; the prober checks it, the webapp makes it.
//! - `host` (the host's networks) and `message` (our own JSON responses, reading a cookie):
//!   small pieces several components share.
//! - [`logging`]: the process's log lines (text or JSON, to stderr off the request path), for
//!   the binary; the access log's events are the proxy's (`proxy/access.rs`).
//! - [`webapp`] and [`demo`]: the demo backend and the one-command demo; not on the request path.
//!
//! Invariants:
//!
//! - Only the prober changes membership; the proxy and admin read snapshots and never mutate
//!   them (they bump per-backend counters, which are statistics). The proxy's only way to
//!   influence membership is a `pool::Report` that the prober weighs.
//! - Imports point down the data flow: `server` knows no service, `proxy` and `admin` never
//!   import each other, and only `front` and [`run`] see them both.
//! - The ring is built on the write side when the routed set changes, never per request.
//! - Placement hashes are seeded and stable, never `RandomState`: the same healthy set routes
//!   the same way in every process, on every restart, on every replica.
//! - A reload applies whole or not at all; it never rebinds a listener or re-keys a pin.
//! - Nothing under `/_lb/` is ever forwarded.
//! - Without an `autoscale:` block nothing talks to the Docker engine.
//! - The sweep never probes the balancer's own listening address, and never a range that is not
//!   loopback or attached to the host unless `allow_routed` says so: a [`Config`] cannot exist
//!   otherwise.
//! - Memory grows with the number of responders, not with the size of the swept ranges.
//! - Nothing panics on network or config input.

#![forbid(unsafe_code)]

mod admin;
mod autoscale;
pub mod balancer;
mod buffers;
pub mod config;
pub mod demo;
mod discovery;
mod front;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod host;
mod http1;
mod identity;
pub mod logging;
mod message;
mod pool;
mod proxy;
pub mod reload;
mod server;
pub mod webapp;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

/// Runs the balancer on `listener` until `shutdown` is cancelled, then drains in-flight
/// requests within `timeouts.shutdown`. The prober keeps the pool current while draining.
/// With `admin.listen` set, the admin endpoints are served there (bound here).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    run_with_reload(config, listener, reload::channel().1, shutdown).await
}

/// [`run`], taking new configs from `reloads` while it runs (see [`reload`]).
pub async fn run_with_reload(
    config: Config,
    listener: TcpListener,
    reloads: reload::Reloads,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listen = listener.local_addr()?;
    let admin_listener = match config.admin.listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("admin.listen: cannot bind {addr}: {e}"))
        })?),
        None => None,
    };
    let (writer, reader) = pool::new();
    let (reports, reports_rx) = pool::reports();
    let (discovery_reloads, discovery_reloads_rx) = tokio::sync::mpsc::channel(4);
    let (commands, commands_rx) = tokio::sync::mpsc::channel(64);
    let waiting = std::sync::Arc::new(pool::Waiting::default());
    let autoscale_status = std::sync::Arc::new(autoscale::Status::default());
    let prober_stats = std::sync::Arc::new(discovery::Stats::default());
    let metrics = std::sync::Arc::new(admin::Metrics::new(std::sync::Arc::clone(&prober_stats)));
    let tasks = TaskTracker::new();
    let prober_stop = CancellationToken::new();
    let pins = balancer::PinKey::new(config.balance.pin_secret.as_ref().map(|s| s.0.as_str()));
    let mut own = vec![listen];
    if let Some(admin) = &admin_listener {
        own.push(admin.local_addr()?);
    }
    tasks.spawn(discovery::run(
        config.discovery.clone(),
        own,
        pins,
        discovery::Links {
            pool: writer,
            reports: reports_rx,
            reloads: discovery_reloads_rx,
            stats: prober_stats,
            commands: commands_rx,
        },
        prober_stop.clone(),
    ));
    let timeouts = config.timeouts.clone();
    let settings = server::LiveSettings::from(server_settings(&config));
    // The first sweep's finds have joined by then: a whole round, `rise` checks, a timeout.
    let d = &config.discovery;
    let settle_within = d.sweep_interval + d.check_interval * d.rise + d.timeout;
    let (proxy, workers) = proxy::Proxy::new(
        reader.clone(),
        config.balance.clone(),
        timeouts,
        reports,
        workers(),
        settle_within,
        std::sync::Arc::clone(&waiting),
    );
    let autoscale = autoscale_settings(&config).map(|settings| {
        let (tx, rx) = tokio::sync::watch::channel(settings);
        let links = autoscale::Links {
            pool: reader.clone(),
            prober: commands,
            waiting,
            status: std::sync::Arc::clone(&autoscale_status),
        };
        tasks.spawn(autoscale::run(rx, links, prober_stop.clone()));
        tx
    });
    proxy.set_access_log(config.log.access);
    tasks.spawn(std::sync::Arc::clone(&proxy).keep_tally(prober_stop.clone()));
    let admin = std::sync::Arc::new(front::Admin {
        proxy: std::sync::Arc::clone(&proxy),
        pool: reader.clone(),
        settings: std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(config.admin.clone())),
        reloads: reloads.counts(),
        metrics,
        autoscale: autoscale.as_ref().map(|_| autoscale_status),
    });
    let admin_server = admin_listener
        .as_ref()
        .map(|_| server::LiveSettings::from(admin_server_settings(&config)));
    let live = reload::Live {
        proxy: std::sync::Arc::clone(&proxy),
        discovery: discovery_reloads,
        server: std::sync::Arc::clone(&settings),
        admin_server: admin_server.clone(),
        admin: std::sync::Arc::clone(&admin.settings),
        autoscale,
    };
    tasks.spawn(reload::serve(
        reloads,
        config.clone(),
        live,
        prober_stop.clone(),
    ));
    if let Some((admin_listener, admin_settings)) = admin_listener.zip(admin_server) {
        let at = admin_listener.local_addr()?;
        tracing::info!(%at, "admin endpoints listening");
        let service = vec![std::sync::Arc::new(front::AdminFront(
            std::sync::Arc::clone(&admin),
        ))];
        tasks.spawn(server::serve(
            admin_listener,
            service,
            admin_settings,
            shutdown.clone(),
        ));
    }
    tracing::info!(%listen, "listening");
    let fronts = front::Front::per_worker(workers, &admin, config.admin.listen.is_some());
    server::serve(listener, fronts, settings, shutdown).await;
    prober_stop.cancel();
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// What the autoscaler runs with under `config`, if `autoscale` is set.
fn autoscale_settings(config: &Config) -> Option<autoscale::Settings> {
    Some(autoscale::Settings {
        autoscale: config.autoscale.clone()?,
        subnets: config.discovery.subnets.clone(),
        port: config.discovery.port,
    })
}

/// How the admin listener (`admin.listen`) treats client connections under `config`: as the
/// public one does, on threads of its own name.
fn admin_server_settings(config: &Config) -> server::Settings {
    server::Settings {
        name: "sweeplb-admin",
        ..server_settings(config)
    }
}

/// How the balancer's listener treats client connections under `config`.
fn server_settings(config: &Config) -> server::Settings {
    let timeouts = &config.timeouts;
    server::Settings {
        name: "sweeplb-worker",
        idle: timeouts.idle,
        header_read: timeouts.header_read,
        shutdown: timeouts.shutdown,
        write_stall: timeouts.body,
        max_head: config.limits.max_request_head,
    }
}

/// Worker threads a server runs: one per core.
fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
