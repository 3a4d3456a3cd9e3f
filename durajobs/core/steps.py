"""The per-kind step functions: the pure core of durajobs.

Theory of operation
-------------------
Every client call and every due alarm becomes one *step* on one instance::

    step(job, instance, message, env) -> Decision

``instance`` is the committed row (or ``None``), ``message`` says what happened (an alarm, a
``trigger``, an ``add``, ...), and ``env`` carries the time, a random number for jitter and a
timer: this module reads no clock and does no I/O. The step calls the user's handlers, turns
whatever they raise into values, and returns a ``Decision``: the instance's next row (or a
purge), the history records, and what the caller should report. The engine (the shell) claims
the instance before the step and commits the decision after it, outside any handler; a decision
that is not committed changes nothing, so a crash anywhere means the step runs again.

Rows are never mutated: a step builds the successor with ``_replace`` and bumps ``step``,
which the store uses as a fencing token. Transitions per kind:

Continuous  start -> (run now | alarm at first tick); alarm/trigger -> run execute ->
            ok: next tick | error: retry alarm | exhausted: on_error, else terminate/park/skip
Debounce    add -> fold events with the reducer -> (flush now at max_events | alarm at window);
            alarm -> fold queued events, flush when the window is over -> ok: purge
            | error: retry alarm (batch kept) | exhausted: on_error, else terminate/park
Task        send -> on_event [-> on_idle]; alarm/trigger -> clear alarm, execute [-> on_idle];
            errors -> retry (execute only) -> on_error -> terminate/park
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import attrs

from durajobs.errors import InstanceNotFoundError, InvalidStateError, SchedulerError

from .codec import TypeCodec, dumps
from .contexts import (
    ContinuousContext,
    DebounceContext,
    DebounceEventContext,
    TaskContext,
    _StateContext,
)
from .definitions import Continuous, Debounce, Definition, Task
from .rows import Instance, Queued, Record
from .schedules import missed_ticks

__all__ = [
    "CATCH_UP_ALL_LIMIT",
    "Add",
    "Alarm",
    "Clear",
    "Decision",
    "Env",
    "Flush",
    "Instance",
    "Message",
    "Queued",
    "Record",
    "Request",
    "Resume",
    "Send",
    "Start",
    "Terminate",
    "TimedOut",
    "Trigger",
    "finishing_failure",
    "park_last_resort",
    "safe_text",
    "step",
]

RESOLUTION = 1e-6
"""Times have microsecond resolution at the API (datetimes): an alarm read back as a datetime
and fed to ``FakeClock.set`` must count as due, whatever float rounding did."""

CATCH_UP_ALL_LIMIT = 100
"""``catch_up="all"`` runs at most this many missed ticks one by one; more are coalesced."""


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
_HANDLER_FREE = (Terminate, Resume, Request, Clear)  # operators' actions: no user code runs
_ALARM_OR_TIMEOUT = (Alarm, TimedOut)  # a tuple: ``Alarm | TimedOut`` is built per call


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


@attrs.define(slots=True)
class Decision:
    """What a step decided. ``changed=False`` means there is nothing to commit."""

    instance: Instance | None  # the successor row; None with changed=True means purge
    changed: bool = True
    records: list[Record] = attrs.Factory(list)
    consumed: int = 0  # queued events folded up to this seq (Debounce)
    raise_error: BaseException | None = None  # send/add: on_event raised, nothing changes
    error: str | None = None  # the failure of this step, if any
    retry_scheduled: bool = False
    terminated: bool = False
    flushed: bool = False
    flush_reason: str | None = None
    event_count: int = 0
    created: bool = False
    requeue: str | None = None  # Debounce: the added event goes to the queue (batch was full)
    requeued: int = 0  # Debounce: events left for the next batch
    next_window: float | None = None  # Debounce: when that next batch would flush


def _nothing() -> Decision:
    """No change: nothing to commit (a fresh value; callers may annotate it)."""
    return Decision(None, changed=False)


def _stale(msg: Message, inst: Instance) -> bool:
    """A timeout reported for a step the instance is no longer at."""
    return isinstance(msg, TimedOut) and msg.step is not None and msg.step != inst.step


def is_due(inst: Instance, now: float) -> bool:
    """Whether the instance's alarm is set, due at ``now``, and it is not parked."""
    due = inst.due_at
    return due is not None and due <= now + RESOLUTION and inst.status != "failed"


