"""The `walrewind` command: a thin layer over walrewind.engine."""

from __future__ import annotations

import click

from .compact_cmd import compact_command
from .db_cmd import db_group
from .diff_cmd import diff_command
from .history_cmd import history_command
from .ls_cmd import ls_command
from .prune_cmd import prune_command
from .replicate_cmd import replicate_command
from .restore_cmd import restore_command
from .timeline_cmd import timeline_command
from .verify_cmd import snapshot_command, verify_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="walrewind")
@click.option(
    "--config", "config_file", envvar="WALREWIND_CONFIG", type=click.Path(dir_okay=False),
    help="Config file (TOML) naming the databases to replicate and the data directory. "
    "Default: $WALREWIND_CONFIG, else ./walrewind.toml, else ~/.config/walrewind/config.toml.",
)
@click.pass_context
def cli(ctx, config_file):
    """Point-in-time recovery for SQLite and libSQL, on your own storage.

    \b
    One database:   walrewind replicate app.db file:///backups/app
                    walrewind restore file:///backups/app -o copy.db --timestamp 2024-01-15T10:30:00Z
    With a config:  walrewind replicate                     (every database in walrewind.toml)
                    walrewind db create NEW --from-db app --timestamp T
                    walrewind db list | db show | db shell | db destroy
                    walrewind timeline app | diff NEW --from-db app --table T | history
    Drills:         walrewind verify app --random 5        (restore, checksum, integrity_check)
    Retention:      walrewind prune app --dry-run          (what the daemon deletes hourly)
    """
    ctx.ensure_object(dict)
    if config_file is not None:
        ctx.obj["config"] = config_file


cli.add_command(replicate_command)
cli.add_command(restore_command)
cli.add_command(ls_command)
cli.add_command(db_group)
cli.add_command(history_command)
cli.add_command(diff_command)
cli.add_command(timeline_command)
cli.add_command(verify_command)
cli.add_command(snapshot_command)
cli.add_command(prune_command)
cli.add_command(compact_command)


def main() -> None:
    cli()
