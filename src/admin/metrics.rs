//! `/_lb/metrics`: Prometheus's text exposition (format 0.0.4), encoded by `prometheus-client`
//! from the counters that already exist, read when scraped: the pool snapshot and its
//! per-backend shards, the proxy's per-worker counts, the prober's stats. Nothing here is on
//! the request path, and nothing keeps a second copy of a counter.
//!
//! A backend is exported while it is a member and, once it has left, for `admin.keep_departed`
//! (at most [`MAX_DEPARTED`] of them), so that its last counts are scraped; then it is
//! forgotten, and containers coming and going for days do not grow the exposition. A backend
//! that joins and leaves between two scrapes is never seen here.
//!
//! Every series about the pool carries `pool="default"`: there will be several pools behind
//! one listener, and a label added later would break every query written before.

use std::borrow::Cow;
use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::registry::Registry;

use super::Sources;
use crate::discovery;
use crate::pool::{Backend, DURATION_BOUNDS_US, ResponseCounts, STATUS_CLASSES, Snapshot, State};
use crate::proxy::TrafficStats;
use crate::reload;

/// Departed backends exported at most, whatever `admin.keep_departed` says: the oldest are
/// forgotten first.
pub(crate) const MAX_DEPARTED: usize = 256;

/// The one pool there is today.
const POOL: &str = "default";

/// What the metrics endpoint keeps between scrapes.
pub(crate) struct Metrics {
    prober: Arc<discovery::Stats>,
    seen: Mutex<Seen>,
}

impl Metrics {
    pub(crate) fn new(prober: Arc<discovery::Stats>) -> Metrics {
        Metrics {
            prober,
            seen: Mutex::new(Seen::default()),
        }
    }
}