def step(job: Definition, inst: Instance | None, msg: Message, env: Env) -> Decision:
    """Run one step of one instance: call its handlers and decide its successor.

    Whatever goes wrong inside durajobs while finishing the step of an existing instance
    (encoding, formatting an error, computing the next schedule time, building a record) is
    that instance's failure (``finishing_failure``), never an exception that could stop the
    steps of other instances grouped with it.

    Raises:
        InstanceNotFoundError: ``Resume`` of an instance that does not exist.
        InvalidStateError: ``Resume`` of an instance that is not parked, or a message the kind
            does not take.
        ValidationError: a handler left a state that does not fit its type is *not* raised:
            it counts as that handler's failure.
    """
    try:
        return _step(job, inst, msg, env)
    except (InstanceNotFoundError, InvalidStateError):
        raise  # refusals of the message itself: nothing was run
    except Exception as exc:  # durajobs failed to finish this instance's step: see above
        if inst is None or isinstance(msg, _HANDLER_FREE):
            raise  # a new instance (the caller learns it at once) or an operator's action
        return finishing_failure(job, inst, exc, env)


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
        successor = _next(
            inst, env.now, status=_status_for(job, due) if inst.status != "failed" else "failed",
            due_at=due, attempt=attempt + 1, last_error=text,
        )  # fmt: skip
        return Decision(successor, records=records, error=text, retry_scheduled=True)
    successor = _next(
        inst, env.now, status="failed", due_at=None, attempt=attempt + 1, last_error=text
    )
    records.append(("job.parked", attempt, None, text, None))
    return Decision(successor, records=records, error=text)


def park_last_resort(inst: Instance, env: Env) -> Decision:
    """Park ``inst`` with a fixed text: what the engine commits when even recording a failure
    of this instance could not be done (no user data, nothing computed)."""
    text = "durajobs could not finish or record this step; see the daemon's log"
    successor = _next(inst, env.now, status="failed", due_at=None, last_error=text)
    return Decision(successor, records=[("job.parked", inst.attempt, None, text, None)], error=text)


def _step(job: Definition, inst: Instance | None, msg: Message, env: Env) -> Decision:
    if isinstance(msg, Terminate):
        return _terminate(inst, msg.reason, env)
    if isinstance(msg, Resume):
        return _resume(job, inst, env)
    if isinstance(msg, Request):
        return _request(inst, msg.what, env)
    if isinstance(msg, Clear) and job.kind == "debounce":
        return _clear(inst, env)  # handler-free: the CLI clears without the job's definition
    if isinstance(job, Continuous):
        return _continuous(job, inst, msg, env)
    if isinstance(job, Debounce):
        return _debounce(job, inst, msg, env)
    return _task(job, inst, msg, env)


# -- shared helpers -------------------------------------------------------------------------


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
    reason: str | None, error: str | None = None, **flags: Any,
) -> Decision:  # fmt: skip
    data = {"reason": reason, "run_count": inst.run_count, "event_count": inst.event_count}
    records.append((event, attempt, None, error, _with_state(data, state)))
    return Decision(None, records=records, terminated=True, **flags)


def _terminate(inst: Instance | None, reason: str | None, env: Env) -> Decision:
    if inst is None:
        return _nothing()
    consumed = env.queued[-1].seq if env.queued else 0
    decision = _purge(inst, inst.state, [], "job.terminated", inst.attempt, reason)
    decision.consumed = consumed
    return decision


def _resume(job: Definition, inst: Instance | None, env: Env) -> Decision:
    if inst is None:
        raise InstanceNotFoundError("no such instance to resume")
    if inst.status != "failed":
        raise InvalidStateError(
            f"{inst.instance_id} is {inst.status!r}, not 'failed': only a parked instance "
            "can be resumed"
        )
    live = {"continuous": "running", "debounce": "debouncing", "task": "active"}[job.kind]
    successor = _next(inst, env.now, status=live, due_at=env.now, attempt=1)
    return Decision(successor, records=[_record("job.resumed", 1)])


def _request(inst: Instance | None, what: str, env: Env) -> Decision:
    if inst is None:
        return _nothing()
    status = "active" if inst.kind == "task" and inst.status != "failed" else inst.status
    successor = _next(inst, env.now, status=status, due_at=env.now, reason=what, attempt=1)
    return Decision(successor, records=[_record("job.requested", inst.attempt, what=what)])


