"""`walrewind history` — the recovery log: every create, restore and destroy, failures included."""

from __future__ import annotations

import click

from ..engine.timeparse import format_us
from ..engine.workspace.recovery import parse_target
from .common import config_option, emit_json, friendly, get_config, open_catalog, table


def _when(us: int | None) -> str:
    return format_us(us)[:19].replace("T", " ") if us is not None else "-"


def _short(text: str | None, width: int) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 3] + "..."


@click.command("history", short_help="The recovery log: who restored what, when, and why.")
@click.option("--db", "name", metavar="NAME", help="Only entries for this database (created, destroyed or used as source).")
@click.option("--limit", "-n", type=int, default=50, show_default=True, help="Newest N entries (0 = all).")
@click.option("--failed", "failed_only", is_flag=True, help="Only attempts that failed.")
@click.option("--prune", "prune_before", metavar="BEFORE",
              help="Delete entries older than BEFORE (a moment: 2024-01-01, '90 days ago', -30d) and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable output (all fields, full texts).")
@config_option
@friendly
def history_command(name, limit, failed_only, prune_before, as_json):
    """Show the recovery history, newest first: when, who (OS user), what was restored from where,
    the target and the point it landed on, the reason, the result and how long it took.

    Recoveries that started work are recorded (restores, db create, drills), successful or not;
    mistakes answered on the spot (a bad timestamp, an unknown name) are not."""
    config = get_config()
    if prune_before is not None:
        before = parse_target(prune_before)
        removed = open_catalog(config).prune_history(before)
        if as_json:
            emit_json({"pruned": removed, "before": format_us(before)})
        else:
            click.echo(f"removed {removed} history entries older than {format_us(before)}")
        return
    entries = open_catalog(config).history(limit=limit or None, name=name, failed_only=failed_only)
    if as_json:
        emit_json([
            {
                "id": e.id,
                "time": format_us(e.at_us),
                "user": e.user,
                "action": e.action,
                "name": e.name,
                "source": e.source,
                "replica": e.replica,
                "output": e.output,
                "target_input": e.target_input,
                "target_time": format_us(e.target_us) if e.target_us is not None else None,
                "target_txid": e.target_txid,
                "restored_txid": e.restored_txid,
                "restored_commit": format_us(e.restored_commit_us) if e.restored_commit_us is not None else None,
                "reason": e.reason,
                "result": e.result,
                "error": e.error,
                "duration_s": round(e.duration_s, 3) if e.duration_s is not None else None,
            }
            for e in entries
        ])
        return
    if not entries:
        click.echo(f"no recovery history yet ({config.catalog_path})")
        return
    rows = []
    failures = []
    for e in entries:
        if e.target_input is not None and e.target_input.startswith("mark "):
            target = e.target_input  # the mark's name says more than its txid
        elif e.target_us is not None:
            target = _when(e.target_us)
        elif e.target_txid is not None:
            target = f"txid {e.target_txid}"
        else:
            target = e.target_input or "-"
        restored = f"txid {e.restored_txid} @ {_when(e.restored_commit_us)}" if e.restored_txid is not None else "-"
        if e.result != "ok":
            failures.append(f"#{e.id} {e.action} {e.name or e.output or ''} failed: {e.error}")
        rows.append([
            str(e.id), _when(e.at_us), e.user, e.action, e.name or _short(e.output, 40) or "-",
            e.source or _short(e.replica, 40) or "-", _short(target, 24), restored, _short(e.reason, 30) or "-",
            f"{e.duration_s:.2f}s" if e.duration_s is not None else "-", "ok" if e.result == "ok" else "FAILED",
        ])
    click.echo(table(rows, ["#", "WHEN (UTC)", "WHO", "ACTION", "DATABASE", "SOURCE", "TARGET", "RESTORED", "REASON",
                            "TOOK", "RESULT"], right={0}))
    if failures:
        click.echo("")
        for line in failures:
            click.echo(line)
