"""Shared CLI plumbing: one error style, one JSON style, the config file, sources, tables.

Expected failures are ``WalrewindError`` (everything the engine raises on purpose) and ``OSError``
(the environment saying no: a permission, a full disk).  They print ``Error: ...`` on stderr and
exit non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import json
import sys

import click

from ..engine.errors import ConfigError, WalrewindError

SOURCE_HELP = ("SOURCE is a configured database name or a replica URL/path (file:///backups/app, "
               "s3://bucket/prefix?endpoint=..., ./backups); a configured name wins.")


def friendly(func):
    """Turn expected failures into one clear line on stderr and the error's exit code."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except WalrewindError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except BrokenPipeError:
            raise  # the reader went away: main() ends quietly
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            click.echo(f"Error: {exc.strerror or exc}{where}", err=True)
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


# ------------------------------------------------------------------------------ config and sources
def _store_config(ctx: click.Context, _param, value):
    if value is not None:
        ctx.find_root().ensure_object(dict)["config"] = value
    return value


def config_option(func):
    """``--config FILE`` accepted after the subcommand too (same as the global option)."""
    return click.option(
        "--config", "config_file", type=click.Path(dir_okay=False), expose_value=False, is_eager=True,
        callback=_store_config,
        help="Config file (default: $WALREWIND_CONFIG, ./walrewind.toml, ~/.config/walrewind/config.toml).",
    )(func)


def _store_key_files(ctx: click.Context, _param, value):
    if value:
        obj = ctx.find_root().ensure_object(dict)
        obj["key_files"] = tuple(obj.get("key_files", ())) + tuple(value)
    return value


KEY_HELP = ("File holding an encryption key (base64, one per line; repeatable). The first key found writes, all "
            "of them read. Also: encryption_key_file in the config, WALREWIND_ENCRYPTION_KEY "
            "(after this option, in that order). `walrewind keygen` makes one.")


def key_option(func):
    """``--encryption-key-file FILE`` (repeatable) for every command that opens a replica."""
    return click.option(
        "--encryption-key-file", "key_files", type=click.Path(dir_okay=False), multiple=True, expose_value=False,
        callback=_store_key_files, metavar="FILE", help=KEY_HELP,
    )(func)


def key_files() -> tuple[str, ...]:
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return ()
    return tuple((ctx.find_root().obj or {}).get("key_files", ()))


def config_path() -> str | None:
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return None
    return (ctx.find_root().obj or {}).get("config")


def get_config(required: bool = True):
    """The config file (``--config``, $WALREWIND_CONFIG, ./walrewind.toml, ~/.config/...)."""
    from ..engine.workspace.config import load, not_found_message

    config = load(config_path())
    if config is None and required:
        raise ConfigError(not_found_message())
    return config


def open_catalog(config, create: bool = False):
    from ..engine.workspace.catalog import Catalog

    return Catalog(config.catalog_path, create=create)


def get_source(text: str):
    """SOURCE resolved by the engine's one rule (engine/workspace/sources.py)."""
    from ..engine.workspace.sources import resolve_source

    config = get_config(required=False)
    restored = frozenset(e.name for e in open_catalog(config).entries()) if config is not None else frozenset()
    return resolve_source(text, config, restored, key_files()), config


class DurationText(click.ParamType):
    """A duration option ('7d', '36h', or 'off' when allowed), checked when parsed (a usage error,
    exit 2) and passed on as typed."""

    name = "duration"

    def __init__(self, allow_off: bool = True) -> None:
        self.allow_off = allow_off

    def convert(self, value, param, ctx):
        from ..engine.errors import DurationError
        from ..engine.timeparse import parse_duration_or_off

        try:
            parse_duration_or_off(value, self.allow_off)
        except DurationError as exc:
            self.fail(str(exc), param, ctx)
        return value


# ------------------------------------------------------------------------------ output helpers
def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def table(rows: list[list[str]], headers: list[str], right: set[int] = frozenset()) -> str:
    """Plain aligned columns (no box drawing: easy to read and to grep)."""
    cells = [headers] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for r in cells:
        parts = [r[i].rjust(widths[i]) if i in right else r[i].ljust(widths[i]) for i in range(len(headers))]
        out.append("  ".join(parts).rstrip())
    return "\n".join(out)
