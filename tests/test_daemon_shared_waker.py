"""Many databases in one process: one inotify instance and one dispatcher thread wake them all.

A daemon serving a sqld data directory replicates one database per tenant.  With an inotify
instance per database, everything past ``fs.inotify.max_user_instances`` (128 by default) polled
silently.  A "many" process (fleet.prepare_process: sqld, or more than FEW_DATABASES) therefore
shares one (engine/daemon/inotifyhub.py); a process with a few keeps a Waker per database, waited
on by its observer directly.  These tests pin down: which waker each kind of process gets; the
hub routes each event to the wakers of that -wal only; a many process holds ONE inotify
descriptor however many databases it tails, and each database's commits are stamped by file
events (restores at random targets are exact); a database whose watch cannot be set, or whose
events never arrive (either waker), still replicates by polling.
"""

from __future__ import annotations

import os
import random
import threading
import time
from types import SimpleNamespace

import pytest
from harness import (
    DaemonThread,
    check_latest,
    check_restores,
    create_db,
    read_log,
    start_writer,
    wait_until,
    write_all,
    written_databases,
)
from walrewind.engine.daemon import fleet
from walrewind.engine.daemon import replicator as replicator_module
from walrewind.engine.daemon.inotifyhub import HubWaker, InotifyHub
from walrewind.engine.daemon.prober import CheckpointProber
from walrewind.engine.daemon.replicator import Replicator
from walrewind.engine.daemon.uploader import Uploader
from walrewind.engine.daemon.uploadloop import UploadPool
from walrewind.engine.daemon.waker import Waker
from walrewind.engine.storage import open_storage


def inotify_fds() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
        except OSError:
            pass
    return n


def test_a_few_databases_keep_their_own_waker_and_many_share_the_hub(tmp_path):
    db = str(tmp_path / "app.db")
    create_db(db)
    storage = open_storage(str(tmp_path / "replica"))
    try:
        fleet.prepare_process(many=False)
        assert type(Replicator(db, storage, state_dir=str(tmp_path / "s1"))._waker) is Waker
        fleet.prepare_process(many=True)
        assert type(Replicator(db, storage, state_dir=str(tmp_path / "s2"))._waker) is HubWaker
    finally:
        fleet.prepare_process(many=False)
        Replicator.many_databases = False


def test_one_hub_routes_each_wal_write_to_its_waker_only(tmp_path):
    """Wakers of databases in one directory and in others share one inotify instance; a write
    wakes exactly the wakers of that -wal (two on one file: both); closing one keeps the other;
    a -wal deleted and created again is followed; closing all removes every watch."""
    hub = InotifyHub()
    dbs = [tmp_path / "a" / "one.db", tmp_path / "a" / "two.db", tmp_path / "b" / "three.db"]
    for db in dbs:
        db.parent.mkdir(exist_ok=True)
        db.write_bytes(b"")
        (db.parent / (db.name + "-wal")).write_bytes(b"")
    wakers = [HubWaker(hub) for _ in dbs] + [HubWaker(hub)]
    for w, db in zip(wakers, dbs + [dbs[0]]):
        assert w.watch(str(db))
    try:
        for n, db in enumerate(dbs):
            with open(str(db) + "-wal", "ab") as f:
                f.write(b"frame")
            expected = {n, 3} if n == 0 else {n}
            wait_until(lambda: all(wakers[i].pending() for i in expected), 5, f"a wake-up for {db}")
            time.sleep(0.05)  # any stray event would have arrived by now
            assert {i for i, w in enumerate(wakers) if w.drain()} == expected
        with open(tmp_path / "a" / "app.log", "a") as f:
            f.write("a line per commit\n")  # another file in the directory wakes nobody
        time.sleep(0.05)
        assert not any(w.pending() for w in wakers)
        wakers[3].close()
        with open(str(dbs[0]) + "-wal", "ab") as f:
            f.write(b"frame")
        assert wakers[0].wait(5.0)
        os.unlink(str(dbs[1]) + "-wal")
        assert wakers[1].wait(5.0)  # the -wal went away (its name is ours)
        with open(str(dbs[1]) + "-wal", "wb") as f:
            f.write(b"new")
        wakers[1].wait(5.0)
        wakers[1].drain()
        with open(str(dbs[1]) + "-wal", "ab") as f:
            f.write(b"frame")
        assert wakers[1].wait(5.0), "a re-created -wal must be watched again"
        assert not wakers[2].pending()
    finally:
        for w in wakers:
            w.close()
    assert hub.watches == 0


