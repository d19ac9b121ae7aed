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


# -- wired into replicate: an application writing under --exec ------------------------------------

APP = """
import os, sqlite3, sys, time
db, stop = sys.argv[1], sys.argv[2]
c = sqlite3.connect(db, isolation_level=None)
i = 0
while not os.path.exists(stop):
    i += 1
    c.execute("INSERT INTO t(id, k, v) VALUES (?, ?, ?)", (20_000 + i, i, b"x" * 100))
    time.sleep(0.01)
c.close()
print("app: wrote", i, flush=True)
"""


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _series(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.slow
def test_replicate_exec_serves_metrics_health_and_status(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from daemon_process import WALREWIND, Daemon
    from harness import create_db, wait_for
    from walrewind.engine.restore.restorer import restore
    from walrewind.engine.storage import open_storage

    db, replica, stop = str(tmp_path / "app.db"), str(tmp_path / "replica"), str(tmp_path / "stop")
    create_db(db)
    (tmp_path / "app.py").write_text(APP)
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "xdg")}
    daemon = Daemon(["replicate", db, replica, "--state-dir", str(tmp_path / "state"), "--upload-interval", "0.1",
                     "--metrics-addr", "127.0.0.1:0", "--exec", f"{sys.executable} {tmp_path / 'app.py'} {db} {stop}"],
                    cwd=str(tmp_path), env=env)
    try:
        daemon.wait_for("serving /metrics and /healthz on http://127.0.0.1:")
        base = next(line for line in daemon.lines if "serving /metrics" in line).split(" on ", 1)[1].strip()
        daemon.wait_for("started ")
        text = {}

        def shipping() -> bool:
            status, text["metrics"] = _get(base + "/metrics")
            return status == 200 and (_series(text["metrics"], "walrewind_shipped_transactions_total") or 0) > 20

        wait_for(shipping, timeout=30, what="transactions in /metrics")
        metrics = text["metrics"]
        for name in ("walrewind_replication_lag_seconds", "walrewind_last_upload_timestamp_seconds",
                     "walrewind_spool_backlog_bytes", "walrewind_resyncs_total", "walrewind_errors_total",
                     "walrewind_app_checkpoints_yielded_total", "walrewind_restorable_since_timestamp_seconds",
                     "walrewind_shipped_bytes_total"):
            assert _series(metrics, name) is not None, name
        assert 'walrewind_up{db="app.db",state="replicating"} 1.0' in metrics
        assert 0 <= _series(metrics, "walrewind_replication_lag_seconds") < 5
        assert _get(base + "/healthz") == (200, "1 database(s) replicating within 60 s\n")

        def status(*args) -> subprocess.CompletedProcess:
            return subprocess.run(WALREWIND + ["status", *args], env=env, cwd=str(tmp_path), capture_output=True,
                                  text=True, timeout=60)

        reports = []

        def reported() -> bool:  # the fleet rewrites its health file every ~2 s
            done = status("--json")
            reports.append(json.loads(done.stdout))
            return done.returncode == 0 and reports[-1]["databases"][0]["shipped_transactions"] > 0

        wait_for(reported, timeout=15, what="a sample with uploads in the health file")
        report = reports[-1]
        (row,) = report["databases"]
        assert report["healthy"] and row["name"] == "app.db" and row["state"] == "replicating"
        assert row["pid"] == daemon.pid and row["path"] == db and isinstance(row["lag_seconds"], float)
        assert 0 <= row["lag_seconds"] < 5 and row["shipped_transactions"] > 0 and row["restorable_since_us"]
        text_out = status("app.db")
        assert text_out.returncode == 0 and "replicating" in text_out.stdout and "healthy:" in text_out.stdout
        missing = status("nope")
        assert missing.returncode == 1 and "'nope'" in missing.stderr

        open(stop, "w").close()
        rc, said = daemon.wait_exit(60)
    finally:
        daemon.kill()
    assert rc == 0, said
    assert "exited with 0: final sync" in said
    out = str(tmp_path / "latest.db")
    restore(open_storage(replica, create=False), out)
    count = [sys.executable, "-c", "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute("
             "'SELECT count(*) FROM t WHERE id > 20000').fetchone()[0])"]
    live = int(subprocess.run(count + [db], capture_output=True, text=True, check=True).stdout)
    restored = int(subprocess.run(count + [out], capture_output=True, text=True, check=True).stdout)
    assert live > 20 and restored == live  # the app's last commit is in the replica
    gone = subprocess.run(WALREWIND + ["status", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert gone.returncode == 1 and json.loads(gone.stdout)["databases"] == []


def test_a_busy_metrics_port_is_refused_before_anything_starts(tmp_path):
    import socket
    import subprocess

    from daemon_process import WALREWIND
    from harness import create_db

    db = str(tmp_path / "app.db")
    create_db(db)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(WALREWIND + ["replicate", db, str(tmp_path / "replica"), "--state-dir",
                                           str(tmp_path / "state"), "--metrics-addr", f"127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == f"Error: --metrics-addr 127.0.0.1:{port}: cannot listen there (Address already in use)"
    assert not (tmp_path / "replica").exists() and not (tmp_path / "state").exists()
