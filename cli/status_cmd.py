"""`walrewind status` — how every database replicated on this machine is doing, as a health check."""

from __future__ import annotations

import sys
import time

import click

from .common import config_option, emit_json, friendly, get_config, human_size, table


def _ago(us: int | None, now_us: int) -> str:
    if not us:
        return "-"
    from ..engine.logs import duration

    return f"{duration((now_us - us) / 1e6)} ago"


def _when(us: int | None) -> str:
    if not us:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(us / 1e6)) + "Z"


@click.command("status")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable output.")
@config_option
@friendly
def status_command(name, as_json):
    """How each database replicated on this machine is doing: state (replicating, behind, spooling,
    starting, retrying, fenced, stopped), lag, last upload, spool backlog, restorable window and
    last restore drill.

    Every running `walrewind replicate` on this machine reports through its state directory
    ($XDG_STATE_HOME/walrewind/fleets), config or not; databases of the config file that no
    daemon replicates are listed as stopped.  NAME: only that database (a configured name or the
    database's path).

    Exit status 0 when every database is healthy (the same verdict as replicate's /healthz: each
    replicates, or spools while the replica is unreachable, within its lag budget), 1 otherwise:
    use it as a cron or container health check (docker/Dockerfile's HEALTHCHECK does).
    """
    from ..engine.daemon.health import machine_status

    config = get_config(required=False)
    configured = list(config.databases.values()) if config is not None else []
    budget = config.lag_budget_s if config is not None else None
    report = machine_status(configured, name, **({"lag_budget": budget} if budget else {}))
    if as_json:
        emit_json(report)
    else:
        now = time.time_ns() // 1000
        rows = []
        for d in report["databases"]:
            lag = "-" if d["lag_seconds"] is None else f"{d['lag_seconds']:.1f} s"
            backlog = f"{d['backlog_transactions']} txn / {human_size(d['backlog_bytes'])}" if d["backlog_bytes"] else "0"
            window = f"{_when(d['restorable_since_us'])} .. {_when(d['restorable_until_us'])}" \
                if d["restorable_since_us"] else "-"
            drill = "-" if d["last_verify_us"] is None else \
                f"{'PASSED' if d['last_verify_ok'] else 'FAILED'} {_ago(d['last_verify_us'], now)}"
            rows.append([d["name"], d["state"], lag, _ago(d["last_upload_us"], now), backlog, window, drill])
        if rows:
            click.echo(table(rows, ["NAME", "STATE", "LAG", "LAST UPLOAD", "BACKLOG", "RESTORABLE (UTC)", "LAST DRILL"]))
            for d in report["databases"]:
                if not d["healthy"] and d["reason"]:
                    click.echo(f"  {d['reason']}")
        click.echo(("healthy: " if report["healthy"] else "UNHEALTHY: ") + report["reason"])
    if not report["healthy"]:
        sys.exit(1)
