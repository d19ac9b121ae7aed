"""Put a restored database into a new sqld namespace, then check it over HTTP.

Two ways, both checked against sqld 0.24.32 (docs/SQLD.md):

* **adopt** (byte-faithful, preferred): move the restored file to ``dbs/NEW/data``, then
  ``POST /v1/namespaces/NEW/create {}``.  sqld serves that very file (it rebuilds its replication
  log from it): every page, ``user_version``, ``application_id`` and the schema text are kept.  The
  page size must be 4096 (sqld 0.24 panics on the first write otherwise), so another page size is
  rebuilt first.  It needs ``dbs/`` writable by us and the file owned by sqld's user.
* **dump** (when ``dbs/`` is not ours to write): ``create`` with a ``dump_url`` of a SQL dump.
  sqld reads a dump line by line (it trims lines, drops blank and ``--`` lines, and ends a
  statement at any line that ends with ``;``), so this dump keeps every statement on one line:
  a text value with a line break is written as ``'a'||char(10)||'b'``, and schema SQL is joined
  onto one line (refused when a line break sits inside a quoted string or a ``--`` comment would
  swallow the rest).  ``user_version`` and ``application_id`` are set inside its transaction.

Either way the new namespace must then answer over HTTP with the restored file's tables, row
counts, ``user_version`` and ``application_id``; otherwise it is deleted again and the create
fails.  After a failed load sqld leaves the name registered (empty): it is deleted too.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import apsw

from ..errors import NameTaken, SqldError, UsageError, VerificationFailed
from ..fsutil import fsync_dir
from ..sqlite.dbinfo import file_url, quote_ident
from .config import SqldConfig
from .diff import sql_literal
from .dump import dump_lines
from .sqld import PAGE_SIZE, SqldAdmin, SqldClient, client_url, validate_new_namespace

METHODS = ("auto", "adopt", "dump")


@dataclass(frozen=True)
class Summary:
    """What a namespace must show to count as holding the restored data."""

    tables: dict[str, int]  # every table (sqlite_sequence included, virtual tables left out) -> rows
    user_version: int
    application_id: int

    def differences(self, other: "Summary") -> list[str]:
        out = [f"{k}: {getattr(self, k)} restored, {getattr(other, k)} in the namespace"
               for k in ("user_version", "application_id") if getattr(self, k) != getattr(other, k)]
        for name in sorted(set(self.tables) | set(other.tables)):
            mine, theirs = self.tables.get(name), other.tables.get(name)
            if mine != theirs:
                out.append(f"table {name}: {'missing' if mine is None else mine} restored, "
                           f"{'missing' if theirs is None else theirs} in the namespace")
        return out


_TABLES_SQL = ("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT IN ('sqlite_stat1', 'sqlite_stat4') "
               "AND coalesce(sql, '') NOT LIKE 'CREATE VIRTUAL%' ORDER BY name")


def _open_static(path: str) -> apsw.Connection:
    """Read-only and immutable: our own restored file, never written meanwhile; no -wal/-shm appear."""
    return apsw.Connection(file_url(path) + "?immutable=1", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)


def summarize_file(path: str) -> Summary:
    conn = _open_static(path)
    try:
        names = [r[0] for r in conn.execute(_TABLES_SQL)]
        counts = {n: conn.execute(f"SELECT count(*) FROM {quote_ident(n)}").fetchall()[0][0] for n in names}
        uv = conn.execute("PRAGMA user_version").fetchall()[0][0]
        app = conn.execute("PRAGMA application_id").fetchall()[0][0]
    finally:
        conn.close()
    return Summary(counts, uv, app)


def summarize_namespace(client: SqldClient, name: str) -> Summary:
    """The same, asked over HTTP (two round trips)."""
    names = [r[0] for r in client.query_many(name, [_TABLES_SQL])[0]]
    results = client.query_many(name, [f"SELECT count(*) FROM {quote_ident(n)}" for n in names]
                                + ["PRAGMA user_version", "PRAGMA application_id"])
    counts = {n: rows[0][0] for n, rows in zip(names, results)}
    return Summary(counts, results[-2][0][0], results[-1][0][0])


def ensure_page_size(path: str) -> int | None:
    """Rebuild ``path`` with 4096-byte pages if it has another size; returns the old size, if rebuilt."""
    with open(path, "rb") as f:
        header = f.read(100)
    size = int.from_bytes(header[16:18], "big")
    size = 65536 if size == 1 else size
    if size == PAGE_SIZE:
        return None
    conn = apsw.Connection(path)
    try:
        conn.execute("PRAGMA journal_mode=DELETE").fetchall()  # page size cannot change in WAL mode
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}").fetchall()
        conn.execute("VACUUM")
        conn.execute("PRAGMA journal_mode=WAL").fetchall()
    finally:
        conn.close()
    return size


# --------------------------------------------------------------------------------- the dump
class DumpUnsafe(SqldError):
    """A statement sqld's line-by-line dump loader would change or cut."""


