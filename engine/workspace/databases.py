"""Databases by name: replicated sources (the config file), sqld namespaces (``[sqld]``, found on
disk) and restored copies (the catalog).

``db show``, ``db list``, ``db shell``, ``db destroy`` and ``diff`` look databases up here.  A
replicated source or a namespace is only ever opened read-only; walrewind never deletes a source,
nor a namespace it did not create (``db create NEW --from-db NAMESPACE`` makes one; ``db destroy``
deletes it again through sqld's admin API).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import apsw

from .. import defaults
from ..daemon.health import database_health
from ..errors import DatabaseError, UnknownSource, UsageError, WalrewindError
from ..maintenance.scheduler import read_status
from ..sqlite.dbinfo import file_url, journal_mode, open_readonly, page_info, tables
from ..timeparse import format_us
from .catalog import Catalog, CatalogEntry
from .config import Config, DatabaseConfig
from .diff import TableDiff, diff_table
from .sources import Source
from .sqld import SqldAdmin, client_url, is_namespace, namespace_id, namespace_names
from .status import replication_status

NAMESPACE = "sqld namespace"


@dataclass
class NamedDatabase:
    name: str
    kind: str  # "replicated" | "restored" | "sqld namespace"
    path: str
    source: DatabaseConfig | None = None  # replicated or namespace: its settings
    entry: CatalogEntry | None = None  # restored, or a namespace walrewind created
    client_url: str | None = None  # namespace: what a libSQL client connects to

    @property
    def readonly(self) -> bool:
        return self.kind != "restored"

    @property
    def url(self) -> str:
        """What to connect with: a namespace's HTTP URL when known, else a file: URI."""
        return self.client_url or file_url(self.path, readonly=self.readonly)


def known_names(config: Config, catalog: Catalog) -> list[str]:
    namespaces = set(namespace_names(config.sqld.dbs_dir)) if config.sqld is not None else set()
    return sorted(set(config.databases) | namespaces | {e.name for e in catalog.entries()})


def _namespace(config: Config, name: str, entry: CatalogEntry | None) -> NamedDatabase:
    sqld = config.sqld
    assert sqld is not None
    db = sqld.namespace(name, namespace_id(sqld.namespace_dir(name)))
    return NamedDatabase(name, NAMESPACE, db.path, source=db, entry=entry, client_url=client_url(sqld, name))


def lookup(config: Config, catalog: Catalog, name: str) -> NamedDatabase:
    """A configured database, else a sqld namespace, else a restored copy; UnknownSource listing
    the known names."""
    if name in config.databases:
        db = config.databases[name]
        return NamedDatabase(name, "replicated", db.path, source=db)
    entry = catalog.get(name)
    sqld = config.sqld
    if sqld is not None and (is_namespace(sqld, name) or (entry is not None and sqld.owns(entry.path) == name)):
        return _namespace(config, name, entry)
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
        info["origin"] = dict(
            status=e.status, created=format_us(e.created_us), created_by=e.created_by, source=e.source,
            replica=e.replica, target_time=format_us(e.target_us) if e.target_us is not None else None,
            target_txid=e.target_txid, restored_txid=e.restored_txid,
            restored_commit=format_us(e.restored_commit_us) if e.restored_commit_us is not None else None,
            checksum=e.checksum, reason=e.reason,
        )
        if db.kind == "restored":
            info.update(info.pop("origin"))
            return info
    src = db.source
    assert src is not None
    if db.kind == NAMESPACE:
        info["namespace_id"] = src.namespace_id
        if not info["exists"]:
            info["note"] = "the namespace is not on disk (deleted?); its replica is kept"
    info.update(replica=src.replica_display, retention=src.retention, retention_policy=src.retention_policy().describe())
    info["daemon"] = database_health(src.path)
    info["maintenance"] = read_status(src.state_dir or defaults.state_dir_for(src.path))
    try:
        info["replication"] = replication_status(src.path, Source(name, src.replica, src).replica())
    except WalrewindError as exc:
        info["replication"] = {"error": str(exc)}
    return info


def list_all(config: Config, catalog: Catalog) -> list[dict]:
    """Every database: replicated sources first, then sqld namespaces, then restored copies."""
    items = []
    for name, src in sorted(config.databases.items()):
        items.append({"name": name, "type": "replicated", "path": src.path, "size_bytes": file_size(src.path),
                      "replica": src.replica_display, "source": None, "restored_txid": None, "restored_commit": None})
    entries = {e.name: e for e in catalog.entries()}
    if config.sqld is not None:
        for name in namespace_names(config.sqld.dbs_dir):
            if name in config.databases:
                continue
            db = _namespace(config, name, entries.pop(name, None))
            e = db.entry
            items.append({"name": name, "type": NAMESPACE, "path": db.path, "size_bytes": file_size(db.path),
                          "replica": db.source.replica_display if db.source else None, "url": db.client_url,
                          "source": e.source if e else None, "restored_txid": e.restored_txid if e else None,
                          "restored_commit": format_us(e.restored_commit_us) if e and e.restored_commit_us else None})
    for e in entries.values():
        kind = NAMESPACE if config.sqld is not None and config.sqld.owns(e.path) == e.name else "restored"
        items.append({"name": e.name, "type": kind if e.status == "ready" else f"{kind} ({e.status})",
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
    files removed.  A namespace walrewind created is deleted through sqld's admin API.  Replicated
    sources and namespaces walrewind did not create are refused, always."""
    db = lookup(config, catalog, name)
    if db.entry is None and db.kind == NAMESPACE:
        raise UsageError(f"{name!r} is a sqld namespace walrewind did not create ({db.path}); walrewind never deletes "
                         "it (use sqld's admin API: DELETE /v1/namespaces/NAME)")
    if db.entry is None:
        raise UsageError(
            f"{name!r} is a source database under replication ({db.path}, configured in {config.path}); "
            "walrewind never deletes it"
        )
    if db.kind == NAMESPACE:
        return _destroy_namespace(config, catalog, db)
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


def _destroy_namespace(config: Config, catalog: Catalog, db: NamedDatabase) -> list[str]:
    """``DELETE /v1/namespaces/NAME`` (gone already is fine), then the catalog entry.  Its replica
    (if a daemon replicated it meanwhile) is kept, like any replica."""
    assert config.sqld is not None and db.entry is not None
    if config.sqld.admin_url is None:
        raise UsageError(f"deleting namespace {db.name!r} needs admin_url (sqld --admin-listen-addr) in [sqld]")
    started = time.monotonic()
    admin = SqldAdmin(config.sqld.admin_url)
    try:
        deleted = admin.delete(db.name)
    finally:
        admin.close()
    catalog.remove(db.name)
    catalog.record("destroy", "ok", name=db.name, source=db.entry.source, replica=db.entry.replica, output=db.path,
                   duration_s=time.monotonic() - started)
    return [f"sqld namespace {db.name}"] if deleted else []


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
