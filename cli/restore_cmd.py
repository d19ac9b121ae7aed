"""`walrewind restore` — rebuild a database as of a moment into a new file."""

from __future__ import annotations

import sys

import click

from ..engine.timeparse import format_us
from ..engine.workspace.recovery import Target, restore_to_file
from ..engine.workspace.recovery import dry_run as dry_run_plan
from .common import config_option, emit_json, friendly, get_source, key_option
from .progress import showing_progress
from .validation import VALIDATE_HELP, print_validation

CHECK_HELP = ("SQLite check run on the restored file after its recorded checksum matched: quick (quick_check), "
              "full (integrity_check: indexes too, slower on large databases) or none.")
EXCLUSIVE_HELP = ("Stop just before the target: the state right before transaction --txid N (or the mark's "
                  "transaction), or with only what committed strictly before --timestamp T.")
MARK_HELP = ("Restore exactly to the named restore point made by `walrewind mark` (see `walrewind marks SOURCE`); "
             "refused if retention or a hand-made deletion broke it.")
TIMESTAMP_HELP = (
    "Restore the database as it was right after the last transaction committed at or before this "
    "moment. ISO 8601 / RFC 3339: 2024-01-15T10:30:00Z, 2024-01-15T19:30:00+09:00, fractional "
    "seconds, or a date (2024-01-15 = start of that day, UTC). Times without an offset are taken as UTC. "
    "Also: now, a time ago (-5m, '5m ago', '5 minutes ago', '1h30m ago') and Unix epoch seconds (@1705314600)."
)


@click.command("restore", short_help="Restore a source into a new database file, as of a time or txid.")
@click.argument("source")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False), help="New database file to create (not needed with --dry-run).")
@click.option("--timestamp", "-t", help=TIMESTAMP_HELP)
@click.option("--txid", type=int, help="Restore exactly up to and including this transaction id.")
@click.option("--mark", "mark", metavar="NAME", help=MARK_HELP)
@click.option("--exclusive", is_flag=True, help=EXCLUSIVE_HELP)
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--dry-run", is_flag=True, help="Print the plan (snapshot, segments, the transaction it lands on) without restoring.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
@click.option("--validate", is_flag=True, help=VALIDATE_HELP)
@click.option("--check", type=click.Choice(["quick", "full", "none"]), default="quick", show_default=True, help=CHECK_HELP)
@click.option("--reason", help="Why (kept in the recovery history when a config file is in use).")
@config_option
@key_option
@friendly
def restore_command(source, output, timestamp, txid, mark, exclusive, force, dry_run, as_json, validate, check, reason):
    """Restore SOURCE into a new database file (latest point by default).

    SOURCE is a configured database name or a replica URL/path; a configured name wins.  When a
    config file is in use (--config, $WALREWIND_CONFIG, ./walrewind.toml, ...) every restore,
    successful or not, is also recorded in `walrewind history`.
    """
    target = Target.parse(timestamp, txid, exclusive, mark)
    src, config = get_source(source)
    if dry_run:
        _print_plan(dry_run_plan(src, target), as_json)
        return
    if output is None:
        raise click.UsageError("Missing option '-o' / '--output' (the new database file to create)")
    with showing_progress(not as_json) as progress:
        recovery = restore_to_file(src, output, target, config=config, force=force, validate_after=validate,
                                   reason=reason, progress=progress, check=check)
    result = recovery.result
    if as_json:
        emit_json({**result.to_json(), **({"validation": recovery.validation.to_json()} if recovery.validation else {})})
    else:
        click.echo(
            f"Restored {result.path} to txid {result.txid} (committed {format_us(result.commit_us)}): "
            f"{result.db_pages * result.page_size} bytes, checksum {result.checksum:016x} verified, "
            f"quick_check {result.quick_check}, {result.seconds:.2f}s"
        )
        for note in result.notes:
            click.echo(f"note: {note}")
        if recovery.validation is not None:
            print_validation(recovery.validation)
    for warning in result.warnings:
        click.echo(f"WARNING: {warning}", err=True)
    for warning in recovery.warnings:
        click.echo(f"warning: {warning}", err=True)
    if recovery.failed_validation:
        click.echo(f"Error: {recovery.validation_error()} ({result.path})", err=True)
        sys.exit(1)


def _print_plan(d: dict, as_json: bool) -> None:
    if as_json:
        emit_json(d)
        return
    click.echo(f"lands on   txid {d['lands_on']['txid']} (committed {d['lands_on']['commit_time']})")
    click.echo(f"generation {d['generation']}")
    click.echo(f"snapshot   txid {d['snapshot']['txid']} at {d['snapshot']['time']}")
    click.echo(f"segments   {len(d['segments'])}")
    for note in d["notes"]:
        click.echo(f"note: {note}")
