"""Databases by name: replicated sources (the config file) and restored copies (the catalog).

``db show``, ``db list``, ``db shell``, ``db destroy`` and ``diff`` look databases up here.  A
replicated source is only ever opened read-only; walrewind never deletes one.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import apsw

from ..daemon.spool import default_state_dir
from ..errors import DatabaseError, UnknownSource, UsageError, WalrewindError
from ..maintenance.scheduler import read_status
from ..sqlite.dbinfo import file_url, journal_mode, open_readonly, page_info, tables
from ..timeparse import format_us
from .catalog import Catalog, CatalogEntry
from .config import Config, DatabaseConfig
from .diff import TableDiff, diff_table
from .sources import Source
from .status import replication_status


@dataclass
class NamedDatabase:
    name: str
    kind: str  # "replicated" | "restored"
    path: str
    source: DatabaseConfig | None = None
    entry: CatalogEntry | None = None

    @property
    def readonly(self) -> bool:
        return self.kind == "replicated"

    @property
    def url(self) -> str:
        return file_url(self.path, readonly=self.readonly)


def known_names(config: Config, catalog: Catalog) -> list[str]:
    return sorted(set(config.databases) | {e.name for e in catalog.entries()})


def lookup(config: Config, catalog: Catalog, name: str) -> NamedDatabase:
    """A configured database, else a restored copy; UnknownSource listing the known names."""
    if name in config.databases:
        db = config.databases[name]
        return NamedDatabase(name, "replicated", db.path, source=db)
    entry = catalog.get(name)
    if entry is not None:
        return NamedDatabase(name, "restored", entry.path, entry=entry)
    names = known_names(config, catalog)
    known = ", ".join(names) if names else f"none yet (add [databases.NAME] to {config.path})"
    raise UnknownSource(f"unknown database {name!r}; known databases: {known}")


def existing(config: Config, catalog: Catalog, name: str) -> NamedDatabase:
    """``lookup``, and the file must exist."""
    db = lookup(config, catalog, name)
    if not os.path.exists(db.path):
        raise UsageError(f"database {name!r}: {db.path} does not exist")
    return db


def file_info(path: str) -> dict:
    """Size, pages, journal mode and tables of a database file, read-only."""
    if not os.path.exists(path):
        return {"exists": False}
    try:
        conn = open_readonly(path)
        try:
            page_size, page_count = page_info(conn)
            mode = journal_mode(conn)
            listing = [{"name": t.name, "type": t.kind, "rows": t.rows} for t in tables(conn)]
        finally:
            conn.close()
    except apsw.Error as exc:
        raise DatabaseError(f"{path}: cannot read it as a SQLite database ({type(exc).__name__}: {exc})") from None
    wal = path + "-wal"
    return {"exists": True, "size_bytes": page_size * page_count, "file_bytes": os.path.getsize(path),
            "wal_bytes": os.path.getsize(wal) if os.path.exists(wal) else 0, "page_size": page_size,
            "pages": page_count, "journal_mode": mode, "tables": listing}


def describe(config: Config, catalog: Catalog, name: str) -> dict:
    """Everything ``db show`` prints, as plain data.  A replica that cannot be read is reported
    under ``replication.error`` (the rest is still worth showing)."""
    db = lookup(config, catalog, name)
    info = {"name": name, "type": db.kind, "path": db.path, "url": db.url}
    info.update(file_info(db.path))
    if db.entry is not None:
        e = db.entry
        info.update(
            status=e.status, created=format_us(e.created_us), created_by=e.created_by, source=e.source,
            replica=e.replica, target_time=format_us(e.target_us) if e.target_us is not None else None,
            target_txid=e.target_txid, restored_txid=e.restored_txid,
            restored_commit=format_us(e.restored_commit_us) if e.restored_commit_us is not None else None,
            checksum=e.checksum, reason=e.reason,
        )
        return info
    src = db.source
    assert src is not None
    info.update(replica=src.replica_display, retention=src.retention, retention_policy=src.retention_policy().describe())
    info["maintenance"] = read_status(src.state_dir or default_state_dir(src.path))
    try:
        info["replication"] = replication_status(src.path, Source(name, src.replica, src).replica())
    except WalrewindError as exc:
        info["replication"] = {"error": str(exc)}
    return info


def list_all(config: Config, catalog: Catalog) -> list[dict]:
    """Every database: replicated sources first, then restored copies."""
    items = []
    for name, src in sorted(config.databases.items()):
        items.append({"name": name, "type": "replicated", "path": src.path, "size_bytes": file_size(src.path),
                      "replica": src.replica_display, "source": None, "restored_txid": None, "restored_commit": None})
    for e in catalog.entries():
        items.append({"name": e.name, "type": "restored" if e.status == "ready" else f"restored ({e.status})",
                      "path": e.path, "size_bytes": file_size(e.path), "replica": e.replica, "source": e.source,
                      "restored_txid": e.restored_txid,
                      "restored_commit": format_us(e.restored_commit_us) if e.restored_commit_us is not None else None,
                      "reason": e.reason})
    return items


def file_size(path: str) -> int | None:
    """Bytes on disk including a -wal (what the database occupies), None when missing."""
    if not os.path.exists(path):
        return None
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def destroy(config: Config, catalog: Catalog, name: str) -> list[str]:
    """Remove restored copy NAME (file, -wal, -shm, -journal) and its catalog entry; returns the
    files removed.  Replicated sources are refused, always."""
    db = lookup(config, catalog, name)
    if db.entry is None:
        raise UsageError(
            f"{name!r} is a source database under replication ({db.path}, configured in {config.path}); "
            "walrewind never deletes it"
        )
    started = time.monotonic()
    removed = []
    for suffix in ("", "-wal", "-shm", "-journal"):
        path = db.path + suffix
        if os.path.exists(path):
            os.unlink(path)
            removed.append(path)
    catalog.remove(name)
    catalog.record("destroy", "ok", name=name, source=db.entry.source, replica=db.entry.replica, output=db.path,
                   duration_s=time.monotonic() - started)
    return removed


def compare_table(config: Config, catalog: Catalog, name: str, other: str, table: str,
                  key: list[str] | None = None) -> tuple[TableDiff, NamedDatabase]:
    """``walrewind diff``: TABLE in database NAME (usually a restored copy) against database OTHER
    (usually the live source), both opened read-only.  Returns the diff and OTHER."""
    a = existing(config, catalog, name)
    b = existing(config, catalog, other)
    if os.path.realpath(a.path) == os.path.realpath(b.path):
        raise UsageError(f"{name!r} and {other!r} are the same file; compare two different databases")
    try:
        return diff_table(a.path, b.path, table, key), b
    except apsw.Error as exc:
        raise DatabaseError(f"cannot compare {table!r} of {name!r} and {other!r}: {type(exc).__name__}: {exc}") from None


def open_for_shell(db: NamedDatabase) -> apsw.Connection:
    """A connection for ``db shell``: read-only for replicated sources, read-write for copies."""
    try:
        if db.readonly:
            return open_readonly(db.path)
        conn = apsw.Connection(db.path, flags=apsw.SQLITE_OPEN_READWRITE)
        conn.set_busy_timeout(5000)
        return conn
    except apsw.Error as exc:
        raise DatabaseError(f"cannot open {db.path}: {exc}") from None
