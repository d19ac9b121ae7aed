"""Counters of one replicating daemon (what `walrewind status`, tests and benchmarks read)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

LAG_SAMPLES = 4096


@dataclass
class ReplicatorStats:
    transactions: int = 0
    wal_bytes: int = 0
    segments: int = 0
    resyncs: int = 0
    yields: int = 0
    releases: int = 0
    daemon_checkpoints: int = 0
    wal_cap_releases: int = 0  # times we let go of the WAL because we could not keep up (max_wal_bytes)
    unpinned_reads: int = 0  # read passes of a slow writer's commits without a pin (reader.py, tick)
    unpinned_retries: int = 0  # ... that found the WAL restarted meanwhile and read again, pinned
    reads_beside: int = 0  # ... made by the inotify dispatcher right after its look (tailloop.read_beside)
    last_txid: int = 0
    last_commit_us: int = 0
    uploaded_txid: int = 0
    uploaded_commit_us: int = 0
    # The most recent LAG_SAMPLES upload lags (fixed memory: a growing list was the daemon's
    # ~4 KB/s RSS drift at 100 txn/s).
    lag_samples_us: deque = field(default_factory=lambda: deque(maxlen=LAG_SAMPLES))
    upload_errors: int = 0
    last_error: str = ""
    # Backlog: read and spooled, not yet in the replica.  backlog_txns = last_txid - uploaded_txid.
    backlog_bytes: int = 0
    replica_unreachable_since_us: int = 0  # 0 while uploads succeed
    spool_full: bool = False
    spool_full_since_us: int = 0
    spool_full_events: int = 0
    heartbeats: int = 0
    # Wake-ups of the tail loop: a file change, a look-again for a commit being written, a timeout
    # (lock probe while pinned, fallback poll otherwise).  Each costs ~40 us of CPU on a small VM.
    wake_changes: int = 0
    wake_looks: int = 0
    wake_timeouts: int = 0
    unpublished_stamps: int = 0  # commits first seen written, before SQLite published them (observer.py)
    observer_waits: int = 0  # read passes that saw a commit first and let the observer stamp it
    uncertain_stamps: int = 0  # commits whose stamp may be late by more than 5 ms (see observer.py)
    max_stamp_gap_us: int = 0  # the largest such bound
    # Commits first seen by a timed wake-up (no file change woke us in time): their stamps may be
    # late by up to the probe/poll interval.  Logged when it happens; see docs/DESIGN.md.
    polled_stamps: int = 0
    lease_renewals: int = 0
    lease_epoch: int = 0
    # What reached the replica (metrics): transactions, object bytes (segments and base
    # snapshots, compressed), and when the last object landed (wall clock, µs).
    uploaded_transactions: int = 0
    uploaded_bytes: int = 0
    last_upload_us: int = 0

    @property
    def backlog_txns(self) -> int:
        return max(0, self.last_txid - self.uploaded_txid)


