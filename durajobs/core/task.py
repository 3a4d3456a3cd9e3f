"""The Task kind's steps: events handled one by one; ``execute`` when the task's alarm is due.

Theory of operation
-------------------
``send`` creates the instance with its first event or hands the event to ``on_event``, which
may change the state and set or cancel the alarm (``ctx.schedule``); status is ``active`` while
an alarm is set, ``idle`` when none is. A due alarm (or ``trigger``) clears the alarm and runs
``execute``, which may set the next one. A step that leaves no alarm runs ``on_idle``. A failed
``execute`` takes the shared failure path (``decision._failure``): retry alarms, then
``on_error``, then terminate or park. ``on_event`` and ``on_idle`` are not retried: their error
goes to ``on_error``, else raises to the caller and changes nothing. An event resumes a parked
task; it does not cancel a pending retry.
"""

from __future__ import annotations

from typing import Any

from .contexts import TaskContext, _StateContext
from .decision import (
    NOTHING,
    Alarm,
    Decision,
    Env,
    Outcome,
    Send,
    TimedOut,
    Trigger,
    _call,
    _commit_state,
    _error_text,
    _failure,
    _next,
    _purge,
    _record,
    is_due,
    refused,
    stale,
)
from .definitions import Task
from .rows import Instance, Record, Status


def send(job: Task, inst: Instance | None, msg: Send, env: Env) -> Decision:
    """Hand the event to ``on_event`` (a new instance for the first)."""
    created = inst is None
    if inst is None:
        inst = Instance(
            env.instance_id, "task", env.job_name, env.user_id, Status.IDLE, None, None, None,
            None, None, 0, 1, 0, env.now, None, None, env.base_step, env.now,
        )  # fmt: skip
    # A parked task is resumed by an event: _finish writes attempt 1 and a live status.
    changes: dict[str, Any] = {"event_count": inst.event_count + 1}
    ctx = _context(
        inst, env, due_at=inst.due_at, event_count=inst.event_count + 1,
        execute_count=inst.run_count, first=created, attempt=inst.attempt,
    )  # fmt: skip
    started = env.timer()
    _, error = _call(job.on_event, msg.event, ctx)
    duration = env.timer() - started
    records: list[Record] = [_record("job.started", 1)] if created else []
    if error is not None:
        decision = _handler_error(job, inst, error, env, records, inst.attempt, duration, changes,
                                  due_at=inst.due_at)  # fmt: skip
    else:
        records.append(_record("task.event", inst.attempt, duration))
        decision = _finish(
            job, inst, ctx, env, records, attempt=inst.attempt, base_due=inst.due_at, **changes
        )
        successor = decision.instance
        if (
            successor is not None
            and inst.status != Status.FAILED
            and inst.attempt > 1
            and ctx.due_at == inst.due_at
        ):
            # an event does not cancel a pending retry
            successor = successor._replace(attempt=inst.attempt, last_error=inst.last_error)
            decision = decision._replace(instance=successor)
    return decision._replace(created=True) if created else decision


def trigger(job: Task, inst: Instance, msg: Trigger, env: Env) -> Decision:
    """Run ``execute`` now, with fresh attempts."""
    return _execute(job, inst, env, attempt=1, timed_out=None)


def alarm(job: Task, inst: Instance, msg: Alarm | TimedOut, env: Env) -> Decision:
    """The alarm is due (or the daemon stopped its run: ``TimedOut``)."""
    if stale(msg, inst) or not is_due(inst, env.now):
        return NOTHING
    attempt = 1 if inst.reason == "trigger" else inst.attempt
    timed_out = msg if isinstance(msg, TimedOut) else None
    return _execute(job, inst, env, attempt=attempt, timed_out=timed_out)


def _context(
    inst: Instance, env: Env, *, due_at: float | None, event_count: int, execute_count: int,
    first: bool, attempt: int,
) -> TaskContext[Any]:  # fmt: skip
    return TaskContext(
        inst.instance_id, inst.job, inst.user_id, inst.step + 1, env.state_codec, inst.state,
        now=env.now, due_at=due_at, event_count=event_count, execute_count=execute_count,
        created_at=inst.created_at, is_first_event=first, attempt=attempt,
    )  # fmt: skip


def _finish(
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
            return refused(error)
        # on_idle (or the state it left) failed: on_error handles it, on_idle is not rerun.
        return _handler_error(job, inst, error, env, records, attempt, duration, changes,
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
        status=Status.ACTIVE if due is not None else Status.IDLE, attempt=1, reason=None,
        **changes,
    )  # fmt: skip
    return Decision(successor, records=records)


def _handler_error(
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
        ctx = _context(
            inst, env, due_at=due_at, event_count=changes.get("event_count", inst.event_count),
            execute_count=changes.get("run_count", inst.run_count), first=False, attempt=attempt,
        )  # fmt: skip
        _, handler_error = _call(job.on_error, error, ctx)
        if handler_error is None:
            decision = _finish(job, inst, ctx, env, records, attempt=attempt, base_due=due_at,
                               after_error=True, run_idle=run_idle, **changes)  # fmt: skip
            outcome = Outcome.FAILED if decision.outcome is Outcome.OK else decision.outcome
            return decision._replace(outcome=outcome, error=_error_text(error))
        error = handler_error
    return refused(error)


def _execute(
    job: Task, inst: Instance, env: Env, *, attempt: int, timed_out: TimedOut | None
) -> Decision:
    execute_count = inst.run_count + 1 if attempt == 1 else inst.run_count
    changes: dict[str, Any] = {"run_count": execute_count}
    # The alarm is cleared before execute runs: execute sees no schedule unless it sets one.
    ctx = _context(
        inst, env, due_at=None, event_count=inst.event_count, execute_count=execute_count,
        first=False, attempt=attempt,
    )  # fmt: skip
    records: list[Record] = []

    def handled(handler_ctx: _StateContext[Any]) -> Decision:
        assert isinstance(handler_ctx, TaskContext)
        return _finish(
            job, inst, handler_ctx, env, [], attempt=attempt, base_due=None, after_error=True,
            **changes,
        )  # fmt: skip

    def fresh() -> TaskContext[Any]:
        return _context(
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
    decision = _finish(
        job, inst, ctx, env, records, attempt=attempt, base_due=None, last_error=None, **changes
    )
    if decision.raise_error is not None:
        # on_idle (or the state) failed after execute and on_error did not handle it
        return fail(decision.raise_error, None)
    return decision
