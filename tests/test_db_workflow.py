"""The Turso-style workflow end to end, as a user meets it, over really replicated databases.

An application process (tests/app_writer.py, stdlib sqlite3) changes a database step by step while
the daemon replicates it (DaemonThread, in this process, apsw).  Each step is one transaction; the
writer reports when it began and when COMMIT returned, and the test waits until the daemon has
*uploaded* it before the next step, so a moment "between two commits" is known exactly:
``T = begin(next step) - 1 µs`` lies after the previous commit was observed and before the next began.

Everything goes through the CLI (click's CliRunner, or a subprocess where a terminal or a real
daemon process is needed).  Databases are read here only with apsw (the daemon's library) or in
subprocesses.
"""

from __future__ import annotations

import getpass
import json
import os
import pty
import select
import shutil
import signal
import socket
import subprocess
import sys
import time

import apsw
import pytest
from click.testing import CliRunner
from daemon_process import Daemon
from harness import DaemonThread
from walrewind.cli.main import cli
from walrewind.engine.errors import ConfigError, InvalidName
from walrewind.engine.timeparse import format_us
from walrewind.engine.workspace.config import (
    load_config,
    parse_duration_us,
    validate_name,
)
from walrewind.engine.workspace.diff import diff_table, sql_literal

HERE = os.path.dirname(os.path.abspath(__file__))
APP_WRITER = os.path.join(HERE, "app_writer.py")
WALREWIND = [sys.executable, "-c", "from walrewind.cli.main import main; main()"]
CUSTOMER_COLS = "id, name, email, balance, avatar, note"


# ------------------------------------------------------------------------------------ helpers
def wait_until(cond, what: str, timeout: float = 30.0) -> None:
    """Wait for a condition (not for a guessed amount of time)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


def encode(value):
    return {"blob_hex": bytes(value).hex()} if isinstance(value, bytes) else value


def read_rows(path: str, sql: str) -> list[list]:
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return [[encode(v) for v in row] for row in conn.execute(sql)]
    finally:
        conn.close()


class App:
    """The application: a writer process driven one transaction at a time."""

    def __init__(self, db: str) -> None:
        self.proc = subprocess.Popen([sys.executable, APP_WRITER, db], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.shipper = None
        self.base = 0
        self.commits = 0
        self.run(op="query", sql="SELECT 1")  # the file exists and is in WAL mode

    def follow(self, shipper) -> None:
        self.shipper, self.base, self.commits = shipper, shipper.stats.last_txid, 0

    def run(self, commits: int = 1, **cmd) -> dict:
        """Run one command; ``commits``: how many commits it makes (a write that changes nothing makes none)."""
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        assert "error" not in answer, answer["error"]
        if cmd["op"] != "query" and self.shipper is not None:
            self.commits += commits
            self.synced()
        return answer

    def synced(self) -> None:
        target = self.base + self.commits
        s = self.shipper.stats
        wait_until(lambda: s.uploaded_txid >= target, f"txid {target} to be uploaded")

    def query(self, sql: str) -> list[list]:
        return self.run(op="query", sql=sql)["rows"]

    def quit(self) -> None:
        self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
        self.proc.stdin.close()
        assert self.proc.wait(30) == 0


class World:
    def __init__(self, base):
        self.base = base
        self.config = str(base / "walrewind.toml")
        self.replicas = str(base / "replicas")
        self.env = {"WR_TEST_REPLICAS": self.replicas}
        self.marks: dict[str, int] = {}
        self.expect: dict[str, list] = {}

    def cli(self, *args, input=None):
        """`walrewind --config CONFIG ARGS...` in this process."""
        return CliRunner().invoke(cli, ["--config", self.config, *map(str, args)], input=input, env=self.env,
                                  catch_exceptions=False)

    def subprocess_env(self) -> dict:
        return {**os.environ, **self.env}

    def data(self, name: str) -> str:
        return str(self.base / "data" / "databases" / f"{name}.db")


CONFIG = """\
# walrewind test configuration
data_dir = "data"

[databases.app]
path = "app.db"
replica = "${WR_TEST_REPLICAS}/app"
retention = "7d"
state_dir = "state-app"

[databases.ledger]
path = "ledger.db"
replica = "replicas/ledger"

