"""The rows the store keeps and the step functions read: plain immutable values.

A module of its own so that reading a database (the CLI, ``durajobs ls``) does not import the
step machinery, cattrs or croniter. Pure: no I/O.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import attrs

__all__ = ["FencedOut", "Instance", "Queued", "Record", "RejectedWrite", "Status"]


class Status(enum.StrEnum):
    """An instance's status, as stored (a ``str`` enum: the stored text is the value).

    Each kind lives in its own statuses (``steps.TRANSITIONS`` says what each takes); every
    kind can be ``FAILED``, i.e. parked: no alarm runs until ``durajobs retry`` resumes it.
    """

    RUNNING = "running"  # Continuous
    DEBOUNCING = "debouncing"  # Debounce
    ACTIVE = "active"  # Task, an alarm set
    IDLE = "idle"  # Task, no alarm
    FAILED = "failed"  # parked after failing, any kind


class Instance(NamedTuple):
    """One committed row: everything the store keeps about an instance (immutable).

    ``due_at`` is the pending alarm (a retry alarm included). ``scheduled_for`` is the kind's
    target time: the grid time the alarm serves (Continuous), the batch's flush time (Debounce),
    or the time the user scheduled (Task). ``reason`` says why a non-regular alarm is pending:
    ``"trigger"`` or ``"manual"`` left by the CLI for the daemon, or the flush reason a retry
    keeps. ``run_count`` counts runs (Continuous), flush attempts' runs (Debounce) or executes
    (Task); ``attempt`` is the number of the next attempt. A NamedTuple, not an attrs class:
    rows are built and copied on every step, and tuples are what the store reads and writes.
    ``version`` is the job definition's ``version`` its ``state`` was written with (the engine
    runs the definition's ``migrate`` chain on an older one when it reads the row).
    """

    instance_id: str
    kind: str
    job: str
    user_id: str
    status: str
    state: str | None
    due_at: float | None
    scheduled_for: float | None
    anchor: float | None
    reason: str | None
    run_count: int
    attempt: int
    event_count: int
    created_at: float
    started_at: float | None
    last_error: str | None
    step: int
    updated_at: float
    version: int = 1  # the definition's version the state was written with


Record = tuple[str, int, float | None, str | None, str | None]
"""A history record: (event, attempt, duration_ms, error, data as JSON text or None)."""


@attrs.frozen(slots=True)
class Queued:
    """An event stored while the instance was busy (Debounce only); folded by the next step."""

    seq: int
    event: str
    added_at: float
    version: int = 1  # the definition's version the event was written with


class RejectedWrite(Exception):  # a signal between store and engine
    """A store refused one write of a commit for its content (text it cannot store, a value out
    of range), not for a failure of the database: the whole transaction was rolled back.

    The engine records that step as its instance's failure and commits the others again, so
    one bad instance never stops the rest of a group.
    """

    def __init__(self, index: int, cause: BaseException) -> None:
        super().__init__(f"write {index} refused: {type(cause).__name__}")
        self.index = index
        self.cause = cause


class FencedOut(Exception):  # a signal between store and engine
    """An all-or-nothing commit (a bulk call) met a write whose fence failed or whose
    idempotency key was taken: nothing of the transaction was applied."""

    def __init__(self, index: int) -> None:
        super().__init__(f"write {index} fenced out")
        self.index = index
