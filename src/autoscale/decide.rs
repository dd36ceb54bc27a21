//! The scaling decision: a pure function of the in-flight load sampled over time, the
//! containers running, starting and draining, and the limits. No clock, no I/O: tested as a
//! table.
//!
//! The rule, after Knative's two windows (a short "panic" window to go up fast, a long
//! "stable" one to come down slowly), with the load measured exactly rather than sampled from
//! the backends:
//!
//! - **Up** when the in-flight load stayed above `target_inflight` per routed backend for the
//!   whole last `up_after`: to `ceil(mean / target)` backends at once (as Knative does), not one
//!   at a time, so a load step is met in one start rather than one per window. Containers
//!   already starting count as there, so a start is never repeated while one is on its way.
//! - **Down** by one when, over the whole last `down_after`, the load never rose above what
//!   one backend fewer carries at target (`peak <= target * (n - 1)`). Using the peak, not the
//!   mean, makes the two rules a hysteresis: right after a step down the load is at most
//!   target per backend, so the up rule cannot fire on the same load, and the pool does not
//!   flap. One at a time, and only once nothing is starting or draining and `down_after` has
//!   passed since the last change, so each removal is judged on the load after the one before.
//! - **Cold start**: requests held with nothing routed and nothing starting start backends at
//!   once (enough for the held requests at target), without waiting for a window.
//! - Always within `min..=max`; below `min` (a container died, or at start) comes back up at once.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// The limits of one pool's scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Limits {
    pub(crate) min: u32,
    pub(crate) max: u32,
    pub(crate) target: u32,
    pub(crate) up_after: Duration,
    pub(crate) down_after: Duration,
}

/// One look at the load: requests in flight to routed backends plus those held waiting for
/// one, and how many backends took new users then.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sample {
    pub(crate) at: Instant,
    pub(crate) inflight: u64,
}

/// The samples of the longer window, oldest first.
#[derive(Debug, Default)]
pub(crate) struct History {
    samples: VecDeque<Sample>,
}

impl History {
    /// Adds a sample and forgets those no window of `span` needs any more (one older than
    /// `span` is kept, so that a window can tell it is covered).
    pub(crate) fn push(&mut self, sample: Sample, span: Duration) {
        self.samples.push_back(sample);
        while self.samples.len() > 1
            && self
                .samples
                .get(1)
                .is_some_and(|s| sample.at.duration_since(s.at) >= span)
        {
            self.samples.pop_front();
        }
    }

    /// The samples of the last `span` before `now`, if the history reaches back that far.
    fn window(&self, now: Instant, span: Duration) -> Option<impl Iterator<Item = &Sample>> {
        let first = self.samples.front()?;
        if now.duration_since(first.at) < span {
            return None;
        }
        Some(
            self.samples
                .iter()
                .filter(move |s| now.duration_since(s.at) <= span),
        )
    }

    /// The mean load over the last `span`.
    fn mean(&self, now: Instant, span: Duration) -> Option<f64> {
        let (n, sum) = self
            .window(now, span)?
            .fold((0u64, 0u64), |(n, sum), s| (n + 1, sum + s.inflight));
        (n > 0).then(|| sum as f64 / n as f64)
    }

    /// The highest load over the last `span`.
    fn peak(&self, now: Instant, span: Duration) -> Option<u64> {
        self.window(now, span)?.map(|s| s.inflight).max()
    }
}

/// The containers as they stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Counts {
    /// The service's containers that are routed and take new users.
    pub(crate) running: u32,
    /// Other routed backends (containers not of the service): they carry load, and are never
    /// stopped.
    pub(crate) others: u32,
    /// Started, not routed yet.
    pub(crate) starting: u32,
    /// Draining, to be stopped.
    pub(crate) draining: u32,
    /// Requests held for a backend right now.
    pub(crate) held: u64,
}

/// What to do, and why.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    /// Bring the service's running and starting containers to `to`.
    Up {
        to: u32,
        why: Why,
    },
    /// Drain one container, to stop it.
    Down {
        why: Why,
    },
    Stay {
        why: Why,
    },
}

/// Why: for the log, `/_lb/health` and the tests.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Why {
    BelowMin { current: u32 },
    ColdStart { held: u64 },
    AboveTarget { mean: f64, per: f64 },
    AtMax,
    BelowTarget { peak: u64 },
    Settling,
    AtMin,
    Cooling,
    Steady,
    Warming,
}

impl Decision {
    pub(crate) fn why(&self) -> &Why {
        match self {
            Decision::Up { why, .. } | Decision::Down { why } | Decision::Stay { why } => why,
        }
    }
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::BelowMin { current } => write!(f, "{current} containers, below min"),
            Why::ColdStart { held } => {
                write!(f, "{held} requests waiting and no backend routed")
            }
            Why::AboveTarget { mean, per } => write!(
                f,
                "{mean:.1} requests in flight on average over up_after, {per:.1} per routed backend, above target"
            ),
            Why::AtMax => f.write_str("above target, at max"),
            Why::BelowTarget { peak } => write!(
                f,
                "at most {peak} requests in flight over down_after: one backend fewer carries that at target"
            ),
            Why::Settling => f.write_str("a container is starting or draining"),
            Why::AtMin => f.write_str("at min"),
            Why::Cooling => f.write_str("less than down_after since the last change"),
            Why::Steady => f.write_str("load within target"),
            Why::Warming => f.write_str("not yet a window of load measured"),
        }
    }
}

