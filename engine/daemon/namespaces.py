"""Watching a sqld data directory: which namespaces exist, are ready, appeared or went away.

sqld has no list endpoint and no change feed for namespaces, so the watcher looks at ``dbs/`` every
``interval`` seconds (the fleet calls ``scan`` when ``due``): one ``stat``, and a listing only when
that changed (a namespace created, deleted or re-created adds or removes its directory there).  ``diff`` is the pure part: given the
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

from ..errors import ConfigError, StateLocked
from ..fsutil import atomic_write
from ..workspace.config import DatabaseConfig, SqldConfig
from ..workspace.sqld import Namespace, namespace_id, namespace_names, probe

SCAN_INTERVAL = 2.0  # seconds between two looks at dbs/: a new namespace is picked up within ~this
RECHECK_SECONDS = 10.0  # after dbs/ changed, every ready namespace is probed again (re-created?) within this ...
QUIET_RECHECK_SECONDS = 60.0  # ... and at least this often while it does not change
RACY_NS = 2_000_000_000  # a directory changed this recently may change again within its mtime's granule
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
        self._names: list[str] = []  # dbs/ at the last listing
        self._listed: tuple | None = None  # dbs/'s stat before that listing (None: list it again)
        self._fast_left = 0  # re-checks still to make at the RECHECK_SECONDS pace (dbs/ changed)
        self._forced: set[str] = set()  # probed at the next scan whatever the cache says (recheck)
        self._seen: list[str] = []  # the listed names that are cached (ready), in listing order

    def due(self, now: float) -> bool:
        return now >= self._next

    def recheck(self, name: str) -> None:
        """Probe ``name`` at the next scan, and make that scan due: its data file was found missing
        (the fleet's file check) while dbs/ itself did not change."""
        self._forced.add(name)
        self._next = 0.0

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

    def _listing(self) -> tuple[list[str], bool]:
        """dbs/'s directory names, and whether they were listed anew.  One ``stat`` of dbs/ when
        it did not change since the last listing (its mtime, ctime and link count move with every
        directory made, removed or renamed in it); a change within the same timestamp granule as
        that stat would not show, so a listing of a directory changed less than RACY_NS before is
        not trusted at the next scan (git's "racy" entries)."""
        try:
            st = os.stat(self.sqld.dbs_dir)
            key: tuple | None = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_nlink, st.st_size)
            racy = time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < RACY_NS
        except OSError:
            key, racy = None, True
        if key is not None and key == self._listed:
            return self._names, False
        self._names = namespace_names(self.sqld.dbs_dir)
        self._listed = None if racy else key
        self._fast_left = len(self._names)
        return self._names, True

    def found(self) -> dict[str, Namespace] | None:
        """Every namespace on disk now, or None when nothing can have changed since the last scan.

        dbs/ is listed again only when it changed (``_listing``).  A name not ready yet is probed
        at every scan; a ready one seen before is looked at again (its stats.json and data file:
        re-created under the same name?) in slices: each within RECHECK_SECONDS after dbs/ changed
        (sqld deletes a namespace's directory, and makes it anew), else every
        QUIET_RECHECK_SECONDS.  1,000 namespaces listed and 200 of them probed every 2 s were
        ~0.2 % of a core while nothing happened."""
        names, listed = self._listing()
        if listed:
            for gone in set(self._cache) - set(names):
                del self._cache[gone]
        if listed or len(self._seen) != len(self._cache):
            self._seen = [name for name in names if name in self._cache]
        seen = self._seen
        recheck = set(self._forced)
        self._forced.clear()
        if seen:
            period = RECHECK_SECONDS if self._fast_left > 0 else QUIET_RECHECK_SECONDS
            count = min(len(seen), -(-len(seen) * int(self.interval * 1000) // int(period * 1000)))
            self._fast_left -= count
            start = self._cursor % len(seen)
            recheck.update(seen[(start + k) % len(seen)] for k in range(count))
            self._cursor = start + count
        if not listed and len(seen) == len(names) == len(self._cache):
            # every name ready and cached, dbs/ unchanged: only the re-checks can show a change
            if all(name in self._cache and self._cache[name][1] is self._probe(name) for name in recheck):
                return None
        return {name: self._cache[name][1] if name in self._cache and name not in recheck else self._probe(name)
                for name in names}

    def scan(self, now: float | None = None) -> Changes:
        """Look at dbs/ once (``found``); ``known`` is updated to match what is reported."""
        now = time.monotonic() if now is None else now
        self._next = now + self.interval
        found = self.found()
        if found is None:
            return Changes()
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


def data_dir_problem(sqld: SqldConfig) -> str | None:
    """ConfigError when ``sqld.data_dir`` cannot be sqld's; a message when its dbs/ is not there yet."""
    if not os.path.isdir(sqld.data_dir):
        raise ConfigError(f"[sqld] data_dir {sqld.data_dir} does not exist (it is sqld's --db-path)")
    if os.path.basename(os.path.normpath(sqld.data_dir)) == "dbs" and not os.path.isdir(sqld.dbs_dir):
        raise ConfigError(f"[sqld] data_dir {sqld.data_dir} looks like sqld's dbs/ directory itself; give its "
                          f"parent (sqld's --db-path)")
    if os.path.isdir(sqld.dbs_dir):
        return None
    marks = [m for m in (".version", "metastore") if os.path.exists(os.path.join(sqld.data_dir, m))]
    return f"{sqld.dbs_dir} does not exist yet" + (
        " (sqld makes it with its first namespace)" if marks else
        f": {sqld.data_dir} does not look like a sqld data directory (no .version, metastore or dbs/); "
        "waiting for namespaces anyway")


def namespace_gone(db: DatabaseConfig) -> bool:
    """The namespace of ``db`` was deleted (its file is gone, or another id is in its place)."""
    if not os.path.isfile(db.path):
        return True
    current = namespace_id(os.path.dirname(db.path))
    return current is not None and current != db.namespace_id


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
