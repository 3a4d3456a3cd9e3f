"""The one clock every step reads: the system clock, or a FakeClock for virtual time."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

from .core.durations import parse_duration

__all__ = ["Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    """What durajobs needs of a clock: wall time as epoch seconds and as an aware datetime."""

    def time(self) -> float:
        """Seconds since the epoch."""
        ...

    def now(self) -> datetime:
        """The current time as an aware UTC datetime."""
        ...


class SystemClock:
    """The real clock (``time.time``)."""

    def time(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    def now(self) -> datetime:
        """The current time as an aware UTC datetime."""
        return datetime.now(UTC)


class FakeClock:
    """A clock that moves only when told: whole schedules run in virtual time.

    Args:
        start: an aware datetime (default 2026-01-01 00:00 UTC) or epoch seconds.

    Raises:
        ValueError: ``start`` is a naive datetime.
    """

    def __init__(self, start: datetime | float | None = None) -> None:
        self._t = _epoch(start if start is not None else datetime(2026, 1, 1, tzinfo=UTC))

    def time(self) -> float:
        """Seconds since the epoch."""
        return self._t

    def now(self) -> datetime:
        """The current virtual time as an aware UTC datetime."""
        return datetime.fromtimestamp(self._t, UTC)

    def advance(self, duration: timedelta | str | float) -> datetime:
        """Move forward by ``duration`` (a timedelta, ``"5 minutes"`` or seconds).

        Raises:
            SchedulerError: the duration is invalid or negative.
        """
        self._t += parse_duration(duration, field="advance")
        return self.now()

    def set(self, when: datetime | float) -> datetime:
        """Jump to ``when`` (an aware datetime or epoch seconds); may move backwards.

        Raises:
            ValueError: ``when`` is a naive datetime.
        """
        self._t = _epoch(when)
        return self.now()

    def __repr__(self) -> str:
        return f"FakeClock({self.now().isoformat()})"


def _epoch(value: datetime | float) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"FakeClock needs an aware datetime, got naive {value!r}")
        return value.timestamp()
    return float(value)