/// Configuration reloads by result, and when the configuration in force was loaded.
#[derive(Debug)]
struct ReloadCounts {
    counts: [(&'static str, u64); 3],
    /// Unix seconds.
    last_success: f64,
}

impl ReloadCounts {
    fn read(counts: &reload::Counts) -> ReloadCounts {
        let c = counts.counted();
        let loaded = counts.last_success();
        ReloadCounts {
            counts: [("ok", c.ok), ("invalid", c.invalid), ("refused", c.refused)],
            last_success: loaded
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        }
    }
}

/// The backends seen at scrapes: the members of the last one, and those that have left since.
#[derive(Default)]
struct Seen {
    members: Vec<Arc<Backend>>,
    /// Newest last, with when a scrape first missed it.
    departed: VecDeque<(Arc<Backend>, Instant)>,
}

impl Seen {
    /// Takes in the members of the snapshot scraped at `now`, and the backends it lists as
    /// recently left with how long ago they left; returns the departed backends to export
    /// beside the members. The recently left catch a backend that joined and left between two
    /// scrapes. One that left more than `keep` ago is forgotten, as is the oldest beyond
    /// [`MAX_DEPARTED`], and any with the address of a member (a backend back at its address,
    /// or another instance there): two series with the same labels would be invalid.
    fn update(
        &mut self,
        members: &[Arc<Backend>],
        left: &[(Arc<Backend>, Duration)],
        now: Instant,
        keep: Duration,
    ) -> Vec<Arc<Backend>> {
        // Sets, so that a scrape of a thousand members stays linear.
        let current: HashSet<*const Backend> = members.iter().map(Arc::as_ptr).collect();
        let addrs: HashSet<SocketAddr> = members.iter().map(|m| m.addr).collect();
        for gone in self.members.drain(..) {
            if !current.contains(&Arc::as_ptr(&gone)) {
                self.departed.retain(|(d, _)| d.addr != gone.addr);
                self.departed.push_back((gone, now));
            }
        }
        let known: HashSet<*const Backend> =
            self.departed.iter().map(|(d, _)| Arc::as_ptr(d)).collect();
        for (gone, ago) in left {
            let unseen =
                !known.contains(&Arc::as_ptr(gone)) && !current.contains(&Arc::as_ptr(gone));
            if unseen && *ago < keep {
                let at = now.checked_sub(*ago).unwrap_or(now);
                self.departed.retain(|(d, _)| d.addr != gone.addr);
                self.departed.push_back((Arc::clone(gone), at));
            }
        }
        self.departed.make_contiguous().sort_by_key(|(_, at)| *at);
        self.members = members.to_vec();
        self.departed.retain(|(d, at)| {
            now.saturating_duration_since(*at) < keep && !addrs.contains(&d.addr)
        });
        while self.departed.len() > MAX_DEPARTED {
            self.departed.pop_front();
        }
        self.departed.iter().map(|(b, _)| Arc::clone(b)).collect()
    }
}

/// `/_lb/metrics`.
pub(super) fn metrics(s: &Sources<'_>) -> Response<Full<Bytes>> {
    let Sources {
        snapshot,
        upstream,
        sticky,
        traffic,
        metrics,
        ..
    } = s;
    let members: Vec<Arc<Backend>> = snapshot
        .members
        .iter()
        .map(|m| Arc::clone(&m.backend))
        .collect();
    let wall = SystemTime::now();
    let left: Vec<(Arc<Backend>, Duration)> = snapshot
        .recently_left
        .iter()
        .filter_map(|d| {
            let ago = wall.duration_since(d.at).unwrap_or_default();
            Some((Arc::clone(d.backend.as_ref()?), ago))
        })
        .collect();
    let departed = metrics
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .update(&members, &left, Instant::now(), s.keep_departed);
    let scrape = Scrape {
        snapshot: Arc::clone(snapshot),
        backends: members.into_iter().chain(departed).collect(),
        upstream: [
            upstream.connects,
            upstream.reused,
            upstream.idle as u64,
            upstream.unexpected,
        ],
        moved: sticky.moved.clone(),
        diverted: sticky.diverted,
        traffic: traffic.clone(),
        prober: metrics.prober.counts(),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Process {
        reloads: ReloadCounts::read(s.reloads),
    }));
    let pool = registry.sub_registry_with_label((Cow::Borrowed("pool"), Cow::Borrowed(POOL)));
    pool.register_collector(Box::new(scrape));
    if let Some(report) = &s.autoscale {
        pool.register_collector(Box::new(Autoscaling(report.clone())));
    }
    let mut body = String::new();
    let (status, body) = match prometheus_text::encode(&mut body, &registry) {
        Ok(()) => (StatusCode::OK, body),
        // Writing to a String cannot fail; the encoder's own checks could.
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "# the metrics could not be encoded\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(prometheus_text::CONTENT_TYPE),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// What one scrape exports about the process as a whole, read before encoding starts.
#[derive(Debug)]
struct Process {
    reloads: ReloadCounts,
}

/// What one scrape exports about the pool, read before encoding starts.
struct Scrape {
    snapshot: Arc<Snapshot>,
    /// The members, then the departed ones still exported.
    backends: Vec<Arc<Backend>>,
    /// Connections opened, requests on reused ones, idle now, closed for unexpected bytes.
    upstream: [u64; 4],
    moved: Vec<(&'static str, u64)>,
    diverted: u64,
    traffic: TrafficStats,
    prober: discovery::Counts,
}

impl fmt::Debug for Scrape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scrape")
            .field("backends", &self.backends.len())
            .finish_non_exhaustive()
    }
}

type Labels = Vec<(&'static str, String)>;

fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// A counter or gauge with one series per label set; `name` without `_total`, which the
/// encoder adds to counters.
fn family<V>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (Labels, V)>,
) -> fmt::Result
where
    V: Copy
        + prometheus_client::encoding::EncodeCounterValue
        + prometheus_client::encoding::EncodeGaugeValue,
{
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for (l, v) in rows {
        let mut series = m.encode_family(&l)?;
        match kind {
            MetricType::Counter => series.encode_counter::<NoLabelSet, V, u64>(&v, None)?,
            _ => series.encode_gauge(&v)?,
        }
    }
    Ok(())
}

/// One series of the request-duration histogram.
fn histogram(
    m: &mut prometheus_client::encoding::MetricEncoder,
    l: &impl EncodeLabelSet,
    r: &ResponseCounts,
) -> fmt::Result {
    let buckets: Vec<(f64, u64)> = DURATION_BOUNDS_US
        .iter()
        .map(|us| *us as f64 / 1e6)
        .chain([f64::INFINITY])
        .zip(r.buckets)
        .collect();
    let count = r.buckets.iter().sum();
    m.encode_family(l)?.encode_histogram::<NoLabelSet>(
        r.sum_us as f64 / 1e6,
        count,
        &buckets,
        None::<&std::collections::HashMap<usize, Exemplar<NoLabelSet, f64>>>,
    )
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        use MetricType::{Counter, Gauge};
        let addrs: Vec<String> = self.backends.iter().map(|b| b.addr.to_string()).collect();
        let responses: Vec<ResponseCounts> = self.backends.iter().map(|b| b.responses()).collect();
        let by_class = |l: &Labels, r: &ResponseCounts| {
            STATUS_CLASSES
                .iter()
                .zip(r.classes)
                .map(|(class, n)| {
                    let mut l = l.clone();
                    l.push(("class", class.to_string()));
                    (l, n)
                })
                .collect::<Vec<_>>()
        };
        let mut requests = Vec::new();
        for (addr, r) in addrs.iter().zip(&responses) {
            requests.extend(by_class(&labels([("backend", addr)]), r));
        }
        requests.extend(by_class(&Labels::new(), &self.traffic.own));
        family(
            &mut e,
            "sweeplb_requests",
            "Responses sent to clients, by status class. With `backend`: the backend that \
             answered; without: made by the balancer itself (503 with no backend, 502, 504, \
             408, 400). Admin endpoints are not counted, nor heads the server refuses before \
             the balancer sees them (431, 400 for a malformed head).",
            Counter,
            requests,
        )?;
        {
            let mut m = e.encode_descriptor(
                "sweeplb_request_duration_seconds",
                "Time from a request's arrival (its head read) to the end of its response body \
                 sent to the client (or to the 101 head for a protocol switch). With `backend`: \
                 answered by it; without: answered by the balancer itself.",
                None,
                MetricType::Histogram,
            )?;
            for (addr, r) in addrs.iter().zip(&responses) {
                histogram(&mut m, &labels([("backend", addr)]), r)?;
            }
            histogram(&mut m, &Labels::new(), &self.traffic.own)?;
        }
        let per_backend = |read: fn(&Backend) -> u64| {
            self.backends
                .iter()
                .zip(&addrs)
                .map(move |(b, addr)| (labels([("backend", addr)]), read(b)))
        };
        family(
            &mut e,
            "sweeplb_requests_in_flight",
            "Requests sent to a backend whose response has not ended yet.",
            Gauge,
            per_backend(Backend::inflight),
        )?;
        family(
            &mut e,
            "sweeplb_sessions_active",
            "Users whose pin names the backend, seen within balance.session_idle.",
            Gauge,
            per_backend(Backend::sessions),
        )?;
        let states = [
            State::Joining,
            State::Healthy,
            State::Draining,
            State::Leaving,
        ];
        family(
            &mut e,
            "sweeplb_backends",
            "Members of the pool by state: joining (not routed yet), healthy, draining (pinned \
             users only), leaving (failing checks).",
            Gauge,
            states.map(|s| {
                let n = self
                    .snapshot
                    .members
                    .iter()
                    .filter(|m| m.state == s)
                    .count();
                (labels([("state", s.as_str())]), n as u64)
            }),
        )?;
        family(
            &mut e,
            "sweeplb_probes",
            "Health probes by kind (check: a member's re-check; sweep: an unknown address) \
             and result (ok, or the class of failure).",
            Counter,
            self.prober
                .probes
                .iter()
                .map(|(kind, result, n)| (labels([("kind", kind), ("result", result)]), *n)),
        )?;
        family(
            &mut e,
            "sweeplb_sweeps",
            "Sweeps of the configured ranges finished.",
            Counter,
            [(Labels::new(), self.prober.sweeps)],
        )?;
        if let Some(s) = &self.snapshot.last_sweep {
            family(
                &mut e,
                "sweeplb_last_sweep_duration_seconds",
                "How long the last finished sweep took, from its first probe to its last answer.",
                Gauge,
                [(Labels::new(), s.duration.as_secs_f64())],
            )?;
            family(
                &mut e,
                "sweeplb_last_sweep_addresses",
                "Addresses the last finished sweep covered: the ranges less exclusions.",
                Gauge,
                [(Labels::new(), s.addresses)],
            )?;
            family(
                &mut e,
                "sweeplb_last_sweep_found",
                "Addresses that answered healthy in the last finished sweep, members included.",
                Gauge,
                [(Labels::new(), s.found)],
            )?;
        }
        family(
            &mut e,
            "sweeplb_backend_joins",
            "Backends that joined the pool: found (by the sweep, after `rise` checks) or \
             replaced (another instance answering at a member's address).",
            Counter,
            self.prober
                .joins
                .iter()
                .map(|(why, n)| (labels([("reason", why)]), *n)),
        )?;
        family(
            &mut e,
            "sweeplb_backend_leaves",
            "Backends that left the pool, by the class of failure that made them leave \
             (request_connect: a real request could not connect; replaced: another instance \
             answered at its address).",
            Counter,
            self.prober
                .leaves
                .iter()
                .map(|(why, n)| (labels([("reason", why)]), *n)),
        )?;
        family(
            &mut e,
            "sweeplb_sessions_moved",
            "Users moved off their pinned backend, by reason.",
            Counter,
            // `/_lb/health` spells reasons in words; a label value is one token.
            self.moved
                .iter()
                .map(|(why, n)| (vec![("reason", why.replace(' ', "_"))], *n)),
        )?;
        family(
            &mut e,
            "sweeplb_bounded_load_diverted",
            "New users that bounded load sent past their first choice.",
            Counter,
            [(Labels::new(), self.diverted)],
        )?;
        let [opened, reused, idle, unexpected] = self.upstream;
        family(
            &mut e,
            "sweeplb_upstream_connections_opened",
            "Connections opened to backends.",
            Counter,
            [(Labels::new(), opened)],
        )?;
        family(
            &mut e,
            "sweeplb_upstream_requests_reused",
            "Requests sent to a backend on a kept-alive connection.",
            Counter,
            [(Labels::new(), reused)],
        )?;
        family(
            &mut e,
            "sweeplb_upstream_connections_idle",
            "Kept-alive connections to backends idle now.",
            Gauge,
            [(Labels::new(), idle)],
        )?;
        family(
            &mut e,
            "sweeplb_upstream_connections_unexpected_data",
            "Idle connections closed because a backend wrote on them past its response.",
            Counter,
            [(Labels::new(), unexpected)],
        )?;
        family(
            &mut e,
            "sweeplb_retries",
            "Requests sent again, by decision (reconnect: a fresh connection to the same \
             backend; next_backend: the next candidate) and the failure that caused it.",
            Counter,
            self.traffic
                .retries
                .iter()
                .map(|(d, c, n)| (labels([("decision", d), ("cause", c)]), *n)),
        )
    }
}

/// What one scrape exports about autoscaling, when it is on.
#[derive(Debug)]
struct Autoscaling(crate::autoscale::Report);

impl Collector for Autoscaling {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        use crate::autoscale::{ACTIONS, ERROR_KINDS};
        use MetricType::{Counter, Gauge};
        let r = &self.0;
        family(
            &mut e,
            "sweeplb_autoscale_containers",
            "The service's containers by autoscaling state: running (routed, taking new \
             users), starting (not routed yet), draining (pinned users only), stopping.",
            Gauge,
            [
                ("running", r.running),
                ("starting", r.starting),
                ("draining", r.draining),
                ("stopping", r.stopping),
            ]
            .map(|(state, n)| (labels([("state", state)]), u64::from(n))),
        )?;
        family(
            &mut e,
            "sweeplb_autoscale_desired",
            "Containers the last decision asked for.",
            Gauge,
            [(Labels::new(), u64::from(r.desired))],
        )?;
        family(
            &mut e,
            "sweeplb_autoscale_inflight",
            "Requests in flight to routed backends (tunnels left out) plus those held, as \
             autoscaling last sampled them.",
            Gauge,
            [(Labels::new(), r.inflight)],
        )?;
        family(
            &mut e,
            "sweeplb_autoscale_held_requests",
            "Requests held for a backend being started (no backend routed).",
            Gauge,
            [(Labels::new(), r.held)],
        )?;
        family(
            &mut e,
            "sweeplb_autoscale_engine_up",
            "1 while the Docker engine answers autoscaling's calls, else 0.",
            Gauge,
            [(
                Labels::new(),
                u64::from(r.mode.is_some() && r.engine_error.is_none()),
            )],
        )?;
        family(
            &mut e,
            "sweeplb_autoscale_actions",
            "Autoscaling actions by kind (start: a stopped container; create: a new one; \
             drain, undrain, stop; give_up: a started container never healthy, removed) and \
             result.",
            Counter,
            ACTIONS
                .iter()
                .zip(r.actions)
                .flat_map(|(action, (ok, err))| {
                    [
                        (labels([("action", action), ("result", "ok")]), ok),
                        (labels([("action", action), ("result", "error")]), err),
                    ]
                }),
        )?;
        family(
            &mut e,
            "sweeplb_autoscale_engine_errors",
            "Failed Docker engine calls by kind: unreachable (socket missing, refused, timed \
             out), api (the engine refused), service (no such service or container).",
            Counter,
            ERROR_KINDS
                .iter()
                .zip(r.errors)
                .map(|(kind, n)| (labels([("kind", kind)]), n)),
        )?;
        if let Some(start) = &r.last_start {
            let mut rows = vec![(labels([("until", "routed")]), start.to_routed.as_secs_f64())];
            if let Some(answer) = start.to_answer {
                rows.push((labels([("until", "answer")]), answer.as_secs_f64()));
            }
            family(
                &mut e,
                "sweeplb_autoscale_last_start_seconds",
                "How long the last container autoscaling started took, from the engine call \
                 until its first health answer, and until it was routed.",
                Gauge,
                rows,
            )?;
        }
        Ok(())
    }
}

