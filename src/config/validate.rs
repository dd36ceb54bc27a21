//! Validation: the serde-shaped `Raw` tree (every field optional, so defaults and errors are
//! ours) and the [`Validator`] that turns it into a [`Config`], collecting every problem.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;
use serde::Deserialize;

use super::{
    Admin, Autoscale, Balance, Config, Discovery, Key, Limits, Log, LogFormat, MAX_ADDRESSES,
    MAX_REQUEST_HEAD, PROBE_BODY_LIMIT, Problem, Secret, Timeouts, host_count,
};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct Raw {
    listen: Option<String>,
    discovery: RawDiscovery,
    balance: RawBalance,
    timeouts: RawTimeouts,
    limits: RawLimits,
    admin: RawAdmin,
    log: RawLog,
    /// Absent (or null): autoscaling is off.
    autoscale: Option<RawAutoscale>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAutoscale {
    docker: Option<String>,
    service: Option<String>,
    min: Option<i64>,
    max: Option<i64>,
    target_inflight: Option<i64>,
    up_after: Option<String>,
    down_after: Option<String>,
    session_idle: Option<String>,
    drain_max: Option<String>,
    hold: Option<String>,
    hold_limit: Option<i64>,
    start_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    listen: Option<String>,
    allow: Option<Vec<String>>,
    keep_departed: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    format: Option<String>,
    access: Option<bool>,
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
    identity_secret: Option<String>,
    identity_secret_file: Option<String>,
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
    cookie_max_age: Option<String>,
    repin_after: Option<String>,
    session_idle: Option<String>,
    bounded_load: Option<f64>,
    pin_secret: Option<String>,
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    max_request_head: Option<Size>,
}

/// A size: a number of bytes, or text like `16KiB`; anything else is kept to be refused with
/// what is accepted, rather than with serde's "did not match any variant".
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(i64),
    Text(String),
    Other(serde_yaml::Value),
}

/// The range `limits.max_request_head` accepts: below 1 KiB ordinary requests fail, and a head
/// is held whole in memory while it is read, so it is kept well short of a body's size.
const REQUEST_HEAD_RANGE: RangeInclusive<i64> = 1024..=256 * 1024;

/// The accepted forms of `autoscale.docker`, for its refusals.
const DOCKER_FORMS: &str = "expected unix:///ABSOLUTE/PATH (like unix:///var/run/docker.sock), \
                            tcp://HOST:PORT or http://HOST:PORT";

/// The longest duration any key accepts.
const MAX_DURATION: Duration = Duration::from_secs(3650 * 24 * 3600);

/// Collects every problem while it validates, so all are reported at once.
pub(super) struct Validator<'a> {
    pub(super) problems: Vec<Problem>,
    /// The host's attached networks, for the routed-range rule.
    attached: &'a [IpNet],
}

