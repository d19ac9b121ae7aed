"""The fleet's loop with many members: each tick steps only the members that need it, and every
member's file is still checked regularly (engine/daemon/fleet.py, ``Fleet._tick``)."""

from __future__ import annotations

import threading

import pytest
from walrewind.engine.daemon import fleet as fleet_module
from walrewind.engine.daemon.fleet import Fleet
from walrewind.engine.workspace.config import DatabaseConfig


def _fleet(tmp_path, n: int) -> tuple[Fleet, list]:
    dbs = [DatabaseConfig(name=f"db{i}", path=str(tmp_path / f"db{i}"), replica=f"file://{tmp_path}/r{i}")
           for i in range(n)]
    f = Fleet(dbs, retry=True, health=None)
    stepped: list = []
    f._step = lambda m, now, watch=0: stepped.append((m.db.name, watch)) or False
    for m in f._members.values():
        m.state = "replicating"
    return f, stepped


def _settled(f: Fleet, stepped: list) -> None:
    """A full tick (a worker ended: everyone is looked at) settles who needs stepping."""
    f._tick(0.0, full=True)
    stepped.clear()


def test_a_quiet_tick_steps_only_the_slice_of_files_due(tmp_path):
    n = 1000
    f, stepped = _fleet(tmp_path, n)
    _settled(f, stepped)
    period = max(fleet_module.WATCH_SECONDS, n / fleet_module.WATCHES_PER_SECOND)  # 5 s at 1,000
    ticks = int(round(period / fleet_module.TICK))
    files: dict[str, int] = {}
    requests: dict[str, int] = {}
    for _ in range(ticks):
        stepped.clear()
        f._tick(0.0, full=False)
        assert all(watch for _name, watch in stepped)
        assert sum(bool(watch & fleet_module.WATCH_FILE) for _name, watch in stepped) <= -(-n // ticks)
        for name, watch in stepped:
            if watch & fleet_module.WATCH_FILE:
                files[name] = files.get(name, 0) + 1
            if watch & fleet_module.WATCH_REQUEST:
                requests[name] = requests.get(name, 0) + 1
    assert len(files) == n and set(files.values()) == {1}, "every file checked once per period"
    per_period = n * period / max(fleet_module.WATCH_SECONDS, n / fleet_module.REQUESTS_PER_SECOND)
    assert len(requests) == per_period and set(requests.values()) == {1}, "reseed requests: a slower round"
    stepped.clear()
    f._tick(0.0, full=False, requests=True)  # `walrewind reseed` poked the fleet: every request at once
    assert len({name for name, watch in stepped if watch & fleet_module.WATCH_REQUEST}) == n


def test_a_member_that_is_not_simply_replicating_is_stepped_every_tick(tmp_path):
    f, stepped = _fleet(tmp_path, 300)
    members = list(f._members.values())
    members[11].offline = True  # started without its replica: announced as spooling
    _settled(f, stepped)
    members[7].set_state("starting")
    members[9].set_state("retrying")
    for _ in range(3):
        stepped.clear()
        f._tick(0.0, full=False)
        names = {name for name, _watch in stepped}
        assert {"db7", "db9", "db11"} <= names and len(names) < 300
    members[9].set_state("replicating")  # its retry started and is ready: stepped once more, then not
    f._tick(0.0, full=False)
    stepped.clear()
    f._tick(0.0, full=False)
    assert "db9" not in {name for name, watch in stepped if not watch}
    stepped.clear()
    f._tick(0.0, full=True)  # a worker ended (or stop): everyone
    assert len(stepped) == 300


def test_the_prober_probes_databases_on_one_grid():
    """Databases pinned at different moments, probed every 20 ms: after their first probe they
    fall on the same multiples of 20 ms, so each round probes them all (rounds, not probes, are
    what wakes the thread)."""
    from walrewind.engine.daemon.prober import CheckpointProber, next_on_grid

    assert next_on_grid(1.0001, 0.02) == pytest.approx(1.02)
    assert next_on_grid(1.0161, 0.02) == pytest.approx(1.04)  # early in its batch: not at once again
    prober = CheckpointProber()
    seen = threading.Event()

    class Watched:
        probe_interval = staticmethod(lambda: 0.02)

        def __init__(self) -> None:
            self.count = 0

        def probe_checkpointer(self) -> None:
            self.count += 1
            if all(w.count >= 10 for w in watched):
                seen.set()

    watched = [Watched() for _ in range(20)]
    for w in watched:
        prober.watch(w)
    assert seen.wait(30)
    for w in watched:
        prober.unwatch(w, wait=True)
    assert prober.probes >= 200
    assert prober.rounds <= prober.probes / 20 + 3, (prober.rounds, prober.probes)


def test_a_quiet_members_health_entry_is_reused_until_something_changes(monkeypatch):
    """The health file of 1,000 namespaces: a member with nothing owed to the replica keeps its
    entry until a commit is seen or read, an upload, an error or a state change (or a minute);
    one that owes something is sampled every time (its lag grows)."""
    from types import SimpleNamespace

    from walrewind.engine.daemon import samples
    from walrewind.engine.daemon.stats import ReplicatorStats

    built = []
    lag = [0.0]
    monkeypatch.setattr(samples, "member_sample", lambda m: built.append(m) or SimpleNamespace(
        to_json=lambda: {"lag_seconds": lag[0]}))
    ready = threading.Event()
    ready.set()
    r = SimpleNamespace(stats=ReplicatorStats(), fatal=None, overflow=None, pending_snapshot=None, ready=ready,
                        startup_done=True, observations=[])

    class Member:
        worker = SimpleNamespace(replicator=r)
        state, error, state_since_us, failures, failures_total = "replicating", None, 1, 0, 0

        def health(self) -> dict:
            return {"name": "a", "state": self.state}

    m, cache = Member(), {}
    first = samples.health_entry(m, cache, 0.0)
    assert samples.health_entry(m, cache, 1.0) is first and len(built) == 1
    r.observations.append(1)  # a commit seen, not read yet
    samples.health_entry(m, cache, 2.0)
    r.stats.transactions += 1  # ... read (and its observation dropped): spooled, not uploaded
    r.observations.clear()
    lag[0] = 0.4
    samples.health_entry(m, cache, 3.0)
    assert len(built) == 3
    samples.health_entry(m, cache, 4.0)  # something owed: sampled every time (the lag grows)
    samples.health_entry(m, cache, 5.0)
    assert len(built) == 5
    lag[0] = 0.0
    r.stats.uploaded_txid += 1
    again = samples.health_entry(m, cache, 6.0)
    assert samples.health_entry(m, cache, 7.0) is again and len(built) == 6
    assert samples.health_entry(m, cache, 6.0 + samples.REUSE_SECONDS) is not again  # at least once a minute
    m.state = "retrying"
    samples.health_entry(m, cache, 70.0)
    samples.health_entry(m, cache, 71.0)
    assert len(built) == 9
