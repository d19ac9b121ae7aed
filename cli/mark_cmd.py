"""`walrewind mark` / `marks` / `unmark` — named restore points (engine/workspace/marks.py)."""

from __future__ import annotations

import click

from ..engine.timeparse import format_us
from ..engine.workspace.marks import (
    MARK_TIMEOUT_SECONDS,
    list_marks,
    make_mark,
    remove_mark,
)
from .common import config_option, emit_json, friendly, get_source, table


@click.command("mark", short_help="Name the current point of a database (a restore point for --mark).")
@click.argument("source")
@click.argument("name")
@click.option("--note", help="Free text kept with the mark (why it was made).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=MARK_TIMEOUT_SECONDS, show_default=True,
              help="Seconds to wait for the daemon to upload the marked point; no mark is written after that.")
@click.option("--json", "as_json", is_flag=True, help="Print the mark as JSON.")
@config_option
@friendly
def mark_command(source, name, note, timeout, as_json):
    """Record restore point NAME of SOURCE: exactly every transaction committed before this command
    started, none begun after it returns (a transaction committing meanwhile is wholly in or wholly
    out).  It reads SQLite's commit counter from the live database's wal-index (read-only), waits
    until the running daemon has uploaded that far, and writes marks/NAME.json into the replica.
    Restore it with `restore SOURCE --mark NAME` or `db create NEW --from-db SOURCE --mark NAME`;
    retention keeps it restorable until `walrewind unmark SOURCE NAME`.

    SOURCE is a configured database name, or the replica URL of a database a walrewind daemon on
    this host replicates (the database path is taken from that daemon).  NAME: 1-64 letters,
    digits, '-' or '_'.

    \b
    walrewind mark prod before-migration --note "deploy 2024-06-01"
    """
    src, config = get_source(source)
    mark = make_mark(src, name, config=config, note=note, timeout=timeout,
                     waiting=lambda line: click.echo(line, err=True))
    if as_json:
        emit_json({"source": source, "replica": src.display, **mark.to_json()})
    else:
        click.echo(f"Marked {name!r} on {src.label}: txid {mark.txid} (committed {format_us(mark.commit_us)}), "
                   f"generation {mark.generation}")
        click.echo(f"Restore it with: walrewind restore {source} --mark {name} -o FILE")


@click.command("marks", short_help="List a source's named restore points, and whether each is still restorable.")
@click.argument("source")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable output.")
@config_option
@friendly
def marks_command(source, as_json):
    """List the named restore points of SOURCE (made by `walrewind mark`), oldest first, with their
    transaction, commit time, note, who made them and when.  A mark whose history is gone from the
    replica (deleted by hand, or an older walrewind's retention) is listed as BROKEN with the reason.
    """
    src, _config = get_source(source)
    statuses, unreadable = list_marks(src)
    if as_json:
        emit_json({"source": source, "replica": src.display, "marks": [s.to_json() for s in statuses],
                   "unreadable": [{"key": k, "error": e} for k, e in unreadable.items()]})
        return
    if not statuses and not unreadable:
        click.echo(f"{src.label}: no marks (make one with: walrewind mark {source} NAME)")
    if statuses:
        rows = [[s.mark.name, str(s.mark.txid), format_us(s.mark.commit_us), s.mark.who, format_us(s.mark.created_us),
                 "ok" if s.broken is None else "BROKEN", s.mark.note or ""] for s in statuses]
        click.echo(table(rows, ["NAME", "TXID", "COMMITTED", "BY", "MARKED AT", "STATUS", "NOTE"], right={1}))
    for s in statuses:
        if s.broken is not None:
            click.echo(f"BROKEN {s.mark.name}: {s.broken}", err=True)
    for key, error in unreadable.items():
        click.echo(f"UNREADABLE {key}: {error}", err=True)


@click.command("unmark", short_help="Remove a named restore point (retention may then delete its history).")
@click.argument("source")
@click.argument("name")
@config_option
@friendly
def unmark_command(source, name):
    """Remove mark NAME from SOURCE's replica.  What only the mark kept becomes ordinary history:
    the next prune deletes it if it is outside the retention window."""
    src, _config = get_source(source)
    mark = remove_mark(src, name)
    click.echo(f"Removed mark {name!r} (txid {mark.txid}, committed {format_us(mark.commit_us)}) from {src.label}")

