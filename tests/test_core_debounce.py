"""The Debounce steps as a table: (batch before, message, now) -> (status, alarm, records,
outcome). Pure: no files, no locks, no clock."""

from __future__ import annotations

from typing import Any

import pytest
from core_table import RETRY, T0, After, Calls, Case, boom, check, env, row, run

from durajobs import Debounce
from durajobs.core import steps
from durajobs.core.decision import (
    Add,
    Alarm,
    Clear,
    Flush,
    Outcome,
    Request,
    Resume,
    Terminate,
    TimedOut,
    Trigger,
)
from durajobs.core.rows import Queued, Status
from durajobs.errors import InvalidStateError

DEBOUNCING, FAILED = Status.DEBOUNCING, Status.FAILED
OK, NOTHING = Outcome.OK, Outcome.NOTHING


def total(ctx: Any) -> int:
    if ctx.event < 0:
        raise ValueError("negative")
    return (ctx.state or 0) + ctx.event  # type: ignore[no-any-return]


def handled(error: BaseException, ctx: Any) -> None:
    pass


def batcher(execute: Any = None, **options: Any) -> Debounce:
    options.setdefault("on_event", total)
    return Debounce(event=int, execute=execute or Calls(), flush_after=60, **options)


# One event at T0 - 10: the window closes at T0 + 50.
OPEN = row("debounce", DEBOUNCING, due_at=T0 + 50, scheduled_for=T0 + 50, event_count=1,
           started_at=T0 - 10)  # fmt: skip
OVER = OPEN._replace(due_at=T0, scheduled_for=T0)  # its window is over
EMPTY = row("debounce", DEBOUNCING)  # a batch whose events were all taken by the last flush
RETRYING = OVER._replace(attempt=2, reason="flush_after")
LAST_TRY = OVER._replace(attempt=3, reason="flush_after")
PARKED = OVER._replace(status="failed", due_at=None, attempt=2, last_error="boom")
FULL = PARKED._replace(event_count=2)  # max_events=2: the next event waits for the next batch
WAKE_UP = OPEN._replace(due_at=T0)  # due now to fold the queue, the window still open
QUEUED = (Queued(7, "2", T0 - 5),)

