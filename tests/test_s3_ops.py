"""Operating `walrewind replicate` against S3 (SeaweedFS behind tests/faultproxy.py), as a user runs it.

* S3 cut off past the lag budget: /healthz answers 503 with the reason, `walrewind status` exits
  1 with the same reason, and both are healthy again once S3 is back and the backlog drained.
* The daemon started while S3 is unreachable: it captures at once, says so in JSON log lines
  that never contain the URL's credentials, takes its lease when S3 answers, and the replica
  then holds every commit, one record each, restorable exactly.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import uuid

import pytest
from daemon_process import WALREWIND, Daemon
from faultproxy import FaultProxy
from harness import (
    assert_one_record_per_commit,
    create_db,
    judge,
    read_log,
    start_writer,
    wait_for,
)
from walrewind.engine.restore.restorer import restore
from walrewind.engine.storage import open_storage

pytestmark = pytest.mark.s3

KEY, SECRET = "AKIAWALREWINDTEST", "s3cr3t%2Fwith-slash"


def _get(url: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _status(env: dict, cwd: str) -> tuple[int, dict]:
    done = subprocess.run(WALREWIND + ["status", "--json"], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=60)
    return done.returncode, json.loads(done.stdout)


def _metrics_base(daemon: Daemon) -> str:
    daemon.wait_for("serving /metrics and /healthz on http://127.0.0.1:")
    line = next(x for x in daemon.lines if "serving /metrics" in x)
    if line.lstrip().startswith("{"):
        line = json.loads(line)["message"]
    return line.split(" on ", 1)[1].strip()


@pytest.mark.slow
def test_health_goes_503_past_the_lag_budget_while_s3_is_down(seaweed_s3, tmp_path):
    prefix = f"ops/{uuid.uuid4().hex}"
    db, stop = str(tmp_path / "app.db"), str(tmp_path / "stop")
    create_db(db)
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "xdg")}
    with FaultProxy(seaweed_s3.endpoint, seed=80) as proxy:
        url = f"s3://{seaweed_s3.bucket}/{prefix}?endpoint={proxy.endpoint}&max_attempts=1&connect_timeout=1"
        daemon = Daemon(["replicate", db, url, "--state-dir", str(tmp_path / "state"), "--upload-interval", "0.2",
                         "--metrics-addr", "127.0.0.1:0", "--lag-budget", "3s"], cwd=str(tmp_path), env=env)
        writer = None
        try:
            base = _metrics_base(daemon)
            daemon.wait_for("replicating app.db")
            writer = start_writer({"db": db, "rate": 50, "duration": 120, "seed": 81, "stop_file": stop})
            wait_for(lambda: _get(base + "/healthz")[0] == 200, timeout=20, what="healthy")
            proxy.down = True
            daemon.wait_for("unreachable", timeout=30)
            healthz: dict = {}

            def unhealthy() -> bool:
                healthz["answer"] = _get(base + "/healthz")
                return healthz["answer"][0] == 503

            wait_for(unhealthy, timeout=30, what="/healthz to answer 503")
            reason = healthz["answer"][1].strip()
            assert reason.startswith("app.db is ") and "s behind (budget 3 s) (spooling" in reason, reason
            metrics = _get(base + "/metrics")[1]
            assert 'walrewind_up{db="app.db",state="spooling"} 0.0' in metrics
            wait_for(lambda: _status(env, str(tmp_path))[0] == 1, timeout=15, what="status to exit 1")
            rc, report = _status(env, str(tmp_path))
            assert rc == 1 and not report["healthy"] and "behind (budget 3 s)" in report["reason"]
            assert report["databases"][0]["state"] == "spooling" and report["databases"][0]["unreachable_since_us"]
            proxy.down = False
            wait_for(lambda: _get(base + "/healthz")[0] == 200, timeout=30, what="/healthz to recover")
            wait_for(lambda: _status(env, str(tmp_path))[0] == 0, timeout=15, what="status to recover")
            open(stop, "w").close()
            assert writer.wait(60) == 0
            rc, said, _took = daemon.stop()
        finally:
            daemon.kill()
            if writer is not None and writer.poll() is None:
                writer.kill()
    assert rc == 0, said
    assert said.count("replica s3://") <= 3, said  # began (and maybe a reminder), reachable again


@pytest.mark.slow
def test_start_while_s3_is_down_json_logs_and_no_credentials(seaweed_s3, tmp_path):
    prefix = f"ops/{uuid.uuid4().hex}"
    db, log = str(tmp_path / "app.db"), str(tmp_path / "log")
    create_db(db)
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "xdg")}
    with FaultProxy(seaweed_s3.endpoint, seed=82) as proxy:
        proxy.down = True
        url = f"s3://{KEY}:{SECRET}@{seaweed_s3.bucket}/{prefix}?endpoint={proxy.endpoint}&connect_timeout=1"
        daemon = Daemon(["replicate", db, url, "--state-dir", str(tmp_path / "state"), "--upload-interval", "0.2",
                         "--log-format", "json"], cwd=str(tmp_path), env=env)
        try:
            daemon.wait_for('"event": "spooling"', timeout=60)
            writer = start_writer({"db": db, "log": log, "checksums": True, "rate": 100, "txns": 300, "seed": 83})
            wait_for(lambda: _status(env, str(tmp_path))[1]["databases"][0]["backlog_transactions"] > 50,
                     timeout=30, what="commits captured while S3 is down", writer=writer)
            rc, report = _status(env, str(tmp_path))
            row = report["databases"][0]
            assert row["state"] == "spooling" and row["lag_seconds"] > 0 and rc == 0  # within the 60 s budget
            assert not seaweed_s3.client().list_objects_v2(Bucket=seaweed_s3.bucket, Prefix=prefix).get("Contents")
            proxy.down = False
            daemon.wait_for('"event": "lease_taken"', timeout=30)
            assert writer.wait(60) == 0, writer.stderr.read()

            def drained() -> bool:
                row = _status(env, str(tmp_path))[1]["databases"][0]
                return row["state"] == "replicating" and row["backlog_transactions"] == 0 and row["lag_seconds"] < 1

            wait_for(drained, timeout=30, what="the backlog to drain")
            rc, said, _took = daemon.stop()
        finally:
            daemon.kill()
    assert rc == 0, said
    assert KEY not in said and "s3cr3t" not in said
    events = [json.loads(line) for line in said.splitlines() if line.strip()]
    assert all(set(e) == {"ts", "level", "db", "event", "message"} for e in events), said
    kinds = [e["event"] for e in events]
    for kind in ("replica_unreachable", "spooling", "lease_taken", "replicating", "replica_reachable", "stopped"):
        assert kind in kinds, (kind, kinds)
    assert all(e["db"] == "app.db" for e in events if e["event"] in ("replica_unreachable", "lease_taken"))
    unreachable = next(e for e in events if e["event"] == "replica_unreachable")
    assert "unreachable at start" in unreachable["message"] and len(unreachable["message"]) < 400

    txns, _ = read_log(log)
    direct = seaweed_s3.url(prefix)
    points = assert_one_record_per_commit(direct, txns)
    storage = open_storage(direct, create=False)
    rng = random.Random(84)
    for n, k in enumerate(sorted(rng.sample(points.commits, 8))):
        target = txns[k]["end"] + 1
        out = str(tmp_path / f"t{n}.db")
        result = restore(storage, out, target_us=target)
        assert judge(out, result.page_size, txns, txns[0]["checksum"], target).exact
