"""Page hashes computed once: recorded changes replay exactly, spool records carry them, and the
uploaded hashes persist as a base file plus an append-only log that survives crashes."""

from __future__ import annotations

import json
import os
import random
import struct
import zlib

import pytest
from walrewind.engine.daemon import hashlog
from walrewind.engine.daemon.spool import SpooledTxn, StateDir
from walrewind.engine.daemon.spoolrecord import (
    Batch,
    decode_body,
    encode_body,
    txn_spans,
)
from walrewind.engine.errors import DaemonError
from walrewind.engine.replica.format import TxnRecord
from walrewind.engine.sqlite.pagehash import PageHashes, new_changes
from walrewind.engine.sqlite.walfile import WalPosition

PAGE = 512


def random_txns(seed: int, count: int) -> list[tuple[dict[int, bytes], int]]:
    """Transactions that grow, shrink (a VACUUM) and regrow the database, some writing past
    their own db_pages (SQLite can leave such frames; they must be ignored)."""
    rng = random.Random(seed)
    size, out = 5, []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.15:
            size = max(1, size - rng.randrange(1, 8))
        elif roll < 0.5:
            size += rng.randrange(1, 6)
        pages = {rng.randrange(1, size + 3): rng.randbytes(PAGE) for _ in range(rng.randrange(0, 5))}
        out.append((pages, size))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_recorded_changes_replay_to_the_same_hashes(seed):
    live, replica = PageHashes(PAGE), PageHashes(PAGE)
    for pages, db_pages in random_txns(seed, 60):
        changes = new_changes()
        checksum = live.apply(pages, db_pages, changes)
        assert replica.apply_changes(*changes, db_pages) == checksum
        assert replica.hashes == live.hashes


@pytest.mark.parametrize("seed", range(6))
def test_net_changes_of_many_transactions_replay_in_one_step(seed):
    live = PageHashes(PAGE)
    txns = random_txns(seed, 90)
    for pages, db_pages in txns[:20]:
        live.apply(pages, db_pages)
    before = live.copy()
    touched: set[int] = set()
    for pages, db_pages in txns[20:]:
        changes = new_changes()
        live.apply(pages, db_pages, changes)
        touched.update(changes[0])
    before.apply_changes(*live.net_changes(touched), live.db_pages)
    assert before.hashes == live.hashes and before.checksum == live.checksum


def test_changes_past_the_end_are_refused():
    hashes = PageHashes(PAGE)
    hashes.apply({1: bytes(PAGE)}, 1)
    with pytest.raises(ValueError):
        hashes.apply_changes([3], [7], 3)


def test_spool_record_round_trip_with_changes_and_old_json_records():
    pos = WalPosition(7, 8, 99, (1, 2), PAGE, True)
    changes = new_changes()
    PageHashes(PAGE).apply({1: b"a" * PAGE, 3: b"b" * PAGE}, 4, changes)
    txns = b"".join(TxnRecord(t, t * 10, 4, 0, t, {1: b"a" * PAGE}).encode() for t in (5, 6))
    batch = Batch(pos, 123, 456, changes, 5, 2, 50, 60, 4, 6)
    got, raw = decode_body(encode_body(batch, txns))
    assert raw == txns and (got.position, got.through_ts_us, got.change) == (pos, 123, 456)
    assert (got.first_txid, got.count, got.first_ts_us, got.last_ts_us, got.db_pages, got.db_checksum) == (5, 2, 50, 60, 4, 6)
    assert list(got.changes[0]) == [1, 2, 3, 4] and list(got.changes[1]) == list(changes[1])
    assert [(t, ts) for t, ts, _s, _e in txn_spans(raw, PAGE)] == [(5, 50), (6, 60)]
    got, raw = decode_body(encode_body(Batch(None, 5, None, None, 1, 1, 0, 0, 0, 0), b"x"))
    assert (got.position, got.change, got.changes, raw) == (None, None, None, b"x")
    # A record spooled by an earlier version (JSON meta, one transaction, no page hashes) is still read.
    old_meta = json.dumps({"pos": pos.to_json(), "through": 9, "change": 3}).encode()
    one = TxnRecord(8, 80, 4, 0, 77, {2: b"c" * PAGE}).encode()
    got, raw = decode_body(struct.pack("<H", len(old_meta)) + old_meta + one)
    assert (got.position, got.through_ts_us, got.change, got.changes, raw) == (pos, 9, 3, None, one)
    assert (got.first_txid, got.count, got.last_ts_us, got.db_checksum) == (8, 1, 80, 77)


