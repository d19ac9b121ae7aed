"""`walrewind bisect`: which transaction changed a query's result, over really replicated history.

An application process (tests/app_writer.py, stdlib sqlite3) changes a database one transaction
at a time while the daemon replicates it; the test waits until each transaction is uploaded, so
the txid of every step is known (one commit, one txid) and so is when its COMMIT returned.  The
oracle for every answer is a fresh, verified restore at the named transaction and the one before.
Databases are read here only with apsw (the daemon's library).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import datetime

import apsw
import pytest
import walrewind
from click.testing import CliRunner
from harness import DaemonThread, replica_records, wait_for
from synth_history import build_history
from walrewind.cli.main import cli
from walrewind.engine.errors import (
    HistoryGap,
    QueryFailed,
    UsageError,
    VerificationFailed,
)
from walrewind.engine.maintenance.compaction import compact
from walrewind.engine.replica.format import FLAG_RESYNC
from walrewind.engine.replica.index import Replica
from walrewind.engine.restore import workcopy
from walrewind.engine.restore.bisect import bisect, max_probes
from walrewind.engine.restore.restorer import restore
from walrewind.engine.sqlite.pagehash import checksum_file
from walrewind.engine.storage import open_storage
from walrewind.engine.storage.counting import CountingStorage
from walrewind.engine.timeparse import format_us, parse_timestamp_us

HERE = os.path.dirname(os.path.abspath(__file__))
APP_WRITER = os.path.join(HERE, "app_writer.py")
ENV = {"WALREWIND_CONFIG": ""}
COUNT = "SELECT count(*) FROM t"
SEED = ("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);\nCREATE TABLE u(id INTEGER PRIMARY KEY, k INTEGER);\n"
        "CREATE TABLE scratch(x);\nCREATE TABLE flag(v);\nINSERT INTO flag VALUES (0);\n"
        "INSERT INTO t(id, v) SELECT value, randomblob(300) FROM generate_series(1, {n})")


class App:
    """The application: one transaction per command, in its own process."""

    def __init__(self, db: str) -> None:
        self.proc = subprocess.Popen([sys.executable, APP_WRITER, db], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self.run(op="query", sql="SELECT 1")  # the file exists, in WAL mode

    def run(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        assert "error" not in answer, answer["error"]
        return answer

    def sql(self, sql: str) -> dict:
        return self.run(op="sql", sql=sql)

    def quit(self) -> None:
        self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
        self.proc.stdin.close()
        assert self.proc.wait(30) == 0


def seed_sql(n: int) -> str:
    # generate_series is not in every stdlib SQLite build: a recursive CTE does the same.
    return SEED.replace("generate_series(1, {n})",
                        f"(WITH RECURSIVE s(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM s WHERE value < {n}) "
                        "SELECT value FROM s)")


def rows(path: str, sql: str) -> list[tuple]:
    conn = apsw.Connection(f"file:{path}?immutable=1", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    try:
        return [tuple(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def restored_rows(replica: str, txid: int, out: str, sql: str) -> list[tuple]:
    restore(open_storage(replica, create=False), out, target_txid=txid, force=True)
    return rows(out, sql)


def invoke(*args: str):
    return CliRunner().invoke(cli, ["bisect", *args], env=ENV, catch_exceptions=False)


# ------------------------------------------------------------------------------------ the history
@pytest.fixture(scope="module")
def history(tmp_path_factory) -> dict:
    """200 rows in t; other writes; a DELETE of half of t; more writes; a DROP TABLE; more writes."""
    base = tmp_path_factory.mktemp("bisect")
    db, replica = str(base / "app.db"), str(base / "replica")
    app = App(db)
    app.sql(seed_sql(200))  # in the daemon's first snapshot: where the search starts by default
    steps: dict = {"replica": replica, "dir": base}
    with DaemonThread(db, replica, str(base / "state"), upload_interval=0.05) as shipper:
        stats = shipper.stats
        steps["since"] = steps["txid"] = stats.last_txid

        def step(sql: str) -> tuple[int, dict]:
            answer = app.sql(sql)
            target = steps["txid"] = steps["txid"] + 1  # one commit, one txid
            wait_for(lambda: stats.uploaded_txid >= target, what=f"txid {target} to be uploaded")
            return target, answer

        for i in range(12):
            step(f"INSERT INTO u(k) VALUES ({i})")
        steps["later"], _ = step("CREATE TABLE later(x);\nINSERT INTO later VALUES (1)")
        for i in range(12):
            step(f"UPDATE u SET k = k + 1 WHERE id = {i % 5 + 1}")
        steps["delete"], answer = step("DELETE FROM t WHERE id % 2 = 0")
        steps["delete_end"] = answer["end"]
        for i in range(12):
            step(f"INSERT INTO u(k) VALUES ({100 + i})")
        steps["drop"], _ = step("DROP TABLE scratch")
        for i in range(8):
            step(f"INSERT INTO u(k) VALUES ({200 + i})")
        steps["last"] = steps["txid"]
        assert stats.uploaded_txid == stats.last_txid == steps["last"], "one commit per step, nothing else writes"
    app.quit()
    return steps


@pytest.mark.slow
def test_names_the_delete_with_its_commit_time(history):
    """The issue's scenario: bisect --json names the DELETE, committed_at within 50 ms of its COMMIT."""
    run = invoke(history["replica"], "--query", COUNT, "--json")
    assert run.exit_code == 0, run.output
    out = json.loads(run.stdout)
    assert out["changed"] is True and out["txid"] == history["delete"]
    assert abs(parse_timestamp_us(out["committed_at"]) - history["delete_end"]) <= 50_000
    assert (out["before"], out["after"]) == ([[200]], [[100]])
    assert (out["since"]["txid"], out["until"]["txid"]) == (history["since"], history["last"])
    n = history["last"] - history["since"]
    assert out["transactions"] == n and out["probes"] <= max_probes(n) == n.bit_length()
    assert out["warnings"] == [] and out["resync"] is False
    # the oracle: fresh verified restores right before and at the named transaction
    tmp = history["dir"]
    assert restored_rows(history["replica"], out["txid"] - 1, str(tmp / "o1.db"), COUNT) == [(200,)]
    assert restored_rows(history["replica"], out["txid"], str(tmp / "o2.db"), COUNT) == [(100,)]

    text = invoke(history["replica"], "-q", COUNT)
    assert text.exit_code == 0
    assert text.stdout.splitlines()[:3] == [
        f"txid {history['delete']} (committed {out['committed_at']}) changed the result", "  before: 200",
        "  after:  100"]


