"""One inotify instance and one dispatcher thread for a process serving many databases.

A daemon serving a sqld data directory replicates one database per tenant.  With an inotify
instance per database (engine/daemon/waker.Waker) it ran out at ``fs.inotify.max_user_instances``
(128 by default): every database past it silently polled every 250 ms, each poll a thread
wake-up.  So a "many" process (engine/daemon/fleet.prepare_process: sqld, or more than
FEW_DATABASES) holds ONE inotify instance (``InotifyHub``, made through watchdog's ctypes bindings,
without watchdog's observer threads) and one dispatcher thread waiting on it in ``epoll``, which
routes each event to the ``HubWaker`` of the database it concerns.  A ``HubWaker`` is a flag pair
under a condition variable, no descriptor of its own; it offers an observer thread what a
``Waker`` does, or, with a ``driven`` observer (engine/daemon/hubobserver.py), the dispatcher
makes that database's look itself, and runs its timed looks at the deadlines it schedules here
(``schedule``: a heap the ``epoll`` wait's timeout comes from).  A process with a few databases
keeps ``Waker`` and a thread per observer: no hop through a dispatcher.

Where inotify cannot be had (no instance, the watch limit ``max_user_watches`` reached, a file
system without events) ``watch`` returns False and the observer polls instead.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import select
import struct
import threading
import time
from typing import Protocol

from . import clock

log = logging.getLogger("walrewind.waker")

_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)
IN_MODIFY = 0x002
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
DIR_MASK = IN_CREATE | IN_DELETE | IN_MOVED_TO
APPEARED = IN_CREATE | IN_MOVED_TO
FULL_READ = 32768  # a read of events this long may have left more queued: read again
COMPACT_MIN = 4096  # deadline heap entries before the ones no longer counting are dropped


class Driven(Protocol):
    """A database whose observer the dispatcher runs itself (engine/daemon/hubobserver.py)."""

    deadline: float  # when its next on_deadline() is due (monotonic; 0: none)

    def on_change(self, woken_us: int) -> None: ...  # its -wal changed (``woken_us``: when we learnt of it)
    def on_deadline(self) -> None: ...  # the time it asked for (``InotifyHub.schedule``) came


class InotifyHub:
    """The process's one inotify instance and its dispatcher thread (created on first use)."""

    _shared: InotifyHub | None = None
    _shared_failed = False
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls) -> InotifyHub | None:
        """The process-wide hub; None when inotify is not available here (then: polling)."""
        with cls._shared_lock:
            if cls._shared is None and not cls._shared_failed:
                try:
                    cls._shared = cls()
                except OSError as exc:
                    log.warning("inotify is not available (%s); databases are polled instead", exc)
                    cls._shared_failed = True
            return cls._shared

    def __init__(self) -> None:
        try:
            from watchdog.observers.inotify_c import (
                inotify_add_watch,
                inotify_init,
                inotify_rm_watch,
            )
        except (ImportError, OSError, AttributeError) as exc:
            raise OSError(f"no inotify bindings: {exc}") from None
        self._add, self._rm = inotify_add_watch, inotify_rm_watch
        fd = inotify_init()
        if fd < 0:
            raise OSError("inotify_init failed (fs.inotify.max_user_instances reached?)")
        os.set_blocking(fd, False)
        self.fd = fd
        self._bell = os.eventfd(0, os.EFD_NONBLOCK)  # rung when a new deadline is earlier than the dispatcher's sleep
        self._epoll = select.epoll()
        self._epoll.register(fd, select.EPOLLIN)
        self._epoll.register(self._bell, select.EPOLLIN)
        # Deadlines of driven observers: (monotonic, sequence, driven), the driven's own ``deadline``
        # deciding whether an entry still counts (rescheduling leaves the old entry behind).
        self._timers: list[tuple[float, int, Driven]] = []
        self._compact_at = COMPACT_MIN
        self._timer_lock = threading.Lock()
        self._sleep_until = 0.0  # when the dispatcher's current wait ends (0: it is not waiting)
        self._seq = itertools.count()
        # Held while the dispatcher runs observers' steps: ``unschedule`` waits for it, so a
        # database's descriptors can be closed once its driven observer left.
        self.stepping = threading.Lock()
        self._lock = threading.Lock()
        self._wal: dict[int, set[HubWaker]] = {}  # wd of a -wal -> wakers watching it
        self._dir: dict[int, dict[bytes, set[HubWaker]]] = {}  # wd of a directory -> file name -> wakers
        self.events = 0  # events read (tests, benchmarks)
        self._thread = threading.Thread(target=self._run, name="walrewind-inotify", daemon=True)
        self._thread.start()

    @property
    def watches(self) -> int:
        with self._lock:
            return len(self._wal) + len(self._dir)

    # ------------------------------------------------------------------ watches
    def add(self, waker: HubWaker, db_path: str) -> bool:
        """Watch ``db_path``'s directory (for its -wal appearing or going) and its -wal (writes)."""
        path = os.path.abspath(db_path)
        directory, base = os.path.split(path)
        with self._lock:
            dir_wd = self._add(self.fd, directory.encode(), DIR_MASK)
            if dir_wd < 0:
                return False
            waker._dir_wd, waker._names, waker._wal_path = dir_wd, (base.encode(), base.encode() + b"-wal"), path + "-wal"
            names = self._dir.setdefault(dir_wd, {})
            for name in waker._names:
                names.setdefault(name, set()).add(waker)
            self._watch_wal(waker)  # -1 until the -wal exists (then a directory event)
        return True

    def _watch_wal(self, waker: HubWaker) -> None:
        """(Re)watch ``waker``'s -wal: at ``add``, and when a new -wal file appeared.  Locked."""
        old = waker._wal_wd
        wd = self._add(self.fd, waker._wal_path.encode(), IN_MODIFY)
        if wd == old:
            return
        self._forget(self._wal, old, waker)
        waker._wal_wd = wd
        if wd >= 0:
            self._wal.setdefault(wd, set()).add(waker)

    def _forget(self, table: dict, wd: int, waker: HubWaker) -> None:
        subs = table.get(wd)
        if subs is None:
            return
        subs.discard(waker)
        if not subs:
            del table[wd]
            self._rm(self.fd, wd)  # its IN_IGNORED is dropped by _dispatch (no table holds wd)

    def remove(self, waker: HubWaker) -> None:
        with self._lock:
            if waker._wal_wd >= 0:
                self._forget(self._wal, waker._wal_wd, waker)
            names = self._dir.get(waker._dir_wd)
            if names is not None:
                for name in waker._names:
                    subs = names.get(name)
                    if subs is not None:
                        subs.discard(waker)
                        if not subs:
                            del names[name]
                if not names:
                    del self._dir[waker._dir_wd]
                    self._rm(self.fd, waker._dir_wd)
            waker._wal_wd = waker._dir_wd = -1

    # ------------------------------------------------------------------ driven observers' deadlines
    def schedule(self, driven: Driven, at: float) -> None:
        """Call ``driven.on_deadline()`` on the dispatcher thread at monotonic time ``at`` (replacing
        any earlier deadline of it)."""
        driven.deadline = at
        with self._timer_lock:
            timers = self._timers
            heapq.heappush(timers, (at, next(self._seq), driven))
            if len(timers) > self._compact_at:  # entries left behind by rescheduling (one per commit)
                timers[:] = [entry for entry in timers if entry[2].deadline == entry[0]]
                heapq.heapify(timers)
                self._compact_at = max(COMPACT_MIN, 4 * len(timers))
            ring = at < self._sleep_until and threading.current_thread() is not self._thread
        if ring:
            os.eventfd_write(self._bell, 1)

    def unschedule(self, driven: Driven) -> None:
        """No more deadlines of ``driven``; returns once no step of it runs (its descriptors may
        close).  Not from the dispatcher thread."""
        driven.deadline = 0.0
        with self.stepping:
            pass

    def _due(self, now: float) -> list[Driven]:
        """The driven observers whose deadline came, in deadline order.  Locked."""
        timers, due = self._timers, []
        while timers and timers[0][0] <= now:
            at, _seq, driven = heapq.heappop(timers)
            if driven.deadline == at:
                driven.deadline = 0.0
                due.append(driven)
        return due

    # ------------------------------------------------------------------ the dispatcher thread
    def _run(self) -> None:
        poll, monotonic, now_us = self._epoll.poll, time.monotonic, clock.now_us
        while True:
            with self._timer_lock:
                now = monotonic()
                due = self._due(now)
                if due:
                    timeout = 0.0
                else:
                    self._sleep_until = self._timers[0][0] if self._timers else float("inf")
                    timeout = self._sleep_until - now if self._timers else -1
            if due:
                self._step_due(due)
                continue
            try:
                ready = poll(timeout)  # without the GIL until events arrive or a deadline comes
            except InterruptedError:
                continue
            self._sleep_until = 0.0
            woken_us = now_us()
            for fd, _ev in ready:
                if fd == self._bell:
                    os.eventfd_read(self._bell)
                    continue
                try:
                    buf = chunk = os.read(self.fd, 65536)
                    while len(chunk) >= FULL_READ:  # (a full read may have left more queued)
                        try:
                            chunk = os.read(self.fd, 65536)
                        except BlockingIOError:
                            break
                        buf += chunk
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:  # never expected; the observers' safety looks find MISSED_EVENTS_MAX
                    log.error("reading inotify events failed (%s): databases fall back to polling", exc)
                    return
                try:
                    self._dispatch(buf, woken_us)
                except Exception:  # a bug here must not silence every database's wake-ups
                    log.exception("dispatching inotify events failed")

    def _step_due(self, due: list[Driven]) -> None:
        with self.stepping:
            for driven in due:
                try:
                    driven.on_deadline()
                except Exception:  # one database's bug must not stop the others' looks
                    log.exception("a timed look failed")

    def _dispatch(self, buf: bytes, woken_us: int = 0) -> None:
        woken: set[HubWaker] = set()
        off = 0
        with self._lock:
            while off + _EVENT.size <= len(buf):
                wd, mask, _cookie, length = _EVENT.unpack_from(buf, off)
                name = buf[off + _EVENT.size: off + _EVENT.size + length].rstrip(b"\0") if length else b""
                off += _EVENT.size + length
                self.events += 1
                if mask & IN_Q_OVERFLOW:  # events were lost: every database looks for itself
                    for subs in self._wal.values():
                        woken.update(subs)
                    for names in self._dir.values():
                        for subs in names.values():
                            woken.update(subs)
                    continue
                subs = self._wal.get(wd)
                if subs is not None:
                    woken.update(subs)  # a write to the -wal (or IN_IGNORED: it went away)
                    if mask & IN_IGNORED:
                        for w in subs:
                            w._wal_wd = -1
                        del self._wal[wd]
                    continue
                names = self._dir.get(wd)
                if names is None or not name:
                    continue
                for w in names.get(name, ()):
                    woken.add(w)
                    if name == w._names[1] and mask & APPEARED:
                        self._watch_wal(w)  # a new -wal file: watch it
        driven = []
        for w in woken:
            if w.driven is None:
                w._changed_now()
            else:
                driven.append(w)
        if driven:
            with self.stepping:
                for w in driven:
                    w._changed = True  # (the observer's drain() and pending() take it, on this thread)
                    d = w.driven
                    if d is not None:
                        try:
                            d.on_change(woken_us)
                        except Exception:  # one database's bug must not stop the others' looks
                            log.exception("a look at a WAL write failed")


