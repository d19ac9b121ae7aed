"""Compaction, retention and a maintenance round on a real S3 server (SeaweedFS).

The same code paths as on a local directory, but create-only PUTs, ranged GETs and DELETEs go
through boto3: merged segments are verified by reading them back, deletions really remove
objects, and every point in the window still restores to its recorded checksum.
"""

from __future__ import annotations

import uuid

import pytest
from synth_history import build_history
from walrewind.engine.errors import TimestampError
from walrewind.engine.maintenance.compaction import compact
from walrewind.engine.maintenance.retention import RetentionPolicy, prune
from walrewind.engine.maintenance.scheduler import Maintenance, MaintenancePolicy
from walrewind.engine.replica.index import Replica
from walrewind.engine.restore.restorer import restore
from walrewind.engine.storage import open_storage

pytestmark = [pytest.mark.s3, pytest.mark.slow]
SECOND = 1_000_000


def test_compaction_retention_and_a_maintenance_round_on_s3(seaweed_s3, tmp_path):
    replica = seaweed_s3.url(f"maintenance/{uuid.uuid4().hex[:8]}")
    history = build_history(replica, seconds=30, txn_per_segment=20, seed=9, start_us=1_700_000_000_000_000 - SECOND)
    storage = open_storage(replica, create=False)
    end = history.points[-1][1]

    report = compact(storage, now_us=end + SECOND, compact_after_us=0, span_us=10 * SECOND)
    gen = Replica(storage).generations[0]
    assert report.merged and len(gen.segments) == 3 and not gen.superseded
    for txid, ts, checksum in history.points[::41] + history.points[-1:]:
        result = restore(storage, str(tmp_path / f"c{txid}.db"), target_us=ts)
        assert (result.txid, result.checksum) == (txid, checksum)

    # A maintenance round: a snapshot (volume trigger), then retention keeps the last 5 s exact.
    policy = MaintenancePolicy(snapshot_interval_us=None, snapshot_volume=0.01, retention_interval_us=None,
                               compact_interval_us=None)
    results = Maintenance(storage, policy, clock=lambda: end + SECOND, workdir=str(tmp_path)).run_due()
    assert [r.result for r in results if r.task == "snapshot"] == ["ok"]
    snapshots = Replica(storage).generations[0].snapshots
    assert len(snapshots) == 2 and snapshots[-1].txid == history.points[-1][0]
    # Retention of 50 s, 100 s after the end: the new snapshot is the window's base, everything
    # older goes (no tiers), the latest state stays exact, and older targets are too old.
    now = end + 100 * SECOND
    pruned = prune(storage, RetentionPolicy(50 * SECOND, 0, 0, 0, grace_us=0), now_us=now)
    left = {i.key for i in storage.list("generations/")}
    assert pruned.deleted and not left & set(pruned.deleted)
    assert left == {snapshots[-1].key} | {k for k in left if "/heartbeats/" in k}
    result = restore(storage, str(tmp_path / "latest.db"))
    assert (result.txid, result.checksum) == history.points[-1][::2]
    with pytest.raises(TimestampError, match=r"^Timestamp too old: earliest restorable point is "):
        restore(storage, str(tmp_path / "old.db"), target_us=history.points[5][1])
