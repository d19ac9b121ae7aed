"""`walrewind verify` (restore drills) and `walrewind snapshot` (a new base snapshot from the replica)."""

from __future__ import annotations

import click

from ..engine.errors import MarkBroken
from ..engine.maintenance.snapshots import build_snapshot
from ..engine.restore.drills import DrillResult, drill, random_targets
from ..engine.timeparse import format_us
from ..engine.workspace.marks import resolve_mark
from ..engine.workspace.recovery import parse_target, record_drills
from .common import config_option, emit_json, friendly, get_source, key_option
from .progress import showing_progress


@click.command("verify", short_help="Restore drills: prove the replica restores, PASSED/FAILED.")
@click.argument("source")
@click.option("--at", "at", help="Drill this moment (ISO 8601; no offset = UTC). Default: the latest point.")
@click.option("--mark", "mark", metavar="NAME", help="Drill the named restore point (exactly its transaction; see `walrewind marks`).")
@click.option("--random", "random_n", type=int, help="Drill N seeded random moments across the restorable window.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --random.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@config_option
@key_option
@friendly
def verify_command(source, at, mark, random_n, seed, as_json):
    """Restore SOURCE (a configured database name or a replica URL/path) into a temporary file, check the
    recorded database checksum, quick_check and the full PRAGMA integrity_check, and print PASSED
    or FAILED with timings. Exits 1 if any drill fails. Results go to the recovery history when a
    config (data directory) is in use."""
    given = [opt for opt, value in (("--at", at), ("--mark", mark), ("--random", random_n)) if value is not None]
    if len(given) > 1:
        raise click.UsageError(f"use one of --at, --mark and --random, not {' and '.join(given)}")
    src, config = get_source(source)
    storage = src.storage()
    results = []
    if mark is not None:
        results.append(drill_mark(storage, mark, not as_json))
    else:
        if random_n is not None:
            targets: list[int | None] = list(random_targets(storage, random_n, seed))
        else:
            targets = [parse_target(at) if at is not None else None]
        for target in targets:
            with showing_progress(not as_json, "verify") as progress:
                results.append(drill(storage, target, progress=progress))
    for warning in record_drills(config, src, results):
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        emit_json({"source": source, "passed": all(r.passed for r in results), "drills": [r.to_json() for r in results]})
    else:
        for r in results:
            j = r.to_json()
            landed = f"txid {j['txid']} @ {j['commit_time']}" if j["txid"] is not None else "-"
            click.echo(f"{j['result']:<6} target {j['target']:<28} restored {landed}  {j['seconds']:.2f}s  {j['detail']}")
    if not all(r.passed for r in results):
        raise SystemExit(1)


def drill_mark(storage, name: str, show_progress: bool) -> DrillResult:
    """A drill of mark ``name``: a broken mark is a FAILED drill (an unknown name an error)."""
    try:
        found = resolve_mark(storage, name)
    except MarkBroken as exc:
        return DrillResult(None, False, None, None, 0.0, str(exc), label=f"mark {name}")
    with showing_progress(show_progress, "verify") as progress:
        return drill(storage, progress=progress, target_txid=found.txid, label=f"mark {name} (txid {found.txid})")


@click.command("snapshot", short_help="Write a new base snapshot built from the replica itself.")
@click.argument("source")
@click.option("--txid", type=int, help="Snapshot at this transaction (default: the newest).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable output.")
@config_option
@key_option
@friendly
def snapshot_command(source, txid, as_json):
    """Build a snapshot of SOURCE's newest generation from the replica (previous snapshot +
    segments, verified by the recorded checksum) so later restores read less. The live database
    is not read and no lock is taken on it."""
    src, _config = get_source(source)
    with showing_progress(not as_json, "snapshot") as progress:
        built = build_snapshot(src.storage(write=True), txid=txid, progress=progress)
    if as_json:
        emit_json({"key": built.key, "txid": built.txid, "time": format_us(built.ts_us), "created": built.created,
                   "skipped_snapshots": [{"key": k, "reason": v} for k, v in built.skipped.items()]})
    else:
        state = "created" if built.created else "already existed"
        click.echo(f"snapshot at txid {built.txid} ({format_us(built.ts_us)}) {state}: {built.key}")
    for key, reason in built.skipped.items():
        click.echo(f"WARNING: skipped damaged snapshot {key}: {reason}", err=True)
