"""Compare one table between a restored copy and the live database, and write the SQL that puts
deleted rows back.

Both databases are opened read-only in one connection (the source ATTACHed with ``mode=ro``) and
read inside one transaction, so the three comparisons see one consistent state of each.  Rows are
matched by a key: ``--key`` columns, else the table's PRIMARY KEY, else the rowid.  Only the
columns both tables have are compared (a migration may have added or dropped some).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import apsw

from ..errors import UsageError
from ..sqlite.dbinfo import file_url, open_readonly, quote_ident


class DiffError(UsageError):
    """The comparison cannot be made as asked (missing table or key column, ...)."""


def sql_literal(value) -> str:
    """Render a SQLite value as a SQL literal that reads back as the same value and type."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NULL"  # SQLite stores NaN as NULL
        if math.isinf(value):
            return "9e999" if value > 0 else "-9e999"
        return repr(value)  # shortest round-trip form; always has '.' or 'e', so stays REAL
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "X'" + bytes(value).hex().upper() + "'"
    if isinstance(value, str):
        if "\x00" in value:  # a NUL cannot appear inside a SQL string literal
            return "CAST(X'" + value.encode("utf-8", "surrogatepass").hex().upper() + "' AS TEXT)"
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"cannot render {type(value).__name__} as SQL")


def json_value(value):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"blob_hex": bytes(value).hex()}
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)
    return value


@dataclass
class TableDiff:
    table: str
    key: list[str]  # key column names; ["rowid"] when matching by rowid
    by_rowid: bool
    columns: list[str]  # the restored table's columns, in the order of only_in_restored rows
    source_columns: list[str]  # the source table's columns, in the order of only_in_source rows
    compared: list[str]  # non-key columns present in both (what "changed" means)
    source_has_table: bool
    restored_sql: str | None
    restored_indexes: list[str]
    only_in_restored: list[tuple] = field(default_factory=list)  # key values first when by_rowid
    only_in_source: list[tuple] = field(default_factory=list)
    changed: list[tuple[tuple, tuple, tuple]] = field(default_factory=list)  # (key, restored, source) over compared
    insertable: list[str] = field(default_factory=list)  # restored columns the source can take

    @property
    def missing_in_source(self) -> list[str]:
        src = {c.lower() for c in self.source_columns}
        return [c for c in self.columns if c.lower() not in src] if self.source_has_table else []

    @property
    def identical(self) -> bool:
        return not (self.only_in_restored or self.only_in_source or self.changed)

    def _row_dict(self, cols: list[str], row: tuple) -> dict:
        names = (["rowid"] if self.by_rowid else []) + cols
        return {n: json_value(v) for n, v in zip(names, row)}

    def to_json(self) -> dict:
        return {
            "table": self.table,
            "key": self.key,
            "source_has_table": self.source_has_table,
            "columns_only_in_restored": self.missing_in_source,
            "columns_only_in_source": [
                c for c in self.source_columns if c.lower() not in {x.lower() for x in self.columns}
            ],
            "counts": {
                "only_in_restored": len(self.only_in_restored),
                "only_in_source": len(self.only_in_source),
                "changed": len(self.changed),
            },
            "only_in_restored": [self._row_dict(self.columns, r) for r in self.only_in_restored],
            "only_in_source": [self._row_dict(self.source_columns, r) for r in self.only_in_source],
            "changed": [
                {
                    "key": dict(zip(self.key, map(json_value, k))),
                    "restored": dict(zip(self.compared, map(json_value, a))),
                    "source": dict(zip(self.compared, map(json_value, b))),
                }
                for k, a, b in self.changed
            ],
        }

    def restore_sql(self, source_name: str = "source", restored_name: str = "restored") -> str:
        """SQL that inserts the rows missing from the source back into it (idempotent)."""
        table = quote_ident(self.table)
        lines = [
            f"-- walrewind diff: rows of {self.table} present in {restored_name} but missing from {source_name}",
            f"-- {len(self.only_in_restored)} row(s) to put back; existing rows are left alone (ON CONFLICT DO NOTHING)",
        ]
        if self.changed:
            lines.append(f"-- {len(self.changed)} row(s) differ in both and are NOT changed by this script")
        if self.missing_in_source:
            lines.append(f"-- columns the source table no longer has, left out: {', '.join(self.missing_in_source)}")
        lines.append("BEGIN;")
        if not self.source_has_table and self.restored_sql:
            lines.append(_if_not_exists(self.restored_sql, "TABLE") + ";")
            lines.extend(_if_not_exists(ix, "INDEX") + ";" for ix in self.restored_indexes)
        names = (["rowid"] if self.by_rowid else []) + self.columns
        keep = [i for i, n in enumerate(names) if n == "rowid" and self.by_rowid or n in self.insertable]
        col_list = ", ".join(quote_ident(names[i]) if names[i] != "rowid" else "rowid" for i in keep)
        for row in self.only_in_restored:
            values = ", ".join(sql_literal(row[i]) for i in keep)
            lines.append(f"INSERT INTO {table} ({col_list}) VALUES ({values}) ON CONFLICT DO NOTHING;")
        lines.append("COMMIT;")
        return "\n".join(lines) + "\n"


def _if_not_exists(sql: str, kind: str) -> str:
    pattern = re.compile(rf"^\s*CREATE\s+(UNIQUE\s+)?{kind}\s+(?!IF\s+NOT\s+EXISTS)", re.IGNORECASE)
    return pattern.sub(lambda m: f"CREATE {m.group(1) or ''}{kind} IF NOT EXISTS ", sql, count=1)


