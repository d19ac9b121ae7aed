"""What a running daemon reports about each database: Prometheus ``/metrics`` and ``/healthz``.

The fleet turns every database's counters into a ``DatabaseSample`` (engine/daemon/fleet.py);
this module renders samples as Prometheus text and judges health, and ``MetricsServer`` serves
both on ``--metrics-addr HOST:PORT`` (off by default).  Samples are taken at scrape time, so a
scrape costs a few attribute reads per database and nothing when nobody asks.  The same samples go
into the fleet's health file for ``walrewind status``.

prometheus_client is imported only when the server starts (it costs ~0.1 s of start-up).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from .. import defaults
from ..errors import UsageError

# States judged by their lag (healthy while within the budget); every other state is unhealthy,
# except "starting" for as long as the budget (a base snapshot takes a while to upload).
LAG_STATES = ("replicating", "behind", "spooling")
UP_STATES = ("replicating", "behind")  # walrewind_up: the replica takes our uploads
DEFAULT_LAG_BUDGET_SECONDS = defaults.LAG_BUDGET_SECONDS


@dataclass
class DatabaseSample:
    """One database's state and counters at one moment (times in µs since the epoch)."""

    name: str
    state: str  # starting | replicating | behind | spooling | fenced | retrying | stopped | failed | unresponsive
    path: str = ""
    replica: str = ""  # credentials stripped
    lag_seconds: float | None = None  # age of the oldest commit not yet durable in the replica; 0 caught up
    shipped_transactions: int = 0
    shipped_bytes: int = 0
    last_upload_us: int | None = None
    backlog_bytes: int = 0
    backlog_transactions: int = 0
    resyncs: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # by kind: upload, lease, spool_full, failure
    checkpoints_yielded: int = 0
    restorable_since_us: int | None = None
    last_verify_us: int | None = None
    last_verify_ok: bool | None = None
    error: str | None = None  # the last error, one line
    state_since_us: int | None = None  # when the fleet last changed this database's state
    restorable_until_us: int | None = None  # the newest moment in the replica (last uploaded commit)
    unreachable_since_us: int | None = None  # the replica has not taken uploads since

    def to_json(self) -> dict:
        """Plain JSON data (shallow: dataclasses.asdict's deep copy was half of a health-file write)."""
        out = {name: getattr(self, name) for name in _SAMPLE_FIELDS}
        out["errors"] = dict(self.errors)
        return out


_SAMPLE_FIELDS = tuple(DatabaseSample.__dataclass_fields__)


