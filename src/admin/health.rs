//! `/_lb/health`: every member with its state and counters, the recent departures, the last
//! sweep, the upstream connections, the sessions moved and the config reloads.

use std::time::SystemTime;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use crate::message::json;

/// The document `/_lb/health` answers.
#[derive(Serialize)]
struct HealthView<'a> {
    status: &'static str,
    healthy: usize,
    backends: Vec<BackendView<'a>>,
    recently_left: Vec<DepartureView<'a>>,
    last_sweep: Option<SweepView>,
    upstream: UpstreamView,
    /// Users moved off their pinned backend since start, by reason.
    sessions_moved: std::collections::BTreeMap<&'static str, u64>,
    /// New users that bounded load sent past their first choice since start.
    bounded_load_diverted: u64,
    /// Config reloads since start, by result, and the latest one.
    reloads: ReloadsView,
    /// Autoscaling, when it is on (`null` when off).
    autoscale: Option<AutoscaleView<'a>>,
}

#[derive(Serialize)]
struct AutoscaleView<'a> {
    service: &'a str,
    /// `compose` or `swarm`; `null` until the engine has been reached.
    mode: Option<&'static str>,
    /// `ok`, or the last error talking to the engine.
    engine: &'a str,
    min: u32,
    max: u32,
    target_inflight: u32,
    /// The service's containers routed and taking new users.
    running: u32,
    /// Started, not routed yet.
    starting: u32,
    /// Drained on the balancer's side, to be stopped.
    draining: u32,
    /// Out of the pool, being stopped.
    stopping: u32,
    desired: u32,
    /// Requests in flight to routed backends (tunnels left out) and held, now.
    inflight: u64,
    /// Requests held for a backend right now.
    held: u64,
    containers: Vec<ContainerView<'a>>,
    /// Why the current decision is what it is.
    reason: &'a str,
    /// The last scale up or down.
    last_decision: Option<DecisionView<'a>>,
    last_start: Option<StartView<'a>>,
    backoff_until: Option<String>,
    /// Engine errors since start.
    errors: u64,
}

#[derive(Serialize)]
struct ContainerView<'a> {
    name: &'a str,
    id: &'a str,
    addr: Option<String>,
    state: &'static str,
    since: Option<String>,
}

#[derive(Serialize)]
struct DecisionView<'a> {
    at: String,
    action: &'static str,
    from: u32,
    to: u32,
    reason: &'a str,
}

#[derive(Serialize)]
struct StartView<'a> {
    container: &'a str,
    start_to_answer_ms: Option<f64>,
    start_to_routed_ms: f64,
}

fn autoscale(r: &crate::autoscale::Report) -> AutoscaleView<'_> {
    AutoscaleView {
        service: &r.service,
        mode: r.mode,
        engine: r.engine_error.as_deref().unwrap_or("ok"),
        min: r.min,
        max: r.max,
        target_inflight: r.target,
        running: r.running,
        starting: r.starting,
        draining: r.draining,
        stopping: r.stopping,
        desired: r.desired,
        inflight: r.inflight,
        held: r.held,
        containers: r
            .containers
            .iter()
            .map(|c| ContainerView {
                name: &c.name,
                id: &c.id,
                addr: c.addr.map(|a| a.to_string()),
                state: c.state,
                since: c.since.map(timestamp),
            })
            .collect(),
        reason: &r.reason,
        last_decision: r.last_decision.as_ref().map(|d| DecisionView {
            at: timestamp(d.at),
            action: d.action,
            from: d.from,
            to: d.to,
            reason: &d.reason,
        }),
        last_start: r.last_start.as_ref().map(|l| StartView {
            container: &l.container,
            start_to_answer_ms: l.to_answer.map(ms),
            start_to_routed_ms: ms(l.to_routed),
        }),
        backoff_until: r.backoff_until.map(timestamp),
        errors: r.errors.iter().sum(),
    }
}

