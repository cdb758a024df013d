#!/usr/bin/env bash
# Sets up, generates TPC-H lineitem at scale factor 0.1 as Parquet and CSV, and runs
# TPC-H Q1 and Q6 over both through the pushdown CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pushdown/target}"
pushdown="$CARGO_TARGET_DIR/release/pushdown"
data=datasets/generated/tpch-sf0.1
if [ ! -f "$data/parquet/lineitem.parquet" ] || [ ! -f "$data/csv/lineitem.csv" ]; then
  echo "== generating TPC-H lineitem, scale factor 0.1"
  "$pushdown" datasets tpch --scale 0.1 --out "$data"
fi
for format in parquet csv; do
  for q in q1 q6; do
    echo "== TPC-H ${q^^} over $format"
    "$pushdown" query --data "$data/$format" "$(cat datasets/queries/tpch/$q.sql)"
  done
done
echo "== done. Try: $pushdown query --data $data/parquet --explain \"\$(cat datasets/queries/tpch/q6.sql)\""
