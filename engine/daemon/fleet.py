"""Run the daemon for many databases in one process, add and remove them while it runs, and
keep the others shipping when one fails.

``walrewind replicate`` (one database, every configured one, every sqld namespace) and the Python
API use this.  The fleet owns a *member* per database: its settings, its state (starting,
replicating, retrying, stopping) and its failures.  A member's work is done by a *worker*; today
that is ``ThreadWorker``, one replicator (``Replicator``) on its own thread.  The daemon rewrite's
shared pipeline replaces only that class: everything else here talks to a worker through
``start``, ``stop``, ``join``, ``ready``, ``done``, ``error`` and ``stats``.

* A failed database is retried with backoff (1 s, 2 s, 4 s, ... up to a minute; back to 1 s once
  it has run for a minute) and reported: an event line, and the fleet's health file
  (engine/daemon/health.py) that ``db show`` reads.  The others keep shipping.  With
  ``retry=False`` (``replicate DB_PATH URL``) the run ends instead.
* With ``[sqld]`` a ``NamespaceWatcher`` looks at ``dbs/`` every couple of seconds: a new namespace
  joins as soon as sqld has made it a WAL database, a deleted one is stopped (its final sync may
  not be able to read the deleted files: reported as such, no traceback), and one deleted and
  re-created under the same name is a new database (its state directory follows the namespace id,
  so it starts a new generation).
* Every SAMPLE_SECONDS (and on every change) the health file gets each member's DatabaseSample
  (state, lag, backlog, restorable window, last drill) for ``walrewind status``; with
  ``metrics_addr`` the same samples are served as Prometheus ``/metrics`` and judged by
  ``/healthz`` (engine/daemon/metrics.py).
* SIGTERM/SIGINT stop every member with its final sync.  Events (ready, failed, deleted, stopping)
  are logged as event lines (engine/logs.py), and passed to ``on_event`` when one is given.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import sys
import threading
import time
from typing import Callable

from .. import logs
from ..errors import WalrewindError
from ..sqlite.dbinfo import check_replicable
from ..workspace.config import DatabaseConfig, SqldConfig
from . import memory
from .child import ChildApp
from .dbwatch import FileIdentity, changed, same_file, take_reseed_request
from .health import HealthFile
from .members import Member, Outcome, ThreadWorker, build, next_slice, state_dir_of  # noqa: F401  (build, Outcome: this module's interface)
from .metrics import DEFAULT_LAG_BUDGET_SECONDS, DatabaseSample, MetricsServer
from .namespaces import NamespaceWatcher, data_dir_problem, namespace_gone
from .replicator import SHORT_GIL_SWITCH, Replicator
from .samples import health_entry, member_sample

log = logging.getLogger("walrewind.fleet")

TICK = 0.25  # the fleet's loop: how soon a finished worker or a due retry is acted on
RETRY_FIRST = 1.0  # seconds before the first retry of a failed database ...
RETRY_MAX = 60.0  # ... doubling up to this
STABLE_AFTER = 60.0  # a database that ran this long before failing starts its backoff again
WATCH_SECONDS = 1.0  # how often each database file's identity and reseed requests are checked (dbwatch.py) ...
WATCHES_PER_SECOND = 200  # ... at most this many a second (1,000 sqld namespaces: each every 5 s), spread over ticks
REQUESTS_PER_SECOND = 20  # reseed requests looked for without a poke (health.poke_reseed): at most this many a second
SAMPLE_SECONDS = 2.0  # the health file (walrewind status) is rewritten this often ...
SAMPLES_PER_SECOND = 200  # ... or less often for a big fleet (a sample costs ~50 us: 1,000 namespaces every 5 s)
WATCH_FILE, WATCH_REQUEST = 1, 2  # what _watch_file looks at: the file's identity, a reseed request
BIG_FLEET = 100  # above this many databases, changes are published at most once a second
FEW_DATABASES = 8  # up to this many (and no sqld), the stages get a 0.5 ms GIL switch interval


def prepare_process(many: bool) -> None:
    """Before the first database opens.  A process serving many databases (a sqld data directory,
    one per tenant) needs ~8 descriptors per database, so the soft limit on open files is raised
    to the hard one; and with ``many`` (sqld, or more than FEW_DATABASES) the GIL keeps Python's
    5 ms switch interval: with hundreds of threads, a 0.5 ms one (Replicator.gil_switch_interval)
    made 300 namespaces cost 118 % of a core; and their wake-ups share one inotify instance."""
    Replicator.gil_switch_interval = None if many else SHORT_GIL_SWITCH
    # Many: one inotify instance and dispatcher thread for every database (inotifyhub.py); a few
    # keep a descriptor each, waited on by their observers directly (no thread hop per commit).
    Replicator.many_databases = many
    if many:
        memory.small_sqlite_connections()  # two read-only connections per database: no lookaside each
        sys.setswitchinterval(0.005)  # Python's default (an earlier daemon of this process may have lowered it)
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:  # some hard limits cannot be set as the soft one
        log.debug("cannot raise the open-files limit: %s", exc)


def _expected(exc: BaseException) -> bool:
    return isinstance(exc, (WalrewindError, OSError))


class Fleet:
    """Replicate ``databases`` (and, with ``sqld``, every namespace) until a signal or ``stop()``."""

    def __init__(self, databases: list[DatabaseConfig], *, sqld: SqldConfig | None = None, takeover: bool = False,
                 retry: bool = True, on_event: Callable[[str], None] | None = None,
                 scan_interval: float | None = None, health: HealthFile | None = None,
                 exec_command: str | None = None, metrics_addr: str | None = None,
                 lag_budget: float = DEFAULT_LAG_BUDGET_SECONDS) -> None:
        self.on_event = on_event
        self.child = ChildApp(exec_command) if exec_command else None  # replicate --exec
        self.takeover = takeover
        self.retry = retry
        self.sqld = sqld
        self.watcher = NamespaceWatcher(sqld, scan_interval or 2.0) if sqld is not None else None
        self.health = health if health is not None else HealthFile()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._members: dict[str, Member] = {}
        self._ended: list[Outcome] = []  # members that left while running (deleted namespaces)
        self._all_announced = False
        self._started_us = time.time_ns() // 1000
        self.lag_budget = lag_budget
        self._published = 0.0
        self._dirty = False  # a state changed since the health file was written
        self._entries: dict = {}  # member -> its last health entry, while quiet (samples.health_entry)
        self._watch_cursor = 0
        self._request_cursor = 0
        self._order: list[Member] | None = None  # the members in a list (slices of file checks); None: rebuild
        self._attention: set[Member] = set()  # members not simply replicating: stepped every tick (_tick)
        if not retry:
            for db in databases:
                check_replicable(db.path)  # one database: refuse at once, as before
        # Bound now: a port in use is refused before anything starts.
        self.metrics = MetricsServer(metrics_addr, self.samples, lag_budget) if metrics_addr else None
        for db in databases:
            self._join(db)

    # ------------------------------------------------------------------ public
    @property
    def replicators(self) -> list[Replicator]:
        return [m.worker.replicator for m in self._members.values() if m.worker is not None and m.worker.replicator]

    def members(self) -> list[dict]:
        """Every database's health, as the health file has it."""
        return [m.health() for m in list(self._members.values())]

    def samples(self) -> list[DatabaseSample]:
        """Every database as it is now (metrics and the health file; callable from any thread)."""
        now = time.time_ns() // 1000
        return [member_sample(m, now) for m in list(self._members.values())]

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    @property
    def stopped_by_request(self) -> bool:
        return self._stop.is_set()

    def run(self, install_signal_handlers: bool = True) -> list[Outcome]:
        """Run until stopped; every database gets its final sync.  Returns one outcome each."""
        previous = {}
        if install_signal_handlers:
            def on_signal(signum, _frame):
                if self.child is not None and self.child.forward(signum):
                    self._event("signal", None, f"signal {signum}: passed on to {self.child.argv[0]}; final sync once it exits")
                    return
                self._event("signal", None, f"signal {signum}: final sync of {len(self._members)} database(s) and exit")
                self.stop()

            previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        memory.configure()  # before the members' threads make their malloc arenas
        prepare_process(many=self.sqld is not None or len(self._members) > FEW_DATABASES)
        trimmer = memory.HeapTrimmer()
        try:
            if self.metrics is not None:
                self.metrics.start()
                self._event("metrics", None, f"serving /metrics and /healthz on http://{self.metrics.address}")
            if self.sqld is not None:
                self._check_data_dir(self.sqld)
            for m in self._members.values():
                self._start(m)
            self._publish()
            full = True  # look at every member (else only those not simply replicating, see _tick)
            while not self._stop.is_set():
                now = time.monotonic()
                if self.watcher is not None and self.watcher.due(now):
                    full |= self._scan(now)
                self._dirty |= self._tick(now, full, requests=self.health.take_reseed_poke())
                n = len(self._members)
                since = now - self._published
                if (self._dirty and (n <= BIG_FLEET or since >= 1.0)) or since >= max(SAMPLE_SECONDS, n / SAMPLES_PER_SECOND):
                    self._publish()
                if not self.retry and any(m.state == "failed" for m in self._attention):
                    break
                if self.child is not None and self._child_step():
                    break
                trimmer.tick(now)
                full = self._wake.wait(TICK)  # a worker ended, or stop: look at everyone
                self._wake.clear()
        finally:
            if self.child is not None:
                self.child.stop()
            for m in list(self._members.values()):
                if m.worker is not None:
                    m.worker.stop()
            for m in list(self._members.values()):
                if m.worker is not None:
                    m.worker.join()
                    self._finished(m, time.monotonic(), stopping=True)
            self.health.remove()
            Replicator.many_databases = False  # a replicator started later in this process is on its own
            if self.metrics is not None:
                self.metrics.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)
        return self._ended + [self._outcome(m) for m in self._members.values()]

    def _tick(self, now: float, full: bool, requests: bool = False) -> bool:
        """Advance the members that need it; True when a state changed.

        A member simply replicating needs nothing until its worker ends (which wakes the loop:
        ``full``) or its file is due for a check: each tick checks the next slice of the members,
        so every file is checked every WATCH_SECONDS, or every ``n / WATCHES_PER_SECOND`` seconds
        in a big fleet, and every reseed request looked for every ``n / REQUESTS_PER_SECOND``
        seconds (``requests``: a poke came, every member's now).  Only the members in
        ``_attention`` (not simply replicating) are visited besides: with 1,000 sqld namespaces,
        visiting every member four times a second and checking every file every second cost ~8 %
        of a core on its own, and a loop over every member each tick ~0.1 %."""
        members = self._ordered()
        n = len(members)
        if not n:
            return False
        checks = dict.fromkeys(self._slice(members, "_watch_cursor", WATCHES_PER_SECOND), WATCH_FILE)
        for m in members if requests else self._slice(members, "_request_cursor", REQUESTS_PER_SECOND):
            checks[m] = checks.get(m, 0) | WATCH_REQUEST
        changed = False
        attention = self._attention
        for m, what in checks.items():
            if what == WATCH_FILE and m not in attention and same_file(m.identity, m.db.path):
                continue  # the usual case, without the steps below (200 a second at 1,000 namespaces)
            if self._step(m, now, what):
                changed = True
                self._settle(m)
            elif m in attention:
                self._settle(m)
        for m in members if full else list(attention):
            if m not in checks:
                changed |= self._step(m, now)
                self._settle(m)
        return changed

    def _slice(self, members: list[Member], cursor: str, per_second: int) -> list[Member]:
        """The next members due for a check each gets every max(WATCH_SECONDS, n / per_second) s."""
        out, position = next_slice(members, getattr(self, cursor), TICK / max(WATCH_SECONDS, len(members) / per_second))
        setattr(self, cursor, position)
        return out

    def _ordered(self) -> list[Member]:
        if self._order is None:
            self._order = list(self._members.values())
        return self._order

    def _settle(self, m: Member) -> None:
        """Out of ``_attention`` once simply replicating (``Member.on_state`` puts it back)."""
        if m.state == "replicating" and not m.offline:
            self._attention.discard(m)
        else:
            self._attend(m)

    def _attend(self, m: Member) -> None:
        if self._members.get(m.db.path) is m:
            self._attention.add(m)

    def _join(self, db: DatabaseConfig) -> Member:
        m = Member(db)
        m.on_state = self._attend
        self._members[db.path] = m
        self._attention.add(m)
        self._order = None
        return m

    def _child_step(self) -> bool:
        """Start the --exec child once every database replicates; True once it has exited."""
        assert self.child is not None
        if not self.child.started:
            if self._members and all(m.state == "replicating" for m in self._members.values()):
                pid = self.child.start()
                self._event("child_started", None, f"started {self.child.command} (pid {pid})")
            return False
        code = self.child.exit_code()
        if code is None:
            return False
        self._event("child_exited", None, f"{self.child.argv[0]} exited with {code}: final sync of {len(self._members)} database(s)")
        self._stop.set()
        return True

    # ------------------------------------------------------------------ members
    def _start(self, m: Member) -> None:
        # a `walrewind reseed` left while no daemon ran is taken at the start; the reason stays on
        # the member until a worker is ready, so a failed attempt's retry still starts anew
        m.restart_reason = m.restart_reason or take_reseed_request(state_dir_of(m.db))
        m.identity = FileIdentity.of(m.db.path)
        m.worker = ThreadWorker(m.db, self.takeover, self._wake, lambda line: self._event("state_dir", m.db.name, line),
                                new_generation_reason=m.restart_reason)
        m.set_state("starting")
        m.worker.start()

    def _watch_file(self, m: Member, what: int = WATCH_FILE | WATCH_REQUEST) -> bool:
        """Restart ``m`` on a new generation when its file is no longer the one its worker opened
        (replaced, deleted, truncated: the worker would ship nothing more, silently) or when
        `walrewind reseed` asked for it.  True when a restart began.  One ``stat`` of the file
        (WATCH_FILE); a namespace's file gone is the watcher's to report (deleted), made due."""
        if m.worker is None or m.state not in ("starting", "replicating") or m.restart_reason:
            return False
        why = None
        if what & WATCH_FILE:
            try:
                st: os.stat_result | None = os.stat(m.db.path)
            except FileNotFoundError:
                st = None
            if st is None and m.db.namespace is not None:
                if self.watcher is not None:
                    self.watcher.recheck(m.db.namespace)
            else:
                why = changed(m.identity, st, m.db.path)
        if why is not None:
            why += ": the daemon's open files are the old database's"
        else:
            why = take_reseed_request(state_dir_of(m.db)) if what & WATCH_REQUEST else None
            if why is None:
                return False
        m.restart_reason = why
        self._event("restarting", m.db.name, f"{m.db.name}: {why}; final sync of what was read, then a NEW "
                    f"generation from {m.db.path} as it is now (the history before stays restorable)", logging.WARNING)
        m.set_state("stopping")
        m.worker.stop()
        return True

    def _step(self, m: Member, now: float, watch: int = 0) -> bool:
        """Advance one member (``watch``: check its file too, _watch_file); True when its state changed."""
        w = m.worker
        if w is not None and not w.done and watch and self._watch_file(m, watch):
            return True
        if w is not None and m.state == "starting" and w.ready:
            m.set_state("replicating")
            m.ready_since = now
            m.restart_reason = None
            if m.failures:
                self._event("recovered", m.db.name, f"{m.db.name}: replicating again after {m.failures} failure(s)")
            alone = len(self._members) == 1 and self.watcher is None
            m.offline = w.offline
            if m.offline:
                self._event("spooling", m.db.name, f"spooling {self._label(m)}: {m.db.path} -> {m.db.replica_display} "
                            "is unreachable; every commit is captured and uploaded once it answers"
                            + (" (Ctrl-C or SIGTERM to stop)" if alone else ""), logging.WARNING)
            else:
                self._event("replicating", m.db.name, f"replicating {self._label(m)}: {m.db.path} -> "
                            f"{m.db.replica_display}" + (" (Ctrl-C or SIGTERM to stop)" if alone else ""))
            if not alone and not self._all_announced and all(x.state == "replicating" for x in self._members.values()):
                self._all_announced = True
                self._event("all_replicating", None,
                            f"all {len(self._members)} database(s) replicating (Ctrl-C or SIGTERM to stop)")
            return True
        if w is not None and m.offline and not w.offline and not w.done:
            m.offline = False
            self._event("replicating", m.db.name, f"replicating {self._label(m)}: {m.db.path} -> {m.db.replica_display} "
                        "(the replica answered)")
            return True
        if w is not None and w.done:
            self._finished(m, now)
            return True
        if m.state == "retrying" and now >= m.next_try:
            self._start(m)
            return True
        return False

    def _finished(self, m: Member, now: float, stopping: bool = False) -> None:
        """Member ``m``'s worker ended: account for it, then retry, report, or let it go."""
        w = m.worker
        assert w is not None
        m.worker = None
        m.finished(w)
        if m.db.namespace is not None and not m.deleted and namespace_gone(m.db):
            m.deleted = True
        if m.deleted:
            self._leave(m, w.error)
            return
        if m.restart_reason is not None and w.error is None and not (stopping or self._stop.is_set()):
            self._start(m)  # a new generation from the file as it is now (_watch_file)
            return
        if stopping or self._stop.is_set():
            m.set_state("failed" if w.error is not None else "stopped")
            if w.error is not None:
                m.error = w.error
            return
        error = w.error or WalrewindError("the replicator stopped on its own")
        if m.state == "replicating" and now - m.ready_since >= STABLE_AFTER:
            m.failures = 0
        m.failures += 1
        m.failures_total += 1
        m.error = error
        m.failing_since_us = m.failing_since_us or time.time_ns() // 1000
        if not _expected(error):
            log.error("%s: unexpected error (a bug)", m.db.name, exc_info=error)
        if not self.retry:
            m.set_state("failed")
            return
        delay = min(RETRY_MAX, RETRY_FIRST * 2 ** (m.failures - 1))
        m.set_state("retrying")
        m.next_try = now + delay
        self._event("failed", m.db.name, f"{m.db.name}: FAILED: {error}; retrying in {delay:.0f} s (failure "
                    f"{m.failures}; the other databases keep replicating)", logging.ERROR)

    def _leave(self, m: Member, error: BaseException | None, ran: bool = True) -> None:
        """A deleted namespace's member is done: say how its last sync went; start its successor."""
        if not ran:
            how = "it was not running" + (f" (last failure: {error})" if error is not None else "")
        elif error is None:
            how = "its final sync completed"
        elif _expected(error):
            how = f"its final sync could not read the deleted files ({error})"
        else:
            how = f"its final sync failed ({type(error).__name__}: {error})"
        self._event("namespace_deleted", m.db.name, f"namespace {m.db.name} was deleted: stopped replicating it; "
                    f"{how}; its replica {m.db.replica_display} is kept")
        self._ended.append(Outcome(m.db.name, None, m.transactions, m.uploaded_txid, "deleted"))
        del self._members[m.db.path]
        self._entries.pop(m, None)
        self._attention.discard(m)
        self._order = None
        if m.successor is not None and not self._stop.is_set():
            self._start(self._join(m.successor))

    def _check_data_dir(self, sqld: SqldConfig) -> None:
        waiting = data_dir_problem(sqld)  # ConfigError when it cannot be sqld's
        if waiting is not None:
            self._event("sqld_waiting", None, waiting)

    # ------------------------------------------------------------------ namespaces
    def _scan(self, now: float) -> bool:
        assert self.watcher is not None and self.sqld is not None
        changes = self.watcher.scan(now)
        for name, why in changes.waiting.items():
            self._event("namespace_waiting", name, f"namespace {name}: waiting ({why})")
        for name in changes.gone:
            self._delete(name, None)
        for ns in changes.replaced:
            self._event("namespace_recreated", ns.name,
                        f"namespace {ns.name} was deleted and re-created (new id {ns.id}): a new database")
            self._delete(ns.name, self.sqld.namespace(ns.name, ns.id))
        for ns in changes.appeared:
            db = self.sqld.namespace(ns.name, ns.id)
            old = self._members.get(db.path)
            if old is not None:  # deleted on one scan, back on the next: after the old one stops
                old.successor = db
                continue
            self._event("namespace_found", ns.name, f"namespace {ns.name}: found (id {ns.id})")
            self._start(self._join(db))
        if changes:
            self._publish()
        return bool(changes)

    def _delete(self, name: str, successor: DatabaseConfig | None) -> None:
        assert self.sqld is not None
        m = self._members.get(self.sqld.namespace_path(name))
        if m is None:
            # Already gone: its file check saw the new file first and the member left as deleted.
            if successor is not None and not self._stop.is_set():
                self._start(self._join(successor))
            return
        m.deleted = True
        m.successor = successor
        if m.worker is not None:
            m.set_state("stopping")
            m.worker.stop()  # its final sync; _finished then lets it go
        else:
            self._leave(m, m.error, ran=False)

    # ------------------------------------------------------------------ reporting
    def _event(self, kind: str, db: str | None, message: str, level: int = logging.INFO) -> None:
        """One event line (engine/logs.py: text or JSON, always shown), and ``on_event`` if given."""
        logs.event(kind, db, message, level)
        if self.on_event is not None:
            self.on_event(message)

    @staticmethod
    def _label(m: Member) -> str:
        return f"{m.db.name} (sqld namespace)" if m.db.namespace is not None else m.db.name

    def _outcome(self, m: Member) -> Outcome:
        failed = m.state == "failed" or (m.state == "retrying" and m.error is not None)
        return Outcome(m.db.name, m.error if failed else None, m.transactions, m.uploaded_txid,
                       "failed" if failed else "stopped")

    def _publish(self) -> None:
        """The health file: each member's state and sample (every SAMPLE_SECONDS, and on changes)."""
        self._published = time.monotonic()
        self._dirty = False
        try:
            now = time.monotonic()
            entries = [health_entry(m, self._entries, now) for m in list(self._members.values())]
            self.health.write(entries, self._started_us, lag_budget=self.lag_budget)
        except OSError as exc:  # reporting must never stop replication
            log.warning("cannot write the fleet's health file %s: %s", self.health.path, exc)
