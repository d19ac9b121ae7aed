"""Watching a sqld data directory: which namespaces exist, are ready, appeared or went away.

sqld has no list endpoint and no change feed for namespaces, so the watcher lists ``dbs/`` every
``interval`` seconds (the fleet calls ``scan`` when ``due``).  ``diff`` is the pure part: given the
namespaces being replicated (name -> sqld's id) and what is on disk now, it says what appeared
(ready for the first time), what went away (directory or data file gone) and what was deleted and
re-created under the same name (a new id in stats.json: a new database, see
engine/workspace/sqld.py).  A namespace that is on disk but not ready (sqld still creating it, or
not opened since a restart) is *waiting*; it is reported once per reason so a log stays readable.

``prepare_state_dir`` makes a namespace's state directory follow its identity: a state directory
left by an earlier namespace of the same name is retired before the new one starts, so the new
namespace begins a new generation instead of continuing the old one's history.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass, field

from ..errors import StateLocked
from ..fsutil import atomic_write
from ..workspace.config import SqldConfig
from ..workspace.sqld import Namespace, namespace_names, probe

SCAN_INTERVAL = 2.0  # seconds between two listings of dbs/: a new namespace is picked up within ~this
RECHECK_SECONDS = 10.0  # a ready namespace is probed again (re-created under its name?) at least this often
IDENTITY_FILE = "namespace.json"  # in a namespace's state directory: which namespace (id) it belongs to


@dataclass
class Changes:
    appeared: list[Namespace] = field(default_factory=list)  # ready, and not replicated yet
    replaced: list[Namespace] = field(default_factory=list)  # same name, another id: deleted and re-created
    gone: list[str] = field(default_factory=list)  # replicated, and no longer on disk
    waiting: dict[str, str] = field(default_factory=dict)  # newly waiting (or for a new reason): name -> why

    def __bool__(self) -> bool:
        return bool(self.appeared or self.replaced or self.gone or self.waiting)


def diff(known: dict[str, str], found: dict[str, Namespace], told_waiting: dict[str, str] | None = None) -> Changes:
    """What changed between ``known`` (replicated: name -> id) and ``found`` (on disk now).

    An id that cannot be read right now (stats.json being rewritten) is not a change; only a
    *different* id is.  A re-created namespace that is not ready yet shows as gone, and appears
    once it is ready.
    """
    told_waiting = told_waiting if told_waiting is not None else {}
    out = Changes()
    for name, old_id in known.items():
        ns = found.get(name)
        if ns is None or not ns.present:
            out.gone.append(name)
        elif ns.id is not None and ns.id != old_id:
            if ns.ready:
                out.replaced.append(ns)
            else:
                out.gone.append(name)
    for name, ns in found.items():
        if name in known:
            continue
        if ns.ready:
            out.appeared.append(ns)
        elif ns.waiting is not None and told_waiting.get(name) != ns.waiting:
            out.waiting[name] = ns.waiting
    return out


class NamespaceWatcher:
    """Periodic scans of one sqld data directory; ``known`` is what the fleet replicates."""

    def __init__(self, sqld: SqldConfig, interval: float = SCAN_INTERVAL) -> None:
        self.sqld = sqld
        self.interval = interval
        self.known: dict[str, str] = {}
        self._told_waiting: dict[str, str] = {}
        self._cache: dict[str, tuple[tuple, Namespace]] = {}
        self._next = 0.0
        self._cursor = 0  # where the next slice of re-checks starts (found)

    def due(self, now: float) -> bool:
        return now >= self._next

    def _probe(self, name: str) -> Namespace:
        """``probe``, skipped for a ready namespace whose stats.json and data file did not change."""
        ns_dir = os.path.join(self.sqld.dbs_dir, name)
        try:
            st = os.stat(os.path.join(ns_dir, "stats.json"))
            data = os.stat(os.path.join(ns_dir, "data"))
            key: tuple = (st.st_ino, st.st_mtime_ns, st.st_size, data.st_ino)
        except OSError:
            key = ()
        cached = self._cache.get(name)
        if key and cached is not None and cached[0] == key:
            return cached[1]
        ns = probe(self.sqld.dbs_dir, name)
        if ns.ready and key:
            self._cache[name] = (key, ns)
        else:
            self._cache.pop(name, None)
        return ns

    def found(self) -> dict[str, Namespace]:
        """Every namespace on disk now.  A new name is probed at once; a ready one seen before is
        looked at again (its stats.json and data file: re-created under the same name?) in
        slices, each every RECHECK_SECONDS: 1,000 namespaces probed every 2 s were 1,000 pairs of
        stat calls a second, ~2 % of a core.  A deleted one is gone from the listing at once."""
        names = namespace_names(self.sqld.dbs_dir)
        for gone in set(self._cache) - set(names):
            del self._cache[gone]
        seen = [name for name in names if name in self._cache]
        recheck: set[str] = set()
        if seen:
            count = min(len(seen), -(-len(seen) * int(self.interval * 1000) // int(RECHECK_SECONDS * 1000)))
            start = self._cursor % len(seen)
            recheck = {seen[(start + k) % len(seen)] for k in range(count)}
            self._cursor = start + count
        return {name: self._cache[name][1] if name in self._cache and name not in recheck else self._probe(name)
                for name in names}

    def scan(self, now: float | None = None) -> Changes:
        """List dbs/ once; ``known`` is updated to match what is reported."""
        now = time.monotonic() if now is None else now
        self._next = now + self.interval
        found = self.found()
        changes = diff(self.known, found, self._told_waiting)
        for name in changes.gone:
            del self.known[name]
        for ns in changes.replaced + changes.appeared:
            self.known[ns.name] = ns.id  # type: ignore[assignment]
            self._told_waiting.pop(ns.name, None)
        self._told_waiting.update(changes.waiting)
        for name in set(self._told_waiting) - set(found):
            del self._told_waiting[name]
        return changes


# --------------------------------------------------------------------------------- identity
def _pending_spool(state_dir: str) -> int:
    spool = os.path.join(state_dir, "spool")
    try:
        return sum(e.stat().st_size for e in os.scandir(spool) if e.is_file())
    except FileNotFoundError:
        return 0


def prepare_state_dir(state_dir: str, namespace: str, namespace_id: str) -> str | None:
    """Make ``state_dir`` belong to namespace ``namespace_id`` before its daemon starts.

    A state directory of another namespace id (the name was deleted and re-created) is retired:
    removed, or moved aside to ``<state_dir>.retired-<old id>`` when its spool still holds
    transactions that never reached the replica (kept for inspection; a deleted namespace's data
    cannot be read again).  Returns a message for the log when something was retired.
    """
    path = os.path.join(state_dir, IDENTITY_FILE)
    try:
        with open(path, "rb") as f:
            previous = json.loads(f.read()).get("id")
    except FileNotFoundError:
        previous = None
    except (OSError, ValueError, AttributeError):
        previous = "unreadable"
    note = None
    if previous is not None and previous != namespace_id:
        _check_unlocked(state_dir)
        pending = _pending_spool(state_dir)
        if pending:
            aside = f"{state_dir}.retired-{str(previous)[:36]}"
            shutil.rmtree(aside, ignore_errors=True)
            os.rename(state_dir, aside)
            note = (f"namespace {namespace!r} is a new database (id {namespace_id}, was {previous}): its state starts "
                    f"afresh; {pending} bytes never uploaded from the old one are kept in {aside}")
        else:
            shutil.rmtree(state_dir)
            note = (f"namespace {namespace!r} is a new database (id {namespace_id}, was {previous}): "
                    "a new generation starts in its replica")
    os.makedirs(state_dir, exist_ok=True)
    if previous != namespace_id:
        atomic_write(path, json.dumps({"namespace": namespace, "id": namespace_id}).encode())
    return note


def _check_unlocked(state_dir: str) -> None:
    """StateLocked when a daemon (ours or another process's) uses ``state_dir`` right now."""
    try:
        fd = os.open(os.path.join(state_dir, "lock"), os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise StateLocked(f"state directory {state_dir} is in use by another walrewind daemon") from None
    finally:
        os.close(fd)  # closing drops our flock before the daemon takes it