[databases.idle]
path = "idle.db"
replica = "file://${WR_TEST_REPLICAS}/idle"
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("workflow")
    w = World(base)
    (base / "walrewind.toml").write_text(CONFIG)

    # idle: replicated once, then written while no daemon runs (the replica lags behind)
    idle = App(str(base / "idle.db"))
    with DaemonThread(str(base / "idle.db"), w.replicas + "/idle", str(base / "state-idle"), upload_interval=0.05) as s:
        idle.follow(s)
        idle.run(op="sql", sql="CREATE TABLE t(x)")
    idle.shipper = None
    idle.run(op="sql", sql="INSERT INTO t VALUES (1)")
    idle.quit()

    app = App(str(base / "app.db"))
    ledger = App(str(base / "ledger.db"))
    daemons = [
        DaemonThread(str(base / "app.db"), w.replicas + "/app", str(base / "state-app"), upload_interval=0.05),
        DaemonThread(str(base / "ledger.db"), str(base / "replicas" / "ledger"), str(base / "state-ledger"), upload_interval=0.05),
    ]
    app.follow(daemons[0].__enter__())
    ledger.follow(daemons[1].__enter__())
    w.app, w.shipper = app, daemons[0].shipper
    try:
        # ledger: an index whose entries do not match its table (quick_check passes, integrity_check does not)
        ledger.run(op="sql", sql="CREATE TABLE ledger(id INTEGER PRIMARY KEY, a INT, b INT);\nCREATE INDEX ledger_a ON ledger(a)")
        ledger.run(op="sql", sql=";\n".join(f"INSERT INTO ledger VALUES ({i}, {i}, {1000 - i})" for i in range(1, 51)))
        ledger.run(op="script", sql="PRAGMA writable_schema=ON; BEGIN; UPDATE sqlite_master SET sql = "
                   "'CREATE INDEX ledger_a ON ledger(b)' WHERE name = 'ledger_a'; COMMIT; PRAGMA writable_schema=OFF;")

        # app: the story of a bad day
        app.run(op="seed", seed=7, n=40)
        app.run(op="sql", sql="UPDATE customers SET balance = balance + 1 WHERE id % 5 = 0")
        w.expect["audit"] = app.query("SELECT count(*), printf('%.4f', total(balance)) FROM customers")
        step = app.run(op="sql", sql="UPDATE customers SET balance = balance * 2 WHERE id % 3 = 0")
        w.marks["audit"] = step["begin"] - 1
        w.expect["before_delete"] = app.query(f"SELECT {CUSTOMER_COLS} FROM customers ORDER BY id")
        w.expect["doomed"] = [r[0] for r in app.query("SELECT id FROM customers WHERE balance < 100 ORDER BY id")]
        step = app.run(op="sql", sql="DELETE FROM customers WHERE balance < 100")  # the accident
        w.marks["before_delete"], w.marks["delete_begin"] = step["begin"] - 1, step["begin"]
        app.run(op="sql", sql="INSERT INTO customers(id, name, balance) VALUES (41, 'new 41', 1), (42, 'new 42', 2), "
                "(43, 'new 43', 3);\nUPDATE customers SET email = 'changed@example.com' WHERE id = "
                "(SELECT min(id) FROM customers)")
        w.expect["tags"] = app.query("SELECT rowid, label, weight FROM tags ORDER BY rowid")
        step = app.run(op="sql", sql="ALTER TABLE customers DROP COLUMN note;\nDROP TABLE tags")  # the bad migration
        w.marks["before_migration"] = step["begin"] - 1
        app.run(op="sql", sql="INSERT INTO customers(id, name, balance) VALUES (44, 'after migration', 4)")
        yield w
    finally:
        for d in daemons:
            d.stop()
        app.quit()
        ledger.quit()


# ---------------------------------------------------------------------------- the main stories
def test_accidental_delete_recovered_with_db_create_and_diff_sql(world):
    w = world
    res = w.cli("db", "create", "before-delete", "--from-db", "app", "--timestamp", format_us(w.marks["before_delete"]),
                "--reason", "customer rows deleted by mistake")
    assert res.exit_code == 0, res.output
    assert "Created database 'before-delete' from 'app'" in res.output and "checksum" in res.output
    copy = w.data("before-delete")
    assert read_rows(copy, f"SELECT {CUSTOMER_COLS} FROM customers ORDER BY id") == w.expect["before_delete"]

    doomed = w.expect["doomed"]
    assert doomed, "the workload must delete something"
    res = w.cli("diff", "before-delete", "--from-db", "app", "--table", "customers")
    assert res.exit_code == 1, res.output  # as diff(1): 1 = the tables differ
    assert f"only in before-delete (deleted from app since): {len(doomed)}" in " ".join(res.output.split())
    data = json.loads(w.cli("diff", "before-delete", "--from-db", "app", "--table", "customers", "--json").stdout)
    assert data["key"] == ["id"]
    assert [r["id"] for r in data["only_in_restored"]] == doomed
    assert [r["id"] for r in data["only_in_source"]] == [41, 42, 43, 44]
    assert [c["key"]["id"] for c in data["changed"]] == [min(set(range(1, 41)) - set(doomed))]
    assert data["columns_only_in_restored"] == ["note"]  # dropped by the later migration

    res = w.cli("diff", "before-delete", "--from-db", "app", "--table", "customers", "--sql")
    assert res.exit_code == 1, res.output
    sql = res.stdout
    assert sql.count('INSERT INTO "customers"') == sql.count(") ON CONFLICT DO NOTHING;\n") == len(doomed)
    assert "left out: note" in sql and sql.rstrip().endswith("COMMIT;")

    # The application puts them back (through its own connection, while the daemon keeps running).
    w.app.run(op="script", sql=sql)
    w.app.run(op="script", sql=sql, commits=0)  # idempotent: a second run changes nothing
    ids = ", ".join(map(str, doomed))
    back = w.app.query(f"SELECT id, name, email, balance, avatar FROM customers WHERE id IN ({ids}) ORDER BY id")
    assert back == [r[:5] for r in w.expect["before_delete"] if r[0] in doomed]
    assert w.app.query("SELECT count(*) FROM customers")[0][0] == 40 - len(doomed) + 4 + len(doomed)
    # ... and the repaired database is replicated again: nothing is missing any more.
    data = json.loads(w.cli("diff", "before-delete", "--from-db", "app", "--table", "customers", "--json").stdout)
    assert data["counts"]["only_in_restored"] == 0


