"""Durations and points in time, as plain float epoch seconds.

Theory of operation
-------------------
The core of durajobs keeps every time as a ``float`` of seconds since the Unix epoch (UTC) and
every duration as a ``float`` of seconds. This module is the one place where the user's spellings
become those floats:

* a duration is a :class:`~datetime.timedelta`, a string such as ``"30s"``, ``"5 minutes"``,
  ``"1h30m"``, ``"1h 30m"``, ``"2.5s"``, ``"100ms"`` (a bare numeric string such as ``"30"`` means
  seconds), or — where the field allows it — a number of seconds;
* a ``when`` (``ctx.schedule(when)``) is a duration relative to *now*, or an aware
  :class:`~datetime.datetime` (absolute). A bare number is refused there because it is ambiguous
  (seconds from now? an epoch timestamp?).

The module is pure: it reads no clock (``now`` is always passed in) and does no I/O. String
arithmetic is done in :class:`~decimal.Decimal`, so ``"100ms"`` is exactly ``0.1`` and
``parse_duration(format_duration(x)) == x`` for every finite ``x >= 0``.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from typing import Final, overload

from durajobs.errors import SchedulerError, ValidationError

__all__ = [
    "EARLIEST",
    "LATEST",
    "MAX_PERIOD",
    "format_duration",
    "from_datetime",
    "parse_duration",
    "parse_period",
    "resolve_when",
    "to_datetime",
]

LATEST: Final = 253402300799.0
"""The latest time durajobs stores or reports: 9999-12-31T23:59:59Z (``datetime`` ends there)."""
EARLIEST: Final = -62135596800.0
"""The earliest time a ``datetime`` holds: 0001-01-01T00:00:00Z."""
MAX_PERIOD: Final = 1000 * 365.25 * 86400.0
"""The longest period or window a definition accepts (1000 years): any longer one would put
alarms past :data:`LATEST`, which no ``datetime`` can show."""
_MAX_UTC: Final = datetime.max.replace(tzinfo=UTC)
_MIN_UTC: Final = datetime.min.replace(tzinfo=UTC)

_AMBIGUOUS_NUMBER: Final = (
    "ambiguous: pass a timedelta, a duration string like '30s', or an aware datetime"
)

_UNIT_SECONDS: Final[dict[str, Decimal]] = {
    **dict.fromkeys(("ms", "msec", "msecs", "millisecond", "milliseconds"), Decimal("0.001")),
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), Decimal(1)),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), Decimal(60)),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), Decimal(3600)),
    **dict.fromkeys(("d", "day", "days"), Decimal(86400)),
    **dict.fromkeys(("w", "wk", "wks", "week", "weeks"), Decimal(604800)),
}

# A bare number of seconds: "30", "2.5", ".5".
_BARE_NUMBER: Final = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*", re.ASCII)
# One "<number><unit>" part; parts are matched one after another from a position, so the scan
# is linear in the length of the string (no nested quantifiers to backtrack over).
_PART: Final = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]+)", re.ASCII | re.IGNORECASE)
_TRAILING_SPACE: Final = re.compile(r"\s*", re.ASCII)

# format_duration writes the largest units first; weeks are left out on purpose ("10d" reads
# better than "1w3d" in a status line).
_FORMAT_UNITS: Final = (("d", 86400), ("h", 3600), ("m", 60))
# Enough significant digits to hold any finite float's decimal expansion exactly (the largest is
# about 1.8e308), so neither parsing nor formatting ever rounds before the final float().
_DECIMAL_DIGITS: Final = 400


def _show(value: object) -> str:
    """repr() of a bad value, cut short so a huge input cannot flood an error message."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _bad_string(field: str, value: str) -> SchedulerError:
    return SchedulerError(
        f"{field}: invalid duration {_show(value)}; expected a non-negative duration such as "
        "'30s', '5 minutes', '1h30m', '100ms' or a number of seconds (units: ms, s, m, h, d, w)"
    )


