"""Job definitions: frozen values that describe a Continuous, Debounce or Task job.

Definitions are pure data plus the user's handler functions. They validate when made: a bad
duration, cron string or policy raises at definition time (``SchedulerError`` /
``ValueError``), never in the middle of a step.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, Literal

import attrs

from .durations import parse_period
from .flow import Rate, check_concurrency, check_priority, parse_rate
from .retry import Retry
from .schedules import Cron, Every

__all__ = ["Continuous", "Debounce", "Definition", "Kind", "Task"]

Kind = Literal["continuous", "debounce", "task"]
Handler = Callable[..., Any]
DurationLike = timedelta | str | int | float

CATCH_UP = ("one", "skip", "all")
ON_EXHAUSTED = ("terminate", "park", "skip")
LOG_LEVELS = (None, "debug", "info", "warning", "error", "off")


def _timeout(value: DurationLike | None) -> float | None:
    return None if value is None else parse_period(value, field="timeout")


def _max_wait(value: DurationLike | None) -> float | None:
    return None if value is None else parse_period(value, field="max_wait")


def _flush_after(value: DurationLike) -> float:
    return parse_period(value, field="flush_after")


def _rate(value: str | Rate | None) -> Rate | None:
    return parse_rate(value, field="rate")


def _one_of(options: tuple[Any, ...]) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in options:
            raise ValueError(f"{attribute.name} must be one of {options!r}, got {value!r}")

    return check


def _is_async(handler: Any) -> bool:
    """Whether calling ``handler`` gives a coroutine or an async generator, not a result.

    Sees through ``functools.partial`` and bound methods (``inspect`` unwraps them) and looks
    at the ``__call__`` of callable objects.
    """
    for candidate in (handler, getattr(handler, "__call__", None)):  # noqa: B004 - the method itself
        if candidate is not None and (
            inspect.iscoroutinefunction(candidate) or inspect.isasyncgenfunction(candidate)
        ):
            return True
    return False


def _callable_or_none(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        _callable(_instance, attribute, value)


def _callable(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not callable(value):
        raise TypeError(f"{attribute.name} must be a function taking a context, got {value!r}")
    # A coroutine function returns an un-awaited coroutine: the step would report success
    # while the body never ran. Steps run synchronously, so refuse it up front.
    if _is_async(value):
        name = getattr(value, "__qualname__", None) or repr(value)
        raise TypeError(
            f"{attribute.name}: handler {name} is async; durajobs runs handlers synchronously "
            "(use a plain def, e.g. one that calls asyncio.run(...) itself)"
        )


def _positive_or_none(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


def _version(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"version must be an int of at least 1, got {value!r}")


def _migrations(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """``migrate``: a step ``k -> k + 1`` for every stored version ``k`` below ``version``.

    A missing link would leave rows of that version unreadable after the deploy: refuse the
    definition now, not at the first step that meets such a row.
    """
    version = instance.version
    if not isinstance(value, Mapping):
        raise TypeError(f"migrate must be a dict of version -> function, got {value!r}")
    for key, step in value.items():
        if isinstance(key, bool) or not isinstance(key, int) or not 1 <= key < version:
            raise ValueError(
                f"migrate: key {key!r} is not a version this definition can read: each key k "
                f"migrates a stored object of version k to k + 1, so keys are 1..{version - 1} "
                f"(version={version})"
            )
        if not callable(step):
            raise TypeError(f"migrate[{key}] must be a function (dict -> dict), got {step!r}")
        if _is_async(step):
            raise TypeError(f"migrate[{key}] is async; migrations run synchronously")
    missing = [k for k in range(1, version) if k not in value]
    if missing:
        raise ValueError(
            f"version={version} needs a migration from every older version, but migrate has "
            f"no {', '.join(f'{k} (-> {k + 1})' for k in missing)}: a stored object of "
            f"version {missing[0]} could not be read; give migrate={{{missing[0]}: fn, ...}}"
        )


def _frozen_migrations(value: Any) -> Any:
    # A copy (the definition is a frozen value: a dict changed later must not change it);
    # anything but a mapping is left for the validator to refuse.
    return dict(value) if isinstance(value, Mapping) else value


def _exhausted_policy(retry: Retry | None, given: str | None, without_retry: str) -> str:
    """DESIGN item 9: ``terminate`` when retry is given, else the kind's own default."""
    if given is not None:
        return given
    return "terminate" if retry is not None else without_retry


