"""Encryption at rest end to end: a real `walrewind replicate` with a key, the real restore.

With a key, no object of the replica holds a row's plaintext (a 28-character marker in 200 rows,
looked for in every object as stored and inside every zstd frame found in it); the restore with
the key is exact; a wrong key and a missing key each exit non-zero with a message about the key
and leave no output file.  On a local directory and on SeaweedFS S3.  The same scan of an
unencrypted replica finds the marker, so the scan can fail.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import stat
import subprocess
import sys
import uuid
from urllib.parse import quote

import pytest
import zstandard
from daemon_process import WALREWIND, Daemon
from walrewind.engine.storage import open_storage

APP_WRITER = os.path.join(os.path.dirname(__file__), "app_writer.py")
MARKER = "CONFIDENTIAL-ROW-7f3a9c1b2e5"  # 28 characters
FAKE_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYFAKESECRETKEY"
assert len(MARKER) == 28


class App:
    """The application writing the database: its own process (tests/app_writer.py)."""

    def __init__(self, db: str) -> None:
        self.proc = subprocess.Popen([sys.executable, APP_WRITER, db], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)

    def run(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        assert "error" not in answer, answer["error"]
        return answer

    def quit(self) -> None:
        self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
        self.proc.stdin.flush()
        self.proc.wait(30)


def key_file(path, n: int) -> str:
    path.write_text(base64.b64encode(bytes([n]) * 32).decode() + "\n")
    return str(path)


def cli(args: list[str], cwd, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(WALREWIND + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def objects(url: str) -> dict[str, bytes]:
    store = open_storage(url, create=False)
    inner = getattr(store, "unwrapped", store)  # as stored: no decryption
    return {info.key: inner.get(info.key) for info in inner.list("")}


def readable_texts(blob: bytes) -> list[bytes]:
    """The object as stored, and the decompressed content of every zstd frame found in it."""
    out = [blob]
    start = blob.find(b"\x28\xb5\x2f\xfd")
    while start != -1:
        try:
            out.append(zstandard.ZstdDecompressor().decompressobj().decompress(blob[start:]))
        except zstandard.ZstdError:
            pass
        start = blob.find(b"\x28\xb5\x2f\xfd", start + 1)
    return out


def leaks(url: str) -> list[str]:
    return [key for key, blob in objects(url).items() if any(MARKER.encode() in t for t in readable_texts(blob))]


def write_rows(app: App) -> None:
    app.run(op="sql", sql="CREATE TABLE IF NOT EXISTS secrets(id INTEGER PRIMARY KEY, body TEXT)")
    for batch in range(10):  # ten transactions: ten segments' worth of rows
        values = ",".join(f"({batch * 20 + i}, '{MARKER} row {batch * 20 + i}')" for i in range(20))
        app.run(op="sql", sql=f"INSERT INTO secrets VALUES {values}")


def rows(path: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT id, body FROM secrets ORDER BY id").fetchall()
    finally:
        conn.close()


def replicate_and_restore(tmp_path, url: str, env: dict) -> None:
    """The scenario of the issue's 'done means', on any replica URL."""
    db = str(tmp_path / "app.db")
    good = key_file(tmp_path / "good.key", 1)
    app = App(db)
    app.run(op="sql", sql="CREATE TABLE warmup(x)")
    daemon = Daemon(["replicate", db, url, "--state-dir", str(tmp_path / "state"), "--upload-interval", "0.05",
                     "--encryption-key-file", good, "-v"], tmp_path, env)
    try:
        daemon.wait_for("replicating")
        write_rows(app)
        app.quit()
        rc, said, _took = daemon.stop()
    finally:
        daemon.kill()
    assert rc == 0, said
    assert FAKE_SECRET not in said and open(good).read().strip() not in said

    snap = cli(["snapshot", url, "--encryption-key-file", good, "--json"], tmp_path, env)  # a maintenance write too
    assert snap.returncode == 0, snap.stderr
    stored = objects(url)
    assert "encryption.json" in stored and any(k.endswith(".snap") for k in stored) and any(k.endswith(".seg") for k in stored)
    for key, blob in stored.items():
        if key != "encryption.json":
            assert blob[:4] == b"WREC", key
    assert leaks(url) == []

    expected = rows(db)
    assert len(expected) == 200
    out = str(tmp_path / "restored.db")
    res = cli(["restore", url, "-o", out, "--encryption-key-file", good, "--json"], tmp_path, env)
    assert res.returncode == 0, res.stderr
    assert rows(out) == expected and json.loads(res.stdout)["verified"] is True

    wrong = key_file(tmp_path / "wrong.key", 2)
    key_id = json.loads(cli(["keygen", "--id-of", good, "--json"], tmp_path, env).stdout)["key_id"]
    for label, extra, run_env in (("wrong", ["--encryption-key-file", wrong], env),
                                  ("missing", [], {k: v for k, v in env.items() if k != "WALREWIND_ENCRYPTION_KEY"})):
        bad_out = str(tmp_path / f"{label}.db")
        res = cli(["restore", url, "-o", bad_out, *extra], tmp_path, run_env)
        assert res.returncode != 0, (label, res.stdout, res.stderr)
        assert "Error:" in res.stderr and "key id " + key_id in res.stderr, (label, res.stderr)
        assert "Traceback" not in res.stderr
        assert not os.path.exists(bad_out) and not any(p.startswith(f".{label}.db") for p in os.listdir(tmp_path))
        said += res.stdout + res.stderr
    ls = cli(["ls", url, "--check", "--json", "--encryption-key-file", good], tmp_path, env)
    assert ls.returncode == 0 and json.loads(ls.stdout)["check"]["ok"], ls.stdout + ls.stderr
    said += snap.stdout + snap.stderr + ls.stdout + ls.stderr
    keyless = cli(["replicate", db, url, "--state-dir", str(tmp_path / "state2")],
                  tmp_path, {k: v for k, v in env.items() if k != "WALREWIND_ENCRYPTION_KEY"})
    assert keyless.returncode == 1 and f"is encrypted (key ids {key_id})" in keyless.stderr, keyless.stderr
    said += keyless.stdout + keyless.stderr
    said += every_command_through_a_config(tmp_path, url, good, env)
    secrets = [open(good).read().strip(), open(wrong).read().strip(), FAKE_SECRET, quote(FAKE_SECRET, safe="")]
    assert not [s for s in secrets if s in said]
    for dirpath, _dirs, files in os.walk(tmp_path):  # state, health, catalog, history, restored copies
        for name in files:
            if not name.endswith((".key", ".toml")):  # where the test put them
                data = open(os.path.join(dirpath, name), "rb").read()
                assert not [s for s in secrets if s.encode() in data], os.path.join(dirpath, name)


