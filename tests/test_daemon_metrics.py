"""engine/daemon/metrics.py on its own: the Prometheus text, the health verdict, the server."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from walrewind.engine.daemon.metrics import (
    DatabaseSample,
    MetricsServer,
    judge,
    parse_addr,
    render,
)
from walrewind.engine.errors import UsageError


def sample(**kw) -> DatabaseSample:
    base = dict(name="app", state="replicating", lag_seconds=0.0, shipped_transactions=12, shipped_bytes=4096 * 30,
                last_upload_us=1_700_000_000_000_000, backlog_bytes=0, resyncs=1, errors={"upload": 2},
                checkpoints_yielded=3, restorable_since_us=1_699_000_000_000_000, last_verify_us=None,
                last_verify_ok=None)
    base.update(kw)
    return DatabaseSample(**base)


def test_render_has_every_documented_series():
    text = render([sample(), sample(name="b", lag_seconds=None, last_verify_us=1_700_000_000_000_000,
                                    last_verify_ok=False)]).decode()
    for line in (
        'walrewind_replication_lag_seconds{db="app"} 0.0',
        'walrewind_shipped_transactions_total{db="app"} 12.0',
        'walrewind_shipped_bytes_total{db="app"} 122880.0',
        'walrewind_last_upload_timestamp_seconds{db="app"} 1.7e+09',
        'walrewind_spool_backlog_bytes{db="app"} 0.0',
        'walrewind_resyncs_total{db="app"} 1.0',
        'walrewind_errors_total{db="app",kind="upload"} 2.0',
        'walrewind_app_checkpoints_yielded_total{db="app"} 3.0',
        'walrewind_restorable_since_timestamp_seconds{db="app"} 1.699e+09',
        'walrewind_last_verify_ok{db="b"} 0.0',
        'walrewind_last_verify_timestamp_seconds{db="b"} 1.7e+09',
    ):
        assert line in text, line
    assert 'walrewind_replication_lag_seconds{db="b"}' not in text  # unknown: no sample, not a made-up 0


def test_health_verdict():
    assert judge([sample()]) == (True, "1 database(s) replicating within 60 s")
    assert judge([]) == (False, "no database is being replicated")
    ok, reason = judge([sample(), sample(name="b", lag_seconds=75.5)])
    assert not ok and reason == "b is 75.5 s behind (budget 60 s)"
    ok, reason = judge([sample(name="c", state="retrying", error="replica unreachable")])
    assert not ok and reason == "c is retrying: replica unreachable"


def test_server_serves_metrics_and_health():
    samples = [sample()]
    server = MetricsServer("127.0.0.1:0", lambda: samples, lag_budget_seconds=10).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
            assert r.status == 200 and b"walrewind_shipped_transactions_total" in r.read()
        with urllib.request.urlopen(base + "/healthz", timeout=10) as r:
            assert r.status == 200
        samples[0] = sample(lag_seconds=30.0)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "/healthz", timeout=10)
        assert err.value.code == 503 and err.value.read().decode().strip() == "app is 30.0 s behind (budget 10 s)"
    finally:
        server.stop()


def test_bad_addresses():
    for text in ("nope", "127.0.0.1:", "127.0.0.1:99999", ":x"):
        with pytest.raises(UsageError):
            parse_addr(text)
    assert parse_addr(":9093") == ("0.0.0.0", 9093) and parse_addr("[::1]:9093") == ("::1", 9093)
