"""A Storage wrapper that counts calls per method (request-economy measurements and tests).

It counts *Storage calls*, which is what the engine decides; a backend may turn one call into
several HTTP requests (multipart parts, ranged GETs, retries), which ``S3Storage.requests`` counts.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Iterator

from .base import ObjectInfo, Storage

_METHODS = ("put", "put_if_absent", "get", "list", "delete", "put_file_if_absent", "get_range", "get_to_file", "probe")


class CountingStorage(Storage):
    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.url = inner.url
        self.calls: collections.Counter[str] = collections.Counter()
        self.keys: list[tuple[str, str]] = []  # (method, key or prefix), in call order
        self._lock = threading.Lock()

    def _note(self, method: str, key: str) -> None:
        with self._lock:
            self.calls[method] += 1
            self.keys.append((method, key))

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {m: self.calls[m] for m in _METHODS if self.calls[m]}

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.keys.clear()

    def put(self, key: str, data: bytes) -> None:
        self._note("put", key)
        self.inner.put(key, data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        self._note("put_if_absent", key)
        return self.inner.put_if_absent(key, data)

    def get(self, key: str) -> bytes:
        self._note("get", key)
        return self.inner.get(key)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        self._note("list", prefix)
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self._note("delete", key)
        self.inner.delete(key)

    def probe(self) -> None:
        self._note("probe", "")
        self.inner.probe()

    def put_file_if_absent(self, key: str, path: str) -> bool:
        self._note("put_file_if_absent", key)
        return self.inner.put_file_if_absent(key, path)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        self._note("get_range", key)
        return self.inner.get_range(key, start, length)

    def get_to_file(self, key: str, path: str) -> int:
        self._note("get_to_file", key)
        return self.inner.get_to_file(key, path)

    def local_path(self, key: str) -> str | None:
        return self.inner.local_path(key)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:  # backend specifics (e.g. S3Storage.requests)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
