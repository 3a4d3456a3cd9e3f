"""Schedules: every(), cron() with IANA timezones and DST, first_run, missed_ticks."""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from itertools import islice, pairwise
from pathlib import Path
from zoneinfo import ZoneInfo

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from durajobs.core import schedules
from durajobs.core.schedules import Cron, Every, Schedule, cron, every, first_run, missed_ticks
from durajobs.errors import SchedulerError

BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"
LORD_HOWE = "Australia/Lord_Howe"  # DST moves the clock by 30 minutes


def at(iso: str) -> float:
    """Epoch seconds of an ISO time with an explicit offset."""
    parsed = datetime.fromisoformat(iso)
    assert parsed.tzinfo is not None
    return parsed.timestamp()


def local_iso(t: float, tz: str) -> str:
    return datetime.fromtimestamp(t, ZoneInfo(tz)).isoformat()


# --- every() ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "period"),
    [
        ("30 minutes", 1800.0),
        ("1h30m", 5400.0),
        ("1ms", 0.001),
        (timedelta(seconds=5), 5.0),
        (30, 30.0),
        (2.5, 2.5),
    ],
)
def test_every(value: timedelta | str | float, period: float) -> None:
    assert every(value) == Every(period)
    assert every(value).period == period


@pytest.mark.parametrize(
    "value", ["0s", 0, 0.0, "0", "-5s", -5, "soon", "", float("nan"), float("inf"), 0.0005, "0.5ms"]
)
def test_every_rejects_bad_periods(value: str | float) -> None:
    with pytest.raises(SchedulerError, match="every"):
        every(value)


@pytest.mark.parametrize("value", [None, True, [30]])
def test_every_rejects_other_types(value: object) -> None:
    with pytest.raises(TypeError, match="every"):
        every(value)  # type: ignore[arg-type]


def test_every_validates_direct_construction() -> None:
    with pytest.raises(SchedulerError):
        Every(0.0)
    with pytest.raises(SchedulerError):
        Every(True)


def test_every_is_a_frozen_hashable_value() -> None:
    assert every("30m") == every(1800) == every(timedelta(minutes=30))
    assert len({every("30m"), every(1800.0)}) == 1
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        every("30m").period = 5.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("anchor", "period", "after", "expected"),
    [
        (0.0, 10.0, 0.0, 10.0),  # strictly after: a grid point equal to `after` is not it
        (0.0, 10.0, 5.0, 10.0),
        (0.0, 10.0, 9.999, 10.0),
        (0.0, 10.0, 10.0, 20.0),
        (0.0, 10.0, 1234.5, 1240.0),
        (0.0, 10.0, -0.001, 0.0),  # before the anchor: the anchor itself may be the answer
        (0.0, 10.0, -5.0, 0.0),
        (0.0, 10.0, -10.0, 0.0),
        (0.0, 10.0, -10.5, -10.0),
        (100.0, 30.0, 99.999, 100.0),
        (100.0, 30.0, 100.0, 130.0),
        (1_790_000_000.0, 1800.0, 1_790_000_000.0, 1_790_001_800.0),
        (1_790_000_000.0, 1800.0, 1_790_086_401.0, 1_790_088_200.0),  # a day later, on the grid
        (1_790_000_000.5, 0.25, 1_790_000_000.6, 1_790_000_000.75),
    ],
)
def test_every_next_after(anchor: float, period: float, after: float, expected: float) -> None:
    assert Every(period).next_after(anchor, after) == expected


@given(
    anchor=st.floats(0, 4e9),
    period=st.floats(0.001, 1e7),
    offset=st.floats(-1e9, 1e9),
)
def test_every_next_is_the_first_grid_point_after(
    anchor: float, period: float, offset: float
) -> None:
    schedule = Every(period)
    after = anchor + offset
    t = schedule.next_after(anchor, after)
    assert t > after
    k = round((t - anchor) / period)
    assert t == anchor + k * period  # on the grid
    previous = anchor + (k - 1) * period
    assert previous <= after  # no grid point between `after` and the answer was skipped
    # Walking the grid from any point hits every point: from the previous one, from just
    # below this one, and on to the next one.
    assert schedule.next_after(anchor, previous) == t
    assert schedule.next_after(anchor, math.nextafter(t, -math.inf)) == t
    assert schedule.next_after(anchor, t) == anchor + (k + 1) * period


