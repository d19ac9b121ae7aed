"""Choosing what a restore reads, from key names alone, and refusing plans that cannot be right.

The planner picks a generation, a snapshot and the segments after it for a target (a time, a
transaction, or the latest point), then checks the plan before anything is downloaded: holes in
the history, two writers, and targets before the transaction-exact window (where retention left
only kept snapshots, which are restored as they are, with a note and ``exact=False``).
Executing a plan is restore.py's job.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .. import defaults
from ..errors import (
    HistoryGap,
    ReplicaEmpty,
    RestoreError,
    TargetTooOld,
    TimestampError,
)
from ..replica import layout
from ..replica.index import Generation, Replica
from ..storage import Storage
from ..timeparse import format_us

FUTURE_SLACK_US = 1_000_000
SILENCE_US = int(2 * defaults.HEARTBEAT_SECONDS * 1_000_000)  # longer without a heartbeat: say so


@dataclass
class RestorePlan:
    generation: Generation
    snapshot: layout.SnapshotKey
    segments: list[layout.SegmentKey]
    target_us: int | None
    target_txid: int | None
    notes: list[str] = field(default_factory=list)
    exact: bool = True  # False: the target is before the exact window; the snapshot alone is restored

    def describe(self) -> dict:
        return {
            "generation": self.generation.id,
            "snapshot": {"txid": self.snapshot.txid, "time": format_us(self.snapshot.ts_us), "key": self.snapshot.key},
            "segments": [s.key for s in self.segments],
            "target_time": format_us(self.target_us) if self.target_us is not None else None,
            "target_txid": self.target_txid,
            "exact": self.exact,
            "notes": self.notes,
        }




def window_text(replica: Replica) -> str:
    latest = replica.latest()
    if not latest:
        return "empty"
    text = f"{format_us(replica.earliest_us())} to {format_us(latest[1])}"  # type: ignore[arg-type]
    window = replica.exact_window()
    if window is not None and window[1].ts_us > replica.earliest_us():  # type: ignore[operator]
        text += f"; exact to the transaction from {format_us(window[1].ts_us)}, kept snapshots only before that"
    return text


def plan_restore(
    replica: Replica, target_us: int | None = None, target_txid: int | None = None, now_us: int | None = None,
    skip: dict[str, str] | None = None,
) -> RestorePlan:
    """The plan for a target (the latest point if neither is given).

    ``skip`` maps snapshot keys found damaged (by an earlier attempt) to the reason: the plan then
    replays from the newest older snapshot of the same generation instead, with a note naming the
    skipped object, or fails naming it when no older snapshot and unbroken segments remain.
    """
    plan = _plan(replica, target_us, target_txid, now_us)
    if skip and plan.snapshot.key in skip:
        plan = _without_damaged(replica, plan, skip)
    return plan


def _plan(replica: Replica, target_us: int | None, target_txid: int | None, now_us: int | None) -> RestorePlan:
    if replica.empty:
        raise ReplicaEmpty(f"{replica.storage.url}: the replica holds no restorable history (no snapshot found)")
    now_us = now_us if now_us is not None else time.time_ns() // 1000
    latest_txid, latest_us = replica.latest()  # type: ignore[misc]
    notes: list[str] = []
    if target_txid is not None:
        gens = [
            g for g in replica.generations
            if g.first_txid <= target_txid <= max(g.last_txid, g.vouched_txid or 0)  # type: ignore[operator]
        ]
        if not gens:
            first = replica.generations[0].first_txid
            if target_txid < first:  # type: ignore[operator]
                raise TargetTooOld(f"Transaction {target_txid} is too old: earliest restorable transaction is {first}")
            if target_txid > latest_txid:
                raise RestoreError(
                    f"Transaction {target_txid} has not been replicated: newest replicated transaction is "
                    f"{latest_txid} ({format_us(latest_us)})"
                )
            kept = kept_for_txid(replica, target_txid)
            if kept is not None:
                return kept
            raise RestoreError(f"Transaction {target_txid} falls between generations and cannot be restored")
        gen = gens[-1]
        snapshot = max((s for s in gen.snapshots if s.txid <= target_txid), key=lambda s: s.txid)
        segments = [s for s in gen.segments if s.last_txid > snapshot.txid and s.first_txid <= target_txid]
        return exact_or_kept(replica, RestorePlan(gen, snapshot, segments, None, target_txid, notes))

    if target_us is not None:
        if target_us > now_us + FUTURE_SLACK_US:
            raise TimestampError(f"Timestamp is in the future: {format_us(target_us)} (now is {format_us(now_us)})")
        earliest = replica.earliest_us()
        if target_us < earliest:  # type: ignore[operator]
            raise TargetTooOld(
                f"Timestamp too old: earliest restorable point is {format_us(earliest)} "  # type: ignore[arg-type]
                f"(restorable window: {window_text(replica)})"
            )
        gen = [g for g in replica.generations if g.start_us <= target_us][-1]  # type: ignore[operator]
        complete = gen.complete_through_us or gen.last_commit_us
        if target_us > gen.last_commit_us:  # type: ignore[operator]
            if gen is replica.generations[-1]:
                notes.append(
                    f"target is after the newest replicated transaction; restoring the newest "
                    f"(replica known complete through {format_us(complete)})"  # type: ignore[arg-type]
                )
                # Heartbeats come once a minute (defaults.HEARTBEAT_SECONDS): a target within two of
                # them of the last one is what a healthy idle daemon looks like, not a daemon that
                # was down.
                if target_us > complete + SILENCE_US:  # type: ignore[operator]
                    notes.append(
                        f"no record of the database between {format_us(complete)} and the target: "  # type: ignore[arg-type]
                        "the daemon may not have been running"
                    )
            else:
                notes.append(
                    f"the daemon's history has a break after {format_us(complete)} "  # type: ignore[arg-type]
                    "(a new generation started later); restoring the last point before the break"
                )
        snapshot = max((s for s in gen.snapshots if s.ts_us <= target_us), key=lambda s: s.txid)
        segments = [s for s in gen.segments if s.last_txid > snapshot.txid and s.first_ts_us <= target_us]
        # The first segment after the target is read too: if it starts with a RESYNC (or LATE)
        # record, the target lies in a gap the daemon could not observe, and the restore must say so.
        after = [s for s in gen.segments if s.last_txid > snapshot.txid and s.first_ts_us > target_us]
        segments += after[:1]
        return exact_or_kept(replica, RestorePlan(gen, snapshot, segments, target_us, None, notes))

    gen = replica.generations[-1]
    snapshot = gen.snapshots[-1]
    segments = [s for s in gen.segments if s.last_txid > snapshot.txid]
    complete = gen.complete_through_us
    notes.append(f"latest point; replica known complete through {format_us(complete)}")  # type: ignore[arg-type]
    return _checked(replica, RestorePlan(gen, snapshot, segments, None, None, notes))


def _hint(last_good: tuple[int, int | None] | None) -> str:
    if not last_good:
        return "; no earlier point of this history can be restored"
    txid, ts = last_good
    when = f" ({format_us(ts)})" if ts is not None else ""
    return f"; the last point that can still be restored is txid {txid}{when}: use --txid {txid}"


def _checked(replica: Replica, plan: RestorePlan) -> RestorePlan:
    """Refuse, before downloading anything, a plan whose history has a hole or two writers.

    Holes: a segment missing between two present ones, or after the last one when a heartbeat
    vouches for more.  Overlaps: two segments covering the same txids (two daemons in one path).
    Either would otherwise surface only as a checksum failure, or not at all for a target that
    happens to fall before the missing records' unknown commit times.
    """
    gen, snap, url = plan.generation, plan.snapshot, replica.storage.url
    planned = set(plan.segments)
    for a, b in gen.overlaps():
        if a in planned or b in planned:
            last = b.first_txid - 1
            raise HistoryGap(
                f"cannot restore: generation {gen.id} in {url} holds overlapping segments {a.key} and {b.key} "
                f"(transactions {b.first_txid}..{min(a.last_txid, b.last_txid)} were written twice: two daemons "
                "shipped into one replica path); refusing to choose between two histories"
                + _hint((last, None) if last >= snap.txid else None)
            )
    expected, last_good = snap.txid + 1, (snap.txid, snap.ts_us)
    # For a time target, the segment read past the target (gap detection) is checked like the rest
    # of the generation below: a hole before it matters only if the target may need what is missing.
    core = [s for s in plan.segments if plan.target_us is None or s.first_ts_us <= plan.target_us]
    for seg in core:
        if seg.first_txid > expected:
            raise HistoryGap(
                f"cannot restore: history jumps from txid {expected - 1} to {seg.first_txid}: the segment(s) "
                f"holding transactions {expected}..{seg.first_txid - 1} of generation {gen.id} are missing from "
                f"{url} (the next present segment is {seg.key})" + _hint(last_good)
            )
        if seg.last_txid >= expected:
            expected, last_good = seg.last_txid + 1, (seg.last_txid, seg.last_ts_us)
    later = [s for s in gen.segments if s.first_txid >= expected]
    hole: tuple[int, int] | None = None
    if later and later[0].first_txid > expected:
        hole = (expected, later[0].first_txid - 1)
    elif not later and (gen.vouched_txid or 0) >= expected:
        hole = (expected, gen.vouched_txid)  # type: ignore[assignment]
    if hole is not None:
        if plan.target_txid is not None:
            needed = plan.target_txid >= hole[0]
        elif plan.target_us is not None:
            needed = plan.target_us >= last_good[1]  # the missing records committed at or after it
        else:
            needed = True
        if needed:
            if later:
                what = f"history jumps from txid {hole[0] - 1} to {hole[1] + 1}"
                after = f" (the next present segment is {later[0].key})"
            else:
                what = f"history ends at txid {hole[0] - 1} but a heartbeat vouches for txid {hole[1]}"
                after = ""
            raise HistoryGap(
                f"cannot restore: {what}: the segment(s) holding transactions {hole[0]}..{hole[1]} of generation "
                f"{gen.id} are missing from {url}{after}" + _hint(last_good)
            )
    return plan


def object_error(storage: Storage, key: str, exc: Exception, last_good: tuple[int, int] | None) -> RestoreError:
    detail = str(exc)
    if key not in detail:
        detail = f"{storage.url}/{key}: {detail}"
    return RestoreError(f"cannot restore: {detail}" + _hint(last_good))


def point_before_snapshot(replica: Replica, plan: RestorePlan) -> tuple[int, int] | None:
    """The newest point that does not need ``plan.snapshot`` (an older snapshot of the same
    generation, else the end of the previous generation)."""
    gen = plan.generation
    if any(s.txid < plan.snapshot.txid for s in gen.snapshots):
        return plan.snapshot.txid - 1, None  # type: ignore[return-value]
    before = [g for g in replica.generations if g.id < gen.id]
    if before:
        return before[-1].last_txid, before[-1].last_commit_us  # type: ignore[return-value]
    return None


# ---------------------------------------------------------------- damaged snapshots
def _segments_after(gen: Generation, snap: layout.SnapshotKey, target_us: int | None,
                    target_txid: int | None) -> list[layout.SegmentKey]:
    """The segments a plan from ``snap`` reads (the same selection as ``_plan``)."""
    after = [s for s in gen.segments if s.last_txid > snap.txid]
    if target_txid is not None:
        return [s for s in after if s.first_txid <= target_txid]
    if target_us is not None:
        within = [s for s in after if s.first_ts_us <= target_us]
        return within + [s for s in after if s.first_ts_us > target_us][:1]
    return after


def _without_damaged(replica: Replica, plan: RestorePlan, skip: dict[str, str]) -> RestorePlan:
    """Re-plan ``plan`` from the newest older valid snapshot of its generation (issue: one damaged
    snapshot must not make every later point unrestorable while older objects are intact)."""
    gen, url = plan.generation, replica.storage.url
    bad = [s for s in gen.snapshots if s.key in skip and s.txid <= plan.snapshot.txid]
    what = "; ".join(f"{url}/{s.key} is damaged ({skip[s.key]})" for s in reversed(bad))
    older = [s for s in gen.snapshots if s.txid < plan.snapshot.txid and s.key not in skip]
    if not older:
        raise RestoreError(
            f"cannot restore: {what}, and generation {gen.id} has no older valid snapshot to replay from"
            + _hint(point_before_snapshot(replica, RestorePlan(gen, bad[0], [], None, None)))
        )
    snap = older[-1]
    note = (f"skipped damaged snapshot {url}/{plan.snapshot.key} ({skip[plan.snapshot.key]}); "
            f"replayed from the snapshot at txid {snap.txid} ({format_us(snap.ts_us)})")
    if not plan.exact:
        return RestorePlan(gen, snap, [], plan.target_us, plan.target_txid, plan.notes + [note], exact=False)
    fallback = RestorePlan(gen, snap, _segments_after(gen, snap, plan.target_us, plan.target_txid),
                           plan.target_us, plan.target_txid, plan.notes + [note])
    try:
        return _checked(replica, fallback)
    except RestoreError as exc:
        raise RestoreError(f"{what}; replaying from the older snapshot at txid {snap.txid} is not possible either: "
                           f"{exc}") from None


# ---------------------------------------------------------------- targets before the exact window
def _kept_plan(replica: Replica, gen: Generation, snap: layout.SnapshotKey, target_us: int | None,
               target_txid: int | None) -> RestorePlan:
    """Restore ``snap`` alone: the target is before the exact window, where only snapshots remain."""
    window = replica.exact_window()
    what = f"target {format_us(target_us)}" if target_us is not None else f"transaction {target_txid}"
    start = f" (from {format_us(window[1].ts_us)}, txid {window[1].txid})" if window else ""
    note = (
        f"{what} is before the transaction-exact window{start}; restored the snapshot taken at "
        f"{format_us(snap.ts_us)} (txid {snap.txid}), the newest kept point at or before the target"
    )
    return RestorePlan(gen, snap, [], target_us, target_txid, [note], exact=False)


def _before_window(replica: Replica, plan: RestorePlan) -> bool:
    window = replica.exact_window()
    if window is None:
        return False
    if plan.target_us is not None:
        return plan.target_us < window[1].ts_us
    return plan.target_txid is not None and plan.target_txid < window[1].txid


def exact_or_kept(replica: Replica, plan: RestorePlan) -> RestorePlan:
    """``_checked(plan)``, except that a target before the exact window (retention removed the
    segments there) falls back to the newest kept snapshot at or before it, with a note.

    An intact older history is still restored exactly; a generation reduced to snapshots, or one
    whose chain from that snapshot was pruned, restores the snapshot alone (``exact=False``).
    """
    if not _before_window(replica, plan) or plan.target_txid == plan.snapshot.txid:
        return _checked(replica, plan)
    if plan.generation.has_history:
        try:
            return _checked(replica, plan)
        except RestoreError:
            pass
    return _kept_plan(replica, plan.generation, plan.snapshot, plan.target_us, plan.target_txid)


def kept_for_txid(replica: Replica, target_txid: int) -> RestorePlan | None:
    """A txid between generations whose history was pruned: the newest kept snapshot before it."""
    window = replica.exact_window()
    if window is None or target_txid >= window[1].txid:
        return None
    gens = [g for g in replica.generations if g.first_txid <= target_txid]  # type: ignore[operator]
    if not gens:
        return None
    gen = gens[-1]
    snap = max((s for s in gen.snapshots if s.txid <= target_txid), key=lambda s: s.txid)
    return _kept_plan(replica, gen, snap, None, target_txid)