impl<'a> Validator<'a> {
    pub(super) fn new(attached: &'a [IpNet]) -> Validator<'a> {
        Validator {
            problems: Vec::new(),
            attached,
        }
    }

    fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.to_string(),
            message: message.into(),
        });
    }

    pub(super) fn config(&mut self, raw: Raw) -> Option<Config> {
        let listen = self.listen(raw.listen.as_deref().unwrap_or("127.0.0.1:8080"));
        let discovery = self.discovery(raw.discovery);
        let balance = self.balance(raw.balance);
        let timeouts = self.timeouts(raw.timeouts);
        let limits = self.limits(raw.limits);
        let admin = self.admin(raw.admin);
        let log = self.log(raw.log);
        // Outer `None`: invalid; `Some(None)`: off.
        let autoscale = raw
            .autoscale
            .map_or(Some(None), |a| self.autoscale(a).map(Some));
        let config = Config {
            listen: listen?,
            discovery: discovery?,
            balance: balance?,
            timeouts: timeouts?,
            limits: limits?,
            admin: admin?,
            log: log?,
            autoscale: autoscale?,
        };
        self.cross_checks(&config);
        Some(config)
    }

    fn listen(&mut self, text: &str) -> Option<SocketAddr> {
        self.address("listen", text)
    }

    fn address(&mut self, key: &str, text: &str) -> Option<SocketAddr> {
        match text.parse::<SocketAddr>() {
            Ok(a) if a.port() != 0 => Some(a),
            Ok(_) => {
                self.problem(key, "port 0 is not a listening port; expected 1-65535");
                None
            }
            Err(_) => {
                self.problem(
                    key,
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
        let identity_secret = self.identity_secret(raw.identity_secret, raw.identity_secret_file);
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
            identity_secret: identity_secret?,
        })
    }

    /// The secret inline or from a file (read now, so a missing file stops the balancer from
    /// starting rather than every backend from joining). Not both: which one wins would be a
    /// surprise either way. Outer `None`: invalid; `Some(None)`: not set.
    fn identity_secret(
        &mut self,
        inline: Option<String>,
        file: Option<String>,
    ) -> Option<Option<Secret>> {
        const KEY: &str = "discovery.identity_secret";
        const FILE_KEY: &str = "discovery.identity_secret_file";
        let result = match (inline, file) {
            (None, None) => return Some(None),
            (Some(_), Some(_)) => Err((
                FILE_KEY,
                format!("set together with {KEY}; expected one of them, not both"),
            )),
            (Some(text), None) => crate::identity::secret(&text)
                .map(str::to_string)
                .map_err(|e| (KEY, e)),
            (None, Some(path)) if path.is_empty() => Err((
                FILE_KEY,
                "empty; expected the path of a file holding the secret".to_string(),
            )),
            (None, Some(path)) => {
                crate::identity::read_secret(std::path::Path::new(&path)).map_err(|e| (FILE_KEY, e))
            }
        };
        match result {
            Ok(secret) => Some(Some(Secret(secret))),
            Err((key, message)) => {
                self.problem(key, message);
                None
            }
        }
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
            // Deadlines are added to clocks and multiplied by counts: a bound keeps every sum
            // and product far from overflowing, and no timeout needs more.
            Ok(d) if d > MAX_DURATION => {
                self.problem(
                    key,
                    format!("{text:?} is too long; expected at most 3650 days (10 years)"),
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
        // Outer `None`: invalid; `Some(None)`: not set.
        let set = (
            raw.cookie_max_age.is_some(),
            raw.repin_after.is_some(),
            raw.bounded_load.is_some(),
            raw.pin_secret.is_some(),
        );
        let cookie_max_age = raw.cookie_max_age.map_or(Some(None), |t| {
            self.duration("balance.cookie_max_age", Some(t), "")
                .map(Some)
        });
        let repin_after = raw.repin_after.map_or(Some(None), |t| {
            self.duration("balance.repin_after", Some(t), "").map(Some)
        });
        let session_idle = self.duration("balance.session_idle", raw.session_idle, "60s");
        let bounded_load = match raw.bounded_load {
            Some(f) if !(f > 1.0 && f <= 100.0) => {
                self.problem(
                    "balance.bounded_load",
                    format!(
                        "{f} is out of range; expected a factor above 1 and at most 100, like 1.25"
                    ),
                );
                None
            }
            other => Some(other),
        };
        let pin_secret = match raw.pin_secret {
            Some(s) if s.len() < 16 => {
                self.problem(
                    "balance.pin_secret",
                    "shorter than 16 characters; expected a long random string",
                );
                None
            }
            other => Some(other.map(Secret)),
        };
        // Only the cookie carries a pin: the other keys' users follow the ring.
        if !matches!(key, Some(Key::Cookie(_)) | None) {
            let set = [
                ("balance.cookie_max_age", set.0),
                ("balance.repin_after", set.1),
                ("balance.bounded_load", set.2),
                ("balance.pin_secret", set.3),
            ];
            for (name, _) in set.into_iter().filter(|(_, present)| *present) {
                self.problem(
                    name,
                    format!(
                        "only applies to balance.key: cookie (the {text} key carries no pin); \
                         expected it removed or balance.key: cookie"
                    ),
                );
            }
        }
        Some(Balance {
            key: key?,
            cookie_max_age: cookie_max_age?,
            repin_after: repin_after?,
            session_idle: session_idle?,
            bounded_load: bounded_load?,
            pin_secret: pin_secret?,
        })
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

    fn limits(&mut self, raw: RawLimits) -> Option<Limits> {
        const KEY: &str = "limits.max_request_head";
        let (lo, hi) = (REQUEST_HEAD_RANGE.start(), REQUEST_HEAD_RANGE.end());
        let accepted = format!("expected {lo}-{hi} bytes, as a number or like 16KiB");
        let bytes = match raw.max_request_head {
            None => Some(MAX_REQUEST_HEAD as i64),
            Some(Size::Bytes(n)) => Some(n),
            Some(Size::Text(t)) => {
                let t = t.trim();
                let (digits, unit) = t
                    .find(|c: char| !c.is_ascii_digit())
                    .map_or((t, ""), |at| t.split_at(at));
                let scale = match unit.trim() {
                    "" | "B" => Some(1),
                    "KiB" => Some(1024),
                    _ => None,
                };
                let n = digits
                    .parse::<i64>()
                    .ok()
                    .zip(scale)
                    .and_then(|(n, s)| n.checked_mul(s));
                if n.is_none() {
                    self.problem(KEY, format!("{t:?} is not a size; {accepted}"));
                }
                n
            }
            Some(Size::Other(v)) => {
                let shown = serde_yaml::to_string(&v).unwrap_or_default();
                self.problem(KEY, format!("{:?} is not a size; {accepted}", shown.trim()));
                None
            }
        }?;
        if !REQUEST_HEAD_RANGE.contains(&bytes) {
            self.problem(KEY, format!("{bytes} is out of range; {accepted}"));
            return None;
        }
        Some(Limits {
            max_request_head: usize::try_from(bytes).ok()?,
        })
    }

    fn admin(&mut self, raw: RawAdmin) -> Option<Admin> {
        // Outer `None`: invalid; `Some(None)`: not set.
        let listen = match raw.listen {
            None => Some(None),
            Some(text) => self.address("admin.listen", &text).map(Some),
        };
        let allow = match raw.allow {
            // Everyone: 0.0.0.0/0 and ::/0.
            None => Some(vec![
                IpNet::V4(ipnet::Ipv4Net::default()),
                IpNet::V6(ipnet::Ipv6Net::default()),
            ]),
            Some(list) => self.cidrs("admin.allow", &list, false),
        };
        let keep_departed = self.duration("admin.keep_departed", raw.keep_departed, "10m");
        Some(Admin {
            listen: listen?,
            allow: allow?,
            keep_departed: keep_departed?,
        })
    }

    fn log(&mut self, raw: RawLog) -> Option<Log> {
        let format = match raw.format.as_deref().unwrap_or("text") {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            other => {
                self.problem(
                    "log.format",
                    format!("{other:?} is not a log format; expected text or json"),
                );
                None
            }
        };
        Some(Log {
            format: format?,
            access: raw.access.unwrap_or(false),
        })
    }

    /// The block, present. The bounds are wide for real use and keep a slip of the keyboard
    /// (max: 10000, hold: 1h) from starting a fleet or keeping clients waiting for an hour.
    fn autoscale(&mut self, raw: RawAutoscale) -> Option<Autoscale> {
        let secs = Duration::from_secs;
        let docker = self.docker(
            raw.docker
                .as_deref()
                .unwrap_or("unix:///var/run/docker.sock"),
        );
        let service = self.service(raw.service);
        let min = self.int("autoscale.min", raw.min.unwrap_or(1), 0, 1000);
        let max = self.int("autoscale.max", raw.max.unwrap_or(5), 1, 1000);
        let target_inflight = self.int(
            "autoscale.target_inflight",
            raw.target_inflight.unwrap_or(8),
            1,
            100_000,
        );
        let up_after = self.duration_within(
            "autoscale.up_after",
            raw.up_after,
            "2s",
            secs(1)..=secs(3600),
        );
        let down_after = self.duration_within(
            "autoscale.down_after",
            raw.down_after,
            "30s",
            secs(1)..=secs(3600),
        );
        let day = secs(24 * 3600);
        let session_idle = self.duration_within(
            "autoscale.session_idle",
            raw.session_idle,
            "60s",
            secs(1)..=day,
        );
        let drain_max =
            self.duration_within("autoscale.drain_max", raw.drain_max, "5m", secs(1)..=day);
        let hold = self.duration_within("autoscale.hold", raw.hold, "15s", secs(0)..=secs(300));
        let hold_limit = self.int(
            "autoscale.hold_limit",
            raw.hold_limit.unwrap_or(1024),
            1,
            1_000_000,
        );
        let start_timeout = self.duration_within(
            "autoscale.start_timeout",
            raw.start_timeout,
            "60s",
            secs(1)..=secs(3600),
        );
        let mut crossed = false;
        if let (Some(min), Some(max)) = (min, max)
            && min > max
        {
            crossed = true;
            self.problem(
                "autoscale.min",
                format!(
                    "{min} is more than autoscale.max ({max}); expected min <= max, the fewest \
                     containers kept running and the most started"
                ),
            );
        }
        // A draining container is stopped at drain_max whatever its users do: an idle time
        // longer than that could never be waited for.
        if let (Some(idle), Some(drain)) = (session_idle, drain_max)
            && idle > drain
        {
            crossed = true;
            self.problem(
                "autoscale.session_idle",
                format!(
                    "{} is longer than autoscale.drain_max ({}); expected at most drain_max, \
                     which stops a draining container in any case",
                    humantime::format_duration(idle),
                    humantime::format_duration(drain)
                ),
            );
        }
        if crossed {
            return None;
        }
        Some(Autoscale {
            docker: docker?,
            service: service?,
            min: u32::try_from(min?).ok()?,
            max: u32::try_from(max?).ok()?,
            target_inflight: u32::try_from(target_inflight?).ok()?,
            up_after: up_after?,
            down_after: down_after?,
            session_idle: session_idle?,
            drain_max: drain_max?,
            hold: hold?,
            hold_limit: usize::try_from(hold_limit?).ok()?,
            start_timeout: start_timeout?,
        })
    }

    /// The engine's address, kept as written (trimmed): the forms `DOCKER_HOST` takes that
    /// need no TLS and no ssh, which are the ones sweeplb's engine client speaks.
    fn docker(&mut self, text: &str) -> Option<String> {
        let text = text.trim();
        match docker_address(text) {
            Ok(()) => Some(text.to_string()),
            Err(why) => {
                self.problem(
                    "autoscale.docker",
                    format!("{text:?} is not a Docker engine address ({why}); {DOCKER_FORMS}"),
                );
                None
            }
        }
    }

    fn service(&mut self, name: Option<String>) -> Option<String> {
        const KEY: &str = "autoscale.service";
        const ACCEPTED: &str = "expected the compose or swarm service to scale: 1-63 letters, \
                                digits, _ . -, starting with a letter or digit";
        let Some(name) = name else {
            self.problem(KEY, format!("missing; {ACCEPTED}, like webapp"));
            return None;
        };
        let valid = (1..=63).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if valid {
            Some(name)
        } else {
            self.problem(KEY, format!("{name:?} is not a service name; {ACCEPTED}"));
            None
        }
    }

    /// A duration within `range`, zero included when the range starts at zero; refused,
    /// like [`Validator::int`], naming the bounds.
    fn duration_within(
        &mut self,
        key: &str,
        text: Option<String>,
        default: &str,
        range: RangeInclusive<Duration>,
    ) -> Option<Duration> {
        let text = text.unwrap_or_else(|| default.to_string());
        let bounds = format!(
            "{}-{}",
            humantime::format_duration(*range.start()),
            humantime::format_duration(*range.end())
        );
        match humantime::parse_duration(&text) {
            Ok(d) if range.contains(&d) => Some(d),
            Ok(_) => {
                self.problem(key, format!("{text:?} is out of range; expected {bounds}"));
                None
            }
            Err(_) => {
                self.problem(
                    key,
                    format!("{text:?} is not a duration; expected {bounds}, like 2s or 1m"),
                );
                None
            }
        }
    }

    fn cross_checks(&mut self, c: &Config) {
        if c.admin.listen == Some(c.listen) {
            self.problem(
                "admin.listen",
                format!(
                    "{} is the public listen address; expected another address, or admin.listen \
                     removed to serve /_lb/* on the public listener",
                    c.listen
                ),
            );
        }
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
        // Sweeping a range that is neither loopback nor attached is scanning someone else's
        // network: refused unless the operator insists.
        if !d.allow_routed {
            for net in &d.subnets {
                if !self.attached.iter().any(|a| a.contains(net)) {
                    self.problem(
                        "discovery.subnets",
                        format!(
                            "{net} is neither loopback nor a network attached to this host's \
                             interfaces; sweeping it would scan a routed network. Set \
                             discovery.allow_routed: true to insist"
                        ),
                    );
                }
            }
        }
    }
}

/// Whether `text` is an engine address sweeplb can use; if not, why, in a few words.
fn docker_address(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("empty".into());
    }
    if let Some(path) = text.strip_prefix("unix://") {
        return if path.len() > 1 && path.starts_with('/') && !path.ends_with('/') {
            Ok(())
        } else {
            Err(format!("{path:?} is not an absolute path to a socket"))
        };
    }
    let Some(authority) = text
        .strip_prefix("tcp://")
        .or_else(|| text.strip_prefix("http://"))
    else {
        return Err(match text.split_once("://") {
            Some((scheme, _)) => format!("the scheme {scheme}:// is not supported"),
            None => "no unix://, tcp:// or http:// scheme".into(),
        });
    };
    // An IPv6 address is bracketed, as in a URL: tcp://[::1]:2375.
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => (host, port),
        _ => return Err("no host:port".into()),
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => host.parse::<std::net::Ipv4Addr>().is_ok() || host_name(host),
    };
    if !host_ok {
        return Err(format!("{host:?} is not a host name or IP address"));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => Err(format!("the port {port:?} is not 1-65535")),
    }
}

/// A host name: dot-separated labels of letters, digits and inner hyphens (RFC 1123), and
/// underscores, which compose service names (a socket proxy's, say) often have and Docker's
/// DNS resolves.
fn host_name(host: &str) -> bool {
    host.len() <= 253
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn display_count(n: u128) -> String {
    if n == u128::MAX {
        "2^128".to_string()
    } else {
        n.to_string()
    }
}
