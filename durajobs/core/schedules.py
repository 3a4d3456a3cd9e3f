"""Schedules of Continuous jobs: ``every(d)`` and ``cron(expr, tz)``.

Theory of operation
-------------------
A schedule is a frozen value that answers one question without reading a clock:
``next_after(anchor, after)`` is the first schedule time strictly greater than ``after``
(all times are float epoch seconds). The engine stores the anchor and the due time and asks
again after every run, so scheduling is anchored to due times, not to completion times.

A schedule can run out: ``next_after`` returns ``None`` when there is no schedule time after
``after`` — a cron whose year field has passed, or a grid point past
:data:`~durajobs.core.durations.LATEST` (9999-12-31T23:59:59Z, where ``datetime`` ends). The step
then ends the instance (it is not an error). Schedules that can never fire again are refused
when they are made (``every`` periods above 1000 years, cron expressions that name no time at
all), and :func:`check_fires_after` refuses, given the ``Jobs`` clock's now, a cron whose times
are all past (this module reads no clock).

``Every(period)``
    The grid ``anchor + k * period`` for every integer ``k`` (negative ones included). The
    answer is computed arithmetically (the hot path) and then corrected by stepping ``k``, so
    float rounding can neither return a time ``<= after`` nor skip a grid point: each grid
    point is always computed by the same expression, ``anchor + k * period``, which is
    monotone in ``k``. Periods below 1 ms are refused: they are not meaningful for a durable
    job, and they would let a grid point fall below the float resolution of an epoch time.

``Cron(expr, tz)``
    croniter enumerates the *wall-clock* times the expression names, as naive datetimes (so
    croniter's own DST handling is never involved), and each wall-clock time is mapped to an
    instant in the IANA zone ``tz`` by the DST rule below. ``anchor`` is ignored.

DST rule (cron in a zone with daylight saving time)
---------------------------------------------------
Every wall-clock time the expression names runs at most once, in order:

* A wall-clock time that occurs once runs at that instant.
* A wall-clock time that occurs twice (the repeated hour when clocks fall back) runs at its
  FIRST occurrence only (``fold=0``); the second occurrence (``fold=1``) is never a schedule
  time. So ``"30 2 * * *"`` in Europe/Berlin runs once on 2026-10-25, at 02:30+02:00, and
  ``"*/30 * * * *"`` runs 02:00+02:00 and 02:30+02:00, then 03:00+01:00 (two hours of real
  time later).
* A wall-clock time that does not occur (the gap when clocks spring forward) runs once at the
  next valid instant: the moment of the transition, whose wall-clock time is the end of the
  gap. So ``"30 2 * * *"`` in Europe/Berlin runs at 03:00+02:00 on 2026-03-29; several skipped
  wall-clock times (``"*/30 * * * *"``: 02:00 and 02:30), and a schedule time at the end of the
  gap itself (03:00), all collapse into that one run.

The mapping from wall-clock time to instant is monotone, so successive schedule times are
strictly increasing. ``after`` itself may lie anywhere, including inside a repeated hour: a
time in the second pass of the repeat is followed by the first wall-clock time after the
repeat ends.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Final, NamedTuple, TypeAlias
from zoneinfo import ZoneInfo

import attrs
from croniter import CroniterBadDateError, croniter

from durajobs.core.durations import LATEST, MAX_PERIOD, parse_period
from durajobs.errors import SchedulerError

__all__ = [
    "Cron",
    "Every",
    "Schedule",
    "check_fires_after",
    "cron",
    "every",
    "first_run",
    "missed_ticks",
]

_MIN_PERIOD: Final = 0.001
_ONE_MICROSECOND: Final = timedelta(microseconds=1)
# Wall-clock times whose instant is not after the previous one are skipped. With the jumps over
# gaps and repeats below there are at most a few in a row; the bound only turns a bug into an
# error instead of a hang.
_MAX_SKIPPED: Final = 10_000
# croniter's "R" (random) items would make every process compute a different schedule.
_RANDOM_ITEM: Final = re.compile(r"r(?:\(\d+-\d+\))?(?:/\d+)?", re.ASCII | re.IGNORECASE)
# Any fixed date will do for the "does this expression ever fire" check.
_PROBE_WALL: Final = datetime(2000, 1, 1)  # naive on purpose: croniter enumerates wall times
# How far croniter searches for the next match. Its default (50 years) would call a year field
# of 2099 "never fires"; croniter's years end at 2099, so 130 years from the probe covers all.
_MAX_YEARS_BETWEEN_MATCHES: Final = 130


def _validate_period(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < _MIN_PERIOD
    ):
        raise SchedulerError(f"every: the period must be at least 1ms, got {value!r}")
    if value > MAX_PERIOD:
        raise SchedulerError(
            f"every: the period must be at most 1000 years (alarms must fall before the year "
            f"10000), got {value!r} seconds"
        )


def _first_index_after(anchor: float, period: float, after: float) -> int:
    """The smallest integer ``k`` with ``anchor + k * period > after``."""
    k = math.floor((after - anchor) / period) + 1
    # The estimate can be off by one either way through rounding; step until exact. Grid
    # points are always computed as anchor + k * period, which never decreases as k grows.
    while anchor + k * period <= after:
        k += 1
    while anchor + (k - 1) * period > after:
        k -= 1
    return k


@attrs.frozen
class Every:
    """Run on the grid ``anchor + k * period``; build it with :func:`every`.

    Attributes:
        period: The distance between runs, in seconds (at least 1 ms, at most 1000 years).

    Raises:
        SchedulerError: The period is out of range (checked on construction).
    """

    period: float = attrs.field(validator=_validate_period)

    def next_after(self, anchor: float, after: float) -> float | None:
        """Return the first grid point strictly greater than ``after``.

        Args:
            anchor: A point of the grid (epoch seconds), e.g. the start or trigger time.
            after: Epoch seconds; may be before ``anchor`` (the answer may then be ``anchor``
                itself or an earlier grid point).

        Returns:
            The smallest ``anchor + k * period`` (integer ``k``) that is ``> after``, or
            ``None`` when that lies past :data:`~durajobs.core.durations.LATEST` (the schedule has
            run out).
        """
        nxt = anchor + _first_index_after(anchor, self.period, after) * self.period
        return nxt if nxt <= LATEST else None

    def times_after(self, anchor: float, after: float) -> Iterator[float]:
        """Yield the grid points strictly greater than ``after``, in order, without end.

        Args:
            anchor: A point of the grid (epoch seconds).
            after: Epoch seconds.

        Yields:
            Successive grid points, each greater than the one before, up to
            :data:`~durajobs.core.durations.LATEST`.
        """
        k = _first_index_after(anchor, self.period, after)
        while (nxt := anchor + k * self.period) <= LATEST:
            yield nxt
            k += 1


class _CompiledCron(NamedTuple):
    zone: ZoneInfo
    template: croniter[datetime]


def _check_zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (KeyError, ValueError, OSError) as exc:
        raise SchedulerError(
            f"cron: unknown timezone {tz!r}; use an IANA name such as 'UTC' or 'Europe/Berlin'"
        ) from exc


@functools.lru_cache(maxsize=256)
def _compile(expr: str, tz: str) -> _CompiledCron:
    """Validate ``(expr, tz)`` once and keep the parsed forms (croniter parsing is slow)."""
    zone = _check_zone(tz)
    for field in expr.split():
        if any(_RANDOM_ITEM.fullmatch(item) for item in field.split(",")):
            raise SchedulerError(
                f"cron: random items ('R') are not supported in {expr!r}: every process "
                "must compute the same schedule"
            )
    try:
        template = croniter(
            expr, _PROBE_WALL, ret_type=datetime,
            max_years_between_matches=_MAX_YEARS_BETWEEN_MATCHES,
        )  # fmt: skip
    except (ValueError, TypeError) as exc:
        raise SchedulerError(f"cron: invalid expression {expr!r}: {exc}") from exc
    try:
        copy.copy(template).get_next(datetime)
    except CroniterBadDateError as exc:
        raise SchedulerError(f"cron: expression {expr!r} never fires") from exc
    return _CompiledCron(zone, template)


def _offset(zone: tzinfo, instant: int) -> timedelta | None:
    return datetime.fromtimestamp(instant, zone).utcoffset()


def _offset_change(zone: tzinfo, low: int, high: int) -> int:
    """The first whole second in ``(low, high]`` whose UTC offset differs from ``low``'s.

    ``low`` and ``high`` must straddle exactly one transition (tz transitions fall on whole
    seconds).
    """
    before = _offset(zone, low)
    while high - low > 1:
        middle = (low + high) // 2
        if _offset(zone, middle) == before:
            low = middle
        else:
            high = middle
    return high


def _wall_to_instant(zone: tzinfo, wall: datetime) -> tuple[float, datetime | None]:
    """Map a naive wall-clock time to its instant by the DST rule in the module header.

    Returns:
        The instant, and for a wall time inside a gap the wall time at the end of the gap
        (every wall time up to it maps to the same instant), else ``None``.
    """
    instant = wall.replace(tzinfo=zone).timestamp()  # fold=0: the first occurrence
    if datetime.fromtimestamp(instant, zone).replace(tzinfo=None) == wall:
        return instant, None
    # The wall time falls in a gap: the two folds read it with the offsets from either side of
    # the transition, so the transition lies between their instants.
    other = wall.replace(tzinfo=zone, fold=1).timestamp()
    low, high = sorted((instant, other))
    transition = _offset_change(zone, math.floor(low), math.ceil(high))
    gap_end = datetime.fromtimestamp(transition, zone).replace(tzinfo=None)
    return float(transition), gap_end


def _start_wall(zone: tzinfo, after: float) -> datetime:
    """A naive wall-clock time such that every schedule time after ``after`` lies past it."""
    whole = math.floor(after)  # whole seconds: no rounding to microseconds can skip a time
    local = datetime.fromtimestamp(whole, zone)
    if not local.fold:
        return local.replace(tzinfo=None) - _ONE_MICROSECOND
    # ``after`` lies in the second pass of a repeated hour. Every wall time of the repeat maps to
    # its first pass, which is not after ``after``: start at the end of the repeat.
    first_pass = local.replace(fold=0)
    offset_before = first_pass.utcoffset()
    assert offset_before is not None  # a ZoneInfo always has an offset
    transition = _offset_change(zone, math.floor(first_pass.timestamp()), whole)
    repeat_end = datetime.fromtimestamp(transition, UTC).replace(tzinfo=None) + offset_before
    return repeat_end - _ONE_MICROSECOND


@attrs.frozen
class Cron:
    """Run at the times a cron expression names in an IANA timezone; build it with :func:`cron`.

    Attributes:
        expr: The cron expression (croniter syntax: 5 fields, optional seconds and year fields,
            ``@daily`` and similar aliases).
        tz: The IANA timezone the expression's wall-clock times are read in.

    Raises:
        SchedulerError: The expression or the timezone is invalid (checked on construction).
            Whether its times are all past needs a clock: see :func:`check_fires_after`.
    """

    expr: str
    tz: str = "UTC"

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.expr, str):
            raise SchedulerError(f"cron: the expression must be a string, got {self.expr!r}")
        if not isinstance(self.tz, str):
            raise SchedulerError(f"cron: the timezone must be a string, got {self.tz!r}")
        _compile(self.expr, self.tz)

    def next_after(self, anchor: float, after: float) -> float | None:
        """Return the first schedule time strictly greater than ``after``.

        Args:
            anchor: Ignored (cron times do not depend on when the job started).
            after: Epoch seconds.

        Returns:
            Epoch seconds, by the DST rule in the module header; ``None`` when the expression
            has no schedule time after ``after`` (only possible with a year field): the
            schedule has run out.
        """
        return next(self.times_after(anchor, after), None)

    def times_after(self, anchor: float, after: float) -> Iterator[float]:
        """Yield the schedule times strictly greater than ``after``, in order.

        Args:
            anchor: Ignored.
            after: Epoch seconds.

        Yields:
            Successive schedule times (epoch seconds), each greater than the one before; the
            iterator ends when the expression has no further time (a year field) or the next
            time lies past :data:`~durajobs.core.durations.LATEST`.
        """
        zone, template = _compile(self.expr, self.tz)
        walls = copy.copy(template)  # croniter objects are stateful; the template is shared
        walls.set_current(_start_wall(zone, after))
        last = after
        skipped = 0
        while True:
            try:
                wall = walls.get_next(datetime)
            except (CroniterBadDateError, OverflowError, ValueError):
                return  # no further time: the schedule has run out
            instant, gap_end = _wall_to_instant(zone, wall)
            if instant > LATEST:
                return
            if gap_end is not None:
                walls.set_current(gap_end)  # the rest of the gap maps to the same instant
            if instant > last:
                last = instant
                skipped = 0
                yield instant
            else:
                skipped += 1
                if skipped > _MAX_SKIPPED:  # pragma: no cover - a bug, not a user error
                    msg = f"cron {self.expr!r} in {self.tz}: no progress after {after!r}"
                    raise RuntimeError(msg)


Schedule: TypeAlias = Every | Cron


def every(d: timedelta | str | float) -> Every:
    """Make a fixed-period schedule.

    Args:
        d: The period: a timedelta, a duration string (``"30 minutes"``, ``"1h30m"``) or a
            number of seconds.

    Returns:
        The schedule. The first run is at start (``start_immediately``) or start + d; later
        runs sit on the grid start + k·d.

    Raises:
        SchedulerError: ``d`` is not a valid duration, or is below 1 ms (zero included) or
            above 1000 years.
        TypeError: ``d`` is of an unsupported type.
    """
    return Every(parse_period(d, field="every"))


def cron(expr: str, tz: str | ZoneInfo = "UTC") -> Cron:
    """Make a cron schedule.

    Args:
        expr: A cron expression, e.g. ``"0 9 * * 1"`` (croniter syntax).
        tz: An IANA timezone name (a :class:`zoneinfo.ZoneInfo` is accepted too and stored by
            its key). See the module header for what happens at DST transitions.

    Returns:
        The schedule.

    Raises:
        SchedulerError: The expression is invalid or never fires, or the timezone is unknown.
    """
    if isinstance(tz, ZoneInfo):
        tz = tz.key
    return Cron(expr, tz)


def check_fires_after(schedule: Schedule, now: float, *, job: str) -> None:
    """Refuse a schedule that has no time after ``now`` (a cron whose year field has passed).

    Called when ``Jobs()`` is made, with its clock's now, so that such a definition is refused
    up front instead of ending each instance at its first run.

    Args:
        schedule: The job's schedule.
        now: The current time (epoch seconds).
        job: The job's name, for the message.

    Raises:
        SchedulerError: The schedule never fires after ``now``.
    """
    if schedule.next_after(now, now) is None:
        what = f"cron {schedule.expr!r}" if isinstance(schedule, Cron) else repr(schedule)
        raise SchedulerError(f"job {job!r}: {what} never fires again (its last time has passed)")


def first_run(schedule: Schedule, start: float, start_immediately: bool) -> float | None:
    """Return the due time of a Continuous instance's first run.

    Args:
        schedule: The job's schedule.
        start: When the instance was started (epoch seconds); the grid anchor for ``every``.
        start_immediately: Whether the first run is at ``start``.

    Returns:
        ``start`` when ``start_immediately``, else the first schedule time after ``start``
        (``start + period`` for ``every``), or ``None`` when the schedule has run out.
    """
    if start_immediately:
        return start
    return schedule.next_after(start, start)


def missed_ticks(schedule: Schedule, anchor: float, due_at: float, now: float, limit: int) -> int:
    """Count the schedule times in ``(due_at, now]``, stopping at ``limit + 1``.

    Args:
        schedule: The job's schedule.
        anchor: The grid anchor (ignored by cron).
        due_at: The due time of the run just served (epoch seconds).
        now: The current time (epoch seconds).
        limit: The most missed ticks the caller will act on; counting stops past it, so
            ``limit + 1`` means "more than ``limit``".

    Returns:
        The number of schedule times ``t`` with ``due_at < t <= now``, at most ``limit + 1``.

    Raises:
        ValueError: ``limit`` is negative.
    """
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit!r}")
    if now <= due_at:
        return 0
    if isinstance(schedule, Every):
        period = schedule.period
        count = _first_index_after(anchor, period, now) - _first_index_after(anchor, period, due_at)
        return min(count, limit + 1)
    count = 0
    for instant in schedule.times_after(anchor, due_at):
        if instant > now:
            break
        count += 1
        if count > limit:
            break
    return count
