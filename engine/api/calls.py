"""The functions behind ``import walrewind``; the engine is imported when one is called."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone


@dataclass(frozen=True)
class RestoreResult:
    """A verified restore: the file, the transaction it holds, and its recorded checksum."""

    path: str
    txid: int
    committed_at: datetime  # aware, UTC, microsecond precision
    checksum: str  # the whole-database checksum (hex) verified over the written file
    exact: bool  # False: restored a kept snapshot from before the transaction-exact window
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Window:
    """What a source can restore: from ``earliest`` (transaction-exact from ``exact_from``) to ``latest``."""

    earliest: datetime | None
    exact_from: datetime | None
    latest: datetime | None
    latest_txid: int | None
    complete_through: datetime | None
    holes: list[tuple[int, int]]  # missing transactions, as (first, last) txid ranges


@dataclass(frozen=True)
class BisectResult:
    """Which transaction changed a query's result (``changed`` False: none in the range did).

    ``before`` is the result at the start (rows as tuples); ``after`` the result right after
    transaction ``txid``, or None with ``after_error`` set when the query failed there (a table
    dropped).  ``since_txid``/``until_txid`` are the range searched, ``probes`` the states queried.
    """

    changed: bool
    txid: int | None
    committed_at: datetime | None  # aware, UTC, microsecond precision
    before: list[tuple]
    after: list[tuple] | None
    after_error: str | None
    since_txid: int
    since_at: datetime
    until_txid: int
    until_at: datetime
    probes: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Mark:
    """A named restore point (``walrewind.mark``): transaction ``txid`` of ``generation``."""

    name: str
    txid: int
    committed_at: datetime  # the marked transaction's commit time (aware, UTC)
    generation: str
    note: str | None
    who: str  # user@host that made it
    created_at: datetime
    broken: str | None = None  # ``marks()``: why it can no longer be restored (None: restorable)


def _mark(m, broken: str | None = None) -> Mark:
    return Mark(m.name, m.txid, _dt(m.commit_us), m.generation, m.note, m.who, _dt(m.created_us), broken)  # type: ignore[arg-type]


def _dt(us: int | None) -> datetime | None:
    if us is None:
        return None
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=us)


def _source(source: str, config: str | os.PathLike | None):
    from walrewind.engine.workspace.catalog import Catalog
    from walrewind.engine.workspace.config import load
    from walrewind.engine.workspace.sources import resolve_source

    loaded = load(os.fspath(config) if config is not None else None)
    restored = frozenset(e.name for e in Catalog(loaded.catalog_path, create=False).entries()) if loaded else frozenset()
    return resolve_source(source, loaded, restored), loaded


def _timestamp_text(timestamp: str | datetime | None) -> str | None:
    if timestamp is None or isinstance(timestamp, str):
        return timestamp
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=timezone.utc)  # as the CLI: no offset means UTC
    return timestamp.astimezone(timezone.utc).isoformat()


def restore(
    source: str,
    output: str | os.PathLike,
    *,
    timestamp: str | datetime | None = None,
    txid: int | None = None,
    mark: str | None = None,
    exclusive: bool = False,
    config: str | os.PathLike | None = None,
    force: bool = False,
) -> RestoreResult:
    """Restore ``source`` into the new file ``output`` as of ``timestamp`` (text as the CLI takes
    it, or a datetime; naive means UTC), ``txid``, ``mark`` (a name given to ``walrewind.mark``),
    or the latest point; verified by checksum and quick_check.  Recorded in the recovery history when a config is in use, like the CLI's."""
    from walrewind.engine.workspace.recovery import Target, restore_to_file

    src, loaded = _source(source, config)
    target = Target.parse(_timestamp_text(timestamp), txid, exclusive, mark)
    result = restore_to_file(src, os.fspath(output), target, config=loaded, force=force).result
    return RestoreResult(result.path, result.txid, _dt(result.commit_us), f"{result.checksum:016x}",  # type: ignore[arg-type]
                         result.exact, list(result.notes), list(result.warnings))


