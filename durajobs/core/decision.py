"""What a step takes and gives back, and the helpers every kind builds its decision with.

Theory of operation
-------------------
A step is a pure function ``(job, instance, message, env) -> Decision`` (``steps`` dispatches
it by the table of what each kind takes in each status). This module is what the three kinds
share:

* the *messages*: what happened to the instance (its alarm is due, a client call, an
  operator's action);
* ``Env``: everything from outside -- the time, a random number for jitter, a timer for
  handler durations. Nothing here reads a clock or does I/O;
* ``Decision``: an immutable value -- the successor row (``None`` purges), the history
  records, and a typed ``Outcome`` the caller reports without reading the records;
* the builders: successor rows (``_next`` bumps ``step``, the store's fencing token), records,
  purges, and ``_failure``, the one path of a failed handler: a retry alarm while attempts
  remain, then ``on_error``, then the job's ``exhausted`` policy (terminate, skip, park).

A handler's exception becomes a value (``_call``). When durajobs itself cannot finish a step,
the engine falls back to ``finishing_failure`` and, if even that cannot be stored, to
``park_last_resort``; the decision says which (``Fallback``).
"""

from __future__ import annotations

import enum
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import attrs

from .codec import TypeCodec, dumps
from .contexts import _StateContext
from .definitions import Continuous, Debounce, Definition
from .rows import Instance, Queued, Record, Status

RESOLUTION = 1e-6
"""Times have microsecond resolution at the API (datetimes): an alarm read back as a datetime
and fed to ``FakeClock.set`` must count as due, whatever float rounding did."""


# -- messages -------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class Start:
    state: str  # encoded and validated by the caller


@attrs.frozen(slots=True)
class Alarm:
    """The instance's alarm is due."""


@attrs.frozen(slots=True)
class Trigger:
    """Run now (Continuous: and restart the schedule from now)."""


@attrs.frozen(slots=True)
class Add:
    event: Any
    text: str


@attrs.frozen(slots=True)
class Send:
    event: Any


@attrs.frozen(slots=True)
class Flush:
    """Flush the batch now (reason ``"manual"``)."""


@attrs.frozen(slots=True)
class Clear:
    """Discard the batch without running execute."""


@attrs.frozen(slots=True)
class Terminate:
    reason: str | None


@attrs.frozen(slots=True)
class Resume:
    """Resume a parked (``"failed"``) instance: its alarm is due now with fresh attempts."""


@attrs.frozen(slots=True)
class TimedOut:
    """The daemon stopped the due step after ``timeout`` seconds: a failed attempt.

    ``step`` is the row's step when that step began: if the instance has moved on since (the
    step committed just before the kill, or another process stepped it), nothing is recorded.
    """

    seconds: float
    step: int | None = None


@attrs.frozen(slots=True)
class Request:
    """Leave work for the daemon (the CLI has no handlers): ``"trigger"`` or ``"manual"``."""

    what: str


Message = (
    Start | Alarm | Trigger | Add | Send | Flush | Clear | Terminate | Resume | TimedOut | Request
)
CREATING = (Start, Add, Send)  # the messages that can create an instance


class Env(NamedTuple):
    """Everything a step needs from outside, passed in (a NamedTuple: one is built per step)."""

    instance_id: str
    job_name: str
    user_id: str
    now: float
    rand: float  # uniform in [0, 1), for retry jitter
    timer: Callable[[], float]  # monotonic seconds, for handler durations
    state_codec: TypeCodec
    event_codec: TypeCodec | None = None
    queued: Sequence[Queued] = ()
    base_step: int = 0  # a new instance's first row: the last step number its id had


# -- the decision ---------------------------------------------------------------------------


