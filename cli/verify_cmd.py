"""`walrewind verify` (restore drills) and `walrewind snapshot` (a new base snapshot from the replica)."""

from __future__ import annotations

import click

from ..engine.errors import UsageError
from ..engine.maintenance.snapshots import build_snapshot
from ..engine.restore.drills import drill, random_targets
from ..engine.storage import open_storage
from ..engine.timeparse import format_us
from .common import emit_json
from .context import catalog, config_option, friendly, get_config, parse_target


def _replica_url(source: str) -> tuple[str, str | None, object]:
    """A configured database name, or a replica URL/path.  Returns (url, name, config)."""
    config = get_config(required=False)
    if config is not None and source in config.databases:
        return config.databases[source].replica, source, config
    if "://" in source or "/" in source or source.startswith("."):
        return source, None, config
    known = ", ".join(sorted(config.databases)) if config else "none (no config file)"
    raise UsageError(f"unknown database {source!r}; pass a replica URL or one of: {known}")


@click.command("verify", short_help="Restore drills: prove the replica restores, PASSED/FAILED.")
@click.argument("source")
@click.option("--at", "at", help="Drill this moment (ISO 8601; no offset = UTC). Default: the latest point.")
@click.option("--random", "random_n", type=int, help="Drill N seeded random moments across the restorable window.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --random.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@config_option
@friendly
def verify_command(source, at, random_n, seed, as_json):
    """Restore SOURCE (a configured database or a replica URL) into a temporary file, check the
    recorded database checksum, quick_check and the full PRAGMA integrity_check, and print PASSED
    or FAILED with timings. Exits 1 if any drill fails. Results go to the recovery history when a
    config (data directory) is in use."""
    if at is not None and random_n is not None:
        raise click.UsageError("use either --at or --random, not both")
    url, name, config = _replica_url(source)
    storage = open_storage(url, create=False)
    if random_n is not None:
        targets: list[int | None] = list(random_targets(storage, random_n, seed))
    else:
        targets = [parse_target(at) if at is not None else None]
    results = [drill(storage, target) for target in targets]
    if config is not None:
        with catalog(config, create=True) as cat:
            for r in results:
                cat.record(
                    "verify", "ok" if r.passed else "failed", source=name, replica=url,
                    target_input=format_us(r.target_us) if r.target_us is not None else "latest",
                    target_us=r.target_us, restored_txid=r.txid, restored_commit_us=r.commit_us,
                    error=None if r.passed else r.detail, duration_s=r.seconds,
                )
    if as_json:
        emit_json({"source": source, "passed": all(r.passed for r in results), "drills": [r.to_json() for r in results]})
    else:
        for r in results:
            j = r.to_json()
            landed = f"txid {j['txid']} @ {j['commit_time']}" if j["txid"] is not None else "-"
            click.echo(f"{j['result']:<6} target {j['target']:<28} restored {landed}  {j['seconds']:.2f}s  {j['detail']}")
    if not all(r.passed for r in results):
        raise SystemExit(1)


@click.command("snapshot", short_help="Write a new base snapshot built from the replica itself.")
@click.argument("source")
@click.option("--txid", type=int, help="Snapshot at this transaction (default: the newest).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable output.")
@config_option
@friendly
def snapshot_command(source, txid, as_json):
    """Build a snapshot of SOURCE's newest generation from the replica (previous snapshot +
    segments, verified by the recorded checksum) so later restores read less. The live database
    is not read and no lock is taken on it."""
    url, _name, _config = _replica_url(source)
    built = build_snapshot(open_storage(url, create=False), txid=txid)
    if as_json:
        emit_json({"key": built.key, "txid": built.txid, "time": format_us(built.ts_us), "created": built.created})
    else:
        state = "created" if built.created else "already existed"
        click.echo(f"snapshot at txid {built.txid} ({format_us(built.ts_us)}) {state}: {built.key}")
