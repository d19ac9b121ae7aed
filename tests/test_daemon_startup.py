"""engine/daemon/startup.py: a daemon that starts while its replica is unreachable.

It captures every commit into its spool at once, uploads nothing until the replica has answered
the start-up questions (lease, identity, is the saved generation still there), and then the
replica holds exactly the history it would have had with the store up all along.  Local
replica made unreachable by a switch (tests/test_daemon_outage.Switchable); the SeaweedFS
version of the same start is tests/test_s3_startup.py.
"""

from __future__ import annotations

import os
import shutil
import threading

from harness import (
    assert_no_invented_states,
    assert_one_record_per_commit,
    create_db,
    judge,
    read_log,
    run_writer,
    wait_for,
)
from test_daemon_outage import Switchable
from walrewind.engine.daemon.replicator import Replicator
from walrewind.engine.errors import DaemonError, ForeignReplica
from walrewind.engine.replica.index import Replica
from walrewind.engine.restore.restorer import restore
from walrewind.engine.storage import open_storage


class Running:
    """A daemon on a thread of the test, over a Switchable replica."""

    def __init__(self, db: str, store: Switchable, state: str) -> None:
        self.daemon = Replicator(db, store, state_dir=state, upload_interval=0.1)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.daemon.run()
        except BaseException as exc:
            self.error = exc

    def stop(self) -> BaseException | None:
        self.daemon.stop()
        self.thread.join(60)
        assert not self.thread.is_alive()
        return self.error


def objects(replica: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), replica) for d, _, fs in os.walk(replica) for f in fs)


def caught_up(d: Replicator) -> bool:
    return d.ready.is_set() and d.stats.uploaded_txid == d.stats.last_txid and not d.reader.unverified


def test_first_start_without_the_replica_captures_everything(tmp_path):
    db, log, replica = str(tmp_path / "app.db"), str(tmp_path / "log"), str(tmp_path / "replica")
    create_db(db)
    store = Switchable(replica)
    store.down = True
    run = Running(db, store, str(tmp_path / "state"))
    try:
        assert run.daemon.capturing.wait(30), run.error
        d = run.daemon
        run_writer({"db": db, "log": log, "checksums": True, "rate": 200, "txns": 80, "seed": 11})
        wait_for(lambda: d.stats.backlog_txns > 40 and not d.reader.unverified, what="commits in the spool")
        assert d.phase == "spooling" and not d.ready.is_set() and not d.startup_done
        assert d.lag_seconds() > 0  # the base snapshot itself is owed
        assert objects(replica) == [], "nothing may be uploaded before the lease and identity checks"
        assert not os.path.exists(tmp_path / "state" / "state.json"), "no uploaded point before the replica answers"
        store.down = False
        wait_for(lambda: caught_up(d) and d.phase == "replicating", timeout=30, what="the backlog to drain")
        assert d.lag_seconds() < 5 and d.stats.lease_epoch == 1
    finally:
        assert run.stop() is None
    txns, _ = read_log(log)
    points = assert_one_record_per_commit(replica, txns)
    r = Replica(open_storage(replica, create=False))
    assert [s.txid for g in r.generations for s in g.snapshots] == [1]  # an empty replica: base txid 1
    for n, k in enumerate(points.commits[5::15]):
        out = str(tmp_path / f"t{n}.db")
        target = txns[k]["end"] + 1
        result = restore(open_storage(replica, create=False), out, target_us=target)
        assert judge(out, result.page_size, txns, txns[0]["checksum"], target).exact


def test_state_lost_and_replica_down_renumbers_after_the_replica_history(tmp_path):
    """The container case: a fresh state directory, a replica holding this database's history.
    The provisional generation counts from 1; once the replica answers it moves past it."""
    db, log1, log2, replica = (str(tmp_path / n) for n in ("app.db", "log1", "log2", "replica"))
    create_db(db)
    store = Switchable(replica)
    first = Running(db, store, str(tmp_path / "state-1"))
    assert first.daemon.ready.wait(30)
    run_writer({"db": db, "log": log1, "checksums": True, "rate": 0, "txns": 60, "seed": 12})
    wait_for(lambda: caught_up(first.daemon), what="the first run to upload")
    assert first.stop() is None
    before = Replica(open_storage(replica, create=False)).latest()[0]
    assert before > 30

    store.down = True
    second = Running(db, store, str(tmp_path / "state-2"))
    try:
        assert second.daemon.capturing.wait(30), second.error
        run_writer({"db": db, "log": log2, "checksums": True, "rate": 200, "txns": 60, "seed": 13, "id_base": 10**6})
        wait_for(lambda: second.daemon.stats.backlog_txns > 30, what="commits in the spool")
        assert second.daemon.startup.held.txid == 1  # provisional numbering, from 1
        store.down = False
        wait_for(lambda: caught_up(second.daemon), timeout=30, what="the drain")
    finally:
        assert second.stop() is None
    r = Replica(open_storage(replica, create=False))
    assert [g.snapshots[0].txid for g in r.generations] == [1, before + 1]
    assert all(not g.overlaps() for g in r.generations)
    gen = r.generations[-1]
    records = [rec for seg in gen.segments for rec in r.load_segment(seg)[1]]
    assert [rec.txid for rec in records] == list(range(before + 2, before + 2 + len(records)))
    txns2, _ = read_log(log2)
    assert [f"{rec.db_checksum:016x}" for rec in records] == [
        t["checksum"] for p, t in zip(txns2, txns2[1:]) if t["checksum"] != p["checksum"]]
    out = str(tmp_path / "latest.db")
    result = restore(open_storage(replica, create=False), out)
    assert f"{result.checksum:016x}" == txns2[-1]["checksum"]
    txns1, _ = read_log(log1)
    assert_no_invented_states(replica, txns1 + txns2)


