"""`[sqld]` in the config, the namespace watcher's logic, state identity and the dump escaping:
the parts of sqld support that need no sqld (tests/test_sqld_fleet.py and test_sqld_create.py run
against a real one)."""

from __future__ import annotations

import fcntl
import json
import os
import random

import apsw
import pytest
from walrewind.engine.daemon.namespaces import (
    IDENTITY_FILE,
    NamespaceWatcher,
    diff,
    prepare_state_dir,
)
from walrewind.engine.errors import ConfigError, InvalidName, StateLocked
from walrewind.engine.workspace.config import (
    join_replica,
    load_config,
    sqld_with_options,
)
from walrewind.engine.workspace.sqld import (
    Namespace,
    client_url,
    probe,
    validate_new_namespace,
)
from walrewind.engine.workspace.sqldload import (
    DumpUnsafe,
    line_safe_literal,
    one_line,
    write_dump,
)


def write_config(tmp_path, text: str):
    path = tmp_path / "walrewind.toml"
    path.write_text(text)
    return load_config(str(path), environ={"S3": "http://127.0.0.1:8333"})


# ------------------------------------------------------------------------------------ [sqld]
def test_sqld_section_gives_every_namespace_its_path_replica_state_and_settings(tmp_path):
    config = write_config(tmp_path, """
[sqld]
data_dir = "sqld-data"
replica = "s3://backups/sqld?endpoint=${S3}"
admin_url = "http://127.0.0.1:9090"
http_url = "http://127.0.0.1:8080/"
state_dir = "state"
retention = "3d"
upload_interval = 0.5
keep_daily = 2
""")
    sqld = config.sqld
    assert sqld is not None and sqld.data_dir == str(tmp_path / "sqld-data")
    db = sqld.namespace("tenant-1", "id-1")
    assert db.path == str(tmp_path / "sqld-data" / "dbs" / "tenant-1" / "data")
    assert db.replica == "s3://backups/sqld/tenant-1?endpoint=http://127.0.0.1:8333"
    assert db.state_dir == str(tmp_path / "state" / "tenant-1")
    assert (db.retention, db.retention_us, db.upload_interval, db.keep_daily) == ("3d", 3 * 86400 * 10**6, 0.5, 2)
    assert (db.namespace, db.namespace_id, db.kind) == ("tenant-1", "id-1", "sqld namespace")
    assert sqld.http_url == "http://127.0.0.1:8080"
    assert client_url(sqld, "tenant-1") == "http://tenant-1.localhost:8080"
    sqld.client_url = "https://db.example.com"
    assert client_url(sqld, "tenant-1") == "https://tenant-1.db.example.com"
    assert sqld.owns(db.path) == "tenant-1" and sqld.owns(str(tmp_path / "elsewhere.db")) is None


