"""A restored database becomes a new namespace of a real sqld 0.24.32 (engine/workspace/sqldload.py).

Both ways are judged by what sqld then serves over HTTP, compared with the file: every value of
every table, sqlite_sequence, the schema, user_version and application_id.  Adopting the file
keeps everything byte for byte (the schema text too); the dump keeps every value (text with line
breaks included, which sqld's line-by-line loader would otherwise change) and the header fields.
"""

from __future__ import annotations

import os
import shutil

import apsw
import pytest
from sqld_server import SqldError as FixtureSqldError
from sqld_server import sqld_server
from walrewind.engine.errors import NameTaken, SqldError, UsageError
from walrewind.engine.workspace.config import SqldConfig
from walrewind.engine.workspace.sqld import SqldAdmin
from walrewind.engine.workspace.sqldload import DumpUnsafe, load_restored

TRICKY_TEXT = "\n  leading spaces\n\n-- looks like a comment\nends with;\nx\r\ny"


@pytest.fixture(scope="module")
def sqld(tmp_path_factory):
    yield from sqld_server(str(tmp_path_factory.mktemp("sqld")))


@pytest.fixture
def config(sqld, tmp_path) -> SqldConfig:
    return SqldConfig(sqld.data_dir, "file://" + str(tmp_path / "unused"), admin_url=f"http://127.0.0.1:{sqld.admin_port}",
                      http_url=f"http://127.0.0.1:{sqld.http_port}")


def make_db(path: str, page_size: int = 4096, comment: bool = False) -> None:
    """What a faithful copy must keep, multi-line schema included (apsw; nothing else opens it)."""
    conn = apsw.Connection(path)
    for pragma in (f"page_size={page_size}", "journal_mode=WAL", "user_version=42", "application_id=1234"):
        conn.execute(f"PRAGMA {pragma}").fetchall()
    conn.execute("""
        CREATE TABLE a(id INTEGER PRIMARY KEY AUTOINCREMENT,
                       name TEXT, f REAL, b BLOB, n);
        CREATE INDEX a_name ON a(name);
        CREATE TABLE log(msg TEXT);
        CREATE TRIGGER a_ins AFTER INSERT ON a
        BEGIN
            INSERT INTO log VALUES ('ins ' || new.id);
            INSERT INTO log VALUES ('twice;');
        END;
        CREATE VIEW v AS SELECT id, name FROM a WHERE id > 1;
        CREATE TABLE w(x PRIMARY KEY, y) WITHOUT ROWID;
        INSERT INTO w VALUES ('k', 1);
    """ + ("CREATE TABLE c(x -- a comment\n);" if comment else ""))
    conn.execute("INSERT INTO a(name, f, b, n) VALUES ('gone', 0.1, x'00ff', NULL)")
    conn.execute("INSERT INTO a(name, f, b, n) VALUES (?, 1e300, x'', 9223372036854775807)", (TRICKY_TEXT,))
    conn.execute("INSERT INTO a(name, f, b, n) VALUES (?, -2.5, randomblob(3000), 'text')", ("nul\x00inside",))
    conn.execute("DELETE FROM a WHERE id = 1")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    conn.close()


def contents(query) -> dict:
    return {
        "a": query("SELECT id, name, f, b, n FROM a ORDER BY id"),
        "log": query("SELECT msg FROM log ORDER BY rowid"),
        "w": query("SELECT x, y FROM w"),
        "seq": query("SELECT name, seq FROM sqlite_sequence"),
        "schema": query("SELECT type, name, tbl_name FROM sqlite_schema ORDER BY name"),
        "user_version": query("PRAGMA user_version"),
        "application_id": query("PRAGMA application_id"),
    }


