//! `config.yaml`: parsed into a serde-shaped `Raw` tree, then validated into a typed
//! [`Config`] that cannot be built invalid.
//!
//! Every problem is collected (not just the first) and reported as one line that names the key
//! and says what would be accepted, so an operator fixes a file in one pass. Nothing here
//! touches the network; the one environmental check, that a swept range is loopback or attached
//! to an interface, takes the host's networks as an argument so it can be tested.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::Path;
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;
use serde::Deserialize;

/// The largest number of addresses sweeplb agrees to walk, whatever the rate: a /8 of IPv4.
/// Beyond this a sweep is a scan of someone else's network, not discovery of one's own.
pub const MAX_ADDRESSES: u128 = 1 << 24;

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub discovery: Discovery,
    pub balance: Balance,
    pub timeouts: Timeouts,
}

#[derive(Debug, Clone)]
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
}

#[derive(Debug, Clone)]
pub struct Balance {
    pub key: Key,
}

/// What a request is hashed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// The value of this cookie; a request without it is given a fresh one.
    Cookie(String),
    /// The value of this request header.
    Header(HeaderName),
    /// The TCP peer's address (never a client-supplied `X-Forwarded-For`).
    ClientIp,
}

#[derive(Debug, Clone)]
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

/// Reads, parses and validates a config file, including the check against the host's own
/// networks.
pub fn load(path: &Path) -> Result<Config, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::one("config", format!("cannot read {}: {e}", path.display())))?;
    let config = parse(&text)?;
    config.check_attached(&attached_networks())?;
    Ok(config)
}

/// The networks this host can reach without a router: loopback and every interface's subnet.
pub fn attached_networks() -> Vec<IpNet> {
    let mut nets: Vec<IpNet> = vec![
        "127.0.0.0/8".parse().expect("literal CIDR"),
        "::1/128".parse().expect("literal CIDR"),
    ];
    // An unreadable interface list leaves only loopback: the safe side of the check.
    if let Ok(ifaces) = if_addrs::get_if_addrs() {
        for iface in ifaces {
            let net = match iface.addr {
                if_addrs::IfAddr::V4(a) => IpNet::new(IpAddr::V4(a.ip), a.prefixlen),
                if_addrs::IfAddr::V6(a) => IpNet::new(IpAddr::V6(a.ip), a.prefixlen),
            };
            if let Ok(net) = net {
                nets.push(net.trunc());
            }
        }
    }
    nets
}

/// Parses and validates everything that does not depend on the host.
pub fn parse(text: &str) -> Result<Config, Error> {
    let raw: Raw = serde_yaml::from_str(text).map_err(|e| {
        // serde_yaml says "discovery: unknown field `x`, expected one of ... at line 3": lift
        // the key path out so the line reads like every other problem.
        let text = e.to_string();
        match text.split_once(": ") {
            Some((key, rest)) if !key.contains(' ') => Error::one(key, rest),
            _ => Error::one("config", text),
        }
    })?;
    let mut v = Validator::default();
    let config = v.config(raw);
    match config {
        Some(c) if v.problems.is_empty() => Ok(c),
        _ => Err(Error {
            problems: v.problems,
        }),
    }
}

