#!/usr/bin/env python3
"""DuckDB as a test oracle for pushdown.

Reads one JSON object on stdin:
  {"tables": {"<name>": {"path": "<file>", "format": "parquet" | "csv"}},
   "queries": ["<sql>", ...]}
and writes one JSON object on stdout:
  {"results": [{"columns": [...], "rows": [[cell, ...], ...]} | {"error": "<message>"}]}

Cells are normalised so the Rust side can compare them with its own results:
numbers (int, float, DECIMAL) become JSON numbers, DATE an ISO string, TIMESTAMP the
microseconds since the epoch, BLOB lower-case hex, NULL null.
"""
import datetime
import decimal
import json
import math
import sys

import duckdb

EPOCH = datetime.datetime(1970, 1, 1)


def cell(v):
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (int, float)):
        if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
            return str(v)
        return v
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, datetime.datetime):
        naive = v.astimezone(datetime.timezone.utc).replace(tzinfo=None) if v.tzinfo else v
        return (naive - EPOCH) // datetime.timedelta(microseconds=1)
    if isinstance(v, datetime.date):
        return v.isoformat()
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    return str(v)


def main():
    request = json.load(sys.stdin)
    con = duckdb.connect()
    con.execute("SET threads TO 2")
    for name, table in request["tables"].items():
        path = table["path"].replace("'", "''")
        if table["format"] == "parquet":
            source = f"read_parquet('{path}')"
        else:
            source = f"read_csv('{path}', header = true)"
        con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM {source}')
    results = []
    for sql in request["queries"]:
        try:
            cur = con.execute(sql)
            columns = [d[0] for d in cur.description]
            rows = [[cell(v) for v in row] for row in cur.fetchall()]
            results.append({"columns": columns, "rows": rows})
        except Exception as e:  # the test decides whether an error was expected
            results.append({"error": str(e)})
    json.dump({"results": results}, sys.stdout)


if __name__ == "__main__":
    main()