def test_bad_migration_schema_before_it_in_show_and_shell(world):
    w = world
    res = w.cli("db", "create", "before-migration", "--from-db", "app", "--timestamp", format_us(w.marks["before_migration"]))
    assert res.exit_code == 0, res.output
    shown = w.cli("db", "show", "before-migration")
    assert shown.exit_code == 0, shown.output
    assert "tags" in shown.output and "restored copy" in shown.output and "source:" in shown.output
    live = json.loads(w.cli("db", "show", "app", "--json").stdout)
    assert [t["name"] for t in live["tables"]] == ["customers"]
    old = w.cli("db", "shell", "before-migration", ".schema customers")
    assert old.exit_code == 0 and "note TEXT" in old.stdout
    now = w.cli("db", "shell", "app", ".schema customers")
    assert now.exit_code == 0 and "customers" in now.stdout and "note" not in now.stdout

    # The dropped table comes back: CREATE TABLE + rows (a rowid table: matched and re-inserted by rowid).
    res = w.cli("diff", "before-migration", "--from-db", "app", "--table", "tags", "--sql")
    assert res.exit_code == 1, res.output
    assert "CREATE TABLE IF NOT EXISTS tags" in res.stdout and "(rowid, " in res.stdout
    assert w.cli("db", "create", "repaired", "--from-db", "app").exit_code == 0
    applied = w.cli("db", "shell", "repaired", input=res.stdout)  # a script on stdin
    assert applied.exit_code == 0, applied.output
    assert read_rows(w.data("repaired"), "SELECT rowid, label, weight FROM tags ORDER BY rowid") == w.expect["tags"]
    res = w.cli("diff", "before-migration", "--from-db", "repaired", "--table", "tags", "--json")
    assert res.exit_code == 0, res.output  # identical
    same = json.loads(res.stdout)
    assert same["key"] == ["rowid"] and same["counts"] == {"only_in_restored": 0, "only_in_source": 0, "changed": 0}


def test_audit_query_on_a_past_date(world):
    w = world
    res = w.cli("db", "create", "audit", "--from-db", "app", "--timestamp", format_us(w.marks["audit"]), "--reason", "audit")
    assert res.exit_code == 0, res.output
    out = w.cli("db", "shell", "audit", "SELECT count(*), printf('%.4f', total(balance)) FROM customers")
    assert out.exit_code == 0, out.output
    count, total = w.expect["audit"][0]
    assert out.stdout.strip() == f"{count}|{total}"
    info = json.loads(w.cli("db", "show", "audit", "--json").stdout)
    assert info["target_time"] == format_us(w.marks["audit"]) and info["source"] == "app"
    assert info["restored_txid"] is not None and info["reason"] == "audit"


def test_two_points_in_time_compared(world):
    w = world
    for name, mark in (("t1", "audit"), ("t2", "before_delete")):
        assert w.cli("db", "create", name, "--from-db", "app", "--timestamp", format_us(w.marks[mark])).exit_code == 0
    data = json.loads(w.cli("diff", "t1", "--from-db", "t2", "--table", "customers", "--json").stdout)
    doubled = [i for i in range(1, 41) if i % 3 == 0]
    assert [c["key"]["id"] for c in data["changed"]] == doubled
    assert all(c["source"]["balance"] == 2 * c["restored"]["balance"] for c in data["changed"])
    assert data["counts"]["only_in_restored"] == data["counts"]["only_in_source"] == 0
    human = w.cli("diff", "t1", "--from-db", "t2", "--table", "customers", "--limit", "2")
    assert "balance:" in human.output and f"{len(doubled) - 2} more" in human.output


def test_dump_loads_into_a_fresh_sqlite3_and_matches(world, tmp_path):
    w = world
    assert w.cli("db", "create", "dumped", "--from-db", "app", "--timestamp", format_us(w.marks["before_delete"])).exit_code == 0
    res = w.cli("db", "shell", "dumped", ".dump")
    assert res.exit_code == 0 and "CREATE TABLE customers" in res.stdout
    dump = tmp_path / "dump.sql"
    dump.write_text(res.stdout)
    fresh = tmp_path / "fresh.db"
    if shutil.which("sqlite3"):
        loaded = subprocess.run(["sqlite3", str(fresh)], stdin=dump.open(), capture_output=True, text=True, timeout=60)
    else:
        loaded = subprocess.run([sys.executable, "-c", f"import sqlite3,sys; sqlite3.connect({str(fresh)!r}).executescript(sys.stdin.read())"],
                                stdin=dump.open(), capture_output=True, text=True, timeout=60)
    assert loaded.returncode == 0 and not loaded.stderr, loaded.stderr
    canon = ("import json,sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print(json.dumps({t: [[v.hex() if isinstance(v, bytes) "
             "else [type(v).__name__, v] for v in r] for r in c.execute(f'SELECT * FROM \"{t}\" ORDER BY rowid')] for (t,) in "
             "c.execute(\"SELECT name FROM sqlite_master WHERE type='table' ORDER BY name\")}))")
    a = subprocess.run([sys.executable, "-c", canon, str(fresh)], capture_output=True, text=True, check=True).stdout
    b = subprocess.run([sys.executable, "-c", canon, w.data("dumped")], capture_output=True, text=True, check=True).stdout
    assert json.loads(a) == json.loads(b) and len(json.loads(a)["customers"]) == 40


