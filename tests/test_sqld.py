"""walrewind against a real sqld 0.24.32 (tests/sqld_server.py), as a user runs it today.

Scenario (one run per module, judged by the tests below): three namespaces written over Hrana HTTP
by writer processes while sqld TRUNCATE-checkpoints every 2 s; one ``walrewind replicate
DATA.sqld/dbs/NS/data file://...`` process per namespace.  After the writers stop and everything
is shipped, sqld keeps checkpointing the now idle namespaces; we watch the daemons for a while,
then SIGTERM them.  sqld gives no checksum, so restores are judged by their rows: they must be
exactly the rows of the first k logged transactions, for a k the target time allows.

The last tests pin facts about sqld itself that walrewind's sqld support builds on (namespace
layout on disk, what its dump loader keeps and loses, adopting a database file).  docs/SQLD.md
explains them.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import apsw
import pytest
from harness import TEST_MARGIN_US, allowed_range
from sqld_server import (
    TABLE_SQL,
    SqldError,
    busy_retries,
    read_writer_log,
    rows_after,
    sqld_server,
    start_writer,
    state_index,
)
from walrewind.engine.daemon.statefile import load_state_file
from walrewind.engine.restore.restorer import restore
from walrewind.engine.storage import open_storage

NAMESPACES = ("alpha", "beta", "gamma")
RATE = 20  # transactions per second per namespace
DURATION = 10.0  # seconds of writing: ~5 sqld TRUNCATE checkpoints per namespace
SEED = 12
TARGETS = 10  # random restore targets per namespace
IDLE_WATCH = 3.0  # seconds the idle daemons are watched before SIGTERM
SIGTERM_LIMIT = 10.0
WALREWIND = [sys.executable, "-c", "from walrewind.cli.main import main; main()"]
BEHIND_MESSAGE = "while still behind the writer"


def wait_for(condition, timeout: float, what: str, procs: dict | None = None) -> None:
    """Poll an external effect (a file, a log line); fail loudly on timeout or a dead process."""
    deadline = time.monotonic() + timeout
    while not condition():
        for name, proc in (procs or {}).items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode} while waiting for {what}")
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.05)


def uploaded_txid(state_dir: str) -> int:
    """The daemon's uploaded point (state.json, advanced by its hashes log: statefile.py)."""
    try:
        return (load_state_file(state_dir) or {})["uploaded_txid"]
    except (OSError, ValueError, KeyError):
        return -1


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def holds_wal_read_lock(pid: int, shm_path: str) -> bool:
    """Does ``pid`` hold a POSIX lock on one of the -shm's WAL_READ_LOCK bytes (123..127)?

    That is what a read transaction on a WAL database looks like from outside: a pin.
    """
    inode = os.stat(shm_path).st_ino
    with open("/proc/locks") as f:
        for line in f:
            parts = line.split()
            if "->" in parts:  # a blocked waiter, listed under the lock it waits for
                parts.remove("->")
            if len(parts) < 8 or parts[1] != "POSIX" or parts[4] != str(pid):
                continue
            if int(parts[5].rsplit(":", 1)[1]) == inode and 123 <= int(parts[6]) <= 127:
                return True
    return False