def test_probe_states_are_exactly_fresh_restores_and_segments_are_fetched_once(history, tmp_path):
    """Each probe's working copy, checksummed from disk, equals a fresh verified restore at its txid
    (a stale page from a rollback would differ); the probes are O(log n), the snapshot is read only
    by the first restore, and each segment is downloaded once even when memory holds only one."""

    class Remote(CountingStorage):  # a replica that must be downloaded (as S3 is)
        def local_path(self, key):
            return None

    storage = Remote(open_storage(history["replica"], create=False))
    seen: list[tuple[int, str, int]] = []

    def on_probe(txid: int, path: str) -> None:
        seen.append((txid, f"{checksum_file(path, 4096):016x}", len(storage.keys)))

    work = tmp_path / "work"
    work.mkdir()
    outcome = bisect(storage, COUNT, on_probe=on_probe, memory_bytes=1, work_dir=str(work))
    assert outcome.txid == history["delete"] and os.listdir(work) == [], "the work directory is removed"
    n = outcome.range.transactions
    assert len(outcome.probes) == len(seen) <= n.bit_length()
    assert sum(p.records_applied for p in outcome.probes) <= n, "records after a kept probe are never applied twice"
    gets = [k for m, k in storage.keys if m == "get" and "/segments/" in k]
    assert gets and len(gets) == len(set(gets)), "a segment was downloaded twice"
    snapshot_reads = [i for i, (_m, k) in enumerate(storage.keys) if "/snapshots/" in k]
    assert snapshot_reads and max(snapshot_reads) < seen[0][2], "a probe went back to the snapshot"
    for txid, checksum, _ in seen:
        out = str(tmp_path / f"fresh-{txid}.db")
        result = restore(open_storage(history["replica"], create=False), out, target_txid=txid)
        assert f"{checksum_file(out, result.page_size):016x}" == checksum == f"{result.checksum:016x}", txid


