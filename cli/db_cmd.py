"""`walrewind db` — databases by name: create (from a point in time), show, list, shell, destroy.

Replicated databases come from the config file; restored copies live in the data directory and
are registered in its catalog.  A source database is only ever opened read-only.
"""

from __future__ import annotations

import os
import sys
import time

import click

from ..engine.daemon.spool import default_state_dir
from ..engine.errors import NameTaken, UsageError
from ..engine.maintenance.scheduler import read_status
from ..engine.restore.restorer import restore
from ..engine.sqlite.dbinfo import (
    file_url,
    journal_mode,
    open_readonly,
    page_info,
    tables,
)
from ..engine.timeparse import format_us, parse_timestamp_us
from ..engine.workspace.catalog import CatalogEntry, current_user, now_us
from ..engine.workspace.config import validate_name
from ..engine.workspace.status import replication_status
from .common import emit_json, make_progress
from .context import (
    catalog,
    config_option,
    file_size,
    friendly,
    get_config,
    human_size,
    open_replica,
    parse_target,
    resolve,
    table,
    unknown_database,
)
from .db_shell_cmd import shell_command
from .restore_cmd import TIMESTAMP_HELP
from .validation import VALIDATE_HELP, print_validation, run_validation


@click.group("db", short_help="Named databases: create/show/list/shell/destroy.")
def db_group():
    """Databases by name: restored copies (data directory) and replicated sources (config file).

    \b
    walrewind db create before-delete --from-db app --timestamp 2024-01-15T10:29:00Z
    walrewind db show before-delete
    walrewind db shell before-delete "SELECT count(*) FROM notes"
    walrewind db destroy before-delete --yes
    """


