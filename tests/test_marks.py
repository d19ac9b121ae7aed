"""Named restore points (issue 15): `walrewind mark`, `marks`, `unmark`, and `--mark` on restores.

The application is tests/app_writer.py (another process, stdlib sqlite3) driven one transaction
at a time; a load thread in this process makes it insert row 1, 2, 3, ... at ~50 transactions a
second and, every 25th step, run its own wal_checkpoint(TRUNCATE) (WAL resets under the marks).
Each insert's begin and COMMIT-returned times are logged, so "the rows present when `mark` was
called" is known: after commit k the table holds exactly rows 1..k, and a mark is right when k
includes every insert whose COMMIT returned before `mark` was called and none begun after it
returned.  The daemon is a real `walrewind replicate` process or a DaemonThread.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import apsw
import pytest
import walrewind
import walrewind.engine.daemon.clock as daemon_clock
from click.testing import CliRunner
from daemon_process import Daemon
from harness import DaemonThread, create_db, replica_records, run_writer
from walrewind.cli.main import cli
from walrewind.engine.errors import InvalidName, MarkBroken, ObjectCorrupt, UsageError
from walrewind.engine.maintenance.compaction import HOUR_US, compact
from walrewind.engine.maintenance.retention import RetentionPolicy, plan_prune, prune
from walrewind.engine.maintenance.snapshots import build_snapshot
from walrewind.engine.replica import layout
from walrewind.engine.replica.format import FLAG_RESYNC
from walrewind.engine.replica.index import Generation, Replica
from walrewind.engine.replica.marks import Mark, load_marks, needed_objects, put_mark
from walrewind.engine.sqlite.counter import commit_counter
from walrewind.engine.sqlite.fds import close_shared, open_shared
from walrewind.engine.sqlite.shm import ShmHeader
from walrewind.engine.storage import open_storage
from walrewind.engine.workspace.markpoint import Uploaded, _not_yet
from walrewind.engine.workspace.recovery import Target

HERE = os.path.dirname(os.path.abspath(__file__))
APP_WRITER = os.path.join(HERE, "app_writer.py")
WALREWIND = [sys.executable, "-c", "from walrewind.cli.main import main; main()"]
DAY = 86_400_000_000


def now_us() -> int:
    return time.time_ns() // 1000


def wait_until(cond, what: str, timeout: float = 60.0) -> None:
    """Wait for an observable condition (never for a guessed amount of time)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


