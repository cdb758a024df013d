#!/usr/bin/env bash
# The whole test suite: setup (idempotent), then every test of the workspace, and the
# benchmarks compiled so they never rot.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pushdown/target}"
export PUSHDOWN_PYTHON="${PUSHDOWN_PYTHON:-$PWD/.venv/bin/python}"
cargo test --release --workspace
cargo bench --workspace --no-run
