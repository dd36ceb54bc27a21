//! The `/_lb/*` endpoints, answered by the balancer itself and never forwarded. They only read
//! the pool snapshot and the proxy's counters.
//!
//! - `health.rs`: `/_lb/health`, the pool as JSON.
//! - `metrics.rs`: `/_lb/metrics`, Prometheus's text exposition.

mod health;
mod metrics;

pub(crate) use metrics::Metrics;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;

use crate::message::json;
use crate::pool::Snapshot;
use crate::proxy::{StickyStats, TrafficStats, UpstreamStats};

/// Answers a request for `/_lb` or below.
pub(crate) fn respond<B>(
    req: &Request<B>,
    snapshot: &std::sync::Arc<Snapshot>,
    upstream: &UpstreamStats,
    sticky: &StickyStats,
    traffic: &TrafficStats,
    metrics: &Metrics,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = json(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"error":"only GET and HEAD"}"#.to_string(),
        );
        resp.headers_mut()
            .insert(header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match req.uri().path() {
        "/_lb/health" => health::health(snapshot, upstream, sticky),
        "/_lb/metrics" => metrics::metrics(metrics, snapshot, upstream, sticky, traffic),
        // Liveness for container health checks: answers while the process serves requests,
        // whatever the pool holds.
        "/_lb/live" => json(StatusCode::OK, r#"{"status":"live"}"#.to_string()),
        _ => json(
            StatusCode::NOT_FOUND,
            r#"{"error":"unknown endpoint; try /_lb/health, /_lb/metrics or /_lb/live"}"#
                .to_string(),
        ),
    }
}
