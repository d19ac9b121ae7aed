"""Keep the daemon's resident memory flat over days: glibc arenas and a periodic heap trim.

The Python heap of a running daemon is flat (tracemalloc over a 10-minute soak: no growth beyond
the upload in flight), yet its RSS crept up ~1 MB a minute.  The growth is glibc's: every thread
that allocates gets its own malloc arena (observer, reader, uploader, maintenance, boto3's pool,
per database), freed chunks stay in the arena that freed them, and the dynamic mmap threshold
rises after the first large free so later segment-sized buffers come from those heaps instead of
fresh mappings.  Two standard remedies, applied once per process and then once a minute:

* ``M_ARENA_MAX`` = 2 and a fixed ``M_MMAP_THRESHOLD`` (256 KiB): few arenas to fragment, and
  large buffers (segments, snapshot chunks, zstd windows) always mapped and unmapped whole;
* ``malloc_trim(0)`` every ``TRIM_SECONDS``: returns free pages at the top and inside the heaps.

Elsewhere than glibc (musl, macOS) this is a no-op.  ``WALREWIND_MALLOC_TUNING=0`` turns it off.

A process serving many databases also gives its SQLite connections no lookaside memory
(``small_sqlite_connections``): SQLite reserves 120 KiB of it per connection by default, and the
daemon keeps two read-only connections per database that run a handful of statements a second
(measured with 300 sqld namespaces: 411 -> 326 KiB of RSS per namespace).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import time

log = logging.getLogger("walrewind.memory")

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
ARENA_MAX = 2
MMAP_THRESHOLD = 256 << 10
TRIM_SECONDS = 60.0

_libc = None
_configured = False


def _glibc():
    global _libc
    if _libc is None:
        _libc = False
        if os.environ.get("WALREWIND_MALLOC_TUNING", "1") != "0":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                libc.mallopt  # noqa: B018 - glibc only; AttributeError elsewhere
                libc.malloc_trim  # noqa: B018
                _libc = libc
            except (OSError, AttributeError):
                pass
    return _libc or None


def configure() -> bool:
    """Once per process, before the daemon's threads start; True when glibc took the settings."""
    global _configured
    libc = _glibc()
    if libc is None or _configured:
        return libc is not None
    _configured = True
    ok = bool(libc.mallopt(M_ARENA_MAX, ARENA_MAX)) and bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    if not ok:
        log.debug("mallopt refused the arena/mmap settings")
    return ok


def small_sqlite_connections() -> bool:
    """No per-connection lookaside for the SQLite connections this process opens from now on.

    SQLite takes the setting only while uninitialised, so it is shut down and initialised again,
    which is allowed only with no connection open: with one open (a library user's), nothing
    changes.  True when applied."""
    import apsw

    if apsw.connections():
        log.debug("SQLite connections are open: keeping the default lookaside")
        return False
    try:
        apsw.shutdown()
        apsw.config(apsw.SQLITE_CONFIG_LOOKASIDE, 0, 0)
    except apsw.Error as exc:
        log.debug("SQLite refused the lookaside setting: %s", exc)
        return False
    finally:
        apsw.initialize()
    return True


class HeapTrimmer:
    """Call ``tick()`` from a loop that runs anyway (the fleet's); it trims at most once a period."""

    def __init__(self, period: float = TRIM_SECONDS) -> None:
        self.period = period
        self._next = time.monotonic() + period
        self.trims = 0

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if now < self._next:
            return
        self._next = now + self.period
        libc = _glibc()
        if libc is not None:
            libc.malloc_trim(0)
            self.trims += 1