# ------------------------------------------------------------------------------------- status
def test_show_list_url_and_lag(world):
    w = world
    w.app.synced()
    info = json.loads(w.cli("db", "show", "app", "--json").stdout)
    rep = info["replication"]
    assert info["type"] == "replicated" and info["retention"] == "7d"
    assert rep["in_sync"] is True and rep["lag_seconds"] == 0
    assert rep["latest_txid"] == w.shipper.stats.uploaded_txid and rep["earliest"] <= rep["latest"]
    human = w.cli("db", "show", "app").output
    assert "restorable:" in human and "->" in human and "last shipped:" in human and "lag:" in human
    assert "maintenance:" in human and "no status yet" in human  # this test daemon runs none

    # What a daemon's maintenance thread saves in its state directory, db show prints.
    from walrewind.engine.maintenance.scheduler import (
        STATUS_FILE,
        Maintenance,
        MaintenancePolicy,
    )
    from walrewind.engine.storage import open_storage

    m = Maintenance(open_storage(w.replicas + "/app"), MaintenancePolicy(verify_interval_us=None))
    m.run_due()
    (w.base / "state-app" / STATUS_FILE).write_text(json.dumps(m.status()))
    human = w.cli("db", "show", "app").output
    assert "snapshot:" in human and "drill:" in human and "off" in human
    assert json.loads(w.cli("db", "show", "app", "--json").stdout)["maintenance"]["tasks"]["drill"]["enabled"] is False
    assert w.cli("db", "show", "app", "--url").stdout.strip() == f"file:{w.base}/app.db?mode=ro"
    assert w.cli("db", "create", "urled", "--from-db", "app").exit_code == 0
    assert w.cli("db", "show", "urled", "--url").stdout.strip() == "file:" + w.data("urled")

    # idle's daemon stopped, then the app wrote: the replica is behind and says so.
    idle = json.loads(w.cli("db", "show", "idle", "--json").stdout)["replication"]
    assert idle["in_sync"] is False and idle["lag_seconds"] > 0

    assert w.cli("db", "create", "listed", "--from-db", "app").exit_code == 0
    listing = json.loads(w.cli("db", "list", "--json").stdout)["databases"]
    kinds = {d["name"]: d["type"] for d in listing}
    assert kinds["app"] == kinds["ledger"] == kinds["idle"] == "replicated" and kinds["listed"] == "restored"
    human = w.cli("db", "list").output
    assert human.splitlines()[0].split()[:3] == ["NAME", "TYPE", "SIZE"] and "listed" in human


def test_timeline_shows_when_the_delete_happened(world):
    w = world
    total = json.loads(w.cli("ls", w.replicas + "/app", "--json").stdout)["transactions"]
    data = json.loads(w.cli("timeline", "app", "--by", "second", "--json").stdout)
    assert sum(b["transactions"] for b in data["buckets"]) == total
    listed = json.loads(w.cli("ls", w.replicas + "/app", "--json").stdout)
    # the base snapshot opens the first bucket; a test before may have added one (in the same second)
    assert data["buckets"][0]["snapshots"] >= 1
    assert sum(b["snapshots"] for b in data["buckets"]) == sum(len(g["snapshots"]) for g in listed["generations"])
    txns = json.loads(w.cli("timeline", "app", "--by", "transaction", "--since", format_us(w.marks["delete_begin"]),
                            "--until", format_us(w.marks["before_migration"]), "--json").stdout)["transactions"]
    assert len(txns) == 2  # the DELETE and the inserts after it
    assert txns[0]["pages"] >= 1 and txns[0]["commit_time"] >= format_us(w.marks["delete_begin"])
    named = json.loads(w.cli("timeline", "app", "--by", "transaction", "--since", format_us(w.marks["delete_begin"]),
                             "--until", format_us(w.marks["before_migration"]), "--tables", "--json").stdout)
    assert "customers" in named["transactions"][0]["tables"]  # the DELETE touched the customers table
    human = w.cli("timeline", "app", "--by", "transaction", "--since", format_us(w.marks["delete_begin"]), "--tables")
    assert human.exit_code == 0 and "TABLES" in human.output and "customers" in human.output
    human = w.cli("timeline", "app")
    assert human.exit_code == 0 and "MINUTE (UTC)" in human.output and "snapshot" in human.output
    by_url = CliRunner().invoke(cli, ["timeline", w.replicas + "/app", "--by", "hour"])  # no config needed
    assert by_url.exit_code == 0 and "HOUR (UTC)" in by_url.output


# ------------------------------------------------------------------------------- --validate
def test_validate_prints_tables_and_fails_on_a_broken_database(world, tmp_path):
    w = world
    ok = w.cli("db", "create", "checked", "--from-db", "app", "--validate")
    assert ok.exit_code == 0, ok.output
    assert "integrity_check: ok" in ok.output
    assert any(line.split()[:1] == ["customers"] and line.split()[-1].isdigit() for line in ok.output.splitlines())

    bad = w.cli("db", "create", "broken", "--from-db", "ledger", "--validate")
    assert bad.exit_code == 1
    assert "integrity_check: FAILED" in bad.output and "missing from index ledger_a" in bad.output
    assert "kept at" in bad.output and os.path.exists(w.data("broken"))
    last = json.loads(w.cli("history", "--json", "--db", "broken").stdout)[0]
    assert last["result"] == "failed" and last["error"].startswith("validation failed")

    res = w.cli("restore", str(w.base / "replicas" / "ledger"), "-o", tmp_path / "l.db", "--validate", "--json")
    assert res.exit_code == 1 and json.loads(res.stdout)["validation"]["ok"] is False
    res = w.cli("restore", w.replicas + "/app", "-o", tmp_path / "a.db", "--validate")
    assert res.exit_code == 0 and "integrity_check: ok" in res.output and "customers" in res.output


