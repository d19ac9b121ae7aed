"""`walrewind replicate` — run the daemon for one database, or for every database in the config."""

from __future__ import annotations

import logging
import os
import signal
import threading

import click

from ..engine.daemon.replicator import Shipper
from ..engine.errors import ConfigError, UsageError
from ..engine.maintenance.scheduler import for_database
from ..engine.storage import open_storage
from ..engine.workspace.config import (
    DatabaseConfig,
    not_found_message,
    parse_duration_or_off,
)
from .common import friendly_errors
from .context import config_option, friendly, get_config


@click.command("replicate", short_help="Run the daemon (one database, or every database in the config).")
@click.argument("db_path", required=False, type=click.Path(exists=True, dir_okay=False))
@click.argument("replica_url", required=False)
@click.option("--db", "only", multiple=True, metavar="NAME", help="With a config: replicate only these databases (repeatable).")
@click.option("--upload-interval", default=None, type=float, help="Seconds between segment uploads.  [default: 1.0, or the config's upload_interval]")
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
    "0 = hold it however large it grows.  [default: 1024, or the config's max_wal_mb]",
)
@click.option(
    "--takeover", is_flag=True,
    help="Take the replica path's lease from another daemon that still looks alive, or continue a replica of "
    "this database moved from another path/host. The displaced daemon stops within a minute.",
)
@click.option(
    "--retention", metavar="DURATION|off", default=None,
    help="Keep every moment of this period restorable to the transaction (e.g. 24h, 7d, 30d) and delete what no "
    "point in it needs; 'off' deletes nothing.  [default: 7d, or the config's retention]",
)
@click.option(
    "--verify-interval", metavar="DURATION|off", default=None,
    help="Run a restore drill (random point + latest, checksum + integrity_check) this often.  [default: off]",
)
@click.option("-v", "--verbose", is_flag=True, help="Log every upload.")
@config_option
@friendly
def replicate_command(db_path, replica_url, only, upload_interval, state_dir, checkpoint_frames, max_wal_mb, takeover,
                      retention, verify_interval, verbose):
    """Continuously replicate DB_PATH (a SQLite/libSQL database in WAL mode) to REPLICA_URL.

    REPLICA_URL is a directory (file:///backups/app or a plain path) or s3://bucket/prefix.
    Every committed transaction is stamped and shipped; stop with Ctrl-C or SIGTERM (final sync).

    Without arguments, replicates every database in the config file ([databases.NAME] with path and
    replica), one daemon thread per database; SIGTERM/Ctrl-C stops all of them with a final sync.
    Maintenance runs beside each daemon: base snapshots built from the replica (every
    `snapshot_interval`, default 24h, or when the history since the last one exceeds
    `snapshot_volume` x the database), the retention policy (`retention`, default 7d, and
    `keep_daily/weekly/monthly` snapshot tiers) every min(retention/10, 1 h), compaction of
    segments older than `compact_after` (1h), and restore drills every `verify_interval` (off).
    `retention = "off"` deletes nothing (compaction is then off too).  Its last results are in
    maintenance.json in the state directory and in `walrewind db show`.
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    if db_path is not None:
        if replica_url is None:
            raise click.UsageError("give both DB_PATH and REPLICA_URL, or neither (to replicate every database in the config)")
        if only:
            raise click.UsageError("--db selects databases from the config; it cannot be combined with DB_PATH REPLICA_URL")
        db = _overrides(DatabaseConfig("db", db_path, replica_url), retention, verify_interval)
        _replicate_one(db_path, replica_url, upload_interval, state_dir, checkpoint_frames, max_wal_mb, takeover, db)
        return
    config = get_config(required=False)
    if config is None:
        raise ConfigError("nothing to replicate: give DB_PATH REPLICA_URL, or " + not_found_message())
    selected = list(config.databases.values())
    if only:
        unknown = [n for n in only if n not in config.databases]
        if unknown:
            raise UsageError(
                f"unknown database(s) {', '.join(map(repr, unknown))}; known databases: {', '.join(sorted(config.databases)) or 'none'}"
            )
        selected = [config.databases[n] for n in only]
    if not selected:
        raise ConfigError(f"{config.path} names no databases: add [databases.NAME] tables with path and replica")
    selected = [_overrides(db, retention, verify_interval) for db in selected]
    _replicate_many(selected, upload_interval, state_dir, checkpoint_frames, max_wal_mb, takeover)


def _overrides(db: DatabaseConfig, retention: str | None, verify_interval: str | None) -> DatabaseConfig:
    """Apply --retention / --verify-interval (they win over the config file)."""
    for option, value in (("--retention", retention), ("--verify-interval", verify_interval)):
        if value is None:
            continue
        try:
            parsed = parse_duration_or_off(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint=f"'{option}'") from None
        if option == "--retention":
            db.retention, db.retention_us = value, parsed
        else:
            db.verify_interval_us = parsed
    return db


@friendly_errors
def _replicate_one(db_path, replica_url, upload_interval, state_dir, checkpoint_frames, max_wal_mb, takeover, db):
    storage = open_storage(replica_url)
    shipper = Shipper(db_path, storage, state_dir=state_dir,
                      upload_interval=1.0 if upload_interval is None else upload_interval,
                      checkpoint_frames=checkpoint_frames or 0, takeover=takeover,
                      max_wal_bytes=(1024 if max_wal_mb is None else max_wal_mb) << 20,
                      maintenance=for_database(storage, db))
    shipper.install_signal_handlers()
    click.echo(f"replicating {db_path} -> {replica_url} (Ctrl-C to stop)", err=True)
    shipper.run()
    s = shipper.stats
    click.echo(f"stopped: {s.transactions} transactions shipped, last txid {s.uploaded_txid}", err=True)


class _Runner:
    """One Shipper in its own thread; reports readiness or failure through a shared event."""

    def __init__(self, db: DatabaseConfig, shipper: Shipper, changed: threading.Event) -> None:
        self.db = db
        self.shipper = shipper
        self.changed = changed
        self.error: BaseException | None = None
        self.done = False
        self.thread = threading.Thread(target=self._run, name=f"walrewind-{db.name}", daemon=True)

    def _run(self) -> None:
        try:
            self.shipper.run()
        except BaseException as exc:  # surfaced by the main thread
            self.error = exc
        finally:
            self.done = True
            self.changed.set()


def _replicate_many(dbs: list[DatabaseConfig], upload_interval, state_dir, checkpoint_frames, max_wal_mb=None, takeover=False) -> None:
    changed = threading.Event()
    stop = threading.Event()
    runners: list[_Runner] = []
    for db in dbs:
        if not os.path.exists(db.path):
            raise UsageError(f"database {db.name!r}: {db.path} does not exist")
        storage = open_storage(db.replica)
        shipper = Shipper(
            db.path, storage,
            state_dir=os.path.join(state_dir, db.name) if state_dir else db.state_dir,
            upload_interval=upload_interval if upload_interval is not None else db.upload_interval,
            checkpoint_frames=checkpoint_frames if checkpoint_frames is not None else db.checkpoint_frames,
            max_wal_bytes=(max_wal_mb if max_wal_mb is not None else db.max_wal_mb) << 20,
            takeover=takeover,
            maintenance=for_database(storage, db),
        )
        runners.append(_Runner(db, shipper, changed))

    def on_signal(signum, _frame):
        click.echo(f"signal {signum}: final sync of {len(runners)} database(s) and exit", err=True)
        stop.set()
        changed.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    failed: list[_Runner] = []
    try:
        for r in runners:
            r.thread.start()
        announced: set[str] = set()
        while not stop.is_set():
            changed.wait(0.5)
            changed.clear()
            for r in runners:
                if r.shipper.ready.is_set() and not r.done and r.db.name not in announced:
                    announced.add(r.db.name)
                    click.echo(f"replicating {r.db.name}: {r.db.path} -> {r.db.replica_display}", err=True)
                    if len(announced) == len(runners):
                        click.echo(f"all {len(runners)} database(s) replicating (Ctrl-C or SIGTERM to stop)", err=True)
            failed = [r for r in runners if r.done]
            if failed:
                break
    finally:
        for r in runners:
            r.shipper.stop()
        for r in runners:
            r.thread.join()
        for s, handler in previous.items():
            signal.signal(s, handler)
    errors = [r for r in runners if r.error is not None]
    for r in runners:
        s = r.shipper.stats
        state = f"FAILED: {r.error}" if r.error is not None else "stopped"
        click.echo(f"{r.db.name}: {state}; {s.transactions} transactions shipped, last txid {s.uploaded_txid}", err=True)
    if errors or (failed and not stop.is_set()):
        names = ", ".join(r.db.name for r in (errors or failed))
        raise UsageError(f"replication stopped because of {names} (see above); the others were stopped with a final sync")
