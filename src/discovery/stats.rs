//! What the prober counts for the metrics endpoint: probes by kind and result, sweeps, joins
//! and leaves by reason. The prober is the one writer; readers load the atomics when scraped.

use std::sync::atomic::{AtomicU64, Ordering};

use super::Kind;
use super::probe::Failure;

/// Why a probe was sent, as counted.
const KINDS: [&str; 3] = ["check", "sweep", "watch"];

/// Why a backend joined, as counted.
const JOINS: [&str; 2] = ["found", "replaced"];

/// Why a backend joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Join {
    /// Found by the sweep, and passed `rise` checks.
    Found,
    /// Another instance answered at a member's address.
    Replaced,
}

/// Why a backend left, beyond the class of the check failure that made it leave.
const LEAVES_OTHER: [&str; 4] = [
    "request_connect",
    "replaced",
    "range_removed",
    "scaled_down",
];

/// Why a backend left, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Leave {
    /// Its last check failed so, with the index of the [`Failure::CLASSES`] class.
    Check(usize),
    /// A real request could not connect to it.
    RequestConnect,
    /// Another instance answered at its address.
    Replaced,
    /// A reload removed the range it is in.
    RangeRemoved,
    /// Autoscaling stopped it (or gave up on it).
    ScaledDown,
}

impl Leave {
    fn index(self) -> usize {
        match self {
            Leave::Check(class) => class.min(Failure::CLASSES.len() - 1),
            Leave::RequestConnect => Failure::CLASSES.len(),
            Leave::Replaced => Failure::CLASSES.len() + 1,
            Leave::RangeRemoved => Failure::CLASSES.len() + 2,
            Leave::ScaledDown => Failure::CLASSES.len() + 3,
        }
    }

    /// Every reason, in index order.
    pub(crate) fn names() -> impl Iterator<Item = &'static str> {
        Failure::CLASSES.into_iter().chain(LEAVES_OTHER)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// By [`KINDS`] index, then result: `ok` first, then [`Failure::CLASSES`].
    probes: [[AtomicU64; Failure::CLASSES.len() + 1]; KINDS.len()],
    sweeps: AtomicU64,
    joins: [AtomicU64; JOINS.len()],
    leaves: [AtomicU64; Failure::CLASSES.len() + LEAVES_OTHER.len()],
}

/// A look at [`Stats`]: `(label, count)` lists, every label present.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    /// `(kind, result, count)`.
    pub(crate) probes: Vec<(&'static str, &'static str, u64)>,
    pub(crate) sweeps: u64,
    pub(crate) joins: Vec<(&'static str, u64)>,
    pub(crate) leaves: Vec<(&'static str, u64)>,
}

impl Stats {
    /// A probe of `kind` gave `result`.
    pub(super) fn probed<T>(&self, kind: &Kind, result: &Result<T, Failure>) {
        let r = match result {
            Ok(_) => 0,
            Err(f) => f.class() + 1,
        };
        let k = match kind {
            Kind::Check => 0,
            Kind::Sweep => 1,
            Kind::Watch => 2,
        };
        self.probes[k][r].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn swept(&self) {
        self.sweeps.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn joined(&self, why: Join) {
        let i = match why {
            Join::Found => 0,
            Join::Replaced => 1,
        };
        self.joins[i].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn left(&self, why: Leave) {
        self.leaves[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn counts(&self) -> Counts {
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let results = || std::iter::once("ok").chain(Failure::CLASSES);
        Counts {
            probes: KINDS
                .iter()
                .zip(&self.probes)
                .flat_map(|(kind, counts)| {
                    results().zip(counts).map(move |(r, n)| (*kind, r, load(n)))
                })
                .collect(),
            sweeps: load(&self.sweeps),
            joins: JOINS
                .iter()
                .zip(&self.joins)
                .map(|(j, n)| (*j, load(n)))
                .collect(),
            leaves: Leave::names()
                .zip(&self.leaves)
                .map(|(l, n)| (l, load(n)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leave_reasons_are_named_by_their_index() {
        let stats = Stats::default();
        stats.left(Leave::Check(Failure::Timeout.class()));
        stats.left(Leave::RequestConnect);
        stats.left(Leave::Replaced);
        stats.left(Leave::Replaced);
        let counted: Vec<_> = stats
            .counts()
            .leaves
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect();
        assert_eq!(
            counted,
            [("timeout", 1), ("request_connect", 1), ("replaced", 2)]
        );
    }

    #[test]
    fn probes_by_kind_and_result() {
        let stats = Stats::default();
        stats.probed::<()>(&Kind::Check, &Ok(()));
        stats.probed::<()>(&Kind::Sweep, &Err(Failure::Refused));
        stats.probed::<()>(&Kind::Sweep, &Err(Failure::Refused));
        stats.joined(Join::Replaced);
        let c = stats.counts();
        assert_eq!(c.probes.len(), 3 * 11);
        let counted: Vec<_> = c.probes.into_iter().filter(|p| p.2 > 0).collect();
        assert_eq!(counted, [("check", "ok", 1), ("sweep", "refused", 2)]);
        assert_eq!(c.joins, [("found", 0), ("replaced", 1)]);
    }
}