@attrs.frozen(kw_only=True)
class Continuous:
    """Recurring work on a schedule, with typed state that survives restarts.

    Args:
        state: the state type (an attrs class or a JSON-able type).
        schedule: ``every(...)`` or ``cron(...)``.
        execute: ``execute(ctx)`` run at each due time; assign ``ctx.state`` to change state.
        start_immediately: run the first step inside ``start`` (else at start + period).
        retry: a ``Retry`` policy; ``None`` means one attempt.
        on_error: ``on_error(error, ctx)`` called when a run's attempts are used up.
        on_exhausted: ``"terminate"``, ``"park"`` or ``"skip"`` (default: ``"terminate"`` with
            ``retry``, else ``"skip"``).
        catch_up: ``"one"``, ``"skip"`` or ``"all"``: what to do about ticks missed while nothing
            ran (see the README).
        timeout: seconds (or a duration) after which the daemon stops the step.
        logging: per-job log level (``"debug"``, ``"info"``, ``"warning"``, ``"error"``, ``"off"``).
        version: the version of the state (and event) classes; every stored state and queued
            event records the version it was written with (see "Changing state classes").
        migrate: ``{k: fn}``: ``fn`` turns a stored JSON object of version ``k`` (plain dicts
            and lists) into one of version ``k + 1``; one for every ``k`` below ``version``.
        concurrency: at most this many alarm steps of the job run at once, across every
            process and host sharing the store (``None``: no limit). See the README's "Flow
            control".
        rate: at most this many alarm steps start per interval, across every host
            (``"10/s"``, ``"600/min"``, ``"5000/h"``; ``None``: no limit).
        priority: when more steps are due than workers can take, higher first (then the
            earliest due; a waiting step gains one per ``durajobs.core.flow.PRIORITY_AGING``
            seconds, so none starves).

    Raises:
        SchedulerError: a duration is invalid.
        ValueError: a policy name is not one of the allowed values, or ``version``/``migrate``
            do not fit (a missing link in the chain of migrations), or a flow setting is out
            of range (``concurrency < 1``, a malformed ``rate``).
        TypeError: a handler (or a migration) is not callable, or is async (``async def``),
            or a flow setting has the wrong type.
    """

    kind: Kind = attrs.field(default="continuous", init=False)
    state: Any
    schedule: Every | Cron = attrs.field(validator=attrs.validators.instance_of((Every, Cron)))
    execute: Handler = attrs.field(validator=_callable)
    start_immediately: bool = True
    retry: Retry | None = None
    on_error: Handler | None = attrs.field(default=None, validator=_callable_or_none)
    on_exhausted: str | None = attrs.field(default=None)
    catch_up: str = attrs.field(default="one", validator=_one_of(CATCH_UP))
    timeout: float | None = attrs.field(
        default=None, converter=_timeout, validator=_positive_or_none
    )
    logging: str | None = attrs.field(default=None, validator=_one_of(LOG_LEVELS))
    version: int = attrs.field(default=1, validator=_version)
    migrate: Mapping[int, Callable[[Any], Any]] = attrs.field(
        factory=dict, converter=_frozen_migrations, validator=_migrations, hash=False
    )
    concurrency: int | None = attrs.field(default=None, validator=check_concurrency)
    rate: Rate | None = attrs.field(default=None, converter=_rate)
    priority: int = attrs.field(default=0, validator=check_priority)
    exhausted: str = attrs.field(init=False)

    @exhausted.default
    def _exhausted(self) -> str:
        return _exhausted_policy(self.retry, self.on_exhausted, "skip")

    def __attrs_post_init__(self) -> None:
        if self.on_exhausted is not None:
            _one_of(ON_EXHAUSTED)(self, attrs.fields(Continuous).on_exhausted, self.on_exhausted)

    @property
    def event(self) -> None:
        return None


