"""`walrewind rekey` (engine/storage/rekey.py): objects under an older key are rewritten under the
current one, each verified before and after it replaces the old one; an interrupted run loses
nothing and the next run finishes; the history restores, exactly, with the new key alone."""

from __future__ import annotations

import base64

import pytest
from click.testing import CliRunner
from synth_history import SyntheticHistory
from walrewind.cli.main import cli
from walrewind.engine.replica.index import Replica
from walrewind.engine.restore.restorer import restore
from walrewind.engine.storage import check_replica_encryption, open_storage
from walrewind.engine.storage.keys import Keyring, parse_key
from walrewind.engine.storage.local import LocalStorage
from walrewind.engine.storage.marker import read_marker
from walrewind.engine.storage.rekey import rekey

START_US = 1_700_000_000_000_000


def ring(*ns: int) -> Keyring:
    return Keyring(tuple(parse_key(base64.b64encode(bytes([n]) * 32).decode(), "test") for n in ns))


def key_ids(root) -> dict[str, str]:
    """Object key -> the key id in its stored header (as stored, no decryption)."""
    plain = LocalStorage(str(root))
    return {i.key: plain.get(i.key)[8:16].hex() for i in plain.list("generations/")}


@pytest.fixture
def history(tmp_path):
    """A generation written under key 1: a multi-chunk snapshot and 20 segments."""
    root = tmp_path / "replica"
    old = ring(1)
    store = open_storage(str(root), keyring=old)
    check_replica_encryption(store, old)
    synth = SyntheticHistory(store, START_US, pages=300, seed=3, rate=20, grow_every_s=5, workdir=str(tmp_path))
    for _ in range(20):
        synth.second()
    return root, synth


def test_rekey_rewrites_everything_and_the_new_key_alone_restores(history, tmp_path):
    root, synth = history
    before = key_ids(root)
    assert set(before.values()) == {ring(1).current.key_id} and len(before) == 21
    both = ring(2, 1)
    dry = rekey(open_storage(str(root), keyring=both), dry_run=True)
    assert len(dry.rewritten) == 21 and key_ids(root) == before
    report = rekey(open_storage(str(root), keyring=both))
    assert len(report.rewritten) == 21 and report.done and not report.unavailable
    assert set(key_ids(root).values()) == {both.current.key_id}
    assert read_marker(LocalStorage(str(root))).key_ids == (both.current.key_id,)
    again = rekey(open_storage(str(root), keyring=both))
    assert again.rewritten == [] and again.current == 21
    out = tmp_path / "restored.db"
    result = restore(open_storage(str(root), create=False, keyring=ring(2)), str(out))
    assert result.txid == synth.txid and result.checksum == synth.checksum
    mid = synth.last_points[0]
    result = restore(open_storage(str(root), create=False, keyring=ring(2)), str(tmp_path / "mid.db"), target_txid=mid[0])
    assert result.checksum == mid[2]


def test_an_interrupted_rekey_loses_nothing_and_the_next_run_finishes(history, tmp_path, monkeypatch):
    root, synth = history
    both = ring(2, 1)
    calls = {"n": 0}
    real_put_file = LocalStorage.put_file

    def flaky(self, key, path):
        calls["n"] += 1
        if calls["n"] == 8:
            raise OSError("disk full (injected)")
        return real_put_file(self, key, path)

    monkeypatch.setattr(LocalStorage, "put_file", flaky)
    with pytest.raises(OSError, match="injected"):
        rekey(open_storage(str(root), keyring=both))
    ids = key_ids(root)
    assert sorted(set(ids.values())) == sorted({ring(1).current.key_id, ring(2).current.key_id})
    # Mid-way, with both keys, the whole history restores and verifies.
    result = restore(open_storage(str(root), create=False, keyring=both), str(tmp_path / "during.db"))
    assert result.checksum == synth.checksum
    monkeypatch.setattr(LocalStorage, "put_file", real_put_file)
    report = rekey(open_storage(str(root), keyring=both))
    assert len(report.rewritten) == 21 - 7 and report.current == 7 and report.done
    result = restore(open_storage(str(root), create=False, keyring=ring(2)), str(tmp_path / "after.db"))
    assert result.checksum == synth.checksum


def test_rekey_cli_reports_objects_under_keys_not_given(history, tmp_path):
    root, _synth = history
    k3 = tmp_path / "k3"
    k3.write_text(base64.b64encode(bytes([3]) * 32).decode() + "\n")
    k1 = tmp_path / "k1"
    k1.write_text(base64.b64encode(bytes([1]) * 32).decode() + "\n")
    runner = CliRunner()
    res = runner.invoke(cli, ["rekey", str(root), "--encryption-key-file", str(k3)])
    assert res.exit_code == 1 and "authenticated with key id" in res.output  # the marker needs key 1
    res = runner.invoke(cli, ["rekey", str(root), "--encryption-key-file", str(k3), "--encryption-key-file", str(k1)])
    assert res.exit_code == 0, res.output
    assert "rewrote 21 objects" in res.output and f"no object needs another key than {ring(3).current.key_id}" in res.output
    assert set(key_ids(root).values()) == {ring(3).current.key_id}
    assert Replica(open_storage(str(root), create=False, keyring=ring(3))).latest() is not None
