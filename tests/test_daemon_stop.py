"""Stopping the daemon tells the truth and is quick once everything is shipped.

Reproduces issue 12's sqld report with plain SQLite: the app TRUNCATE-checkpoints after its last
commit, so the wal-index names an empty WAL under new salts while the daemon's position is the old
generation's end.  "Caught up" must mean "no commit SQLite counted that we have not read".
"""

from __future__ import annotations

import logging
import time

from harness import DaemonThread, check_latest_restore, create_db, read_log, run_writer


def test_stop_after_app_truncate_is_quick_and_not_behind(tmp_path, caplog):
    db, replica, log = str(tmp_path / "app.db"), str(tmp_path / "replica"), str(tmp_path / "log")
    create_db(db)
    caplog.set_level(logging.INFO, logger="walrewind")
    daemon = DaemonThread(db, replica, str(tmp_path / "state"))
    with daemon as shipper:
        run_writer({"db": db, "log": log, "checksums": True, "rate": 200, "txns": 150, "seed": 5,
                    "truncate_at_end": True})
        txns, ckpts = read_log(log)
        deadline = time.monotonic() + 30
        # Read everything SQLite counted (transactions that changed nothing write no frames).
        while time.monotonic() < deadline:
            hdr = shipper.shm.header()
            if hdr is not None and hdr.change == shipper.anchor and not shipper.unverified:
                break
            time.sleep(0.01)  # waiting on an observable condition, bounded
        t0 = time.monotonic()
        shipper.stop()
        daemon.thread.join(30)
        stop_seconds = time.monotonic() - t0
    assert not daemon.thread.is_alive()
    assert stop_seconds < 3.0, f"stop took {stop_seconds:.1f} s after everything was read"
    behind = [r.getMessage() for r in caplog.records if "final sync" in r.getMessage()]
    assert not behind, behind
    assert shipper.stats.resyncs == 0
    assert len(ckpts) == 1 and ckpts[0]["busy"] == 0, ckpts
    check_latest_restore({"replica": replica, "txns": txns}, str(tmp_path / "latest.db"))
