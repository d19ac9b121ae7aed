"""restore(T) equals the database as it was at T: real writer process, real daemon, real restores."""

from __future__ import annotations

import pytest
from harness import (
    DaemonThread,
    assert_no_invented_states,
    check_latest_restore,
    check_restore_at_fraction,
    create_db,
    read_log,
    run_writer,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    check_latest_restore(replicated, str(tmp_path / "latest.db"))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fraction=st.floats(min_value=0.0, max_value=1.0), whole_second=st.booleans())
def test_restore_at_random_time_is_exact(replicated, tmp_path_factory, fraction, whole_second):
    check_restore_at_fraction(replicated, str(tmp_path_factory.mktemp("r") / "at.db"), fraction, whole_second)
