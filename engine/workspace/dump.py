"""A SQL dump in the shape of the sqlite3 shell's ``.dump``: safe to pipe into another database.

apsw's own ``.dump`` starts every table with ``DROP TABLE IF EXISTS``; piped into the live database
(what people do with sqlite3's ``.dump``) it wipes every row added since.  This dump does what
sqlite3's does: ``PRAGMA foreign_keys=OFF; BEGIN TRANSACTION;`` then, per table, its ``CREATE
TABLE`` and one ``INSERT INTO ... VALUES(...)`` per row, then ``sqlite_sequence``, indexes,
triggers and views, and ``COMMIT;``.  Run against a database that already has a table, the
``CREATE TABLE`` fails and the transaction is rolled back: nothing is dropped, nothing half-applied.
The whole dump is one transaction, which is also what sqld's ``dump_url`` namespace loader needs.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable, Iterator

import apsw

from .diff import sql_literal

Write = Callable[[str], None]
Literal = Callable[[Any], str]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _like_any(name: str, patterns: list[str]) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(name.lower(), p.lower().replace("%", "*").replace("_", "?"))
                                for p in patterns)


def dump_lines(conn: apsw.Connection, tables: list[str] | None = None, literal: Literal = sql_literal,
               statement: Callable[[str], str] = lambda sql: sql) -> Iterator[str]:
    """The dump, line by line, read inside one read transaction (a consistent snapshot).

    ``tables`` restricts it to tables matching these LIKE patterns (and their indexes/triggers, and
    views whose name matches), as sqlite3's ``.dump TABLE`` does.  ``literal`` renders values and
    ``statement`` passes schema SQL through (engine/workspace/sqldload.py uses both to write a dump
    sqld's line-by-line loader reads back exactly).
    """
    patterns = list(tables or [])
    conn.execute("BEGIN")
    try:
        yield "PRAGMA foreign_keys=OFF;"
        yield "BEGIN TRANSACTION;"
        schema = conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE sql IS NOT NULL ORDER BY rowid"
        ).fetchall()
        has_sequence = False
        for kind, name, _tbl, sql in schema:
            if kind != "table" or not _like_any(name, patterns):
                continue
            if name == "sqlite_sequence":
                has_sequence = True
                continue
            if name.startswith("sqlite_"):
                continue  # sqlite_stat1 and friends are rebuilt by ANALYZE
            if sql.upper().startswith("CREATE VIRTUAL TABLE"):
                yield f"{statement(sql)};"  # its shadow tables are created by it and dumped as ordinary tables
                continue
            yield f"{statement(sql)};"
            info = conn.execute(f"PRAGMA table_xinfo({_quote(name)})").fetchall()
            columns = [row[1] for row in info if row[6] == 0]  # generated columns (2, 3) are computed
            cols = ",".join(_quote(c) for c in columns)
            target = _quote(name) if len(columns) == len(info) else f"{_quote(name)}({cols})"
            for row in conn.execute(f"SELECT {cols} FROM {_quote(name)}"):
                yield f"INSERT INTO {target} VALUES({','.join(literal(v) for v in row)});"
        if has_sequence:
            yield "DELETE FROM sqlite_sequence;"
            for seq_name, seq in conn.execute("SELECT name, seq FROM sqlite_sequence"):
                if _like_any(seq_name, patterns):
                    yield f"INSERT INTO sqlite_sequence VALUES({literal(seq_name)},{literal(seq)});"
        for kind, name, tbl, sql in schema:
            if kind in ("index", "trigger") and _like_any(tbl, patterns):
                yield f"{statement(sql)};"
        for kind, name, _tbl, sql in schema:
            if kind == "view" and _like_any(name, patterns):
                yield f"{statement(sql)};"
        yield "COMMIT;"
    finally:
        conn.execute("COMMIT")


def dump(conn: apsw.Connection, write: Write, tables: list[str] | None = None) -> None:
    for line in dump_lines(conn, tables):
        write(line + "\n")
