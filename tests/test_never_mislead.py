"""What a person restoring under stress must never be misled by (issue 11): the live database is
guarded, holes are shown, dumps are safe to pipe, targets are typed the way people type them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import apsw
import pytest
from click.testing import CliRunner
from harness import DaemonThread, create_db, run_writer
from walrewind.cli.main import cli
from walrewind.engine.sqlite.pagehash import checksum_file
from walrewind.engine.workspace.status import live_checksum

WALREWIND = [sys.executable, "-c", "from walrewind.cli.main import main; main()"]


def invoke(*args, env=None, input=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, input=input, catch_exceptions=False)


@pytest.fixture
def replicated(tmp_path):
    """A database with 4 x 10 transactions in at least 4 segments, replicated by a daemon that has stopped."""
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    create_db(db)
    with DaemonThread(db, replica, str(tmp_path / "state"), upload_interval=0.05) as daemon:
        for batch in range(4):
            run_writer({"db": db, "txns": 10, "rate": 0, "seed": 3 + batch, "id_base": 1000 * batch, "log": os.devnull})
            deadline = time.monotonic() + 30
            while daemon.stats.uploaded_txid < daemon.stats.last_txid or daemon.stats.segments <= batch:
                assert time.monotonic() < deadline, "daemon did not upload"
                time.sleep(0.01)
    return db, replica


# ------------------------------------------------------------------------------ the live database
def test_restore_refuses_to_overwrite_a_database_a_daemon_replicates(tmp_path, replicated):
    db, replica = replicated
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "xdg")}
    daemon = subprocess.Popen(WALREWIND + ["replicate", db, "file://" + str(tmp_path / "live-replica"),
                                           "--state-dir", str(tmp_path / "live-state")],
                              stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        while not any(line.startswith("replicating") for line in lines):
            lines.append(daemon.stderr.readline())
            assert lines[-1], f"the daemon exited: {lines}"
        registry = tmp_path / "xdg" / "walrewind" / "fleets"  # engine/daemon/health.py
        deadline = time.monotonic() + 30
        while not (registry.is_dir() and any(registry.iterdir())):
            assert time.monotonic() < deadline and daemon.poll() is None, "the daemon did not register"
            time.sleep(0.01)
        before = checksum_file(db, 4096)
        res = invoke("restore", replica, "-o", db, "--force", env={"XDG_STATE_HOME": str(tmp_path / "xdg")})
        assert res.exit_code == 1
        assert "refusing to write over" in res.output and f"pid {daemon.pid}" in res.output
        assert "--force does not change that" in res.output and "restore beside it" in res.output
        assert checksum_file(db, 4096) == before and os.path.exists(db + "-wal")
    finally:
        daemon.terminate()
        daemon.wait(60)
    assert daemon.returncode == 0, daemon.stderr.read()


def test_restore_refuses_to_overwrite_a_configured_source(tmp_path, replicated):
    db, replica = replicated
    config = tmp_path / "walrewind.toml"
    config.write_text(f'[databases.app]\npath = "{db}"\nreplica = "{replica}"\n')
    before = checksum_file(db, 4096)
    res = invoke("--config", config, "restore", "app", "-o", db, "--force")
    assert res.exit_code == 1 and "replicated source database 'app'" in res.output, res.output
    assert checksum_file(db, 4096) == before


# ------------------------------------------------------------------------------ holes and checks
def test_a_deleted_segment_shows_as_a_hole_and_check_names_damage(tmp_path, replicated):
    _db, replica = replicated
    segments = sorted(os.listdir(os.path.join(replica, "generations", os.listdir(os.path.join(replica, "generations"))[0],
                                              "segments")))
    assert len(segments) >= 3
    gen = os.listdir(os.path.join(replica, "generations"))[0]
    victim = os.path.join(replica, "generations", gen, "segments", segments[1])
    first, last = int(segments[1][:16], 16), int(segments[1][17:33], 16)
    os.unlink(victim)
    summary = json.loads(invoke("ls", replica, "--json").stdout)
    assert summary["holes"] == [[first, last]]
    human = invoke("ls", replica).output
    assert f"HOLE:             transactions {first}..{last}" in human
    timeline = invoke("timeline", replica, "--by", "second")
    assert timeline.exit_code == 0 and f"HOLE: transactions {first}..{last}" in timeline.output

    damaged = os.path.join(replica, "generations", gen, "segments", segments[2])
    with open(damaged, "r+b") as f:
        f.seek(40)
        byte = f.read(1)
        f.seek(40)
        f.write(bytes([byte[0] ^ 0xFF]))
    res = invoke("ls", replica, "--check", "--json")
    assert res.exit_code == 1
    check = json.loads(res.stdout)["check"]
    assert not check["ok"] and [d["key"] for d in check["damaged"]] == [f"generations/{gen}/segments/{segments[2]}"]
    assert "checksum mismatch" in check["damaged"][0]["error"]
    assert invoke("ls", replica, "--check").exit_code == 1


def test_check_passes_on_a_healthy_replica(replicated):
    _db, replica = replicated
    res = invoke("ls", replica, "--check", "--json")
    assert res.exit_code == 0, res.output
    check = json.loads(res.stdout)["check"]
    assert check["ok"] and check["objects"] >= 2 and check["damaged"] == []


# ------------------------------------------------------------------------------ typing a target
def test_timestamp_now_and_a_time_ago(tmp_path, replicated):
    db, replica = replicated
    out = tmp_path / "now.db"
    res = invoke("restore", replica, "-o", out, "--timestamp", "now", "--json")
    assert res.exit_code == 0, res.output
    assert checksum_file(str(out), 4096) == live_checksum(db)
    res = invoke("restore", replica, "-o", tmp_path / "ago.db", "--timestamp", "1 hour ago")
    assert res.exit_code == 1 and "Timestamp too old" in res.output


def test_dry_run_says_where_it_lands_and_needs_no_output(replicated):
    _db, replica = replicated
    res = invoke("restore", replica, "--dry-run", "--txid", 17, "--json")
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout)
    assert plan["lands_on"]["txid"] == 17 and plan["dry_run"] is True
    latest = json.loads(invoke("restore", replica, "--dry-run", "--json").stdout)
    assert latest["lands_on"]["txid"] == json.loads(invoke("ls", replica, "--json").stdout)["latest_txid"]
    assert "lands on   txid" in invoke("restore", replica, "--dry-run").output
    missing = invoke("restore", replica)
    assert missing.exit_code == 2 and "--output" in missing.output


# ------------------------------------------------------------------------------ dumps
def test_dump_is_sqlite3_shaped_and_never_wipes_rows(tmp_path, replicated):
    _db, replica = replicated
    config = tmp_path / "walrewind.toml"
    config.write_text(f'data_dir = "data"\n[databases.app]\npath = "{replicated[0]}"\nreplica = "{replica}"\n')
    assert invoke("--config", config, "db", "create", "copy", "--from-db", "app").exit_code == 0
    res = invoke("--config", config, "db", "shell", "copy", ".dump")
    assert res.exit_code == 0, res.output
    dump = res.stdout
    assert "DROP" not in dump.upper()
    lines = dump.splitlines()
    assert lines[:2] == ["PRAGMA foreign_keys=OFF;", "BEGIN TRANSACTION;"] and lines[-1] == "COMMIT;"
    # Piped into a database that has the table (the live one, say), it fails whole: nothing is lost.
    target = str(tmp_path / "target.db")
    shutil.copy(str(tmp_path / "data" / "databases" / "copy.db"), target)
    conn = apsw.Connection(target)
    conn.execute("INSERT INTO t(id, k, v) VALUES (100000, 1, 'added later')")
    count = conn.execute("SELECT count(*) FROM t").fetchall()[0][0]
    conn.close()
    loaded = subprocess.run([sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
                             "c.executescript(sys.stdin.read())", target], input=dump, capture_output=True, text=True)
    assert loaded.returncode != 0 and "already exists" in loaded.stderr
    conn = apsw.Connection(target)
    assert conn.execute("SELECT count(*) FROM t").fetchall()[0][0] == count
    conn.close()


def test_dump_into_a_pipe_that_closes_says_nothing(tmp_path, replicated):
    _db, replica = replicated
    config = tmp_path / "walrewind.toml"
    config.write_text(f'data_dir = "data"\n[databases.app]\npath = "{replicated[0]}"\nreplica = "{replica}"\n')
    assert invoke("--config", config, "db", "create", "copy", "--from-db", "app").exit_code == 0
    shell = subprocess.Popen(WALREWIND + ["--config", str(config), "db", "shell", "copy", ".dump"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    shell.stdout.readline()
    shell.stdout.close()  # `| head -1`
    _out, err = shell.communicate(timeout=60)
    assert b"Broken pipe" not in err and b"Traceback" not in err, err


# ------------------------------------------------------------------------------ replicate mistakes
def test_replicating_a_file_that_is_not_a_database_creates_nothing(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    res = subprocess.run(WALREWIND + ["replicate", str(junk), str(tmp_path / "replica"), "--state-dir",
                                      str(tmp_path / "state")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert res.stderr.strip() == f"Error: {junk} is not a SQLite database (file is not a database)", res.stderr
    assert not (tmp_path / "replica").exists() and not (tmp_path / "state").exists()