# ---------------------------------------------------------------------------------- history
def test_history_records_recoveries_that_started_work(world, tmp_path):
    w = world
    assert w.cli("db", "create", "h-ok", "--from-db", "app", "--txid", w.app.base + 2, "--reason", "ticket 42").exit_code == 0
    before = len(json.loads(w.cli("history", "--json", "--limit", "0").stdout))
    # Mistakes answered on the spot are not history: a target before the window, a name taken,
    # an output file in the way, an unknown source.
    assert w.cli("db", "create", "h-bad", "--from-db", "app", "--timestamp", "2001-01-01").exit_code == 1
    assert w.cli("db", "create", "h-ok", "--from-db", "app").exit_code == 1
    assert w.cli("restore", w.replicas + "/app", "-o", tmp_path / "r.db", "--reason", "drill").exit_code == 0
    assert w.cli("restore", w.replicas + "/app", "-o", tmp_path / "r.db").exit_code == 1  # already exists
    assert w.cli("restore", "nope", "-o", tmp_path / "r2.db").exit_code == 1
    # A restore that started and failed is: a damaged copy of the replica.
    damaged = tmp_path / "damaged"
    shutil.copytree(w.replicas + "/app", damaged)
    for obj in (*damaged.glob("generations/*/segments/*.seg"), *damaged.glob("generations/*/snapshots/*.snap")):
        obj.write_bytes(obj.read_bytes()[:-7])
    res = w.cli("restore", damaged, "-o", tmp_path / "r3.db")
    assert res.exit_code == 1 and "corrupt or truncated" in res.output, res.output
    entries = json.loads(w.cli("history", "--json", "--limit", "0").stdout)
    assert len(entries) == before + 2, [(e["action"], e["result"], e["error"]) for e in entries[: len(entries) - before]]
    restore_fail, restore_ok, create_ok = entries[:3]
    assert create_ok["action"] == "create" and create_ok["result"] == "ok" and create_ok["name"] == "h-ok"
    assert create_ok["user"] == getpass.getuser() and create_ok["reason"] == "ticket 42"
    assert create_ok["target_txid"] == create_ok["restored_txid"] == w.app.base + 2 and create_ok["duration_s"] >= 0
    assert restore_ok["action"] == "restore" and restore_ok["source"] == "app" and restore_ok["reason"] == "drill"
    assert restore_ok["output"] == str(tmp_path / "r.db") and restore_ok["restored_txid"] is not None
    assert restore_fail["result"] == "failed" and "corrupt or truncated" in restore_fail["error"]
    human = w.cli("history")
    assert human.exit_code == 0 and "FAILED" in human.output and "h-ok" in human.output
    assert f"#{restore_fail['id']} restore" in human.output
    failed = json.loads(w.cli("history", "--json", "--failed").stdout)
    assert failed and all(e["result"] == "failed" for e in failed) and failed[0]["id"] == restore_fail["id"]


def test_history_prune(tmp_path):
    from walrewind.engine.workspace.catalog import Catalog

    config = tmp_path / "walrewind.toml"
    config.write_text('data_dir = "data"\n')
    cat = Catalog(str(tmp_path / "data" / "catalog.db"))
    day = 86_400_000_000
    now = time.time_ns() // 1000
    for age_days in (400, 100, 10, 1):
        cat.record("restore", "ok", at_us=now - age_days * day, output=f"/x/{age_days}.db")
    cat.close()
    run = CliRunner().invoke(cli, ["--config", str(config), "history", "--prune", "90 days ago"], catch_exceptions=False)
    assert run.exit_code == 0 and "removed 2 history entries" in run.output, run.output
    left = json.loads(CliRunner().invoke(cli, ["--config", str(config), "history", "--json"]).stdout)
    assert sorted(e["output"] for e in left) == ["/x/1.db", "/x/10.db"]


