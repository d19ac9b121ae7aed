"""Which stretch of history a bisect searches: (since, until] as transaction ids of one generation.

Bounds are moments ("the state as of T": the last transaction committed at or before T, as a
restore to T lands) or transaction ids.  Planning the same way a restore does (planning.py) gives
every bound the restore's errors: too old, in the future, not replicated yet.

* ``until`` defaults to the newest transaction of the newest generation.
* ``since`` defaults to the start of the transaction-exact window of ``until``'s generation: its
  oldest snapshot from which segments continue without a hole to ``until``.
* Both must lie in one generation.  A generation boundary is a break in history (docs/FORMAT.md
  section 7: whatever happened between the two generations is unknown), so no single transaction
  can be named across it; the error says where the break is, to search either side.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import HistoryGap, RestoreError, UsageError
from ..replica.index import Generation, Replica
from ..timeparse import format_us
from .planning import plan_restore
from .segcache import SegmentCache


@dataclass
class SearchRange:
    generation: Generation
    since_txid: int
    since_us: int
    until_txid: int
    until_us: int
    notes: list[str] = field(default_factory=list)

    @property
    def transactions(self) -> int:
        return self.until_txid - self.since_txid


def until_generation(replica: Replica, until_us: int | None, until_txid: int | None) -> Generation:
    """The generation the search happens in: the one holding ``until`` (the newest by default)."""
    if until_us is None and until_txid is None:
        if replica.empty:
            plan_restore(replica)  # raises ReplicaEmpty with the restore's wording
        return replica.generations[-1]
    plan = plan_restore(replica, until_us, until_txid)
    if not plan.exact:
        raise RestoreError(f"--until {_bound(until_us, until_txid)} is before the transaction-exact window: only kept "
                           "snapshots remain there, no transactions to search")
    return plan.generation


def resolve(replica: Replica, cache: SegmentCache, gen: Generation, since_us: int | None, since_txid: int | None,
            until_us: int | None, until_txid: int | None) -> SearchRange:
    """The search range, checked from key names (plus the one segment a moment inside it needs)."""
    notes: list[str] = []
    if until_us is None and until_txid is None:
        until = (gen.last_txid, gen.last_commit_us)
        if (gen.vouched_txid or 0) > until[0]:  # type: ignore[operator]
            notes.append(f"a heartbeat vouches for txid {gen.vouched_txid} but the segments end at txid {until[0]}: "
                         "the newest transactions are missing from the replica and were not searched")
    else:
        until = _point(cache, gen, until_us, until_txid)
    if since_us is None and since_txid is None:
        since = _chain_start(gen, until[0], cache)  # type: ignore[arg-type]
        window = replica.exact_window()
        if window is not None and window[0].id != gen.id:
            notes.append(f"searched from the start of generation {gen.id} ({format_us(since[1])}); older history, "
                         "before a break in the replica's history, needs its own search (--until before the break)")
    else:
        plan = plan_restore(replica, since_us, since_txid)
        if plan.generation.id != gen.id:
            raise UsageError(
                f"--since {_bound(since_us, since_txid)} and --until {_bound(until_us, until_txid) or 'latest'} lie in "
                f"different generations: the replica's history breaks at {format_us(gen.start_us)} (generation {gen.id} "
                f"starts there from a new snapshot; what happened in between is unknown). Search one side at a time: "
                f"--since at or after {format_us(gen.start_us)}, or --until before it")
        if not plan.exact:
            raise RestoreError(f"--since {_bound(since_us, since_txid)} is before the transaction-exact window: only "
                               "kept snapshots remain there (see `walrewind ls`)")
        since = _point(cache, gen, since_us, since_txid)
    if since[0] > until[0]:
        raise UsageError(f"--since lands on txid {since[0]} ({format_us(since[1])}), after --until's txid {until[0]} "
                         f"({format_us(until[1])})")
    if since[0] == until[0]:
        raise UsageError(f"nothing to search: since and until both land on txid {since[0]} ({format_us(since[1])})")
    cache.segments(since[0] + 1, until[0])  # raises HistoryGap for a hole in between
    for a, b in gen.overlaps():
        if b.first_txid <= until[0] and a.last_txid > since[0]:
            raise HistoryGap(f"cannot search: generation {gen.id} holds overlapping segments {a.key} and {b.key} "
                             "(two daemons shipped into one replica path); refusing to choose between two histories")
    return SearchRange(gen, since[0], since[1], until[0], until[1], notes)  # type: ignore[arg-type]


def _bound(us: int | None, txid: int | None) -> str:
    if us is not None:
        return format_us(us)
    return f"txid {txid}" if txid is not None else ""


def _point(cache: SegmentCache, gen: Generation, us: int | None, txid: int | None) -> tuple[int, int]:
    """(txid, commit time) of a bound: a transaction id, or the state as of a moment."""
    if txid is not None:
        for snap in gen.snapshots:
            if snap.txid == txid:
                return txid, snap.ts_us
        for seg in gen.segments:
            if seg.last_txid == txid:
                return txid, seg.last_ts_us
            if seg.first_txid == txid:
                return txid, seg.first_ts_us
        for rec, _raw, _name in cache.records(txid, txid):
            return txid, rec.commit_ts_us
        raise RestoreError(f"transaction {txid} was not found in generation {gen.id}")  # pragma: no cover
    assert us is not None
    best: tuple[int, int] | None = None
    for snap in gen.snapshots:
        if snap.ts_us <= us and (best is None or snap.txid > best[0]):
            best = (snap.txid, snap.ts_us)
    started = [s for s in gen.segments if s.first_ts_us <= us]
    if started:
        seg = started[-1]
        if seg.last_ts_us <= us:
            found = (seg.last_txid, seg.last_ts_us)
        else:  # the moment falls inside this segment: its records say where
            found = (seg.first_txid, seg.first_ts_us)
            for rec, _raw, _name in cache.records(seg.first_txid, seg.last_txid):
                if rec.commit_ts_us > us:
                    break
                found = (rec.txid, rec.commit_ts_us)
        if best is None or found[0] > best[0]:
            best = found
    if best is None:
        raise RestoreError(f"no state of generation {gen.id} at {format_us(us)}")  # planning refuses this first
    return best


def _chain_start(gen: Generation, until_txid: int, cache: SegmentCache) -> tuple[int, int]:
    """The oldest snapshot of ``gen`` from which segments continue without a hole to ``until_txid``."""
    run: tuple[int, int] | None = None  # the covered txid run containing until_txid
    for seg in gen.segments:
        if seg.first_txid > until_txid:
            break
        if run is not None and seg.first_txid <= run[1] + 1:
            run = (run[0], max(run[1], seg.last_txid))
        else:
            run = (seg.first_txid, seg.last_txid)
    candidates = [s for s in gen.snapshots if s.txid <= until_txid]
    if run is not None and run[1] >= until_txid:
        usable = [s for s in candidates if s.txid >= run[0] - 1]
    else:
        usable = [s for s in candidates if s.txid == until_txid]
    if not usable:
        newest = candidates[-1] if candidates else None
        cache.segments((newest.txid if newest else gen.first_txid) + 1, until_txid)  # type: ignore[operator]
        raise HistoryGap(f"cannot search: no snapshot of generation {gen.id} is followed by unbroken history "
                         f"up to txid {until_txid}")
    return usable[0].txid, usable[0].ts_us