def _columns(conn: apsw.Connection, schema: str, table: str) -> list[tuple[str, int, bool]]:
    """(name, pk position, insertable) for each column; empty when the table does not exist."""
    rows = conn.execute(f"PRAGMA {schema}.table_xinfo({quote_ident(table)})").fetchall()
    # table_xinfo: cid, name, type, notnull, dflt_value, pk, hidden (2, 3 = generated columns)
    return [(r[1], r[5], r[6] == 0) for r in rows if r[6] in (0, 2, 3)]


def _table_row(conn: apsw.Connection, schema: str, table: str):
    rows = conn.execute(
        f"SELECT type, name, sql FROM {schema}.sqlite_schema WHERE type = 'table' AND name = ? COLLATE NOCASE", (table,)
    ).fetchall()
    return rows[0] if rows else None


def diff_table(restored_path: str, source_path: str, table: str, key: list[str] | None = None) -> TableDiff:
    conn = open_readonly(restored_path)
    try:
        conn.execute("ATTACH DATABASE ? AS src", (file_url(source_path, readonly=True),))
        conn.execute("BEGIN")
        try:
            return _diff(conn, table, key)
        finally:
            conn.execute("COMMIT")
    finally:
        conn.close()


def _diff(conn: apsw.Connection, table: str, key: list[str] | None) -> TableDiff:
    found = _table_row(conn, "main", table)
    if found is None:
        names = [r[0] for r in conn.execute(
            "SELECT name FROM main.sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name")]
        raise DiffError(f"table {table!r} does not exist in the restored database (tables: {', '.join(names) or 'none'})")
    table = found[1]
    restored_sql = found[2]
    if (restored_sql or "").upper().startswith("CREATE VIRTUAL"):
        raise DiffError(f"{table} is a virtual table; diff its shadow tables instead")
    cols = _columns(conn, "main", table)
    src_cols = _columns(conn, "src", table) if _table_row(conn, "src", table) else []
    source_has_table = bool(src_cols)
    names = [c[0] for c in cols]
    src_names = [c[0] for c in src_cols]
    lower_src = {n.lower(): n for n in src_names}
    without_rowid = bool(
        conn.execute("SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = ?", (table,)).fetchall()[0][0]
    )
    if key:
        lookup = {n.lower(): n for n in names}
        resolved = []
        for k in key:
            if k.lower() == "rowid" and not without_rowid and "rowid" not in lookup:
                resolved.append("rowid")
                continue
            if k.lower() not in lookup:
                raise DiffError(f"key column {k!r} does not exist in {table} (columns: {', '.join(names)})")
            resolved.append(lookup[k.lower()])
        key = resolved
    else:
        pks = sorted((c for c in cols if c[1] > 0), key=lambda c: c[1])
        key = [c[0] for c in pks] or ["rowid"]
    by_rowid = key == ["rowid"] and "rowid" not in [n.lower() for n in names]
    if source_has_table:
        missing = [k for k in key if k != "rowid" and k.lower() not in lower_src]
        if missing:
            raise DiffError(
                f"key column(s) {', '.join(missing)} do not exist in the source's {table} "
                f"(its columns: {', '.join(src_names)}); choose another with --key"
            )
    t = quote_ident(table)

    def kexpr(alias: str, k: str, side: str) -> str:
        if k == "rowid" and by_rowid:
            return f"{alias}.rowid"
        return f"{alias}.{quote_ident(k if side == 'main' else lower_src.get(k.lower(), k))}"

    sel_main = ", ".join((["n.rowid"] if by_rowid else []) + [f"n.{quote_ident(c)}" for c in names])
    sel_src = ", ".join((["s.rowid"] if by_rowid else []) + [f"s.{quote_ident(c)}" for c in src_names])
    order_main = ", ".join(kexpr("n", k, "main") for k in key)
    order_src = ", ".join(kexpr("s", k, "src") for k in key)
    compared = [c for c in names if c.lower() in lower_src and c not in key]
    indexes = [r[0] for r in conn.execute(
        "SELECT sql FROM main.sqlite_schema WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL", (table,))]
    result = TableDiff(
        table, key, by_rowid, names, src_names, compared, source_has_table, restored_sql, indexes,
        insertable=[c[0] for c in cols if c[2] and (not source_has_table or c[0].lower() in lower_src)],
    )
    if not source_has_table:
        result.only_in_restored = conn.execute(f"SELECT {sel_main} FROM main.{t} AS n ORDER BY {order_main}").fetchall()
        return result
    match = " AND ".join(f"{kexpr('s', k, 'src')} IS {kexpr('n', k, 'main')}" for k in key)
    result.only_in_restored = conn.execute(
        f"SELECT {sel_main} FROM main.{t} AS n WHERE NOT EXISTS (SELECT 1 FROM src.{t} AS s WHERE {match}) ORDER BY {order_main}"
    ).fetchall()
    result.only_in_source = conn.execute(
        f"SELECT {sel_src} FROM src.{t} AS s WHERE NOT EXISTS (SELECT 1 FROM main.{t} AS n WHERE {match}) ORDER BY {order_src}"
    ).fetchall()
    if compared:
        nk = len(key)
        a = ", ".join(f"n.{quote_ident(c)}" for c in compared)
        b = ", ".join(f"s.{quote_ident(lower_src[c.lower()])}" for c in compared)
        differs = " OR ".join(f"n.{quote_ident(c)} IS NOT s.{quote_ident(lower_src[c.lower()])}" for c in compared)
        for row in conn.execute(
            f"SELECT {order_main}, {a}, {b} FROM main.{t} AS n JOIN src.{t} AS s ON {match} WHERE {differs} ORDER BY {order_main}"
        ):
            result.changed.append((tuple(row[:nk]), tuple(row[nk : nk + len(compared)]), tuple(row[nk + len(compared) :])))
    return result
