"""Shared CLI plumbing: one error style, one JSON style, progress only on a terminal."""

from __future__ import annotations

import functools
import json
import sys

import apsw
import click

from ..engine.errors import WalrewindError

# Everything walrewind raises on purpose derives from WalrewindError; OSError is the environment
# saying no (a permission, a full disk).  apsw.Error is what the SQLite files we are pointed at can
# say.  Anything else is a bug and keeps its traceback.
USER_ERRORS = (WalrewindError, OSError, apsw.Error)


def error_handler(expected: tuple[type[BaseException], ...]):
    """A decorator turning ``expected`` failures into one clear line on stderr and exit code 1."""

    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            try:
                return func(*args, **kwargs)
            except expected as exc:
                text = str(exc)
                if isinstance(exc, apsw.Error) and not text.startswith(type(exc).__name__):
                    text = f"{type(exc).__name__}: {text}"
                click.echo(f"Error: {text}", err=True)
                sys.exit(1)

        return wrapper

    return decorate


friendly_errors = error_handler(USER_ERRORS)


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
