"""Is a restore exact?  The expected content after every transaction of an insert-only writer.

compare.py's workloads are insert-only (tests/writer.py with ``big_every: 1``): transaction i
inserts ``rows_per_txn`` rows with the next ids, and every row's (k, v) comes from the writer's
seeded ``random.Random``.  So "the database right after transaction k" is known exactly without
the writer serialising the database after every commit (which costs it a whole-database hash per
commit and would starve a 2-core box in a 300 MB burst), and it is the same oracle for both
tools: Litestream adds its own tables, so whole-file checksums could never match its restores.

A restore is judged in two steps:

1. its ``max(id)`` names the transaction k it reached (``count(*) == max(id)`` and the rows of
   whole transactions, or the restore is *wrong*);
2. its content digest (``_rowdigest.py``) must equal the digest of exactly those rows, computed
   here from the writer's seed: a restore with the right ids but damaged rows is *wrong*, never
   "exact".

Then k is compared with ``harness.allowed_range(T)``: every transaction whose COMMIT returned
more than 5 ms before T must be in, none that began after T may be.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from dataclasses import dataclass, field

from _common import EXACT_MARGIN_US, allowed_range
from _rowdigest import MASK, row_hash

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable


def digest_file(path: str) -> dict:
    """{count, max_id, digest} of table t of a database file, read in a subprocess."""
    out = subprocess.run([PY, os.path.join(HERE, "_rowdigest.py"), path], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@dataclass
class InsertOnly:
    """What an insert-only tests/writer.py run writes on top of a known base.

    ``base`` is the digest of the database before the writer started (``digest_file`` of the
    source; rows 1..base["max_id"]).  ``txns`` is the writer's log (``harness.read_log``).
    """

    seed: int
    rows_per_txn: int
    row_bytes: int
    txns: list[dict]
    base: dict = field(default_factory=lambda: {"count": 0, "max_id": 0, "digest": 0})
    _cache: dict[int, int] = field(default_factory=dict)

    @property
    def last(self) -> int:
        return self.txns[-1]["i"]

    def index_of(self, restored: dict) -> int | None:
        """The transaction a restored {count, max_id} reached, or None if it is no writer state."""
        extra = restored["max_id"] - self.base["max_id"]
        if restored["count"] != restored["max_id"] or extra < 0 or extra % self.rows_per_txn:
            return None
        k = extra // self.rows_per_txn
        return k if k <= self.last else None

    def expected(self, ks) -> dict[int, int]:
        """Digest of the database after each transaction in ``ks`` (one pass over the rows)."""
        want = sorted({k for k in ks if k not in self._cache})
        if want:
            rng = random.Random(self.seed)
            total, row_id, k = self.base["digest"], self.base["max_id"], 0
            self._cache.setdefault(0, total)
            for goal in want:
                while k < goal:
                    for _ in range(self.rows_per_txn):
                        row_id += 1
                        total = (total + row_hash(row_id, rng.randrange(1 << 30), rng.randbytes(self.row_bytes))) & MASK
                    k += 1
                self._cache[goal] = total
        return {k: self._cache[k] for k in ks}

    def judge(self, target_us: int | None, restored: dict | None, error: str | None = None,
              margin_us: int = EXACT_MARGIN_US) -> dict:
        """Verdict for one restore (target None = latest: it must be the writer's last state)."""
        if target_us is None:
            lo = hi = self.last
        else:
            lo, hi = allowed_range(self.txns, target_us, margin_us)
        v: dict = {"target_us": target_us, "allowed": [lo, hi], "k": None, "exact": False, "extra": False,
                   "wrong": False, "missing_txns": 0, "missing_ms": 0.0, "extra_txns": 0, "extra_ms": 0.0,
                   "error": error}
        if restored is None:
            return v
        k = self.index_of(restored)
        if k is None or self.expected([k])[k] != restored["digest"]:
            v["wrong"] = True
            v["error"] = f"restored content is no state of the writer: {restored}"
            return v
        v["k"] = k
        by_i = {t["i"]: t for t in self.txns}
        if k < lo:
            v["missing_txns"] = lo - k
            if target_us is not None:
                v["missing_ms"] = (target_us - by_i[k + 1]["end"]) / 1000
        elif k > hi:
            v["extra"] = True
            v["extra_txns"] = k - hi
            if target_us is not None:
                v["extra_ms"] = (by_i[k]["begin"] - target_us) / 1000
        else:
            v["exact"] = True
        return v


def random_targets(txns: list[dict], count: int, seed: int, start_us: int | None = None,
                   end_us: int | None = None) -> list[int]:
    """``count`` seeded targets in [start, end] (default: first BEGIN to last COMMIT end).

    Half are whole seconds, as people type them (accuracy.py does the same); a whole-second
    target that would fall before ``start`` is moved up to the next whole second.
    """
    lo = start_us if start_us is not None else txns[1]["begin"]
    hi = end_us if end_us is not None else txns[-1]["end"]
    rng = random.Random(seed)
    out = []
    for n in range(count):
        t = rng.randint(lo, hi)
        if n % 2 == 1:
            whole = t - t % 1_000_000
            t = whole if whole >= lo else whole + 1_000_000
            t = min(t, hi)
        out.append(t)
    return out
