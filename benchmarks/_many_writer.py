#!/usr/bin/env python
"""Many small databases from one process (the "many" row of compare.py).

    python _many_writer.py '{"dbs": [...], "create": true}'
    python _many_writer.py '{"dbs": [...], "write": [0, 10, ...], "rate": 1, "duration": 30, "seed": S, "logdir": D}'

``create`` makes every database (WAL mode, tests/writer.py's table t).  ``write`` runs, for each
listed database, the steady row's transaction (5 rows x 200 B inserted, rows drawn exactly as
tests/writer.py draws them from ``random.Random(seed + index)``) at ``rate`` per second, the
databases' schedules staggered over the second, and logs each commit like tests/writer.py does
(``logdir/db<index>.log``: i, begin, end), so _oracle.InsertOnly judges their restores.
One process writes them all: a process per database would cost the box more than the replicator.
Stdlib sqlite3 only; the benchmark process never opens these files.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import sys
import time


def now_us() -> int:
    return time.time_ns() // 1000


def create(paths: list[str]) -> None:
    for p in paths:
        c = sqlite3.connect(p, isolation_level=None)
        c.execute("PRAGMA page_size=4096")
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, k INTEGER, v BLOB)")
        c.close()


def write(cfg: dict) -> None:
    idx = cfg["write"]
    conns = {i: sqlite3.connect(cfg["dbs"][i], isolation_level=None, timeout=5) for i in idx}
    rngs = {i: random.Random(cfg["seed"] + i) for i in idx}
    logs = {i: open(os.path.join(cfg["logdir"], f"db{i:04d}.log"), "w", buffering=1) for i in idx}
    next_id = {i: 1 for i in idx}
    count = {i: 0 for i in idx}
    for i in idx:
        logs[i].write(json.dumps({"i": 0, "begin": 0, "end": 0, "checksum": None, "kind": "initial"}) + "\n")
    rate, rows, row_bytes = cfg.get("rate", 1), cfg.get("rows", 5), cfg.get("row_bytes", 200)
    # (due time, db): db n of m starts n/m of a period after the start
    start = time.monotonic()
    period = 1.0 / rate
    schedule = sorted((start + n * period / len(idx), i) for n, i in enumerate(idx))
    end = start + cfg["duration"]
    while schedule:
        due, i = schedule.pop(0)
        if due >= end:
            break
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        c, rng = conns[i], rngs[i]
        begin = now_us()
        c.execute("BEGIN IMMEDIATE")
        for _ in range(rows):
            c.execute("INSERT INTO t(id, k, v) VALUES (?, ?, ?)", (next_id[i], rng.randrange(1 << 30), rng.randbytes(row_bytes)))
            next_id[i] += 1
        c.execute("COMMIT")
        count[i] += 1
        logs[i].write(json.dumps({"i": count[i], "begin": begin, "end": now_us(), "checksum": None, "kind": "big"}) + "\n")
        schedule.append((due + period, i))
        schedule.sort()
    for i in idx:
        logs[i].close()
        conns[i].close()


if __name__ == "__main__":
    config = json.loads(sys.argv[1])
    if config.get("create"):
        create(config["dbs"])
    if config.get("write"):
        write(config)
