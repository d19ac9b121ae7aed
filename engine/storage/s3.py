"""S3 (and S3-compatible) replica backend: AWS S3, MinIO, Ceph RGW, R2, SeaweedFS, ...

The URL grammar (bucket, prefix, ``endpoint``, ``region``, ``path_style``, timeouts) is
documented and parsed in s3common.py, shared with the read-only backend (s3read.py).

Credentials come from boto3's normal chain (environment, profile, instance role).  A URL may also
carry ``ACCESS_KEY:SECRET@`` (percent-encoded: secrets often contain ``/``) before the bucket; it is
stripped from :attr:`S3Storage.url` so it never ends up in messages or logs.  With a custom endpoint and no credentials at all, dummy
credentials are used so an auth-less server (SeaweedFS, a dev MinIO) works out of the box.

Create-only writes use ``If-None-Match: *``, which AWS S3 and most compatible servers implement;
that is what lets two writers (or a retried upload) never overwrite an object.

Retries are ours, not botocore's (botocore is configured for a single attempt): every HTTP request
is repeated with exponential backoff and jitter (``retry.RetryPolicy``) when it failed transiently
-- 5xx (except 501), 408, 429, throttling codes, connect/read timeouts, connection resets, and
bodies shorter than their Content-Length -- so that one policy covers whole-object requests,
multipart parts and ranged GETs alike.  A retried create-only write that finds the object already
there answers "exists" and ``put_immutable`` compares content, so a lost answer never duplicates
or overwrites anything.

Large files are uploaded as multipart uploads with parts sent in parallel (bounded: at most
``upload_workers`` parts in memory); large downloads (``get_to_file``) use parallel ranged GETs
pinned to the first response's ETag (at most ``download_workers`` ranges in memory).  Every HTTP
request is counted per operation in :attr:`S3Storage.requests` (request-economy measurements).
"""

from __future__ import annotations

import collections
import http.client
import os
import re
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, Callable, Iterator, NoReturn, TypeVar

import boto3
import urllib3.exceptions
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from botocore.parsers import ResponseParserError

from ..errors import ObjectNotFound, StorageError, StoreUnreachable, WalrewindError
from . import retry
from .base import ObjectInfo, Storage
from .s3common import EXISTS_CODES, NOT_FOUND_CODES, TRANSIENT_CODES, S3Url

T = TypeVar("T")
MiB = 1 << 20
# Ways a server that does not implement If-None-Match on CompleteMultipartUpload says so.
_UNSUPPORTED_CODES = {"NotImplemented", "501", "InvalidArgument", "InvalidRequest"}
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class TruncatedBody(WalrewindError):
    """A response body ended before the length the server announced (a transient failure)."""

    def __init__(self, got: int, expected: int) -> None:
        super().__init__(f"response body truncated: got {got} of {expected} bytes")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _is_not_found(exc: ClientError) -> bool:
    return _code(exc) in NOT_FOUND_CODES or (_status(exc) == 404 and _code(exc) != "NoSuchBucket")


def _exists_answer(exc: ClientError) -> bool:
    return _code(exc) in EXISTS_CODES or _status(exc) in (409, 412)


# Failures below the HTTP layer that may succeed when repeated: timeouts, resets, refused or
# dropped connections, bodies cut short, a response that cannot be parsed because it was cut.
_NETWORK_ERRORS = (
    BotoConnectionError,
    HTTPClientError,
    IncompleteReadError,
    ResponseParserError,
    TruncatedBody,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    ConnectionError,  # the builtin: ConnectionResetError, BrokenPipeError, ...
    TimeoutError,
)


def transient(exc: BaseException) -> bool:
    """Whether repeating the request may succeed (see the module docstring)."""
    if isinstance(exc, ClientError):
        status = _status(exc)
        return status in (408, 429) or (status >= 500 and status != 501) or _code(exc) in TRANSIENT_CODES
    return isinstance(exc, _NETWORK_ERRORS)


def _read_body(resp: dict) -> bytes:
    body = resp["Body"].read()
    expected = resp.get("ContentLength")
    if expected is not None and len(body) != expected:
        raise TruncatedBody(len(body), expected)
    return body


