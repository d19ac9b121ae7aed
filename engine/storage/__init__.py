"""Replica storage: a tiny interface plus one module per backend."""

from __future__ import annotations

import os
from urllib.parse import urlparse

from ..errors import ObjectConflict, ObjectNotFound, StorageError
from .base import ObjectInfo, Storage, put_file_immutable, put_immutable
from .encrypted import EncryptedStorage, check_replica_encryption, protect
from .keys import Keyring, load_keyring
from .local import LocalStorage

__all__ = [
    "EncryptedStorage",
    "Keyring",
    "ObjectConflict",
    "ObjectInfo",
    "ObjectNotFound",
    "Storage",
    "StorageError",
    "check_replica_encryption",
    "load_keyring",
    "open_storage",
    "put_file_immutable",
    "put_immutable",
]


def open_storage(url: str, create: bool = True, read_only: bool = False, keyring: Keyring | None = None) -> Storage:
    """Open a replica by URL: ``file:///abs/path``, a plain path, or ``s3://bucket/prefix``.

    ``create=False`` is for readers (restore, ls): a missing local replica is then an error instead
    of an empty directory silently appearing.  ``read_only=True`` (restores, drills, ``ls``: they
    only LIST and GET) lets an ``s3://`` URL with explicit credentials and region use
    ``s3read.S3Reader``, which does not import boto3 (~0.9 s of CPU saved per process); writes
    through it raise StorageError.  Writers with such a URL get ``s3write.S3Writer`` (no boto3
    either: ~5x less CPU per PUT, ~28 MB less RSS); other URLs get the boto3 backend.

    ``keyring`` (keys.py) encrypts what is written and decrypts what is read (encrypted.py).
    Without one, readers (``create=False`` or ``read_only``) look for the replica's encryption
    marker (one GET) so that an encrypted replica fails with a message about its key instead of
    looking damaged; writers leave that to the daemon's start-up check.
    """
    return protect(_backend(url, create, read_only), keyring, probe=not create or read_only)


def _backend(url: str, create: bool, read_only: bool) -> Storage:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"{url}: file URLs must be absolute (file:///path)")
        return LocalStorage(parsed.path, create=create)
    if parsed.scheme == "s3":
        from .s3read import S3Reader
        from .s3write import S3Writer

        # Without boto3 wherever the credentials and region are explicit (s3read.py, s3write.py).
        store = (S3Reader if read_only else S3Writer).from_url(url)
        if store is not None:
            if not create:
                store.check_bucket()
            return store
    if parsed.scheme == "s3":
        try:
            from .s3 import S3Storage
        except ImportError as exc:  # pragma: no cover - depends on the S3 backend being present
            raise StorageError(f"{url}: S3 support is not available ({exc})") from exc
        return S3Storage.from_url(url, create=create)
    if parsed.scheme in ("", None) or (len(parsed.scheme) == 1 and os.name == "nt"):
        return LocalStorage(url, create=create)
    raise StorageError(f"{url}: unsupported replica URL scheme {parsed.scheme!r} (use file:// or s3://)")
