"""Retention: remove whole generations whose every point is older than the retention period.

A generation is restored from its snapshot plus every segment after it, so nothing inside a
generation can be dropped without a newer snapshot (the daemon writes one per generation).  What
*can* go is a generation whose newest point is older than ``now - retention``: none of its states
is inside the window any more.  The newest generation is always kept, however old, so the latest
state stays restorable.  The snapshot is deleted first: an interrupted prune leaves a generation
that is no longer restorable (and is finished on the next run), never one with a hole in it.
"""

from __future__ import annotations

import time

from . import layout
from .storage import Storage


def expired_generations(storage: Storage, retention_us: int, now_us: int | None = None) -> list[str]:
    now = now_us if now_us is not None else time.time_ns() // 1000
    cutoff = now - retention_us
    newest: dict[str, int] = {}
    has_snapshot: set[str] = set()
    for info in storage.list("generations/"):
        parsed = layout.parse_key(info.key)
        if parsed is None:
            continue
        ts = parsed.last_ts_us if isinstance(parsed, layout.SegmentKey) else parsed.ts_us
        newest[parsed.generation] = max(newest.get(parsed.generation, 0), ts)
        if isinstance(parsed, layout.SnapshotKey):
            has_snapshot.add(parsed.generation)
    restorable = sorted(g for g in newest if g in has_snapshot)
    if not restorable:
        return []
    keep = restorable[-1]
    # Leftovers without a snapshot (an interrupted prune) older than the newest generation go too.
    return sorted(g for g, ts in newest.items() if g < keep and (ts < cutoff or g not in has_snapshot))


def prune(storage: Storage, retention_us: int, now_us: int | None = None) -> list[str]:
    """Delete expired generations; returns their ids."""
    gone = expired_generations(storage, retention_us, now_us)
    for gen in gone:
        keys = [i.key for i in storage.list(f"generations/{gen}/")]
        keys.sort(key=lambda k: (0 if "/snapshots/" in k else 1, k))
        for key in keys:
            storage.delete(key)
    return gone
