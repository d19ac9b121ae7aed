"""The daemon's S3 backend without boto3: ``S3Reader``'s LIST and GETs plus PUT, create-only PUT
and DELETE over ``http.client``.

The daemon writes small objects all day (a segment a second, heartbeats, lease renewals).
Through boto3 each PUT cost 2.65 ms of CPU and each DELETE 1.7 ms (botocore's event hooks,
serialisers and parsers), against ~0.5 ms for the same request signed here (measured on SeaweedFS,
20 KB objects, 300 each), and importing boto3 keeps ~28 MB resident for the daemon's lifetime.
At one database that is a few percent of the daemon's CPU; at a thousand sqld namespaces
(issue 12) it is a quarter of a core.

It is used exactly where ``S3Reader`` is (explicit credentials and a region that needs no lookup,
``S3Reader.from_url``); profiles, SSO and instance roles stay boto3's.  Files larger than
``single_put_max`` (base snapshots of large databases) go through boto3's parallel multipart
upload (``s3.S3Storage``, made on first use): once per snapshot, where boto3's cost is noise.
Create-only writes send ``If-None-Match: *``; 412 (and 409, a concurrent conditional write)
answer "exists", exactly as in s3.py, and ``put_immutable`` then compares content.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from ..errors import ObjectNotFound
from .s3common import EXISTS_CODES
from .s3read import _NETWORK_ERRORS, S3Reader, _HTTPError

if TYPE_CHECKING:
    from .s3 import S3Storage


class S3Writer(S3Reader):
    """A read-write ``s3://bucket/prefix`` without boto3 (but for very large files)."""

    single_put_max = 64 << 20  # the same threshold s3.S3Storage uses before going multipart

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._full: S3Storage | None = None
        self._full_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> "S3Writer | None":
        return super().from_url(url)  # type: ignore[return-value]

    def put(self, key: str, data: bytes) -> None:
        self._run("put", key, lambda: self._send("PUT", key, body=data))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        # A first attempt that succeeded but whose answer was lost makes the retry answer 412:
        # False, and put_immutable() finds identical content (as in s3.py).
        def attempt() -> bool:
            try:
                self._send("PUT", key, extra={"If-None-Match": "*"}, body=data)
                return True
            except _HTTPError as exc:
                if exc.status in (409, 412) or exc.code in EXISTS_CODES:
                    return False
                raise

        return self._run("create", key, attempt)

    def put_file_if_absent(self, key: str, path: str) -> bool:
        if os.path.getsize(path) > self.single_put_max:
            return self._boto().put_file_if_absent(key, path)
        with open(path, "rb") as f:
            data = f.read()
        return self.put_if_absent(key, data)

    def delete(self, key: str) -> None:
        try:
            self._run("delete", key, lambda: self._send("DELETE", key))
        except ObjectNotFound:
            return

    def probe(self) -> None:
        """One request, never retried (a LIST of at most one key): is the store answering now?"""
        try:
            self._get(None, {"list-type": "2", "max-keys": "1", "prefix": self.prefix + "lease/"})
        except (_HTTPError, *_NETWORK_ERRORS) as exc:
            self._fail(exc, "probe", None)

    def _boto(self) -> "S3Storage":
        with self._full_lock:
            if self._full is None:
                from .s3 import S3Storage

                self._full = S3Storage.from_url(self._url_with_secrets)
            return self._full

    def close(self) -> None:
        super().close()
        if self._full is not None:
            self._full.close()
