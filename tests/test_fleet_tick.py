"""The fleet's loop with many members: each tick steps only the members that need it, and every
member's file is still checked regularly (engine/daemon/fleet.py, ``Fleet._tick``)."""

from __future__ import annotations

from walrewind.engine.daemon import fleet as fleet_module
from walrewind.engine.daemon.fleet import Fleet
from walrewind.engine.workspace.config import DatabaseConfig


def _fleet(tmp_path, n: int) -> tuple[Fleet, list]:
    dbs = [DatabaseConfig(name=f"db{i}", path=str(tmp_path / f"db{i}"), replica=f"file://{tmp_path}/r{i}")
           for i in range(n)]
    f = Fleet(dbs, retry=True, health=None)
    stepped: list = []
    f._step = lambda m, now, watch=False: stepped.append((m.db.name, watch)) or False
    for m in f._members.values():
        m.state = "replicating"
    return f, stepped


def test_a_quiet_tick_steps_only_the_slice_of_files_due(tmp_path):
    n = 1000
    f, stepped = _fleet(tmp_path, n)
    period = max(fleet_module.WATCH_SECONDS, n / fleet_module.WATCHES_PER_SECOND)  # 5 s at 1,000
    ticks = int(round(period / fleet_module.TICK))
    seen: dict[str, int] = {}
    for _ in range(ticks):
        stepped.clear()
        f._tick(0.0, full=False)
        assert len(stepped) <= -(-n // ticks) and all(watch for _name, watch in stepped)
        for name, _watch in stepped:
            seen[name] = seen.get(name, 0) + 1
    assert len(seen) == n and set(seen.values()) == {1}, "every file checked once per period"


def test_a_member_that_is_not_simply_replicating_is_stepped_every_tick(tmp_path):
    f, stepped = _fleet(tmp_path, 300)
    members = list(f._members.values())
    members[7].state = "starting"
    members[9].state = "retrying"
    members[11].offline = True
    for _ in range(3):
        stepped.clear()
        f._tick(0.0, full=False)
        names = {name for name, _watch in stepped}
        assert {"db7", "db9", "db11"} <= names and len(names) < 300
    stepped.clear()
    f._tick(0.0, full=True)  # a worker ended (or stop): everyone
    assert len(stepped) == 300
