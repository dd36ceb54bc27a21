//! The access log (`log.access`): one event per request, target `sweeplb::access`, level info,
//! written when its response is over: the body ended, failed, or the client went away. A
//! client that leaves before its answer is logged with status 499, as nginx does.
//!
//! Logged: requests forwarded to a backend, the answers the balancer gives in a backend's stead
//! (503 with no backend, 502, 504, ...), and the 400 for a bad `Host`. Not logged: the admin
//! paths (`/_lb/*`, polled by monitors, which would drown the users' lines) and the answer to
//! another sweeplb's probe. Never logged: headers, cookies, the query string (tokens and
//! personal data travel there), bodies.

use std::net::SocketAddr;
use std::time::Instant;

use http::{Method, StatusCode, Uri};

/// What the access log says of the user's session: whether the request reached the backend
/// its pin names. When the balancer answered itself, a pin that still leads to its backend
/// is `Pinned`, one that is being left `Moved`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Session {
    /// Answered by the backend the pin names.
    Pinned,
    /// It had a pin, and was answered elsewhere: its backend left, failed or was not found
    /// yet, or `repin_after` passed.
    Moved,
    /// It came without a pin.
    New,
    /// No cookie key (`balance.key` is a header or the client IP), or the balancer answered
    /// before a plan was made.
    NoKey,
}

impl Session {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Session::Pinned => "pinned",
            Session::Moved => "moved",
            Session::New => "new",
            Session::NoKey => "-",
        }
    }
}

/// One request's line, filled in as the request goes and written when it is dropped: every
/// request begun is logged once, whichever way its response ends.
pub(crate) struct Access {
    start: Instant,
    client: SocketAddr,
    method: Method,
    path: Box<str>,
    status: u16,
    backend: Option<SocketAddr>,
    session: Session,
    /// Response body bytes handed to the client's connection.
    bytes: u64,
}

impl Access {
    /// A request from `client` begins.
    pub(crate) fn begin(client: SocketAddr, method: &Method, uri: &Uri) -> Access {
        Access {
            start: Instant::now(),
            client,
            method: method.clone(),
            path: uri.path().into(),
            status: CLIENT_LEFT,
            backend: None,
            session: Session::NoKey,
            bytes: 0,
        }
    }

    /// Who answered, and with what: `backend` is `None` when the balancer answered itself.
    pub(crate) fn answered(
        &mut self,
        status: StatusCode,
        backend: Option<SocketAddr>,
        session: Session,
    ) {
        self.status = status.as_u16();
        self.backend = backend;
        self.session = session;
    }

    /// The balancer answered `resp` itself, whole: the line is written now, as `self` drops.
    pub(crate) fn answered_by_balancer<B: http_body::Body>(
        mut self,
        resp: &http::Response<B>,
        session: Session,
    ) {
        self.answered(resp.status(), None, session);
        // No body goes out in answer to HEAD.
        if self.method != Method::HEAD {
            self.bytes = resp.body().size_hint().exact().unwrap_or(0);
        }
    }

    /// `n` more bytes of the response body went to the client.
    pub(crate) fn sent(&mut self, n: usize) {
        self.bytes += n as u64;
    }
}

impl Drop for Access {
    fn drop(&mut self) {
        let took = self.start.elapsed();
        // Milliseconds to the microsecond: most answers take less than one.
        let duration_ms = took.as_micros() as f64 / 1000.0;
        tracing::info!(
            target: "sweeplb::access",
            client = %self.client,
            method = %self.method,
            path = %self.path,
            status = self.status,
            backend = %Backend(self.backend),
            duration_ms,
            bytes = self.bytes,
            session = %self.session.as_str(),
        );
    }
}

/// The status of a request whose client left before it was answered (nginx's).
const CLIENT_LEFT: u16 = 499;

/// Whether access lines would be written at all (`RUST_LOG` may silence the target).
pub(crate) fn enabled() -> bool {
    tracing::enabled!(target: "sweeplb::access", tracing::Level::INFO)
}

/// A backend's address, or `-` for the balancer itself.
struct Backend(Option<SocketAddr>);

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("-"),
        }
    }
}
