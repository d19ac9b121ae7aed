"""`walrewind timeline` — when did things happen?  Transactions and pages changed per time bucket."""

from __future__ import annotations

import click

from ..engine.errors import StorageError, TimestampError, UsageError
from ..engine.replica.format import FLAG_LATE, FLAG_RESYNC
from ..engine.replica.index import Replica
from ..engine.restore.restorer import window_text
from ..engine.storage import open_storage
from ..engine.timeparse import format_us
from ..engine.workspace.timeline import BUCKETS_US, build_timeline, transactions
from .common import emit_json, make_progress
from .context import (
    catalog,
    config_option,
    friendly,
    get_config,
    open_replica,
    parse_target,
    table,
    unknown_database,
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


def _open(src: str) -> tuple[str, Replica]:
    """A configured database name, or (without a config) a replica URL / path."""
    looks_like_url = "://" in src or "/" in src
    config = get_config(required=not looks_like_url)
    if config is not None and src in config.databases:
        return src, open_replica(config.databases[src])
    if looks_like_url:
        try:
            return src, Replica(open_storage(src, create=False))
        except StorageError as exc:
            raise UsageError(f"replica {src} is unreachable: {exc}") from None
    cat = catalog(config)
    if cat.get(src) is not None:
        raise UsageError(f"{src!r} is a restored copy and has no replica; timeline needs a replicated database: "
                           + (", ".join(sorted(config.databases)) or "none configured"))
    raise unknown_database(src, config, cat, sources_only=True)


@click.command("timeline", short_help="Transactions and pages changed per minute/hour.")
@click.argument("src")
@click.option("--by", type=click.Choice(["second", "minute", "hour", "day", "transaction"]), default="minute",
              show_default=True, help="Bucket size, or 'transaction' for one row per transaction.")
@click.option("--since", help="Only from this moment (same forms as --timestamp).")
@click.option("--until", help="Only up to this moment.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable output.")
@config_option
@friendly
def timeline_command(src, by, since, until, as_json):
    """Show transactions and pages changed per minute (or hour, ...) across SRC's restorable window.

    SRC is a replicated database from the config (or a replica URL).  A spike in pages changed is
    usually the bulk DELETE/UPDATE or migration you are looking for: restore to just before it with
    `walrewind db create NEW --from-db SRC --timestamp T` (or `--txid N`, see --by transaction).
    Reads every segment in the range from the replica.
    """
    since_us = parse_target(since) if since else None
    until_us = parse_target(until) if until else None
    if since_us is not None and until_us is not None and since_us > until_us:
        raise TimestampError(f"--since {format_us(since_us)} is after --until {format_us(until_us)}")
    name, replica = _open(src)
    progress = make_progress(not as_json)
    if replica.empty:
        raise UsageError(f"{name}: the replica ({replica.storage.url}) holds no restorable history yet")
    window = window_text(replica)
    if by == "transaction":
        rows = transactions(replica, since_us, until_us, progress)
        if as_json:
            emit_json({"source": name, "replica": replica.storage.url, "window": window, "by": by, "transactions": [
                {"txid": t.txid, "commit_time": format_us(t.commit_us), "pages": t.pages, "db_pages": t.db_pages,
                 "resync": bool(t.flags & FLAG_RESYNC), "late": bool(t.flags & FLAG_LATE)} for t in rows]})
            return
        click.echo(f"{name}: {replica.storage.url}, restorable {window}")
        top = max((t.pages for t in rows), default=0) or 1
        click.echo(table(
            [[str(t.txid), format_us(t.commit_us), str(t.pages), str(t.db_pages), _bar(t.pages, top),
              _flags(t.flags)] for t in rows],
            ["TXID", "COMMITTED (UTC)", "PAGES", "DB PAGES", "PAGES CHANGED", "NOTE"], right={0, 2, 3}))
        return
    buckets = build_timeline(replica, BUCKETS_US[by], since_us, until_us, progress)
    if as_json:
        emit_json({"source": name, "replica": replica.storage.url, "window": window, "by": by, "buckets": [
            {"start": format_us(b.start_us), "transactions": b.transactions, "pages": b.pages,
             "first_txid": b.first_txid, "last_txid": b.last_txid, "snapshots": b.snapshots,
             "resyncs": b.resyncs, "late": b.late} for b in buckets]})
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


def _bar(value: int, top: int) -> str:
    return "#" * max(1 if value else 0, round(BAR_WIDTH * value / top))


def _flags(flags: int) -> str:
    notes = []
    if flags & FLAG_RESYNC:
        notes.append("RESYNC")
    if flags & FLAG_LATE:
        notes.append("late")
    return ", ".join(notes)