def start_daemon(db: str, replica: str, state: str, log_path: str) -> subprocess.Popen:
    with open(log_path, "w") as log:
        return subprocess.Popen(
            WALREWIND + ["replicate", db, "file://" + replica, "--state-dir", state, "--upload-interval", "0.2"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )


@pytest.fixture(scope="module")
def sqld(tmp_path_factory):
    yield from sqld_server(str(tmp_path_factory.mktemp("sqld")))


@pytest.fixture(scope="module")
def run(sqld, tmp_path_factory):
    """The whole scenario, once; every process it starts is stopped even if a step fails."""
    base = tmp_path_factory.mktemp("run")
    ns_dirs = {ns: base / ns for ns in NAMESPACES}
    daemons: dict[str, subprocess.Popen] = {}
    writers: dict[str, subprocess.Popen] = {}
    try:
        for ns, d in ns_dirs.items():
            d.mkdir()
            sqld.create_namespace(ns)
            sqld.query(ns, TABLE_SQL)
            daemons[ns] = start_daemon(sqld.db_path(ns), str(d / "replica"), str(d / "state"), str(d / "daemon.log"))
        wait_for(lambda: all(uploaded_txid(str(d / "state")) >= 1 for d in ns_dirs.values()), 60, "base snapshots", daemons)
        for ns, d in ns_dirs.items():
            writers[ns] = start_writer({"port": sqld.http_port, "ns": ns, "rate": RATE, "duration": DURATION,
                                        "seed": SEED, "log": str(d / "writer.jsonl")})
        for ns, w in writers.items():
            _out, err = w.communicate(timeout=DURATION + 60)
            assert w.returncode == 0, f"writer {ns} failed: {err}"
        txns = {ns: read_writer_log(str(d / "writer.jsonl")) for ns, d in ns_dirs.items()}
        # Everything shipped: the base snapshot is txid 1, then one txid per commit.
        wait_for(lambda: all(uploaded_txid(str(ns_dirs[ns] / "state")) >= len(txns[ns]) for ns in NAMESPACES),
                 60, "every commit uploaded", daemons)
        # Then let sqld TRUNCATE-checkpoint every namespace twice with no new commit.
        seen = {ns: len(sqld.checkpoints().finished.get(ns, [])) for ns in NAMESPACES}
        wait_for(lambda: all(len(sqld.checkpoints().finished.get(ns, [])) >= seen[ns] + 2 for ns in NAMESPACES),
                 30, "two idle checkpoints per namespace", daemons)
        cpu_before = {ns: cpu_seconds(p.pid) for ns, p in daemons.items()}
        pinned = {ns: 0 for ns in NAMESPACES}
        samples = 0
        watch_end = time.monotonic() + IDLE_WATCH
        while time.monotonic() < watch_end:  # sampling an external process's state over a window
            samples += 1
            for ns, p in daemons.items():
                pinned[ns] += holds_wal_read_lock(p.pid, sqld.db_path(ns) + "-shm")
            time.sleep(0.1)
        idle_cpu = {ns: (cpu_seconds(p.pid) - cpu_before[ns]) / IDLE_WATCH for ns, p in daemons.items()}
        started = time.monotonic()
        for p in daemons.values():
            p.send_signal(signal.SIGTERM)
        stop_seconds = {}
        for ns, p in daemons.items():
            p.wait(timeout=120)
            stop_seconds[ns] = time.monotonic() - started
        views = {ns: sqld.query(ns, "SELECT id, k, v FROM t ORDER BY id") for ns in NAMESPACES}
        ckpt = sqld.checkpoints()
        took = sorted(t for ts in ckpt.finished.values() for t in ts)
        print(f"\nsqld checkpoints: {len(ckpt.statuses)}, statuses {sorted(set(ckpt.statuses))}, median "
              f"{took[len(took) // 2] * 1000:.1f} ms, longest {took[-1] * 1000:.1f} ms; writes refused busy (then "
              f"retried): { {ns: busy_retries(txns[ns]) for ns in NAMESPACES} }")
        print(f"\nsqld scenario: {', '.join(f'{ns}: {len(txns[ns]) - 1} txns' for ns in NAMESPACES)}; idle CPU "
              f"{ {ns: round(c, 3) for ns, c in idle_cpu.items()} } s/s; pinned in { {ns: f'{n}/{samples}' for ns, n in pinned.items()} } "
              f"samples; SIGTERM exit after { {ns: round(s, 2) for ns, s in stop_seconds.items()} } s")
        yield {
            "dirs": ns_dirs, "txns": txns, "views": views, "idle_cpu": idle_cpu, "pinned": pinned, "samples": samples,
            "stop_seconds": stop_seconds, "returncodes": {ns: p.returncode for ns, p in daemons.items()},
            "daemon_logs": {ns: (d / "daemon.log").read_text() for ns, d in ns_dirs.items()},
            "checkpoints": ckpt,
        }
    finally:
        for proc in list(writers.values()) + list(daemons.values()):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


def restored_rows(path: str) -> list[tuple]:
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return [tuple(r) for r in conn.execute("SELECT id, k, v FROM t ORDER BY id")]
    finally:
        conn.close()


# --------------------------------------------------------------------------------- the scenario


def test_writers_committed_over_http(run):
    for ns in NAMESPACES:
        assert len(run["txns"][ns]) - 1 >= RATE * DURATION * 0.5, f"{ns}: the writer fell far behind its rate"
        assert run["views"][ns] == rows_after(run["txns"][ns], ns, SEED, len(run["txns"][ns]) - 1)


def test_sqld_checkpoints_all_succeed_beside_the_daemon(run):
    ckpt = run["checkpoints"]
    assert ckpt.statuses and set(ckpt.statuses) == {0}, f"sqld checkpoint statuses: {ckpt.statuses}"
    assert not ckpt.problems, ckpt.problems
    for ns in NAMESPACES:
        took = ckpt.finished.get(ns, [])
        assert len(took) >= DURATION / 2 - 1, f"{ns}: only {len(took)} checkpoints"
        # A reader that makes sqld's TRUNCATE wait would show here (Litestream: 5 s busy stalls).
        assert max(took) < 1.0, f"{ns}: a checkpoint took {max(took):.3f} s"
        # sqld's writers wait only 100 ms for a checkpoint: the typical one must stay well inside.
        assert sorted(took)[len(took) // 2] < 0.1, f"{ns}: checkpoints took {sorted(took)} s"


@pytest.mark.parametrize("ns", NAMESPACES)
def test_latest_restore_equals_sqld_view(run, ns, tmp_path):
    out = str(tmp_path / "latest.db")
    result = restore(open_storage("file://" + str(run["dirs"][ns] / "replica"), create=False), out)
    assert result.quick_check == "ok"
    assert restored_rows(out) == run["views"][ns]


@pytest.mark.parametrize("ns", NAMESPACES)
def test_pitr_exact_at_random_targets(run, ns, tmp_path):
    txns = run["txns"][ns]
    storage = open_storage("file://" + str(run["dirs"][ns] / "replica"), create=False)
    rng = random.Random(f"{SEED}/{ns}")
    first, last = txns[1]["begin"], txns[-1]["end"]
    misses = []
    for n in range(TARGETS):
        target = rng.randrange(first, last)
        out = str(tmp_path / f"at-{n}.db")
        result = restore(storage, out, target_us=target)
        assert result.quick_check == "ok"
        k = state_index(txns, ns, SEED, restored_rows(out))
        lo, hi = allowed_range(txns, target, TEST_MARGIN_US)
        if k is None or not lo <= k <= hi:
            misses.append((target, k, (lo, hi)))
        os.unlink(out)
    assert not misses, f"{ns}: (target, restored state, allowed) not exact: {misses}"


def test_sigterm_stops_every_daemon_within_10s(run):
    assert run["returncodes"] == {ns: 0 for ns in NAMESPACES}, run["daemon_logs"]
    slow = {ns: s for ns, s in run["stop_seconds"].items() if s > SIGTERM_LIMIT}
    assert not slow, f"SIGTERM to exit took {slow} s"


def test_sigterm_final_sync_does_not_claim_to_be_behind(run):
    claims = {ns: log for ns, log in run["daemon_logs"].items() if BEHIND_MESSAGE in log}
    assert not claims, claims


def test_idle_daemon_lets_go_of_an_idle_sqld_namespace(run):
    pinned = {ns: n for ns, n in run["pinned"].items() if n}
    assert not pinned, f"read lock held in {pinned} of {run['samples']} samples; idle CPU {run['idle_cpu']}"


# --------------------------------------------------------------------------------- sqld itself


def test_namespace_layout_on_disk(sqld):
    """create: dbs/NS/ is complete (a WAL-mode `data`) when the call returns, and stats.json (the
    namespace id) follows shortly after (seen missing at return once); delete: gone at once."""
    ns_dir = os.path.join(sqld.data_dir, "dbs", "layout")
    assert not os.path.exists(ns_dir)
    sqld.create_namespace("layout")
    assert {"data", "data-wal", "data-shm", "wallog", ".sentinel", "tmp", "to_compact"} <= set(os.listdir(ns_dir))
    wait_for(lambda: os.path.exists(os.path.join(ns_dir, "stats.json")), timeout=10, what="stats.json")
    with open(sqld.db_path("layout"), "rb") as f:
        header = f.read(100)
    assert header[:16] == b"SQLite format 3\x00" and header[18:20] == b"\x02\x02"  # WAL mode
    assert int.from_bytes(header[16:18], "big") == 4096
    with pytest.raises(SqldError) as exists:
        sqld.create_namespace("layout")
    assert exists.value.status == 400 and "already exists" in exists.value.body
    sqld.query("layout", "CREATE TABLE x(a)")
    sqld.delete_namespace("layout")
    assert not os.path.exists(ns_dir)
    with pytest.raises(SqldError) as gone:
        sqld.query("layout", "SELECT 1")
    assert gone.value.status == 404
    sqld.create_namespace("layout")  # the name is free again, and the namespace empty
    assert sqld.query("layout", "SELECT count(*) FROM sqlite_schema") == [(0,)]
    sqld.delete_namespace("layout")


TRICKY_TEXT = "\n  leading spaces\n\n-- looks like a comment\nends with;\nx"


def _source_db(path: str) -> None:
    """A database with what a faithful copy must keep (built with apsw, no other library opens it)."""
    conn = apsw.Connection(path)
    for pragma in ("journal_mode=WAL", "user_version=42", "application_id=1234"):
        conn.execute(f"PRAGMA {pragma}").fetchall()  # apsw runs a statement as its rows are read
    conn.execute("""
        CREATE TABLE a(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, f REAL, b BLOB, n);
        CREATE INDEX a_name ON a(name);
        CREATE TABLE log(msg TEXT);
        CREATE TRIGGER a_ins AFTER INSERT ON a BEGIN INSERT INTO log VALUES ('ins ' || new.id); END;
        CREATE VIEW v AS SELECT id, name FROM a WHERE id > 1;
        CREATE TABLE w(x PRIMARY KEY, y) WITHOUT ROWID;
        INSERT INTO w VALUES ('k', 1);
    """)
    conn.execute("INSERT INTO a(name, f, b, n) VALUES ('gone', 0.1, x'00ff', NULL)")
    conn.execute("INSERT INTO a(name, f, b, n) VALUES (?, 1e300, x'', 9223372036854775807)", (TRICKY_TEXT,))
    conn.execute("DELETE FROM a WHERE id = 1")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    conn.close()


def _contents(query) -> dict:
    return {
        "a": query("SELECT id, name, f, b, n FROM a ORDER BY id"),
        "log": query("SELECT msg FROM log ORDER BY rowid"),
        "w": query("SELECT x, y FROM w"),
        "seq": query("SELECT name, seq FROM sqlite_sequence"),
        "schema": query("SELECT type, name, tbl_name FROM sqlite_schema ORDER BY name"),
        "user_version": query("PRAGMA user_version"),
        "application_id": query("PRAGMA application_id"),
    }


def _sqlite3_cli_dump(path: str) -> str:
    cli = shutil.which("sqlite3")
    if cli is None:
        pytest.skip("the sqlite3 command-line shell is not installed")
    return subprocess.run([cli, path, ".dump"], capture_output=True, text=True, check=True, timeout=60).stdout


def test_dump_url_loader_keeps_rows_and_schema_but_not_header_fields(sqld, tmp_path):
    """`create` with a dump_url (sqlite3 CLI `.dump`: one transaction, newlines as char(10)) keeps
    rows, sqlite_sequence, indexes, triggers, views; it loses user_version and application_id
    unless the dump sets them inside its transaction, and the page size is always 4096."""
    src = str(tmp_path / "src.db")
    _source_db(src)
    conn = apsw.Connection(src, flags=apsw.SQLITE_OPEN_READONLY)
    want = _contents(lambda sql: [tuple(r) for r in conn.execute(sql)])
    conn.close()
    assert want["user_version"] == [(42,)] and want["application_id"] == [(1234,)]
    dump = _sqlite3_cli_dump(src)
    (tmp_path / "plain.sql").write_text(dump)
    (tmp_path / "pragmas.sql").write_text(dump.replace("\nCOMMIT;", "\nPRAGMA user_version=42;\nPRAGMA application_id=1234;\nCOMMIT;"))
    for name in ("plain", "pragmas"):
        sqld.create_namespace(f"dump-{name}", dump_url=f"file://{tmp_path / name}.sql")
        got = _contents(lambda sql: sqld.query(f"dump-{name}", sql))
        header_fields = ("user_version", "application_id")
        assert {k: v for k, v in got.items() if k not in header_fields} == {k: v for k, v in want.items() if k not in header_fields}
        assert [got[k] for k in header_fields] == ([[(0,)], [(0,)]] if name == "plain" else [[(42,)], [(1234,)]])
        assert sqld.query(f"dump-{name}", "INSERT INTO a(name) VALUES ('new') RETURNING id") == [(3,)]  # sqlite_sequence
        assert sqld.query(f"dump-{name}", "SELECT msg FROM log ORDER BY rowid DESC LIMIT 1") == [("ins 3",)]  # trigger
        sqld.delete_namespace(f"dump-{name}")


def test_dump_url_loader_silently_alters_text_with_literal_newlines(sqld, tmp_path):
    """sqld 0.24.32 reads a dump line by line: it drops blank lines (and lines starting with `--`)
    inside string literals and joins lines with an extra space.  A dump must never carry a literal
    newline in a value (the sqlite3 CLI writes replace('..\\n..','\\n',char(10)); Python's
    iterdump does not), or the new namespace silently holds different text."""
    dump = tmp_path / "literal.sql"
    dump.write_text("BEGIN TRANSACTION;\nCREATE TABLE t(v TEXT);\nINSERT INTO t VALUES('one\n    two\n\nthree');\nCOMMIT;\n")
    sqld.create_namespace("literal", dump_url=f"file://{dump}")
    assert sqld.query("literal", "SELECT v FROM t") == [("one\n     two\n three",)]  # not 'one\n    two\n\nthree'
    sqld.delete_namespace("literal")
    unwrapped = tmp_path / "unwrapped.sql"
    unwrapped.write_text("CREATE TABLE t(v);\nINSERT INTO t VALUES(1);\nINSERT INTO t VALUES(2);\n")
    with pytest.raises(SqldError) as refused:
        sqld.create_namespace("unwrapped", dump_url=f"file://{unwrapped}")
    assert "A dump should execute within a transaction" in refused.value.body


def test_dump_url_loader_cannot_load_a_multi_line_trigger(sqld, tmp_path):
    """The same line-based reader cuts a statement at every line that ends with `;`: the
    sqlite3 CLI's dump of a database with a multi-line trigger (schema text is dumped verbatim)
    fails with an internal error -- and leaves an empty namespace registered under the name
    (`create` again says it exists): whoever loads a dump must delete the namespace on failure."""
    dump = tmp_path / "trigger.sql"
    dump.write_text(
        "BEGIN TRANSACTION;\nCREATE TABLE t(a);\nCREATE TABLE log(m);\n"
        "CREATE TRIGGER tr AFTER INSERT ON t\nBEGIN\n  INSERT INTO log VALUES ('a');\n  INSERT INTO log VALUES ('b');\nEND;\n"
        "COMMIT;\n"
    )
    with pytest.raises(SqldError) as failed:
        sqld.create_namespace("trigger", dump_url=f"file://{dump}")
    assert failed.value.status == 500 and "incomplete input" in failed.value.body
    assert sqld.query("trigger", "SELECT count(*) FROM sqlite_schema") == [(0,)]
    with pytest.raises(SqldError) as exists:
        sqld.create_namespace("trigger")
    assert exists.value.status == 400 and "already exists" in exists.value.body
    sqld.delete_namespace("trigger")


def test_create_adopts_a_database_file_placed_in_dbs(sqld, tmp_path):
    """The byte-faithful path: put a (4096-byte-page) database file at dbs/NEW/data, then `create`
    NEW: sqld serves that very file (header fields, schema text, every value), rebuilding its own
    replication log from it, and keeps it across a restart.  A file whose page size is not 4096
    makes sqld panic on the first write (replication_logger_wal.rs asserts 4096): never adopt one."""
    src = str(tmp_path / "src.db")
    _source_db(src)
    conn = apsw.Connection(src, flags=apsw.SQLITE_OPEN_READONLY)
    want = _contents(lambda sql: [tuple(r) for r in conn.execute(sql)])
    want_sql = [tuple(r) for r in conn.execute("SELECT sql FROM sqlite_schema ORDER BY name")]
    conn.close()
    ns_dir = os.path.join(sqld.data_dir, "dbs", "adopted")
    with pytest.raises(SqldError) as unknown:
        os.makedirs(ns_dir)
        shutil.copyfile(src, os.path.join(ns_dir, "data.tmp"))
        os.rename(os.path.join(ns_dir, "data.tmp"), os.path.join(ns_dir, "data"))
        sqld.query("adopted", "SELECT 1")  # a directory sqld was not told about is not a namespace
    assert unknown.value.status == 404
    sqld.create_namespace("adopted")
    assert _contents(lambda sql: sqld.query("adopted", sql)) == want
    assert sqld.query("adopted", "SELECT sql FROM sqlite_schema ORDER BY name") == want_sql
    assert sqld.query("adopted", "INSERT INTO a(name) VALUES ('new') RETURNING id") == [(3,)]
    sqld.stop()
    sqld.start()
    assert sqld.query("adopted", "SELECT count(*) FROM a") == [(2,)]
    assert sqld.query("adopted", "PRAGMA user_version") == [(42,)]
    sqld.delete_namespace("adopted")
