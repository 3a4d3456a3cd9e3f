"""Debounce jobs through the public API: every result field, flush reason, window and policy.

Real SQLite files in ``tmp_path``; time is a ``FakeClock`` (no sleeps). Behaviour items 7 and 9
of DESIGN.md, and the Debounce part of issue 7.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

from durajobs import (
    AddResult,
    Backoff,
    ClearResult,
    Debounce,
    DebounceStatus,
    FakeClock,
    FlushResult,
    Jobs,
    Retry,
)
from durajobs.admin import Admin
from durajobs.errors import (
    DuplicateEventError,
    ExecutionError,
    InstanceNotFoundError,
    InvalidStateError,
    ValidationError,
)

pytestmark = pytest.mark.both_stores  # [sqlite] and [postgres]

T0 = datetime(2026, 1, 1, tzinfo=UTC)
JOB = "clicks"
IID = "debounce:clicks:u1"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@attrs.frozen
class Click:
    page: str
    n: int = 1


@attrs.define
class Tally:
    pages: list[str] = attrs.Factory(list)
    total: int = 0


def tally(ctx: Any) -> Tally:
    """A reducer that keeps every page, in order."""
    state = ctx.state if ctx.state is not None else Tally()
    return Tally([*state.pages, ctx.event.page], state.total + ctx.event.n)


class Recorder:
    """An execute handler that records what each flush saw, and can be told to fail."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail_next = 0

    def __call__(self, ctx: Any) -> None:
        self.calls.append(
            {
                "state": ctx.state,
                "event_count": ctx.event_count,
                "flush_reason": ctx.flush_reason,
                "started_at": ctx.started_at,
                "attempt": ctx.attempt,
                "is_retry": ctx.is_retry,
                "instance_id": ctx.instance_id,
                "job_name": ctx.job_name,
                "id": ctx.id,
            }
        )
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError(f"flush failed (attempt {ctx.attempt})")


Make = Callable[..., tuple[Jobs, FakeClock]]


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Make]:
    opened: list[Jobs] = []

    def build(registry: dict[str, Any], **kwargs: Any) -> tuple[Jobs, FakeClock]:
        clock = kwargs.pop("clock", None) or FakeClock(T0)
        jobs = Jobs(tmp_path / "jobs.db", registry, clock=clock, **kwargs)
        opened.append(jobs)
        return jobs, clock

    yield build
    for jobs in opened:
        jobs.close()


def events(jobs: Jobs, instance_id: str = IID) -> list[str]:
    return [r.event for r in jobs.engine.store.history(instance_id, limit=1000)]


def history(jobs: Jobs, instance_id: str = IID) -> list[Any]:
    return jobs.engine.store.history(instance_id, limit=1000)


# -- add --------------------------------------------------------------------------------------


def test_add_result_fields_and_window_from_first_event(make: Make) -> None:
    recorder = Recorder()
    job = Debounce(event=Click, execute=recorder, flush_after="5 seconds")
    jobs, clock = make({JOB: job})
    client = jobs.debounce(JOB)

    first = client.add("u1", Click("a"))
    assert first == AddResult(IID, True, 1, at(5))
    assert isinstance(first.will_flush_at, datetime)
    assert first.will_flush_at.tzinfo is not None

    clock.advance(2)
    second = client.add("u1", Click("b"))
    assert second == AddResult(IID, False, 2, at(5))  # the window does not move

    clock.advance(2.5)
    third = client.add("u1", Click("c"))
    assert third == AddResult(IID, False, 3, at(5))
    assert recorder.calls == []


def test_add_accepts_seconds_for_flush_after(make: Make) -> None:
    job = Debounce(event=Click, execute=Recorder(), flush_after=7)
    jobs, _ = make({JOB: job})
    assert jobs.debounce(JOB).add("u1", Click("a")).will_flush_at == at(7)


def test_instances_are_independent(make: Make) -> None:
    recorder = Recorder()
    job = Debounce(event=Click, state=Tally, execute=recorder, flush_after="5s", on_event=tally)
    jobs, clock = make({JOB: job})
    client = jobs.debounce(JOB)
    client.add("u1", Click("a"))
    clock.advance(3)
    result = client.add("u2", Click("b"))
    assert result == AddResult("debounce:clicks:u2", True, 1, at(8))
    clock.advance(2)  # t=5: only u1 is due
    assert jobs.run_due() == 1
    assert [c["id"] for c in recorder.calls] == ["u1"]
    assert client.status("u1").status == "not_found"
    assert client.status("u2").event_count == 1
    clock.advance(3)
    assert jobs.run_due() == 1
    assert [c["state"] for c in recorder.calls] == [Tally(["a"], 1), Tally(["b"], 1)]


# -- status / get_state -----------------------------------------------------------------------


def test_status_of_missing_instance(make: Make) -> None:
    jobs, _ = make({JOB: Debounce(event=Click, execute=Recorder(), flush_after="5s")})
    client = jobs.debounce(JOB)
    status = client.status("nobody")
    assert status.status == "not_found"
    assert status.event_count == 0
    assert status.started_at is None
    assert status.will_flush_at is None
    assert client.get_state("nobody") is None


def test_status_fields_while_debouncing(make: Make) -> None:
    job = Debounce(
        event=Click, state=Tally, execute=Recorder(), flush_after="1 minute", on_event=tally
    )
    jobs, clock = make({JOB: job})
    client = jobs.debounce(JOB)
    clock.advance(10)
    client.add("u1", Click("a", 2))
    clock.advance(20)
    client.add("u1", Click("b", 3))
    status = client.status("u1")
    assert isinstance(status, DebounceStatus)
    assert status.status == "debouncing"
    assert status.event_count == 2
    assert status.started_at == at(10)
    assert status.will_flush_at == at(70)
    assert client.get_state("u1") == Tally(["a", "b"], 5)


