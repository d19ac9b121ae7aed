"""Restore drills: prove a replica restores, without trusting anything but the restore itself.

A drill restores into a temporary directory with the full check (the recorded database checksum
over every page as it is written, then ``PRAGMA integrity_check``), and reports PASSED or FAILED
with timings.  A restore that had to skip a damaged snapshot still lands on the right state, but
the drill FAILS and names the object: the replica is degraded (retention will soon delete the
older snapshot the restore fell back to).  Random drills pick seeded targets across the window.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from dataclasses import dataclass, field

import apsw

from ..errors import ObjectCorrupt, ReplicaEmpty, RestoreError, StorageError
from ..replica.index import Replica
from ..storage import Storage
from ..timeparse import format_us
from .checks import run_check
from .restorer import Progress, restore


@dataclass
class DrillResult:
    target_us: int | None
    passed: bool
    txid: int | None
    commit_us: int | None
    seconds: float
    detail: str
    damaged: dict[str, str] = field(default_factory=dict)  # object key -> what is wrong with it
    target_txid: int | None = None  # a transaction target (``verify --mark``) instead of a moment
    label: str | None = None  # how to name the target ("mark before-migration")

    @property
    def target_text(self) -> str:
        if self.label is not None:
            return self.label
        if self.target_us is not None:
            return format_us(self.target_us)
        return f"txid {self.target_txid}" if self.target_txid is not None else "latest"

    def to_json(self) -> dict:
        return {
            "target": self.target_text,
            "result": "PASSED" if self.passed else "FAILED",
            "txid": self.txid,
            "commit_time": format_us(self.commit_us) if self.commit_us is not None else None,
            "seconds": round(self.seconds, 3),
            "detail": self.detail,
            "damaged": [{"key": k, "reason": v} for k, v in self.damaged.items()],
        }


def integrity_check(path: str) -> str:
    return run_check(path, "full")


def drill(storage: Storage, target_us: int | None = None, workdir: str | None = None,
          progress: Progress | None = None, target_txid: int | None = None, label: str | None = None) -> DrillResult:
    """Restore ``target_us`` (or ``target_txid``; neither: the latest point) with every check;
    a transaction target must be restored exactly, never from a kept snapshot near it."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=workdir, prefix="walrewind-verify-") as tmp:
        out = os.path.join(tmp, "drill.db")
        try:
            result = restore(storage, out, target_us=target_us, target_txid=target_txid, progress=progress,
                             check="full")
        except (RestoreError, ObjectCorrupt, StorageError, apsw.Error) as exc:
            return DrillResult(target_us, False, None, None, time.monotonic() - started, str(exc),
                               target_txid=target_txid, label=label)
    if target_txid is not None and (result.txid != target_txid or not result.exact):
        return DrillResult(target_us, False, result.txid, result.commit_us, time.monotonic() - started,
                           f"restored txid {result.txid} instead of {target_txid} (exact: {result.exact})",
                           target_txid=target_txid, label=label)
    detail = f"checksum {result.checksum:016x} verified, integrity_check {result.quick_check}"
    if result.skipped:
        damaged = "; ".join(f"{storage.url}/{k}: {why}" for k, why in result.skipped.items())
        detail = f"damaged snapshot skipped ({damaged}); the point restored from an older snapshot: {detail}"
    return DrillResult(target_us, not result.skipped, result.txid, result.commit_us, time.monotonic() - started,
                       detail, dict(result.skipped), target_txid, label)


def random_targets(storage: Storage, count: int, seed: int = 0) -> list[int]:
    replica = Replica(storage)
    if replica.empty:
        raise ReplicaEmpty(f"{storage.url}: the replica holds no restorable history")
    lo = replica.earliest_us()
    hi = replica.latest()[1]  # type: ignore[index]
    rng = random.Random(seed)
    return sorted(rng.randint(lo, hi) for _ in range(count))  # type: ignore[arg-type]
