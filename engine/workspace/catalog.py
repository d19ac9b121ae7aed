"""The data directory's catalog: which restored databases exist, where they came from, and the
recovery history (every create/restore/destroy, failures included).

It is a small SQLite file (``<data_dir>/catalog.db``) opened with apsw.  A name is *reserved* by
inserting its row before the restore starts (the primary key makes two concurrent ``db create``
of one name impossible) and marked ``ready`` when the file is in place; a row left ``creating`` by
a crash is shown as incomplete and can be destroyed.
"""

from __future__ import annotations

import getpass
import os
import time
from dataclasses import dataclass, fields

import apsw

from ..errors import NameTaken
from ..fsutil import private_dir, private_file

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS databases(
    name TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    status TEXT NOT NULL,             -- creating | ready
    created_us INTEGER NOT NULL,
    created_by TEXT,
    source TEXT,                      -- the configured database it was restored from
    replica TEXT,                     -- the replica URL it was read from
    target_us INTEGER,                -- requested --timestamp (NULL: latest or --txid)
    target_txid INTEGER,              -- requested --txid
    restored_txid INTEGER,            -- the point it landed on
    restored_commit_us INTEGER,
    checksum TEXT,
    reason TEXT
);
CREATE TABLE IF NOT EXISTS history(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_us INTEGER NOT NULL,
    user TEXT NOT NULL,
    action TEXT NOT NULL,             -- create | restore | destroy
    name TEXT,                        -- the database created/destroyed (restore: NULL)
    source TEXT,
    replica TEXT,
    output TEXT,                      -- file written
    target_input TEXT,                -- the target as typed (--timestamp text, 'txid N' or 'latest')
    target_us INTEGER,
    target_txid INTEGER,
    restored_txid INTEGER,
    restored_commit_us INTEGER,
    reason TEXT,
    result TEXT NOT NULL,             -- ok | failed
    error TEXT,
    duration_s REAL
);
"""


def now_us() -> int:
    return time.time_ns() // 1000


def current_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers) and no LOGNAME/USER
        return f"uid {os.getuid()}"


@dataclass
class CatalogEntry:
    name: str
    path: str
    status: str
    created_us: int
    created_by: str | None = None
    source: str | None = None
    replica: str | None = None
    target_us: int | None = None
    target_txid: int | None = None
    restored_txid: int | None = None
    restored_commit_us: int | None = None
    checksum: str | None = None
    reason: str | None = None


@dataclass
class HistoryEntry:
    id: int
    at_us: int
    user: str
    action: str
    name: str | None
    source: str | None
    replica: str | None
    output: str | None
    target_input: str | None
    target_us: int | None
    target_txid: int | None
    restored_txid: int | None
    restored_commit_us: int | None
    reason: str | None
    result: str
    error: str | None
    duration_s: float | None


_ENTRY_COLS = [f.name for f in fields(CatalogEntry)]
_HISTORY_COLS = [f.name for f in fields(HistoryEntry)]


class Catalog:
    def __init__(self, path: str, create: bool = True) -> None:
        self.path = os.path.abspath(path)
        if create:
            private_dir(os.path.dirname(self.path))  # the data directory: catalog and restored copies
        self._conn: apsw.Connection | None = None
        self._create = create

    @property
    def exists(self) -> bool:
        return os.path.exists(self.path)

    def _db(self) -> apsw.Connection:
        if self._conn is None:
            if self._create:
                private_file(self.path)  # 0600: names, paths, reasons, replica URLs
            flags = apsw.SQLITE_OPEN_READWRITE | (apsw.SQLITE_OPEN_CREATE if self._create else 0)
            conn = apsw.Connection(self.path, flags=flags)
            conn.set_busy_timeout(10_000)
            if conn.execute("PRAGMA user_version").fetchall()[0][0] < SCHEMA_VERSION:
                with conn:
                    conn.execute(_SCHEMA)
                    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- databases ------------------------------------------------------------------------------
    def reserve(self, entry: CatalogEntry) -> None:
        """Claim a name (status 'creating'); NameTaken if any row already holds it."""
        cols = ", ".join(_ENTRY_COLS)
        marks = ", ".join("?" for _ in _ENTRY_COLS)
        try:
            with self._db():
                self._db().execute(f"INSERT INTO databases({cols}) VALUES ({marks})", [getattr(entry, c) for c in _ENTRY_COLS])
        except apsw.ConstraintError:
            raise NameTaken(entry.name) from None

    def update(self, name: str, **values) -> None:
        sets = ", ".join(f"{k} = ?" for k in values)
        with self._db():
            self._db().execute(f"UPDATE databases SET {sets} WHERE name = ?", [*values.values(), name])

    def remove(self, name: str) -> None:
        with self._db():
            self._db().execute("DELETE FROM databases WHERE name = ?", (name,))

    def get(self, name: str) -> CatalogEntry | None:
        if not self.exists:
            return None
        rows = self._db().execute(f"SELECT {', '.join(_ENTRY_COLS)} FROM databases WHERE name = ?", (name,)).fetchall()
        return CatalogEntry(*rows[0]) if rows else None

    def entries(self) -> list[CatalogEntry]:
        if not self.exists:
            return []
        sql = f"SELECT {', '.join(_ENTRY_COLS)} FROM databases ORDER BY name"
        return [CatalogEntry(*row) for row in self._db().execute(sql)]

    # -- history --------------------------------------------------------------------------------
    def record(self, action: str, result: str, **values) -> int:
        """Append one line to the recovery history; returns its id."""
        row = {"at_us": values.pop("at_us", None) or now_us(), "user": values.pop("user", None) or current_user(),
               "action": action, "result": result, **values}
        unknown = set(row) - set(_HISTORY_COLS)
        if unknown:
            raise TypeError(f"unknown history fields {sorted(unknown)}")
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._db():
            self._db().execute(f"INSERT INTO history({cols}) VALUES ({marks})", list(row.values()))
        return self._db().last_insert_rowid()

    def history(self, limit: int | None = None, name: str | None = None, failed_only: bool = False) -> list[HistoryEntry]:
        """Newest first."""
        if not self.exists:
            return []
        conditions, args = [], []
        if name:
            conditions.append("(name = ? OR source = ?)")
            args += [name, name]
        if failed_only:
            conditions.append("result != 'ok'")
        where = ("WHERE " + " AND ".join(conditions)) if conditions else ""
        sql = f"SELECT {', '.join(_HISTORY_COLS)} FROM history {where} ORDER BY id DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [HistoryEntry(*row) for row in self._db().execute(sql, args)]

    def prune_history(self, before_us: int) -> int:
        """Delete history lines older than ``before_us``; returns how many."""
        if not self.exists:
            return 0
        with self._db():
            self._db().execute("DELETE FROM history WHERE at_us < ?", (before_us,))
            return self._db().changes()
