#!/usr/bin/env python3
"""A storage node's resident memory with result streams nobody reads.

Starts `pushdown storage-node serve --max-tasks 1` over DIR (a folder of Parquet tables),
opens N DoGet streams of whole row groups (every column) of TABLE without reading them,
and prints the node's resident memory (VmRSS) when idle and every second for SECONDS.
Usage: unread_streams.py PUSHDOWN DIR TABLE [N] [SECONDS]
"""
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pyarrow.flight as fl


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main():
    pushdown, data, table = sys.argv[1:4]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 10
    seconds = int(sys.argv[5]) if len(sys.argv) > 5 else 10
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    registry = tempfile.mkdtemp()
    node = subprocess.Popen(
        [pushdown, "storage-node", "serve", "--data", data, "--listen", f"127.0.0.1:{port}",
         "--max-tasks", "1", "--registry", registry],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    node.stdout.readline()
    try:
        client = fl.FlightClient(f"grpc://127.0.0.1:{port}")
        body = b"".join(r.body.to_pybytes() for r in client.do_action(fl.Action("tables", b"")))
        t = next(t for t in json.loads(body) if t["name"] == table)
        time.sleep(1)
        idle = rss_mib(node.pid)
        print(f"idle: {idle:.0f} MiB")
        f = t["files"][0]
        names = [field["name"] for field in t["schema"]["fields"]]
        readers = []

        def open_stream(unit):
            task = {"file": f["path"], "format": t["format"], "unit": unit, "predicate": None,
                    "pushdown": {"Project": [[c, {"Column": c}] for c in names]},
                    "output_schema": t["schema"]}
            try:
                readers.append(client.do_get(fl.Ticket(json.dumps(task).encode())))
            except Exception as e:  # a stream refused or cut is reported, not fatal
                print("stream:", e)

        for unit in f["units"][:n]:
            threading.Thread(target=open_stream, args=(unit,), daemon=True).start()
        peak = idle
        for i in range(seconds):
            time.sleep(1)
            now = rss_mib(node.pid)
            peak = max(peak, now)
            print(f"{i + 1:3d} s: {now:.0f} MiB")
        print(f"{n} unread streams: peak {peak:.0f} MiB, {peak / idle:.2f}x idle")
    finally:
        node.kill()


main()