def _status_for(job: Definition, due_at: float | None) -> str:
    if isinstance(job, Continuous):
        return "running"
    if isinstance(job, Debounce):
        return "debouncing"
    return "active" if due_at is not None else "idle"


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
        return Decision(successor, records=records, error=text, retry_scheduled=True)
    if retry is not None:
        records.append(_record("job.retry_exhausted", attempt, None, error))
    if job.on_error is not None:
        ctx = fresh_ctx()
        started = env.timer()
        _, handler_error = _call(job.on_error, error, ctx)
        if handler_error is None:
            decision = handled(ctx)
            if decision.raise_error is None:
                decision.error = text
                decision.records[:0] = records
                return decision
            # What on_error left does not commit (a state that does not fit, on_idle raising
            # after it): the run stays exhausted and the policy below applies.
            handler_error = decision.raise_error
        records.append(
            _record("job.failed", attempt, env.timer() - started, handler_error, handler="on_error")
        )
        text = _error_text(handler_error)
    policy = job.exhausted
    if policy == "terminate":
        return _exhausted_purge(inst, records, attempt, error, text)
    if policy == "skip" and on_skip is not None:
        decision = on_skip()
        decision.records[:0] = records
        decision.error = text
        return decision
    successor = _next(
        inst,
        env.now,
        status="failed",
        due_at=None,
        attempt=attempt + 1,
        last_error=text,
        **changes,
    )
    records.append(_record("job.parked", attempt, None, error))
    return Decision(successor, records=records, error=text)


def _exhausted_purge(
    inst: Instance, records: list[Record], attempt: int, error: BaseException, text: str
) -> Decision:
    decision = _purge(
        inst, inst.state, records, "job.terminated", attempt, "retries exhausted",
        error=_short(error),
    )  # fmt: skip
    decision.error = text
    return decision


# -- Continuous -----------------------------------------------------------------------------


def _continuous(job: Continuous, inst: Instance | None, msg: Message, env: Env) -> Decision:
    now = env.now
    if isinstance(msg, Start):
        return _nothing() if inst is not None else _start(job, msg.state, env)
    if inst is None:
        return _nothing()
    if isinstance(msg, Trigger):
        return _run(job, inst, env, due=now, restart=True)
    if isinstance(msg, _ALARM_OR_TIMEOUT):
        if _stale(msg, inst) or not is_due(inst, now) or inst.due_at is None:
            return _nothing()
        if inst.reason == "trigger":
            return _run(job, inst, env, due=now, restart=True, timed_out=msg)
        due: float = inst.scheduled_for if inst.scheduled_for is not None else inst.due_at
        anchor = inst.anchor if inst.anchor is not None else due
        if inst.attempt == 1 and job.catch_up == "skip":
            following = job.schedule.next_after(anchor, due)
            if following is not None and following <= now:
                nxt = job.schedule.next_after(anchor, now)
                if nxt is None:  # the schedule ran out: end the instance (recorded)
                    return _purge(inst, inst.state, [], "job.terminated", 1, SCHEDULE_ENDED)
                successor = _next(inst, now, due_at=nxt, scheduled_for=nxt)
                records = [_record("job.skipped", 1, scheduled_for=due)]
                return Decision(successor, records=records)
        return _run(job, inst, env, due=due, restart=False, timed_out=msg)
    raise InvalidStateError(f"{inst.instance_id}: a continuous job does not take {msg!r}")


def _start(job: Continuous, state: str, env: Env) -> Decision:
    """The first step of a new Continuous instance (``start``)."""
    now = env.now
    fresh = Instance(
        env.instance_id, "continuous", env.job_name, env.user_id, "running", state, None, None,
        now, None, 0, 1, 0, now, None, None, env.base_step, now,
    )  # fmt: skip
    if job.start_immediately:
        decision = _run(job, fresh, env, due=now, restart=False)
        decision.records.insert(0, _record("job.started", 1))
    else:
        first = job.schedule.next_after(now, now)
        if first is None:
            raise SchedulerError(f"{env.instance_id}: the schedule has no time after now")
        successor = _next(fresh, now, due_at=first, scheduled_for=first)
        decision = Decision(successor, records=[_record("job.started", 1)])
    decision.created = True
    return decision


SCHEDULE_ENDED = "schedule ended"
"""The reason recorded when a Continuous instance ends because its schedule has no next time."""


def _next_due(job: Continuous, anchor: float, due: float, now: float) -> float | None:
    """The next due time after the run due at ``due``; ``None`` when the schedule ran out."""
    schedule = job.schedule
    if job.catch_up == "all":
        missed = missed_ticks(schedule, anchor, due, now, CATCH_UP_ALL_LIMIT)
        if missed <= CATCH_UP_ALL_LIMIT:
            return schedule.next_after(anchor, due)
    return schedule.next_after(anchor, max(due, now))


