"""The storage interface every replica backend implements.

It is deliberately tiny (put / create-only put / get / list / delete) so that a new backend, or a
wrapper that adds retries or fault injection, only has to get five methods right.  Every object the
engine writes is immutable: it is created once with ``put_if_absent`` and never overwritten, so a
retried upload can never corrupt history.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Iterator


class StorageError(Exception):
    """A replica could not be read or written; the message names the URL or key."""


class ObjectNotFound(StorageError):
    """The key does not exist in the replica."""


class ObjectConflict(StorageError):
    """A create-only write found different content already stored under the key."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


class Storage(abc.ABC):
    """A flat key space of immutable objects.  Keys use ``/`` as separator and never start with it."""

    url: str

    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing any previous object (used only for scratch keys)."""

    @abc.abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if it does not exist.  Returns False when something already exists."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """Return the whole object; raises ObjectNotFound."""

    @abc.abstractmethod
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Yield every object whose key starts with ``prefix``, in key order."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; deleting a missing key is not an error."""

    def put_file_if_absent(self, key: str, path: str) -> bool:
        """Create-only upload of a local file.  Backends override this to stream large files."""
        with open(path, "rb") as f:
            return self.put_if_absent(key, f.read())

    def close(self) -> None:
        """Release connections; the default backend holds none."""


def put_immutable(storage: Storage, key: str, data: bytes) -> bool:
    """Create ``key`` with ``data``; identical existing content is a no-op, different content an error.

    This is what makes retries safe: an upload that succeeded but whose answer was lost is simply
    repeated, while two writers disagreeing about history is caught instead of overwritten.
    Returns True when this call created the object.
    """
    if storage.put_if_absent(key, data):
        return True
    existing = storage.get(key)
    if existing != data:
        raise ObjectConflict(
            f"{storage.url}: object {key} already exists with different content "
            f"({len(existing)} bytes stored, {len(data)} bytes offered); refusing to overwrite history"
        )
    return False


def put_file_immutable(storage: Storage, key: str, path: str) -> bool:
    """File variant of :func:`put_immutable`."""
    if storage.put_file_if_absent(key, path):
        return True
    with open(path, "rb") as f:
        data = f.read()
    return put_immutable(storage, key, data)
