"""`walrewind rekey` — rewrite objects encrypted under older keys with the current (first) key."""

from __future__ import annotations

import sys

import click

from ..engine.storage.rekey import rekey
from .common import (
    config_option,
    emit_json,
    friendly,
    get_source,
    human_size,
    key_option,
    make_progress,
)


@click.command("rekey", short_help="Rewrite objects encrypted under older keys with the current key.")
@click.argument("source")
@click.option("--dry-run", is_flag=True, help="Count what would be rewritten; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable output.")
@config_option
@key_option
@friendly
def rekey_command(source, dry_run, as_json):
    """Re-encrypt every object of SOURCE (a configured database name or a replica URL/path; a
    configured name wins) that is under an older key with the current key: the first one given
    (--encryption-key-file, then encryption_key_file in the config, then WALREWIND_ENCRYPTION_KEY).
    Give the old keys too, after it.  Each object is replaced only once its new version is verified,
    so an interrupted run loses nothing: run it again.  Rotate in this order: put the new key first
    in the daemon's keys (old ones after it) and restart it, run rekey, then drop the old keys once
    rekey reports that no object needs them.  Exit 1 if objects under keys not given remain."""
    src, _config = get_source(source)
    report = rekey(src.storage(write=True), dry_run=dry_run, progress=make_progress(not as_json))
    if as_json:
        emit_json({"source": source, "replica": src.display, **report.to_json()})
    else:
        verb = "would rewrite" if dry_run else "rewrote"
        click.echo(f"{src.label}: {verb} {len(report.rewritten)} objects ({human_size(report.bytes)}) under key id "
                   f"{report.key_id} in {report.seconds:.1f}s; {report.current} already under it, "
                   f"{report.plaintext} unencrypted (plaintext generations, left as they are)")
        for key_id, count in sorted(report.unavailable.items()):
            click.echo(f"  {count} objects are under key id {key_id}, which was not given: left as they are")
        if report.vanished:
            click.echo(f"  {len(report.vanished)} objects were deleted or replaced meanwhile (retention, compaction)")
        if report.done:
            click.echo(f"  no object needs another key than {report.key_id} now")
    if report.unavailable:
        sys.exit(1)
