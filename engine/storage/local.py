"""The embedded default replica: a directory on a local (or mounted) filesystem.

Objects are written to a temporary file, fsynced, and then *linked* into place: ``link(2)`` fails
if the name exists, which gives the same create-only guarantee as S3's ``If-None-Match: *`` and
means a reader never sees a half-written object.  The directory is fsynced after the link: that
is what makes the new name (the object) survive a power cut.

Create-only puts (every segment, once a second per written database) use an *unnamed* temporary
file where the filesystem offers one (``O_TMPFILE``, linked with ``linkat`` through
``/proc/self/fd``): no temporary name is created and unlinked, and a crash leaves no ``.tmp-``
file behind.  Directories already made by this object are remembered instead of being made again
at every put (a ``mkdir`` that fails with EEXIST, and a ``stat``); a directory removed under us
(``delete`` of a generation's last object, possibly by another process) is made again when the
create or the link finds it missing.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from typing import Callable, Iterator, TypeVar

from ..errors import ObjectNotFound, StorageError
from ..fsutil import fsync_dir
from .base import ObjectInfo, Storage

T = TypeVar("T")


class LocalStorage(Storage):
    stages_puts = True
    def __init__(self, root: str, create: bool = True) -> None:
        self.root = os.path.abspath(root)
        self.url = "file://" + self.root
        if create:
            os.makedirs(self.root, exist_ok=True)
        elif not os.path.isdir(self.root):
            raise StorageError(f"{self.url}: replica directory does not exist")
        self._dirs: set[str] = set()  # directories this object made or found (no mkdir per put)
        # Unnamed temporary files: Linux with /proc (linkat needs /proc/self/fd without
        # CAP_DAC_READ_SEARCH); turned off at the first filesystem that refuses O_TMPFILE.
        self._unnamed = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")

    def _path(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid object key {key!r}")
        # (os.path.join of the parts, bar doubled slashes: without its Python loop per part)
        return self.root + "/" + key if self.root != "/" else "/" + key

    def _makedirs(self, directory: str, again: bool = False) -> None:
        if again or directory not in self._dirs:
            os.makedirs(directory, exist_ok=True)
            self._dirs.add(directory)

    def _in_directory(self, directory: str, make: Callable[[], T]) -> T:
        """``make()`` (a file or descriptor in ``directory``), making the directory first, again
        if a delete() removed it as it became empty (another store object's retention)."""
        for attempt in range(3):
            self._makedirs(directory, again=attempt > 0)
            try:
                return make()
            except FileNotFoundError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    @staticmethod
    def _write_fd(fd: int, data: bytes | None, source: str | None) -> None:
        """Write the object's bytes to ``fd`` and fsync them (before any name points at them)."""
        if data is not None:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        else:
            with open(source, "rb") as src:  # type: ignore[arg-type]
                while chunk := src.read(1 << 20):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
        os.fsync(fd)

    def _create_unnamed(self, final: str, data: bytes | None, source: str | None) -> bool | None:
        """Create-only put through an unnamed file: True created, False exists, None unsupported.

        Same order as the named protocol: the bytes are fsynced before the link, the directory
        after it (the same descriptor opens the file, takes the link and is fsynced)."""
        directory, name = os.path.split(final)
        dfd = self._in_directory(directory, lambda: os.open(directory, os.O_RDONLY | os.O_DIRECTORY))
        try:
            try:
                fd = os.open(".", os.O_TMPFILE | os.O_WRONLY, 0o600, dir_fd=dfd)
            except OSError as exc:
                if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    self._unnamed = False  # a filesystem without O_TMPFILE: named files from now on
                    return None
                raise
            try:
                self._write_fd(fd, data, source)
                try:
                    os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dfd)  # linkat(AT_SYMLINK_FOLLOW)
                except FileExistsError:
                    return False
                except FileNotFoundError:  # the directory was removed meanwhile: the named way
                    self._dirs.discard(directory)
                    return None
            finally:
                os.close(fd)
            os.fsync(dfd)
            return True
        finally:
            os.close(dfd)

    def stage_if_absent(self, key: str, data: bytes) -> "StagedPut | None":
        """The first half of ``put_if_absent`` for a caller that flushes many objects together
        (an upload round, engine/daemon/uploadround.py): the bytes in an unnamed file, *not*
        flushed; None where unnamed files are not available (then ``put_if_absent`` as usual).

        The caller makes ``fd``'s data durable, then calls ``link()``, then makes ``dfd`` (the
        directory) durable: the same order as ``_create_unnamed``, with the flushes its own."""
        if not self._unnamed:
            return None
        final = self._path(key)
        directory, name = os.path.split(final)
        dfd = self._in_directory(directory, lambda: os.open(directory, os.O_RDONLY | os.O_DIRECTORY))
        fd = -1
        try:
            fd = os.open(".", os.O_TMPFILE | os.O_WRONLY, 0o600, dir_fd=dfd)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
            os.close(dfd)
            if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                self._unnamed = False
                return None
            raise
        return StagedPut(self, key, data, directory, name, fd, dfd)

    def _write_temp(self, final: str, data: bytes | None, source: str | None) -> str:
        directory = os.path.dirname(final)
        fd, tmp = self._in_directory(directory, lambda: tempfile.mkstemp(prefix=".tmp-", dir=directory))
        try:
            try:
                self._write_fd(fd, data, source)
            finally:
                os.close(fd)
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

    def _put_absent(self, key: str, data: bytes | None, source: str | None) -> bool:
        final = self._path(key)
        if self._unnamed:
            created = self._create_unnamed(final, data, source)
            if created is not None:
                return created
        elif os.path.exists(final):  # the link would refuse it anyway; skip writing a copy
            return False
        return self._link_into_place(self._write_temp(final, data, source), final)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self._put_absent(key, data, None)

    def put_file_if_absent(self, key: str, path: str) -> bool:
        return self._put_absent(key, None, path)

    def put_marker(self, key: str) -> bool:
        """An empty file made under its final name, not flushed: there are no bytes to tear, and
        a name lost in a crash only says less (base.Storage.put_marker).  A heartbeat a minute per
        database cost two fsyncs, an unnamed file and a link: 1,000 namespaces, 2 % of a core."""
        final = self._path(key)
        directory = os.path.dirname(final)
        try:
            fd = self._in_directory(directory, lambda: os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            return False
        os.close(fd)
        return True

    def replace_marker(self, old: str | None, key: str) -> None:
        """In the same directory, one rename: a marker is an empty file, so the old one's inode
        under the new name says exactly what a new one would, and ``rename`` is atomic (one name
        or the other, never neither).  Creating a file in one of 1,000 cold directories then
        deleting one cost ~0.4 ms of kernel CPU on ext4, a rename ~0.1 ms, with a heartbeat a
        minute per namespace.  The new name exists already only if a daemon wrote that very
        heartbeat (same microsecond, same txid): replacing one empty file by another changes nothing.
        An old marker gone (retention) makes a new one."""
        if old is not None and old != key and old.rpartition("/")[0] == key.rpartition("/")[0]:
            try:
                os.rename(self._path(old), self._path(key))
                return
            except FileNotFoundError:  # the old marker is gone: a new one
                old = None
        super().replace_marker(old, key)

    def get(self, key: str) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.url}: object {key} not found") from None

    def get_if_present(self, key: str) -> bytes | None:
        """A ``stat`` first: a missing file's costs ~60 % of a failed ``open`` (which allocates a
        file and frees it again) and no Python exception chain (1,000 lease checks a minute)."""
        path = self._path(key)
        try:
            os.stat(path)
        except FileNotFoundError:
            return None
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

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
            self._dirs.discard(directory)
            directory = os.path.dirname(directory)


class StagedPut:
    """A create-only put written but not yet flushed nor named (``LocalStorage.stage_if_absent``)."""

    def __init__(self, store: LocalStorage, key: str, data: bytes, directory: str, name: str, fd: int,
                 dfd: int) -> None:
        self.store, self.key, self.data = store, key, data
        self.directory, self.name = directory, name
        self.fd, self.dfd = fd, dfd  # the unnamed file (flush before link), its directory (after)

    def link(self) -> bool:
        """Name the (flushed) file: True created, False the key exists.  A directory removed
        meanwhile: an ordinary ``put_if_absent``, flushed by itself."""
        try:
            os.link(f"/proc/self/fd/{self.fd}", self.name, dst_dir_fd=self.dfd)  # linkat(AT_SYMLINK_FOLLOW)
        except FileExistsError:
            return False
        except FileNotFoundError:
            self.store._dirs.discard(self.directory)
            return self.store.put_if_absent(self.key, self.data)
        return True

    def close(self) -> None:
        for fd in (self.fd, self.dfd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.dfd = -1
