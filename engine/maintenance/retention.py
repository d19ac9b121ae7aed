"""Retention: keep every moment of the last ``retention`` exact to the transaction, GFS snapshot
tiers beyond it, and delete the rest in an order no restore in progress can trip over.

What is kept (``plan_prune``), with ``W = now - retention - grace``:

* **The exact window.**  The generation W falls in (the last one starting at or before W) keeps
  its *base* (the newest snapshot taken at or before W), every later snapshot, and every segment
  with ``last_txid > base.txid``; every later generation is kept whole.  Any point in ``[W, now]``
  is then restored from the base or a later snapshot plus segments that are all still there.  A
  point between an old generation's last commit and the next generation's start restores the old
  generation's last state, which is why W's generation keeps its tail even when it ended before W.
* **Tiers.**  Beyond the window, for each of the last ``keep_daily`` UTC days, ``keep_weekly`` ISO
  weeks and ``keep_monthly`` months, the newest snapshot of that period (``select_tiers``).  Those
  points stay restorable *to the snapshot*; their segments go.
* **The newest generation's latest state**, always (it is inside the window by construction).
* **Marks** (``walrewind mark``, like Barman's ``keep``).  For every mark in ``marks/``, the newest
  snapshot of its generation at or before its txid and the segments from there through its txid
  (``replica.marks.needed_objects``), wherever they are, until the mark is removed.  The report
  names, per mark, the objects it saved from this prune.  A mark object that cannot be read is
  reported and protects nothing (its txid is unknown).

**Why deletion is restore-safe.**  A restore plans from one LIST and then downloads.  The window is
widened by ``grace`` (default 1 h), and tiers are the union of the selection now and ``grace``
ago, so any restore that planned within the last ``grace`` only needs objects this prune keeps
(its target was at or after ``plan time - retention >= W``).  Deletion order makes an interrupted
prune harmless: inside a kept generation, older snapshots go first, then segments oldest-first
(the base that replaces them already exists), so what is left is always a gap-free suffix; in a
generation being dropped, the snapshots go first (a generation without one is ignored by readers
and finished by the next run), then segments, then heartbeats.  Heartbeats other than a
generation's newest carry no information (only the newest is read) and go once older than W.

``retention = "off"`` (``retention_us=None``) deletes nothing: for buckets under lifecycle rules or
credentials without delete permission.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import time
from dataclasses import dataclass, field
from typing import Iterable, TypeVar

from .. import defaults
from ..errors import UsageError
from ..replica import layout
from ..replica.index import Generation, Replica
from ..replica.marks import Mark, load_marks, needed_objects
from ..restore.objects import snapshot_damage
from ..storage import Storage
from ..timeparse import (
    format_duration_us,
    format_us,
    parse_duration_or_off,
    parse_duration_us,
)

DAY_US = 86_400_000_000
DEFAULT_GRACE_US = parse_duration_us(defaults.RETENTION_GRACE)
TIER_LABELS = ("daily", "weekly", "monthly")

_S = TypeVar("_S", bound=layout.SnapshotKey)


@dataclass
class RetentionPolicy:
    """What a database keeps.  ``retention_us`` None means "off": never delete anything."""

    retention_us: int | None = field(default_factory=lambda: parse_duration_or_off(defaults.RETENTION))
    keep_daily: int = defaults.KEEP_DAILY
    keep_weekly: int = defaults.KEEP_WEEKLY
    keep_monthly: int = defaults.KEEP_MONTHLY
    grace_us: int = DEFAULT_GRACE_US

    def overridden(self, retention: str | None = None, keep_daily: int | None = None, keep_weekly: int | None = None,
                   keep_monthly: int | None = None, grace: str | None = None) -> "RetentionPolicy":
        """This policy with the given settings replaced (the options of ``walrewind prune``)."""
        policy = dataclasses.replace(self)
        if retention is not None:
            policy.retention_us = parse_duration_or_off(retention)
        if grace is not None:
            policy.grace_us = parse_duration_us(grace)
        for name, value in (("keep_daily", keep_daily), ("keep_weekly", keep_weekly), ("keep_monthly", keep_monthly)):
            if value is not None:
                if value < 0:
                    raise UsageError(f"{name.replace('_', '-')} must be >= 0 (0 disables that tier), got {value}")
                setattr(policy, name, value)
        return policy

    def describe(self) -> str:
        if self.retention_us is None:
            return "retention off (nothing is ever deleted)"
        return (
            f"retention {format_duration_us(self.retention_us)}, keep {self.keep_daily} daily / "
            f"{self.keep_weekly} weekly / {self.keep_monthly} monthly snapshots"
        )


@dataclass
class KeptSnapshot:
    generation: str
    txid: int
    ts_us: int
    tiers: list[str]  # "daily"/"weekly"/"monthly" labels; empty inside the exact window
    in_window: bool
    marks: list[str] = field(default_factory=list)  # marks that keep it (beyond the window)

    def to_json(self) -> dict:
        return {"generation": self.generation, "txid": self.txid, "time": format_us(self.ts_us),
                "tiers": self.tiers, "in_window": self.in_window, "marks": self.marks}


@dataclass
class PruneReport:
    deleted: list[str]  # keys, in deletion order
    kept_snapshots: list[KeptSnapshot]
    bytes_deleted: int
    window_start_us: int | None  # the exact window's start after this prune (None: nothing restorable)
    dry_run: bool
    retention_off: bool = False
    now_us: int = 0
    policy: RetentionPolicy | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"snapshots": 0, "segments": 0, "heartbeats": 0})
    bytes_by_kind: dict[str, int] = field(default_factory=lambda: {"snapshots": 0, "segments": 0, "heartbeats": 0})
    generations_removed: list[str] = field(default_factory=list)
    latest_us: int | None = None
    base_key: str | None = None  # the snapshot whose existence makes the deletions safe
    damaged: dict[str, str] = field(default_factory=dict)  # snapshots found damaged: not relied on, not deleted
    kept_for_marks: dict[str, list[str]] = field(default_factory=dict)  # mark -> keys only it saved from deletion
    unreadable_marks: dict[str, str] = field(default_factory=dict)  # mark key -> why it protects nothing

    def to_json(self) -> dict:
        return {
            "dry_run": self.dry_run,
            "retention_off": self.retention_off,
            "policy": self.policy.describe() if self.policy else None,
            "now": format_us(self.now_us) if self.now_us else None,
            "deleted": self.deleted,
            "deleted_count": len(self.deleted),
            "counts": self.counts,
            "bytes_deleted": self.bytes_deleted,
            "bytes_by_kind": self.bytes_by_kind,
            "generations_removed": self.generations_removed,
            "window_start": format_us(self.window_start_us) if self.window_start_us is not None else None,
            "latest": format_us(self.latest_us) if self.latest_us is not None else None,
            "kept_snapshots": [k.to_json() for k in self.kept_snapshots],
            "damaged_snapshots": [{"key": k, "error": e} for k, e in self.damaged.items()],
            "kept_for_marks": self.kept_for_marks,
            "unreadable_marks": [{"key": k, "error": e} for k, e in self.unreadable_marks.items()],
        }


def _month(ts_us: int) -> int:
    d = _dt.datetime.fromtimestamp(ts_us / 1e6, tz=_dt.timezone.utc)
    return d.year * 12 + d.month - 1


def _week(ts_us: int) -> int:
    return (ts_us // DAY_US + 3) // 7  # 1970-01-01 was a Thursday: ISO weeks start 3 days before


def select_tiers(
    snapshots: Iterable[_S], now_us: int, keep_daily: int = defaults.KEEP_DAILY, keep_weekly: int = defaults.KEEP_WEEKLY,
    keep_monthly: int = defaults.KEEP_MONTHLY,
) -> dict[_S, list[str]]:
    """GFS selection: for each of the last N UTC days / ISO weeks / calendar months (the current
    one included), the newest snapshot taken in it.  Pure (the clock is ``now_us``) so it can be
    tested over simulated months.  Returns {snapshot: labels} for the selected ones only.

    The newest snapshot of a period that is over never changes, so a snapshot chosen once stays
    chosen until its period falls out of the tier: runs at different times agree.
    """
    periods = (
        ("daily", keep_daily, lambda ts: ts // DAY_US),
        ("weekly", keep_weekly, _week),
        ("monthly", keep_monthly, _month),
    )
    snaps = [s for s in snapshots if s.ts_us <= now_us]
    chosen: dict[_S, list[str]] = {}
    for label, count, period in periods:
        if count <= 0:
            continue
        current = period(now_us)
        newest: dict[int, _S] = {}
        for snap in snaps:
            p = period(snap.ts_us)
            if current - count < p <= current and (p not in newest or (snap.ts_us, snap.txid) > (newest[p].ts_us, newest[p].txid)):
                newest[p] = snap
        for snap in newest.values():
            chosen.setdefault(snap, []).append(label)
    return chosen


def _kind(key: str) -> str:
    return "snapshots" if "/snapshots/" in key else "segments" if "/segments/" in key else "heartbeats"


def _window_generation(gens: list[Generation], w: int) -> int:
    """Index of the generation W falls in (the last starting at or before W); 0 if W precedes all."""
    index = 0
    for i, g in enumerate(gens):
        if g.start_us is not None and g.start_us <= w:  # type: ignore[operator]
            index = i
    return index


def _mark_protection(gens: list[Generation], marks: list[Mark]) -> dict[str, list[str]]:
    """key -> names of the marks whose restore reads it."""
    by_id = {g.id: g for g in gens}
    protected: dict[str, list[str]] = {}
    for mark in marks:
        gen = by_id.get(mark.generation)
        if gen is None:
            continue  # broken already: `walrewind marks` says so
        for key in needed_objects(gen, mark.txid):
            protected.setdefault(key, []).append(mark.name)
    return protected


def plan_prune(storage: Storage, policy: RetentionPolicy, now_us: int, damaged: frozenset[str] = frozenset(),
               replica: Replica | None = None, marks: list[Mark] | None = None) -> PruneReport:
    """Decide what ``prune`` would delete, from one LIST (and one of ``marks/``); nothing is deleted.

    Snapshots in ``damaged`` are treated as absent: never the base that justifies deleting older
    history, and never deleted themselves (kept for inspection).  ``marks`` (default: read from
    the replica) keep what restoring each of them needs."""
    replica = replica or Replica(storage)
    unreadable: dict[str, str] = {}
    if marks is None:
        marks, unreadable = load_marks(storage)
    if damaged:
        for gen in replica.generations:
            gen.snapshots = [s for s in gen.snapshots if s.key not in damaged]
        replica.generations = [g for g in replica.generations if g.snapshots]
    report = PruneReport([], [], 0, None, True, retention_off=policy.retention_us is None, now_us=now_us, policy=policy)
    report.unreadable_marks = unreadable
    gens = replica.generations
    if gens:
        report.latest_us = replica.latest()[1]  # type: ignore[index]
        window = replica.exact_window()
        report.window_start_us = window[1].ts_us if window else gens[0].start_us
    if policy.retention_us is None or not gens:
        return report
    w = now_us - policy.retention_us - policy.grace_us
    first = _window_generation(gens, w)
    base: layout.SnapshotKey | None = None
    if gens[first].start_us <= w:  # type: ignore[operator]
        base = max((s for s in gens[first].snapshots if s.ts_us <= w), key=lambda s: s.txid)
    all_snaps = [s for g in gens for s in g.snapshots]
    tiers = select_tiers(all_snaps, now_us, policy.keep_daily, policy.keep_weekly, policy.keep_monthly)
    earlier = select_tiers(
        [s for s in all_snaps if s.ts_us <= now_us - policy.grace_us], now_us - policy.grace_us,
        policy.keep_daily, policy.keep_weekly, policy.keep_monthly,
    )
    for snap, labels in earlier.items():  # a restore planned up to `grace` ago may be reading it
        tiers.setdefault(snap, [])
        tiers[snap] = sorted(set(tiers[snap]) | set(labels), key=TIER_LABELS.index)

    protected = _mark_protection(gens, marks)
    order: list[str] = []
    for i, gen in enumerate(gens[: first + 1]):
        in_window = i == first
        keep_from = base.txid if (in_window and base is not None) else None
        if in_window and base is None:
            continue  # W precedes this generation: all of it is inside the window
        old_snaps = [s for s in gen.snapshots if keep_from is None or s.txid < keep_from]
        gone_snaps = [s for s in old_snaps if s not in tiers]
        segments = sorted(gen.segments + gen.superseded, key=lambda s: (s.first_txid, s.last_txid))
        gone_segs = [s for s in segments if keep_from is None or s.last_txid <= keep_from]
        newest_beat = gen.heartbeats[-1] if gen.heartbeats else None
        gone_beats = [
            h for h in gen.heartbeats if keep_from is None or (h is not newest_beat and h.ts_us < w)
        ]
        for key in [s.key for s in gone_snaps] + [s.key for s in gone_segs]:
            for name in protected.get(key, []):
                report.kept_for_marks.setdefault(name, []).append(key)
        gone_snaps = [s for s in gone_snaps if s.key not in protected]
        gone_segs = [s for s in gone_segs if s.key not in protected]
        # Snapshots first, then segments oldest-first, then heartbeats (see the module docstring).
        order += [s.key for s in gone_snaps] + [s.key for s in gone_segs] + [h.key for h in gone_beats]
        if keep_from is None and len(gone_snaps) == len(gen.snapshots):
            report.generations_removed.append(gen.id)
    # Leftovers of an interrupted prune: generations without a snapshot, older than the newest one.
    newest_id = gens[-1].id
    # A generation whose only snapshots are damaged is not a leftover: its objects stay for inspection.
    restorable = {g.id for g in gens} | {key.split("/")[1] for key in damaged}
    leftovers = sorted(k for k in replica.sizes if k.split("/")[1] not in restorable and k.split("/")[1] < newest_id)
    order = leftovers + order
    report.generations_removed = sorted(set(report.generations_removed) | {k.split("/")[1] for k in leftovers})

    report.deleted = order
    for key in order:
        size = replica.sizes.get(key, 0)
        report.bytes_deleted += size
        report.counts[_kind(key)] += 1
        report.bytes_by_kind[_kind(key)] += size
    if base is not None:  # otherwise nothing inside the window changes: the replica's own answer stands
        report.window_start_us = base.ts_us
        report.base_key = base.key
    gone = set(order)
    for i, gen in enumerate(gens):
        for snap in gen.snapshots:
            if snap.key in gone:
                continue
            older = i < first or (i == first and base is not None and snap.txid < base.txid)
            report.kept_snapshots.append(KeptSnapshot(gen.id, snap.txid, snap.ts_us, tiers.get(snap, []), not older,
                                                      protected.get(snap.key, []) if older else []))
    return report


def prune(storage: Storage, policy: RetentionPolicy, now_us: int | None = None, dry_run: bool = False,
          verified: set[str] | None = None) -> PruneReport:
    """Apply ``policy`` now: delete what ``plan_prune`` chose, in its order (unless ``dry_run``).

    Deleting history older than the base snapshot is only safe if that snapshot can really be
    restored: names cannot tell a truncated or bit-flipped object.  So the base is verified first
    (downloaded and streamed through its digest, once per key: ``verified`` remembers the good
    ones across runs); a damaged base is treated as absent and the plan made again, so the older
    snapshots and segments that a restore falls back on stay (``report.damaged`` names it)."""
    now = now_us if now_us is not None else time.time_ns() // 1000
    verified = verified if verified is not None else set()
    damaged: dict[str, str] = {}
    replica = Replica(storage)
    marks, unreadable = load_marks(storage)
    while True:
        report = plan_prune(storage, policy, now, frozenset(damaged), replica, marks)
        if not report.deleted or report.base_key is None or report.base_key in verified:
            break
        error = snapshot_damage(replica, report.base_key)
        if error is None:
            verified.add(report.base_key)
            break
        damaged[report.base_key] = error
        replica = Replica(storage)
    report.damaged = damaged
    report.unreadable_marks = unreadable
    report.dry_run = dry_run
    if not dry_run:
        for key in report.deleted:
            storage.delete(key)
    return report
