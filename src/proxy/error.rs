//! The proxy's failures, and the one place they become statuses: a short JSON body for the
//! client, the cause chain for the log.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;
use tracing::{debug, warn};

use super::upstream;
use crate::message;

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("no backend is healthy")]
    NoBackend,
    #[error("could not connect to {tried} backend(s), last {addr}: {source}")]
    Connect {
        tried: usize,
        addr: SocketAddr,
        #[source]
        source: upstream::ConnectError,
    },
    #[error("backend {addr} sent no response head within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("backend {addr} failed after the request was sent: {source}")]
    Backend {
        addr: SocketAddr,
        #[source]
        source: upstream::BackendError,
    },
    #[error("backend {addr} left the pool while the request was in flight")]
    Gone { addr: SocketAddr },
    #[error("the client's request body stalled on its way to {addr}")]
    ClientStalled { addr: SocketAddr },
    #[error("the client's request body to {addr} was malformed: {source}")]
    ClientMalformed {
        addr: SocketAddr,
        #[source]
        source: crate::server::BoxError,
    },
    #[error("the client left in the middle of its request body to {addr}")]
    ClientGone { addr: SocketAddr },
    #[error("backend {addr} switched protocols on a request that did not ask to")]
    UnaskedUpgrade { addr: SocketAddr },
}

impl Error {
    /// The one place errors become statuses: a short JSON body for the client, the cause chain
    /// for the log.
    pub(crate) fn respond(&self) -> Response<Full<Bytes>> {
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
            Error::ClientMalformed { .. } => (StatusCode::BAD_REQUEST, "malformed request body"),
            // Nobody reads this answer; it ends the exchange.
            Error::ClientGone { .. } => (StatusCode::BAD_REQUEST, "incomplete request body"),
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
            // The client's doing, not the backend's: not worth a warning per request, which
            // anyone could raise at will.
            Error::ClientStalled { .. }
            | Error::ClientMalformed { .. }
            | Error::ClientGone { .. } => {
                debug!(error = %chain, status = status.as_u16(), "client fault")
            }
            _ => warn!(error = %chain, status = status.as_u16(), "request failed"),
        }
        let body = serde_json::json!({ "error": message, "status": status.as_u16() }).to_string();
        let mut resp = message::json(status, body);
        if matches!(self, Error::NoBackend | Error::Connect { .. }) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}
