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
    it, or a datetime; naive means UTC), ``txid``, or the latest point; verified by checksum and
    quick_check.  Recorded in the recovery history when a config is in use, like the CLI's."""
    from walrewind.engine.errors import UsageError
    from walrewind.engine.workspace.recovery import Target, restore_to_file

    if mark is not None:
        raise UsageError("named restore points (mark=) are not available in this build yet")
    src, loaded = _source(source, config)
    target = Target.parse(_timestamp_text(timestamp), txid, exclusive)
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
