"""`walrewind replicate` — run the daemon for one database."""

from __future__ import annotations

import logging

import click

from ..engine.shipper import Shipper
from ..engine.storage import open_storage
from .common import friendly_errors


@click.command("replicate")
@click.argument("db_path", type=click.Path(exists=True, dir_okay=False))
@click.argument("replica_url")
@click.option("--upload-interval", default=1.0, show_default=True, type=float, help="Seconds between segment uploads.")
@click.option("--state-dir", type=click.Path(file_okay=False), help="Local spool/state directory (default: ~/.local/state/walrewind/...).")
@click.option(
    "--checkpoint-frames", default=0, show_default=True, type=int,
    help="Daemon-driven PASSIVE checkpoints once this many WAL frames are unbackfilled. Off (0) by default: "
    "only for applications that disabled their own checkpoints (opens one read-write connection).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log every upload.")
@friendly_errors
def replicate_command(db_path, replica_url, upload_interval, state_dir, checkpoint_frames, verbose):
    """Continuously replicate DB_PATH (a SQLite/libSQL database in WAL mode) to REPLICA_URL.

    REPLICA_URL is a directory (file:///backups/app or a plain path) or s3://bucket/prefix.
    Every committed transaction is stamped and shipped; stop with Ctrl-C or SIGTERM (final sync).
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    shipper = Shipper(db_path, open_storage(replica_url), state_dir=state_dir, upload_interval=upload_interval,
                      checkpoint_frames=checkpoint_frames)
    shipper.install_signal_handlers()
    click.echo(f"replicating {db_path} -> {replica_url} (Ctrl-C to stop)", err=True)
    shipper.run()
    s = shipper.stats
    click.echo(f"stopped: {s.transactions} transactions shipped, last txid {s.uploaded_txid}", err=True)