def test_saved_state_and_replica_down_resumes_the_same_history(tmp_path):
    db, log1, log2, replica, state = (str(tmp_path / n) for n in ("app.db", "log1", "log2", "replica", "state"))
    create_db(db)
    store = Switchable(replica)
    first = Running(db, store, state)
    assert first.daemon.ready.wait(30)
    run_writer({"db": db, "log": log1, "checksums": True, "rate": 0, "txns": 30, "seed": 14})
    wait_for(lambda: caught_up(first.daemon), what="the first run to upload")
    generation = first.daemon.generation
    assert first.stop() is None

    store.down = True
    second = Running(db, store, state)
    try:
        assert second.daemon.capturing.wait(30), second.error
        run_writer({"db": db, "log": log2, "checksums": True, "rate": 200, "txns": 40, "seed": 15, "id_base": 10**6})
        wait_for(lambda: second.daemon.stats.backlog_txns > 20, what="commits in the spool")
        assert second.daemon.phase == "spooling"
        store.down = False
        wait_for(lambda: caught_up(second.daemon), timeout=30, what="the drain")
        assert second.daemon.generation == generation and second.daemon.stats.lease_epoch == 3
    finally:
        assert second.stop() is None
    txns1, _ = read_log(log1)
    txns2, _ = read_log(log2)
    r = Replica(open_storage(replica, create=False))
    assert len(r.generations) == 1
    txids = [rec.txid for seg in r.generations[0].segments for rec in r.load_segment(seg)[1]]
    assert txids == list(range(txids[0], txids[0] + len(txids)))
    records = assert_no_invented_states(replica, txns1 + txns2)
    assert f"{records[-1].db_checksum:016x}" == txns2[-1]["checksum"]


def test_replica_emptied_while_down_starts_a_new_generation_when_it_answers(tmp_path):
    db, log, replica, state = (str(tmp_path / n) for n in ("app.db", "log", "replica", "state"))
    create_db(db)
    store = Switchable(replica)
    first = Running(db, store, state)
    assert first.daemon.ready.wait(30)
    run_writer({"db": db, "rate": 0, "txns": 20, "seed": 16})
    wait_for(lambda: caught_up(first.daemon), what="the first run to upload")
    assert first.stop() is None
    shutil.rmtree(replica)
    os.makedirs(replica)
    store.down = True
    second = Running(db, store, state)
    try:
        assert second.daemon.capturing.wait(30), second.error
        run_writer({"db": db, "log": log, "checksums": True, "rate": 200, "txns": 30, "seed": 17, "id_base": 10**6})
        store.down = False
        wait_for(lambda: caught_up(second.daemon), timeout=30, what="a new generation")
    finally:
        assert second.stop() is None
    txns, _ = read_log(log)
    out = str(tmp_path / "latest.db")
    result = restore(open_storage(replica, create=False), out)
    assert f"{result.checksum:016x}" == txns[-1]["checksum"]
    assert len(Replica(open_storage(replica, create=False)).generations) == 1


def test_another_databases_replica_is_refused_before_anything_is_uploaded(tmp_path):
    other, db, replica = str(tmp_path / "other.db"), str(tmp_path / "app.db"), str(tmp_path / "replica")
    create_db(other)
    create_db(db)
    store = Switchable(replica)
    first = Running(other, store, str(tmp_path / "state-other"))
    assert first.daemon.ready.wait(30)
    assert first.stop() is None
    before = objects(replica)
    store.down = True
    run = Running(db, store, str(tmp_path / "state"))
    assert run.daemon.capturing.wait(30), run.error
    run_writer({"db": db, "rate": 0, "txns": 10, "seed": 18})
    store.down = False
    run.thread.join(60)
    assert isinstance(run.error, DaemonError) and isinstance(run.error.__cause__, ForeignReplica), run.error
    assert "holds the history of database" in str(run.error)
    assert objects(replica) == before, "nothing of the other database may land in this replica"


def test_stopped_before_the_replica_ever_answered_says_what_is_lost(tmp_path):
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    create_db(db)
    store = Switchable(replica)
    store.down = True
    run = Running(db, store, str(tmp_path / "state"))
    assert run.daemon.capturing.wait(30), run.error
    run_writer({"db": db, "rate": 0, "txns": 10, "seed": 19})
    wait_for(lambda: run.daemon.stats.backlog_txns > 0, what="commits in the spool")
    error = run.stop()
    assert isinstance(error, DaemonError) and "never held this database's base snapshot" in str(error)
    assert "next start takes a new base snapshot" in str(error) and objects(replica) == []
    store.down = False
    again = Running(db, store, str(tmp_path / "state"))
    try:
        assert again.daemon.ready.wait(30), again.error
    finally:
        assert again.stop() is None
    r = Replica(open_storage(replica, create=False))
    assert len(r.generations) == 1 and r.generations[0].snapshots[0].txid == 1  # a new start, from scratch
