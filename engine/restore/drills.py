"""Restore drills: prove a replica restores, without trusting anything but the restore itself.

A drill restores into a temporary directory (the restore already checks the recorded database
checksum and quick_check), then runs the full ``PRAGMA integrity_check``, and reports PASSED or
FAILED with timings.  Random drills pick seeded targets across the restorable window.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from dataclasses import dataclass

import apsw

from ..errors import ObjectCorrupt, RestoreError, StorageError
from ..replica.index import Replica
from ..storage import Storage
from ..timeparse import format_us
from .restorer import restore


@dataclass
class DrillResult:
    target_us: int | None
    passed: bool
    txid: int | None
    commit_us: int | None
    seconds: float
    detail: str

    def to_json(self) -> dict:
        return {
            "target": format_us(self.target_us) if self.target_us is not None else "latest",
            "result": "PASSED" if self.passed else "FAILED",
            "txid": self.txid,
            "commit_time": format_us(self.commit_us) if self.commit_us is not None else None,
            "seconds": round(self.seconds, 3),
            "detail": self.detail,
        }


def integrity_check(path: str) -> str:
    conn = apsw.Connection(f"file:{path}?immutable=1", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    try:
        rows = [r[0] for r in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()
    return "ok" if rows == ["ok"] else "; ".join(map(str, rows[:5]))


def drill(storage: Storage, target_us: int | None = None, workdir: str | None = None) -> DrillResult:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=workdir, prefix="walrewind-verify-") as tmp:
        out = os.path.join(tmp, "drill.db")
        try:
            result = restore(storage, out, target_us=target_us)
            check = integrity_check(out)
        except (RestoreError, ObjectCorrupt, StorageError, apsw.Error) as exc:
            return DrillResult(target_us, False, None, None, time.monotonic() - started, str(exc))
    passed = check == "ok"
    detail = f"checksum {result.checksum:016x} verified, integrity_check {check}"
    return DrillResult(target_us, passed, result.txid, result.commit_us, time.monotonic() - started, detail)


def random_targets(storage: Storage, count: int, seed: int = 0) -> list[int]:
    replica = Replica(storage)
    if replica.empty:
        raise RestoreError(f"{storage.url}: the replica holds no restorable history")
    lo = replica.earliest_us()
    hi = replica.latest()[1]  # type: ignore[index]
    rng = random.Random(seed)
    return sorted(rng.randint(lo, hi) for _ in range(count))  # type: ignore[arg-type]
