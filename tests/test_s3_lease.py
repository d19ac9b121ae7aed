"""Fencing: two daemons never ship into one replica path (engine/lease.py), on SeaweedFS.

Lease durations are injected (seconds, not minutes); every wait polls for an effect with a timeout.
"""

from __future__ import annotations

import json
import os
import socket
import uuid

import pytest
from faultproxy import FaultProxy
from harness import (
    DaemonThread,
    assert_no_invented_states,
    create_db,
    read_log,
    run_writer,
    wait_for,
)
from walrewind.engine.daemon.replicator import Replicator
from walrewind.engine.daemon.uploader import Uploader
from walrewind.engine.errors import (
    DaemonError,
    ForeignReplica,
    LeaseHeld,
    LeaseLost,
    ObjectConflict,
)
from walrewind.engine.replica.format import TxnRecord, encode_segment
from walrewind.engine.replica.index import Replica, object_header
from walrewind.engine.replica.lease import now_us, scan
from walrewind.engine.restore.restorer import restore
from walrewind.engine.storage import open_storage

pytestmark = pytest.mark.s3
FAST = {"heartbeat_interval": 0.3, "lease_seconds": 2.0}


def start_refused(db: str, url: str, state: str, **kwargs) -> DaemonError:
    daemon = DaemonThread(db, url, state, **kwargs)
    with pytest.raises(DaemonError) as err:
        daemon.__enter__()
    daemon.thread.join(30)
    return err.value


def test_second_daemon_is_refused_naming_the_holder(seaweed_s3, tmp_path):
    db, url = str(tmp_path / "app.db"), seaweed_s3.url(f"lease/{uuid.uuid4().hex}")
    create_db(db)
    with DaemonThread(db, url, str(tmp_path / "a"), **FAST) as first:
        err = start_refused(db, url, str(tmp_path / "b"), **FAST)
        message = str(err)
        assert isinstance(err.__cause__, LeaseHeld)
        assert "another walrewind daemon" in message and f"pid {os.getpid()}" in message
        assert f"host {socket.gethostname()}" in message and "since" in message and "--takeover" in message
        assert first.lease.epoch == 1 and not first._stop.is_set()
    # a clean stop releases the lease: the next daemon starts at once, without --takeover
    with DaemonThread(db, url, str(tmp_path / "b"), heartbeat_interval=60, lease_seconds=600) as second:
        assert second.lease.epoch == 3  # 1 = first, 2 = its release marker


@pytest.mark.slow
def test_takeover_after_expiry_fences_the_partitioned_holder(seaweed_s3, tmp_path):
    prefix = f"lease/{uuid.uuid4().hex}"
    direct = seaweed_s3.url(prefix)
    db, log = str(tmp_path / "app.db"), str(tmp_path / "log")
    create_db(db)
    with FaultProxy(seaweed_s3.endpoint, seed=60) as proxy:
        old_url = f"s3://{seaweed_s3.bucket}/{prefix}?endpoint={proxy.endpoint}&max_attempts=1&connect_timeout=1"
        old = DaemonThread(db, old_url, str(tmp_path / "old"), **FAST)
        holder = old.__enter__()
        run_writer({"db": db, "log": log, "checksums": True, "rate": 100, "txns": 60, "seed": 61})
        wait_for(lambda: holder.stats.uploaded_txid == holder.stats.last_txid and holder.stats.heartbeats > 0,
                 what="the first daemon to upload and renew")
        old_generation = holder.generation
        proxy.down = True  # the holder is cut off from S3 but keeps running

        # While its lease is fresh a second daemon is refused; once it expires, it takes over.
        refused = start_refused(db, direct, str(tmp_path / "new"), **FAST)
        assert isinstance(refused.__cause__, LeaseHeld)
        new = None

        def take_over() -> bool:
            nonlocal new
            daemon = DaemonThread(db, direct, str(tmp_path / "new"), **FAST)
            try:
                daemon.__enter__()
            except DaemonError as exc:
                assert isinstance(exc.__cause__, LeaseHeld), exc
                daemon.thread.join(30)
                return False
            new = daemon
            return True

        wait_for(take_over, timeout=30, what="the lease to expire")
        successor = new.shipper
        assert successor.lease.epoch == 2 and successor.generation != old_generation
        assert successor.db_id == holder.db_id  # same database file, same identity
        run_writer({"db": db, "log": log, "checksums": True, "rate": 100, "txns": 60, "seed": 62})
        segments_before = {s.key for s in Replica(open_storage(direct)).generations[0].segments}

        # The old holder gets S3 back: its lease has expired, re-acquiring fails, it stops
        # without uploading another byte.
        proxy.down = False
        wait_for(lambda: not old.thread.is_alive(), timeout=30, what="the old daemon to stop")
        assert isinstance(old.error, DaemonError) and isinstance(old.error.__cause__, LeaseLost), old.error
        assert "taken over" in str(old.error) and f"pid {os.getpid()}" in str(old.error)
        after = Replica(open_storage(direct))
        assert {s.key for s in after.generations[0].segments} == segments_before
        assert all(not g.overlaps() for g in after.generations)
        new.__exit__(None, None, None)
    txns, _ = read_log(log)
    assert_no_invented_states(direct, txns)
    out = str(tmp_path / "latest.db")
    result = restore(open_storage(direct, create=False), out)
    assert f"{result.checksum:016x}" == txns[-1]["checksum"]


