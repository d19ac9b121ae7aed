"""How each database of a running ``walrewind replicate`` is doing, for other commands to read.

A fleet (engine/daemon/fleet.py) rewrites ``<state root>/fleets/<pid>.json`` whenever a
database changes state (starting, replicating, retrying after a failure with the error, the
number of failures and when the next attempt is due, stopped) and every couple of seconds with
each database's ``DatabaseSample`` (lag, backlog, last upload, restorable window, last drill).
``db show`` reads it to say that a database is failing, which the replica alone cannot tell;
``walrewind status`` (:func:`machine_status`) judges every database with the same verdict as
``/healthz``.  A file whose process is gone is ignored (and removed when it is this host's); one
whose process lives but stopped rewriting it marks its databases unresponsive.
"""

from __future__ import annotations

import json
import os
import socket
import time

from .. import defaults
from ..errors import UnknownSource
from ..logs import duration
from .metrics import DEFAULT_LAG_BUDGET_SECONDS, DatabaseSample, judge_one

STALE_SECONDS = 15.0  # a live fleet that has not rewritten its file for this long is stuck
_FIELDS = set(DatabaseSample.__dataclass_fields__)


def fleets_dir(environ=None) -> str:
    return os.path.join(defaults.state_root(environ), "fleets")


def pid_alive(pid: int) -> bool:
    """A process with this pid exists on this host (ours to signal or not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class HealthFile:
    """This process's file; ``write`` replaces it atomically, ``remove`` at the end of the run."""

    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory or fleets_dir()
        self.path = os.path.join(self.directory, f"{os.getpid()}.json")
        self.poke_path = reseed_poke_path(os.getpid(), self.directory)

    def take_reseed_poke(self) -> bool:
        """True (once) when `walrewind reseed` left a request for one of this fleet's databases
        since the last call: the fleet then looks for every database's request at once, instead
        of opening each database's request file every second (engine/daemon/dbwatch.py)."""
        try:
            os.unlink(self.poke_path)
        except FileNotFoundError:
            return False
        return True

    def write(self, databases: list[dict | bytes], started_us: int,
              lag_budget: float = DEFAULT_LAG_BUDGET_SECONDS) -> None:
        """Replace the file (rename of a complete temporary file; no fsync: it describes this
        process only while it runs, and is rewritten every couple of seconds).  An entry may come
        encoded already (``samples.health_entry``: a quiet database's entry is reused as bytes)."""
        os.makedirs(self.directory, exist_ok=True)
        doc = {"pid": os.getpid(), "host": socket.gethostname(), "started_us": started_us,
               "written_us": time.time_ns() // 1000, "lag_budget_s": lag_budget}
        head = json.dumps(doc, separators=(",", ":")).encode()
        body = b",".join(e if isinstance(e, bytes) else json.dumps(e, separators=(",", ":")).encode()
                         for e in databases)
        tmp = f"{self.path}.tmp"
        with open(tmp, "wb") as f:
            f.write(head[:-1] + b',"databases":[' + body + b"]}")
        os.replace(tmp, self.path)

    def remove(self) -> None:
        for path in (self.path, self.poke_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def reseed_poke_path(pid: int, directory: str | None = None) -> str:
    return os.path.join(directory or fleets_dir(), f"{pid}.reseed")


def poke_reseed(pid: int, directory: str | None = None) -> None:
    """Tell the fleet of process ``pid`` that a reseed request waits (after it was written)."""
    with open(reseed_poke_path(pid, directory), "wb"):
        pass


def running_fleets(directory: str | None = None) -> list[dict]:
    """The documents of live fleets on this host."""
    directory = directory or fleets_dir()
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        if not name.endswith(".json"):
            continue
        path = os.path.join(directory, name)
        try:
            with open(path, "rb") as f:
                doc = json.loads(f.read())
            pid, host = int(doc["pid"]), doc["host"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if host != socket.gethostname():
            continue
        if pid_alive(pid):
            out.append(doc)
        else:
            try:
                os.unlink(path)
            except OSError:
                pass
    return out


def database_health(db_path: str, directory: str | None = None) -> dict | None:
    """The entry of a live fleet that replicates ``db_path`` (by real path), with its ``pid``."""
    real = os.path.realpath(db_path)
    for doc in running_fleets(directory):
        for entry in doc.get("databases", []):
            if isinstance(entry, dict) and os.path.realpath(str(entry.get("path", ""))) == real:
                return {**entry, "pid": doc["pid"]}
    return None


def machine_status(configured=(), name: str | None = None, lag_budget: float = DEFAULT_LAG_BUDGET_SECONDS,
                   directory: str | None = None, now_us: int | None = None) -> dict:
    """Every database a running fleet on this machine reports, and every ``configured`` database
    (``DatabaseConfig``) none of them replicates (stopped), each judged like ``/healthz``.

    ``name``: only the database of that configured name, or at that path.  Returns ``healthy``,
    a one-line ``reason`` and ``databases`` (sample fields plus ``pid``, ``lag_budget_s``,
    ``healthy`` and ``reason``)."""
    now = now_us or time.time_ns() // 1000
    rows: list[tuple[DatabaseSample, int | None, float]] = []
    running: set[str] = set()
    for doc in running_fleets(directory):
        budget = float(doc.get("lag_budget_s") or DEFAULT_LAG_BUDGET_SECONDS)
        silent = (now - int(doc.get("written_us") or now)) / 1e6
        for entry in doc.get("databases", []):
            if not isinstance(entry, dict):
                continue
            raw = entry.get("sample") or {k: entry.get(k) for k in ("name", "state", "path", "replica", "error")}
            sample = DatabaseSample(**{k: v for k, v in raw.items() if k in _FIELDS})
            if silent > STALE_SECONDS:
                sample.state, sample.error = "unresponsive", f"pid {doc['pid']} has not reported for {duration(silent)}"
            rows.append((sample, int(doc["pid"]), budget))
            running.add(os.path.realpath(sample.path))
    for db in configured:
        if os.path.realpath(db.path) not in running:
            rows.append((DatabaseSample(db.name, "stopped", path=db.path, replica=db.replica_display,
                                        error="no walrewind replicate on this machine replicates it"), None, lag_budget))
    if name is not None:
        rows = [r for r in rows if r[0].name == name or os.path.realpath(r[0].path) == os.path.realpath(name)]
        if not rows:
            raise UnknownSource(f"{name!r}: no running walrewind replicate on this machine replicates a database of "
                                "that name or path, and no configured database has it")
    out = []
    for sample, pid, budget in rows:
        reason = judge_one(sample, budget, now)
        out.append(dict(sample.to_json(), pid=pid, lag_budget_s=budget, healthy=reason is None, reason=reason))
    bad = [row["reason"] for row in out if row["reason"]]
    if not out:
        reason = "no database is being replicated on this machine, and none is configured"
    elif bad:
        reason = bad[0] + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
    else:
        reason = f"{len(out)} database(s) replicating within their lag budget"
    return {"healthy": bool(out) and not bad, "reason": reason, "databases": out}
