"""Recoveries as a user runs them: restore a source into a file or a named database, and record it.

The CLI and the Python API share these workflows.  ``create_database`` reserves the name in the
catalog before anything is written (two concurrent creates of one name cannot both win), restores,
marks the name ready, and records the attempt in the recovery history; on any failure the
reservation is rolled back and the failure recorded.  When the source is a sqld namespace, the
new database is a new namespace of that sqld (engine/workspace/sqldload.py puts the restored
file in place and checks it over HTTP).  ``restore_to_file`` does the same for a plain
output file when a config (and so a catalog) is in use.  Recording is best effort: a restore is
often done in an emergency, and an unwritable catalog must not stop it (a warning says so).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from ..errors import (
    ConfigError,
    MarkError,
    NameTaken,
    ReplicaEmpty,
    TimestampError,
    UsageError,
    VerificationFailed,
)
from ..replica.marks import validate_mark_name
from ..restore.planning import plan_restore
from ..restore.restorer import Progress, RestoreResult, restore
from ..sqlite.dbinfo import Validation, validate
from ..storage import Storage
from ..timeparse import format_us, parse_timestamp_us
from .catalog import Catalog, CatalogEntry, current_user, now_us
from .config import Config, validate_name
from .sources import Source
from .sqld import validate_new_namespace

if TYPE_CHECKING:  # imported where used: a plain restore does not load marks, drills or sqld loading
    from ..restore.drills import DrillResult
    from .sqldload import Loaded

ACCEPTED_FORMS = (
    "accepted forms: 2024-01-15T10:30:00Z, 2024-01-15T10:30:00.250Z, 2024-01-15T19:30:00+09:00, "
    "2024-01-15 10:30 (no offset = UTC), 2024-01-15 (start of that day, UTC), now, -5m, '5 minutes ago', "
    "'1h30m ago', @1705314600 (Unix epoch seconds)"
)


@dataclass(frozen=True)
class Target:
    """What to restore to: a moment, a transaction, a named mark, or (none) the latest point.

    Inclusive by default: every transaction committed at or before the moment, or up to and
    including the txid (a mark is its txid).  ``exclusive`` stops just before it (PostgreSQL's
    recovery_target_inclusive=false): the state right before transaction N, or with only what
    committed strictly before the moment.  A mark is looked up in the replica by ``resolved``,
    which fills ``txid``; a mark target cannot be used before that.
    """

    text: str | None = None  # the timestamp as typed
    us: int | None = None
    txid: int | None = None
    exclusive: bool = False
    mark: str | None = None  # a mark's name (engine/replica/marks.py)

    @classmethod
    def parse(cls, timestamp: str | None = None, txid: int | None = None, exclusive: bool = False,
              mark: str | None = None) -> "Target":
        given = [opt for opt, value in (("--timestamp", timestamp), ("--txid", txid), ("--mark", mark)) if value is not None]
        if len(given) > 1:
            raise UsageError(f"use one of --timestamp, --txid and --mark, not {' and '.join(given)}")
        if exclusive and not given:
            raise UsageError("--exclusive needs a target (--timestamp, --txid or --mark): the latest point has no 'before'")
        if mark is not None:
            validate_mark_name(mark)
        return cls(timestamp, parse_target(timestamp) if timestamp is not None else None, txid, exclusive, mark)

    def resolved(self, storage: Storage) -> "Target":
        """This target with a mark's txid filled in (MarkNotFound, MarkBroken); others as they are."""
        if self.mark is None or self.txid is not None:
            return self
        from .marks import resolve_mark

        return replace(self, txid=resolve_mark(storage, self.mark, self.exclusive).txid)

    @property
    def restore_us(self) -> int | None:
        """The moment handed to the restorer (inclusive of everything at or before it)."""
        return self.us - 1 if (self.us is not None and self.exclusive) else self.us

    @property
    def restore_txid(self) -> int | None:
        if self.mark is not None and self.txid is None:
            raise MarkError(f"mark {self.mark!r} was not looked up in the replica (Target.resolved)")
        return self.txid - 1 if (self.txid is not None and self.exclusive) else self.txid

    @property
    def typed(self) -> str:
        """The target as the history shows it."""
        if self.text is not None:
            typed = self.text
        elif self.mark is not None:
            typed = f"mark {self.mark}"
        else:
            typed = f"txid {self.txid}" if self.txid is not None else "latest"
        return typed + (" (exclusive)" if self.exclusive else "")

    def describe(self) -> str:
        before = "just before " if self.exclusive else ""
        if self.us is not None:
            return f"as of {before}{format_us(self.us)}" if self.exclusive else f"as of {format_us(self.us)}"
        if self.mark is not None:
            return f"{before or 'at '}mark {self.mark!r}" + (f" (txid {self.txid})" if self.txid is not None else "")
        return f"{before or 'at '}txid {self.txid}" if self.txid is not None else "at the latest point"