# --------------------------------------------------------------------------------------- create
@db_group.command("create", short_help="Restore a replicated database as of a moment into a new named database.")
@click.argument("name")
@click.option("--from-db", "from_db", metavar="SRC", help="Replicated database (from the config) to restore from.")
@click.option("--timestamp", "-t", help=TIMESTAMP_HELP + " Default: the latest replicated point.")
@click.option("--txid", type=int, help="Restore exactly up to and including this transaction id.")
@click.option("--reason", help="Why (kept in the recovery history).")
@click.option("--validate", is_flag=True, help=VALIDATE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable output.")
@config_option
@friendly
def create_command(name, from_db, timestamp, txid, reason, validate, as_json):
    """Create database NAME by restoring SRC's replica as of a moment (a new file; SRC is never touched).

    SRC is a database from the config file ([databases.SRC] with path and replica).  NAME (letters,
    digits, '-', '_') becomes <data_dir>/databases/NAME.db, registered in the catalog; every attempt,
    successful or not, is recorded in `walrewind history`.

    \b
    walrewind db create before-delete --from-db app --timestamp 2024-01-15T10:29:00Z --reason "bad DELETE"
    walrewind db create at-txn --from-db app --txid 48213 --validate
    """
    if from_db is None:
        if timestamp is not None:
            raise UsageError("--timestamp cannot be used without specifying --from-db")
        if txid is not None:
            raise UsageError("--txid cannot be used without specifying --from-db")
        raise UsageError("--from-db SRC is required: walrewind creates a database by restoring a replicated one")
    if timestamp is not None and txid is not None:
        raise UsageError("use either --timestamp or --txid, not both")
    validate_name(name)
    config = get_config()
    cat = catalog(config, create=True)
    started = time.monotonic()
    record = dict(name=name, source=from_db, target_txid=txid, reason=reason,
                  target_input=timestamp if timestamp is not None else (f"txid {txid}" if txid is not None else "latest"))
    target_us = None
    reserved = False
    try:
        if timestamp is not None:
            target_us = parse_target(timestamp)
            record["target_us"] = target_us
        if name in config.databases:
            raise UsageError(f"database {name!r} already exists (a replicated database in {config.path}); choose another name")
        if cat.get(name) is not None:
            raise UsageError(
                f"database {name!r} already exists (restored copy at {cat.get(name).path}); choose another name "
                f"or remove it first with: walrewind db destroy {name} --yes"
            )
        out_path = config.restored_path(name)
        if os.path.exists(out_path):
            raise UsageError(f"database {name!r} already exists: {out_path} is in the way (not in the catalog); move it away first")
        if from_db not in config.databases:
            if cat.get(from_db) is not None:
                raise UsageError(
                    f"{from_db!r} is a restored copy, not a replicated database; --from-db needs one of: "
                    + (", ".join(sorted(config.databases)) or "none configured")
                )
            raise unknown_database(from_db, config, cat, sources_only=True)
        src = config.databases[from_db]
        record["replica"] = src.replica_display
        replica = open_replica(src)
        os.makedirs(config.databases_dir, exist_ok=True)
        try:
            cat.reserve(CatalogEntry(name, out_path, "creating", now_us(), current_user(), from_db, src.replica_display,
                                     target_us, txid, reason=reason))
        except NameTaken:
            raise UsageError(f"database {name!r} already exists (being created by another command)") from None
        reserved = True
        record["output"] = out_path
        result = restore(replica.storage, out_path, target_us=target_us, target_txid=txid,
                         progress=make_progress(not as_json), replica=replica)
        cat.update(name, status="ready", restored_txid=result.txid, restored_commit_us=result.commit_us,
                   checksum=f"{result.checksum:016x}")
        reserved = False
        record.update(restored_txid=result.txid, restored_commit_us=result.commit_us)
    except BaseException as exc:
        if reserved:
            cat.remove(name)
        error = str(exc) or type(exc).__name__
        try:
            cat.record("create", "failed", error=error, duration_s=time.monotonic() - started, **record)
        except Exception as log_exc:  # never hide the real failure behind a logging one
            click.echo(f"warning: could not record the failure in the history: {log_exc}", err=True)
        raise
    validation = run_validation(out_path) if validate else None
    failed = validation is not None and not validation.ok
    cat.record(
        "create", "failed" if failed else "ok", duration_s=time.monotonic() - started,
        error=("validation failed: integrity_check: " + "; ".join(validation.integrity[:3])) if failed else None,
        **record,
    )
    if as_json:
        emit_json({
            "name": name,
            "path": out_path,
            "url": file_url(out_path),
            "source": from_db,
            "replica": src.replica_display,
            "target_time": format_us(target_us) if target_us is not None else None,
            "target_txid": txid,
            "restore": result.to_json(),
            "validation": validation.to_json() if validation else None,
        })
    else:
        target = f"as of {format_us(target_us)}" if target_us is not None else (f"at txid {txid}" if txid else "at the latest point")
        click.echo(f"Created database {name!r} from {from_db!r} {target}")
        click.echo(f"  restored to: txid {result.txid} (committed {format_us(result.commit_us)})")
        click.echo(f"  path:        {out_path}")
        click.echo(
            f"  size:        {human_size(result.db_pages * result.page_size)}; checksum {result.checksum:016x} verified, "
            f"quick_check {result.quick_check}, {result.seconds:.2f}s"
        )
        for note in result.notes:
            click.echo(f"  note: {note}")
        if validation is not None:
            print_validation(validation)
        else:
            click.echo(f"Next: walrewind db shell {name}   or   walrewind diff {name} --from-db {from_db} --table TABLE")
    for warning in result.warnings:
        click.echo(f"WARNING: {warning}", err=True)
    if failed:
        click.echo(
            f"Error: validation failed for {name!r} (integrity_check: {'; '.join(validation.integrity[:3])}); the copy is "
            f"kept at {out_path} for inspection (remove it with: walrewind db destroy {name} --yes)",
            err=True,
        )
        sys.exit(1)


# ----------------------------------------------------------------------------------------- show
def _table_list(path: str) -> list[dict]:
    conn = open_readonly(path)
    try:
        return [{"name": t.name, "type": t.kind, "rows": t.rows} for t in tables(conn)]
    finally:
        conn.close()


def _db_file_info(path: str) -> dict:
    if not os.path.exists(path):
        return {"exists": False}
    conn = open_readonly(path)
    try:
        page_size, page_count = page_info(conn)
        mode = journal_mode(conn)
        listing = [{"name": t.name, "type": t.kind, "rows": t.rows} for t in tables(conn)]
    finally:
        conn.close()
    wal = path + "-wal"
    return {"exists": True, "size_bytes": page_size * page_count, "file_bytes": os.path.getsize(path),
            "wal_bytes": os.path.getsize(wal) if os.path.exists(wal) else 0, "page_size": page_size,
            "pages": page_count, "journal_mode": mode, "tables": listing}


@db_group.command("show", short_help="Path, size, tables, origin or replication status of a database.")
@click.argument("name")
@click.option("--url", "url_only", is_flag=True, help="Print only a connection URL (file: URI).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable output.")
@config_option
@friendly
def show_command(name, url_only, as_json):
    """Show a database: path, size, tables and where it came from (restored copy), or its replica,
    restorable window, last shipped transaction and lag (replicated database)."""
    config = get_config()
    cat = catalog(config)
    db = resolve(config, cat, name)
    url = file_url(db.path, readonly=db.kind == "replicated")
    if url_only:
        click.echo(url)
        return
    info = {"name": name, "type": db.kind, "path": db.path, "url": url}
    info.update(_db_file_info(db.path))
    replica_error = None
    if db.kind == "restored":
        e = db.entry
        info.update(
            status=e.status,
            created=format_us(e.created_us),
            created_by=e.created_by,
            source=e.source,
            replica=e.replica,
            target_time=format_us(e.target_us) if e.target_us is not None else None,
            target_txid=e.target_txid,
            restored_txid=e.restored_txid,
            restored_commit=format_us(e.restored_commit_us) if e.restored_commit_us is not None else None,
            checksum=e.checksum,
            reason=e.reason,
        )
    else:
        src = db.source
        info.update(replica=src.replica_display, retention=src.retention, retention_policy=src.retention_policy().describe())
        info["maintenance"] = read_status(src.state_dir or default_state_dir(src.path))
        try:
            info["replication"] = replication_status(src.path, open_replica(src))
        except UsageError as exc:
            replica_error = str(exc)
            info["replication"] = {"error": replica_error}
    if as_json:
        emit_json(info)
    else:
        _print_show(info)
    if replica_error:
        click.echo(f"Error: {replica_error}", err=True)
        sys.exit(1)


def _print_maintenance(status: dict | None, line) -> None:
    """The daemon's last snapshot / retention / compaction / drill results (maintenance.json)."""
    if not status:
        line("maintenance", "no status yet (the daemon saves it after its first maintenance round)")
        return
    for task, state in status.get("tasks", {}).items():
        if not state.get("enabled"):
            line(task, "off")
            continue
        last = state.get("last")
        done = f"{last['result']} at {last['at']} ({last['seconds']:.1f} s)" if last else "not run yet"
        line(task, f"{done}; next {state.get('next_due') or '-'}")


def _print_show(info: dict) -> None:
    def line(label, value):
        click.echo(f"{label + ':':<18}{value}")

    line("name", info["name"])
    line("type", "replicated (source database, opened read-only)" if info["type"] == "replicated" else "restored copy")
    line("path", info["path"] + ("" if info["exists"] else "   (MISSING)"))
    line("url", info["url"])
    if info["exists"]:
        wal = f", -wal file {human_size(info['wal_bytes'])}" if info["wal_bytes"] else ""
        line("size", f"{human_size(info['size_bytes'])} ({info['pages']} pages of {info['page_size']} bytes{wal}; "
                     f"journal_mode={info['journal_mode']})")
    if info["type"] == "restored":
        if info["status"] != "ready":
            line("status", f"{info['status']} (incomplete: the create did not finish; destroy it)")
        line("created", f"{info['created']} by {info['created_by']}")
        line("source", f"{info['source']} ({info['replica']})")
        if info["target_time"]:
            line("target", info["target_time"])
        elif info["target_txid"] is not None:
            line("target", f"txid {info['target_txid']}")
        else:
            line("target", "latest")
        if info["restored_txid"] is not None:
            line("restored to", f"txid {info['restored_txid']} (committed {info['restored_commit']})")
        if info["reason"]:
            line("reason", info["reason"])
    else:
        line("replica", info["replica"])
        if info.get("retention_policy"):
            line("retention", info["retention_policy"])
        rep = info["replication"]
        if "error" in rep:
            line("replication", "UNKNOWN (replica unreachable, see below)")
        elif not rep["restorable"]:
            line("restorable", "nothing yet (" + rep["lag_note"] + ")")
        else:
            line("restorable", f"{rep['earliest']} -> {rep['latest']}")
            if rep.get("exact_from") and rep["exact_from"] != rep["earliest"]:
                line("exact window", f"exact to the transaction from {rep['exact_from']} to {rep['latest']}")
            for snap in rep.get("snapshots_beyond_window") or []:
                line("kept snapshot", f"{snap['time']} (txid {snap['txid']}; restorable to the snapshot only)")
            age = (now_us() - _parse(rep["latest"])) / 1e6
            line("last shipped", f"txid {rep['latest_txid']} at {rep['latest']} ({_ago(age)})")
            line("complete through", rep["complete_through"])
            line("transactions", rep["transactions"])
            if rep["in_sync"] is None:
                line("lag", f"unknown: {rep['lag_note']}")
            elif rep["in_sync"]:
                line("lag", f"0 s ({rep['lag_note']})")
            else:
                line("lag", f"{rep['lag_seconds']:.1f} s ({rep['lag_note']})")
        _print_maintenance(info.get("maintenance"), line)
    if info["exists"]:
        click.echo("")
        rows = [[t["name"], t["type"], "-" if t["rows"] is None else str(t["rows"])] for t in info["tables"]]
        click.echo(table(rows, ["TABLE", "TYPE", "ROWS"], right={2}) if rows else "(no tables)")


def _parse(text: str) -> int:
    return parse_timestamp_us(text)


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago"


# ----------------------------------------------------------------------------------------- list
@db_group.command("list", short_help="Every database: replicated sources and restored copies.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable output.")
@config_option
@friendly
def list_command(as_json):
    """List every database: replicated sources (config file) and restored copies (catalog)."""
    config = get_config()
    cat = catalog(config)
    items = []
    for name, src in sorted(config.databases.items()):
        items.append({"name": name, "type": "replicated", "path": src.path, "size_bytes": file_size(src.path),
                      "replica": src.replica_display, "source": None, "restored_txid": None, "restored_commit": None})
    for e in cat.entries():
        items.append({"name": e.name, "type": "restored" if e.status == "ready" else f"restored ({e.status})",
                      "path": e.path, "size_bytes": file_size(e.path), "replica": e.replica, "source": e.source,
                      "restored_txid": e.restored_txid,
                      "restored_commit": format_us(e.restored_commit_us) if e.restored_commit_us is not None else None,
                      "reason": e.reason})
    if as_json:
        emit_json({"config": config.path, "data_dir": config.data_dir, "databases": items})
        return
    if not items:
        click.echo(f"no databases: add [databases.NAME] to {config.path}, then: walrewind db create NEW --from-db NAME")
        return
    rows = []
    for it in items:
        if it["type"] == "replicated":
            origin, point = it["replica"], "live"
        else:
            origin = it["source"] or "-"
            point = f"txid {it['restored_txid']} @ {it['restored_commit']}" if it["restored_txid"] is not None else "-"
        size = human_size(it["size_bytes"]) if it["size_bytes"] is not None else "missing"
        rows.append([it["name"], it["type"], size, origin, point])
    click.echo(table(rows, ["NAME", "TYPE", "SIZE", "SOURCE / REPLICA", "AS OF"], right={2}))


# -------------------------------------------------------------------------------------- destroy
def _stdin_is_tty() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


@db_group.command("destroy", short_help="Remove a restored database.")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable output.")
@config_option
@friendly
def destroy_command(name, yes, as_json):
    """Remove restored database NAME (its file, -wal and -shm) and its catalog entry.

    Replicated source databases are never removed.  Without --yes, asks on a terminal and refuses
    otherwise.
    """
    config = get_config()
    cat = catalog(config)
    db = resolve(config, cat, name)
    if db.kind == "replicated":
        raise UsageError(
            f"{name!r} is a source database under replication ({db.path}, configured in {config.path}); "
            "walrewind never deletes it"
        )
    if not yes:
        if not _stdin_is_tty():
            raise UsageError(f"refusing to destroy {name!r} without confirmation: pass --yes (stdin is not a terminal)")
        size = human_size(file_size(db.path)) if os.path.exists(db.path) else "missing"
        if not click.confirm(f"Destroy database {name!r} ({db.path}, {size})? This cannot be undone", default=False):
            click.echo("Aborted; nothing was removed.", err=True)
            sys.exit(1)
    started = time.monotonic()
    removed = []
    for suffix in ("", "-wal", "-shm", "-journal"):
        path = db.path + suffix
        if os.path.exists(path):
            os.unlink(path)
            removed.append(path)
    cat.remove(name)
    cat.record("destroy", "ok", name=name, source=db.entry.source, replica=db.entry.replica, output=db.path,
               duration_s=time.monotonic() - started)
    if as_json:
        emit_json({"name": name, "destroyed": True, "removed": removed})
    else:
        click.echo(f"Destroyed database {name!r} (removed {', '.join(removed) if removed else 'catalog entry only'})")


db_group.add_command(shell_command)