class Outcome(enum.Enum):
    """What a step did, for its caller (a client's result, the engine, the daemon's log)."""

    NOTHING = "nothing"  # nothing to commit: not due, stale, no such instance, empty
    REFUSED = "refused"  # a handler failed in a client's call: nothing changes, it raises
    OK = "ok"  # it ran, was scheduled, folded, flushed, resumed or requested
    SKIPPED = "skipped"  # Continuous: missed ticks skipped (catch_up="skip")
    RETRY = "retry"  # failed; a retry alarm is set
    FAILED = "failed"  # failed, no retries configured; on_error handled it, or skipped
    EXHAUSTED = "exhausted"  # failed, retries used up; on_error handled it, or skipped
    PARKED = "parked"  # failed for good: status "failed", no alarm, until resumed
    TERMINATED = "terminated"  # ended and purged (terminate, ctx.terminate, the exhausted
    # policy, the schedule ran out)
    CLEARED = "cleared"  # Debounce: the batch discarded and purged


class Fallback(enum.Enum):
    """Where a decision stands in the engine's fallback when the store refuses a write."""

    NONE = "none"  # the step's own decision
    FAILURE = "failure"  # finishing_failure: durajobs could not finish it, a failed attempt
    LAST_RESORT = "last resort"  # park_last_resort: nothing computed, nothing of the user's


class Decision(NamedTuple):
    """What a step decided: immutable, built once (or derived with ``_replace``).

    ``instance`` is the successor row; ``None`` purges the instance when ``changed``.
    """

    instance: Instance | None
    outcome: Outcome = Outcome.OK
    records: Sequence[Record] = ()
    consumed: int = 0  # queued events folded up to this seq (Debounce)
    raise_error: BaseException | None = None  # REFUSED: what the caller raises
    error: str | None = None  # the failure of this step, if any
    flushed: bool = False  # Debounce: execute ran on the batch
    flush_reason: str | None = None
    event_count: int = 0
    created: bool = False
    requeue: str | None = None  # Debounce: the added event goes to the queue (batch was full)
    requeued: int = 0  # Debounce: events left for the next batch
    next_window: float | None = None  # Debounce: when that next batch would flush
    fallback: Fallback = Fallback.NONE

    @property
    def changed(self) -> bool:
        """Whether there is anything to commit."""
        return self.outcome is not Outcome.NOTHING and self.outcome is not Outcome.REFUSED

    @property
    def retry_scheduled(self) -> bool:
        return self.outcome is Outcome.RETRY

    @property
    def terminated(self) -> bool:
        return self.outcome is Outcome.TERMINATED


NOTHING = Decision(None, Outcome.NOTHING)


def refused(error: BaseException) -> Decision:
    """A handler failed in a client's call (or left what cannot commit): nothing changes."""
    return Decision(None, Outcome.REFUSED, raise_error=error)


def ignore(job: Any, inst: Instance | None, msg: Message, env: Env) -> Decision:
    """A message the instance takes in its status but that has nothing to do there."""
    return NOTHING


def stale(msg: Message, inst: Instance) -> bool:
    """A timeout reported for a step the instance is no longer at."""
    return isinstance(msg, TimedOut) and msg.step is not None and msg.step != inst.step


def is_due(inst: Instance, now: float) -> bool:
    """Whether the instance's alarm is set, due at ``now``, and it is not parked."""
    due = inst.due_at
    return due is not None and due <= now + RESOLUTION and inst.status != Status.FAILED


# -- records and texts ----------------------------------------------------------------------


def _call(fn: Callable[..., Any], *args: Any) -> tuple[Any, BaseException | None]:
    try:
        return fn(*args), None
    except Exception as exc:  # the user's handler may raise anything: it becomes a value
        return None, exc