def every_command_through_a_config(tmp_path, url: str, key: str, env: dict) -> str:
    """Each command that opens the replica, by a configured name whose config holds the key file and
    the URL (with its credentials, for S3): everything they print, for the secrets check."""
    (tmp_path / "walrewind.toml").write_text(
        f'data_dir = "data"\n[databases.app]\npath = "app.db"\nreplica = "{url}"\n'
        f'encryption_key_file = "{os.path.basename(key)}"\nstate_dir = "state"\n')
    out = ""
    for args in (["db", "create", "copy", "--from-db", "app", "--json"], ["db", "show", "app", "--json"],
                 ["db", "show", "copy", "--json"], ["history", "--json"], ["timeline", "app", "--json"],
                 ["verify", "app", "--json"], ["prune", "app", "--dry-run", "--json"],
                 ["compact", "app", "--dry-run", "--json"], ["rekey", "app", "--dry-run", "--json"],
                 ["ls", "app", "--json"], ["restore", "app", "-o", "via-config.db", "--json"]):
        res = cli(args, tmp_path, env)
        assert res.returncode == 0, (args, res.stdout, res.stderr)
        out += res.stdout + res.stderr
    assert rows(str(tmp_path / "data" / "databases" / "copy.db")) == rows(str(tmp_path / "app.db"))
    for path, mode in (("state", 0o700), ("data", 0o700), ("data/catalog.db", 0o600)):  # docs/SECURITY.md
        assert stat.S_IMODE(os.stat(tmp_path / path).st_mode) == mode, path
    bad = tmp_path / "bad.key"
    bad.write_text("not a key: " + FAKE_SECRET + "\n")
    res = cli(["restore", "app", "-o", "x.db", "--encryption-key-file", str(bad)], tmp_path, env)
    assert res.returncode == 1 and "bad.key line 1: not a base64" in res.stderr
    return out + res.stdout + res.stderr


@pytest.mark.slow
def test_local_replica_holds_no_plaintext_and_restores_only_with_the_key(tmp_path):
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "xdg"))
    env.pop("WALREWIND_ENCRYPTION_KEY", None)
    replicate_and_restore(tmp_path, "file://" + str(tmp_path / "replica"), env)


@pytest.mark.s3
def test_s3_replica_holds_no_plaintext_and_restores_only_with_the_key(tmp_path, seaweed_s3):
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "xdg"))
    env.pop("WALREWIND_ENCRYPTION_KEY", None)
    url = seaweed_s3.url(f"enc/{uuid.uuid4().hex}").replace("s3://", f"s3://AKIAFAKE:{quote(FAKE_SECRET, safe='')}@", 1)
    replicate_and_restore(tmp_path, url, env)


def test_the_scan_finds_plaintext_in_an_unencrypted_replica(tmp_path):
    """The control: the same rows replicated without a key are found (as stored or compressed)."""
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "xdg"))
    env.pop("WALREWIND_ENCRYPTION_KEY", None)
    db, url = str(tmp_path / "app.db"), "file://" + str(tmp_path / "plain")
    app = App(db)
    app.run(op="sql", sql="CREATE TABLE warmup(x)")
    daemon = Daemon(["replicate", db, url, "--state-dir", str(tmp_path / "state"), "--upload-interval", "0.05"],
                    tmp_path, env)
    try:
        daemon.wait_for("replicating")
        write_rows(app)
        app.quit()
        rc, said, _took = daemon.stop()
    finally:
        daemon.kill()
    assert rc == 0, said
    assert any(k.endswith(".seg") for k in leaks(url))
