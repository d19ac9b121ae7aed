"""Snapshots built from the replica alone, and restore drills."""

from __future__ import annotations

import random
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
from walrewind.engine.maintenance.snapshots import build_snapshot
from walrewind.engine.replica.index import Replica
from walrewind.engine.restore.drills import drill, random_targets
from walrewind.engine.restore.restorer import plan_restore, restore
from walrewind.engine.storage import open_storage

# A daemon-written replica (4-5 s): the fast loop covers snapshots and drills in
# test_maintenance_scheduler.py on synthetic history.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def replicated(tmp_path_factory):
    base = tmp_path_factory.mktemp("snap")
    db, replica, log = str(base / "app.db"), str(base / "replica"), str(base / "log")
    create_db(db)
    with DaemonThread(db, replica, str(base / "state")):
        run_writer({"db": db, "log": log, "checksums": True, "rate": 200, "txns": 200, "seed": 61,
                    "big_every": 50, "shrink_every": 77})
    txns, _ = read_log(log)
    return {"replica": replica, "txns": txns, "base": base}


def test_snapshot_from_replica_keeps_every_point_exact(replicated, tmp_path):
    replica_dir = str(tmp_path / "replica")
    shutil.copytree(replicated["replica"], replica_dir)
    storage = open_storage(replica_dir, create=False)
    records = replica_records(replica_dir)
    middle = records[len(records) // 2]
    built = build_snapshot(storage, txid=middle.txid, workdir=str(tmp_path))
    assert built.created and built.txid == middle.txid
    assert not build_snapshot(storage, txid=middle.txid, workdir=str(tmp_path)).created  # idempotent
    # a target after the new snapshot plans from it and reads only the segments after it
    plan = plan_restore(Replica(storage), target_txid=records[-1].txid)
    assert plan.snapshot.txid == middle.txid
    assert all(s.last_txid > middle.txid for s in plan.segments)
    txns = replicated["txns"]
    rng = random.Random(3)
    for n in range(10):
        target = rng.randint(txns[1]["begin"], txns[-1]["end"])
        out = str(tmp_path / f"t{n}.db")
        result = restore(storage, out, target_us=target)
        assert judge(out, result.page_size, txns, txns[0]["checksum"], target).exact
    for rec in (records[len(records) // 2 - 1], middle, records[-1]):
        out = str(tmp_path / f"x{rec.txid}.db")
        assert restore(storage, out, target_txid=rec.txid).checksum == rec.db_checksum


def test_drills_pass_and_fail_loudly(replicated, tmp_path):
    storage = open_storage(replicated["replica"], create=False)
    results = [drill(storage, t, workdir=str(tmp_path)) for t in random_targets(storage, 4, seed=1)]
    results.append(drill(storage, None, workdir=str(tmp_path)))
    assert all(r.passed for r in results), [r.detail for r in results]
    assert all("integrity_check ok" in r.detail for r in results)
    copy = tmp_path / "tampered"
    shutil.copytree(replicated["replica"], copy)
    victim = sorted(copy.glob("generations/*/segments/*.seg"))[-1]
    data = bytearray(victim.read_bytes())
    data[60] ^= 0xFF
    victim.write_bytes(bytes(data))
    failed = drill(open_storage(str(copy), create=False), None, workdir=str(tmp_path))
    assert not failed.passed and victim.name in failed.detail and failed.to_json()["result"] == "FAILED"


def test_verify_and_snapshot_commands(replicated, tmp_path):
    import json

    from click.testing import CliRunner
    from walrewind.cli.main import cli

    copy = tmp_path / "replica"
    shutil.copytree(replicated["replica"], copy)
    run = CliRunner().invoke
    res = run(cli, ["verify", str(copy), "--random", "3", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["passed"] and len(data["drills"]) == 3
    res = run(cli, ["verify", str(copy)], catch_exceptions=False)
    assert res.exit_code == 0 and res.output.startswith("PASSED")
    res = run(cli, ["snapshot", str(copy), "--json"], catch_exceptions=False)
    assert res.exit_code == 0 and json.loads(res.output)["created"] is True
    res = run(cli, ["verify", str(copy), "--at", "yesterday"], catch_exceptions=False)
    assert res.exit_code == 1 and "Invalid timestamp format" in res.output
    victim = sorted(copy.glob("generations/*/snapshots/*.snap"))[-1]
    victim.write_bytes(victim.read_bytes()[:-5])
    res = run(cli, ["verify", str(copy)], catch_exceptions=False)
    assert res.exit_code == 1 and res.output.startswith("FAILED") and victim.name in res.output


@pytest.mark.parametrize("damage", ["truncate", "bitflip"])
def test_damaged_newest_snapshot_is_skipped_everywhere(replicated, tmp_path, damage):
    """Issue 11: one damaged snapshot must not make the points after it unrestorable while the
    previous snapshot and every segment are intact; restore, snapshot building and drills all
    fall back to the older snapshot and name the damaged object."""
    copy = tmp_path / "replica"
    shutil.copytree(replicated["replica"], copy)
    storage = open_storage(str(copy), create=False)
    records = replica_records(str(copy))
    newer = build_snapshot(storage, txid=records[len(records) // 2].txid, workdir=str(tmp_path))
    victim = copy / newer.key
    data = bytearray(victim.read_bytes())
    if damage == "truncate":
        del data[len(data) // 3 :]
    else:
        data[len(data) // 2] ^= 0x04
    victim.write_bytes(bytes(data))
    txns = replicated["txns"]

    result = restore(storage, str(tmp_path / "latest.db"))
    assert f"{result.checksum:016x}" == txns[-1]["checksum"] and result.quick_check == "ok"
    assert list(result.skipped) == [newer.key]
    assert any(newer.key in w for w in result.warnings) and any(newer.key in n for n in result.notes)
    # a target after the damaged snapshot, and the damaged snapshot's own point
    for rec in (records[len(records) // 2], records[-3]):
        out = str(tmp_path / f"t{rec.txid}.db")
        assert restore(storage, out, target_txid=rec.txid).checksum == rec.db_checksum

    stages = []
    rebuilt = build_snapshot(storage, workdir=str(tmp_path), progress=lambda *a: stages.append(a))  # `snapshot`
    assert [s for s, _d, _t in stages][-2:] == ["upload", "upload"] and stages[-1][1] == stages[-1][2] > 0
    assert {"snapshot", "check", "compress"} <= {s for s, _d, _t in stages}
    assert rebuilt.created and rebuilt.txid == records[-1].txid and list(rebuilt.skipped) == [newer.key]
    fresh = restore(storage, str(tmp_path / "from-rebuilt.db"))
    assert fresh.checksum == result.checksum and not fresh.skipped  # the new snapshot is newest now

    report = drill(storage, records[len(records) // 2 + 1].commit_ts_us, workdir=str(tmp_path))
    assert not report.passed and newer.key in report.detail and list(report.damaged) == [newer.key]
    assert report.txid is not None  # the point itself restored: the drill says why it still fails
