"""sqld (the libSQL server) as walrewind sees it: namespaces on disk, and its two HTTP APIs.

Facts this relies on were checked against a real sqld 0.24.32 (docs/SQLD.md, tests/test_sqld.py):

* Namespace NS lives in ``<data_dir>/dbs/NS/``: ``data`` is a plain SQLite database in WAL mode
  (with ``data-wal`` and ``data-shm``), beside sqld's own ``wallog``, ``stats.json`` and
  ``.sentinel``.  There is no "list namespaces" endpoint (libsql #1313): the directory listing is
  the only list.  A directory sqld was not told about (``create``) is not a namespace.
* While ``create`` runs, ``data`` is empty at first and only later gets a WAL-mode header; a
  namespace is *ready* to be read once ``data`` has that header, ``-wal`` and ``-shm`` exist, no
  ``data-journal`` is left, and ``stats.json`` names it.
* Deleted and re-created under the same name, a namespace may get the **same inode** for ``data``;
  only the ``"id"`` (a UUID) in ``stats.json`` tells the two apart, so that id is its identity.
* The admin API (``--admin-listen-addr``) creates and deletes namespaces; the user API
  (``--http-listen-addr``, Hrana over HTTP) takes the namespace from the first label of the
  ``Host`` header.  Both are reached with http.client: no dependency.
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from ..errors import InvalidName, SqldError
from .config import SqldConfig

# Names found on disk that we replicate (they become a replica prefix and a state directory name).
if TYPE_CHECKING:
    import http.client

DISK_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", re.ASCII)
# Names walrewind creates: a DNS label, since clients name the namespace in the Host header (and
# host names are case-insensitive, so an upper-case namespace could not be reached).
NEW_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}", re.ASCII)
WAL_MODE = b"\x02\x02"  # header bytes 18-19 of a database in WAL mode
PAGE_SIZE = 4096  # sqld 0.24's replication log asserts it (a file of another page size panics sqld)
LOOPBACK = {"127.0.0.1", "::1", "0.0.0.0", "::", "localhost"}


def validate_new_namespace(name: str) -> str:
    if not NEW_NAME_RE.fullmatch(name or ""):
        raise InvalidName(
            f"Invalid namespace name {name!r}: use 1-63 lower-case letters, digits, '-' or '_', starting with a "
            "letter or digit (clients name the namespace in the host name, which is case-insensitive)"
        )
    return name


# --------------------------------------------------------------------------------- on disk
def namespace_id(ns_dir: str) -> str | None:
    """sqld's id of the namespace in ``ns_dir`` (stats.json ``"id"``), None if not (yet) readable."""
    try:
        with open(os.path.join(ns_dir, "stats.json"), "rb") as f:
            value = json.loads(f.read()).get("id")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def not_ready_reason(ns_dir: str) -> str | None:
    """Why the namespace in ``ns_dir`` cannot be opened yet (None: it can).

    A reader that opened ``data`` mid-create could meet an empty file or a hot journal; the next
    scan simply looks again.
    """
    data = os.path.join(ns_dir, "data")
    try:
        with open(data, "rb") as f:
            header = f.read(100)
    except FileNotFoundError:
        return "no data file yet"
    except OSError as exc:
        return f"cannot read {data}: {exc.strerror or exc}"
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        return "data has no SQLite header yet"
    if header[18:20] != WAL_MODE:
        return "data is not in WAL mode yet"
    if os.path.exists(data + "-journal"):
        return "a data-journal is present"
    for suffix in ("-wal", "-shm"):
        if not os.path.exists(data + suffix):
            return f"no data{suffix} yet (sqld opens a namespace at its first request after a restart)"
    return None


@dataclass(frozen=True)
class Namespace:
    """One namespace found in ``dbs/``."""

    name: str
    path: str  # dbs/NS/data
    id: str | None  # stats.json id
    waiting: str | None  # why it cannot be replicated yet (None: ready)
    present: bool = True  # its data file exists (False: being created, or being deleted)

    @property
    def ready(self) -> bool:
        return self.waiting is None and self.id is not None


def namespace_names(dbs_dir: str) -> list[str]:
    """The directory names in ``dbs/`` (sorted); [] when it does not exist (yet)."""
    try:
        with os.scandir(dbs_dir) as entries:
            return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []


def probe(dbs_dir: str, name: str) -> Namespace:
    ns_dir = os.path.join(dbs_dir, name)
    data = os.path.join(ns_dir, "data")
    ident = namespace_id(ns_dir)
    waiting = not_ready_reason(ns_dir)
    if waiting is None and ident is None:
        waiting = "no id in stats.json yet"
    if not DISK_NAME_RE.fullmatch(name):
        waiting = "walrewind does not replicate a namespace with this name (letters, digits, '.', '-', '_')"
    return Namespace(name, data, ident, waiting, os.path.isfile(data))


def list_namespaces(sqld: SqldConfig) -> dict[str, Namespace]:
    """Every namespace directory in ``dbs/`` with its id and readiness."""
    return {name: probe(sqld.dbs_dir, name) for name in namespace_names(sqld.dbs_dir)}


