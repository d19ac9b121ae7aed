"""Encryption at rest as a Storage wrapper (restic's shape): no format module, restorer or daemon
stage knows about it.  Every object body put through it -- segments, snapshots, compacted
segments, lease and heartbeat bodies -- is already compressed (zstd inside the envelope) and is
then encrypted whole, the envelope's JSON header included, so a bucket reader learns names,
sizes and the times in names, nothing else.  The object format is in sealed.py.

What is encrypted is decided per generation by the replica's marker (marker.py): objects of
encrypted generations and lease bodies are sealed on the way in; the plaintext generations
that predate the key are read as they are and take nothing but compaction's merged segments.

Reads are told apart by content: a ``WREC`` object is decrypted (with the key its header names:
several keys may be given for reading, the first one writes), anything else is plaintext -- and
refused where its generation is encrypted.  ``list()`` reports plaintext sizes (exact: they
follow from the stored size), ``get_range`` fetches and decrypts only the chunks covering the
range (plus, once per object, its 24-byte header), so the restore's parallel ranged GETs work
unchanged, and ``local_path`` is None for encrypted objects so that readers come through here.

Without a key (``keyring=None``) the wrapper only guards a reader of an encrypted replica: a
``WREC`` object raises EncryptionKeyError naming its key id, instead of looking like damage.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from typing import Any, Iterator

from ..errors import EncryptionKeyError, EncryptionRefused, ObjectCorrupt
from . import sealed
from .base import ObjectInfo, Storage
from .keys import Keyring
from .marker import (
    MARKER_KEY,
    Marker,
    check_replica_encryption,
    generation_of,
    read_marker,
)

__all__ = ["EncryptedStorage", "check_replica_encryption", "protect"]

_CACHE_MAX = 4096  # headers remembered (24 bytes each + an AES context); cleared when full
_PROBE = 64 << 10  # bytes of a file read to tell a compaction's merged segment


def _is_compaction_output(head: bytes) -> bool:
    """A segment envelope (FORMAT.md section 2) whose header has ``compacted_from``: the only object
    a writer with a key may add to a plaintext generation, since it repacks bytes stored there."""
    if head[:4] != b"WRSG" or len(head) < 10:
        return False
    length = int.from_bytes(head[6:10], "little")
    try:
        header = json.loads(head[10:10 + length])
    except ValueError:
        return False
    return isinstance(header, dict) and "compacted_from" in header


class EncryptedStorage(Storage):
    def __init__(self, inner: Storage, keyring: Keyring | None, marker: Marker | None = None,
                 loaded: bool = False) -> None:
        self.inner = inner
        self.url = inner.url
        self.keyring = keyring
        self._lock = threading.Lock()
        self._headers: dict[str, tuple[sealed.Header, sealed.Opener] | None] = {}
        self._probing: dict[str, threading.Lock] = {}
        self._stored: dict[str, int] = {}  # stored sizes seen in LISTs (strict last-chunk checks)
        self._loaded = False
        if loaded or marker is not None:
            self.set_marker(marker)

    @property
    def unwrapped(self) -> Storage:
        return self.inner

    # ------------------------------------------------------------------------------ the marker
    def set_marker(self, marker: Marker | None) -> None:
        """Adopt ``marker`` (check_replica_encryption calls this after writing one)."""
        where = f"{self.url}/{MARKER_KEY}"
        verified = marker is not None and marker.verify(self.keyring, where)
        with self._lock:
            self.marker, self._verified = marker, verified
            if marker is None:
                self._plain_gens: frozenset[str] = frozenset()
            elif self.keyring is None or verified:
                self._plain_gens = frozenset(marker.plaintext_generations)
            else:
                self._plain_gens = frozenset()  # cannot check the list: trust no plaintext generation
            self._loaded = True

    def _marker(self) -> Marker | None:
        if not self._loaded:
            self.set_marker(read_marker(self.inner))
        return self.marker

    def _sealed_generation(self, key: str) -> bool:
        """Whether ``key`` belongs to an encrypted generation (its objects must be WREC)."""
        gen = generation_of(key)
        return gen is not None and self._marker() is not None and gen not in self._plain_gens

    def _where(self, key: str) -> str:
        return f"{self.url}/{key}"

    def _plain_ok(self, key: str) -> None:
        if self._sealed_generation(key):
            raise ObjectCorrupt(f"{self._where(key)}: is not encrypted, but its generation is (per "
                                f"{MARKER_KEY}): not written by walrewind with a key; refusing to read it")

    # ------------------------------------------------------------------------------ reads
    def get(self, key: str) -> bytes:
        blob = self.inner.get(key)
        if sealed.is_sealed(blob):
            return sealed.unseal(self.keyring, key, blob, self._where(key))
        self._plain_ok(key)
        return blob

    def _header(self, key: str, fresh: bool = False) -> tuple[sealed.Header, sealed.Opener] | None:
        """The object's header and decryptor (None: plaintext), fetched once per object."""
        with self._lock:
            if not fresh and key in self._headers:
                return self._headers[key]
            probe_lock = self._probing.setdefault(key, threading.Lock())
        with probe_lock:
            with self._lock:
                if not fresh and key in self._headers:
                    return self._headers[key]
            head = self.inner.get_range(key, 0, sealed.HEADER_SIZE)
            entry = None
            if sealed.is_sealed(head):
                header = sealed.Header.parse(head, self._where(key))
                entry = (header, sealed.Opener(self.keyring, key, header, self._where(key)))
            with self._lock:
                if len(self._headers) >= _CACHE_MAX:
                    self._headers.clear()
                    self._probing.clear()
                self._headers[key] = entry
            return entry

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        with self._lock:
            cached = key in self._headers
        entry = self._header(key)
        if entry is None:
            self._plain_ok(key)
            return self.inner.get_range(key, start, length)
        try:
            return self._read_chunks(key, entry, start, length)
        except ObjectCorrupt:
            if not cached:
                raise
            # The object may have been replaced since its header was cached (``walrewind rekey``).
            entry = self._header(key, fresh=True)
            assert entry is not None
            return self._read_chunks(key, entry, start, length)

    def _read_chunks(self, key: str, entry: tuple[sealed.Header, sealed.Opener], start: int, length: int) -> bytes:
        header, opener = entry
        size, span = header.chunk, header.chunk + sealed.TAG
        first, last = start // size, (start + length - 1) // size
        blob = memoryview(self.inner.get_range(key, sealed.HEADER_SIZE + first * span, (last - first + 1) * span))
        stored = self._stored.get(key)
        total = -(-(stored - sealed.HEADER_SIZE) // span) if stored is not None else None
        pieces = [blob[i:i + span] for i in range(0, len(blob), span)]
        lasts = []
        for j, piece in enumerate(pieces):
            index = first + j
            if len(piece) < span or (total is not None and index == total - 1):
                lasts.append(True)
            elif j < len(pieces) - 1 or total is not None:
                lasts.append(False)
            else:
                lasts.append(None)  # unknown: either
        skip = start - first * size
        plain = sum(len(p) for p in pieces) - sealed.TAG * len(pieces)
        if sealed.decrypt_into_available() and skip == 0 and plain <= length and pieces:
            # The restore's aligned ranged reads: decrypted in place, one buffer (bytes-like) per range.
            out = bytearray(plain)
            view, pos = memoryview(out), 0
            for j, piece in enumerate(pieces):
                n = len(piece) - sealed.TAG
                if n < 0:
                    raise ObjectCorrupt(f"{self._where(key)}: encrypted object is truncated")
                opener.chunk_into(first + j, piece, lasts[j], view[pos:pos + n])
                pos += n
            return out  # type: ignore[return-value]
        parts = [opener.chunk(first + j, piece, lasts[j]) if lasts[j] is not None else opener.chunk_either(first + j, piece)
                 for j, piece in enumerate(pieces)]
        if skip == 0 and len(parts) == 1 and len(parts[0]) <= length:
            return parts[0]
        joined = b"".join(parts)
        return joined if skip == 0 and len(joined) <= length else joined[skip:skip + length]

    def get_to_file(self, key: str, path: str) -> int:
        entry = self._header(key)
        if entry is None:
            self._plain_ok(key)
            return self.inner.get_to_file(key, path)
        fd, tmp = tempfile.mkstemp(prefix=".walrewind-sealed-", dir=os.path.dirname(os.path.abspath(path)))
        os.close(fd)
        try:
            self.inner.get_to_file(key, tmp)
            with open(tmp, "rb") as src, open(path, "wb") as dst:
                return sealed.unseal_stream(self.keyring, key, src, dst.write, self._where(key))
        finally:
            os.unlink(tmp)

    def local_path(self, key: str) -> str | None:
        path = self.inner.local_path(key)
        if path is None:
            return None
        with open(path, "rb") as f:
            head = f.read(sealed.HEADER_SIZE)
        if sealed.is_sealed(head):
            header = sealed.Header.parse(head, self._where(key))
            sealed.key_for(self.keyring, header.key_id, self._where(key))  # no key: say so now
            return None  # read through get_range, which decrypts
        self._plain_ok(key)
        return path

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        found = list(self.inner.list(prefix))
        with self._lock:
            for info in found:
                self._stored[info.key] = info.size
        for info in found:
            if self.keyring is not None and self._sealed_generation(info.key):
                yield ObjectInfo(info.key, sealed.plain_size(info.size))
            else:
                yield info

    # ------------------------------------------------------------------------------ writes
    def _seal(self, key: str, head: bytes) -> bool:
        """Whether to encrypt a new object ``key`` (True) or store it as it is (False), or refuse."""
        where = self._where(key)
        if key == MARKER_KEY:
            raise EncryptionRefused(f"{where}: the encryption marker is written by the daemon's start-up check "
                                    "and by `walrewind rekey` only")
        if self.keyring is None:
            raise EncryptionRefused(f"{where}: {self.url} is encrypted; writing to it needs its key "
                                    f"({sealed.KEY_HINT})")
        marker = self._marker()
        gen = generation_of(key)
        if marker is None:
            if gen is not None and _is_compaction_output(head):
                return False
            raise EncryptionRefused(
                f"{where}: {self.url} is not encrypted (it has no {MARKER_KEY}) and a writer with a key adds no "
                "plaintext to it; `walrewind replicate` with the key sets it up (the daemon starts a new, "
                "encrypted generation)")
        if not self._verified:
            raise EncryptionKeyError(
                f"{where}: {self.url}/{MARKER_KEY} is authenticated with key id {marker.mac_key_id}, which is not "
                f"among the keys given (key ids {self.keyring.describe()}); a writer must hold it")
        if gen is not None and gen in self._plain_gens:
            if _is_compaction_output(head):
                return False
            raise EncryptionRefused(
                f"{where}: generation {gen} is not encrypted (it predates the key), and a writer with a key adds "
                "nothing to it but compaction's merged segments; the daemon starts a new, encrypted generation")
        return True

    def _sealed_bytes(self, key: str, data: bytes) -> bytes:
        if self._seal(key, data[:_PROBE]):
            assert self.keyring is not None
            return sealed.seal(self.keyring.current, key, data)
        return data

    def _forget(self, key: str) -> None:
        with self._lock:
            self._headers.pop(key, None)
            self._stored.pop(key, None)

    def put(self, key: str, data: bytes) -> None:
        self._forget(key)
        self.inner.put(key, self._sealed_bytes(key, data))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self.inner.put_if_absent(key, self._sealed_bytes(key, data))

    def put_file_if_absent(self, key: str, path: str) -> bool:
        with open(path, "rb") as f:
            if not self._seal(key, f.read(_PROBE)):
                return self.inner.put_file_if_absent(key, path)
        assert self.keyring is not None
        fd, tmp = tempfile.mkstemp(prefix=".walrewind-seal-", dir=os.path.dirname(os.path.abspath(path)))
        try:
            with open(path, "rb") as src, os.fdopen(fd, "wb") as dst:
                sealed.seal_stream(self.keyring.current, key, src, dst.write)
            return self.inner.put_file_if_absent(key, tmp)
        finally:
            os.unlink(tmp)

    def delete(self, key: str) -> None:
        self._forget(key)
        self.inner.delete(key)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:  # backend specifics (request counts, retry policy, ...)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def protect(inner: Storage, keyring: Keyring | None, probe: bool) -> Storage:
    """What ``open_storage`` returns: with a key, the encrypting wrapper (it reads the marker on
    first use); without one, the backend itself -- guarded when ``probe`` (readers: one GET of the
    marker at open) finds the replica encrypted, and refused outright for a writer."""
    if keyring is not None:
        return EncryptedStorage(inner, keyring)
    if not probe:
        return inner
    marker = read_marker(inner)
    if marker is None:
        return inner
    return EncryptedStorage(inner, None, marker)
