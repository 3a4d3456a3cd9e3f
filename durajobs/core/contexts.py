"""The context objects handlers receive.

State is decoded lazily: a handler that never reads ``ctx.state`` costs no JSON round trip, and
the stored text is written back unchanged. Once read or assigned, the state is re-encoded (and
validated) when the step commits, so in-place changes to a mutable attrs state also persist.

Pure: imports no I/O modules.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from .codec import TypeCodec
from .durations import resolve_when, to_datetime

__all__ = [
    "ContinuousContext",
    "DebounceContext",
    "DebounceEventContext",
    "TaskContext",
]

S = TypeVar("S")
_UNSET: Any = object()


class _StateContext(Generic[S]):
    """State cell, identity and ``terminate`` shared by every context."""

    __slots__ = (
        "_codec",
        "_raw",
        "_value",
        "id",
        "instance_id",
        "job_name",
        "step_key",
        "terminate_reason",
        "terminated",
    )

    def __init__(
        self, instance_id: str, job_name: str, user_id: str, step: int, codec: TypeCodec,
        raw: str | None,
    ) -> None:  # fmt: skip
        self.instance_id = instance_id
        self.job_name = job_name
        self.id = user_id
        self.step_key = f"{instance_id}#{step}"
        """Stable across re-runs of the same step: use it to make side effects idempotent."""
        self._codec = codec
        self._raw = raw
        self._value: Any = _UNSET
        self.terminated = False
        self.terminate_reason: str | None = None

    @property
    def state(self) -> S:
        """The instance's state; assign to replace it (the change commits with the step)."""
        if self._value is _UNSET:
            raw = self._raw
            self._value = None if raw is None else self._codec.decode(raw, self._what())
        return self._value  # type: ignore[no-any-return]

    @state.setter
    def state(self, value: S) -> None:
        self._value = value

    def terminate(self, reason: str | None = None) -> None:
        """End the instance when this step commits: cancel its alarm and purge its state."""
        self.terminated = True
        self.terminate_reason = reason

    def touched(self) -> bool:
        """Whether the handler read or assigned ``state`` (so it must be re-encoded)."""
        return self._value is not _UNSET

    def _what(self) -> str:
        return f"state of {self.instance_id}"

    def state_text(self) -> str | None:
        """The state to store: the original text if the handler never touched it.

        Raises:
            ValidationError: the state assigned does not fit the declared type.
        """
        value = self._value
        if value is _UNSET:
            return self._raw
        return None if value is None else self._codec.encode(value, self._what())


class ContinuousContext(_StateContext[S]):
    """What a Continuous ``execute(ctx)`` sees."""

    __slots__ = ("_scheduled_for", "attempt", "run_count")

    def __init__(
        self, instance_id: str, job_name: str, user_id: str, step: int, codec: TypeCodec,
        raw: str | None, *, run_count: int, attempt: int, scheduled_for: float,
    ) -> None:  # fmt: skip
        super().__init__(instance_id, job_name, user_id, step, codec, raw)
        self.run_count = run_count
        """1-based number of this run; a retry keeps its run's number."""
        self.attempt = attempt
        """1 on the first try of a run, 2 on its first retry, ..."""
        self._scheduled_for = scheduled_for

    @property
    def is_retry(self) -> bool:
        """True when this is not the first attempt of the run."""
        return self.attempt > 1

    @property
    def scheduled_for(self) -> datetime:
        """The due time this run serves (a retry serves its run's due time)."""
        return to_datetime(self._scheduled_for)


class DebounceEventContext(_StateContext[S]):
    """What a Debounce reducer ``on_event(ctx) -> new_state`` sees."""

    __slots__ = ("event", "event_count")

    def __init__(
        self, instance_id: str, job_name: str, user_id: str, step: int, codec: TypeCodec,
        raw: str | None, *, event: Any, event_count: int,
    ) -> None:  # fmt: skip
        super().__init__(instance_id, job_name, user_id, step, codec, raw)
        self.event = event
        self.event_count = event_count
        """Events in the batch including this one."""


class DebounceContext(_StateContext[S]):
    """What a Debounce ``execute(ctx)`` sees when a batch flushes."""

    __slots__ = ("_started_at", "attempt", "event_count", "flush_reason")

    def __init__(
        self, instance_id: str, job_name: str, user_id: str, step: int, codec: TypeCodec,
        raw: str | None, *, event_count: int, flush_reason: str, started_at: float,
        attempt: int,
    ) -> None:  # fmt: skip
        super().__init__(instance_id, job_name, user_id, step, codec, raw)
        self.event_count = event_count
        self.flush_reason = flush_reason
        """``"manual"``, ``"max_events"`` or ``"flush_after"``."""
        self._started_at = started_at
        self.attempt = attempt

    @property
    def is_retry(self) -> bool:
        """True when this is not the first attempt to flush the batch."""
        return self.attempt > 1

    @property
    def started_at(self) -> datetime:
        """When the batch's first event arrived."""
        return to_datetime(self._started_at)


class TaskContext(_StateContext[S]):
    """What Task handlers (``on_event``, ``execute``, ``on_idle``, ``on_error``) see."""

    __slots__ = (
        "_created_at",
        "_now",
        "attempt",
        "due_at",
        "event_count",
        "execute_count",
        "is_first_event",
    )

    def __init__(
        self, instance_id: str, job_name: str, user_id: str, step: int, codec: TypeCodec,
        raw: str | None, *, now: float, due_at: float | None, event_count: int,
        execute_count: int, created_at: float, is_first_event: bool, attempt: int,
    ) -> None:  # fmt: skip
        super().__init__(instance_id, job_name, user_id, step, codec, raw)
        self._now = now
        self.due_at = due_at
        self.event_count = event_count
        self.execute_count = execute_count
        self._created_at = created_at
        self.is_first_event = is_first_event
        """True in ``on_event`` for the instance's first event."""
        self.attempt = attempt

    def schedule(self, when: timedelta | str | datetime) -> datetime:
        """Set the alarm that runs ``execute``: a timedelta, ``"5 minutes"`` or an aware datetime.

        The last call in a step wins.

        Raises:
            TypeError: ``when`` is a bare number (ambiguous).
            SchedulerError: the duration string is invalid or the datetime is naive.
            ValidationError: the time lies past 9999-12-31T23:59:59Z (``timedelta.max``).
        """
        self.due_at = resolve_when(when, self._now, field="schedule")
        return to_datetime(self.due_at)

    def cancel_schedule(self) -> None:
        """Remove the alarm, if any."""
        self.due_at = None

    @property
    def scheduled_at(self) -> datetime | None:
        """The pending alarm as it stands now, or ``None``."""
        return to_datetime(self.due_at)

    @property
    def created_at(self) -> datetime:
        """When the instance received its first event."""
        return to_datetime(self._created_at)
