"""The storage interface every replica backend implements.

It is deliberately tiny (put / create-only put / get / list / delete) so that a new backend, or a
wrapper that adds retries or fault injection, only has to get five methods right.  Every object the
engine writes is immutable: it is created once with ``put_if_absent`` and never overwritten, so a
retried upload can never corrupt history.
"""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass
from typing import Iterator

from ..errors import ObjectConflict, ObjectNotFound, StorageError  # noqa: F401  (part of this interface)


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

    # Puts whose flushes a caller groups with others' (engine/daemon/uploadround.py): only a
    # backend that writes the object itself offers them (LocalStorage).  Declared here, so that a
    # wrapper (encryption, request counting) answers "no" itself instead of handing its inner
    # store's method out through __getattr__: a staged put through the inner store of an
    # encrypting wrapper would write plaintext.
    stages_puts = False

    def stage_if_absent(self, key: str, data: bytes):
        """The bytes of a create-only put written but neither flushed nor named (an object with
        ``fd``, ``dfd``, ``link()``, ``close()``: local.StagedPut); None when not offered."""
        return None

    def put_marker(self, key: str) -> bool:
        """Create-only put of an empty object whose name is all it says (a heartbeat, a lease
        renewal); False when it exists.  Backends may skip flushing it: a marker lost in a crash
        only says less (the objects it vouches for were made durable before it was written)."""
        return self.put_if_absent(key, b"")

    def replace_marker(self, old: str | None, key: str) -> None:
        """Marker ``key`` made and marker ``old`` (the previous heartbeat) deleted: a reader of
        the store may see both for a moment, never neither.  Create-only for ``key`` as
        put_marker; ``old`` missing is not an error.  Backends may do it in one step."""
        self.put_marker(key)
        if old is not None and old != key:
            self.delete(old)

    def get_if_present(self, key: str) -> bytes | None:
        """The whole object, or None when there is none (a lookup that usually misses: the lease
        check with every heartbeat).  Backends may look more cheaply than a failed GET."""
        try:
            return self.get(key)
        except ObjectNotFound:
            return None

    def put_file(self, key: str, path: str) -> None:
        """Replace ``key`` with a local file's content, atomically for readers (``walrewind rekey``
        only: everything else is create-only).  Backends override this to stream large files."""
        with open(path, "rb") as f:
            self.put(key, f.read())

    def put_file_if_absent(self, key: str, path: str) -> bool:
        """Create-only upload of a local file.  Backends override this to stream large files."""
        with open(path, "rb") as f:
            return self.put_if_absent(key, f.read())

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Bytes ``start .. start + length - 1`` of the object (fewer at its end); ObjectNotFound.

        Backends override this to avoid downloading the whole object (S3: a ranged GET)."""
        return self.get(key)[start : start + length]

    def get_to_file(self, key: str, path: str) -> int:
        """Download the whole object into ``path`` (created or truncated); returns its size.

        Backends override this to download big objects in parallel with bounded memory."""
        data = self.get(key)
        with open(path, "wb") as f:
            f.write(data)
        return len(data)

    def probe(self) -> None:
        """Raise StorageError unless the store answers now.  One cheap request, not retried: the
        daemon asks this every fraction of a second while the store is unreachable, so it uploads
        its backlog as soon as it is back instead of at its next backoff."""
        next(iter(self.list("lease/")), None)

    def local_path(self, key: str) -> str | None:
        """A local file holding the object, when the backend has one (restores read it in place)."""
        return None

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


COMPARE_CHUNK = 8 << 20


def put_file_immutable(storage: Storage, key: str, path: str) -> bool:
    """File variant of :func:`put_immutable`; the comparison streams (bounded memory)."""
    if storage.put_file_if_absent(key, path):
        return True
    size = os.path.getsize(path)
    offset = 0
    with open(path, "rb") as f:
        while True:
            want = f.read(COMPARE_CHUNK)
            have = storage.get_range(key, offset, COMPARE_CHUNK)
            if have != want:
                raise ObjectConflict(
                    f"{storage.url}: object {key} already exists with different content "
                    f"(differs from the {size}-byte local file at or after byte {offset}); refusing to overwrite history"
                )
            if not want:
                return False
            offset += len(want)
