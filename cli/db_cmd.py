"""`walrewind db` — databases by name: create (from a point in time), show, list, shell, destroy.

Replicated databases come from the config file; restored copies live in the data directory and
are registered in its catalog.  A source database is only ever opened read-only.
"""

from __future__ import annotations

import sys

import click

from ..engine.errors import UsageError
from ..engine.timeparse import format_us, parse_timestamp_us
from ..engine.workspace import databases
from ..engine.workspace.catalog import now_us
from ..engine.workspace.recovery import Target, create_database
from .common import (
    config_option,
    emit_json,
    friendly,
    get_config,
    get_source,
    human_size,
    key_option,
    open_catalog,
    table,
)
from .db_shell_cmd import shell_command
from .progress import showing_progress
from .restore_cmd import CHECK_HELP, EXCLUSIVE_HELP, MARK_HELP, TIMESTAMP_HELP
from .validation import VALIDATE_HELP, print_validation


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
@click.option("--mark", "mark", metavar="NAME", help=MARK_HELP)
@click.option("--exclusive", is_flag=True, help=EXCLUSIVE_HELP)
@click.option("--reason", help="Why (kept in the recovery history).")
@click.option("--validate", is_flag=True, help=VALIDATE_HELP)
@click.option("--check", type=click.Choice(["quick", "full", "none"]), default="quick", show_default=True, help=CHECK_HELP)
@click.option("--load-method", type=click.Choice(["auto", "adopt", "dump"]), default="auto", show_default=True,
              help="SRC a sqld namespace: how the restored file becomes namespace NAME (adopt: put the file in "
                   "dbs/NAME and let sqld serve it, byte for byte; dump: load a SQL dump; auto: adopt when dbs/ is "
                   "writable by this user, else dump).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable output.")
@config_option
@key_option
@friendly
def create_command(name, from_db, timestamp, txid, mark, exclusive, reason, validate, check, load_method, as_json):
    """Create database NAME by restoring SRC's replica as of a moment (a new file; SRC is never touched).

    SRC is a database from the config file ([databases.SRC] with path and replica).  NAME (letters,
    digits, '-', '_') becomes <data_dir>/databases/NAME.db, registered in the catalog; every attempt,
    successful or not, is recorded in `walrewind history`.

    When SRC is a sqld namespace ([sqld] in the config; a deleted namespace too, from its replica),
    NAME becomes a new namespace of that sqld holding exactly the restored data, checked over HTTP
    (same tables, row counts, user_version, application_id); it needs [sqld] admin_url and http_url.

    \b
    walrewind db create before-delete --from-db app --timestamp 2024-01-15T10:29:00Z --reason "bad DELETE"
    walrewind db create at-txn --from-db app --txid 48213 --validate
    walrewind db create pre-deploy --from-db app --mark before-migration
    walrewind db create tenant42-back --from-db tenant42 --timestamp "10 minutes ago"   # a namespace
    """
    if from_db is None:
        for option, value in (("--timestamp", timestamp), ("--txid", txid), ("--mark", mark)):
            if value is not None:
                raise UsageError(f"{option} cannot be used without specifying --from-db")
        raise UsageError("--from-db SRC is required: walrewind creates a database by restoring a replicated one")
    target = Target.parse(timestamp, txid, exclusive, mark)
    config = get_config()
    source, _ = get_source(from_db)
    with showing_progress(not as_json) as progress:
        recovery = create_database(config, name, source, target, reason=reason, validate_after=validate,
                                   progress=progress, check=check, load_method=load_method)
    result, validation, loaded = recovery.result, recovery.validation, recovery.namespace
    if as_json:
        emit_json({
            "name": name,
            "path": result.path,
            "url": loaded.url if loaded is not None else databases.lookup(config, open_catalog(config), name).url,
            "source": from_db,
            "replica": source.display,
            "target_time": format_us(target.us) if target.us is not None else None,
            "target_txid": txid,
            "target_mark": mark,
            "restore": result.to_json(),
            "validation": validation.to_json() if validation else None,
            "namespace": None if loaded is None else {
                "name": loaded.namespace, "method": loaded.method, "tables": loaded.summary.tables,
                "url": loaded.url, "seconds": round(loaded.seconds, 3), "notes": loaded.notes},
        })
    else:
        what = "sqld namespace" if loaded is not None else "database"
        click.echo(f"Created {what} {name!r} from {from_db!r} {target.describe()}")
        click.echo(f"  restored to: txid {result.txid} (committed {format_us(result.commit_us)})")
        click.echo(f"  path:        {result.path}")
        if loaded is not None:
            how = "the restored file adopted by sqld" if loaded.method == "adopted" else "loaded from a SQL dump"
            rows = sum(loaded.summary.tables.values())
            click.echo(f"  namespace:   {how}; answers over HTTP with the same {len(loaded.summary.tables)} tables "
                       f"({rows} rows), {loaded.seconds:.2f}s")
            if loaded.url:
                click.echo(f"  url:         {loaded.url}   (a libSQL client's URL: the host name's first label "
                           "names the namespace)")
            for note in loaded.notes:
                click.echo(f"  note: {note}")
        click.echo(
            f"  size:        {human_size(result.db_pages * result.page_size)}; checksum {result.checksum:016x} verified, "
            f"quick_check {result.quick_check}, {result.seconds:.2f}s"
        )
        for note in result.notes:
            click.echo(f"  note: {note}")
        if validation is not None:
            print_validation(validation)
        elif loaded is None:
            click.echo(f"Next: walrewind db shell {name}   or   walrewind diff {name} --from-db {from_db} --table TABLE")
    for warning in result.warnings:
        click.echo(f"WARNING: {warning}", err=True)
    for warning in recovery.warnings:
        click.echo(f"warning: {warning}", err=True)
    if recovery.failed_validation:
        click.echo(
            f"Error: validation failed for {name!r} (integrity_check: {'; '.join(validation.integrity[:3])}); the copy is "
            f"kept at {result.path} for inspection (remove it with: walrewind db destroy {name} --yes)",
            err=True,
        )
        sys.exit(1)


