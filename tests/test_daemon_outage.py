"""engine/daemon/outage.py: an unreachable replica says so in three short lines, and the backlog
drains as soon as the store answers again (a probe every fraction of a second, not a backoff)."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from harness import create_db, read_log, replica_records, run_writer, wait_for
from walrewind.engine.daemon import outage as outage_module
from walrewind.engine.daemon.replicator import Replicator
from walrewind.engine.errors import StoreUnreachable
from walrewind.engine.storage.local import LocalStorage


class Switchable(LocalStorage):
    """A local replica that can be made unreachable (every call raises StoreUnreachable)."""

    down = False
    probes = 0

    def _check(self) -> None:
        if self.down:
            raise StoreUnreachable(f'{self.url}/x: put failed: cannot reach endpoint http://10.0.0.1:9000: Could not '
                                   'connect to the endpoint URL: "http://10.0.0.1:9000/bucket/x" (after 5 attempts)')

    def put_if_absent(self, key, data):
        self._check()
        return super().put_if_absent(key, data)

    def put_file_if_absent(self, key, path):
        self._check()
        return super().put_file_if_absent(key, path)

    def put_marker(self, key):
        self._check()
        return super().put_marker(key)

    def stage_if_absent(self, key, data):
        self._check()
        return super().stage_if_absent(key, data)

    def get(self, key):
        self._check()
        return super().get(key)

    def list(self, prefix):
        self._check()
        return super().list(prefix)

    def probe(self):
        Switchable.probes += 1
        super().probe()



def switchable_daemon(tmp_path, upload_interval: float):
    """A new database, its replica behind a switch, and a daemon on them (started; not yet ready)."""
    db = str(tmp_path / "app.db")
    create_db(db)
    store = Switchable(str(tmp_path / "replica"))
    daemon = Replicator(db, store, state_dir=str(tmp_path / "state"), upload_interval=upload_interval)
    thread = threading.Thread(target=daemon.run)
    thread.start()
    return db, store, daemon, thread

def events(caplog, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == name]


@pytest.mark.slow
def test_outage_lines_are_few_and_short_and_the_drain_is_immediate(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(outage_module, "REMIND_SECONDS", 1.0)
    caplog.set_level(logging.INFO, logger="walrewind")
    log = str(tmp_path / "log")
    db, store, daemon, thread = switchable_daemon(tmp_path, 0.2)
    try:
        assert daemon.ready.wait(30)
        store.down = True
        run_writer({"db": db, "log": log, "checksums": True, "rate": 200, "txns": 100, "seed": 3})
        # (a commit that changed nothing, a DELETE matching no row, writes no WAL frame: fewer than 100)
        wait_for(lambda: daemon.stats.backlog_txns >= 50 and daemon.reader.unverified == [], what="the spool to hold them")
        wait_for(lambda: len(events(caplog, "replica_still_unreachable")) >= 2, timeout=30, what="two reminders")
        probes_before = Switchable.probes
        down_for = time.monotonic()
        time.sleep(1.0)  # the outage goes on: probes continue at PROBE_SECONDS (the scenario, not a wait)
        probes = Switchable.probes - probes_before
        backlog = daemon.stats.backlog_txns
        store.down = False
        up = time.monotonic()
        wait_for(lambda: daemon.stats.uploaded_txid == daemon.stats.last_txid, timeout=30, what="the drain")
        drained = time.monotonic() - up
    finally:
        daemon.stop()
        thread.join(60)
    assert 2 <= probes <= (time.monotonic() - down_for) / 0.25 + 2, probes  # ~4 a second, one request each
    assert drained < 1.5, f"drained {drained:.2f} s after the store answered again"
    began, reminders, ended = (events(caplog, e) for e in ("replica_unreachable", "replica_still_unreachable",
                                                          "replica_reachable"))
    assert len(began) == 1 and len(ended) == 1
    outage_s = ended[0].created - began[0].created
    assert 2 <= len(reminders) <= outage_s / 1.0 + 1, "at most one reminder per REMIND_SECONDS"
    for record in began + reminders + ended:
        text = record.getMessage().replace(store.url, "URL")  # the operator's URL, however long, plus < 200
        assert len(text) < 200 and "\n" not in text and '"http' not in text, text
    assert "cannot reach endpoint http://10.0.0.1:9000" in began[0].getMessage()
    assert "transactions (" in reminders[0].getMessage() and "wait in the spool" in reminders[0].getMessage()
    assert "reachable again after" in ended[0].getMessage() and f"{backlog} transactions uploaded" in ended[0].getMessage()
    txns, _ = read_log(log)
    records = replica_records(str(tmp_path / "replica"))
    assert f"{records[-1].db_checksum:016x}" == txns[-1]["checksum"]


@pytest.mark.parametrize("kind", ["unreachable", "refused"])
def test_an_upload_refused_although_the_store_answers_backs_off(tmp_path, kind):
    """A store that answers probes but refuses uploads (or flaps) is not hammered at probe speed."""
    from walrewind.engine.daemon.uploader import UPLOAD_BACKOFF_MAX, Uploader
    from walrewind.engine.errors import StorageError

    up = Uploader.__new__(Uploader)
    up.shipper = type("Host", (), {"upload_interval": 0.2, "storage": LocalStorage(str(tmp_path)),
                                   "stats": type("S", (), {"upload_errors": 0, "last_error": "",
                                                           "replica_unreachable_since_us": 0, "uploaded_txid": 0,
                                                           "backlog_txns": 0, "backlog_bytes": 0})()})()
    up.outage, up._backoff, up._next_attempt = None, 0.0, 0.0
    error = StoreUnreachable("gone") if kind == "unreachable" else StorageError("access denied")
    up._failed(error)
    first = up._next_attempt - time.monotonic()
    assert (first <= 0.01) if kind == "unreachable" else (0.1 < first <= 0.21)
    waits = []
    for _ in range(8):  # each a full attempt after a good probe that failed again
        up._failed(error)
        waits.append(up._next_attempt - time.monotonic())
    assert waits[0] > 0.1 and max(waits) <= UPLOAD_BACKOFF_MAX and waits[-1] > UPLOAD_BACKOFF_MAX - 0.1


@pytest.mark.slow
def test_a_long_outage_still_cuts_the_spool_into_bounded_segments(tmp_path, monkeypatch):
    """Nothing is uploaded while the store is down, but the file being appended to is still sealed
    at SEAL_MAX_BYTES: each becomes one segment, and restores download whole segments."""
    from walrewind.engine.daemon import uploader
    from walrewind.engine.replica.index import Replica
    from walrewind.engine.storage import open_storage

    monkeypatch.setattr(uploader, "SEAL_MAX_BYTES", 64 << 10)
    replica = str(tmp_path / "replica")
    db, store, daemon, thread = switchable_daemon(tmp_path, 0.1)
    try:
        assert daemon.ready.wait(30)
        store.down = True
        run_writer({"db": db, "rate": 50, "txns": 5, "seed": 7})
        wait_for(lambda: daemon.uploader.outage is not None, timeout=30, what="the outage to begin")
        run_writer({"db": db, "rate": 100, "txns": 150, "seed": 8, "row_bytes": 3000, "id_base": 10**6})
        wait_for(lambda: not daemon.reader.unverified and daemon.state.current_bytes() < 64 << 10, timeout=30,
                 what="the last file to be cut")
        sizes = [p.size for p in daemon.state.sealed_files()]
        store.down = False
        wait_for(lambda: daemon.stats.backlog_txns == 0, timeout=30, what="the drain")
    finally:
        daemon.stop()
        thread.join(60)
    assert len(sizes) >= 5, sizes
    # past the limit by at most what arrives between two checks: a probe interval plus a read
    # pass (0.25 s each) at ~100 txn/s of ~16 KB of frames, with room for a slow box
    assert max(sizes) < (64 << 10) + 1_200_000, sizes
    r = Replica(open_storage(replica, create=False))
    assert len(r.generations[0].segments) >= len(sizes)