@given(
    anchor=st.floats(0, 4e9),
    period=st.floats(0.001, 1e6),
    offset=st.floats(-1e7, 1e7),
)
def test_every_times_after_walks_the_grid(anchor: float, period: float, offset: float) -> None:
    schedule = Every(period)
    after = anchor + offset
    times = list(islice(schedule.times_after(anchor, after), 5))
    assert times[0] == schedule.next_after(anchor, after)
    for earlier, later in pairwise(times):
        assert later > earlier
        assert schedule.next_after(anchor, earlier) == later


# --- cron() -------------------------------------------------------------------------------


def test_cron_values() -> None:
    assert cron("0 9 * * 1") == Cron("0 9 * * 1", "UTC")
    assert cron("0 9 * * 1", tz=BERLIN) == Cron("0 9 * * 1", BERLIN)
    assert cron("0 9 * * 1", tz=ZoneInfo(BERLIN)) == Cron("0 9 * * 1", BERLIN)
    assert cron("0 9 * * 1", tz=BERLIN) != cron("0 9 * * 1")
    assert len({cron("@daily"), cron("@daily"), cron("@hourly")}) == 2
    # Compiled croniter/ZoneInfo objects are cached outside the value, not stored as fields.
    assert [field.name for field in attrs.fields(Cron)] == ["expr", "tz"]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cron("@daily").tz = BERLIN  # type: ignore[misc]


@pytest.mark.parametrize(
    "expr",
    [
        "* * * * *",
        "0 9 * * 1",
        "*/15 9-17 * * mon-fri",
        "0 0 1 * *",
        "0 0 29 2 *",  # only in leap years, but it does fire
        "0 12 L * *",
        "0 0 * * 5#3",
        "@daily",
        "@hourly",
        "* * * * * */10",  # croniter's optional seconds field (last)
        "0 0 1 1 * 0 2030",  # and its optional year field after that
    ],
)
def test_cron_accepts(expr: str) -> None:
    assert cron(expr).expr == expr


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("", "invalid expression"),
        ("* * *", "invalid expression"),
        ("61 * * * *", "invalid expression"),
        ("0 25 * * *", "invalid expression"),
        ("* * * * blursday", "invalid expression"),
        ("every monday", "invalid expression"),
        ("H * * * *", "invalid expression"),
        ("0 0 30 2 *", "never fires"),
        ("R * * * *", "random"),
        ("0 R(1-5) * * *", "random"),
    ],
)
def test_cron_rejects_bad_expressions(expr: str, reason: str) -> None:
    with pytest.raises(SchedulerError, match=reason) as excinfo:
        cron(expr)
    assert repr(expr) in str(excinfo.value)


@pytest.mark.parametrize(
    "tz", ["Mars/Olympus_Mons", "", "Europe", "/etc/localtime", "../UTC", "utc"]
)
def test_cron_rejects_bad_timezones(tz: str) -> None:
    with pytest.raises(SchedulerError, match="timezone") as excinfo:
        cron("0 9 * * *", tz=tz)
    assert repr(tz) in str(excinfo.value)


def test_cron_validates_direct_construction() -> None:
    with pytest.raises(SchedulerError):
        Cron("nope")
    with pytest.raises(SchedulerError):
        Cron("* * * * *", "Nowhere/Nothing")
    with pytest.raises(SchedulerError):
        Cron(5)  # type: ignore[arg-type]
    with pytest.raises(SchedulerError):
        Cron("* * * * *", ZoneInfo("UTC"))  # type: ignore[arg-type]


def test_scheduler_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        cron("0 99 * * *")