def parse_target(text: str) -> int:
    """parse_timestamp_us, with every accepted form listed when the text is none of them."""
    try:
        return parse_timestamp_us(text)
    except TimestampError as exc:
        if "format" in str(exc):
            raise TimestampError(f"{exc}; {ACCEPTED_FORMS}") from None
        raise


@dataclass
class Recovery:
    """The outcome of a restore workflow: the restore itself, the optional validation, warnings."""

    result: RestoreResult
    validation: Validation | None = None
    name: str | None = None  # the database created (db create)
    warnings: list[str] = field(default_factory=list)  # about the workflow (history not recorded, ...)
    namespace: Loaded | None = None  # db create into a sqld namespace: how it was loaded and checked

    @property
    def failed_validation(self) -> bool:
        return self.validation is not None and not self.validation.ok

    def validation_error(self) -> str | None:
        if not self.failed_validation:
            return None
        return "validation failed: integrity_check: " + "; ".join(self.validation.integrity[:3])  # type: ignore[union-attr]


# Mistakes in what was typed (a bad timestamp, an unknown name, a name taken, a target before the
# window, an empty or wrong replica) are answered on the spot and not recorded: the history is for
# recoveries that started work, and 25 typos in it hide the one restore that matters.
INPUT_MISTAKES = (UsageError, TimestampError, ConfigError, ReplicaEmpty)


class _History:
    """One history line for this workflow, written best effort."""

    def __init__(self, config: Config | None, action: str, **values) -> None:
        self.started = time.monotonic()
        self.action = action
        self.values = values
        self.warnings: list[str] = []
        self.catalog: Catalog | None = None
        if config is not None:
            try:
                self.catalog = Catalog(config.catalog_path)
            except Exception as exc:  # an unwritable data directory must not stop a restore
                self.warnings.append(f"this {action} is not recorded in the history: {exc}")

    def failed(self, exc: BaseException) -> None:
        if not isinstance(exc, INPUT_MISTAKES):
            self.write("failed", error=str(exc) or type(exc).__name__)
        elif self.catalog is not None:
            self.catalog.close()

    def write(self, result: str, **values) -> None:
        if self.catalog is None:
            return
        try:
            self.catalog.record(self.action, result, duration_s=time.monotonic() - self.started,
                                **{**self.values, **values})
        except Exception as exc:
            self.warnings.append(f"this {self.action} is not recorded in the history: {exc}")
        finally:
            self.catalog.close()


