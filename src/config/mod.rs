//! `config.yaml`: parsed into a serde-shaped `Raw` tree, then validated into a typed
//! [`Config`] that cannot be built invalid.
//!
//! Every problem is collected (not just the first) and reported as one line that names the key
//! and says what would be accepted, so an operator fixes a file in one pass. Nothing here
//! touches the network; the one environmental check, that a swept range is loopback or attached
//! to an interface, is part of validation wherever a config enters, and takes the host's
//! networks as an argument inside so it can be tested.

mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::Path;
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;

/// The largest number of addresses sweeplb agrees to walk, whatever the rate: a /8 of IPv4.
/// Beyond this a sweep is a scan of someone else's network, not discovery of one's own.
pub const MAX_ADDRESSES: u128 = 1 << 24;

/// How much of a health response's body a probe reads, and so the longest `expect_body`.
pub const PROBE_BODY_LIMIT: usize = 4096;

/// The default cap on a request head (request line and headers), `limits.max_request_head`.
/// In line with HAProxy (a head must fit its 16 KiB buffer), nginx (4 buffers of 8 KiB, no
/// line longer than one) and Node.js (16 KiB): ordinary heads, cookies included, are a few KiB,
/// and a connection holding a half-sent head holds at most about this much memory.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// The largest config file read. Real ones are a few KiB; reading stops one byte past this, so
/// `--config /dev/zero` is refused at once rather than read until memory runs out.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The most flow collections (`[` and `{`) a config may open. The YAML parser's time grows
/// with the square of their nesting (60,000 nested brackets took seconds), and a config uses
/// a handful; every one is counted, quoted or not, so no quoting can hide a nesting from it.
pub const MAX_FLOW_COLLECTIONS: usize = 1000;

/// A validated config. Built only by [`parse`] and [`load`], so whatever holds one holds a
/// config that passed every check, the routed-range rule included.
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) listen: SocketAddr,
    pub(crate) discovery: Discovery,
    pub(crate) balance: Balance,
    pub(crate) timeouts: Timeouts,
    pub(crate) limits: Limits,
    pub(crate) admin: Admin,
    pub(crate) log: Log,
    /// `None`: autoscaling is off and sweeplb never touches the Docker engine.
    pub(crate) autoscale: Option<Autoscale>,
}

#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Discovery {
    pub subnets: Vec<IpNet>,
    pub exclude: Vec<IpNet>,
    pub port: u16,
    pub health_path: String,
    pub expect_status: RangeInclusive<u16>,
    pub expect_body: Option<String>,
    pub check_interval: Duration,
    pub sweep_interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub concurrency: usize,
    pub allow_routed: bool,
    /// When set, a backend must prove it holds this secret in every health answer (an HMAC
    /// of the probe's fresh nonce and its address): see `identity.rs`.
    pub identity_secret: Option<Secret>,
}

#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Balance {
    pub key: Key,
    /// `Max-Age` of the pinning cookie; `None` makes it a session cookie.
    pub cookie_max_age: Option<Duration>,
    /// A user pinned longer ago than this goes where the ring says (off when `None`).
    pub repin_after: Option<Duration>,
    /// A user counts as an active session of their backend while seen within this.
    pub session_idle: Duration,
    /// A new user's first backend is skipped while it holds more than this factor times the
    /// mean of active sessions (off when `None`).
    pub bounded_load: Option<f64>,
    /// Keys the pin hash, so that a pin cannot be mapped back to an address.
    pub pin_secret: Option<Secret>,
}

/// A secret from the config: usable, never printed.
#[derive(Clone)]
pub struct Secret(pub(crate) String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// What a request is hashed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// The value of this cookie: a key, and a pin naming the backend the user is pinned to.
    /// A request without it is given a fresh one.
    Cookie(String),
    /// The value of this request header.
    Header(HeaderName),
    /// The TCP peer's address (never a client-supplied `X-Forwarded-For`).
    ClientIp,
}

#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Timeouts {
    pub connect: Duration,
    pub response: Duration,
    pub idle: Duration,
    pub header_read: Duration,
    /// The longest pause inside a request or response body being streamed.
    pub body: Duration,
    /// How long in-flight requests may run after SIGTERM before they are cut off.
    pub shutdown: Duration,
}

/// Sizes a client may send.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Limits {
    /// The largest request head, in bytes: a larger one is answered 431.
    pub max_request_head: usize,
}

/// Who reaches the `/_lb/*` endpoints, and where.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Admin {
    /// Serve `/_lb/*` on this address instead of the public listener (which then answers
    /// nothing under `/_lb/` but `/_lb/live`). `None`: on the public listener.
    pub listen: Option<SocketAddr>,
    /// Clients allowed on every admin path but `/_lb/live`; others get 403. The default is
    /// everyone (`0.0.0.0/0` and `::/0`).
    pub allow: Vec<IpNet>,
    /// How long `/_lb/metrics` keeps exporting a backend after it left, so that a scrape sees
    /// its last counts; then its series go, and containers coming and going for days do not
    /// grow the exposition.
    pub keep_departed: Duration,
}

