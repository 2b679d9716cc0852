#!/usr/bin/env bash
# Runs every test of hierlock. Needs: the stable toolchain; redis-server on
# PATH for the Redis backend tests; the nightly toolchain for Miri.
# Set SKIP_MIRI=1, SKIP_LOOM=1 or SKIP_REDIS=1 to leave a part out.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "format"
cargo fmt --all --check

step "clippy"
cargo clippy --all-targets -- -D warnings
cargo clippy --all-targets --features redis -- -D warnings

step "docs"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --features redis

step "tests (in-process engine, doctests)"
cargo test

if [ "${SKIP_REDIS:-0}" != 1 ]; then
  step "tests (Redis backend, real redis-server)"
  command -v redis-server >/dev/null || { echo "redis-server not on PATH (apt-get install redis-server)"; exit 1; }
  cargo test --features redis --test redis_locks --test redis_processes
fi

if [ "${SKIP_LOOM:-0}" != 1 ] && [ -d loom-tests ]; then
  step "loom model checks"
  (cd loom-tests && RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release)
fi

if [ "${SKIP_MIRI:-0}" != 1 ]; then
  step "miri"
  MIRIFLAGS="${MIRIFLAGS:--Zmiri-strict-provenance}" cargo +nightly miri test --lib
fi

step "comparison harness (smoke)"
if [ -f examples/compare.rs ]; then
  cargo run --release --example compare -- --quick
fi

step "all tests passed"