/// The decision at `now`, given the load `history`, the containers `c`, and when the
/// containers last changed (a start, a drain, a stop).
pub(crate) fn decide(
    l: &Limits,
    history: &History,
    c: &Counts,
    last_change: Option<Instant>,
    now: Instant,
) -> Decision {
    let current = c.running + c.starting;
    if current < l.min {
        return Decision::Up {
            to: l.min,
            why: Why::BelowMin { current },
        };
    }
    let routed = c.running + c.others;
    if c.held > 0 && routed == 0 && c.starting == 0 && l.max > 0 {
        let wanted = c.held.div_ceil(u64::from(l.target.max(1)));
        let to = u32::try_from(wanted)
            .unwrap_or(u32::MAX)
            .clamp(l.min.max(1), l.max);
        return Decision::Up {
            to,
            why: Why::ColdStart { held: c.held },
        };
    }
    let target = f64::from(l.target.max(1));
    let over = target * f64::from(routed.max(1));
    let above = history
        .window(now, l.up_after)
        .is_some_and(|mut w| w.all(|s| s.inflight as f64 > over));
    if let (true, Some(mean)) = (above, history.mean(now, l.up_after)) {
        let per = mean / f64::from(routed.max(1));
        {
            let wanted = (mean / target).ceil() as u32;
            let to = wanted.saturating_sub(c.others).clamp(l.min, l.max);
            let why = Why::AboveTarget { mean, per };
            if to > current {
                return Decision::Up { to, why };
            }
            if current >= l.max {
                return Decision::Stay { why: Why::AtMax };
            }
            return Decision::Stay { why: Why::Settling };
        }
    }
    if c.starting > 0 || c.draining > 0 {
        return Decision::Stay { why: Why::Settling };
    }
    if current <= l.min {
        return Decision::Stay { why: Why::AtMin };
    }
    if last_change.is_some_and(|at| now.duration_since(at) < l.down_after) {
        return Decision::Stay { why: Why::Cooling };
    }
    let Some(peak) = history.peak(now, l.down_after) else {
        return Decision::Stay { why: Why::Warming };
    };
    if c.held == 0 && peak <= u64::from(l.target) * u64::from(routed.saturating_sub(1)) {
        return Decision::Down {
            why: Why::BelowTarget { peak },
        };
    }
    Decision::Stay { why: Why::Steady }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        min: 1,
        max: 5,
        target: 8,
        up_after: Duration::from_secs(2),
        down_after: Duration::from_secs(10),
    };

    /// A history of one sample per second over `loads` (oldest first), ending at the
    /// returned instant.
    fn history(loads: &[u64]) -> (History, Instant) {
        let t0 = Instant::now();
        let mut h = History::default();
        let mut at = t0;
        for (i, &inflight) in loads.iter().enumerate() {
            at = t0 + Duration::from_secs(i as u64);
            h.push(Sample { at, inflight }, LIMITS.down_after);
        }
        (h, at)
    }

    fn counts(running: u32, starting: u32, draining: u32) -> Counts {
        Counts {
            running,
            starting,
            draining,
            ..Counts::default()
        }
    }

    /// One case a line: loads (one a second, oldest first) | running starting draining
    /// others held | seconds since the last change (`-` never) | what to do (`up N`,
    /// `down`, `stay`) and why.
    const TABLE: &str = "
        # A load step: 1 running, 48 in flight for 3 s: up to ceil(48/8) = 6, clamped to 5.
        0 0 0 0 0 0 0 0 0 0 48 48 48   | 1 0 0 0 0 | - | up 5 abovetarget
        # One second of it is not enough: the window is 2 s.
        0 0 0 0 0 0 0 0 0 0 0 0 48      | 2 0 0 0 0 | - | stay steady
        # Already starting enough: no second start.
        0 0 0 0 0 0 0 0 0 0 48 48 48   | 1 4 0 0 0 | - | stay atmax
        # 20 in flight: 3 needed, 1 running + 1 starting: up to 3.
        0 0 0 0 0 0 0 0 0 0 20 20 20   | 1 1 0 0 0 | - | up 3 abovetarget
        # Above target but at max.
        40 40 40 40 40 40 40 40 40 40 45 45 45 | 5 0 0 0 0 | - | stay atmax
        # Others carry load: 48 needs 6, 2 others, so 4 of the service's.
        0 0 0 0 0 0 0 0 0 0 48 48 48   | 1 0 0 2 0 | - | up 4 abovetarget
        # Load within target on 5: 30 in flight is 6 each.
        36 36 36 36 36 36 36 36 36 36 36 | 5 0 0 0 0 | - | stay steady
        # Down: 4 backends carry 32 at target: not with a peak of 36; with 20, drain one.
        36 36 36 36 36 36 36 36 36 36 36 | 5 0 0 0 0 | 20 | stay steady
        20 20 20 20 20 20 20 20 20 20 20 | 5 0 0 0 0 | 20 | down belowtarget
        # ... but not while one drains or starts, nor within down_after of the last change.
        20 20 20 20 20 20 20 20 20 20 20 | 4 0 1 0 0 | 20 | stay settling
        20 20 20 20 20 20 20 20 20 20 20 | 4 1 0 0 0 | 20 | stay settling
        20 20 20 20 20 20 20 20 20 20 20 | 5 0 0 0 0 | 5  | stay cooling
        # A single burst in the window holds it.
        0 0 0 0 0 40 0 0 0 0 0          | 5 0 0 0 0 | -  | stay steady
        # Never below min; an idle pool at min stays.
        0 0 0 0 0 0 0 0 0 0 0           | 1 0 0 0 0 | -  | stay atmin
        # Too little history to come down.
        0 0 0                            | 3 0 0 0 0 | -  | stay warming
        # Below min (a container died): back up at once.
        0 0 0                            | 0 0 0 0 0 | -  | up 1 belowmin
        # Held requests with nothing routed start enough for them at once.
        0 0 0                            | 0 0 0 0 20 | - | up 1 belowmin
    ";

    const TABLE_MIN0: &str = "
        # Scale to zero: idle for down_after, the last one drains.
        0 0 0 0 0 0 0 0 0 0 0           | 1 0 0 0 0 | -  | down belowtarget
        # One request in flight keeps it.
        0 0 0 0 0 0 0 0 0 1 0           | 1 0 0 0 0 | -  | stay steady
        # At zero, idle: stay.
        0 0 0 0 0 0 0 0 0 0 0           | 0 0 0 0 0 | -  | stay atmin
        # A request held at zero: start one at once, no window.
        0 0 0                            | 0 0 0 0 1 | -  | up 1 coldstart
        # 20 held: 3 at once.
        0                                | 0 0 0 0 20 | - | up 3 coldstart
        # Already starting: wait for it.
        0                                | 0 1 0 0 5 | - | stay settling
        # Held requests while all are draining: start one.
        0 0 0 0 0 0 0 0 0 0 0           | 0 0 1 0 3 | -  | up 1 coldstart
    ";

    fn run(limits: &Limits, table: &str) -> usize {
        let mut cases = 0;
        for line in table.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parts: Vec<&str> = line.split('|').map(str::trim).collect();
            let [loads, c, since, want] = parts[..] else {
                panic!("four parts: {line}");
            };
            let loads: Vec<u64> = loads
                .split_whitespace()
                .map(|n| n.parse().unwrap())
                .collect();
            let c: Vec<u64> = c.split_whitespace().map(|n| n.parse().unwrap()).collect();
            let (h, now) = history(&loads);
            let counts = Counts {
                running: c[0] as u32,
                starting: c[1] as u32,
                draining: c[2] as u32,
                others: c[3] as u32,
                held: c[4],
            };
            let last = match since {
                "-" => None,
                s => Some(now - Duration::from_secs(s.parse().unwrap())),
            };
            let d = decide(limits, &h, &counts, last, now);
            let why = format!("{:?}", d.why()).to_lowercase();
            let why = why.split([' ', '{']).next().unwrap().to_string();
            let got = match &d {
                Decision::Up { to, .. } => format!("up {to} {why}"),
                Decision::Down { .. } => format!("down {why}"),
                Decision::Stay { .. } => format!("stay {why}"),
            };
            assert_eq!(got, want, "{line}\n{d:?}");
            cases += 1;
        }
        cases
    }

    #[test]
    fn decisions() {
        assert_eq!(run(&LIMITS, TABLE), 17);
        let min0 = Limits { min: 0, ..LIMITS };
        assert_eq!(run(&min0, TABLE_MIN0), 7);
    }

    #[test]
    fn a_step_down_cannot_bring_the_load_above_target() {
        // The hysteresis: whatever the steady load, after the down decision the remaining
        // backends are at or below target, so the up rule does not fire on the same load.
        for load in 0..=80u64 {
            for running in 2..=5u32 {
                let (h, now) = history(&[load; 12]);
                let d = decide(&LIMITS, &h, &counts(running, 0, 0), None, now);
                if matches!(d, Decision::Down { .. }) {
                    let after = decide(&LIMITS, &h, &counts(running - 1, 0, 0), None, now);
                    assert!(
                        !matches!(after, Decision::Up { .. }),
                        "load {load} on {running}: down, then {after:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn history_keeps_only_what_the_long_window_needs() {
        let mut h = History::default();
        let t0 = Instant::now();
        for i in 0..1000u64 {
            let at = t0 + Duration::from_millis(100 * i);
            h.push(Sample { at, inflight: i }, Duration::from_secs(10));
        }
        assert!(h.samples.len() <= 102, "{}", h.samples.len());
        let now = t0 + Duration::from_millis(100 * 999);
        assert_eq!(h.peak(now, Duration::from_secs(10)), Some(999));
        assert!(h.mean(now, Duration::from_secs(2)).is_some());
    }
}
