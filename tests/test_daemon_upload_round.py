"""Upload rounds: many databases' uploads to a file replica share their flushes (uploadround.py).

A process serving many databases runs their upload steps on a grid, and the plain uploads due
together go as one round: every spool sealed and every segment written unflushed, one sync,
every segment named, one sync, then every hashes log.  These tests pin down: rounds happen and
lose nothing (every commit restorable, exact at random targets); a failed sync fails only the
uploads that depended on it, which then go through the ordinary steps (nothing lost, the spool
flushed again); an existing identical segment (a re-upload after a crash) is accepted and a
different one stops that database only; the pieces a round stands on (SyncGroup, the staged put).
"""

from __future__ import annotations

import os

import pytest
from harness import (
    DaemonThread,
    check_restores,
    wait_until,
    write_all,
    written_databases,
)
from walrewind.engine.daemon import syncgroup, uploadloop, uploadround
from walrewind.engine.daemon.syncgroup import SyncGroup
from walrewind.engine.daemon.uploadloop import UploadPool
from walrewind.engine.storage import open_storage
from walrewind.engine.storage.local import LocalStorage


def _databases(tmp_path, n: int, upload_interval: float, seed: int, **writer):
    dbs, configs = written_databases(tmp_path, n, seed, **writer)
    daemons = [DaemonThread(db, str(tmp_path / f"replica{i}"), str(tmp_path / f"state{i}"),
                            upload_interval=upload_interval) for i, db in enumerate(dbs)]
    return configs, daemons


@pytest.mark.slow
def test_the_pool_uploads_in_rounds_and_loses_nothing(tmp_path, many, monkeypatch):
    """Six databases written at ~3 txn/s, every plain upload a round (ROUND_MIN 1 here: how many
    come due together is up to the clock): every commit is in its replica, restores exact."""
    monkeypatch.setattr(uploadloop, "ROUND_MIN", 1)
    configs, daemons = _databases(tmp_path, 6, 0.3, 41, rate=3, txns=12)
    pool = UploadPool.shared()
    rounds = pool.rounds
    shippers = []
    try:
        shippers = [d.__enter__() for d in daemons]
        write_all(configs)
        for s, c in zip(shippers, configs):
            wait_until(lambda s=s, c=c: s.stats.uploaded_txid >= s.stats.last_txid >= c["txns"], 30, "the uploads")
    finally:
        for d in daemons:
            d.stop()
    assert pool.rounds > rounds, "no upload round ran"
    for i, s in enumerate(shippers):
        assert s.stats.upload_errors == 0 and s.stats.resyncs == 0
        check_restores(str(tmp_path / f"replica{i}"), configs[i]["log"], tmp_path, 3, 50 + i)


@pytest.mark.slow
@pytest.mark.parametrize("sync_fails", [False, True])
def test_one_round_for_four_databases(tmp_path, many, monkeypatch, sync_fails):
    """Four databases' spooled commits (uploads an hour apart: only the round uploads) go in one
    round: each is uploaded and its spool left flushed.  When the round's first sync fails
    (EIO from syncfs), nothing is uploaded, each counts the failure, its spool is marked
    unflushed again, and the final sync at stop uploads everything; restores exact either way."""
    if sync_fails:
        real = SyncGroup.sync

        def failing_sync(self):
            monkeypatch.setattr(SyncGroup, "sync", real)  # once
            self.close()
            raise OSError(5, "syncfs: Input/output error (injected)")

        monkeypatch.setattr(SyncGroup, "sync", failing_sync)
    configs, daemons = _databases(tmp_path, 4, 3600.0, 61, rate=50, txns=6)
    shippers = []
    try:
        shippers = [d.__enter__() for d in daemons]
        write_all(configs)
        for s in shippers:
            # every commit read and spooled (the writers are done): nothing is appended after the seal
            wait_until(lambda s=s: s.stats.last_txid >= 6 and s.reader.caught_up(s.shm.header())
                       and not s.reader.unverified and s.state.pending > 0, 30, "the commits spooled")
        before = [s.stats.uploaded_txid for s in shippers]
        assert uploadround.run_round([(s.uploader, s.name) for s in shippers]) == [True] * 4
        for s, old in zip(shippers, before):
            if sync_fails:
                assert s.stats.uploaded_txid == old and s.stats.upload_errors == 1 and s.state._dirty
            else:
                assert s.stats.uploaded_txid == s.stats.last_txid and s.stats.upload_errors == 0
                assert not s.state._dirty and s.state.pending == 0
    finally:
        for d in daemons:
            d.stop()
    for i, s in enumerate(shippers):
        assert s.stats.uploaded_txid == s.stats.last_txid and s.stats.resyncs == 0
        check_restores(str(tmp_path / f"replica{i}"), configs[i]["log"], tmp_path, 2, 70 + i)


