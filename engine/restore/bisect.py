"""Which transaction changed a query's result: a binary search over the replicated history.

``walrewind bisect SRC --query SQL`` answers "sometime after the deploy the ledger total changed:
which transaction did it?".  It names the first transaction in (since, until] after which the
query's result differs from its result at ``since``, with the result before and after.

**How.**  One verified restore at ``since`` (restorer.py: checksum and quick_check) becomes the
working copy (workcopy.py).  Then a binary search over the transaction ids: a probe moves the
copy forward to the middle of the remaining interval by applying records (never restoring from
the snapshot again), runs the query on it (probequery.py), and keeps that state as the new lower
end when the result is unchanged, or rolls back to the lower end (undo log of page pre-images)
when it changed.  Every probe state is verified by the recorded whole-database checksum of its
transaction, like a restore.  ``ceil(log2(n + 1))`` probes for n transactions; the records
applied over the whole search add up to at most n, each segment is downloaded at most once
(segcache.py), and the pages a probe does not touch are never read or written.

**What it assumes.**  Like ``git bisect``, that the result changes once: the search keeps "the
lower end gives the ``since`` result, the upper end does not", so the transaction it names always
really changed the result (the states just before and after it were both queried), but if the
result changed and changed back in between, an earlier change can be missed; a narrower
``--since``/``--until`` finds it.  The search stays within one generation (bisectrange.py).

A RESYNC record stands for commits the daemon did not observe one by one; when it is the answer
the change is somewhere in that unobserved stretch, and a warning says so.  A LATE record's commit
time is only an upper bound; a warning says that too.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

from ..errors import QueryFailed, RestoreError, UsageError
from ..replica.format import FLAG_RESYNC, LATE_FLAGS, why_late
from ..replica.index import Replica
from ..storage import Storage
from ..timeparse import format_us
from .bisectrange import SearchRange, resolve, until_generation
from .probequery import QueryResult, run_query, syntax_error
from .restorer import Progress, restore
from .segcache import MEMORY_BYTES, SegmentCache
from .workcopy import WorkingCopy

OnProbe = Callable[[int, str], None]  # (txid, path of the working copy at that txid), before the query


@dataclass
class Probe:
    txid: int
    commit_us: int
    changed: bool
    records_applied: int  # to reach this state from the previous lower end
    seconds: float  # moving the working copy plus the query
    query_seconds: float

    def to_json(self) -> dict:
        return {"txid": self.txid, "committed_at": format_us(self.commit_us), "changed": self.changed,
                "records_applied": self.records_applied, "seconds": round(self.seconds, 4),
                "query_seconds": round(self.query_seconds, 4)}


@dataclass
class BisectOutcome:
    range: SearchRange
    before: QueryResult  # the result at ``since``
    txid: int | None = None  # the transaction that changed it (None: the result never changed)
    commit_us: int | None = None
    flags: int = 0
    after: QueryResult | None = None
    probes: list[Probe] = field(default_factory=list)
    seconds: float = 0.0
    restore_seconds: float = 0.0
    query_seconds: float = 0.0  # every run of the query, the one at ``since`` included
    downloads: int = 0  # segment objects fetched from the replica during the search
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.txid is not None

    def to_json(self) -> dict:
        r = self.range
        return {
            "changed": self.changed,
            "txid": self.txid,
            "committed_at": format_us(self.commit_us) if self.commit_us is not None else None,
            "before": self.before.to_json(),
            "after": self.after.to_json() if self.after is not None else None,
            "resync": bool(self.flags & FLAG_RESYNC),
            "late": bool(self.flags & LATE_FLAGS),
            "since": {"txid": r.since_txid, "committed_at": format_us(r.since_us)},
            "until": {"txid": r.until_txid, "committed_at": format_us(r.until_us)},
            "transactions": r.transactions,
            "generation": r.generation.id,
            "probes": len(self.probes),
            "probe_log": [p.to_json() for p in self.probes],
            "seconds": round(self.seconds, 3),
            "restore_seconds": round(self.restore_seconds, 3),
            "query_seconds": round(self.query_seconds, 3),
            "segments_downloaded": self.downloads,
            "notes": r.notes,
            "warnings": self.warnings,
        }


def max_probes(transactions: int) -> int:
    """Probes a search over ``transactions`` transactions makes at most: ceil(log2(n + 1))."""
    return transactions.bit_length()


def bisect(
    storage: Storage,
    query: str,
    *,
    since_us: int | None = None,
    since_txid: int | None = None,
    until_us: int | None = None,
    until_txid: int | None = None,
    replica: Replica | None = None,
    progress: Progress | None = None,
    work_dir: str | None = None,
    on_probe: OnProbe | None = None,
    memory_bytes: int = MEMORY_BYTES,
) -> BisectOutcome:
    """Search (since, until] for the transaction after which ``query``'s result first differs.

    ``work_dir`` (default: the system's temporary directory) holds the working copy (the database's
    size), its undo log and the segments downloaded from a remote replica; it is removed at the end.
    ``progress(stage, done, total)`` as for a restore.  ``on_probe`` is called with each probe's
    txid and the working copy's path before the query runs (tests compare it with fresh restores).
    """
    if since_us is not None and since_txid is not None or until_us is not None and until_txid is not None:
        raise UsageError("give each bound as a moment or as a transaction id, not both")
    if not query.strip():
        raise UsageError("the query is empty")
    problem = syntax_error(query)
    if problem is not None:
        raise QueryFailed(f"the query cannot be parsed: {problem}")
    started = time.monotonic()
    replica = replica or Replica(storage)
    gen = until_generation(replica, until_us, until_txid)
    tmp = tempfile.mkdtemp(prefix="walrewind-bisect-", dir=work_dir)
    cache = SegmentCache(storage, replica, gen.id, None, tmp, memory_bytes)
    try:
        found = resolve(replica, cache, gen, since_us, since_txid, until_us, until_txid)
        outcome = _search(storage, replica, cache, found, query, tmp, progress, on_probe)
        outcome.downloads = cache.downloads
    finally:
        cache.close()
        shutil.rmtree(tmp, ignore_errors=True)
    outcome.seconds = time.monotonic() - started
    return outcome


def _search(storage: Storage, replica: Replica, cache: SegmentCache, found: SearchRange, query: str, tmp: str,
            progress: Progress | None, on_probe: OnProbe | None) -> BisectOutcome:
    path = os.path.join(tmp, "probe.db")
    mark = time.monotonic()
    restored = restore(storage, path, target_txid=found.since_txid, replica=replica, progress=progress)
    if not restored.exact or restored.txid != found.since_txid:
        raise RestoreError(f"cannot start the search at txid {found.since_txid}: the restore landed on txid "
                           f"{restored.txid}{'' if restored.exact else ' (a kept snapshot)'}")
    cache.page_size = restored.page_size
    copy = WorkingCopy.from_restored(path, restored.page_size, restored.checksum, restored.txid, restored.commit_us,
                                     os.path.join(tmp, "undo.pages"))
    outcome = BisectOutcome(found, QueryResult(()), restore_seconds=time.monotonic() - mark)
    try:
        mark = time.monotonic()
        outcome.before = before = run_query(path, query)
        outcome.query_seconds = time.monotonic() - mark
        if before.error is not None:
            raise QueryFailed(
                f"the query fails on the database as of txid {found.since_txid} ({format_us(found.since_us)}), where "
                f"the search starts: {before.error}" + ("; if the table is created later, start later with --since"
                                                        if "no such" in before.error else ""))
        _probe_loop(copy, cache, found, query, outcome, progress, on_probe)
    finally:
        copy.close()
    return outcome


def _probe_loop(copy: WorkingCopy, cache: SegmentCache, found: SearchRange, query: str, outcome: BisectOutcome,
                progress: Progress | None, on_probe: OnProbe | None) -> None:
    """The binary search: ``lo`` gives the ``since`` result, ``hi`` does not (``until + 1``: not yet seen)."""
    lo, hi = found.since_txid, found.until_txid + 1
    lo_us = found.since_us
    limit = max_probes(found.transactions)
    sizes = cache.replica.sizes
    total = max(1, sum(sizes.get(s.key, 0) for s in cache.segments(found.since_txid + 1, found.until_txid)))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if progress:
            k = len(outcome.probes)
            progress(f"probe {k + 1}/{limit} txid {mid}", total * k // limit, total)
        mark = time.monotonic()
        applied = copy.advance(cache.records(copy.txid + 1, mid))
        if on_probe is not None:
            on_probe(mid, copy.path)
        asked = time.monotonic()
        result = run_query(copy.path, query)
        done = time.monotonic()
        outcome.query_seconds += done - asked
        changed = not result.same_as(outcome.before)
        outcome.probes.append(Probe(mid, copy.commit_us, changed, applied, done - mark, done - asked))
        if not changed:
            copy.commit()
            lo, lo_us = mid, copy.commit_us
            continue
        hi = mid
        outcome.txid, outcome.commit_us, outcome.flags, outcome.after = mid, copy.commit_us, copy.flags, result
        if hi - lo > 1:
            copy.rollback()
    if progress:
        progress(f"probe {len(outcome.probes)}/{limit}", total, total)
    if outcome.txid is not None:
        outcome.warnings.extend(_caveats(outcome, lo_us))


def _caveats(outcome: BisectOutcome, previous_us: int) -> list[str]:
    """What the named transaction's flags mean for the answer."""
    out = []
    if outcome.flags & FLAG_RESYNC:
        out.append(
            f"transaction {outcome.txid} is a RESYNC: the daemon did not observe the database between "
            f"{format_us(previous_us)} and {format_us(outcome.commit_us)} (history repaired as one transaction), so the "
            "change was made by one of an unknown number of commits in that stretch")  # type: ignore[arg-type]
    elif outcome.flags & LATE_FLAGS:
        out.append(
            f"transaction {outcome.txid} {why_late(outcome.flags)}: it committed after {format_us(previous_us)} "
            f"and at or before {format_us(outcome.commit_us)}")  # type: ignore[arg-type]
    return out
