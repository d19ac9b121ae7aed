"""Crash windows of the uploaded point (state version 2: the point advances in the hashes log,
engine/daemon/hashlog.py) and of the spool, checked on a real daemon and restore.

A crash is simulated by the state directory it would leave: spool files an upload did not get to
remove, a hashes log whose last records never reached the disk (or are torn), a state.json
older than the log.  The restarted daemon must continue the same history: every commit once, no
hole, no duplicate txid, and the latest restore is exactly the database."""

from __future__ import annotations

import json
import os
import struct

from harness import (
    DaemonThread,
    assert_one_record_per_commit,
    create_db,
    judge,
    read_log,
    run_writer,
    wait_for,
)
from walrewind.engine.daemon import hashlog, spool
from walrewind.engine.daemon.spool import StateDir
from walrewind.engine.daemon.statefile import load_state_file
from walrewind.engine.replica.index import Replica
from walrewind.engine.restore.restorer import restore
from walrewind.engine.storage import open_storage


def start(db: str, replica: str, state: str) -> DaemonThread:
    """A daemon on a thread of the test (file replica, an upload every 50 ms), once it is ready."""
    daemon = DaemonThread(db, replica, state, upload_interval=0.05)
    daemon.__enter__()
    return daemon


def caught_up(daemon: DaemonThread) -> bool:
    d = daemon.shipper
    return d.stats.uploaded_txid == d.stats.last_txid and not d.reader.unverified


def segment_ranges(replica: str) -> list[tuple[int, int]]:
    r = Replica(open_storage(replica, create=False))
    assert len(r.generations) == 1
    return [(s.first_txid, s.last_txid) for s in r.generations[0].segments]


def check_history(tmp_path, replica: str, logs: list[str]) -> None:
    """One record per commit, segments that neither overlap nor leave a hole, and the latest
    restore byte-exact (its checksum is the writer's last)."""
    txns = [t for log in logs for t in read_log(log)[0]]
    assert_one_record_per_commit(replica, txns)
    ranges = segment_ranges(replica)
    assert all(b[0] == a[1] + 1 for a, b in zip(ranges, ranges[1:])), ranges
    out = str(tmp_path / "latest.db")
    result = restore(open_storage(replica, create=False), out)
    v = judge(out, result.page_size, txns, txns[0]["checksum"], txns[-1]["end"] + 10**7)
    assert v.restored_index == txns[-1]["i"]


def write(db: str, log: str, seed: int, txns: int, id_base: int = 0) -> None:
    run_writer({"db": db, "log": log, "checksums": True, "rate": 100, "txns": txns, "seed": seed, "id_base": id_base})


def first_run(tmp_path, seed: int):
    """A daemon's first run over 40 commits, uploaded and stopped: (db, replica, state dir, daemon)."""
    db, replica, state = (str(tmp_path / n) for n in ("app.db", "replica", "state"))
    create_db(db)
    first = start(db, replica, state)
    write(db, str(tmp_path / "log1"), seed, 40)
    wait_for(lambda: caught_up(first), what="the first run to upload")
    first.stop()
    return db, replica, state, first


def test_restart_resumes_from_the_log_when_state_json_is_older(tmp_path):
    db, replica, state, first = first_run(tmp_path, 41)
    uploaded = first.shipper.stats.uploaded_txid  # the final sync may have uploaded one more
    on_disk = json.loads(open(os.path.join(state, "state.json")).read())
    assert on_disk["uploaded_txid"] < uploaded  # state.json was written at the base only
    assert load_state_file(state)["uploaded_txid"] == uploaded
    (left,) = os.listdir(os.path.join(state, "spool"))  # the file being appended to: all of it uploaded
    assert [r.last_txid for r in StateDir.iter_raw(os.path.join(state, "spool", left))][-1] == uploaded
    second = start(db, replica, state)
    assert second.shipper.stats.uploaded_txid == uploaded
    write(db, str(tmp_path / "log2"), 42, 30, id_base=10**6)
    wait_for(lambda: caught_up(second), what="the second run to upload")
    second.stop()
    check_history(tmp_path, replica, [str(tmp_path / "log1"), str(tmp_path / "log2")])


