"""Restore targets typed by people: every accepted form, every rejection, and round trips."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from walrewind.engine.errors import TimestampError
from walrewind.engine.timeparse import ACCEPTED_FORMS, format_us, parse_timestamp_us

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
PREFIX = "Invalid timestamp format:"
HINT = "use ISO 8601, e.g. 2024-01-15T10:30:00Z, or now, -5m, '5 minutes ago', @EPOCH"


def us_of(moment: datetime) -> int:
    """Exact microseconds since the epoch, by integer timedelta arithmetic (no float)."""
    return (moment - EPOCH) // timedelta(microseconds=1)


def utc(*args: int) -> int:
    return us_of(datetime(*args, tzinfo=timezone.utc))


def tz(hours: int = 0, minutes: int = 0) -> timezone:
    return timezone(timedelta(hours=hours, minutes=minutes))


def test_hint_constant_is_the_documented_one():
    assert ACCEPTED_FORMS == HINT


# ----------------------------------------------------------------------------- accepted forms

ACCEPTED = [
    # Zulu
    ("2024-01-15T10:30:00Z", utc(2024, 1, 15, 10, 30)),
    ("2024-01-15T10:30:00z", utc(2024, 1, 15, 10, 30)),
    ("1970-01-01T00:00:00Z", 0),
    ("2024-01-15T10:30Z", utc(2024, 1, 15, 10, 30)),
    # offsets, with and without the colon, positive and negative
    ("2024-01-15T19:30:00+09:00", utc(2024, 1, 15, 10, 30)),
    ("2024-01-15T19:30:00+0900", utc(2024, 1, 15, 10, 30)),
    ("2024-01-15T05:00:00-0530", utc(2024, 1, 15, 10, 30)),
    ("2024-01-15T05:00:00-05:30", utc(2024, 1, 15, 10, 30)),
    ("2024-01-15T10:30:00+00:00", utc(2024, 1, 15, 10, 30)),
    ("2024-01-15T10:30:00-00:00", utc(2024, 1, 15, 10, 30)),
    ("2024-01-15T00:15:00+14:00", us_of(datetime(2024, 1, 15, 0, 15, tzinfo=tz(14)))),
    ("2024-01-15T00:15:00-12:00", us_of(datetime(2024, 1, 15, 0, 15, tzinfo=tz(-12)))),
    ("2024-01-15T10:30:00+05:45", us_of(datetime(2024, 1, 15, 10, 30, tzinfo=tz(5, 45)))),
    ("2024-01-01T01:00:00+02:00", utc(2023, 12, 31, 23)),  # offset crosses a year boundary
    ("2024-03-01T00:30:00+01:00", utc(2024, 2, 29, 23, 30)),  # ... and a leap day
    # fractional seconds: '.' or ',', 1..9 digits, truncated (never rounded) to microseconds
    ("2024-01-15T10:30:00.5Z", utc(2024, 1, 15, 10, 30, 0, 500000)),
    ("2024-01-15T10:30:00,5Z", utc(2024, 1, 15, 10, 30, 0, 500000)),
    ("2024-01-15T10:30:00.000001Z", utc(2024, 1, 15, 10, 30, 0, 1)),
    ("2024-01-15T10:30:00.123456Z", utc(2024, 1, 15, 10, 30, 0, 123456)),
    ("2024-01-15T10:30:00.1234567Z", utc(2024, 1, 15, 10, 30, 0, 123456)),
    ("2024-01-15T10:30:00.999999999Z", utc(2024, 1, 15, 10, 30, 0, 999999)),
    ("2024-01-15T10:30:00.0000009Z", utc(2024, 1, 15, 10, 30)),
    ("2024-01-15T10:30:00.25+01:00", utc(2024, 1, 15, 9, 30, 0, 250000)),
    ("1969-12-31T23:59:59.9999999Z", -1),
    # date only: start of that day, UTC
    ("2024-01-15", utc(2024, 1, 15)),
    ("2024-02-29", utc(2024, 2, 29)),
    ("1970-01-01", 0),
    # naive times are UTC
    ("2024-01-15T10:30:00", utc(2024, 1, 15, 10, 30)),
    ("2024-01-15T10:30", utc(2024, 1, 15, 10, 30)),
    ("2024-01-15T10:30:00.75", utc(2024, 1, 15, 10, 30, 0, 750000)),
    # a space instead of T
    ("2024-01-15 10:30:00Z", utc(2024, 1, 15, 10, 30)),
    ("2024-01-15 10:30:00", utc(2024, 1, 15, 10, 30)),
    ("2024-01-15 19:30:00.5+09:00", utc(2024, 1, 15, 10, 30, 0, 500000)),
    # surrounding whitespace (shell quoting) is ignored
    ("  2024-01-15T10:30:00Z\n", utc(2024, 1, 15, 10, 30)),
    ("\t2024-01-15 ", utc(2024, 1, 15)),
    # the last valid moments of odd days
    ("2023-12-31T23:59:59.999999Z", utc(2023, 12, 31, 23, 59, 59, 999999)),
    ("2024-01-15T23:59:59Z", utc(2024, 1, 15, 23, 59, 59)),
]


@pytest.mark.parametrize("text,expected", ACCEPTED, ids=[a[0].strip() or repr(a[0]) for a in ACCEPTED])
def test_accepted_forms(text: str, expected: int):
    assert parse_timestamp_us(text) == expected


def test_example_from_the_hint_is_the_documented_value():
    assert parse_timestamp_us("2024-01-15T10:30:00Z") == 1705314600 * 1_000_000


# ----------------------------------------------------------------------------- rejections

REJECTED = [
    "",
    "   ",
    "garbage",
    "yesterday",
    "now please",
    "1705314600",  # a bare number is not a timestamp here (epoch seconds take a leading @)
    "@",
    "@-5",
    "@1705314600.",
    "-",
    "ago",
    "-5",  # a time ago needs a unit
    "5 ago",
    "-5x",
    "5 lightyears ago",
    "5m from now",
    "in 5 minutes",
    "1705314600000000",
    "2024-13-01",  # month 13
    "2024-00-10",
    "2024-02-30",
    "2023-02-29",  # not a leap year
    "2024-01-32T00:00:00Z",  # day 32
    "2024-01-15T25:00:00Z",  # hour 25
    "2024-01-15T24:00:00Z",
    "2024-01-15T10:60:00Z",
    "2024-01-15T10:30:60Z",  # no leap seconds
    "2024-01-15T10:30:00+25:00",  # bad offset hours
    "2024-01-15T10:30:00+05:60",  # bad offset minutes
    "2024-01-15T10:30:00+9:00",
    "2024-01-15T10:30:00+09",
    "2024-01-15T10:30:00 +09:00",
    "2024-01-15T10:30:00UTC",
    "2024-01-15T10:30:00.Z",
    "2024-01-15T10:30:00.1234567890Z",  # 10 fractional digits
    "2024-01-15T10",
    "2024-01-15T",
    "2024-01-15T10:30:00ZZ",
    "2024/01/15",
    "15-01-2024",
    "2024-1-15",
    "24-01-15",
    "2024-01-15T10:30:00Z trailing",
    "T10:30:00Z",
    "0000-01-01",
    "0000-01-01T00:00:00Z",
]


@pytest.mark.parametrize("text", REJECTED, ids=[r or "<empty>" for r in REJECTED])
def test_rejected_forms_say_what_is_wrong(text: str):
    with pytest.raises(TimestampError) as info:
        parse_timestamp_us(text)
    message = str(info.value)
    assert message.startswith(PREFIX)
    assert HINT in message
    assert repr(text) in message  # the user's input is quoted back verbatim


def test_timestamp_error_is_a_value_error():
    assert issubclass(TimestampError, ValueError)


def test_bad_offset_message_says_offset():
    with pytest.raises(TimestampError, match="bad UTC offset"):
        parse_timestamp_us("2024-01-15T10:30:00+25:00")


def test_impossible_date_message_carries_the_reason():
    with pytest.raises(TimestampError, match="day is out of range"):
        parse_timestamp_us("2024-01-32T00:00:00Z")
    with pytest.raises(TimestampError, match="hour must be in"):
        parse_timestamp_us("2024-01-15T25:00:00Z")


# ----------------------------------------------------------------------------- properties

OFFSET_MINUTES = st.integers(min_value=-14 * 60, max_value=14 * 60)


def offset_text(minutes: int, colon: bool) -> str:
    sign = "-" if minutes < 0 else "+"
    hh, mm = divmod(abs(minutes), 60)
    return f"{sign}{hh:02d}{':' if colon else ''}{mm:02d}"


@settings(max_examples=400, deadline=None)
@given(
    local=st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 12, 31, 23, 59, 59, 999999)),
    offset=OFFSET_MINUTES,
    colon=st.booleans(),
    sep=st.sampled_from(["T", " "]),
    extra_digits=st.integers(min_value=0, max_value=3),
)
@example(local=datetime(2024, 1, 15, 10, 30), offset=0, colon=True, sep="T", extra_digits=0)
@example(local=datetime(1971, 1, 1), offset=14 * 60, colon=True, sep="T", extra_digits=0)
@example(local=datetime(2200, 12, 31, 23, 59, 59, 999999), offset=-14 * 60, colon=False, sep=" ", extra_digits=3)
def test_any_offset_form_parses_to_the_right_utc(local, offset, colon, sep, extra_digits):
    text = local.strftime(f"%Y-%m-%d{sep}%H:%M:%S.%f") + "7" * extra_digits + offset_text(offset, colon)
    expected = us_of(local.replace(tzinfo=tz(minutes=offset)))
    assert parse_timestamp_us(text) == expected
    # The same moment written in ISO by the standard library parses identically.
    iso = local.replace(tzinfo=tz(minutes=offset)).isoformat(timespec="microseconds")
    assert parse_timestamp_us(iso) == expected


@settings(max_examples=200, deadline=None)
@given(local=st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 12, 31, 23, 59, 59, 999999)))
def test_naive_and_zulu_agree(local):
    base = local.strftime("%Y-%m-%dT%H:%M:%S.%f")
    expected = us_of(local.replace(tzinfo=timezone.utc))
    assert parse_timestamp_us(base) == expected
    assert parse_timestamp_us(base + "Z") == expected
    assert parse_timestamp_us(base + "+00:00") == expected
    assert parse_timestamp_us(local.strftime("%Y-%m-%d")) == us_of(
        datetime(local.year, local.month, local.day, tzinfo=timezone.utc)
    )


# 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z: the range datetime can render.
MIN_US = utc(1, 1, 1)
MAX_US = utc(9999, 12, 31, 23, 59, 59, 999999)
YEAR_1000_US = utc(1000, 1, 1)


@settings(max_examples=500, deadline=None)
@given(us=st.integers(min_value=YEAR_1000_US, max_value=MAX_US))
@example(us=0)
@example(us=-1)
@example(us=1)
@example(us=999_999)
@example(us=1_000_000)
@example(us=1705314600 * 1_000_000)
@example(us=YEAR_1000_US)
@example(us=MAX_US)
def test_format_parse_round_trip(us):
    text = format_us(us)
    assert text.endswith("Z")
    assert len(text) == len("2024-01-15T10:30:00.000000Z")
    assert parse_timestamp_us(text) == us
    assert datetime.fromisoformat(text.replace("Z", "+00:00")) == EPOCH + timedelta(microseconds=us)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=40))
def test_arbitrary_text_never_raises_anything_but_timestamp_error(text):
    try:
        value = parse_timestamp_us(text)
    except TimestampError as exc:
        assert str(exc).startswith(PREFIX)
        assert HINT in str(exc)
    else:
        assert isinstance(value, int)


def test_format_us_known_values():
    assert format_us(0) == "1970-01-01T00:00:00.000000Z"
    assert format_us(-1) == "1969-12-31T23:59:59.999999Z"
    assert format_us(1705314600 * 1_000_000 + 5) == "2024-01-15T10:30:00.000005Z"


# ----------------------------------------------------------------------------- regressions (bugs found and fixed)
# These pin down bugs reported to the engine owners (see the report); they fail until fixed.


def test_format_us_years_before_1000_round_trip():
    us = utc(970, 8, 31)
    assert parse_timestamp_us(format_us(us)) == us


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_every_accepted_timestamp_can_be_formatted(text):
    # parse accepts these (they are valid local times) but the UTC value is outside datetime's
    # range, so every error message that formats the target (e.g. "Timestamp is in the future:")
    # crashes with a plain ValueError instead.
    format_us(parse_timestamp_us(text))


def test_non_ascii_digits_are_rejected():
    with pytest.raises(TimestampError):
        parse_timestamp_us("２０２４-01-15")


# ----------------------------------------------------------------------------- what people type in an incident
NOW = utc(2026, 11, 30, 12, 0, 0)
RELATIVE = [
    ("now", NOW),
    ("NOW", NOW),
    ("-5m", NOW - 300_000_000),
    ("- 5m", NOW - 300_000_000),
    ("5m ago", NOW - 300_000_000),
    ("5 minutes ago", NOW - 300_000_000),
    ("1 minute ago", NOW - 60_000_000),
    ("90s ago", NOW - 90_000_000),
    ("1h30m ago", NOW - 5_400_000_000),
    ("2 hours 10 min ago", NOW - 7_800_000_000),
    ("2 hours, 10 minutes ago", NOW - 7_800_000_000),
    ("1 day ago", NOW - 86_400_000_000),
    ("-1w", NOW - 7 * 86_400_000_000),
    ("@1705314600", utc(2024, 1, 15, 10, 30)),
    ("@1705314600.25", utc(2024, 1, 15, 10, 30) + 250_000),
    ("@0", 0),
]


@pytest.mark.parametrize("text,expected", RELATIVE, ids=[t for t, _ in RELATIVE])
def test_relative_and_epoch_forms(text: str, expected: int):
    assert parse_timestamp_us(text, now_us=NOW) == expected


def test_now_uses_the_clock_when_not_injected():
    import time

    before = time.time_ns() // 1000
    got = parse_timestamp_us("now")
    assert before <= got <= time.time_ns() // 1000


@settings(max_examples=200, deadline=None)
@given(seconds=st.integers(min_value=1, max_value=10**7), unit=st.sampled_from([("s", 1), ("m", 60), ("h", 3600)]))
def test_a_time_ago_is_that_long_before_now(seconds, unit):
    suffix, size = unit
    for text in (f"-{seconds}{suffix}", f"{seconds}{suffix} ago"):
        assert NOW - parse_timestamp_us(text, now_us=NOW) == seconds * size * 1_000_000
