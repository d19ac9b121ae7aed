"""Restore targets are typed by people in a hurry; parse them strictly and say exactly what is wrong.

Accepted: RFC 3339 / ISO 8601 with ``Z`` or an offset, fractional seconds, a date alone (start of that
day, UTC), and naive times (taken as UTC, and documented as such in ``--help``).  Everything inside
the engine is integer microseconds since the Unix epoch, UTC.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from .errors import TimestampError

ACCEPTED_FORMS = "use ISO 8601, e.g. 2024-01-15T10:30:00Z"

_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$", re.ASCII)
_DATETIME = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})[T ](?P<h>\d{2}):(?P<m>\d{2})(?::(?P<s>\d{2})(?:[.,](?P<frac>\d{1,9}))?)?"
    r"(?P<tz>Z|z|[+-]\d{2}:?\d{2})?$",
    re.ASCII,
)




def parse_timestamp_us(text: str) -> int:
    """Parse a user timestamp into microseconds since the epoch (UTC)."""
    raw = text.strip()
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