def _run(
    job: Continuous,
    inst: Instance,
    env: Env,
    *,
    due: float,
    restart: bool,
    timed_out: Message | None = None,
) -> Decision:
    now = env.now
    first = restart or inst.attempt == 1
    run_count = inst.run_count + 1 if first else inst.run_count
    attempt = 1 if restart else inst.attempt
    anchor = now if restart else (inst.anchor if inst.anchor is not None else due)

    def context() -> ContinuousContext[Any]:
        return ContinuousContext(
            inst.instance_id, inst.job, inst.user_id, inst.step + 1, env.state_codec,
            inst.state, run_count=run_count, attempt=attempt, scheduled_for=due,
        )  # fmt: skip

    def after_success(
        ctx: _StateContext[Any], records: list[Record], after_error: bool = False
    ) -> Decision:
        state, error = _commit_state(ctx)
        if error is not None:
            if after_error:  # on_error's state: _failure applies the policy
                return Decision(None, changed=False, raise_error=error)
            return _fail(error, records, None)
        if ctx.terminated:
            ran = inst._replace(run_count=run_count)  # the record counts this run too
            return _purge(ran, state, records, "job.terminated", attempt, ctx.terminate_reason)
        nxt = _next_due(job, anchor, due, now)
        if nxt is None:  # the schedule ran out: end the instance (recorded)
            return _purge(inst, state, records, "job.terminated", attempt, SCHEDULE_ENDED)
        successor = _next(
            inst, now, status="running", state=state, due_at=nxt, scheduled_for=nxt,
            anchor=anchor, reason=None, run_count=run_count, attempt=1, last_error=None,
        )  # fmt: skip
        return Decision(successor, records=records)

    def _fail(error: BaseException, records: list[Record], duration: float | None) -> Decision:
        def skip() -> Decision:
            nxt = _next_due(job, anchor, due, now)
            if nxt is None:  # the schedule ran out: end the instance (recorded)
                return _purge(inst, inst.state, [], "job.terminated", attempt, SCHEDULE_ENDED)
            successor = _next(
                inst, now, due_at=nxt, scheduled_for=nxt, anchor=anchor, reason=None,
                run_count=run_count, attempt=1, last_error=_error_text(error),
            )  # fmt: skip
            return Decision(successor)

        return _failure(
            job, inst, error, env, records=records, attempt=attempt, duration=duration,
            handled=lambda ctx: after_success(ctx, [], after_error=True), fresh_ctx=context,
            on_skip=skip, run_count=run_count, scheduled_for=due, anchor=anchor, reason=None,
        )  # fmt: skip

    if isinstance(timed_out, TimedOut):
        return _fail(TimeoutError(f"step stopped after {timed_out.seconds:g} s"), [], None)
    ctx = context()
    started = env.timer()
    _, error = _call(job.execute, ctx)
    duration = env.timer() - started
    if error is not None:
        return _fail(error, [], duration)
    return after_success(ctx, [_record("job.executed", attempt, duration, run_count=run_count)])


# -- Debounce -------------------------------------------------------------------------------


def _debounce(job: Debounce, inst: Instance | None, msg: Message, env: Env) -> Decision:
    now = env.now
    if isinstance(msg, Add):
        return _fold(job, inst, env, msg)
    if inst is None:
        if isinstance(msg, Flush):
            return Decision(None, changed=False, flush_reason="empty")
        return _nothing()
    if isinstance(msg, Flush):
        return _fold(job, inst, env, None, flush="manual")
    if isinstance(msg, _ALARM_OR_TIMEOUT):
        if _stale(msg, inst) or not is_due(inst, now):
            return _nothing()
        if isinstance(msg, TimedOut):
            return _fold(job, inst, env, None, flush=inst.reason or "flush_after", timed_out=msg)
        reason = inst.reason
        if reason is None and inst.attempt == 1:
            # A window alarm, or a wake-up to fold events queued behind a running flush.
            return _fold(job, inst, env, None, flush="flush_after?")
        return _fold(job, inst, env, None, flush=reason or "flush_after")
    raise InvalidStateError(f"{inst.instance_id}: a debounce job does not take {msg!r}")


def _clear(inst: Instance | None, env: Env) -> Decision:
    """Discard a Debounce batch (and its queued events) without running execute."""
    if inst is None:
        return _nothing()
    queued = len(env.queued)
    decision = _purge(
        inst, inst.state, [], "debounce.cleared", inst.attempt, "cleared",
    )  # fmt: skip
    decision.consumed = env.queued[-1].seq if env.queued else 0
    decision.event_count = inst.event_count + queued
    decision.terminated = False
    return decision


def flush_time(job: Debounce, started_at: float, last_event_at: float) -> float:
    """When a batch flushes: ``flush_after`` after its first event, or (``trailing``) after its
    last event, capped by ``max_wait`` from the first."""
    if not job.trailing:
        return started_at + job.flush_after
    due = last_event_at + job.flush_after
    if job.max_wait is not None:
        due = min(due, started_at + job.max_wait)
    return due


