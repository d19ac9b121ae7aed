"""What one database of a running fleet looks like right now: a ``DatabaseSample``.

Built from the fleet's member (state, failures, counters carried over from earlier attempts),
its running replicator (phase, lag, ReplicatorStats), the start-up LIST (the oldest restorable
snapshot), and the maintenance status (the last retention run's window start, the last drill).
Only reads: called on the metrics thread at every scrape and by the fleet every couple of
seconds for the health file that ``walrewind status`` reads.  Counters are totals since the
process started (Prometheus counters must not go back when a failing database is restarted).
"""

from __future__ import annotations

import json
import operator
import os
import time
import weakref
from typing import Any

from ..errors import LeaseError, TimestampError
from ..logs import brief
from ..timeparse import parse_timestamp_us
from .metrics import DatabaseSample

# ReplicatorStats fields carried over from one attempt of a member to the next
CARRIED = ("uploaded_transactions", "uploaded_bytes", "resyncs", "upload_errors", "spool_full_events", "yields")


def carry(totals: dict[str, int], stats: Any) -> None:
    """Add a finished attempt's counters to the member's totals."""
    for name in CARRIED:
        totals[name] = totals.get(name, 0) + int(getattr(stats, name, 0) or 0)


def _fenced(error: BaseException | None) -> bool:
    while error is not None:
        if isinstance(error, LeaseError):
            return True
        error = error.__cause__
    return False


_MAINTENANCE_TTL = 60.0  # drills and prunes run hourly at most: their results are read this often
_maintenance_seen: "weakref.WeakKeyDictionary[Any, tuple[float, tuple]]" = weakref.WeakKeyDictionary()


def _maintenance(replicator: Any) -> tuple[int | None, int | None, bool | None]:
    """(retention's window start, last drill time, last drill passed), cached for _MAINTENANCE_TTL
    (the scheduler's status() formats every task: the costliest part of a sample)."""
    maintenance = getattr(replicator, "maintenance", None)
    if maintenance is None:
        return None, None, None
    cached = _maintenance_seen.get(maintenance)
    if cached is not None and time.monotonic() - cached[0] < _MAINTENANCE_TTL:
        return cached[1]
    found = _read_maintenance(maintenance)
    _maintenance_seen[maintenance] = (time.monotonic(), found)
    return found


def _read_maintenance(maintenance: Any) -> tuple[int | None, int | None, bool | None]:
    tasks = maintenance.status().get("tasks", {})
    window = None
    last_prune = (tasks.get("retention") or {}).get("last") or {}
    detail = last_prune.get("detail")
    if last_prune.get("result") == "ok" and isinstance(detail, dict) and detail.get("window_start"):
        try:
            window = parse_timestamp_us(detail["window_start"])
        except TimestampError:
            window = None
    drill = (tasks.get("drill") or {}).get("last") or {}
    if not drill or drill.get("result") == "error":
        return window, None, None
    return window, drill.get("at_us"), drill.get("result") == "PASSED"


def member_sample(member: Any, now_us: int | None = None) -> DatabaseSample:
    db = member.db
    worker = member.worker
    r = worker.replicator if worker is not None else None
    totals = dict(member.totals)
    if r is not None:
        carry(totals, r.stats)
    sample = DatabaseSample(
        name=db.name, state="starting", path=os.path.abspath(db.path), replica=db.replica_display,
        shipped_transactions=totals.get("uploaded_transactions", 0),
        shipped_bytes=totals.get("uploaded_bytes", 0),
        resyncs=totals.get("resyncs", 0),
        errors={"upload": totals.get("upload_errors", 0), "spool_full": totals.get("spool_full_events", 0),
                "failure": member.failures_total},
        checkpoints_yielded=totals.get("yields", 0),
        state_since_us=member.state_since_us,
    )
    lag = r.lag_seconds(now_us) if r is not None else None  # once: the phase depends on it too
    if member.state in ("retrying", "failed"):
        sample.state = "fenced" if _fenced(member.error) else member.state
    elif member.state in ("stopping", "stopped", "waiting"):
        sample.state = {"waiting": "starting"}.get(member.state, "stopped")
    elif r is not None:
        sample.state = r.phase_with(lag)
    if member.error is not None and sample.state != "replicating":
        sample.error = brief(member.error)
    if r is None:
        return sample
    stats = r.stats
    if stats.last_error and sample.state in ("spooling", "behind") and sample.error is None:
        sample.error = stats.last_error
    sample.lag_seconds = lag
    sample.last_upload_us = stats.last_upload_us or None
    sample.backlog_bytes = stats.backlog_bytes
    sample.backlog_transactions = stats.backlog_txns
    sample.unreachable_since_us = stats.replica_unreachable_since_us or None
    window, sample.last_verify_us, sample.last_verify_ok = _maintenance(r)
    startup = r.startup
    earliest = getattr(getattr(startup, "found", None), "earliest_snapshot_us", None)
    if earliest is None and r.ready.is_set():
        earliest = r.pending_snapshot_ts or None  # a new replica: our own base snapshot
    if earliest is not None or window is not None:
        sample.restorable_since_us = max(x for x in (earliest, window) if x is not None)
    if r.ready.is_set() and stats.uploaded_commit_us:
        sample.restorable_until_us = stats.uploaded_commit_us
    return sample


REUSE_SECONDS = 60.0  # a quiet member's health entry is rebuilt at least this often


_QUIET_STATS = operator.attrgetter(
    "transactions", "uploaded_txid", "last_upload_us", "backlog_bytes", "upload_errors", "resyncs", "yields",
    "spool_full_events", "replica_unreachable_since_us", "last_error")


def quiet_key(member: Any) -> tuple | None:
    """Everything a replicating member's sample depends on while nothing is owed to the replica
    (lag 0), or None when it is not simply replicating.  Equal keys, lag 0: the same entry again
    (1,000 sqld namespaces, 900 of them idle: most of the fleet loop's CPU was these samples)."""
    worker = member.worker
    r = worker.replicator if worker is not None else None
    if r is None or member.state != "replicating" or member.error is not None:
        return None
    return (member.state_since_us, member.failures, member.failures_total, _QUIET_STATS(r.stats),
            r.fatal is None, r.overflow is None, r.pending_snapshot is None, r.ready.is_set(), r.startup_done,
            len(r.observations))


def health_entry(member: Any, cache: dict, now: float) -> bytes:
    """``member.health()`` with its sample, as the health file's JSON, reused from ``cache``
    (member -> (key, time, encoded entry)) while its quiet_key is unchanged, its lag was 0 and it
    is younger than REUSE_SECONDS.  Encoded once: the file of 1,000 quiet namespaces is then a
    join of bytes (``json.dumps`` of every entry was a third of a publication)."""
    key = quiet_key(member)
    cached = cache.get(member)
    if key is not None and cached is not None and cached[0] == key and now - cached[1] < REUSE_SECONDS:
        return cached[2]
    entry = dict(member.health(), sample=member_sample(member).to_json())
    encoded = json.dumps(entry, separators=(",", ":")).encode()
    if key is not None and entry["sample"].get("lag_seconds") == 0:
        cache[member] = (key, now, encoded)
    else:
        cache.pop(member, None)
    return encoded


def now_us() -> int:
    return time.time_ns() // 1000
