"""Compaction of old segments, readers of compaction leftovers, restores racing deletions."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from harness import (
    DaemonThread,
    create_db,
    judge,
    read_log,
    replica_records,
    run_writer,
)
from synth_history import build_history
from walrewind.engine.errors import CompactionError, ObjectNotFound, RestoreError
from walrewind.engine.maintenance.compaction import compact, plan_groups
from walrewind.engine.maintenance.snapshots import build_snapshot
from walrewind.engine.replica import layout
from walrewind.engine.replica.format import decode_segment, encode_segment
from walrewind.engine.replica.index import Replica, normalise_segments
from walrewind.engine.restore.restorer import RESTART_NOTE, plan_restore, restore
from walrewind.engine.storage import open_storage
from walrewind.engine.storage.local import LocalStorage

SECOND = 1_000_000


def listing(replica: str) -> dict[str, int]:
    return {i.key: i.size for i in open_storage(replica, create=False).list("generations/")}


def segment_keys(replica: str) -> list[str]:
    return [k for k in listing(replica) if k.endswith(".seg")]


@pytest.fixture(scope="module")
def daemon_replica(tmp_path_factory):
    """A real replica written by the daemon, with the writer's log (ground truth)."""
    base = tmp_path_factory.mktemp("compact")
    db, replica, log = str(base / "app.db"), str(base / "replica"), str(base / "log")
    create_db(db)
    with DaemonThread(db, replica, str(base / "state"), upload_interval=0.05):
        run_writer({"db": db, "log": log, "checksums": True, "rate": 150, "txns": 240, "seed": 7,
                    "big_every": 40, "shrink_every": 61})
    txns, _ = read_log(log)
    return {"replica": replica, "txns": txns}


@pytest.fixture()
def synthetic(tmp_path):
    """A synthetic history: 40 one-second segments of 25 records each."""
    history = build_history(str(tmp_path / "replica"), seconds=40, txn_per_segment=25, seed=5,
                            start_us=1_700_000_000_000_000 - SECOND)  # segments fill whole 10 s buckets
    return history


