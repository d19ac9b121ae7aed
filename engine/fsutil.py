"""Durable file operations shared by the spool, the file replica and the restorer."""

from __future__ import annotations

import os


def fsync_dir(path: str) -> None:
    """Make a create/rename/unlink in ``path`` survive a power cut (the entry lives in the directory)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` so a reader sees the old or the new content, never a mix."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))


def private_dir(path: str, tighten: bool = False) -> str:
    """Create ``path`` (and missing parents) accessible to its owner only (0700): state directories
    and the data directory hold database pages, and state.json names the replica.  An existing
    directory keeps its mode unless ``tighten`` (a daemon's own state directory: group and other
    permissions are removed)."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        else:
            os.chmod(path, 0o700)
            return path
    if tighten:
        mode = os.stat(path).st_mode & 0o7777
        if mode & 0o077:
            os.chmod(path, mode & 0o700)
    return path


def private_file(path: str) -> None:
    """Create an empty ``path`` with mode 0600 if it does not exist (SQLite then gives its -wal
    and -shm files the same mode)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
