"""The maintenance scheduler: periodic snapshots, drills, retention/compaction pacing, status.

Replicas are synthetic (tests/synth_history.py: real SQLite page images, correct checksums) so hours
of schedule run in seconds; the scheduler's clock is injected and advanced, nothing sleeps.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from synth_history import SyntheticHistory
from walrewind.engine.maintenance.scheduler import (
    DAY_US,
    HOUR_US,
    MINUTE_US,
    SECOND_US,
    Maintenance,
    MaintenancePolicy,
    retention_interval_us,
)
from walrewind.engine.replica.index import Replica
from walrewind.engine.restore.restorer import plan_restore, restore
from walrewind.engine.storage import open_storage
from walrewind.engine.storage.counting import CountingStorage

START_US = (time.time_ns() // 1000 // DAY_US - 5) * DAY_US  # five days ago, whole day: data in the past
NO_SNAPSHOTS = dict(snapshot_interval_us=None, snapshot_volume=0)


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def history(tmp_path, seconds: int = 5, **kwargs) -> SyntheticHistory:
    kwargs.setdefault("pages", 48)
    kwargs.setdefault("rate", 20)
    h = SyntheticHistory(open_storage(str(tmp_path / "replica")), START_US, workdir=str(tmp_path), seed=7, **kwargs)
    for _ in range(seconds):
        h.second()
    return h


def snapshots(storage) -> list:
    return Replica(storage).generations[-1].snapshots


def test_retention_interval():
    assert retention_interval_us(None) is None
    assert retention_interval_us(7 * DAY_US) == HOUR_US
    assert retention_interval_us(2 * HOUR_US) == 12 * MINUTE_US
    assert MaintenancePolicy.for_retention(30 * MINUTE_US).retention_interval_us == 3 * MINUTE_US


def test_snapshot_by_interval_not_before_and_restores_exactly(tmp_path):
    h = history(tmp_path, seconds=5)
    clock = Clock(h.ts_us)
    m = Maintenance(h.storage, MaintenancePolicy(snapshot_interval_us=HOUR_US, snapshot_volume=0), clock=clock,
                    workdir=str(tmp_path))
    assert m.run_due(START_US + 30 * MINUTE_US) == []
    check = m.status()["snapshot_check"]
    assert check["reason"] == "not due" and check["last_txid"] == h.txid
    assert m.next_due_us() <= START_US + HOUR_US  # the next look is at the interval at the latest
    assert len(snapshots(h.storage)) == 1
    [res] = m.run_due(START_US + HOUR_US)
    assert res.task == "snapshot" and res.result == "ok" and res.detail["trigger"] == "interval"
    assert res.detail["txid"] == h.txid and res.detail["created"]
    snaps = snapshots(h.storage)
    assert [s.txid for s in snaps] == [1, h.txid]
    # the new snapshot is what a latest restore starts from, and it restores the same database
    replica = Replica(h.storage)
    plan = plan_restore(replica)
    assert plan.snapshot.txid == h.txid and plan.segments == []
    out = restore(h.storage, str(tmp_path / "latest.db"))
    assert out.checksum == h.checksum and out.quick_check == "ok"
    # every earlier point is still exact (planned from the first snapshot)
    mid = restore(h.storage, str(tmp_path / "mid.db"), target_txid=h.txid - 30)
    assert mid.txid == h.txid - 30
    # nothing new since: no snapshot, however long we wait
    for hours in (2, 5, 30):
        assert m.run_due(START_US + hours * HOUR_US) == []
    assert m.status()["snapshot_check"]["reason"] == "nothing new since the newest snapshot"
    assert len(snapshots(h.storage)) == 2
    # new history: the next look (at most snapshot_check_max_us later) snapshots it
    h.second()
    assert m.next_due_us() <= START_US + 30 * HOUR_US + 10 * MINUTE_US
    [res] = m.run_due(START_US + 30 * HOUR_US + 10 * MINUTE_US)
    assert res.detail["txid"] == h.txid and res.detail["trigger"] == "interval"
    out = restore(h.storage, str(tmp_path / "latest2.db"))
    assert out.checksum == h.checksum


def test_snapshot_by_volume_after_enough_segments(tmp_path):
    h = history(tmp_path, seconds=0, pages=64, rate=50)
    counting = CountingStorage(h.storage)
    policy = MaintenancePolicy(snapshot_interval_us=DAY_US, snapshot_volume=8.0, snapshot_check_min_us=SECOND_US)
    m = Maintenance(counting, policy, clock=Clock(START_US), workdir=str(tmp_path))
    threshold = 8 * h.snapshot_bytes
    fired = []
    crossed_at = None
    for sec in range(1, 200):
        h.second()
        now = h.ts_us
        results = m.run_due(now)
        if crossed_at is None and h.segment_bytes > threshold:
            crossed_at = sec
        if results:
            assert crossed_at is not None, "snapshot before the volume threshold was crossed"
            fired.append((sec, results[0]))
            break
    assert fired, "no snapshot by volume"
    sec, res = fired[0]
    assert res.detail["trigger"] == "volume" and res.detail["segment_bytes_replaced"] > threshold
    assert sec - crossed_at <= 3, (sec, crossed_at)  # the adaptive look lands close to the crossing
    # looks were paced by the byte rate, not one LIST per second
    assert counting.calls["list"] < sec * 0.6, (counting.calls["list"], sec)
    assert restore(h.storage, str(tmp_path / "v.db")).checksum == h.checksum
    # the threshold now refers to the new snapshot: the next few seconds do not trigger again
    for _ in range(3):
        h.second()
        assert m.run_due(h.ts_us) == []


def test_no_snapshot_of_an_idle_database(tmp_path):
    h = history(tmp_path, seconds=0)
    m = Maintenance(h.storage, MaintenancePolicy(snapshot_interval_us=HOUR_US), clock=Clock(START_US))
    for day in range(1, 4):
        assert m.run_due(START_US + day * DAY_US) == []
    assert len(snapshots(h.storage)) == 1
    assert m.status()["snapshot_check"]["reason"] == "nothing new since the newest snapshot"


def test_drills_record_passed_and_failed(tmp_path):
    h = history(tmp_path, seconds=6)
    policy = MaintenancePolicy(verify_interval_us=HOUR_US, **NO_SNAPSHOTS)
    m = Maintenance(h.storage, policy, clock=Clock(START_US), workdir=str(tmp_path))
    assert m.status()["tasks"]["drill"]["next_due_us"] == START_US + HOUR_US  # not at start-up
    assert m.run_due(START_US + 10 * MINUTE_US) == []
    [res] = m.run_due(START_US + HOUR_US)
    assert res.task == "drill" and res.result == "PASSED", res.detail
    assert len(res.detail["drills"]) == 2 and res.detail["drills"][1]["target"] == "latest"
    assert all("integrity_check ok" in d["detail"] for d in res.detail["drills"])
    st = m.status()["tasks"]["drill"]
    assert st["last"]["result"] == "PASSED" and st["next_due_us"] == START_US + 2 * HOUR_US
    victim = sorted((tmp_path / "replica").glob("generations/*/segments/*.seg"))[-1]
    data = bytearray(victim.read_bytes())
    data[60] ^= 0xFF
    victim.write_bytes(bytes(data))
    [res] = m.run_due(START_US + 2 * HOUR_US)
    assert res.result == "FAILED"
    assert victim.name in json.dumps(res.detail)
    st = m.status()["tasks"]["drill"]
    assert st["last"]["result"] == "FAILED" and st["consecutive_failures"] == 1
    assert st["next_due_us"] == START_US + 3 * HOUR_US  # a verdict, not retried early


def test_failing_prune_is_recorded_and_other_tasks_still_run(tmp_path):
    h = history(tmp_path, seconds=3)
    calls = []

    def bad_prune(now: int):
        calls.append(("prune", now))
        raise RuntimeError("bucket says no")

    def compact(now: int):
        calls.append(("compact", now))
        return {"merged": 3, "keys": [f"k{i}" for i in range(100)]}

    policy = MaintenancePolicy(snapshot_interval_us=HOUR_US, retention_interval_us=HOUR_US,
                               compact_interval_us=10 * MINUTE_US, verify_interval_us=HOUR_US, retry_us=5 * MINUTE_US)
    clock = Clock(START_US)
    m = Maintenance(h.storage, policy, prune=bad_prune, compact=compact, clock=clock, workdir=str(tmp_path))
    now = START_US + 2 * HOUR_US
    results = m.run_due(now)
    assert [r.task for r in results] == ["snapshot", "retention", "compaction", "drill"]
    by_task = {r.task: r for r in results}
    assert by_task["retention"].result == "error" and "bucket says no" in by_task["retention"].detail
    assert by_task["snapshot"].result == "ok" and by_task["compaction"].detail["merged"] == 3
    keys = by_task["compaction"].detail["keys"]  # long report lists are cut for the status file
    assert len(keys) == 21 and keys[-1] == "... 80 more"
    assert by_task["drill"].result == "PASSED"
    status = m.status()
    json.dumps(status)  # the daemon writes it as JSON
    ret = status["tasks"]["retention"]
    assert ret["last"]["result"] == "error" and ret["consecutive_failures"] == 1
    assert ret["next_due_us"] == now + 5 * MINUTE_US  # retried sooner than its interval
    comp = status["tasks"]["compaction"]
    assert comp["last"]["result"] == "ok" and comp["next_due_us"] == now + 10 * MINUTE_US
    assert comp["last"]["at_us"] == now and comp["last"]["seconds"] >= 0
    results = m.run_due(now + 5 * MINUTE_US)
    assert [r.task for r in results] == ["retention"]
    assert m.status()["tasks"]["retention"]["consecutive_failures"] == 2
    assert [c[0] for c in calls] == ["prune", "compact", "prune"]


def test_disabled_tasks_and_status_shape(tmp_path):
    h = history(tmp_path, seconds=1)
    m = Maintenance(h.storage, MaintenancePolicy(**NO_SNAPSHOTS), clock=Clock(START_US))
    st = m.status()
    assert set(st["tasks"]) == {"snapshot", "retention", "compaction", "drill"}
    assert not any(t["enabled"] for t in st["tasks"].values())
    assert m.next_due_us() is None and m.run_due(START_US + DAY_US) == []
    assert st["running"] is None and st["tasks"]["drill"]["last"] is None


def test_long_task_does_not_starve_the_others(tmp_path):
    h = history(tmp_path, seconds=2)
    clock = Clock(START_US)
    ran = []

    def slow_compact(now: int):
        ran.append("compact")
        clock.now += 2 * HOUR_US  # takes two hours
        return None

    def prune(now: int):
        ran.append("prune")

    policy = MaintenancePolicy(retention_interval_us=HOUR_US, compact_interval_us=10 * MINUTE_US, **NO_SNAPSHOTS)
    m = Maintenance(h.storage, policy, prune=prune, compact=slow_compact, clock=clock)
    m.run_due()  # prune, then compaction (which ends two hours later)
    assert ran == ["prune", "compact"]
    # next time, the prune that became due during the long compaction comes first
    m.run_due()
    assert ran == ["prune", "compact", "prune"]
    st = m.status()["tasks"]
    assert st["compaction"]["next_due_us"] == clock.now + 10 * MINUTE_US


def test_run_forever_honours_stop_between_tasks(tmp_path):
    h = history(tmp_path, seconds=1)
    stop = threading.Event()
    ran = []

    def prune(now: int):
        ran.append("prune")
        stop.set()

    def compact(now: int):
        ran.append("compact")

    m = Maintenance(h.storage, MaintenancePolicy(**NO_SNAPSHOTS), prune=prune, compact=compact)
    t = threading.Thread(target=m.run_forever, args=(stop,), daemon=True)
    started = time.monotonic()
    t.start()
    t.join(10)
    assert not t.is_alive() and time.monotonic() - started < 5
    assert ran == ["prune"]  # the stop came between tasks: compaction was not started


def test_snapshot_errors_are_recorded(tmp_path):
    h = history(tmp_path, seconds=2)
    victim = sorted((tmp_path / "replica").glob("generations/*/segments/*.seg"))[-1]
    victim.write_bytes(victim.read_bytes()[:-3])  # the snapshot build's restore must refuse it
    policy = MaintenancePolicy(snapshot_interval_us=HOUR_US, snapshot_volume=0, retry_us=5 * MINUTE_US)
    m = Maintenance(h.storage, policy, clock=Clock(START_US), workdir=str(tmp_path))
    [res] = m.run_due(START_US + HOUR_US)
    assert res.result == "error" and victim.name in res.detail
    st = m.status()["tasks"]["snapshot"]
    assert st["consecutive_failures"] == 1 and st["next_due_us"] == START_US + HOUR_US + 5 * MINUTE_US
    assert len(snapshots(h.storage)) == 1


@pytest.mark.slow
def test_on_a_replica_written_by_the_daemon(tmp_path):
    """The real daemon's replica: a volume snapshot restores the writer's final state exactly, and a
    drill passes (the scheduler runs beside the daemon, reading only the replica)."""
    from harness import DaemonThread, create_db, read_log, run_writer
    from walrewind.engine.workspace.status import latest_checksum

    db, replica, log = str(tmp_path / "app.db"), str(tmp_path / "replica"), str(tmp_path / "log")
    create_db(db)
    with DaemonThread(db, replica, str(tmp_path / "state")):
        run_writer({"db": db, "log": log, "checksums": True, "rate": 300, "txns": 120, "seed": 5, "big_every": 10})
        storage = open_storage(replica, create=False)
        deadline = time.monotonic() + 30
        txns, _ = read_log(log)
        while f"{latest_checksum(Replica(storage)) or 0:016x}" != txns[-1]["checksum"]:
            assert time.monotonic() < deadline, "daemon did not upload the workload"
            time.sleep(0.1)
    storage = open_storage(replica, create=False)
    policy = MaintenancePolicy(snapshot_volume=0.01, verify_interval_us=HOUR_US)
    now = time.time_ns() // 1000
    m = Maintenance(storage, policy, clock=Clock(now), workdir=str(tmp_path))
    [res] = m.run_due(now)
    assert res.task == "snapshot" and res.detail["trigger"] == "volume", res
    out = restore(storage, str(tmp_path / "latest.db"))
    assert f"{out.checksum:016x}" == txns[-1]["checksum"]
    assert plan_restore(Replica(storage)).snapshot.txid == res.detail["txid"]
    [res] = m.run_due(now + HOUR_US)
    assert res.task == "drill" and res.result == "PASSED", res.detail


@pytest.mark.slow
@pytest.mark.parametrize("many", [False, True], ids=["own-thread", "shared-pool"])
def test_the_daemon_runs_maintenance_and_saves_its_status(tmp_path, monkeypatch, many):
    """Wired into the daemon: a snapshot by volume is built from the replica while it replicates,
    and the result lands in maintenance.json in the state directory (what `db show` prints).  In a
    many-database process the shared pool (maintenancepool.py) runs it instead of a thread."""
    from harness import DaemonThread, create_db, read_log, run_writer
    from walrewind.engine.daemon.maintenancepool import PooledMaintenance
    from walrewind.engine.daemon.replicator import Replicator
    from walrewind.engine.maintenance.scheduler import read_status
    from walrewind.engine.sqlite.pagehash import checksum_file

    monkeypatch.setattr(Replicator, "many_databases", many)
    monkeypatch.setattr(Replicator, "gil_switch_interval", None if many else Replicator.gil_switch_interval)

    db, replica, state = str(tmp_path / "app.db"), str(tmp_path / "replica"), str(tmp_path / "state")
    create_db(db)
    policy = MaintenancePolicy(snapshot_interval_us=None, snapshot_volume=0.01, snapshot_check_min_us=0,
                               snapshot_check_max_us=SECOND_US,
                               retention_interval_us=None, compact_interval_us=None)
    storage = open_storage(replica)
    maintenance = Maintenance(storage, policy)
    with DaemonThread(db, replica, state, maintenance=maintenance) as shipper:
        assert isinstance(shipper._housekeeper, PooledMaintenance) == many
        run_writer({"db": db, "log": str(tmp_path / "log"), "checksums": True, "txns": 150, "rate": 0, "seed": 3})
        deadline = time.monotonic() + 30
        while maintenance.status()["tasks"]["snapshot"]["last"] is None and time.monotonic() < deadline:
            threading.Event().wait(0.05)  # the scheduler thread looks at least once a second
    saved = read_status(state)
    assert saved is not None, maintenance.status()
    assert saved["tasks"]["snapshot"]["last"]["result"] == "ok", saved
    assert len(snapshots(storage)) >= 2, "a snapshot beyond the generation's first"
    txns, _ = read_log(str(tmp_path / "log"))
    out = str(tmp_path / "latest.db")
    result = restore(storage, out)
    assert f"{checksum_file(out, result.page_size):016x}" == txns[-1]["checksum"]