def test_a_result_that_never_changes_exits_1(history):
    run = invoke(history["replica"], "--query", "SELECT count(*), sum(id) FROM t WHERE id % 2 = 1", "--json")
    assert run.exit_code == 1, run.output
    out = json.loads(run.stdout)
    n = history["last"] - history["since"]
    assert out["changed"] is False and out["txid"] is None and out["after"] is None
    assert out["before"] == [[100, 100 * 100]] and out["probes"] == n.bit_length()
    text = invoke(history["replica"], "--query", "SELECT 1.5, 'x', NULL")
    assert text.exit_code == 1 and text.stdout.startswith("the result did not change: (1.5, 'x', NULL)\n")


def test_bad_queries(history):
    syntax = invoke(history["replica"], "--query", "SELEC count(*) FROM t")
    assert syntax.exit_code == 2 and "Error: the query cannot be parsed: near \"SELEC\": syntax error" in syntax.stderr
    missing = invoke(history["replica"], "--query", "SELECT count(*) FROM later")
    assert missing.exit_code == 2
    assert (f"the query fails on the database as of txid {history['since']} (" in missing.stderr
            and "no such table: later" in missing.stderr and "--since" in missing.stderr), missing.stderr
    after_creation = invoke(history["replica"], "--query", "SELECT count(*) FROM later", "--since-txid",
                            str(history["later"]), "--json")
    assert after_creation.exit_code == 1 and json.loads(after_creation.stdout)["before"] == [[1]]
    writes = invoke(history["replica"], "--query", "DELETE FROM t")
    assert writes.exit_code == 2 and "readonly" in writes.stderr
    # a table dropped later: failing after the start is how the result changed
    dropped = invoke(history["replica"], "--query", "SELECT count(*) FROM scratch", "--json")
    assert dropped.exit_code == 0, dropped.output
    out = json.loads(dropped.stdout)
    assert out["txid"] == history["drop"] and out["before"] == [[0]]
    assert out["after"] == {"error": "no such table: scratch"}


def test_since_and_until(history):
    replica, delete = history["replica"], history["delete"]
    before_delete = invoke(replica, "-q", COUNT, "--until-txid", str(delete - 1), "--json")
    assert before_delete.exit_code == 1 and json.loads(before_delete.stdout)["until"]["txid"] == delete - 1
    after_delete = invoke(replica, "-q", COUNT, "--since-txid", str(delete), "--json")
    assert after_delete.exit_code == 1 and json.loads(after_delete.stdout)["before"] == [[100]]
    # as moments: the state as of the commit time of txid delete-5 .. as of the DELETE's commit time
    points = {r.txid: r.commit_ts_us for r in replica_records(replica)}
    run = invoke(replica, "-q", COUNT, "--since", format_us(points[delete - 5]), "--until",
                 format_us(points[delete]), "--json")
    assert run.exit_code == 0, run.output
    out = json.loads(run.stdout)
    assert out["txid"] == delete and out["since"]["txid"] == delete - 5 and out["until"]["txid"] == delete
    assert out["probes"] <= 3
    same = invoke(replica, "-q", COUNT, "--since-txid", str(delete), "--until-txid", str(delete))
    assert same.exit_code == 2 and "nothing to search" in same.stderr
    backwards = invoke(replica, "-q", COUNT, "--since-txid", str(delete), "--until-txid", str(delete - 3))
    assert backwards.exit_code == 2 and "after --until" in backwards.stderr
    future = invoke(replica, "-q", COUNT, "--until", "2999-01-01")
    assert future.exit_code == 2 and "in the future" in future.stderr
    both = invoke(replica, "-q", COUNT, "--since", "2024-01-01", "--since-txid", "3")
    assert both.exit_code == 2


def test_python_api(history):
    found = walrewind.bisect(history["replica"], COUNT, since_txid=history["since"])
    assert isinstance(found, walrewind.BisectResult) and found.changed and found.txid == history["delete"]
    assert isinstance(found.committed_at, datetime) and found.committed_at.tzinfo is not None
    assert (found.before, found.after, found.after_error) == ([(200,)], [(100,)], None)
    dropped = walrewind.bisect(history["replica"], "SELECT x FROM scratch")
    assert dropped.txid == history["drop"] and dropped.after is None and "scratch" in dropped.after_error
    with pytest.raises(walrewind.QueryFailed):
        walrewind.bisect(history["replica"], "SELECT nope(")
    assert issubclass(walrewind.QueryFailed, walrewind.WalrewindError)