def is_namespace(sqld: SqldConfig, name: str) -> bool:
    return bool(DISK_NAME_RE.fullmatch(name)) and os.path.isfile(sqld.namespace_path(name))


# --------------------------------------------------------------------------------- HTTP
def _split(url: str) -> tuple[str, str, int]:
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return parsed.scheme, parsed.hostname or "", port


class _Http:
    """One keep-alive connection to a base URL; a stale connection is retried once."""

    def __init__(self, url: str, what: str, timeout: float = 60.0) -> None:
        self.url = url
        self.what = what
        self.scheme, self.host, self.port = _split(url)
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: Any = None, host: str | None = None) -> tuple[int, str]:
        import http.client  # here: resolving a source name must not load an HTTP client (a restore's start-up)

        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if host:
            headers["Host"] = host
        for attempt in (0, 1):
            if self._conn is None:
                cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
                self._conn = cls(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request(method, path, body=payload, headers=headers)
                resp = self._conn.getresponse()
                return resp.status, resp.read().decode("utf-8", "replace")
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if attempt:
                    raise SqldError(f"sqld's {self.what} at {self.url} closed the connection: {exc}") from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise SqldError(f"cannot reach sqld's {self.what} at {self.url}: {exc}") from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _error_text(body: str) -> str:
    try:
        return str(json.loads(body).get("error") or body)
    except (ValueError, AttributeError):
        return body.strip() or "(no message)"


class SqldAdmin:
    """sqld's admin API (``--admin-listen-addr``)."""

    def __init__(self, url: str) -> None:
        self.http = _Http(url, "admin API")

    def exists(self, name: str) -> bool:
        status, body = self.http.request("GET", f"/v1/namespaces/{name}/config")
        if status == 200:
            return True
        if status == 404:
            return False
        raise SqldError(f"sqld admin API: asking for namespace {name!r} gave HTTP {status}: {_error_text(body)}", status, body)

    def create(self, name: str, dump_url: str | None = None) -> None:
        status, body = self.http.request("POST", f"/v1/namespaces/{name}/create", {"dump_url": dump_url} if dump_url else {})
        if status != 200:
            raise SqldError(f"sqld refused to create namespace {name!r} (HTTP {status}): {_error_text(body)}", status, body)

    def delete(self, name: str) -> bool:
        """Delete namespace ``name``; False when it did not exist."""
        status, body = self.http.request("DELETE", f"/v1/namespaces/{name}")
        if status == 404:
            return False
        if status != 200:
            raise SqldError(f"sqld refused to delete namespace {name!r} (HTTP {status}): {_error_text(body)}", status, body)
        return True

    def close(self) -> None:
        self.http.close()


def decode_value(cell: dict) -> Any:
    kind = cell.get("type")
    if kind == "null":
        return None
    if kind == "integer":
        return int(cell["value"])
    if kind == "float":
        return float(cell["value"])
    if kind == "blob":
        data = cell["base64"]
        return base64.b64decode(data + "=" * (-len(data) % 4))
    return cell.get("value")


class SqldClient:
    """Hrana over HTTP (``--http-listen-addr``): the namespace is the Host header's first label."""

    def __init__(self, url: str) -> None:
        self.http = _Http(url, "HTTP API")

    def query_many(self, namespace: str, statements: list[str]) -> list[list[tuple]]:
        """Run ``statements`` in one pipeline; the rows of each."""
        requests = [{"type": "execute", "stmt": {"sql": sql}} for sql in statements]
        status, body = self.http.request("POST", "/v2/pipeline", {"requests": requests + [{"type": "close"}]},
                                         host=f"{namespace}.{self.http.host}")
        if status != 200:
            raise SqldError(f"namespace {namespace!r} over HTTP: HTTP {status}: {_error_text(body)}", status, body)
        out = []
        for sql, res in zip(statements, json.loads(body)["results"]):
            if res.get("type") != "ok":
                raise SqldError(f"namespace {namespace!r} over HTTP: {sql!r} failed: {res.get('error')}", status, body)
            out.append([tuple(decode_value(c) for c in row) for row in res["response"]["result"]["rows"]])
        return out

    def close(self) -> None:
        self.http.close()


def client_url(sqld: SqldConfig, name: str) -> str | None:
    """The URL a libSQL client uses for namespace ``name``: ``http://NAME.HOST:PORT``.

    sqld finds the namespace in the first label of the Host header, so the client needs a host
    name whose first label is the namespace and that resolves to sqld: a wildcard DNS record
    (``*.db.example.com``), an /etc/hosts line, or ``NAME.localhost`` on the same machine (most
    resolvers map ``*.localhost`` to loopback).  ``client_url`` in ``[sqld]`` gives the public
    base; otherwise ``http_url`` is used, with a loopback address written as ``localhost``.
    """
    base = sqld.client_url or sqld.http_url
    if base is None:
        return None
    parsed = urlparse(base)
    host = parsed.hostname or "localhost"
    if host in LOOPBACK:
        host = "localhost"
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{name}.{host}{port}"
