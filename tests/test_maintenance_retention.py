"""Retention: the exact window, restore-safe deletion (grace), GFS tiers and `walrewind prune`.

Replicas are written by the real daemon.  The first generation is shipped with the daemon's
clock moved three days back (``engine.daemon.clock.now_us``), so the replica holds history on two UTC days
and the tiers have something to keep beyond the window; everything else is real.
"""

from __future__ import annotations

import json
import random
import shutil

import pytest
import walrewind.engine.daemon.clock as daemon_clock
from click.testing import CliRunner
from harness import (
    DaemonThread,
    create_db,
    exact_or_stamped_late,
    judge,
    read_log,
    replica_records,
    run_writer,
)
from walrewind.cli.main import cli
from walrewind.engine.errors import ConfigError, TimestampError
from walrewind.engine.maintenance.retention import (
    RetentionPolicy,
    plan_prune,
    prune,
    select_tiers,
)
from walrewind.engine.maintenance.snapshots import build_snapshot
from walrewind.engine.replica import layout
from walrewind.engine.replica.index import Replica
from walrewind.engine.restore.restorer import plan_restore, restore
from walrewind.engine.sqlite.pagehash import checksum_file
from walrewind.engine.storage import open_storage
from walrewind.engine.timeparse import format_us
from walrewind.engine.workspace.config import load_config

DAY = 86_400_000_000
SECOND = 1_000_000