def _fold(
    job: Debounce,
    inst: Instance | None,
    env: Env,
    add: Add | None,
    *,
    flush: str | None = None,
    timed_out: TimedOut | None = None,
) -> Decision:
    """Fold queued events (and the added one) into the batch; then maybe flush it.

    ``flush``: ``"manual"``, a retry's reason, ``"flush_after"``; ``"flush_after?"`` flushes only
    when the window is over (an alarm that may have been a fold-only wake-up).
    """
    now = env.now
    created = inst is None
    if inst is None:
        inst = Instance(
            env.instance_id, "debounce", env.job_name, env.user_id, "debouncing", None, None,
            None, None, None, 0, 1, 0, now, None, None, env.base_step, now,
        )  # fmt: skip
    codec = env.state_codec
    event_codec = env.event_codec
    assert event_codec is not None
    count = inst.event_count
    started_at = inst.started_at
    window = inst.scheduled_for
    value: Any = None
    touched = False
    records: list[Record] = []
    step_no = inst.step + 1
    reducer = job.on_event

    # (event, added_at, seq): queued events (seq > 0, still encoded) first, then the added one
    items: list[tuple[Any, float, int]] = [(q.event, q.added_at, q.seq) for q in env.queued]
    if add is not None:
        items.append((add.event, now, 0))
    consumed = 0
    requeue: list[tuple[Any, float, int]] = []
    cap = job.max_events
    for index, (item, added_at, seq) in enumerate(items):
        if cap is not None and count >= cap:
            # A batch never exceeds max_events: the rest waits for the next batch (the added
            # event goes to the queue, folded by the next step like any queued event).
            requeue = items[index:]
            break
        encoded = seq > 0
        event = item
        if encoded:
            try:
                event = event_codec.decode(item, f"queued event of {inst.instance_id}")
            except Exception as exc:  # an old event that no longer fits its type
                return _fold_failed(job, inst, env, exc, records, add, flush)
        if reducer is None:
            value = event
        else:
            args = (inst, step_no, codec, event, count, value if touched else _KEEP)
            reduced, error = _call(reducer, _event_ctx(*args))
            if error is not None:
                if encoded:
                    return _fold_failed(job, inst, env, error, records, add, flush)
                if job.on_error is None:
                    return Decision(None, changed=False, raise_error=error)
                # on_error handles the reducer's error in the call: the event is dropped and
                # what on_error leaves in ctx.state commits.
                handler_ctx = _event_ctx(*args)
                _, handler_error = _call(job.on_error, error, handler_ctx)
                if handler_error is not None:
                    return Decision(None, changed=False, raise_error=handler_error)
                records.append(_record("job.failed", 1, None, error, handler="on_event"))
                if handler_ctx.touched() and count > 0:
                    value = handler_ctx.state
                continue
            value = reduced
        if count == 0:
            started_at = added_at
            records.append(_record("debounce.started", 1))
        touched = True
        count += 1
        consumed = max(consumed, seq)
        assert started_at is not None
        window = flush_time(job, started_at, added_at)

    state = inst.state
    kept_added = add is not None and value is add.event and value is not None
    if touched and kept_added and reducer is None and codec is event_codec:
        # The default reducer kept the added event as the state, untouched by user code: its
        # text, encoded and checked by the caller, is what encoding it again would give.
        state = add.text  # type: ignore[union-attr]
    elif touched:
        try:
            state = None if value is None else codec.encode(value, f"state of {inst.instance_id}")
        except Exception as exc:  # the reducer's result does not fit the state type
            if add is not None:
                return Decision(None, changed=False, raise_error=exc)
            return _fold_failed(job, inst, env, exc, records, add, flush)
    if not requeue and env.queued:
        consumed = env.queued[-1].seq  # including events on_error dropped
    folded = _next(inst, now, state=state, event_count=count, started_at=started_at,
                   scheduled_for=window)  # fmt: skip

    if count == 0:
        # Nothing to flush (e.g. an empty wake-up, or a manual flush of an empty batch).
        if created:
            return Decision(None, changed=False, flush_reason="empty")
        return Decision(None, records=[], consumed=consumed, flush_reason="empty")
    if flush == "flush_after?":
        flush = "flush_after" if window is not None and window <= now else None
    if flush is None and job.max_events is not None and count >= job.max_events:
        flush = "max_events"
    if flush is None or (folded.status == "failed" and flush != "manual"):
        due = folded.due_at if folded.attempt > 1 and folded.due_at is not None else window
        if folded.reason == "manual" and folded.due_at is not None and due is not None:
            due = min(due, folded.due_at)  # a flush the CLI requested stays due now
        if folded.status == "failed":
            due = None
        successor = folded._replace(due_at=due)
        decision = Decision(
            successor, records=records, consumed=consumed, event_count=count, created=created
        )
    else:
        decision = _flush(job, folded, env, flush, records, timed_out)
        decision.consumed = consumed
        decision.created = created
        decision.event_count = count
    if requeue:
        decision.requeued = len(requeue)
        decision.next_window = flush_time(job, requeue[0][1], requeue[-1][1])
        if add is not None and requeue[-1][2] == 0:
            decision.requeue = add.text
    return decision