def test_crash_after_uploads_whose_log_records_were_lost(tmp_path, monkeypatch):
    """Segments in the replica, their hashes-log records lost (never synced, or the last one
    torn) and their spool files still there (never removed): the restart uploads those files
    again as the same segments (a no-op) and goes on; nothing is duplicated or skipped."""
    db, replica, state = (str(tmp_path / n) for n in ("app.db", "replica", "state"))
    create_db(db)
    removed: list[str] = []
    kept = str(tmp_path / "kept")
    os.mkdir(kept)
    real_remove = StateDir.remove

    def remove(self, piece):  # keep a link to every spool file: its unlink is lost in the crash
        try:
            os.link(piece.path, os.path.join(kept, os.path.basename(piece.path)))
        except FileExistsError:
            pass
        removed.append(piece)
        real_remove(self, piece)

    monkeypatch.setattr(spool, "ROLL_BYTES", 3000)  # files roll (and are removed) every few uploads
    monkeypatch.setattr(StateDir, "remove", remove)
    first = start(db, replica, state)
    write(db, str(tmp_path / "log1"), 43, 40)
    wait_for(lambda: caught_up(first), what="the first run to upload")
    first.stop()
    monkeypatch.undo()
    assert len(removed) >= 5
    for name in os.listdir(kept):
        if not os.path.exists(os.path.join(state, "spool", name)):
            os.rename(os.path.join(kept, name), os.path.join(state, "spool", name))
    base = json.loads(open(os.path.join(state, "state.json")).read())["hashes"]
    log = os.path.join(state, hashlog.log_name(base))
    data = open(log, "rb").read()
    ends, off = [], 0
    while off < len(data):
        off += 8 + struct.unpack_from("<I", data, off)[0]
        ends.append(off)
    assert len(ends) >= 5
    keep = ends[len(ends) // 2]
    with open(log, "wb") as f:  # the second half of the records lost, and the next one torn
        f.write(data[:keep] + data[keep : keep + 20])
    point = load_state_file(state)["uploaded_txid"]
    assert point < max(last for _first, last in segment_ranges(replica))
    second = start(db, replica, state)
    assert second.shipper.stats.uploaded_txid >= point
    write(db, str(tmp_path / "log2"), 44, 30, id_base=10**6)
    wait_for(lambda: caught_up(second), what="the second run to upload")
    second.stop()
    check_history(tmp_path, replica, [str(tmp_path / "log1"), str(tmp_path / "log2")])
    assert len(os.listdir(os.path.join(state, "spool"))) <= 1  # the leftovers were uploaded again and removed


def test_an_os_crash_that_loses_unflushed_log_records_uploads_them_again_as_one_covering_segment(tmp_path):
    """The hashes log is not flushed per upload, only before a spool file is deleted (and at a
    close): an OS crash can take the uploaded point back over several uploads.  Their records are
    still in the spool file, so the restart uploads it again from the older point on as one
    segment that covers those already in the replica; readers take the covering one, and the
    history stays one record per commit, restorable exactly."""
    db, replica, state, first = first_run(tmp_path, 45)
    before = segment_ranges(replica)
    assert len(before) >= 4
    base = json.loads(open(os.path.join(state, "state.json")).read())["hashes"]
    log = os.path.join(state, hashlog.log_name(base))
    data = open(log, "rb").read()
    first_end = 8 + struct.unpack_from("<I", data, 0)[0]
    with open(log, "wb") as f:  # what an OS crash leaves of appends never flushed: the first one only
        f.write(data[:first_end])
    point = load_state_file(state)["uploaded_txid"]
    assert point < before[-1][1]
    second = start(db, replica, state)
    wait_for(lambda: caught_up(second), what="the spool uploaded again")
    covering = [s for s in Replica(open_storage(replica, create=False)).generations[0].segments
                if s.first_txid == point + 1]
    assert covering and covering[0].last_txid >= before[-1][1], (point, before)
    write(db, str(tmp_path / "log2"), 46, 20, id_base=10**6)
    wait_for(lambda: caught_up(second), what="the second run to upload")
    second.stop()
    check_history(tmp_path, replica, [str(tmp_path / "log1"), str(tmp_path / "log2")])
