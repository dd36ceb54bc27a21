//! Entry points of the fuzz targets in `fuzz/`: one function per parser of bytes a client or an
//! operator controls, taking raw bytes, panicking on nothing but a broken invariant.
//!
//! Built only for tests and with the `fuzzing` feature (which the fuzz crate turns on), so the
//! library's API stays what the README says it is: nothing here is reachable from a normal
//! build. The replay test below runs every entry point over every committed corpus file on
//! stable, with no fuzzing engine, so the test command catches a regression the fuzzer once
//! walked past. The targets that reach into `proxy` and `server` have their entry points there
//! (`proxy/fuzzing.rs`, `server/fuzzing.rs`), next to the private code they drive.

use std::time::Instant;

use http::header::{self, HeaderMap, HeaderValue};

use crate::balancer::pin::{self, Cookie};
use crate::message;

/// What every target runs on one input.
pub type Entry = fn(&[u8]);

/// Every target: its name (the folder of its corpus, the file in `fuzz/fuzz_targets/`) and its
/// entry point.
pub const TARGETS: [(&str, Entry); 6] = [
    ("config", config),
    ("cookie", cookie),
    ("head", head),
    ("headers", headers),
    ("request", request),
    ("response", response),
];

/// `config.yaml` text through [`crate::config::parse`]: a config is refused with problems that
/// each name a key, or accepted as one that keeps the invariants a `Config` promises.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match crate::config::parse(text) {
        Ok(c) => {
            let d = &c.discovery;
            assert!(!d.subnets.is_empty(), "accepted without subnets");
            assert!(
                d.timeout < d.check_interval,
                "accepted an overlapping timeout"
            );
            assert!(
                c.address_count() <= d.subnets.len() as u128 * crate::config::MAX_ADDRESSES,
                "accepted a range larger than MAX_ADDRESSES"
            );
            assert!((1..=100).contains(&d.rise) && (1..=100).contains(&d.fall));
            // The balancer adds every interval and timeout to `Instant::now()`, and `run` adds
            // up by when the pool has settled: none of that may overflow for a config it was
            // handed.
            let now = Instant::now();
            let settle = d
                .check_interval
                .checked_mul(d.rise)
                .and_then(|w| w.checked_add(d.sweep_interval))
                .and_then(|w| w.checked_add(d.timeout));
            assert!(
                settle.and_then(|s| now.checked_add(s)).is_some(),
                "accepted intervals whose start-up sum overflows: {d:?}"
            );
            let t = &c.timeouts;
            for (key, value) in [
                ("timeouts.connect", t.connect),
                ("timeouts.response", t.response),
                ("timeouts.idle", t.idle),
                ("timeouts.header_read", t.header_read),
                ("timeouts.body", t.body),
                ("timeouts.shutdown", t.shutdown),
            ] {
                assert!(
                    now.checked_add(value).is_some(),
                    "accepted {key} {value:?}, which overflows an Instant"
                );
            }
        }
        Err(e) => {
            assert!(!e.problems.is_empty(), "refused with no problem named");
            for p in &e.problems {
                assert!(!p.key.is_empty(), "a problem names no key: {p:?}");
            }
            let _ = e.to_string();
        }
    }
}

/// `Cookie` header lines (one per `\n`) through the cookie lookup and
/// [`Cookie::parse`], then through the stickiness plan and the `Set-Cookie` it answers with.
pub fn cookie(data: &[u8]) {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append(header::COOKIE, v);
        }
    }
    if let Some(value) = message::cookie(&headers, crate::proxy::fuzzing::COOKIE) {
        let c = Cookie::parse(value);
        assert!(!c.key.contains('.'), "a key kept a dot: {c:?}");
        if let Some(p) = c.pin {
            assert_eq!(Cookie::parse(&pin::format(c.key, p.pin, p.at)), c);
        }
    }
    crate::proxy::fuzzing::sticky(&headers);
}

/// A client's bytes, read in fuzzer-chosen pieces interleaved with requests starting and
/// finishing, through the head-deadline watcher: see `server/fuzzing.rs`.
pub fn head(data: &[u8]) {
    crate::server::fuzzing::head(data);
}

/// A request head (`METHOD TARGET VERSION`, then `name: value` lines) through the upgrade
/// check, hop-by-hop stripping and the `X-Forwarded-*` rules: see `proxy/fuzzing.rs`.
pub fn headers(data: &[u8]) {
    crate::proxy::fuzzing::headers(data);
}

/// A client's request bytes through sweeplb's head parser, against hyper's server as the
/// oracle, and fed whole against in two pieces: see `server/fuzzing.rs`.
pub fn request(data: &[u8]) {
    crate::server::fuzzing::request(data);
}

/// A backend's response bytes through the head parser and the chunked decoder, fed whole and
/// in pieces, which must read the same: see `proxy/fuzzing.rs`.
pub fn response(data: &[u8]) {
    crate::proxy::fuzzing::response(data);
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use super::TARGETS;

    /// An input that takes longer than this, in a debug build, hangs as far as a user can tell.
    const SLOW: Duration = Duration::from_secs(5);

    fn inputs(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p| p.is_file());
        files.sort();
        files
    }

    /// Runs every file of `fuzz/<folder>/<target>/` through its target's entry point and
    /// names each that panicked or took too long.
    fn replay(folder: &str) -> Vec<String> {
        let fuzz = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz")
            .join(folder);
        let mut failures = Vec::new();
        for (name, entry) in TARGETS {
            for path in inputs(&fuzz.join(name)) {
                let data = std::fs::read(&path).expect("a corpus file is readable");
                let started = Instant::now();
                if std::panic::catch_unwind(|| entry(&data)).is_err() {
                    failures.push(format!("{} panicked", path.display()));
                }
                let took = started.elapsed();
                if took > SLOW {
                    failures.push(format!("{} took {took:?}", path.display()));
                }
            }
        }
        failures
    }

    /// Every committed corpus file through its target's entry point: none may panic or hang.
    #[test]
    fn every_corpus_file_replays_without_panic() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        for (name, _) in TARGETS {
            let files = inputs(&corpus.join(name)).len();
            assert!(
                files >= 10,
                "fuzz/corpus/{name} holds {files} files; is it missing?"
            );
        }
        let failures = replay("corpus");
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// The inputs the fuzzer found a failure with, kept under `fuzz/artifacts/` until it is
    /// fixed; then this test passes, and the files move to the corpus.
    #[test]
    fn every_artifact_replays_without_panic() {
        let failures = replay("artifacts");
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}