class HubWaker:
    """One database's wake-ups in a many-database process: its -wal changed (through the hub), or
    ``wake()`` (stop, a job).  The same interface as engine/daemon/waker.Waker."""

    def __init__(self, hub: InotifyHub | None = None) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._changed = False
        self._woken = False
        self._hub_given = hub
        self._hub: InotifyHub | None = None  # set while watching
        self._dir_wd = self._wal_wd = -1
        self._names: tuple[bytes, ...] = ()
        self._wal_path = ""
        # Set while the hub's dispatcher runs this database's observer itself (hubobserver.py):
        # file changes then go to it, not to a waiting thread.
        self.driven: Driven | None = None

    @property
    def hub(self) -> InotifyHub | None:
        """The hub this waker watches through (None: not watching)."""
        return self._hub

    @property
    def watching(self) -> bool:
        return self._hub is not None

    def watch(self, db_path: str) -> bool:
        """Watch the database's -wal for writes (and its directory for the -wal being replaced);
        False when inotify is not available (the observer then polls)."""
        hub = self._hub_given or InotifyHub.shared()
        if hub is None or not hub.add(self, db_path):
            return False
        self._hub = hub
        return True

    def _changed_now(self) -> None:
        with self._cond:
            self._changed = True
            self._cond.notify_all()

    def wait(self, timeout: float, changes: bool = True) -> bool:
        """Block until a relevant change, wake(), or ``timeout`` seconds; True when woken early.

        ``changes=False`` sleeps through file changes (only wake() interrupts); changes that
        happen meanwhile are still reported by the next wait.
        """
        with self._cond:
            if changes:
                if not (self._woken or self._changed) and timeout > 0.0:
                    self._cond.wait_for(lambda: self._woken or self._changed, timeout)
                woke = self._woken or self._changed
                self._woken = self._changed = False
            else:
                if not self._woken and timeout > 0.0:
                    self._cond.wait_for(lambda: self._woken, timeout)
                woke, self._woken = self._woken, False
            return woke

    def drain(self) -> bool:
        """Forget the file changes reported so far; True when there were any."""
        with self._cond:
            changed, self._changed = self._changed, False
            return changed

    def pending(self) -> bool:
        """A file change was reported and not taken yet (a peek: nothing is forgotten)."""
        return self._changed

    def wake(self) -> None:
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def close(self) -> None:
        hub, self._hub = self._hub, None
        if hub is not None:
            hub.remove(self)
