"""`walrewind restore` — rebuild a database as of a moment into a new file."""

from __future__ import annotations

import os
import sys
import time

import click

from ..engine.replica.index import Replica
from ..engine.restore.restorer import plan_restore, restore
from ..engine.storage import open_storage
from ..engine.timeparse import format_us
from .common import emit_json, friendly_errors, make_progress
from .context import config_option, config_path, normalize_replica_url, parse_target
from .validation import VALIDATE_HELP, print_validation, run_validation

TIMESTAMP_HELP = (
    "Restore the database as it was right after the last transaction committed at or before this "
    "moment. ISO 8601 / RFC 3339: 2024-01-15T10:30:00Z, 2024-01-15T19:30:00+09:00, fractional "
    "seconds, or a date (2024-01-15 = start of that day, UTC). Times without an offset are taken as UTC."
)


@click.command("restore", short_help="Restore a replica into a new database file, as of a time or txid.")
@click.argument("replica_url")
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False), help="New database file to create.")
@click.option("--timestamp", "-t", help=TIMESTAMP_HELP)
@click.option("--txid", type=int, help="Restore exactly up to and including this transaction id.")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--dry-run", is_flag=True, help="Print the plan (snapshot and segments) without restoring.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
@click.option("--validate", is_flag=True, help=VALIDATE_HELP)
@click.option("--reason", help="Why (kept in the recovery history when a config file is in use).")
@config_option
@friendly_errors
def restore_command(replica_url, output, timestamp, txid, force, dry_run, as_json, validate, reason):
    """Restore REPLICA_URL into a new database file (latest point by default).

    When a config file is in use (--config, $WALREWIND_CONFIG, ./walrewind.toml, ...) every restore,
    successful or not, is also recorded in `walrewind history`.
    """
    if timestamp is not None and txid is not None:
        raise click.UsageError("use either --timestamp or --txid, not both")
    if dry_run:
        target_us = parse_target(timestamp) if timestamp is not None else None
        _restore(replica_url, output, target_us, txid, force, True, as_json, False)
        return
    history = _History(replica_url, output, txid, reason, timestamp)
    try:
        target_us = parse_target(timestamp) if timestamp is not None else None
        history.values["target_us"] = target_us
        result, validation = _restore(replica_url, output, target_us, txid, force, False, as_json, validate)
    except BaseException as exc:
        history.write("failed", error=str(exc) or type(exc).__name__)
        raise
    failed = validation is not None and not validation.ok
    history.write(
        "failed" if failed else "ok", restored_txid=result.txid, restored_commit_us=result.commit_us,
        error=("validation failed: integrity_check: " + "; ".join(validation.integrity[:3])) if failed else None,
    )
    if failed:
        click.echo(f"Error: validation failed for {result.path} (integrity_check: {'; '.join(validation.integrity[:3])})", err=True)
        sys.exit(1)


class _History:
    """Records this restore in the data directory's history if a config file is in use.

    Recording is best effort: a restore is often done in an emergency, and a broken or unwritable
    config/catalog must not stop it (a warning says the entry is missing).
    """

    def __init__(self, replica_url: str, output: str, txid, reason, timestamp) -> None:
        from ..engine.workspace.config import redact_url

        self.started = time.monotonic()
        typed = timestamp if timestamp is not None else (f"txid {txid}" if txid is not None else "latest")
        self.values = dict(replica=redact_url(replica_url), output=os.path.abspath(output), target_txid=txid,
                           reason=reason, target_input=typed)
        self.catalog = None
        try:
            from ..engine.workspace.catalog import Catalog
            from ..engine.workspace.config import load

            config = load(config_path())
            if config is None:
                return
            wanted = normalize_replica_url(replica_url)
            for name, db in config.databases.items():
                if normalize_replica_url(db.replica) == wanted:
                    self.values["source"] = name
                    break
            self.catalog = Catalog(config.catalog_path)
        except Exception as exc:
            click.echo(f"warning: this restore is not recorded in the history: {exc}", err=True)

    def write(self, result: str, **values) -> None:
        if self.catalog is None:
            return
        try:
            self.catalog.record("restore", result, duration_s=time.monotonic() - self.started, **self.values, **values)
        except Exception as exc:
            click.echo(f"warning: this restore is not recorded in the history: {exc}", err=True)
        finally:
            self.catalog.close()


def _restore(replica_url, output, target_us, txid, force, dry_run, as_json, validate):
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
        return None, None
    result = restore(
        storage, output, target_us=target_us, target_txid=txid, force=force,
        progress=make_progress(not as_json), replica=replica,
    )
    validation = run_validation(result.path) if validate else None
    if as_json:
        emit_json({**result.to_json(), **({"validation": validation.to_json()} if validation else {})})
        return result, validation
    click.echo(
        f"Restored {result.path} to txid {result.txid} (committed {format_us(result.commit_us)}): "
        f"{result.db_pages * result.page_size} bytes, checksum {result.checksum:016x} verified, "
        f"quick_check {result.quick_check}, {result.seconds:.2f}s"
    )
    for note in result.notes:
        click.echo(f"note: {note}")
    for warning in result.warnings:
        click.echo(f"WARNING: {warning}", err=True)
    if validation is not None:
        print_validation(validation)
    return result, validation
