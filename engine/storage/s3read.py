"""A read-only S3 backend without boto3, for restores that must start in milliseconds.

Importing boto3 and building one S3 client costs ~0.9 s of CPU on a small box (botocore loads
and parses its service models), more than a whole restore of a small database.  A restore only
needs LIST, GET and ranged GET, so this backend speaks exactly those over ``http.client`` with
AWS Signature V4, one keep-alive connection per thread, and the same retry policy and messages as
``s3.S3Storage`` (``retry.py``: 5xx except 501, 408, 429, throttling codes, resets, timeouts,
short bodies).

It is used only when it can do exactly what boto3 would (``S3Reader.from_url`` returns None
otherwise and the caller falls back to ``S3Storage``): credentials given explicitly (in the URL,
or ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` with no ``AWS_PROFILE`` overriding them), and a
region that needs no lookup (``?region=``, ``AWS_REGION``/``AWS_DEFAULT_REGION``, or a custom
endpoint without an AWS config file, where boto3 would say us-east-1 too).  Profiles, SSO,
instance roles and AWS's cross-region redirects stay boto3's job.  Writes raise StorageError.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import hmac
import http.client
import os
import threading
from typing import TYPE_CHECKING, Callable, Iterator, NoReturn, TypeVar
from urllib.parse import quote, urlparse

from ..errors import ObjectNotFound, StorageError, StoreUnreachable, WalrewindError
from . import retry
from .base import ObjectInfo, Storage
from .s3common import NOT_FOUND_CODES, TRANSIENT_CODES, S3Url

if TYPE_CHECKING:
    import ssl

T = TypeVar("T")
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_OPERATIONS = {"GET": "GetObject", "PUT": "PutObject", "DELETE": "DeleteObject"}
_NETWORK_ERRORS = (OSError, http.client.HTTPException)  # resets, refusals, timeouts, short bodies


class _HTTPError(WalrewindError):
    """A non-2xx answer (internal: turned into ObjectNotFound / StorageError by ``_run``)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"server answered {status} {code}: {message or 'no message'}")
        self.status, self.code = status, code


def transient(exc: BaseException) -> bool:
    if isinstance(exc, _HTTPError):
        return exc.status in (408, 429) or (exc.status >= 500 and exc.status != 501) or exc.code in TRANSIENT_CODES
    if type(exc).__name__ == "SSLCertVerificationError":
        return False  # a certificate that does not verify will not verify on the next try either
    return isinstance(exc, _NETWORK_ERRORS)


def _credentials(u: S3Url) -> tuple[str, str, str | None] | None:
    if u.access_key is not None:
        return u.access_key, u.secret_key or "", None
    if os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE"):
        return None  # boto3 would prefer the profile over the environment's keys
    key_id, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key_id and secret:
        return key_id, secret, os.environ.get("AWS_SESSION_TOKEN") or None
    return None


def _aws_config_exists() -> bool:
    path = os.environ.get("AWS_CONFIG_FILE") or os.path.join(os.path.expanduser("~"), ".aws", "config")
    return os.path.exists(path)


