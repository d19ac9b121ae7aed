"""The `walrewind` command: a thin layer over walrewind.engine.

Commands are imported only when they run (``walrewind --help`` imports none of them, nor the
engine, numpy or boto3): a CLI that takes half a second to print its help is a CLI people stop
using in scripts.  Each command module parses options, calls one engine function and prints.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

# name -> (module:attribute, short help shown by `walrewind --help` without importing the module)
COMMANDS: dict[str, tuple[str, str]] = {
    "replicate": ("replicate_cmd:replicate_command", "Run the daemon (one database, or every database and sqld namespace in the config)."),
    "status": ("status_cmd:status_command", "How every database replicated on this machine is doing (exit 1 if unhealthy)."),
    "restore": ("restore_cmd:restore_command", "Restore a source into a new database file, as of a time or txid."),
    "mark": ("mark_cmd:mark_command", "Name the current point of a database (a restore point for --mark)."),
    "marks": ("mark_cmd:marks_command", "List a source's named restore points, and whether each is still restorable."),
    "unmark": ("mark_cmd:unmark_command", "Remove a named restore point (retention may then delete its history)."),
    "ls": ("ls_cmd:ls_command", "What a source can restore: window, generations, snapshots."),
    "db": ("db_cmd:db_group", "Named databases: create/show/list/shell/destroy."),
    "history": ("history_cmd:history_command", "The recovery log: who restored what, when, and why."),
    "diff": ("diff_cmd:diff_command", "Rows deleted/added/changed in a table between two databases."),
    "bisect": ("bisect_cmd:bisect_command", "Find the transaction that changed a query's result (binary search)."),
    "timeline": ("timeline_cmd:timeline_command", "Transactions and pages changed per minute/hour."),
    "verify": ("verify_cmd:verify_command", "Restore drills: prove the replica restores, PASSED/FAILED."),
    "snapshot": ("verify_cmd:snapshot_command", "Write a new base snapshot built from the replica itself."),
    "prune": ("prune_cmd:prune_command", "Apply the retention policy now: delete what it no longer needs."),
    "compact": ("compact_cmd:compact_command", "Merge old small segments into large ones (same history, fewer objects)."),
    "keygen": ("keygen_cmd:keygen_command", "Make a new encryption key (base64 of 32 random bytes)."),
    "reseed": ("reseed_cmd:reseed_command", "Make the daemon start a new generation from the live database file."),
    "rekey": ("rekey_cmd:rekey_command", "Rewrite objects encrypted under older keys with the current key."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, _, attr = COMMANDS[name][0].partition(":")
        return getattr(importlib.import_module(f"{__package__}.{module}"), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, short) in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
                    walrewind bisect app --query "SELECT count(*) FROM t"   (which txid changed it)
    Restore points: walrewind mark app before-migration    (then: restore app --mark before-migration)
    Drills:         walrewind verify app --random 5        (restore, checksum, integrity_check)
    Retention:      walrewind prune app --dry-run          (what the daemon deletes hourly)

    Wherever a command takes SOURCE, give a configured database name or a replica URL/path
    (file:///backups/app, s3://bucket/prefix?endpoint=..., ./backups); a configured name wins.
    """
    ctx.ensure_object(dict)
    if config_file is not None:
        ctx.obj["config"] = config_file


def main() -> None:
    try:
        cli()
    except BrokenPipeError:
        # `walrewind db shell X .dump | head`: the reader is gone; say nothing, like sqlite3 does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)  # 128 + SIGPIPE, what a shell reports for a writer killed by SIGPIPE
