"""The step: one message to one instance, dispatched by the table of what each kind takes.

Theory of operation
-------------------
Every client call and every due alarm becomes one *step* on one instance::

    step(job, instance, message, env) -> Decision

``instance`` is the committed row (or ``None``), ``message`` says what happened (an alarm, a
``trigger``, an ``add``, ...), and ``env`` carries the time, a random number for jitter and a
timer: the core reads no clock and does no I/O. The step calls the user's handlers, turns
whatever they raise into values, and returns a ``Decision``: the instance's next row (or a
purge), the history records, and its ``Outcome``. The engine (the shell) claims the instance
before the step and commits the decision after it, outside any handler; a decision that is
not committed changes nothing, so a crash anywhere means the step runs again.

What each kind takes in each status is data: ``TRANSITIONS[kind][status][message type]`` is
the transition to run (``None`` stands for "no instance yet"). A message missing from the row
changes nothing: on a missing instance it is ignored (``Resume`` raises
``InstanceNotFoundError``), on an existing one it raises ``InvalidStateError``. A row in a
status its kind's table does not know takes only the operators' actions. The kinds'
transitions live in ``continuous``, ``debounce`` and ``task``; the operators' actions
(``Terminate``, ``Request``, ``Resume``), which run no handler, are here.

Rows are never mutated: a step builds the successor with ``_next``, which bumps ``step``, the
store's fencing token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from durajobs.errors import InstanceNotFoundError, InvalidStateError

from . import continuous, debounce, task
from .continuous import CATCH_UP_ALL_LIMIT
from .debounce import flush_time
from .decision import (
    CREATING,
    NOTHING,
    RESOLUTION,
    Add,
    Alarm,
    Clear,
    Decision,
    Env,
    Fallback,
    Flush,
    Message,
    Outcome,
    Request,
    Resume,
    Send,
    Start,
    Terminate,
    TimedOut,
    Trigger,
    _next,
    _purge,
    _record,
    finishing_failure,
    ignore,
    is_due,
    park_last_resort,
    safe_text,
)
from .definitions import Definition
from .rows import Instance, Status

__all__ = [
    "CATCH_UP_ALL_LIMIT", "CREATING", "RESOLUTION", "TRANSITIONS", "Add", "Alarm", "Clear",
    "Decision", "Env", "Fallback", "Flush", "Instance", "Message", "Outcome", "Request", "Resume",
    "Send", "Start", "Terminate", "TimedOut", "Trigger", "finishing_failure", "flush_time",
    "is_due", "park_last_resort", "safe_text", "step",
]  # fmt: skip

_HANDLER_FREE = (Terminate, Resume, Request, Clear)  # operators' actions: no user code runs


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


def _step(job: Definition, inst: Instance | None, msg: Message, env: Env) -> Decision:
    row = TRANSITIONS.get(job.kind, {}).get(None if inst is None else inst.status)
    if row is None:  # a status (or kind) the table does not know: only the operators' actions
        row = {} if inst is None else _STRAY.get(job.kind, _ANY)
    transition = row.get(type(msg))
    if transition is not None:
        return transition(job, inst, msg, env)
    if inst is None:
        if isinstance(msg, Resume):
            raise InstanceNotFoundError("no such instance to resume")
        return NOTHING
    if isinstance(msg, Resume):
        raise InvalidStateError(
            f"{inst.instance_id} is '{inst.status}', not 'failed': only a parked instance "
            "can be resumed"
        )
    raise InvalidStateError(f"{inst.instance_id}: a {job.kind} job does not take {msg!r}")


# -- the operators' actions (no handler runs: the CLI has no job definitions) ----------------


def _terminate(job: Any, inst: Instance, msg: Terminate, env: Env) -> Decision:
    consumed = env.queued[-1].seq if env.queued else 0
    return _purge(inst, inst.state, [], "job.terminated", inst.attempt, msg.reason,
                  consumed=consumed)  # fmt: skip


_LIVE = {"continuous": Status.RUNNING, "debounce": Status.DEBOUNCING, "task": Status.ACTIVE}


def _resume(job: Any, inst: Instance, msg: Resume, env: Env) -> Decision:
    # The error that parked it stays in the history; kept on the row it would read as a
    # failing instance (running, attempt 1, an error) before the resumed run has run.
    successor = _next(
        inst, env.now, status=_LIVE[job.kind], due_at=env.now, attempt=1, last_error=None
    )
    return Decision(successor, records=[_record("job.resumed", 1)])


def _request(job: Any, inst: Instance, msg: Request, env: Env) -> Decision:
    status = Status.ACTIVE if inst.kind == "task" and inst.status != Status.FAILED else inst.status
    # A requested run replaces a pending retry (attempt > 1): its error goes with it (the
    # history keeps it), or the row would read as failing. A failing instance stays so until
    # a run succeeds.
    error = inst.last_error if inst.attempt == 1 else None
    successor = _next(
        inst, env.now, status=status, due_at=env.now, reason=msg.what, attempt=1, last_error=error
    )
    return Decision(successor, records=[_record("job.requested", inst.attempt, what=msg.what)])


# -- what each kind takes in each status ----------------------------------------------------

Transition = Callable[[Any, Any, Any, Env], Decision]
Row = dict[type, Transition]

_ANY: Row = {Terminate: _terminate, Request: _request}  # in every status of every kind
_PARKED: Row = {Resume: _resume, Alarm: ignore, TimedOut: ignore}  # no alarm runs until resumed
_CONTINUOUS: Row = {
    **_ANY, Start: ignore, Trigger: continuous.trigger, Alarm: continuous.alarm,
    TimedOut: continuous.alarm,
}  # fmt: skip
_DEBOUNCE: Row = {
    **_ANY, Add: debounce.add, Flush: debounce.flush, Clear: debounce.clear,
    Alarm: debounce.alarm, TimedOut: debounce.alarm,
}  # fmt: skip
_TASK: Row = {
    **_ANY, Send: task.send, Trigger: task.trigger, Alarm: task.alarm, TimedOut: task.alarm,
}  # fmt: skip

TRANSITIONS: dict[str, dict[str | None, Row]] = {
    "continuous": {
        None: {Start: continuous.start},
        Status.RUNNING: _CONTINUOUS,
        Status.FAILED: {**_CONTINUOUS, **_PARKED},
    },
    "debounce": {
        None: {Add: debounce.add, Flush: debounce.flush},
        Status.DEBOUNCING: _DEBOUNCE,
        Status.FAILED: {**_DEBOUNCE, **_PARKED},
    },
    "task": {
        None: {Send: task.send},
        Status.ACTIVE: _TASK,
        Status.IDLE: _TASK,
        Status.FAILED: {**_TASK, **_PARKED},
    },
}
"""``TRANSITIONS[kind][status][type(message)]``: the transition a message runs (data, h11's
way). ``None`` is the status of an instance that does not exist yet."""

# A row in a status its kind's table does not know (written by another version, or by hand)
# still takes the operators' handler-free actions: ``durajobs terminate`` always works.
_STRAY: dict[str, Row] = {"debounce": {**_ANY, Clear: debounce.clear}}