# ----------------------------------------------------------------------------------------- show
@db_group.command("show", short_help="Path, size, tables, origin or replication status of a database.")
@click.argument("name")
@click.option("--url", "url_only", is_flag=True,
              help="Print only a connection URL (a file: URI; for a sqld namespace the http://NAME.HOST:PORT a libSQL "
                   "client uses: sqld takes the namespace from the host name's first label).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable output.")
@config_option
@friendly
def show_command(name, url_only, as_json):
    """Show a database: path, size, tables and where it came from (restored copy), or its replica,
    restorable window, last shipped transaction and lag (replicated database)."""
    config = get_config()
    catalog = open_catalog(config)
    if url_only:
        db = databases.lookup(config, catalog, name)
        if db.kind == databases.NAMESPACE and db.client_url is None:
            raise UsageError(f"{name!r} is a sqld namespace: set http_url (or client_url) in [sqld] to get its URL")
        click.echo(db.url)
        return
    info = databases.describe(config, catalog, name)
    if as_json:
        emit_json(info)
    else:
        _print_show(info)
    replica_error = (info.get("replication") or {}).get("error")
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

    kinds = {"replicated": "replicated (source database, opened read-only)", "restored": "restored copy",
             databases.NAMESPACE: "sqld namespace (replicated; opened read-only)"}
    line("name", info["name"])
    line("type", kinds.get(info["type"], info["type"]))
    if info.get("namespace_id"):
        line("namespace id", info["namespace_id"])
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
        origin = info.get("origin")
        if origin:
            line("created", f"{origin['created']} by {origin['created_by']} from {origin['source']} "
                            f"(txid {origin['restored_txid']}, committed {origin['restored_commit']})")
        line("replica", info["replica"])
        _print_daemon(info.get("daemon"), line)
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


def _print_daemon(health: dict | None, line) -> None:
    """What the running `replicate` on this host says about the database (engine/daemon/health.py)."""
    if health is None:
        line("daemon", "not replicated by a running `walrewind replicate` on this host")
        return
    state = health.get("state")
    if health.get("error") and state in ("retrying", "failed", "starting"):
        since = format_us(health["failing_since_us"]) if health.get("failing_since_us") else "?"
        retry = f"; next attempt in {health['next_try_in_s']:.0f} s" if "next_try_in_s" in health else ""
        line("daemon", f"FAILING since {since} ({health.get('failures')} failure(s), pid {health['pid']}): "
                       f"{health['error']}{retry}")
    else:
        line("daemon", f"{state} (pid {health['pid']})")


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
    items = databases.list_all(config, open_catalog(config))
    if as_json:
        emit_json({"config": config.path, "data_dir": config.data_dir, "databases": items})
        return
    if not items:
        click.echo(f"no databases: add [databases.NAME] to {config.path}, then: walrewind db create NEW --from-db NAME")
        return
    rows = []
    for it in items:
        if it["type"] == databases.NAMESPACE and it.get("source"):
            origin = f"{it['source']} -> {it['replica']}"
            point = f"live (from txid {it['restored_txid']} @ {it['restored_commit']})"
        elif it["type"] in ("replicated", databases.NAMESPACE):
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


@db_group.command("destroy", short_help="Remove a restored database (or a sqld namespace made by db create).")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable output.")
@config_option
@friendly
def destroy_command(name, yes, as_json):
    """Remove restored database NAME (its file, -wal and -shm) and its catalog entry.

    A sqld namespace made by `db create` is deleted through sqld's admin API (its replica, if it
    was replicated meanwhile, is kept).  Replicated source databases and namespaces walrewind did
    not create are never removed.  Without --yes, asks on a terminal and refuses otherwise.
    """
    config = get_config()
    catalog = open_catalog(config)
    db = databases.lookup(config, catalog, name)
    if db.entry is None:
        databases.destroy(config, catalog, name)  # refuses: a replicated source is never deleted
    if not yes:
        if not _stdin_is_tty():
            raise UsageError(f"refusing to destroy {name!r} without confirmation: pass --yes (stdin is not a terminal)")
        size = human_size(databases.file_size(db.path)) if databases.file_size(db.path) is not None else "missing"
        if not click.confirm(f"Destroy database {name!r} ({db.path}, {size})? This cannot be undone", default=False):
            click.echo("Aborted; nothing was removed.", err=True)
            sys.exit(1)
    removed = databases.destroy(config, catalog, name)
    if as_json:
        emit_json({"name": name, "destroyed": True, "removed": removed})
    else:
        click.echo(f"Destroyed database {name!r} (removed {', '.join(removed) if removed else 'catalog entry only'})")


db_group.add_command(shell_command)
