"""The daemon's local, fsynced memory: what it has read but not yet uploaded, and where it stands.

    <state>/state.json     last *uploaded* point: generation, txid, WAL position (atomic replace)
    <state>/hashes-<txid>.bin  per-page hashes of the database at that point (named by state.json)
    <state>/spool/*.log    transactions read since, appended + fsynced by the tailing thread
    <state>/spool/*.sealed the same, closed and waiting to be uploaded as one segment each

Every spool record is ``length u32 | crc32 u32 | meta length u16 | meta JSON | transaction``.  A
kill -9 can leave a torn last record; replay stops at the first record whose CRC fails and
truncates the file there, so nothing after a tear is ever trusted.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import threading
import zlib
from dataclasses import dataclass

from .dbhash import PageHashes
from .format import TxnRecord, decode_txns
from .walfile import WalPosition

_REC = struct.Struct("<II")


class StateLocked(Exception):
    """Another daemon holds this state directory."""

_META = struct.Struct("<H")


@dataclass
class SpooledTxn:
    record: TxnRecord
    position: WalPosition | None
    through_ts_us: int
    change: int | None = None  # SQLite's commit counter after this record, when it was verified


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path))


class StateDir:
    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.spool_dir = os.path.join(self.path, "spool")
        os.makedirs(self.spool_dir, exist_ok=True)
        self._lock_fd: int | None = None
        self._lock = threading.Lock()
        self._current: tuple[str, object] | None = None

    def lock(self) -> None:
        """Take the state directory for this process; a second daemon on it is refused.

        flock on a dedicated file (never on the database files, whose POSIX locks belong to SQLite).
        """
        fd = os.open(os.path.join(self.path, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateLocked(f"state directory {self.path} is in use by another walrewind daemon ({holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}".encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- the uploaded point -------------------------------------------------------------------
    def load_state(self) -> dict | None:
        try:
            with open(os.path.join(self.path, "state.json"), "rb") as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return None

    def save_state(self, state: dict, hashes: PageHashes) -> None:
        """Persist the uploaded point and the page hashes *of that same point*.

        The hashes go to a file named after the point (``hashes-<txid>.bin``) and state.json names
        it, so a crash between the two writes can never pair a state with hashes of another point.
        """
        name = f"hashes-{state.get('uploaded_txid', 0):016x}.bin"
        atomic_write(os.path.join(self.path, name), hashes.to_bytes())
        atomic_write(os.path.join(self.path, "state.json"), json.dumps(dict(state, hashes=name), indent=1).encode())
        for other in os.listdir(self.path):
            if other.startswith("hashes-") and other.endswith(".bin") and other != name:
                os.unlink(os.path.join(self.path, other))

    def load_hashes(self) -> PageHashes:
        state = self.load_state() or {}
        with open(os.path.join(self.path, state.get("hashes", "hashes.bin")), "rb") as f:
            return PageHashes.from_bytes(f.read())

    def reset(self) -> None:
        """Forget everything (a new generation is starting)."""
        for name in os.listdir(self.path):
            if name == "state.json" or (name.startswith("hashes") and name.endswith(".bin")):
                os.unlink(os.path.join(self.path, name))
        for name in os.listdir(self.spool_dir):
            os.unlink(os.path.join(self.spool_dir, name))

    # -- the spool ------------------------------------------------------------------------------
    def append(self, items: list[SpooledTxn]) -> None:
        """Append and fsync; called by the tailing thread after each read pass."""
        if not items:
            return
        blob = b"".join(self._encode(i) for i in items)
        with self._lock:
            if self._current is None:
                name = os.path.join(self.spool_dir, f"{items[0].record.txid:016x}.log")
                f = open(name, "ab")
                self._current = (name, f)
                _fsync_dir(self.spool_dir)
            f = self._current[1]
            f.write(blob)  # type: ignore[attr-defined]
            f.flush()  # type: ignore[attr-defined]
            os.fsync(f.fileno())  # type: ignore[attr-defined]

    def seal(self) -> None:
        """Close the file being appended to and mark it ready, so it is uploaded as one segment.

        Sealing renames ``*.log`` to ``*.sealed`` under the lock: the uploader only ever reads
        sealed files, so it can never read (or delete) a file the tailing thread still appends to.
        Leftover ``*.log`` files from a previous run are sealed too.
        """
        with self._lock:
            if self._current is not None:
                self._current[1].close()  # type: ignore[attr-defined]
                self._current = None
            for name in os.listdir(self.spool_dir):
                if name.endswith(".log"):
                    path = os.path.join(self.spool_dir, name)
                    os.replace(path, path[: -len(".log")] + ".sealed")
            _fsync_dir(self.spool_dir)

    def sealed_files(self) -> list[str]:
        names = sorted(n for n in os.listdir(self.spool_dir) if n.endswith(".sealed"))
        return [os.path.join(self.spool_dir, n) for n in names]

    def pending_bytes(self) -> int:
        total = 0
        for n in os.listdir(self.spool_dir):
            try:
                total += os.path.getsize(os.path.join(self.spool_dir, n))
            except FileNotFoundError:
                pass
        return total

    def remove(self, path: str) -> None:
        os.unlink(path)
        _fsync_dir(self.spool_dir)

    @staticmethod
    def _encode(item: SpooledTxn) -> bytes:
        meta = json.dumps(
            {
                "pos": item.position.to_json() if item.position else None,
                "through": item.through_ts_us,
                "change": item.change,
            },
            separators=(",", ":"),
        ).encode()
        body = _META.pack(len(meta)) + meta + item.record.encode()
        return _REC.pack(len(body), zlib.crc32(body)) + body

    @staticmethod
    def read_file(path: str, page_size: int, repair: bool = True) -> list[SpooledTxn]:
        """Every intact record of a spool file; a torn tail is cut off (when ``repair``)."""
        with open(path, "rb") as f:
            data = f.read()
        out: list[SpooledTxn] = []
        off = 0
        while off + _REC.size <= len(data):
            length, crc = _REC.unpack_from(data, off)
            body = data[off + _REC.size : off + _REC.size + length]
            if length < _META.size or len(body) != length or zlib.crc32(body) != crc:
                break  # a torn or zero-filled tail (the file grew but the data never landed)
            (meta_len,) = _META.unpack_from(body, 0)
            meta = json.loads(body[_META.size : _META.size + meta_len])
            (record,) = list(decode_txns(body[_META.size + meta_len :], page_size, path))
            pos = WalPosition.from_json(meta["pos"]) if meta["pos"] else None
            out.append(SpooledTxn(record, pos, meta["through"], meta.get("change")))
            off += _REC.size + length
        if off != len(data) and repair:
            with open(path, "r+b") as f:
                f.truncate(off)
                os.fsync(f.fileno())
        return out
