"""Which replica a command means: one rule for every command that takes a source.

A source is typed as a configured database name (``app``) or as a replica location
(``file:///backups/app``, ``s3://bucket/prefix?endpoint=...``, or a plain directory path).  The
rule, the same for ``restore``, ``ls``, ``verify``, ``prune``, ``compact``, ``snapshot``, ``bisect``,
``timeline`` and ``db create --from-db``:

1. a name configured in the config file wins (so ``app`` never silently means ``./app``);
2. with ``[sqld]``, the name of a namespace on disk is that namespace (replica ``<replica>/NS``);
3. otherwise text with a URL scheme, a path separator, a leading ``.``/``~``, or naming an
   existing directory is a replica location;
4. with ``[sqld]``, a name whose namespace replica holds history is that namespace, even when the
   namespace itself was deleted (restoring a deleted namespace is what a backup is for);
5. otherwise it is an unknown name, and the error lists the configured names and namespaces.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from ..errors import StorageError, UnknownSource
from ..replica.index import Replica
from ..storage import Keyring, Storage, load_keyring, open_storage
from .config import Config, DatabaseConfig, SqldConfig, redact_url
from .sqld import DISK_NAME_RE, is_namespace, namespace_id, namespace_names

RULE = ("a configured database name or sqld namespace (from the config file; a name wins over a path) or a replica "
        "URL/path (file:///backups/app, s3://bucket/prefix?endpoint=..., ./backups)")


@dataclass(frozen=True)
class Source:
    """A resolved source: its replica location and, when it was a configured name, its settings."""

    text: str  # as typed
    replica_url: str  # may carry credentials: show ``display`` instead
    database: DatabaseConfig | None = None
    key_files: tuple[str, ...] = ()  # --encryption-key-file (before the database's own key files)

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

    def keyring(self) -> Keyring | None:
        """Encryption keys: --encryption-key-file, the database's encryption_key_file, the environment."""
        if self.database is not None:
            return self.database.keyring(self.key_files)
        return load_keyring(self.key_files)

    def storage(self, write: bool = False) -> Storage:
        """The replica's storage (a missing local replica is an error, never created).  Readers get
        the lighter read-only backend where there is one (no boto3 import for a plain S3 GET)."""
        keyring = self.keyring()
        try:
            return open_storage(self.replica_url, create=False, read_only=not write, keyring=keyring)
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


def resolve_source(text: str, config: Config | None, restored_names: frozenset[str] = frozenset(),
                   key_files: tuple[str, ...] = ()) -> Source:
    """Apply the rule above; ``restored_names`` (the catalog's) only improve the error message;
    ``key_files`` (--encryption-key-file) come before the database's own encryption keys."""
    return replace(_resolve(text, config, restored_names), key_files=tuple(key_files))


def _resolve(text: str, config: Config | None, restored_names: frozenset[str]) -> Source:
    if config is not None and text in config.databases:
        return Source(text, config.databases[text].replica, config.databases[text])
    sqld = config.sqld if config is not None else None
    if sqld is not None and is_namespace(sqld, text):
        db = sqld.namespace(text, namespace_id(sqld.namespace_dir(text)))
        return Source(text, db.replica, db)
    if looks_like_location(text):
        return Source(text, os.path.expanduser(text) if text.startswith("~") else text)
    if sqld is not None and DISK_NAME_RE.fullmatch(text) and text not in restored_names and _has_history(sqld, text):
        return Source(text, sqld.namespace(text).replica, sqld.namespace(text))
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
    namespaces = ""
    if sqld is not None:
        namespaces = f"; sqld namespaces in {sqld.dbs_dir}: {', '.join(namespace_names(sqld.dbs_dir)) or 'none'}"
    raise UnknownSource(f"unknown database {text!r}; configured databases: {known}{namespaces}; or give a replica URL/path")


def _has_history(sqld: SqldConfig, name: str) -> bool:
    """Does namespace ``name``'s replica hold anything (one LIST)?  Unreachable counts as no."""
    try:
        storage = open_storage(sqld.namespace(name).replica, create=False)
        return not Replica(storage).empty
    except StorageError:
        return False