def test_spooled_changes_reach_the_reader_of_the_file(tmp_path):
    state = StateDir(str(tmp_path))
    hashes = PageHashes(PAGE)
    items = []
    for txid, (pages, db_pages) in enumerate(random_txns(3, 10), start=1):
        changes = new_changes()
        checksum = hashes.apply(pages, db_pages, changes)
        items.append(SpooledTxn(TxnRecord(txid, txid, db_pages, 0, checksum, pages), None, txid, None, changes))
    for item in items:  # a batch of one: its own changes
        state.append([item])
    touched = set(i for item in items[:4] for i in item.changes[0])
    partial = PageHashes(PAGE)
    for item in items[:4]:
        partial.apply_changes(*item.changes, item.record.db_pages)
    state.seal()
    (piece,) = state.sealed_files()
    replica = PageHashes(PAGE)
    for rec in piece.records():
        assert replica.apply_changes(*rec.batch.changes, rec.batch.db_pages) == rec.batch.db_checksum
    assert replica.hashes == hashes.hashes
    # Several transactions in one batch: the net changes the caller passes.
    state2 = StateDir(str(tmp_path / "two"))
    state2.append(items[:4], changes=partial.net_changes(touched))
    state2.seal()
    (rec,) = list(state2.sealed_files()[0].records())
    again = PageHashes(PAGE)
    assert again.apply_changes(*rec.batch.changes, rec.batch.db_pages) == items[3].record.db_checksum
    assert (rec.txid, rec.last_txid) == (1, 4)


def save_uploads(state: StateDir, seed: int, uploads: int, per_upload: int = 3, point=None):
    """Upload-like saves: a full save at txid 1, then one log record per upload.

    Without ``point`` (txid -> the other state keys) every save changes state.json's keys (only
    ``uploaded_txid``): each record is followed by a state.json, as a version 1 daemon did."""
    hashes = PageHashes(PAGE)
    txns = random_txns(seed, 1 + uploads * per_upload)
    hashes.apply(*txns[0])
    extra = point or (lambda txid: {"txid_copy": txid})
    state.save_state(dict(extra(1), uploaded_txid=1), hashes)
    txid = 1
    snapshots = {1: hashes.copy()}
    for _ in range(uploads):
        touched: set[int] = set()
        first = txid + 1
        for _ in range(per_upload):
            txid += 1
            changes = new_changes()
            hashes.apply(*txns[txid - 1], changes)
            touched.update(changes[0])
        state.save_state(dict(extra(txid), uploaded_txid=txid), hashes, hashes.net_changes(touched), first)
        snapshots[txid] = hashes.copy()
    return hashes, snapshots


def test_uploads_append_to_a_log_instead_of_rewriting_every_hash(tmp_path):
    state = StateDir(str(tmp_path))
    hashes, _ = save_uploads(state, 1, 20)
    base = hashlog.base_name(1)
    assert sorted(os.listdir(state.path)) == [base, hashlog.log_name(base), "spool", "state.json"]
    assert json.loads((tmp_path / "state.json").read_text())["hashes"] == base
    for loader in (state, StateDir(state.path)):  # the same object, and a fresh start
        loaded = loader.load_hashes()
        assert loaded.hashes == hashes.hashes and loaded.checksum == hashes.checksum


def test_uploads_advance_the_point_in_the_log_and_leave_state_json_alone(tmp_path):
    """State version 2: an upload is one log append; state.json keeps the base's point, and the
    point a load returns is the log's last record's (the newest of the two)."""
    state = StateDir(str(tmp_path))
    pos = WalPosition(7, 8, 40, (11, 12), PAGE, False)
    hashes, snapshots = save_uploads(state, 5, 6, point=lambda txid: {
        "generation": "g", "uploaded_ts_us": 1000 + txid, "change": txid * 2,
        "position": dict(pos.to_json(), frame=txid)})
    on_disk = json.loads((tmp_path / "state.json").read_text())
    assert on_disk["uploaded_txid"] == 1 and on_disk["generation"] == "g"  # written once, at the base
    loaded = StateDir(state.path).load_state()
    assert loaded["uploaded_txid"] == 19 and loaded["uploaded_ts_us"] == 1019 and loaded["change"] == 38
    assert WalPosition.from_json(loaded["position"]) == WalPosition(7, 8, 19, (11, 12), PAGE, False)
    assert StateDir(state.path).load_hashes().hashes == snapshots[19].hashes
    # Another key changing (a version 1 directory being upgraded, say) rewrites state.json too.
    more = new_changes()
    hashes.apply({2: b"q" * PAGE}, hashes.db_pages, more)
    state.save_state({"generation": "g", "version": 2, "uploaded_txid": 20, "uploaded_ts_us": 5, "change": None,
                      "position": None}, hashes, more, 20)
    on_disk = json.loads((tmp_path / "state.json").read_text())
    assert (on_disk["version"], on_disk["uploaded_txid"]) == (2, 20)
    assert StateDir(state.path).load_state() == on_disk


def test_a_crash_before_the_log_append_keeps_the_older_point(tmp_path):
    """A crash after the segment's upload but before its log record (or with the record torn):
    the point before it, and its hashes; the spool file is still there and uploads again."""
    state = StateDir(str(tmp_path))
    _hashes, snapshots = save_uploads(state, 6, 5, point=lambda txid: {"uploaded_ts_us": txid})
    log = tmp_path / hashlog.log_name(hashlog.base_name(1))
    data = log.read_bytes()
    length = struct.unpack_from("<I", data, 8 + struct.unpack_from("<I", data, 0)[0])[0]
    second_end = 8 + struct.unpack_from("<I", data, 0)[0] + 8 + length
    log.write_bytes(data[: second_end + 11])  # the third record torn
    again = StateDir(state.path)
    assert again.load_state()["uploaded_txid"] == 7
    assert again.load_hashes().hashes == snapshots[7].hashes
    assert log.read_bytes() == data[:second_end]  # the torn tail is cut off