@pytest.mark.parametrize("kind", ["own", "hub"])
def test_wake_interrupts_and_changes_false_sleeps_through_writes(tmp_path, kind):
    """Both wakers: a pending change is a peek (still reported by the next wait), a look-again
    delay sleeps through writes, wake() interrupts it."""
    db = tmp_path / "app.db"
    db.write_bytes(b"")
    (tmp_path / "app.db-wal").write_bytes(b"")
    w = Waker() if kind == "own" else HubWaker(InotifyHub())
    assert w.watch(str(db))
    try:
        assert not w.pending()
        with open(tmp_path / "app.db-wal", "ab") as f:
            f.write(b"frame")
        wait_until(w.pending, 5, "the write's event")
        assert w.pending()  # still there
        started = time.monotonic()
        assert not w.wait(0.05, changes=False)  # a write does not end a look-again delay ...
        assert time.monotonic() - started >= 0.04
        assert w.wait(0.0)  # ... and is still reported afterwards
        assert not w.pending() and not w.drain()
        with open(tmp_path / "app.db-wal", "ab") as f:
            f.write(b"frame")
        wait_until(w.pending, 5, "the second write's event")
        assert w.drain() and not w.wait(0.0)
        w.wake()
        assert w.wait(5.0, changes=False)
    finally:
        w.close()


@pytest.mark.slow
def test_many_databases_share_one_inotify_instance_and_are_stamped_promptly(tmp_path, many):
    """Eight databases tailed in a many process, all written at once: one inotify descriptor in
    the process; every database's commits are stamped by file events (no timed look found one),
    and restores at random targets are exact in each."""
    n = 8
    dbs, configs = written_databases(tmp_path, n, 500, rate=20, duration=3.0)
    before = inotify_fds()
    daemons = [DaemonThread(db, str(tmp_path / f"replica{i}"), str(tmp_path / f"state{i}")) for i, db in enumerate(dbs)]
    try:
        shippers = [d.__enter__() for d in daemons]
        assert inotify_fds() - before <= 1, "one inotify instance for the process, not one per database"
        assert all(s.observer.inotify and isinstance(s._waker, HubWaker) and not s.observer.self_probe for s in shippers)
        write_all(configs)
    finally:
        for d in daemons:
            d.stop()
    for i, s in enumerate(shippers):
        assert s.stats.polled_stamps == 0, f"db{i}: a commit was found by a timed look, not by its file event"
        check_restores(str(tmp_path / f"replica{i}"), configs[i]["log"], tmp_path, 4, 600 + i)


@pytest.mark.slow
def test_a_database_without_a_watch_replicates_by_polling(tmp_path, monkeypatch, many):
    """The watch cannot be set (max_user_watches reached, a file system without events): that
    database polls, and every commit is still shipped; the others keep their file events."""
    dbs, configs = written_databases(tmp_path, 2, 700, rate=20, duration=2.0)
    real_add = InotifyHub.add
    monkeypatch.setattr(InotifyHub, "add", lambda hub, waker, path: False if path == dbs[0] else real_add(hub, waker, path))
    daemons = [DaemonThread(db, str(tmp_path / f"replica{i}"), str(tmp_path / f"state{i}")) for i, db in enumerate(dbs)]
    try:
        polled, watched = (d.__enter__() for d in daemons)
        assert not polled.observer.inotify
        assert watched.observer.inotify
        write_all(configs)
    finally:
        for d in daemons:
            d.stop()
    for i in range(2):
        check_latest(str(tmp_path / f"replica{i}"), configs[i]["log"], str(tmp_path / f"latest{i}.db"))
    assert polled.stats.polled_stamps > 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["own", "hub"])
