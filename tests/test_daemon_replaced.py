"""The database file replaced under a running daemon, and `walrewind reseed` (issue 11, blocker 1).

A daemon keeps its descriptors on the files it opened; if the file is replaced (a copy, a `mv`,
a restore by another tool) it would go on reading the old, deleted file and ship nothing more,
silently.  The fleet notices (engine/daemon/dbwatch.py), says so, finishes the old history and
starts a new generation from the new file.  `walrewind reseed` asks for the same on purpose.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone

import pytest
import walrewind
from daemon_process import Daemon
from harness import create_db, run_writer
from walrewind.engine.replica.index import Replica
from walrewind.engine.storage import open_storage

WALREWIND = [sys.executable, "-c", "from walrewind.cli.main import main; main()"]
CONFIG = """\
data_dir = "data"

[databases.app]
path = "app.db"
replica = "replica"
state_dir = "state"
upload_interval = 0.2
"""


def ids(path: str) -> list[int]:
    con = sqlite3.connect(path)
    try:
        return [r[0] for r in con.execute("SELECT id FROM t ORDER BY id")]
    finally:
        con.close()


def generations(replica: str) -> list[str]:
    return [g.id for g in Replica(open_storage(replica, create=False)).generations if g.snapshots]


def setup(tmp_path, txns: int = 20) -> tuple[str, dict]:
    (tmp_path / "walrewind.toml").write_text(CONFIG)
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "xdg"), "WALREWIND_CONFIG": str(tmp_path / "walrewind.toml")}
    db = str(tmp_path / "app.db")
    create_db(db)
    run_writer({"db": db, "txns": txns, "seed": 1})
    return db, env


def test_a_replaced_file_ends_the_old_history_and_starts_a_new_generation(tmp_path):
    db, env = setup(tmp_path)
    old_rows = ids(db)
    other = str(tmp_path / "other.db")
    create_db(other)
    run_writer({"db": other, "txns": 5, "seed": 2, "id_base": 10**6, "truncate_at_end": True})
    daemon = Daemon(["replicate"], tmp_path, env)
    try:
        daemon.wait_for("replicating app")
        before = datetime.now(timezone.utc)
        for suffix in ("-wal", "-shm"):  # a backup moved into place, its stale -wal/-shm removed
            if os.path.exists(db + suffix):
                os.unlink(db + suffix)
        os.replace(other, db)
        daemon.wait_for("was replaced by another file")
        daemon.wait_for("replicating app", count=2)
        run_writer({"db": db, "txns": 5, "seed": 3, "id_base": 2 * 10**6})
    finally:
        rc, said, _took = daemon.stop()
    assert rc == 0, said
    assert "NEW generation" in said and said.count("replicating app") == 2, said
    live = ids(db)
    assert live and min(live) > 10**6 and max(live) > 2 * 10**6  # only the new file's rows
    replica = str(tmp_path / "replica")
    assert len(generations(replica)) == 2
    latest = walrewind.restore(replica, tmp_path / "latest.db")
    assert ids(str(latest.path)) == live
    then = walrewind.restore(replica, tmp_path / "then.db", timestamp=before)
    assert ids(str(then.path)) == old_rows  # the old history is still restorable, exactly


@pytest.mark.slow
def test_reseed_starts_a_new_generation_of_a_running_daemon_and_waits_for_it(tmp_path):
    db, env = setup(tmp_path)
    daemon = Daemon(["replicate"], tmp_path, env)
    try:
        daemon.wait_for("replicating app")
        replica = str(tmp_path / "replica")
        (first,) = generations(replica)
        res = subprocess.run(WALREWIND + ["reseed", "app", "--json"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=180)
        assert res.returncode == 0, res.stderr + "".join(daemon.lines)
        out = json.loads(res.stdout)
        assert out["old_generation"] == first and out["new_generation"] not in (None, first)
        assert out["database"] == db and out["daemon_pid"] == daemon.pid and out["pending"] is False
        assert generations(replica) == [first, out["new_generation"]]
        run_writer({"db": db, "txns": 5, "seed": 4, "id_base": 10**6})
    finally:
        rc, said, _took = daemon.stop()
    assert rc == 0, said
    assert "walrewind reseed" in said
    latest = walrewind.restore(replica, tmp_path / "latest.db")
    assert ids(str(latest.path)) == ids(db)


@pytest.mark.slow
def test_reseed_without_a_daemon_is_taken_at_the_next_start(tmp_path):
    db, env = setup(tmp_path, txns=5)
    daemon = Daemon(["replicate"], tmp_path, env)
    daemon.wait_for("replicating app")
    rc, said, _took = daemon.stop()
    assert rc == 0, said
    replica = str(tmp_path / "replica")
    (first,) = generations(replica)
    res = subprocess.run(WALREWIND + ["reseed", "app", "--reason", "copied in by hand"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "its next start begins a new generation" in res.stdout
    daemon = Daemon(["replicate"], tmp_path, env)
    try:
        daemon.wait_for("copied in by hand")
        daemon.wait_for("replicating app")
    finally:
        rc, said, _took = daemon.stop()
    assert rc == 0, said
    gens = generations(replica)
    assert len(gens) == 2 and gens[0] == first
    # an unknown source is one clear line, exit non-zero, nothing requested
    res = subprocess.run(WALREWIND + ["reseed", "nope"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode != 0 and "unknown database 'nope'" in res.stderr and "Traceback" not in res.stderr
