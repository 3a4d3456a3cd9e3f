"""Durations and times: parse_duration, format_duration, resolve_when, to/from_datetime."""

from __future__ import annotations

import ast
import math
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from durajobs.core import durations
from durajobs.core.durations import (
    format_duration,
    from_datetime,
    parse_duration,
    resolve_when,
    to_datetime,
)
from durajobs.errors import SchedulerError

NOW = 1_790_000_000.0  # 2026-09-21T14:13:20Z


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("5 minutes", 300.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("1 hour 30 minutes", 5400.0),
        ("1 second", 1.0),
        ("30 minutes", 1800.0),
        ("2.5s", 2.5),
        ("100ms", 0.1),
        ("1 millisecond", 0.001),
        ("250 msec", 0.25),
        ("1 day", 86400.0),
        ("2 days", 172800.0),
        ("1d", 86400.0),
        ("1w", 604800.0),
        ("2 weeks", 1209600.0),
        ("3 hrs", 10800.0),
        ("1hr", 3600.0),
        ("10 secs", 10.0),
        ("10sec", 10.0),
        ("5 mins", 300.0),
        ("5min", 300.0),
        ("30", 30.0),
        ("2.5", 2.5),
        (".5", 0.5),
        ("  45s  ", 45.0),
        ("0s", 0.0),
        ("0", 0.0),
        ("1H30M", 5400.0),
        ("5 MINUTES", 300.0),
        ("1Day", 86400.0),
        ("1.5h", 5400.0),
        ("1d2h3m4s5ms", 93784.005),
        ("1m 1m", 120.0),
    ],
)
def test_parse_duration_strings(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert type(parse_duration(text)) is float


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (30, 30.0),
        (2.5, 2.5),
        (0.001, 0.001),
        (timedelta(minutes=5), 300.0),
        (timedelta(milliseconds=100), 0.1),
        (timedelta(0), 0.0),
    ],
)
def test_parse_duration_numbers_and_timedeltas(value: timedelta | float, seconds: float) -> None:
    assert parse_duration(value) == seconds
    assert type(parse_duration(value)) is float


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "s",
        "abc",
        "-5s",
        "+5s",
        "5 parsecs",
        "1h30",
        "30s5",
        "1e3s",
        "nan",
        "inf",
        "5s,",
        "1h and 30m",
        "5..5s",
        "5 s s",
        "٣s",  # a non-ASCII digit is not a number here
    ],
)
def test_parse_duration_rejects_bad_strings(text: str) -> None:
    with pytest.raises(SchedulerError) as excinfo:
        parse_duration(text, field="flush_after")
    assert "flush_after" in str(excinfo.value)
    assert repr(text) in str(excinfo.value)


@pytest.mark.parametrize(
    "value", [-1, -0.5, float("nan"), float("inf"), -float("inf"), timedelta(seconds=-1)]
)
def test_parse_duration_rejects_bad_numbers(value: float | timedelta) -> None:
    with pytest.raises(SchedulerError, match="flush_after"):
        parse_duration(value, field="flush_after")


@pytest.mark.parametrize("value", [10**400, "1" * 400 + "w", "9" * 400])
def test_parse_duration_rejects_too_large(value: int | str) -> None:
    with pytest.raises(SchedulerError, match="too large"):
        parse_duration(value)


def test_error_message_of_a_huge_value_is_short() -> None:
    with pytest.raises(SchedulerError) as excinfo:
        parse_duration("x" * 10_000)
    assert len(str(excinfo.value)) < 400


@pytest.mark.parametrize("value", [True, False, None, [1], b"5s", datetime(2026, 1, 1, tzinfo=UTC)])
def test_parse_duration_rejects_other_types(value: object) -> None:
    with pytest.raises(TypeError, match="every"):
        parse_duration(value, field="every")  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, 30, 2.5])
def test_numbers_are_ambiguous_when_not_allowed(value: float) -> None:
    with pytest.raises(TypeError, match="ambiguous"):
        parse_duration(value, allow_number=False)


def test_strings_and_timedeltas_are_fine_when_numbers_are_not() -> None:
    assert parse_duration("30", allow_number=False) == 30.0
    assert parse_duration(timedelta(seconds=3), allow_number=False) == 3.0


def test_scheduler_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_duration("soon")


UNITS = {
    "ms": Decimal("0.001"),
    "milliseconds": Decimal("0.001"),
    "s": Decimal(1),
    "seconds": Decimal(1),
    "m": Decimal(60),
    "minute": Decimal(60),
    "h": Decimal(3600),
    "hours": Decimal(3600),
    "d": Decimal(86400),
    "days": Decimal(86400),
    "w": Decimal(604800),
    "weeks": Decimal(604800),
}


@given(
    st.integers(min_value=0, max_value=10**9),
    st.sampled_from(sorted(UNITS)),
    st.sampled_from(["", " ", "  "]),
)
def test_number_and_unit(amount: int, unit: str, space: str) -> None:
    assert parse_duration(f"{amount}{space}{unit}") == float(amount * UNITS[unit])


@given(st.integers(0, 1000), st.integers(0, 1000), st.integers(0, 1000), st.sampled_from(["", " "]))
def test_compound_strings_add_up(hours: int, minutes: int, seconds: int, sep: str) -> None:
    text = f"{hours}h{sep}{minutes}m{sep}{seconds}s"
    assert parse_duration(text) == hours * 3600 + minutes * 60 + seconds