def judge_one(s: DatabaseSample, lag_budget_seconds: float = DEFAULT_LAG_BUDGET_SECONDS,
              now_us: int | None = None) -> str | None:
    """None when ``s`` is healthy, else the one-line reason (the same for /healthz and status)."""
    why = f": {s.error}" if s.error else ""
    if s.state == "starting":
        started = s.state_since_us or 0
        if s.lag_seconds is None and ((now_us or time.time_ns() // 1000) - started) / 1e6 <= lag_budget_seconds:
            return None
    elif s.state not in LAG_STATES:
        return f"{s.name} is {s.state}{why}"
    if s.lag_seconds is not None and s.lag_seconds > lag_budget_seconds:
        where = f" ({s.state}{why})" if s.state != "replicating" else ""
        return f"{s.name} is {s.lag_seconds:.1f} s behind (budget {lag_budget_seconds:g} s){where}"
    return None


def judge(samples: list[DatabaseSample], lag_budget_seconds: float = DEFAULT_LAG_BUDGET_SECONDS) -> tuple[bool, str]:
    """(healthy, one-line reason): every database replicates and is within its lag budget."""
    if not samples:
        return False, "no database is being replicated"
    for s in samples:
        reason = judge_one(s, lag_budget_seconds)
        if reason is not None:
            return False, reason
    return True, f"{len(samples)} database(s) replicating within {lag_budget_seconds:g} s"


def render(samples: list[DatabaseSample]) -> bytes:
    """Prometheus text exposition of the samples (one series per database, label ``db``)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class Collector:
        def collect(self):
            def gauge(name, doc, value_of):
                family = GaugeMetricFamily(name, doc, labels=["db"])
                for s in samples:
                    value = value_of(s)
                    if value is not None:
                        family.add_metric([s.name], float(value))
                return family

            def counter(name, doc, value_of):
                family = CounterMetricFamily(name, doc, labels=["db"])
                for s in samples:
                    family.add_metric([s.name], float(value_of(s)))
                return family

            yield gauge("walrewind_replication_lag_seconds",
                        "Age of the oldest commit not yet durable in the replica (0 when caught up).",
                        lambda s: s.lag_seconds)
            yield counter("walrewind_shipped_transactions", "Transactions uploaded to the replica.",
                          lambda s: s.shipped_transactions)
            yield counter("walrewind_shipped_bytes", "WAL bytes read and shipped.", lambda s: s.shipped_bytes)
            yield gauge("walrewind_last_upload_timestamp_seconds", "When the last segment reached the replica.",
                        lambda s: s.last_upload_us / 1e6 if s.last_upload_us else None)
            yield gauge("walrewind_spool_backlog_bytes", "Read and spooled, not yet in the replica.",
                        lambda s: s.backlog_bytes)
            yield counter("walrewind_resyncs", "History gaps repaired by a visible RESYNC transaction.",
                          lambda s: s.resyncs)
            errors = CounterMetricFamily("walrewind_errors", "Errors by kind.", labels=["db", "kind"])
            for s in samples:
                for kind, count in sorted(s.errors.items()):
                    errors.add_metric([s.name, kind], float(count))
            yield errors
            yield counter("walrewind_app_checkpoints_yielded",
                          "Application checkpoints the daemon stepped aside for (never made them wait).",
                          lambda s: s.checkpoints_yielded)
            yield gauge("walrewind_restorable_since_timestamp_seconds",
                        "Start of the window every moment of which restores exactly.",
                        lambda s: s.restorable_since_us / 1e6 if s.restorable_since_us else None)
            yield gauge("walrewind_last_verify_timestamp_seconds", "When the last restore drill ran.",
                        lambda s: s.last_verify_us / 1e6 if s.last_verify_us else None)
            yield gauge("walrewind_last_verify_ok", "1 if the last restore drill passed, 0 if it failed.",
                        lambda s: None if s.last_verify_ok is None else int(s.last_verify_ok))
            up = GaugeMetricFamily("walrewind_up", "1 while the database replicates (state label).",
                                   labels=["db", "state"])
            for s in samples:
                up.add_metric([s.name, s.state], 1.0 if s.state in UP_STATES else 0.0)
            yield up

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    return generate_latest(registry)


def parse_addr(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:  # 0: any free port
        raise UsageError(f"--metrics-addr {text!r}: use HOST:PORT, e.g. 127.0.0.1:9093")
    return (host.strip("[]") or "0.0.0.0"), int(port)


class MetricsServer:
    """``/metrics`` and ``/healthz`` on a thread; ``sample`` is called on every request."""

    def __init__(self, addr: str, sample: Callable[[], list[DatabaseSample]],
                 lag_budget_seconds: float = DEFAULT_LAG_BUDGET_SECONDS) -> None:
        host, port = parse_addr(addr)
        from http.server import (  # only a daemon serving metrics
            BaseHTTPRequestHandler,
            ThreadingHTTPServer,
        )

        import prometheus_client  # noqa: F401  (fail now, not at the first scrape, if it is missing)

        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, status, ctype = render(outer.sample()), 200, "text/plain; version=0.0.4; charset=utf-8"
                elif path == "/healthz":
                    ok, reason = judge(outer.sample(), outer.lag_budget_seconds)
                    body, status, ctype = (reason + "\n").encode(), (200 if ok else 503), "text/plain; charset=utf-8"
                else:
                    body, status, ctype = b"not found: try /metrics or /healthz\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # scrapes are not events worth a log line
                pass

        self.sample = sample
        self.lag_budget_seconds = lag_budget_seconds
        try:
            self.server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise UsageError(f"--metrics-addr {addr}: cannot listen there ({exc.strerror or exc})") from None
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="walrewind-metrics", daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def address(self) -> str:
        host = self.server.server_address[0]
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def start(self) -> "MetricsServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