# ------------------------------------------------------------------------------ synthetic history
MAX_COUNTER = "SELECT max(CAST(substr(body, instr(body, 'v=') + 2, 8) AS INTEGER)) >= {k} FROM orders"


@pytest.fixture
def synthetic(tmp_path):
    """600 transactions in 12 segments (tests/synth_history.py): record k stamps the counter k,
    so ``MAX_COUNTER`` first turns true at txid k.  Returns (replica, {txid: checksum})."""
    replica = str(tmp_path / "synthetic")
    h = build_history(replica, seconds=12, txn_per_segment=50, pages=200)
    return replica, {txid: f"{checksum:016x}" for txid, _ts, checksum in h.points}


def test_segments_compacted_during_the_search(synthetic, tmp_path):
    """Compaction merges (and deletes) the segments a search has not read yet: it lists again,
    reads the merged ones, and every probe state is still the recorded one."""
    replica, checksums = synthetic
    storage = open_storage(replica, create=False)
    seen = []

    def on_probe(txid: int, path: str) -> None:
        if not seen:
            report = compact(storage, now_us=4_000_000_000_000_000, compact_after_us=0, span_us=3_600_000_000)
            assert report.merged, "the test needs compaction to replace segments mid-search"
        seen.append((txid, f"{checksum_file(path, 4096):016x}"))

    outcome = bisect(storage, MAX_COUNTER.format(k=500), on_probe=on_probe, work_dir=str(tmp_path))
    assert outcome.txid == 500 and outcome.before.rows == ((0,),) and outcome.after.rows == ((1,),)
    assert all(checksums[t] == c for t, c in seen)
    assert len(Replica(storage).generations[0].segments) == 1


def test_a_stale_page_would_be_caught(synthetic, tmp_path, monkeypatch):
    """The oracle has teeth: with a rollback that forgets to write pre-images back, the search is
    stopped by the working copy's pre-image check or its probe states differ from the records'."""
    replica, checksums = synthetic
    real = workcopy.WorkingCopy.rollback

    def forgetful(self):
        self._undo.clear()  # nothing is written back
        real(self)

    monkeypatch.setattr(workcopy.WorkingCopy, "rollback", forgetful)
    seen = []
    try:
        bisect(open_storage(replica, create=False), MAX_COUNTER.format(k=40), work_dir=str(tmp_path),
               on_probe=lambda txid, path: seen.append((txid, f"{checksum_file(path, 4096):016x}")))
    except VerificationFailed as exc:
        assert "stale page" in str(exc)
    else:
        assert any(checksums[t] != c for t, c in seen), "a broken rollback went unnoticed"


def test_history_gap_and_usage_errors(synthetic, tmp_path):
    replica, _ = synthetic
    storage = open_storage(replica, create=False)
    segments = Replica(storage).generations[0].segments
    os.unlink(os.path.join(replica, *segments[5].key.split("/")))
    with pytest.raises(HistoryGap, match="missing"):
        bisect(storage, "SELECT 1", since_txid=1, until_txid=segments[8].last_txid, work_dir=str(tmp_path))
    with pytest.raises(UsageError, match="empty"):
        bisect(storage, "  ", work_dir=str(tmp_path))
    with pytest.raises(QueryFailed, match="cannot be parsed"):
        bisect(storage, "SELECT (", work_dir=str(tmp_path))
    assert os.listdir(tmp_path) == ["synthetic"], "nothing is left in the work directory"


def test_a_search_stays_in_one_generation(tmp_path):
    """A daemon that lost its local state starts a new generation (a break in history): the
    default search covers the newest one and says so; a range across the break is refused,
    naming it; the older generation can be searched on its own."""
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    app = App(db)
    app.sql(seed_sql(10))
    for state in ("state-a", "state-b"):  # the second daemon has no saved state: a new generation
        with DaemonThread(db, replica, str(tmp_path / state), upload_interval=0.05) as shipper:
            stats = shipper.stats
            target = stats.last_txid + 3  # the snapshot's txid + one per commit
            if state == "state-b":
                app.sql("DELETE FROM t WHERE id % 2 = 0")
                target += 1
            for i in range(3):
                app.sql(f"INSERT INTO u(k) VALUES ({i})")
            wait_for(lambda: stats.uploaded_txid >= target, what=f"txid {target} to be uploaded")
    app.quit()
    old, new = Replica(open_storage(replica, create=False)).generations
    run = invoke(replica, "-q", COUNT, "--json")
    assert run.exit_code == 0, run.output
    out = json.loads(run.stdout)
    assert out["txid"] == new.first_txid + 1 and out["since"]["txid"] == new.first_txid
    assert out["generation"] == new.id and "generation" in out["notes"][0]
    across = invoke(replica, "-q", COUNT, "--since-txid", str(old.first_txid))
    assert across.exit_code == 2 and "different generations" in across.stderr and format_us(new.start_us) in across.stderr
    older = invoke(replica, "-q", "SELECT count(*) FROM u", "--until-txid", str(old.last_txid), "--json")
    assert older.exit_code == 0 and json.loads(older.stdout)["txid"] == old.first_txid + 1