_KEEP: Any = object()


def _event_ctx(
    inst: Instance, step_no: int, codec: TypeCodec, event: Any, count: int, value: Any
) -> DebounceEventContext[Any]:
    """The reducer's context: the batch so far (``None`` for the first event of a batch).

    ``value`` is the state folded so far in this step, or ``_KEEP`` for the stored one.
    """
    raw = None if count == 0 else inst.state
    ctx: DebounceEventContext[Any] = DebounceEventContext(
        inst.instance_id, inst.job, inst.user_id, step_no, codec, raw,
        event=event, event_count=count + 1,
    )  # fmt: skip
    if count > 0 and value is not _KEEP:
        ctx.state = value
    return ctx


def _fold_failed(
    job: Debounce, inst: Instance, env: Env, error: BaseException, records: list[Record],
    add: Add | None = None, flush: str | None = None,
) -> Decision:  # fmt: skip
    """A reducer failed on a queued event: the step fails, the events stay queued.

    An event being added in this call joins the queue behind them (it is acknowledged, so it
    must be stored); a manual flush reports itself as failed, not as empty.
    """
    decision = _fold_failed_step(job, inst, env, error, records)
    if add is not None:
        decision.requeue = add.text
        decision.requeued = len(env.queued) + 1
    if flush is not None and flush != "flush_after?":
        decision.flush_reason = flush
        decision.event_count = inst.event_count + len(env.queued)
    return decision


def _fold_failed_step(
    job: Debounce, inst: Instance, env: Env, error: BaseException, records: list[Record]
) -> Decision:

    def handled(ctx: _StateContext[Any]) -> Decision:
        # on_error dealt with it: drop the queued events it could not fold.
        state, state_error = _commit_state(ctx)
        if state_error is not None:  # on_error's state does not fit: the policy applies
            return Decision(None, changed=False, raise_error=state_error)
        successor = _next(inst, env.now, state=state, due_at=inst.scheduled_for)
        return Decision(successor, consumed=env.queued[-1].seq if env.queued else 0)

    this_step = inst._replace(step=inst.step + 1)  # so on_error's ctx.step_key is this step's
    return _failure(
        job, inst, error, env, records=records, attempt=inst.attempt, duration=None,
        handled=handled, fresh_ctx=lambda: _debounce_ctx(job, this_step, env, "flush_after"),
    )  # fmt: skip


def _debounce_ctx(job: Debounce, inst: Instance, env: Env, reason: str) -> DebounceContext[Any]:
    return DebounceContext(
        inst.instance_id, inst.job, inst.user_id, inst.step, env.state_codec, inst.state,
        event_count=inst.event_count, flush_reason=reason,
        started_at=inst.started_at if inst.started_at is not None else env.now,
        attempt=inst.attempt,
    )  # fmt: skip


def _flush(
    job: Debounce,
    batch: Instance,
    env: Env,
    reason: str,
    records: list[Record],
    timed_out: TimedOut | None,
) -> Decision:
    """Run execute on the folded batch ``batch`` (whose step is already bumped)."""
    attempt = batch.attempt
    base = batch._replace(step=batch.step - 1)  # the failure path bumps it again

    def flushed(
        ctx: _StateContext[Any], recs: list[Record], duration: float | None,
        after_error: bool = False,
    ) -> Decision:  # fmt: skip
        state, error = _commit_state(ctx)
        if error is not None:
            if after_error:  # on_error's state: _failure applies the policy
                return Decision(None, changed=False, raise_error=error)
            return fail(error, None)
        if ctx.terminated:
            return _purge(
                batch, state, recs, "job.terminated", attempt, ctx.terminate_reason,
                flushed=True, flush_reason=reason,
            )  # fmt: skip
        ms = None if duration is None else round(duration * 1000.0, 3)
        data = _with_state({"reason": reason, "event_count": batch.event_count}, state)
        recs.append(("debounce.flushed", attempt, ms, None, data))
        return Decision(None, records=recs, flushed=True, flush_reason=reason)

    def fail(error: BaseException, duration: float | None) -> Decision:
        decision = _failure(
            job, base, error, env, records=records, attempt=attempt, duration=duration,
            handled=lambda ctx: flushed(ctx, [], None, after_error=True),
            fresh_ctx=lambda: _debounce_ctx(job, batch, env, reason),
            state=batch.state, event_count=batch.event_count, started_at=batch.started_at,
            scheduled_for=batch.scheduled_for, reason=reason,
        )  # fmt: skip
        decision.flush_reason = reason
        return decision

    if timed_out is not None:
        return fail(TimeoutError(f"step stopped after {timed_out.seconds:g} s"), None)
    ctx = _debounce_ctx(job, batch, env, reason)
    started = env.timer()
    _, error = _call(job.execute, ctx)
    duration = env.timer() - started
    if error is not None:
        return fail(error, duration)
    return flushed(ctx, records, duration)


