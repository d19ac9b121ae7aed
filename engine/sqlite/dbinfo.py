"""Look inside a SQLite database without changing it: tables, row counts, schema, integrity.

Everything opens the file with apsw, read-only and without checkpoint-on-close, so this is safe on
a live database under replication (it behaves like any other reader) and on restored copies.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import quote

import apsw

from ..errors import NotReplicable


def open_readonly(path: str, busy_ms: int = 5000) -> apsw.Connection:
    """A read-only connection that never checkpoints and never creates the file."""
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
    conn.set_busy_timeout(busy_ms)
    return conn


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def file_url(path: str, readonly: bool = False) -> str:
    """A SQLite URI for ``path`` (works with sqlite3.connect(url, uri=True), apsw, the sqlite3 CLI)."""
    url = "file:" + quote(path, safe="/")
    return url + "?mode=ro" if readonly else url


@dataclass
class TableInfo:
    name: str
    kind: str  # table | view | virtual
    rows: int | None
    sql: str | None


def tables(conn: apsw.Connection, schema: str = "main", count_rows: bool = True) -> list[TableInfo]:
    """User tables and views (sqlite_* internals left out), with row counts for tables."""
    out = []
    master = f"{quote_ident(schema)}.sqlite_schema"
    for name, kind, sql in conn.execute(
        f"SELECT name, type, sql FROM {master} WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
        "ORDER BY name"
    ).fetchall():
        if kind == "table" and (sql or "").upper().startswith("CREATE VIRTUAL"):
            kind = "virtual"
        rows = None
        if count_rows and kind == "table":
            rows = conn.execute(f"SELECT count(*) FROM {quote_ident(schema)}.{quote_ident(name)}").fetchall()[0][0]
        out.append(TableInfo(name, kind, rows, sql))
    return out


def integrity_check(conn: apsw.Connection, limit: int = 20) -> list[str]:
    """``PRAGMA integrity_check`` messages; ``['ok']`` when the database is sound."""
    return [str(r[0]) for r in conn.execute(f"PRAGMA integrity_check({int(limit)})")]


def page_info(conn: apsw.Connection) -> tuple[int, int]:
    """(page_size, page_count) as SQLite sees the database (WAL included)."""
    page_size = conn.execute("PRAGMA page_size").fetchall()[0][0]
    page_count = conn.execute("PRAGMA page_count").fetchall()[0][0]
    return page_size, page_count


def journal_mode(conn: apsw.Connection) -> str:
    return str(conn.execute("PRAGMA journal_mode").fetchall()[0][0])


def check_replicable(path: str) -> None:
    """Refuse, before anything is created (state directory, replica), a file the daemon cannot
    replicate: missing, not a SQLite database, or not in WAL mode."""
    if not os.path.isfile(path):
        raise NotReplicable(f"{path}: no such database file")
    try:
        conn = open_readonly(path)
        try:
            mode = journal_mode(conn)
        finally:
            conn.close()
    except apsw.NotADBError:
        raise NotReplicable(f"{path} is not a SQLite database (file is not a database)") from None
    except apsw.Error as exc:
        raise NotReplicable(f"{path}: cannot open it as a SQLite database ({exc})") from None
    if mode.lower() != "wal":
        raise NotReplicable(
            f"{path}: database is in {mode!r} journal mode; walrewind needs WAL "
            "(run PRAGMA journal_mode=WAL once in your application)"
        )


@dataclass
class Validation:
    tables: list[TableInfo]
    integrity: list[str]

    @property
    def ok(self) -> bool:
        return self.integrity == ["ok"]

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "integrity_check": self.integrity,
            "tables": [{"name": t.name, "type": t.kind, "rows": t.rows} for t in self.tables],
        }


def validate(path: str) -> Validation:
    """Row counts of every table plus ``PRAGMA integrity_check`` (the thorough one: indexes too)."""
    conn = open_readonly(path)
    try:
        try:
            listing = tables(conn)
        except apsw.Error as exc:
            return Validation([], [f"cannot read tables: {type(exc).__name__}: {exc}"])
        try:
            return Validation(listing, integrity_check(conn))
        except apsw.Error as exc:
            return Validation(listing, [f"{type(exc).__name__}: {exc}"])
    finally:
        conn.close()