def test_default_state_root_is_xdg_state_walrewind_sqld(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    config = write_config(tmp_path, '[sqld]\ndata_dir = "d"\nreplica = "file:///r"\n')
    assert config.sqld.namespace("a").state_dir == str(tmp_path / "xdg" / "walrewind" / "sqld" / "a")
    assert config.sqld.namespace("a").replica == "file:///r/a"


@pytest.mark.parametrize("body, message", [
    ('[sqld]\nreplica = "r"\n', "'data_dir' is required"),
    ('[sqld]\ndata_dir = "d"\n', "'replica' is required"),
    ('[sqld]\ndata_dir = "d"\nreplica = "r"\nadmin = "x"\n', "unknown setting(s) admin (known: admin_url,"),
    ('[sqld]\ndata_dir = "d"\nreplica = "r"\nadmin_url = "127.0.0.1:9090"\n', "admin_url must be http(s)://HOST[:PORT]"),
    ('[sqld]\ndata_dir = "d"\nreplica = "r"\nhttp_url = "http://h:99999"\n', "http_url 'http://h:99999' has an invalid port"),
    ('[sqld]\ndata_dir = "d"\nreplica = "r"\nhttp_url = "http://h:8080/v2"\n', "http_url must be http(s)://HOST[:PORT] with no path"),
    ('[sqld]\ndata_dir = "d"\nreplica = "r"\nretention = "7 days"\n', "[sqld]: retention:"),
    ('[sqld]\ndata_dir = "d"\nreplica = "r"\nupload_interval = 0\n', "upload_interval must be > 0"),
    ('sqld = 3\n', "[sqld] must be a table with data_dir and replica"),
    ('[sqld]\ndata_dir = "d"\nreplica = "r"\n[databases.x]\npath = "d/dbs/ns/data"\nreplica = "other"\n',
     "is namespace 'ns' of [sqld] data_dir"),
    ('[sqld]\ndata_dir = "d"\nreplica = "s3://b/sqld"\n[databases.x]\npath = "x.db"\nreplica = "s3://b/sqld/x?endpoint=e"\n',
     "is inside [sqld] replica"),
    ('[sqld]\ndata_dir = "d"\nreplica = "s3://b"\n[databases.x]\npath = "x.db"\nreplica = "s3://b/x"\n',
     "is inside [sqld] replica"),
    ('[sqld]\ndata_dir = "d"\nreplica = "r"\n[databases.x]\npath = "x.db"\nreplica = "r"\n', "is inside [sqld] replica"),
])
def test_sqld_section_is_validated_strictly(tmp_path, body, message):
    with pytest.raises(ConfigError) as err:
        write_config(tmp_path, body)
    assert message in str(err.value)


def test_a_database_beside_the_sqld_replica_is_fine(tmp_path):
    config = write_config(tmp_path, '[sqld]\ndata_dir = "d"\nreplica = "s3://b/sqld"\n'
                                    '[databases.x]\npath = "x.db"\nreplica = "s3://b/sqld-x"\n')
    assert config.sqld is not None and "x" in config.databases


def test_replicate_options_override_or_make_the_sqld_section(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sqld_with_options(None, None, None, None) is None
    made = sqld_with_options(None, "data", "file:///r", "http://127.0.0.1:9")
    assert (made.data_dir, made.replica, made.admin_url) == (str(tmp_path / "data"), "file:///r", "http://127.0.0.1:9")
    with pytest.raises(ConfigError, match="give both --sqld-data-dir and --sqld-replica"):
        sqld_with_options(None, "data", None, None)
    base = write_config(tmp_path, '[sqld]\ndata_dir = "/srv/sqld"\nreplica = "r"\nretention = "2d"\n').sqld
    over = sqld_with_options(base, None, "s3://b/p", None)
    assert (over.data_dir, over.replica, over.settings.retention) == ("/srv/sqld", "s3://b/p", "2d")
    with pytest.raises(ConfigError, match="--sqld-admin-url must be"):
        sqld_with_options(base, None, None, "ftp://x")


def test_join_replica_keeps_query_and_credentials():
    assert join_replica("s3://KEY:SECRET@b/p/?endpoint=http://h:1", "ns") == "s3://KEY:SECRET@b/p/ns?endpoint=http://h:1"
    assert join_replica("s3://b?endpoint=e", "ns") == "s3://b/ns?endpoint=e"
    assert join_replica("/backups/sqld", "ns") == "/backups/sqld/ns"


def test_new_namespace_names_are_dns_labels():
    assert validate_new_namespace("back-2_x") == "back-2_x"
    for bad in ("Back", "a.b", "-a", "", "a" * 64, "a/b"):
        with pytest.raises(InvalidName):
            validate_new_namespace(bad)


# ------------------------------------------------------------------------------------ watching
def ns(name: str, ident: str | None, waiting: str | None = None, present: bool = True) -> Namespace:
    return Namespace(name, f"/d/dbs/{name}/data", ident, waiting, present)


def test_diff_reports_appeared_gone_replaced_and_waiting_once():
    known = {"a": "1", "b": "2", "c": "3", "d": "4"}
    found = {
        "a": ns("a", "1"),  # unchanged
        "b": ns("b", "9"),  # deleted and re-created (ready)
        "c": ns("c", None, "no data file yet", present=False),  # being deleted
        "d": ns("d", None, "data-journal"),  # id unreadable right now: not a change
        "e": ns("e", "5"),  # new
        "f": ns("f", None, "no data file yet", present=False),  # being created
        "g": ns("g", "7", "data is not in WAL mode yet"),  # never-ready: told once
    }
    told: dict[str, str] = {}
    changes = diff(known, found, told)
    assert [n.name for n in changes.appeared] == ["e"]
    assert [n.name for n in changes.replaced] == ["b"] and changes.replaced[0].id == "9"
    assert changes.gone == ["c"]
    assert changes.waiting == {"f": "no data file yet", "g": "data is not in WAL mode yet"}
    told.update(changes.waiting)
    again = diff({"a": "1"}, {"a": ns("a", "1"), "g": ns("g", "7", "data is not in WAL mode yet")}, told)
    assert not again
    recreated_not_ready = diff({"b": "2"}, {"b": ns("b", "9", "no data file yet", present=False)}, {})
    assert recreated_not_ready.gone == ["b"] and not recreated_not_ready.replaced


def _fake_namespace(dbs, name: str, ident: str, wal: bool = True) -> None:
    d = dbs / name
    d.mkdir(parents=True)
    conn = apsw.Connection(str(d / "data"))
    if wal:
        conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("CREATE TABLE t(x)")
    conn.close()
    for suffix in ("-wal", "-shm"):
        (d / f"data{suffix}").touch()
    (d / "stats.json").write_text(json.dumps({"id": ident, "rows_written": 0}))


def test_watcher_scans_a_directory_like_sqld_makes(tmp_path):
    config = write_config(tmp_path, '[sqld]\ndata_dir = "sqld"\nreplica = "r"\n')
    dbs = tmp_path / "sqld" / "dbs"
    watcher = NamespaceWatcher(config.sqld, interval=2.0)
    assert watcher.due(0.0) and not watcher.scan(0.0)  # no dbs/ yet: nothing, no error
    assert not watcher.due(1.0) and watcher.due(2.0)
    _fake_namespace(dbs, "a", "id-a")
    _fake_namespace(dbs, "rollback", "id-r", wal=False)
    (dbs / "empty").mkdir()
    changes = watcher.scan(2.0)
    assert [n.name for n in changes.appeared] == ["a"] and changes.appeared[0].id == "id-a"
    assert changes.waiting == {"empty": "no data file yet", "rollback": "data is not in WAL mode yet"}
    assert probe(str(dbs), "a").ready
    (dbs / "a" / "stats.json").write_text(json.dumps({"id": "id-a2"}))  # re-created under the same name
    assert [n.id for n in watcher.scan(4.0).replaced] == ["id-a2"]
    for f in (dbs / "a").iterdir():
        f.unlink()
    (dbs / "a").rmdir()
    assert watcher.scan(6.0).gone == ["a"] and watcher.known == {}


def test_state_directory_follows_the_namespace_id(tmp_path):
    state = tmp_path / "state" / "a"
    assert prepare_state_dir(str(state), "a", "id-1") is None  # first time: just recorded
    assert json.loads((state / IDENTITY_FILE).read_text()) == {"namespace": "a", "id": "id-1"}
    (state / "state.json").write_text("{}")
    assert prepare_state_dir(str(state), "a", "id-1") is None and (state / "state.json").exists()
    note = prepare_state_dir(str(state), "a", "id-2")  # re-created: the old state goes
    assert "a new generation starts" in note and not (state / "state.json").exists()
    (state / "spool").mkdir()
    (state / "spool" / "000001.spool").write_bytes(b"x" * 10)
    note = prepare_state_dir(str(state), "a", "id-3")  # never-uploaded transactions are kept aside
    assert "10 bytes never uploaded" in note and (tmp_path / "state" / "a.retired-id-2" / "spool").is_dir()
    assert json.loads((state / IDENTITY_FILE).read_text())["id"] == "id-3"
    fd = os.open(str(state / "lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a daemon holds it
    try:
        with pytest.raises(StateLocked):
            prepare_state_dir(str(state), "a", "id-4")
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------ the dump
def test_line_safe_literals_read_back_as_the_same_values_on_one_line():
    rng = random.Random(7)
    values = ["\n", "\r\n", "a\nb", "\n\nlead", "trail\r", "x\n-- not a comment\n;", "it's\nfine", "nul\x00\nx", ""]
    values += ["".join(rng.choice("ab\n\r ';-") for _ in range(rng.randrange(1, 12))) for _ in range(200)]
    conn = apsw.Connection(":memory:")
    for v in values:
        lit = line_safe_literal(v)
        assert "\n" not in lit and "\r" not in lit
        got = conn.execute(f"SELECT {lit}, typeof({lit})").fetchall()[0]
        assert got == (v, "text"), (v, lit)


def test_one_line_schema_and_what_it_refuses():
    sql = "CREATE TRIGGER tr AFTER INSERT ON t\nBEGIN\n  INSERT INTO log VALUES ('a;');\n  INSERT INTO log VALUES (\"b\");\nEND"
    assert one_line(sql) == "CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO log VALUES ('a;'); INSERT INTO log VALUES (\"b\"); END"
    assert one_line("CREATE TABLE t(a /* x\ny */, b)") == "CREATE TABLE t(a /* x y */, b)"
    assert one_line("CREATE TABLE t(a)") == "CREATE TABLE t(a)"
    with pytest.raises(DumpUnsafe, match="-- comment"):
        one_line("CREATE TABLE t(\n a, -- the key\n b)")
    with pytest.raises(DumpUnsafe, match="inside a quoted string"):
        one_line("CREATE TABLE t(a DEFAULT 'x\ny')")


def test_dump_puts_every_statement_on_one_line_and_keeps_header_fields(tmp_path):
    src = str(tmp_path / "src.db")
    conn = apsw.Connection(src)
    conn.execute("PRAGMA user_version=7").fetchall()
    conn.execute("PRAGMA application_id=99").fetchall()
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT,\n v TEXT)")
    conn.execute("INSERT INTO t(v) VALUES ('one\ntwo'), ('\n-- x;\n')")
    conn.close()
    out = tmp_path / "dump.sql"
    notes = write_dump(src, str(out))
    assert notes and "one line" in notes[0]
    lines = out.read_text().split("\n")
    assert lines[:2] == ["PRAGMA foreign_keys=OFF;", "BEGIN TRANSACTION;"]
    assert lines[-4:] == ["PRAGMA user_version=7;", "PRAGMA application_id=99;", "COMMIT;", ""]
    assert all(line.endswith(";") for line in lines[:-1]) and not any(line.startswith("--") for line in lines)
    copy = apsw.Connection(":memory:")
    copy.execute(out.read_text())
    assert copy.execute("SELECT v FROM t ORDER BY id").fetchall() == [("one\ntwo",), ("\n-- x;\n",)]
    assert copy.execute("PRAGMA user_version").fetchall() == [(7,)]


# ------------------------------------------------------------------------------------ the CLI, without sqld
def test_replicate_sqld_options_are_checked_before_anything_runs(tmp_path, monkeypatch):
    from click.testing import CliRunner
    from walrewind.cli.main import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WALREWIND_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    runner = CliRunner()
    (tmp_path / "x.db").touch()
    res = runner.invoke(cli, ["replicate", "x.db", "file:///r", "--sqld-data-dir", "d"])
    assert res.exit_code == 2 and "cannot be combined with DB_PATH REPLICA_URL" in res.output
    res = runner.invoke(cli, ["replicate", "--sqld-data-dir", "d"])
    assert res.exit_code == 1 and "give both --sqld-data-dir and --sqld-replica" in res.output
    res = runner.invoke(cli, ["replicate", "--sqld-data-dir", "missing", "--sqld-replica", "r"])
    assert res.exit_code == 1 and "[sqld] data_dir" in res.output and "does not exist" in res.output
    res = runner.invoke(cli, ["replicate", "--sqld-data-dir", "d", "--sqld-replica", "r", "--sqld-admin-url", "nope"])
    assert res.exit_code == 1 and "admin_url must be http(s)://HOST[:PORT]" in res.output


def test_db_list_show_and_destroy_know_namespaces_on_disk(tmp_path, monkeypatch):
    from click.testing import CliRunner
    from walrewind.cli.main import cli

    _fake_namespace(tmp_path / "sqld" / "dbs", "tenant", "id-t")
    cfg = tmp_path / "walrewind.toml"
    cfg.write_text('[sqld]\ndata_dir = "sqld"\nreplica = "replicas"\n')
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    runner = CliRunner()
    res = runner.invoke(cli, ["--config", str(cfg), "db", "list", "--json"])
    assert res.exit_code == 0, res.output
    assert [(d["name"], d["type"]) for d in json.loads(res.output)["databases"]] == [("tenant", "sqld namespace")]
    res = runner.invoke(cli, ["--config", str(cfg), "db", "show", "tenant", "--json"])
    info = json.loads(res.output[: res.output.rindex("}") + 1])
    assert info["type"] == "sqld namespace" and info["namespace_id"] == "id-t" and info["daemon"] is None
    res = runner.invoke(cli, ["--config", str(cfg), "db", "show", "tenant", "--url"])
    assert res.exit_code == 1 and "set http_url (or client_url) in [sqld]" in res.output
    res = runner.invoke(cli, ["--config", str(cfg), "db", "destroy", "tenant", "--yes"])
    assert res.exit_code == 1 and "walrewind did not create" in res.output
    assert os.path.exists(tmp_path / "sqld" / "dbs" / "tenant" / "data")
    res = runner.invoke(cli, ["--config", str(cfg), "db", "create", "Back", "--from-db", "tenant"])
    assert res.exit_code == 1 and "lower-case" in res.output
    res = runner.invoke(cli, ["--config", str(cfg), "db", "create", "back", "--from-db", "tenant"])
    assert res.exit_code == 1 and "needs admin_url" in res.output
    res = runner.invoke(cli, ["--config", str(cfg), "restore", "tenant", "-o", str(tmp_path / "sqld" / "dbs" / "x")])
    assert res.exit_code == 1 and "inside sqld's data directory" in res.output
    res = runner.invoke(cli, ["--config", str(cfg), "ls", "typo"])
    assert res.exit_code == 1 and "sqld namespaces in" in res.output and "tenant" in res.output


def test_watcher_rechecks_known_namespaces_in_slices(tmp_path, monkeypatch):
    """Many namespaces: every scan lists dbs/ (a deleted one is gone at once, a new one probed at
    once), but a known one is probed again only in its slice: each within RECHECK_SECONDS."""
    config = write_config(tmp_path, '[sqld]\ndata_dir = "sqld"\nreplica = "r"\n')
    dbs = tmp_path / "sqld" / "dbs"
    for i in range(20):
        _fake_namespace(dbs, f"n{i:02d}", f"id-{i}")
    watcher = NamespaceWatcher(config.sqld, interval=2.0)
    assert len(watcher.scan(0.0).appeared) == 20
    looked: list[str] = []  # namespaces whose files were looked at (two stat calls each)
    real = watcher._probe
    monkeypatch.setattr(watcher, "_probe", lambda name: looked.append(name) or real(name))
    (dbs / "n05" / "stats.json").write_text(json.dumps({"id": "id-5b"}))  # re-created under its name
    _fake_namespace(dbs, "new", "id-new")
    replaced = []
    for k in range(1, 6):  # 5 scans x 2 s = RECHECK_SECONDS: every known one re-checked once
        changes = watcher.scan(2.0 * k)
        replaced += [n.id for n in changes.replaced]
        if k == 1:
            assert [n.name for n in changes.appeared] == ["new"]
    assert replaced == ["id-5b"]
    assert set(looked) == {f"n{i:02d}" for i in range(20)} | {"new"}
    assert len(looked) <= 21 + 5, f"{len(looked)} looks in 5 scans (each of 21 every scan: 105)"


def test_watcher_lists_dbs_again_only_when_it_changed(tmp_path, monkeypatch):
    """1,000 quiet namespaces: a scan is one stat of dbs/ and a slow slice of re-checks (each
    namespace within QUIET_RECHECK_SECONDS), not a listing and 200 probes every 2 s; a directory
    made in dbs/ is listed at the next scan, and then every namespace re-checked within
    RECHECK_SECONDS (sqld re-creates a namespace by removing and making its directory)."""
    from walrewind.engine.daemon import namespaces

    monkeypatch.setattr(namespaces, "RACY_NS", 0)  # this test's dbs/ changed just now: trust its stat
    config = write_config(tmp_path, '[sqld]\ndata_dir = "sqld"\nreplica = "r"\n')
    dbs = tmp_path / "sqld" / "dbs"
    for i in range(20):
        _fake_namespace(dbs, f"n{i:02d}", f"id-{i}")
    listings: list[int] = []
    real_names = namespaces.namespace_names
    monkeypatch.setattr(namespaces, "namespace_names", lambda d: listings.append(1) or real_names(d))
    watcher = NamespaceWatcher(config.sqld, interval=2.0)
    assert len(watcher.scan(0.0).appeared) == 20 and len(listings) == 1
    looked: list[str] = []
    real = watcher._probe
    monkeypatch.setattr(watcher, "_probe", lambda name: looked.append(name) or real(name))
    t = 0.0
    while t < namespaces.RECHECK_SECONDS:  # dbs/ was listed at 0: every namespace re-checked by now
        t += 2.0
        assert not watcher.scan(t)
    assert len(listings) == 1 and set(looked) == {f"n{i:02d}" for i in range(20)}
    looked.clear()
    (dbs / "n07" / "stats.json").write_text(json.dumps({"id": "id-7b"}))  # re-created in place: no dbs/ change
    replaced, scans = [], 0
    while not replaced:
        t += 2.0
        scans += 1
        replaced = watcher.scan(t).replaced
    assert [n.id for n in replaced] == ["id-7b"] and scans <= namespaces.QUIET_RECHECK_SECONDS / 2.0
    # one probe a scan, not 4 (the changed one is probed twice: the look, then the full scan)
    assert len(listings) == 1 and len(looked) <= scans * -(-20 * 2 // 60) + 1
    _fake_namespace(dbs, "new", "id-new")
    assert [n.name for n in watcher.scan(t + 2.0).appeared] == ["new"] and len(listings) == 2
    (dbs / "n03" / "data").unlink()  # its directory stays: only a look at n03 itself shows it
    watcher.recheck("n03")  # the fleet's file check found the data file gone
    assert watcher.due(t + 4.1)
    assert watcher.scan(t + 4.1).gone == ["n03"]


def test_a_fleets_reseed_poke_is_taken_once(tmp_path):
    """`walrewind reseed` pokes the fleet beside its health file; the fleet takes the poke once
    and then looks for every database's request (a big fleet opens 20 request files a second
    otherwise)."""
    from walrewind.engine.daemon.health import HealthFile, poke_reseed

    health = HealthFile(str(tmp_path / "fleets"))
    health.write([{"name": "app", "path": "/x"}, b'{"name":"b","path":"/y"}'], 1)
    assert not health.take_reseed_poke()
    poke_reseed(os.getpid(), health.directory)
    assert health.take_reseed_poke() and not health.take_reseed_poke()
    doc = json.loads((tmp_path / "fleets" / f"{os.getpid()}.json").read_text())
    assert [d["name"] for d in doc["databases"]] == ["app", "b"] and doc["started_us"] == 1
    poke_reseed(os.getpid(), health.directory)
    health.remove()
    assert not os.listdir(health.directory)
