"""restore(T) equals the database as it was at T: real writer process, real daemon, real restores."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import DaemonThread, assert_no_invented_states, create_db, judge, read_log, run_writer
from walrewind.engine.restore import restore
from walrewind.engine.storage import open_storage

WORKLOADS = {
    "mixed": {"rate": 150, "txns": 300, "seed": 1},
    "spills-rollbacks": {"rate": 100, "txns": 150, "seed": 2, "big_every": 40, "cache_size": 20, "rollback_every": 7},
    "tiny-autocheckpoint-vacuum": {"rate": 100, "txns": 200, "seed": 3, "autocheckpoint": 5, "vacuum_every": 50},
}


@pytest.fixture(scope="module", params=sorted(WORKLOADS))
def replicated(request, tmp_path_factory):
    """One workload replicated end to end; the writer's log is the ground truth."""
    base = tmp_path_factory.mktemp(request.param)
    db, replica, log = str(base / "app.db"), str(base / "replica"), str(base / "log.jsonl")
    create_db(db)
    with DaemonThread(db, replica, str(base / "state")) as shipper:
        run_writer({"db": db, "log": log, "checksums": True, **WORKLOADS[request.param]})
    txns, _ = read_log(log)
    assert_no_invented_states(replica, txns)
    return {"dir": base, "replica": replica, "txns": txns, "stats": shipper.stats}


def test_latest_restore_equals_final_state(replicated, tmp_path):
    out = str(tmp_path / "latest.db")
    result = restore(open_storage(replicated["replica"], create=False), out)
    final = replicated["txns"][-1]
    v = judge(out, result.page_size, replicated["txns"], replicated["txns"][0]["checksum"], final["end"] + 10_000_000)
    assert v.restored_index == final["i"], v
    assert result.quick_check == "ok"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fraction=st.floats(min_value=0.0, max_value=1.0), whole_second=st.booleans())
def test_restore_at_random_time_is_exact(replicated, tmp_path_factory, fraction, whole_second):
    txns = replicated["txns"]
    first, last = txns[1]["begin"], txns[-1]["end"]
    target = int(first + fraction * (last - first))
    if whole_second:
        target -= target % 1_000_000
        target = max(target, txns[0]["end"])
    if target < first - 1_000_000:
        return
    out = str(tmp_path_factory.mktemp("r") / "at.db")
    try:
        result = restore(open_storage(replicated["replica"], create=False), out, target_us=target)
    except Exception as exc:  # a target before the first snapshot is legitimately too old
        assert "too old" in str(exc)
        return
    v = judge(out, result.page_size, txns, txns[0]["checksum"], target)
    assert v.exact, f"target {target}: restored state of txn {v.restored_index}, allowed {v.allowed}"
    os.unlink(out)
