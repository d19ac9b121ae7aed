"""Background maintenance of one replica: periodic snapshots, retention, compaction, restore drills.

Why a scheduler at all: a restore reads one snapshot plus every segment after it, so without new
snapshots restore time grows with the age of the generation.  Periodic snapshots (built from the
replica by ``snapshotter.build_snapshot``, never from the live database) keep it flat; retention
and compaction bound storage; drills prove, on a schedule, that the replica really restores.

Design choices:

* **One task at a time, in order of how overdue it is.**  Every task reads (and snapshots and
  drills write) whole databases; running them concurrently would only compete for the same disk,
  CPU and bandwidth as the daemon itself.  Ordering by due time means a task that keeps being due
  (or takes long) cannot starve the others: after it, whatever became due meanwhile runs next.
* **Injected clock.**  Every decision uses ``clock()`` (µs), so tests and the history benchmark
  drive hours of schedule in milliseconds; the only real waiting is ``run_forever``'s
  ``stop.wait``.
* **Failures are data, not exceptions.**  A task that raises is recorded (``status()``), logged,
  and retried after ``min(interval, retry_us)``; nothing propagates to the daemon.
* **The snapshot decision comes from one LIST**, never from opening objects: the newest
  generation's newest snapshot (by txid), its key's ``ts_us`` (the commit time of the transaction
  it holds) and the listed sizes.  Volume trigger: the *compressed* bytes of the segments after that
  snapshot exceed ``snapshot_volume`` x the *compressed* size of the snapshot object.  Both sides are
  zstd-compressed the same way, so the ratio approximates "history to replay vs. database to
  download", which is what restore time depends on, without knowing the uncompressed database size.
  It is a proxy: a workload whose pages compress much better or worse than the database as a whole
  skews it.  Because each look is a LIST (on S3, one request per 1000 keys), looks are paced
  adaptively: the next one is at half the time the observed byte rate says the threshold needs
  (so a rising rate is caught and looks converge on the crossing), clamped to
  ``[snapshot_check_min_us, snapshot_check_max_us]`` and never after the interval is due.
* **Nothing new, no snapshot**: an idle database gets no fresh snapshot every day; a snapshot is
  only built when the generation has transactions after its newest snapshot.

Threads: one thread drives ``run_due``/``run_forever``; ``status()``, ``next_due_us()`` and
``request()`` may be called from any thread.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..replica.index import Replica
from ..restore.drills import drill
from ..storage import Storage
from ..timeparse import format_us
from .snapshots import build_snapshot

SECOND_US = 1_000_000
MINUTE_US = 60 * SECOND_US
HOUR_US = 60 * MINUTE_US
DAY_US = 24 * HOUR_US

TASKS = ("snapshot", "retention", "compaction", "drill")
Clock = Callable[[], int]
TaskFn = Callable[[int], Any]  # called with now_us; returns a report (anything JSON-able-ish)

_LOG = logging.getLogger("walrewind.maintenance")


def _wall_clock_us() -> int:
    return time.time_ns() // 1000


def retention_interval_us(retention_us: int | None) -> int | None:
    """How often to prune for a retention period: ``min(retention / 10, 1 h)``.

    A tenth of the period bounds how far past its retention the oldest data can live (10 %); the
    1 h cap keeps long retentions from keeping expired data for days.  None = retention off.
    """
    if not retention_us:
        return None
    return max(MINUTE_US, min(retention_us // 10, HOUR_US))


@dataclass
class MaintenancePolicy:
    """When each task is due.  ``None`` (or 0) disables a trigger or task."""

    snapshot_interval_us: int | None = DAY_US  # since the newest snapshot of the newest generation
    snapshot_volume: float = 4.0  # segment bytes since that snapshot / its size (both compressed)
    retention_interval_us: int | None = HOUR_US  # only used when a prune callable is given
    compact_interval_us: int | None = 10 * MINUTE_US  # only used when a compact callable is given
    verify_interval_us: int | None = None  # drills are off by default
    snapshot_check_min_us: int = 10 * SECOND_US  # bounds on how often the replica is LISTed ...
    snapshot_check_max_us: int = 10 * MINUTE_US  # ... to decide whether a snapshot is due
    retry_us: int = 10 * MINUTE_US  # a failed task is retried after min(its interval, this)

    @classmethod
    def for_retention(cls, retention_us: int | None, **kwargs: Any) -> "MaintenancePolicy":
        """The default policy with the prune interval derived from a retention period."""
        kwargs.setdefault("retention_interval_us", retention_interval_us(retention_us))
        return cls(**kwargs)


@dataclass
class TaskResult:
    task: str  # one of TASKS
    result: str  # "ok" | "error" (snapshot, retention, compaction); "PASSED" | "FAILED" | "error" (drill)
    started_us: int  # clock time the task started
    seconds: float  # how long it ran (monotonic)
    detail: Any  # human text or a JSON-able dict (the callable's report)

    @property
    def ok(self) -> bool:
        return self.result in ("ok", "PASSED")

    def to_json(self) -> dict:
        return {
            "task": self.task,
            "result": self.result,
            "at": format_us(self.started_us),
            "at_us": self.started_us,
            "seconds": round(self.seconds, 3),
            "detail": self.detail,
        }


LIST_LIMIT = 20  # longer lists in a report (e.g. every deleted key) are cut in status()


def _shrink(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shrink(v) for k, v in value.items()}
    if isinstance(value, list):
        head = [_shrink(v) for v in value[:LIST_LIMIT]]
        return head + [f"... {len(value) - LIST_LIMIT} more"] if len(value) > LIST_LIMIT else head
    return value


def _jsonable(report: Any) -> Any:
    """A callable's report as plain, bounded JSON data: the daemon writes status() into a JSON
    file on every tick, and a prune report listing 80,000 deleted keys must not go there."""
    if report is None:
        return None
    if hasattr(report, "to_json"):
        report = report.to_json()
    elif dataclasses.is_dataclass(report) and not isinstance(report, type):
        report = dataclasses.asdict(report)
    return _shrink(json.loads(json.dumps(report, default=str)))


class Maintenance:
    """Decides and runs the maintenance tasks of one replica, one at a time.

    ``prune`` and ``compact`` are callables taking ``now_us`` (the daemon passes e.g.
    ``lambda now: retention.prune(storage, policy, now)``); None disables that task.
    """

    def __init__(
        self,
        storage: Storage,
        policy: MaintenancePolicy | None = None,
        prune: TaskFn | None = None,
        compact: TaskFn | None = None,
        clock: Clock = _wall_clock_us,
        workdir: str | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        self.storage = storage
        self.policy = policy or MaintenancePolicy()
        self.prune = prune
        self.compact = compact
        self.clock = clock
        self.workdir = workdir
        self.log = log or _LOG
        self._lock = threading.Lock()
        self._running: str | None = None
        self._last: dict[str, TaskResult] = {}
        self._failures: dict[str, int] = {t: 0 for t in TASKS}
        self._check: dict[str, Any] = {}  # the last snapshot look: what was seen, why (not) snapshotting
        self._rate: float | None = None  # segment bytes per µs, from the last looks
        now = clock()
        p = self.policy
        snapshots_on = bool(p.snapshot_interval_us) or p.snapshot_volume > 0
        # Retention and compaction are due at start (a restarting daemon must not postpone them
        # forever); a drill first runs one interval after start (no restore storm on restart loops).
        self._next: dict[str, int | None] = {
            "snapshot": now if snapshots_on else None,
            "retention": now if prune is not None and p.retention_interval_us else None,
            "compaction": now if compact is not None and p.compact_interval_us else None,
            "drill": now + p.verify_interval_us if p.verify_interval_us else None,
        }

    # ------------------------------------------------------------------------------ scheduling
    def next_due_us(self) -> int | None:
        """The earliest time any task is due (None when every task is disabled)."""
        with self._lock:
            due = [t for t in self._next.values() if t is not None]
        return min(due) if due else None

    def request(self, task: str, now_us: int | None = None) -> None:
        """Make ``task`` due now (e.g. an operator asked for a snapshot); ignored if disabled."""
        with self._lock:
            if self._next.get(task) is not None:
                self._next[task] = now_us if now_us is not None else self.clock()

    def run_due(self, now_us: int | None = None, stop: threading.Event | None = None) -> list[TaskResult]:
        """Run every task that is due, most overdue first; returns what ran (a snapshot look that
        decided not to snapshot is not a result, see ``status()["snapshot_check"]``).

        With ``now_us`` every decision uses that time (tests); otherwise the clock is read before
        each task, so a long task makes the next one see the time it really starts.  ``stop`` is
        checked between tasks.
        """
        start = now_us if now_us is not None else self.clock()
        with self._lock:
            due = sorted((at, TASKS.index(t), t) for t, at in self._next.items() if at is not None and at <= start)
        results = []
        for _at, _order, task in due:
            if stop is not None and stop.is_set():
                break
            now = now_us if now_us is not None else self.clock()
            result = self._run(task, now)
            end = now_us if now_us is not None else self.clock()
            if result is not None:
                results.append(result)
                self._record(task, result, end)
        return results

    def run_forever(self, stop: threading.Event, max_wait_s: float = 60.0,
                    on_status: Callable[[dict], None] | None = None) -> None:
        """The daemon's maintenance thread: run what is due, then sleep on ``stop`` until the next
        due time (at least 1 s, at most ``max_wait_s`` so a wall-clock jump is noticed).
        ``on_status`` gets ``status()`` after every round that ran something (the daemon saves it
        where ``walrewind db show`` finds it)."""
        while not stop.is_set():
            try:
                if self.run_due(stop=stop) and on_status is not None:
                    on_status(self.status())
            except Exception:  # run_due records task failures itself; this is a bug guard
                self.log.exception("maintenance: unexpected error")
            nxt = self.next_due_us()
            wait = max_wait_s if nxt is None else (nxt - self.clock()) / SECOND_US
            stop.wait(min(max(wait, 1.0), max_wait_s))

    def _record(self, task: str, result: TaskResult, end_us: int) -> None:
        p = self.policy
        interval = {"retention": p.retention_interval_us, "compaction": p.compact_interval_us,
                    "drill": p.verify_interval_us}.get(task) or p.retry_us
        with self._lock:
            self._last[task] = result
            self._failures[task] = 0 if result.ok else self._failures[task] + 1
            if result.result == "error":  # a glitch (storage, disk): retry sooner than the interval
                self._next[task] = end_us + min(interval, p.retry_us)
            elif task != "snapshot":  # a snapshot look schedules the next one itself (_look);
                self._next[task] = end_us + interval  # a FAILED drill is a verdict, not a glitch

    def _run(self, task: str, now: int) -> TaskResult | None:
        with self._lock:
            self._running = task
        started = time.monotonic()
        try:
            if task == "snapshot":
                return self._snapshot(now, started)
            if task == "drill":
                return self._drill(now, started)
            fn = self.prune if task == "retention" else self.compact
            report = fn(now)  # type: ignore[misc]
            result = TaskResult(task, "ok", now, time.monotonic() - started, _jsonable(report))
            self.log.info("maintenance: %s done in %.1f s", task, result.seconds)
            return result
        except Exception as exc:
            self.log.error("maintenance: %s failed: %s: %s", task, type(exc).__name__, exc)
            return TaskResult(task, "error", now, time.monotonic() - started, f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._running = None

    # ------------------------------------------------------------------------------ snapshots
    def _snapshot(self, now: int, started: float) -> TaskResult | None:
        """Look at the replica; build a snapshot of the newest generation if one is due."""
        p = self.policy
        replica = Replica(self.storage)
        if replica.empty:
            self._look(now, now + p.snapshot_check_max_us, {"reason": "no restorable history"})
            return None
        gen = replica.generations[-1]
        snap = gen.snapshots[-1]
        last_txid = gen.last_txid or snap.txid
        after = [s for s in gen.segments if s.last_txid > snap.txid]
        seg_bytes = sum(replica.sizes.get(s.key, 0) for s in after)
        snap_bytes = replica.sizes.get(snap.key, 0)
        threshold = int(p.snapshot_volume * snap_bytes) if p.snapshot_volume > 0 else None
        elapsed = now - snap.ts_us
        if after:  # bytes per µs since writes resumed after the snapshot (idle time before is not rate)
            # (an over-estimate only makes the next look earlier, bounded by snapshot_check_min_us)
            self._rate = seg_bytes / max(now - after[0].first_ts_us, 1000)
        seen = {
            "generation": gen.id,
            "snapshot_txid": snap.txid,
            "snapshot_time": format_us(snap.ts_us),
            "snapshot_bytes": snap_bytes,
            "last_txid": last_txid,
            "segment_bytes_since": seg_bytes,
            "volume_threshold_bytes": threshold,
        }
        if last_txid <= snap.txid:
            self._look(now, now + p.snapshot_check_max_us, dict(seen, reason="nothing new since the newest snapshot"))
            return None
        by_interval = bool(p.snapshot_interval_us) and elapsed >= p.snapshot_interval_us  # type: ignore[operator]
        by_volume = threshold is not None and seg_bytes > threshold
        if not (by_interval or by_volume):
            wait = p.snapshot_check_max_us
            if threshold is not None and self._rate:
                # Half the predicted time: a rate that rises is caught by the next look, and
                # looks converge on the crossing in O(log) LISTs instead of one per check_min.
                wait = int((threshold - seg_bytes) / self._rate / 2)
            wait = max(p.snapshot_check_min_us, min(wait, p.snapshot_check_max_us))
            nxt = now + wait
            if p.snapshot_interval_us:
                nxt = min(nxt, max(snap.ts_us + p.snapshot_interval_us, now + 1))
            self._look(now, nxt, dict(seen, reason="not due"))
            return None
        why = "interval" if by_interval else "volume"
        self._look(now, now + p.snapshot_check_min_us, dict(seen, reason=f"due by {why}"))
        built = build_snapshot(self.storage, txid=last_txid, workdir=self.workdir)
        detail = {
            "trigger": why,
            "key": built.key,
            "txid": built.txid,
            "commit_time": format_us(built.ts_us),
            "db_pages": built.db_pages,
            "created": built.created,
            "segment_bytes_replaced": seg_bytes,
        }
        self.log.info("maintenance: snapshot at txid %d (%s) in %.1f s", built.txid, why, time.monotonic() - started)
        if not built.created:  # we stored nothing new; a rebuild loop here would be a bug, so slow down
            self._look(now, now + p.snapshot_check_max_us, dict(seen, reason="snapshot already existed"))
        return TaskResult("snapshot", "ok", now, time.monotonic() - started, detail)

    def _look(self, now: int, next_us: int, seen: dict) -> None:
        with self._lock:
            self._next["snapshot"] = next_us
            self._check = dict(seen, at=format_us(now), at_us=now)

    # ------------------------------------------------------------------------------ drills
    def _drill(self, now: int, started: float) -> TaskResult:
        """Restore a random point of the window (seeded by the time, so reruns differ but a logged
        seed reproduces it) and the latest point; PASSED only if both are."""
        replica = Replica(self.storage)
        if replica.empty:
            return TaskResult("drill", "error", now, time.monotonic() - started, "no restorable history to verify")
        # Only the transaction-exact window: older points may be kept snapshots alone (retention
        # tiers), where a time target restores "the snapshot as it is", not a drill of history.
        window = replica.exact_window() if hasattr(replica, "exact_window") else None
        lo = window[1].ts_us if window else replica.earliest_us()
        hi = replica.latest()[1]  # type: ignore[index]
        target = random.Random(now).randint(lo, hi)  # type: ignore[arg-type]
        drills = [drill(self.storage, target, workdir=self.workdir), drill(self.storage, None, workdir=self.workdir)]
        passed = all(d.passed for d in drills)
        if not passed:
            failed = "; ".join(d.detail for d in drills if not d.passed)
            self.log.error("maintenance: restore drill FAILED: %s", failed)
        return TaskResult(
            "drill", "PASSED" if passed else "FAILED", now, time.monotonic() - started,
            {"seed": now, "drills": [d.to_json() for d in drills]},
        )

    # ------------------------------------------------------------------------------ status
    def status(self) -> dict:
        """Plain JSON data for the daemon's status: per task whether it is enabled, its last run
        (when, result, duration, detail), consecutive failures and when it is next due."""
        with self._lock:
            tasks = {}
            for task in TASKS:
                nxt = self._next[task]
                last = self._last.get(task)
                tasks[task] = {
                    "enabled": nxt is not None,
                    "next_due": format_us(nxt) if nxt is not None else None,
                    "next_due_us": nxt,
                    "last": last.to_json() if last else None,
                    "consecutive_failures": self._failures[task],
                }
            return {"running": self._running, "tasks": tasks, "snapshot_check": dict(self._check)}


def for_database(storage: Storage, settings: Any, workdir: str | None = None) -> Maintenance:
    """The scheduler for one configured database (``engine.config.DatabaseConfig``): periodic
    snapshots, its retention policy (unless ``retention = "off"``), compaction of segments older
    than ``compact_after`` and drills every ``verify_interval`` (off by default)."""
    from .compaction import compact
    from .retention import prune

    policy_settings = settings.retention_policy()
    policy = MaintenancePolicy.for_retention(
        settings.retention_us,
        snapshot_interval_us=settings.snapshot_interval_us,
        snapshot_volume=settings.snapshot_volume,
        verify_interval_us=settings.verify_interval_us,
    )
    # Compaction deletes the merged sources: with retention off (no delete permission) it stays off.
    deletes = settings.retention_us is not None
    verified: set[str] = set()  # snapshots retention has checked (immutable: once is enough)
    return Maintenance(
        storage,
        policy,
        prune=(lambda now: prune(storage, policy_settings, now, verified=verified)) if deletes else None,
        compact=(lambda now: compact(storage, now_us=now, compact_after_us=settings.compact_after_us)) if deletes else None,
        workdir=workdir,
    )


STATUS_FILE = "maintenance.json"  # in the daemon's state directory, rewritten after every round


def read_status(state_dir: str) -> dict | None:
    """The last maintenance status a daemon saved in ``state_dir`` (None if it never ran one)."""
    try:
        with open(os.path.join(state_dir, STATUS_FILE), encoding="utf-8") as f:
            status = json.load(f)
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None
