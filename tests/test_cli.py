"""The command line as a user meets it: exit codes, messages, --json, --dry-run, bad input."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3

import pytest
from click.testing import CliRunner
from harness import DaemonThread, create_db, read_log, run_writer
from walrewind.cli.main import cli
from walrewind.engine.timeparse import format_us


@pytest.fixture(scope="module")
def replicated(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    db, replica, log = str(base / "app.db"), str(base / "replica"), str(base / "log")
    create_db(db)
    with DaemonThread(db, replica, str(base / "state")):
        run_writer({"db": db, "log": log, "checksums": True, "rate": 200, "txns": 120, "seed": 41})
    txns, _ = read_log(log)
    return {"base": base, "replica": replica, "txns": txns}


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def rows(path):
    conn = sqlite3.connect(path)
    try:
        return conn.execute("select count(*), max(id) from t").fetchone()
    finally:
        conn.close()


def test_restore_latest_prints_point_and_verifies(replicated, tmp_path):
    out = tmp_path / "r.db"
    res = invoke("restore", replicated["replica"], "-o", out)
    assert res.exit_code == 0, res.output
    assert "Restored" in res.output and "verified" in res.output and "quick_check ok" in res.output
    assert "txid" in res.output


def test_restore_json_and_timestamp(replicated, tmp_path):
    t = replicated["txns"][60]
    out = tmp_path / "r.db"
    res = invoke("restore", replicated["replica"], "-o", out, "--timestamp", format_us(t["end"] + 6000), "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["verified"] is True and data["quick_check"] == "ok"
    assert data["path"] == str(out)
    assert rows(str(out))[0] >= 1


def test_restore_refuses_existing_output_unless_forced(replicated, tmp_path):
    out = tmp_path / "exists.db"
    out.write_bytes(b"precious")
    res = invoke("restore", replicated["replica"], "-o", out)
    assert res.exit_code == 1 and "already exists" in res.output
    assert out.read_bytes() == b"precious"
    assert invoke("restore", replicated["replica"], "-o", out, "--force").exit_code == 0
    assert rows(str(out))[0] > 0


@pytest.mark.parametrize("bad", ["yesterday", "2024-13-01", "2024-01-15T25:00:00Z", "1705314600", ""])
def test_bad_timestamp_is_rejected_before_anything_is_written(replicated, tmp_path, bad):
    out = tmp_path / "bad.db"
    res = invoke("restore", replicated["replica"], "-o", out, "--timestamp", bad)
    assert res.exit_code == 1
    assert "Invalid timestamp format" in res.output and "2024-01-15T10:30:00Z" in res.output
    assert not out.exists() and os.listdir(tmp_path) == []


def test_timestamp_too_old_names_the_window(replicated, tmp_path):
    res = invoke("restore", replicated["replica"], "-o", tmp_path / "x.db", "--timestamp", "2001-01-01")
    assert res.exit_code == 1
    assert "Timestamp too old: earliest restorable point is" in res.output and "window" in res.output


def test_timestamp_in_future(replicated, tmp_path):
    res = invoke("restore", replicated["replica"], "-o", tmp_path / "x.db", "--timestamp", "2999-01-01T00:00:00Z")
    assert res.exit_code == 1 and "Timestamp is in the future" in res.output


def test_txid_restore_and_unknown_txid(replicated, tmp_path):
    res = invoke("restore", replicated["replica"], "-o", tmp_path / "a.db", "--txid", 50, "--json")
    assert res.exit_code == 0 and json.loads(res.output)["txid"] == 50
    res = invoke("restore", replicated["replica"], "-o", tmp_path / "b.db", "--txid", 10**9)
    assert res.exit_code == 1 and "has not been replicated" in res.output


def test_dry_run_writes_nothing(replicated, tmp_path):
    res = invoke("restore", replicated["replica"], "-o", tmp_path / "d.db", "--dry-run", "--json")
    assert res.exit_code == 0
    plan = json.loads(res.output)
    assert plan["dry_run"] and plan["snapshot"]["txid"] >= 1 and plan["segments"]
    assert os.listdir(tmp_path) == []


def test_missing_replica(tmp_path):
    res = invoke("restore", tmp_path / "nowhere", "-o", tmp_path / "x.db")
    assert res.exit_code == 1 and "does not exist" in res.output
    res = invoke("ls", tmp_path / "nowhere")
    assert res.exit_code == 1 and "does not exist" in res.output


def test_ls_lists_window(replicated):
    res = invoke("ls", replicated["replica"])
    assert res.exit_code == 0
    assert "restorable from" in res.output and "transactions:" in res.output
    data = json.loads(invoke("ls", replicated["replica"], "--json").output)
    assert data["transactions"] >= 100 and data["earliest"] and data["latest"]
    assert len(data["generations"]) == 1


def _copy_replica(replicated, tmp_path):
    copy = tmp_path / "replica"
    shutil.copytree(replicated["replica"], copy)
    segs = sorted((copy / "generations").glob("*/segments/*.seg"))
    return copy, segs


def test_corrupt_segment_is_named_and_nothing_written(replicated, tmp_path):
    copy, segs = _copy_replica(replicated, tmp_path)
    victim = segs[len(segs) // 2]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x40
    victim.write_bytes(bytes(data))
    out = tmp_path / "out.db"
    res = invoke("restore", copy, "-o", out)
    assert res.exit_code == 1
    assert victim.name in res.output and "checksum mismatch" in res.output
    assert "last point that can still be restored is txid" in res.output
    assert not out.exists()
    # the user can ask for that earlier point explicitly
    txid = int(res.output.split("use --txid ")[1].split()[0])
    assert invoke("restore", copy, "-o", out, "--txid", txid).exit_code == 0


def test_truncated_and_missing_segment(replicated, tmp_path):
    copy, segs = _copy_replica(replicated, tmp_path)
    segs[1].write_bytes(segs[1].read_bytes()[:100])
    res = invoke("restore", copy, "-o", tmp_path / "o.db")
    assert res.exit_code == 1 and segs[1].name in res.output
    segs[1].unlink()
    res = invoke("restore", copy, "-o", tmp_path / "o.db")
    assert res.exit_code == 1 and "history jumps" in res.output


def test_corrupt_snapshot_is_named(replicated, tmp_path):
    copy, _ = _copy_replica(replicated, tmp_path)
    snap = next((copy / "generations").glob("*/snapshots/*.snap"))
    data = bytearray(snap.read_bytes())
    data[-40] ^= 1
    snap.write_bytes(bytes(data))
    res = invoke("restore", copy, "-o", tmp_path / "o.db")
    assert res.exit_code == 1 and snap.name in res.output


def test_replicate_refuses_rollback_journal_db(tmp_path):
    db = tmp_path / "plain.db"
    conn = sqlite3.connect(db)
    conn.execute("create table x(a)")
    conn.commit()
    conn.close()
    res = invoke("replicate", db, tmp_path / "rep", "--state-dir", tmp_path / "state")
    assert res.exit_code == 1 and "journal_mode=WAL" in res.output


def test_replicate_rejects_bad_durations_naming_the_option(tmp_path):
    db = tmp_path / "app.db"
    sqlite3.connect(db).execute("pragma journal_mode=wal").close()
    for option in ("--retention", "--verify-interval"):
        res = invoke("replicate", db, tmp_path / "rep", option, "7days", "--state-dir", tmp_path / "state")
        assert res.exit_code == 2 and f"'{option}'" in res.output and "invalid duration '7days'" in res.output
    assert not (tmp_path / "rep").exists(), "nothing is written for a bad option"


def test_restore_into_a_missing_directory_says_so(replicated, tmp_path):
    res = invoke("restore", replicated["replica"], "-o", tmp_path / "no" / "such" / "dir.db")
    assert res.exit_code == 1 and f"directory {tmp_path / 'no' / 'such'} does not exist" in res.output
