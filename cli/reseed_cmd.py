"""`walrewind reseed` — a new generation from the live database (engine/workspace/reseed.py)."""

from __future__ import annotations

import click

from ..engine.workspace.reseed import RESEED_TIMEOUT_SECONDS, reseed
from .common import config_option, emit_json, friendly, get_source


@click.command("reseed", short_help="Make the daemon start a new generation from the live database file.")
@click.argument("source")
@click.option("--reason", default="walrewind reseed", show_default=True, help="Logged by the daemon.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=RESEED_TIMEOUT_SECONDS,
              show_default=True, help="Seconds to wait for the new generation's base snapshot to reach the replica.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@config_option
@friendly
def reseed_command(source, reason, timeout, as_json):
    """Have the daemon replicating SOURCE do a final sync, then begin a NEW generation with a fresh
    base snapshot of the database file as it is now.  Use it after the file was changed in a way no
    WAL frame shows (copied in while the daemon was stopped), or to get a base snapshot at a known
    point.  The history before stays restorable.  A running `walrewind replicate` takes the request
    within a second and this command waits for the new snapshot; with no daemon running, the
    next start takes it.  (A daemon also restarts on its own when the file is replaced or deleted.)

    SOURCE is a configured database name, or the replica URL of a database a daemon on this host
    replicates.
    """
    src, config = get_source(source)
    done = reseed(src, config, reason=reason, timeout=timeout, waiting=lambda line: click.echo(line, err=True))
    if as_json:
        emit_json({"source": source, "replica": src.display, **done.to_json()})
    elif done.daemon_pid is None:
        click.echo(f"{src.label}: no daemon replicates {done.path} now; its next start begins a new generation")
    else:
        click.echo(f"{src.label}: new generation {done.new_generation} from {done.path} (was {done.old_generation}); "
                   "the history before stays restorable")