@pytest.mark.slow
def test_takeover_flag_displaces_a_live_daemon(seaweed_s3, tmp_path):
    db, url = str(tmp_path / "app.db"), seaweed_s3.url(f"lease/{uuid.uuid4().hex}")
    create_db(db)
    old = DaemonThread(db, url, str(tmp_path / "old"), heartbeat_interval=0.3, lease_seconds=600)
    holder = old.__enter__()
    with DaemonThread(db, url, str(tmp_path / "new"), heartbeat_interval=0.3, lease_seconds=600, takeover=True) as new:
        assert new.lease.epoch == 2
        # the displaced daemon notices at its next heartbeat (one GET of lease/<epoch + 1>)
        wait_for(lambda: not old.thread.is_alive(), timeout=30, what="the displaced daemon to stop")
        assert isinstance(old.error.__cause__, LeaseLost) and "taken over" in str(old.error)
        assert holder.stats.lease_epoch == 1
        run_writer({"db": db, "txns": 20, "rate": 100, "seed": 63})
        wait_for(lambda: new.stats.uploaded_txid == new.stats.last_txid and new.stats.last_txid > 1, what="uploads")
    found = scan(open_storage(url))
    assert found.holder is not None and found.holder.released and found.newest_epoch == 3


@pytest.mark.slow
def test_another_database_is_refused(seaweed_s3, tmp_path):
    url = seaweed_s3.url(f"lease/{uuid.uuid4().hex}")
    first, second = str(tmp_path / "first.db"), str(tmp_path / "second.db")
    create_db(first)
    create_db(second)
    with DaemonThread(first, url, str(tmp_path / "a")):
        pass
    err = start_refused(second, url, str(tmp_path / "b"))
    assert isinstance(err.__cause__, ForeignReplica)
    assert f"holds the history of database {first}" in str(err) and second in str(err)
    # the same database file with a fresh state directory continues under its identity
    with DaemonThread(first, url, str(tmp_path / "c")) as again:
        assert again.db_id == scan(open_storage(url)).holder.db_id


@pytest.mark.slow
def test_state_of_another_database_is_refused_even_with_takeover(seaweed_s3, tmp_path):
    """A state directory that belongs to database X never appends to a path holding database Y."""
    url_x, url_y = (seaweed_s3.url(f"lease/{uuid.uuid4().hex}") for _ in range(2))
    db = str(tmp_path / "app.db")
    create_db(db)
    with DaemonThread(db, url_x, str(tmp_path / "x")):
        pass
    with DaemonThread(db, url_y, str(tmp_path / "y")):
        pass
    # Point state dir x (database identity of replica x) at replica y, whose history is another
    # db_id: state.json with the replica URL rewritten, as a confused operator might.
    state = json.loads((tmp_path / "x" / "state.json").read_text())
    state["replica"] = url_y
    (tmp_path / "x" / "state.json").write_text(json.dumps(state))
    err = start_refused(db, url_y, str(tmp_path / "x"), takeover=True)
    assert isinstance(err.__cause__, ForeignReplica) and "mix two databases" in str(err)


@pytest.mark.slow
def test_holder_reacquires_after_an_outage_longer_than_its_lease(seaweed_s3, tmp_path):
    """Renewals fail while S3 is unreachable; when it is back the holder's lease has expired, so
    before uploading it re-acquires by creating the next epoch (nobody took it), and goes on."""
    prefix = f"lease/{uuid.uuid4().hex}"
    db, log = str(tmp_path / "app.db"), str(tmp_path / "log")
    create_db(db)
    with FaultProxy(seaweed_s3.endpoint, seed=64) as proxy:
        url = f"s3://{seaweed_s3.bucket}/{prefix}?endpoint={proxy.endpoint}&max_attempts=1&connect_timeout=1"
        with DaemonThread(db, url, str(tmp_path / "state"), **FAST) as shipper:
            proxy.down = True
            run_writer({"db": db, "log": log, "checksums": True, "rate": 100, "txns": 50, "seed": 65})
            wait_for(lambda: now_us() > shipper.lease.valid_until_us, timeout=30, what="the lease to lapse")
            proxy.down = False
            wait_for(lambda: shipper.stats.backlog_txns == 0 and shipper.stats.lease_epoch == 2, timeout=30,
                     what="re-acquisition and upload")
            assert shipper.lease.reacquired == 1 and shipper.fatal is None
    txns, _ = read_log(log)
    direct = seaweed_s3.url(prefix)
    assert_no_invented_states(direct, txns)
    replica = Replica(open_storage(direct))
    epochs = {object_header(replica.storage, s.key).get("lease_epoch") for s in replica.generations[-1].segments}
    assert epochs == {2}  # everything was uploaded after the re-acquisition


@pytest.mark.slow
def test_segment_already_uploaded_under_an_older_epoch_is_accepted(seaweed_s3):
    """After a restart (new epoch) a segment whose first upload landed is re-encoded with another
    lease_epoch: same history, so it is accepted; different history under the key is refused."""
    store = open_storage(seaweed_s3.url(f"lease/{uuid.uuid4().hex}"))
    shipper = Replicator.__new__(Replicator)
    shipper.storage = store
    shipper.uploader = Uploader(shipper)
    header = {"db_id": "ab" * 16, "generation": "0" * 16 + "-00000000", "page_size": 512, "first_txid": 5,
              "last_txid": 5, "through_ts_us": 7}
    record = TxnRecord(5, 7, 1, 0, 123, {1: bytes(512)})
    shipper.uploader.put_segment("seg", encode_segment(dict(header, lease_epoch=1), [record]))
    shipper.uploader.put_segment("seg", encode_segment(dict(header, lease_epoch=1), [record]))  # identical bytes
    shipper.uploader.put_segment("seg", encode_segment(dict(header, lease_epoch=2), [record]))  # same history
    other = TxnRecord(5, 7, 1, 0, 124, {1: b"x" * 512})
    with pytest.raises(ObjectConflict, match="different history"):
        shipper.uploader.put_segment("seg", encode_segment(dict(header, lease_epoch=2), [other]))
