"""`walrewind bisect` — which transaction changed a query's result."""

from __future__ import annotations

import sys

import click

from ..engine.errors import WalrewindError
from ..engine.restore.bisect import bisect
from ..engine.timeparse import format_us
from ..engine.workspace.diff import sql_literal
from ..engine.workspace.recovery import parse_target
from .common import config_option, emit_json, get_source
from .progress import showing_progress

SHOWN_ROWS = 10


@click.command("bisect", short_help="Find the transaction that changed a query's result (binary search).")
@click.argument("source")
@click.option("--query", "-q", required=True, help="SQL whose result to watch, e.g. \"SELECT sum(amount) FROM ledger\".")
@click.option("--since", help="Start: the state as of this moment (as restore --timestamp takes it). "
              "Default: the start of the transaction-exact window.")
@click.option("--until", help="End: the state as of this moment. Default: the newest replicated transaction.")
@click.option("--since-txid", type=int, help="Start at this transaction instead of a moment.")
@click.option("--until-txid", type=int, help="End at this transaction instead of a moment.")
@click.option("--work-dir", type=click.Path(file_okay=False, exists=True),
              help="Directory for the working copy (the database's size) and downloaded segments. "
              "Default: the system's temporary directory.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result.")
@config_option
def bisect_command(source, query, since, until, since_txid, until_txid, work_dir, as_json):
    """Find the first transaction in (since, until] after which the result of --query differs from
    its result at since, by binary search: O(log n) probes, each moving one working copy forward
    or back by whole transactions (verified by checksum) instead of restoring again.

    \b
    walrewind bisect prod --query "SELECT count(*) FROM orders" --since "2 hours ago"
    walrewind bisect prod -q "SELECT total FROM ledger WHERE id = 7" --json

    Like git bisect, it assumes the result changes once; the transaction it names always changed
    it (the states right before and after it were both queried).  A query that fails after the
    start (a dropped table) counts as a changed result.

    Exit status, as grep: 0 when a transaction changed the result, 1 when the result never
    changed in the range, 2 on trouble (the error is printed).  SOURCE is a configured database
    name or a replica URL/path; a configured name wins.
    """
    if since is not None and since_txid is not None or until is not None and until_txid is not None:
        raise click.UsageError("give each bound once: --since or --since-txid, --until or --until-txid")
    try:
        src, _config = get_source(source)
        since_us = parse_target(since) if since is not None else None
        until_us = parse_target(until) if until is not None else None
        with showing_progress(not as_json, "bisect") as progress:
            outcome = bisect(src.storage(), query, since_us=since_us, since_txid=since_txid, until_us=until_us,
                             until_txid=until_txid, progress=progress, work_dir=work_dir)
    except (WalrewindError, OSError) as exc:
        text = str(exc) if isinstance(exc, WalrewindError) else f"{exc.strerror or exc}: {exc.filename or ''}"
        click.echo(f"Error: {text}", err=True)
        sys.exit(2)
    if as_json:
        emit_json(outcome.to_json())
    else:
        _print(outcome)
    for warning in outcome.warnings:
        click.echo(f"WARNING: {warning}", err=True)
    sys.exit(0 if outcome.changed else 1)


def _print(outcome) -> None:
    r = outcome.range
    if outcome.changed:
        click.echo(f"txid {outcome.txid} (committed {format_us(outcome.commit_us)}) changed the result")
        _show("  before:", outcome.before)
        _show("  after: ", outcome.after)
    else:
        _show("the result did not change:", outcome.before)
    click.echo(f"searched txid {r.since_txid} ({format_us(r.since_us)}) to {r.until_txid} ({format_us(r.until_us)}): "
               f"{r.transactions} transactions, {len(outcome.probes)} probes, {outcome.seconds:.2f}s")
    for note in r.notes:
        click.echo(f"note: {note}")


def _show(label: str, result) -> None:
    """One value or one row after the label; several rows below it, at most SHOWN_ROWS."""
    if result.error is not None:
        click.echo(f"{label} error: {result.error}")
        return
    rows = result.rows
    if len(rows) <= 1:
        if not rows:
            text = "(no rows)"
        elif len(rows[0]) == 1:
            text = sql_literal(rows[0][0])
        else:
            text = "(" + ", ".join(sql_literal(v) for v in rows[0]) + ")"
        click.echo(f"{label} {text}")
        return
    click.echo(f"{label} {len(rows)} rows")
    for row in rows[:SHOWN_ROWS]:
        click.echo("    (" + ", ".join(sql_literal(v) for v in row) + ")")
    if len(rows) > SHOWN_ROWS:
        click.echo(f"    ... {len(rows) - SHOWN_ROWS} more (--json prints all)")
