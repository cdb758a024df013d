#!/usr/bin/env python3
"""The figure of checkpointed aggregates: TPC-H Q1 through one storage node and an
intermediary with --fold-on-nodes; the node is killed (SIGKILL) once about half the
tasks are folded, restarted on the same address, and the query run again. Prints, for a
node with and without --checkpoint-dir, the tasks the second run ran again and its time
(the intermediary's `query done in`). Without checkpoints the node is killed after half
the time of a first, complete run.

    scripts/checkpoint_figure.py PUSHDOWN_BINARY DATA_DIR [--runs N] [--every SECONDS]

DATA_DIR holds lineitem (e.g. datasets/generated/tpch-sf1-all/parquet). Ports 47101 and
47102 on loopback; checkpoints in a temporary folder.
"""
import argparse
import json
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time

Q1 = open(os.path.join(os.path.dirname(__file__), "..", "datasets/queries/tpch/q1.sql")).read()


def folded_in(folder):
    """Tasks the checkpoints in `folder` hold (their manifests' `folded` maps)."""
    n = 0
    for name in os.listdir(folder):
        if not name.endswith(".ckpt"):
            continue
        try:
            b = open(os.path.join(folder, name), "rb").read()
            (length,) = struct.unpack("<I", b[8:12])
            n += len(json.loads(b[12 : 12 + length])["folded"])
        except (OSError, ValueError, struct.error):
            pass
    return n


def same(a, b):
    """Equal CSV results: exact text, but averages (floats) within 1e-12 relative, as the
    order partial sums are merged in changes their last digits."""
    rows = lambda t: [l.split(",") for l in t.splitlines()]
    if len(rows(a)) != len(rows(b)):
        return False
    for x, y in zip(rows(a), rows(b)):
        for u, v in zip(x, y):
            if u != v and ("." not in u or abs(float(u) - float(v)) > 1e-12 * max(abs(float(v)), 1.0)):
                return False
    return True


def start(args, log):
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True)
    p.stdout.readline()  # the "serving ... on URL" line: it listens
    return p


def run_query(binary, url):
    out = subprocess.run([binary, "query", "--connect", url, "--output", "csv", Q1],
                         capture_output=True, text=True)
    return out.returncode == 0, out.stdout, out.stderr


def last_report(log_path):
    lines = [l for l in open(log_path) if "query done in" in l]
    line = lines[-1]
    seconds = float(re.search(r"query done in ([0-9.]+) s", line).group(1))
    folded = re.search(r"fold jobs drained\): (\d+), of which held from checkpoints \(not run again\): (\d+)", line)
    return seconds, int(folded.group(1)), int(folded.group(2))


def one(binary, data, checkpoints, every):
    node_addr, im_addr = "127.0.0.1:47101", "127.0.0.1:47102"
    work = tempfile.mkdtemp(prefix="pushdown-ckpt-")
    node_log = open(os.path.join(work, "node.log"), "w")
    im_path = os.path.join(work, "intermediary.log")
    im_log = open(im_path, "w")
    node_args = [binary, "storage-node", "serve", "--data", data, "--listen", node_addr,
                 "--result-cache", "0", "--registry", os.path.join(work, "registry")]
    if checkpoints:
        node_args += ["--checkpoint-dir", os.path.join(work, "ckpt"), "--checkpoint-every", str(every)]
    node = start(node_args, node_log)
    env = dict(os.environ, RUST_LOG="warn,pushdown_flight=info")
    im = subprocess.Popen([binary, "intermediary", "serve", "--storage-node", "http://" + node_addr,
                           "--listen", im_addr, "--fold-on-nodes", "--registry", os.path.join(work, "registry")],
                          stdout=subprocess.PIPE, stderr=im_log, text=True, env=env)
    im.stdout.readline()
    url = "http://" + im_addr
    ok, expected, err = run_query(binary, url)  # warm-up and the answer to compare with
    assert ok, err
    warm, total, _ = last_report(im_path)
    query = subprocess.Popen([binary, "query", "--connect", url, "--output", "csv", Q1],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    if checkpoints:
        while folded_in(os.path.join(work, "ckpt")) < total // 2 and query.poll() is None:
            time.sleep(0.001)
    else:
        time.sleep(warm / 2)
    node.send_signal(signal.SIGSTOP)
    killed_at = time.monotonic() - started
    held = folded_in(os.path.join(work, "ckpt")) if checkpoints else 0
    node.kill()
    node.wait()
    query.wait()
    node = start(node_args, node_log)
    ok, answer, err = run_query(binary, url)
    assert ok, err
    assert same(answer, expected), (answer, expected)
    seconds, folded, from_checkpoint = last_report(im_path)
    node.kill()
    im.kill()
    return dict(total=total, killed_at=killed_at, held=held, rerun=seconds,
                recomputed=folded - from_checkpoint, from_checkpoint=from_checkpoint,
                first_failed=query.returncode != 0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("data")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--every", type=float, default=0.0)
    a = ap.parse_args()
    print("| node | killed after | tasks held in checkpoints | first run failed | tasks run again on the second run (of all) | second run |")
    print("|---|---:|---:|---|---:|---:|")
    for checkpoints in (True, False):
        for _ in range(a.runs):
            r = one(a.binary, a.data, checkpoints, a.every)
            label = f"--checkpoint-dir, every {a.every} s" if checkpoints else "no checkpoints"
            print(f"| {label} | {r['killed_at']:.3f} s | {r['held']} | {r['first_failed']} | "
                  f"{r['recomputed']} (of {r['total']}) | {r['rerun']:.3f} s |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