# -- Task -----------------------------------------------------------------------------------


def _task(job: Task, inst: Instance | None, msg: Message, env: Env) -> Decision:
    now = env.now
    if isinstance(msg, Send):
        return _task_send(job, inst, msg, env)
    if inst is None:
        return _nothing()
    if isinstance(msg, Trigger):
        return _task_execute(job, inst, env, attempt=1, timed_out=None)
    if isinstance(msg, _ALARM_OR_TIMEOUT):
        if _stale(msg, inst) or not is_due(inst, now):
            return _nothing()
        attempt = 1 if inst.reason == "trigger" else inst.attempt
        timed_out = msg if isinstance(msg, TimedOut) else None
        return _task_execute(job, inst, env, attempt=attempt, timed_out=timed_out)
    raise InvalidStateError(f"{inst.instance_id}: a task job does not take {msg!r}")


def _task_ctx(
    inst: Instance, env: Env, *, due_at: float | None, event_count: int, execute_count: int,
    first: bool, attempt: int,
) -> TaskContext[Any]:  # fmt: skip
    return TaskContext(
        inst.instance_id, inst.job, inst.user_id, inst.step + 1, env.state_codec, inst.state,
        now=env.now, due_at=due_at, event_count=event_count, execute_count=execute_count,
        created_at=inst.created_at, is_first_event=first, attempt=attempt,
    )  # fmt: skip


def _task_finish(
    job: Task,
    inst: Instance,
    ctx: TaskContext[Any],
    env: Env,
    records: list[Record],
    *,
    attempt: int,
    base_due: float | None,
    after_error: bool = False,
    run_idle: bool = True,
    **changes: Any,
) -> Decision:
    """Commit a task step whose handlers succeeded; run on_idle if it leaves no alarm.

    ``base_due`` is the alarm as the step found it (for ``on_error``); ``after_error`` says
    ``on_error`` already ran in this step, so a further error is not handed to it again.
    """

    def failed(error: BaseException, duration: float | None) -> Decision:
        if after_error:
            return Decision(None, changed=False, raise_error=error)
        # on_idle (or the state it left) failed: on_error handles it, on_idle is not rerun.
        return _task_error(job, inst, error, env, records, attempt, duration, changes,
                           due_at=base_due, run_idle=False)  # fmt: skip

    if run_idle and ctx.due_at is None and not ctx.terminated and job.on_idle is not None:
        started = env.timer()
        _, error = _call(job.on_idle, ctx)
        if error is not None:
            return failed(error, env.timer() - started)
        records.append(_record("task.idle", attempt, env.timer() - started))
    state, error = _commit_state(ctx)
    if error is not None:
        return failed(error, None)
    if ctx.terminated:
        dead = inst._replace(**changes)
        return _purge(dead, state, records, "job.terminated", attempt, ctx.terminate_reason)
    due = ctx.due_at
    if due is not None and due != inst.due_at:
        records.append(_record("task.scheduled", attempt, scheduled_at=due))
    successor = _next(
        inst, env.now, state=state, due_at=due, scheduled_for=due,
        status="active" if due is not None else "idle", attempt=1, reason=None, **changes,
    )  # fmt: skip
    return Decision(successor, records=records)


