#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test, all in the release profile so
# tests, benchmarks and the acceptance checks share one build.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --release --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --release --workspace
