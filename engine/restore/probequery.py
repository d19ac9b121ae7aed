"""A bisect's query, run on one state of the working copy, and its results compared exactly.

The working copy is opened read-only and ``immutable`` (no -wal, no -shm, no lock: nothing else
has it open, and no byte of it changes while the query runs) and closed before the next probe
writes to it.  Results are compared as exact Python values: type and value, floats by ``repr`` (so
``1`` differs from ``1.0`` and ``0.0`` from ``-0.0``), rows in the order SQLite returned them.

A query that fails is a result too: at the start of the search it is an error the user must fix
(bad SQL, a table that does not exist yet), but after it a failure ("no such table" once the
table was dropped) is how the result changed.  apsw is imported when a query runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote


@dataclass(frozen=True)
class QueryResult:
    """Rows (tuples of SQLite values) or, when the query failed, the error SQLite gave."""

    rows: tuple[tuple, ...] | None
    error: str | None = None

    @property
    def key(self) -> tuple:
        """What two results must share to be equal: exact types and values, floats by repr."""
        if self.rows is None:
            return ("error", self.error)
        return ("rows", tuple(tuple((type(v).__name__, repr(v) if isinstance(v, float) else v) for v in row)
                              for row in self.rows))

    def same_as(self, other: "QueryResult") -> bool:
        return self.key == other.key

    def to_json(self):
        """Rows as lists (blobs as ``{"blob_hex": ...}``), or ``{"error": ...}``."""
        if self.rows is None:
            return {"error": self.error}
        return [[_json_value(v) for v in row] for row in self.rows]


def _json_value(value):
    if isinstance(value, bytes):
        return {"blob_hex": value.hex()}
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return repr(value)  # JSON has no infinities
    return value


def run_query(path: str, sql: str) -> QueryResult:
    """All rows ``sql`` returns on the database file at ``path`` (opened read-only, immutable)."""
    import apsw

    try:
        conn = apsw.Connection(f"file:{quote(path)}?immutable=1",
                               flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    except apsw.Error as exc:
        return QueryResult(None, f"cannot open the working copy: {exc}")
    try:
        return QueryResult(tuple(tuple(row) for row in conn.execute(sql)))
    except apsw.Error as exc:
        return QueryResult(None, str(exc) or type(exc).__name__)
    finally:
        conn.close()


def syntax_error(sql: str) -> str | None:
    """SQLite's complaint when ``sql`` cannot even be parsed (checked before anything is restored).

    The query is compiled, never run (``explain``), on an empty in-memory database; only parse
    errors count, since names ("no such table") can only be judged on the real database.
    """
    import apsw

    conn = apsw.Connection(":memory:")
    try:
        for _ in conn.execute(sql, explain=1):
            pass
    except apsw.Error as exc:
        text = str(exc)
        if "syntax error" in text or "incomplete input" in text or "unrecognized token" in text:
            return text
    finally:
        conn.close()
    return None
