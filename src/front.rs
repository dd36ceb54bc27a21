//! The front door: the one service the balancer's listener serves. It refuses a request whose
//! `Host` is missing, repeated or invalid, sends `/_lb/*` to the admin endpoints (to peers in
//! `admin.allow`; with `admin.listen` set, only `/_lb/live` here), answers a sweeplb probe for
//! itself, and forwards everything else. Nothing under `/_lb/` is ever forwarded. [`AdminFront`]
//! is the service of the `admin.listen` listener. It sits above admin and proxy, which never
//! call each other.

use std::sync::Arc;

use crate::server::RequestBody;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::admin::access;
use crate::discovery::{BALANCER_HEADER, PROBE_HEADER};
use crate::proxy::{self, Proxy, ResponseBody};
use crate::server::{Client, Service};
use crate::{admin, config, message, pool, reload};

/// One worker's front: the proxy's worker, and the admin endpoints.
pub(crate) struct Front {
    worker: proxy::Worker,
    admin: Arc<Admin>,
    /// `admin.listen` serves the admin endpoints: here only `/_lb/live` answers. Fixed at
    /// start, since a reload that moves the admin listener is refused.
    admin_elsewhere: bool,
}

/// What answers `/_lb/*`, on either listener: the pool and the proxy's counters it reads, the
/// live admin settings and the reload counts.
pub(crate) struct Admin {
    pub(crate) proxy: Arc<Proxy>,
    pub(crate) pool: pool::Reader,
    /// Replaced by a reload; loaded once per admin request.
    pub(crate) settings: Arc<ArcSwap<config::Admin>>,
    pub(crate) reloads: Arc<reload::Counts>,
    /// What `/_lb/metrics` keeps between scrapes.
    pub(crate) metrics: Arc<admin::Metrics>,
    /// What autoscaling shows, when it is on.
    pub(crate) autoscale: Option<Arc<crate::autoscale::Status>>,
}

impl Admin {
    /// A request for `/_lb` or below, from `client`: 403 unless it is allowed.
    fn answer(&self, req: &Request<RequestBody>, client: &Client) -> Response<ResponseBody> {
        let path = req.uri().path();
        if !access::allowed(path, client.peer.ip(), &self.settings.load().allow) {
            debug!(peer = %client.peer, path, "admin request refused: not in admin.allow");
            return access::forbidden().map(Either::Right);
        }
        let sources = admin::Sources {
            snapshot: Arc::clone(&self.pool.borrow()),
            upstream: self.proxy.upstream_stats(),
            sticky: self.proxy.sticky_stats(),
            traffic: self.proxy.traffic_stats(),
            reloads: &self.reloads,
            metrics: &self.metrics,
            keep_departed: self.settings.load().keep_departed,
            autoscale: self.autoscale.as_ref().map(|s| s.report()),
        };
        admin::respond(req, &sources).map(Either::Right)
    }
}

impl Front {
    /// One front per proxy worker.
    pub(crate) fn per_worker(
        workers: Vec<proxy::Worker>,
        admin: &Arc<Admin>,
        admin_elsewhere: bool,
    ) -> Vec<Arc<Front>> {
        workers
            .into_iter()
            .map(|worker| {
                Arc::new(Front {
                    worker,
                    admin: Arc::clone(admin),
                    admin_elsewhere,
                })
            })
            .collect()
    }
}

/// Whether `path` is an admin path: never forwarded, on either listener.
fn is_admin(path: &str) -> bool {
    path == "/_lb" || path.starts_with("/_lb/")
}

/// The answer to a request whose `Host` is wrong, if it is.
fn bad_host(parts: &http::request::Parts, client: &Client) -> Option<Response<Full<Bytes>>> {
    let reason = proxy::host_problem(parts)?;
    debug!(peer = %client.peer, reason, "request refused");
    let body = serde_json::json!({ "error": reason, "status": 400 }).to_string();
    let mut resp = message::json(StatusCode::BAD_REQUEST, body);
    // A client that gets Host wrong is broken or probing: the connection ends here.
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    Some(resp)
}

/// The service of the `admin.listen` listener: the admin endpoints and nothing else.
pub(crate) struct AdminFront(pub(crate) Arc<Admin>);

impl Service for AdminFront {
    type Body = ResponseBody;

    async fn call(&self, req: Request<RequestBody>, client: &Client) -> Response<ResponseBody> {
        let (parts, body) = req.into_parts();
        if let Some(resp) = bad_host(&parts, client) {
            return resp.map(Either::Right);
        }
        let req = Request::from_parts(parts, body);
        if is_admin(req.uri().path()) {
            return self.0.answer(&req, client);
        }
        access::not_admin().map(Either::Right)
    }
}

impl Service for Front {
    type Body = ResponseBody;

    async fn call(&self, req: Request<RequestBody>, client: &Client) -> Response<ResponseBody> {
        // Before anything else, `/_lb/*` included: RFC 9112 §3.2 asks any server to answer
        // 400, and one rule everywhere leaves nothing to learn about which paths are lenient.
        let (parts, body) = req.into_parts();
        if let Some(resp) = bad_host(&parts, client) {
            let proxy = &self.admin.proxy;
            proxy.log_answer(client, &parts.method, &parts.uri, &resp);
            return self.worker.answered_at_once(resp.map(Either::Right));
        }
        let req = Request::from_parts(parts, body);
        let path = req.uri().path();
        if is_admin(path) {
            if self.admin_elsewhere && path != access::LIVE {
                return access::elsewhere().map(Either::Right);
            }
            return self.admin.answer(&req, client);
        }
        if req.headers().contains_key(PROBE_HEADER) {
            // Another sweeplb (or this one) is probing us: say what we are, never forward.
            let mut resp = message::json(
                StatusCode::MISDIRECTED_REQUEST,
                r#"{"error":"this is a sweeplb balancer, not a backend"}"#.to_string(),
            );
            resp.headers_mut()
                .insert(BALANCER_HEADER, HeaderValue::from_static("1"));
            return self.worker.answered_at_once(resp.map(Either::Right));
        }
        self.worker.forward(req, client).await
    }

    fn start(&self, shutdown: &CancellationToken) {
        self.worker.start(shutdown);
    }
}