def test_events_that_never_arrive_switch_the_database_to_polling(tmp_path, monkeypatch, kind):
    """Watched, but its events are never delivered (some bind mounts): the safety look finds the
    commits; after a few in a row the database is polled like one without inotify, and every
    commit is shipped."""
    monkeypatch.setattr(replicator_module, "IDLE_WAIT_INOTIFY", 0.05)
    monkeypatch.setattr(replicator_module, "MANY_SAFETY_SECONDS", 0.05)
    if kind == "hub":
        monkeypatch.setattr(Replicator, "many_databases", True)
        monkeypatch.setattr(InotifyHub, "_dispatch", lambda self, buf, woken_us=0: None)  # the kernel's events are lost
    else:
        real_drain = Waker._drain
        monkeypatch.setattr(Waker, "_drain", lambda self: real_drain(self) and False)
    dbs, configs = written_databases(tmp_path, 1, 800, rate=20, duration=2.0)
    with DaemonThread(dbs[0], str(tmp_path / "replica"), str(tmp_path / "state")) as shipper:
        assert shipper.observer.inotify
        w = start_writer(configs[0])
        out, err = w.communicate(timeout=120)
        assert w.returncode == 0, err
        assert not shipper.observer.inotify, "should have switched to polling"
    check_latest(str(tmp_path / "replica"), configs[0]["log"], str(tmp_path / "latest.db"))


@pytest.mark.slow
def test_the_shared_prober_lets_app_checkpoints_through_at_once(tmp_path, many):
    """A many process: no observer probes its own lock bytes; the one prober thread sees the
    app's TRUNCATE checkpoints (sqld-style, every second) waiting for our pin, and the daemon
    steps aside: never busy, never slow, nothing lost."""
    db, replica, log = str(tmp_path / "app.db"), str(tmp_path / "replica"), str(tmp_path / "log")
    create_db(db)
    probes = CheckpointProber.shared().probes
    with DaemonThread(db, replica, str(tmp_path / "state")) as shipper:
        assert not shipper.observer.self_probe
        w = start_writer({"db": db, "log": log, "checksums": True, "rate": 100, "duration": 5, "truncate_every": 1.0,
                          "seed": 21})
        out, err = w.communicate(timeout=120)
        assert w.returncode == 0, err
    txns, ckpts = read_log(log)
    assert len(ckpts) >= 3
    assert [c["busy"] for c in ckpts] == [0] * len(ckpts)
    assert max(c["dur_us"] for c in ckpts) <= 100_000, ckpts
    assert shipper.stats.yields >= 1 and shipper.stats.resyncs == 0
    assert CheckpointProber.shared().probes > probes
    check_restores(replica, log, tmp_path, 6, 900)


@pytest.mark.slow
def test_a_slow_writers_pin_is_released_in_the_pass_that_read_it(tmp_path, many):
    """A many process, a writer committing every ~0.7 s (sqld tenants written once a second): each
    commit is pinned, read and released in one read pass, so no pin is held between its commits
    for the shared prober to probe 50 times a second; every commit still ships, exact."""
    db, replica, log = str(tmp_path / "app.db"), str(tmp_path / "replica"), str(tmp_path / "log")
    create_db(db)
    prober = CheckpointProber.shared()
    with DaemonThread(db, replica, str(tmp_path / "state")) as shipper:
        wait_until(lambda: not shipper.pin.active, 10, "the start-up pin's release")
        probes, pinned, samples = prober.probes, 0, 0
        w = start_writer({"db": db, "log": log, "checksums": True, "rate": 1.5, "txns": 6, "seed": 5})
        while w.poll() is None:
            pinned += shipper.pin.active
            samples += 1
            time.sleep(0.005)
        assert w.returncode == 0, w.communicate()[1]
        wait_until(lambda: shipper.stats.uploaded_txid >= shipper.stats.last_txid >= 6, 30, "the uploads")
    assert pinned <= samples * 0.1, f"pinned in {pinned} of {samples} samples"
    assert prober.probes - probes <= 10
    # its commits after the first are read without a pin at all (Reader.tick's ``unpinned``)
    assert shipper.stats.unpinned_reads >= 3 and shipper.stats.unpinned_retries == 0
    assert shipper.stats.resyncs == 0
    check_restores(replica, log, tmp_path, 3, 905)


