"""The PITR guarantees of test_pitr.py / test_torture.py, on a real S3 server (SeaweedFS).

Same writer processes, same daemon, same oracle (``judge``): only the replica URL differs.
"""

from __future__ import annotations

import uuid

import pytest
from harness import (
    PITR_WORKLOADS,
    DaemonThread,
    check_latest_restore,
    check_restore_at_fraction,
    check_restore_window_edges,
    create_db,
    read_log,
    replicate_workload,
    run_writer,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_torture import _restore_checks
from walrewind.engine.replica.index import Replica
from walrewind.engine.restore.restorer import restore
from walrewind.engine.storage import open_storage

pytestmark = [pytest.mark.s3, pytest.mark.slow]


@pytest.fixture(scope="module", params=sorted(PITR_WORKLOADS))
def replicated(request, tmp_path_factory, seaweed_s3):
    """One workload replicated end to end into SeaweedFS; the writer's log is the ground truth."""
    base = tmp_path_factory.mktemp(request.param)
    replica = seaweed_s3.light_url(f"pitr/{request.param}-{uuid.uuid4().hex[:8]}")  # the daemon without boto3
    return replicate_workload(base, replica, PITR_WORKLOADS[request.param])


def test_latest_restore_equals_final_state(replicated, tmp_path):
    check_latest_restore(replicated, str(tmp_path / "latest.db"))


def test_window_edges(replicated, tmp_path):
    check_restore_window_edges(replicated, str(tmp_path))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fraction=st.floats(min_value=0.0, max_value=1.0), whole_second=st.booleans())
def test_restore_at_random_time_is_exact(replicated, tmp_path_factory, fraction, whole_second):
    check_restore_at_fraction(replicated, str(tmp_path_factory.mktemp("r") / "at.db"), fraction, whole_second)


def test_every_transaction_restorable_by_txid(replicated, tmp_path):
    """Sampled txids restore exactly the state the application had after that commit."""
    replica = Replica(open_storage(replicated["replica"], create=False))
    real = {t["checksum"] for t in replicated["txns"]}
    gen = replica.generations[-1]
    txids = list(range(gen.first_txid, gen.last_txid + 1))
    for n, txid in enumerate(txids[:: max(1, len(txids) // 8)]):
        out = str(tmp_path / f"tx{n}.db")
        result = restore(replica.storage, out, target_txid=txid, replica=replica)
        assert result.txid == txid
        assert f"{result.checksum:016x}" in real


def test_app_truncate_checkpoints_on_s3(seaweed_s3, tmp_path):
    """The torture suite's sqld-style workload (TRUNCATE every second) shipped to S3."""
    db, log = str(tmp_path / "app.db"), str(tmp_path / "log")
    replica = seaweed_s3.light_url(f"torture/{uuid.uuid4().hex}")
    create_db(db)
    with DaemonThread(db, replica, str(tmp_path / "state")) as shipper:
        run_writer({"db": db, "log": log, "checksums": True, "rate": 100, "duration": 4, "truncate_every": 1.0, "seed": 11})
    txns, ckpts = read_log(log)
    assert [c["busy"] for c in ckpts] == [0] * len(ckpts)
    assert shipper.stats.resyncs == 0 and shipper.stats.upload_errors == 0
    _restore_checks(replica, txns, tmp_path, targets=10)


def test_sync_path_makes_no_list_requests(seaweed_s3, tmp_path):
    """LIST happens only at start-up (lease/ and generations/); uploads and heartbeats never list."""
    db, log = str(tmp_path / "app.db"), str(tmp_path / "log")
    replica = seaweed_s3.url(f"economy/{uuid.uuid4().hex}")
    create_db(db)
    with DaemonThread(db, replica, str(tmp_path / "state"), heartbeat_interval=0.3) as shipper:
        at_start = dict(shipper.storage.request_counts())
        run_writer({"db": db, "log": log, "rate": 100, "txns": 150, "seed": 5})
        during = dict(shipper.storage.request_counts())
    assert at_start.get("ListObjectsV2") == 2, at_start
    assert during.get("ListObjectsV2") == 2, during
    assert shipper.stats.heartbeats >= 1
    assert during.get("PutObject", 0) > shipper.stats.segments  # segments + heartbeats + lease


def test_storage_calls_of_the_sync_path_are_counted_and_never_list(tmp_path):
    """The same economy, counted at the Storage interface (any backend): after start-up the
    daemon only creates objects and deletes its previous heartbeat."""
    import threading

    from walrewind.engine.daemon.replicator import Replicator
    from walrewind.engine.storage.counting import CountingStorage

    db = str(tmp_path / "app.db")
    create_db(db)
    store = CountingStorage(open_storage(str(tmp_path / "replica")))
    shipper = Replicator(db, store, state_dir=str(tmp_path / "state"), upload_interval=0.1, heartbeat_interval=0.3)
    thread = threading.Thread(target=shipper.run, daemon=True)
    thread.start()
    assert shipper.ready.wait(60)
    startup, first_sync_call = store.counts(), len(store.keys)
    run_writer({"db": db, "rate": 100, "txns": 100, "seed": 6})
    shipper.stop()
    thread.join(60)
    calls = store.counts()
    assert startup["list"] == calls["list"] == 2, calls
    # Segments are streamed from a file (put_file_if_absent), heartbeats are empty objects.
    creates = calls["put_if_absent"] + calls.get("put_file_if_absent", 0)
    assert creates >= shipper.stats.segments + shipper.stats.heartbeats
    assert {method for method, _key in store.keys[first_sync_call:]} <= {"put_if_absent", "put_file_if_absent", "delete", "get"}