def line_safe_literal(value) -> str:
    """``sql_literal``, with line breaks in text written as char(10)/char(13): one line, same value."""
    if not isinstance(value, str) or ("\n" not in value and "\r" not in value) or "\x00" in value:
        return sql_literal(value)  # (text with a NUL is written as CAST(X'..' AS TEXT): one line already)
    parts = [p for p in re.split(r"(\r|\n)", value) if p]
    return "(" + "||".join("char(10)" if p == "\n" else "char(13)" if p == "\r" else sql_literal(p) for p in parts) + ")"


def one_line(sql: str) -> str:
    """Schema SQL on one line: line breaks (with the blanks around them) become one space."""
    if "\n" not in sql and "\r" not in sql:
        return sql
    out, i, n = [], 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"`[":
            close = "]" if c == "[" else c
            k = i + 1
            while True:
                k = sql.find(close, k)
                if k < 0:
                    raise DumpUnsafe(f"unterminated quote in schema SQL: {sql[:80]!r}")
                if close != "]" and sql.startswith(close * 2, k):
                    k += 2
                    continue
                break
            token = sql[i : k + 1]
            if "\n" in token or "\r" in token:
                raise DumpUnsafe(f"schema SQL with a line break inside a quoted string or name: {sql[:80]!r}")
            out.append(token)
            i = k + 1
        elif sql.startswith("--", i):
            raise DumpUnsafe(f"schema SQL with a -- comment (joined onto one line it would swallow the rest): {sql[:80]!r}")
        elif sql.startswith("/*", i):
            k = sql.find("*/", i + 2)
            k = n if k < 0 else k + 2
            out.append(re.sub(r"\s*[\r\n]\s*", " ", sql[i:k]))
            i = k
        elif c in "\r\n":
            while out and out[-1] in (" ", "\t"):
                out.pop()
            while i < n and sql[i] in " \t\r\n":
                i += 1
            out.append(" ")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def write_dump(db_path: str, out_path: str) -> list[str]:
    """A dump of ``db_path`` that sqld 0.24's loader reads back exactly; returns notes."""
    notes: set[str] = set()

    def statement(sql: str) -> str:
        flat = one_line(sql)
        if flat != sql:
            notes.add("schema SQL with line breaks was joined onto one line (sqlite_schema.sql differs in whitespace)")
        return flat

    conn = _open_static(db_path)
    try:
        uv = conn.execute("PRAGMA user_version").fetchall()[0][0]
        app = conn.execute("PRAGMA application_id").fetchall()[0][0]
        with open(out_path, "w", encoding="utf-8", newline="\n") as f:
            for line in dump_lines(conn, literal=line_safe_literal, statement=statement):
                if line == "COMMIT;":  # header fields, inside the transaction (sqld drops them otherwise)
                    f.write(f"PRAGMA user_version={int(uv)};\nPRAGMA application_id={int(app)};\n")
                f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
    finally:
        conn.close()
    return sorted(notes)