@pytest.mark.slow
def test_a_slow_writers_commits_are_read_by_the_dispatcher_without_waking_the_reader(tmp_path, many):
    """A many process, a writer committing every ~0.7 s: the inotify dispatcher's look that sees a
    commit published also reads and spools it (tailloop.read_beside), so the database's reading
    thread sleeps through the commits; every commit still ships, exact."""
    db, replica, log = str(tmp_path / "app.db"), str(tmp_path / "replica"), str(tmp_path / "log")
    create_db(db)
    with DaemonThread(db, replica, str(tmp_path / "state")) as shipper:
        wait_until(lambda: not shipper.pin.active, 10, "the start-up pin's release")
        reader_tid = next(t.native_id for t in threading.enumerate() if t.ident == shipper._reader_ident)
        switches = _switches([reader_tid])
        # (its first commits are read by the reading thread: a slow writer is known by its pace)
        start_writer({"db": db, "log": log, "checksums": True, "rate": 1.5, "txns": 8, "seed": 7}).communicate(timeout=60)
        wait_until(lambda: shipper.stats.uploaded_txid >= shipper.stats.last_txid >= 8, 30, "the uploads")
        woke = _switches([reader_tid]) - switches
    assert shipper.stats.reads_beside >= 5, shipper.stats
    assert woke <= 8 - shipper.stats.reads_beside + 2, f"the reading thread woke {woke} times for 8 slow commits"
    assert shipper.stats.unpinned_retries == 0 and shipper.stats.resyncs == 0
    check_restores(replica, log, tmp_path, 3, 907)


def test_only_a_few_new_frames_of_our_generation_are_read_unpinned():
    """A slow writer's commit (a few frames past our position, same WAL generation) is read
    without a pin; a burst, a restarted WAL or an unknown chain is read under one."""
    from walrewind.engine.daemon.reader import UNPINNED_MAX_FRAMES, Reader
    from walrewind.engine.sqlite.shm import ShmHeader
    from walrewind.engine.sqlite.walfile import WalPosition

    rs = SimpleNamespace(pos=WalPosition(7, 9, 100, (1, 2), 4096, False))
    reader = Reader(rs, None, None, None, None, None, None, None, lambda: False)

    def header(salt1: int, max_frame: int) -> ShmHeader:
        return ShmHeader(5, max_frame, 10, salt1.to_bytes(4, "big") + (9).to_bytes(4, "big"), 0, (), 4096)

    assert reader._few_new_frames(header(7, 103))
    assert reader._few_new_frames(header(7, 100 + UNPINNED_MAX_FRAMES))
    assert not reader._few_new_frames(header(7, 101 + UNPINNED_MAX_FRAMES))  # a burst
    assert not reader._few_new_frames(header(8, 3))  # the WAL restarted
    assert not reader._few_new_frames(header(7, 100))  # nothing new
    rs.pos = WalPosition(7, 9, 100, None, 4096, False)
    assert not reader._few_new_frames(header(7, 103))  # the chain is not known (resumed from a snapshot)


