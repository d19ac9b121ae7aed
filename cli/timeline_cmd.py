"""`walrewind timeline` — when did things happen?  Transactions and pages changed per time bucket."""

from __future__ import annotations

import click

from ..engine.errors import ReplicaEmpty, TimestampError
from ..engine.replica.format import FLAG_LATE, FLAG_RESYNC, FLAG_STAMP_LATE, LATE_FLAGS
from ..engine.restore.planning import window_text
from ..engine.timeparse import format_us
from ..engine.workspace.recovery import parse_target
from ..engine.workspace.timeline import (
    BUCKETS_US,
    Gap,
    build_timeline,
    name_tables,
    tables_as_of,
    transactions,
)
from .common import (
    config_option,
    emit_json,
    friendly,
    get_source,
    key_option,
    make_progress,
    table,
)

BAR_WIDTH = 40
_LABEL_LEN = {"second": 19, "minute": 16, "hour": 13, "day": 10}


def _label(us: int, by: str) -> str:
    text = format_us(us)
    if by == "day":
        return text[:10]
    if by == "hour":
        return text[:13] + ":00Z"
    return text[: _LABEL_LEN[by]] + "Z"


@click.command("timeline", short_help="Transactions and pages changed per minute/hour.")
@click.argument("src")
@click.option("--by", type=click.Choice(["second", "minute", "hour", "day", "transaction"]), default="minute",
              show_default=True, help="Bucket size, or 'transaction' for one row per transaction.")
@click.option("--since", help="Only from this moment (same forms as --timestamp).")
@click.option("--until", help="Only up to this moment.")
@click.option("--tables", is_flag=True,
              help="With --by transaction: name the tables each transaction touched (restores the last one of "
              "the range once, verified, to see which table owns each page).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable output.")
@config_option
@key_option
@friendly
def timeline_command(src, by, since, until, tables, as_json):
    """Show transactions and pages changed per minute (or hour, ...) across SRC's restorable window.

    SRC is a configured database name or a replica URL/path (a configured name wins).  A spike in pages changed is
    usually the bulk DELETE/UPDATE or migration you are looking for: restore to just before it with
    `walrewind db create NEW --from-db SRC --timestamp T` (or `--txid N`, see --by transaction).
    Reads every segment in the range from the replica.
    """
    since_us = parse_target(since) if since else None
    until_us = parse_target(until) if until else None
    if since_us is not None and until_us is not None and since_us > until_us:
        raise TimestampError(f"--since {format_us(since_us)} is after --until {format_us(until_us)}")
    source, _config = get_source(src)
    name, replica = source.label, source.replica()
    progress = make_progress(not as_json)
    if replica.empty:
        raise ReplicaEmpty(f"{name}: the replica ({replica.storage.url}) holds no restorable history yet")
    window = window_text(replica)
    if by == "transaction":
        rows = transactions(replica, since_us, until_us, progress)
        if tables and rows:
            name_tables(rows, tables_as_of(replica, rows[-1].txid))
        if as_json:
            emit_json({"source": name, "replica": replica.storage.url, "window": window, "by": by, "transactions": [
                {"txid": t.txid, "commit_time": format_us(t.commit_us), "pages": t.pages, "db_pages": t.db_pages,
                 "resync": bool(t.flags & FLAG_RESYNC), "late": bool(t.flags & LATE_FLAGS),
                 # a late stamp is an upper bound: the commit came after the previous transaction's
                 **({"committed_after": format_us(prev.commit_us)} if t.flags & LATE_FLAGS and prev else {}),
                 **({"tables": list(t.tables)} if tables else {})} for prev, t in zip([None, *rows], rows)]})
            return
        click.echo(f"{name}: {replica.storage.url}, restorable {window}")
        holes = [h for g in replica.generations for h in g.holes]
        top = max((t.pages for t in rows), default=0) or 1
        extra = (lambda t: [", ".join(t.tables)]) if tables else (lambda t: [])
        click.echo(table(
            [[str(t.txid), format_us(t.commit_us), str(t.pages), str(t.db_pages), _bar(t.pages, top),
              _flags(t.flags), *extra(t)] for t in rows],
            ["TXID", "COMMITTED (UTC)", "PAGES", "DB PAGES", "PAGES CHANGED", "NOTE"] + (["TABLES"] if tables else []),
            right={0, 2, 3}))
        _print_missing(holes, [])
        return
    gaps: list[Gap] = []
    buckets = build_timeline(replica, BUCKETS_US[by], since_us, until_us, progress, gaps)
    holes = [h for g in replica.generations for h in g.holes]
    if as_json:
        emit_json({"source": name, "replica": replica.storage.url, "window": window, "by": by, "buckets": [
            {"start": format_us(b.start_us), "transactions": b.transactions, "pages": b.pages,
             "first_txid": b.first_txid, "last_txid": b.last_txid, "snapshots": b.snapshots,
             "resyncs": b.resyncs, "late": b.late} for b in buckets],
            "holes": [list(h) for h in holes],
            "gaps": [{"resync_txid": g.txid, "from": format_us(g.from_us), "to": format_us(g.to_us)} for g in gaps]})
        return
    click.echo(f"{name}: {replica.storage.url}, restorable {window}")
    if not buckets:
        click.echo("no transactions in that range")
        return
    top = max(b.pages for b in buckets) or 1
    rows = []
    for b in buckets:
        notes = []
        if b.snapshots:
            notes.append("snapshot (history starts)")
        if b.resyncs:
            notes.append(f"{b.resyncs} RESYNC")
        if b.late:
            notes.append(f"{b.late} late")
        txids = f"{b.first_txid}-{b.last_txid}" if b.first_txid != b.last_txid else str(b.first_txid)
        rows.append([_label(b.start_us, by), str(b.transactions), str(b.pages), txids, _bar(b.pages, top), ", ".join(notes)])
    click.echo(table(rows, [f"{by.upper()} (UTC)", "TXNS", "PAGES", "TXIDS", "PAGES CHANGED", "NOTE"], right={1, 2}))
    _print_missing(holes, gaps)


def _print_missing(holes, gaps) -> None:
    """What the table cannot show: transactions missing from the replica, and unobserved stretches."""
    for first, last in holes:
        click.echo(f"HOLE: transactions {first}..{last} are missing from the replica (deleted or never uploaded); "
                   f"no point after txid {first - 1} can be restored until a later snapshot")
    for g in gaps:
        click.echo(f"GAP: no record of individual commits between {format_us(g.from_us)} and {format_us(g.to_us)}; "
                   f"they are folded into RESYNC transaction {g.txid}")


def _bar(value: int, top: int) -> str:
    return "#" * max(1 if value else 0, round(BAR_WIDTH * value / top))


def _flags(flags: int) -> str:
    notes = []
    if flags & FLAG_RESYNC:
        notes.append("RESYNC")
    if flags & FLAG_LATE:
        notes.append("late (after a restart)")
    elif flags & FLAG_STAMP_LATE:
        notes.append("late (seen late)")
    return ", ".join(notes)