@attrs.frozen(kw_only=True)
class Debounce:
    """Collect events per id and process them as one batch after a delay or at N events.

    Args:
        event: the event type.
        execute: ``execute(ctx)`` run with the batch's accumulated ``ctx.state``.
        flush_after: the window, from the first event of a batch (a duration or seconds).
        state: the accumulated state type; ``None`` means the event type.
        on_event: the reducer ``on_event(ctx) -> new_state``; default keeps the latest event.
        max_events: flush at once when the batch reaches this many events.
        trailing: each event pushes the flush to ``flush_after`` after it, capped by ``max_wait``
            from the first event.
        max_wait: the cap for ``trailing`` (a duration or seconds).
        retry, on_error, on_exhausted, timeout, logging, version, migrate, concurrency, rate,
            priority: as for ``Continuous`` (``migrate`` applies to queued events and to the
            batch's state);
            ``on_exhausted`` defaults to ``"terminate"`` with ``retry``, else ``"park"``.

    Raises:
        SchedulerError: a duration is invalid.
        ValueError: a policy name or count is not allowed, or ``version``/``migrate`` do not
            fit (a missing link in the chain of migrations).
        TypeError: a handler (or a migration) is not callable, or is async (``async def``).
    """

    kind: Kind = attrs.field(default="debounce", init=False)
    event: Any
    execute: Handler = attrs.field(validator=_callable)
    flush_after: float = attrs.field(converter=_flush_after)
    state: Any = None
    on_event: Handler | None = attrs.field(default=None, validator=_callable_or_none)
    max_events: int | None = attrs.field(default=None, validator=_positive_or_none)
    trailing: bool = False
    max_wait: float | None = attrs.field(
        default=None, converter=_max_wait, validator=_positive_or_none
    )
    retry: Retry | None = None
    on_error: Handler | None = attrs.field(default=None, validator=_callable_or_none)
    on_exhausted: str | None = attrs.field(default=None)
    timeout: float | None = attrs.field(
        default=None, converter=_timeout, validator=_positive_or_none
    )
    logging: str | None = attrs.field(default=None, validator=_one_of(LOG_LEVELS))
    version: int = attrs.field(default=1, validator=_version)
    migrate: Mapping[int, Callable[[Any], Any]] = attrs.field(
        factory=dict, converter=_frozen_migrations, validator=_migrations, hash=False
    )
    concurrency: int | None = attrs.field(default=None, validator=check_concurrency)
    rate: Rate | None = attrs.field(default=None, converter=_rate)
    priority: int = attrs.field(default=0, validator=check_priority)
    exhausted: str = attrs.field(init=False)

    @exhausted.default
    def _exhausted(self) -> str:
        return _exhausted_policy(self.retry, self.on_exhausted, "park")

    def __attrs_post_init__(self) -> None:
        if self.on_exhausted is not None:
            _one_of(ON_EXHAUSTED[:2])(self, attrs.fields(Debounce).on_exhausted, self.on_exhausted)

    @property
    def state_type(self) -> Any:
        return self.event if self.state is None else self.state


@attrs.frozen(kw_only=True)
class Task:
    """An event-driven state machine: events update state and schedule a future ``execute``.

    Args:
        state: the state type.
        event: the event type (an attrs class or a union of attrs classes).
        on_event: ``on_event(event, ctx)`` run by ``send``.
        execute: ``execute(ctx)`` run when the alarm set by ``ctx.schedule`` fires.
        on_idle: ``on_idle(ctx)`` run at the end of any step that leaves no alarm set.
        on_error: ``on_error(error, ctx)`` for errors from the other handlers.
        retry, on_exhausted, timeout, logging, version, migrate, concurrency, rate, priority:
            as for ``Continuous`` (``migrate`` applies to the stored state; events are not
            stored).

    Raises:
        ValueError: a policy name is not allowed, or ``version``/``migrate`` do not fit.
        TypeError: a handler (or a migration) is not callable, or is async (``async def``).
    """

    kind: Kind = attrs.field(default="task", init=False)
    state: Any
    event: Any
    on_event: Handler = attrs.field(validator=_callable)
    execute: Handler = attrs.field(validator=_callable)
    on_idle: Handler | None = attrs.field(default=None, validator=_callable_or_none)
    on_error: Handler | None = attrs.field(default=None, validator=_callable_or_none)
    retry: Retry | None = None
    on_exhausted: str | None = attrs.field(default=None)
    timeout: float | None = attrs.field(
        default=None, converter=_timeout, validator=_positive_or_none
    )
    logging: str | None = attrs.field(default=None, validator=_one_of(LOG_LEVELS))
    version: int = attrs.field(default=1, validator=_version)
    migrate: Mapping[int, Callable[[Any], Any]] = attrs.field(
        factory=dict, converter=_frozen_migrations, validator=_migrations, hash=False
    )
    concurrency: int | None = attrs.field(default=None, validator=check_concurrency)
    rate: Rate | None = attrs.field(default=None, converter=_rate)
    priority: int = attrs.field(default=0, validator=check_priority)
    exhausted: str = attrs.field(init=False)

    @exhausted.default
    def _exhausted(self) -> str:
        return _exhausted_policy(self.retry, self.on_exhausted, "park")

    def __attrs_post_init__(self) -> None:
        if self.on_exhausted is not None:
            _one_of(ON_EXHAUSTED[:2])(self, attrs.fields(Task).on_exhausted, self.on_exhausted)


Definition = Continuous | Debounce | Task
