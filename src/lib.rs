//! sweeplb: a load balancer that finds its backends by sweeping a subnet.
//!
//! Codemap, in the order data flows:
//!
//! - [`config`]: `config.yaml` parsed into a serde tree, validated into a typed [`Config`].
//! - [`prober`]: sweeps the ranges, re-checks members, applies rise/fall; the pool's one writer.
//! - [`pool`]: the immutable [`pool::Snapshot`] the prober publishes through a `watch` channel.
//! - [`balancer`]: the consistent-hash ring; pure, synchronous, no I/O.
//! - [`proxy`]: accepts clients, picks backends from the ring, forwards, maps errors to statuses.
//! - [`upstream`]: keep-alive connections to backends, pooled per backend.
//! - [`head_deadline`]: a client's request head must be whole within `header_read` of its first
//!   byte, while an idle keep-alive connection may wait `idle`.
//! - [`admin`]: `/_lb/health`, read-only over the snapshot.
//! - [`webapp`] and [`demo`]: the demo backend and the one-command demo; not on the request path.
//!
//! Invariants:
//!
//! - Only the prober changes membership; the proxy and admin read snapshots and never mutate
//!   them (they bump per-backend counters, which are statistics). The proxy's only way to
//!   influence membership is a [`pool::Report`] that the prober weighs.
//! - The ring is built on the write side when the routed set changes, never per request.
//! - Placement hashes are seeded and stable, never `RandomState`: the same healthy set routes
//!   the same way in every process, on every restart, on every replica.
//! - The sweep never probes the balancer's own listening address, and never a range that is not
//!   loopback or attached to the host unless `allow_routed` says so.
//! - Memory grows with the number of responders, not with the size of the swept ranges.
//! - Nothing panics on network or config input.

pub mod admin;
pub mod balancer;
pub mod config;
pub mod demo;
pub mod head_deadline;
pub mod pool;
pub mod prober;
pub mod proxy;
pub mod upstream;
pub mod webapp;

use std::sync::Arc;

pub use config::Config;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Runs the balancer on `listener` until `shutdown` is cancelled, then drains in-flight
/// requests within `timeouts.shutdown`. The prober keeps the pool current while draining.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listen = listener.local_addr()?;
    let (writer, reader) = pool::new();
    let (reports, reports_rx) = pool::reports();
    let tasks = TaskTracker::new();
    let prober_stop = CancellationToken::new();
    tasks.spawn(prober::run(
        config.discovery.clone(),
        listen,
        writer,
        reports_rx,
        prober_stop.clone(),
    ));
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let proxy = Arc::new(proxy::Proxy::new(
        reader,
        config.balance.key.clone(),
        config.timeouts.clone(),
        reports,
        workers,
    ));
    tracing::info!(%listen, "listening");
    proxy::serve(listener, proxy, shutdown).await;
    prober_stop.cancel();
    tasks.close();
    tasks.wait().await;
    Ok(())
}
