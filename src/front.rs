//! The front door: the one service the balancer's listener serves. It sends `/_lb/*` to the
//! admin endpoints, answers a sweeplb probe for itself, and forwards everything else. It sits
//! above admin and proxy, which never call each other.

use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Either;
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;

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
