"""The uploader ships a burst as soon as the writer goes quiet, not at the next interval."""

from __future__ import annotations

import time

from harness import (
    DaemonThread,
    create_db,
    read_log,
    replica_records,
    run_writer,
    wait_for,
)


def test_a_burst_is_uploaded_once_the_writer_is_quiet_not_at_the_next_interval(tmp_path):
    db, replica, log = str(tmp_path / "app.db"), str(tmp_path / "replica"), str(tmp_path / "log")
    create_db(db)
    # a 60 s interval: after the base snapshot, nothing would be uploaded for a minute
    with DaemonThread(db, replica, str(tmp_path / "state"), upload_interval=60.0) as daemon:
        run_writer({"db": db, "log": log, "rate": 0, "txns": 400, "row_bytes": 1000, "seed": 21})
        txns, _ = read_log(log)
        ended = time.monotonic()
        wait_for(lambda: daemon.stats.uploaded_txid >= daemon.stats.last_txid > 1 and not daemon.reader.unverified,
                 timeout=20, what="the burst to be uploaded")
        took = time.monotonic() - ended
        last = daemon.stats.last_txid
    assert took < 10, took  # well before the 60 s interval
    # (a commit that changed nothing writes no WAL frame, so there are a few fewer records than commits)
    assert max(r.txid for r in replica_records(replica)) == last and last > len(txns) // 2


def test_a_slow_writer_waits_for_the_interval(tmp_path):
    """A few small commits are not a burst: they go at the interval (request economy)."""
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    create_db(db)
    with DaemonThread(db, replica, str(tmp_path / "state"), upload_interval=60.0) as daemon:
        run_writer({"db": db, "rate": 20, "txns": 5, "seed": 22})
        wait_for(lambda: daemon.stats.last_txid >= 5 and not daemon.reader.unverified, what="the commits to be read")
        assert daemon.stats.uploaded_txid == 1 and daemon.stats.segments == 0  # still waiting for the interval
