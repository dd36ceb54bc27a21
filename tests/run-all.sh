#!/usr/bin/env bash
# The project's whole test suite, exactly as CI runs it: formatting, lints, then every unit,
# property and integration test (loopback) and the Docker end-to-end tests (tests/it/docker.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast
else
  echo "cargo-nextest not found; running cargo test instead" >&2
  cargo test --locked --no-fail-fast
fi