class App:
    """The application: one transaction per command, in its own process."""

    def __init__(self, db: str) -> None:
        self.proc = subprocess.Popen([sys.executable, APP_WRITER, db], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self.lock = threading.Lock()
        self.run("script", "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB);")

    def run(self, op: str, sql: str) -> dict:
        with self.lock:
            self.proc.stdin.write(json.dumps({"op": op, "sql": sql}) + "\n")
            self.proc.stdin.flush()
            answer = json.loads(self.proc.stdout.readline())
        assert "error" not in answer, answer["error"]
        return answer

    def insert(self, n: int) -> dict:
        return self.run("sql", f"INSERT INTO t(id, v) VALUES ({n}, randomblob(120))")

    def quit(self) -> None:
        self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
        self.proc.stdin.close()
        assert self.proc.wait(30) == 0


class Load:
    """Rows 1, 2, 3, ... inserted at ``rate`` transactions a second from a thread of this process
    (the SQL runs in the App's process); logged as (row, begin, COMMIT returned)."""

    def __init__(self, app: App, rate: float = 50.0, truncate_every: int = 25, first: int = 1) -> None:
        self.app, self.rate, self.truncate_every = app, rate, truncate_every
        self.next = first
        self.log: list[tuple[int, int, int]] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        start, step = time.monotonic(), 0
        while not self._stop.is_set():
            step += 1
            if self._stop.wait(max(0.0, start + step / self.rate - time.monotonic())):  # pacing, not synchronisation
                break
            if self.truncate_every and step % self.truncate_every == 0:
                self.app.run("script", "PRAGMA wal_checkpoint(TRUNCATE);")
                continue
            answer = self.app.insert(self.next)
            self.log.append((self.next, answer["begin"], answer["end"]))
            self.next += 1

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(30)

    def window(self, called_us: int, returned_us: int) -> tuple[int, int]:
        """(lo, hi): a mark made between the two moments must hold rows 1..k with lo <= k <= hi."""
        lo = max((n for n, _b, end in self.log if end < called_us), default=0)
        hi = min((n - 1 for n, begin, _e in self.log if begin > returned_us), default=self.log[-1][0])
        return lo, hi


def rows(path: str) -> list[int]:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return [r[0] for r in conn.execute("SELECT id FROM t ORDER BY id")]
    finally:
        conn.close()


def prefix_length(ids: list[int]) -> int:
    """k when ``ids`` is exactly 1..k (the state after the k-th insert, nothing deleted)."""
    assert ids == list(range(1, len(ids) + 1)), f"not the rows of one moment: {ids[:5]}...{ids[-5:]}"
    return len(ids)


def descriptors_of(db: str) -> dict[str, list[int]]:
    """This process's descriptors of the database and its -shm (by inode): the files whose POSIX
    locks a close would drop (the daemon reopens the lock-free -wal as it likes)."""
    out: dict[str, list[int]] = {}
    for suffix in ("", "-shm"):
        st = os.stat(db + suffix)
        out[suffix] = []
        for name in os.listdir("/proc/self/fd"):
            try:
                fst = os.fstat(int(name))
            except OSError:
                continue
            if (fst.st_dev, fst.st_ino) == (st.st_dev, st.st_ino):
                out[suffix].append(int(name))
    return out


def list_mark_keys(replica: str) -> list[str]:
    return [i.key for i in open_storage(replica, create=False).list("marks/")]


CONFIG = """\
data_dir = "data"

[databases.prod]
path = "prod.db"
replica = "replica"
state_dir = "state"
upload_interval = 0.2
"""


# ---------------------------------------------------------------------- the scenario
@pytest.mark.slow
def test_mark_before_a_migration_restores_exactly_the_rows_present_then(tmp_path):
    """`mark prod before-migration` while the app writes at 50 txn/s, then a DELETE of half the
    rows and more writes: `db create --mark`, `restore --mark` and walrewind.restore(mark=) all
    give exactly the rows committed when `mark` ran; --exclusive gives the state right before."""
    cfg = tmp_path / "walrewind.toml"
    cfg.write_text(CONFIG)
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "xdg"), "WALREWIND_CONFIG": str(cfg)}
    app = App(str(tmp_path / "prod.db"))
    daemon = Daemon(["replicate"], tmp_path, env)
    load = None
    try:
        daemon.wait_for("replicating prod")
        load = Load(app)
        wait_until(lambda: len(load.log) >= 100, "100 inserts")
        called = now_us()
        res = subprocess.run(WALREWIND + ["mark", "prod", "before-migration", "--note", "deploy 42", "--json"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        returned = now_us()
        assert res.returncode == 0, res.stderr
        made = json.loads(res.stdout)
        called_api = now_us()
        tight = walrewind.mark("prod", "from-python", config=cfg)  # no interpreter start-up: a narrow window
        returned_api = now_us()
        app.run("sql", "DELETE FROM t WHERE id % 2 = 0")  # the migration gone wrong
        more = len(load.log) + 50
        wait_until(lambda: len(load.log) >= more, "more writes after the DELETE")
    finally:
        if load is not None:
            load.stop()
        rc, said, _took = daemon.stop()
    assert rc == 0, said
    lo, hi = load.window(called, returned)
    assert hi - lo < 100, "the oracle's window is too wide to mean anything"
    lo_api, hi_api = load.window(called_api, returned_api)
    k_api = prefix_length(rows(walrewind.restore("prod", tmp_path / "tight.db", mark="from-python", config=cfg).path))
    assert lo_api <= k_api <= hi_api and tight.txid > made["txid"]

    runner = CliRunner(env={"WALREWIND_CONFIG": str(cfg), "XDG_STATE_HOME": str(tmp_path / "xdg")})
    res = runner.invoke(cli, ["db", "create", "m1", "--from-db", "prod", "--mark", "before-migration", "--json"])
    assert res.exit_code == 0, res.output
    created = json.loads(res.output)
    k = prefix_length(rows(created["path"]))
    assert lo <= k <= hi, f"the mark holds rows 1..{k}; committed when `mark` ran: 1..{lo} at least, 1..{hi} at most"
    assert created["restore"]["txid"] == made["txid"] and created["target_mark"] == "before-migration"

    api = walrewind.restore("prod", tmp_path / "api.db", mark="before-migration", config=cfg)
    assert (api.txid, api.checksum) == (made["txid"], created["restore"]["checksum"])
    assert api.committed_at.isoformat().replace("+00:00", "Z") == made["commit_time"]
    assert rows(api.path) == list(range(1, k + 1))

    res = runner.invoke(cli, ["restore", "prod", "--mark", "before-migration", "--exclusive", "-o",
                              str(tmp_path / "before.db"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["txid"] == made["txid"] - 1
    assert rows(tmp_path / "before.db") == list(range(1, k)), "--exclusive: the state right before the mark"

    latest = walrewind.restore("prod", tmp_path / "latest.db", config=cfg)
    assert not [i for i in rows(latest.path) if i <= k and i % 2 == 0], "the DELETE did happen after the mark"

    res = runner.invoke(cli, ["marks", "prod", "--json"])
    assert res.exit_code == 0, res.output
    listed, _tight = json.loads(res.output)["marks"]
    assert listed["name"] == "before-migration" and listed["txid"] == made["txid"] and listed["restorable"]
    assert listed["note"] == "deploy 42" and "@" in listed["who"] and listed["commit_time"] == made["commit_time"]
    res = runner.invoke(cli, ["verify", "prod", "--mark", "before-migration"])
    assert res.exit_code == 0 and "PASSED" in res.output and "mark before-migration" in res.output, res.output
    res = runner.invoke(cli, ["history"])
    assert "mark before-migration" in res.output, res.output
    app.quit()


# ---------------------------------------------------------------------- in-process, the Python API
def test_api_mark_in_a_process_holding_the_database(tmp_path):
    """walrewind.mark() next to a daemon thread (SQLite connections on the database in this
    process): the counter is read through the process's own -shm descriptor and nothing is closed.
    Idle database: the mark is the latest point.  A daemon restart keeps the counter's anchor."""
    db, replica, state = str(tmp_path / "app.db"), str(tmp_path / "replica"), str(tmp_path / "state")
    app = App(db)
    for n in range(1, 21):
        app.insert(n)
    with DaemonThread(db, replica, state, upload_interval=0.05) as shipper:
        fds_before = descriptors_of(db)
        idle = walrewind.mark(replica, "idle")
        assert idle.txid == shipper.stats.uploaded_txid == shipper.stats.last_txid, "nothing committed: the latest"
        for n in range(21, 26):
            app.insert(n)
        five = walrewind.mark(replica, "after-five", note="five more")
        assert five.txid == idle.txid + 5 and five.note == "five more"
        assert descriptors_of(db) == fds_before, "mark() opened or closed a descriptor of the database's files"
        assert any(fds_before.values()), "the daemon's SQLite connections hold the -shm: the case under test"
        with pytest.raises(walrewind.MarkExists, match="already exists"):
            walrewind.mark(replica, "idle")
        with pytest.raises(InvalidName):
            walrewind.mark(replica, "no/slashes")
        app.insert(26)
        wait_until(lambda: shipper.stats.uploaded_txid == five.txid + 1, "the daemon to keep shipping")
    with DaemonThread(db, replica, state, upload_interval=0.05) as shipper:
        again = walrewind.mark(replica, "after-restart")
        assert again.txid == five.txid + 1 == shipper.stats.uploaded_txid
    app.quit()
    assert [m.name for m in walrewind.marks(replica)] == ["idle", "after-five", "after-restart"]
    assert all(m.broken is None for m in walrewind.marks(replica))
    for m, k in ((idle, 20), (five, 25), (again, 26)):
        result = walrewind.restore(replica, tmp_path / f"{m.name}.db", mark=m.name)
        assert result.txid == m.txid and rows(result.path) == list(range(1, k + 1))
    walrewind.unmark(replica, "idle")
    assert [m.name for m in walrewind.marks(replica)] == ["after-five", "after-restart"]
    with pytest.raises(walrewind.MarkNotFound, match="no mark 'idle'.*after-five"):
        walrewind.restore(replica, tmp_path / "gone.db", mark="idle")


def test_mark_times_out_without_a_daemon_and_writes_nothing(tmp_path):
    db, replica, state = str(tmp_path / "app.db"), str(tmp_path / "replica"), str(tmp_path / "state")
    app = App(db)
    with DaemonThread(db, replica, state, upload_interval=0.05):
        app.insert(1)
    app.insert(2)  # committed while no daemon runs: SQLite counts it, nothing uploads it
    cfg = tmp_path / "walrewind.toml"
    cfg.write_text('[databases.app]\npath = "app.db"\nreplica = "replica"\nstate_dir = "state"\n')
    started = time.monotonic()
    res = CliRunner(env={"XDG_STATE_HOME": str(tmp_path / "xdg")}).invoke(
        cli, ["--config", str(cfg), "mark", "app", "never", "--timeout", "0.5"])
    assert res.exit_code == 1, res.output
    assert "timed out after 0.5s waiting for the daemon to upload txid" in res.output
    assert "no mark was written" in res.output and "is `walrewind replicate` running?" in res.output
    assert time.monotonic() - started < 10
    assert list_mark_keys(replica) == []
    app.quit()


@pytest.mark.slow
def test_mark_over_a_resync_is_refused_then_exact_again(tmp_path):
    """Commits made while the daemon is down, then a TRUNCATE checkpoint: the daemon cannot observe
    them one by one and folds them into one RESYNC record.  A mark whose moment lies inside is
    refused (never placed approximately); once the daemon tails live again, marks are exact."""
    db, replica, state = str(tmp_path / "app.db"), str(tmp_path / "replica"), str(tmp_path / "state")
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "xdg"), "WALREWIND_CONFIG": ""}
    app = App(db)
    with DaemonThread(db, replica, state, upload_interval=0.05):
        for n in range(1, 11):
            app.insert(n)
    for n in range(11, 21):
        app.insert(n)
    app.run("script", "PRAGMA wal_checkpoint(TRUNCATE);")  # the frames of 11..20 are gone from the WAL
    marker = Daemon(["mark", replica, "in-the-gap", "--timeout", "60"], tmp_path, env)
    marker.wait_for("waiting for the daemon to upload 10 more transaction(s)")
    with DaemonThread(db, replica, state, upload_interval=0.05):
        rc = marker.proc.wait(60)
        said = "".join(marker.lines) + marker.proc.stderr.read().decode()
        assert rc == 1, said
        assert "RESYNC" in said and "no mark was written" in said
        assert list_mark_keys(replica) == []
        after = walrewind.mark(replica, "after-the-gap")
        app.insert(21)
        last = walrewind.mark(replica, "live-again")
        assert last.txid == after.txid + 1
    app.quit()
    assert any(r.flags & FLAG_RESYNC for r in replica_records(replica)), "the scenario did not produce a RESYNC"
    assert rows(walrewind.restore(replica, tmp_path / "a.db", mark="after-the-gap").path) == list(range(1, 21))
    assert rows(walrewind.restore(replica, tmp_path / "b.db", mark="live-again").path) == list(range(1, 22))


# ---------------------------------------------------------------------- retention and compaction
@pytest.mark.slow
def test_marks_survive_prune_and_compaction_until_removed(tmp_path, monkeypatch):
    """History three days old and a 1-day retention: prune would delete the first snapshot and the
    segments up to a later snapshot, the mark's history among them.  The mark keeps exactly what
    restoring it needs (prune --dry-run names it), through compaction too, until `unmark`."""
    db, replica, state = str(tmp_path / "app.db"), str(tmp_path / "replica"), str(tmp_path / "state")
    create_db(db)
    real = daemon_clock.now_us
    monkeypatch.setattr(daemon_clock, "now_us", lambda: real() - 3 * DAY)
    with DaemonThread(db, replica, state, upload_interval=0.05) as shipper:
        run_writer({"db": db, "txns": 30, "rate": 200, "seed": 1, "log": os.devnull})
        wait_until(lambda: shipper.stats.uploaded_txid == shipper.stats.last_txid > 25, "the first writes uploaded")
        mark = walrewind.mark(replica, "keep-me", note="before the cleanup")
        run_writer({"db": db, "txns": 30, "rate": 200, "seed": 2, "log": os.devnull, "shrink_every": 10})
        wait_until(lambda: shipper.stats.uploaded_txid == shipper.stats.last_txid > mark.txid + 20, "more uploaded")
        storage = open_storage(replica, create=False)
        newer = build_snapshot(storage, workdir=str(tmp_path))
        run_writer({"db": db, "txns": 20, "rate": 200, "seed": 3, "log": os.devnull})
        wait_until(lambda: shipper.stats.uploaded_txid == shipper.stats.last_txid > newer.txid + 10, "the tail")
    reference = walrewind.restore(replica, tmp_path / "reference.db", mark="keep-me")
    assert reference.txid == mark.txid

    gen = Replica(storage).generations[0]
    needed = needed_objects(gen, mark.txid)
    assert needed[0] == gen.snapshots[0].key and len(needed) > 1
    policy = RetentionPolicy(retention_us=DAY, keep_daily=0, keep_weekly=0, keep_monthly=0, grace_us=0)
    unmarked = plan_prune(storage, policy, now_us(), marks=[])
    assert set(needed) <= set(unmarked.deleted), "without the mark, retention would delete its history"

    res = CliRunner().invoke(cli, ["prune", replica, "--dry-run", "--retention", "1d", "--keep-daily", "0",
                                   "--keep-weekly", "0", "--keep-monthly", "0", "--grace", "1m"])
    assert res.exit_code == 0, res.output
    assert f"kept for mark 'keep-me': {len(needed)} object(s) that would be deleted otherwise" in res.output
    assert all(key in res.output for key in needed) and "mark keep-me" in res.output

    pruned = prune(storage, policy)
    assert pruned.deleted and not set(needed) & set(pruned.deleted)
    assert sorted(pruned.kept_for_marks["keep-me"]) == sorted(needed)
    assert walrewind.restore(replica, tmp_path / "after-prune.db", mark="keep-me").checksum == reference.checksum

    compacted = compact(storage, compact_after_us=HOUR_US)
    assert compacted.merged, "compaction merged nothing: the test proves nothing"
    prune(storage, policy)
    assert walrewind.restore(replica, tmp_path / "after-compact.db", mark="keep-me").checksum == reference.checksum
    res = CliRunner().invoke(cli, ["verify", replica, "--mark", "keep-me"])
    assert res.exit_code == 0 and "PASSED" in res.output, res.output

    # A mark whose history is deleted by hand is reported broken, and restoring it is refused.
    covering = needed_objects(Replica(storage).generations[0], mark.txid)
    storage.delete(covering[-1])
    (status,) = walrewind.marks(replica)
    assert status.broken is not None and "keep-me" == status.name
    res = CliRunner().invoke(cli, ["marks", replica])
    assert "BROKEN" in res.output
    with pytest.raises(MarkBroken, match="keep-me"):
        walrewind.restore(replica, tmp_path / "broken.db", mark="keep-me")
    res = CliRunner().invoke(cli, ["verify", replica, "--mark", "keep-me"])
    assert res.exit_code == 1 and "FAILED" in res.output, res.output

    walrewind.unmark(replica, "keep-me")
    assert not prune(storage, policy).kept_for_marks
    assert not set(covering[:-1]) & {i.key for i in storage.list("generations/")}, "unmarked: its history goes"


# ---------------------------------------------------------------------- pieces, no daemon
def test_commit_counter_is_read_the_same_whichever_descriptor_this_process_holds(tmp_path):
    """Plain (open, read, close), through a -shm descriptor this process already holds (never
    closed), and in a child process when this process holds the database open (a SQLite
    connection may have locks that a close would drop)."""
    db = str(tmp_path / "app.db")
    app = App(db)
    before = commit_counter(db)
    for n in range(1, 4):
        app.insert(n)
    assert commit_counter(db) == (before + 3) & 0xFFFFFFFF, "one increment per commit"
    shm_fd = open_shared(db + "-shm")
    db_fd = os.open(db, os.O_RDONLY)
    try:
        assert commit_counter(db) == before + 3  # through shm_fd
        os.fstat(shm_fd)  # still open
        close_shared(shm_fd)
        shm_fd = None
        assert commit_counter(db) == before + 3  # in a child: db_fd is open here
    finally:
        if shm_fd is not None:
            close_shared(shm_fd)
        os.close(db_fd)
    app.quit()


def test_an_equal_counter_needs_the_same_wal_position_unless_a_daemon_holds_the_database():
    """With no commit counted since the uploaded point, the database is only proven unchanged by
    the same WAL salts and last frame; after a WAL reset (mxFrame 0) the counter is trusted only
    while a daemon holds the database open (the wal-index cannot be rebuilt under it)."""
    up = Uploaded(txid=9, commit_us=1, change=41, generation="g", db_id="d", position=(7, 8, 12))
    salts = (7).to_bytes(4, "big") + (8).to_bytes(4, "big")
    new_salts = (8).to_bytes(4, "big") + (99).to_bytes(4, "big")
    same = ShmHeader(41, 12, 3, salts, 0, (), 4096)
    assert _not_yet(up, same, daemon_running=False) is None
    rebuilt = ShmHeader(41, 20, 3, salts, 0, (), 4096)  # counted back to 41 after a rebuild: other frames
    assert "changed while no daemon" in _not_yet(up, rebuilt, daemon_running=True)
    reset = ShmHeader(41, 0, 3, new_salts, 0, (), 4096)
    assert _not_yet(up, reset, daemon_running=True) is None
    assert "changed while no daemon" in _not_yet(up, reset, daemon_running=False)
    assert "behind" in _not_yet(up, ShmHeader(40, 12, 3, salts, 0, (), 4096), daemon_running=True)
    assert _not_yet(up, ShmHeader(45, 30, 3, salts, 0, (), 4096), daemon_running=False) is None  # 4 to wait for


def test_target_and_mark_objects(tmp_path):
    with pytest.raises(UsageError, match="--txid and --mark"):
        Target.parse(txid=3, mark="x")
    with pytest.raises(UsageError, match="--mark"):
        Target.parse(exclusive=True)
    with pytest.raises(InvalidName):
        Target.parse(mark="../x")
    target = Target.parse(mark="deploy", exclusive=True)
    assert target.typed == "mark deploy (exclusive)" and target.describe() == "just before mark 'deploy'"
    with pytest.raises(walrewind.MarkError, match="not looked up"):
        _ = target.restore_txid  # never "the latest point" by accident

    storage = open_storage(str(tmp_path / "replica"))
    mark = Mark("m1", 42, 1_700_000_000_000_000, "0000000000000001-00000001", "db", 1_700_000_001_000_000, "u@h", "n", 7)
    put_mark(storage, mark)
    with pytest.raises(walrewind.MarkExists):
        put_mark(storage, mark)
    storage.put("marks/bad.json", b'{"version": 2}')
    storage.put("marks/not-a-mark.txt", b"ignored")
    marks, problems = load_marks(storage)
    assert marks == [mark]
    assert list(problems) == ["marks/bad.json"] and "version 2 is not supported" in problems["marks/bad.json"]
    with pytest.raises(ObjectCorrupt):
        Mark.from_json({"version": 1, "name": "x"}, "here")

    gen = Generation("0000000000000001-00000001",
                     snapshots=[layout.SnapshotKey("0000000000000001-00000001", t, t) for t in (1, 50, 90)],
                     segments=[layout.SegmentKey("0000000000000001-00000001", a, b, a, b)
                               for a, b in ((2, 30), (31, 60), (61, 95))])
    assert needed_objects(gen, 42) == [gen.snapshots[0].key, gen.segments[0].key, gen.segments[1].key]
    assert needed_objects(gen, 50) == [gen.snapshots[1].key]
    assert needed_objects(gen, 61) == [gen.snapshots[1].key, gen.segments[1].key, gen.segments[2].key]
    assert needed_objects(Generation("x"), 5) == []


# ---------------------------------------------------------------------- on S3
@pytest.mark.s3
def test_marks_on_s3(tmp_path, seaweed_s3):
    """The same objects on a real S3 server: create-only mark, listing, restore, unmark."""
    import uuid

    db, state = str(tmp_path / "app.db"), str(tmp_path / "state")
    replica = seaweed_s3.url(f"marks/{uuid.uuid4().hex[:8]}")
    app = App(db)
    with DaemonThread(db, replica, state, upload_interval=0.05):
        for n in range(1, 6):
            app.insert(n)
        made = walrewind.mark(replica, "on-s3", note="s3")
        with pytest.raises(walrewind.MarkExists):
            walrewind.mark(replica, "on-s3")
        app.insert(6)
    app.quit()
    (listed,) = walrewind.marks(replica)
    assert (listed.name, listed.txid, listed.note, listed.broken) == ("on-s3", made.txid, "s3", None)
    assert rows(walrewind.restore(replica, tmp_path / "m.db", mark="on-s3").path) == [1, 2, 3, 4, 5]
    walrewind.unmark(replica, "on-s3")
    assert walrewind.marks(replica) == []
