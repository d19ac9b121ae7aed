"""A real application writing a database, run as its own process by the tests and benchmarks.

Usage: python writer.py '<json config>'.  Config keys (all optional but ``db``):
  lib             "sqlite3" | "apsw" | "libsql"
  txns / duration number of transactions, or seconds to run (whichever ends first)
  rate            transactions per second (0 = as fast as possible)
  seed            workload seed
  log             JSON-lines log: one line per commit {i, begin, end, checksum, kind}, one per checkpoint
  checksums       record the whole-database checksum after every commit (needs serialize())
  page_size, auto_vacuum ("full"), autocheckpoint (pages; 0 disables), busy_timeout_ms
  truncate_every  seconds between wal_checkpoint(TRUNCATE) calls made by the app itself
  truncate_at_end wal_checkpoint(TRUNCATE) after the last commit (sqld's timer, reproduced)
  big_every, rollback_every, vacuum_every, shrink_every   every N transactions, do that instead
  row_bytes       payload size of each inserted row (default 200)
  big_updates     big transactions rewrite big_rows existing rows instead of inserting (the database
                  stays small while the WAL grows as fast as with inserts)
  die_at          after this many commits, begin a transaction, write, and SIGKILL itself
  id_base         offset for row keys, so concurrent writers do not collide
  stop_file       stop cleanly as soon as this file exists
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time

from walrewind.engine.sqlite.pagehash import checksum_pages


def now_us() -> int:
    return time.time_ns() // 1000


def connect(cfg: dict):
    lib = cfg.get("lib", "sqlite3")
    if lib == "sqlite3":
        import sqlite3

        conn = sqlite3.connect(cfg["db"], isolation_level=None, timeout=cfg.get("busy_timeout_ms", 5000) / 1000)
        serialize = conn.serialize
    elif lib == "apsw":
        import apsw

        conn = apsw.Connection(cfg["db"])
        conn.set_busy_timeout(cfg.get("busy_timeout_ms", 5000))
        serialize = lambda: conn.serialize("main")  # noqa: E731
    elif lib == "libsql":
        import libsql

        conn = libsql.connect(cfg["db"], isolation_level=None)
        serialize = None
    else:
        raise SystemExit(f"unknown lib {lib}")
    return conn, serialize


def run(cfg: dict) -> None:
    conn, serialize = connect(cfg)
    ex = conn.execute
    if cfg.get("lib") == "libsql":
        ex(f"PRAGMA busy_timeout={cfg.get('busy_timeout_ms', 5000)}")
    if cfg.get("page_size"):
        ex(f"PRAGMA page_size={cfg['page_size']}")
    if cfg.get("auto_vacuum"):
        ex(f"PRAGMA auto_vacuum={cfg['auto_vacuum']}")
    ex("PRAGMA journal_mode=WAL")
    if "autocheckpoint" in cfg:
        ex(f"PRAGMA wal_autocheckpoint={cfg['autocheckpoint']}")
    if cfg.get("cache_size"):
        ex(f"PRAGMA cache_size={cfg['cache_size']}")
    ex("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, k INTEGER, v BLOB)")
    page_size = int(ex("PRAGMA page_size").fetchall()[0][0])
    rng = random.Random(cfg.get("seed", 0))
    want_sums = cfg.get("checksums", False) and serialize is not None
    row_bytes = cfg.get("row_bytes", 200)
    id_base = cfg.get("id_base", 0)
    top = ex("SELECT max(id) FROM t WHERE id > ? AND id <= ?", (id_base, id_base + 999_999)).fetchall()[0][0]
    next_id = [(top or id_base) + 1]
    log = open(cfg.get("log", os.devnull), "a", buffering=1)

    def checksum() -> str | None:
        if not want_sums:
            return None
        image = serialize()
        return f"{checksum_pages((i // page_size + 1, image[i : i + page_size]) for i in range(0, len(image), page_size)):016x}"

    log.write(json.dumps({"i": 0, "begin": 0, "end": 0, "checksum": checksum(), "kind": "initial"}) + "\n")
    txns = cfg.get("txns", 10**12)
    deadline = time.monotonic() + cfg.get("duration", 10**9)
    rate = cfg.get("rate", 0)
    start = time.monotonic()
    last_truncate = time.monotonic()

    def insert(n: int) -> None:
        for _ in range(n):
            ex("INSERT INTO t(id, k, v) VALUES (?, ?, ?)", (next_id[0], rng.randrange(1 << 30), rng.randbytes(row_bytes)))
            next_id[0] += 1

    def every(key: str, i: int) -> bool:
        n = cfg.get(key)
        return bool(n) and i % n == 0

    i = 0
    stop_file = cfg.get("stop_file")
    while i < txns and time.monotonic() < deadline and not (stop_file and os.path.exists(stop_file)):
        if rate:
            wait = start + i / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        if cfg.get("truncate_every") and time.monotonic() - last_truncate >= cfg["truncate_every"]:
            last_truncate = time.monotonic()
            t0 = now_us()
            row = ex("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()[0]
            log.write(json.dumps({"ckpt": "TRUNCATE", "start": t0, "dur_us": now_us() - t0, "busy": row[0]}) + "\n")
        if every("rollback_every", i + 1):
            ex("BEGIN")
            insert(rng.randrange(1, 300))
            ex("ROLLBACK")
        if cfg.get("die_at") is not None and i == cfg["die_at"]:
            ex("BEGIN")
            insert(500)
            os.kill(os.getpid(), signal.SIGKILL)
        i += 1
        kind = "small"
        begin = now_us()
        if every("vacuum_every", i):
            kind = "vacuum"
            ex("VACUUM")
        else:
            ex("BEGIN IMMEDIATE")
            if every("big_every", i):
                kind = "big"
                rows = cfg.get("big_rows", 3000)
                if cfg.get("big_updates") and next_id[0] - id_base > rows:
                    for _ in range(rows):
                        ex("UPDATE t SET v = ? WHERE id = ?", (rng.randbytes(row_bytes), rng.randrange(id_base + 1, next_id[0])))
                else:
                    insert(rows)
            elif every("shrink_every", i):
                kind = "shrink"
                ex("DELETE FROM t WHERE id % 10 != 0")
            else:
                op = rng.random()
                if op < 0.6 or next_id[0] <= id_base + 2:
                    insert(rng.randrange(1, 4))
                elif op < 0.85:
                    ex("UPDATE t SET v = ? WHERE id = ?", (rng.randbytes(row_bytes), rng.randrange(id_base + 1, next_id[0])))
                else:
                    ex("DELETE FROM t WHERE id = ?", (rng.randrange(id_base + 1, next_id[0]),))
            ex("COMMIT")
        end = now_us()
        log.write(json.dumps({"i": i, "begin": begin, "end": end, "checksum": checksum(), "kind": kind}) + "\n")
    if cfg.get("truncate_at_end"):  # like sqld's timer: the WAL is empty, under new salts, at the end
        t0 = now_us()
        row = ex("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()[0]
        log.write(json.dumps({"ckpt": "TRUNCATE", "start": t0, "dur_us": now_us() - t0, "busy": row[0]}) + "\n")
    log.close()
    if cfg.get("keep_wal"):
        os._exit(0)  # leave the -wal as it is (no checkpoint on close)
    conn.close()


if __name__ == "__main__":
    run(json.loads(sys.argv[1]))