class S3Reader(Storage):
    """LIST / GET / ranged GET of ``s3://bucket/prefix`` (keys relative to the prefix)."""

    range_chunk = 8 << 20
    download_workers = 8

    def __init__(self, bucket: str, prefix: str, url: str, endpoint: str, region: str, path_style: bool,
                 creds: tuple[str, str, str | None], connect_timeout: float, read_timeout: float,
                 attempts: int) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = url
        self.endpoint = endpoint
        self.region = region
        self._where = f"s3://{bucket}/{self.prefix}".rstrip("/")
        parsed = urlparse(endpoint)
        self._https = parsed.scheme == "https"
        host = parsed.hostname or ""
        self._port = parsed.port or (443 if self._https else 80)
        self._base = parsed.path.rstrip("/")
        self._path_style = path_style
        self._host = host if path_style else f"{bucket}.{host}"
        default_port = self._port == (443 if self._https else 80)
        self._host_header = self._host if default_port else f"{self._host}:{self._port}"
        self._creds = creds
        self._timeouts = (connect_timeout, read_timeout)
        self.retry = retry.RetryPolicy(attempts=max(1, attempts))
        self.retry_stats = retry.RetryStats()
        self._local = threading.local()
        self._ssl: ssl.SSLContext | None = None
        self._url_with_secrets = url
        # HTTP requests sent per operation, every attempt counted, named as boto3 names them
        # (S3Storage.requests): request-economy measurements read either backend the same way.
        self.requests: collections.Counter[str] = collections.Counter()
        self._count_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> "S3Reader | None":
        """The reader for ``url``, or None when only boto3 can resolve its credentials or region."""
        try:
            u = S3Url.parse(url)
        except StorageError:
            return None  # S3Storage gives the precise error
        creds = _credentials(u)
        endpoint = u.endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = u.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if creds is None or (endpoint and urlparse(endpoint).scheme not in ("http", "https")):
            return None
        if region is None:
            if not endpoint or _aws_config_exists():
                return None
            region = "us-east-1"
        path_style = u.path_style if u.path_style is not None else bool(endpoint)
        if not path_style and "." in u.bucket:
            return None
        bucket, safe_url = u.bucket, u.safe_url
        connect_timeout, read_timeout, attempts = u.connect_timeout, u.read_timeout, u.max_attempts
        endpoint = endpoint or f"https://s3.{region}.amazonaws.com"
        store = cls(bucket, u.prefix, safe_url, endpoint, region, path_style, creds, connect_timeout,
                    read_timeout, attempts)
        store._url_with_secrets = url  # only ever handed to S3Storage.from_url (s3write.py), never shown
        return store

    # ------------------------------------------------------------------------------ HTTP
    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._https:
                import ssl  # only for https endpoints: ~10 ms to import

                if self._ssl is None:
                    self._ssl = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE") or None)
                conn = http.client.HTTPSConnection(self._host, self._port, timeout=self._timeouts[0], context=self._ssl)
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeouts[0])
            conn.connect()
            conn.sock.settimeout(self._timeouts[1])
            self._local.conn = conn
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def _sign(self, path: str, query: str, extra: dict[str, str] | None = None,
              now: datetime.datetime | None = None, method: str = "GET",
              payload_sha256: str = _EMPTY_SHA256) -> dict[str, str]:
        """AWS Signature V4 headers for ``method path?query`` (both already URI-encoded) with a
        body whose SHA-256 is ``payload_sha256``; ``extra`` headers (Range, If-None-Match) are
        sent and signed too."""
        key_id, secret, token = self._creds
        now = now or datetime.datetime.now(datetime.timezone.utc)
        amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        headers = {"host": self._host_header, "x-amz-content-sha256": payload_sha256, "x-amz-date": amz_date}
        headers.update({k.lower(): v.strip() for k, v in (extra or {}).items()})
        if token:
            headers["x-amz-security-token"] = token
        names = sorted(headers)
        canonical = "\n".join([method, path, query, *(f"{n}:{headers[n]}" for n in names), "", ";".join(names),
                               payload_sha256])
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        k = hmac.new(("AWS4" + secret).encode(), day.encode(), hashlib.sha256).digest()
        for part in (self.region, "s3", "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={key_id}/{scope},"
                                    f"SignedHeaders={';'.join(names)},Signature={signature}")
        return headers

    def _target(self, key: str | None, params: dict[str, str] | None) -> tuple[str, str]:
        """(canonical URI path, canonical query string) of a GET of ``key`` (the bucket if None)."""
        path = self._base + ("/" + self.bucket if self._path_style else "")
        path += "/" + quote(self.prefix + key, safe="/~") if key is not None else "/"
        query = "&".join(f"{quote(k, safe='~')}={quote(v, safe='~')}" for k, v in sorted((params or {}).items()))
        return path, query

    def _get(self, key: str | None, params: dict[str, str] | None = None,
             extra: dict[str, str] | None = None) -> tuple[int, http.client.HTTPResponse, bytes]:
        """One GET attempt (of the bucket when ``key`` is None); raises _HTTPError on >= 300."""
        return self._send("GET", key, params, extra)

    def _send(self, method: str, key: str | None, params: dict[str, str] | None = None,
              extra: dict[str, str] | None = None, body: bytes = b"") -> tuple[int, http.client.HTTPResponse, bytes]:
        """One request attempt; raises _HTTPError on >= 300 (but 416: an empty range)."""
        path, query = self._target(key, params)
        headers = self._sign(path, query, extra, method=method,
                             payload_sha256=hashlib.sha256(body).hexdigest() if body else _EMPTY_SHA256)
        operation = _OPERATIONS[method] if key is not None else "ListObjectsV2"
        with self._count_lock:
            self.requests[operation] += 1
        conn = self._conn()
        try:
            conn.request(method, path + ("?" + query if query else ""), body=body or None, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
        except BaseException:
            self._drop()
            raise
        if (resp.getheader("Connection") or "").lower() == "close":
            self._drop()
        if resp.status >= 300 and resp.status != 416:
            code, message = _error_fields(body)
            raise _HTTPError(resp.status, code or str(resp.status), message)
        return resp.status, resp, body

    def _run(self, action: str, key: str | None, fn: Callable[[], T]) -> T:
        try:
            return retry.call(fn, self.retry, transient, self.retry_stats)
        except _HTTPError as exc:
            if exc.code == "NoSuchBucket":
                raise StorageError(f"{self._where}: {action} failed: bucket '{self.bucket}' does not exist") from None
            if key is not None and (exc.code in NOT_FOUND_CODES or exc.status == 404):
                raise ObjectNotFound(f"{self._key_url(key)}: object {key} not found") from None
            self._fail(exc, action, key)
        except _NETWORK_ERRORS as exc:
            self._fail(exc, action, key)

    def _fail(self, exc: BaseException, action: str, key: str | None) -> NoReturn:
        where = self._key_url(key) if key is not None else self._where
        if isinstance(exc, _HTTPError) and exc.status == 403:
            reason = f"access denied ({exc.code}); check credentials and bucket policy"
        elif isinstance(exc, (ConnectionRefusedError, OSError)) and not isinstance(exc, TimeoutError):
            reason = f"cannot reach endpoint {self.endpoint}: {exc}"
        else:
            reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, _HTTPError) else str(exc)
        if transient(exc) and self.retry.attempts > 1:
            reason += f" (after {self.retry.attempts} attempts)"
        kind = StoreUnreachable if transient(exc) else StorageError  # the daemon spools on the former
        raise kind(f"{where}: {action} failed: {reason}") from exc

    def _key_url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def request_counts(self) -> dict[str, int]:
        with self._count_lock:
            return dict(self.requests)

    def check_bucket(self) -> None:
        """What ``S3Storage.from_url(create=False)`` checks: the bucket exists and answers."""
        self._run("checking bucket", None, lambda: self._get(None, {"list-type": "2", "max-keys": "1",
                                                                     "prefix": self.prefix}))

    # ------------------------------------------------------------------------------ reads
    def get(self, key: str) -> bytes:
        return self._run("get", key, lambda: self._get(key)[2])

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""

        def attempt() -> bytes:
            status, resp, body = self._get(key, extra={"Range": f"bytes={start}-{start + length - 1}"})
            if status == 416:
                return b""  # start is at or past the end of the object
            if status == 200:  # the server ignored Range
                return body[start : start + length]
            return body

        return self._run("get (range) of", key, attempt)

    def get_to_file(self, key: str, path: str) -> int:
        from concurrent.futures import ThreadPoolExecutor

        first = self.get_range(key, 0, self.range_chunk)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.pwrite(fd, first, 0)
            if len(first) == self.range_chunk:
                offsets = iter(range(self.range_chunk, 1 << 62, self.range_chunk))
                lock, done = threading.Lock(), [False]

                def worker() -> None:
                    while True:
                        with lock:
                            if done[0]:
                                return
                            offset = next(offsets)
                        data = self.get_range(key, offset, self.range_chunk)
                        if data:
                            os.pwrite(fd, data, offset)
                        if len(data) < self.range_chunk:
                            with lock:
                                done[0] = True

                with ThreadPoolExecutor(self.download_workers, thread_name_prefix="walrewind-s3read") as pool:
                    for future in [pool.submit(worker) for _ in range(self.download_workers)]:
                        future.result()
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        from xml.etree import ElementTree

        def attempt() -> list[ObjectInfo]:
            found: list[ObjectInfo] = []
            params = {"list-type": "2", "prefix": self.prefix + prefix}
            while True:
                root = ElementTree.fromstring(self._get(None, params)[2])
                ns = _NS if root.tag.startswith(_NS) else ""
                for item in root.iter(f"{ns}Contents"):
                    found.append(ObjectInfo(item.findtext(f"{ns}Key", "")[len(self.prefix):],
                                            int(item.findtext(f"{ns}Size", "0"))))
                token = root.findtext(f"{ns}NextContinuationToken")
                if root.findtext(f"{ns}IsTruncated", "false").lower() != "true" or not token:
                    return found
                params["continuation-token"] = token

        found = self._run(f"list of {prefix!r}", None, attempt)
        found.sort(key=lambda o: o.key)
        yield from found

    # ------------------------------------------------------------------------------ no writes
    def _read_only(self, key: str) -> NoReturn:
        raise StorageError(f"{self._key_url(key)}: this replica was opened read-only (a restore); "
                           "writing needs the full S3 backend")

    def put(self, key: str, data: bytes) -> None:
        self._read_only(key)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        self._read_only(key)

    def put_file_if_absent(self, key: str, path: str) -> bool:
        self._read_only(key)

    def delete(self, key: str) -> None:
        self._read_only(key)

    def close(self) -> None:
        self._drop()


def _error_fields(body: bytes) -> tuple[str, str]:
    """(Code, Message) of an S3 XML error body ("" when there is none)."""
    if not body.lstrip().startswith(b"<"):
        return "", ""
    from xml.etree import ElementTree

    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return "", ""
    return root.findtext("Code") or "", root.findtext("Message") or ""
