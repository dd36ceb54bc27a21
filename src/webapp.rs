//! The demo webapp (`sweeplb webapp`): the classic load-balancer lab app, a backend for the
//! tests, and the image of the Docker stack.
//!
//! `GET /` counts views in a server-side, in-memory session kept by a cookie, so a client that
//! stays on one backend sees `sessionViews` go 1, 2, 3... and one that is moved starts again
//! at one. `GET /work?ms=N` answers the same after N ms of waiting (0-60000): a stand-in for
//! real work, with which load tests make requests stay in flight. `GET /health` answers 200;
//! `POST /delay {"delay": ms}` slows every later answer.
//! Every answer names the instance (`x-sweeplb-instance`, the hostname: a container's id), so a
//! container replaced at the same address is told apart. Once told to drain (the binary does
//! on SIGTERM), its health answers carry `x-sweeplb-drain` while it goes on serving. Given the
//! balancer's `identity_secret`, it answers each health probe's nonce with the identity proof.
//!
//! It is deliberately simple: no persistence, and the session table is bounded by clearing it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::server::RequestBody;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Secret;
use crate::identity::{self, NONCE_HEADER, PROOF_HEADER};
use crate::message;
use crate::server::{self, Client, Service};

/// The session cookie, named after the one of the Express app this replaces.
pub const SESSION_COOKIE: &str = "webapp.sid";

/// Names the instance that answered: the balancer's identity of a backend.
const INSTANCE_HEADER: &str = "x-sweeplb-instance";
/// On a health answer: this instance is draining.
const DRAIN_HEADER: &str = "x-sweeplb-drain";

/// Sessions kept before the table is cleared; a bound, not a policy.
const MAX_SESSIONS: usize = 100_000;

pub struct Webapp {
    /// Named in the health body, so `expect_body` can tell this app from an impostor.
    app: String,
    host: String,
    /// What `x-sweeplb-instance` says: the hostname unless told otherwise.
    instance: HeaderValue,
    sessions: Mutex<HashMap<String, u64>>,
    delay_ms: AtomicU64,
    draining: AtomicBool,
    /// The balancer's `discovery.identity_secret`, to prove this is a backend it may trust.
    identity_secret: Option<Secret>,
}

#[derive(Deserialize)]
struct Delay {
    delay: u64,
}

impl Webapp {
    pub fn new(app: &str) -> Webapp {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "unknown".to_string());
        Webapp {
            app: app.to_string(),
            instance: HeaderValue::from_str(&host)
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            host,
            sessions: Mutex::new(HashMap::new()),
            delay_ms: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            identity_secret: None,
        }
    }

    /// The same app answering health probes that carry a nonce with the identity proof made
    /// with `secret`, which must be the balancer's `discovery.identity_secret`.
    pub fn with_identity_secret(mut self, secret: &str) -> Webapp {
        self.identity_secret = Some(Secret(secret.to_string()));
        self
    }

    /// The same app naming itself `instance` (tests run several in one process, where the
    /// hostname cannot tell them apart).
    pub fn with_instance(mut self, instance: &str) -> Webapp {
        if let Ok(v) = HeaderValue::from_str(instance) {
            self.instance = v;
        }
        self
    }

    /// From now on, health answers ask the balancer to send no new users here.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Answers one request that arrived on the local address `local`.
    pub async fn handle<B>(&self, req: Request<B>, local: SocketAddr) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>,
    {
        let delay = self.delay_ms.load(Ordering::Relaxed);
        let is_delay = req.uri().path() == "/delay";
        if delay > 0 && !is_delay {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let mut resp = match (req.method(), req.uri().path()) {
            (&Method::GET | &Method::HEAD, "/health") => {
                let mut resp = json(
                    StatusCode::OK,
                    serde_json::json!({ "status": "ok", "app": self.app }),
                );
                if self.draining.load(Ordering::Relaxed) {
                    resp.headers_mut()
                        .insert(DRAIN_HEADER, HeaderValue::from_static("1"));
                }
                if let Some(proof) = self.proof(&req, local) {
                    resp.headers_mut().insert(PROOF_HEADER, proof);
                }
                resp
            }
            (&Method::POST, "/delay") => self.set_delay(req).await,
            (&Method::GET | &Method::HEAD, "/") => self.index(&req, local),
            (&Method::GET | &Method::HEAD, "/work") => match work_ms(req.uri().query()) {
                Ok(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    self.index(&req, local)
                }
                Err(e) => json(StatusCode::BAD_REQUEST, serde_json::json!({ "error": e })),
            },
            _ => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({ "error": "not found" }),
            ),
        };
        let headers = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&local.ip().to_string()) {
            headers.insert("x-backend-ip", v);
        }
        headers.insert(INSTANCE_HEADER, self.instance.clone());
        resp
    }

    /// The proof for the request's nonce at the address it arrived on, if there is a secret
    /// and a well-formed nonce.
    fn proof<B>(&self, req: &Request<B>, local: SocketAddr) -> Option<HeaderValue> {
        let secret = self.identity_secret.as_ref()?;
        let nonce = req.headers().get(NONCE_HEADER)?.to_str().ok()?;
        if !identity::is_nonce(nonce) {
            return None;
        }
        HeaderValue::from_str(&identity::proof(secret.0.as_bytes(), nonce, local)).ok()
    }

    fn index<B>(&self, req: &Request<B>, local: SocketAddr) -> Response<Full<Bytes>> {
        let existing = message::cookie(req.headers(), SESSION_COOKIE).map(str::to_string);
        let (id, views, fresh) = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            match existing.filter(|id| sessions.contains_key(id)) {
                Some(id) => {
                    let views = sessions.entry(id.clone()).or_insert(0);
                    *views += 1;
                    (id, *views, false)
                }
                None => {
                    if sessions.len() >= MAX_SESSIONS {
                        sessions.clear();
                    }
                    let id = format!("{:032x}", fastrand::u128(..));
                    sessions.insert(id.clone(), 1);
                    (id, 1, true)
                }
            }
        };
        let mut resp = json(
            StatusCode::OK,
            serde_json::json!({
                "hello": "world!",
                "ip": local.ip().to_string(),
                "host": self.host,
                "sessionViews": views,
                "id": id,
            }),
        );
        if fresh {
            if let Ok(v) =
                HeaderValue::from_str(&format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly"))
            {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
        }
        resp
    }

    async fn set_delay<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>,
    {
        let body = match Limited::new(req.into_body(), 4096).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({ "error": "body too large" }),
                );
            }
        };
        match serde_json::from_slice::<Delay>(&body) {
            Ok(d) => {
                self.delay_ms.store(d.delay, Ordering::Relaxed);
                info!(delay_ms = d.delay, "delay set");
                json(StatusCode::OK, serde_json::json!({ "delay": d.delay }))
            }
            Err(e) => json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": format!("expected {{\"delay\": ms}}: {e}") }),
            ),
        }
    }
}