# --------------------------------------------------------------------------------- loading
@dataclass
class Loaded:
    namespace: str
    method: str  # "adopted" | "dump"
    summary: Summary
    url: str | None  # what a libSQL client uses
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def check_free(sqld: SqldConfig, admin: SqldAdmin, name: str) -> None:
    """NameTaken when namespace ``name`` exists, on disk or for sqld."""
    validate_new_namespace(name)
    if os.path.lexists(sqld.namespace_dir(name)):
        raise NameTaken(f"namespace {name!r} already exists: {sqld.namespace_dir(name)} is there; choose another name")
    if admin.exists(name):
        raise NameTaken(f"namespace {name!r} already exists in sqld ({sqld.admin_url}); choose another name")


def adopt_obstacle(sqld: SqldConfig) -> str | None:
    """Why the restored file cannot be put into ``dbs/`` for sqld to adopt (None: it can)."""
    dbs = sqld.dbs_dir
    if not os.path.isdir(dbs):  # no namespace yet: dbs/ is made with the first one
        if not os.path.isdir(sqld.data_dir):
            return f"{sqld.data_dir} does not exist"
        dbs = sqld.data_dir
    if not os.access(dbs, os.W_OK | os.X_OK):
        return f"{dbs} is not writable by this user"
    owner = os.stat(dbs).st_uid
    if os.geteuid() not in (0, owner):
        return f"{dbs} belongs to uid {owner}: sqld could not write a file this user (uid {os.geteuid()}) creates"
    return None


class _Refused(SqldError):
    """sqld answered the adopting ``create`` with an error; the restored file is back in place."""


