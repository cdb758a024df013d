#!/usr/bin/env python3
"""The intermediary-tier figure: a GROUP BY with about a million groups through one
intermediary and through a tier of two, over the same storage node.

Usage: scripts/tier_figure.py BINARY DATA [--runs N] [--sql SQL]

DATA is a folder of tables (e.g. datasets/generated/tpch-sf1-all/parquet, lineitem with
1.5 million orders). One `storage-node serve` serves it; then
  1. one `intermediary serve`, and
  2. two `intermediary serve`, each the other's `--peer`,
answer the query N times (asked of the first intermediary). For each configuration the
script prints each run's wall time (the client process), each intermediary's peak
resident memory (VmHWM from /proc), and, for the tier, the bytes that crossed between the
two intermediaries (TCP bytes received on the sockets between their two ports, from
`ss -tin`, summed over both directions).
"""
import argparse
import os
import re
import socket
import subprocess
import sys
import time

TOKEN = "tier-figure-token"
SQL = (
    "SELECT count(*) AS big_orders, sum(q) AS quantity FROM "
    "(SELECT l_orderkey, sum(l_quantity) AS q FROM lineitem GROUP BY l_orderkey) "
    "WHERE q > 100"
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(binary, args):
    p = subprocess.Popen([binary] + args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline()
    url = next(w for w in line.split() if w.startswith("http://"))
    return p, url


def peak_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def bytes_between(port_a, port_b):
    """TCP bytes received on sockets whose two ends are the two intermediaries' ports
    (either side's listening port as the peer), both directions."""
    out = subprocess.run(["ss", "-tinH"], capture_output=True, text=True).stdout
    total, lines = 0, out.splitlines()
    for i, line in enumerate(lines):
        fields = line.split()
        if len(fields) < 5 or fields[0] != "ESTAB" or i + 1 >= len(lines):
            continue
        local, peer = fields[3], fields[4]
        ports = {local.rsplit(":", 1)[1], peer.rsplit(":", 1)[1]}
        info = lines[i + 1]
        if str(port_a) in ports or str(port_b) in ports:
            # Only sockets from one intermediary to the other: the process on the other
            # end of a connection to port_b is A (and vice versa); storage-node sockets
            # have neither port.
            if peer.endswith(f":{port_a}") or peer.endswith(f":{port_b}"):
                m = re.search(r"bytes_received:(\d+)", info)
                if m:
                    total += int(m.group(1))
    return total


def query(binary, url, sql):
    t = time.perf_counter()
    out = subprocess.run(
        [binary, "query", "--connect", url, "--token", TOKEN, "--output", "csv", sql],
        capture_output=True, text=True,
    )
    elapsed = time.perf_counter() - t
    if out.returncode != 0:
        sys.exit(f"query failed: {out.stderr.strip()}")
    return elapsed, out.stdout.strip().splitlines()[-1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("data")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sql", default=SQL)
    a = ap.parse_args()
    node, node_url = start(a.binary, ["storage-node", "serve", "--data", a.data, "--listen", "127.0.0.1:0",
                                      "--token", TOKEN, "--result-cache", "0"])
    try:
        for tier in (1, 2):
            ports = [free_port() for _ in range(tier)]
            procs = []
            for i, port in enumerate(ports):
                args = ["intermediary", "serve", "--listen", f"127.0.0.1:{port}", "--token", TOKEN,
                        "--storage-node", node_url]
                for j, other in enumerate(ports):
                    if j != i:
                        args += ["--peer", f"http://127.0.0.1:{other}"]
                procs.append(start(a.binary, args)[0])
            time.sleep(1)
            try:
                url = f"http://127.0.0.1:{ports[0]}"
                for r in range(a.runs):
                    elapsed, answer = query(a.binary, url, a.sql)
                    print(f"{tier} intermediar{'y' if tier == 1 else 'ies'}: run {r + 1}: {elapsed:.3f} s, answer {answer}")
                peaks = ", ".join(f"{peak_mib(p.pid):.0f} MiB" for p in procs)
                print(f"{tier} intermediar{'y' if tier == 1 else 'ies'}: peak resident memory per intermediary (entry first): {peaks}")
                if tier == 2:
                    moved = bytes_between(ports[0], ports[1])
                    print(f"2 intermediaries: bytes between them over {a.runs} runs: {moved} ({moved / a.runs / 2**20:.1f} MiB per run)")
            finally:
                for p in procs:
                    p.kill()
                    p.wait()
    finally:
        node.kill()
        node.wait()


if __name__ == "__main__":
    main()