def _normalize(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return "file://" + os.path.abspath(parsed.path)
    if not parsed.scheme:
        return "file://" + os.path.abspath(url)
    return url


def source_name(source: Source, config: Config | None) -> str | None:
    """The configured name of a source, also when it was typed as its replica URL."""
    if source.name is not None or config is None:
        return source.name
    wanted = _normalize(source.replica_url)
    return next((n for n, db in config.databases.items() if _normalize(db.replica) == wanted), None)


IN_PLACE_HOWTO = (
    "to recover a database in place: stop the application (and the daemon), restore beside it "
    "(-o {path}.restored), check the copy, move it over {path} while nothing has it open, then start the "
    "application and the daemon again (the daemon notices the new file and starts a new generation)"
)


def refuse_live_database(path: str, config: Config | None) -> None:
    """Never write a restore over a database that is being replicated or is a configured source,
    whatever --force says: a restore replacing a live database under its application and daemon
    loses the writes in flight and leaves the daemon shipping a file that no longer exists."""
    real = os.path.realpath(path)
    if config is not None:
        for name, db in config.databases.items():
            if os.path.realpath(db.path) == real:
                raise UsageError(f"refusing to write over {path}: it is the replicated source database {name!r} "
                                 f"(configured in {config.path}); --force does not change that. "
                                 + IN_PLACE_HOWTO.format(path=path))
    if config is not None and config.sqld is not None and config.sqld.owns(path) is not None:
        raise UsageError(f"refusing to write over {path}: it is inside sqld's data directory (namespace "
                         f"{config.sqld.owns(path)!r}); --force does not change that. To get a namespace back as it "
                         "was, create a new one: walrewind db create NEW --from-db NAMESPACE --timestamp T")
    from ..daemon.health import (
        database_health,  # here: a restore's start-up does not load the daemon
    )

    daemon = database_health(path)  # what every running `walrewind replicate` says it replicates
    if daemon is not None:
        raise UsageError(f"refusing to write over {path}: a walrewind daemon (pid {daemon['pid']}) is replicating it "
                         f"to {daemon.get('replica')}; --force does not change that. " + IN_PLACE_HOWTO.format(path=path))


def dry_run(source: Source, target: Target) -> dict:
    """What a restore to ``target`` would read and the transaction it would land on, without
    restoring.  Planning uses names only; finding the landing point inside a segment opens that
    one segment (a time or txid that is not a segment boundary)."""
    if target.mark is not None:
        target = target.resolved(source.storage())
    replica = source.replica()
    plan = plan_restore(replica, target.restore_us, target.restore_txid)
    txid, commit_us = plan.snapshot.txid, plan.snapshot.ts_us
    if plan.exact:
        for seg in plan.segments:
            want_txid, want_us = target.restore_txid, target.restore_us
            if want_txid is not None and seg.first_txid > want_txid:
                break
            if want_us is not None and seg.first_ts_us > want_us:
                break
            inside = (want_txid is not None and seg.last_txid > want_txid) or (
                want_us is not None and seg.last_ts_us > want_us)
            if not inside:
                txid, commit_us = seg.last_txid, seg.last_ts_us
                continue
            _header, records = replica.load_segment(seg)
            for rec in records:
                if (want_txid is not None and rec.txid > want_txid) or (
                        want_us is not None and rec.commit_ts_us > want_us):
                    break
                txid, commit_us = rec.txid, rec.commit_ts_us
            break
    return {"dry_run": True, **plan.describe(), "lands_on": {"txid": txid, "commit_time": format_us(commit_us)}}


def restore_to_file(
    source: Source,
    output: str,
    target: Target,
    *,
    config: Config | None = None,
    force: bool = False,
    validate_after: bool = False,
    reason: str | None = None,
    progress: Progress | None = None,
    check: str = "quick",
) -> Recovery:
    """Restore ``source`` into the new file ``output``; recorded in the history when a config is in use.

    ``check`` is the SQLite check run on the restored file after its recorded checksum matched:
    "quick" (quick_check, the default), "full" (integrity_check) or "none"."""
    history = _History(config, "restore", replica=source.display, output=os.path.abspath(output),
                       target_txid=target.txid, target_us=target.us, reason=reason, target_input=target.typed,
                       source=source_name(source, config))
    try:
        target = _resolve(source, target, history)
        refuse_live_database(output, config)
        result = restore(source.storage(), output, target_us=target.restore_us, target_txid=target.restore_txid,
                         force=force, progress=progress, check=check)
        _check_landed(result, target)
    except BaseException as exc:
        history.failed(exc)
        raise
    recovery = Recovery(result, validate(result.path) if validate_after else None)
    history.write("failed" if recovery.failed_validation else "ok", restored_txid=result.txid,
                  restored_commit_us=result.commit_us, error=recovery.validation_error())
    recovery.warnings = history.warnings
    return recovery


def create_database(
    config: Config,
    name: str,
    source: Source,
    target: Target,
    *,
    reason: str | None = None,
    validate_after: bool = False,
    progress: Progress | None = None,
    check: str = "quick",
    load_method: str = "auto",
) -> Recovery:
    """Restore ``source`` as of ``target`` into the new named database ``name`` (a new file, or a
    new sqld namespace when the source is one; the source is never touched): reserve the name,
    restore, mark it ready, record it."""
    if source.database is not None and source.database.namespace is not None:
        return _create_namespace(config, name, source, target, reason=reason, validate_after=validate_after,
                                 progress=progress, load_method=load_method, check=check)
    validate_name(name)
    catalog = Catalog(config.catalog_path, create=True)
    history = _create_history(config, name, source, target, reason)
    reserved = False
    try:
        target = _resolve(source, target, history)
        out_path = _check_new_name(config, catalog, name)
        _reserve(config, catalog, name, out_path, history, source, target, reason)
        reserved = True
        history.values["output"] = out_path
        result = restore(source.storage(), out_path, target_us=target.restore_us, target_txid=target.restore_txid,
                         progress=progress, check=check)
        _check_landed(result, target)
        catalog.update(name, status="ready", restored_txid=result.txid, restored_commit_us=result.commit_us,
                       checksum=f"{result.checksum:016x}")
        reserved = False
    except BaseException as exc:
        if reserved:
            catalog.remove(name)
        history.failed(exc)
        raise
    finally:
        catalog.close()
    recovery = Recovery(result, validate(out_path) if validate_after else None, name=name)
    history.write("failed" if recovery.failed_validation else "ok", restored_txid=result.txid,
                  restored_commit_us=result.commit_us, error=recovery.validation_error())
    recovery.warnings = history.warnings
    return recovery


def _create_namespace(config: Config, name: str, source: Source, target: Target, *, reason: str | None,
                      validate_after: bool, progress: Progress | None, load_method: str, check: str) -> Recovery:
    """``create_database`` into a new namespace of the source's sqld: restore into a file of the
    data directory, check it, then engine/workspace/sqldload.py makes it namespace NAME."""
    sqld = config.sqld
    assert sqld is not None
    from .sqldload import load_restored, preflight

    validate_new_namespace(name)
    catalog = Catalog(config.catalog_path, create=True)
    history = _create_history(config, name, source, target, reason)
    out_path = sqld.namespace_path(name)
    tmp = os.path.join(config.databases_dir, f".{name}.namespace-{os.getpid()}.db")
    reserved = keep_tmp = False
    try:
        target = _resolve(source, target, history)
        _check_new_name(config, catalog, name, out_path)
        preflight(sqld, name)  # admin and HTTP API configured and reachable, the name free: before the restore
        _reserve(config, catalog, name, out_path, history, source, target, reason)
        reserved = True
        history.values["output"] = out_path
        result = restore(source.storage(), tmp, target_us=target.restore_us, target_txid=target.restore_txid,
                         progress=progress, check=check)
        _check_landed(result, target)
        validation = validate(tmp) if validate_after else None
        if validation is not None and not validation.ok:
            keep_tmp = True
            raise VerificationFailed(f"validation failed (integrity_check: {'; '.join(validation.integrity[:3])}); no "
                                     f"namespace was created; the restored copy is kept at {tmp}")
        loaded = load_restored(sqld, name, tmp, work_dir=os.path.join(config.data_dir, "tmp"), method=load_method)
        result.path = out_path
        catalog.update(name, status="ready", restored_txid=result.txid, restored_commit_us=result.commit_us,
                       checksum=f"{result.checksum:016x}")
        reserved = False
    except BaseException as exc:
        if reserved:
            catalog.remove(name)
        if not keep_tmp:
            _remove_quietly(tmp)
        history.failed(exc)
        raise
    finally:
        for suffix in ("-wal", "-shm"):
            _remove_quietly(tmp + suffix)
        catalog.close()
    recovery = Recovery(result, validation, name=name, namespace=loaded)
    history.write("ok", restored_txid=result.txid, restored_commit_us=result.commit_us)
    recovery.warnings = history.warnings
    return recovery


def _create_history(config: Config, name: str, source: Source, target: Target, reason: str | None) -> _History:
    """The history entry of a `db create` (into a file or a sqld namespace), written as it ends."""
    return _History(config, "create", name=name, source=source_name(source, config), replica=source.display,
                    target_txid=target.txid, target_us=target.us, reason=reason, target_input=target.typed)


def _resolve(source: Source, target: Target, history: _History) -> Target:
    """``target`` with a mark looked up (its txid then goes into the history too)."""
    if target.mark is None:
        return target  # nothing to look up: the replica is opened where it always was
    resolved = target.resolved(source.storage())
    history.values["target_txid"] = resolved.txid
    return resolved


def _check_landed(result: RestoreResult, target: Target) -> None:
    """A mark promises one exact transaction: a restore landing anywhere else is refused (the
    mark was checked restorable just before, so this only catches a replica changed meanwhile)."""
    if target.mark is not None and (result.txid != target.restore_txid or not result.exact):
        _remove_quietly(result.path)
        raise VerificationFailed(f"the restore for mark {target.mark!r} landed on txid {result.txid}, not "
                                 f"{target.restore_txid}; nothing is left behind (did the replica change meanwhile?)")


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _reserve(config: Config, catalog: Catalog, name: str, out_path: str, history: _History, source: Source,
             target: Target, reason: str | None) -> None:
    """Claim NAME in the catalog (status 'creating') before anything is written: of two concurrent
    creates of one name, exactly one gets past this."""
    os.makedirs(config.databases_dir, exist_ok=True)
    try:
        catalog.reserve(CatalogEntry(name, out_path, "creating", now_us(), current_user(), history.values["source"],
                                     source.display, target.us, target.txid, reason=reason))
    except NameTaken:
        raise NameTaken(f"database {name!r} already exists (being created by another command)") from None


def _check_new_name(config: Config, catalog: Catalog, name: str, namespace_path: str | None = None) -> str:
    """The path NAME will get; NameTaken when the name or its file is already in use."""
    if name in config.databases:
        raise NameTaken(f"database {name!r} already exists (a replicated database in {config.path}); choose another name")
    existing = catalog.get(name)
    if existing is not None:
        raise NameTaken(
            f"database {name!r} already exists (restored copy at {existing.path}); choose another name "
            f"or remove it first with: walrewind db destroy {name} --yes"
        )
    if config.sqld is not None and os.path.lexists(config.sqld.namespace_dir(name)):
        raise NameTaken(f"database {name!r} already exists: sqld namespace {name!r} ({config.sqld.namespace_dir(name)}); "
                        "choose another name")
    out_path = namespace_path or config.restored_path(name)
    if os.path.exists(out_path):
        raise NameTaken(f"database {name!r} already exists: {out_path} is in the way (not in the catalog); move it away first")
    return out_path


def record_drills(config: Config | None, source: Source, results: list[DrillResult]) -> list[str]:
    """Put restore drills (``verify``) into the history; returns warnings (best effort)."""
    warnings: list[str] = []
    for r in results:
        history = _History(config, "verify", source=source_name(source, config), replica=source.display,
                           target_input=r.target_text, target_us=r.target_us, target_txid=r.target_txid)
        history.started = time.monotonic() - r.seconds
        history.write("ok" if r.passed else "failed", restored_txid=r.txid, restored_commit_us=r.commit_us,
                      error=None if r.passed else r.detail)
        warnings.extend(history.warnings)
    return warnings
