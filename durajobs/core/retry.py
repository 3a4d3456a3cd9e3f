"""Retry policies: how many attempts a run gets, and how long to wait between them.

Theory of operation
-------------------
A run that fails is tried again after a delay, until ``max_attempts`` executions have failed
(``max_attempts`` counts executions in total: 3 = the first try + 2 retries). The engine keeps
the attempt number durably and asks two pure questions of the policy:

* ``can_retry(attempt)``: after attempt number ``attempt`` failed, is there another one?
* ``next_delay(failures, rand)``: how long to wait before the retry that follows the
  ``failures``-th failure. The engine supplies ``rand`` (uniform in ``[0, 1)``), so the policy
  stays deterministic and testable; with ``jitter`` the delay is spread uniformly over
  ±10 % of the backoff (and may therefore exceed ``max`` by up to 10 %).

:class:`Backoff` computes the un-jittered delay: ``exponential`` (``base * factor **
(failures - 1)``), ``linear`` (``base + increment * (failures - 1)``) or ``fixed``, each capped
by ``max`` when one is given and always by :data:`MAX_DELAY`. The cap is applied *before*
computing a power, so any number of failures gives a finite delay without overflow.

Errors: a bad duration or factor is a :class:`~durajobs.errors.SchedulerError` (like every
bad duration in a definition); ``max_attempts < 1`` is a
:class:`~durajobs.errors.ValidationError` (a ``ValueError``); a value of the wrong type is a
``TypeError``.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Final, Literal, TypeAlias

import attrs

from durajobs.core.durations import parse_duration
from durajobs.errors import SchedulerError, ValidationError

__all__ = ["MAX_DELAY", "Backoff", "Retry"]

MAX_DELAY: Final = 100 * 365 * 86400.0
"""The ceiling of every backoff delay (about a century), so a delay always converts to a date."""

_MIN_STEP: Final = 1e-6
# A positive base or increment below a microsecond is meaningless, and refusing it bounds
# cap / base and cap / increment, so no computation below the cap can overflow.

BackoffKind: TypeAlias = Literal["exponential", "linear", "fixed"]
DurationLike: TypeAlias = timedelta | str | float


def _check_seconds(name: str, value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise SchedulerError(
            f"backoff: {name} must be a finite number of seconds >= 0, got {value!r}"
        )


def _validate_duration(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    _check_seconds(attribute.name, value)


def _validate_max(
    instance: object, attribute: attrs.Attribute[float | None], value: float | None
) -> None:
    if value is not None:
        _check_seconds(attribute.name, value)


def _validate_factor(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 1
    ):
        raise SchedulerError(f"backoff: factor must be a finite number >= 1, got {value!r}")


def _validate_kind(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ("exponential", "linear", "fixed"):
        raise SchedulerError(
            f"backoff: kind must be 'exponential', 'linear' or 'fixed', got {value!r}"
        )


@attrs.frozen
class Backoff:
    """The delay before each retry, before jitter. Build it with the static constructors.

    Attributes:
        kind: ``"exponential"``, ``"linear"`` or ``"fixed"``.
        base: The first delay, in seconds (the only one for ``fixed``): 0 or at least 1 µs.
        factor: The growth factor of ``exponential`` (>= 1).
        increment: The growth per failure of ``linear``, in seconds: 0 or at least 1 µs.
        max: The largest delay, in seconds, or ``None`` for :data:`MAX_DELAY`.
    """

    kind: BackoffKind = attrs.field(validator=_validate_kind)
    base: float = attrs.field(validator=_validate_duration)
    factor: float = attrs.field(default=2.0, validator=_validate_factor)
    increment: float = attrs.field(default=0.0, validator=_validate_duration)
    max: float | None = attrs.field(default=None, validator=_validate_max)

    def __attrs_post_init__(self) -> None:
        for name, value in (("base", self.base), ("increment", self.increment)):
            if 0 < value < _MIN_STEP:
                raise SchedulerError(f"backoff: {name} must be 0 or at least 1us, got {value!r}")

    @staticmethod
    def exponential(
        base: DurationLike, factor: float = 2.0, max: DurationLike | None = None
    ) -> Backoff:
        """Wait ``base``, then ``base * factor``, ``base * factor**2``, ... up to ``max``.

        Args:
            base: The first delay (a timedelta, a duration string or seconds).
            factor: The growth factor, a finite number >= 1.
            max: The largest delay, or ``None`` for no cap but :data:`MAX_DELAY`.

        Returns:
            The backoff.

        Raises:
            SchedulerError: A duration is invalid or negative, or ``factor`` is not >= 1.
            TypeError: A value is of an unsupported type.
        """
        return Backoff(
            kind="exponential",
            base=parse_duration(base, field="backoff base"),
            factor=factor,
            max=None if max is None else parse_duration(max, field="backoff max"),
        )

    @staticmethod
    def linear(
        base: DurationLike,
        increment: DurationLike | None = None,
        max: DurationLike | None = None,
    ) -> Backoff:
        """Wait ``base``, then ``base + increment``, ``base + 2 * increment``, ... up to ``max``.

        Args:
            base: The first delay (a timedelta, a duration string or seconds).
            increment: The growth per failure; defaults to ``base``.
            max: The largest delay, or ``None`` for no cap but :data:`MAX_DELAY`.

        Returns:
            The backoff.

        Raises:
            SchedulerError: A duration is invalid or negative.
            TypeError: A value is of an unsupported type.
        """
        base_seconds = parse_duration(base, field="backoff base")
        return Backoff(
            kind="linear",
            base=base_seconds,
            increment=(
                base_seconds
                if increment is None
                else parse_duration(increment, field="backoff increment")
            ),
            max=None if max is None else parse_duration(max, field="backoff max"),
        )

    @staticmethod
    def fixed(d: DurationLike) -> Backoff:
        """Wait ``d`` before every retry.

        Args:
            d: The delay (a timedelta, a duration string or seconds).

        Returns:
            The backoff.

        Raises:
            SchedulerError: The duration is invalid or negative.
            TypeError: The value is of an unsupported type.
        """
        return Backoff(kind="fixed", base=parse_duration(d, field="backoff delay"))

    def delay(self, failures: int) -> float:
        """Return the delay before the retry that follows the ``failures``-th failure.

        Args:
            failures: How many attempts of this run have failed so far (>= 1).

        Returns:
            Seconds, >= 0, never more than ``max`` nor :data:`MAX_DELAY`; non-decreasing in
            ``failures``.

        Raises:
            ValueError: ``failures`` is below 1.
        """
        if failures < 1:
            raise ValueError(f"failures must be >= 1, got {failures!r}")
        cap = MAX_DELAY if self.max is None else min(self.max, MAX_DELAY)
        steps = failures - 1  # an int of any size: compare it, never convert it, until capped
        if self.kind == "fixed" or steps == 0:
            return min(self.base, cap)
        if self.kind == "linear":
            if self.increment == 0:
                return min(self.base, cap)
            if self.base >= cap or steps >= (cap - self.base) / self.increment:
                return cap
            return min(self.base + self.increment * steps, cap)
        # Exponential: find where base * factor**steps reaches the cap without computing it.
        if self.base == 0 or self.factor == 1:
            return min(self.base, cap)
        if self.base >= cap or steps >= math.log(cap / self.base, self.factor):
            return cap
        return min(self.base * self.factor**steps, cap)


def _to_backoff(value: Backoff | DurationLike) -> Backoff:
    if isinstance(value, Backoff):
        return value
    return Backoff.fixed(value)


def _validate_max_attempts(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"retry: max_attempts must be an int, got {value!r}")
    if value < 1:
        raise ValidationError(
            f"retry: max_attempts must be >= 1 (it counts every execution, the first one "
            f"included), got {value!r}"
        )


def _validate_jitter(instance: object, attribute: attrs.Attribute[bool], value: bool) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"retry: jitter must be a bool, got {value!r}")


@attrs.frozen
class Retry:
    """How often, and after what delay, a failed run is tried again.

    Attributes:
        max_attempts: Executions in total, the first try included (3 = first try + 2 retries).
        delay: The backoff between attempts; a plain duration (timedelta, duration string or
            seconds) means ``Backoff.fixed(duration)``.
        jitter: Spread each delay uniformly over ±10 %.

    Raises:
        ValidationError: ``max_attempts`` is below 1.
        SchedulerError: ``delay`` is not a valid duration.
        TypeError: A value is of the wrong type.
    """

    max_attempts: int = attrs.field(default=3, validator=_validate_max_attempts)
    delay: Backoff = attrs.field(default=Backoff.fixed(1.0), converter=_to_backoff)
    jitter: bool = attrs.field(default=False, validator=_validate_jitter)

    def can_retry(self, attempt: int) -> bool:
        """Return whether another attempt follows the failure of attempt number ``attempt``.

        Args:
            attempt: The number of the attempt that just failed (1 = the first try).

        Returns:
            ``attempt < max_attempts``.
        """
        return attempt < self.max_attempts

    def next_delay(self, failures: int, rand: float) -> float:
        """Return the delay before the retry that follows the ``failures``-th failure.

        Args:
            failures: How many attempts of this run have failed so far (>= 1).
            rand: A uniform random number in ``[0, 1)``, supplied by the caller; used only
                with ``jitter``.

        Returns:
            Seconds, >= 0: the backoff delay, times ``0.9 + 0.2 * rand`` with ``jitter``.

        Raises:
            ValueError: ``failures`` is below 1, or ``rand`` is not in ``[0, 1)``.
        """
        if not 0.0 <= rand < 1.0:
            raise ValueError(f"rand must be in [0, 1), got {rand!r}")
        delay = self.delay.delay(failures)
        if not self.jitter:
            return delay
        return max(0.0, delay * (0.9 + 0.2 * rand))