impl Collector for Process {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        family(
            &mut e,
            "sweeplb_config_reloads",
            "Configuration reloads by result: ok, invalid (did not validate), refused (needs \
             a restart).",
            MetricType::Counter,
            self.reloads
                .counts
                .iter()
                .map(|(r, n)| (labels([("result", r)]), *n)),
        )?;
        family(
            &mut e,
            "sweeplb_config_last_reload_success_timestamp_seconds",
            "Unix time the configuration in force was loaded (at start, or by the last \
             successful reload).",
            MetricType::Gauge,
            [(Labels::new(), self.reloads.last_success)],
        )?;
        family(
            &mut e,
            "sweeplb_build_info",
            "The running build; always 1.",
            MetricType::Gauge,
            [(labels([("version", env!("CARGO_PKG_VERSION"))]), 1u64)],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::PinKey;

    fn backend(last: u8) -> Arc<Backend> {
        let addr = std::net::SocketAddr::from(([127, 77, 150, last], 80));
        Arc::new(Backend::new(addr, None, &PinKey::new(None)))
    }

    fn addrs(list: &[Arc<Backend>]) -> Vec<u8> {
        list.iter()
            .map(|b| match b.addr.ip() {
                std::net::IpAddr::V4(ip) => ip.octets()[3],
                std::net::IpAddr::V6(_) => 0,
            })
            .collect()
    }

    #[test]
    fn departed_are_kept_for_a_while_then_forgotten() {
        let keep = Duration::from_secs(60);
        let t0 = Instant::now();
        let (a, b, c) = (backend(1), backend(2), backend(3));
        let mut seen = Seen::default();
        assert!(
            seen.update(&[a.clone(), b.clone()], &[], t0, keep)
                .is_empty()
        );
        let gone = seen.update(
            std::slice::from_ref(&a),
            &[],
            t0 + Duration::from_secs(1),
            keep,
        );
        assert_eq!(addrs(&gone), [2]);
        let gone = seen.update(
            std::slice::from_ref(&c),
            &[],
            t0 + Duration::from_secs(30),
            keep,
        );
        assert_eq!(addrs(&gone), [2, 1]);
        // b left at 1 s, a at 30 s.
        let gone = seen.update(
            std::slice::from_ref(&c),
            &[],
            t0 + Duration::from_secs(61),
            keep,
        );
        assert_eq!(addrs(&gone), [1]);
        let gone = seen.update(&[c], &[], t0 + Duration::from_secs(90), keep);
        assert!(gone.is_empty());
    }

    #[test]
    fn a_backend_that_came_and_went_between_scrapes_is_exported_from_the_departures() {
        let keep = Duration::from_secs(60);
        let t0 = Instant::now() + Duration::from_secs(100);
        let (a, brief, old) = (backend(1), backend(2), backend(3));
        let mut seen = Seen::default();
        assert!(
            seen.update(std::slice::from_ref(&a), &[], t0, keep)
                .is_empty()
        );
        // `brief` joined and left within the 10 s between two scrapes; `old` left long ago.
        let left = [
            (brief.clone(), Duration::from_secs(4)),
            (old.clone(), Duration::from_secs(70)),
        ];
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(
            addrs(&seen.update(std::slice::from_ref(&a), &left, t1, keep)),
            [2]
        );
        // Listed as departed again at the next scrapes, it is exported once, and forgotten
        // `keep` after it left, not after it was first seen.
        let later = |s: u64| (brief.clone(), Duration::from_secs(4 + s));
        let t2 = t1 + Duration::from_secs(10);
        let gone = seen.update(std::slice::from_ref(&a), &[later(10)], t2, keep);
        assert_eq!(addrs(&gone), [2]);
        let t3 = t1 + Duration::from_secs(57);
        assert!(seen.update(&[a], &[later(57)], t3, keep).is_empty());
    }

    #[test]
    fn a_member_at_a_departed_address_replaces_it() {
        let keep = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut seen = Seen::default();
        seen.update(&[backend(1)], &[], t0, keep);
        assert_eq!(addrs(&seen.update(&[], &[], t0, keep)), [1]);
        assert!(seen.update(&[backend(1)], &[], t0, keep).is_empty());
    }

    #[test]
    fn departed_are_bounded() {
        let keep = Duration::from_secs(3600);
        let t0 = Instant::now();
        let mut seen = Seen::default();
        for wave in 0..3u8 {
            let members: Vec<_> = (0..200u8)
                .map(|i| {
                    let addr = std::net::SocketAddr::from(([127, 77, 150 + wave, i], 80));
                    Arc::new(Backend::new(addr, None, &PinKey::new(None)))
                })
                .collect();
            seen.update(&members, &[], t0, keep);
        }
        assert_eq!(seen.update(&[], &[], t0, keep).len(), MAX_DEPARTED);
    }
}
