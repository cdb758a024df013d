#!/usr/bin/env bash
# Whole-process timings of all 22 TPC-H queries over the eight tables as Parquet: the
# pushdown CLI (embedded) beside the DuckDB CLI, same files, same machine, with 1 and with
# 2 threads. Usage:
#   benches/scripts/tpch22_vs_duckdb.sh [SCALE] [RUNS]
# Generates the eight tables at SCALE (default 1) if missing, runs hyperfine (one warm-up,
# RUNS timed runs, default 3) per query, engine and thread count, and writes the table to
# $CARGO_TARGET_DIR/tpch22-vs-duckdb-sf<SCALE>.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
scale="${1:-1}"
runs="${2:-3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pushdown/target}"
# PUSHDOWN_BIN: another build to time (e.g. a copy of an earlier commit's binary).
pushdown="${PUSHDOWN_BIN:-$CARGO_TARGET_DIR/release/pushdown}"
duckdb="$PWD/.venv/bin/duckdb"
python="$PWD/.venv/bin/python"
command -v hyperfine >/dev/null || { echo "hyperfine is missing: apt-get install hyperfine" >&2; exit 1; }
[ -x "$duckdb" ] || { echo "the DuckDB CLI is missing: run scripts/setup.sh" >&2; exit 1; }
tables=lineitem,orders,customer,part,partsupp,supplier,nation,region
data="datasets/generated/tpch-sf$scale-all"
[ -f "$data/parquet/region.parquet" ] || "$pushdown" datasets tpch --scale "$scale" --tables "$tables" --out "$data"
views=""
for t in ${tables//,/ }; do
  views+="CREATE VIEW $t AS SELECT * FROM read_parquet('$PWD/$data/parquet/$t.parquet'); "
done
out="$CARGO_TARGET_DIR/tpch22-vs-duckdb-sf$scale.md"
json="$(mktemp)"
trap 'rm -f "$json"' EXIT
{
  echo "| query | threads | pushdown [s] | DuckDB CLI [s] | pushdown / DuckDB |"
  echo "|:---|---:|---:|---:|---:|"
} > "$out"
for threads in 1 2; do
  for n in $(seq 1 22); do
    sql="$(grep -v '^--' "datasets/queries/tpch/q$n.sql")"
    hyperfine --warmup 1 --runs "$runs" --export-json "$json" --style none \
      -n pushdown "$pushdown query --threads $threads --data $data/parquet \"$sql\" > /dev/null" \
      -n duckdb "$duckdb -c \"SET threads TO $threads; $views $sql\" > /dev/null" > /dev/null
    "$python" - "$json" "$n" "$threads" >> "$out" <<'PY'
import json, sys
r = {x["command"]: x["median"] for x in json.load(open(sys.argv[1]))["results"]}
p, d = r["pushdown"], r["duckdb"]
print(f"| Q{sys.argv[2]} | {sys.argv[3]} | {p:.3f} | {d:.3f} | {p / d:.2f}x |")
PY
    tail -n 1 "$out"
  done
done
"$python" - "$out" <<'PY' | tee -a "$out"
import sys
rows = [l.split("|") for l in open(sys.argv[1]) if l.startswith("| Q")]
for t in ("1", "2"):
    p = sum(float(r[3]) for r in rows if r[2].strip() == t)
    d = sum(float(r[4]) for r in rows if r[2].strip() == t)
    print(f"| sum of 22 | {t} | {p:.2f} | {d:.2f} | {p / d:.2f}x |")
PY
echo "wrote $out" >&2