/// The `autoscale:` block: scaling a compose service's (or a swarm service's) containers to
/// the in-flight load the balancer measures.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Autoscale {
    /// The Docker engine's address as written: `unix:///path`, `tcp://host:port` or
    /// `http://host:port` (DOCKER_HOST's forms without TLS; `http://` means the same as `tcp://`).
    pub docker: String,
    /// The compose service (label `com.docker.compose.service`) or swarm service to scale.
    pub service: String,
    /// Containers kept running whatever the load; 0 allows scaling to zero.
    pub min: u32,
    /// Containers running at most, whatever the load: a bound on what a burst can start.
    pub max: u32,
    /// In-flight requests per routed backend that scaling aims for.
    pub target_inflight: u32,
    /// Above target this long: add containers.
    pub up_after: Duration,
    /// Below target this long: remove one.
    pub down_after: Duration,
    /// A draining container is stopped once its users have been idle this long ...
    pub session_idle: Duration,
    /// ... or after this long in any case.
    pub drain_max: Duration,
    /// With no routed backend and room to start one, requests wait this long (0: not at all).
    pub hold: Duration,
    /// At most this many requests wait at once; more are answered 503 at once.
    pub hold_limit: usize,
    /// A started container not routed within this is given up: stopped, removed, backed off.
    pub start_timeout: Duration,
}

/// What the balancer logs, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Log {
    pub format: LogFormat,
    /// One line per request (target `sweeplb::access`, level info).
    pub access: bool,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable, one event per line.
    Text,
    /// One JSON object per line, with stable field names.
    Json,
}

/// One line per problem, each naming the key and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}", p.key, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl Error {
    fn one(key: &str, message: impl Into<String>) -> Error {
        Error {
            problems: vec![Problem {
                key: key.to_string(),
                message: message.into(),
            }],
        }
    }
}

/// Reads, parses and validates a config file of at most [`MAX_CONFIG_BYTES`].
pub fn load(path: &Path) -> Result<Config, Error> {
    use std::io::Read;
    let cannot =
        |e: std::io::Error| Error::one("config", format!("cannot read {}: {e}", path.display()));
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes))
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_large(&path.display().to_string()));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        Error::one(
            "config",
            format!(
                "{} is not UTF-8 text ({e}); expected a YAML file",
                path.display()
            ),
        )
    })?;
    parse(&text)
}

fn too_large(what: &str) -> Error {
    Error::one(
        "config",
        format!("{what} is larger than {MAX_CONFIG_BYTES} bytes; expected at most 1 MiB"),
    )
}

/// Parses and validates a config, including the check that every swept range is loopback or
/// attached to this host.
pub fn parse(text: &str) -> Result<Config, Error> {
    parse_for(text, &attached_networks())
}

/// The networks this host reaches without a router: loopback and every interface's subnet.
pub fn attached_networks() -> Vec<IpNet> {
    crate::host::networks().iter().map(IpNet::trunc).collect()
}

/// [`parse`] on a host attached to `attached`, so the routed-range rule can be tested.
fn parse_for(text: &str, attached: &[IpNet]) -> Result<Config, Error> {
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_large("the config text"));
    }
    let flows = text.bytes().filter(|b| matches!(b, b'[' | b'{')).count();
    if flows > MAX_FLOW_COLLECTIONS {
        return Err(Error::one(
            "config",
            format!(
                "{flows} `[` and `{{` (flow collections, quoted or not); expected at most \
                 {MAX_FLOW_COLLECTIONS}: the YAML parser is slow on deep nesting of them"
            ),
        ));
    }
    let raw: validate::Raw = serde_yaml::from_str(text).map_err(|e| {
        // serde_yaml says "discovery: unknown field `x`, expected one of ... at line 3": lift
        // the key path out so the line reads like every other problem.
        let text = e.to_string();
        match text.split_once(": ") {
            Some((key, rest)) if !key.contains(' ') => Error::one(key, rest),
            _ => Error::one("config", text),
        }
    })?;
    let mut v = validate::Validator::new(attached);
    let config = v.config(raw);
    match config {
        Some(c) if v.problems.is_empty() => Ok(c),
        _ => Err(Error {
            problems: v.problems,
        }),
    }
}

impl Config {
    /// The address the balancer listens on.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    pub fn admin(&self) -> &Admin {
        &self.admin
    }

    pub fn log(&self) -> Log {
        self.log
    }

    /// The `autoscale:` block; `None` when it is absent and autoscaling is off.
    pub fn autoscale(&self) -> Option<&Autoscale> {
        self.autoscale.as_ref()
    }

    /// The number of addresses the sweep walks (before exclusions).
    pub fn address_count(&self) -> u128 {
        self.discovery.subnets.iter().map(host_count).sum()
    }
}

/// Addresses a sweep of `net` probes: an IPv4 subnet of /30 or wider leaves out its network
/// and broadcast addresses, as `ipnet`'s `hosts()` does.
pub fn host_count(net: &IpNet) -> u128 {
    match net {
        IpNet::V4(n) => {
            let all = 1u128 << (32 - n.prefix_len());
            if n.prefix_len() <= 30 { all - 2 } else { all }
        }
        IpNet::V6(n) => {
            let bits = 128 - u32::from(n.prefix_len());
            if bits >= 127 {
                u128::MAX
            } else {
                1u128 << bits
            }
        }
    }
}

#[cfg(test)]
mod tests;