def _parse_string(value: str, field: str) -> float:
    bare = _BARE_NUMBER.fullmatch(value)
    if bare is not None:
        total = Decimal(bare.group(1))
    else:
        total = Decimal(0)
        position = 0
        parts = 0
        with localcontext(prec=_DECIMAL_DIGITS):
            while True:
                part = _PART.match(value, position)
                if part is None:
                    break
                unit = _UNIT_SECONDS.get(part.group(2).lower())
                if unit is None:
                    raise _bad_string(field, value)
                total += Decimal(part.group(1)) * unit
                position = part.end()
                parts += 1
        trailing = _TRAILING_SPACE.match(value, position)
        if parts == 0 or trailing is None or trailing.end() != len(value):
            raise _bad_string(field, value)
    seconds = float(total)
    if not math.isfinite(seconds):
        raise SchedulerError(f"{field}: duration {_show(value)} is too large")
    return seconds


def parse_duration(
    value: timedelta | str | int | float,
    *,
    field: str = "duration",
    allow_number: bool = True,
) -> float:
    """Convert a user-supplied duration into seconds.

    Args:
        value: A :class:`~datetime.timedelta`; a string such as ``"30s"``, ``"5 minutes"``,
            ``"1h30m"``, ``"1h 30m"``, ``"2.5s"``, ``"100ms"``, ``"1 day"``, ``"1w"``
            (case-insensitive; units ms/millisecond(s), s/sec(s)/second(s), m/min(s)/minute(s),
            h/hr(s)/hour(s), d/day(s), w/wk(s)/week(s); parts may be separated by spaces; a
            bare numeric string such as ``"30"`` means seconds); or, when ``allow_number`` is
            true, an ``int`` or ``float`` number of seconds.
        field: The name of the field being parsed, used in error messages.
        allow_number: Whether a bare ``int``/``float`` is accepted. Definition fields
            (``flush_after``, ``every``, backoff) accept numbers; ``ctx.schedule`` does not.

    Returns:
        The duration in seconds: a finite ``float`` >= 0.

    Raises:
        SchedulerError: The string is not a duration, or the value is negative, NaN, infinite
            or too large for a float. The message names ``field`` and the bad value.
        TypeError: ``value`` is a number and ``allow_number`` is false (ambiguous), or
            ``value`` is of an unsupported type (``bool`` included: it is not a number here).
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, str):
        return _parse_string(value, field)
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"{field}: expected a timedelta, a duration string like '30s' or a number of "
            f"seconds, got {type(value).__name__} {_show(value)}"
        )
    elif not allow_number:
        raise TypeError(f"{field}: got the number {_show(value)}, which is {_AMBIGUOUS_NUMBER}")
    else:
        try:
            seconds = float(value)
        except OverflowError:
            raise SchedulerError(f"{field}: duration {_show(value)} is too large") from None
    if math.isnan(seconds) or math.isinf(seconds):
        raise SchedulerError(f"{field}: duration must be finite, got {_show(value)}")
    if seconds < 0:
        raise SchedulerError(f"{field}: duration must not be negative, got {_show(value)}")
    return seconds


def parse_period(value: timedelta | str | int | float, *, field: str) -> float:
    """Parse a definition's period or window (``every``, ``flush_after``, ``max_wait``, ...).

    Like :func:`parse_duration` with numbers allowed, and at most :data:`MAX_PERIOD`.

    Args:
        value: A timedelta, a duration string or a number of seconds.
        field: The name of the field, used in error messages.

    Returns:
        The duration in seconds: a finite ``float``, ``0 <= seconds <= MAX_PERIOD``.

    Raises:
        SchedulerError: The value is not a duration, or is negative or longer than 1000 years.
        TypeError: ``value`` is of an unsupported type.
    """
    seconds = parse_duration(value, field=field)
    if seconds > MAX_PERIOD:
        raise SchedulerError(
            f"{field}: duration {_show(value)} is too long: at most 1000 years (alarms must "
            "fall before the year 10000)"
        )
    return seconds


def format_duration(seconds: float) -> str:
    """Write a duration compactly, in a form :func:`parse_duration` reads back exactly.

    Examples: ``0.0 -> "0s"``, ``5400.0 -> "1h30m"``, ``0.1 -> "0.1s"``,
    ``90061.5 -> "1d1h1m1.5s"``.

    Args:
        seconds: A finite duration in seconds, >= 0.

    Returns:
        The duration as days, hours, minutes and (decimal) seconds, largest unit first.

    Raises:
        SchedulerError: ``seconds`` is negative, NaN or infinite.
    """
    if not math.isfinite(seconds) or seconds < 0:
        raise SchedulerError(f"duration must be finite and >= 0, got {seconds!r}")
    # repr() is the shortest decimal that reads back as the same float, so the decimal
    # arithmetic below is exact and parse_duration's decimal sum lands on the same float.
    rest = Decimal(repr(float(seconds)))
    parts: list[str] = []
    with localcontext(prec=_DECIMAL_DIGITS):
        for unit, size in _FORMAT_UNITS:
            count = int(rest // size)
            if count:
                parts.append(f"{count}{unit}")
                rest -= count * size
        if rest or not parts:
            parts.append(f"{format(rest.normalize(), 'f')}s")
    return "".join(parts)


def resolve_when(when: timedelta | str | datetime, now: float, *, field: str = "when") -> float:
    """Turn the argument of ``ctx.schedule(when)`` into an absolute time.

    Args:
        when: A :class:`~datetime.timedelta` or a duration string (relative to ``now``), or an
            aware :class:`~datetime.datetime` (absolute; it may lie in the past).
        now: The current time, epoch seconds.
        field: The name of the argument, used in error messages.

    Returns:
        The absolute time, epoch seconds.

    Raises:
        SchedulerError: ``when`` is a naive datetime, or a bad or negative duration.
        ValidationError: the time lies past :data:`LATEST` (9999-12-31T23:59:59Z), e.g.
            ``timedelta.max``; the message names ``field`` and the value.
        TypeError: ``when`` is a bare number (ambiguous) or of an unsupported type.
    """
    if isinstance(when, datetime):
        at = from_datetime(when, field=field)
    elif isinstance(when, bool) or not isinstance(when, timedelta | str | int | float):
        raise TypeError(
            f"{field}: expected a timedelta, a duration string like '30s' or an aware "
            f"datetime, got {type(when).__name__} {_show(when)}"
        )
    else:
        at = now + parse_duration(when, field=field, allow_number=False)
    if not at <= LATEST:
        raise ValidationError(
            f"{field}: {_show(when)} puts the alarm past 9999-12-31T23:59:59Z, the latest time "
            "durajobs can store"
        )
    return at


@overload
def to_datetime(ts: float) -> datetime: ...
@overload
def to_datetime(ts: None) -> None: ...
@overload
def to_datetime(ts: float | None) -> datetime | None: ...
def to_datetime(ts: float | None) -> datetime | None:
    """Convert epoch seconds to an aware UTC datetime (microsecond resolution).

    Times outside the range a :class:`~datetime.datetime` holds (only an odd stored row can
    have one: durajobs refuses to set such alarms) are clamped to ``datetime.min`` /
    ``datetime.max`` in UTC, so that reading a row never fails on its times.

    Args:
        ts: Epoch seconds, or ``None``.

    Returns:
        The aware UTC datetime, or ``None`` when ``ts`` is ``None``.

    Raises:
        ValueError: ``ts`` is NaN.
    """
    if ts is None:
        return None
    if ts > LATEST:
        return _MAX_UTC
    if ts < EARLIEST:
        return _MIN_UTC
    return datetime.fromtimestamp(ts, tz=UTC)


def from_datetime(dt: datetime, *, field: str = "datetime") -> float:
    """Convert an aware datetime to epoch seconds.

    Args:
        dt: An aware datetime (any timezone).
        field: The name of the argument, used in error messages.

    Returns:
        The same instant as epoch seconds.

    Raises:
        SchedulerError: ``dt`` is naive (it must be timezone-aware).
        TypeError: ``dt`` is not a datetime.
    """
    if not isinstance(dt, datetime):
        raise TypeError(f"{field}: expected an aware datetime, got {type(dt).__name__} {_show(dt)}")
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise SchedulerError(
            f"{field}: datetime {dt.isoformat()} must be timezone-aware "
            "(e.g. datetime(..., tzinfo=timezone.utc))"
        )
    return dt.timestamp()
