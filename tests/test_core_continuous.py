"""The Continuous steps as a table: (instance before, message, now) -> (status, alarm, records,
outcome). Pure: no files, no locks, no clock."""

from __future__ import annotations

from typing import Any

import pytest
from core_table import RETRY, T0, After, Calls, Case, boom, check, env, row, run

from durajobs import Continuous, every
from durajobs.core import steps
from durajobs.core.decision import (
    Add,
    Alarm,
    Fallback,
    Outcome,
    Request,
    Resume,
    Start,
    Terminate,
    TimedOut,
    Trigger,
)
from durajobs.core.durations import LATEST
from durajobs.core.rows import Status
from durajobs.errors import InstanceNotFoundError, InvalidStateError

RUNNING, FAILED = Status.RUNNING, Status.FAILED
OK, NOTHING, RETRIED = Outcome.OK, Outcome.NOTHING, Outcome.RETRY


def bump(ctx: Any) -> None:
    ctx.state += 1


def end(ctx: Any) -> None:
    ctx.terminate("done")


def tick(execute: Any = bump, **options: Any) -> Continuous:
    return Continuous(state=int, schedule=every(60), execute=execute, **options)


def handled(error: BaseException, ctx: Any) -> None:
    ctx.state = -1


# Due now: the tick of T0 on the grid anchored at T0 - 60.
DUE = row("continuous", RUNNING, due_at=T0, scheduled_for=T0, anchor=T0 - 60, run_count=1)
LAST_TRY = DUE._replace(attempt=3)  # RETRY's attempts are used up when it fails
PARKED = DUE._replace(status="failed", due_at=None, attempt=4, last_error="boom")
LATE = DUE._replace(due_at=T0 - 120, scheduled_for=T0 - 120)  # two ticks missed
NEAR_END = DUE._replace(due_at=LATEST - 30, scheduled_for=LATEST - 30, anchor=LATEST - 90)

CASES = [
    Case("start runs at once", tick(), None, Start("0"), T0,
         After(RUNNING, T0 + 60, ("job.started", "job.executed"), OK)),
    Case("start waits for the first tick", tick(start_immediately=False), None, Start("0"), T0,
         After(RUNNING, T0 + 60, ("job.started",), OK)),
    Case("start of an existing instance", tick(), DUE, Start("0"), T0,
         After(None, None, (), NOTHING)),
    Case("alarm: run, next tick", tick(), DUE, Alarm(), T0,
         After(RUNNING, T0 + 60, ("job.executed",), OK)),
    Case("alarm not due yet", tick(), DUE, Alarm(), T0 - 1, After(None, None, (), NOTHING)),
    Case("alarm of a missing instance", tick(), None, Alarm(), T0,
         After(None, None, (), NOTHING)),
    Case("timeout of a step already past", tick(), DUE, TimedOut(5.0, step=4), T0,
         After(None, None, (), NOTHING)),
    Case("timeout: a failed attempt", tick(retry=RETRY), DUE, TimedOut(5.0, step=5), T0,
         After(RUNNING, T0 + 1, ("job.failed",), RETRIED)),
    Case("failure with attempts left: retry", tick(boom, retry=RETRY), DUE, Alarm(), T0,
         After(RUNNING, T0 + 1, ("job.failed",), RETRIED)),
    Case("failure, retries exhausted: terminate", tick(boom, retry=RETRY), LAST_TRY, Alarm(), T0,
         After(None, None, ("job.failed", "job.retry_exhausted", "job.terminated"),
               Outcome.TERMINATED)),
    Case("failure, retries exhausted: skip", tick(boom, retry=RETRY, on_exhausted="skip"),
         LAST_TRY, Alarm(), T0,
         After(RUNNING, T0 + 60, ("job.failed", "job.retry_exhausted"), Outcome.EXHAUSTED)),
    Case("failure without retry: skip to the next tick", tick(boom), DUE, Alarm(), T0,
         After(RUNNING, T0 + 60, ("job.failed",), Outcome.FAILED)),
    Case("failure without retry: park", tick(boom, on_exhausted="park"), DUE, Alarm(), T0,
         After(FAILED, None, ("job.failed", "job.parked"), Outcome.PARKED)),
    Case("failure handled by on_error", tick(boom, on_error=handled), DUE, Alarm(), T0,
         After(RUNNING, T0 + 60, ("job.failed",), Outcome.FAILED)),
    Case("on_error fails too: the policy", tick(boom, on_error=boom, on_exhausted="park"), DUE,
         Alarm(), T0,
         After(FAILED, None, ("job.failed", "job.failed", "job.parked"), Outcome.PARKED)),
    Case("execute terminates", tick(end), DUE, Alarm(), T0,
         After(None, None, ("job.executed", "job.terminated"), Outcome.TERMINATED)),
    Case("the schedule runs out", tick(), NEAR_END, Alarm(), LATEST - 30,
         After(None, None, ("job.executed", "job.terminated"), Outcome.TERMINATED)),
    Case("catch_up=skip: missed ticks skipped", tick(catch_up="skip"), LATE, Alarm(), T0,
         After(RUNNING, T0 + 60, ("job.skipped",), Outcome.SKIPPED)),
    Case("catch_up=all: the missed ticks run one by one", tick(catch_up="all"), LATE, Alarm(),
         T0, After(RUNNING, T0 - 60, ("job.executed",), OK)),
    Case("catch_up=one: one run for all missed", tick(), LATE, Alarm(), T0,
         After(RUNNING, T0 + 60, ("job.executed",), OK)),
    Case("trigger: run now, the grid restarts", tick(), DUE._replace(due_at=T0 + 30), Trigger(),
         T0 + 10, After(RUNNING, T0 + 70, ("job.executed",), OK)),
    Case("trigger of a parked instance runs it", tick(), PARKED, Trigger(), T0,
         After(RUNNING, T0 + 60, ("job.executed",), OK)),
    Case("alarm of a parked instance: nothing", tick(), PARKED._replace(due_at=T0), Alarm(), T0,
         After(None, None, (), NOTHING)),
    Case("resume a parked instance", tick(), PARKED, Resume(), T0,
         After(RUNNING, T0, ("job.resumed",), OK)),
    Case("request a run for the daemon", tick(), DUE._replace(due_at=T0 + 30),
         Request("trigger"), T0, After(RUNNING, T0, ("job.requested",), OK)),
    Case("the requested run restarts the grid", tick(), DUE._replace(reason="trigger"), Alarm(),
         T0 + 10, After(RUNNING, T0 + 70, ("job.executed",), OK)),
    Case("terminate", tick(), DUE, Terminate("bye"), T0,
         After(None, None, ("job.terminated",), Outcome.TERMINATED)),
    Case("terminate a parked instance", tick(), PARKED, Terminate(None), T0,
         After(None, None, ("job.terminated",), Outcome.TERMINATED)),
    Case("terminate a missing instance", tick(), None, Terminate(None), T0,
         After(None, None, (), NOTHING)),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.label for case in CASES])