def test_default_reducer_keeps_the_latest_event(make: Make) -> None:
    recorder = Recorder()
    jobs, clock = make({JOB: Debounce(event=Click, execute=recorder, flush_after="5s")})
    client = jobs.debounce(JOB)
    for i, page in enumerate(["a", "b", "c"]):
        client.add("u1", Click(page, i))
        assert client.get_state("u1") == Click(page, i)
        clock.advance(1)
    assert client.flush("u1") == FlushResult(True, 3, "manual")
    assert recorder.calls[0]["state"] == Click("c", 2)
    assert recorder.calls[0]["event_count"] == 3


def test_reducer_context_state_is_none_on_first_event_of_each_batch(make: Make) -> None:
    seen: list[tuple[Any, int, str, Click]] = []

    def reducer(ctx: Any) -> Tally:
        seen.append((ctx.state, ctx.event_count, ctx.instance_id, ctx.event))
        return tally(ctx)

    recorder = Recorder()
    job = Debounce(event=Click, state=Tally, execute=recorder, flush_after="5s", on_event=reducer)
    jobs, clock = make({JOB: job})
    client = jobs.debounce(JOB)
    client.add("u1", Click("a"))
    client.add("u1", Click("b"))
    assert seen == [
        (None, 1, IID, Click("a")),
        (Tally(["a"], 1), 2, IID, Click("b")),
    ]
    clock.advance(5)
    assert jobs.run_due() == 1
    assert recorder.calls[0]["state"] == Tally(["a", "b"], 2)

    seen.clear()
    client.add("u1", Click("c"))  # a new batch starts from nothing
    assert seen == [(None, 1, IID, Click("c"))]
    assert client.get_state("u1") == Tally(["c"], 1)
    assert client.status("u1").started_at == at(5)


# -- windows ----------------------------------------------------------------------------------


def test_flush_after_alarm_fires_at_the_window_from_the_first_event(make: Make) -> None:
    recorder = Recorder()
    job = Debounce(event=Click, state=Tally, execute=recorder, flush_after="5s", on_event=tally)
    jobs, clock = make({JOB: job})
    client = jobs.debounce(JOB)
    client.add("u1", Click("a"))
    clock.advance(4)
    client.add("u1", Click("b"))
    assert jobs.next_alarm() == at(5)
    clock.advance(0.999)
    assert jobs.run_due() == 0
    assert recorder.calls == []
    clock.advance(0.001)
    assert jobs.run_due() == 1
    assert len(recorder.calls) == 1
    call = recorder.calls[0]
    assert call["flush_reason"] == "flush_after"
    assert call["event_count"] == 2
    assert call["state"] == Tally(["a", "b"], 2)
    assert call["started_at"] == at(0)
    assert call["attempt"] == 1
    assert call["is_retry"] is False
    assert (call["instance_id"], call["job_name"], call["id"]) == (IID, JOB, "u1")
    assert client.status("u1").status == "not_found"  # purged after a successful flush
    assert client.get_state("u1") is None
    assert jobs.next_alarm() is None
    flushed = [r for r in history(jobs) if r.event == "debounce.flushed"]
    assert len(flushed) == 1
    assert json.loads(flushed[0].data)["reason"] == "flush_after"


def test_trailing_window_moves_with_each_event_capped_by_max_wait(make: Make) -> None:
    recorder = Recorder()
    job = Debounce(
        event=Click, state=Tally, execute=recorder, flush_after="5s", on_event=tally,
        trailing=True, max_wait="12s",
    )  # fmt: skip
    jobs, clock = make({JOB: job})
    client = jobs.debounce(JOB)
    assert client.add("u1", Click("a")).will_flush_at == at(5)
    clock.set(at(3))
    assert client.add("u1", Click("b")).will_flush_at == at(8)
    clock.set(at(7))
    assert client.add("u1", Click("c")).will_flush_at == at(12)
    clock.set(at(10))
    assert client.add("u1", Click("d")).will_flush_at == at(12)  # capped by max_wait
    status = client.status("u1")
    assert status.started_at == at(0)
    assert status.will_flush_at == at(12)
    clock.set(at(11.9))
    assert jobs.run_due() == 0
    clock.set(at(12))
    assert jobs.run_due() == 1
    assert recorder.calls[0]["state"] == Tally(["a", "b", "c", "d"], 4)
    assert recorder.calls[0]["flush_reason"] == "flush_after"


def test_trailing_without_max_wait_waits_for_a_quiet_period(make: Make) -> None:
    recorder = Recorder()
    job = Debounce(event=Click, execute=recorder, flush_after="5s", trailing=True)
    jobs, clock = make({JOB: job})
    client = jobs.debounce(JOB)
    for i in range(10):  # an event every 4 s keeps the batch open
        clock.set(at(4 * i))
        assert client.add("u1", Click(str(i))).will_flush_at == at(4 * i + 5)
        assert jobs.run_due() == 0
    clock.set(at(36 + 5))
    assert jobs.run_due() == 1
    assert recorder.calls[0]["state"] == Click("9")
    assert recorder.calls[0]["event_count"] == 10


# -- flush reasons ----------------------------------------------------------------------------