/// The longest `GET /work` waits.
const MAX_WORK_MS: u64 = 60_000;

/// The `ms` of `GET /work?ms=N`.
fn work_ms(query: Option<&str>) -> Result<u64, String> {
    let accepted = format!("expected /work?ms=N with N from 0 to {MAX_WORK_MS}");
    let ms = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("ms="))
        .ok_or_else(|| format!("no ms; {accepted}"))?;
    match ms.parse::<u64>() {
        Ok(n) if n <= MAX_WORK_MS => Ok(n),
        _ => Err(format!("ms={ms:?}; {accepted}")),
    }
}

/// Reads an identity secret file as the balancer reads `discovery.identity_secret_file`: UTF-8
/// text, surrounding whitespace ignored, at least 16 characters. The error names the file and
/// what is accepted, never the content.
pub fn read_identity_secret(path: &Path) -> Result<String, String> {
    identity::read_secret(path)
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    message::json(status, value.to_string())
}

/// The webapp as a server sees it.
struct Served(Arc<Webapp>);

impl Service for Served {
    type Body = Full<Bytes>;

    async fn call(&self, req: Request<RequestBody>, client: &Client) -> Response<Full<Bytes>> {
        self.0.handle(req, client.local).await
    }
}

/// Serves the webapp on `listener` until `shutdown`; open connections are then closed
/// gracefully.
pub async fn run(listener: TcpListener, app: Arc<Webapp>, shutdown: CancellationToken) {
    let settings = server::Settings {
        name: "webapp",
        idle: Duration::from_secs(30),
        header_read: Duration::from_secs(30),
        shutdown: Duration::from_secs(5),
        write_stall: Duration::from_secs(30),
        max_head: crate::config::MAX_REQUEST_HEAD,
    };
    let services = (0..crate::workers())
        .map(|_| Arc::new(Served(Arc::clone(&app))))
        .collect();
    server::serve(listener, services, settings, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_takes_ms_from_the_query() {
        assert_eq!(work_ms(Some("ms=250")), Ok(250));
        assert_eq!(work_ms(Some("x=1&ms=0")), Ok(0));
        assert_eq!(work_ms(Some("ms=60000")), Ok(60_000));
        for bad in [
            None,
            Some(""),
            Some("ms="),
            Some("ms=-1"),
            Some("ms=60001"),
            Some("ms=1s"),
        ] {
            let e = work_ms(bad).expect_err("refused");
            assert!(
                e.contains("expected /work?ms=N with N from 0 to 60000"),
                "{bad:?}: {e}"
            );
        }
    }
}
