"""The uploaded point on disk: state.json, and the hashes base and log of that point.

    <state>/state.json         identity, generation, and the uploaded point of the hashes base
    <state>/hashes-<txid>.bin  every page's hash at that point (named by state.json)
    <state>/hashes-<txid>.log  one record per upload since: the pages it changed and the point
                               after it (hashlog.py)

Since state version 2 an upload advances the point with one log append and one fdatasync;
state.json is replaced only when another of its keys changes (a new base, a new generation, a
version 1 directory's first upload).  Every reader takes the newest of the two points
(:func:`load_state_file`).  docs/DESIGN.md section 5 has the crash argument.
"""

from __future__ import annotations

import json
import os

from ..fsutil import atomic_write, fsync_dir
from ..sqlite.pagehash import PageChanges, PageHashes
from . import hashlog


def _fixed(state: dict) -> dict:
    """A state's keys that only state.json holds (the point rides on the hashes log)."""
    return {k: v for k, v in state.items() if k not in hashlog.POINT_KEYS and k != "hashes"}


def load_state_file(path: str, merge: bool = True) -> dict | None:
    """``<path>/state.json`` with (``merge``) the newest uploaded point of its hashes log; for
    every reader of a state directory (the daemon, ``walrewind mark``)."""
    try:
        with open(os.path.join(path, "state.json"), "rb") as f:
            state = json.loads(f.read())
    except FileNotFoundError:
        return None
    name = state.get("hashes", "")
    base_txid = hashlog.base_txid(name)
    if merge and base_txid is not None:
        newer = hashlog.newest_point(os.path.join(path, hashlog.log_name(name)), base_txid,
                                     state.get("uploaded_txid", base_txid))
        if newer is not None:
            state.update(newer)
    return state


def _state_json(state: dict) -> bytes:
    # No indent: json's C encoder (with indent, the pure-Python one took ~0.4 ms per upload)
    return json.dumps(state, separators=(",", ":")).encode()


class UploadedPoint:
    """StateDir's uploaded side (a mixin: ``path`` and the attributes set by ``_init_point``)."""

    path: str

    def _init_point(self) -> None:
        # The hashes base file state.json names, its size, and the size of its log (hashlog.py)
        self._hash_base: str | None = None
        self._hash_base_bytes = 0
        self._hash_log_bytes = 0
        self._hash_log: int | None = None  # the base's log, open for appends
        self._log_dirty = False  # appended since its last fdatasync (see sync_log)
        self._saved_fixed: dict | None = None  # state.json's keys other than the point, as on disk

    def load_state(self) -> dict | None:
        """state.json with the newest uploaded point: its own, or a later one the hashes log
        carries (hashlog.py: uploads advance the point there, state.json only at a new base)."""
        state = load_state_file(self.path)
        if state is not None:
            self._saved_fixed = _fixed(state)
        return state

    def save_state(self, state: dict, hashes: PageHashes, changes: PageChanges | None = None,
                   first_txid: int | None = None) -> None:
        """Persist the uploaded point and the page hashes *of that same point*.

        With ``changes`` (the pages changed by txids ``first_txid``..``uploaded_txid``, net),
        they are appended with the point to the hashes log of the current base (hashlog.py): one
        append and one fdatasync, and state.json is replaced only when another of its keys
        changed (the generation, an older version).  Otherwise, or when the log has grown as
        large as the base, the whole table goes to a new base file named after the point
        (``hashes-<txid>.bin``), and state.json names it; it is replaced last, so a crash
        between the writes never pairs a state with hashes of another point.
        """
        txid = state.get("uploaded_txid", 0)
        base = self._hash_base
        if (changes is not None and base is not None and first_txid is not None
                and self._hash_log_bytes < max(hashlog.MIN_COMPACT_BYTES, self._hash_base_bytes)):
            record = hashlog.encode(first_txid, txid, hashes.db_pages, hashes.checksum, changes, state)
            hashlog.write(self._log_fd(base), record, sync=False)  # fdatasync: sync_log
            self._hash_log_bytes += len(record)
            self._log_dirty = True
            fixed = _fixed(state)
            if fixed != self._saved_fixed:
                atomic_write(os.path.join(self.path, "state.json"), _state_json(dict(state, hashes=base)))
                self._saved_fixed = fixed
            return
        self._close_log()
        name = hashlog.base_name(txid)
        blob = hashes.to_bytes()
        atomic_write(os.path.join(self.path, name), blob)
        log = os.path.join(self.path, hashlog.log_name(name))
        if os.path.exists(log):
            os.unlink(log)  # a leftover of an earlier base at this same txid
        # The new base's log exists before state.json names the base: state.json's directory
        # fsync makes the log's name durable, and no upload's append has to.
        self._log_fd(name, create=True)
        atomic_write(os.path.join(self.path, "state.json"), _state_json(dict(state, hashes=name)))
        self._saved_fixed = _fixed(state)
        for other in os.listdir(self.path):
            if other.startswith("hashes-") and other.endswith((".bin", ".log")) and other != name \
                    and other != hashlog.log_name(name):
                os.unlink(os.path.join(self.path, other))
        self._hash_base, self._hash_base_bytes, self._hash_log_bytes = name, len(blob), 0

    def _log_fd(self, base: str, create: bool = False) -> int:
        """The base's hashes log, kept open for the appends; a log this creates outside a new
        base (a state directory from before logs) has its directory entry fsynced here."""
        if self._hash_log is not None:
            return self._hash_log
        path = os.path.join(self.path, hashlog.log_name(base))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        except FileNotFoundError:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if not create:
                fsync_dir(self.path)
        self._hash_log = fd
        return fd

    def sync_log(self) -> None:
        """Make the points appended to the hashes log durable.  Not per upload: a point lost in
        an operating-system crash only takes the uploaded point back to an older one whose spool
        records are still on disk (fsynced before their upload; a spool file is deleted only
        after this ran), and uploading them again gives a segment that covers the ones already
        there, with the same records (docs/DESIGN.md §5, "Crash windows")."""
        if self._log_dirty and self._hash_log is not None:
            os.fdatasync(self._hash_log)
        self._log_dirty = False

    def _close_log(self) -> None:
        if self._hash_log is not None:
            self.sync_log()
            os.close(self._hash_log)
            self._hash_log = None

    def load_hashes(self) -> PageHashes:
        """The page hashes at the uploaded point: its base file plus the base's log."""
        saved = load_state_file(self.path, merge=False) or {}
        state = self.load_state() or {}
        name = state.get("hashes", "hashes.bin")
        with open(os.path.join(self.path, name), "rb") as f:
            blob = f.read()
        hashes = PageHashes.from_bytes(blob)
        log_bytes = 0
        self._close_log()
        base_txid = hashlog.base_txid(name)
        if base_txid is not None:
            log = os.path.join(self.path, hashlog.log_name(name))
            log_bytes = hashlog.replay(log, hashes, base_txid, state.get("uploaded_txid", base_txid),
                                       saved.get("uploaded_txid", base_txid))
            self._hash_base = name
            if os.path.exists(log):  # a killed daemon's appends may not be durable yet: they are made
                os.fdatasync(self._log_fd(name))  # durable before this point lets a spool file go
        else:
            self._hash_base = None  # a single hashes.bin (before logs): the next save writes a base
        self._hash_base_bytes, self._hash_log_bytes = len(blob), log_bytes
        return hashes
