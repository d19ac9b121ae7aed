"""kill -9 of the daemon (mid-upload or not), restarts, and downtime while the app checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from harness import (
    DaemonThread,
    assert_no_invented_states,
    create_db,
    exact_or_stamped_late,
    judge,
    now_us,
    read_live_log,
    read_log,
    start_writer,
    wait_for,
)
from walrewind.engine.errors import DaemonError
from walrewind.engine.replica.format import FLAG_LATE, FLAG_RESYNC
from walrewind.engine.replica.index import Replica
from walrewind.engine.restore.restorer import restore
from walrewind.engine.storage import open_storage

DOWNTIME_COMMITS = 30  # what the app commits while the daemon is down (0.3 s at 100 txn/s)
DOWNTIME_CHECKPOINTS = 3  # app TRUNCATE checkpoints while the daemon is down: its WAL position is gone


def start_daemon(db: str, replica: str, state: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "from walrewind.cli.main import main; main()", "replicate", db, replica,
         "--state-dir", state, "--upload-interval", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


def commits_logged(log: str) -> int:
    return len(read_live_log(log)[0])


def checkpoints_logged_since(log: str, since_us: int) -> int:
    """TRUNCATE checkpoints the app started at or after ``since_us`` and finished (logged)."""
    return sum(1 for c in read_live_log(log)[1] if c["start"] >= since_us)


def segment_count(replica: str) -> int:
    root = os.path.join(replica, "generations")
    if not os.path.isdir(root):
        return 0
    return sum(len(os.listdir(os.path.join(root, g, "segments"))) for g in os.listdir(root)
               if os.path.isdir(os.path.join(root, g, "segments")))


def all_records(replica: str):
    r = Replica(open_storage(replica, create=False))
    for g in r.generations:
        for seg in g.segments:
            yield from r.load_segment(seg)[1]


@pytest.mark.slow
def test_kill9_mid_upload_then_restart(tmp_path):
    db, replica, state, log = (str(tmp_path / n) for n in ("app.db", "replica", "state", "log"))
    create_db(db)
    daemon = start_daemon(db, replica, state)
    wait_for(lambda: os.path.isdir(os.path.join(replica, "generations")), what="first snapshot", daemon=daemon)
    stop = str(tmp_path / "stop")
    writer = start_writer({"db": db, "log": log, "checksums": True, "rate": 100, "duration": 120, "seed": 31,
                           "stop_file": stop})
    for round_ in range(3):
        target = segment_count(replica) + 3
        wait_for(lambda: segment_count(replica) >= target, what="segments", daemon=daemon, writer=writer)
        os.killpg(daemon.pid, signal.SIGKILL)  # lands at an arbitrary point: reading, spooling or uploading
        daemon.wait()
        # Downtime: the app keeps committing while nobody watches.
        at_kill = commits_logged(log)
        wait_for(lambda: commits_logged(log) >= at_kill + DOWNTIME_COMMITS, what="commits during the downtime",
                 writer=writer)
        daemon = start_daemon(db, replica, state)
    target = segment_count(replica) + 3
    wait_for(lambda: segment_count(replica) >= target, what="segments", daemon=daemon, writer=writer)
    open(stop, "w").close()
    assert writer.wait(60) == 0, writer.stderr.read()
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(60) == 0, daemon.stderr.read()
    txns, _ = read_log(log)
    assert_no_invented_states(replica, txns)
    records = list(all_records(replica))
    txids = [r.txid for r in records]
    assert txids == list(range(txids[0], txids[0] + len(txids))), "history must be continuous"
    assert not any(r.flags & FLAG_RESYNC for r in records), "WAL still held everything: no resync needed"
    assert sum(1 for r in records if not r.flags & FLAG_LATE) > 0
    out = str(tmp_path / "latest.db")
    result = restore(open_storage(replica, create=False), out)
    v = judge(out, result.page_size, txns, txns[0]["checksum"], txns[-1]["end"] + 10**7)
    assert v.restored_index == txns[-1]["i"]
    # every transaction is individually restorable by txid
    for rec in records[:: max(1, len(records) // 15)]:
        out = str(tmp_path / f"tx{rec.txid}.db")
        restore(open_storage(replica, create=False), out, target_txid=rec.txid)
        v = judge(out, result.page_size, txns, txns[0]["checksum"], 0)
        assert v.restored_index is not None, f"txid {rec.txid} restored a state the app never had"


@pytest.mark.slow
def test_downtime_while_app_truncates_is_resynced_visibly(tmp_path):
    db, replica, state, log = (str(tmp_path / n) for n in ("app.db", "replica", "state", "log"))
    create_db(db)
    daemon = start_daemon(db, replica, state)
    wait_for(lambda: os.path.isdir(os.path.join(replica, "generations")), what="first snapshot", daemon=daemon)
    stop = str(tmp_path / "stop")
    writer = start_writer({"db": db, "log": log, "checksums": True, "rate": 100, "duration": 120,
                           "truncate_every": 0.3, "seed": 32, "stop_file": stop})
    wait_for(lambda: segment_count(replica) >= 5, what="segments", daemon=daemon, writer=writer)
    os.killpg(daemon.pid, signal.SIGKILL)
    daemon.wait()
    killed_at = now_us()
    wait_for(lambda: checkpoints_logged_since(log, killed_at) >= DOWNTIME_CHECKPOINTS,
             what="app TRUNCATE checkpoints while nobody watches", writer=writer)
    daemon = start_daemon(db, replica, state)
    target = segment_count(replica) + 3  # the restarted daemon ships again, the app still writing
    wait_for(lambda: segment_count(replica) >= target, what="segments after the restart", daemon=daemon, writer=writer)
    open(stop, "w").close()
    assert writer.wait(60) == 0, writer.stderr.read()
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(60) == 0, daemon.stderr.read()
    txns, _ = read_log(log)
    assert_no_invented_states(replica, txns)
    records = list(all_records(replica))
    assert any(r.flags & FLAG_RESYNC for r in records), "lost history must be marked"
    storage = open_storage(replica, create=False)
    out = str(tmp_path / "latest.db")
    result = restore(storage, out)
    assert judge(out, result.page_size, txns, txns[0]["checksum"], txns[-1]["end"] + 10**7).restored_index == txns[-1]["i"]
    # before the outage, restores stay exact
    before = [t for t in txns[1:] if t["end"] < killed_at - 300_000]
    target = before[len(before) // 2]["end"] + 2_000
    out = str(tmp_path / "before.db")
    restore(storage, out, target_us=target)
    assert judge(out, result.page_size, txns, txns[0]["checksum"], target).exact
    # inside the gap the daemon could not observe, a restore says so and does not claim exactness
    resync = next(r for r in records if r.flags & FLAG_RESYNC)
    previous = next(r for r in reversed(records) if r.txid < resync.txid)
    inside = restore(storage, str(tmp_path / "gap.db"), target_us=(previous.commit_ts_us + resync.commit_ts_us) // 2)
    assert inside.txid == previous.txid and not inside.exact
    assert any("history gap" in w for w in inside.warnings), inside.warnings
    after = restore(storage, str(tmp_path / "after-gap.db"), target_us=resync.commit_ts_us)
    assert exact_or_stamped_late(after), after  # the first commit after a restart may be seen late


def test_second_daemon_on_same_state_dir_is_refused(tmp_path):
    db, replica, state = (str(tmp_path / n) for n in ("app.db", "replica", "state"))
    create_db(db)
    first = start_daemon(db, replica, state)
    wait_for(lambda: os.path.isdir(os.path.join(replica, "generations")), what="first snapshot", daemon=first)
    second = start_daemon(db, replica, state)
    assert second.wait(60) == 1
    err = second.stderr.read()
    assert "in use by another walrewind daemon" in err and f"pid {first.pid}" in err
    first.send_signal(signal.SIGTERM)
    assert first.wait(60) == 0, first.stderr.read()


def posix_locks_held(path: str) -> int:
    """Byte-range locks this process holds on ``path`` (Linux /proc/locks)."""
    ino = os.stat(path).st_ino
    with open("/proc/locks") as f:
        return sum(1 for line in f if line.split()[4] == str(os.getpid()) and line.split()[5].endswith(f":{ino}"))


def test_refused_second_daemon_in_one_process_leaves_the_first_ones_locks(tmp_path):
    """Two Replicators of one database in one process (tests; `replicate` with two replicas of one
    file): the refused one opens raw descriptors on the -shm and the database before the lease
    check and closes them on refusal, and closing any descriptor drops all of the process's locks
    on that file.  The first daemon then holds no DMS lock on the -shm: the next application
    process to open the database reinitialises (or deletes) the -shm under it, which showed up as
    a SIGBUS killing the whole test run in test_s3_lease, or as a bogus RESYNC.  Fixed by sharing
    those descriptors per file within the process (engine/sqlite/fds.py)."""
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    create_db(db)
    with DaemonThread(db, replica, str(tmp_path / "a"), heartbeat_interval=0.3, lease_seconds=30):
        held = posix_locks_held(db + "-shm")
        assert held > 0
        second = DaemonThread(db, replica, str(tmp_path / "b"), heartbeat_interval=0.3, lease_seconds=30)
        with pytest.raises(DaemonError, match="another walrewind daemon"):
            second.__enter__()
        second.thread.join(30)
        # No application process touches the database here, so the lost locks cannot crash anything.
        assert posix_locks_held(db + "-shm") == held, "the refused daemon dropped the running one's locks"