def test_max_events_flushes_inside_add(make: Make) -> None:
    recorder = Recorder()
    job = Debounce(
        event=Click, state=Tally, execute=recorder, flush_after="5s", on_event=tally,
        max_events=3,
    )  # fmt: skip
    jobs, clock = make({JOB: job})
    client = jobs.debounce(JOB)
    client.add("u1", Click("a"))
    client.add("u1", Click("b"))
    assert recorder.calls == []
    clock.advance(1)
    result = client.add("u1", Click("c"))
    # The batch flushed inside the call: it reports the events it held and no pending flush.
    assert result.instance_id == IID
    assert result.created is False
    assert result.event_count == 3
    assert result.will_flush_at is None
    assert len(recorder.calls) == 1
    assert recorder.calls[0]["flush_reason"] == "max_events"
    assert recorder.calls[0]["state"] == Tally(["a", "b", "c"], 3)
    assert client.status("u1").status == "not_found"
    assert jobs.next_alarm() is None
    clock.advance(10)
    assert jobs.run_due() == 0  # the old window alarm is gone with the batch
    assert len(recorder.calls) == 1


def test_max_events_of_one_flushes_every_add(make: Make) -> None:
    recorder = Recorder()
    job = Debounce(event=Click, execute=recorder, flush_after="5s", max_events=1)
    jobs, _ = make({JOB: job})
    client = jobs.debounce(JOB)
    assert client.add("u1", Click("a")) == AddResult(IID, True, 1, None)
    assert client.add("u1", Click("b")) == AddResult(IID, True, 1, None)
    assert [c["state"] for c in recorder.calls] == [Click("a"), Click("b")]
    assert all(c["flush_reason"] == "max_events" for c in recorder.calls)


def test_manual_flush(make: Make) -> None:
    recorder = Recorder()
    job = Debounce(event=Click, state=Tally, execute=recorder, flush_after="1h", on_event=tally)
    jobs, clock = make({JOB: job})
    client = jobs.debounce(JOB)
    clock.advance(3)
    client.add("u1", Click("a"))
    clock.advance(3)
    client.add("u1", Click("b"))
    result = client.flush("u1")
    assert result == FlushResult(True, 2, "manual")
    assert recorder.calls[0]["flush_reason"] == "manual"
    assert recorder.calls[0]["started_at"] == at(3)
    assert recorder.calls[0]["event_count"] == 2
    assert client.status("u1").status == "not_found"
    assert jobs.next_alarm() is None


def test_flush_of_an_empty_or_missing_instance_reports_empty(make: Make) -> None:
    recorder = Recorder()
    jobs, _ = make({JOB: Debounce(event=Click, execute=recorder, flush_after="5s")})
    client = jobs.debounce(JOB)
    assert client.flush("nobody") == FlushResult(False, 0, "empty")
    client.add("u1", Click("a"))
    assert client.flush("u1").flushed is True
    assert client.flush("u1") == FlushResult(False, 0, "empty")  # already flushed and purged
    assert len(recorder.calls) == 1  # execute never ran for an empty batch
    assert client.status("nobody").status == "not_found"
    assert client.status("u1").status == "not_found"


# -- clear ------------------------------------------------------------------------------------


def test_clear_discards_the_batch_without_execute(make: Make) -> None:
    recorder = Recorder()
    job = Debounce(event=Click, state=Tally, execute=recorder, flush_after="5s", on_event=tally)
    jobs, clock = make({JOB: job})
    client = jobs.debounce(JOB)
    client.add("u1", Click("a"))
    client.add("u1", Click("b"))
    assert client.clear("u1") == ClearResult(True, 2)
    assert client.status("u1").status == "not_found"
    assert client.get_state("u1") is None
    assert jobs.next_alarm() is None
    clock.advance(60)
    assert jobs.run_due() == 0
    assert recorder.calls == []
    assert client.clear("u1") == ClearResult(False, 0)
    assert client.clear("nobody") == ClearResult(False, 0)
    # A new batch after clear starts fresh.
    assert client.add("u1", Click("c")) == AddResult(IID, True, 1, at(65))
    assert client.get_state("u1") == Tally(["c"], 1)


# -- failures, retries, exhaustion ------------------------------------------------------------


def test_failed_flush_keeps_the_batch_and_retries_per_policy(make: Make) -> None:
    recorder = Recorder()
    recorder.fail_next = 2
    job = Debounce(
        event=Click, state=Tally, execute=recorder, flush_after="5s", on_event=tally,
        retry=Retry(max_attempts=3, delay=Backoff.exponential(base="10s", max="1 minute")),
    )  # fmt: skip
    jobs, clock = make({JOB: job})
    client = jobs.debounce(JOB)
    client.add("u1", Click("a"))
    client.add("u1", Click("b"))

    result = client.flush("u1")  # attempt 1 fails
    assert result.flushed is False
    assert result.reason == "manual"
    assert result.event_count == 2
    assert result.error is not None
    assert "flush failed (attempt 1)" in result.error
    status = client.status("u1")
    assert status.status == "debouncing"
    assert status.event_count == 2
    assert status.started_at == at(0)
    assert status.will_flush_at == at(10)  # the retry alarm
    assert status.attempt == 2
    assert status.last_error is not None
    assert "flush failed (attempt 1)" in status.last_error
    assert client.get_state("u1") == Tally(["a", "b"], 2)  # the batch is kept
    assert jobs.next_alarm() == at(10)

    clock.set(at(9.9))
    assert jobs.run_due() == 0
    clock.set(at(10))
    assert jobs.run_due() == 1  # attempt 2 fails; next retry 20 s later
    assert client.status("u1").will_flush_at == at(30)
    assert client.status("u1").attempt == 3
    clock.set(at(30))
    assert jobs.run_due() == 1  # attempt 3 succeeds
    assert [c["attempt"] for c in recorder.calls] == [1, 2, 3]
    assert [c["is_retry"] for c in recorder.calls] == [False, True, True]
    assert {c["flush_reason"] for c in recorder.calls} == {"manual"}  # a retry keeps its reason
    assert all(c["state"] == Tally(["a", "b"], 2) for c in recorder.calls)
    assert all(c["started_at"] == at(0) for c in recorder.calls)
    assert client.status("u1").status == "not_found"
    names = events(jobs)
    assert names.count("job.failed") == 2
    assert names[-1] == "debounce.flushed"