def safe_text(text: str) -> str:
    """Text every store accepts: lone surrogates (file names from ``os.listdir``) escaped as
    ``\\udcxx``, NUL characters as ``\\x00``. For error texts: user data (state, events) is
    the codec's business."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    return text


def _error_text(exc: BaseException) -> str:
    try:
        return safe_text("".join(traceback.format_exception(exc)).rstrip())
    except Exception:  # a broken exception object: its summary must still be recorded
        return _short(exc)


def _short(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # an exception whose __str__ raises (built without its arguments)
        text = f"<{type(exc).__name__} object: str() failed>"
    return safe_text(f"{type(exc).__name__}: {text}")


def _record(
    event: str,
    attempt: int,
    duration: float | None = None,
    error: BaseException | str | None = None,
    **data: Any,
) -> Record:
    err = error if error is None or isinstance(error, str) else _short(error)
    ms = None if duration is None else round(duration * 1000.0, 3)
    return (event, attempt, ms, err, _data(data) if data else None)


_INF = float("inf")


def _data(data: dict[str, Any]) -> str:
    """``dumps(data)``, without the JSON encoder for the hot one-number records (same text)."""
    if len(data) == 1:
        ((key, value),) = data.items()  # keys are identifiers from this module: no escaping
        if type(value) is int or (type(value) is float and -_INF < value < _INF):
            return f'{{"{key}":{value!r}}}'
    return dumps(data)


def _with_state(data: dict[str, Any], state: str | None) -> str:
    """History data carrying the final state as JSON (spliced in: it is JSON text already)."""
    return f'{dumps(data)[:-1]},"final_state":{state or "null"}}}'


def _commit_state(ctx: _StateContext[Any]) -> tuple[str | None, BaseException | None]:
    try:
        return ctx.state_text(), None
    except Exception as exc:  # a state that does not fit its type fails the handler
        return None, exc


# -- rows -----------------------------------------------------------------------------------


_SLOT = {name: index for index, name in enumerate(Instance._fields)}
_STEP, _UPDATED_AT = _SLOT["step"], _SLOT["updated_at"]
_make_instance = Instance._make


def _next(inst: Instance, now: float, **changes: Any) -> Instance:
    """``inst._replace(step=inst.step + 1, updated_at=now, **changes)``, at half the cost."""
    row = list(inst)
    for name, value in changes.items():
        row[_SLOT[name]] = value
    row[_STEP] = inst.step + 1
    row[_UPDATED_AT] = now
    return _make_instance(row)


def _purge(
    inst: Instance, state: str | None, records: list[Record], event: str, attempt: int,
    reason: str | None, error: str | None = None, outcome: Outcome = Outcome.TERMINATED,
    **fields: Any,
) -> Decision:  # fmt: skip
    """The instance ends: ``event`` recorded with its counts and final state, the row purged."""
    data = {"reason": reason, "run_count": inst.run_count, "event_count": inst.event_count}
    records.append((event, attempt, None, error, _with_state(data, state)))
    return Decision(None, outcome, records, **fields)


def _status_for(job: Definition, due_at: float | None) -> Status:
    if isinstance(job, Continuous):
        return Status.RUNNING
    if isinstance(job, Debounce):
        return Status.DEBOUNCING
    return Status.ACTIVE if due_at is not None else Status.IDLE


# -- failures -------------------------------------------------------------------------------


def _failure(
    job: Definition,
    inst: Instance,
    error: BaseException,
    env: Env,
    *,
    records: list[Record],
    attempt: int,
    duration: float | None,
    handled: Callable[[_StateContext[Any]], Decision],
    fresh_ctx: Callable[[], _StateContext[Any]],
    on_skip: Callable[[], Decision] | None = None,
    **changes: Any,
) -> Decision:
    """A handler failed: schedule a retry, or hand the exhausted run to on_error / the policy.

    ``changes`` are the attempt bookkeeping that commits with the failure (e.g. ``run_count``).
    ``handled(ctx)`` builds the decision after a successful ``on_error``; ``on_skip`` the one for
    the ``"skip"`` policy (Continuous).
    """
    text = _error_text(error)
    records.append(_record("job.failed", attempt, duration, error))
    retry = job.retry
    if retry is not None and retry.can_retry(attempt):
        due = env.now + retry.next_delay(attempt, env.rand)
        successor = _next(
            inst, env.now, status=_status_for(job, due), due_at=due, attempt=attempt + 1,
            last_error=text, **changes,
        )  # fmt: skip
        return Decision(successor, Outcome.RETRY, records, error=text)
    if retry is not None:
        records.append(_record("job.retry_exhausted", attempt, None, error))
    failed = Outcome.FAILED if retry is None else Outcome.EXHAUSTED
    if job.on_error is not None:
        ctx = fresh_ctx()
        started = env.timer()
        _, handler_error = _call(job.on_error, error, ctx)
        if handler_error is None:
            decision = handled(ctx)
            if decision.raise_error is None:
                return _after_failure(decision, records, text, failed)
            # What on_error left does not commit (a state that does not fit, on_idle raising
            # after it): the run stays exhausted and the policy below applies.
            handler_error = decision.raise_error
        records.append(
            _record("job.failed", attempt, env.timer() - started, handler_error, handler="on_error")
        )
        text = _error_text(handler_error)
    policy = job.exhausted
    if policy == "terminate":
        decision = _purge(
            inst, inst.state, records, "job.terminated", attempt, "retries exhausted",
            error=_short(error),
        )  # fmt: skip
        return decision._replace(error=text)
    if policy == "skip" and on_skip is not None:
        return _after_failure(on_skip(), records, text, failed)
    successor = _next(
        inst, env.now, status=Status.FAILED, due_at=None, attempt=attempt + 1, last_error=text,
        **changes,
    )  # fmt: skip
    records.append(_record("job.parked", attempt, None, error))
    return Decision(successor, Outcome.PARKED, records, error=text)


def _after_failure(
    decision: Decision, records: list[Record], text: str, outcome: Outcome
) -> Decision:
    """``decision`` (what on_error or the skip policy left) after the failure's ``records``."""
    if decision.outcome is not Outcome.TERMINATED:
        decision = decision._replace(outcome=outcome)
    return decision._replace(records=[*records, *decision.records], error=text)


