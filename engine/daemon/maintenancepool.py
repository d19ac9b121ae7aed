"""The maintenance of every database of a many-database process, on a few shared threads.

Each daemon's maintenance (snapshots, retention, compaction, drills: engine/maintenance/
scheduler.py) runs on a thread of its own in a process with a few databases.  A process serving
a sqld data directory holds one daemon per namespace, and a thread each that sleeps nearly all
the time is ~20 KiB of memory and a wake-up a minute per namespace: 1,000 threads for 1,000
namespaces.  Here WORKERS threads run whatever task is due next, in order of due time; a long
task (a snapshot of a big database, a drill's restore) holds one worker and delays the others'
due tasks, which is harmless: maintenance has no deadline measured in seconds.

``add`` returns a handle that behaves, for the daemon that owns it, like the thread it replaces:
``join(timeout)`` stops scheduling it and waits for a task of it that is running, ``is_alive()``
says whether one still is.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Callable

from .. import logs
from .processwide import ProcessWide

if TYPE_CHECKING:
    from ..maintenance.scheduler import Maintenance

log = logging.getLogger("walrewind.maintenance")

WORKERS = 2
MAX_WAIT_SECONDS = 60.0  # every due time is read again at least this often (an operator's request)
MIN_WAIT_SECONDS = 1.0  # as run_forever: never spin on a task that stays due


class PooledMaintenance:
    """One database's maintenance in the pool (the handle the daemon keeps)."""

    def __init__(self, pool: MaintenancePool, name: str, maintenance: Maintenance, stop: threading.Event,
                 on_status: Callable[[dict], None] | None) -> None:
        self.pool = pool
        self.name = name
        self.maintenance = maintenance
        self.stop = stop
        self.on_status = on_status
        self.due_us = maintenance.next_due_us()
        self.running = False
        self.removed = False

    def is_alive(self) -> bool:
        with self.pool.cond:
            return self.running

    def join(self, timeout: float | None = None) -> None:
        """Schedule it no more; wait up to ``timeout`` for a task of it that is running."""
        self.pool.remove(self, timeout)


class MaintenancePool(ProcessWide):
    def __init__(self, workers: int = WORKERS) -> None:
        self.cond = threading.Condition()
        self._entries: list[PooledMaintenance] = []
        self._refresh_us = 0  # when every due time is read again
        self.rounds = 0
        self._threads = [threading.Thread(target=self._run, name="walrewind-maintenance", daemon=True)
                         for _ in range(workers)]
        for thread in self._threads:
            thread.start()

    def add(self, name: str, maintenance: Maintenance, stop: threading.Event,
            on_status: Callable[[dict], None] | None = None) -> PooledMaintenance:
        entry = PooledMaintenance(self, name, maintenance, stop, on_status)
        with self.cond:
            self._entries.append(entry)
            self.cond.notify()
        return entry

    def remove(self, entry: PooledMaintenance, timeout: float | None = None) -> None:
        with self.cond:
            entry.removed = True
            if entry in self._entries:
                self._entries.remove(entry)
            self.cond.wait_for(lambda: not entry.running, timeout)

    def _next(self) -> PooledMaintenance:
        """The entry to run now (waits until one is due); called with the lock held."""
        while True:
            entries = [e for e in self._entries if not e.running and not e.stop.is_set()]
            now = entries[0].maintenance.clock() if entries else 0
            if entries and now >= self._refresh_us:
                for e in entries:
                    e.due_us = e.maintenance.next_due_us()
                self._refresh_us = now + int(MAX_WAIT_SECONDS * 1e6)
            due = [(e.due_us, i, e) for i, e in enumerate(entries) if e.due_us is not None]
            wait = MAX_WAIT_SECONDS
            if due:
                at, _i, first = min(due)
                if at <= now:
                    return first
                wait = (at - now) / 1e6
            self.cond.wait(min(max(wait, MIN_WAIT_SECONDS), MAX_WAIT_SECONDS))

    def _run(self) -> None:
        while True:
            with self.cond:
                entry = self._next()
                entry.running = True
            self.rounds += 1
            logs.bind(entry.name)  # its log lines name the database, as on a thread of its own
            try:
                if entry.maintenance.run_due(stop=entry.stop) and entry.on_status is not None:
                    entry.on_status(entry.maintenance.status())
            except Exception:  # run_due records task failures itself; this is a bug guard
                log.exception("maintenance: unexpected error")
            finally:
                logs.bind(None)
                with self.cond:
                    entry.running = False
                    due = entry.maintenance.next_due_us()  # not sooner than a second from now, as run_forever
                    entry.due_us = None if due is None else max(due, entry.maintenance.clock() + int(MIN_WAIT_SECONDS * 1e6))
                    self.cond.notify_all()