@pytest.mark.parametrize(
    ("expr", "tz", "after", "expected"),
    [
        ("0 9 * * 1", "UTC", "2026-01-01T00:00:00+00:00", "2026-01-05T09:00:00+00:00"),
        ("0 9 * * 1", "UTC", "2026-01-05T09:00:00+00:00", "2026-01-12T09:00:00+00:00"),
        ("0 9 * * 1", "UTC", "2026-01-05T08:59:59.999999+00:00", "2026-01-05T09:00:00+00:00"),
        ("0 9 * * 1", BERLIN, "2026-01-05T08:00:00+01:00", "2026-01-05T09:00:00+01:00"),
        ("0 9 * * 1", BERLIN, "2026-07-06T08:00:00+02:00", "2026-07-06T09:00:00+02:00"),
        ("*/15 * * * *", "UTC", "2026-01-01T00:14:59+00:00", "2026-01-01T00:15:00+00:00"),
        ("*/15 * * * *", "UTC", "2026-01-01T00:15:00+00:00", "2026-01-01T00:30:00+00:00"),
        ("@daily", NEW_YORK, "2026-06-01T12:00:00-04:00", "2026-06-02T00:00:00-04:00"),
        # croniter's optional sixth field is the seconds (last, not first)
        ("* * * * * */10", "UTC", "2026-01-01T00:00:05+00:00", "2026-01-01T00:00:10+00:00"),
    ],
)
def test_cron_next_after(expr: str, tz: str, after: str, expected: str) -> None:
    t = cron(expr, tz).next_after(0.0, at(after))
    assert t == at(expected)
    assert local_iso(t, tz) == expected


def test_cron_ignores_the_anchor() -> None:
    schedule = cron("0 9 * * *")
    after = at("2026-01-01T12:00:00+00:00")
    assert schedule.next_after(0.0, after) == schedule.next_after(after - 12345.6, after)


@pytest.mark.parametrize("below", [0.0, 1e-6, 0.5, 59.0])
def test_cron_does_not_skip_a_time_just_after_a_fractional_after(below: float) -> None:
    # A float just below a schedule time (the largest one, 0.0) must not round (to
    # microseconds, as datetime does) onto it.
    t = at("2026-01-05T09:00:00+00:00")
    after = math.nextafter(t - below, -math.inf)
    assert cron("0 9 * * 1").next_after(0.0, after) == t


def test_cron_without_a_further_time_has_no_next_time() -> None:
    # A schedule that runs out answers None (the step ends the instance); it must not raise at
    # run time, where an error would fail the step of every instance of the job.
    schedule = cron("0 0 1 1 * 0 2030")  # croniter's optional year field
    assert schedule.next_after(0.0, at("2029-06-01T00:00:00+00:00")) == at(
        "2030-01-01T00:00:00+00:00"
    )
    assert schedule.next_after(0.0, at("2030-06-01T00:00:00+00:00")) is None
    assert list(schedule.times_after(0.0, at("2030-06-01T00:00:00+00:00"))) == []


# --- DST ----------------------------------------------------------------------------------
# The rule (module header of durajobs.core.schedules): a wall-clock time runs at most once; a
# repeated one runs at its first occurrence; a skipped one runs at the end of the gap.