def _adopt(sqld: SqldConfig, admin: SqldAdmin, name: str, restored: str) -> None:
    ns_dir = sqld.namespace_dir(name)
    data = sqld.namespace_path(name)
    if not os.path.isdir(sqld.dbs_dir):
        os.makedirs(sqld.dbs_dir, 0o755, exist_ok=True)
        _own_like(sqld.data_dir, [sqld.dbs_dir])
    try:
        os.mkdir(ns_dir, 0o755)
    except FileExistsError:
        raise NameTaken(f"namespace {name!r} already exists: {ns_dir} appeared meanwhile") from None
    moved = False
    try:
        tmp = os.path.join(ns_dir, ".walrewind-adopt.tmp")
        if os.stat(restored).st_dev == os.stat(ns_dir).st_dev:
            os.rename(restored, tmp)
            moved = True
        else:
            shutil.copyfile(restored, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        _own_like(sqld.dbs_dir, [ns_dir, tmp])
        os.rename(tmp, data)
        fsync_dir(ns_dir)
        fsync_dir(sqld.dbs_dir)
        admin.create(name)
    except SqldError as exc:
        if exc.status == 400 and "already exists" in exc.body:
            raise NameTaken(f"namespace {name!r} was created by someone else meanwhile") from None
        _undo_adopt(admin, name, ns_dir, restored if moved else None)
        if exc.status is None:
            raise  # sqld unreachable: nothing to fall back to
        raise _Refused(str(exc)) from exc
    except BaseException:
        _undo_adopt(admin, name, ns_dir, restored if moved else None)
        raise
    if not moved:
        os.unlink(restored)


def _own_like(model: str, paths: list[str]) -> None:
    """As root, give ``paths`` the owner of ``model`` (sqld's user): sqld must write them."""
    if os.geteuid() == 0:
        st = os.stat(model)
        for path in paths:
            os.chown(path, st.st_uid, st.st_gid)


def _undo_adopt(admin: SqldAdmin, name: str, ns_dir: str, move_back_to: str | None) -> None:
    if move_back_to is not None:
        for candidate in (os.path.join(ns_dir, "data"), os.path.join(ns_dir, ".walrewind-adopt.tmp")):
            if os.path.exists(candidate):
                os.rename(candidate, move_back_to)
                break
    try:
        admin.delete(name)
    except SqldError:
        pass
    shutil.rmtree(ns_dir, ignore_errors=True)
    if move_back_to is not None and not os.path.exists(move_back_to):
        raise SqldError(f"sqld removed {ns_dir} with the restored file in it while refusing to adopt it; "
                        "nothing was created: run the command again (it restores again)")


def _load_dump(admin: SqldAdmin, name: str, restored: str, work_dir: str) -> list[str]:
    os.makedirs(work_dir, exist_ok=True)
    path = os.path.join(work_dir, f"{name}-{os.getpid()}-{time.time_ns()}.sql")
    try:
        notes = write_dump(restored, path)
        os.chmod(path, 0o644)  # sqld reads it, possibly as another user
        try:
            admin.create(name, dump_url=Path(path).as_uri())
        except SqldError as exc:
            if not (exc.status == 400 and "already exists" in exc.body):
                try:
                    admin.delete(name)  # a failed load leaves the name registered, empty
                except SqldError:
                    pass
            raise SqldError(f"sqld could not load the dump of the restored database into namespace {name!r}: {exc} "
                            f"(sqld must be able to read {path})", exc.status, exc.body) from None
    finally:
        if os.path.exists(path):
            os.unlink(path)
    os.unlink(restored)
    return notes


def preflight(sqld: SqldConfig, name: str) -> None:
    """Before a restore into namespace ``name``: both APIs configured, the admin API answering, the
    name free (the same checks are made again when the namespace is created)."""
    if sqld.admin_url is None or sqld.http_url is None:
        raise UsageError("creating a sqld namespace needs admin_url (sqld --admin-listen-addr) and http_url "
                         "(sqld --http-listen-addr) in [sqld], to create it and to check it over HTTP")
    admin = SqldAdmin(sqld.admin_url)
    try:
        check_free(sqld, admin, name)
    finally:
        admin.close()


def load_restored(sqld: SqldConfig, name: str, restored: str, *, work_dir: str, method: str = "auto") -> Loaded:
    """Create namespace ``name`` holding exactly the database file ``restored`` (consumed), and
    check it over HTTP.  ``method``: "auto" (adopt when dbs/ is ours to write, else a dump),
    "adopt" or "dump"."""
    if method not in METHODS:
        raise UsageError(f"unknown load method {method!r} (one of {', '.join(METHODS)})")
    preflight(sqld, name)
    started = time.monotonic()
    admin, client = SqldAdmin(sqld.admin_url), SqldClient(sqld.http_url)
    notes: list[str] = []
    try:
        old = ensure_page_size(restored)
        if old is not None:
            notes.append(f"rebuilt with {PAGE_SIZE}-byte pages (it had {old}; sqld 0.24 needs {PAGE_SIZE})")
        expected = summarize_file(restored)
        obstacle = adopt_obstacle(sqld) if method != "dump" else "a dump was asked for"
        if method == "adopt" and obstacle:
            raise UsageError(f"cannot adopt the restored file into {sqld.dbs_dir}: {obstacle}")
        used = None
        if obstacle is None:
            try:
                _adopt(sqld, admin, name, restored)
                used = "adopted"
            except _Refused as exc:
                if method == "adopt":
                    raise SqldError(str(exc)) from None
                notes.append(f"sqld refused to adopt the restored file ({exc}); loaded a SQL dump instead")
        elif method == "auto":
            notes.append(f"loaded as a SQL dump: the restored file cannot be put in place ({obstacle})")
        if used is None:
            notes.extend(_load_dump(admin, name, restored, work_dir))
            used = "dump"
        try:
            got = summarize_namespace(client, name)
        except SqldError as exc:
            admin.delete(name)
            raise SqldError(f"namespace {name!r} was created but does not answer over HTTP ({exc}); it was deleted "
                            "again") from None
        problems = expected.differences(got)
        if problems:
            admin.delete(name)
            raise VerificationFailed(f"namespace {name!r} does not hold the restored data ({'; '.join(problems[:5])}); "
                                     "it was deleted again")
        return Loaded(name, used, got, client_url(sqld, name), notes, time.monotonic() - started)
    finally:
        admin.close()
        client.close()
