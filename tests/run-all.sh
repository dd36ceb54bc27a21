#!/usr/bin/env bash
# The project's whole test suite, exactly as CI runs it: formatting, lints, a smoke run of the
# benchmark harness (bench/run.sh --quick: it fails only if something is broken, never because
# the machine is slow), then every unit, property and integration test (loopback) and the
# Docker end-to-end test (tests/it/docker.rs). nextest's summary is the last thing printed.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings

# The harness installs HAProxy, nginx, wrk and nmap with apt-get when they are missing, which
# needs root; without root and without them, say so loudly instead of failing.
if [ "$(id -u)" = 0 ] || { command -v haproxy && command -v nginx && command -v wrk && command -v nmap; } >/dev/null 2>&1; then
  bench/run.sh --quick
else
  echo "!!! SKIPPED the benchmark smoke run: not root, and haproxy/nginx/wrk/nmap are not all installed" >&2
fi

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast
else
  echo "cargo-nextest not found; running cargo test instead" >&2
  cargo test --locked --no-fail-fast
fi