@pytest.mark.slow
def test_every_transaction_restores_exactly_after_compaction(daemon_replica, tmp_path):
    replica = str(tmp_path / "replica")
    shutil.copytree(daemon_replica["replica"], replica)
    records = replica_records(replica)
    before = segment_keys(replica)
    storage = open_storage(replica, create=False)
    now = records[-1].commit_ts_us + SECOND
    report = compact(storage, now_us=now, compact_after_us=0, span_us=SECOND // 2)
    after = segment_keys(replica)
    assert len(before) >= 10 and report.merged and len(after) < len(before) // 3, (len(before), len(after))
    assert replica_records(replica) == records  # same records, same order, bit for bit
    assert not Replica(storage).generations[0].superseded
    for rec in records:  # every txid
        out = str(tmp_path / f"x{rec.txid}.db")
        assert restore(storage, out, target_txid=rec.txid).checksum == rec.db_checksum
        os.unlink(out)
    for ts in sorted({r.commit_ts_us for r in records}):  # every commit time, and just before it
        expected = [r for r in records if r.commit_ts_us <= ts][-1]
        out = str(tmp_path / f"t{ts}.db")
        result = restore(storage, out, target_us=ts)
        assert (result.txid, result.checksum) == (expected.txid, expected.db_checksum)
        os.unlink(out)
        earlier = [r for r in records if r.commit_ts_us < ts]
        if earlier:
            result = restore(storage, out, target_us=ts - 1)
            assert (result.txid, result.checksum) == (earlier[-1].txid, earlier[-1].db_checksum)
            os.unlink(out)
    txns = daemon_replica["txns"]
    for n, frac in enumerate((0.1, 0.37, 0.5, 0.81, 0.99)):
        target = int(txns[1]["begin"] + frac * (txns[-1]["end"] - txns[1]["begin"]))
        out = str(tmp_path / f"j{n}.db")
        result = restore(storage, out, target_us=target)
        assert judge(out, result.page_size, txns, txns[0]["checksum"], target).exact


@pytest.mark.slow
def test_only_old_segments_and_never_across_a_snapshot(synthetic, tmp_path):
    storage = open_storage(synthetic.replica, create=False)
    mid = synthetic.points[len(synthetic.points) // 2 + 7]  # inside a segment
    built = build_snapshot(storage, txid=mid[0], workdir=str(tmp_path))
    gen = Replica(storage).generations[0]
    now = synthetic.points[-1][1] + SECOND
    groups = plan_groups(gen, now, 10 * SECOND, 3600 * SECOND, Replica(storage).sizes, 1 << 30)
    assert all(seg.last_ts_us < now - 10 * SECOND for g in groups for seg in g)
    for g in groups:  # each run is on one side of the snapshot
        assert len({seg.last_txid > built.txid for seg in g}) == 1
    compact(storage, now_us=now, compact_after_us=10 * SECOND)
    segs = Replica(storage).generations[0].segments
    assert len(segs) == 2 + 10  # before the snapshot, after it (straddler included), 10 too young
    for txid, ts, checksum in synthetic.points[::37]:
        assert restore(storage, str(tmp_path / f"{txid}.db"), target_us=ts).checksum == checksum


class _Interrupt(Exception):
    pass


@pytest.mark.slow
def test_interrupted_compaction_restores_and_is_finished_next_run(synthetic, tmp_path):
    storage = open_storage(synthetic.replica, create=False)
    before = segment_keys(synthetic.replica)
    buckets = len({seg.first_ts_us // (10 * SECOND) for seg in Replica(storage).generations[0].segments})
    deletes = []

    def failing_delete(key: str) -> None:
        if len(deletes) >= 5:
            raise _Interrupt(key)
        deletes.append(key)
        LocalStorage.delete(storage, key)

    storage.delete = failing_delete  # type: ignore[method-assign]
    with pytest.raises(_Interrupt):
        compact(storage, now_us=synthetic.points[-1][1] + SECOND, compact_after_us=0, span_us=10 * SECOND)
    storage = open_storage(synthetic.replica, create=False)
    gen = Replica(storage).generations[0]
    assert len(gen.segments) == buckets and len(gen.superseded) == len(before) - 5  # merged + leftovers
    assert not gen.overlaps()
    for txid, ts, checksum in synthetic.points[::53] + synthetic.points[-1:]:
        result = restore(storage, str(tmp_path / f"{txid}.db"), target_us=ts)
        assert (result.txid, result.checksum) == (txid, checksum)
        assert result.segments_read <= buckets
    report = compact(storage, now_us=synthetic.points[-1][1] + SECOND, compact_after_us=0, span_us=10 * SECOND)
    assert not report.merged and sum(len(s) for _k, s in report.finished) == len(before) - 5
    assert len(segment_keys(synthetic.replica)) == buckets
    assert not Replica(storage).generations[0].superseded


@pytest.mark.slow
def test_partial_overlap_is_still_two_writers(synthetic, tmp_path):
    storage = open_storage(synthetic.replica, create=False)
    gen = Replica(storage).generations[0]
    a, b = gen.segments[3], gen.segments[4]
    header, recs_a = decode_segment(storage.get(a.key))
    _h, recs_b = decode_segment(storage.get(b.key))
    straddle = recs_a[10:] + recs_b[:10]
    key = layout.SegmentKey(gen.id, straddle[0].txid, straddle[-1].txid, straddle[0].commit_ts_us, straddle[-1].commit_ts_us)
    storage.put_if_absent(key.key, encode_segment(dict(header, first_txid=key.first_txid, last_txid=key.last_txid), straddle))
    with pytest.raises(RestoreError, match="overlapping segments"):
        restore(storage, str(tmp_path / "x.db"), target_txid=b.last_txid)
    before = listing(synthetic.replica)  # compaction leaves two writers' histories untouched
    report = compact(storage, now_us=synthetic.points[-1][1] + SECOND, compact_after_us=0)
    assert not report.merged and listing(synthetic.replica) == before


def test_normalise_keeps_disagreeing_containment():
    seg = layout.SegmentKey
    outer = seg("g", 10, 40, 100, 400)
    inner = seg("g", 20, 30, 200, 300)
    same_range = seg("g", 10, 40, 100, 401)
    bad_times = seg("g", 20, 30, 50, 300)
    bad_end = seg("g", 30, 40, 300, 399)
    kept, dropped = normalise_segments([inner, outer])
    assert kept == [outer] and dropped == [inner]
    for odd in (same_range, bad_times, bad_end):
        kept, dropped = normalise_segments([odd, outer])
        assert odd in kept and not dropped
    from walrewind.engine.replica.index import Generation

    g = Generation("g", segments=normalise_segments([outer, bad_times, seg("g", 41, 50, 400, 500)])[0])
    assert g.overlaps() == [(outer, bad_times)]
    g = Generation("g", segments=[seg("g", 1, 100, 1, 100), seg("g", 20, 30, 20, 30), seg("g", 90, 110, 90, 110)])
    assert (seg("g", 1, 100, 1, 100), seg("g", 90, 110, 90, 110)) in g.overlaps()  # not only neighbours


def test_restore_restarts_when_compaction_deletes_its_segments(synthetic, tmp_path):
    storage = open_storage(synthetic.replica, create=False)
    target_txid, _ts, checksum = synthetic.points[-30]
    plan = plan_restore(Replica(storage), target_txid=target_txid)
    assert len(plan.segments) > 20
    compacted = []

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "segments" and not compacted:  # paused after the first segment
            compacted.append(compact(storage, now_us=synthetic.points[-1][1] + SECOND, compact_after_us=0))
    out = str(tmp_path / "r.db")
    result = restore(storage, out, target_txid=target_txid, progress=progress)
    assert compacted and compacted[0].merged
    assert (result.txid, result.checksum) == (target_txid, checksum)
    assert RESTART_NOTE in result.notes and result.segments_read == 1
    assert sorted(os.listdir(tmp_path)) == ["r.db", "replica"]  # nothing half-written left


@pytest.mark.slow
def test_restore_gives_up_after_two_restarts(synthetic, tmp_path):
    storage = open_storage(synthetic.replica, create=False)
    victim = Replica(storage).generations[0].segments[-1].key
    real_get = storage.get
    calls = []

    def get(key: str) -> bytes:
        if key == victim:
            calls.append(key)
            raise ObjectNotFound(f"{storage.url}: object {key} not found")
        return real_get(key)

    storage.get = get  # type: ignore[method-assign]
    with pytest.raises(RestoreError, match=victim.rsplit("/", 1)[1]):
        restore(storage, str(tmp_path / "r.db"))
    assert len(calls) == 3
    assert sorted(os.listdir(tmp_path)) == ["replica"]


def test_tampered_source_aborts_and_deletes_nothing(synthetic):
    before = listing(synthetic.replica)
    victim = sorted(k for k in before if k.endswith(".seg"))[17]
    path = os.path.join(synthetic.replica, victim)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(path, "wb").write(bytes(data))
    storage = open_storage(synthetic.replica, create=False)
    with pytest.raises(CompactionError, match=victim.rsplit("/", 1)[1]) as info:
        compact(storage, now_us=synthetic.points[-1][1] + SECOND, compact_after_us=0, span_us=3600 * SECOND)
    assert "nothing was deleted" in str(info.value)
    assert listing(synthetic.replica) == before


@pytest.mark.slow
def test_dry_run_changes_nothing_and_cli(synthetic):
    from click.testing import CliRunner
    from walrewind.cli.main import cli

    before = listing(synthetic.replica)
    report = compact(open_storage(synthetic.replica, create=False), compact_after_us=0, dry_run=True)
    assert report.dry_run and len(report.merged) == 1 and len(report.merged[0][1]) == 40
    assert listing(synthetic.replica) == before
    run = CliRunner().invoke
    res = run(cli, ["compact", synthetic.replica, "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["segments_before"] == 40 and listing(synthetic.replica) == before
    res = run(cli, ["compact", synthetic.replica, "--older-than", "1h"])  # the history is from 2023
    assert res.exit_code == 0, res.output
    assert "merged 40 segments into 1" in res.output
    assert len(segment_keys(synthetic.replica)) == 1
    res = run(cli, ["compact", synthetic.replica, "--older-than", "soon"])
    assert res.exit_code != 0 and "invalid duration" in res.output
