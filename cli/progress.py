"""A one-line progress display on a terminal for long restores, drills and uploads.

The engine reports progress as ``callback(stage, done, total)`` in **bytes** (``restore()``:
object bytes of the plan in stages "segments" and "snapshot", then "check" around the SQLite
check; drills the same).  ``ProgressBar`` turns that into one redrawn stderr line::

    restore  [##########..........]  142.3 MB / 301.0 MB  212.4 MB/s  ETA 0:01  snapshot

Nothing is drawn when the stream is not a terminal (a pipe, a file, ``--json`` output captured
by a script), nor for operations that end within ``delay`` seconds (a small restore should not
flash a bar); redraws are limited to ``1 / interval`` per second.  Only the standard library is
imported, so using it costs nothing at start-up.
"""

from __future__ import annotations

import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs a few ms to import; the annotations are strings anyway
    from typing import Callable, TextIO

BAR = 20


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def human_seconds(s: float) -> str:
    s = int(s + 0.5)
    hours, rest = divmod(s, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class ProgressBar:
    """``callback(stage, done, total)`` rendering bytes, MB/s and ETA on a terminal; call
    ``close()`` at the end (also a context manager) to clear the line."""

    def __init__(self, label: str = "restore", stream: TextIO | None = None, delay: float = 1.0,
                 interval: float = 0.1, clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.delay, self.interval, self.clock = delay, interval, clock
        self.started = clock()
        self._last_draw = None
        self._width = 0
        self._rate_base: tuple[float, int] | None = None  # (time, bytes) where the transfer began

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = self.clock()
        if stage == "check":
            self._rate_base = None
        elif self._rate_base is None:
            self._rate_base = (now, done)
        final = total and done >= total
        if now - self.started < self.delay:
            return
        if self._last_draw is not None and now - self._last_draw < self.interval and not final:
            return
        self._last_draw = now
        self._draw(self.render(stage, done, total, now))

    def render(self, stage: str, done: int, total: int, now: float) -> str:
        if stage == "check":
            return f"{self.label}  checking the restored database ({human_bytes(total)})..."
        frac = min(1.0, done / total) if total else 1.0
        filled = int(frac * BAR)
        line = f"{self.label}  [{'#' * filled}{'.' * (BAR - filled)}]  {human_bytes(done)} / {human_bytes(total)}"
        base_t, base_done = self._rate_base or (now, done)
        elapsed = now - base_t
        if elapsed > 0.2 and done > base_done:
            rate = (done - base_done) / elapsed
            line += f"  {rate / 1e6:.1f} MB/s"
            if total > done:
                line += f"  ETA {human_seconds((total - done) / rate)}"
        return f"{line}  {stage}"

    def _draw(self, text: str) -> None:
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            columns = 100
        text = text[: max(10, columns - 1)]
        pad = max(0, self._width - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._width = len(text)

    def close(self) -> None:
        """Erase the line (the command prints its own result afterwards)."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(enabled: bool = True, label: str = "restore", stream: TextIO | None = None) -> ProgressBar | None:
    """A ProgressBar when ``enabled`` and the stream (stderr) is a terminal, else None, so that
    ``restore(progress=progress_bar(not as_json))`` costs nothing on a pipe."""
    if not enabled:
        return None
    bar = ProgressBar(label, stream)
    return bar if bar.enabled else None


class showing_progress:  # noqa: N801  (used as a context manager: `with showing_progress(...) as progress`)
    """``progress_bar`` as a context: yields the callback (or None off a terminal) and always
    clears the line before anything else is printed."""

    def __init__(self, enabled: bool = True, label: str = "restore") -> None:
        self.bar = progress_bar(enabled, label)

    def __enter__(self) -> ProgressBar | None:
        return self.bar

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
