"""Operations on a durajobs file without the application's code: the library under the CLI.

Theory of operation
-------------------
An operator inspects and acts on a database file with no registry of job definitions, so
nothing here can run a handler:

- *Reads* go through a read-only ``Store``: they never create, migrate or write the file, and
  never wait for a running step (WAL readers do not block). A file that is missing, not a
  database, not a durajobs database or corrupt raises ``StorageError`` naming the path.
- *Actions* go through the same ``Engine`` as the library, with an empty registry, via
  ``Engine.apply``: it claims the instance (waiting for a running step), runs a handler-free
  step and commits it in one transaction. ``terminate``, ``clear`` and ``retry`` are complete
  there. ``trigger`` and ``flush`` need the application's ``execute``, so they leave the work for
  the daemon: the step sets the alarm due now with the reason (``"trigger"``/``"manual"``), and
  the daemon is poked over the wake socket. ``retry`` (resume a parked instance) likewise makes
  the work due now and leaves it for the daemon.

Instance ids are ``"kind:job:id"`` (the user id may itself contain colons) or the three parts.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

import attrs

from .clock import Clock, SystemClock
from .core.durations import to_datetime
from .core.rows import Instance, Status
from .errors import (
    InstanceNotFoundError,
    InvalidStateError,
    JobNotFoundError,
    StorageError,
    ValidationError,
)
from .stores import (
    claims_may_exist,
    daemon_listening,
    display_location,
    health,
    open_claims,
    open_store,
    open_waker,
    refuse_directory,
    serving,
)
from .stores.base import END_EVENTS, Claims, HistoryRow, Store

if TYPE_CHECKING:  # the step machinery is imported only by actions: reads stay light
    from .core import steps
    from .engine import Engine

__all__ = [
    "FAILING",
    "FINISHED_STATUSES",
    "KINDS",
    "LIST_STATUSES",
    "PAUSED",
    "STATUSES",
    "ActionResult",
    "ActivityBucket",
    "Admin",
    "Check",
    "DoctorReport",
    "FinishedInstance",
    "FinishedPage",
    "HistoryEntry",
    "InstanceDetail",
    "InstanceInfo",
    "InstancePage",
    "Overdue",
    "Stats",
    "error_summary",
    "is_failing",
    "orphaned_jobs",
    "parse_instance_id",
    "relative",
    "short_duration",
]

KINDS = ("continuous", "debounce", "task")
STATUSES: tuple[str, ...] = tuple(Status)
# Instances that are gone, listed from the history: "terminated" (ended by a terminate: the
# client's, the CLI's, ``ctx.terminate()``, retries exhausted, a schedule that ended) and
# "purged" (every finished instance: terminated, flushed or cleared).
FINISHED_STATUSES = ("terminated", "purged")
# Not a stored status but a flag on running Continuous instances (``is_failing``): ``ls``, the
# dashboard and the metrics list them as a status of their own.
FAILING = "failing"
LIST_STATUSES: tuple[str, ...] = (*STATUSES, FAILING)
# Not a status either: an instance that is paused, or whose job is (flow control). ``ls``
# lists them as one.
PAUSED = "paused"
OVERDUE_AFTER = 60.0  # seconds late before an alarm counts as overdue
ERROR_SUMMARY_CHARS = 120


def parse_instance_id(*parts: str) -> str:
    """The instance id from ``"kind:job:id"`` or from its three parts ``(kind, job, id)``.

    Raises:
        ValidationError: not an instance id (wrong number of parts, unknown kind, empty part).
    """
    if len(parts) == 1:
        pieces = parts[0].split(":", 2)
    elif len(parts) == 3:
        pieces = list(parts)
        if ":" in pieces[0] or ":" in pieces[1]:
            pieces = ["", "", ""]  # a kind or job name never contains ':'
    else:
        raise ValidationError(
            f"expected an instance id KIND:JOB:ID or the three parts KIND JOB ID, got {parts!r}"
        )
    text = ":".join(parts)
    if len(pieces) != 3 or not all(pieces):
        raise ValidationError(
            f"{text!r} is not an instance id: expected KIND:JOB:ID, "
            "e.g. continuous:token_refresher:user-123"
        )
    if pieces[0] not in KINDS:
        raise ValidationError(
            f"{text!r} is not an instance id: kind {pieces[0]!r} is not one of {', '.join(KINDS)}"
        )
    return ":".join(pieces)


def is_failing(kind: str, status: str, attempt: int, last_error: str | None) -> bool:
    """Whether an instance is *failing*: a Continuous instance whose last run failed after its
    retries and was skipped (``on_exhausted="skip"``), so that it stays ``running`` on its
    schedule. Derived from stored columns: the skip stores ``attempt`` 1 with the run's error
    as ``last_error``, and every successful run clears ``last_error``; a pending retry has
    ``attempt`` > 1 and a parked instance the status ``"failed"``. It lasts until a run
    succeeds. (The stores count it with the same test: ``durajobs.stores.sql.FAILING``.)"""
    return (
        kind == "continuous" and status == Status.RUNNING and attempt == 1
        and last_error is not None
    )  # fmt: skip


def orphaned_jobs(
    counts: Iterable[tuple[str, str, int]], defined: Mapping[str, str]
) -> dict[tuple[str, str], int]:
    """``(kind, job) -> instances`` of the *orphaned* jobs: those with instances in ``counts``
    (``(kind, job, instances)`` rows, a job in any number of rows) that ``defined`` (job name
    -> kind, the application's definitions: ``durajobs.health.defined_jobs(jobs)``) does not
    have with that kind. No step of that application runs them. ``durajobs doctor --app``,
    ``durajobs check`` and the daemon's start-up log all name them with this."""
    orphans: dict[tuple[str, str], int] = {}
    for kind, job, n in counts:
        if defined.get(job) != kind:
            orphans[(kind, job)] = orphans.get((kind, job), 0) + n
    return {key: n for key, n in sorted(orphans.items()) if n}


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


_MIN_UTC = datetime.min.replace(tzinfo=UTC)


def _dt(ts: Any) -> datetime | None:
    """A stored time as an aware UTC datetime, never raising on an odd row.

    Times past what a ``datetime`` holds are clamped (``to_datetime``); a value that is no
    time at all (text in a REAL column written by another program, NaN) reads as ``None``.
    """
    if isinstance(ts, bool) or not isinstance(ts, int | float) or math.isnan(ts):
        return None
    return to_datetime(ts)


def _at(ts: Any) -> datetime:
    """Like :func:`_dt` for a column that always holds a time (an odd one reads as year 1)."""
    return _dt(ts) or _MIN_UTC


def _json(text: str | None) -> Any:
    """Decode stored JSON text; text that is not JSON is returned as it is."""
    if text is None:
        return None
    import json  # here, not at the top: ``durajobs ls`` starts without it

    try:
        return json.loads(text)
    except ValueError:
        return text


def error_summary(text: str | None) -> str | None:
    """The last line of a stored traceback (``"ValueError: boom"``), shortened."""
    if not text:
        return None
    lines = [line for line in text.strip().splitlines() if line.strip()]
    line = lines[-1].strip() if lines else text.strip()
    if len(line) > ERROR_SUMMARY_CHARS:
        line = line[: ERROR_SUMMARY_CHARS - 1] + "…"
    return line


# -- values ---------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class InstanceInfo:
    """One instance as ``durajobs ls`` shows it. Times are aware UTC datetimes."""

    instance_id: str
    kind: str
    job: str
    id: str
    status: str
    next_alarm: datetime | None
    alarm_reason: str | None  # "trigger"/"manual" left for the daemon, or a retry's reason
    scheduled_for: datetime | None
    run_count: int
    event_count: int
    attempt: int
    last_error: str | None  # the full traceback text
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime
    step: int
    paused: bool = False  # the instance or its job is paused (``pause``): no alarm step runs

    @classmethod
    def from_row(cls, row: Instance) -> InstanceInfo:
        """Build from a stored row."""
        return cls(
            row.instance_id, row.kind, row.job, row.user_id, row.status, _dt(row.due_at),
            row.reason, _dt(row.scheduled_for), row.run_count, row.event_count, row.attempt,
            row.last_error, _at(row.created_at), _dt(row.started_at), _at(row.updated_at),
            row.step,
        )  # fmt: skip

    @property
    def error_summary(self) -> str | None:
        """The last line of ``last_error``."""
        return error_summary(self.last_error)

    @property
    def failing(self) -> bool:
        """Whether the instance is failing (``is_failing``): running, its last run failed."""
        return is_failing(self.kind, self.status, self.attempt, self.last_error)

    @property
    def failed_attempts(self) -> int:
        """Attempts of the current run that failed: ``attempt - 1`` (``attempt`` is the number
        of the next attempt, as in ``status().attempt``). For a parked instance, the attempts
        it failed before it was parked; ``retry`` starts again at attempt 1."""
        return max(0, self.attempt - 1)

    @property
    def attempt_label(self) -> str:
        """The attempt as people read it: ``"2 failed"`` for a parked instance (no attempt is
        pending), else the number of the next attempt."""
        return (
            f"{self.failed_attempts} failed" if self.status == Status.FAILED else str(self.attempt)
        )

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON fields of ``durajobs ls --json`` (``last_error`` is the summary;
        ``attempt`` is the next attempt, ``failed_attempts`` those of the run that failed)."""
        return {
            "instance_id": self.instance_id,
            "kind": self.kind,
            "job": self.job,
            "id": self.id,
            "status": self.status,
            "failing": self.failing,
            "next_alarm": _iso(self.next_alarm),
            "alarm_reason": self.alarm_reason,
            "scheduled_for": _iso(self.scheduled_for),
            "run_count": self.run_count,
            "event_count": self.event_count,
            "attempt": self.attempt,
            "failed_attempts": self.failed_attempts,
            "last_error": self.error_summary,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "updated_at": _iso(self.updated_at),
            "step": self.step,
            "paused": self.paused,
        }


_INFO_KEYS = (
    "instance_id", "kind", "job", "id", "status", "failing", "next_alarm", "alarm_reason",
    "scheduled_for", "run_count", "event_count", "attempt", "failed_attempts", "last_error",
    "created_at", "started_at", "updated_at", "step", "paused",
)  # fmt: skip


@attrs.frozen(slots=True)
class HistoryEntry:
    """One history record; ``data`` is decoded JSON."""

    id: int
    instance_id: str
    at: datetime
    event: str
    step: int
    attempt: int | None
    duration_ms: float | None
    error: str | None
    data: Any

    @classmethod
    def from_row(cls, row: HistoryRow) -> HistoryEntry:
        """Build from a stored history row."""
        return cls(
            row.id, row.instance_id, _at(row.at), row.event, row.step,
            row.attempt, row.duration_ms, row.error, _json(row.data),
        )  # fmt: skip

    @property
    def reason(self) -> str | None:
        """The reason the record carries: a terminate's (``"retries exhausted"``, the
        caller's), a flush's (``"manual"``...), ``"cleared"``; ``None`` if it has none."""
        reason = self.data.get("reason") if isinstance(self.data, dict) else None
        return reason if isinstance(reason, str) else None

    def to_dict(self) -> dict[str, Any]:
        """JSON fields: id, instance_id, at, event, step, attempt, duration_ms, error, data."""
        return {
            "id": self.id,
            "instance_id": self.instance_id,
            "at": _iso(self.at),
            "event": self.event,
            "step": self.step,
            "attempt": self.attempt,
            "duration_ms": self.duration_ms,
            "error": self.error,
            "data": self.data,
        }


_ENDED = {"job.terminated": "terminated", "debounce.flushed": "flushed",
          "debounce.cleared": "cleared"}  # fmt: skip


@attrs.frozen(slots=True)
class FinishedInstance:
    """An instance that is gone (purged), as the record that ended it tells.

    ``ended`` is how: ``"terminated"``, ``"flushed"`` (a Debounce batch delivered) or
    ``"cleared"``; ``reason`` the recorded reason (a terminate's, a flush's); ``error`` the
    error a purge after exhausted retries recorded. ``record_id`` is the history id.
    """

    instance_id: str
    ended: str
    ended_at: datetime
    reason: str | None
    error: str | None
    run_count: int | None
    event_count: int | None
    step: int
    record_id: int

    @classmethod
    def from_record(cls, record: HistoryEntry) -> FinishedInstance | None:
        """From the record that ended an instance; ``None`` for any other record."""
        ended = _ENDED.get(record.event)
        if ended is None:
            return None
        data = record.data if isinstance(record.data, dict) else {}

        def count(key: str) -> int | None:
            value = data.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        return cls(
            record.instance_id, ended, record.at, record.reason, record.error,
            count("run_count"), count("event_count"), record.step, record.id,
        )  # fmt: skip

    @property
    def kind(self) -> str:
        """The kind, from the instance id."""
        return self.instance_id.split(":", 2)[0]

    @property
    def job(self) -> str:
        """The job name, from the instance id."""
        return self.instance_id.split(":", 2)[1]

    @property
    def id(self) -> str:
        """The user id, from the instance id."""
        return self.instance_id.split(":", 2)[2]

    @property
    def status(self) -> str:
        """Always ``"purged"`` (the status ``show`` gives a gone instance)."""
        return "purged"

    def to_dict(self) -> dict[str, Any]:
        """JSON fields of ``durajobs ls --status terminated|purged --json``: instance_id,
        kind, job, id, status (``"purged"``), ended, ended_at, end_reason, error, run_count,
        event_count, step."""
        return {
            "instance_id": self.instance_id,
            "kind": self.kind,
            "job": self.job,
            "id": self.id,
            "status": self.status,
            "ended": self.ended,
            "ended_at": _iso(self.ended_at),
            "end_reason": self.reason,
            "error": self.error,
            "run_count": self.run_count,
            "event_count": self.event_count,
            "step": self.step,
        }


@attrs.frozen(slots=True)
class InstanceDetail:
    """Everything ``durajobs show`` prints.

    ``info`` is ``None`` for an instance that is gone (purged) but still has history;
    ``finished`` then says how it ended (with the terminate reason), from its last record.
    """

    instance_id: str
    info: InstanceInfo | None
    state: Any  # decoded JSON, or None; for a purged instance, the final state
    queued_events: int
    history: list[HistoryEntry]
    finished: FinishedInstance | None = None

    @property
    def status(self) -> str:
        """The stored status, or ``"purged"``."""
        return self.info.status if self.info is not None else "purged"

    def to_dict(self) -> dict[str, Any]:
        """The ``ls`` fields plus how a gone instance ended (``ended``, ``ended_at``,
        ``end_reason``), state, traceback, queued events and history (newest last)."""
        kind, job, user_id = self.instance_id.split(":", 2)
        if self.info is not None:
            base = self.info.to_dict()
        else:  # the same keys, empty: only the history is left
            base = dict.fromkeys(_INFO_KEYS)
            base.update(instance_id=self.instance_id, kind=kind, job=job, id=user_id)
        base["status"] = self.status
        ended = self.finished
        base["ended"] = ended.ended if ended is not None else None
        base["ended_at"] = _iso(ended.ended_at) if ended is not None else None
        base["end_reason"] = ended.reason if ended is not None else None
        base["last_error_traceback"] = self.info.last_error if self.info is not None else None
        base["state"] = self.state
        base["queued_events"] = self.queued_events
        base["history"] = [h.to_dict() for h in self.history]
        return base


@attrs.frozen(slots=True)
class ActionResult:
    """What an action did.

    ``changed`` is whether a step committed; ``left_for_daemon`` whether the work is now due
    and waits for a daemon (or the application's ``run_due``); ``daemon_listening`` whether a
    daemon answered the wake-up poke.
    """

    instance_id: str
    action: str
    changed: bool
    message: str
    left_for_daemon: bool = False
    due_at: datetime | None = None
    daemon_listening: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON fields of the result."""
        return {
            "instance_id": self.instance_id,
            "action": self.action,
            "changed": self.changed,
            "message": self.message,
            "left_for_daemon": self.left_for_daemon,
            "due_at": _iso(self.due_at),
            "daemon_listening": self.daemon_listening,
        }


@attrs.frozen(slots=True)
class Stats:
    """Counts and alarm figures of a file (``durajobs stats``)."""

    generated_at: datetime
    total: int
    counts: list[tuple[str, str, str, int]]  # (kind, job, status, count)
    due_now: int
    overdue: int
    overdue_after: float
    max_overdue_seconds: float | None
    next_alarm: datetime | None
    last_hour_records: int
    last_hour_steps: int
    last_hour_failures: int
    paused: tuple[str, ...] = ()  # paused job names and instance ids, sorted

    def by(self, field: str) -> dict[str, int]:
        """Totals by ``"kind"``, ``"job"`` or ``"status"``."""
        index = {"kind": 0, "job": 1, "status": 2}[field]
        totals: dict[str, int] = {}
        for row in self.counts:
            key = str(row[index])
            totals[key] = totals.get(key, 0) + row[3]
        return totals

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON fields of ``durajobs stats --json``."""
        return {
            "generated_at": _iso(self.generated_at),
            "instances": self.total,
            "by_kind": self.by("kind"),
            "by_status": self.by("status"),
            "by_job": [
                {"kind": k, "job": j, "status": s, "count": n} for k, j, s, n in self.counts
            ],
            "due_now": self.due_now,
            "overdue": self.overdue,
            "overdue_after_seconds": self.overdue_after,
            "max_overdue_seconds": self.max_overdue_seconds,
            "next_alarm": _iso(self.next_alarm),
            "last_hour": {
                "records": self.last_hour_records,
                "steps": self.last_hour_steps,
                "failures": self.last_hour_failures,
            },
            "paused": list(self.paused),
        }


@attrs.frozen(slots=True)
class InstancePage:
    """One page of a keyset-paginated instance list.

    ``after`` is the opaque cursor of the next page (pass it back as ``after=``), or ``None``
    when this is the last page.
    """

    instances: list[InstanceInfo]
    after: str | None


@attrs.frozen(slots=True)
class FinishedPage:
    """One page of finished instances, newest first; ``after`` as in ``InstancePage``."""

    instances: list[FinishedInstance]
    after: str | None


@attrs.frozen(slots=True)
class ActivityBucket:
    """Steps committed and ``job.failed`` records in ``[start, start + width)``."""

    start: datetime
    steps: int
    failures: int


@attrs.frozen(slots=True)
class Check:
    """One line of ``durajobs doctor``; ``level``: ``"ok"``, ``"info"``, ``"warn"``, ``"fail"``."""

    name: str
    level: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        """JSON fields: name, level, detail."""
        return {"name": self.name, "level": self.level, "detail": self.detail}


@attrs.frozen(slots=True)
class Overdue:
    """An alarm past due by more than the threshold; ``running`` if a process holds its claim."""

    instance_id: str
    due_at: datetime
    late_seconds: float
    running: bool | None  # None: the claims could not be read

    def to_dict(self) -> dict[str, Any]:
        """JSON fields: instance_id, due_at, late_seconds, running."""
        return {
            "instance_id": self.instance_id,
            "due_at": _iso(self.due_at),
            "late_seconds": round(self.late_seconds, 3),
            "running": self.running,
        }


@attrs.frozen(slots=True)
class DoctorReport:
    """The checks of ``durajobs doctor`` (and of ``GET /healthz``, ``durajobs.health``).

    ``status`` sums them up: ``"failing"`` when a check failed (the store unreachable or
    unusable, alarms overdue with no daemon serving), ``"degraded"`` when one warns (parked or
    failing instances, alarms overdue while a daemon serves, orphaned jobs, a large WAL),
    else ``"ok"``; ``exit_code`` is ``durajobs doctor``'s: 0, 1 or 2.
    """

    path: str
    checks: list[Check]
    overdue: list[Overdue]

    @property
    def ok(self) -> bool:
        """No check failed."""
        return all(c.level != "fail" for c in self.checks)

    @property
    def status(self) -> str:
        """``"ok"``, ``"degraded"`` or ``"failing"``."""
        levels = {c.level for c in self.checks}
        return "failing" if "fail" in levels else "degraded" if "warn" in levels else "ok"

    @property
    def exit_code(self) -> int:
        """0 healthy, 1 warnings, 2 failures."""
        return {"ok": 0, "degraded": 1, "failing": 2}[self.status]

    def to_dict(self) -> dict[str, Any]:
        """JSON fields: path, status, ok, checks, overdue."""
        return {
            "path": self.path,
            "status": self.status,
            "ok": self.ok,
            "checks": [c.to_dict() for c in self.checks],
            "overdue": [o.to_dict() for o in self.overdue],
        }


@attrs.frozen(slots=True)
class Gauges:
    """What the store holds now, for metrics and health (one cheap read each).

    ``counts``: ``(kind, job, status, count)`` for every job with instances and every status
    of its kind, zeros included; ``"failing"`` instances are counted apart from ``"running"``
    ones (the statuses of a job add up to its instances). ``overdue``: alarms more than
    ``overdue_after`` seconds late.
    """

    counts: list[tuple[str, str, str, int]]
    overdue: int
    overdue_after: float
    # (kind, job) -> its paused instances (all of them when the job is paused); an overlay on
    # the statuses, not one of them
    paused: Mapping[tuple[str, str], int] = attrs.field(factory=dict)


# -- the operations -------------------------------------------------------------------------


class Admin:
    """Inspect and act on a durajobs database file, without the application's code.

    Args:
        path: the database file. It must exist: inspecting never creates a database.
        clock: the clock actions and "due now" use (default the system clock).
        wait_timeout: seconds an action waits for a running step of the instance.
        history_limit: history records kept per instance when an action trims history.

    Raises:
        StorageError: the file is missing, unreadable, not a durajobs database, or corrupt.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        wait_timeout: float = 30.0,
        history_limit: int = 100,
    ) -> None:
        self.location = os.fspath(path)  # may hold a password: never shown
        self.path = display_location(self.location)
        self.clock: Clock = clock or SystemClock()
        self.wait_timeout = wait_timeout
        self.history_limit = history_limit
        refuse_directory(self.location)
        self.store: Store = open_store(self.location, readonly=True)
        self._engine: Engine | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connections and the lock file (idempotent)."""
        engine = self._engine
        if engine is not None:
            self._engine = None
            engine.locks.close()
            if engine.hooks.waker is not None:
                engine.hooks.waker.close()
            engine.store.close()
        self.store.close()

    def __enter__(self) -> Admin:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def now(self) -> float:
        """The clock's time (epoch seconds)."""
        return self.clock.time()

    # -- reads ----------------------------------------------------------------------------

    def ls(
        self,
        *,
        kind: str | None = None,
        job: str | None = None,
        status: str | None = None,
        due: bool = False,
        limit: int = 50,
        offset: int = 0,
    ) -> list[InstanceInfo]:
        """Instances sorted by next alarm (those without one last, by id), filtered and paged.

        ``due`` keeps only instances whose alarm is due now. The default page reads the first
        ``limit`` entries of the ``due_at`` index and counts nothing. ``status="failing"``
        lists failing Continuous instances (``is_failing``) by id; ``status="paused"`` the
        paused ones (paused jobs' instances, then instances paused one by one).

        Raises:
            ValidationError: ``limit`` < 1 or ``offset`` < 0.
            StorageError: the file cannot be read.
        """
        if limit < 1 or offset < 0:
            raise ValidationError(f"limit must be >= 1 and offset >= 0, got {limit}, {offset}")
        if status == FAILING:
            found = self._failing(kind=kind, job=job, due=due)
            return list(itertools.islice(found, offset, offset + limit))
        if status == PAUSED:
            return list(itertools.islice(self._paused(kind, job, due), offset, offset + limit))
        rows = self.store.list_instances(
            kind=kind, job=job, status=status, due_before=self.now() if due else None,
            limit=limit, offset=offset,
        )  # fmt: skip
        info = self._info_of()
        return [info(r) for r in rows]

    def _info_of(self) -> Callable[[Instance], InstanceInfo]:
        """``InstanceInfo.from_row``, marking what is paused (read once, now)."""
        paused = self.store.paused_targets()
        if not paused:
            return InstanceInfo.from_row
        return lambda row: attrs.evolve(
            InstanceInfo.from_row(row),
            paused=row.instance_id in paused or row.job in paused,
        )

    def all_instances(
        self,
        *,
        kind: str | None = None,
        job: str | None = None,
        status: str | None = None,
        due: bool = False,
    ) -> Generator[InstanceInfo]:
        """Every instance ``ls`` lists with these filters, in its order, streamed from one
        consistent snapshot (read in keyset batches: memory stays flat at any size).

        Raises:
            StorageError: the file cannot be read.
        """
        if status == FAILING:
            yield from self._failing(kind=kind, job=job, due=due)
            return
        if status == PAUSED:
            yield from self._paused(kind, job, due)
            return
        batches = self.store.scan_instances(
            kind=kind, job=job, status=status, due_before=self.now() if due else None
        )
        info = self._info_of()
        try:
            for batch in batches:
                yield from (info(r) for r in batch)
        finally:
            batches.close()  # ends the snapshot even when the reader stops early

    def _paused(self, kind: str | None, job: str | None, due: bool) -> Iterator[InstanceInfo]:
        """Paused instances: every instance of each paused job (by job name), then the
        instances paused one by one (by id), filtered."""
        targets = self.store.paused_targets()
        jobs = sorted(t for t in targets if ":" not in t and job in (None, t))
        for name in jobs:
            batches = self.store.scan_instances(
                kind=kind, job=name, due_before=self.now() if due else None
            )
            try:
                for batch in batches:
                    yield from (attrs.evolve(InstanceInfo.from_row(r), paused=True) for r in batch)
            finally:
                batches.close()
        now = self.now()
        for target in sorted(t for t in targets if ":" in t):
            row = self.store.load(target)
            if (
                row is None or row.job in targets or job not in (None, row.job)
                or kind not in (None, row.kind)
                or (due and (row.due_at is None or row.due_at > now))
            ):  # fmt: skip
                continue
            yield attrs.evolve(InstanceInfo.from_row(row), paused=True)

    def _failing(
        self, *, kind: str | None = None, job: str | None = None, due: bool = False
    ) -> Iterator[InstanceInfo]:
        """Failing instances by id, read a page at a time."""
        if kind not in (None, "continuous"):
            return
        now = self.now()
        after: str | None = None
        while True:
            rows = self.store.failing_instances(job=job, after_id=after, limit=500)
            for row in rows:
                if not due or (row.due_at is not None and row.due_at <= now):
                    yield InstanceInfo.from_row(row)
            if len(rows) < 500:
                return
            after = rows[-1].instance_id

    def get(self, instance_id: str) -> InstanceInfo:
        """One live instance.

        Raises:
            InstanceNotFoundError: no such instance.
            StorageError: the file cannot be read.
        """
        row = self.store.load(instance_id)
        if row is None:
            raise InstanceNotFoundError(f"{instance_id}: no such instance in {self.path}")
        return self._info_of()(row)

    def show(self, instance_id: str, *, history: int = 20) -> InstanceDetail:
        """Every field of an instance, its decoded state and its latest history records.

        An instance that is gone (terminated, flushed, cleared) but still has history is shown
        with status ``"purged"``; its last record carries the final state.

        Raises:
            InstanceNotFoundError: no such instance and no history of one.
            StorageError: the file cannot be read.
        """
        row = self.store.load(instance_id)
        records = [HistoryEntry.from_row(h) for h in self.store.history(instance_id, history)]
        queued = len(self.store.queued(instance_id)) if instance_id.startswith("debounce:") else 0
        if row is not None:
            return InstanceDetail(
                instance_id, self._info_of()(row), _json(row.state), queued, records
            )
        # Gone: its last record (whatever ``history`` asked for) ended it and keeps the state.
        last = records[-1:] or [
            HistoryEntry.from_row(h) for h in self.store.history(instance_id, 1)
        ]
        if not last:
            raise InstanceNotFoundError(f"{instance_id}: no such instance in {self.path}")
        final = last[0].data.get("final_state") if isinstance(last[0].data, dict) else None
        return InstanceDetail(
            instance_id, None, _json(final) if isinstance(final, str) else final, queued,
            records, FinishedInstance.from_record(last[0]),
        )  # fmt: skip

    def finished(
        self,
        *,
        status: str = "purged",
        kind: str | None = None,
        job: str | None = None,
        search: str | None = None,
        after: str | None = None,
        limit: int = 50,
    ) -> FinishedPage:
        """One page of finished instances (gone, with history left), newest first, read from
        the history by a cursor (no counts).

        ``status="terminated"``: those a terminate ended (the caller's, ``ctx.terminate()``,
        retries exhausted, a schedule that ended); ``"purged"``: every finished instance
        (terminated, flushed Debounce batches, cleared ones). An id that lives again is not
        finished. ``search`` is an id prefix (``"KIND:..."``), or a user id prefix with ``job``
        (and ``kind``). Each page reads an index of the records that end instances; records of
        ids that live again, and other kinds or jobs than asked, are skipped one by one.

        Raises:
            ValidationError: an unknown kind or status, ``limit`` < 1, a malformed cursor, or
                a user id ``search`` without ``job``.
            StorageError: the file cannot be read.
        """
        if status not in FINISHED_STATUSES:
            raise ValidationError(f"status {status!r} is not one of {', '.join(FINISHED_STATUSES)}")
        if kind is not None and kind not in KINDS:
            raise ValidationError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
        if limit < 1:
            raise ValidationError(f"limit must be >= 1, got {limit}")
        before: int | None = None
        if after:
            if not after.isdigit():
                raise ValidationError(f"{after!r} is not a page cursor")
            before = int(after)
        prefixes = _finished_prefixes(kind, job, search)
        if prefixes == []:
            return FinishedPage([], None)
        events = ("job.terminated",) if status == "terminated" else END_EVENTS
        rows = self.store.finished_records(
            events=events, prefixes=prefixes, before_id=before, limit=limit + 1
        )
        more, rows = len(rows) > limit, rows[:limit]
        found = [FinishedInstance.from_record(HistoryEntry.from_row(r)) for r in rows]
        return FinishedPage([f for f in found if f is not None], str(rows[-1].id) if more else None)

    def all_finished(
        self,
        *,
        status: str = "purged",
        kind: str | None = None,
        job: str | None = None,
        search: str | None = None,
    ) -> Generator[FinishedInstance]:
        """Every finished instance ``finished`` lists, newest first, page after page.

        Raises:
            ValidationError: as for ``finished``.
            StorageError: the file cannot be read.
        """
        after: str | None = None
        while True:
            page = self.finished(
                status=status, kind=kind, job=job, search=search, after=after, limit=500
            )
            yield from page.instances
            if page.after is None:
                return
            after = page.after

    def stats(self, *, overdue_after: float = OVERDUE_AFTER) -> Stats:
        """Counts by kind/job/status, alarms due and overdue, and the last hour's history.

        Counting by status scans the instances table; the alarm figures use the due index.

        Raises:
            StorageError: the file cannot be read.
        """
        now = self.now()
        counts = self.store.count_by_status()
        due_now, earliest = self.store.count_due(now)
        overdue, _ = self.store.count_due(now - overdue_after)
        records, failures, step_count = self.store.history_counts(now - 3600.0)
        return Stats(
            generated_at=datetime.fromtimestamp(now, UTC),
            total=sum(c[3] for c in counts),
            counts=counts,
            due_now=due_now,
            overdue=overdue,
            overdue_after=overdue_after,
            max_overdue_seconds=None if earliest is None else max(0.0, now - earliest),
            next_alarm=_dt(self.store.next_alarm_after(now)),
            last_hour_records=records,
            last_hour_steps=step_count,
            last_hour_failures=failures,
            paused=tuple(sorted(self.store.paused_targets())),
        )

    def gauges(self, *, overdue_after: float = OVERDUE_AFTER) -> Gauges:
        """Instances by job, kind and status (``"failing"`` apart) and the overdue alarms, as
        the metrics and the health checks read them at every scrape: one grouped statement
        (``InspectStore.instance_gauges``) and one count of the due index.

        Raises:
            StorageError: the database cannot be read.
        """
        failing: dict[tuple[str, str], int] = {}
        counts: list[tuple[str, str, str, int]] = []
        for kind, job, status, n in self.store.instance_gauges():
            if status == FAILING:
                failing[(kind, job)] = n
            else:
                counts.append((kind, job, status, n))
        counts = [
            (k, j, s, n - failing.get((k, j), 0) if s == Status.RUNNING else n)
            for k, j, s, n in counts
        ] + [(k, j, FAILING, n) for (k, j), n in failing.items()]
        overdue, _ = self.store.count_due(self.now() - overdue_after)
        return Gauges(sorted(counts), overdue, overdue_after, self._paused_counts(counts))

    def _paused_counts(self, counts: list[tuple[str, str, str, int]]) -> dict[tuple[str, str], int]:
        """Paused instances per (kind, job): a paused job's every instance, else its paused
        instances that exist (one read of the small ``paused`` table; a row read for each
        paused instance)."""
        targets = self.store.paused_targets()
        paused: dict[tuple[str, str], int] = {}
        if not targets:
            return paused
        for kind, job, _status, n in counts:
            if job in targets:
                paused[(kind, job)] = paused.get((kind, job), 0) + n
        for target in targets:
            if ":" not in target:
                continue
            kind, job, _ = target.split(":", 2)
            if job not in targets and self.store.load(target) is not None:
                paused[(kind, job)] = paused.get((kind, job), 0) + 1
        return paused

    def jobs(self, limit: int = 1000) -> list[tuple[str, str]]:
        """``(kind, job)`` of the jobs that have instances, sorted; at most ``limit`` (the
        first in instance id order).

        It skips from job to job along the instance id order (``"KIND:JOB;"`` sorts after every
        id of that job, as ``;`` follows ``:``): one short read a job, however many instances.

        Raises:
            StorageError: the database cannot be read.
        """
        found: list[tuple[str, str]] = []
        after = None
        while len(found) < limit:
            rows = self.store.page_instances(after_id=after, limit=1)
            if not rows:
                break
            found.append((rows[0].kind, rows[0].job))
            after = f"{rows[0].kind}:{rows[0].job};"
        return sorted(found)

    def doctor(
        self,
        *,
        overdue_after: float = OVERDUE_AFTER,
        limit: int = 100,
        defined: Mapping[str, str] | None = None,
        thorough: bool = True,
    ) -> DoctorReport:
        """Check the database: the store itself, alarms stuck overdue, who serves it, parked,
        failing and orphaned instances. ``durajobs doctor``, ``GET /healthz`` and the
        daemon's metrics address all report these checks (see ``DoctorReport.status``).

        An alarm overdue by more than ``overdue_after`` seconds is *running* if a process holds
        its claim (a long handler) and *stuck* otherwise. Stuck alarms with no daemon serving
        the database fail; with a daemon serving they warn: it is behind, or its application
        does not define their jobs (*orphaned* jobs, whose instances no daemon runs).
        ``defined`` (job name -> kind, the application's definitions) names orphaned jobs
        for sure. Claims die with their process, so there are no stale claims to clean up.

        Args:
            overdue_after: seconds late before an alarm counts as overdue.
            limit: overdue alarms listed at most.
            defined: the application's jobs (name -> kind), to report orphaned jobs.
            thorough: also check the store's integrity (SQLite ``PRAGMA integrity_check``
                reads the whole file: ``doctor`` does, ``/healthz`` does not).

        Raises:
            StorageError: never for a damaged database (that is a failed check); only if the
                connection itself breaks.
        """
        if thorough:
            checks = [Check(f.check, f.level, f.detail) for f in health(self.location, self.store)]
        else:
            checks = [self._reachable()]
        if any(c.level == "fail" for c in checks):
            return DoctorReport(self.path, checks, [])
        listening = self.daemon_listening()
        overdue: list[Overdue] = []
        try:
            # Cheap reads (indexes) unless orphans are asked for: then every job's counts.
            parked, failing = self.store.count_flagged()
            late, _ = self.store.count_due(self.now() - overdue_after)
            orphans = (
                {} if defined is None
                else orphaned_jobs(((k, j, n) for k, j, _, n in self.gauges().counts), defined)
            )  # fmt: skip
            overdue = self._overdue(overdue_after, limit)
        except StorageError as exc:
            checks.append(Check("store", "fail", str(exc)))
        else:
            checked = defined is not None
            checks += _overdue_checks(overdue, late, overdue_after, listening, orphans, checked)
            checks += _instance_checks(parked, failing, orphans, checked)
        checks += [Check(f.check, f.level, f.detail) for f in serving(self.location, self.store)]
        return DoctorReport(self.path, checks, overdue)

    def _reachable(self) -> Check:
        try:
            version = self.store.schema_version()
        except StorageError as exc:
            return Check("store", "fail", str(exc))
        return Check("store", "ok", f"reachable, schema version {version}")

    def _overdue(self, overdue_after: float, limit: int) -> list[Overdue]:
        now = self.now()
        rows = self.store.due(now - overdue_after, limit)
        if not rows:
            return []
        locks: Claims | None = None
        # No process ever claimed a step (no lock file): none is running.
        claimed = claims_may_exist(self.location)
        if self._engine is not None:
            locks = self._engine.locks
        elif claimed:
            try:
                locks = open_claims(self.location)
            except StorageError:
                locks = None  # cannot open it (permissions): say "unknown"
        try:
            result = []
            for row in rows:
                if row.due_at is None:  # pragma: no cover  (due() only returns alarmed rows)
                    continue
                if locks is not None:
                    running: bool | None = locks.is_locked(row.instance_id)
                else:
                    running = None if claimed else False
                result.append(
                    Overdue(row.instance_id, _at(row.due_at), now - row.due_at, running)
                )  # fmt: skip
            return result
        finally:
            if locks is not None and self._engine is None:
                locks.close()

    def instances(
        self,
        *,
        kind: str | None = None,
        job: str | None = None,
        status: str | None = None,
        search: str | None = None,
        error: str | None = None,
        order: str = "id",
        after: str | None = None,
        limit: int = 50,
    ) -> InstancePage:
        """One page of instances, filtered, in a stable order, paged by a cursor (no counts).

        ``order="id"`` lists every matching instance by id; ``order="alarm"`` only those with an
        alarm, earliest first. ``search`` is an id prefix: of the whole instance id when it
        starts with ``"KIND:"``, of the user id within ``kind`` and ``job`` when both are given
        (both served by the primary key), else of the user id (checked row by row). ``error``
        is a case-insensitive substring of the last error (checked row by row).

        Raises:
            ValidationError: an unknown kind, status or order, ``limit`` < 1, or a malformed
                cursor.
            StorageError: the file cannot be read.
        """
        if kind is not None and kind not in KINDS:
            raise ValidationError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
        if status is not None and status not in LIST_STATUSES:
            raise ValidationError(f"status {status!r} is not one of {', '.join(LIST_STATUSES)}")
        if order not in ("id", "alarm"):
            raise ValidationError(f"order {order!r} is not 'id' or 'alarm'")
        if limit < 1:
            raise ValidationError(f"limit must be >= 1, got {limit}")
        id_prefix = user_id_prefix = None
        if search:
            if search.split(":", 1)[0] in KINDS and ":" in search:
                id_prefix = search
            elif kind is not None and job is not None:
                id_prefix = f"{kind}:{job}:{search}"
            else:
                user_id_prefix = search
        if status == FAILING:
            return self._failing_page(kind, job, search, error, order, after, limit)
        after_id, after_due = _parse_cursor(after, order)
        rows = self.store.page_instances(
            kind=kind, job=job, status=status, id_prefix=id_prefix,
            user_id_prefix=user_id_prefix, error_contains=error or None, order=order,
            after_id=after_id, after_due=after_due, limit=limit + 1,
        )  # fmt: skip
        more, rows = len(rows) > limit, rows[:limit]
        cursor = None
        if more:
            last = rows[-1]
            cursor = last.instance_id if order == "id" else f"{last.due_at!r}/{last.instance_id}"
        return InstancePage([InstanceInfo.from_row(r) for r in rows], cursor)

    def _failing_page(
        self, kind: str | None, job: str | None, search: str | None, error: str | None,
        order: str, after: str | None, limit: int,
    ) -> InstancePage:  # fmt: skip
        """``instances(status="failing")``: by id; the search and error filters are checked
        row by row on each page read (a page may hold fewer rows than ``limit``)."""
        if order != "id":
            raise ValidationError("failing instances are listed by id only")
        if kind not in (None, "continuous"):
            return InstancePage([], None)
        rows = self.store.failing_instances(job=job, after_id=after, limit=limit + 1)
        more, rows = len(rows) > limit, rows[:limit]
        found = [InstanceInfo.from_row(r) for r in rows]
        if search:
            found = [
                i for i in found if i.instance_id.startswith(search) or i.id.startswith(search)
            ]
        if error:
            found = [i for i in found if error.lower() in (i.last_error or "").lower()]
        return InstancePage(found, rows[-1].instance_id if more else None)

    def upcoming(self, limit: int = 10) -> list[InstanceInfo]:
        """The next ``limit`` alarms that are not yet due, earliest first.

        Raises:
            StorageError: the file cannot be read.
        """
        rows = self.store.page_instances(
            order="alarm", after_due=self.now(), after_id="\U0010ffff", limit=limit
        )
        return [InstanceInfo.from_row(r) for r in rows]

    def overdue(self, *, overdue_after: float = OVERDUE_AFTER, limit: int = 100) -> list[Overdue]:
        """Alarms overdue by more than ``overdue_after`` seconds, most late first, each marked
        running (a process holds its claim) or not.

        Raises:
            StorageError: the file cannot be read.
        """
        return self._overdue(overdue_after, limit)

    def activity(self, *, width: float, count: int) -> list[ActivityBucket]:
        """Steps and failures in the last ``count`` periods of ``width`` seconds, oldest first.

        Periods are aligned to multiples of ``width`` (whole minutes, whole hours); the last
        one is the current, partial, period.

        Raises:
            ValidationError: ``width`` <= 0 or ``count`` < 1.
            StorageError: the file cannot be read.
        """
        if width <= 0 or count < 1:
            raise ValidationError(f"width must be > 0 and count >= 1, got {width}, {count}")
        since = (self.now() // width - (count - 1)) * width
        buckets = self.store.history_buckets(since, width, count)
        return [
            ActivityBucket(datetime.fromtimestamp(since + i * width, UTC), steps, failures)
            for i, (steps, failures) in enumerate(buckets)
        ]

    def change_token(self) -> int:
        """A number that stays the same while nothing is committed to the database.

        Compare only numbers from the same ``Admin``; it reads no table (cheap to poll).

        Raises:
            StorageError: the file cannot be read.
        """
        return int(self.store.change_token())

    def recent(self, limit: int = 10) -> list[HistoryEntry]:
        """The latest ``limit`` history records of all instances, oldest first.

        Raises:
            StorageError: the file cannot be read.
        """
        return [HistoryEntry.from_row(h) for h in self.store.recent_history(limit)]

    def follow(self, after_id: int, *, interval: float = 0.5) -> Iterator[HistoryEntry]:
        """Yield history records with ids above ``after_id`` as they are committed, forever.

        Polls the file every ``interval`` seconds (a user-facing follow, like ``tail -f``).

        Raises:
            StorageError: the file cannot be read.
        """
        while True:
            rows = self.store.history_since(after_id)
            for row in rows:
                after_id = row.id
                yield HistoryEntry.from_row(row)
            if not rows:
                time.sleep(interval)

    def daemon_listening(self) -> bool:
        """Whether a daemon serves this database (``durajobs.stores.daemon_listening``)."""
        return daemon_listening(self.location, self.store)

    # -- actions --------------------------------------------------------------------------

    def _engine_for_actions(self) -> Engine:
        engine = self._engine
        if engine is None:
            # The read-only store has validated the file, so this never creates or migrates one.
            store = open_store(self.location)
            try:
                locks = open_claims(self.location, store)
                waker = open_waker(self.location, store)
            except BaseException:
                store.close()
                raise
            from .engine import Engine, Hooks

            engine = self._engine = Engine(
                store, locks, {}, clock=self.clock, wait_timeout=self.wait_timeout,
                history_limit=self.history_limit, hooks=Hooks(waker=waker),
            )  # fmt: skip
        return engine

    def _apply(self, msg: steps.Message, instance_id: str) -> steps.Decision:
        try:
            return self._engine_for_actions().apply(msg, instance_id)
        except InstanceNotFoundError:
            raise InstanceNotFoundError(f"{instance_id}: no such instance in {self.path}") from None

    def pause(self, target: str) -> ActionResult:
        """Pause a job (``target`` is its name) or an instance (its id): no alarm step of it
        runs, in any process or host, until ``resume``; alarms and stored events are kept,
        client calls still work. A paused job's new instances are paused too.

        Raises:
            JobNotFoundError: a job name with no instance in the database.
            InstanceNotFoundError: an instance id with no instance.
            ValidationError: ``target`` is neither a job name nor an instance id.
            StorageError: the file cannot be written.
        """
        target = self._pause_target(target)
        changed = self._engine_for_actions().store.set_paused(target, True, self.now())
        said = "paused" if changed else "was already paused"
        return ActionResult(target, "pause", changed, f"{target} {said}")

    def resume(self, target: str) -> ActionResult:
        """Resume a paused job or instance (as ``pause`` names it): alarms missed meanwhile
        are due now and follow the job's catch-up rules; a daemon is woken.

        Raises:
            JobNotFoundError: a job name with no instance in the database.
            InstanceNotFoundError: an instance id with no instance.
            ValidationError: ``target`` is neither a job name nor an instance id.
            StorageError: the file cannot be written.
        """
        target = self._pause_target(target)
        engine = self._engine_for_actions()
        changed = engine.store.set_paused(target, False, self.now())
        if not changed:
            return ActionResult(target, "resume", False, f"{target} was not paused")
        if engine.hooks.waker is not None:
            engine.hooks.waker.poke()
        listening = self.daemon_listening()
        where = "a daemon is listening and was woken" if listening else "no daemon is listening"
        return ActionResult(
            target, "resume", True, f"resumed {target}: what it missed is due now ({where})",
            left_for_daemon=True, daemon_listening=listening,
        )  # fmt: skip

    def _pause_target(self, target: str) -> str:
        """``target`` checked: an instance id that exists, or the name of a job that has
        instances (a paused job that has none left can still be resumed).

        Raises:
            JobNotFoundError: a job name with no instance in the database.
            InstanceNotFoundError: an instance id with no instance.
            ValidationError: neither a job name nor an instance id.
        """
        if ":" in target:
            instance_id = parse_instance_id(target)
            if self.store.load(instance_id) is None and instance_id not in (
                self.store.paused_targets()
            ):
                raise InstanceNotFoundError(f"{instance_id}: no such instance in {self.path}")
            return instance_id
        if not target or not target.strip() or target != target.strip():
            raise ValidationError(f"{target!r} is neither a job name nor an instance id")
        known = {job for _, job in self.jobs()}
        if target not in known and target not in self.store.paused_targets():
            raise JobNotFoundError(
                f"no job named {target!r} has instances in {self.path} "
                f"(jobs: {', '.join(sorted(known)) or 'none'})"
            )
        return target

    def terminate(self, instance_id: str, reason: str | None = None) -> ActionResult:
        """Cancel the alarm and purge the instance, recording the reason in its history.

        Raises:
            InstanceNotFoundError: no such instance.
            InstanceBusyError: a running step held it past ``wait_timeout``.
            StorageError: the file cannot be written.
        """
        self.get(instance_id)
        decision = self._apply(_steps().Terminate(reason), instance_id)
        if not decision.changed:
            raise InstanceNotFoundError(f"{instance_id}: no such instance in {self.path}")
        said = f" ({reason})" if reason else ""
        return ActionResult(instance_id, "terminate", True, f"terminated {instance_id}{said}")

    def clear(self, instance_id: str) -> ActionResult:
        """Discard a Debounce batch (and events queued for it) without running ``execute``.

        Raises:
            InvalidStateError: not a Debounce instance.
            InstanceNotFoundError: no such instance.
            InstanceBusyError: a running step held it past ``wait_timeout``.
            StorageError: the file cannot be written.
        """
        info = self.get(instance_id)
        if info.kind != "debounce":
            raise InvalidStateError(
                f"{instance_id}: clear discards a debounce batch; this is a {info.kind} "
                "instance (use terminate)"
            )
        decision = self._apply(_steps().Clear(), instance_id)
        if not decision.changed:
            raise InstanceNotFoundError(f"{instance_id}: no such instance in {self.path}")
        return ActionResult(
            instance_id, "clear", True,
            f"cleared {instance_id}: discarded {decision.event_count} event(s)",
        )  # fmt: skip

    def retry(self, instance_id: str) -> ActionResult:
        """Resume a parked (``"failed"``) instance: its work is due now, for the daemon.

        Raises:
            InstanceNotFoundError: no such instance.
            InvalidStateError: the instance is not parked.
            InstanceBusyError: a running step held it past ``wait_timeout``.
            StorageError: the file cannot be written.
        """
        decision = self._apply(_steps().Resume(), instance_id)
        return self._left(instance_id, "retry", decision, f"resumed {instance_id}")

    def trigger(self, instance_id: str) -> ActionResult:
        """Make a Continuous or Task instance's run due now, for the daemon (``execute`` is the
        application's). A Continuous schedule restarts from that run, as with ``trigger()``.

        Raises:
            InvalidStateError: a Debounce instance (use flush), or a parked one (use retry).
            InstanceNotFoundError: no such instance.
            InstanceBusyError: a running step held it past ``wait_timeout``.
            StorageError: the file cannot be written.
        """
        info = self.get(instance_id)
        if info.kind == "debounce":
            raise InvalidStateError(f"{instance_id}: a debounce instance is flushed, not triggered")
        self._check_not_parked(info)
        decision = self._apply(_steps().Request("trigger"), instance_id)
        return self._left(instance_id, "trigger", decision, f"triggered {instance_id}")

    def flush(self, instance_id: str) -> ActionResult:
        """Make a Debounce batch's flush (reason ``"manual"``) due now, for the daemon.

        A batch with no events is left alone (``changed=False``).

        Raises:
            InvalidStateError: not a Debounce instance, or a parked one (use retry).
            InstanceNotFoundError: no such instance.
            InstanceBusyError: a running step held it past ``wait_timeout``.
            StorageError: the file cannot be written.
        """
        info = self.get(instance_id)
        if info.kind != "debounce":
            raise InvalidStateError(
                f"{instance_id}: flush is for debounce instances; this is a {info.kind} "
                "instance (use trigger)"
            )
        self._check_not_parked(info)
        if info.event_count == 0 and not self.store.queued(instance_id):
            return ActionResult(instance_id, "flush", False, f"{instance_id}: nothing to flush")
        decision = self._apply(_steps().Request("manual"), instance_id)
        return self._left(instance_id, "flush", decision, f"flush of {instance_id} requested")

    def _check_not_parked(self, info: InstanceInfo) -> None:
        # An alarm on a parked instance would never run (parked steps wait for a resume).
        if info.status == Status.FAILED:
            raise InvalidStateError(
                f"{info.instance_id} is parked after failing: resume it with "
                f"`durajobs retry {info.instance_id}`"
            )

    def _left(
        self, instance_id: str, action: str, decision: steps.Decision, done: str
    ) -> ActionResult:
        if not decision.changed or decision.instance is None:
            raise InstanceNotFoundError(f"{instance_id}: no such instance in {self.path}")
        due = _dt(decision.instance.due_at)
        listening = self.daemon_listening()
        where = (
            "a daemon is listening and was woken"
            if listening
            else "no daemon is listening: it runs when one starts or the application calls "
            "run_due()"
        )
        return ActionResult(
            instance_id, action, True,
            f"{done}: the work is due now and left for the daemon ({where})",
            left_for_daemon=True, due_at=due, daemon_listening=listening,
        )  # fmt: skip


def _overdue_checks(
    overdue: list[Overdue],
    late: int,
    overdue_after: float,
    listening: bool,
    orphans: dict[tuple[str, str], int],
    checked: bool,
) -> list[Check]:
    """The ``overdue`` check (and ``running``): stuck alarms fail with no daemon serving,
    warn with one; those of orphaned jobs are left to the ``orphaned`` check."""
    after = f"{overdue_after:g}s"
    stuck = [o for o in overdue if o.running is not True]
    checks: list[Check] = []
    if len(overdue) > len(stuck):
        count = len(overdue) - len(stuck)
        checks.append(Check("running", "info", f"{count} overdue step(s) running now"))
    orphaned = {f"{kind}:{job}:" for kind, job in orphans}
    stuck = [o for o in stuck if not o.instance_id.startswith(tuple(orphaned))]
    if not stuck:
        return [Check("overdue", "ok", f"no alarm stuck overdue by more than {after}"), *checks]
    worst = short_duration(max(o.late_seconds for o in stuck))
    jobs: dict[str, int] = {}
    for item in stuck:
        job = ":".join(item.instance_id.split(":", 2)[:2])
        jobs[job] = jobs.get(job, 0) + 1
    named = ", ".join(f"{job} ({n})" for job, n in sorted(jobs.items()))
    seen = f" (the first {len(overdue)} of {late} looked at)" if late > len(overdue) else ""
    what = (
        f"{len(stuck)} alarm(s) overdue by more than {after} with no step running{seen}, "
        f"worst {worst} late"
    )
    if not listening:
        detail = (
            f"{what}, and no daemon is serving this database: start one "
            f"(durajobs-daemon --app MODULE:ATTR) or call run_due() ({named})"
        )
        return [Check("overdue", "fail", detail), *checks]
    why = (
        "it is behind" if checked else "it is behind, or its application does not define "
        "these jobs (orphaned: `durajobs doctor --app MODULE:ATTR` tells them apart)"
    )  # fmt: skip
    detail = f"{what} while a daemon is serving this database: {why}: {named}"
    return [Check("overdue", "warn", detail), *checks]


def _instance_checks(
    parked: int, failing: int, orphans: dict[tuple[str, str], int], checked: bool
) -> list[Check]:
    """The ``parked``, ``failing`` and ``orphaned`` checks (warnings)."""
    checks: list[Check] = []
    if parked:
        checks.append(Check(
            "parked", "warn",
            f"{parked} instance(s) parked after failing: see `durajobs ls --status failed`, "
            "resume with `durajobs retry ID`",
        ))  # fmt: skip
    if failing:
        checks.append(Check(
            "failing", "warn",
            f"{failing} continuous instance(s) failing: their last run failed after its "
            "retries and was skipped; see `durajobs ls --status failing`",
        ))  # fmt: skip
    if orphans:
        named = ", ".join(f"{k}:{j} ({n})" for (k, j), n in sorted(orphans.items()))
        checks.append(Check(
            "orphaned", "warn",
            f"instances of jobs the application does not define (no daemon of it runs them): "
            f"{named}; restore the job, or terminate them",
        ))  # fmt: skip
    elif checked:
        checks.append(Check("orphaned", "ok", "every job with instances is defined"))
    return checks


def _finished_prefixes(kind: str | None, job: str | None, search: str | None) -> list[str] | None:
    """The instance id prefixes ``Admin.finished`` keeps (``None``: all; ``[]``: none).

    Raises:
        ValidationError: a user id ``search`` without ``job``.
    """
    kinds = [kind] if kind is not None else list(KINDS)
    base = [f"{k}:{job}:" for k in kinds] if job is not None else [f"{k}:" for k in kinds]
    if not search:
        return None if kind is None and job is None else base
    if search.split(":", 1)[0] in KINDS and ":" in search:  # an instance id prefix
        return [
            max(p, search, key=len) for p in base if p.startswith(search) or search.startswith(p)
        ]
    if job is None:
        raise ValidationError(
            f"search {search!r}: finished instances are searched by an id prefix "
            "(KIND:JOB:ID...) or, with a job, by a user id prefix"
        )
    return [p + search for p in base]


def _parse_cursor(after: str | None, order: str) -> tuple[str | None, float | None]:
    """``(after_id, after_due)`` from a page cursor made by ``Admin.instances``."""
    if not after:
        return None, None
    if order == "id":
        return after, None
    due, _, instance_id = after.partition("/")
    try:
        value = float(due)
    except ValueError:
        value = math.nan
    if not instance_id or not math.isfinite(value):
        raise ValidationError(f"{after!r} is not a page cursor")
    return instance_id, value


def short_duration(seconds: float) -> str:
    """``"3s"``, ``"4m"``, ``"2h13m"``, ``"3d4h"`` (coarse, for people)."""
    if not math.isfinite(seconds):  # an odd stored time (infinity)
        return "∞"
    s = int(abs(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if s < 600 and s % 60 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m" if (s % 3600) // 60 else f"{s // 3600}h"
    return f"{s // 86400}d{(s % 86400) // 3600}h" if (s % 86400) // 3600 else f"{s // 86400}d"


def relative(when: float, now: float) -> str:
    """``"in 4m"``, ``"3s ago"`` or ``"now"`` (within a second)."""
    delta = when - now
    if abs(delta) < 1.0:
        return "now"
    return f"in {short_duration(delta)}" if delta > 0 else f"{short_duration(delta)} ago"


def _steps() -> Any:
    """The step module, imported on first use (actions only)."""
    from .core import steps

    return steps