def test_failed_alarm_flush_retries_with_reason_flush_after(make: Make) -> None:
    recorder = Recorder()
    recorder.fail_next = 1
    job = Debounce(
        event=Click, execute=recorder, flush_after="5s",
        retry=Retry(max_attempts=2, delay=Backoff.fixed("30s")),
    )  # fmt: skip
    jobs, clock = make({JOB: job})
    client = jobs.debounce(JOB)
    client.add("u1", Click("a"))
    clock.set(at(5))
    assert jobs.run_due() == 1
    assert client.status("u1").will_flush_at == at(35)
    clock.set(at(35))
    assert jobs.run_due() == 1
    assert [c["flush_reason"] for c in recorder.calls] == ["flush_after", "flush_after"]
    assert client.status("u1").status == "not_found"


def test_failed_max_events_flush_retries_with_reason_max_events(make: Make) -> None:
    recorder = Recorder()
    recorder.fail_next = 1
    job = Debounce(
        event=Click, execute=recorder, flush_after="5s", max_events=2,
        retry=Retry(max_attempts=2, delay=Backoff.fixed("1s")),
    )  # fmt: skip
    jobs, clock = make({JOB: job})
    client = jobs.debounce(JOB)
    client.add("u1", Click("a"))
    result = client.add("u1", Click("b"))  # the flush inside add fails: add still succeeds
    assert result.event_count == 2
    assert result.will_flush_at is not None
    assert client.status("u1").event_count == 2
    clock.advance(1)
    assert jobs.run_due() == 1
    assert [c["flush_reason"] for c in recorder.calls] == ["max_events", "max_events"]
    assert client.status("u1").status == "not_found"


def test_exhaustion_without_retry_parks_and_retry_resumes(make: Make) -> None:
    recorder = Recorder()
    recorder.fail_next = 1
    job = Debounce(event=Click, state=Tally, execute=recorder, flush_after="5s", on_event=tally)
    assert job.exhausted == "park"
    jobs, clock = make({JOB: job})
    client = jobs.debounce(JOB)
    client.add("u1", Click("a"))
    client.add("u1", Click("b"))
    clock.set(at(5))
    assert jobs.run_due() == 1
    status = client.status("u1")
    assert status.status == "failed"
    assert status.event_count == 2
    assert status.started_at == at(0)
    assert status.will_flush_at is None  # no alarm while parked
    assert status.last_error is not None
    assert "flush failed" in status.last_error
    assert client.get_state("u1") == Tally(["a", "b"], 2)
    assert jobs.next_alarm() is None
    clock.advance("1 day")
    assert jobs.run_due() == 0
    assert len(recorder.calls) == 1
    assert "job.parked" in events(jobs)

    resumed = client.retry("u1")
    assert resumed.instance_id == IID
    assert resumed.resumed is True
    assert resumed.due_at == clock.now()
    assert client.status("u1").status == "debouncing"
    assert jobs.run_due() == 1
    assert len(recorder.calls) == 2
    assert recorder.calls[1]["state"] == Tally(["a", "b"], 2)
    assert recorder.calls[1]["flush_reason"] == "flush_after"
    assert client.status("u1").status == "not_found"


def test_retry_by_full_instance_id_and_its_errors(make: Make) -> None:
    recorder = Recorder()
    recorder.fail_next = 1
    jobs, _ = make({JOB: Debounce(event=Click, execute=recorder, flush_after="5s")})
    client = jobs.debounce(JOB)
    with pytest.raises(InstanceNotFoundError):
        jobs.retry(IID)
    with pytest.raises(InstanceNotFoundError):
        client.retry("u1")
    client.add("u1", Click("a"))
    with pytest.raises(InvalidStateError):  # not parked
        jobs.retry(IID)
    assert client.flush("u1").flushed is False
    assert client.status("u1").status == "failed"
    assert jobs.retry(IID).resumed is True
    assert jobs.run_due() == 1
    assert client.status("u1").status == "not_found"
    assert [c["flush_reason"] for c in recorder.calls] == ["manual", "manual"]


def test_exhaustion_with_retry_terminates_and_leaves_a_history_record(make: Make) -> None:
    recorder = Recorder()
    recorder.fail_next = 99
    job = Debounce(
        event=Click, state=Tally, execute=recorder, flush_after="5s", on_event=tally,
        retry=Retry(max_attempts=2, delay=Backoff.fixed("10s")),
    )  # fmt: skip
    assert job.exhausted == "terminate"
    jobs, clock = make({JOB: job})
    client = jobs.debounce(JOB)
    client.add("u1", Click("a"))
    clock.set(at(5))
    assert jobs.run_due() == 1
    assert client.status("u1").status == "debouncing"
    clock.set(at(15))
    assert jobs.run_due() == 1
    assert len(recorder.calls) == 2
    assert client.status("u1").status == "not_found"
    assert client.get_state("u1") is None
    assert jobs.next_alarm() is None
    rows = history(jobs)
    names = [r.event for r in rows]
    assert names.count("job.failed") == 2
    assert "job.retry_exhausted" in names
    final = rows[-1]
    assert final.event == "job.terminated"
    assert final.error is not None
    assert "flush failed (attempt 2)" in final.error
    assert json.loads(final.data)["final_state"] == {"pages": ["a"], "total": 1}


