#!/usr/bin/env python3
"""How many real-world-shaped CSV files pushdown reads as DuckDB's read_csv does.

Writes N files (seeded) of random dialects — delimiter , ; | tab; quoting none, where
needed, everywhere, with " or '; doubled or backslash-escaped quotes; header or not;
title lines; # comment lines; CRLF; a UTF-8 byte order mark; empty fields; repeated and
empty header names; some ragged rows; some empty files; integers, decimals, text and
dates — reads each with DuckDB's defaults and with `pushdown query`, and counts the
files of each outcome: same table (names and values), same row count only, pushdown
failed where DuckDB read, both failed, DuckDB failed where pushdown read.

    benches/csv/dialects.py --pushdown PATH [--files 300] [--seed 1] [--show 5]

Needs duckdb (scripts/setup.sh installs it into .venv).
"""
import argparse
import csv
import datetime
import io
import json
import os
import random
import subprocess
import sys
import tempfile
from collections import Counter

import duckdb


def value(rng, kind, i):
    if rng.random() < 0.05:
        return ""
    if kind == "int":
        return str(rng.randint(-1000, 100000))
    if kind == "dec":
        return f"{rng.randint(0, 9999)}.{rng.randint(0, 99):02d}"
    if kind == "date":
        return (datetime.date(2020, 1, 1) + datetime.timedelta(days=rng.randint(0, 2000))).isoformat()
    words = ["alpha", "beta", "gamma, delta", "say \"hi\"", "it's", "x|y", "a;b", "tab\there", "line\nbreak", "ünï", "plain"]
    return rng.choice(words) + str(i % 7)


def make(rng):
    """One file's bytes and a description of its dialect."""
    d = {
        "delim": rng.choice([",", ",", ";", "|", "\t"]),
        "quote": rng.choice(['"', '"', "'"]),
        "quoting": rng.choice(["needed", "needed", "all", "none"]),
        "escape": rng.choice(["double", "double", "backslash"]),
        "header": rng.random() < 0.8,
        "title": rng.choice([0, 0, 0, 1, 2]),
        "comments": rng.random() < 0.1,
        "crlf": rng.random() < 0.3,
        "bom": rng.random() < 0.1,
        "dupnames": rng.random() < 0.1,
        "ragged": rng.random() < 0.05,
        "empty": rng.random() < 0.02,
    }
    if d["empty"]:
        return b"", d
    ncols = rng.randint(1, 7)
    kinds = [rng.choice(["int", "dec", "text", "date"]) for _ in range(ncols)]
    names = [f"c{j}" for j in range(ncols)]
    if d["dupnames"] and ncols > 2:
        names[1] = names[0]
        names[2] = ""
    rows = [[value(rng, k, i) for k in kinds] for i in range(rng.randint(1, 300))]
    q, delim = d["quote"], d["delim"]

    def field(v):
        special = delim in v or "\n" in v or "\r" in v or q in v or (v[:1] == "#")
        if d["quoting"] == "none":
            # Unquoted: drop what would need quotes.
            return v.replace(delim, " ").replace("\n", " ").replace(q, "")
        if d["quoting"] == "all" or special:
            inner = v.replace(q, q + q) if d["escape"] == "double" else v.replace("\\", "\\\\").replace(q, "\\" + q)
            return q + inner + q
        return v

    nl = "\r\n" if d["crlf"] else "\n"
    lines = []
    for t in range(d["title"]):
        lines.append(f"Report {t + 1} made by a tool")
    if d["header"]:
        lines.append(delim.join(field(n) for n in names))
    for i, r in enumerate(rows):
        if d["comments"] and i % 17 == 5:
            lines.append("# a note about the next rows")
        fields = [field(v) for v in r]
        if d["ragged"] and i % 11 == 3 and len(fields) > 1:
            fields = fields[:-1]
        lines.append(delim.join(fields))
    text = nl.join(lines) + nl
    data = text.encode()
    if d["bom"]:
        data = b"\xef\xbb\xbf" + data
    return data, d


def show(v):
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, datetime.datetime):
        return v.isoformat()
    if isinstance(v, float):
        return repr(v)
    return str(v)


def duckdb_table(path):
    rel = duckdb.sql(f"SELECT * FROM read_csv('{path}')")
    return rel.columns, [[show(v) for v in r] for r in rel.fetchall()]


def pushdown_table(binary, folder, table):
    out = subprocess.run(
        [binary, "query", "--output", "json", "--data", folder, f'SELECT * FROM "{table}"'],
        capture_output=True, text=True, timeout=120,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip())
    rows = json.loads(out.stdout or "[]")
    # Column names from a CSV run (JSON drops them for an empty result).
    header = subprocess.run(
        [binary, "query", "--output", "csv", "--data", folder, f'SELECT * FROM "{table}" LIMIT 0'],
        capture_output=True, text=True, timeout=120,
    ).stdout
    names = next(csv.reader(io.StringIO(header)), [])
    return names, [[show(r.get(n)) for n in names] for r in rows]


def same_values(a, b):
    def norm(v):
        try:
            return float(v)
        except ValueError:
            return v
    return [[norm(v) for v in r] for r in a] == [[norm(v) for v in r] for r in b]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pushdown", required=True)
    p.add_argument("--files", type=int, default=300)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--show", type=int, default=5, help="differences to print")
    args = p.parse_args()
    rng = random.Random(args.seed)
    outcomes = Counter()
    examples = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.files):
            data, d = make(rng)
            folder = os.path.join(tmp, f"f{n}")
            os.mkdir(folder)
            path = os.path.join(folder, "t.csv")
            with open(path, "wb") as f:
                f.write(data)
            try:
                theirs = duckdb_table(path)
            except Exception as e:
                theirs = RuntimeError(str(e).splitlines()[0])
            try:
                ours = pushdown_table(args.pushdown, folder, "t")
            except Exception as e:
                ours = e
            if isinstance(theirs, Exception) and isinstance(ours, Exception):
                outcome = "both failed"
            elif isinstance(theirs, Exception):
                outcome = "DuckDB failed, pushdown read"
            elif isinstance(ours, Exception):
                outcome = "pushdown failed, DuckDB read"
            elif ours[0] == list(theirs[0]) and same_values(ours[1], theirs[1]):
                outcome = "same table"
            elif len(ours[1]) == len(theirs[1]):
                outcome = "same row count, other names or values"
            else:
                outcome = "other row count"
            outcomes[outcome] += 1
            if outcome != "same table" and len(examples) < args.show:
                brief = lambda r: str(r)[:300] if isinstance(r, Exception) else f"{r[0]} {r[1][:2]}"
                examples.append(f"{outcome}: {d}\n  pushdown: {brief(ours)}\n  DuckDB:   {brief(theirs)}")
    read_by_duckdb = sum(v for k, v in outcomes.items() if not k.startswith("DuckDB failed") and k != "both failed")
    same_rows = outcomes["same table"] + outcomes["same row count, other names or values"]
    print(f"{args.files} files (seed {args.seed})")
    for k, v in sorted(outcomes.items(), key=lambda kv: -kv[1]):
        print(f"  {k}: {v}")
    print(f"of the {read_by_duckdb} files DuckDB reads, pushdown reads {same_rows} with the same row count "
          f"({100 * same_rows / max(read_by_duckdb, 1):.0f}%), {outcomes['same table']} identically")
    for e in examples:
        print(e)


if __name__ == "__main__":
    sys.exit(main())