DST_CASES = [
    # Europe/Berlin, spring forward 2026-03-29: 02:00+01:00 -> 03:00+02:00 (02:xx does not exist)
    (
        "30 2 * * *",
        BERLIN,
        "2026-03-28T12:00:00+01:00",
        ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00", "2026-03-31T02:30:00+02:00"],
    ),
    (
        "*/30 * * * *",
        BERLIN,
        "2026-03-29T01:10:00+01:00",
        [
            "2026-03-29T01:30:00+01:00",
            "2026-03-29T03:00:00+02:00",  # 02:00, 02:30 and 03:00 collapse into one run
            "2026-03-29T03:30:00+02:00",
        ],
    ),
    (
        "0 2 * * *",
        BERLIN,
        "2026-03-28T12:00:00+01:00",
        ["2026-03-29T03:00:00+02:00", "2026-03-30T02:00:00+02:00"],
    ),
    (
        "* * * * * *",  # every second: the whole gap is jumped, not walked
        BERLIN,
        "2026-03-29T01:59:58+01:00",
        ["2026-03-29T01:59:59+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T03:00:01+02:00"],
    ),
    # Europe/Berlin, fall back 2026-10-25: 03:00+02:00 -> 02:00+01:00 (02:xx happens twice)
    (
        "30 2 * * *",
        BERLIN,
        "2026-10-24T12:00:00+02:00",
        ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00", "2026-10-27T02:30:00+01:00"],
    ),
    (
        "*/30 * * * *",
        BERLIN,
        "2026-10-25T01:10:00+02:00",
        [
            "2026-10-25T01:30:00+02:00",
            "2026-10-25T02:00:00+02:00",
            "2026-10-25T02:30:00+02:00",
            "2026-10-25T03:00:00+01:00",  # 02:00+01:00 and 02:30+01:00 do not run again
            "2026-10-25T03:30:00+01:00",
        ],
    ),
    (  # `after` in the second pass of the repeated hour
        "*/30 * * * *",
        BERLIN,
        "2026-10-25T02:10:00+01:00",
        ["2026-10-25T03:00:00+01:00", "2026-10-25T03:30:00+01:00"],
    ),
    (  # `after` exactly at the fall-back transition
        "*/30 * * * *",
        BERLIN,
        "2026-10-25T02:00:00+01:00",
        ["2026-10-25T03:00:00+01:00"],
    ),
    (  # `after` exactly at the spring-forward transition
        "*/30 * * * *",
        BERLIN,
        "2026-03-29T03:00:00+02:00",
        ["2026-03-29T03:30:00+02:00"],
    ),
    # America/New_York, spring forward 2026-03-08: 02:00-05:00 -> 03:00-04:00
    (
        "30 2 * * *",
        NEW_YORK,
        "2026-03-07T12:00:00-05:00",
        ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"],
    ),
    (
        "*/30 * * * *",
        NEW_YORK,
        "2026-03-08T01:10:00-05:00",
        ["2026-03-08T01:30:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-08T03:30:00-04:00"],
    ),
    # America/New_York, fall back 2026-11-01: 02:00-04:00 -> 01:00-05:00 (01:xx twice)
    (
        "30 1 * * *",
        NEW_YORK,
        "2026-10-31T12:00:00-04:00",
        ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"],
    ),
    (
        "0 * * * *",
        NEW_YORK,
        "2026-11-01T00:30:00-04:00",
        ["2026-11-01T01:00:00-04:00", "2026-11-01T02:00:00-05:00", "2026-11-01T03:00:00-05:00"],
    ),
    (
        "*/30 * * * *",
        NEW_YORK,
        "2026-11-01T00:40:00-04:00",
        [
            "2026-11-01T01:00:00-04:00",
            "2026-11-01T01:30:00-04:00",
            "2026-11-01T02:00:00-05:00",
            "2026-11-01T02:30:00-05:00",
        ],
    ),
    (
        "*/30 * * * *",
        NEW_YORK,
        "2026-11-01T01:10:00-05:00",
        ["2026-11-01T02:00:00-05:00"],
    ),
    # Australia/Lord_Howe shifts by 30 minutes: 02:00+10:30 -> 02:30+11:00 on 2026-10-04 and
    # 02:00+11:00 -> 01:30+10:30 on 2026-04-05.
    (
        "*/15 * * * *",
        LORD_HOWE,
        "2026-10-04T01:40:00+10:30",
        ["2026-10-04T01:45:00+10:30", "2026-10-04T02:30:00+11:00", "2026-10-04T02:45:00+11:00"],
    ),
    (
        "45 1 * * *",
        LORD_HOWE,
        "2026-04-04T12:00:00+11:00",
        ["2026-04-05T01:45:00+11:00", "2026-04-06T01:45:00+10:30"],
    ),
    # Pacific/Apia skipped all of 2011-12-30: its noon runs at the end of the gap.
    (
        "0 12 * * *",
        "Pacific/Apia",
        "2011-12-29T00:00:00-10:00",
        ["2011-12-29T12:00:00-10:00", "2011-12-31T00:00:00+14:00", "2011-12-31T12:00:00+14:00"],
    ),
]


@pytest.mark.parametrize(("expr", "tz", "after", "expected"), DST_CASES)
def test_cron_across_dst(expr: str, tz: str, after: str, expected: list[str]) -> None:
    schedule = cron(expr, tz)
    t = at(after)
    got = []
    for _ in expected:
        t = schedule.next_after(0.0, t)
        got.append(local_iso(t, tz))
    assert got == expected
    times = list(islice(schedule.times_after(0.0, at(after)), len(expected)))
    assert [local_iso(t, tz) for t in times] == expected