def test_on_error_handles_an_exhausted_flush_and_its_changes_commit(make: Make) -> None:
    recorder = Recorder()
    recorder.fail_next = 1
    seen: list[tuple[BaseException, Any, int]] = []

    def on_error(error: BaseException, ctx: Any) -> None:
        seen.append((error, ctx.state, ctx.event_count))
        ctx.state = Tally([*ctx.state.pages, "handled"], ctx.state.total)

    job = Debounce(
        event=Click, state=Tally, execute=recorder, flush_after="5s", on_event=tally,
        on_error=on_error,
    )  # fmt: skip
    jobs, _ = make({JOB: job})
    client = jobs.debounce(JOB)
    client.add("u1", Click("a"))
    client.flush("u1")
    assert len(seen) == 1
    error, state, count = seen[0]
    assert isinstance(error, RuntimeError)
    assert str(error) == "flush failed (attempt 1)"
    assert state == Tally(["a"], 1)
    assert count == 1
    # on_error dealt with the batch: it is done, and its final state is in history.
    assert client.status("u1").status == "not_found"
    final = history(jobs)[-1]
    assert json.loads(final.data)["final_state"] == {
        "pages": ["a", "handled"],
        "total": 1,
    }


def test_on_error_that_raises_falls_back_to_the_policy(make: Make) -> None:
    recorder = Recorder()
    recorder.fail_next = 1

    def on_error(error: BaseException, ctx: Any) -> None:
        raise ValueError("on_error broke too")

    job = Debounce(event=Click, execute=recorder, flush_after="5s", on_error=on_error)
    jobs, _ = make({JOB: job})
    client = jobs.debounce(JOB)
    client.add("u1", Click("a"))
    assert client.flush("u1").flushed is False
    status = client.status("u1")
    assert status.status == "failed"  # parked (no retry)
    assert status.last_error is not None
    assert "on_error broke too" in status.last_error
    assert client.get_state("u1") == Click("a")


def test_execute_can_terminate(make: Make) -> None:
    def execute(ctx: Any) -> None:
        ctx.terminate("enough")

    jobs, _ = make({JOB: Debounce(event=Click, execute=execute, flush_after="5s")})
    client = jobs.debounce(JOB)
    client.add("u1", Click("a"))
    client.flush("u1")
    assert client.status("u1").status == "not_found"
    final = history(jobs)[-1]
    assert final.event == "job.terminated"
    assert json.loads(final.data)["reason"] == "enough"


# -- errors from add ---------------------------------------------------------------------------


def test_reducer_error_in_add_raises_execution_error_and_stores_nothing(make: Make) -> None:
    def reducer(ctx: Any) -> Tally:
        if ctx.event.page == "bad":
            raise KeyError("no such page")
        return tally(ctx)

    recorder = Recorder()
    job = Debounce(event=Click, state=Tally, execute=recorder, flush_after="5s", on_event=reducer)
    jobs, clock = make({JOB: job})
    client = jobs.debounce(JOB)

    with pytest.raises(ExecutionError) as info:  # on the first event: nothing is created
        client.add("u1", Click("bad"))
    assert isinstance(info.value.cause, KeyError)
    assert isinstance(info.value.__cause__, KeyError)
    assert IID in str(info.value)
    assert client.status("u1").status == "not_found"
    assert jobs.next_alarm() is None
    assert events(jobs) == []

    client.add("u1", Click("a"))
    before = client.status("u1")
    before_history = events(jobs)
    clock.advance(1)
    with pytest.raises(ExecutionError):
        client.add("u1", Click("bad"))
    assert client.status("u1") == before
    assert client.get_state("u1") == Tally(["a"], 1)
    assert events(jobs) == before_history
    clock.advance(4)
    assert jobs.run_due() == 1
    assert recorder.calls[0]["state"] == Tally(["a"], 1)
    assert recorder.calls[0]["event_count"] == 1


def test_reducer_returning_the_wrong_type_stores_nothing(make: Make) -> None:
    job = Debounce(
        event=Click, state=Tally, execute=Recorder(), flush_after="5s",
        on_event=lambda ctx: "not a tally",
    )  # fmt: skip
    jobs, _ = make({JOB: job})
    client = jobs.debounce(JOB)
    with pytest.raises((ExecutionError, ValidationError)):
        client.add("u1", Click("a"))
    assert client.status("u1").status == "not_found"


@pytest.mark.parametrize(
    ("event", "fragment"),
    [
        ("a string", "Click"),
        (Tally(), "Click"),
        (Click(page=123), "page"),  # type: ignore[arg-type]
        (Click("a", n="many"), "n"),  # type: ignore[arg-type]
    ],
)
def test_validation_error_on_wrong_event_type(make: Make, event: Any, fragment: str) -> None:
    recorder = Recorder()
    jobs, _ = make({JOB: Debounce(event=Click, execute=recorder, flush_after="5s")})
    client = jobs.debounce(JOB)
    with pytest.raises(ValidationError) as info:
        client.add("u1", event)
    assert fragment in str(info.value)
    assert client.status("u1").status == "not_found"
    client.add("u1", Click("ok"))
    with pytest.raises(ValidationError):
        client.add("u1", event)
    assert client.status("u1").event_count == 1
    assert client.get_state("u1") == Click("ok")


# -- idempotency keys -------------------------------------------------------------------------


