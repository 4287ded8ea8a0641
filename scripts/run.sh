#!/usr/bin/env bash
# Builds and runs `supernode run` with its embedded defaults; extra arguments go to `run`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
exec cargo run --release -q -p supernode -- run "$@"