def test_continuous_transition(case: Case) -> None:
    check(case)


def test_a_run_counts_and_moves_the_anchor() -> None:
    ran = run(tick(), DUE, Alarm(), T0).instance
    assert ran is not None
    assert (ran.state, ran.run_count, ran.anchor, ran.scheduled_for) == ("2", 2, T0 - 60, T0 + 60)
    retried = run(tick(boom, retry=RETRY), DUE, Alarm(), T0)
    assert retried.retry_scheduled
    assert retried.error is not None
    assert "boom" in retried.error
    assert retried.instance is not None
    assert retried.instance.attempt == 2


REFUSED = [
    ("an event", DUE, Add(1, "1"), InvalidStateError, "does not take"),
    ("resume of a live instance", DUE, Resume(), InvalidStateError, "not 'failed'"),
    ("resume of a missing instance", None, Resume(), InstanceNotFoundError, "no such"),
]


@pytest.mark.parametrize(("label", "before", "msg", "error", "text"), REFUSED)
def test_an_illegal_message_raises_and_runs_nothing(
    label: str, before: Any, msg: Any, error: type[Exception], text: str
) -> None:
    calls = Calls()
    with pytest.raises(error, match=text):
        run(tick(calls), before, msg, T0)
    assert calls.count == 0


def test_the_fallbacks_when_durajobs_cannot_finish_a_step() -> None:
    job = tick(retry=RETRY)
    retry = steps.finishing_failure(job, DUE, RuntimeError("no"), env(job, T0))
    assert (retry.outcome, retry.fallback, retry.instance.due_at) == (  # type: ignore[union-attr]
        Outcome.RETRY, Fallback.FAILURE, T0 + 1,
    )  # fmt: skip
    park = steps.finishing_failure(job, LAST_TRY, RuntimeError("no"), env(job, T0))
    assert (park.outcome, park.fallback) == (Outcome.PARKED, Fallback.FAILURE)
    last = steps.park_last_resort(DUE, env(job, T0))
    assert (last.outcome, last.fallback, [r[0] for r in last.records]) == (
        Outcome.PARKED, Fallback.LAST_RESORT, ["job.parked"],
    )  # fmt: skip
    assert last.instance is not None
    assert last.instance.status == FAILED
