"""S3 (and S3-compatible) replica backend: AWS S3, MinIO, Ceph RGW, R2, SeaweedFS, ...

URL form::

    s3://bucket/optional/prefix?endpoint=http://127.0.0.1:8333&region=us-east-1&path_style=true

Query parameters (all optional):

``endpoint``
    S3 endpoint URL.  Without it boto3 uses ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` or AWS.
``region``
    Signing region; else boto3's chain (``AWS_REGION``, profile, ...), else ``us-east-1``.
``path_style``
    ``true``/``false``.  Defaults to true with a custom endpoint (self-hosted servers rarely have
    wildcard DNS for virtual-hosted buckets), else boto3's automatic choice.
``connect_timeout``, ``read_timeout``, ``max_attempts``
    Socket timeouts in seconds (default 10 / 30) and total attempts per request including the
    first (default 5).  Mostly useful to make "is the server there?" checks fail fast.

Credentials come from boto3's normal chain (environment, profile, instance role).  A URL may also
carry ``ACCESS_KEY:SECRET@`` (percent-encoded: secrets often contain ``/``) before the bucket; it is
stripped from :attr:`S3Storage.url` so it never ends up in messages or logs.  With a custom endpoint and no credentials at all, dummy
credentials are used so an auth-less server (SeaweedFS, a dev MinIO) works out of the box.

Create-only writes use ``If-None-Match: *``, which AWS S3 and most compatible servers implement;
that is what lets two writers (or a retried upload) never overwrite an object.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, NoReturn
from urllib.parse import parse_qs, unquote, urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError as BotoConnectionError,
    NoCredentialsError,
)

from .base import ObjectInfo, ObjectNotFound, Storage, StorageError

MiB = 1 << 20
_QUERY_PARAMS = {"endpoint", "region", "path_style", "connect_timeout", "read_timeout", "max_attempts"}
# Codes meaning "an object already exists under this key" for a create-only write.  409 is what AWS
# answers when a concurrent conditional write to the same key is in flight; treating it as "exists"
# lets put_immutable() fall through to comparing content.
_EXISTS_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
# Ways a server that does not implement If-None-Match on CompleteMultipartUpload says so.
_UNSUPPORTED_CODES = {"NotImplemented", "501", "InvalidArgument", "InvalidRequest"}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _flag(value: str, name: str, url: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise StorageError(f"{url}: {name} must be true or false, not {value!r}")


class S3Storage(Storage):
    """Objects live at ``s3://bucket/<prefix>/<key>``; keys given to and returned by the methods
    are relative to the prefix, exactly like :class:`LocalStorage` keys are relative to its root."""

    # Instance-overridable so tests can exercise the multipart path with small files.
    multipart_threshold: int = 64 * MiB
    part_size: int = 16 * MiB

    def __init__(self, client: Any, bucket: str, prefix: str, url: str) -> None:
        self._client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = url
        self.endpoint = client.meta.endpoint_url
        # Messages name the location without the query string, which only repeats the endpoint.
        self._where = f"s3://{bucket}/{self.prefix}".rstrip("/")

    @classmethod
    def from_url(cls, url: str, create: bool = True) -> "S3Storage":
        """Open ``s3://bucket/prefix?...``.  ``create=False`` (readers) checks the bucket exists.

        Buckets are never created here: that is an account-level decision (region, retention,
        access policy) which a backup tool should not make silently.
        """
        parsed = urlparse(url)
        userinfo, _, bucket = parsed.netloc.rpartition("@")
        safe_url = parsed._replace(netloc=bucket).geturl()
        if not bucket:
            raise StorageError(f"{safe_url}: S3 URL has no bucket (use s3://bucket/prefix)")
        query = {k: v[-1] for k, v in parse_qs(parsed.query, keep_blank_values=True).items()}
        unknown = sorted(set(query) - _QUERY_PARAMS)
        if unknown:
            raise StorageError(
                f"{safe_url}: unknown query parameter(s) {', '.join(unknown)} "
                f"(supported: {', '.join(sorted(_QUERY_PARAMS))})"
            )

        endpoint = query.get("endpoint") or None
        # boto3 reads these env vars itself; we only need to know that a custom endpoint is in use.
        custom_endpoint = bool(
            endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        )
        path_style = _flag(query["path_style"], "path_style", safe_url) if "path_style" in query else None
        if path_style is None:
            addressing = "path" if custom_endpoint else "auto"
        else:
            addressing = "path" if path_style else "virtual"
        try:
            connect_timeout = float(query.get("connect_timeout", 10))
            read_timeout = float(query.get("read_timeout", 30))
            max_attempts = int(query.get("max_attempts", 5))
        except ValueError as exc:
            raise StorageError(f"{safe_url}: bad timeout or attempt count: {exc}") from None

        try:
            session = boto3.session.Session()
            region = query.get("region") or session.region_name or "us-east-1"
            credentials: dict[str, str] = {}
            if userinfo:
                key_id, _, secret = userinfo.partition(":")
                credentials = {"aws_access_key_id": unquote(key_id), "aws_secret_access_key": unquote(secret)}
            elif custom_endpoint and session.get_credentials() is None:
                credentials = {"aws_access_key_id": "walrewind", "aws_secret_access_key": "walrewind"}
        except BotoCoreError as exc:  # e.g. AWS_PROFILE names a profile that does not exist
            raise StorageError(f"{safe_url}: cannot load AWS configuration: {exc}") from exc

        config = Config(
            region_name=region,
            s3={"addressing_style": addressing},
            # "standard" retries transient errors (5xx, throttling, connection resets) with backoff.
            retries={"mode": "standard", "total_max_attempts": max(1, max_attempts)},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=16,
        )
        # endpoint_url=None lets boto3 apply AWS_ENDPOINT_URL*; verify is left alone so that
        # AWS_CA_BUNDLE / the profile's ca_bundle keep working.
        try:
            client = session.client("s3", endpoint_url=endpoint, config=config, **credentials)
        except (BotoCoreError, ValueError) as exc:  # e.g. a malformed endpoint URL
            raise StorageError(f"{safe_url}: cannot configure S3 client: {exc}") from exc
        store = cls(client, bucket, parsed.path, safe_url)
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

    def _fail(self, exc: Exception, action: str, key: str | None = None) -> NoReturn:
        """Turn a botocore exception into a StorageError that says where and why."""
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
        elif isinstance(exc, BotoConnectionError):
            reason = f"cannot reach endpoint {self.endpoint}: {exc}"
        else:
            reason = f"{type(exc).__name__}: {exc}"
        raise StorageError(f"{where}: {action} failed: {reason}") from exc

    def _check_bucket(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _status(exc) == 404 or _code(exc) in ("NoSuchBucket", "404", "NotFound"):
                raise StorageError(f"{self._where}: bucket '{self.bucket}' does not exist") from exc
            self._fail(exc, "checking bucket")
        except BotoCoreError as exc:
            self._fail(exc, "checking bucket")

    def _exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if _status(exc) == 404 or _code(exc) in _NOT_FOUND_CODES:
                return False
            self._fail(exc, "checking", key)
        except BotoCoreError as exc:
            self._fail(exc, "checking", key)

    # -- Storage interface -------------------------------------------------------------------

    def put(self, key: str, data: bytes) -> None:
        try:
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except (ClientError, BotoCoreError) as exc:
            self._fail(exc, "put", key)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        # If a first attempt succeeded but its answer was lost, botocore's retry gets 412 and we
        # return False; put_immutable() then finds identical content, so the retry is harmless.
        return self._put_conditional(key, data)

    def _put_conditional(self, key: str, body: Any) -> bool:
        try:
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=body, IfNoneMatch="*")
            return True
        except ClientError as exc:
            if _code(exc) in _EXISTS_CODES or _status(exc) in (409, 412):
                return False
            self._fail(exc, "create", key)
        except BotoCoreError as exc:
            self._fail(exc, "create", key)

    def put_file_if_absent(self, key: str, path: str) -> bool:
        size = os.path.getsize(path)
        if size <= self.multipart_threshold:
            with open(path, "rb") as f:  # a seekable file: botocore streams it and can rewind to retry
                return self._put_conditional(key, f)
        # Cheap check first so an existing large object is not uploaded again just to be refused.
        if self._exists(key):
            return False
        return self._multipart_if_absent(key, path, size)

    def _multipart_if_absent(self, key: str, path: str, size: int) -> bool:
        full_key = self._key(key)
        # S3 allows at most 10,000 parts; grow the part size for very large files.
        part_size = max(self.part_size, -(-size // 10_000))
        try:
            upload_id = self._client.create_multipart_upload(Bucket=self.bucket, Key=full_key)["UploadId"]
        except (ClientError, BotoCoreError) as exc:
            self._fail(exc, "starting multipart upload of", key)
        try:
            parts = []
            with open(path, "rb") as f:
                number = 1
                while chunk := f.read(part_size):
                    etag = self._client.upload_part(
                        Bucket=self.bucket, Key=full_key, UploadId=upload_id, PartNumber=number, Body=chunk
                    )["ETag"]
                    parts.append({"PartNumber": number, "ETag": etag})
                    number += 1
            complete = dict(
                Bucket=self.bucket, Key=full_key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
            try:
                self._client.complete_multipart_upload(**complete, IfNoneMatch="*")
                return True
            except ClientError as exc:
                if _code(exc) in _EXISTS_CODES or _status(exc) in (409, 412):
                    self._abort(full_key, upload_id)
                    return False
                # A retried complete whose first attempt succeeded finds the upload gone.  False
                # ("something exists") is safe: put_file_immutable() then compares the content.
                if _code(exc) == "NoSuchUpload" and self._exists(key):
                    return False
                if not (_code(exc) in _UNSUPPORTED_CODES or _status(exc) == 501):
                    raise
            # The server refuses conditional completes, so fall back to check-then-complete.
            # Small race: a concurrent writer that creates the key between our HEAD and our
            # complete is overwritten (last complete wins) instead of detected.  Accepted because
            # the window is one round trip, a replica normally has a single writer, and only
            # servers without conditional multipart completes take this path.
            if self._exists(key):
                self._abort(full_key, upload_id)
                return False
            self._client.complete_multipart_upload(**complete)
            return True
        except BaseException as exc:
            self._abort(full_key, upload_id)
            if isinstance(exc, (ClientError, BotoCoreError)):
                self._fail(exc, "multipart upload of", key)
            raise

    def _abort(self, full_key: str, upload_id: str) -> None:
        """Best effort: an orphaned upload only costs storage until a lifecycle rule removes it."""
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=full_key, UploadId=upload_id)
        except (ClientError, BotoCoreError):
            pass

    def get(self, key: str) -> bytes:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            return response["Body"].read()
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404", "NotFound"):
                raise ObjectNotFound(f"{self._key_url(key)}: object {key} not found") from None
            self._fail(exc, "get", key)
        except BotoCoreError as exc:
            self._fail(exc, "get", key)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        # Collected and sorted rather than streamed: S3 promises UTF-8 binary order, but some
        # compatible servers (SeaweedFS) list directory-by-directory, e.g. "a/b" before "a-c".
        found: list[ObjectInfo] = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix
            )
            for page in pages:
                for obj in page.get("Contents", ()):
                    found.append(ObjectInfo(obj["Key"][len(self.prefix):], int(obj["Size"])))
        except (ClientError, BotoCoreError) as exc:
            self._fail(exc, f"list of {prefix!r}")
        found.sort(key=lambda o: o.key)
        yield from found

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND_CODES:
                return
            self._fail(exc, "delete", key)
        except BotoCoreError as exc:
            self._fail(exc, "delete", key)

    def close(self) -> None:
        self._client.close()
