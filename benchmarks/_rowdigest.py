#!/usr/bin/env python
"""Content digest of table ``t`` (id, k, v): what compare.py's oracle compares restores with.

    python _rowdigest.py DB      ->  {"count": N, "max_id": M, "digest": D}

The digest is the sum, modulo 2**64, of a keyed hash of every row, so it is independent of row
order and can be extended: digest(rows 1..a) + digest(rows a+1..b) == digest(rows 1..b).  That
lets the benchmark compute the expected digest of "the database after transaction k" for any k
in one pass over the writer's deterministic rows (see _oracle.py), and lets a restored file be
judged on its content, not only on its row ids.

Runs in its own process with the stdlib ``sqlite3``: the benchmark process never opens a
database file itself (see _common.py).  Tables other than ``t`` (Litestream adds
``_litestream_seq`` and ``_litestream_lock``) are ignored.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys

MASK = (1 << 64) - 1


def row_hash(row_id: int, k: int, v: bytes) -> int:
    """The hash one row contributes (8 bytes of BLAKE2b over id, k and the payload)."""
    h = hashlib.blake2b(struct.pack("<qq", row_id, k), digest_size=8)
    h.update(v)
    return int.from_bytes(h.digest(), "little")


def digest_db(path: str) -> dict:
    import sqlite3

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        total, count, top = 0, 0, 0
        for row_id, k, v in conn.execute("SELECT id, k, v FROM t ORDER BY id"):
            total = (total + row_hash(row_id, k, v)) & MASK
            count += 1
            top = row_id
        return {"count": count, "max_id": top, "digest": total}
    finally:
        conn.close()


if __name__ == "__main__":
    print(json.dumps(digest_db(sys.argv[1])))