def test_an_old_log_record_past_the_saved_point_is_ignored_and_cut_off(tmp_path):
    """Version 1 records carry no point: one past state.json's (a crash between the two writes of
    a version 1 daemon) is ignored, as that version did, and cut off."""
    state = StateDir(str(tmp_path))
    _hashes, snapshots = save_uploads(state, 2, 6)
    log = tmp_path / hashlog.log_name(hashlog.base_name(1))
    size = log.stat().st_size
    doc = json.loads((tmp_path / "state.json").read_text())
    assert doc["uploaded_txid"] == 19
    loaded = StateDir(state.path).load_hashes()
    more = new_changes()
    loaded.apply({2: b"z" * PAGE}, loaded.db_pages, more)
    with open(log, "ab") as f:
        f.write(hashlog.encode(20, 20, loaded.db_pages, loaded.checksum, more))  # no point: version 1
    again = StateDir(state.path)
    assert again.load_state()["uploaded_txid"] == 19
    assert again.load_hashes().hashes == snapshots[19].hashes
    assert log.stat().st_size == size


def test_a_torn_log_tail_is_cut_and_a_missing_record_refuses(tmp_path):
    state = StateDir(str(tmp_path))
    _hashes, snapshots = save_uploads(state, 3, 5)
    log = tmp_path / hashlog.log_name(hashlog.base_name(1))
    data = log.read_bytes()
    log.write_bytes(data + b"\x40\x00\x00\x00garbage")
    assert StateDir(state.path).load_hashes().hashes == snapshots[16].hashes
    assert log.read_bytes() == data
    # Dropping the last whole record leaves the hashes short of state.json's point: refused.
    length = struct.unpack_from("<I", data, 0)[0]
    first = data[: 8 + length]
    assert zlib.crc32(first[8:]) == struct.unpack_from("<I", data, 4)[0]
    log.write_bytes(first)
    with pytest.raises(DaemonError, match="damaged"):
        StateDir(state.path).load_hashes()


def test_the_log_is_compacted_into_a_new_base_once_it_is_as_large(tmp_path, monkeypatch):
    monkeypatch.setattr(hashlog, "MIN_COMPACT_BYTES", 300)
    state = StateDir(str(tmp_path))
    hashes, _ = save_uploads(state, 4, 40)
    names = sorted(n for n in os.listdir(state.path) if n.startswith("hashes-"))
    base = json.loads((tmp_path / "state.json").read_text())["hashes"]
    assert base != hashlog.base_name(1)  # compacted at least once
    assert set(names) <= {base, hashlog.log_name(base)}  # older bases and logs deleted
    loaded = StateDir(state.path).load_hashes()
    assert loaded.hashes == hashes.hashes and loaded.checksum == hashes.checksum



def test_the_log_is_flushed_before_a_spool_file_goes_not_at_every_upload(tmp_path, monkeypatch):
    """An upload appends its point without an fdatasync (docs/DESIGN.md §5): a point lost in an
    OS crash only means an older one whose spool records are still there.  So the log is made
    durable before a spool file is removed (its records are then no longer on disk anywhere but
    the replica), when it is closed, and when a start reads it (a killed daemon's appends)."""
    events: list[tuple[str, str]] = []
    real_sync, real_unlink = os.fdatasync, os.unlink

    def fdatasync(fd: int) -> None:
        events.append(("sync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        real_sync(fd)

    def unlink(path, *args, **kwargs) -> None:
        events.append(("unlink", os.path.basename(path)))
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(os, "unlink", unlink)
    state = StateDir(str(tmp_path))
    log = hashlog.log_name(hashlog.base_name(1))
    _hashes, snapshots = save_uploads(state, 7, 10, point=lambda txid: {"uploaded_ts_us": txid})
    assert ("sync", log) not in events  # ten uploads, no flush of the log
    hashes = PageHashes(PAGE)
    pages, db_pages = random_txns(8, 1)[0]
    changes = new_changes()
    checksum = hashes.apply(pages, db_pages, changes)
    state.append([SpooledTxn(TxnRecord(32, 32, db_pages, 0, checksum, pages), None, 32, None, changes)])
    state.seal(close=True)
    (piece,) = state.sealed_files()
    spool_file = os.path.basename(piece.path)
    events.clear()
    state.remove(piece)
    assert events == [("sync", log), ("unlink", spool_file)]
    events.clear()
    again = StateDir(state.path)  # a start after a kill: what it reads is made durable first
    assert again.load_state()["uploaded_txid"] == 31
    assert again.load_hashes().hashes == snapshots[31].hashes
    assert ("sync", log) in events
