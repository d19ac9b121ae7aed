"""Shared CLI plumbing: one error style, one JSON style, progress only on a terminal."""

from __future__ import annotations

import functools
import json
import sys

import click

from ..engine.format import FormatError
from ..engine.restore import RestoreError
from ..engine.pin import PinError
from ..engine.shipper import ShipperError
from ..engine.spool import StateLocked
from ..engine.storage import StorageError
from ..engine.timeparse import TimestampError

USER_ERRORS = (
    RestoreError, TimestampError, StorageError, FormatError, ShipperError, StateLocked, PinError, FileNotFoundError,
)


def friendly_errors(func):
    """Turn expected failures into one clear line on stderr and exit code 1 (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except USER_ERRORS as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)

    return wrapper


def emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def make_progress(enabled: bool):
    """A progress callback that redraws one stderr line; silent unless stderr is a terminal."""
    if not enabled or not sys.stderr.isatty():
        return None

    def progress(stage: str, done: int, total: int) -> None:
        pct = 100.0 * done / total if total else 100.0
        click.echo(f"\r{stage}: {done}/{total} ({pct:5.1f}%)", err=True, nl=False)
        if done >= total:
            click.echo("", err=True)

    return progress