impl Config {
    /// Refuses ranges that are neither loopback nor inside one of `attached`, unless
    /// `allow_routed` is set: sweeping a routed range is scanning someone else's network.
    pub fn check_attached(&self, attached: &[IpNet]) -> Result<(), Error> {
        if self.discovery.allow_routed {
            return Ok(());
        }
        let problems: Vec<Problem> = self
            .discovery
            .subnets
            .iter()
            .filter(|net| !attached.iter().any(|a| a.contains(*net)))
            .map(|net| Problem {
                key: "discovery.subnets".to_string(),
                message: format!(
                    "{net} is neither loopback nor a network attached to this host's \
                     interfaces; sweeping it would scan a routed network. Set \
                     discovery.allow_routed: true to insist"
                ),
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error { problems })
        }
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

// ---- the serde-shaped tree: every field optional so defaults and errors are ours ----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Raw {
    listen: Option<String>,
    discovery: RawDiscovery,
    balance: RawBalance,
    timeouts: RawTimeouts,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDiscovery {
    subnets: Option<Vec<String>>,
    exclude: Option<Vec<String>>,
    port: Option<i64>,
    health_path: Option<String>,
    expect_status: Option<StatusSpec>,
    expect_body: Option<String>,
    check_interval: Option<String>,
    sweep_interval: Option<String>,
    timeout: Option<String>,
    rise: Option<i64>,
    fall: Option<i64>,
    concurrency: Option<i64>,
    allow_routed: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StatusSpec {
    Code(i64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawBalance {
    key: Option<String>,
    cookie: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTimeouts {
    connect: Option<String>,
    response: Option<String>,
    idle: Option<String>,
    header_read: Option<String>,
    body: Option<String>,
    shutdown: Option<String>,
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.to_string(),
            message: message.into(),
        });
    }

    fn config(&mut self, raw: Raw) -> Option<Config> {
        let listen = self.listen(raw.listen.as_deref().unwrap_or("127.0.0.1:8080"));
        let discovery = self.discovery(raw.discovery);
        let balance = self.balance(raw.balance);
        let timeouts = self.timeouts(raw.timeouts);
        let config = Config {
            listen: listen?,
            discovery: discovery?,
            balance: balance?,
            timeouts: timeouts?,
        };
        self.cross_checks(&config);
        Some(config)
    }

    fn listen(&mut self, text: &str) -> Option<SocketAddr> {
        match text.parse::<SocketAddr>() {
            Ok(a) if a.port() != 0 => Some(a),
            Ok(_) => {
                self.problem("listen", "port 0 is not a listening port; expected 1-65535");
                None
            }
            Err(_) => {
                self.problem(
                    "listen",
                    format!("{text:?} is not an address; expected IP:PORT like 0.0.0.0:8080"),
                );
                None
            }
        }
    }

    fn discovery(&mut self, raw: RawDiscovery) -> Option<Discovery> {
        let subnets = match raw.subnets {
            None => {
                self.problem(
                    "discovery.subnets",
                    "missing; expected a list of CIDRs like [172.20.0.0/24]",
                );
                None
            }
            Some(list) if list.is_empty() => {
                self.problem("discovery.subnets", "empty; expected at least one CIDR");
                None
            }
            Some(list) => self.cidrs("discovery.subnets", &list, true),
        };
        let exclude = self.cidrs("discovery.exclude", &raw.exclude.unwrap_or_default(), false);
        let port = self.int("discovery.port", raw.port.unwrap_or(3000), 1, 65535);
        let health_path = self.path(raw.health_path.unwrap_or_else(|| "/health".into()));
        let expect_status = self.status(
            raw.expect_status
                .unwrap_or(StatusSpec::Text("200-399".into())),
        );
        let expect_body = match raw.expect_body {
            Some(b) if b.is_empty() => {
                self.problem(
                    "discovery.expect_body",
                    "empty; expected a non-empty substring, or null for no body check",
                );
                None
            }
            Some(b) if b.len() > PROBE_BODY_LIMIT => {
                self.problem(
                    "discovery.expect_body",
                    format!("longer than the {PROBE_BODY_LIMIT} bytes of body a probe reads"),
                );
                None
            }
            b => Some(b),
        };
        let check_interval = self.duration("discovery.check_interval", raw.check_interval, "1s");
        let sweep_interval = self.duration("discovery.sweep_interval", raw.sweep_interval, "2s");
        let timeout = self.duration("discovery.timeout", raw.timeout, "500ms");
        let rise = self.int("discovery.rise", raw.rise.unwrap_or(2), 1, 100);
        let fall = self.int("discovery.fall", raw.fall.unwrap_or(2), 1, 100);
        let concurrency = self.int(
            "discovery.concurrency",
            raw.concurrency.unwrap_or(256),
            1,
            65536,
        );
        Some(Discovery {
            subnets: subnets?,
            exclude: exclude?,
            port: u16::try_from(port?).ok()?,
            health_path: health_path?,
            expect_status: expect_status?,
            expect_body: expect_body?,
            check_interval: check_interval?,
            sweep_interval: sweep_interval?,
            timeout: timeout?,
            rise: u32::try_from(rise?).ok()?,
            fall: u32::try_from(fall?).ok()?,
            concurrency: usize::try_from(concurrency?).ok()?,
            allow_routed: raw.allow_routed.unwrap_or(false),
        })
    }

    fn cidrs(&mut self, key: &str, list: &[String], strict: bool) -> Option<Vec<IpNet>> {
        let before = self.problems.len();
        let mut nets = Vec::with_capacity(list.len());
        for text in list {
            // A bare address in `exclude` means that one address.
            let parsed = text.parse::<IpNet>().or_else(|e| {
                if strict {
                    Err(e)
                } else {
                    text.parse::<IpAddr>().map(IpNet::from).map_err(|_| e)
                }
            });
            match parsed {
                Err(_) => self.problem(
                    key,
                    format!("{text:?} is not a CIDR; expected ADDRESS/PREFIX like 172.20.0.0/24"),
                ),
                Ok(net) if net != net.trunc() => self.problem(
                    key,
                    format!("{text} has host bits set; expected the network address {}", net.trunc()),
                ),
                Ok(net) if strict && host_count(&net) > MAX_ADDRESSES => self.problem(
                    key,
                    format!(
                        "{net} has {} addresses; at most {MAX_ADDRESSES} (an IPv4 /8, an IPv6 /104) can be swept",
                        display_count(host_count(&net))
                    ),
                ),
                Ok(net) => nets.push(net),
            }
        }
        (self.problems.len() == before).then_some(nets)
    }

    fn int(&mut self, key: &str, value: i64, min: i64, max: i64) -> Option<i64> {
        if (min..=max).contains(&value) {
            Some(value)
        } else {
            self.problem(
                key,
                format!("{value} is out of range; expected {min}-{max}"),
            );
            None
        }
    }

    fn path(&mut self, path: String) -> Option<String> {
        let valid = path.starts_with('/') && path.parse::<http::uri::PathAndQuery>().is_ok();
        if valid {
            Some(path)
        } else {
            self.problem(
                "discovery.health_path",
                format!(
                    "{path:?} is not a request path; expected one starting with / like /health"
                ),
            );
            None
        }
    }

    fn status(&mut self, spec: StatusSpec) -> Option<RangeInclusive<u16>> {
        const KEY: &str = "discovery.expect_status";
        let accepted = "expected a status code like 200 or a range like 200-399, within 100-599";
        let code = |v: i64| u16::try_from(v).ok().filter(|c| (100..=599).contains(c));
        let range = match &spec {
            StatusSpec::Code(c) => code(*c).map(|c| c..=c),
            StatusSpec::Text(t) => match t.split_once('-') {
                Some((lo, hi)) => {
                    let lo = lo.trim().parse().ok().and_then(code);
                    let hi = hi.trim().parse().ok().and_then(code);
                    lo.zip(hi)
                        .filter(|(lo, hi)| lo <= hi)
                        .map(|(lo, hi)| lo..=hi)
                }
                None => t.trim().parse().ok().and_then(code).map(|c| c..=c),
            },
        };
        if range.is_none() {
            let shown = match spec {
                StatusSpec::Code(c) => c.to_string(),
                StatusSpec::Text(t) => format!("{t:?}"),
            };
            self.problem(KEY, format!("{shown} is not a status or range; {accepted}"));
        }
        range
    }

    fn duration(&mut self, key: &str, text: Option<String>, default: &str) -> Option<Duration> {
        let text = text.unwrap_or_else(|| default.to_string());
        match humantime::parse_duration(&text) {
            Ok(d) if d.is_zero() => {
                self.problem(
                    key,
                    "0 is not allowed; expected a positive duration like 500ms or 2s",
                );
                None
            }
            Ok(d) => Some(d),
            Err(_) => {
                self.problem(
                    key,
                    format!("{text:?} is not a duration; expected e.g. 500ms, 2s, 1m"),
                );
                None
            }
        }
    }

    fn balance(&mut self, raw: RawBalance) -> Option<Balance> {
        let cookie = raw.cookie.unwrap_or_else(|| "sweeplb".to_string());
        let cookie_ok = !cookie.is_empty()
            && cookie
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !cookie_ok {
            self.problem(
                "balance.cookie",
                format!(
                    "{cookie:?} is not a cookie name; expected letters, digits and !#$%&'*+-.^_`|~"
                ),
            );
        }
        let text = raw.key.unwrap_or_else(|| "cookie".to_string());
        let key = match text.as_str() {
            "cookie" => cookie_ok.then_some(Key::Cookie(cookie)),
            "client_ip" => Some(Key::ClientIp),
            other => match other.strip_prefix("header:").map(HeaderName::try_from) {
                Some(Ok(name)) => Some(Key::Header(name)),
                _ => {
                    self.problem(
                        "balance.key",
                        format!("{text:?} is not a key; expected cookie, header:NAME or client_ip"),
                    );
                    None
                }
            },
        };
        Some(Balance { key: key? })
    }

    fn timeouts(&mut self, raw: RawTimeouts) -> Option<Timeouts> {
        let connect = self.duration("timeouts.connect", raw.connect, "1s");
        let response = self.duration("timeouts.response", raw.response, "30s");
        let idle = self.duration("timeouts.idle", raw.idle, "60s");
        let header_read = self.duration("timeouts.header_read", raw.header_read, "10s");
        let body = self.duration("timeouts.body", raw.body, "30s");
        let shutdown = self.duration("timeouts.shutdown", raw.shutdown, "10s");
        Some(Timeouts {
            connect: connect?,
            response: response?,
            idle: idle?,
            header_read: header_read?,
            body: body?,
            shutdown: shutdown?,
        })
    }

    fn cross_checks(&mut self, c: &Config) {
        let d = &c.discovery;
        if d.timeout >= d.check_interval {
            self.problem(
                "discovery.timeout",
                format!(
                    "{} must be shorter than discovery.check_interval ({}), or probes of one \
                     member would overlap",
                    humantime::format_duration(d.timeout),
                    humantime::format_duration(d.check_interval)
                ),
            );
        }
        // Worst case every address times out: the sweep then needs this long per round.
        let addresses = c.address_count();
        let rounds = addresses.div_ceil(d.concurrency as u128);
        let worst = d.timeout.as_secs_f64() * rounds as f64;
        if worst > d.sweep_interval.as_secs_f64() {
            let needed =
                addresses as f64 * d.timeout.as_secs_f64() / d.sweep_interval.as_secs_f64();
            self.problem(
                "discovery.subnets",
                format!(
                    "{} addresses cannot be swept every {} with concurrency {} and timeout {} \
                     (worst case {:.1}s a round); expected discovery.concurrency >= {}, a longer \
                     discovery.sweep_interval, a shorter discovery.timeout or a smaller range",
                    display_count(addresses),
                    humantime::format_duration(d.sweep_interval),
                    d.concurrency,
                    humantime::format_duration(d.timeout),
                    worst,
                    needed.ceil() as u64
                ),
            );
        }
    }
}

/// How much of a health response's body a probe reads, and so the longest `expect_body`.
pub const PROBE_BODY_LIMIT: usize = 4096;

fn display_count(n: u128) -> String {
    if n == u128::MAX {
        "2^128".to_string()
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "discovery:\n  subnets: [127.77.0.0/24]\n";

    fn problems(yaml: &str) -> Vec<String> {
        match parse(yaml) {
            Ok(_) => vec![],
            Err(e) => e
                .problems
                .iter()
                .map(|p| format!("{}: {}", p.key, p.message))
                .collect(),
        }
    }

    #[test]
    fn defaults_fill_everything_but_subnets() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.discovery.port, 3000);
        assert_eq!(c.discovery.health_path, "/health");
        assert_eq!(c.discovery.expect_status, 200..=399);
        assert_eq!(c.discovery.check_interval, Duration::from_secs(1));
        assert_eq!(c.discovery.sweep_interval, Duration::from_secs(2));
        assert_eq!(c.discovery.timeout, Duration::from_millis(500));
        assert_eq!((c.discovery.rise, c.discovery.fall), (2, 2));
        assert_eq!(c.discovery.concurrency, 256);
        assert!(!c.discovery.allow_routed);
        assert_eq!(c.balance.key, Key::Cookie("sweeplb".into()));
        assert_eq!(c.timeouts.header_read, Duration::from_secs(10));
        assert_eq!(c.timeouts.body, Duration::from_secs(30));
        assert_eq!(c.address_count(), 254);
    }

    #[test]
    fn the_repository_config_is_valid() {
        let text = include_str!("../config.yaml");
        let c = parse(text).unwrap();
        c.check_attached(&attached_networks()).unwrap();
    }

    #[test]
    fn each_invalid_value_names_its_key() {
        let cases: &[(&str, &str)] = &[
            (
                "discovery: {subnets: [127.77.0.0/33]}",
                "discovery.subnets: \"127.77.0.0/33\" is not a CIDR",
            ),
            (
                "discovery: {subnets: [127.77.0.1/24]}",
                "discovery.subnets: 127.77.0.1/24 has host bits set",
            ),
            ("discovery: {subnets: []}", "discovery.subnets: empty"),
            ("discovery: {port: 3000}", "discovery.subnets: missing"),
            (
                "discovery: {subnets: [127.77.0.0/24], port: 0}",
                "discovery.port: 0 is out of range; expected 1-65535",
            ),
            (
                "discovery: {subnets: [127.77.0.0/24], port: 70000}",
                "discovery.port: 70000 is out of range",
            ),
            (
                "discovery: {subnets: [127.77.0.0/24], rise: 0}",
                "discovery.rise: 0 is out of range; expected 1-100",
            ),
            (
                "discovery: {subnets: [127.77.0.0/24], fall: 0}",
                "discovery.fall: 0 is out of range",
            ),
            (
                "discovery: {subnets: [127.77.0.0/24], concurrency: 0}",
                "discovery.concurrency: 0 is out of range",
            ),
            (
                "discovery: {subnets: [127.77.0.0/24], timeout: 1s}",
                "discovery.timeout: 1s must be shorter than discovery.check_interval",
            ),
            (
                "discovery: {subnets: [127.77.0.0/24], timeout: soon}",
                "discovery.timeout: \"soon\" is not a duration",
            ),
            (
                "discovery: {subnets: [127.77.0.0/24], check_interval: 0s}",
                "discovery.check_interval: 0 is not allowed",
            ),
            (
                "discovery: {subnets: [127.77.0.0/24], health_path: health}",
                "discovery.health_path: \"health\" is not a request path",
            ),
            (
                "discovery: {subnets: [127.77.0.0/24], expect_status: 99}",
                "discovery.expect_status: 99 is not a status or range",
            ),
            (
                "discovery: {subnets: [127.77.0.0/24], expect_status: 399-200}",
                "discovery.expect_status: \"399-200\"",
            ),
            (
                "discovery: {subnets: [127.77.0.0/24], expect_body: ''}",
                "discovery.expect_body: empty",
            ),
            (
                "discovery: {subnets: [127.77.0.0/24], exclude: [nope]}",
                "discovery.exclude: \"nope\" is not a CIDR",
            ),
            (
                "discovery: {subnets: [127.0.0.0/8]}",
                "discovery.subnets: 16777214 addresses cannot be swept every 2s",
            ),
            (
                "discovery: {subnets: ['::/64']}",
                "discovery.subnets: ::/64 has 18446744073709551616 addresses; at most",
            ),
            (
                "listen: localhost\ndiscovery: {subnets: [127.77.0.0/24]}",
                "listen: \"localhost\" is not an address",
            ),
            (
                "discovery: {subnets: [127.77.0.0/24]}\nbalance: {key: hash}",
                "balance.key: \"hash\" is not a key",
            ),
            (
                "discovery: {subnets: [127.77.0.0/24]}\nbalance: {key: 'header:'}",
                "balance.key: \"header:\" is not a key",
            ),
            (
                "discovery: {subnets: [127.77.0.0/24]}\nbalance: {cookie: 'a b'}",
                "balance.cookie: \"a b\" is not a cookie name",
            ),
            (
                "discovery: {subnets: [127.77.0.0/24]}\ntimeouts: {idle: -1s}",
                "timeouts.idle: \"-1s\" is not a duration",
            ),
            (
                "discovery: {subnets: [127.77.0.0/24], color: blue}",
                "unknown field `color`",
            ),
            (
                "listen: [1, 2]\n",
                "listen: invalid type: sequence, expected a string",
            ),
            ("listen: \"open\ndiscovery: {}\n", "config: "),
        ];
        for (yaml, expected) in cases {
            let got = problems(yaml);
            assert!(
                got.iter()
                    .any(|p| p.starts_with(expected) || p.contains(expected)),
                "for {yaml:?} expected a problem like {expected:?}, got {got:?}"
            );
        }
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let got = problems("discovery: {subnets: [127.77.0.0/24], port: 0, rise: 0, fall: 0}");
        assert_eq!(got.len(), 3, "{got:?}");
    }

    #[test]
    fn status_accepts_a_code_or_a_range() {
        let c = parse("discovery: {subnets: [127.77.0.0/24], expect_status: 204}").unwrap();
        assert_eq!(c.discovery.expect_status, 204..=204);
        let c = parse("discovery: {subnets: [127.77.0.0/24], expect_status: '200-204'}").unwrap();
        assert_eq!(c.discovery.expect_status, 200..=204);
    }

    #[test]
    fn key_modes() {
        let c = parse("discovery: {subnets: [127.77.0.0/24]}\nbalance: {key: 'header:X-User'}")
            .unwrap();
        assert_eq!(
            c.balance.key,
            Key::Header(HeaderName::from_static("x-user"))
        );
        let c = parse("discovery: {subnets: [127.77.0.0/24]}\nbalance: {key: client_ip}").unwrap();
        assert_eq!(c.balance.key, Key::ClientIp);
    }

    #[test]
    fn a_large_range_is_accepted_when_the_rate_allows_it() {
        let yaml = "discovery: {subnets: [127.78.0.0/16], concurrency: 16384, timeout: 500ms, check_interval: 1s, sweep_interval: 2s}";
        assert_eq!(parse(yaml).unwrap().address_count(), 65534);
    }

    #[test]
    fn routed_ranges_are_refused_unless_allowed() {
        let attached: Vec<IpNet> = vec![
            "127.0.0.0/8".parse().unwrap(),
            "198.51.100.0/24".parse().unwrap(),
        ];
        let c = parse("discovery: {subnets: [198.51.100.128/25]}").unwrap();
        assert!(c.check_attached(&attached).is_ok());
        let c = parse("discovery: {subnets: [203.0.113.0/24]}").unwrap();
        let err = c.check_attached(&attached).unwrap_err().to_string();
        assert!(err.contains("allow_routed: true"), "{err}");
        let c = parse("discovery: {subnets: [203.0.113.0/24], allow_routed: true}").unwrap();
        assert!(c.check_attached(&attached).is_ok());
    }

    #[test]
    fn host_counts() {
        let n = |s: &str| host_count(&s.parse().unwrap());
        assert_eq!(n("127.77.0.0/24"), 254);
        assert_eq!(n("127.77.0.0/31"), 2);
        assert_eq!(n("127.77.0.5/32"), 1);
        assert_eq!(n("::1/128"), 1);
        assert_eq!(n("fd00::/120"), 256);
    }
}
