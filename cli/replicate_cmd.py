"""`walrewind replicate` — run the daemon for one database, or for every configured database and sqld namespace."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys

import click

from ..engine import defaults, logs
from ..engine.errors import ConfigError, DaemonError, UnknownSource, WalrewindError
from ..engine.timeparse import parse_duration_or_off, parse_duration_us
from .common import (
    DurationText,
    config_option,
    friendly,
    get_config,
    key_files,
    key_option,
)


@click.command("replicate", short_help="Run the daemon (one database, or every database and sqld namespace in the config).")
@click.argument("db_path", required=False, type=click.Path(exists=True, dir_okay=False))
@click.argument("replica_url", required=False)
@click.option("--db", "only", multiple=True, metavar="NAME",
              help="With a config: replicate only these [databases.NAME] (repeatable; sqld namespaces only with --sqld-* options).")
@click.option("--sqld-data-dir", type=click.Path(file_okay=False),
              help="Replicate every namespace of this sqld data directory (sqld's --db-path; namespace NS is dbs/NS/data). "
                   "Overrides [sqld] data_dir.")
@click.option("--sqld-replica", metavar="URL", help="Where namespaces go: namespace NS to URL/NS. Overrides [sqld] replica.")
@click.option("--sqld-admin-url", metavar="URL", help="sqld's admin API (--admin-listen-addr), e.g. http://127.0.0.1:9090. "
                                                     "Overrides [sqld] admin_url.")
@click.option("--upload-interval", default=None, type=float, help=f"Seconds between segment uploads.  [default: {defaults.UPLOAD_INTERVAL_SECONDS}, or the config's upload_interval]")
@click.option("--state-dir", type=click.Path(file_okay=False),
              help="Local spool/state directory (default: ~/.local/state/walrewind/...; with a config: one subdirectory per database).")
@click.option(
    "--checkpoint-frames", default=None, type=int,
    help="Daemon-driven PASSIVE checkpoints once this many WAL frames are unbackfilled. Off (0) by default: "
    "only for applications that disabled their own checkpoints (opens one read-write connection).",
)
@click.option(
    "--max-wal-mb", default=None, type=click.IntRange(min=0),
    help="If a writer outpaces the daemon and the WAL grows past this many MB because the daemon holds it "
    "back, stop holding it until caught up; commits overwritten meanwhile are shipped as a visible RESYNC. "
    f"0 = hold it however large it grows.  [default: {defaults.MAX_WAL_MB}, or the config's max_wal_mb]",
)
@click.option(
    "--takeover", is_flag=True,
    help="Take the replica path's lease from another daemon that still looks alive, or continue a replica of "
    "this database moved from another path/host. The displaced daemon stops within a minute.",
)
@click.option(
    "--retention", metavar="DURATION|off", default=None, type=DurationText(),
    help="Keep every moment of this period restorable to the transaction (e.g. 24h, 7d, 30d) and delete what no "
    f"point in it needs; 'off' deletes nothing.  [default: {defaults.RETENTION}, or the config's retention]",
)
@click.option(
    "--verify-interval", metavar="DURATION|off", default=None, type=DurationText(),
    help="Run a restore drill (random point + latest, checksum + integrity_check) this often.  "
    f"[default: {defaults.VERIFY_INTERVAL}]",
)
@click.option("--exec", "exec_command", metavar="CMD",
              help="Run the application CMD as a child once every database replicates; SIGTERM/SIGINT go to it, and "
              "when it exits: final sync, then exit with its exit code (Litestream's -exec).")
@click.option("--metrics-addr", metavar="HOST:PORT",
              help="Serve Prometheus /metrics and a /healthz check here (e.g. 127.0.0.1:9093; off by default). "
              "Overrides the config's metrics_addr.")
@click.option("--lag-budget", metavar="DURATION", type=DurationText(allow_off=False), default=None,
              help="/healthz and `walrewind status` report unhealthy once a database is this far behind.  "
              f"[default: {defaults.LAG_BUDGET_SECONDS:g}s, or the config's lag_budget]")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one object per line (ts, level, db, event, message) for log shippers.")
@click.option("-v", "--verbose", is_flag=True, help="Log every upload.")
@config_option
@key_option
@friendly
def replicate_command(db_path, replica_url, only, sqld_data_dir, sqld_replica, sqld_admin_url, upload_interval, state_dir,
                      checkpoint_frames, max_wal_mb, takeover, retention, verify_interval, exec_command, metrics_addr,
                      lag_budget, log_format, verbose):
    """Continuously replicate DB_PATH (a SQLite/libSQL database in WAL mode) to REPLICA_URL.

    REPLICA_URL is a directory (file:///backups/app or a plain path) or s3://bucket/prefix.
    Every committed transaction is stamped and shipped; stop with Ctrl-C or SIGTERM (final sync).

    Without arguments, replicates every database in the config file ([databases.NAME] with path and
    replica) and, with [sqld] (or --sqld-data-dir and --sqld-replica), every namespace of a libSQL
    server: namespace NS (dbs/NS/data) goes to <replica>/NS; a namespace created while it runs is
    picked up within seconds, a deleted one is stopped.  A database that fails is retried with
    backoff (1 s doubling to 60 s) while the others keep shipping; SIGTERM/Ctrl-C stops all of them
    with a final sync (exit 1 if some database was failing at that point).
    Maintenance runs beside each daemon: base snapshots built from the replica (every
    `snapshot_interval`, default 24h, or when the history since the last one exceeds
    `snapshot_volume` x the database), the retention policy (`retention`, default 7d, and
    `keep_daily/weekly/monthly` snapshot tiers) every min(retention/10, 1 h), compaction of
    segments older than `compact_after` (1h), and restore drills every `verify_interval` (off).
    `retention = "off"` deletes nothing (compaction is then off too).  Its last results are in
    maintenance.json in the state directory and in `walrewind db show`.
    """
    logs.setup(log_format, verbose)
    try:
        _replicate(db_path, replica_url, only, (sqld_data_dir, sqld_replica, sqld_admin_url), upload_interval, state_dir,
                   checkpoint_frames, max_wal_mb, takeover, retention, verify_interval, exec_command,
                   (metrics_addr, lag_budget))
    except WalrewindError as exc:
        if log_format != "json":
            raise  # friendly: "Error: ..."
        logs.event("error", None, str(exc), logging.ERROR)  # the last line is JSON too
        sys.exit(exc.exit_code)


def _replicate(db_path, replica_url, only, sqld_flags, upload_interval, state_dir, checkpoint_frames, max_wal_mb,
               takeover, retention, verify_interval, exec_command, operations) -> None:
    sqld = None
    config = get_config(required=False) if db_path is None else None
    if db_path is not None:
        if replica_url is None:
            raise click.UsageError("give both DB_PATH and REPLICA_URL, or neither (to replicate every database in the config)")
        if only or any(f is not None for f in sqld_flags):
            raise click.UsageError("--db and --sqld-* select what the config replicates; they cannot be combined with "
                                   "DB_PATH REPLICA_URL")
        from ..engine.workspace.config import DatabaseConfig

        name = os.path.basename(db_path)
        selected = [DatabaseConfig(name, db_path, replica_url, state_dir=state_dir)]
    else:
        selected, sqld = _configured(config, only, state_dir, sqld_flags)
    overrides = _overrides(retention, verify_interval, upload_interval, checkpoint_frames, max_wal_mb)
    files = key_files()  # --encryption-key-file: before each database's own key files (the first key writes)
    selected = [dataclasses.replace(db, **overrides, encryption_key_files=files + db.encryption_key_files)
                for db in selected]
    if sqld is not None:
        settings = sqld.settings
        sqld = dataclasses.replace(sqld, settings=dataclasses.replace(
            settings, **overrides, encryption_key_files=files + settings.encryption_key_files))
    metrics_addr, lag_budget = operations
    if metrics_addr is None and config is not None:
        metrics_addr = config.metrics_addr
    budget = parse_duration_us(lag_budget) / 1e6 if lag_budget else (
        config.lag_budget_s if config is not None else defaults.LAG_BUDGET_SECONDS)
    _run(selected, sqld, takeover, single=db_path is not None, exec_command=exec_command, metrics_addr=metrics_addr,
         lag_budget=budget)


def _configured(config, only, state_dir, sqld_flags):
    """The databases of the config file (all, or those named with --db), and [sqld] with the flags applied."""
    from ..engine.workspace.config import (
        check_sqld_overlap,
        not_found_message,
        sqld_with_options,
    )

    sqld = sqld_with_options(config.sqld if config is not None and not only else None, *sqld_flags)
    if config is None and sqld is None:
        raise ConfigError("nothing to replicate: give DB_PATH REPLICA_URL, or --sqld-data-dir and --sqld-replica, or "
                          + not_found_message())
    databases = config.databases if config is not None else {}
    unknown = [n for n in only if n not in databases]
    if unknown:
        raise UnknownSource(f"unknown database(s) {', '.join(map(repr, unknown))}; "
                            f"known databases: {', '.join(sorted(databases)) or 'none'}")
    selected = [databases[n] for n in only] if only else list(databases.values())
    if sqld is not None:
        check_sqld_overlap({db.name: db for db in selected}, sqld, "replicate")
    if not selected and sqld is None:
        raise ConfigError(f"{config.path} names no databases: add [databases.NAME] tables with path and replica, "
                          "or a [sqld] section")
    if state_dir:
        if sqld is not None and "sqld" in databases:
            raise ConfigError("with --state-dir, namespaces keep their state in STATE_DIR/sqld/NS: a database named "
                              "'sqld' would share it; rename [databases.sqld]")
        selected = [dataclasses.replace(db, state_dir=os.path.join(state_dir, db.name)) for db in selected]
        if sqld is not None:
            sqld = dataclasses.replace(sqld, state_dir=os.path.join(state_dir, "sqld"))
    return selected, sqld


def _overrides(retention, verify_interval, upload_interval, checkpoint_frames, max_wal_mb) -> dict:
    """Options given on the command line win over the config file."""
    out: dict = {}
    if retention is not None:
        out.update(retention=retention, retention_us=parse_duration_or_off(retention))
    if verify_interval is not None:
        out["verify_interval_us"] = parse_duration_or_off(verify_interval)
    for key, value in (("upload_interval", upload_interval), ("checkpoint_frames", checkpoint_frames),
                       ("max_wal_mb", max_wal_mb)):
        if value is not None:
            out[key] = value
    return out


def _run(databases, sqld, takeover: bool, single: bool, exec_command: str | None = None, metrics_addr: str | None = None,
         lag_budget: float = defaults.LAG_BUDGET_SECONDS) -> None:
    from ..engine.daemon.fleet import Fleet

    fleet = Fleet(databases, sqld=sqld, takeover=takeover, retry=not single, exec_command=exec_command,
                  metrics_addr=metrics_addr, lag_budget=lag_budget)
    if not single and sqld is not None:
        logs.event("watching", None, f"watching sqld namespaces in {sqld.dbs_dir} -> {sqld.replica_display}/NAMESPACE")
    outcomes = fleet.run()
    failed = [o for o in outcomes if o.state == "failed"]
    child_code = fleet.child.exit_code() if fleet.child is not None else None
    if single:
        if failed:
            raise failed[0].error  # expected errors print as "Error: ..."; a bug keeps its traceback
        logs.event("stopped", outcomes[0].name,
                   f"stopped: {outcomes[0].transactions} transactions shipped, last txid {outcomes[0].uploaded_txid}")
        if child_code:
            sys.exit(child_code)
        return
    for outcome in outcomes:
        logs.event("stopped", outcome.name, outcome.describe(), logging.ERROR if outcome.state == "failed" else logging.INFO)
    if failed:
        if child_code:
            sys.exit(child_code)
        raise DaemonError(f"stopped while {len(failed)} database(s) were failing: {', '.join(o.name for o in failed)} "
                          "(see above); the others were stopped with a final sync")
    if child_code:
        sys.exit(child_code)
