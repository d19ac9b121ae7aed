"""What the database-workflow commands share: the config file, database names, the catalog, and
one error style (expected failures print ``Error: ...`` on stderr and exit 1)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlparse

import click

from ..engine.errors import UsageError, ConfigError, StorageError, TimestampError
from ..engine.replica.index import Replica
from ..engine.storage import open_storage
from ..engine.timeparse import parse_timestamp_us
from ..engine.workspace.catalog import Catalog, CatalogEntry
from ..engine.workspace.config import Config, DatabaseConfig, load, not_found_message
from .common import USER_ERRORS, error_handler


WORKFLOW_ERRORS = USER_ERRORS


friendly = error_handler(WORKFLOW_ERRORS)  # common.friendly_errors, plus the workflow's own errors


ACCEPTED_FORMS = (
    "accepted forms: 2024-01-15T10:30:00Z, 2024-01-15T10:30:00.250Z, 2024-01-15T19:30:00+09:00, "
    "2024-01-15 10:30 (no offset = UTC), 2024-01-15 (start of that day, UTC)"
)


def parse_target(text: str) -> int:
    """parse_timestamp_us, with every accepted form listed when the text is not one of them."""
    try:
        return parse_timestamp_us(text)
    except TimestampError as exc:
        if "format" in str(exc):
            raise TimestampError(f"{exc}; {ACCEPTED_FORMS}") from None
        raise


def _store_config(ctx: click.Context, _param, value):
    if value is not None:
        ctx.ensure_object(dict)
        ctx.find_root().ensure_object(dict)["config"] = value
    return value


def config_option(func):
    """``--config FILE`` accepted after the subcommand too (same as the global option)."""
    return click.option(
        "--config", "config_file", type=click.Path(dir_okay=False), expose_value=False, is_eager=True,
        callback=_store_config, help="Config file (default: $WALREWIND_CONFIG, ./walrewind.toml, ~/.config/walrewind/config.toml).",
    )(func)


def config_path() -> str | None:
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return None
    obj = ctx.find_root().obj or {}
    return obj.get("config")


def get_config(required: bool = True) -> Config | None:
    config = load(config_path())
    if config is None and required:
        raise ConfigError(not_found_message())
    return config


def catalog(config: Config, create: bool = False) -> Catalog:
    return Catalog(config.catalog_path, create=create)


@dataclass
class Resolved:
    name: str
    kind: str  # "replicated" | "restored"
    path: str
    source: DatabaseConfig | None = None
    entry: CatalogEntry | None = None


def known_names(config: Config, cat: Catalog) -> list[str]:
    return sorted(set(config.databases) | {e.name for e in cat.entries()})


def unknown_database(name: str, config: Config, cat: Catalog, sources_only: bool = False) -> UsageError:
    if sources_only:
        names, what = sorted(config.databases), "replicated database"
    else:
        names, what = known_names(config, cat), "database"
    known = ", ".join(names) if names else f"none yet (add [databases.NAME] to {config.path})"
    return UsageError(f"unknown {what} {name!r}; known {what}s: {known}")


def resolve(config: Config, cat: Catalog, name: str) -> Resolved:
    if name in config.databases:
        db = config.databases[name]
        return Resolved(name, "replicated", db.path, source=db)
    entry = cat.get(name)
    if entry is not None:
        return Resolved(name, "restored", entry.path, entry=entry)
    raise unknown_database(name, config, cat)


def open_replica(db: DatabaseConfig) -> Replica:
    """The replica of a configured database; unreachable replicas are named with the reason."""
    try:
        return Replica(open_storage(db.replica, create=False))
    except StorageError as exc:
        raise UsageError(f"replica of {db.name!r} ({db.replica_display}) is unreachable: {exc}") from None


def normalize_replica_url(url: str) -> str:
    """Comparable form of a replica URL (local paths become file:// + absolute path)."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return "file://" + os.path.abspath(parsed.path)
    if not parsed.scheme:
        return "file://" + os.path.abspath(url)
    return url


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def file_size(path: str) -> int | None:
    """Bytes on disk including a -wal (what the database occupies), None when missing."""
    if not os.path.exists(path):
        return None
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def table(rows: list[list[str]], headers: list[str], right: set[int] = frozenset()) -> str:
    """Plain aligned columns (no box drawing: easy to read and to grep)."""
    cells = [headers] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for r in cells:
        parts = [r[i].rjust(widths[i]) if i in right else r[i].ljust(widths[i]) for i in range(len(headers))]
        out.append("  ".join(parts).rstrip())
    return "\n".join(out)
