"""Retries with exponential backoff and jitter, for storage requests that failed transiently.

Which failures are transient is the backend's business (``S3Storage._transient``: 5xx, 408, 429,
throttling codes, timeouts, connection resets, truncated bodies); this module only decides *when*
to try again.  Every request a backend makes goes through :func:`call` exactly once per attempt,
so a retried create-only write is still a create-only write: if the first attempt landed but its
answer was lost, the retry finds the object and ``put_immutable`` compares the content.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, TypeVar

T = TypeVar("T")


@dataclass
class RetryPolicy:
    """``attempts`` tries in all; before try ``n + 1`` wait a random time in [d/2, d] where
    ``d = min(cap, base * 2**n)`` ("equal jitter": never zero, never synchronised)."""

    attempts: int = 5
    base: float = 0.2
    cap: float = 5.0
    rng: random.Random = field(default_factory=random.Random)
    sleep: Callable[[float], None] = time.sleep
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def delay(self, attempt: int) -> float:
        d = min(self.cap, self.base * (2**attempt))
        with self._lock:  # random.Random is not documented as thread-safe
            return d / 2 + self.rng.uniform(0, d / 2)


@dataclass
class RetryStats:
    """How many attempts failed transiently and were repeated (for tests and benchmarks)."""

    retries: int = 0
    gave_up: int = 0
    last_error: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def note(self, exc: BaseException, final: bool) -> None:
        with self._lock:
            if final:
                self.gave_up += 1
            else:
                self.retries += 1
            self.last_error = f"{type(exc).__name__}: {exc}"


def call(
    fn: Callable[[], T],
    policy: RetryPolicy,
    transient: Callable[[BaseException], bool],
    stats: RetryStats | None = None,
) -> T:
    """Run ``fn`` until it succeeds, fails permanently, or ``policy.attempts`` are used up.

    The last exception is re-raised unchanged, so callers translate it exactly as if there had
    been a single attempt.
    """
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            retry = attempt + 1 < policy.attempts and transient(exc)
            if stats is not None and transient(exc):
                stats.note(exc, final=not retry)
            if not retry:
                raise
            policy.sleep(policy.delay(attempt))
            attempt += 1