def finishing_failure(job: Definition, inst: Instance, error: BaseException, env: Env) -> Decision:
    """The step of ``inst`` could not be finished by durajobs itself (not a handler's error).

    The step's own changes are dropped (its handlers may have run: they run again, as after a
    crash); the attempt counts as failed and is recorded with a safe text. The job's retry
    rules give a retry alarm; when attempts are used up the instance is parked (status
    ``"failed"``, state kept, ``durajobs retry`` resumes it) -- never ``on_error`` or a purge,
    since the failure is not the user's and may repeat in that code. Queued events stay queued.
    """
    text = safe_text(f"durajobs could not finish this step: {_short(error)}")
    attempt = inst.attempt
    records: list[Record] = [("job.failed", attempt, None, text, None)]
    retry = getattr(job, "retry", None)
    if retry is not None and retry.can_retry(attempt):
        due = env.now + retry.next_delay(attempt, env.rand)
        parked = inst.status == Status.FAILED
        successor = _next(
            inst, env.now, status=Status.FAILED if parked else _status_for(job, due),
            due_at=due, attempt=attempt + 1, last_error=text,
        )  # fmt: skip
        return Decision(successor, Outcome.RETRY, records, error=text, fallback=Fallback.FAILURE)
    successor = _next(
        inst, env.now, status=Status.FAILED, due_at=None, attempt=attempt + 1, last_error=text
    )
    records.append(("job.parked", attempt, None, text, None))
    return Decision(successor, Outcome.PARKED, records, error=text, fallback=Fallback.FAILURE)


def park_last_resort(inst: Instance, env: Env) -> Decision:
    """Park ``inst`` with a fixed text: what the engine commits when even recording a failure
    of this instance could not be done (no user data, nothing computed)."""
    text = "durajobs could not finish or record this step; see the daemon's log"
    successor = _next(inst, env.now, status=Status.FAILED, due_at=None, last_error=text)
    records = [("job.parked", inst.attempt, None, text, None)]
    return Decision(successor, Outcome.PARKED, records, error=text, fallback=Fallback.LAST_RESORT)
