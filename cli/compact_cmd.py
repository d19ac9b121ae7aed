"""`walrewind compact`: merge old small segments into large ones (restores of older points get faster)."""

from __future__ import annotations

import sys

import click

from ..engine.maintenance.compaction import compact
from ..engine.timeparse import format_duration_us, parse_duration_us
from .common import config_option, emit_json, friendly, get_source, key_option


def _duration(_ctx, param, value: str) -> int:
    try:
        return parse_duration_us(value)
    except ValueError as exc:  # DurationError
        raise click.BadParameter(str(exc), param=param) from None


def _progress(stage: str, done: int, total: int) -> None:
    """One line on stderr every 100 segments (and at the end), terminal or not: runs are long."""
    if done % 100 == 0 or done == total:
        click.echo(f"{stage}: {done}/{total}", err=True)


@click.command("compact", short_help="Merge old small segments into large ones (same history, fewer objects).")
@click.argument("source")
@click.option("--older-than", "older_than", default="1h", show_default=True, callback=_duration,
              help="Only segments whose last transaction is older than this (e.g. 1h, 30m, 2d).")
@click.option("--span", "span", default="1h", show_default=True, callback=_duration,
              help="At most one merged segment per this much commit time (aligned to UTC).")
@click.option("--dry-run", is_flag=True, help="Show what would be merged; read and write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable output.")
@config_option
@key_option
@friendly
def compact_command(source, older_than, span, dry_run, as_json):
    """Merge runs of consecutive segments of SOURCE (a configured database name or a replica URL/path) older
    than --older-than into one segment per --span of commit time. Every transaction keeps its
    txid and commit time, so restores stay exact; each merged segment is verified against its
    sources before they are deleted, and an interrupted run is finished by the next one."""
    src, _config = get_source(source)
    url = src.display
    report = compact(src.storage(write=True), compact_after_us=older_than, span_us=span, dry_run=dry_run,
                     progress=None if as_json and not sys.stderr.isatty() else _progress)
    if as_json:
        emit_json(dict(report.to_json(), replica=url, older_than=format_duration_us(older_than)))
        return
    verb = "would merge" if dry_run else "merged"
    before = sum(len(src) for _k, src in report.merged)
    click.echo(f"{url}: {verb} {before} segments into {len(report.merged)} "
               f"(older than {format_duration_us(older_than)}, span {format_duration_us(span)})")
    for key, src in report.merged:
        click.echo(f"  {key}  <- {len(src)} segments")
    if dry_run:
        click.echo(f"  {report.bytes_before} bytes would be rewritten")
    else:
        click.echo(f"  {report.bytes_before} bytes -> {report.bytes_after} bytes in {report.seconds:.1f}s")
    if report.finished:
        click.echo(f"  finished an interrupted run: {sum(len(s) for _k, s in report.finished)} leftover segments"
                   + (" would be" if dry_run else "") + " deleted")
    if not report.merged and not report.finished:
        click.echo("  nothing to do")