CASES = [
    Case("the first event opens a batch", batcher(), None, Add(1, "1"), T0,
         After(DEBOUNCING, T0 + 60, ("debounce.started",), OK)),
    Case("an event joins the batch", batcher(), OPEN, Add(2, "2"), T0,
         After(DEBOUNCING, T0 + 50, (), OK)),
    Case("trailing: an event pushes the window", batcher(trailing=True, max_wait=600), OPEN,
         Add(2, "2"), T0, After(DEBOUNCING, T0 + 60, (), OK)),
    Case("max_events reached: flush now", batcher(max_events=2), OPEN, Add(2, "2"), T0,
         After(None, None, ("debounce.flushed",), OK)),
    Case("the window is over: flush", batcher(), OVER, Alarm(), T0,
         After(None, None, ("debounce.flushed",), OK)),
    Case("alarm not due yet", batcher(), OPEN, Alarm(), T0, After(None, None, (), NOTHING)),
    Case("timeout of a flush already past", batcher(), OVER, TimedOut(5.0, step=3), T0,
         After(None, None, (), NOTHING)),
    Case("timeout: a failed flush", batcher(retry=RETRY), OVER, TimedOut(5.0, step=5), T0,
         After(DEBOUNCING, T0 + 1, ("job.failed",), Outcome.RETRY)),
    Case("manual flush", batcher(), OPEN, Flush(), T0,
         After(None, None, ("debounce.flushed",), OK)),
    Case("manual flush of no batch", batcher(), None, Flush(), T0,
         After(None, None, (), NOTHING)),
    Case("manual flush of an empty batch: purged", batcher(), EMPTY, Flush(), T0,
         After(None, None, (), OK)),
    Case("failed flush, attempts left: retry", batcher(boom, retry=RETRY), OVER, Alarm(), T0,
         After(DEBOUNCING, T0 + 1, ("job.failed",), Outcome.RETRY)),
    Case("the retry flushes", batcher(retry=RETRY), RETRYING, Alarm(), T0,
         After(None, None, ("debounce.flushed",), OK)),
    Case("failed flush, retries exhausted: terminate", batcher(boom, retry=RETRY), LAST_TRY,
         Alarm(), T0,
         After(None, None, ("job.failed", "job.retry_exhausted", "job.terminated"),
               Outcome.TERMINATED)),
    Case("failed flush without retry: park", batcher(boom), OVER, Alarm(), T0,
         After(FAILED, None, ("job.failed", "job.parked"), Outcome.PARKED)),
    Case("failed flush handled by on_error: flushed", batcher(boom, on_error=handled), OVER,
         Alarm(), T0, After(None, None, ("job.failed", "debounce.flushed"), Outcome.FAILED)),
    Case("clear", batcher(), OPEN, Clear(), T0,
         After(None, None, ("debounce.cleared",), Outcome.CLEARED)),
    Case("clear of no batch", batcher(), None, Clear(), T0, After(None, None, (), NOTHING)),
    Case("an event joins a parked batch", batcher(), PARKED, Add(2, "2"), T0,
         After(FAILED, None, (), OK)),
    Case("a full parked batch: the event waits", batcher(max_events=2), FULL, Add(3, "3"), T0,
         After(FAILED, None, (), OK)),
    Case("alarm of a parked batch: nothing", batcher(), PARKED._replace(due_at=T0), Alarm(), T0,
         After(None, None, (), NOTHING)),
    Case("manual flush of a parked batch", batcher(), PARKED, Flush(), T0,
         After(None, None, ("debounce.flushed",), OK)),
    Case("resume a parked batch", batcher(), PARKED, Resume(), T0,
         After(DEBOUNCING, T0, ("job.resumed",), OK)),
    Case("request a flush for the daemon", batcher(), OPEN, Request("manual"), T0,
         After(DEBOUNCING, T0, ("job.requested",), OK)),
    Case("terminate", batcher(), OPEN, Terminate("bye"), T0,
         After(None, None, ("job.terminated",), Outcome.TERMINATED)),
    Case("the reducer fails on the added event: refused", batcher(), OPEN, Add(-1, "-1"), T0,
         After(None, None, (), Outcome.REFUSED)),
    Case("on_error takes the reducer's failure: the event is dropped",
         batcher(on_error=handled), OPEN, Add(-1, "-1"), T0,
         After(DEBOUNCING, T0 + 50, ("job.failed",), OK)),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.label for case in CASES])
def test_debounce_transition(case: Case) -> None:
    check(case)


def test_queued_events_are_folded_in_order() -> None:
    """Events queued behind a running flush: a wake-up folds them, the window stays."""
    job = batcher()
    decision = steps.step(job, WAKE_UP, Alarm(), env(job, T0, QUEUED))
    assert decision.instance is not None
    assert (decision.instance.state, decision.instance.event_count) == ("3", 2)
    assert (decision.instance.due_at, decision.consumed, decision.outcome) == (T0 + 50, 7, OK)


def test_a_queued_event_that_fails_the_reducer_fails_the_step() -> None:
    job = batcher()
    queued = (Queued(7, "-1", T0 - 5),)
    decision = steps.step(job, OVER, Alarm(), env(job, T0, queued))
    assert [r[0] for r in decision.records] == ["job.failed", "job.parked"]
    assert decision.outcome is Outcome.PARKED
    assert decision.consumed == 0


def test_a_full_batch_sends_the_event_to_the_queue() -> None:
    decision = run(batcher(max_events=2), FULL, Add(3, "3"), T0)
    assert (decision.requeue, decision.requeued, decision.next_window) == ("3", 1, T0 + 60)


def test_a_flush_reports_its_reason_and_count() -> None:
    decision = run(batcher(), OVER, Alarm(), T0)
    assert (decision.flushed, decision.flush_reason, decision.event_count) == (
        True, "flush_after", 1,
    )  # fmt: skip
    cleared = steps.step(batcher(), OPEN, Clear(), env(batcher(), T0, QUEUED))
    assert (cleared.consumed, cleared.event_count, cleared.terminated) == (7, 2, False)


@pytest.mark.parametrize("msg", [Trigger(), steps.Start("1"), steps.Send(1)])
def test_a_message_debounce_does_not_take_raises_and_runs_nothing(msg: Any) -> None:
    execute = Calls()
    with pytest.raises(InvalidStateError, match="a debounce job does not take"):
        run(batcher(execute), OVER, msg, T0)
    assert execute.count == 0
