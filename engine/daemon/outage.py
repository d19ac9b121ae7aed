"""One outage of the replica, from the daemon's side: what it says, and when it asks again.

Issue 11 found a ~400-character line every 5 s while S3 was down.  An outage now says three
things: one line when it begins (the reason, cut short), at most one reminder a minute (how long,
how much waits in the spool), and a summary when it ends (how long it lasted, how much was
uploaded, how long the drain took).  In between, :meth:`Outage.answers` asks the store with one
request that is never retried (``Storage.probe``), every PROBE_SECONDS (every second once the
outage has lasted a minute), so the backlog is uploaded as soon as the store is back instead of
at the next backoff.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..logs import brief, duration
from . import clock

log = logging.getLogger("walrewind.shipper")

REMIND_SECONDS = 60.0  # at most one "still unreachable" line this often
PROBE_SECONDS = 0.25  # while the replica is unreachable: one un-retried request this often ...
PROBE_SECONDS_LATER = 1.0  # ... and this often once the outage has lasted FAST_PROBES_FOR
FAST_PROBES_FOR = 60.0


def _where(url: str) -> str:
    return url.split("?", 1)[0]


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n} bytes"


class Outage:
    """Started by the uploader at the first failed upload, ended by the first successful drain."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self.began_mono = time.monotonic()
        self.reminded_mono = self.began_mono
        self.first_reason = ""
        self.uploaded_txid = daemon.stats.uploaded_txid
        self.answered_mono: float | None = None  # when a probe first succeeded again
        self.probes = 0

    def began(self, exc: BaseException, at_start: bool = False) -> None:
        stats = self.daemon.stats
        stats.replica_unreachable_since_us = clock.now_us()
        self.first_reason = brief(exc)
        if at_start:
            log.error("replica %s unreachable at start: %s; capturing into the local spool until it answers "
                      "(lease and identity are checked before the first upload)", _where(self.daemon.storage.url),
                      self.first_reason, extra={"event": "replica_unreachable"})
            return
        log.error("replica %s unreachable: %s; spooling locally until it answers",
                  _where(self.daemon.storage.url), self.first_reason, extra={"event": "replica_unreachable"})

    def probe_interval(self) -> float:
        """Short outages (a restart, a failover) end within a probe; long ones cost 1 request/s."""
        return PROBE_SECONDS if time.monotonic() - self.began_mono < FAST_PROBES_FOR else PROBE_SECONDS_LATER

    def answers(self, storage: Any) -> bool:
        """One probe: True when the store answered (the caller then uploads everything)."""
        self.probes += 1
        try:
            storage.probe()
        except Exception as exc:
            self.remind(exc)
            return False
        if self.answered_mono is None:
            self.answered_mono = time.monotonic()
        return True

    def remind(self, exc: BaseException) -> None:
        """At most one line a minute while it lasts."""
        now = time.monotonic()
        if now - self.reminded_mono < REMIND_SECONDS:
            return
        self.reminded_mono = now
        stats = self.daemon.stats
        reason = brief(exc)
        log.warning("replica still unreachable after %s: %d transactions (%s) wait in the spool%s",
                    duration(now - self.began_mono), stats.backlog_txns, _mb(stats.backlog_bytes),
                    "" if reason == self.first_reason else f"; now: {reason}",
                    extra={"event": "replica_still_unreachable"})

    def ended(self) -> None:
        stats = self.daemon.stats
        now = time.monotonic()
        drained = now - (self.answered_mono or now)
        log.warning("replica reachable again after %s: %d transactions uploaded in %.2f s",
                    duration(now - self.began_mono), stats.uploaded_txid - self.uploaded_txid, drained,
                    extra={"event": "replica_reachable"})
        stats.replica_unreachable_since_us = 0