def test_duplicate_key_raises_and_changes_nothing(make: Make) -> None:
    recorder = Recorder()
    job = Debounce(event=Click, state=Tally, execute=recorder, flush_after="5s", on_event=tally)
    jobs, clock = make({JOB: job})
    client = jobs.debounce(JOB)
    client.add("u1", Click("a"), key="k1")
    client.add("u1", Click("b"), key="k2")
    before = client.status("u1")
    before_history = events(jobs)
    clock.advance(1)
    with pytest.raises(DuplicateEventError) as info:
        client.add("u1", Click("c"), key="k1")
    assert "k1" in str(info.value)
    assert client.status("u1") == before
    assert client.get_state("u1") == Tally(["a", "b"], 2)
    assert events(jobs) == before_history
    # The same key on another instance is another key.
    assert client.add("u2", Click("x"), key="k1").created is True
    # No key: never a duplicate.
    client.add("u1", Click("d"))
    assert client.get_state("u1") == Tally(["a", "b", "d"], 3)


def test_duplicate_key_after_the_batch_flushed_within_the_window(make: Make) -> None:
    recorder = Recorder()
    job = Debounce(event=Click, execute=recorder, flush_after="5s")
    jobs, clock = make({JOB: job}, key_window="1 hour")
    client = jobs.debounce(JOB)
    client.add("u1", Click("a"), key="evt-1")
    clock.advance(5)
    assert jobs.run_due() == 1
    assert client.status("u1").status == "not_found"
    clock.advance("30 minutes")
    assert jobs.run_due() == 0
    with pytest.raises(DuplicateEventError):
        client.add("u1", Click("a again"), key="evt-1")
    assert client.status("u1").status == "not_found"  # nothing was created
    assert jobs.next_alarm() is None
    assert len(recorder.calls) == 1


def test_duplicate_key_of_a_max_events_flushing_add(make: Make) -> None:
    recorder = Recorder()
    job = Debounce(event=Click, execute=recorder, flush_after="5s", max_events=1)
    jobs, _ = make({JOB: job})
    client = jobs.debounce(JOB)
    client.add("u1", Click("a"), key="once")
    with pytest.raises(DuplicateEventError):
        client.add("u1", Click("a"), key="once")
    assert len(recorder.calls) == 1


def test_failed_add_does_not_burn_its_key(make: Make) -> None:
    def reducer(ctx: Any) -> Tally:
        if ctx.event.page == "bad":
            raise RuntimeError("reducer says no")
        return tally(ctx)

    job = Debounce(event=Click, state=Tally, execute=Recorder(), flush_after="5s", on_event=reducer)
    jobs, _ = make({JOB: job})
    client = jobs.debounce(JOB)
    with pytest.raises(ExecutionError):
        client.add("u1", Click("bad"), key="k")
    client.add("u1", Click("good"), key="k")  # the key was not taken by the failed call
    assert client.get_state("u1") == Tally(["good"], 1)


# -- durability across reopen -----------------------------------------------------------------


def test_batch_and_alarm_survive_reopening(tmp_path: Path) -> None:
    recorder = Recorder()
    job = Debounce(event=Click, state=Tally, execute=recorder, flush_after="5s", on_event=tally)
    clock = FakeClock(T0)
    with Jobs(tmp_path / "jobs.db", {JOB: job}, clock=clock) as jobs:
        jobs.debounce(JOB).add("u1", Click("a"))
        jobs.debounce(JOB).add("u1", Click("b"))
    clock.advance(5)
    with Jobs(tmp_path / "jobs.db", {JOB: job}, clock=clock) as jobs:
        assert jobs.debounce(JOB).status("u1").event_count == 2
        assert jobs.run_due() == 1
    assert recorder.calls[0]["state"] == Tally(["a", "b"], 2)


def test_events_added_while_a_retry_is_pending_join_the_kept_batch(make: Make) -> None:
    # Interpretation: a failed batch stays open; later events fold into it and the pending
    # retry alarm (not a new window) decides when it flushes.
    recorder = Recorder()
    recorder.fail_next = 1
    job = Debounce(
        event=Click, state=Tally, execute=recorder, flush_after="5s", on_event=tally,
        retry=Retry(max_attempts=2, delay=Backoff.fixed("1 minute")),
    )  # fmt: skip
    jobs, clock = make({JOB: job})
    client = jobs.debounce(JOB)
    client.add("u1", Click("a"))
    clock.set(at(5))
    assert jobs.run_due() == 1
    clock.set(at(30))
    result = client.add("u1", Click("b"))
    assert result.event_count == 2
    assert client.status("u1").will_flush_at == at(65)
    clock.set(at(65))
    assert jobs.run_due() == 1
    assert recorder.calls[-1]["state"] == Tally(["a", "b"], 2)
    assert recorder.calls[-1]["event_count"] == 2
    assert client.status("u1").status == "not_found"


# -- events queued behind a running flush (single process: a second Jobs is another claim) ----


def test_event_added_while_a_flush_runs_goes_to_the_next_batch(make: Make, tmp_path: Path) -> None:
    recorder = Recorder()
    other: list[Jobs] = []

    def execute(ctx: Any) -> None:
        recorder(ctx)
        if len(recorder.calls) == 1:
            # Another Jobs on the file holds another claim, like another process would.
            start = len(recorder.calls)
            result = other[0].debounce(JOB).add("u1", Click("late"))
            assert len(recorder.calls) == start  # add did not wait for (or run) a flush
            assert result.created is False
            assert result.event_count == 1

    job = Debounce(event=Click, state=Tally, execute=execute, flush_after="5s", on_event=tally)
    jobs, clock = make({JOB: job})
    other.append(make({JOB: job}, clock=clock)[0])
    client = jobs.debounce(JOB)
    client.add("u1", Click("a"))
    client.add("u1", Click("b"))
    assert client.flush("u1") == FlushResult(True, 2, "manual")
    assert recorder.calls[0]["state"] == Tally(["a", "b"], 2)
    # The late event is the next batch, not lost and not part of the flushed one.
    status = client.status("u1")
    assert status.status == "debouncing"
    assert status.event_count == 1
    assert jobs.run_due() >= 0  # folds it when its wake-up is due
    clock.advance(5)
    jobs.run_due()
    assert [c["state"] for c in recorder.calls] == [Tally(["a", "b"], 2), Tally(["late"], 1)]
    assert client.status("u1").status == "not_found"


