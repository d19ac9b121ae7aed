"""The embedded default replica: a directory on a local (or mounted) filesystem.

Objects are written to a temporary file, fsynced, and then *linked* into place: ``link(2)`` fails
if the name exists, which gives the same create-only guarantee as S3's ``If-None-Match: *`` and
means a reader never sees a half-written object.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Iterator

from ..errors import ObjectNotFound, StorageError
from ..fsutil import fsync_dir
from .base import ObjectInfo, Storage


class LocalStorage(Storage):
    def __init__(self, root: str, create: bool = True) -> None:
        self.root = os.path.abspath(root)
        self.url = "file://" + self.root
        if create:
            os.makedirs(self.root, exist_ok=True)
        elif not os.path.isdir(self.root):
            raise StorageError(f"{self.url}: replica directory does not exist")

    def _path(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid object key {key!r}")
        return os.path.join(self.root, *key.split("/"))

    def _write_temp(self, final: str, data: bytes | None, source: str | None) -> str:
        directory = os.path.dirname(final)
        for attempt in range(3):
            os.makedirs(directory, exist_ok=True)
            try:
                fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
                break
            except FileNotFoundError:  # a delete() removed the directory as it became empty
                if attempt == 2:
                    raise
        try:
            with os.fdopen(fd, "wb") as f:
                if data is not None:
                    f.write(data)
                else:
                    with open(source, "rb") as src:  # type: ignore[arg-type]
                        while chunk := src.read(1 << 20):
                            f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            os.unlink(tmp)
            raise
        return tmp

    def put(self, key: str, data: bytes) -> None:
        final = self._path(key)
        tmp = self._write_temp(final, data, None)
        os.replace(tmp, final)
        fsync_dir(os.path.dirname(final))

    def put_file(self, key: str, path: str) -> None:
        final = self._path(key)
        tmp = self._write_temp(final, None, path)
        os.replace(tmp, final)
        fsync_dir(os.path.dirname(final))

    def _link_into_place(self, tmp: str, final: str) -> bool:
        try:
            os.link(tmp, final)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        fsync_dir(os.path.dirname(final))
        return True

    def put_if_absent(self, key: str, data: bytes) -> bool:
        final = self._path(key)
        if os.path.exists(final):
            return False
        return self._link_into_place(self._write_temp(final, data, None), final)

    def put_file_if_absent(self, key: str, path: str) -> bool:
        final = self._path(key)
        if os.path.exists(final):
            return False
        return self._link_into_place(self._write_temp(final, None, path), final)

    def get(self, key: str) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.url}: object {key} not found") from None

    def get_range(self, key: str, start: int, length: int) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                return os.pread(f.fileno(), length, start)
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.url}: object {key} not found") from None

    def get_to_file(self, key: str, path: str) -> int:
        shutil.copyfile(self.local_path(key), path)  # type: ignore[arg-type]
        return os.path.getsize(path)

    def local_path(self, key: str) -> str | None:
        path = self._path(key)
        if not os.path.isfile(path):
            raise ObjectNotFound(f"{self.url}: object {key} not found")
        return path

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        # Walk only the deepest directory the prefix names, then filter by the remainder.
        base_dir = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = os.path.join(self.root, *base_dir.split("/")) if base_dir else self.root
        found: list[ObjectInfo] = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, self.root)
            for name in filenames:
                if name.startswith(".tmp-"):
                    continue
                key = name if rel_dir == "." else f"{rel_dir.replace(os.sep, '/')}/{name}"
                if key.startswith(prefix):
                    found.append(ObjectInfo(key, os.path.getsize(os.path.join(dirpath, name))))
        found.sort(key=lambda o: o.key)
        yield from found

    def delete(self, key: str) -> None:
        """Remove the object, and its directories once empty (retention and compaction would
        otherwise leave a directory tree of empty generations behind)."""
        path = self._path(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        directory = os.path.dirname(path)
        while directory != self.root and directory.startswith(self.root + os.sep):
            try:
                os.rmdir(directory)  # fails while anything (an object, a temp file) is inside
            except OSError:
                return
            directory = os.path.dirname(directory)
