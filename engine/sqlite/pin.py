"""Hold (and hand over) a read transaction on the live database, read-only.

While another process's connection holds a read transaction whose read mark is in a slot >= 1,
SQLite cannot restart or truncate the WAL, and checkpoints cannot copy frames past that mark: the
frames we have not copied yet cannot disappear.  We keep two read-only connections so a fresh read
transaction can be opened before the old one ends (a hand-over never leaves a gap).

The connections are opened with SQLITE_OPEN_READONLY and NO_CKPT_ON_CLOSE: the daemon never
writes to the user's database, never checkpoints it, and leaves no tables or rows behind.  The
spare one is closed while no read transaction is held (``shed``) and opened again at the next
hand-over: a quiet database then costs one connection's memory, not two (a process serving 1,000
sqld namespaces; most of a connection's memory is SQLite's initial page cache, ~86 KiB).
"""

from __future__ import annotations

import time
from typing import Callable

import apsw

from ..errors import DaemonError
from .shm import ShmHeader, ShmObserver


class PinError(DaemonError):
    pass


def open_readonly(path: str) -> apsw.Connection:
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
    conn.set_busy_timeout(2000)
    return conn


def _same_snapshot(a: ShmHeader, b: ShmHeader) -> bool:
    """No commit and no WAL reset between two header reads (read marks may move; they don't matter)."""
    return (a.change, a.max_frame, a.salts) == (b.change, b.max_frame, b.salts)


class ReadPin:
    def __init__(self, db_path: str) -> None:
        self.db_path = db_path
        self._conns: list[apsw.Connection | None] = [open_readonly(db_path), open_readonly(db_path)]
        self._active: int | None = None
        self.released_mono = time.monotonic()  # when the last read transaction ended (or none was held)
        self._ended = [self.released_mono] * 2  # when each connection's last read transaction ended
        self._last = 0  # the connection of the newest read transaction (kept open by shed)
        self.sheds = 0
        self.header: ShmHeader | None = None  # the wal-index header the read transaction sees
        self.since = 0.0
        # Told True when a read transaction is taken while none was held, False when it ends (a
        # process serving many databases probes only the pinned ones: engine/daemon/prober.py).
        self.on_change: Callable[[bool], None] | None = None

    @property
    def active(self) -> bool:
        return self._active is not None

    @property
    def connection(self) -> apsw.Connection:
        """The connection holding the current read transaction (for PRAGMAs inside the snapshot)."""
        if self._active is None:
            raise PinError("no read transaction is held")
        return self._conn(self._active)

    def acquire(self, shm: ShmObserver, before: ShmHeader | None = None) -> ShmHeader | None:
        """Open a new read transaction, then end the previous one.

        Returns the wal-index header the new transaction sees.  It is read before and after the
        transaction starts; only when both agree (no commit in between) do we know exactly which
        snapshot we hold.  ``before``: a header the caller read just now (the first attempt's).
        """
        idle = 0 if self._active is None else 1 - self._active
        conn = self._conn(idle)
        snapshot = None
        for _ in range(100):
            before = before or shm.header()
            conn.execute("BEGIN")
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            after = shm.header()
            if before is not None and after is not None and _same_snapshot(before, after):
                snapshot = after
                break
            conn.execute("COMMIT")
            before = None
        else:
            raise PinError("could not open a read transaction with a stable snapshot (100 attempts)")
        was_active = self._active is not None
        if was_active:
            self._conns[self._active].execute("COMMIT")
            self._ended[self._active] = time.monotonic()
        self._active = self._last = idle
        self.header = snapshot
        self.since = time.monotonic()
        if not was_active and self.on_change is not None:
            self.on_change(True)
        return snapshot

    def release(self) -> None:
        if self._active is not None:
            self._conns[self._active].execute("COMMIT")
            self._ended[self._active] = self.released_mono = time.monotonic()
            self._active = None
            self.header = None
            if self.on_change is not None:
                self.on_change(False)

    def _conn(self, i: int) -> apsw.Connection:
        conn = self._conns[i]
        if conn is None:
            conn = self._conns[i] = open_readonly(self.db_path)
        return conn

    def pragma(self, name: str) -> int:
        conn = self._conn(self._active if self._active is not None else 0)
        return int(conn.execute(f"PRAGMA {name}").fetchall()[0][0])

    @property
    def open_connections(self) -> int:
        return sum(conn is not None for conn in self._conns)

    @property
    def spare_used_mono(self) -> float:
        """When the connection ``shed`` would close last ended a read transaction: a database
        whose pin is taken and released in one pass per commit (a slow writer in a process
        serving many) uses one connection only, and sheds the other although never unpinned
        for long."""
        return self._ended[1 - self._last]

    def shed(self) -> bool:
        """Close the connection the last read transaction did not use, while none is held (the
        next hand-over opens it again, ~0.3 ms); True when one was closed.

        One connection always stays open: in WAL mode an open connection keeps a SHARED lock on
        the database file, so an application closing its last connection cannot take the
        EXCLUSIVE lock it needs to checkpoint and delete the -wal (and rebuild the -shm at its
        next open) under our descriptors of those files.  Closing both made a short-lived
        writer's commit vanish into the database file unread.  Safe for the process's locks: a
        connection without a transaction holds none that SQLite does not keep through the other
        (engine/sqlite/fds.py says why that matters)."""
        if self._active is not None:
            return False
        spare = 1 - self._last
        conn = self._conns[spare]
        if conn is None:
            return False
        self._conns[spare] = None
        conn.close()
        self.sheds += 1
        return True

    def close(self) -> None:
        self.release()
        for i, conn in enumerate(self._conns):
            if conn is not None:
                self._conns[i] = None
                conn.close()