def test_events_queued_during_a_failing_flush_do_not_cut_the_retry_backoff(make: Make) -> None:
    recorder = Recorder()
    other: list[Jobs] = []

    def execute(ctx: Any) -> None:
        recorder(ctx)
        if len(recorder.calls) == 1:
            other[0].debounce(JOB).add("u1", Click("late"))
            raise RuntimeError("downstream is down")

    job = Debounce(
        event=Click, state=Tally, execute=execute, flush_after="5s", on_event=tally,
        retry=Retry(max_attempts=3, delay=Backoff.fixed("1 hour")),
    )  # fmt: skip
    jobs, clock = make({JOB: job})
    other.append(make({JOB: job}, clock=clock)[0])
    client = jobs.debounce(JOB)
    client.add("u1", Click("a"))
    assert client.flush("u1").flushed is False
    status = client.status("u1")
    assert status.attempt == 2
    assert status.will_flush_at == at(3600)  # the retry waits its backoff
    jobs.run_due()  # a wake-up that only folds the queued event would be fine ...
    assert len(recorder.calls) == 1  # ... but the retry must not run before its time
    clock.set(at(3600))
    jobs.run_due()
    assert len(recorder.calls) == 2
    assert recorder.calls[1]["attempt"] == 2
    seen = [page for call in recorder.calls[1:] for page in call["state"].pages]
    if client.status("u1").status != "not_found":
        clock.advance(5)
        jobs.run_due()
        seen = [page for call in recorder.calls[1:] for page in call["state"].pages]
    assert sorted(seen) == ["a", "late"]  # both delivered, once each


def test_reported_retry_time_is_when_the_retry_is_due(make: Make) -> None:
    # With jitter, retry delays are arbitrary floats; the datetime a status reports (microsecond
    # resolution) must be an instant at which the alarm counts as due.
    recorder = Recorder()
    recorder.fail_next = 20
    job = Debounce(
        event=Click, execute=recorder, flush_after="5s",
        retry=Retry(max_attempts=2, delay=Backoff.fixed("10s"), jitter=True),
    )  # fmt: skip
    jobs, clock = make({JOB: job})
    client = jobs.debounce(JOB)
    for i in range(20):
        client.add(f"u{i}", Click("a"))
        assert client.flush(f"u{i}").flushed is False
    reported = sorted((client.status(f"u{i}").will_flush_at, f"u{i}") for i in range(20))
    for when, user in reported:
        assert when is not None
        clock.set(when)
        jobs.run_due()
        assert client.status(user).status == "not_found", (user, when)


def test_add_queued_behind_a_flush_reports_the_trailing_window(make: Make) -> None:
    # will_flush_at of an add queued behind a running flush follows the same window rule as
    # any add: with trailing=True, flush_after after *this* event, capped by max_wait.
    other: list[Jobs] = []
    queued: list[Any] = []

    def execute(ctx: Any) -> None:
        if not queued:
            other_clock = other[0].clock
            assert isinstance(other_clock, FakeClock)
            other_clock.set(at(1))
            queued.append(other[0].debounce(JOB).add("u1", Click("q1")))
            other_clock.set(at(4))
            queued.append(other[0].debounce(JOB).add("u1", Click("q2")))

    job = Debounce(event=Click, execute=execute, flush_after="5s", trailing=True, max_wait="60s")
    jobs, clock = make({JOB: job})
    other.append(make({JOB: job}, clock=clock)[0])
    client = jobs.debounce(JOB)
    client.add("u1", Click("a"))
    client.flush("u1")
    assert queued[0].will_flush_at == at(6)
    assert queued[1].will_flush_at == at(9)  # 4 s + 5 s, not the first queued event's window
    assert client.status("u1").will_flush_at == at(9)
    jobs.run_due()
    assert client.status("u1").will_flush_at == at(9)


def test_events_queued_behind_a_flush_never_make_a_batch_above_max_events(make: Make) -> None:
    # max_events caps a batch: five events queued behind a running flush with max_events=3
    # flush as 3 + 2 (or smaller batches), each event once and in order -- never as one batch
    # of 5 (a downstream API that takes at most max_events items would reject it).
    recorder = Recorder()
    other: list[Jobs] = []

    def execute(ctx: Any) -> None:
        recorder(ctx)
        if len(recorder.calls) == 1:
            for page in ["q1", "q2", "q3", "q4", "q5"]:
                other[0].debounce(JOB).add("u1", Click(page))

    job = Debounce(
        event=Click, state=Tally, execute=execute, flush_after="5s", on_event=tally, max_events=3
    )
    jobs, clock = make({JOB: job})
    other.append(make({JOB: job}, clock=clock)[0])
    client = jobs.debounce(JOB)
    client.add("u1", Click("a"))
    client.flush("u1")
    for _ in range(5):
        jobs.run_due()
        clock.advance(5)
    jobs.run_due()
    assert client.status("u1").status == "not_found"
    sizes = [call["event_count"] for call in recorder.calls]
    assert max(sizes) <= 3, sizes
    seen = [page for call in recorder.calls for page in call["state"].pages]
    assert seen == ["a", "q1", "q2", "q3", "q4", "q5"]