def window(source: str, *, config: str | os.PathLike | None = None) -> Window:
    """The restorable window of ``source``, from one LIST of its replica (nothing downloaded)."""
    src, _loaded = _source(source, config)
    replica = src.replica()
    latest = replica.latest()
    exact = replica.exact_window()
    complete = replica.generations[-1].complete_through_us if replica.generations else None
    return Window(_dt(replica.earliest_us()), _dt(exact[1].ts_us) if exact else None,
                  _dt(latest[1]) if latest else None, latest[0] if latest else None, _dt(complete),
                  [h for g in replica.generations for h in g.holes])


def bisect(
    source: str,
    query: str,
    *,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    since_txid: int | None = None,
    until_txid: int | None = None,
    config: str | os.PathLike | None = None,
    work_dir: str | os.PathLike | None = None,
) -> BisectResult:
    """The first transaction in (since, until] after which ``query``'s result differs from its
    result at ``since`` (default: the start of the transaction-exact window; ``until``: the newest
    transaction).  Bounds are moments (text as the CLI takes it, or a datetime; naive means UTC) or
    transaction ids.  O(log n) probes on one working copy moved by whole, checksum-verified
    transactions; it lives in ``work_dir`` (default: the temporary directory) and is removed after."""
    from walrewind.engine.restore.bisect import bisect as run_bisect
    from walrewind.engine.workspace.recovery import parse_target

    src, _loaded = _source(source, config)
    since_text, until_text = _timestamp_text(since), _timestamp_text(until)
    outcome = run_bisect(
        src.storage(), query,
        since_us=parse_target(since_text) if since_text is not None else None, since_txid=since_txid,
        until_us=parse_target(until_text) if until_text is not None else None, until_txid=until_txid,
        work_dir=os.fspath(work_dir) if work_dir is not None else None,
    )
    r = outcome.range
    after = outcome.after
    return BisectResult(
        outcome.changed, outcome.txid, _dt(outcome.commit_us), list(outcome.before.rows or ()),
        list(after.rows) if after is not None and after.rows is not None else None,
        after.error if after is not None else None,
        r.since_txid, _dt(r.since_us), r.until_txid, _dt(r.until_us),  # type: ignore[arg-type]
        len(outcome.probes), outcome.seconds, list(r.notes), list(outcome.warnings),
    )


def mark(source: str, name: str, *, note: str | None = None, timeout: float | None = None,
         config: str | os.PathLike | None = None) -> Mark:
    """Record restore point ``name``: every transaction committed when this is called, none after.

    Reads SQLite's commit counter of the live database (read-only; safe inside the application's
    own process), waits up to ``timeout`` seconds (default 30) for the daemon to upload that far,
    and writes the mark into the replica.  Raises ``MarkExists``, ``MarkTimeout``, ``MarkInexact``."""
    from walrewind.engine.workspace.marks import MARK_TIMEOUT_SECONDS, make_mark

    src, loaded = _source(source, config)
    made = make_mark(src, name, config=loaded, note=note, timeout=MARK_TIMEOUT_SECONDS if timeout is None else timeout)
    return _mark(made)


def marks(source: str, *, config: str | os.PathLike | None = None) -> list[Mark]:
    """Every mark of ``source``, oldest first; ``broken`` says why one can no longer be restored."""
    from walrewind.engine.workspace.marks import list_marks

    src, _loaded = _source(source, config)
    statuses, _unreadable = list_marks(src)
    return [_mark(s.mark, s.broken) for s in statuses]


def unmark(source: str, name: str, *, config: str | os.PathLike | None = None) -> None:
    """Remove mark ``name`` (retention may then delete the history only it kept)."""
    from walrewind.engine.workspace.marks import remove_mark

    src, _loaded = _source(source, config)
    remove_mark(src, name)