# ---------------------------------------------------------------------------------- destroy
def _run_on_tty(args: list[str], answer: str, env: dict) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as stdin/stdout, answer the prompt, return (rc, output)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(WALREWIND + args, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 60
    answered = False
    while True:
        ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
        assert ready or proc.poll() is not None, f"no prompt: {seen!r}"
        try:
            chunk = os.read(master, 4096) if ready else b""
        except OSError:  # the child closed the terminal
            chunk = b""
        if not chunk:
            break
        seen += chunk
        if not answered and b"[y/N]" in seen:
            os.write(master, answer.encode() + b"\n")
            answered = True
    os.close(master)
    return proc.wait(60), seen.decode(errors="replace")


def test_destroy_confirmation(world):
    w = world
    for name in ("doomed-copy", "kept-copy"):
        assert w.cli("db", "create", name, "--from-db", "app").exit_code == 0
    path = w.data("doomed-copy")
    # Leave a -wal/-shm behind, as any user session would.
    assert w.cli("db", "shell", "doomed-copy", "PRAGMA journal_mode").exit_code == 0
    open(path + "-wal", "ab").close()
    open(path + "-shm", "ab").close()

    res = w.cli("db", "destroy", "doomed-copy")  # stdin is not a terminal
    assert res.exit_code == 1 and "pass --yes" in res.output and os.path.exists(path)
    res = w.cli("db", "destroy", "app", "--yes")
    assert res.exit_code == 1 and "source database under replication" in res.output
    assert os.path.exists(w.base / "app.db")

    args = ["--config", w.config, "db", "destroy", "doomed-copy"]
    rc, out = _run_on_tty(args, "n", w.subprocess_env())
    assert rc == 1 and "Destroy database 'doomed-copy'" in out and "nothing was removed" in out
    assert os.path.exists(path)
    rc, out = _run_on_tty(args, "y", w.subprocess_env())
    assert rc == 0 and "Destroyed database 'doomed-copy'" in out, out
    assert not any(os.path.exists(path + s) for s in ("", "-wal", "-shm"))
    assert "doomed-copy" not in [d["name"] for d in json.loads(w.cli("db", "list", "--json").stdout)["databases"]]

    res = w.cli("db", "destroy", "kept-copy", "--yes")
    assert res.exit_code == 0 and not os.path.exists(w.data("kept-copy"))
    assert json.loads(w.cli("history", "--json", "-n", "1").stdout)[0]["action"] == "destroy"
    # the name can be used again
    assert w.cli("db", "create", "kept-copy", "--from-db", "app").exit_code == 0


# ----------------------------------------------------------------------------------- errors
def test_unknown_database_lists_the_known_ones(world):
    for args in (["db", "show", "nope"], ["db", "shell", "nope", "SELECT 1"], ["db", "destroy", "nope", "--yes"],
                 ["diff", "nope", "--from-db", "app", "--table", "customers"]):
        res = world.cli(*args)
        assert res.exit_code == (2 if args[0] == "diff" else 1), args
        assert "unknown database 'nope'" in res.output and "app" in res.output and "idle" in res.output
    # Every command that takes a source applies one rule (engine/workspace/sources.py) and says so.
    for args in (["db", "create", "x1", "--from-db", "nope"], ["timeline", "nope"], ["ls", "nope"],
                 ["restore", "nope", "-o", world.data("x1")], ["verify", "nope"], ["prune", "nope"],
                 ["compact", "nope"], ["snapshot", "nope"]):
        res = world.cli(*args)
        assert res.exit_code == 1, args
        assert res.output == ("Error: unknown database 'nope'; configured databases: app, idle, ledger; "
                              "or give a replica URL/path\n"), (args, res.output)


def test_a_configured_name_wins_over_a_directory_of_that_name(world, tmp_path, monkeypatch):
    """`restore app` with a directory ./app in the way still means the configured database."""
    monkeypatch.chdir(tmp_path)
    os.mkdir(tmp_path / "app")
    res = world.cli("ls", "app", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["latest_txid"] is not None


@pytest.mark.parametrize("bad", ["yesterday", "15/01/2024", "2024-13-01", "2024-01-15T25:00:00Z"])
def test_bad_timestamp_shows_the_accepted_forms(world, bad):
    res = world.cli("db", "create", "x2", "--from-db", "app", "--timestamp", bad)
    assert res.exit_code == 1
    assert "Invalid timestamp format" in res.output and "accepted forms" in res.output
    assert "2024-01-15T10:30:00Z" in res.output and "2024-01-15T19:30:00+09:00" in res.output
    assert not os.path.exists(world.data("x2"))


def test_timestamp_older_than_the_window_shows_the_window(world):
    res = world.cli("db", "create", "x3", "--from-db", "app", "--timestamp", "2001-01-01")
    assert res.exit_code == 1 and "Timestamp too old" in res.output and "restorable window:" in res.output
    assert not os.path.exists(world.data("x3"))
    assert "x3" not in [d["name"] for d in json.loads(world.cli("db", "list", "--json").stdout)["databases"]]


def test_name_already_exists(world):
    assert world.cli("db", "create", "dup", "--from-db", "app").exit_code == 0
    before = os.stat(world.data("dup")).st_mtime_ns
    res = world.cli("db", "create", "dup", "--from-db", "app")
    assert res.exit_code == 1 and "'dup' already exists" in res.output and "db destroy dup" in res.output
    assert os.stat(world.data("dup")).st_mtime_ns == before
    res = world.cli("db", "create", "app", "--from-db", "ledger")
    assert res.exit_code == 1 and "'app' already exists" in res.output


@pytest.mark.parametrize("name", ["../evil", "a/b", "has space", "dot.db", "_under", "x" * 65])
def test_invalid_names_are_refused(world, name):
    res = world.cli("db", "create", name, "--from-db", "app")
    assert res.exit_code == 1 and "Invalid database name" in res.output
    assert not os.path.exists(world.base / "evil.db")


def test_timestamp_without_from_db(world):
    res = world.cli("db", "create", "x4", "--timestamp", "2024-01-15T10:30:00Z")
    assert res.exit_code == 1 and "--timestamp cannot be used without specifying --from-db" in res.output


def test_replica_unreachable_names_the_url_and_the_reason(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"s3://backups/prod?endpoint=http://127.0.0.1:{port}&max_attempts=1&connect_timeout=2"
    (tmp_path / "src.db").write_bytes(b"")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[databases.remote]\npath = "src.db"\nreplica = "{url}"\n'
                   f'[databases.lost]\npath = "other.db"\nreplica = "{tmp_path}/no-such-replica"\n')
    runner = CliRunner()
    res = runner.invoke(cli, ["--config", str(cfg), "db", "create", "c1", "--from-db", "remote"])
    assert res.exit_code == 1
    assert "replica of 'remote'" in res.output and f"127.0.0.1:{port}" in res.output and "cannot reach endpoint" in res.output
    res = runner.invoke(cli, ["db", "create", "c2", "--from-db", "lost", "--config", str(cfg)])  # --config after works too
    assert res.exit_code == 1 and "no-such-replica" in res.output and "does not exist" in res.output
    res = runner.invoke(cli, ["--config", str(cfg), "timeline", "remote"])
    assert res.exit_code == 1 and "cannot reach endpoint" in res.output


def test_missing_and_broken_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WALREWIND_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    res = CliRunner().invoke(cli, ["db", "list"])
    assert res.exit_code == 1 and "no config file found" in res.output and "walrewind.toml" in res.output
    res = CliRunner().invoke(cli, ["--config", "missing.toml", "db", "list"])
    assert res.exit_code == 1 and "missing.toml" in res.output and "does not exist" in res.output
    (tmp_path / "walrewind.toml").write_text('[databases.a]\npath = "a.db"\nreplica = "r"\nretension = "7d"\n')
    res = CliRunner().invoke(cli, ["db", "list"])  # found in the current directory
    assert res.exit_code == 1 and "unknown setting(s) retension" in res.output
    (tmp_path / "walrewind.toml").write_text('[databases.a]\npath = "a.db"\nreplica = "${NOT_SET_ANYWHERE}"\n')
    res = CliRunner().invoke(cli, ["db", "list"])
    assert res.exit_code == 1 and "environment variable NOT_SET_ANYWHERE is not set" in res.output
    res = CliRunner().invoke(cli, ["replicate"])
    assert res.exit_code == 1 and "NOT_SET_ANYWHERE" in res.output

    # $WALREWIND_CONFIG wins over ./walrewind.toml; ~/.config/walrewind/config.toml is the last resort.
    good = tmp_path / "elsewhere.toml"
    good.write_text('data_dir = "d1"\n[databases.envdb]\npath = "e.db"\nreplica = "r"\n')
    res = CliRunner().invoke(cli, ["db", "list", "--json"], env={"WALREWIND_CONFIG": str(good)})
    assert res.exit_code == 0 and json.loads(res.stdout)["databases"][0]["name"] == "envdb"
    (tmp_path / "walrewind.toml").unlink()
    (tmp_path / "xdg" / "walrewind").mkdir(parents=True)
    (tmp_path / "xdg" / "walrewind" / "config.toml").write_text('[databases.xdgdb]\npath = "x.db"\nreplica = "r"\n')
    res = CliRunner().invoke(cli, ["db", "list", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["databases"][0]["name"] == "xdgdb"


# ----------------------------------------------------------------- a real `replicate --config`
def test_replicate_config_runs_every_database_and_stops_with_a_final_sync(tmp_path):
    names = ["alpha", "beta"]
    cfg = tmp_path / "walrewind.toml"
    cfg.write_text('data_dir = "data"\n' + "".join(
        f'[databases.{n}]\npath = "{n}.db"\nreplica = "file://{tmp_path}/replicas/{n}"\nstate_dir = "state/{n}"\n'
        f"upload_interval = 0.05\n" for n in names))
    apps = {n: App(str(tmp_path / f"{n}.db")) for n in names}
    apps["alpha"].run(op="seed", seed=1, n=10)
    proc = subprocess.Popen(WALREWIND + ["--config", str(cfg), "replicate"], stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while not any("all 2 database(s) replicating" in line for line in lines):
            line = proc.stderr.readline()
            assert line, f"daemon exited: {''.join(lines)}"
            lines.append(line)
        apps["alpha"].run(op="sql", sql="DELETE FROM customers WHERE id > 5")
        apps["beta"].run(op="seed", seed=2, n=25)
        for app in apps.values():
            app.quit()
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(60) == 0, rest
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "final sync" in rest and "alpha: stopped" in rest and "beta: stopped" in rest
    runner = CliRunner()
    for name, rows in (("alpha", 5), ("beta", 25)):
        res = runner.invoke(cli, ["--config", str(cfg), "db", "create", f"{name}-latest", "--from-db", name])
        assert res.exit_code == 0, res.output
        assert read_rows(str(tmp_path / "data" / "databases" / f"{name}-latest.db"), "SELECT count(*) FROM customers") == [[rows]]


@pytest.mark.slow
def test_replicate_config_keeps_the_others_shipping_while_one_database_fails(tmp_path):
    """A database that cannot be replicated (not in WAL mode) is retried with backoff and reported
    (a log line, `db show`); the others ship as usual.  SIGTERM while it still fails: exit 1 naming
    it.  Once it is fixed, the next retry picks it up: exit 0."""
    good = App(str(tmp_path / "good.db"))
    subprocess.run([sys.executable, "-c", "import sqlite3; c = sqlite3.connect('plain.db'); c.execute('create table t(x)'); "
                    "c.commit()"], cwd=tmp_path, check=True)
    (tmp_path / "walrewind.toml").write_text('[databases.good]\npath = "good.db"\nreplica = "r/good"\nupload_interval = 0.05\n'
                                             '[databases.plain]\npath = "plain.db"\nreplica = "r/plain"\n')
    env = {k: v for k, v in os.environ.items() if k != "WALREWIND_CONFIG"}
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg")
    daemon = Daemon(["replicate"], tmp_path, env)  # ./walrewind.toml
    try:
        daemon.wait_for("replicating good")
        daemon.wait_for("plain: FAILED")
        daemon.wait_for("plain: FAILED", 10)  # retried (after 1 s), failed again, still reported
        assert any("retrying in" in line and "journal_mode=WAL" in line for line in daemon.lines), daemon.lines
        show = subprocess.run(WALREWIND + ["db", "show", "plain"], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert "FAILING since" in show.stdout and "journal mode" in show.stdout, show.stdout + show.stderr
        good.run(op="seed", seed=1, n=10)
        rc, out, _took = daemon.stop()
    finally:
        daemon.kill()
    assert rc == 1, out
    assert "good: stopped" in out and "plain: FAILED" in out and "stopped while 1 database(s) were failing: plain" in out
    assert "Traceback" not in out
    res = CliRunner().invoke(cli, ["--config", str(tmp_path / "walrewind.toml"), "db", "create", "good-now", "--from-db", "good"])
    assert res.exit_code == 0, res.output
    assert read_rows(str(tmp_path / "walrewind-data" / "databases" / "good-now.db"), "SELECT count(*) FROM customers") == [[10]]

    daemon = Daemon(["replicate"], tmp_path, env)
    try:
        daemon.wait_for("plain: FAILED")
        subprocess.run([sys.executable, "-c", "import sqlite3; sqlite3.connect('plain.db').execute('pragma journal_mode=wal')"],
                       cwd=tmp_path, check=True)
        daemon.wait_for("plain: replicating again", 30)
        good.quit()
        rc, out, _took = daemon.stop()
    finally:
        daemon.kill()
    assert rc == 0, out
    assert "good: stopped" in out and "plain: stopped" in out
    res = CliRunner().invoke(cli, ["replicate", "--db", "nope"], env={"WALREWIND_CONFIG": str(tmp_path / "walrewind.toml")})
    assert res.exit_code == 1 and "unknown database(s) 'nope'; known databases: good, plain" in res.output


# --------------------------------------------------------------------------------- the parts
def test_sql_literals_read_back_as_the_same_values():
    values = [None, 0, -1, 2**63 - 1, -(2**63), 0.1, -3.5, 1e300, 1e-7, 100.0, -0.0, float("inf"), float("-inf"),
              "", "it's", "multi\nline", "Zoë ☃", "nul\x00inside", "'); DROP TABLE t;--", b"", b"\x00\x01\xff", b"'"]
    conn = apsw.Connection(":memory:")
    got = [conn.execute(f"SELECT {sql_literal(v)}").fetchall()[0][0] for v in values]
    assert got == values
    assert [type(g) for g in got] == [type(v) for v in values]
    assert sql_literal(float("nan")) == "NULL"


def test_diff_composite_key_generated_columns_and_rowid(tmp_path):
    a, b = str(tmp_path / "a.db"), str(tmp_path / "b.db")
    for path, rows in ((a, [(1, 1, 5), (1, 2, 6), (2, 1, 7)]), (b, [(1, 1, 5), (2, 1, 8), (3, 1, 9)])):
        conn = apsw.Connection(path)
        conn.execute("CREATE TABLE items(o INT, line INT, qty INT, twice INT AS (qty * 2), PRIMARY KEY (o, line)) WITHOUT ROWID")
        conn.execute("CREATE TABLE loose(v)")
        for r in rows:
            conn.execute("INSERT INTO items(o, line, qty) VALUES (?, ?, ?)", r)
            conn.execute("INSERT INTO loose(v) VALUES (?)", (r[2],))
        conn.close()
    d = diff_table(a, b, "items")
    assert d.key == ["o", "line"]
    assert d.only_in_restored == [(1, 2, 6, 12)] and d.only_in_source == [(3, 1, 9, 18)]
    assert d.changed == [((2, 1), (7, 14), (8, 16))]
    sql = d.restore_sql()
    assert 'INSERT INTO "items" ("o", "line", "qty") VALUES (1, 2, 6) ON CONFLICT DO NOTHING;' in sql
    d = diff_table(a, b, "loose")
    assert d.key == ["rowid"] and d.changed == [((2,), (6,), (8,)), ((3,), (7,), (9,))]
    d = diff_table(a, b, "loose", key=["v"])
    assert d.only_in_restored == [(6,), (7,)] and d.only_in_source == [(8,), (9,)]


def test_config_paths_env_and_names(tmp_path):
    cfg = tmp_path / "sub" / "c.toml"
    cfg.parent.mkdir()
    cfg.write_text('data_dir = "./data"\n[databases.prod-db]\npath = "${DBDIR}/prod.db"\n'
                   'replica = "s3://KEY:SECRET@bucket/p?endpoint=http://h:1"\nretention = "1w 2d"\nstate_dir = "st"\n'
                   '[databases.local_1]\npath = "x.db"\nreplica = "backups/x"\n')
    c = load_config(str(cfg), environ={"DBDIR": "/var/lib/app"})
    assert c.data_dir == str(tmp_path / "sub" / "data")
    prod = c.databases["prod-db"]
    assert prod.path == "/var/lib/app/prod.db" and prod.state_dir == str(tmp_path / "sub" / "st")
    assert prod.retention_us == parse_duration_us("9d") and "SECRET" not in prod.replica_display
    assert c.databases["local_1"].replica == str(tmp_path / "sub" / "backups" / "x")
    with pytest.raises(ConfigError, match="DBDIR is not set"):
        load_config(str(cfg), environ={})
    cfg.write_text('[databases."bad/name"]\npath = "a"\nreplica = "b"\n')
    with pytest.raises(ConfigError, match="Invalid database name"):
        load_config(str(cfg))
    cfg.write_text('[databases.a]\npath = "a"\nreplica = "b"\nretention = "soon"\n')
    with pytest.raises(ConfigError, match="retention"):
        load_config(str(cfg))
    cfg.write_text('[databases.a]\npath = "a"\nreplica = "r"\n[databases.b]\npath = "b"\nreplica = "r"\n')
    with pytest.raises(ConfigError, match="already used by"):
        load_config(str(cfg))
    for bad in ("", ".", "..", "a.b", "a/b", "a\\b", "é", "-dash"):
        with pytest.raises(InvalidName):
            validate_name(bad)
