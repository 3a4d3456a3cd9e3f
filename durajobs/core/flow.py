"""Flow control's pure rules: rates, the token bucket, and the order of due steps.

Theory of operation
-------------------
A definition's ``rate="10/s"`` is a :class:`Rate`: ``count`` alarm steps per ``per`` seconds.
Every process and host sharing a store takes its steps' starts from ONE token bucket per job,
stored as a row ``(tokens, at)`` that the store updates atomically (``StepStore.take_token``);
the arithmetic is here, once:

* the bucket holds at most ``count`` tokens (one interval's burst) and refills continuously at
  ``count / per`` tokens a second, from the time ``at`` of its last update;
* a step starts only if it can take a whole token; otherwise it stays due and the answer is
  the time the next token arrives, which is when a daemon needs to look again (no polling);
* a clock behind the stored ``at`` (another host's) adds nothing and never moves ``at`` back.

So over any window of ``w`` seconds at most ``count + w * count / per`` steps start, and a
burst of ``n`` due steps takes about ``(n - count) * per / count`` seconds to start.

Priorities: when more steps are due than workers can take, the one with the highest
*effective* priority goes first, then the earliest due. The effective priority is the job's
``priority`` plus one for every ``PRIORITY_AGING`` seconds the step has waited past its due
time, so a low-priority step is never starved: after ``(p_high - p_low) * PRIORITY_AGING``
seconds of waiting it ranks with fresh high-priority steps, and it is older than them.

The module is pure (no clock, no I/O): ``now`` is always an argument.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

import attrs

__all__ = [
    "PRIORITY_AGING",
    "Rate",
    "check_concurrency",
    "check_priority",
    "effective_priority",
    "next_token",
    "parse_rate",
    "prioritized",
    "take",
]

PRIORITY_AGING: Final = 10.0
"""Seconds of waiting past its due time that raise a step's effective priority by one."""

_UNITS: Final[dict[str, float]] = {
    **dict.fromkeys(("s", "sec", "second"), 1.0),
    **dict.fromkeys(("m", "min", "minute"), 60.0),
    **dict.fromkeys(("h", "hr", "hour"), 3600.0),
    **dict.fromkeys(("d", "day"), 86400.0),
}
_RATE: Final = re.compile(r"\s*(\d+)\s*/\s*([a-z]+)\s*", re.ASCII | re.IGNORECASE)

T = TypeVar("T")


@attrs.frozen
class Rate:
    """At most ``count`` steps start per ``per`` seconds (bursts of up to ``count``)."""

    count: int
    per: float

    @property
    def per_second(self) -> float:
        """The refill speed, in tokens a second."""
        return self.count / self.per

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "min", 3600.0: "h", 86400.0: "day"}.get(self.per)
        return f"{self.count}/{unit}" if unit else f"{self.count}/{self.per:g}s"


def parse_rate(value: Any, *, field: str = "rate") -> Rate | None:
    """``"10/s"``, ``"600/min"``, ``"5000/h"``, ``"100/day"`` (also ``second``, ``minute``,
    ``hour``, plural or not), a ``Rate``, or ``None`` (no limit).

    Raises:
        TypeError: ``value`` is neither a string, a ``Rate`` nor ``None``.
        ValueError: the string is not ``COUNT/UNIT`` with a positive count and a known unit.
    """
    if value is None or isinstance(value, Rate):
        if isinstance(value, Rate) and (value.count < 1 or not value.per > 0):
            raise ValueError(f"{field}: a Rate needs count >= 1 and per > 0, got {value!r}")
        return value
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a string like '10/s' or '600/min', got {value!r}")
    match = _RATE.fullmatch(value)
    unit = match.group(2).lower() if match else ""
    per = _UNITS.get(unit) or _UNITS.get(unit.removesuffix("s"))
    if match is None or per is None or int(match.group(1)) < 1:
        raise ValueError(
            f"{field}: {value!r} is not a rate: write COUNT/UNIT with a positive whole COUNT "
            "and UNIT s, min, h or day (e.g. '10/s', '600/min', '5000/h')"
        )
    return Rate(int(match.group(1)), per)


def take(
    tokens: float | None, at: float | None, now: float, rate: Rate
) -> tuple[bool, float, float]:
    """Take one token from a bucket last left with ``tokens`` at ``at`` (``None``: new, full).

    Returns ``(granted, tokens, at)``, the bucket to store: refilled up to ``now`` and, if
    granted, less the token taken. Refused, ``next_token(tokens, at, rate)`` is when to ask
    again.
    """
    if tokens is None or at is None:
        tokens, at = float(rate.count), now
    elapsed = max(0.0, now - at)  # another host's clock ahead of ours adds nothing
    level = min(float(rate.count), tokens + elapsed * rate.per_second)
    at = max(at, now)
    if level >= 1.0 - 1e-9:  # float sums of refills: 0.1 s at 10/s is a whole token
        return True, max(0.0, level - 1.0), at
    return False, level, at


def next_token(tokens: float, at: float, rate: Rate) -> float:
    """When the bucket left with ``tokens`` at ``at`` holds a whole token again."""
    return at + max(0.0, 1.0 - tokens) / rate.per_second


def effective_priority(priority: int, due_at: float | None, now: float) -> float:
    """``priority`` raised by one per ``PRIORITY_AGING`` seconds waited past ``due_at``."""
    if due_at is None or not math.isfinite(due_at):
        return float(priority)
    return priority + max(0.0, now - due_at) / PRIORITY_AGING


def prioritized(
    items: Sequence[T],
    priority_of: Callable[[T], int],
    due_of: Callable[[T], float | None],
    now: float,
) -> list[T]:
    """``items`` (earliest due first) in the order they should run: highest effective
    priority first, then earliest due; the order is kept where all priorities are equal."""
    if all(priority_of(item) == 0 for item in items):
        return list(items)  # no priorities: earliest due first, as read
    return sorted(
        items,
        key=lambda item: (
            -effective_priority(priority_of(item), due_of(item), now),
            due_of(item) or 0.0,
        ),
    )


def check_concurrency(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """An attrs validator: ``None`` or a whole number of at least 1."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{attribute.name} must be an int or None, got {value!r}")
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, got {value!r}")


def check_priority(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """An attrs validator: a whole number (any sign)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{attribute.name} must be an int, got {value!r}")