#[derive(Serialize)]
struct ReloadsView {
    ok: u64,
    invalid: u64,
    refused: u64,
    last: Option<LastReloadView>,
}

#[derive(Serialize)]
struct LastReloadView {
    at: String,
    result: &'static str,
    /// The keys that changed (`ok`), or every problem or reason it was not applied.
    detail: Vec<String>,
}

#[derive(Serialize)]
struct BackendView<'a> {
    addr: String,
    state: &'static str,
    /// False while a member is kept out of routing after a request could not connect.
    routed: bool,
    since: String,
    last_check_ms: Option<f64>,
    consecutive_ok: u32,
    consecutive_fail: u32,
    /// The instance its health answer names, if any.
    instance: Option<&'a str>,
    requests: u64,
    inflight: u64,
    /// Users whose pin names it, seen within `balance.session_idle`.
    sessions: u64,
    last_error: Option<&'a str>,
}

#[derive(Serialize)]
struct DepartureView<'a> {
    addr: String,
    at: String,
    reason: &'a str,
}

#[derive(Serialize)]
struct SweepView {
    addresses: u64,
    found: u64,
    duration_ms: f64,
    finished: String,
}

#[derive(Serialize)]
struct UpstreamView {
    /// Connections opened to backends since start.
    connects: u64,
    /// Requests sent on a kept-alive connection.
    reused: u64,
    idle: usize,
    /// Idle connections closed because bytes arrived on them (a backend writing past its
    /// response): those bytes were delivered to no one.
    unexpected: u64,
}

fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// `/_lb/health`: the pool as JSON; 503 while no backend takes new users.
pub(super) fn health(sources: &super::Sources<'_>) -> Response<Full<Bytes>> {
    let (s, upstream, sticky, reloads) = (
        &*sources.snapshot,
        &sources.upstream,
        &sources.sticky,
        sources.reloads,
    );
    let healthy = s.healthy();
    let counted = reloads.counted();
    let view = HealthView {
        status: if healthy > 0 {
            "ok"
        } else {
            "no healthy backend"
        },
        healthy,
        backends: s
            .members
            .iter()
            .map(|m| BackendView {
                addr: m.backend.addr.to_string(),
                state: m.state.as_str(),
                routed: m.routed,
                since: timestamp(m.since),
                last_check_ms: m.last_check.map(ms),
                consecutive_ok: m.consecutive_ok,
                consecutive_fail: m.consecutive_fail,
                instance: m.backend.instance.as_deref(),
                requests: m.backend.requests(),
                inflight: m.backend.inflight(),
                sessions: m.backend.sessions(),
                last_error: m.last_error.as_deref(),
            })
            .collect(),
        recently_left: s
            .recently_left
            .iter()
            .map(|d| DepartureView {
                addr: d.addr.to_string(),
                at: timestamp(d.at),
                reason: &d.reason,
            })
            .collect(),
        last_sweep: s.last_sweep.as_ref().map(|r| SweepView {
            addresses: r.addresses,
            found: r.found,
            duration_ms: ms(r.duration),
            finished: timestamp(r.finished),
        }),
        upstream: UpstreamView {
            connects: upstream.connects,
            reused: upstream.reused,
            idle: upstream.idle,
            unexpected: upstream.unexpected,
        },
        sessions_moved: sticky.moved.iter().copied().collect(),
        bounded_load_diverted: sticky.diverted,
        reloads: ReloadsView {
            ok: counted.ok,
            invalid: counted.invalid,
            refused: counted.refused,
            last: reloads.last().map(|l| LastReloadView {
                at: timestamp(l.at),
                result: l.result,
                detail: l.detail,
            }),
        },
        autoscale: sources.autoscale.as_ref().map(autoscale),
    };
    let status = if healthy > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body =
        serde_json::to_string_pretty(&view).unwrap_or_else(|e| format!(r#"{{"error":"{e}"}}"#));
    json(status, body)
}
