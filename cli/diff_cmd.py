"""`walrewind diff` — what changed in one table between a restored copy and the source, and the SQL
that puts deleted rows back."""

from __future__ import annotations

import sys

import click

from ..engine.errors import WalrewindError
from ..engine.workspace.databases import compare_table
from ..engine.workspace.diff import sql_literal
from .common import config_option, emit_json, get_config, open_catalog, table


def _cell(value, width: int = 40) -> str:
    text = sql_literal(value)
    return text if len(text) <= width else text[: width - 3] + "..."


@click.command("diff", short_help="Rows deleted/added/changed in a table between two databases.")
@click.argument("name")
@click.option("--from-db", "from_db", metavar="SRC", required=True, help="Database to compare with (usually the live source).")
@click.option("--table", "table_name", required=True, help="Table to compare.")
@click.option("--key", "keys", multiple=True, metavar="COL",
              help="Column(s) that identify a row (repeat or comma-separate; default: the primary key, else rowid).")
@click.option("--sql", "as_sql", is_flag=True,
              help="Print only SQL that inserts the rows missing from SRC back into it (INSERT ... ON CONFLICT DO NOTHING).")
@click.option("--limit", type=int, default=20, show_default=True, help="Rows shown per section in the table output (0 = all).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable output (every row).")
@config_option
def diff_command(name, from_db, table_name, keys, as_sql, limit, as_json):
    """Compare TABLE between database NAME (e.g. a restored copy) and SRC: rows only in NAME (deleted
    from SRC since), only in SRC (added since) and changed.  Both are opened read-only.

    \b
    walrewind diff before-delete --from-db app --table notes
    walrewind diff before-delete --from-db app --table notes --sql > put-back.sql
    sqlite3 /path/to/app.db < put-back.sql

    Exit status as diff(1): 0 when the table is identical, 1 when it differs, 2 on trouble.
    """
    try:
        identical = _diff(name, from_db, table_name, keys, as_sql, limit, as_json)
    except (WalrewindError, OSError) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    sys.exit(0 if identical else 1)


def _diff(name, from_db, table_name, keys, as_sql, limit, as_json) -> bool:
    if as_sql and as_json:
        raise click.UsageError("use either --sql or --json")
    config = get_config()
    key = [k.strip() for spec in keys for k in spec.split(",") if k.strip()] or None
    d, b = compare_table(config, open_catalog(config), name, from_db, table_name, key)
    if as_sql:
        click.echo(d.restore_sql(source_name=f"{from_db} ({b.path})", restored_name=name), nl=False)
        click.echo(
            f"{len(d.only_in_restored)} row(s) to put back into {from_db}; {len(d.only_in_source)} only in {from_db}, "
            f"{len(d.changed)} changed (not included)",
            err=True,
        )
        return d.identical
    if as_json:
        emit_json({"name": name, "from_db": from_db, **d.to_json()})
        return d.identical
    click.echo(f"table {d.table}: {name} vs {from_db}, rows matched by {', '.join(d.key)}")
    if not d.source_has_table:
        click.echo(f"  {from_db} has no table {d.table} (dropped?): every row is only in {name}")
    info = d.to_json()
    if info["columns_only_in_restored"]:
        click.echo(f"  columns only in {name}: {', '.join(info['columns_only_in_restored'])}")
    if info["columns_only_in_source"]:
        click.echo(f"  columns only in {from_db}: {', '.join(info['columns_only_in_source'])}")
    labels = [
        (f"only in {name} (deleted from {from_db} since):", len(d.only_in_restored)),
        (f"only in {from_db} (added since):", len(d.only_in_source)),
        ("in both, changed:", len(d.changed)),
    ]
    width = max(len(label) for label, _ in labels)
    for label, count in labels:
        click.echo(f"  {label:<{width}} {count}")
    lead = ["rowid"] if d.by_rowid else []

    def section(title, cols, rows):
        if not rows:
            return
        click.echo(f"\n{title}:")
        shown = rows if not limit else rows[:limit]
        click.echo(table([[_cell(v) for v in r] for r in shown], lead + cols))
        if len(shown) < len(rows):
            click.echo(f"... {len(rows) - len(shown)} more (--limit 0 shows all, --json prints every row)")

    section(f"only in {name}", d.columns, d.only_in_restored)
    section(f"only in {from_db}", d.source_columns, d.only_in_source)
    if d.changed:
        click.echo("\nchanged (restored -> source):")
        shown = d.changed if not limit else d.changed[:limit]
        rows = []
        for k, old, new in shown:
            delta = [f"{c}: {_cell(x, 24)} -> {_cell(y, 24)}" for c, x, y in zip(d.compared, old, new) if x != y or type(x) is not type(y)]
            rows.append([", ".join(_cell(v) for v in k), "; ".join(delta)])
        click.echo(table(rows, [",".join(d.key), "DIFFERENCES"]))
        if len(shown) < len(d.changed):
            click.echo(f"... {len(d.changed) - len(shown)} more")
    if d.only_in_restored:
        click.echo(f"\nPut the {len(d.only_in_restored)} deleted row(s) back: "
                   f"walrewind diff {name} --from-db {from_db} --table {d.table} --sql > restore.sql")
    return d.identical