@pytest.mark.slow
def test_an_unpinned_read_that_sees_the_wal_restart_reads_again_pinned(tmp_path, many):
    """The header after an unpinned read names another generation (a checkpoint restarted the WAL
    and a writer may have overwritten what was read): nothing read is kept, the pass reads again
    under a pin, and every commit still ships, exact."""
    db, replica, log = str(tmp_path / "app.db"), str(tmp_path / "replica"), str(tmp_path / "log")
    create_db(db)
    with DaemonThread(db, replica, str(tmp_path / "state")) as shipper:
        wait_until(lambda: not shipper.pin.active, 10, "the start-up pin's release")
        reader, real_tick, forged = shipper.reader, shipper.reader.tick, []

        def tick(pinned_at=None, unpinned=False, clean=False):
            if unpinned and not forged:  # (the dispatcher's read or the reading thread's)
                real_header = reader.shm.header

                def header(*args):
                    reader.shm.header = real_header  # once
                    hdr = real_header(*args)
                    forged.append(hdr)
                    return hdr._replace(salts=bytes(8))  # another generation's salts
                reader.shm.header = header
            return real_tick(pinned_at, unpinned, clean)

        reader.tick = tick
        start_writer({"db": db, "log": log, "checksums": True, "rate": 1.5, "txns": 5, "seed": 6}).communicate(timeout=60)
        wait_until(lambda: shipper.stats.uploaded_txid >= shipper.stats.last_txid >= 5, 30, "the uploads")
    assert len(forged) == 1 and shipper.stats.unpinned_retries == 1
    assert shipper.stats.resyncs == 0
    check_restores(replica, log, tmp_path, 3, 906)


def _switches(tids: list[int]) -> int:
    total = 0
    for tid in tids:
        with open(f"/proc/self/task/{tid}/status") as f:
            total += next(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))
    return total


@pytest.mark.parametrize("kind", ["own", "hub"])
def test_an_idle_database_does_not_wake_its_threads(tmp_path, monkeypatch, kind):
    """Nothing written: the reader, observer and uploader sleep (no wake-up every 250 ms or every
    upload interval: a few databases look every 5 s, many every 5-60 s); a commit then still
    ships at once."""
    if kind == "hub":
        monkeypatch.setattr(Replicator, "many_databases", True)
    db = str(tmp_path / "app.db")
    create_db(db)
    daemon = DaemonThread(db, str(tmp_path / "replica"), str(tmp_path / "state"), upload_interval=0.1)
    with daemon as shipper:
        reader = shipper.reader
        wait_until(lambda: not (shipper.pin.active or reader.holding_off or reader.unverified), 10, "the idle release")
        time.sleep(0.5)
        uploaders = ([t for t in threading.enumerate() if t.name == "walrewind-uploader"] if kind == "own"
                     else UploadPool.shared()._threads)  # many: the shared pool runs its upload steps
        tids = [t.native_id for t in threading.enumerate() if t.name == "walrewind-observer"]
        # (many: the hub's dispatcher runs the observer's looks, hubobserver.py: no thread of its own)
        assert len(tids) == (1 if kind == "own" else 0)
        tids += [t.native_id for t in uploaders] + [daemon.thread.native_id]
        assert len(uploaders) >= 1
        before = _switches(tids)
        per = [_switches([t]) for t in tids]
        time.sleep(2.0)
        woke = _switches(tids) - before
        per = [_switches([t]) - p for t, p in zip(tids, per)]  # (observer), uploader(s), reader
        assert woke <= (3 if kind == "own" else 2), f"{woke} wake-ups of an idle database's threads in 2 s (were ~40): {per}"
        txid = shipper.stats.uploaded_txid
        start_writer({"db": db, "log": os.devnull, "txns": 1}).communicate(timeout=60)
        wait_until(lambda: shipper.stats.uploaded_txid > txid, 10, "the commit's upload")