def file_contents(path: str) -> tuple[dict, list]:
    conn = apsw.Connection(f"file:{path}?immutable=1", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    try:
        q = lambda sql: [tuple(r) for r in conn.execute(sql)]  # noqa: E731
        return contents(q), q("SELECT sql FROM sqlite_schema ORDER BY name")
    finally:
        conn.close()


def test_adopting_keeps_every_byte_and_the_namespace_works(sqld, config, tmp_path):
    src = str(tmp_path / "restored.db")
    make_db(src)
    want, want_sql = file_contents(src)
    loaded = load_restored(config, "adopted", src, work_dir=str(tmp_path / "work"))
    assert loaded.method == "adopted" and not loaded.notes, loaded.notes
    assert loaded.url == f"http://adopted.localhost:{sqld.http_port}"
    assert loaded.summary.tables == {"a": 2, "log": 6, "sqlite_sequence": 1, "w": 1}
    assert not os.path.exists(src)  # moved into dbs/adopted/data
    assert contents(lambda sql: sqld.query("adopted", sql)) == want
    assert sqld.query("adopted", "SELECT sql FROM sqlite_schema ORDER BY name") == want_sql
    assert sqld.query("adopted", "INSERT INTO a(name) VALUES ('new') RETURNING id") == [(4,)]  # sqlite_sequence
    assert sqld.query("adopted", "SELECT msg FROM log ORDER BY rowid DESC LIMIT 2") == [("twice;",), ("ins 4",)]
    sqld.delete_namespace("adopted")


def test_a_dump_keeps_every_value_and_the_header_fields(sqld, config, tmp_path):
    src = str(tmp_path / "restored.db")
    make_db(src)
    want, _ = file_contents(src)
    loaded = load_restored(config, "dumped", src, work_dir=str(tmp_path / "work"), method="dump")
    assert loaded.method == "dump"
    assert any("one line" in n for n in loaded.notes)  # the multi-line CREATE TABLE / TRIGGER
    assert contents(lambda sql: sqld.query("dumped", sql)) == want
    assert sqld.query("dumped", "SELECT name FROM a WHERE id = 2") == [(TRICKY_TEXT,)]
    assert sqld.query("dumped", "INSERT INTO a(name) VALUES ('new') RETURNING id") == [(4,)]
    assert not os.listdir(tmp_path / "work") and not os.path.exists(src)  # the dump file and the copy are gone
    sqld.delete_namespace("dumped")


def test_another_page_size_is_rebuilt_before_sqld_sees_it(sqld, config, tmp_path):
    """sqld 0.24 panics on the first write to a namespace whose file has 8192-byte pages."""
    src = str(tmp_path / "restored.db")
    make_db(src, page_size=8192)
    want, _ = file_contents(src)
    loaded = load_restored(config, "rebuilt", src, work_dir=str(tmp_path / "work"))
    assert loaded.method == "adopted" and "it had 8192" in loaded.notes[0]
    assert contents(lambda sql: sqld.query("rebuilt", sql)) == want
    assert sqld.query("rebuilt", "INSERT INTO a(name) VALUES ('x') RETURNING id") == [(4,)]
    assert sqld.query("rebuilt", "PRAGMA page_size") == [(4096,)]
    sqld.delete_namespace("rebuilt")


def test_an_existing_name_is_refused_before_anything_is_written(sqld, config, tmp_path):
    src = str(tmp_path / "restored.db")
    make_db(src)
    sqld.create_namespace("taken")
    with pytest.raises(NameTaken, match="namespace 'taken' already exists"):
        load_restored(config, "taken", src, work_dir=str(tmp_path / "work"))
    assert os.path.exists(src) and sqld.query("taken", "SELECT count(*) FROM sqlite_schema") == [(0,)]
    sqld.delete_namespace("taken")
    os.makedirs(os.path.join(sqld.data_dir, "dbs", "stray"))  # a directory sqld was not told about
    with pytest.raises(NameTaken, match="stray"):
        load_restored(config, "stray", src, work_dir=str(tmp_path / "work"))
    shutil.rmtree(os.path.join(sqld.data_dir, "dbs", "stray"))
    with pytest.raises(UsageError, match="lower-case"):
        load_restored(config, "Upper", src, work_dir=str(tmp_path / "work"))


def test_a_dump_sqld_would_misread_is_refused_and_leaves_no_namespace(sqld, config, tmp_path):
    src = str(tmp_path / "restored.db")
    make_db(src, comment=True)
    with pytest.raises(DumpUnsafe, match="-- comment"):
        load_restored(config, "commented", src, work_dir=str(tmp_path / "work"), method="dump")
    admin = SqldAdmin(config.admin_url)
    assert not admin.exists("commented") and not os.path.exists(os.path.join(sqld.data_dir, "dbs", "commented"))
    admin.close()
    loaded = load_restored(config, "commented", src, work_dir=str(tmp_path / "work"))  # adopting has no such limit
    assert loaded.method == "adopted"
    assert sqld.query("commented", "SELECT sql FROM sqlite_schema WHERE name = 'c'") == [("CREATE TABLE c(x -- a comment\n)",)]
    sqld.delete_namespace("commented")


def test_a_failed_load_deletes_the_half_made_namespace(sqld, config, tmp_path, monkeypatch):
    """sqld leaves a name registered (empty) after a dump it could not load, and a namespace that was
    made but does not answer cannot be checked: either way the name must be free again."""
    from walrewind.engine.workspace import sqldload

    def broken_dump(_db: str, out: str) -> list[str]:
        with open(out, "w") as f:
            f.write("BEGIN TRANSACTION;\nCREATE TABLE t(;\nCOMMIT;\n")
        return []

    src = str(tmp_path / "restored.db")
    make_db(src)
    with monkeypatch.context() as m:
        m.setattr(sqldload, "write_dump", broken_dump)
        with pytest.raises(SqldError, match="could not load the dump"):
            load_restored(config, "unloadable", src, work_dir=str(tmp_path / "work"), method="dump")
    bad = SqldConfig(config.data_dir, config.replica, admin_url=config.admin_url, http_url="http://127.0.0.1:1")
    with pytest.raises(SqldError, match="cannot reach sqld's HTTP API"):
        load_restored(bad, "unchecked", src, work_dir=str(tmp_path / "work"), method="dump")
    for name in ("unloadable", "unchecked"):
        with pytest.raises(FixtureSqldError) as gone:
            sqld.query(name, "SELECT 1")
        assert gone.value.status == 404
        assert not os.path.exists(os.path.join(sqld.data_dir, "dbs", name))


def test_when_sqld_refuses_to_adopt_the_file_a_dump_is_loaded_instead(sqld, config, tmp_path, monkeypatch):
    """Adopting is not documented sqld behaviour: if a later sqld answers the adopting `create`
    with an error, the file is taken back, the directory removed, and the dump path used."""
    real_create = SqldAdmin.create
    calls = []

    def create(self, name, dump_url=None):
        calls.append(dump_url)
        if dump_url is None:
            assert os.path.exists(os.path.join(sqld.data_dir, "dbs", name, "data"))  # the file was in place
            raise SqldError("sqld refused to create namespace (HTTP 500): simulated", 500, '{"error":"simulated"}')
        return real_create(self, name, dump_url)

    monkeypatch.setattr(SqldAdmin, "create", create)
    src = str(tmp_path / "restored.db")
    make_db(src)
    want, _ = file_contents(src)
    loaded = load_restored(config, "refused", src, work_dir=str(tmp_path / "work"))
    assert loaded.method == "dump" and calls[0] is None and calls[1].startswith("file://")
    assert any("sqld refused to adopt the restored file" in n for n in loaded.notes), loaded.notes
    assert contents(lambda sql: sqld.query("refused", sql)) == want
    sqld.delete_namespace("refused")
