"""`walrewind prune` — apply a retention policy to a replica now (what the daemon does hourly)."""

from __future__ import annotations

import click

from ..engine.maintenance.retention import PruneReport, RetentionPolicy, prune
from ..engine.timeparse import format_duration_us, format_us
from .common import (
    DurationText,
    config_option,
    emit_json,
    friendly,
    get_source,
    human_size,
    key_option,
)


def _print(report: PruneReport, source: str) -> None:
    verb = "would delete" if report.dry_run else "deleted"
    if report.retention_off:
        click.echo(f"{source}: retention is off: nothing is deleted (the bucket's lifecycle rules, if any, apply)")
        return
    click.echo(f"{source}: {report.policy.describe() if report.policy else ''}")
    if not report.deleted:
        click.echo("nothing to delete")
    else:
        parts = [
            f"{report.counts[k]} {k} ({human_size(report.bytes_by_kind[k])})"
            for k in ("snapshots", "segments", "heartbeats") if report.counts[k]
        ]
        click.echo(f"{verb} {len(report.deleted)} objects, {human_size(report.bytes_deleted)}: {', '.join(parts)}")
        if report.generations_removed:
            click.echo(f"{verb} generation(s) entirely: {', '.join(report.generations_removed)}")
    if report.window_start_us is not None and report.latest_us is not None:
        click.echo(
            f"exact to the transaction from {format_us(report.window_start_us)} to {format_us(report.latest_us)}"
        )
    beyond = [k for k in report.kept_snapshots if not k.in_window]
    if beyond:
        click.echo("snapshots kept beyond the window:")
        for k in beyond:
            label = ", ".join(k.tiers + [f"mark {m}" for m in k.marks]) or "-"
            click.echo(f"  {format_us(k.ts_us)}  txid {k.txid:<10} {label}")
    verb = "would be deleted" if report.dry_run else "were deleted"
    for name, keys in report.kept_for_marks.items():
        click.echo(f"kept for mark {name!r}: {len(keys)} object(s) that {verb} otherwise")
        for key in keys:
            click.echo(f"  {key}")
    for key, error in report.unreadable_marks.items():
        click.echo(f"WARNING: {key} is unreadable and keeps nothing: {error}", err=True)


@click.command("prune", short_help="Apply the retention policy now: delete what it no longer needs.")
@click.argument("source")
@click.option("--dry-run", is_flag=True, help="Print what would be deleted; delete nothing.")
@click.option("--retention", type=DurationText(), help="Keep every moment of this period exact (e.g. 7d, 36h), or 'off'. "
              "Default: the database's configured retention, else 7d.")
@click.option("--keep-daily", type=int, help="Daily snapshots kept beyond the window (0 disables). [default: 7]")
@click.option("--keep-weekly", type=int, help="Weekly snapshots kept beyond the window (0 disables). [default: 4]")
@click.option("--keep-monthly", type=int, help="Monthly snapshots kept beyond the window (0 disables). [default: 12]")
@click.option("--grace", type=DurationText(allow_off=False), help="Extra margin so restores in progress keep their objects. [default: 1h]")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable output.")
@config_option
@key_option
@friendly
def prune_command(source, dry_run, retention, keep_daily, keep_weekly, keep_monthly, grace, as_json):
    """Apply retention to SOURCE (a configured database name or a replica URL/path) now.

    Every moment of the retention period stays restorable to the transaction (plus a grace period
    for restores in progress); beyond it, the newest snapshot of each recent day, ISO week and month
    is kept (restorable to the snapshot), and every mark (`walrewind marks`) stays restorable until
    it is removed with `walrewind unmark`. Everything else is deleted, oldest first, in an order
    that an interruption cannot turn into a hole. Exit code 0 on success, 1 on an error.
    """
    src, _config = get_source(source)
    base = src.database.retention_policy() if src.database is not None else RetentionPolicy()
    policy = base.overridden(retention, keep_daily, keep_weekly, keep_monthly, grace)
    storage = src.storage(write=True)
    report = prune(storage, policy, dry_run=dry_run)
    if as_json:
        emit_json({"source": source, "replica": storage.url, **report.to_json(),
                   "retention": format_duration_us(policy.retention_us) if policy.retention_us else "off"})
    else:
        _print(report, source)
