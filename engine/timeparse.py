"""Restore targets are typed by people in a hurry; parse them strictly and say exactly what is wrong.

Accepted: RFC 3339 / ISO 8601 with ``Z`` or an offset, fractional seconds, a date alone (start of that
day, UTC), and naive times (taken as UTC, and documented as such in ``--help``); and what people type
during an incident: ``now``, a time ago (``-5m``, ``5m ago``, ``5 minutes ago``, ``1h30m ago``) and
Unix epoch seconds (``@1796058450``, fractions allowed).  Everything inside the engine is integer
microseconds since the Unix epoch, UTC.

Durations (retention, intervals: ``7d``, ``36h``, ``1w 2d``, ``off``) are parsed here too, so every
setting that takes one accepts the same forms.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone

from .errors import DurationError, TimestampError

ACCEPTED_FORMS = "use ISO 8601, e.g. 2024-01-15T10:30:00Z, or now, -5m, '5 minutes ago', @EPOCH"

_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$", re.ASCII)
_DATETIME = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})[T ](?P<h>\d{2}):(?P<m>\d{2})(?::(?P<s>\d{2})(?:[.,](?P<frac>\d{1,9}))?)?"
    r"(?P<tz>Z|z|[+-]\d{2}:?\d{2})?$",
    re.ASCII,
)
_EPOCH = re.compile(r"^@(?P<s>\d{1,12})(?:\.(?P<frac>\d{1,9}))?$", re.ASCII)
_AGO = re.compile(r"^(?:-\s*(?P<minus>.+)|(?P<ago>.+?)\s+ago)$", re.ASCII | re.IGNORECASE)
_WORD_UNITS = {
    "s": "s", "sec": "s", "secs": "s", "second": "s", "seconds": "s",
    "m": "m", "min": "m", "mins": "m", "minute": "m", "minutes": "m",
    "h": "h", "hr": "h", "hrs": "h", "hour": "h", "hours": "h",
    "d": "d", "day": "d", "days": "d", "w": "w", "week": "w", "weeks": "w",
}
_WORDS = re.compile(r"(\d+)\s*([a-z]+)", re.ASCII)


def _now_us() -> int:
    return time.time_ns() // 1000


def _relative_us(text: str) -> int | None:
    """'5m', '1h30m', '5 minutes', '2 hours 10 min' -> microseconds; None if it is not one."""
    raw = text.strip().lower()
    parts, pos = [], 0
    for m in _WORDS.finditer(raw):
        if raw[pos : m.start()].strip(" ,") not in ("", "and"):
            return None
        unit = _WORD_UNITS.get(m.group(2))
        if unit is None:
            return None
        parts.append(f"{m.group(1)}{unit}")
        pos = m.end()
    if not parts or raw[pos:].strip():
        return None
    return parse_duration_us(" ".join(parts))


def parse_timestamp_us(text: str, now_us: int | None = None) -> int:
    """Parse a user timestamp into microseconds since the epoch (UTC).

    ``now_us`` is the clock for ``now`` and times ago (injected by tests)."""
    raw = text.strip()
    if raw.lower() == "now":
        return _now_us() if now_us is None else now_us
    if m := _EPOCH.match(raw):
        frac = m.group("frac") or ""
        return int(m.group("s")) * 1_000_000 + (int((frac + "000000")[:6]) if frac else 0)
    if m := _AGO.match(raw):
        ago = _relative_us(m.group("minus") or m.group("ago"))
        if ago is None:
            raise TimestampError(f"Invalid timestamp format: {text!r} (a time ago looks like -5m, '5m ago' or "
                                 f"'5 minutes ago'; {ACCEPTED_FORMS})")
        return (_now_us() if now_us is None else now_us) - ago
    if _DATE_ONLY.match(raw):
        try:
            day = datetime.strptime(raw, "%Y-%m-%d").replace(tzinfo=timezone.utc)
        except ValueError:
            raise TimestampError(f"Invalid timestamp format: {text!r} ({ACCEPTED_FORMS})") from None
        return _to_us(day)
    match = _DATETIME.match(raw)
    if not match:
        raise TimestampError(f"Invalid timestamp format: {text!r} ({ACCEPTED_FORMS})")
    frac = match.group("frac") or ""
    micro = int((frac + "000000")[:6]) if frac else 0
    tz = match.group("tz")
    if tz is None or tz in ("Z", "z"):
        tzinfo = timezone.utc
    else:
        sign = 1 if tz[0] == "+" else -1
        digits = tz[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:])
        if hours > 23 or minutes > 59:
            raise TimestampError(f"Invalid timestamp format: {text!r} (bad UTC offset; {ACCEPTED_FORMS})")
        tzinfo = timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        moment = datetime(
            *map(int, match.group("date").split("-")),
            int(match.group("h")),
            int(match.group("m")),
            int(match.group("s") or 0),
            micro,
            tzinfo=tzinfo,
        )
    except ValueError as exc:
        raise TimestampError(f"Invalid timestamp format: {text!r} ({exc}; {ACCEPTED_FORMS})") from None
    us = _to_us(moment)
    # Sub-microsecond digits are truncated; a target is "at or before", so rounding down is exact.
    return us


def _to_us(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def format_us(us: int) -> str:
    """Render microseconds as RFC 3339 UTC with microsecond precision (round-trips through parse).

    Values outside what a calendar date can show (only reachable through extreme offsets) are
    rendered as raw microseconds rather than raising, because this runs inside error messages.
    """
    try:
        moment = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=us)
    except OverflowError:
        return f"{us} microseconds since the Unix epoch"
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}.{moment.microsecond:06d}Z"
    )

# ------------------------------------------------------------------------------------ durations
_DURATION_RE = re.compile(r"(\d+)\s*([smhdw])", re.ASCII)
_UNITS_US = {"s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000, "w": 604_800_000_000}
OFF = "off"


def parse_duration_us(text: str) -> int:
    """'7d', '36h', '1w 2d', '90m', '30s' -> microseconds."""
    raw = str(text).strip().lower()
    pos, total = 0, 0
    for m in _DURATION_RE.finditer(raw):
        if raw[pos : m.start()].strip():
            break
        total += int(m.group(1)) * _UNITS_US[m.group(2)]
        pos = m.end()
    if not raw or pos == 0 or raw[pos:].strip() or total <= 0:
        raise DurationError(f"invalid duration {text!r} (use e.g. 7d, 36h, 90m, 1w)")
    return total


def format_duration_us(us: int) -> str:
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNITS_US[unit]
        if us >= size and us % size == 0:
            return f"{us // size}{unit}"
    return f"{us / 1e6:g}s"


def parse_duration_or_off(value, allow_off: bool = True) -> int | None:
    """A duration in microseconds, or None for "off" (when allowed)."""
    if allow_off and isinstance(value, str) and value.strip().lower() == OFF:
        return None
    if not isinstance(value, str):
        alternatives = "'7d' or 'off'" if allow_off else "'7d'"
        raise DurationError(f"expected a duration string like {alternatives}, got {value!r}")
    return parse_duration_us(value)