@given(st.floats(min_value=0, allow_nan=False, allow_infinity=False))
def test_format_then_parse_round_trips_exactly(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.timedeltas(min_value=timedelta(0)))
def test_timedelta_round_trips(delta: timedelta) -> None:
    assert parse_duration(delta) == delta.total_seconds()
    assert parse_duration(format_duration(delta.total_seconds())) == delta.total_seconds()


@given(st.text(max_size=30))
def test_any_string_is_a_duration_or_a_scheduler_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except SchedulerError:
        return
    assert math.isfinite(seconds)
    assert seconds >= 0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (30.0, "30s"),
        (0.1, "0.1s"),
        (60.0, "1m"),
        (5400.0, "1h30m"),
        (86400.0, "1d"),
        (90061.5, "1d1h1m1.5s"),
        (1e-5, "0.00001s"),
        (3600.25, "1h0.25s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [-1.0, float("nan"), float("inf")])
def test_format_duration_rejects_bad_values(seconds: float) -> None:
    with pytest.raises(SchedulerError):
        format_duration(seconds)


# --- resolve_when -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (timedelta(seconds=30), NOW + 30),
        ("30s", NOW + 30),
        ("5 minutes", NOW + 300),
        ("1h30m", NOW + 5400),
        ("0s", NOW),
        ("30", NOW + 30),
        (datetime(2026, 9, 21, 14, 13, 20, tzinfo=UTC), NOW),
        (datetime(2026, 9, 21, 16, 13, 20, tzinfo=ZoneInfo("Europe/Berlin")), NOW),
        (datetime(2026, 9, 21, 15, 13, 20, tzinfo=timezone(timedelta(hours=1))), NOW),
        (datetime(2020, 1, 1, tzinfo=UTC), 1_577_836_800.0),  # the past is allowed: due at once
    ],
)
def test_resolve_when(when: timedelta | str | datetime, expected: float) -> None:
    assert resolve_when(when, NOW) == expected


def test_resolve_when_refuses_naive_datetimes() -> None:
    with pytest.raises(SchedulerError, match="timezone-aware") as excinfo:
        resolve_when(datetime(2026, 9, 21, 14, 0), NOW)  # naive on purpose
    assert "when" in str(excinfo.value)


@pytest.mark.parametrize("when", [30, 2.5, 0, NOW])
def test_resolve_when_refuses_bare_numbers(when: float) -> None:
    with pytest.raises(TypeError, match="ambiguous"):
        resolve_when(when, NOW)  # type: ignore[arg-type]


@pytest.mark.parametrize("when", [True, None, [1]])
def test_resolve_when_refuses_other_types(when: object) -> None:
    with pytest.raises(TypeError, match="when"):
        resolve_when(when, NOW)  # type: ignore[arg-type]


@pytest.mark.parametrize("when", ["-5s", "later", timedelta(seconds=-1)])
def test_resolve_when_refuses_bad_durations(when: str | timedelta) -> None:
    with pytest.raises(SchedulerError, match="when"):
        resolve_when(when, NOW)


# --- to_datetime / from_datetime ----------------------------------------------------------


def test_to_datetime() -> None:
    assert to_datetime(None) is None
    assert to_datetime(NOW) == datetime(2026, 9, 21, 14, 13, 20, tzinfo=UTC)
    assert to_datetime(NOW).tzinfo is UTC
    assert to_datetime(0.5) == datetime(1970, 1, 1, 0, 0, 0, 500_000, tzinfo=UTC)


def test_from_datetime() -> None:
    assert from_datetime(datetime(2026, 9, 21, 14, 13, 20, tzinfo=UTC)) == NOW
    berlin = datetime(2026, 10, 25, 2, 30, fold=1, tzinfo=ZoneInfo("Europe/Berlin"))
    assert from_datetime(berlin) == datetime(2026, 10, 25, 1, 30, tzinfo=UTC).timestamp()
    with pytest.raises(SchedulerError, match="timezone-aware"):
        from_datetime(datetime(2026, 1, 1))  # naive on purpose
    with pytest.raises(TypeError):
        from_datetime(NOW)  # type: ignore[arg-type]


@given(st.integers(min_value=-(2**40), max_value=7 * 10**15))
def test_datetime_round_trip_at_microsecond_resolution(microseconds: int) -> None:
    ts = microseconds / 1_000_000
    dt = to_datetime(ts)
    assert dt.tzinfo is UTC
    assert from_datetime(dt) == ts
    assert to_datetime(from_datetime(dt)) == dt


@given(
    st.datetimes(
        min_value=datetime(1900, 1, 1),  # hypothesis takes naive bounds
        max_value=datetime(2200, 1, 1),
        timezones=st.sampled_from([UTC, ZoneInfo("Europe/Berlin"), ZoneInfo("Asia/Kolkata")]),
        allow_imaginary=False,  # a wall time in a DST gap names no instant to round-trip to
    )
)
def test_aware_datetimes_round_trip(dt: datetime) -> None:
    # Compared in UTC: an inter-zone == is always False for a repeated wall time (PEP 495).
    assert to_datetime(from_datetime(dt)) == dt.astimezone(UTC)


# --- purity ------------------------------------------------------------------------------

FORBIDDEN_IMPORTS = {"apsw", "os", "time", "socket", "signal", "random", "threading"}


def imported_modules(module_file: str) -> set[str]:
    tree = ast.parse(Path(module_file).read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_durations_module_is_pure() -> None:
    assert durations.__file__ is not None
    assert not imported_modules(durations.__file__) & FORBIDDEN_IMPORTS
    source = Path(durations.__file__).read_text(encoding="utf-8")
    assert ".now(" not in source
    assert ".today(" not in source