class S3Storage(Storage):
    """Objects live at ``s3://bucket/<prefix>/<key>``; keys given to and returned by the methods
    are relative to the prefix, exactly like :class:`LocalStorage` keys are relative to its root."""

    # Instance-overridable so tests can exercise the multipart and ranged paths with small files.
    multipart_threshold: int = 64 * MiB
    part_size: int = 16 * MiB
    upload_workers: int = 4
    range_chunk: int = 8 * MiB
    download_workers: int = 8

    def __init__(self, client: Any, bucket: str, prefix: str, url: str, policy: retry.RetryPolicy | None = None) -> None:
        self._client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = url
        self.endpoint = client.meta.endpoint_url
        # Messages name the location without the query string, which only repeats the endpoint.
        self._where = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.retry = policy or retry.RetryPolicy()
        self.retry_stats = retry.RetryStats()
        self.requests: collections.Counter[str] = collections.Counter()
        self._count_lock = threading.Lock()
        client.meta.events.register("before-send.s3", self._count_request)

    def _count_request(self, **kwargs: Any) -> None:
        """botocore hook, once per HTTP request actually sent (every attempt counts)."""
        operation = str(kwargs.get("event_name", "")).rsplit(".", 1)[-1] or "unknown"
        with self._count_lock:
            self.requests[operation] += 1

    def request_counts(self) -> dict[str, int]:
        with self._count_lock:
            return dict(self.requests)

    @classmethod
    def from_url(cls, url: str, create: bool = True) -> "S3Storage":
        """Open ``s3://bucket/prefix?...``.  ``create=False`` (readers) checks the bucket exists.

        Buckets are never created here: that is an account-level decision (region, retention,
        access policy) which a backup tool should not make silently.
        """
        u = S3Url.parse(url)
        safe_url = u.safe_url
        endpoint = u.endpoint
        # boto3 reads these env vars itself; we only need to know that a custom endpoint is in use.
        custom_endpoint = bool(
            endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        )
        if u.path_style is None:
            addressing = "path" if custom_endpoint else "auto"
        else:
            addressing = "path" if u.path_style else "virtual"

        try:
            session = boto3.session.Session()
            region = u.region or session.region_name or "us-east-1"
            credentials: dict[str, str] = {}
            if u.access_key is not None:
                credentials = {"aws_access_key_id": u.access_key, "aws_secret_access_key": u.secret_key or ""}
            elif custom_endpoint and session.get_credentials() is None:
                credentials = {"aws_access_key_id": "walrewind", "aws_secret_access_key": "walrewind"}
        except BotoCoreError as exc:  # e.g. AWS_PROFILE names a profile that does not exist
            raise StorageError(f"{safe_url}: cannot load AWS configuration: {exc}") from exc

        config = Config(
            region_name=region,
            s3={"addressing_style": addressing},
            # One attempt per call: retries (with backoff and jitter) are done by this module, per
            # request, so multipart parts and ranged GETs are retried individually.
            retries={"mode": "standard", "total_max_attempts": 1},
            connect_timeout=u.connect_timeout,
            read_timeout=u.read_timeout,
            max_pool_connections=16,
        )
        # endpoint_url=None lets boto3 apply AWS_ENDPOINT_URL*; verify is left alone so that
        # AWS_CA_BUNDLE / the profile's ca_bundle keep working.
        try:
            client = session.client("s3", endpoint_url=endpoint, config=config, **credentials)
        except (BotoCoreError, ValueError) as exc:  # e.g. a malformed endpoint URL
            raise StorageError(f"{safe_url}: cannot configure S3 client: {exc}") from exc
        store = cls(client, u.bucket, u.prefix, safe_url, retry.RetryPolicy(attempts=u.max_attempts))
        if not create:
            store._check_bucket()
        return store

    # -- helpers -----------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        if not key or key.startswith("/"):
            raise ValueError(f"invalid object key {key!r}")
        return self.prefix + key

    def _key_url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def _fail(self, exc: BaseException, action: str, key: str | None = None) -> NoReturn:
        """Turn a botocore / network exception into a StorageError that says where and why."""
        where = self._key_url(key) if key is not None else self._where
        if isinstance(exc, ClientError):
            code, status = _code(exc), _status(exc)
            if code == "NoSuchBucket":
                reason = f"bucket '{self.bucket}' does not exist"
            elif code in ("AccessDenied", "403", "Forbidden"):
                reason = f"access denied ({code}); check credentials and bucket policy"
            else:
                message = exc.response.get("Error", {}).get("Message") or "no message"
                reason = f"server answered {status} {code}: {message}"
        elif isinstance(exc, NoCredentialsError):
            reason = "no S3 credentials found (environment, profile or instance role)"
        elif isinstance(exc, (BotoConnectionError, ConnectionRefusedError)):
            reason = f"cannot reach endpoint {self.endpoint}: {exc}"
        else:
            reason = f"{type(exc).__name__}: {exc}"
        if transient(exc) and self.retry.attempts > 1:
            reason += f" (after {self.retry.attempts} attempts)"
        kind = StoreUnreachable if transient(exc) else StorageError
        raise kind(f"{where}: {action} failed: {reason}") from exc

    def _run(self, action: str, key: str | None, fn: Callable[[], T]) -> T:
        """One logical request: ``fn`` retried while it fails transiently, then errors translated.

        A missing key becomes ObjectNotFound (never retried); everything else a StorageError
        naming the key, the action and the server's answer.
        """
        try:
            return retry.call(fn, self.retry, transient, self.retry_stats)
        except ClientError as exc:
            if key is not None and _is_not_found(exc):
                raise ObjectNotFound(f"{self._key_url(key)}: object {key} not found") from None
            self._fail(exc, action, key)
        except (BotoCoreError, *_NETWORK_ERRORS) as exc:
            self._fail(exc, action, key)

    def _check_bucket(self) -> None:
        def head() -> None:
            try:
                self._client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if _status(exc) == 404 or _code(exc) in ("NoSuchBucket", "404", "NotFound"):
                    raise StorageError(f"{self._where}: bucket '{self.bucket}' does not exist") from exc
                raise

        self._run("checking bucket", None, head)

    def _exists(self, key: str) -> bool:
        try:
            self._run("checking", key, lambda: self._client.head_object(Bucket=self.bucket, Key=self._key(key)))
            return True
        except ObjectNotFound:
            return False

    # -- Storage interface -------------------------------------------------------------------

    def put(self, key: str, data: bytes) -> None:
        self._run("put", key, lambda: self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        # If a first attempt succeeded but its answer was lost, the retry gets 412 and we return
        # False; put_immutable() then finds identical content, so the retry is harmless.
        return self._put_conditional(key, lambda: data)

    def _put_conditional(self, key: str, body: Callable[[], Any]) -> bool:
        def attempt() -> bool:
            payload = body()
            try:
                self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=payload, IfNoneMatch="*")
                return True
            except ClientError as exc:
                if _exists_answer(exc):
                    return False
                raise
            finally:
                if hasattr(payload, "close"):
                    payload.close()

        return self._run("create", key, attempt)

    def put_file_if_absent(self, key: str, path: str) -> bool:
        size = os.path.getsize(path)
        if size <= self.multipart_threshold:
            # A fresh file object per attempt: botocore streams it, and a retry starts over.
            return self._put_conditional(key, lambda: open(path, "rb"))
        # Cheap check first so an existing large object is not uploaded again just to be refused.
        if self._exists(key):
            return False
        return self._multipart_if_absent(key, path, size)

    def _multipart_if_absent(self, key: str, path: str, size: int) -> bool:
        full_key = self._key(key)
        # S3 allows at most 10,000 parts; grow the part size for very large files.
        part_size = max(self.part_size, -(-size // 10_000))
        count = -(-size // part_size)
        upload_id = self._run(
            "starting multipart upload of", key,
            lambda: self._client.create_multipart_upload(Bucket=self.bucket, Key=full_key)["UploadId"],
        )
        try:
            fd = os.open(path, os.O_RDONLY)
            try:

                def upload(number: int) -> dict:
                    # Read inside the task: at most upload_workers parts are in memory at once.
                    chunk = os.pread(fd, part_size, (number - 1) * part_size)
                    etag = self._run(
                        f"multipart upload (part {number} of {count}) of", key,
                        lambda: self._client.upload_part(
                            Bucket=self.bucket, Key=full_key, UploadId=upload_id, PartNumber=number, Body=chunk
                        )["ETag"],
                    )
                    return {"PartNumber": number, "ETag": etag}

                parts = self._parallel(upload, range(1, count + 1), self.upload_workers)
            finally:
                os.close(fd)
            complete = dict(
                Bucket=self.bucket, Key=full_key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )

            def conditional_complete() -> bool | None:
                try:
                    self._client.complete_multipart_upload(**complete, IfNoneMatch="*")
                    return True
                except ClientError as exc:
                    if _exists_answer(exc):
                        return False
                    # A retried complete whose first attempt succeeded finds the upload gone.
                    # False ("something exists") is safe: put_file_immutable() compares content.
                    if _code(exc) == "NoSuchUpload" and self._exists(key):
                        return False
                    if _code(exc) in _UNSUPPORTED_CODES or _status(exc) == 501:
                        return None
                    raise

            done = self._run("completing multipart upload of", key, conditional_complete)
            if done is not None:
                if done is False:
                    self._abort(full_key, upload_id)
                return done
            # The server refuses conditional completes, so fall back to check-then-complete.
            # Small race: a concurrent writer that creates the key between our HEAD and our
            # complete is overwritten (last complete wins) instead of detected.  Accepted because
            # the window is one round trip, a replica normally has a single writer (the lease in
            # engine/replica/lease.py fences daemons), and only servers without conditional multipart
            # completes take this path.
            if self._exists(key):
                self._abort(full_key, upload_id)
                return False
            self._run("completing multipart upload of", key, lambda: self._client.complete_multipart_upload(**complete))
            return True
        except BaseException:
            self._abort(full_key, upload_id)
            raise

    def _abort(self, full_key: str, upload_id: str) -> None:
        """Best effort: an orphaned upload only costs storage until a lifecycle rule removes it."""
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=full_key, UploadId=upload_id)
        except (ClientError, BotoCoreError, *_NETWORK_ERRORS):
            pass

    @staticmethod
    def _parallel(task: Callable[[Any], T], items, workers: int) -> list[T]:
        """Run ``task`` over ``items`` on up to ``workers`` threads, results in order; the first
        failure cancels what has not started and is re-raised."""
        items = list(items)
        if len(items) <= 1 or workers <= 1:
            return [task(i) for i in items]
        with ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="walrewind-s3") as pool:
            futures = [pool.submit(task, i) for i in items]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in futures if f.done() and f.exception() is not None), None)
            if failed is not None:
                for f in futures:
                    f.cancel()
                wait(futures)
                raise failed.exception()  # type: ignore[misc]
            return [f.result() for f in futures]

    def get(self, key: str) -> bytes:
        return self._run(
            "get", key, lambda: _read_body(self._client.get_object(Bucket=self.bucket, Key=self._key(key)))
        )

    def _get_range(self, key: str, start: int, length: int, etag: str | None = None) -> tuple[bytes, int | None, str | None]:
        """(bytes, total object size, ETag) for one ranged GET; the body is checked for length."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key), "Range": f"bytes={start}-{start + length - 1}"}
        if etag:
            kwargs["IfMatch"] = etag

        def attempt() -> tuple[bytes, int | None, str | None]:
            try:
                resp = self._client.get_object(**kwargs)
            except ClientError as exc:
                if _code(exc) == "InvalidRange" or _status(exc) == 416:
                    return b"", None, None  # start is at or past the end of the object
                raise
            body = _read_body(resp)
            m = _CONTENT_RANGE.fullmatch(str(resp.get("ContentRange") or ""))
            if m is None:  # the server ignored Range and sent the whole object
                return body[start : start + length], len(body), resp.get("ETag")
            total = int(m.group(3)) if m.group(3) != "*" else None
            expected = length if total is None else max(0, min(length, total - start))
            if len(body) != expected:
                raise TruncatedBody(len(body), expected)
            return body, total, resp.get("ETag")

        return self._run("get (range) of", key, attempt)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        return self._get_range(key, start, length)[0]

    def get_to_file(self, key: str, path: str) -> int:
        """Parallel ranged GETs (``range_chunk`` each, ``download_workers`` at a time) into ``path``.

        Every range after the first is conditional on the first response's ETag, so an object
        replaced mid-download (never by walrewind: objects are immutable) fails instead of mixing.
        """
        chunk = self.range_chunk
        first, total, etag = self._get_range(key, 0, chunk)
        if total is None:  # empty object (416 on a range) or no size announced
            first = self.get(key)
            total = len(first)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.pwrite(fd, first, 0)
            if total > len(first):
                os.ftruncate(fd, total)

                def fetch(offset: int) -> None:
                    want = min(chunk, total - offset)
                    data, _total, _etag = self._get_range(key, offset, want, etag)
                    if len(data) != want:
                        raise StorageError(
                            f"{self._key_url(key)}: get (range) failed: object is shorter than its announced {total} bytes"
                        )
                    os.pwrite(fd, data, offset)

                self._parallel(fetch, range(len(first), total, chunk), self.download_workers)
        finally:
            os.close(fd)
        return total

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        # Collected and sorted rather than streamed: S3 promises UTF-8 binary order, but some
        # compatible servers (SeaweedFS) list directory-by-directory, e.g. "a/b" before "a-c".
        def attempt() -> list[ObjectInfo]:
            found: list[ObjectInfo] = []
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix
            )
            for page in pages:
                for obj in page.get("Contents", ()):
                    found.append(ObjectInfo(obj["Key"][len(self.prefix):], int(obj["Size"])))
            return found

        found = self._run(f"list of {prefix!r}", None, attempt)
        found.sort(key=lambda o: o.key)
        yield from found

    def probe(self) -> None:
        """One request, never retried (a LIST of at most one key): is the store answering now?"""
        try:
            self._client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix + "lease/", MaxKeys=1)
        except (ClientError, BotoCoreError, *_NETWORK_ERRORS) as exc:
            self._fail(exc, "probe")

    def delete(self, key: str) -> None:
        try:
            self._run("delete", key, lambda: self._client.delete_object(Bucket=self.bucket, Key=self._key(key)))
        except ObjectNotFound:
            return

    def close(self) -> None:
        self._client.close()