@pytest.mark.parametrize("runner", ["own-thread", "pool"])
@pytest.mark.parametrize("when", ["before", "while-asleep"])
def test_an_idle_uploader_sees_a_stop_at_once(runner, when):
    """stop() sets the kick; an idle upload stage (nothing spooled, next heartbeat in 60 s) must
    end at once, whether the stop came before its first step or while it sleeps (it slept until
    its next heartbeat once: SIGTERM of 1,000 namespaces took 85 s).  On its own thread and in
    the shared pool (uploadloop.py)."""
    host = SimpleNamespace(pending_snapshot=None, state=SimpleNamespace(pending=0), heartbeat_interval=60.0,
                           upload_interval=1.0, stopping=False, storage=None)
    up = Uploader(host)

    def stop() -> None:
        host.stopping = True
        up.kick.set()  # what Replicator.stop() does

    if when == "before":
        stop()
    started = time.monotonic()
    if runner == "pool":
        member = UploadPool(min_workers=1).add(up, "idle")
    else:
        thread = threading.Thread(target=up.run, daemon=True)
        thread.start()
    if when == "while-asleep":
        stop()
    if runner == "pool":
        member.join(30)
        assert member.done
    else:
        thread.join(30)
        assert not thread.is_alive()
    assert time.monotonic() - started < 5.0


def test_the_pool_runs_each_stage_when_it_is_due_and_when_signalled():
    """Many stages on one worker: each runs its first step at once, the next when due() says,
    and a signal brings its next step forward; a stage whose step says done leaves the pool."""
    class Stage:
        def __init__(self) -> None:
            from walrewind.engine.daemon.uploadloop import Signal

            self.kick, self.soon = Signal(), Signal()
            self.groupable = False  # (uploadround.py: a round is for uploads to a file replica)
            self.steps = 0
            self.at = 0.0
            self.done = threading.Event()

        def begin(self) -> None:
            self.at = 0.0

        def due(self) -> float:
            return 0.0 if self.kick.is_set() else self.at

        def step(self) -> bool:
            self.kick.clear()
            self.steps += 1
            self.at = time.monotonic() + 3600  # nothing more for an hour, unless signalled
            if self.steps == 3:
                self.done.set()
                return False
            return True

    pool = UploadPool(min_workers=1)
    stages = [Stage() for _ in range(20)]
    members = [pool.add(s, f"db{i}") for i, s in enumerate(stages)]
    wait_until(lambda: all(s.steps == 1 for s in stages), 30, "every first step")
    for s in stages:
        s.kick.set()
    wait_until(lambda: all(s.steps == 2 for s in stages), 30, "a step per signal")
    for s in stages:
        s.kick.set()
    for m, s in zip(members, stages):
        m.join(30)
        assert m.done and s.steps == 3


def test_one_pool_worker_sleeps_until_the_next_step_the_others_until_called():
    """Four workers, 40 stages stepping every 200 ms and signalled in between (as readers kick
    the uploaders): a due step wakes one worker, not all of them (they all slept until the same
    earliest time: ~4 sleeps per step here before)."""

    from walrewind.engine.daemon.uploadloop import Signal

    class Stage:
        def __init__(self, at: float) -> None:
            self.kick, self.soon = Signal(), Signal()
            self.groupable = False
            self.at = at
            self.steps = 0

        def begin(self) -> None:
            pass

        def due(self) -> float:
            return self.at

        def step(self) -> bool:
            self.kick.clear()
            self.steps += 1
            self.at = time.monotonic() + 0.2
            return True

    pool = UploadPool(min_workers=4)
    start = time.monotonic() + 0.05
    stages = [Stage(start + 0.005 * i) for i in range(40)]
    for i, s in enumerate(stages):
        pool.add(s, f"db{i}")
    rng = random.Random(7)
    while min(s.steps for s in stages) < 5:
        rng.choice(stages).kick.set()
        time.sleep(0.002)
    steps, waits = pool.steps, pool.waits
    # two sleeps per step: a follower takes the lead, the worker that took the step follows after it
    assert waits <= 2.5 * steps, f"{waits} waits for {steps} steps"
