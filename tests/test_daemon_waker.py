"""The observer's waker: woken by writes to the -wal, not by other files in its directory."""

from __future__ import annotations

from walrewind.engine.daemon.waker import Waker


def test_waker_wakes_for_the_wal_only_and_follows_a_new_wal_file(tmp_path):
    """A log file written next to the database must not wake the observer (one wake-up per
    commit for nothing under the benchmarks' writers); a -wal that is deleted and created
    again (the last connection closed) is watched again."""
    db = tmp_path / "app.db"
    db.write_bytes(b"")
    wal = tmp_path / "app.db-wal"
    wal.write_bytes(b"")
    waker = Waker()
    try:
        assert waker.watch(str(db))
        assert not waker.wait(0.0)
        with open(tmp_path / "app.log", "a") as f:
            f.write("a line per commit\n")
        assert not waker.wait(0.05)
        with open(wal, "ab") as f:
            f.write(b"frame")
        assert waker.wait(1.0)
        assert not waker.wait(0.0)  # drained
        wal.unlink()
        assert waker.wait(1.0)  # the -wal went away (our file)
        wal.write_bytes(b"new")  # created again: watched again
        waker.wait(0.05)
        with open(wal, "ab") as f:
            f.write(b"frame")
        assert waker.wait(1.0)
    finally:
        waker.close()
