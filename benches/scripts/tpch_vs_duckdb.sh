#!/usr/bin/env bash
# Whole-process timings of TPC-H Q1 and Q6: the pushdown CLI beside the DuckDB CLI, on the
# same files, same machine, same thread count. Usage:
#   benches/scripts/tpch_vs_duckdb.sh [SCALE] [THREADS]
# Generates TPC-H lineitem at SCALE (default 1) if missing, then runs hyperfine and writes
# the table to target/tpch-vs-duckdb-sf<SCALE>.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
scale="${1:-1}"
threads="${2:-$(nproc)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pushdown/target}"
pushdown="$CARGO_TARGET_DIR/release/pushdown"
duckdb="$PWD/.venv/bin/duckdb"
command -v hyperfine >/dev/null || { echo "hyperfine is missing: apt-get install hyperfine" >&2; exit 1; }
[ -x "$duckdb" ] || { echo "the DuckDB CLI is missing: run scripts/setup.sh" >&2; exit 1; }
data="datasets/generated/tpch-sf$scale"
[ -f "$data/parquet/lineitem.parquet" ] || "$pushdown" datasets tpch --scale "$scale" --out "$data"
out="$CARGO_TARGET_DIR/tpch-vs-duckdb-sf$scale.md"
: > "$out"
for format in parquet csv; do
  file="$PWD/$data/$format/lineitem.$format"
  if [ "$format" = parquet ]; then reader="read_parquet('$file')"; else reader="read_csv('$file', header = true)"; fi
  for q in q1 q6; do
    sql="$(grep -v '^--' datasets/queries/tpch/$q.sql)"
    hyperfine --warmup 1 --runs 5 --export-markdown /tmp/hf.md \
      -n "pushdown $q $format" "$pushdown query --threads $threads --data $data/$format \"$sql\" > /dev/null" \
      -n "duckdb $q $format" "$duckdb -c \"SET threads TO $threads; CREATE VIEW lineitem AS SELECT * FROM $reader; $sql\" > /dev/null"
    tail -n +3 /tmp/hf.md >> "$out"
  done
done
{ echo "| Command | Mean [s] | Min [s] | Max [s] | Relative |"; echo "|:---|---:|---:|---:|---:|"; cat "$out"; } > "$out.tmp" && mv "$out.tmp" "$out"
cat "$out"