# A brute-force reference for the DST rule: wall-clock predicates for a few expressions, and
# a check of every whole minute between `after` and the answer.
Wall = datetime
PREDICATES: dict[str, Callable[[Wall], bool]] = {
    "*/30 * * * *": lambda w: w.minute % 30 == 0,
    "0 * * * *": lambda w: w.minute == 0,
    "30 2 * * *": lambda w: (w.hour, w.minute) == (2, 30),
    "15,45 1-3 * * *": lambda w: w.minute in (15, 45) and 1 <= w.hour <= 3,
    "0 0 * * *": lambda w: (w.hour, w.minute) == (0, 0),
    "*/20 2 * * *": lambda w: w.hour == 2 and w.minute % 20 == 0,
}
# (zone, a UTC day with a DST transition in it)
TRANSITION_DAYS = [
    ("UTC", datetime(2026, 3, 29, tzinfo=UTC)),
    (BERLIN, datetime(2026, 3, 29, tzinfo=UTC)),
    (BERLIN, datetime(2026, 10, 25, tzinfo=UTC)),
    (NEW_YORK, datetime(2026, 3, 8, tzinfo=UTC)),
    (NEW_YORK, datetime(2026, 11, 1, tzinfo=UTC)),
    (LORD_HOWE, datetime(2026, 4, 4, tzinfo=UTC)),
    (LORD_HOWE, datetime(2026, 10, 3, tzinfo=UTC)),
]


def is_schedule_instant(zone: ZoneInfo, matches: Callable[[Wall], bool], instant: int) -> bool:
    """The DST rule, by brute force over whole minutes."""
    local = datetime.fromtimestamp(instant, zone)
    if local.fold == 1:
        return False  # the second occurrence of a repeated wall-clock time never runs
    wall = local.replace(tzinfo=None)
    if wall.second == 0 and matches(wall):
        return True
    before = datetime.fromtimestamp(instant - 1, zone)
    before_offset, offset = before.utcoffset(), local.utcoffset()
    assert before_offset is not None
    assert offset is not None
    if before_offset < offset:  # `instant` ends a gap: the skipped wall times run here
        skipped = before.replace(tzinfo=None) + timedelta(seconds=1)
        while skipped < wall:
            if matches(skipped):
                return True
            skipped += timedelta(minutes=1)
    return False


@settings(deadline=None)
@given(
    expr=st.sampled_from(sorted(PREDICATES)),
    day=st.sampled_from(TRANSITION_DAYS),
    offset=st.floats(-36 * 3600, 60 * 3600),
)
def test_cron_matches_the_brute_force_dst_rule(
    expr: str, day: tuple[str, datetime], offset: float
) -> None:
    tz, midnight = day
    zone = ZoneInfo(tz)
    matches = PREDICATES[expr]
    schedule = cron(expr, tz)
    after = midnight.timestamp() + offset
    for _ in range(2):
        t = schedule.next_after(0.0, after)
        assert t > after
        assert t == int(t)
        assert t % 60 == 0
        assert is_schedule_instant(zone, matches, int(t)), local_iso(t, tz)
        minute = math.floor(after / 60) * 60 + 60
        while minute < t:
            assert not is_schedule_instant(zone, matches, minute), local_iso(minute, tz)
            minute += 60
        after = t


@settings(deadline=None, max_examples=50)
@given(
    expr=st.sampled_from(
        ["*/7 * * * *", "0 9 * * mon-fri", "@hourly", "15 3 1 * *", "0 */5 * * *"]
    ),
    tz=st.sampled_from(["UTC", BERLIN, NEW_YORK, LORD_HOWE, "Asia/Kolkata"]),
    after=st.floats(at("2020-01-01T00:00:00+00:00"), at("2035-01-01T00:00:00+00:00")),
)
def test_cron_times_increase(expr: str, tz: str, after: float) -> None:
    schedule = cron(expr, tz)
    times = list(islice(schedule.times_after(0.0, after), 4))
    assert times[0] > after
    assert times[0] == schedule.next_after(0.0, after)
    for earlier, later in pairwise(times):
        assert later > earlier
        assert schedule.next_after(0.0, earlier) == later
        assert schedule.next_after(0.0, math.nextafter(later, -math.inf)) == later


