"""Run the daemon for several databases in one process, and stop them all cleanly.

``walrewind replicate`` (one database or every configured one) and the Python API use this: it
builds one replicator per database from its settings, runs each on its own thread, turns
SIGTERM/SIGINT into a final sync of every database, and reports per database how it ended.  A
database that fails stops the run (the others get their final sync) and is reported by name.
Events (ready, stopping, stopped) go to an ``on_event`` callback so the caller decides how to print.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from typing import Callable

from ..errors import NotReplicable
from ..maintenance.scheduler import for_database
from ..sqlite.dbinfo import check_replicable
from ..storage import open_storage
from ..workspace.config import DatabaseConfig
from . import registry
from .replicator import Shipper


@dataclass
class Outcome:
    """How one database's daemon ended."""

    name: str
    error: BaseException | None
    transactions: int
    uploaded_txid: int

    def describe(self) -> str:
        state = f"FAILED: {self.error}" if self.error is not None else "stopped"
        return f"{self.name}: {state}; {self.transactions} transactions shipped, last txid {self.uploaded_txid}"


def build(db: DatabaseConfig, takeover: bool = False) -> Shipper:
    """A replicator for ``db`` with every setting taken from its configuration."""
    check_replicable(db.path)  # before anything (replica directory, state directory) is created
    storage = open_storage(db.replica)
    return Shipper(
        db.path, storage,
        state_dir=db.state_dir,
        upload_interval=db.upload_interval,
        checkpoint_frames=db.checkpoint_frames,
        max_wal_bytes=db.max_wal_mb << 20,
        takeover=takeover,
        maintenance=for_database(storage, db),
    )


class _Runner:
    """One replicator on its own thread; tells the fleet when it is ready or has ended."""

    def __init__(self, db: DatabaseConfig, replicator: Shipper | None, changed: threading.Event,
                 error: BaseException | None = None) -> None:
        self.db = db
        self.replicator = replicator
        self.changed = changed
        self.error = error  # set already when the replicator could not even be built
        self.done = replicator is None
        self.thread = threading.Thread(target=self._run, name=f"walrewind-{db.name}", daemon=True)

    @property
    def ready(self) -> bool:
        return self.replicator is not None and self.replicator.ready.is_set()

    def start(self) -> None:
        if self.replicator is not None:
            self.thread.start()

    def stop(self) -> None:
        if self.replicator is not None:
            self.replicator.stop()

    def join(self) -> None:
        if self.replicator is not None:
            self.thread.join()

    def _run(self) -> None:
        assert self.replicator is not None
        entry = None
        try:
            entry = registry.register(self.db.path, self.replicator.state.path, self.db.replica_display)
            self.replicator.run()
        except BaseException as exc:  # reported by the fleet, never lost
            self.error = exc
        finally:
            if entry is not None:
                registry.unregister(entry)
            self.done = True
            self.changed.set()

    def outcome(self) -> Outcome:
        if self.replicator is None:
            return Outcome(self.db.name, self.error, 0, 0)
        s = self.replicator.stats
        return Outcome(self.db.name, self.error, s.transactions, s.uploaded_txid)


class Fleet:
    """Replicate ``databases`` until a signal (or ``stop()``), or until one of them fails."""

    def __init__(self, databases: list[DatabaseConfig], *, takeover: bool = False,
                 on_event: Callable[[str], None] = lambda line: None) -> None:
        self.on_event = on_event
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._runners = []
        for db in databases:
            try:
                self._runners.append(_Runner(db, build(db, takeover), self._changed))
            except NotReplicable as exc:
                if len(databases) == 1:
                    raise
                # Reported as this database's failure, like any other; the run stops at once.
                self._runners.append(_Runner(db, None, self._changed, error=exc))

    @property
    def replicators(self) -> list[Shipper]:
        return [r.replicator for r in self._runners if r.replicator is not None]

    def stop(self) -> None:
        self._stop.set()
        self._changed.set()

    def run(self, install_signal_handlers: bool = True) -> list[Outcome]:
        """Run until stopped; every database gets its final sync.  Returns one outcome each."""
        previous = {}
        if install_signal_handlers:
            def on_signal(signum, _frame):
                self.on_event(f"signal {signum}: final sync of {len(self._runners)} database(s) and exit")
                self.stop()

            previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for r in self._runners:
                r.start()
            announced: set[str] = set()
            while not self._stop.is_set():
                self._changed.wait(0.5)
                self._changed.clear()
                for r in self._runners:
                    if r.ready and not r.done and r.db.name not in announced:
                        announced.add(r.db.name)
                        self.on_event(f"replicating {r.db.name}: {r.db.path} -> {r.db.replica_display}"
                                      + (" (Ctrl-C or SIGTERM to stop)" if len(self._runners) == 1 else ""))
                        if len(announced) == len(self._runners) > 1:
                            self.on_event(f"all {len(self._runners)} database(s) replicating (Ctrl-C or SIGTERM to stop)")
                if any(r.done for r in self._runners):
                    break
        finally:
            for r in self._runners:
                r.stop()
            for r in self._runners:
                r.join()
            for s, handler in previous.items():
                signal.signal(s, handler)
        return [r.outcome() for r in self._runners]

    @property
    def stopped_by_request(self) -> bool:
        return self._stop.is_set()
