//! End-to-end tests on the real Docker engine (issue 3). Placeholder until written.
