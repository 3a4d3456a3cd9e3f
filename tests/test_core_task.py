"""The Task steps as a table: (instance before, message, now) -> (status, alarm, records,
outcome). Pure: no files, no locks, no clock."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from core_table import RETRY, T0, After, Calls, Case, boom, check, row, run

from durajobs import Task
from durajobs.core import steps
from durajobs.core.decision import (
    Add,
    Alarm,
    Flush,
    Outcome,
    Request,
    Resume,
    Send,
    Terminate,
    TimedOut,
    Trigger,
)
from durajobs.core.rows import Status
from durajobs.errors import InstanceNotFoundError, InvalidStateError

ACTIVE, IDLE, FAILED = Status.ACTIVE, Status.IDLE, Status.FAILED
OK, NOTHING = Outcome.OK, Outcome.NOTHING


def on_event(event: int, ctx: Any) -> None:
    """Add the event to the state; an event of 10 or more also sets the alarm that far ahead."""
    if event < 0:
        raise ValueError("negative")
    ctx.state = (ctx.state or 0) + event
    if event >= 10:
        ctx.schedule(timedelta(seconds=event))


def end(ctx: Any) -> None:
    ctx.terminate("done")


def handled(error: BaseException, ctx: Any) -> None:
    pass


def order(execute: Any = None, **options: Any) -> Task:
    return Task(state=int, event=int, on_event=on_event, execute=execute or Calls(), **options)


DUE = row("task", ACTIVE, due_at=T0, scheduled_for=T0, event_count=1)
WAITING = DUE._replace(due_at=T0 + 30, scheduled_for=T0 + 30)
RESTING = row("task", IDLE, event_count=1, run_count=1)
LAST_TRY = DUE._replace(attempt=3)
PARKED = DUE._replace(status="failed", due_at=None, attempt=2, last_error="boom")

CASES = [
    Case("the first event creates the task", order(), None, Send(1), T0,
         After(IDLE, None, ("job.started", "task.event"), OK)),
    Case("the first event sets an alarm", order(), None, Send(60), T0,
         After(ACTIVE, T0 + 60, ("job.started", "task.event", "task.scheduled"), OK)),
    Case("an event keeps the alarm", order(), WAITING, Send(1), T0,
         After(ACTIVE, T0 + 30, ("task.event",), OK)),
    Case("an event leaving no alarm runs on_idle", order(on_idle=Calls()), RESTING, Send(1), T0,
         After(IDLE, None, ("task.event", "task.idle"), OK)),
    Case("on_event fails: refused", order(), RESTING, Send(-1), T0,
         After(None, None, (), Outcome.REFUSED)),
    Case("on_event fails, on_error handles it", order(on_error=handled), RESTING, Send(-1), T0,
         After(IDLE, None, ("job.failed",), Outcome.FAILED)),
    Case("on_idle fails: refused", order(on_idle=boom), RESTING, Send(1), T0,
         After(None, None, (), Outcome.REFUSED)),
    Case("alarm: execute", order(), DUE, Alarm(), T0,
         After(IDLE, None, ("job.executed",), OK)),
    Case("alarm not due yet", order(), WAITING, Alarm(), T0, After(None, None, (), NOTHING)),
    Case("alarm of an idle task", order(), RESTING, Alarm(), T0,
         After(None, None, (), NOTHING)),
    Case("alarm of a missing task", order(), None, Alarm(), T0,
         After(None, None, (), NOTHING)),
    Case("timeout of a step already past", order(), DUE, TimedOut(5.0, step=4), T0,
         After(None, None, (), NOTHING)),
    Case("timeout: a failed attempt", order(retry=RETRY), DUE, TimedOut(5.0, step=5), T0,
         After(ACTIVE, T0 + 1, ("job.failed",), Outcome.RETRY)),
    Case("execute fails, attempts left: retry", order(boom, retry=RETRY), DUE, Alarm(), T0,
         After(ACTIVE, T0 + 1, ("job.failed",), Outcome.RETRY)),
    Case("execute fails, retries exhausted: terminate", order(boom, retry=RETRY), LAST_TRY,
         Alarm(), T0,
         After(None, None, ("job.failed", "job.retry_exhausted", "job.terminated"),
               Outcome.TERMINATED)),
    Case("execute fails without retry: park", order(boom), DUE, Alarm(), T0,
         After(FAILED, None, ("job.failed", "job.parked"), Outcome.PARKED)),
    Case("execute fails, on_error handles it", order(boom, on_error=handled), DUE, Alarm(), T0,
         After(IDLE, None, ("job.failed",), Outcome.FAILED)),
    Case("execute fails, retries exhausted, on_error handles it",
         order(boom, retry=RETRY, on_error=handled), LAST_TRY, Alarm(), T0,
         After(IDLE, None, ("job.failed", "job.retry_exhausted"), Outcome.EXHAUSTED)),
    Case("execute terminates", order(end), DUE, Alarm(), T0,
         After(None, None, ("job.executed", "job.terminated"), Outcome.TERMINATED)),
    Case("trigger: execute now", order(), RESTING, Trigger(), T0,
         After(IDLE, None, ("job.executed",), OK)),
    Case("trigger of a parked task", order(), PARKED, Trigger(), T0,
         After(IDLE, None, ("job.executed",), OK)),
    Case("an event resumes a parked task", order(), PARKED, Send(1), T0,
         After(IDLE, None, ("task.event",), OK)),
    Case("alarm of a parked task: nothing", order(), PARKED._replace(due_at=T0), Alarm(), T0,
         After(None, None, (), NOTHING)),
    Case("resume a parked task", order(), PARKED, Resume(), T0,
         After(ACTIVE, T0, ("job.resumed",), OK)),
    Case("request a run for the daemon", order(), RESTING, Request("trigger"), T0,
         After(ACTIVE, T0, ("job.requested",), OK)),
    Case("request on a parked task keeps it parked", order(), PARKED, Request("trigger"), T0,
         After(FAILED, T0, ("job.requested",), OK)),
    Case("terminate", order(), WAITING, Terminate("bye"), T0,
         After(None, None, ("job.terminated",), Outcome.TERMINATED)),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.label for case in CASES])
def test_task_transition(case: Case) -> None:
    check(case)


def test_an_event_does_not_cancel_a_pending_retry() -> None:
    retrying = WAITING._replace(attempt=2, last_error="boom")
    after = run(order(), retrying, Send(1), T0).instance
    assert after is not None
    assert (after.attempt, after.last_error) == (2, "boom")


def test_a_refused_event_says_why() -> None:
    decision = run(order(), RESTING, Send(-1), T0)
    assert isinstance(decision.raise_error, ValueError)
    assert not decision.changed


REFUSED = [
    ("an Add", DUE, Add(1, "1"), InvalidStateError, "a task job does not take"),
    ("a Flush", DUE, Flush(), InvalidStateError, "a task job does not take"),
    ("resume of a live task", DUE, Resume(), InvalidStateError, "not 'failed'"),
    ("resume of a missing task", None, Resume(), InstanceNotFoundError, "no such"),
]


@pytest.mark.parametrize(("label", "before", "msg", "error", "text"), REFUSED)
def test_an_illegal_message_raises_and_runs_nothing(
    label: str, before: Any, msg: Any, error: type[Exception], text: str
) -> None:
    execute = Calls()
    with pytest.raises(error, match=text):
        run(order(execute), before, msg, T0)
    assert execute.count == 0


def test_every_status_takes_the_operators_actions_and_only_parked_resumes() -> None:
    for kind, table in steps.TRANSITIONS.items():
        for status, takes in table.items():
            if status is None:
                assert not {Terminate, Resume} & takes.keys(), kind
                continue
            assert {Terminate, Request} <= takes.keys(), (kind, status)
            assert (Resume in takes) is (status == FAILED), (kind, status)
        assert set(table) - {None} == {s for s in Status if s.value in _STATUSES[kind]}


_STATUSES = {
    "continuous": {"running", "failed"},
    "debounce": {"debouncing", "failed"},
    "task": {"active", "idle", "failed"},
}
