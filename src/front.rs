//! The front door: the one service the balancer's listener serves. It refuses a request whose
//! `Host` is missing, repeated or invalid, sends `/_lb/*` to the admin endpoints, answers a
//! sweeplb probe for itself, and forwards everything else. It sits above admin and proxy,
//! which never call each other.

use std::sync::Arc;

use http::header;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Either;
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::discovery::{BALANCER_HEADER, PROBE_HEADER};
use crate::proxy::{self, Proxy, ResponseBody};
use crate::server::{Client, Service};
use crate::{admin, message, pool};

/// One worker's front: the proxy's worker, and what admin reads.
pub(crate) struct Front {
    proxy: Arc<Proxy>,
    worker: proxy::Worker,
    pool: pool::Reader,
}

impl Front {
    /// One front per proxy worker.
    pub(crate) fn per_worker(
        proxy: &Arc<Proxy>,
        workers: Vec<proxy::Worker>,
        pool: &pool::Reader,
    ) -> Vec<Arc<Front>> {
        workers
            .into_iter()
            .map(|worker| {
                Arc::new(Front {
                    proxy: Arc::clone(proxy),
                    worker,
                    pool: pool.clone(),
                })
            })
            .collect()
    }
}

impl Service for Front {
    type Body = ResponseBody;

    async fn call(&self, req: Request<Incoming>, client: &Client) -> Response<ResponseBody> {
        // Before anything else, `/_lb/*` included: RFC 9112 §3.2 asks any server to answer
        // 400, and one rule everywhere leaves nothing to learn about which paths are lenient.
        let (parts, body) = req.into_parts();
        if let Some(reason) = proxy::host_problem(&parts) {
            debug!(peer = %client.peer, reason, "request refused");
            let body = serde_json::json!({ "error": reason, "status": 400 }).to_string();
            let mut resp = message::json(StatusCode::BAD_REQUEST, body);
            // A client that gets Host wrong is broken or probing: the connection ends here.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            self.proxy
                .log_answer(client, &parts.method, &parts.uri, &resp);
            return resp.map(Either::Right);
        }
        let req = Request::from_parts(parts, body);
        let path = req.uri().path();
        if path == "/_lb" || path.starts_with("/_lb/") {
            let snapshot = Arc::clone(&self.pool.borrow());
            let (upstream, sticky) = (self.proxy.upstream_stats(), self.proxy.sticky_stats());
            return admin::respond(&req, &snapshot, &upstream, &sticky).map(Either::Right);
        }
        if req.headers().contains_key(PROBE_HEADER) {
            // Another sweeplb (or this one) is probing us: say what we are, never forward.
            let mut resp = message::json(
                StatusCode::MISDIRECTED_REQUEST,
                r#"{"error":"this is a sweeplb balancer, not a backend"}"#.to_string(),
            );
            resp.headers_mut()
                .insert(BALANCER_HEADER, HeaderValue::from_static("1"));
            return resp.map(Either::Right);
        }
        self.worker.forward(req, client).await
    }

    fn start(&self, shutdown: &CancellationToken) {
        self.worker.start(shutdown);
    }
}
