"""One database of a fleet: how its replicator is built and run, and what happened to it so far.

A *member* (engine/daemon/fleet.py owns them) keeps a database's settings, its state as the fleet
sees it (waiting, starting, replicating, retrying, stopping, failed), its failures and the
totals of every attempt.  Its work is done by a *worker*: ``ThreadWorker``, one replicator on its
own thread.  The fleet talks to a worker only through ``start``, ``stop``, ``join``, ``ready``,
``done``, ``error``, ``replicator`` and the counters.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

from .. import defaults, logs
from ..fsutil import private_dir
from ..maintenance.scheduler import for_database
from ..sqlite.dbinfo import check_replicable
from ..storage import check_replica_encryption, open_storage
from ..workspace.config import DatabaseConfig
from .dbwatch import FileIdentity
from .namespaces import prepare_state_dir
from .replicator import Replicator
from .samples import carry


def state_dir_of(db: DatabaseConfig) -> str:
    return db.state_dir or defaults.state_dir_for(db.path)


def next_slice(members: list, start: int, share: float) -> tuple[list, int]:
    """The ``ceil(n * share)`` members from ``start`` on (wrapping), and where the next slice
    starts: a tick's share of a round of checks over every member."""
    n = len(members)
    count = min(n, math.ceil(n * share - 1e-9))
    start %= n
    return members[start:start + count] + members[:max(0, start + count - n)], start + count


def build(db: DatabaseConfig, takeover: bool = False, new_generation_reason: str | None = None) -> Replicator:
    """A replicator for ``db`` with every setting taken from its configuration.

    ``new_generation_reason``: never continue the saved history (the file was replaced, or
    ``walrewind reseed``): a new generation from the live file, logged with this reason."""
    check_replicable(db.path)  # before anything (replica directory, state directory) is created
    private_dir(state_dir_of(db), tighten=True)  # 0700: it holds database pages
    keyring = db.keyring()
    storage = open_storage(db.replica, keyring=keyring)
    return Replicator(
        db.path, storage,
        name=db.name,
        state_dir=db.state_dir,
        upload_interval=db.upload_interval,
        checkpoint_frames=db.checkpoint_frames,
        max_wal_bytes=db.max_wal_mb << 20,
        takeover=takeover,
        maintenance=for_database(storage, db),
        # refuses a key mismatch before anything is written; run by the start-up checks, so a
        # replica that does not answer yet does not keep the daemon from starting
        encryption_check=functools.partial(check_replica_encryption, storage, keyring),
        new_generation_reason=new_generation_reason,
    )


@dataclass
class Outcome:
    """How one database's daemon ended."""

    name: str
    error: BaseException | None
    transactions: int
    uploaded_txid: int
    state: str = "stopped"  # stopped | failed | deleted

    def describe(self) -> str:
        state = f"FAILED: {self.error}" if self.state == "failed" else self.state
        return f"{self.name}: {state}; {self.transactions} transactions shipped, last txid {self.uploaded_txid}"


class ThreadWorker:
    """One database's replicator on its own thread.  It is built there too: opening an S3
    replica can block, and the fleet's loop must not."""

    def __init__(self, db: DatabaseConfig, takeover: bool, wake: threading.Event,
                 note: Callable[[str], None], new_generation_reason: str | None = None) -> None:
        self.db = db
        self.new_generation_reason = new_generation_reason
        self.takeover = takeover
        self.wake = wake
        self.note = note
        self.replicator: Replicator | None = None
        self.error: BaseException | None = None
        self.done = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"walrewind-{db.name}", daemon=True)

    @property
    def ready(self) -> bool:
        """Replicating: the replica holds our base, or (started without the replica) every commit
        is being captured into the spool and will be uploaded once it answers."""
        r = self.replicator
        return r is not None and (r.ready.is_set() or (r.capturing.is_set() and not r.startup_done))

    @property
    def offline(self) -> bool:
        """Started without the replica and still waiting for it."""
        r = self.replicator
        return r is not None and not r.startup_done

    @property
    def transactions(self) -> int:
        return self.replicator.stats.transactions if self.replicator is not None else 0

    @property
    def uploaded_txid(self) -> int:
        return self.replicator.stats.uploaded_txid if self.replicator is not None else 0

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stop.set()
            if self.replicator is not None:
                self.replicator.stop()

    def join(self) -> None:
        self.thread.join()

    def _run(self) -> None:
        logs.bind(self.db.name)
        try:
            if self.db.namespace is not None and self.db.namespace_id is not None and self.db.state_dir:
                message = prepare_state_dir(self.db.state_dir, self.db.namespace, self.db.namespace_id)
                if message:
                    self.note(message)
            replicator = build(self.db, self.takeover, self.new_generation_reason)
            with self._lock:
                if self._stop.is_set():
                    return
                self.replicator = replicator
            replicator.run()
        except BaseException as exc:  # reported by the fleet, never lost
            self.error = exc
        finally:
            self.done = True
            self.wake.set()


class Member:
    """One database of the fleet and what happened to it so far."""

    def __init__(self, db: DatabaseConfig) -> None:
        self.db = db
        self.state = "waiting"  # waiting | starting | replicating | retrying | stopping | failed
        self.worker: ThreadWorker | None = None
        self.failures = 0
        self.error: BaseException | None = None
        self.failing_since_us: int | None = None
        self.next_try = 0.0
        self.ready_since = 0.0
        self.deleted = False  # sqld namespace deleted: stop it, do not retry
        self.successor: DatabaseConfig | None = None  # re-created under the same name
        self.transactions = 0  # over every attempt
        self.uploaded_txid = 0
        self.totals: dict[str, int] = {}  # ReplicatorStats counters of finished attempts (samples.CARRIED)
        self.failures_total = 0  # never reset (failures is, once a database ran for a while)
        self.state_since_us = time.time_ns() // 1000
        self.offline = False  # announced as spooling (started without the replica), not yet as replicating
        self.identity: FileIdentity | None = None  # the database file its worker opened (dbwatch.py)
        self.restart_reason: str | None = None  # stopping to start a new generation: the file changed, or reseed
        self.on_state: Callable[["Member"], None] | None = None  # the fleet: this member needs stepping

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.state_since_us = time.time_ns() // 1000
            if self.on_state is not None:
                self.on_state(self)

    def finished(self, worker: "ThreadWorker") -> None:
        """Account for an attempt that ended."""
        self.transactions += worker.transactions
        self.uploaded_txid = max(self.uploaded_txid, worker.uploaded_txid)
        if worker.replicator is not None:
            carry(self.totals, worker.replicator.stats)

    def health(self) -> dict:
        out = {"name": self.db.name, "kind": self.db.kind, "path": os.path.abspath(self.db.path),
               "replica": self.db.replica_display,
               "state": self.state, "failures": self.failures, "namespace_id": self.db.namespace_id}
        if self.error is not None:
            out.update(error=str(self.error) or type(self.error).__name__, failing_since_us=self.failing_since_us)
            if self.state == "retrying":
                out["next_try_in_s"] = round(max(0.0, self.next_try - time.monotonic()), 1)
        return out
