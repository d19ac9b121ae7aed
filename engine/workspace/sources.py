"""Which replica a command means: one rule for every command that takes a source.

A source is typed as a configured database name (``app``) or as a replica location
(``file:///backups/app``, ``s3://bucket/prefix?endpoint=...``, or a plain directory path).  The
rule, the same for ``restore``, ``ls``, ``verify``, ``prune``, ``compact``, ``snapshot``,
``timeline`` and ``db create --from-db``:

1. a name configured in the config file wins (so ``app`` never silently means ``./app``);
2. otherwise text with a URL scheme, a path separator, a leading ``.``/``~``, or naming an
   existing directory is a replica location;
3. otherwise it is an unknown name, and the error lists the configured names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import StorageError, UnknownSource
from ..replica.index import Replica
from ..storage import Storage, open_storage
from .config import Config, DatabaseConfig, redact_url

RULE = ("a configured database name (from the config file; a name wins over a path) or a replica URL/path "
        "(file:///backups/app, s3://bucket/prefix?endpoint=..., ./backups)")


@dataclass(frozen=True)
class Source:
    """A resolved source: its replica location and, when it was a configured name, its settings."""

    text: str  # as typed
    replica_url: str  # may carry credentials: show ``display`` instead
    database: DatabaseConfig | None = None

    @property
    def name(self) -> str | None:
        return self.database.name if self.database is not None else None

    @property
    def display(self) -> str:
        """The replica URL without credentials, for messages and the history."""
        return redact_url(self.replica_url)

    @property
    def label(self) -> str:
        """How to refer to it in a message: the configured name, else the (redacted) URL."""
        return self.name or self.display

    def storage(self, write: bool = False) -> Storage:
        """The replica's storage (a missing local replica is an error, never created).  Readers get
        the lighter read-only backend where there is one (no boto3 import for a plain S3 GET)."""
        try:
            return open_storage(self.replica_url, create=False, read_only=not write)
        except StorageError as exc:
            what = f"replica of {self.name!r} ({self.display})" if self.name else f"replica {self.display}"
            raise StorageError(f"{what} is unreachable: {exc}") from None

    def replica(self) -> Replica:
        """One LIST of the replica (see engine/replica/index.py)."""
        storage = self.storage()
        try:
            return Replica(storage)
        except StorageError as exc:
            raise StorageError(f"cannot list {self.display}: {exc}") from None


def looks_like_location(text: str) -> bool:
    return "://" in text or "/" in text or text.startswith((".", "~")) or os.path.isdir(text)


def resolve_source(text: str, config: Config | None, restored_names: frozenset[str] = frozenset()) -> Source:
    """Apply the rule above; ``restored_names`` (the catalog's) only improve the error message."""
    if config is not None and text in config.databases:
        return Source(text, config.databases[text].replica, config.databases[text])
    if looks_like_location(text):
        return Source(text, os.path.expanduser(text) if text.startswith("~") else text)
    if text in restored_names:
        raise UnknownSource(
            f"{text!r} is a restored copy and has no replica; give a replicated database"
            + (f" ({', '.join(sorted(config.databases))})" if config is not None and config.databases else "")
            + " or a replica URL"
        )
    if config is None:
        raise UnknownSource(
            f"unknown database {text!r}: no config file was found to name it, and no directory {text!r} exists; "
            f"give {RULE}"
        )
    known = ", ".join(sorted(config.databases)) or f"none yet (add [databases.NAME] to {config.path})"
    raise UnknownSource(f"unknown database {text!r}; configured databases: {known}; or give a replica URL/path")