def _task_error(
    job: Task,
    inst: Instance,
    error: BaseException,
    env: Env,
    records: list[Record],
    attempt: int,
    duration: float | None,
    changes: dict[str, Any],
    *,
    due_at: float | None,
    run_idle: bool = True,
) -> Decision:
    """An error from on_event/on_idle (no retry: these are not alarm runs): on_error or policy.

    The failed handler chain changes nothing: ``on_error`` sees the committed state (and the
    alarm as the step found it, ``due_at``). After it, ``on_idle`` runs as after any step that
    leaves no alarm (unless ``on_idle`` is what failed); an error after ``on_error`` is not
    handed to it again.
    """
    records.append(_record("job.failed", attempt, duration, error))
    if job.on_error is not None:
        ctx = _task_ctx(
            inst, env, due_at=due_at, event_count=changes.get("event_count", inst.event_count),
            execute_count=changes.get("run_count", inst.run_count), first=False, attempt=attempt,
        )  # fmt: skip
        _, handler_error = _call(job.on_error, error, ctx)
        if handler_error is None:
            decision = _task_finish(job, inst, ctx, env, records, attempt=attempt,
                                    base_due=due_at, after_error=True, run_idle=run_idle,
                                    **changes)  # fmt: skip
            decision.error = _error_text(error)
            return decision
        error = handler_error
    return Decision(None, changed=False, raise_error=error)


def _task_send(job: Task, inst: Instance | None, msg: Send, env: Env) -> Decision:
    now = env.now
    created = inst is None
    if inst is None:
        inst = Instance(
            env.instance_id, "task", env.job_name, env.user_id, "idle", None, None, None, None,
            None, 0, 1, 0, now, None, None, env.base_step, now,
        )  # fmt: skip
    # A parked task is resumed by an event: _task_finish writes attempt 1 and a live status.
    changes: dict[str, Any] = {"event_count": inst.event_count + 1}
    ctx = _task_ctx(
        inst, env, due_at=inst.due_at, event_count=inst.event_count + 1,
        execute_count=inst.run_count, first=created, attempt=inst.attempt,
    )  # fmt: skip
    started = env.timer()
    _, error = _call(job.on_event, msg.event, ctx)
    duration = env.timer() - started
    records: list[Record] = [_record("job.started", 1)] if created else []
    if error is not None:
        decision = _task_error(job, inst, error, env, records, inst.attempt, duration, changes,
                               due_at=inst.due_at)  # fmt: skip
    else:
        records.append(_record("task.event", inst.attempt, duration))
        decision = _task_finish(
            job, inst, ctx, env, records, attempt=inst.attempt, base_due=inst.due_at, **changes
        )
        if (
            decision.instance is not None
            and inst.status != "failed"
            and inst.attempt > 1
            and ctx.due_at == inst.due_at
        ):
            # an event does not cancel a pending retry
            decision.instance = decision.instance._replace(attempt=inst.attempt,
                                             last_error=inst.last_error)  # fmt: skip
    decision.created = created
    return decision


def _task_execute(
    job: Task, inst: Instance, env: Env, *, attempt: int, timed_out: TimedOut | None
) -> Decision:
    execute_count = inst.run_count + 1 if attempt == 1 else inst.run_count
    changes: dict[str, Any] = {"run_count": execute_count}
    # The alarm is cleared before execute runs: execute sees no schedule unless it sets one.
    ctx = _task_ctx(
        inst, env, due_at=None, event_count=inst.event_count, execute_count=execute_count,
        first=False, attempt=attempt,
    )  # fmt: skip
    records: list[Record] = []

    def handled(handler_ctx: _StateContext[Any]) -> Decision:
        assert isinstance(handler_ctx, TaskContext)
        return _task_finish(
            job, inst, handler_ctx, env, [], attempt=attempt, base_due=None, after_error=True,
            **changes,
        )  # fmt: skip

    def fresh() -> TaskContext[Any]:
        return _task_ctx(
            inst, env, due_at=None, event_count=inst.event_count, execute_count=execute_count,
            first=False, attempt=attempt,
        )  # fmt: skip

    def fail(error: BaseException, duration: float | None) -> Decision:
        # reason=None: a retry is a retry, even of a run the CLI requested ("trigger")
        return _failure(
            job, inst, error, env, records=records, attempt=attempt, duration=duration,
            handled=handled, fresh_ctx=fresh, reason=None, **changes,
        )  # fmt: skip

    if timed_out is not None:
        return fail(TimeoutError(f"step stopped after {timed_out.seconds:g} s"), None)
    started = env.timer()
    _, error = _call(job.execute, ctx)
    duration = env.timer() - started
    if error is not None:
        return fail(error, duration)
    records.append(_record("job.executed", attempt, duration, execute_count=execute_count))
    decision = _task_finish(
        job, inst, ctx, env, records, attempt=attempt, base_due=None, last_error=None, **changes
    )
    if decision.raise_error is not None:
        # on_idle (or the state) failed after execute and on_error did not handle it
        return fail(decision.raise_error, None)
    return decision
