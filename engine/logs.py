"""Log lines of a running daemon: one line per event, naming its database, as text or JSON.

Why a module of its own: ``replicate`` runs many databases in one process, each on several threads
(read, observe, upload, maintenance), and a line such as "replica unreachable" is useless unless it
says which database.  Engine code does not pass names around for that: each thread the daemon
starts is *bound* to its database (:func:`bound_to`), and a filter stamps every record with it.

Two formats (``replicate --log-format``):

* ``text`` (default, for people): ``2025-01-15T10:30:00.123Z WARNING app: replica unreachable ...``.
  Event lines of the fleet (``replicating app: ...``, ``app: FAILED: ...``) already name their
  database and keep the short shape they always had.
* ``json`` (for log shippers): one object per line with ``ts``, ``level``, ``db``, ``event`` and
  ``message`` (plus ``error`` with a traceback for bugs).  ``event`` is a stable machine name
  (``replica_unreachable``, ``replicating``, ``failed``...; otherwise the logger's last component).

Credentials never reach a log line: every message passes through :func:`redact`, which removes
the ``KEY:SECRET@`` part of any URL, on top of the engine only ever naming URLs without it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from typing import Callable, TextIO, TypeVar

T = TypeVar("T")

EVENTS = "walrewind.events"  # the fleet's event lines: shown at INFO even without --verbose
FORMATS = ("text", "json")
_CREDENTIALS = re.compile(r"(\b[a-z][a-z0-9+.\-]*://)[^/@\s\"']*:[^/@\s\"']*@", re.IGNORECASE)
_local = threading.local()


def redact(text: str) -> str:
    """``s3://KEY:SECRET@bucket/p`` -> ``s3://***@bucket/p`` anywhere in ``text``."""
    return _CREDENTIALS.sub(r"\1***@", text)


def brief(exc: BaseException, limit: int = 200) -> str:
    """One short line for a log: the message's first line without its leading location
    (``s3://bucket/prefix/key: ``) or the request URL botocore repeats, cut at ``limit``."""
    text = str(exc).strip()
    text = text.splitlines()[0] if text else type(exc).__name__
    text = re.sub(r"^[a-z][a-z0-9+.\-]*://\S*?: ", "", text, flags=re.IGNORECASE)
    text = re.sub(r':? ?"https?://[^"]*"', "", text)
    text = redact(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def duration(seconds: float) -> str:
    """45 s, 2m05s, 1h02m: how long something lasted, for people."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def bind(db: str | None) -> None:
    """Attribute every record logged by this thread to database ``db`` (None: no database)."""
    _local.db = db


def bound() -> str | None:
    return getattr(_local, "db", None)


def bound_to(db: str | None, fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` as a thread target that first binds its thread to ``db``."""

    def run(*args, **kwargs) -> T:
        bind(db)
        return fn(*args, **kwargs)

    return run


def event(kind: str, db: str | None, message: str, level: int = logging.INFO) -> None:
    """One event line of the fleet (shown whatever the verbosity)."""
    logging.getLogger(EVENTS).log(level, message, extra={"event": kind, "db": db, "plain": True})


def _iso(created: float) -> str:
    secs = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{int((created - secs) * 1000):03d}Z"


class _Context(logging.Filter):
    """Gives every record ``db`` (from ``extra`` or the thread's binding) and ``event``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "db", None) is None:
            record.db = bound()
        if not getattr(record, "event", None):
            record.event = record.name.rpartition(".")[2] or record.name
        return True


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = redact(record.getMessage())
        if not getattr(record, "plain", False):
            where = f"{record.db}: " if getattr(record, "db", None) else ""
            message = f"{_iso(record.created)} {record.levelname} {where}{message}"
        if record.exc_info:
            message += "\n" + redact(self.formatException(record.exc_info))
        return message


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "db": getattr(record, "db", None),
            "event": getattr(record, "event", None) or record.name,
            "message": redact(record.getMessage()),
        }
        if record.exc_info:
            doc["error"] = redact(self.formatException(record.exc_info))
        return json.dumps(doc, ensure_ascii=False)


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a test runner may swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup(fmt: str = "text", verbose: bool = False, stream: TextIO | None = None) -> logging.Handler:
    """Send walrewind's records to ``stream`` (default: stderr) in format ``fmt``; replaces an
    earlier setup.  Engine details below WARNING only with ``verbose``; the fleet's events always.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: use one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream) if stream is not None else _Stderr()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_Context())
    root = logging.getLogger("walrewind")
    for old in [h for h in root.handlers if getattr(h, "walrewind_setup", False)]:
        root.removeHandler(old)
    handler.walrewind_setup = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger(EVENTS).setLevel(logging.INFO)
    return handler
