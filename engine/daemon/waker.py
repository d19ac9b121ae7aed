"""Wake the observer the instant the database's -wal changes.

Commit stamps are taken when the observer (engine/daemon/observer.py) first sees a commit, so
every hop between the kernel's inotify event and that look is an error in every stamp.  The
observer therefore waits on the inotify descriptor itself (created through watchdog's ctypes
bindings, without watchdog's own observer and dispatch threads), through epoll.  A self-pipe lets
stop() interrupt the wait; where inotify is unavailable the wait degrades to the caller's
polling interval.

This is the waker of a process with a few databases.  A process serving many (more than
fleet.FEW_DATABASES, or a sqld data directory) uses engine/daemon/inotifyhub.HubWaker instead: one
inotify instance for the process (``fs.inotify.max_user_instances`` is often 128) and one
dispatcher thread, at the cost of one thread hop per commit.  The observer cannot tell them apart.
"""

from __future__ import annotations

import os
import select
import struct

_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)
_IN_MODIFY = 0x002
_IN_Q_OVERFLOW = 0x4000


class Waker:
    def __init__(self) -> None:
        self._pipe_r, self._pipe_w = os.pipe()
        os.set_blocking(self._pipe_r, False)
        self._epoll_stop = select.epoll()  # wake() only
        self._epoll_stop.register(self._pipe_r, select.EPOLLIN)
        self._epoll_all = select.epoll()  # wake() and file changes
        self._epoll_all.register(self._pipe_r, select.EPOLLIN)
        self._fd: int | None = None
        self._dir_wd = self._wal_wd = -1
        self._one_write = b""  # what a read of the descriptor returns for one write to the -wal
        self._names: tuple[bytes, ...] = ()
        self._carried = False  # a change seen by pending(), still to be reported by wait()/drain()

    def watch(self, db_path: str) -> bool:
        """Watch the database's -wal for writes (and its directory for the -wal being replaced).

        The -wal itself is watched for IN_MODIFY, not the whole directory: an application that
        writes a log file next to its database (the benchmarks' writers do, line by line) would
        otherwise wake the observer once more per commit for nothing.  The directory is watched
        only for files appearing or going (to watch a new -wal, and a replaced database).
        Returns False when inotify is not available (the loop then relies on polling).
        """
        try:
            from watchdog.observers.inotify_c import (
                InotifyConstants,
                inotify_add_watch,
                inotify_init,
            )
        except (ImportError, OSError, AttributeError):
            return False
        fd = inotify_init()
        if fd < 0:
            return False
        c = InotifyConstants
        directory = os.path.dirname(os.path.abspath(db_path))
        self._dir_wd = inotify_add_watch(fd, directory.encode(), c.IN_CREATE | c.IN_DELETE | c.IN_MOVED_TO)
        if self._dir_wd < 0:
            os.close(fd)
            return False
        self._add_wal_watch = lambda: inotify_add_watch(fd, (os.path.abspath(db_path) + "-wal").encode(), c.IN_MODIFY)
        self._appeared = c.IN_CREATE | c.IN_MOVED_TO
        self._watch_wal()  # -1 until the -wal exists (then a directory event)
        os.set_blocking(fd, False)
        self._epoll_all.register(fd, select.EPOLLIN)
        base = os.path.basename(db_path).encode()
        self._names = (base, base + b"-wal")
        self._fd = fd
        return True

    def wait(self, timeout: float, changes: bool = True) -> bool:
        """Block until a relevant change, wake(), or ``timeout`` seconds; True when woken early.

        ``changes=False`` sleeps through file changes (only wake() interrupts): for a short
        look-again delay, when more writes of the same commit would only wake us for nothing.
        Changes that happen meanwhile are still reported by the next wait.
        """
        # epoll, not select(): no limit on descriptor numbers (a daemon serving many databases
        # has thousands open), and no per-call list of descriptors to build.
        poll = self._epoll_all if self._fd is not None and changes else self._epoll_stop
        woke = False
        if changes and self._carried:
            self._carried = False
            woke, timeout = True, 0.0
        for fd, _ev in poll.poll(timeout if timeout > 0.0 else 0.0):
            if fd == self._fd:
                woke = self._drain() or woke
            else:
                try:
                    os.read(self._pipe_r, 4096)
                except BlockingIOError:
                    pass
                woke = True
        return woke

    def drain(self) -> bool:
        """Forget the file changes reported so far; True when there were any (of our files)."""
        carried, self._carried = self._carried, False
        return (self._drain() if self._fd is not None else False) or carried

    def pending(self) -> bool:
        """A file change happened that no wait()/drain() took yet (they still report it)."""
        if self._fd is not None and not self._carried:
            self._carried = self._drain()
        return self._carried

    def _watch_wal(self) -> None:
        self._wal_wd = self._add_wal_watch()
        self._one_write = _EVENT.pack(self._wal_wd, _IN_MODIFY, 0, 0)

    def _drain(self) -> bool:
        relevant = False
        while True:
            try:
                buf = os.read(self._fd, 65536)  # type: ignore[arg-type]
            except BlockingIOError:
                return relevant
            if buf == self._one_write:
                return True  # the usual read at a wake-up: one (coalesced) write to the -wal
            off = 0
            while off + _EVENT.size <= len(buf):
                wd, mask, _cookie, length = _EVENT.unpack_from(buf, off)
                if wd == self._wal_wd or mask & _IN_Q_OVERFLOW:  # overflow: events were lost, look now
                    relevant = True  # a write to the -wal (or IN_IGNORED: it went away)
                elif wd == self._dir_wd and length:
                    name = buf[off + _EVENT.size : off + _EVENT.size + length].rstrip(b"\0")
                    if name in self._names:
                        relevant = True
                        if name == self._names[1] and mask & self._appeared:
                            self._watch_wal()  # a new -wal file: watch it
                off += _EVENT.size + length
            if len(buf) < 32768:
                return relevant

    def wake(self) -> None:
        try:
            os.write(self._pipe_w, b"x")
        except BlockingIOError:
            pass

    def close(self) -> None:
        self._epoll_all.close()
        self._epoll_stop.close()
        for fd in (self._fd, self._pipe_r, self._pipe_w):
            if fd is not None:
                os.close(fd)
        self._fd = None
