"""The Continuous kind's steps: ``execute`` on a schedule, for ever or until the job ends it.

Theory of operation
-------------------
``start`` creates the instance (status ``running``): it runs at once (``start_immediately``)
or sets its alarm at the schedule's first time after now. Each due alarm runs ``execute`` for
the grid time it serves (``scheduled_for``), then sets the alarm at the schedule's next time,
counted from ``anchor``: ``catch_up="latest"`` runs once for all that was missed, ``"all"``
runs each missed tick (up to ``CATCH_UP_ALL_LIMIT``, then coalesces), ``"skip"`` records the
missed ticks as skipped and waits for the next one. ``trigger`` runs now and restarts the
schedule from now. A failed run takes the shared failure path (``decision._failure``): retry
alarms, then ``on_error``, then the ``exhausted`` policy -- terminate, park, or skip to the
next tick. A schedule that runs out ends the instance (``SCHEDULE_ENDED``).
"""

from __future__ import annotations

from typing import Any

from durajobs.errors import SchedulerError

from .contexts import ContinuousContext, _StateContext
from .decision import (
    NOTHING,
    Alarm,
    Decision,
    Env,
    Outcome,
    Start,
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
from .definitions import Continuous
from .rows import Instance, Record, Status
from .schedules import missed_ticks

CATCH_UP_ALL_LIMIT = 100
"""``catch_up="all"`` runs at most this many missed ticks one by one; more are coalesced."""

SCHEDULE_ENDED = "schedule ended"
"""The reason recorded when a Continuous instance ends because its schedule has no next time."""


def start(job: Continuous, inst: None, msg: Start, env: Env) -> Decision:
    """The first step of a new instance."""
    now = env.now
    fresh = Instance(
        env.instance_id, "continuous", env.job_name, env.user_id, Status.RUNNING, msg.state,
        None, None, now, None, 0, 1, 0, now, None, None, env.base_step, now,
    )  # fmt: skip
    started = _record("job.started", 1)
    if job.start_immediately:
        decision = _run(job, fresh, env, due=now, restart=False)
        return decision._replace(records=[started, *decision.records], created=True)
    first = job.schedule.next_after(now, now)
    if first is None:
        raise SchedulerError(f"{env.instance_id}: the schedule has no time after now")
    successor = _next(fresh, now, due_at=first, scheduled_for=first)
    return Decision(successor, records=[started], created=True)


def trigger(job: Continuous, inst: Instance, msg: Trigger, env: Env) -> Decision:
    """Run now; the schedule restarts from now."""
    return _run(job, inst, env, due=env.now, restart=True)


def alarm(job: Continuous, inst: Instance, msg: Alarm | TimedOut, env: Env) -> Decision:
    """The alarm is due (or the daemon stopped its run: ``TimedOut``)."""
    now = env.now
    if stale(msg, inst) or not is_due(inst, now) or inst.due_at is None:
        return NOTHING
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
            return Decision(successor, Outcome.SKIPPED, records)
    return _run(job, inst, env, due=due, restart=False, timed_out=msg)


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
    timed_out: Alarm | TimedOut | None = None,
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
                return refused(error)
            return _fail(error, records, None)
        if ctx.terminated:
            ran = inst._replace(run_count=run_count)  # the record counts this run too
            return _purge(ran, state, records, "job.terminated", attempt, ctx.terminate_reason)
        nxt = _next_due(job, anchor, due, now)
        if nxt is None:  # the schedule ran out: end the instance (recorded)
            return _purge(inst, state, records, "job.terminated", attempt, SCHEDULE_ENDED)
        successor = _next(
            inst, now, status=Status.RUNNING, state=state, due_at=nxt, scheduled_for=nxt,
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
