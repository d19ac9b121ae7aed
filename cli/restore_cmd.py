"""`walrewind restore` — rebuild a database as of a moment into a new file."""

from __future__ import annotations

import click

from ..engine.replica import Replica
from ..engine.restore import plan_restore, restore
from ..engine.storage import open_storage
from ..engine.timeparse import format_us, parse_timestamp_us
from .common import emit_json, friendly_errors, make_progress

TIMESTAMP_HELP = (
    "Restore the database as it was right after the last transaction committed at or before this "
    "moment. ISO 8601 / RFC 3339: 2024-01-15T10:30:00Z, 2024-01-15T19:30:00+09:00, fractional "
    "seconds, or a date (2024-01-15 = start of that day, UTC). Times without an offset are taken as UTC."
)


@click.command("restore")
@click.argument("replica_url")
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False), help="New database file to create.")
@click.option("--timestamp", "-t", help=TIMESTAMP_HELP)
@click.option("--txid", type=int, help="Restore exactly up to and including this transaction id.")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--dry-run", is_flag=True, help="Print the plan (snapshot and segments) without restoring.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
@friendly_errors
def restore_command(replica_url, output, timestamp, txid, force, dry_run, as_json):
    """Restore REPLICA_URL into a new database file (latest point by default)."""
    if timestamp is not None and txid is not None:
        raise click.UsageError("use either --timestamp or --txid, not both")
    target_us = parse_timestamp_us(timestamp) if timestamp is not None else None
    storage = open_storage(replica_url, create=False)
    replica = Replica(storage)
    if dry_run:
        plan = plan_restore(replica, target_us, txid)
        if as_json:
            emit_json({"dry_run": True, **plan.describe()})
        else:
            d = plan.describe()
            click.echo(f"generation {d['generation']}")
            click.echo(f"snapshot   txid {d['snapshot']['txid']} at {d['snapshot']['time']}")
            click.echo(f"segments   {len(d['segments'])}")
            for note in d["notes"]:
                click.echo(f"note: {note}")
        return
    result = restore(
        storage, output, target_us=target_us, target_txid=txid, force=force,
        progress=make_progress(not as_json), replica=replica,
    )
    if as_json:
        emit_json(result.to_json())
        return
    click.echo(
        f"Restored {result.path} to txid {result.txid} (committed {format_us(result.commit_us)}): "
        f"{result.db_pages * result.page_size} bytes, checksum {result.checksum:016x} verified, "
        f"quick_check {result.quick_check}, {result.seconds:.2f}s"
    )
    for note in result.notes:
        click.echo(f"note: {note}")
    for warning in result.warnings:
        click.echo(f"WARNING: {warning}", err=True)