def test_reducer_error_on_a_queued_event_fails_that_step_and_loses_nothing(make: Make) -> None:
    recorder = Recorder()
    other: list[Jobs] = []

    def reducer(ctx: Any) -> Tally:
        if ctx.event.page == "bad":
            raise ValueError("cannot fold 'bad'")
        return tally(ctx)

    def execute(ctx: Any) -> None:
        recorder(ctx)
        if len(recorder.calls) == 1:
            for page in ["q1", "bad", "q2"]:
                # queued: the reducer does not run here, so add cannot raise for it
                other[0].debounce(JOB).add("u1", Click(page))

    job = Debounce(event=Click, state=Tally, execute=execute, flush_after="5s", on_event=reducer)
    jobs, clock = make({JOB: job})
    other.append(make({JOB: job}, clock=clock)[0])
    client = jobs.debounce(JOB)
    client.add("u1", Click("a"))
    assert client.flush("u1").flushed is True
    jobs.run_due()  # the next step folds the queued events: the reducer fails on "bad"
    status = client.status("u1")
    assert status.status == "failed"  # that step's failure, handled by the policy (park)
    assert status.event_count == 3  # nothing lost: all three are still there
    assert status.last_error is not None
    assert "cannot fold 'bad'" in status.last_error
    failed = [r for r in history(jobs) if r.event == "job.failed"]
    assert failed
    assert failed[-1].error == "ValueError: cannot fold 'bad'"
    assert len(recorder.calls) == 1
    # clear drops the poisoned batch, queued events included
    assert client.clear("u1") == ClearResult(True, 3)
    assert client.status("u1").status == "not_found"


def test_events_queued_during_a_flush_that_exhausts_and_terminates_survive(
    tmp_path: Path,
) -> None:
    """Regression: exhaustion with on_exhausted="terminate" must not drop the next batch."""
    from durajobs import Backoff, Retry

    clock = FakeClock()
    path = tmp_path / "x.db"
    holder: dict[str, Jobs] = {}

    def execute(ctx: Any) -> None:
        if ctx.state == "first":
            holder["other"].debounce("d").add("k", "second")  # queued: our claim is held
            raise RuntimeError("flush fails")

    registry = {
        "d": Debounce(
            event=str,
            execute=execute,
            flush_after=10,
            retry=Retry(max_attempts=1, delay=Backoff.fixed(1)),
        )
    }
    with Jobs(path, registry, clock=clock) as jobs, Jobs(path, registry, clock=clock) as other:
        holder["other"] = other
        jobs.debounce("d").add("k", "first")
        clock.advance(10)
        jobs.run_due()  # fails, exhausted, terminated
        status = jobs.debounce("d").status("k")
        assert status.status == "debouncing"
        assert status.event_count == 1
        jobs.run_due()  # folds the queued event into a new batch
        assert jobs.debounce("d").get_state("k") == "second"


def test_on_error_of_a_failed_fold_sees_this_steps_key_and_its_bad_state_is_refused(
    make: Make,
) -> None:
    keys: list[str] = []
    fail_next = [False]

    def reduce(ctx: Any) -> int:
        keys.append(ctx.step_key)
        if fail_next[0]:
            raise RuntimeError("reducer")
        return int(ctx.event)

    def on_error(error: BaseException, ctx: Any) -> None:
        keys.append("on_error " + ctx.step_key)

    job = Debounce(event=int, execute=lambda ctx: None, on_event=reduce, on_error=on_error,
                   flush_after=10)  # fmt: skip
    jobs, clock = make({"d": job})
    b, _ = make({"d": job}, clock=clock)
    jobs.debounce("d").add("u", 1)
    token = b.engine.locks.try_acquire("debounce:d:u")
    assert token is not None
    jobs.debounce("d").add("u", 2)  # queued behind b's claim
    b.engine.locks.release(token)
    fail_next[0] = True
    jobs.run_due()  # folds the queued event: the reducer fails, on_error handles it
    assert keys[0] == "debounce:d:u#1"
    assert keys[-1] == "on_error debounce:d:u#2"


@pytest.mark.sqlite_only  # reads the file through Admin/the SQLite store
def test_a_manual_flush_request_is_not_postponed_by_a_later_add(make: Make, tmp_path: Path) -> None:
    flushed: list[tuple[str, int]] = []
    job = Debounce(
        event=int, execute=lambda ctx: flushed.append((ctx.flush_reason, ctx.event_count)),
        flush_after="1 hour",
    )  # fmt: skip
    jobs, clock = make({"d": job})
    jobs.debounce("d").add("u", 1)
    with Admin(tmp_path / "jobs.db", clock=clock) as admin:
        admin.flush("debounce:d:u")
    jobs.debounce("d").add("u", 2)
    assert jobs.run_due() == 1
    assert flushed == [("manual", 2)]


def test_a_fenced_out_write_leaves_the_queue_alone(make: Make) -> None:
    """The store's contract: a write whose fence fails changes nothing, queued events included."""
    from durajobs.stores.base import Write

    jobs, _ = make({JOB: Debounce(event=Click, execute=Recorder(), flush_after="5s")})
    store = jobs.engine.store
    store.enqueue("debounce:d:u", "d", "u", "1", None, 100.0)
    store.enqueue("debounce:d:u", "d", "u", "2", None, 100.0)
    row = store.load("debounce:d:u")
    assert row is not None
    stale = Write.step(
        "debounce:d:u", "d", "u", row.step + 7, row._replace(step=row.step + 8),
        [("x", 1, None, None, None)], consumed=10**9, requeue="3",
    )  # fmt: skip
    assert store.commit([stale], 101.0, 100) == [False]
    assert [q.event for q in store.queued("debounce:d:u")] == ["1", "2"]
    assert store.history("debounce:d:u") == []
