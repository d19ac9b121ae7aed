"""A database's observer run on the inotify hub's dispatcher thread (a process serving many).

With a thread of its own per database (engine/daemon/observer.Observer.run), every commit of a
slow writer cost two thread hops before its stamp: the dispatcher read the event and woke the
observer, which woke again ``PUBLISH_POLL`` later for a ``synchronous=FULL`` writer's
publication (that sets no file event).  Each wake-up of one of a thousand threads runs the
interpreter on cold caches: at 1,000 namespaces, 100 written at 1 txn/s, the observers took 4-5 %
of a core and the dispatcher's hand-over 2-3 % more, and their stacks were a thousand threads'
worth of memory.  Here the dispatcher makes the look itself, right after it read the event: the
observer's state machine (``Observer.plan``/``Observer.step``) is the same, only its waits are
the hub's: a file change ends a wait that file changes end (the change is otherwise left for the
look's ``drain()``, as the waker would), and the timed wake-ups are deadlines on the hub's heap.

Stamping stays honest: a stamp is still the time taken after the look that saw the commit, never
before it.  What changes is what can delay the look: not a thread's wake-up but the dispatcher's
other work since it read the event (other databases' looks in the same batch); a look made more
than ``STAMP_SLACK_US`` after the read marks a commit it found published uncertain by that much
(one it finds written and not yet published is stamped while committing: exact)
(``Observer.step``'s ``woken_us``), which a thread per database could not see (its wake-up
waited for the GIL unmeasured).  A timed look that comes late (the dispatcher busy) is flagged
by its oversleep, as before.  A look never blocks: preads of the page cache, an ``F_OFD_GETLK``,
the reader's condition held for a flag.
"""

from __future__ import annotations

import logging
import time

from .. import logs
from .inotifyhub import HubWaker, InotifyHub
from .observer import Observer

log = logging.getLogger("walrewind.observer")

RETRY_SECONDS = 1.0  # a look that failed (a bug, a vanished file) is tried again this much later


class HubObserving:
    """``observer``'s looks, run by ``hub``'s dispatcher from ``start()`` until ``join()``.

    Offers what the replicator used of the observer's thread (``join``, ``is_alive``).
    """

    def __init__(self, hub: InotifyHub, waker: HubWaker, observer: Observer, name: str | None) -> None:
        self.hub, self.waker, self.observer, self.name = hub, waker, observer, name
        self.deadline = 0.0
        self._changes_end_wait = True  # the planned wait is one a file change ends
        self._stopped = False

    def start(self) -> None:
        self.observer.observations.event_driven = self.observer.inotify
        with self.hub.stepping:  # (no event of ours is dispatched before the first plan)
            self.waker.driven = self
            self._plan()

    def on_change(self, woken_us: int) -> None:
        """The -wal changed (dispatcher thread, ``waker._changed`` just set)."""
        if self._stopped or not self._changes_end_wait:
            return  # (an EXPECT_POLL wait: the look's drain() takes the change)
        self.waker._changed = False  # taken, as a wait that ended on it takes it
        self.deadline = 0.0
        self._step(True, woken_us)

    def on_deadline(self) -> None:
        if not self._stopped:
            self._step(False, 0)

    def _step(self, woke: bool, woken_us: int) -> None:
        logs.bind(self.name)
        try:
            self.observer.step(woke, woken_us)
            self._plan()
        except Exception:  # (the thread would have died: the database is looked at again instead)
            log.exception("a look at the wal-index failed; looking again in %.0f s", RETRY_SECONDS)
            if not self._stopped:
                self.hub.schedule(self, time.monotonic() + RETRY_SECONDS)
        finally:
            logs.bind(None)

    def _plan(self) -> None:
        """Plan the next wait; a wait of 0 seconds is the look now (as the thread would)."""
        observer, waker = self.observer, self.waker
        for _ in range(1000):  # (the state machine never plans "now" for long; this only bounds a bug)
            timeout, changes = observer.plan()
            self._changes_end_wait = changes
            if timeout > 0.0:
                if not self._stopped:
                    self.hub.schedule(self, time.monotonic() + timeout)
                return
            woke = changes and waker._changed
            if woke:
                waker._changed = False
            observer.step(woke)
        self.hub.schedule(self, time.monotonic() + RETRY_SECONDS)

    def join(self) -> None:
        """Stop: no look of this database runs once this returns (its descriptors may close)."""
        self._stopped = True
        self.waker.driven = None
        self.hub.unschedule(self)
        self.observer.observations.event_driven = False

    def is_alive(self) -> bool:
        return not self._stopped
