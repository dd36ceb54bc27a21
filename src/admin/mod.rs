//! The `/_lb/*` endpoints, answered by the balancer itself and never forwarded. They only read
//! the pool snapshot and the proxy's counters.
//!
//! - `health.rs`: `/_lb/health`, the pool as JSON.
//! - `metrics.rs`: `/_lb/metrics`, Prometheus's text exposition.
//! - `dashboard.rs`: `/_lb/`, the live page that draws `/_lb/health`, and its files.
//! - `access.rs`: who may read them (`admin.allow`), and the answers to those who may not.

pub(crate) mod access;
mod dashboard;
mod health;
mod metrics;

pub(crate) use metrics::Metrics;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;

use crate::message::json;
use crate::pool::Snapshot;
use crate::proxy::{StickyStats, TrafficStats, UpstreamStats};
use crate::reload;

/// What the admin endpoints read, gathered for one request.
pub(crate) struct Sources<'a> {
    pub(crate) snapshot: Arc<Snapshot>,
    pub(crate) upstream: UpstreamStats,
    pub(crate) sticky: StickyStats,
    pub(crate) traffic: TrafficStats,
    pub(crate) reloads: &'a reload::Counts,
    pub(crate) metrics: &'a Metrics,
    /// `admin.keep_departed` as the running config says.
    pub(crate) keep_departed: Duration,
    /// Autoscaling as it stands, when it is on.
    pub(crate) autoscale: Option<crate::autoscale::Report>,
}

/// Answers a request for `/_lb` or below.
pub(crate) fn respond<B>(req: &Request<B>, s: &Sources<'_>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = json(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"error":"only GET and HEAD"}"#.to_string(),
        );
        resp.headers_mut()
            .insert(header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let path = req.uri().path();
    if let Some(page) = dashboard::page(path) {
        return page;
    }
    match path {
        "/_lb/health" => health::health(s),
        "/_lb/metrics" => metrics::metrics(s),
        // Liveness for container health checks: answers while the process serves requests,
        // whatever the pool holds.
        "/_lb/live" => json(StatusCode::OK, r#"{"status":"live"}"#.to_string()),
        _ => json(
            StatusCode::NOT_FOUND,
            r#"{"error":"unknown endpoint; try /_lb/, /_lb/health, /_lb/metrics or /_lb/live"}"#
                .to_string(),
        ),
    }
}