def test_a_sync_group_flushes_each_file_system_once(tmp_path, monkeypatch):
    """Two files and their directory on one file system: one syncfs; without syncfs, an fsync of
    each (what the group promises either way); undo runs when the flush did not happen."""
    paths = [tmp_path / "a", tmp_path / "b"]
    fds = [os.open(p, os.O_WRONLY | os.O_CREAT) for p in paths]
    try:
        calls = []
        monkeypatch.setattr(syncgroup, "_SYNCFS", lambda fd: calls.append(fd) or 0)
        group = SyncGroup()
        for fd in fds:
            group.add(fd)
        group.add_path(str(tmp_path))
        kept = []
        group.undo.append(lambda: kept.append("undone"))
        group.sync()
        group.close()  # (what a round's end does): a flushed group takes nothing back
        assert len(calls) == 1 and group.files == 3 and kept == []

        fsyncs = []
        monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(fd))
        group = SyncGroup(use_syncfs=False)
        for fd in fds:
            group.add(fd)
        group.sync()
        assert len(fsyncs) == 2

        undone = []
        group = SyncGroup()
        group.add(fds[0])
        group.undo.append(lambda: undone.append(1))
        group.close()
        assert undone == [1]
        monkeypatch.setattr(syncgroup, "_SYNCFS", lambda fd: -1)
        group = SyncGroup()
        group.add(fds[0])
        group.undo.append(lambda: undone.append(2))
        with pytest.raises(OSError):
            group.sync()
        assert undone == [1, 2]
    finally:
        for fd in fds:
            os.close(fd)


def test_a_staged_put_is_create_only_and_named_only_by_link(tmp_path):
    """stage_if_absent writes an unnamed file: nothing is visible until link(); link refuses an
    existing key (False); a directory removed meanwhile is made again by an ordinary put."""
    store = LocalStorage(str(tmp_path / "r"))
    staged = store.stage_if_absent("g/seg1", b"one")
    assert staged is not None
    try:
        assert list(store.list("g/")) == []
        assert staged.link()
    finally:
        staged.close()
    assert store.get("g/seg1") == b"one"
    again = store.stage_if_absent("g/seg1", b"two")
    try:
        assert not again.link()
    finally:
        again.close()
    assert store.get("g/seg1") == b"one"
    gone = store.stage_if_absent("h/seg", b"three")
    store.delete("g/seg1")
    os.rmdir(tmp_path / "r" / "h")
    try:
        assert gone.link()
    finally:
        gone.close()
    assert store.get("h/seg") == b"three"


def test_wrappers_never_stage_through_their_inner_store(tmp_path):
    """An encrypting (or counting) wrapper over a file replica offers no staged puts: its inner
    store's, reached through the wrapper's attribute forwarding, would write plaintext.  Its
    uploads never join a round."""
    import base64
    from types import SimpleNamespace

    from walrewind.engine.daemon.uploader import Uploader
    from walrewind.engine.storage.counting import CountingStorage
    from walrewind.engine.storage.keys import Keyring, parse_key

    ring = Keyring((parse_key(base64.b64encode(bytes([1]) * 32).decode(), "test"),))
    encrypted = open_storage(str(tmp_path / "e"), keyring=ring)
    counted = CountingStorage(LocalStorage(str(tmp_path / "c")))
    for store in (encrypted, counted):
        assert not store.stages_puts and store.stage_if_absent("g/seg", b"plaintext") is None
        assert not Uploader(SimpleNamespace(storage=store)).groupable
    assert Uploader(SimpleNamespace(storage=LocalStorage(str(tmp_path / "p")))).groupable
