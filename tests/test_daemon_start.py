"""Starting on a database that is being written: the base snapshot holds the WAL at its point.

Issue 10: during the first snapshot the daemon released its read transaction while the snapshot
uploaded, and the app's checkpoints overwrote commits not yet read (a RESYNC folding hundreds of
commits on every start of a busy database).  Here the snapshot upload is made slow and the app
checkpoints every 20 frames: every commit after the snapshot must still be read, one by one.
"""

from __future__ import annotations

import time

import pytest
from harness import (
    DaemonThread,
    assert_no_invented_states,
    create_db,
    judge,
    read_log,
    run_writer,
    start_writer,
)
from walrewind.engine.restore.restorer import restore
from walrewind.engine.storage import open_storage
from walrewind.engine.storage.local import LocalStorage

UPLOAD_DELAY = 2.0


@pytest.mark.slow
def test_start_under_writes_with_slow_snapshot_upload_loses_nothing(tmp_path, monkeypatch):
    db, replica, log = str(tmp_path / "app.db"), str(tmp_path / "replica"), str(tmp_path / "log")
    create_db(db)
    run_writer({"db": db, "log": str(tmp_path / "seed.log"), "txns": 300, "rate": 0, "row_bytes": 2000, "seed": 1})
    original = LocalStorage.put_file_if_absent

    def slow_put(self, key, path):
        if "/snapshots/" in key:
            time.sleep(UPLOAD_DELAY)  # a big snapshot on a slow link
        return original(self, key, path)

    monkeypatch.setattr(LocalStorage, "put_file_if_absent", slow_put)
    writer = start_writer({"db": db, "log": log, "checksums": True, "rate": 100, "duration": 6, "seed": 2,
                           "autocheckpoint": 20, "id_base": 10_000_000})
    try:
        time.sleep(0.5)  # the app is committing (and checkpointing) when the daemon starts
        with DaemonThread(db, replica, str(tmp_path / "state")) as shipper:
            assert writer.wait(60) == 0, writer.stderr.read()
    finally:
        if writer.poll() is None:
            writer.kill()
    txns, _ = read_log(log)
    assert shipper.stats.resyncs == 0, "the snapshot's read transaction must hold every later commit"
    records = assert_no_invented_states(replica, txns)
    assert len(records) > 50
    snapshot_ts = min(r.commit_ts_us for r in records)
    after = [t for t in txns[1:] if t["begin"] > snapshot_ts]
    assert len(after) > 50
    for k, t in enumerate(after[:: max(1, len(after) // 6)]):
        out = str(tmp_path / f"t{k}.db")
        target = t["end"] + 60_000
        result = restore(open_storage(replica, create=False), out, target_us=target)
        v = judge(out, result.page_size, txns, txns[0]["checksum"], target)
        assert v.exact, f"target {target}: restored state of txn {v.restored_index}, allowed {v.allowed}"
