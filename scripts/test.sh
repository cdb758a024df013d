#!/usr/bin/env bash
# The whole test suite: setup (idempotent), then every test of the workspace, and the
# benchmarks compiled so they never rot. Ends with one summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pushdown/target}"
export PUSHDOWN_PYTHON="${PUSHDOWN_PYTHON:-$PWD/.venv/bin/python}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --release --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
cargo bench --workspace --no-run || status=$?
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
