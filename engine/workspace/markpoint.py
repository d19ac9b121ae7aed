"""Where a mark lands: SQLite's commit counter at the moment of the call, as a txid of the replica.

The daemon numbers transactions (txids); SQLite counts commits (the wal-index ``iChange``,
engine/sqlite/counter.py).  The daemon's state.json pairs the two at its uploaded point
(``uploaded_txid``, ``change``), and every record it ships after that point is exactly one
commit, proven by the same counter, unless it is flagged RESYNC (commits folded together) or LATE
(observed after a restart).  So, with U = the uploaded point read *before* the counter C:

    txid = U.txid + ((C - U.change) mod 2^32)

valid when none of the records U.txid+1 .. txid is RESYNC or LATE (checked in the segments
themselves; otherwise the mark is refused, never placed approximately).  Reading U first matters:
the counter can only have moved forward since, so a counter *behind* U.change means the
wal-index was rebuilt (the counter restarted) and the daemon has not reconciled yet; we wait.
Mapping forward from a point read before C also stays right if the counter restarts later.

The moment is the instant the counter is read: every transaction whose COMMIT had returned before
``mark`` was called is in, none that began after ``mark`` returned, and one committing while
``mark`` runs is wholly in or wholly out.  Then we wait (``timeout``) until the daemon has
uploaded that far and the objects are listed in the replica.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlparse

import zstandard

from ..daemon.state import READS_VERSIONS
from ..daemon.statefile import load_state_file
from ..errors import MarkError, MarkInexact, MarkTimeout, ObjectCorrupt, ObjectNotFound
from ..replica import layout
from ..replica.format import (
    FLAG_LATE,
    FLAG_RESYNC,
    SEGMENT_MAGIC,
    index_txns,
    open_envelope,
)
from ..replica.index import normalise_segments
from ..sqlite.counter import read_header
from ..sqlite.shm import ShmHeader
from ..storage import Storage
from .config import redact_url

MASK = 0xFFFFFFFF
HALF = 1 << 31
POLL_SECONDS = 0.05  # how often state.json (a local file) is re-read while waiting
LIST_POLL_SECONDS = 0.25  # how often the replica is listed while an uploaded object is not visible yet

Waiting = Callable[[str], None]


def same_replica(a: str, b: str) -> bool:
    """One replica location written two ways (credentials, file:// or a plain path)."""

    def norm(url: str) -> str:
        url = redact_url(url)
        parsed = urlparse(url)
        if parsed.scheme == "file":
            return "file://" + os.path.abspath(parsed.path)
        if not parsed.scheme:
            return "file://" + os.path.abspath(url)
        return url.rstrip("/")

    return norm(a) == norm(b)


@dataclass(frozen=True)
class Uploaded:
    """One reading of the daemon's state.json: its uploaded point."""

    txid: int
    commit_us: int
    change: int | None
    generation: str
    db_id: str
    position: tuple[int, int, int] | None  # (salt1, salt2, frame) of the WAL right after ``txid``


@dataclass(frozen=True)
class Point:
    """Where a mark lands."""

    txid: int
    commit_us: int
    generation: str
    db_id: str
    change: int  # the commit counter read at the call
    waited_for: int  # commits the daemon still had to upload when the counter was read


def read_uploaded(state_dir: str, db_path: str, replica_url: str) -> Uploaded | None:
    """The uploaded point in ``state_dir``, checked to be this database's and this replica's."""
    path = os.path.join(state_dir, "state.json")
    try:
        doc = load_state_file(state_dir)  # state.json, with the newer point its hashes log may carry
    except ValueError as exc:
        raise MarkError(f"{path} is unreadable ({exc})") from None
    if doc is None:
        return None
    if doc.get("version") not in READS_VERSIONS:
        raise MarkError(f"{path} has format version {doc.get('version')}; this build reads versions "
                        f"{', '.join(map(str, READS_VERSIONS))}")
    if os.path.abspath(str(doc.get("db_path"))) != os.path.abspath(db_path):
        raise MarkError(f"{path} is the state of {doc.get('db_path')}, not of {db_path}")
    if not same_replica(str(doc.get("replica")), replica_url):
        raise MarkError(f"{path} is the state of a daemon replicating to {redact_url(str(doc.get('replica')))}, "
                        f"not to {redact_url(replica_url)}")
    pos = doc.get("position")
    position = (int(pos["salt1"]), int(pos["salt2"]), int(pos["frame"])) if isinstance(pos, dict) else None
    return Uploaded(int(doc["uploaded_txid"]), int(doc["uploaded_ts_us"]), doc.get("change"), str(doc["generation"]),
                    str(doc["db_id"]), position)


class _Deadline:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.end = time.monotonic() + timeout

    @property
    def passed(self) -> bool:
        return time.monotonic() >= self.end


def _unchanged(before: Uploaded, hdr: ShmHeader, daemon_running: bool) -> bool:
    """With no commit counted since ``before``: is the database really still at that point?

    An equal counter alone is not proof when no daemon holds the database open: the wal-index can
    then be rebuilt by the next application (the counter restarts) and count its way back to the
    same value.  The WAL position proves it: the same salts and the same last frame.  After a
    checkpoint reset the WAL with no commit since (mxFrame 0, new salts) only the counter is left;
    it is trusted, as the daemon itself trusts it, while a daemon holds the database open (the
    wal-index cannot be rebuilt under an open connection).
    """
    if before.position is not None and before.position == (hdr.salt1, hdr.salt2, hdr.max_frame):
        return True
    return hdr.max_frame == 0 and daemon_running


def locate_point(storage: Storage, db_path: str, state_dir: str, replica_url: str, timeout: float,
                 waiting: Waiting | None = None, daemon_hint: str = "", daemon_running: bool = False) -> Point:
    """The txid holding exactly the commits SQLite had counted when this was called (see the
    module docstring); waits up to ``timeout`` seconds for the daemon to upload it."""
    deadline = _Deadline(timeout)
    told = False
    while True:
        before = read_uploaded(state_dir, db_path, replica_url)
        hdr = read_header(db_path)
        why = _not_yet(before, hdr, daemon_running)
        if why is None:
            assert before is not None and before.change is not None
            ahead = (hdr.change - before.change) & MASK
            txid = before.txid + ahead
            if ahead and waiting is not None and not told:
                waiting(f"waiting for the daemon to upload {ahead} more transaction(s), through txid {txid} "
                        f"(timeout {timeout:g}s)")
                told = True
            if _wait_uploaded(state_dir, db_path, replica_url, before, hdr.change, txid, deadline, daemon_hint):
                commit_us = _check_records(storage, before, txid, deadline, daemon_hint)
                return Point(txid, commit_us, before.generation, before.db_id, hdr.change, ahead)
            # A new generation began meanwhile: read the counter again (still during the call).
            why = "the daemon started a new generation"
        if deadline.passed:
            raise MarkTimeout(f"timed out after {timeout:g}s: {why}; no mark was written{daemon_hint}")
        time.sleep(POLL_SECONDS)


def _not_yet(before: Uploaded | None, hdr: ShmHeader, daemon_running: bool) -> str | None:
    """Why the counter cannot be mapped from ``before`` yet (None: it can)."""
    if before is None:
        return "the daemon has not uploaded anything yet"
    if before.change is None:
        return "the daemon's uploaded point carries no commit counter yet"
    ahead = (hdr.change - before.change) & MASK
    if ahead >= HALF:
        return ("SQLite's commit counter is behind the daemon's uploaded point (the wal-index was rebuilt) and the "
                "daemon has not reconciled yet")
    if ahead == 0 and not _unchanged(before, hdr, daemon_running):
        return ("SQLite's commit counter equals the daemon's uploaded point but the WAL does not: the database may "
                "have been changed while no daemon had it open; start the daemon so it reconciles")
    return None


def _wait_uploaded(state_dir: str, db_path: str, replica_url: str, before: Uploaded, counter: int, txid: int,
                   deadline: _Deadline, daemon_hint: str) -> bool:
    """Wait until state.json says ``txid`` is uploaded in ``before``'s generation; False when the
    daemon started a new generation meanwhile (the old one's tail may never be uploaded).

    If the daemon's counter reaches ours in fewer transactions than commits, records were folded
    (a RESYNC): refused at once instead of waiting for transactions that will never be ``txid``."""
    while True:
        now = read_uploaded(state_dir, db_path, replica_url)
        if now is None or now.generation != before.generation:
            return False
        if now.txid >= txid:
            return True
        if now.change is not None and ((now.change - counter) & MASK) < HALF:
            raise MarkInexact(
                f"cannot place the mark exactly: the daemon uploaded through SQLite's commit {now.change} (the "
                f"marked moment is commit {counter}) in {now.txid - before.txid} transaction(s) for "
                f"{(now.change - before.change) & MASK} commits since txid {before.txid}: it folded commits it "
                "could not observe one by one into a RESYNC record, so no single transaction is the marked "
                "moment; no mark was written. Run `walrewind mark` again: the next mark is exact once the daemon "
                "is tailing live again"
            )
        if deadline.passed:
            raise MarkTimeout(
                f"timed out after {deadline.timeout:g}s waiting for the daemon to upload txid {txid} "
                f"({txid - before.txid} transaction(s) after txid {before.txid}; uploaded so far: txid {now.txid}); "
                f"no mark was written{daemon_hint}"
            )
        time.sleep(POLL_SECONDS)


def _check_records(storage: Storage, before: Uploaded, txid: int, deadline: _Deadline, daemon_hint: str) -> int:
    """Prove txids before.txid+1 .. txid are one commit each, from the segments themselves, and
    return ``txid``'s commit time.  With nothing after ``before``, the object holding ``before``
    must be listed (a new generation's base snapshot is uploaded after state.json names it)."""
    while True:
        snapshots, segments = _list_generation(storage, before.generation)
        if txid == before.txid:
            if any(s.txid == txid for s in snapshots) or any(s.first_txid <= txid <= s.last_txid for s in segments):
                return before.commit_us
        else:
            chain = _chain(segments, before.txid + 1, txid)
            if chain is not None:
                return _scan(storage, chain, before, txid)
        if deadline.passed:
            raise MarkTimeout(f"timed out after {deadline.timeout:g}s: the daemon reports txid {txid} uploaded but "
                              f"{storage.url} does not list it yet; no mark was written{daemon_hint}")
        time.sleep(LIST_POLL_SECONDS)


def _list_generation(storage: Storage, generation: str) -> tuple[list[layout.SnapshotKey], list[layout.SegmentKey]]:
    snapshots: list[layout.SnapshotKey] = []
    segments: list[layout.SegmentKey] = []
    for info in storage.list(f"generations/{generation}/"):
        parsed = layout.parse_key(info.key)
        if isinstance(parsed, layout.SnapshotKey):
            snapshots.append(parsed)
        elif isinstance(parsed, layout.SegmentKey):
            segments.append(parsed)
    return snapshots, normalise_segments(segments)[0]


def _chain(segments: list[layout.SegmentKey], first: int, last: int) -> list[layout.SegmentKey] | None:
    """Segments covering txids first..last without a gap, or None if some are not listed."""
    out: list[layout.SegmentKey] = []
    want = first
    for seg in segments:
        if seg.last_txid < want or seg.first_txid > want:
            continue
        out.append(seg)
        want = seg.last_txid + 1
        if want > last:
            return out
    return None


def _scan(storage: Storage, chain: list[layout.SegmentKey], before: Uploaded, txid: int) -> int:
    want = before.txid + 1
    commit_us = before.commit_us
    for seg in chain:
        where = f"{storage.url}/{seg.key}"
        try:
            blob = storage.get(seg.key)
        except ObjectNotFound:
            raise MarkError(f"{where} vanished while the mark was being placed (compaction?); try again") from None
        header, payload = open_envelope(blob, SEGMENT_MAGIC, where)
        if header.get("db_id") not in (None, before.db_id):
            raise MarkError(f"{where} belongs to database {header.get('db_id')}, not {before.db_id}")
        try:
            raw = zstandard.ZstdDecompressor().decompress(payload, max_output_size=header["raw_length"])
        except zstandard.ZstdError as exc:
            raise ObjectCorrupt(f"{where}: cannot decompress payload ({exc})") from None
        for ref in index_txns(raw, header["page_size"], where):
            if ref.txid < want or ref.txid > txid:
                continue
            if ref.txid != want:
                raise ObjectCorrupt(f"{where}: expected txid {want}, found {ref.txid}")
            if ref.flags & (FLAG_RESYNC | FLAG_LATE):
                kind = "RESYNC" if ref.flags & FLAG_RESYNC else "LATE"
                raise MarkInexact(
                    f"cannot place the mark exactly: transaction {ref.txid} between the daemon's last uploaded point "
                    f"(txid {before.txid}) and the marked moment is a {kind} record ("
                    + ("commits the daemon could not observe one by one, folded together"
                       if kind == "RESYNC" else "commits observed only after a daemon restart")
                    + "), so SQLite's commit counter cannot be mapped to one transaction; no mark was written. "
                    "Run `walrewind mark` again: the next mark is exact once the daemon is tailing live again"
                )
            commit_us = ref.commit_ts_us
            want += 1
    if want != txid + 1:
        raise ObjectCorrupt(f"{storage.url}: segments {chain[0].key}..{chain[-1].key} do not hold txids "
                            f"{before.txid + 1}..{txid}")
    return commit_us
