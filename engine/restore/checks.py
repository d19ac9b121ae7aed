"""The SQLite checks a restore (or drill) runs on the file it wrote, before renaming it.

The recorded database checksum already proves every byte is the replicated one; these prove the
bytes are a database SQLite can use.  ``quick`` (the default) is ``PRAGMA quick_check``: every
b-tree page is read and checked, O(N); ``full`` is ``PRAGMA integrity_check``, which also
cross-checks every index against its table (O(N log N), several times slower on indexed data);
``none`` skips SQLite entirely (the checksum still verifies the content).  apsw is imported only
when a check runs.
"""

from __future__ import annotations

CHECKS = ("quick", "full", "none")
_PRAGMA = {"quick": "quick_check", "full": "integrity_check"}


def run_check(path: str, check: str = "quick") -> str:
    """"ok", the first problems SQLite reports joined by "; ", or "not run" for ``check="none"``.

    Opened read-only and immutable, so no -wal/-shm file appears and no byte of the file changes.
    """
    if check == "none":
        return "not run"
    import apsw

    try:
        conn = apsw.Connection(f"file:{path}?immutable=1", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
        try:
            rows = [r[0] for r in conn.execute(f"PRAGMA {_PRAGMA[check]}")]
        finally:
            conn.close()
    except apsw.Error as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ok" if rows == ["ok"] else "; ".join(map(str, rows[:5]))
