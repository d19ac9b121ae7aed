"""`walrewind ls` — what a replica can restore."""

from __future__ import annotations

import click

from ..engine.replica.index import Replica
from ..engine.storage import open_storage
from .common import emit_json, friendly_errors


@click.command("ls")
@click.argument("replica_url")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable output.")
@friendly_errors
def ls_command(replica_url, as_json):
    """List the restorable window, generations, snapshots and transaction counts of REPLICA_URL."""
    summary = Replica(open_storage(replica_url, create=False)).summary()
    if as_json:
        emit_json(summary)
        return
    if not summary["generations"]:
        click.echo(f"{replica_url}: no restorable history")
        return
    click.echo(f"replica:          {summary['replica']}")
    click.echo(f"restorable from:  {summary['earliest']}")
    if summary["exact_from"] and summary["exact_from"] != summary["earliest"]:
        click.echo(f"exact window:     exact to the transaction from {summary['exact_from']} to {summary['latest']}")
    click.echo(f"latest commit:    {summary['latest']} (txid {summary['latest_txid']})")
    click.echo(f"complete through: {summary['complete_through']}")
    click.echo(f"transactions:     {summary['transactions']}")
    click.echo("")
    click.echo(f"{'GENERATION':<26} {'START':<28} {'TXIDS':<17} {'SEGMENTS':>8} {'SNAPSHOTS':>9}")
    for g in summary["generations"]:
        txids = f"{g['first_txid']}-{g['last_txid']}"
        click.echo(f"{g['generation']:<26} {g['start']:<28} {txids:<17} {g['segments']:>8} {len(g['snapshots']):>9}")
    if summary["snapshots_beyond_window"]:
        click.echo("")
        click.echo("snapshots kept beyond the window (restorable to the snapshot, not to the transaction):")
        for s in summary["snapshots_beyond_window"]:
            click.echo(f"  {s['time']:<28} txid {s['txid']:<10} generation {s['generation']}")