# --- first_run / missed_ticks -------------------------------------------------------------

START = at("2026-01-05T08:10:00+00:00")  # a Monday


@pytest.mark.parametrize(
    ("schedule", "start_immediately", "expected"),
    [
        (every("30m"), True, START),
        (every("30m"), False, START + 1800),
        (cron("0 9 * * 1"), True, START),
        (cron("0 9 * * 1"), False, at("2026-01-05T09:00:00+00:00")),
        (cron("10 8 * * *"), False, at("2026-01-06T08:10:00+00:00")),  # strictly after start
    ],
)
def test_first_run(schedule: Schedule, start_immediately: bool, expected: float) -> None:
    assert first_run(schedule, START, start_immediately) == expected


HOURLY = cron("0 * * * *")
HALF_HOURLY_BERLIN = cron("*/30 * * * *", BERLIN)
JAN_1 = at("2026-01-01T00:00:00+00:00")


@pytest.mark.parametrize(
    ("schedule", "anchor", "due_at", "now", "limit", "expected"),
    [
        (every("10s"), 0.0, 100.0, 100.0, 10, 0),
        (every("10s"), 0.0, 100.0, 99.0, 10, 0),
        (every("10s"), 0.0, 100.0, 109.9, 10, 0),
        (every("10s"), 0.0, 100.0, 110.0, 10, 1),  # (due_at, now]: `now` itself counts
        (every("10s"), 0.0, 100.0, 155.0, 10, 5),
        (every("10s"), 0.0, 100.0, 155.0, 3, 4),  # stops at limit + 1
        (every("10s"), 0.0, 100.0, 1e9, 0, 1),
        (every("10s"), 5.0, 100.0, 155.0, 10, 6),  # 105, 115, ..., 155
        (HOURLY, 0.0, JAN_1, JAN_1 + 5.5 * 3600, 10, 5),
        (HOURLY, 0.0, JAN_1, JAN_1 + 5.5 * 3600, 2, 3),
        (HOURLY, 0.0, JAN_1, JAN_1 + 365 * 86400, 100, 101),
        # 01:30, 02:00, 02:30 (first pass), 03:00, 03:30, 04:00 (+01:00): six, not eight
        (
            HALF_HOURLY_BERLIN,
            0.0,
            at("2026-10-25T01:10:00+02:00"),
            at("2026-10-25T04:00:00+01:00"),
            100,
            6,
        ),
        # 01:30, then 03:00 for the whole gap, 03:30
        (
            HALF_HOURLY_BERLIN,
            0.0,
            at("2026-03-29T01:10:00+01:00"),
            at("2026-03-29T03:30:00+02:00"),
            100,
            3,
        ),
    ],
)
def test_missed_ticks(
    schedule: Schedule, anchor: float, due_at: float, now: float, limit: int, expected: int
) -> None:
    assert missed_ticks(schedule, anchor, due_at, now, limit) == expected


def test_missed_ticks_rejects_a_negative_limit() -> None:
    with pytest.raises(ValueError, match="limit"):
        missed_ticks(every("1s"), 0.0, 0.0, 10.0, -1)


@given(
    anchor=st.floats(0, 4e9),
    period=st.floats(0.001, 1e6),
    offset=st.floats(-1e7, 1e7),
    span=st.floats(0, 40),
    limit=st.integers(0, 50),
)
def test_every_missed_ticks_counts_the_grid(
    anchor: float, period: float, offset: float, span: float, limit: int
) -> None:
    schedule = Every(period)
    due_at = anchor + offset
    now = due_at + span * period
    expected = 0
    for t in schedule.times_after(anchor, due_at):
        if t > now or expected > limit:
            break
        expected += 1
    assert missed_ticks(schedule, anchor, due_at, now, limit) == expected


# --- purity -------------------------------------------------------------------------------

FORBIDDEN_IMPORTS = {"apsw", "os", "time", "socket", "signal", "random", "threading"}


def test_schedules_module_is_pure() -> None:
    assert schedules.__file__ is not None
    source = Path(schedules.__file__).read_text(encoding="utf-8")
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN_IMPORTS
    assert ".now(" not in source
    assert ".today(" not in source
