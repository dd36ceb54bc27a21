//! What autoscaling shows: the controller writes a [`Report`] after every step, and
//! `/_lb/health`, `/_lb/metrics` and the dashboard read it. Written a few times a second, read
//! per scrape: a mutex, never touched by the request path.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// The actions counted, as `sweeplb_autoscale_actions_total{action}` names them.
pub(crate) const ACTIONS: [&str; 6] = ["start", "create", "drain", "undrain", "stop", "give_up"];

/// The engine error classes counted (`sweeplb_autoscale_engine_errors_total{kind}`).
pub(crate) const ERROR_KINDS: [&str; 3] = ["unreachable", "api", "service"];

/// The latest report, shared between the controller and the admin endpoints.
#[derive(Debug, Default)]
pub(crate) struct Status(Mutex<Report>);

impl Status {
    pub(crate) fn report(&self) -> Report {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut Report)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// Autoscaling as it stands.
#[derive(Debug, Clone, Default)]
pub(crate) struct Report {
    pub(crate) service: String,
    /// `compose` or `swarm`, once the engine has been reached.
    pub(crate) mode: Option<&'static str>,
    /// `None` while the engine answers; the last error otherwise.
    pub(crate) engine_error: Option<String>,
    pub(crate) min: u32,
    pub(crate) max: u32,
    pub(crate) target: u32,
    pub(crate) running: u32,
    pub(crate) starting: u32,
    pub(crate) draining: u32,
    pub(crate) stopping: u32,
    pub(crate) desired: u32,
    /// Requests in flight to routed backends and held, at the last sample.
    pub(crate) inflight: u64,
    pub(crate) held: u64,
    pub(crate) containers: Vec<Container>,
    /// Why the current decision is what it is (`load within target`, say).
    pub(crate) reason: String,
    /// The last time it scaled up or down, and why.
    pub(crate) last_decision: Option<LastDecision>,
    pub(crate) last_start: Option<LastStart>,
    pub(crate) backoff_until: Option<SystemTime>,
    /// By [`ACTIONS`] index: (ok, error).
    pub(crate) actions: [(u64, u64); ACTIONS.len()],
    /// By [`ERROR_KINDS`] index.
    pub(crate) errors: [u64; ERROR_KINDS.len()],
}

/// One of the service's containers that autoscaling is acting on, or that runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Container {
    pub(crate) name: String,
    pub(crate) id: String,
    pub(crate) addr: Option<std::net::SocketAddr>,
    /// `starting`, `running`, `draining`, `stopping`.
    pub(crate) state: &'static str,
    pub(crate) since: Option<SystemTime>,
}

#[derive(Debug, Clone)]
pub(crate) struct LastDecision {
    pub(crate) at: SystemTime,
    /// `up` or `down`.
    pub(crate) action: &'static str,
    pub(crate) from: u32,
    pub(crate) to: u32,
    pub(crate) reason: String,
}

/// How long the last container started took, from the engine call.
#[derive(Debug, Clone)]
pub(crate) struct LastStart {
    pub(crate) container: String,
    /// To its first passing health answer (it appears in the pool, joining).
    pub(crate) to_answer: Option<Duration>,
    /// To being routed (`rise` answers).
    pub(crate) to_routed: Duration,
}

impl Report {
    pub(crate) fn count(&mut self, action: &str, ok: bool) {
        if let Some(i) = ACTIONS.iter().position(|a| *a == action) {
            let slot = &mut self.actions[i];
            if ok {
                slot.0 += 1;
            } else {
                slot.1 += 1;
            }
        }
    }

    pub(crate) fn error(&mut self, kind: &str) {
        if let Some(i) = ERROR_KINDS.iter().position(|k| *k == kind) {
            self.errors[i] += 1;
        }
    }
}
