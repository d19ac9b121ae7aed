"""One inotify instance and one dispatcher thread for a process serving many databases.

A daemon serving a sqld data directory replicates one database per tenant.  With an inotify
instance per database (engine/daemon/waker.Waker) it ran out at ``fs.inotify.max_user_instances``
(128 by default): every database past it silently polled every 250 ms, each poll a thread
wake-up.  So a "many" process (engine/daemon/fleet.prepare_process: sqld, or more than
FEW_DATABASES) holds ONE inotify instance (``InotifyHub``, made through watchdog's ctypes bindings,
without watchdog's observer threads) and one dispatcher thread blocked in ``read()`` on it, which
routes each event to the ``HubWaker`` of the database it concerns.  A ``HubWaker`` is a flag pair
under a condition variable, no descriptor of its own; it offers the observer what a ``Waker``
does.  The hop through the dispatcher costs tens of microseconds per commit, well inside the stamp
budget (5 ms), but it is a thread switch per commit that a single database does not pay: a
process with a few databases keeps ``Waker``.

Where inotify cannot be had (no instance, the watch limit ``max_user_watches`` reached, a file
system without events) ``watch`` returns False and the observer polls instead.
"""

from __future__ import annotations

import logging
import os
import struct
import threading

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
        self.fd = fd
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

    # ------------------------------------------------------------------ the dispatcher thread
    def _run(self) -> None:
        while True:
            try:
                buf = os.read(self.fd, 65536)  # blocks without the GIL until events arrive
            except InterruptedError:
                continue
            except OSError as exc:  # never expected; the observers' safety looks find MISSED_EVENTS_MAX
                log.error("reading inotify events failed (%s): databases fall back to polling", exc)
                return
            try:
                self._dispatch(buf)
            except Exception:  # a bug here must not silence every database's wake-ups
                log.exception("dispatching inotify events failed")

    def _dispatch(self, buf: bytes) -> None:
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
        for w in woken:
            w._changed_now()


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