# Built by the daemon (4-5 s): the tests that use it are marked slow; the fast loop keeps the
# name-only prune planning and the config keys.
@pytest.fixture(scope="module")
def history(tmp_path_factory, request):
    """Generation A three days ago (snapshot, segments, a second snapshot), generation B now
    (snapshots S0 at its start, S1 and S2 built from the replica at 1/3 and 2/3 of it)."""
    base = tmp_path_factory.mktemp("ret")
    db, replica = str(base / "app.db"), str(base / "replica")
    create_db(db)
    real = daemon_clock.now_us
    daemon_clock.now_us = lambda: real() - 3 * DAY
    try:
        with DaemonThread(db, replica, str(base / "state-a")):
            run_writer({"db": db, "log": str(base / "log-a"), "checksums": True, "rate": 200, "txns": 40, "seed": 5})
        build_snapshot(open_storage(replica, create=False), workdir=str(base))
    finally:
        daemon_clock.now_us = real
    with DaemonThread(db, replica, str(base / "state-b")):
        run_writer({"db": db, "log": str(base / "log-b"), "checksums": True, "rate": 100, "txns": 150, "seed": 6,
                    "big_every": 40})
    storage = open_storage(replica, create=False)
    gen_b = Replica(storage).generations[-1]
    records_b = [r for seg in gen_b.segments for r in Replica(storage).load_segment(seg)[1]]
    s1 = build_snapshot(storage, txid=records_b[len(records_b) // 3].txid, workdir=str(base))
    s2 = build_snapshot(storage, txid=records_b[2 * len(records_b) // 3].txid, workdir=str(base))
    txns_b, _ = read_log(str(base / "log-b"))
    r = Replica(storage)
    assert len(r.generations) == 2 and len(r.generations[0].snapshots) == 2 and len(r.generations[1].snapshots) == 3
    return {"replica": replica, "base": base, "txns_b": txns_b, "s1": s1, "s2": s2,
            "records": {rec.txid: rec for rec in replica_records(replica)}, "gens": [g.id for g in r.generations]}


def _copy(history, tmp_path) -> str:
    dst = str(tmp_path / "replica")
    shutil.copytree(history["replica"], dst)
    return dst


def _keys(url: str) -> set[str]:
    return {i.key for i in open_storage(url, create=False).list("generations/")}


@pytest.mark.slow
def test_tier_selection_over_simulated_months():
    """GFS over 14 months of hourly snapshots, evaluated every simulated day: per tier exactly the
    newest snapshot of each of the last N periods, and a choice never flips back and forth."""
    start = 1_700_000_000 * SECOND
    snaps = [layout.SnapshotKey("g", i, start + i * 3_600 * SECOND) for i in range(24 * 430)]
    previously: dict[layout.SnapshotKey, set[str]] = {}
    dropped: set[layout.SnapshotKey] = set()
    for day in range(0, 420, 1):
        now = start + day * DAY + 13 * 3_600 * SECOND
        chosen = select_tiers(snaps, now, 7, 4, 12)
        assert all(s.ts_us <= now for s in chosen)  # nothing from the future
        daily = sorted(s.ts_us // DAY for s, labels in chosen.items() if "daily" in labels)
        today = now // DAY
        expect_days = [d for d in range(today - 6, today + 1) if d >= start // DAY]
        assert daily == expect_days
        weekly = [s for s, labels in chosen.items() if "weekly" in labels]
        monthly = [s for s, labels in chosen.items() if "monthly" in labels]
        assert len(weekly) <= 4 and len(monthly) <= 12 and len(chosen) <= 7 + 4 + 12
        # newest of its period: no later snapshot (<= now) in the same day for daily picks
        for s in chosen:
            if "daily" in chosen[s]:
                later = [t for t in snaps if t.ts_us // DAY == s.ts_us // DAY and s.ts_us < t.ts_us <= now]
                assert not later
        # stability: once a snapshot is dropped by every tier it is never chosen again
        assert not (dropped & set(chosen)), "a dropped snapshot came back"
        dropped |= set(previously) - set(chosen)
        previously = {s: set(v) for s, v in chosen.items()}
    # after 420 days: 12 monthly picks, the oldest about a year back
    assert len(monthly) == 12 and (now - min(s.ts_us for s in monthly)) < 366 * DAY
    # 0 disables a tier
    assert not select_tiers(snaps, now, 0, 0, 0)
    assert all(v == ["monthly"] for v in select_tiers(snaps, now, 0, 0, 3).values())


@pytest.mark.slow
def test_window_prune_keeps_every_point_exact(history, tmp_path):
    url = _copy(history, tmp_path)
    storage = open_storage(url, create=False)
    s1, s2 = history["s1"], history["s2"]
    w = s1.ts_us + (s2.ts_us - s1.ts_us) // 2  # the window starts between S1 and S2
    policy = RetentionPolicy(2 * SECOND, grace_us=SECOND // 2)
    now = w + policy.retention_us + policy.grace_us  # type: ignore[operator]
    before = _keys(url)
    dry = plan_prune(storage, policy, now)
    assert dry.dry_run and _keys(url) == before
    report = prune(storage, policy, now_us=now)
    assert report.deleted == dry.deleted and not report.dry_run
    after = _keys(url)
    assert after == before - set(report.deleted)
    assert report.window_start_us == s1.ts_us  # S1 is the base: the newest snapshot at or before W
    assert report.counts["segments"] > 0 and report.counts["snapshots"] >= 2 and report.bytes_deleted > 0
    gen_a, gen_b = history["gens"]
    r = Replica(storage)
    a, b = r.generations
    assert (a.id, b.id) == (gen_a, gen_b)
    # generation A: only its newest snapshot (a daily tier three days back); B: from S1 on
    assert not a.segments and not a.heartbeats and len(a.snapshots) == 1
    assert [s.txid for s in b.snapshots] == [s1.txid, s2.txid] and all(s.last_txid > s1.txid for s in b.segments)
    tiers = {(k.generation, k.txid): k for k in report.kept_snapshots}
    assert tiers[(gen_a, a.snapshots[0].txid)].tiers and not tiers[(gen_a, a.snapshots[0].txid)].in_window
    assert r.exact_window()[1].txid == s1.txid  # type: ignore[index]
    # every moment of the window (now - retention onwards, and the grace before it) restores exactly
    txns = history["txns_b"]
    rng = random.Random(7)
    targets = [w, w + policy.grace_us, txns[-1]["end"]] + [rng.randint(w, txns[-1]["end"]) for _ in range(5)]
    for n, target in enumerate(targets):
        out = str(tmp_path / f"t{n}.db")
        result = restore(storage, out, target_us=target)
        assert exact_or_stamped_late(result), result
        v = judge(out, result.page_size, txns, txns[0]["checksum"], target)
        assert v.exact, (n, v)
    # latest and txid targets inside the window too
    latest = max(history["records"])
    assert restore(storage, str(tmp_path / "l.db")).checksum == history["records"][latest].db_checksum
    assert restore(storage, str(tmp_path / "x.db"), target_txid=s1.txid + 3).checksum == history["records"][s1.txid + 3].db_checksum
    # a second run right away finds nothing more to delete
    assert prune(storage, policy, now_us=now).deleted == []


@pytest.mark.slow
def test_a_damaged_base_snapshot_is_never_relied_on(history, tmp_path):
    """Names cannot tell a truncated snapshot: prune verifies the snapshot that makes older history
    deletable, and a damaged one is treated as absent, so what a restore falls back on stays."""
    url = _copy(history, tmp_path)
    storage = open_storage(url, create=False)
    s1, s2 = history["s1"], history["s2"]
    with open(f"{url}/{s1.key}", "r+b") as f:
        f.truncate(f.seek(0, 2) - 100)
    w = s1.ts_us + (s2.ts_us - s1.ts_us) // 2
    policy = RetentionPolicy(2 * SECOND, grace_us=SECOND // 2)
    now = w + policy.retention_us + policy.grace_us  # type: ignore[operator]
    verified: set[str] = set()
    report = prune(storage, policy, now_us=now, verified=verified)
    assert list(report.damaged) == [s1.key] and "truncated" in report.damaged[s1.key]
    assert s1.key not in report.deleted  # kept for inspection
    gen_b = Replica(storage).generations[-1]
    assert gen_b.snapshots[0].txid < s1.txid  # the older snapshot of generation B is the base now
    assert report.base_key == gen_b.snapshots[0].key
    # every point between S1 and S2 restores, falling back past the damaged snapshot
    txns = history["txns_b"]
    target = txns[-1]["end"] if s2.ts_us > txns[-1]["end"] else (s1.ts_us + s2.ts_us) // 2
    result = restore(storage, str(tmp_path / "mid.db"), target_us=target)
    assert judge(str(tmp_path / "mid.db"), result.page_size, txns, txns[0]["checksum"], target).exact
    assert verified == {gen_b.snapshots[0].key}  # checked once; the next run does not download it again


@pytest.mark.slow
def test_kept_snapshot_beyond_the_window_restores_with_a_note(history, tmp_path):
    url = _copy(history, tmp_path)
    storage = open_storage(url, create=False)
    s1 = history["s1"]
    prune(storage, RetentionPolicy(SECOND, grace_us=0), now_us=s1.ts_us + SECOND)
    r = Replica(storage)
    tier = r.generations[0].snapshots[-1]
    assert r.kept_snapshots() == [tier]
    summary = r.summary()
    assert summary["exact_from_txid"] == s1.txid and summary["snapshots_beyond_window"][0]["txid"] == tier.txid
    # a time after the kept snapshot, before the window: the snapshot, with a clear note
    target = tier.ts_us + 3_600 * SECOND
    out = str(tmp_path / "tier.db")
    result = restore(storage, out, target_us=target)
    assert not result.exact and result.txid == tier.txid
    assert checksum_file(out, result.page_size) == history["records"][tier.txid].db_checksum
    note = result.notes[0]
    assert "is before the transaction-exact window (from " + format_us(s1.ts_us) in note
    assert f"restored the snapshot taken at {format_us(tier.ts_us)} (txid {tier.txid})" in note
    # the same by txid: one whose segments were pruned, inside generation B before S1
    plan = plan_restore(Replica(storage), target_txid=s1.txid - 2)
    assert not plan.exact and plan.snapshot == tier and not plan.segments
    assert plan_restore(Replica(storage), target_txid=tier.txid).exact  # the snapshot's own txid is exact
    # CLI: --json says exact false; ls lists the kept snapshot apart from the window
    run = CliRunner().invoke
    res = run(cli, ["restore", url, "-o", str(tmp_path / "c.db"), "--timestamp", format_us(target), "--json"],
              catch_exceptions=False)
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["exact"] is False and "transaction-exact window" in data["notes"][0]
    res = run(cli, ["ls", url], catch_exceptions=False)
    assert "exact to the transaction from " + format_us(s1.ts_us) in res.output
    assert "snapshots kept beyond the window" in res.output and f"txid {tier.txid}" in res.output
    cfg = tmp_path / "walrewind.toml"
    cfg.write_text(f'data_dir = "data"\n[databases.app]\npath = "app.db"\nreplica = "{url}"\n')
    res = run(cli, ["--config", str(cfg), "db", "show", "app", "--json"], catch_exceptions=False)
    rep = json.loads(res.output)["replication"]
    assert rep["exact_from"] == format_us(s1.ts_us) and rep["snapshots_beyond_window"][0]["txid"] == tier.txid
    res = run(cli, ["--config", str(cfg), "db", "show", "app"], catch_exceptions=False)
    assert "exact to the transaction from " + format_us(s1.ts_us) in res.output and "kept snapshot" in res.output
    # too old: before everything, the message names the window
    with pytest.raises(TimestampError) as err:
        plan_restore(Replica(storage), target_us=tier.ts_us - 1)
    assert "Timestamp too old: earliest restorable point is" in str(err.value)
    assert "exact to the transaction from " + format_us(s1.ts_us) in str(err.value)


@pytest.mark.slow
def test_restore_planned_before_a_prune_still_completes(history, tmp_path):
    """A restore lists and plans, a prune runs (now advanced by less than the grace), the restore
    downloads: everything it planned is still there.  Past the grace the same prune would not be."""
    url = _copy(history, tmp_path)
    storage = open_storage(url, create=False)
    gen_b = Replica(storage).generations[-1]
    s0, s1 = gen_b.snapshots[0], history["s1"]
    target = s0.ts_us + (s1.ts_us - s0.ts_us) // 2  # needs S0 and the segments after it
    policy = RetentionPolicy(SECOND, grace_us=SECOND)
    planned_at = target + policy.retention_us  # type: ignore[operator]  # the target is just inside the window then
    listed = Replica(storage)
    plan = plan_restore(listed, target_us=target)
    assert plan.snapshot == s0 and plan.segments
    needed = {plan.snapshot.key} | {s.key for s in plan.segments}
    late = plan_prune(storage, policy, planned_at + 3 * policy.grace_us)
    assert needed & set(late.deleted), "past the grace the planned objects would go"
    report = prune(storage, policy, now_us=planned_at + policy.grace_us // 2)
    assert report.deleted and not needed & set(report.deleted)
    out = str(tmp_path / "inflight.db")
    result = restore(storage, out, target_us=target, replica=listed)  # the stale listing, as planned
    txns = history["txns_b"]
    assert exact_or_stamped_late(result) and judge(out, result.page_size, txns, txns[0]["checksum"], target).exact


@pytest.mark.slow
def test_an_interrupted_prune_never_leaves_a_hole(history, tmp_path):
    """Apply the deletions one at a time: after every prefix, every point of the window and the
    latest state still plan exactly (planning checks holes from names), and the next run finishes."""
    url = _copy(history, tmp_path)
    storage = open_storage(url, create=False)
    s1, s2 = history["s1"], history["s2"]
    w = s1.ts_us + (s2.ts_us - s1.ts_us) // 3
    policy = RetentionPolicy(SECOND, grace_us=0)
    report = plan_prune(storage, policy, w + SECOND)
    assert len(report.deleted) > 5
    last = max(history["records"])
    targets = [w, s2.ts_us, history["records"][last].commit_ts_us]
    for key in report.deleted:
        storage.delete(key)
        r = Replica(storage)
        for target in targets:
            plan = plan_restore(r, target_us=target)
            assert plan.exact and plan.generation.id == history["gens"][1], key
        assert plan_restore(r, target_txid=last).exact and plan_restore(r).snapshot.txid >= s1.txid
    assert plan_prune(storage, policy, w + SECOND).deleted == []


@pytest.mark.slow
def test_retention_off_deletes_nothing(history, tmp_path):
    url = _copy(history, tmp_path)
    before = _keys(url)
    report = prune(open_storage(url, create=False), RetentionPolicy(None), now_us=history["s2"].ts_us + 400 * DAY)
    assert report.retention_off and report.deleted == [] and _keys(url) == before
    cfg = tmp_path / "walrewind.toml"
    cfg.write_text(f'data_dir = "data"\n[databases.app]\npath = "app.db"\nreplica = "{url}"\nretention = "off"\n')
    res = CliRunner().invoke(cli, ["--config", str(cfg), "prune", "app"], catch_exceptions=False)
    assert res.exit_code == 0 and "retention is off" in res.output and _keys(url) == before


@pytest.mark.slow
def test_prune_command(history, tmp_path):
    url = _copy(history, tmp_path)
    run = CliRunner().invoke
    before = _keys(url)
    # real clock: generation A is 3 days old, so a 1-day retention trims it to its newest snapshot
    res = run(cli, ["prune", url, "--retention", "1d", "--dry-run", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["dry_run"] and data["deleted_count"] == len(data["deleted"]) > 0 and _keys(url) == before
    assert data["counts"]["segments"] > 0 and data["window_start"] is not None
    res = run(cli, ["prune", url, "--retention", "1d", "--dry-run"], catch_exceptions=False)
    assert res.exit_code == 0 and "would delete" in res.output and "exact to the transaction from" in res.output
    assert _keys(url) == before
    res = run(cli, ["prune", url, "--retention", "1d"], catch_exceptions=False)
    assert res.exit_code == 0 and "deleted " in res.output and "segments" in res.output
    assert _keys(url) == before - set(data["deleted"])
    res = run(cli, ["prune", url, "--retention", "1d", "--json"], catch_exceptions=False)
    assert res.exit_code == 0 and json.loads(res.output)["deleted"] == []
    # the latest point still restores
    assert run(cli, ["restore", url, "-o", str(tmp_path / "l.db")], catch_exceptions=False).exit_code == 0
    # errors: a bad duration is a usage error, an unknown name exits 1
    res = run(cli, ["prune", url, "--retention", "soon"])
    assert res.exit_code == 2 and "invalid duration" in res.output
    res = run(cli, ["prune", "nosuchdb"])
    assert res.exit_code == 1 and "unknown database" in res.output


def test_config_retention_and_scheduler_keys(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[databases.a]\npath = "a"\nreplica = "r"\n')
    db = load_config(str(cfg)).databases["a"]
    assert (db.retention, db.retention_us, db.keep_daily, db.keep_weekly, db.keep_monthly) == ("7d", 7 * DAY, 7, 4, 12)
    assert (db.snapshot_interval_us, db.snapshot_volume, db.compact_after_us, db.verify_interval_us) == (
        DAY, 4.0, 3_600 * SECOND, None)
    cfg.write_text('[databases.a]\npath = "a"\nreplica = "r"\nretention = "off"\nkeep_daily = 0\n'
                   'snapshot_interval = "6h"\nsnapshot_volume = 0\ncompact_after = "30m"\nverify_interval = "1d"\n')
    db = load_config(str(cfg)).databases["a"]
    assert db.retention_us is None and db.retention_policy().retention_us is None and db.keep_daily == 0
    assert (db.snapshot_interval_us, db.snapshot_volume, db.compact_after_us, db.verify_interval_us) == (
        6 * 3_600 * SECOND, 0.0, 30 * 60 * SECOND, DAY)
    for line, key in (('keep_weekly = -1', "keep_weekly"), ('keep_monthly = "x"', "keep_monthly"),
                      ('snapshot_volume = -2', "snapshot_volume"), ('snapshot_interval = "off"', "snapshot_interval"),
                      ('compact_after = "soon"', "compact_after"), ('verify_interval = 5', "verify_interval"),
                      ('retention = "7 days"', "retention"), ('max_wal_mb = -1', "max_wal_mb")):
        cfg.write_text(f'[databases.a]\npath = "a"\nreplica = "r"\n{line}\n')
        with pytest.raises(ConfigError) as err:
            load_config(str(cfg))
        assert str(cfg) in str(err.value) and key in str(err.value), str(err.value)


class _TrustEverySnapshot(set):
    """For planning tests on made-up objects: every snapshot counts as verified (the check that
    downloads the base snapshot is tested with real ones, test_a_damaged_base_snapshot_...)."""

    def __contains__(self, key) -> bool:
        return True


def test_prune_removes_leftovers_and_never_the_newest_generation(tmp_path):
    """Names only (planning never opens an object): whole old generations go snapshot first,
    an interrupted prune's leftovers go, the newest generation always keeps its latest state."""
    storage = open_storage(str(tmp_path / "r"))
    trust = _TrustEverySnapshot()
    now = 100 * DAY

    def gen(start, end, snapshot=True):
        g = f"{start:016x}-0000abcd"
        if snapshot:
            storage.put(f"generations/{g}/snapshots/{1:016x}-{start:016x}.snap", b"s")
        storage.put(f"generations/{g}/segments/{2:016x}-{3:016x}-{start:016x}-{end:016x}.seg", b"x")
        return g

    old = gen(now - 30 * DAY, now - 20 * DAY)
    partly = gen(now - 19 * DAY, now - 15 * DAY)  # W falls in it: its last state is what W restores
    leftover = gen(now - 4 * DAY, now - 4 * DAY, snapshot=False)
    newest = gen(now - 2 * DAY, now - 2 * DAY)
    report = prune(storage, RetentionPolicy(7 * DAY, 0, 0, 0), now, verified=trust)
    assert report.generations_removed == sorted([old, leftover])
    assert report.deleted.index(f"generations/{old}/snapshots/{1:016x}-{now - 30 * DAY:016x}.snap") < \
        report.deleted.index(f"generations/{old}/segments/{2:016x}-{3:016x}-{now - 30 * DAY:016x}-{now - 20 * DAY:016x}.seg")
    assert {k.split("/")[1] for k in _keys_of(storage)} == {partly, newest}
    assert prune(storage, RetentionPolicy(1, 0, 0, 0), now, verified=trust).generations_removed == [partly]
    assert prune(storage, RetentionPolicy(1, 0, 0, 0), now, verified=trust).deleted == []  # the newest generation stays whole
    assert {k.split("/")[1] for k in _keys_of(storage)} == {newest}


def _keys_of(storage) -> set[str]:
    return {i.key for i in storage.list("generations/")}