# ---------------------------------------------------------------------------------------- RESYNC
def start_daemon(db: str, replica: str, state: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "from walrewind.cli.main import main; main()", "replicate", db, replica,
         "--state-dir", state, "--upload-interval", "0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def latest_txid(replica: str) -> int:
    if not os.path.isdir(os.path.join(replica, "generations")):
        return 0
    latest = Replica(open_storage(replica, create=False)).latest()
    return latest[0] if latest else 0


@pytest.mark.slow
def test_bisect_across_a_resync(tmp_path):
    """The daemon is killed while the app TRUNCATE-checkpoints: the lost commits come back as one
    RESYNC record.  A search across it still names the DELETE made after it (committed_at within
    50 ms of its COMMIT), and a change made while nobody watched is pinned on the RESYNC, saying so."""
    db, replica, state = (str(tmp_path / n) for n in ("app.db", "replica", "state"))
    app = App(db)
    app.sql(seed_sql(100))
    daemon = start_daemon(db, replica, state)
    wait_for(lambda: latest_txid(replica) > 0, what="the first snapshot", daemon=daemon)
    since = latest_txid(replica)
    for i in range(5):
        app.sql(f"INSERT INTO u(k) VALUES ({i})")
    wait_for(lambda: latest_txid(replica) >= since + 5, what="5 commits shipped", daemon=daemon)
    os.killpg(daemon.pid, signal.SIGKILL)
    daemon.wait()
    app.sql("UPDATE flag SET v = 1")  # while nobody watches
    for i in range(3):
        app.sql(f"INSERT INTO u(k) VALUES ({10 + i})")
        assert app.run(op="query", sql="PRAGMA wal_checkpoint(TRUNCATE)")["rows"][0][0] == 0, "checkpoint busy"
    daemon = start_daemon(db, replica, state)
    wait_for(lambda: any(r.flags & FLAG_RESYNC for r in replica_records(replica)) if latest_txid(replica) > since + 5
             else False, what="the RESYNC record", daemon=daemon)
    resync = next(r.txid for r in replica_records(replica) if r.flags & FLAG_RESYNC)
    for i in range(5):
        app.sql(f"INSERT INTO u(k) VALUES ({20 + i})")
    delete_end = app.sql("DELETE FROM t WHERE id % 2 = 0")["end"]
    for i in range(5):
        app.sql(f"INSERT INTO u(k) VALUES ({30 + i})")
    wait_for(lambda: latest_txid(replica) >= resync + 11, what="the commits after the resync", daemon=daemon)
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(60) == 0, daemon.stderr.read()
    app.quit()
    assert latest_txid(replica) == resync + 11

    storage = open_storage(replica, create=False)
    seen = []
    outcome = bisect(storage, COUNT, work_dir=str(tmp_path),
                     on_probe=lambda txid, path: seen.append((txid, f"{checksum_file(path, 4096):016x}")))
    assert outcome.range.since_txid < resync < outcome.txid, "the search crossed the RESYNC"
    assert outcome.txid == resync + 6 and abs(outcome.commit_us - delete_end) <= 50_000
    assert outcome.before.rows == ((100,),) and outcome.after.rows == ((50,),) and outcome.warnings == []
    for txid, checksum in seen:
        out = str(tmp_path / f"fresh-{txid}.db")
        restore(storage, out, target_txid=txid)
        assert f"{checksum_file(out, 4096):016x}" == checksum, txid

    unseen = bisect(storage, "SELECT v FROM flag", work_dir=str(tmp_path))
    assert unseen.txid == resync and unseen.after.rows == ((1,),)
    assert len(unseen.warnings) == 1 and "is a RESYNC" in unseen.warnings[0]
