"""`walrewind status` and engine/daemon/health.machine_status without a daemon: what a health
check sees when nothing runs, when a daemon is stuck, and the config keys that set the budget."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest
from click.testing import CliRunner
from walrewind.cli.main import cli
from walrewind.engine.daemon.health import HealthFile, machine_status
from walrewind.engine.daemon.metrics import DatabaseSample
from walrewind.engine.errors import ConfigError, UnknownSource
from walrewind.engine.workspace.config import load_config


def now_us() -> int:
    return time.time_ns() // 1000


def write_fleet(directory: str, samples: list[DatabaseSample], written_us: int, budget: float = 60.0) -> None:
    os.makedirs(directory, exist_ok=True)
    doc = {"pid": os.getpid(), "host": socket.gethostname(), "started_us": written_us, "written_us": written_us,
           "lag_budget_s": budget,
           "databases": [{"name": s.name, "path": s.path, "state": s.state, "sample": s.to_json()} for s in samples]}
    with open(os.path.join(directory, f"{os.getpid()}.json"), "w") as f:
        json.dump(doc, f)


def test_configured_databases_nobody_replicates_are_stopped(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    cfg = tmp_path / "walrewind.toml"
    cfg.write_text('lag_budget = "5m"\nmetrics_addr = "127.0.0.1:9093"\n'
                   f'[databases.app]\npath = "app.db"\nreplica = "file://{tmp_path}/r1"\n'
                   f'[databases.orders]\npath = "orders.db"\nreplica = "file://{tmp_path}/r2"\n')
    config = load_config(str(cfg))
    assert config.lag_budget_s == 300.0 and config.metrics_addr == "127.0.0.1:9093"
    runner = CliRunner()
    res = runner.invoke(cli, ["--config", str(cfg), "status", "--json"])
    assert res.exit_code == 1, res.output
    report = json.loads(res.output)
    assert [(d["name"], d["state"], d["healthy"]) for d in report["databases"]] == [
        ("app", "stopped", False), ("orders", "stopped", False)]
    assert report["reason"] == "app is stopped: no walrewind replicate on this machine replicates it (and 1 more)"
    res = runner.invoke(cli, ["--config", str(cfg), "status", "orders"])
    assert res.exit_code == 1 and "orders  stopped" in res.output and "UNHEALTHY: orders is stopped" in res.output
    res = runner.invoke(cli, ["--config", str(cfg), "status", "nope"])
    assert res.exit_code == 1 and "Error: 'nope': no running walrewind replicate" in res.output


def test_nothing_at_all_is_unhealthy(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("WALREWIND_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["status"])
    assert res.exit_code == 1 and "UNHEALTHY: no database is being replicated on this machine" in res.output


def test_verdicts_from_a_fleet_file(tmp_path):
    fleets = str(tmp_path / "fleets")
    path = str(tmp_path / "app.db")
    ok = DatabaseSample("app", "replicating", path=path, lag_seconds=0.4)
    write_fleet(fleets, [ok], now_us())
    report = machine_status(directory=fleets)
    assert report["healthy"] and report["databases"][0]["pid"] == os.getpid()
    assert machine_status(name=path, directory=fleets)["databases"][0]["name"] == "app"  # by path too
    with pytest.raises(UnknownSource):
        machine_status(name="other", directory=fleets)
    spooling = DatabaseSample("app", "spooling", path=path, lag_seconds=12.0, error="replica unreachable")
    write_fleet(fleets, [spooling], now_us(), budget=30)
    assert machine_status(directory=fleets)["healthy"]  # S3 down, but within the budget: still healthy
    write_fleet(fleets, [spooling], now_us(), budget=10)
    report = machine_status(directory=fleets)
    assert not report["healthy"]
    assert report["reason"] == "app is 12.0 s behind (budget 10 s) (spooling: replica unreachable)"
    starting = DatabaseSample("app", "starting", path=path, state_since_us=now_us() - 5_000_000)
    write_fleet(fleets, [starting], now_us())
    assert machine_status(directory=fleets)["healthy"]  # a base snapshot uploading, for less than the budget
    write_fleet(fleets, [DatabaseSample("app", "fenced", path=path, error="lease taken over")], now_us())
    assert machine_status(directory=fleets)["reason"] == "app is fenced: lease taken over"
    write_fleet(fleets, [ok], now_us() - 60_000_000)  # a live process that stopped reporting
    report = machine_status(directory=fleets)
    assert not report["healthy"] and report["databases"][0]["state"] == "unresponsive"
    assert f"pid {os.getpid()} has not reported for" in report["reason"]


def test_health_file_is_written_without_leftovers(tmp_path):
    health = HealthFile(str(tmp_path / "fleets"))
    health.write([{"name": "app", "path": "/x"}], now_us(), lag_budget=42)
    doc = json.loads(open(health.path).read())
    assert doc["lag_budget_s"] == 42 and doc["written_us"] and os.listdir(tmp_path / "fleets") == [
        os.path.basename(health.path)]


@pytest.mark.parametrize("text, error", [
    ('metrics_addr = 9093\n', "metrics_addr must be"),
    ('lag_budget = "soon"\n', "lag_budget"),
    ('lag_budget = -1\n', "lag_budget must be positive"),
])
def test_bad_operations_settings(tmp_path, text, error):
    cfg = tmp_path / "walrewind.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=error):
        load_config(str(cfg))
