"""The daemon's one clock for commit stamps and heartbeats (wall time, microseconds).

Every stage calls ``clock.now_us()`` through this module, so a test can move the daemon's clock
(e.g. three days back to build a history spanning days) by replacing one function.
"""

from __future__ import annotations

import time


def now_us() -> int:
    return time.time_ns() // 1000
