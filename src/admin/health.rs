//! `/_lb/health`: every member with its state and counters, the recent departures, the last
//! sweep, the upstream connections, the sessions moved and the config reloads.

use std::time::SystemTime;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use crate::message::json;
use crate::pool::Snapshot;
use crate::proxy::{StickyStats, UpstreamStats};
use crate::reload;

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
pub(super) fn health(
    s: &Snapshot,
    upstream: &UpstreamStats,
    sticky: &StickyStats,
    reloads: &reload::Counts,
) -> Response<Full<Bytes>> {
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
