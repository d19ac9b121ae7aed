"""engine/daemon/lag.py: lag = age of the oldest commit not yet durable in the replica (0 caught up)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from harness import read_log, run_writer, wait_for
from test_daemon_outage import switchable_daemon
from test_daemon_spool import PAGE, make_items
from walrewind.engine.daemon.lag import LagProbe
from walrewind.engine.daemon.observations import Observations
from walrewind.engine.daemon.spool import StateDir
from walrewind.engine.daemon.stats import ReplicatorStats

T0 = 1_705_314_600_000_000  # make_items stamps records T0, T0 + 1, ...


def fake(tmp_path, **kw):
    ready, capturing = threading.Event(), threading.Event()
    ready.set()
    capturing.set()
    d = SimpleNamespace(pending_snapshot=None, pending_snapshot_ts=0, ready=ready, capturing=capturing, overflow=None,
                        stats=ReplicatorStats(), rs=SimpleNamespace(anchor=7), observations=Observations(),
                        state=StateDir(str(tmp_path / "state")), fatal=None, startup_done=True, upload_interval=1.0,
                        page_size=PAGE)
    for k, v in kw.items():
        setattr(d, k, v)
    return d


def test_each_source_of_lag(tmp_path):
    d = fake(tmp_path)
    probe = LagProbe(d)
    assert probe.seconds(T0) == 0.0 and probe.phase() == "replicating"  # caught up
    # spooled, not uploaded: the first record after the uploaded point (txid 3 of 1..5)
    d.state.append(make_items(1, 5, first_txid=1))
    d.stats.last_txid, d.stats.uploaded_txid = 5, 2
    assert probe.seconds(T0 + 2_000_000) == (2_000_000 - 2) / 1e6
    # a commit SQLite counted (counter 8 > anchor 7) that the reader has not spooled: seen at T0 - 1 s
    d.observations.add(b"\0" * 8, 10, T0 - 3_000_000, 6)  # behind the anchor: already spooled, ignored
    d.observations.add(b"\0" * 8, 12, T0 - 1_000_000, 8)
    assert probe.seconds(T0) == 1.0
    # the spool filled 5 s ago: reading stopped then
    d.overflow, d.stats.spool_full_since_us = object(), T0 - 5_000_000
    assert probe.seconds(T0) == 5.0 and probe.phase() == "behind"
    # a base snapshot not uploaded yet is owed as a whole
    d.pending_snapshot, d.pending_snapshot_ts = ("k", "p"), T0 - 9_000_000
    assert probe.seconds(T0) == 9.0
    d.capturing.clear()
    assert probe.seconds(T0) is None and probe.phase() == "starting"  # not tailing yet: unknown


def test_counter_wraps_around(tmp_path):
    d = fake(tmp_path, rs=SimpleNamespace(anchor=0xFFFFFFFF))
    d.observations.add(b"\1" * 8, 3, T0 - 2_000_000, 1)  # 0xFFFFFFFF + 2 commits, wrapped
    assert LagProbe(d).seconds(T0) == 2.0


def test_lag_of_a_running_daemon_grows_in_an_outage_and_returns_to_zero(tmp_path):
    log = str(tmp_path / "log")
    db, store, daemon, thread = switchable_daemon(tmp_path, 0.1)
    try:
        assert daemon.ready.wait(30)
        assert daemon.lag_seconds() == 0.0 and daemon.phase == "replicating"
        store.down = True
        run_writer({"db": db, "log": log, "checksums": True, "rate": 100, "txns": 20, "seed": 5})
        txns, _ = read_log(log)
        wait_for(lambda: daemon.stats.replica_unreachable_since_us and daemon.stats.backlog_txns >= 10,
                 what="the outage to be noticed")
        now = time.time_ns() // 1000
        lag = daemon.lag_seconds(now)
        oldest = min(t["end"] for t in txns[1:] if t["checksum"] != txns[0]["checksum"])
        # the oldest commit not in the replica is the first of the outage, stamped when the daemon saw
        # it: after it began, and (even on a busy box) within a second of its COMMIT returning
        assert (now - oldest) / 1e6 - 1.0 <= lag <= (now - txns[1]["begin"]) / 1e6, (lag, now, oldest)
        assert daemon.phase == "spooling"
        store.down = False
        wait_for(lambda: daemon.stats.backlog_txns == 0 and daemon.lag_seconds() == 0.0
                 and daemon.phase == "replicating", timeout=30, what="lag back to 0, replicating again")
    finally:
        daemon.stop()
        thread.join(60)
