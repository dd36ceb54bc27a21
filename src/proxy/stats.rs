//! What each worker counts beside the backends' own counters: the responses the balancer makes
//! itself (no backend answered, or none was asked) and the retries, by decision and cause.
//! One per worker on its own cache lines; summed only when someone reads them.

use std::sync::atomic::{AtomicU64, Ordering};

use super::retry::{Decision, Failure};
use crate::pool::{ResponseCounts, Responses};

/// Decisions that send a request again, as counted.
pub(crate) const RETRY_DECISIONS: [&str; 2] = ["reconnect", "next_backend"];

#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct WorkerStats {
    /// Responses the balancer made itself: 503 with no backend, 502, 504, 408, 400...
    pub(crate) own: Responses,
    /// By [`RETRY_DECISIONS`] index, then [`Failure::CAUSES`] index.
    retries: [[AtomicU64; Failure::CAUSES.len()]; RETRY_DECISIONS.len()],
}

impl WorkerStats {
    /// The request is sent again as `decision` says, after `failure`.
    pub(crate) fn retried(&self, decision: Decision, failure: Failure) {
        let d = match decision {
            Decision::Reconnect => 0,
            Decision::NextBackend => 1,
            Decision::Fail => return,
        };
        self.retries[d][failure.cause()].fetch_add(1, Ordering::Relaxed);
    }
}

/// [`WorkerStats`] summed over workers, for the admin endpoints.
#[derive(Debug, Default, Clone)]
pub(crate) struct TrafficStats {
    pub(crate) own: ResponseCounts,
    /// `(decision, cause, count)`, every pair.
    pub(crate) retries: Vec<(&'static str, &'static str, u64)>,
}

impl TrafficStats {
    pub(crate) fn sum<'a>(workers: impl IntoIterator<Item = &'a WorkerStats>) -> TrafficStats {
        let mut own = ResponseCounts::default();
        let mut retries = [[0u64; Failure::CAUSES.len()]; RETRY_DECISIONS.len()];
        for w in workers {
            w.own.add_to(&mut own);
            for (sum, counts) in retries.iter_mut().zip(&w.retries) {
                for (s, c) in sum.iter_mut().zip(counts) {
                    *s += c.load(Ordering::Relaxed);
                }
            }
        }
        let retries = RETRY_DECISIONS
            .iter()
            .zip(retries)
            .flat_map(|(d, counts)| {
                Failure::CAUSES
                    .iter()
                    .zip(counts)
                    .map(move |(c, n)| (*d, *c, n))
            })
            .collect();
        TrafficStats { own, retries }
    }
}
