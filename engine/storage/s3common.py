"""What both S3 backends must agree on: the URL grammar and the error vocabulary.

``s3://[KEY:SECRET@]bucket/prefix?endpoint=...&region=...`` is parsed once here.  The full backend
(s3.py, boto3) and the light read-only one (s3read.py, no boto3) differ only in what they do when
something needs boto3's own lookups (credential chains, profiles).  The error codes that mean
"retry", "exists" or "not found" are the same for both.

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
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlparse

from ..errors import StorageError

NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
# "An object already exists under this key" for a create-only write.  409 is what AWS answers when
# a concurrent conditional write to the same key is in flight; treating it as "exists" lets
# put_immutable() fall through to comparing content.
EXISTS_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})
# Error codes that mean "try again later" whatever the status (AWS, MinIO, Ceph, SeaweedFS).
TRANSIENT_CODES = frozenset({
    "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete", "SlowDown", "Throttling",
    "ThrottlingException", "ThrottledException", "RequestThrottled", "RequestThrottledException",
    "TooManyRequestsException", "RequestLimitExceeded", "BandwidthLimitExceeded", "InternalError",
    "ServiceUnavailable", "XMinioServerNotInitialized",
    # The body arrived damaged or short (the server checked the client's CRC32 / Content-Length).
    "BadDigest", "IncompleteBody", "XAmzContentChecksumMismatch",
})
QUERY_PARAMS = frozenset({"endpoint", "region", "path_style", "connect_timeout", "read_timeout", "max_attempts"})
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class S3Url:
    bucket: str
    prefix: str  # as in the URL path (the backends normalise slashes)
    safe_url: str  # the URL without KEY:SECRET@: the only form that may appear in messages
    endpoint: str | None  # ?endpoint= (environment variables are each backend's business)
    region: str | None
    path_style: bool | None  # None: not given
    connect_timeout: float
    read_timeout: float
    max_attempts: int
    access_key: str | None = None  # from KEY:SECRET@ in the URL
    secret_key: str | None = None

    @classmethod
    def parse(cls, url: str) -> "S3Url":
        """Parse and validate; StorageError (naming the safe URL) for anything it cannot mean."""
        parsed = urlparse(url)
        userinfo, _, bucket = parsed.netloc.rpartition("@")
        safe_url = parsed._replace(netloc=bucket).geturl()
        if not bucket:
            raise StorageError(f"{safe_url}: S3 URL has no bucket (use s3://bucket/prefix)")
        query = {k: v[-1] for k, v in parse_qs(parsed.query, keep_blank_values=True).items()}
        unknown = sorted(set(query) - QUERY_PARAMS)
        if unknown:
            raise StorageError(
                f"{safe_url}: unknown query parameter(s) {', '.join(unknown)} (supported: {', '.join(sorted(QUERY_PARAMS))})"
            )
        path_style = None
        if "path_style" in query:
            value = query["path_style"].lower()
            if value not in _TRUE + _FALSE:
                raise StorageError(f"{safe_url}: path_style must be true or false, not {query['path_style']!r}")
            path_style = value in _TRUE
        try:
            connect_timeout = float(query.get("connect_timeout", 10))
            read_timeout = float(query.get("read_timeout", 30))
            max_attempts = int(query.get("max_attempts", 5))
        except ValueError as exc:
            raise StorageError(f"{safe_url}: bad timeout or attempt count: {exc}") from None
        key_id = secret = None
        if userinfo:
            raw_id, _, raw_secret = userinfo.partition(":")
            key_id, secret = unquote(raw_id), unquote(raw_secret)
        return cls(bucket, parsed.path, safe_url, query.get("endpoint") or None, query.get("region") or None,
                   path_style, connect_timeout, read_timeout, max(1, max_attempts), key_id, secret)
