"""`walrewind ls` — what a replica can restore."""

from __future__ import annotations

import sys

import click

from ..engine.restore.objects import check_replica
from .common import (
    config_option,
    emit_json,
    friendly,
    get_source,
    key_option,
    make_progress,
)


@click.command("ls")
@click.argument("source")
@click.option("--check", is_flag=True,
              help="Also download and verify every object's digest (no restore; names every damaged object). "
              "Exit 1 if any is damaged.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable output.")
@config_option
@key_option
@friendly
def ls_command(source, check, as_json):
    """List the restorable window, generations, snapshots, transaction counts and holes (missing
    transactions) of SOURCE (a configured database name or a replica URL/path; a configured name wins)."""
    src, _config = get_source(source)
    replica = src.replica()
    summary = replica.summary()
    report = check_replica(replica, make_progress(not as_json)) if check else None
    if report is not None:
        summary["check"] = report.to_json()
    if as_json:
        emit_json(summary)
        if report is not None and not report.ok:
            sys.exit(1)
        return
    _print(summary, src)
    if report is not None:
        click.echo("")
        verdict = "ok" if report.ok else f"{len(report.damaged)} DAMAGED"
        click.echo(f"check:            {report.objects} objects, {report.bytes} bytes verified in "
                   f"{report.seconds:.1f}s: {verdict}")
        for key, error in report.damaged:
            click.echo(f"  DAMAGED {key}: {error}")
        if not report.ok:
            sys.exit(1)


def _print(summary: dict, src) -> None:
    if not summary["generations"]:
        click.echo(f"{src.label}: no restorable history")
        return
    click.echo(f"replica:          {summary['replica']}")
    click.echo(f"restorable from:  {summary['earliest']}")
    if summary["exact_from"] and summary["exact_from"] != summary["earliest"]:
        click.echo(f"exact window:     exact to the transaction from {summary['exact_from']} to {summary['latest']}")
    click.echo(f"latest commit:    {summary['latest']} (txid {summary['latest_txid']})")
    click.echo(f"complete through: {summary['complete_through']}")
    click.echo(f"transactions:     {summary['transactions']}")
    for first, last in summary["holes"]:
        click.echo(f"HOLE:             transactions {first}..{last} are missing from the replica; no point after "
                   f"txid {first - 1} can be restored (until a later snapshot)")
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
