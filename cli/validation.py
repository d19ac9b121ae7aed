"""``--validate`` on ``db create`` and ``restore``: tables with row counts and integrity_check."""

from __future__ import annotations

import click

from ..engine.sqlite.dbinfo import Validation
from .common import table

VALIDATE_HELP = (
    "After restoring, list every table with its row count and run PRAGMA integrity_check "
    "(indexes included); exit non-zero if it is not ok."
)


def print_validation(v: Validation) -> None:
    click.echo("")
    if v.tables:
        rows = [[t.name, t.kind, "-" if t.rows is None else str(t.rows)] for t in v.tables]
        click.echo(table(rows, ["TABLE", "TYPE", "ROWS"], right={2}))
    else:
        click.echo("(no tables)")
    if v.ok:
        click.echo("integrity_check: ok")
    else:
        click.echo("integrity_check: FAILED")
        for line in v.integrity:
            click.echo(f"  {line}")
