"""Named restore points as a user makes and uses them: ``mark``, ``marks``, ``unmark``, ``--mark``.

``make_mark`` finds the live database and its daemon's state directory, places the point
(engine/workspace/markpoint.py: SQLite's commit counter at the call, mapped to a txid once the
daemon has uploaded that far) and writes ``marks/<name>.json`` into the replica
(engine/replica/marks.py).  The CLI and the Python API both call these functions.

Which database a source means: a configured name gives its path and state directory.  A replica
URL gives neither, so they come from what runs on this host: a configured database with that
replica, else the running daemon's fleet health file (engine/daemon/health.py: the database
path) together with the replica's lease (which names the holding daemon's state directory and
database path), else the lease alone when its holder is on this host.  Whether a daemon runs
(a live fleet, or a lease holder on this host whose process is alive) matters for one edge of
the mapping, see ``markpoint._unchanged``.
"""

from __future__ import annotations

import os
import re
import socket
import time
from dataclasses import dataclass

from .. import defaults
from ..daemon.health import pid_alive, running_fleets
from ..errors import MarkBroken, MarkError, RestoreError
from ..replica.index import Replica
from ..replica.lease import Holder
from ..replica.marks import (
    Mark,
    delete_mark,
    get_mark,
    load_marks,
    put_mark,
    refuse_existing,
    validate_mark_name,
)
from ..restore.planning import plan_restore
from ..storage import Storage
from ..timeparse import format_us
from .catalog import current_user
from .config import Config
from .markpoint import Waiting, locate_point, same_replica
from .sources import Source

MARK_TIMEOUT_SECONDS = 30.0  # `mark` waits this long for the daemon to upload the marked point
_EPOCH_RE = re.compile(r"lease/([0-9a-f]{16})")


@dataclass(frozen=True)
class LiveDatabase:
    """The live database behind a source, where its daemon keeps state, and whether it runs."""

    path: str
    state_dir: str
    daemon_pid: int | None  # a daemon on this host replicating it now, if any

    def hint(self) -> str:
        if self.daemon_pid is not None:
            return f" (walrewind daemon pid {self.daemon_pid} replicates {self.path})"
        return f" (no walrewind daemon on this host is replicating {self.path}: is `walrewind replicate` running?)"


def _fleet_entry(path: str | None, replica_url: str | None) -> dict | None:
    for doc in running_fleets():
        for entry in doc.get("databases", []):
            if not isinstance(entry, dict):
                continue
            if path is not None and os.path.realpath(str(entry.get("path", ""))) == os.path.realpath(path):
                return {**entry, "pid": doc["pid"]}
            if path is None and replica_url is not None and same_replica(str(entry.get("replica", "")), replica_url):
                return {**entry, "pid": doc["pid"]}
    return None


def _lease_holder(storage: Storage) -> Holder | None:
    """The newest lease epoch's holder (one LIST of lease/, one GET), if it is on this host."""
    epochs = [int(m.group(1), 16) for info in storage.list("lease/") if (m := _EPOCH_RE.fullmatch(info.key))]
    if not epochs:
        return None
    key = f"lease/{max(epochs):016x}"
    holder = Holder.from_bytes(storage.get(key), key)
    return holder if holder.host == socket.gethostname() else None


def live_database(source: Source, config: Config | None, storage: Storage) -> LiveDatabase:
    """Where the database of ``source`` lives on this host and where its daemon keeps state."""
    db = source.database
    if db is None and config is not None:
        db = next((d for d in config.databases.values() if same_replica(d.replica, source.replica_url)), None)
    holder = _lease_holder(storage)
    entry = _fleet_entry(db.path if db is not None else None, None if db is not None else source.replica_url)
    if db is not None:
        path = os.path.abspath(db.path)
    elif entry is not None:
        path = os.path.abspath(str(entry["path"]))
    elif holder is not None:
        path = os.path.abspath(holder.db_path)
    else:
        raise MarkError(
            f"no walrewind daemon on this host replicates {source.display}: given a replica URL, the database is the "
            "one the running daemon replicates (start `walrewind replicate`, or give the database's configured name)"
        )
    ours = holder if holder is not None and os.path.abspath(holder.db_path) == path else None
    if db is not None and db.state_dir:
        state_dir = db.state_dir
    elif entry is not None and entry.get("state_dir"):
        state_dir = str(entry["state_dir"])
    elif ours is not None:
        state_dir = ours.state_dir
    else:
        state_dir = defaults.state_dir_for(path)
    pid = int(entry["pid"]) if entry is not None else None
    if pid is None and ours is not None and not ours.released and pid_alive(ours.pid):
        pid = ours.pid  # a daemon without a fleet health file (embedded in an application, tests)
    return LiveDatabase(path, state_dir, pid)


