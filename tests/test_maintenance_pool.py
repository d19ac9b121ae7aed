"""Maintenance of many databases on a few shared threads (engine/daemon/maintenancepool.py).

A process serving 1,000 sqld namespaces kept a maintenance thread per namespace, asleep nearly
always.  The pool runs every database's due tasks on two threads, in order of due time, with
each task's log lines naming its database; a daemon stopping waits for its running task (as it
joined its thread) and is never scheduled again.
"""

from __future__ import annotations

import threading

from walrewind.engine import logs
from walrewind.engine.daemon.maintenancepool import MaintenancePool


class FakeMaintenance:
    """Due at ``due_us`` on a clock the test moves; each run records the database it ran under."""

    def __init__(self, name: str, clock: list[int], due_us: int | None, ran: list, gate: threading.Event | None = None):
        self.name, self._clock, self.due_us, self.ran, self.gate = name, clock, due_us, ran, gate
        self.running = threading.Event()

    def clock(self) -> int:
        return self._clock[0]

    def next_due_us(self) -> int | None:
        return self.due_us

    def run_due(self, stop=None) -> list:
        self.running.set()
        if self.gate is not None:
            self.gate.wait(30)
        self.ran.append((self.name, logs.bound()))
        self.due_us = None  # nothing due any more
        return ["ran"]

    def status(self) -> dict:
        return {"name": self.name}


def test_due_tasks_run_on_the_shared_threads_in_due_order_naming_their_database():
    clock = [1_000_000_000]
    ran: list = []
    statuses: list = []
    pool = MaintenancePool(workers=1)  # one worker: the order is the due order
    gate = threading.Event()
    first = FakeMaintenance("blocker", clock, 0, ran, gate)
    late = FakeMaintenance("late", clock, 500, ran)
    early = FakeMaintenance("early", clock, 100, ran)
    never = FakeMaintenance("never", clock, None, ran)
    stop = threading.Event()
    handles = [pool.add("blocker", first, stop, statuses.append)]
    assert first.running.wait(30)  # the worker is busy: the next two are both due when it is free
    handles += [pool.add(m.name, m, stop, statuses.append) for m in (late, early, never)]
    gate.set()
    for h in handles:
        h.join(30)
    assert ran == [("blocker", "blocker"), ("early", "early"), ("late", "late")]
    assert statuses == [{"name": "blocker"}, {"name": "early"}, {"name": "late"}]
    assert [t.name for t in threading.enumerate()].count("walrewind-maintenance") >= 1


def test_join_waits_for_a_running_task_and_a_stopped_database_is_not_run():
    clock = [1_000_000_000]
    ran: list = []
    pool = MaintenancePool(workers=2)
    gate = threading.Event()
    slow = FakeMaintenance("slow", clock, 0, ran, gate)
    handle = pool.add("slow", slow, threading.Event())
    assert slow.running.wait(30)
    assert handle.is_alive()
    handle.join(0.01)  # still running: join gives up after its timeout, as Thread.join does
    assert handle.is_alive()
    gate.set()
    handle.join(30)
    assert not handle.is_alive() and ran == [("slow", "slow")]
    stopped = threading.Event()
    stopped.set()
    one = MaintenancePool(workers=1)
    skipped = FakeMaintenance("stopped", clock, 0, ran)
    after = FakeMaintenance("after", clock, 10, ran)
    h2 = one.add("stopped", skipped, stopped)
    h3 = one.add("after", after, threading.Event())
    assert after.running.wait(30)
    h3.join(30)
    h2.join(30)
    assert ran == [("slow", "slow"), ("after", "after")], "a database that is stopping gets no more maintenance"
