//! One health check: a fresh connection to one address, `GET health_path`, judged by status,
//! identity proof (with `identity_secret`) and body. It knows nothing of members or rounds; the scheduler decides what a
//! result means.

use std::fmt;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::{Discovery, PROBE_BODY_LIMIT};
use crate::identity::{self, NONCE_HEADER, PROOF_HEADER};

/// Sent with every probe. A sweeplb that receives it answers for itself instead of forwarding,
/// with [`BALANCER_HEADER`], so that balancers never add each other (or themselves) as backends.
pub(crate) const PROBE_HEADER: &str = "x-sweeplb-probe";
pub(crate) const BALANCER_HEADER: &str = "x-sweeplb-balancer";
/// On a health answer: which instance of the backend answered (a container's hostname, say).
/// Another instance at the same address is another backend: its predecessor's pins are stale.
pub(crate) const INSTANCE_HEADER: &str = "x-sweeplb-instance";
/// On a health answer that passes: the backend is draining, and takes no new users.
pub(crate) const DRAIN_HEADER: &str = "x-sweeplb-drain";
/// Longest instance name kept; a longer one is cut.
const INSTANCE_LIMIT: usize = 128;
pub(crate) const USER_AGENT: &str =
    concat!("sweeplb/", env!("CARGO_PKG_VERSION"), " (health probe)");

/// A health answer that passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    /// The instance it named, if any.
    pub(crate) instance: Option<String>,
    /// It asked to drain.
    pub(crate) draining: bool,
}

/// Why a probe did not count as healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    Refused,
    Timeout,
    Unreachable(String),
    Status(u16),
    BodyMismatch,
    Http(String),
    /// The address is a sweeplb balancer (possibly this one), not a backend.
    Balancer,
    /// `identity_secret` is set and the answer carries no proof.
    ProofMissing,
    /// `identity_secret` is set and the answer's proof is not the one for this probe's nonce
    /// and address: another secret, a replayed answer, or a proof made for another address.
    ProofWrong,
    /// The operating system gave no randomness for a nonce; nothing was sent.
    NoNonce(String),
}

impl Failure {
    /// Every class of failure, as counted: bounded, unlike the messages.
    pub(crate) const CLASSES: [&str; 10] = [
        "refused",
        "timeout",
        "unreachable",
        "status",
        "body_mismatch",
        "http",
        "balancer",
        "proof_missing",
        "proof_wrong",
        "no_nonce",
    ];

    /// The index of its class in [`Failure::CLASSES`].
    pub(crate) fn class(&self) -> usize {
        match self {
            Failure::Refused => 0,
            Failure::Timeout => 1,
            Failure::Unreachable(_) => 2,
            Failure::Status(_) => 3,
            Failure::BodyMismatch => 4,
            Failure::Http(_) => 5,
            Failure::Balancer => 6,
            Failure::ProofMissing => 7,
            Failure::ProofWrong => 8,
            Failure::NoNonce(_) => 9,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Refused => f.write_str("connection refused"),
            Failure::Timeout => f.write_str("timeout"),
            Failure::Unreachable(e) => write!(f, "unreachable: {e}"),
            Failure::Status(s) => write!(f, "status {s}"),
            Failure::BodyMismatch => f.write_str("body mismatch"),
            Failure::Http(e) => write!(f, "bad response: {e}"),
            Failure::Balancer => f.write_str("a sweeplb balancer, not a backend"),
            Failure::ProofMissing => f.write_str("identity proof missing"),
            Failure::ProofWrong => f.write_str("identity proof wrong"),
            Failure::NoNonce(e) => write!(f, "no random nonce for the identity proof: {e}"),
        }
    }
}

/// One health check: a fresh connection, `GET health_path`, bounded by `timeout` as a whole.
pub(crate) async fn probe(addr: SocketAddr, d: &Discovery) -> Result<Answer, Failure> {
    match tokio::time::timeout(d.timeout, probe_once(addr, d)).await {
        Ok(r) => r,
        Err(_) => Err(Failure::Timeout),
    }
}

async fn probe_once(addr: SocketAddr, d: &Discovery) -> Result<Answer, Failure> {
    // Drawn before connecting, so a probe that cannot be verified is never sent.
    let nonce = match &d.identity_secret {
        Some(_) => Some(identity::nonce().map_err(|e| Failure::NoNonce(e.to_string()))?),
        None => None,
    };
    let stream = TcpStream::connect(addr).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::ConnectionRefused => Failure::Refused,
        _ => Failure::Unreachable(e.to_string()),
    })?;
    let _ = stream.set_nodelay(true);
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Failure::Http(e.to_string()))?;
    let mut req = http::Request::get(d.health_path.as_str())
        .header(http::header::HOST, addr.to_string())
        .header(http::header::USER_AGENT, USER_AGENT)
        .header(http::header::CONNECTION, "close")
        .header(PROBE_HEADER, "1");
    if let Some(nonce) = &nonce {
        req = req.header(NONCE_HEADER, nonce.as_str());
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| Failure::Http(e.to_string()))?;
    let exchange = async move {
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| Failure::Http(e.to_string()))?;
        let headers = resp.headers();
        let answer = Answer {
            instance: headers
                .get(INSTANCE_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.chars().take(INSTANCE_LIMIT).collect::<String>())
                .filter(|v| !v.is_empty()),
            draining: headers.contains_key(DRAIN_HEADER),
        };
        if resp.headers().contains_key(BALANCER_HEADER) {
            return Err(Failure::Balancer);
        }
        let status = resp.status().as_u16();
        if !d.expect_status.contains(&status) {
            return Err(Failure::Status(status));
        }
        if let (Some(secret), Some(nonce)) = (&d.identity_secret, &nonce) {
            let proof = headers.get(PROOF_HEADER).ok_or(Failure::ProofMissing)?;
            if !identity::verify(secret.0.as_bytes(), nonce, addr, proof.as_bytes()) {
                return Err(Failure::ProofWrong);
            }
        }
        let Some(expected) = &d.expect_body else {
            return Ok(answer);
        };
        let mut body = resp.into_body();
        let mut seen = Vec::new();
        while seen.len() < PROBE_BODY_LIMIT {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        let room = PROBE_BODY_LIMIT - seen.len();
                        seen.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
                Some(Err(e)) => return Err(Failure::Http(e.to_string())),
                None => break,
            }
        }
        if contains(&seen, expected.as_bytes()) {
            Ok(answer)
        } else {
            Err(Failure::BodyMismatch)
        }
    };
    // The connection is driven here rather than spawned, so nothing outlives the probe.
    tokio::select! {
        r = exchange => r,
        Err(e) = conn => Err(Failure::Http(e.to_string())),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A class per kind of failure, named as its message begins.
    #[test]
    fn failure_classes() {
        let all = [
            (Failure::Refused, "refused"),
            (Failure::Timeout, "timeout"),
            (Failure::Unreachable("no route".into()), "unreachable"),
            (Failure::Status(500), "status"),
            (Failure::BodyMismatch, "body_mismatch"),
            (Failure::Http("garbage".into()), "http"),
            (Failure::Balancer, "balancer"),
            (Failure::ProofMissing, "proof_missing"),
            (Failure::ProofWrong, "proof_wrong"),
            (Failure::NoNonce("none".into()), "no_nonce"),
        ];
        assert_eq!(all.len(), Failure::CLASSES.len());
        for (failure, class) in all {
            assert_eq!(Failure::CLASSES[failure.class()], class, "{failure}");
        }
    }
}