def make_mark(source: Source, name: str, *, config: Config | None = None, note: str | None = None,
              timeout: float = MARK_TIMEOUT_SECONDS, waiting: Waiting | None = None) -> Mark:
    """Record restore point ``name``: every transaction committed when this is called, none after.

    Waits up to ``timeout`` seconds for the daemon to upload that far; nothing is written to the
    replica unless the point is exact (MarkTimeout, MarkInexact otherwise)."""
    validate_mark_name(name)
    if timeout <= 0:
        raise MarkError(f"the timeout must be positive, got {timeout:g}")
    storage = source.storage(write=True)
    refuse_existing(storage, name)  # before any waiting
    live = live_database(source, config, storage)
    point = locate_point(storage, live.path, live.state_dir, source.replica_url, timeout, waiting, live.hint(),
                         daemon_running=live.daemon_pid is not None)
    mark = Mark(name, point.txid, point.commit_us, point.generation, point.db_id, time.time_ns() // 1000,
                f"{current_user()}@{socket.gethostname()}", note, point.change)
    put_mark(storage, mark)
    return mark


@dataclass(frozen=True)
class MarkStatus:
    """A mark as ``walrewind marks`` lists it: restorable, or broken and why."""

    mark: Mark
    broken: str | None = None

    def to_json(self) -> dict:
        doc = self.mark.to_json()
        doc.pop("version", None)
        return {**doc, "restorable": self.broken is None, "broken": self.broken}


def mark_problem(replica: Replica, mark: Mark) -> str | None:
    """Why ``mark`` cannot be restored exactly from what ``replica`` lists now (None: it can)."""
    if not any(g.id == mark.generation for g in replica.generations):
        return f"its generation {mark.generation} is gone from the replica"
    try:
        plan = plan_restore(replica, target_txid=mark.txid)
    except RestoreError as exc:
        return str(exc)
    if plan.generation.id != mark.generation:
        return f"txid {mark.txid} now resolves to generation {plan.generation.id}, not {mark.generation}"
    if not plan.exact:
        return (f"the segments from a snapshot to txid {mark.txid} are gone; only the snapshot at txid "
                f"{plan.snapshot.txid} remains")
    return None


def list_marks(source: Source) -> tuple[list[MarkStatus], dict[str, str]]:
    """Every mark of ``source``'s replica with whether it is still restorable (one LIST of the
    history, one LIST + one GET per mark); and mark objects that could not be read."""
    storage = source.storage()
    marks, problems = load_marks(storage)
    replica = Replica(storage) if marks else None
    return [MarkStatus(m, mark_problem(replica, m)) for m in marks], problems  # type: ignore[arg-type]


def remove_mark(source: Source, name: str) -> Mark:
    return delete_mark(source.storage(write=True), name)


def resolve_mark(storage: Storage, name: str, exclusive: bool = False) -> Mark:
    """The mark ``name``, refused (MarkBroken) unless its point, or with ``exclusive`` the one
    right before it, can be restored exactly from what the replica holds now."""
    mark = get_mark(storage, name)
    replica = Replica(storage)
    problem = mark_problem(replica, mark)
    if problem is None and exclusive:
        try:
            plan = plan_restore(replica, target_txid=mark.txid - 1)
        except RestoreError as exc:
            problem = f"the point right before it (txid {mark.txid - 1}) cannot be restored: {exc}"
        else:
            if not plan.exact:
                problem = f"the point right before it (txid {mark.txid - 1}) is outside the transaction-exact history"
    if problem is not None:
        raise MarkBroken(f"mark {name!r} (txid {mark.txid}, {format_us(mark.commit_us)}) cannot be restored: {problem}")
    return mark
