"""The `walrewind` command: a thin layer over walrewind.engine."""

from __future__ import annotations

import click

from .ls_cmd import ls_command
from .replicate_cmd import replicate_command
from .restore_cmd import restore_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="walrewind")
def cli():
    """Point-in-time recovery for SQLite and libSQL, on your own storage."""


cli.add_command(replicate_command)
cli.add_command(restore_command)
cli.add_command(ls_command)


def main() -> None:
    cli()
