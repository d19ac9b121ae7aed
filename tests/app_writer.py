"""An application driven step by step by a test: a separate process (stdlib sqlite3) that reads one
JSON command per line on stdin, runs it as ONE transaction, and answers one JSON line with when the
transaction began and when COMMIT returned (microseconds, the same clock the daemon stamps with).

Commands:
  {"op": "sql", "sql": "..."}          statements run inside BEGIN IMMEDIATE ... COMMIT
  {"op": "script", "sql": "..."}       run as given (the script brings its own BEGIN/COMMIT)
  {"op": "seed", "seed": 7, "n": 40}   the customers table with awkward values (quotes, NULLs, blobs,
                                       unicode, NUL inside text, big integers, floats)
  {"op": "query", "sql": "..."}        read only; rows in the answer (blobs as {"blob_hex": ...})
  {"op": "quit"}
Every answer: {"begin": us, "end": us, "rows": [...]} or {"error": "..."}.
"""

from __future__ import annotations

import json
import random
import sqlite3
import sys
import time


def now_us() -> int:
    return time.time_ns() // 1000


def encode(value):
    if isinstance(value, bytes):
        return {"blob_hex": value.hex()}
    return value


SCHEMA = """
CREATE TABLE IF NOT EXISTS customers(
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT, balance REAL, avatar BLOB, note TEXT);
CREATE TABLE IF NOT EXISTS tags(label TEXT, weight INTEGER);
"""

NAMES = ["O'Brien", "Zoë ☃", "Robert'); DROP TABLE customers;--", "plain", "tab\there", "line\nbreak", "", "ÅÄÖ"]


def seed(conn, rng: random.Random, n: int) -> None:
    for i in range(1, n + 1):
        name = f"{rng.choice(NAMES)} #{i}"
        email = None if i % 7 == 0 else f"user{i}@example.com"
        balance = rng.choice([0.1, 1e-7, -3.5, 100.0, 250.25, 99.99, 1e300, 12.0, 5000.5])
        avatar = rng.choice([None, b"", b"\x00\x00\x01", rng.randbytes(rng.randrange(1, 64))])
        note = rng.choice([None, "it's fine", "multi\nline 'quoted' \"double\"", "nul\x00inside", str(2**62)])
        conn.execute("INSERT INTO customers(id, name, email, balance, avatar, note) VALUES (?, ?, ?, ?, ?, ?)",
                     (i, name, email, balance, avatar, note))
    for label in ["red", "green", "blue", "green"]:
        conn.execute("INSERT INTO tags(label, weight) VALUES (?, ?)", (label, rng.randrange(100)))
    conn.execute("INSERT INTO tags(label, weight) VALUES (?, ?)", (None, 2**62))


def main() -> None:
    db = sys.argv[1]
    conn = sqlite3.connect(db, isolation_level=None, timeout=10)
    conn.execute("PRAGMA journal_mode=WAL")
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "quit":
            break
        answer: dict = {}
        try:
            begin = now_us()
            if op == "query":
                answer["rows"] = [[encode(v) for v in row] for row in conn.execute(cmd["sql"])]
            elif op == "script":
                conn.executescript(cmd["sql"])
            else:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if op == "seed":
                        for statement in SCHEMA.split(";"):
                            if statement.strip():
                                conn.execute(statement)
                        seed(conn, random.Random(cmd.get("seed", 0)), cmd.get("n", 40))
                    else:
                        for statement in cmd["sql"].split(";\n"):
                            if statement.strip():
                                conn.execute(statement)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            answer.update(begin=begin, end=now_us())
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    conn.close()


if __name__ == "__main__":
    main()
