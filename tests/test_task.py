"""Task jobs through the public API: send/trigger/status/get_state/terminate, the schedule,
on_idle / on_error ordering, retries, counters, tagged unions of event types, duplicate keys.

Real SQLite files in ``tmp_path``; time is a ``FakeClock``. Behaviour items 8 and 9 of
DESIGN.md and the Task part of issue 7.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
import pytest

from durajobs import (
    Backoff,
    FakeClock,
    Jobs,
    Retry,
    SendResult,
    Task,
    TaskStatus,
    TaskTriggerResult,
    TerminateResult,
)
from durajobs.errors import (
    DuplicateEventError,
    ExecutionError,
    InstanceNotFoundError,
    SchedulerError,
    ValidationError,
)

pytestmark = pytest.mark.both_stores  # [sqlite] and [postgres]

T0 = datetime(2026, 1, 1, tzinfo=UTC)
JOB = "orders"
IID = "task:orders:o1"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@attrs.frozen
class Placed:
    amount: int


@attrs.frozen
class Paid:
    amount: int  # the same shape as Placed: only the tag tells them apart


@attrs.frozen
class Note:
    text: str


Event = Placed | Paid | Note


@attrs.define
class Order:
    status: str = "new"
    amount: int = 0
    notes: list[str] = attrs.Factory(list)


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


def history(jobs: Jobs, instance_id: str = IID) -> list[Any]:
    return jobs.engine.store.history(instance_id, limit=1000)


def names(jobs: Jobs, instance_id: str = IID) -> list[str]:
    return [r.event for r in history(jobs, instance_id)]


class Script:
    """Task handlers driven by a table of actions, recording a call log.

    ``on_event`` applies the event to the Order state; events with ``text`` starting with a
    command (``"schedule:5 minutes"``, ``"cancel"``, ``"terminate"``, ``"raise"``) do that.
    """

    def __init__(self) -> None:
        self.log: list[str] = []
        self.seen: list[dict[str, Any]] = []
        self.execute_actions: list[str] = []  # popped per execute: "", "raise", "reschedule"...
        self.idle_actions: list[str] = []
        self.error_actions: list[str] = []
        self.errors: list[BaseException] = []

    def _snapshot(self, name: str, ctx: Any, **extra: Any) -> None:
        self.seen.append(
            {
                "handler": name,
                "state": ctx.state,
                "scheduled_at": ctx.scheduled_at,
                "event_count": ctx.event_count,
                "execute_count": ctx.execute_count,
                "created_at": ctx.created_at,
                "instance_id": ctx.instance_id,
                "job_name": ctx.job_name,
                "id": ctx.id,
                **extra,
            }
        )

    def on_event(self, event: Any, ctx: Any) -> None:
        self.log.append("on_event")
        self._snapshot("on_event", ctx, event=event, is_first_event=ctx.is_first_event)
        state = ctx.state if ctx.state is not None else Order()
        if isinstance(event, Placed):
            ctx.state = attrs.evolve(state, status="placed", amount=event.amount)
        elif isinstance(event, Paid):
            ctx.state = attrs.evolve(state, status="paid", amount=state.amount - event.amount)
        else:
            self._command(event.text, ctx, state)

    def _command(self, text: str, ctx: Any, state: Order) -> None:
        command, _, arg = text.partition(":")
        if command == "schedule":
            ctx.schedule(arg)
        elif command == "cancel":
            ctx.cancel_schedule()
        elif command == "terminate":
            ctx.terminate(arg or None)
        elif command == "raise":
            ctx.state = attrs.evolve(state, notes=[*state.notes, "half-done"])
            raise RuntimeError(arg or "on_event failed")
        elif command == "noop":
            pass
        else:
            ctx.state = attrs.evolve(state, notes=[*state.notes, text])

    def execute(self, ctx: Any) -> None:
        self.log.append("execute")
        self._snapshot("execute", ctx, attempt=ctx.attempt)
        action = self.execute_actions.pop(0) if self.execute_actions else ""
        state = ctx.state if ctx.state is not None else Order()
        ctx.state = attrs.evolve(state, notes=[*state.notes, "executed"])
        if action == "raise":
            raise RuntimeError("execute failed")
        if action.startswith("schedule:"):
            ctx.schedule(action.partition(":")[2])
        elif action == "terminate":
            ctx.terminate("done")

    def on_idle(self, ctx: Any) -> None:
        self.log.append("on_idle")
        self._snapshot("on_idle", ctx)
        action = self.idle_actions.pop(0) if self.idle_actions else ""
        if action == "raise":
            raise RuntimeError("on_idle failed")
        if action.startswith("schedule:"):
            ctx.schedule(action.partition(":")[2])
        state = ctx.state if ctx.state is not None else Order()
        ctx.state = attrs.evolve(state, notes=[*state.notes, "idle"])

    def on_error(self, error: BaseException, ctx: Any) -> None:
        self.log.append("on_error")
        self.errors.append(error)
        self._snapshot("on_error", ctx)
        action = self.error_actions.pop(0) if self.error_actions else ""
        if action == "raise":
            raise ValueError("on_error failed")
        state = ctx.state if ctx.state is not None else Order()
        ctx.state = attrs.evolve(state, notes=[*state.notes, f"error: {error}"])
        if action.startswith("schedule:"):
            ctx.schedule(action.partition(":")[2])

    def task(self, *, idle: bool = False, error: bool = False, **kwargs: Any) -> Task:
        return Task(
            state=Order, event=Event, on_event=self.on_event, execute=self.execute,
            on_idle=self.on_idle if idle else None, on_error=self.on_error if error else None,
            **kwargs,
        )  # fmt: skip


# -- send / status / get_state ----------------------------------------------------------------


def test_send_result_and_status_fields(make: Make) -> None:
    script = Script()
    jobs, clock = make({JOB: script.task()})
    client = jobs.task(JOB)
    clock.advance(7)
    first = client.send("o1", Placed(100))
    assert first == SendResult(IID, True, None)
    status = client.status("o1")
    assert status == TaskStatus("idle", None, at(7), 1, 0)
    assert client.get_state("o1") == Order("placed", 100)

    clock.advance(3)
    second = client.send("o1", Note("schedule:5 minutes"))
    assert second == SendResult(IID, False, at(310))
    status = client.status("o1")
    assert status.status == "active"
    assert status.scheduled_at == at(310)
    assert status.created_at == at(7)  # the first event's time
    assert status.event_count == 2
    assert status.execute_count == 0


def test_status_and_state_of_a_missing_instance(make: Make) -> None:
    jobs, _ = make({JOB: Script().task()})
    client = jobs.task(JOB)
    assert client.status("nobody") == TaskStatus("not_found")
    status = client.status("nobody")
    assert (status.scheduled_at, status.created_at, status.event_count, status.execute_count) == (
        None,
        None,
        0,
        0,
    )
    assert client.get_state("nobody") is None
    assert client.trigger("nobody") == TaskTriggerResult(False)
    assert client.terminate("nobody") == TerminateResult(False, None)


def test_state_is_none_before_the_first_assignment(make: Make) -> None:
    seen: list[Any] = []

    def on_event(event: Any, ctx: Any) -> None:
        seen.append(ctx.state)
        if isinstance(event, Placed):
            ctx.state = Order("placed", event.amount)

    task = Task(state=Order, event=Event, on_event=on_event, execute=lambda ctx: None)
    jobs, _ = make({JOB: task})
    client = jobs.task(JOB)
    client.send("o1", Note("hello"))
    assert client.status("o1").status == "idle"
    assert client.get_state("o1") is None
    client.send("o1", Placed(5))
    client.send("o1", Note("again"))
    assert seen == [None, None, Order("placed", 5)]


def test_terminate_purges_and_the_id_starts_fresh(make: Make) -> None:
    script = Script()
    jobs, clock = make({JOB: script.task()})
    client = jobs.task(JOB)
    client.send("o1", Placed(1))
    client.send("o1", Note("schedule:1 hour"))
    assert client.terminate("o1", reason="customer left") == TerminateResult(True, "customer left")
    assert client.status("o1").status == "not_found"
    assert client.get_state("o1") is None
    assert jobs.next_alarm() is None
    clock.advance("2 hours")
    assert jobs.run_due() == 0
    assert "execute" not in script.log
    final = history(jobs)[-1]
    assert final.event == "job.terminated"
    data = json.loads(final.data)
    assert data["reason"] == "customer left"
    assert data["final_state"] == {"status": "placed", "amount": 1, "notes": []}
    assert client.terminate("o1") == TerminateResult(False, None)

    result = client.send("o1", Note("noop"))
    assert result.created is True
    status = client.status("o1")
    assert status.event_count == 1
    assert status.created_at == clock.now()


def test_terminate_without_reason(make: Make) -> None:
    jobs, _ = make({JOB: Script().task()})
    client = jobs.task(JOB)
    client.send("o1", Placed(1))
    assert client.terminate("o1") == TerminateResult(True, None)


# -- trigger ----------------------------------------------------------------------------------


def test_trigger_runs_execute_now_and_clears_the_alarm(make: Make) -> None:
    script = Script()
    jobs, clock = make({JOB: script.task()})
    client = jobs.task(JOB)
    client.send("o1", Placed(1))
    client.send("o1", Note("schedule:1 hour"))
    clock.advance(60)
    assert client.trigger("o1") == TaskTriggerResult(True, False, False)
    assert script.log[-1] == "execute"
    assert script.seen[-1]["scheduled_at"] is None
    assert script.seen[-1]["execute_count"] == 1
    status = client.status("o1")
    assert status.status == "idle"
    assert status.scheduled_at is None
    assert status.execute_count == 1
    assert jobs.next_alarm() is None
    clock.advance("2 hours")
    assert jobs.run_due() == 0
    assert script.log.count("execute") == 1


def test_trigger_that_terminates(make: Make) -> None:
    script = Script()
    script.execute_actions = ["terminate"]
    jobs, _ = make({JOB: script.task()})
    client = jobs.task(JOB)
    client.send("o1", Placed(1))
    assert client.trigger("o1") == TaskTriggerResult(True, True, False)
    assert client.status("o1").status == "not_found"


# -- schedule ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "when",
    [
        timedelta(minutes=5),
        "5 minutes",
        "5m",
        "300s",
        T0 + timedelta(minutes=5),
        (T0 + timedelta(minutes=5)).astimezone(timezone(timedelta(hours=2))),
    ],
    ids=["timedelta", "words", "short", "seconds-string", "aware-utc", "aware-plus-2"],
)
def test_schedule_accepts_timedelta_string_and_aware_datetime(make: Make, when: Any) -> None:
    returned: list[datetime] = []

    def on_event(event: Any, ctx: Any) -> None:
        returned.append(ctx.schedule(when))
        returned.append(ctx.scheduled_at)

    task = Task(state=Order, event=Event, on_event=on_event, execute=lambda ctx: None)
    jobs, _ = make({JOB: task})
    client = jobs.task(JOB)
    assert client.send("o1", Placed(1)).scheduled_at == at(300)
    assert returned == [at(300), at(300)]
    assert client.status("o1").scheduled_at == at(300)
    assert jobs.next_alarm() == at(300)


@pytest.mark.parametrize("number", [300, 300.0, True, 0])
def test_schedule_with_a_bare_number_is_a_type_error(make: Make, number: Any) -> None:
    caught: list[BaseException] = []

    def on_event(event: Any, ctx: Any) -> None:
        if isinstance(event, Note):
            try:
                ctx.schedule(number)
            except BaseException as exc:
                caught.append(exc)
        else:
            ctx.schedule(number)

    task = Task(state=Order, event=Event, on_event=on_event, execute=lambda ctx: None)
    jobs, _ = make({JOB: task})
    client = jobs.task(JOB)
    client.send("o1", Note("catch it"))
    assert len(caught) == 1
    assert isinstance(caught[0], TypeError)
    assert client.status("o1").scheduled_at is None
    # Uncaught inside on_event: send raises ExecutionError carrying the TypeError.
    with pytest.raises(ExecutionError) as info:
        client.send("o1", Placed(1))
    assert isinstance(info.value.cause, TypeError)
    assert client.status("o1").event_count == 1


def test_schedule_with_a_naive_datetime_is_an_error(make: Make) -> None:
    caught: list[BaseException] = []

    def on_event(event: Any, ctx: Any) -> None:
        try:
            ctx.schedule(datetime(2026, 1, 1, 0, 5))  # naive on purpose
        except BaseException as exc:
            caught.append(exc)

    task = Task(state=Order, event=Event, on_event=on_event, execute=lambda ctx: None)
    jobs, _ = make({JOB: task})
    jobs.task(JOB).send("o1", Placed(1))
    assert len(caught) == 1
    assert isinstance(caught[0], SchedulerError)
    assert "aware" in str(caught[0])
    assert jobs.task(JOB).status("o1").scheduled_at is None


@pytest.mark.parametrize("bad", ["soon", "-5 minutes", ""])
def test_schedule_with_a_bad_duration_string_is_a_scheduler_error(make: Make, bad: str) -> None:
    caught: list[BaseException] = []

    def on_event(event: Any, ctx: Any) -> None:
        try:
            ctx.schedule(bad)
        except BaseException as exc:
            caught.append(exc)

    task = Task(state=Order, event=Event, on_event=on_event, execute=lambda ctx: None)
    jobs, _ = make({JOB: task})
    jobs.task(JOB).send("o1", Placed(1))
    assert len(caught) == 1
    assert isinstance(caught[0], SchedulerError)


def test_last_schedule_call_wins(make: Make) -> None:
    def on_event(event: Any, ctx: Any) -> None:
        ctx.schedule("1 hour")
        ctx.schedule("10 minutes")
        if isinstance(event, Paid):
            ctx.schedule(T0 + timedelta(days=1))

    task = Task(state=Order, event=Event, on_event=on_event, execute=lambda ctx: None)
    jobs, _ = make({JOB: task})
    client = jobs.task(JOB)
    assert client.send("o1", Placed(1)).scheduled_at == at(600)
    assert client.send("o1", Paid(1)).scheduled_at == at(86400)
    assert jobs.next_alarm() == at(86400)


def test_a_later_event_can_move_or_cancel_the_schedule(make: Make) -> None:
    script = Script()
    jobs, clock = make({JOB: script.task()})
    client = jobs.task(JOB)
    client.send("o1", Note("schedule:10 minutes"))
    assert client.send("o1", Note("schedule:2 minutes")).scheduled_at == at(120)
    assert client.send("o1", Note("noop")).scheduled_at == at(120)  # untouched: kept
    result = client.send("o1", Note("cancel"))
    assert result.scheduled_at is None
    assert client.status("o1").status == "idle"
    assert jobs.next_alarm() is None
    clock.advance("1 hour")
    assert jobs.run_due() == 0
    assert "execute" not in script.log


def test_schedule_then_cancel_in_one_handler_leaves_no_alarm(make: Make) -> None:
    def on_event(event: Any, ctx: Any) -> None:
        ctx.schedule("5 minutes")
        ctx.cancel_schedule()
        assert ctx.scheduled_at is None

    task = Task(state=Order, event=Event, on_event=on_event, execute=lambda ctx: None)
    jobs, _ = make({JOB: task})
    assert jobs.task(JOB).send("o1", Placed(1)).scheduled_at is None
    assert jobs.task(JOB).status("o1").status == "idle"


def test_alarm_runs_execute_at_its_time_and_clears_scheduled_at_first(make: Make) -> None:
    script = Script()
    jobs, clock = make({JOB: script.task()})
    client = jobs.task(JOB)
    client.send("o1", Placed(10))
    client.send("o1", Note("schedule:5 minutes"))
    clock.set(at(299))
    assert jobs.run_due() == 0
    clock.set(at(300))
    assert jobs.run_due() == 1
    execute = script.seen[-1]
    assert execute["handler"] == "execute"
    assert execute["scheduled_at"] is None  # cleared before execute runs
    assert execute["execute_count"] == 1
    assert execute["event_count"] == 2
    assert execute["state"] == Order("placed", 10)
    assert execute["attempt"] == 1
    status = client.status("o1")
    assert status == TaskStatus("idle", None, at(0), 2, 1)
    assert client.get_state("o1") == Order("placed", 10, ["executed"])


def test_execute_can_reschedule_itself(make: Make) -> None:
    script = Script()
    script.execute_actions = ["schedule:1 minute", "schedule:1 minute", ""]
    jobs, clock = make({JOB: script.task()})
    client = jobs.task(JOB)
    client.send("o1", Note("schedule:1 minute"))
    for minute in (1, 2, 3):
        clock.set(at(60 * minute))
        assert jobs.run_due() == 1
    assert script.log.count("execute") == 3
    assert [s["execute_count"] for s in script.seen if s["handler"] == "execute"] == [1, 2, 3]
    status = client.status("o1")
    assert status.status == "idle"
    assert status.execute_count == 3
    clock.advance("1 hour")
    assert jobs.run_due() == 0


def test_a_schedule_in_the_past_is_due_at_once(make: Make) -> None:
    script = Script()
    jobs, clock = make({JOB: script.task()})
    client = jobs.task(JOB)
    clock.set(at(1000))
    when = (T0 + timedelta(seconds=10)).isoformat()

    def on_event(event: Any, ctx: Any) -> None:
        ctx.schedule(datetime.fromisoformat(when))

    jobs.close()
    task = Task(state=Order, event=Event, on_event=on_event, execute=script.execute)
    jobs, _ = make({JOB: task}, clock=clock)
    client = jobs.task(JOB)
    assert client.send("o1", Placed(1)).scheduled_at == at(10)
    assert jobs.run_due() == 1
    assert script.log == ["execute"]


# -- on_idle ----------------------------------------------------------------------------------


def test_on_idle_runs_after_every_step_that_leaves_no_alarm(make: Make) -> None:
    script = Script()
    script.execute_actions = ["schedule:1 minute", ""]
    jobs, clock = make({JOB: script.task(idle=True)})
    client = jobs.task(JOB)

    client.send("o1", Placed(1))  # no alarm -> on_idle
    assert script.log == ["on_event", "on_idle"]
    idle = script.seen[-1]
    assert idle["state"] == Order("placed", 1)  # on_idle sees on_event's changes
    assert idle["scheduled_at"] is None
    assert client.get_state("o1") == Order("placed", 1, ["idle"])  # and its own commit

    script.log.clear()
    client.send("o1", Note("schedule:1 minute"))  # alarm set -> no on_idle
    assert script.log == ["on_event"]

    script.log.clear()
    clock.advance(60)
    assert jobs.run_due() == 1  # execute reschedules -> no on_idle
    assert script.log == ["execute"]

    script.log.clear()
    clock.advance(60)
    assert jobs.run_due() == 1  # execute leaves no alarm -> on_idle
    assert script.log == ["execute", "on_idle"]

    script.log.clear()
    client.trigger("o1")
    assert script.log == ["execute", "on_idle"]


def test_on_idle_does_not_run_after_terminate(make: Make) -> None:
    script = Script()
    script.execute_actions = ["terminate"]
    jobs, clock = make({JOB: script.task(idle=True)})
    client = jobs.task(JOB)
    client.send("o1", Note("terminate:cancelled"))
    assert script.log == ["on_event"]
    assert client.status("o1").status == "not_found"

    script.log.clear()
    client.send("o2", Note("schedule:1 minute"))
    clock.advance(60)
    assert jobs.run_due() == 1
    assert script.log == ["on_event", "execute"]
    assert client.status("o2").status == "not_found"


def test_on_idle_can_schedule_and_that_alarm_commits(make: Make) -> None:
    script = Script()
    script.idle_actions = ["schedule:30 minutes"]
    jobs, clock = make({JOB: script.task(idle=True)})
    client = jobs.task(JOB)
    result = client.send("o1", Placed(1))
    assert result.scheduled_at == at(1800)
    assert client.status("o1").status == "active"
    clock.advance("30 minutes")
    assert jobs.run_due() == 1
    assert script.log == ["on_event", "on_idle", "execute", "on_idle"]


# -- on_error ---------------------------------------------------------------------------------


def test_on_error_handles_an_on_event_error_and_its_changes_commit(make: Make) -> None:
    script = Script()
    jobs, _ = make({JOB: script.task(error=True)})
    client = jobs.task(JOB)
    client.send("o1", Placed(5))
    script.log.clear()
    result = client.send("o1", Note("raise:bad event"))  # does not raise: on_error handled it
    assert result.instance_id == IID
    assert script.log[:2] == ["on_event", "on_error"]
    assert len(script.errors) == 1
    assert isinstance(script.errors[0], RuntimeError)
    assert str(script.errors[0]) == "bad event"
    # on_error starts from the committed state: on_event's half-done change is not there.
    assert client.get_state("o1") == Order("placed", 5, ["error: bad event"])
    assert client.status("o1").event_count == 2
    assert "job.failed" in names(jobs)


def test_on_error_can_schedule(make: Make) -> None:
    script = Script()
    script.error_actions = ["schedule:5 minutes"]
    jobs, clock = make({JOB: script.task(error=True)})
    client = jobs.task(JOB)
    assert client.send("o1", Note("raise")).scheduled_at == at(300)
    assert client.status("o1").status == "active"
    clock.advance(300)
    assert jobs.run_due() == 1
    assert script.log == ["on_event", "on_error", "execute"]


def test_on_idle_runs_after_on_error_handles_an_on_event_error(make: Make) -> None:
    # DESIGN item 8: "after every step that leaves no alarm set (and did not terminate),
    # on_idle runs in the same step" -- also when on_error handled the step's error.
    script = Script()
    jobs, _ = make({JOB: script.task(idle=True, error=True)})
    client = jobs.task(JOB)
    client.send("o1", Note("raise:bad event"))
    assert script.log == ["on_event", "on_error", "on_idle"]


def test_on_idle_runs_after_on_error_handles_an_execute_error(make: Make) -> None:
    script = Script()
    script.execute_actions = ["raise"]
    jobs, clock = make({JOB: script.task(idle=True, error=True)})
    client = jobs.task(JOB)
    client.send("o1", Note("schedule:1 minute"))
    clock.advance(60)
    assert jobs.run_due() == 1
    assert script.log == ["on_event", "execute", "on_error", "on_idle"]
    assert isinstance(script.errors[0], RuntimeError)
    assert str(script.errors[0]) == "execute failed"
    status = client.status("o1")
    assert status.status == "idle"
    assert status.execute_count == 1
    state = client.get_state("o1")
    assert state is not None
    # execute's own change is rolled back with its failure; on_error's and on_idle's commit.
    assert state.notes == ["error: execute failed", "idle"]


def test_on_error_handles_an_on_idle_error_and_on_idle_is_not_rerun(make: Make) -> None:
    script = Script()
    script.idle_actions = ["raise"]
    jobs, _ = make({JOB: script.task(idle=True, error=True)})
    client = jobs.task(JOB)
    client.send("o1", Placed(3))
    assert script.log == ["on_event", "on_idle", "on_error"]
    assert str(script.errors[0]) == "on_idle failed"
    assert client.status("o1").event_count == 1
    state = client.get_state("o1")
    assert state is not None
    assert state.notes[-1] == "error: on_idle failed"


def test_on_idle_error_after_execute_goes_to_on_error(make: Make) -> None:
    script = Script()
    script.idle_actions = ["raise"]
    jobs, clock = make({JOB: script.task(idle=True, error=True)})
    client = jobs.task(JOB)
    client.send("o1", Note("schedule:1 minute"))
    clock.advance(60)
    assert jobs.run_due() == 1
    assert script.log == ["on_event", "execute", "on_idle", "on_error"]
    assert str(script.errors[0]) == "on_idle failed"
    assert client.status("o1").execute_count == 1


def test_on_idle_failing_after_on_error_parks_instead_of_looping(make: Make) -> None:
    executes: list[int] = []

    def on_event(event: Placed, ctx: Any) -> None:
        ctx.state = Order(amount=event.amount)
        ctx.schedule("1 second")

    def execute(ctx: Any) -> None:
        executes.append(1)
        raise RuntimeError("execute")

    def on_idle(ctx: Any) -> None:
        raise RuntimeError("idle")

    job = Task(
        state=Order, event=Placed, on_event=on_event, execute=execute, on_idle=on_idle,
        on_error=lambda error, ctx: None,
    )  # fmt: skip
    jobs, clock = make({JOB: job})
    jobs.task(JOB).send("u", Placed(1))
    clock.advance(1)
    assert jobs.run_due() == 1
    assert jobs.run_due() == 0
    assert executes == [1]
    assert jobs.task(JOB).status("u").status == "failed"


def test_send_raises_execution_error_without_on_error_and_changes_nothing(make: Make) -> None:
    script = Script()
    jobs, clock = make({JOB: script.task(idle=True)})
    client = jobs.task(JOB)

    with pytest.raises(ExecutionError) as info:  # the first event: nothing is created
        client.send("o1", Note("raise:first"))
    assert isinstance(info.value.cause, RuntimeError)
    assert IID in str(info.value)
    assert client.status("o1").status == "not_found"
    assert names(jobs) == []

    client.send("o1", Placed(5))
    client.send("o1", Note("schedule:1 hour"))
    before_status = client.status("o1")
    before_state = client.get_state("o1")
    before_history = names(jobs)
    script.log.clear()
    clock.advance(10)
    with pytest.raises(ExecutionError) as info:
        client.send("o1", Note("raise:second"))
    assert str(info.value.cause) == "second"
    assert info.value.__cause__ is info.value.cause
    assert script.log == ["on_event"]  # no on_idle after a failed step
    assert client.status("o1") == before_status  # event_count unchanged, alarm kept
    assert client.get_state("o1") == before_state
    assert names(jobs) == before_history


def test_send_raises_when_on_error_itself_raises(make: Make) -> None:
    script = Script()
    script.error_actions = ["raise"]
    jobs, _ = make({JOB: script.task(error=True)})
    client = jobs.task(JOB)
    client.send("o1", Placed(1))
    with pytest.raises(ExecutionError):
        client.send("o1", Note("raise"))
    assert script.log == ["on_event", "on_event", "on_error"]
    assert client.status("o1").event_count == 1
    assert client.get_state("o1") == Order("placed", 1)


def test_on_idle_error_without_on_error_fails_the_send(make: Make) -> None:
    script = Script()
    script.idle_actions = ["raise"]
    jobs, _ = make({JOB: script.task(idle=True)})
    client = jobs.task(JOB)
    with pytest.raises(ExecutionError) as info:
        client.send("o1", Placed(1))
    assert str(info.value.cause) == "on_idle failed"
    assert client.status("o1").status == "not_found"


def test_state_that_does_not_fit_fails_the_send(make: Make) -> None:
    def on_event(event: Any, ctx: Any) -> None:
        ctx.state = {"status": "not an Order"}

    task = Task(state=Order, event=Event, on_event=on_event, execute=lambda ctx: None)
    jobs, _ = make({JOB: task})
    with pytest.raises(ExecutionError) as info:
        jobs.task(JOB).send("o1", Placed(1))
    assert isinstance(info.value.cause, ValidationError)
    assert jobs.task(JOB).status("o1").status == "not_found"


# -- retry ------------------------------------------------------------------------------------


def test_execute_retries_with_backoff_then_succeeds(make: Make) -> None:
    script = Script()
    script.execute_actions = ["raise", "raise", ""]
    retry = Retry(max_attempts=3, delay=Backoff.exponential(base="10 seconds", max="1 minute"))
    jobs, clock = make({JOB: script.task(retry=retry)})
    client = jobs.task(JOB)
    client.send("o1", Placed(1))
    client.send("o1", Note("schedule:5 minutes"))
    clock.set(at(300))
    assert jobs.run_due() == 1
    status = client.status("o1")
    assert status.status == "active"  # the retry alarm is pending
    assert status.scheduled_at == at(310)
    assert status.attempt == 2
    assert status.last_error is not None
    assert "execute failed" in status.last_error
    assert status.execute_count == 1
    clock.set(at(310))
    assert jobs.run_due() == 1
    assert client.status("o1").scheduled_at == at(330)  # 10 s, then 20 s
    assert client.status("o1").attempt == 3
    clock.set(at(330))
    assert jobs.run_due() == 1
    executes = [s for s in script.seen if s["handler"] == "execute"]
    assert [s["attempt"] for s in executes] == [1, 2, 3]
    assert [s["execute_count"] for s in executes] == [1, 1, 1]  # a retry keeps its count
    assert all(s["scheduled_at"] is None for s in executes)
    status = client.status("o1")
    assert status.status == "idle"
    assert status.attempt == 1
    assert status.execute_count == 1
    # the failed attempts' state changes were not kept; the successful one's was
    assert client.get_state("o1") == Order("placed", 1, ["executed"])


def test_retry_alarm_after_a_trigger_makes_the_task_active(make: Make) -> None:
    script = Script()
    script.execute_actions = ["raise"]
    retry = Retry(max_attempts=2, delay=Backoff.fixed("1 minute"))
    jobs, clock = make({JOB: script.task(retry=retry)})
    client = jobs.task(JOB)
    client.send("o1", Placed(1))
    assert client.status("o1").status == "idle"
    result = client.trigger("o1")
    assert attrs.evolve(result, error=None) == TaskTriggerResult(True, False, True)
    assert result.error is not None
    assert "RuntimeError: execute failed" in result.error
    status = client.status("o1")
    assert status.scheduled_at == at(60)
    assert status.status == "active"  # DESIGN: "active" = alarm set (a retry alarm included)
    clock.advance(60)
    assert jobs.run_due() == 1
    assert client.status("o1").status == "idle"


def test_execute_exhaustion_with_retry_terminates(make: Make) -> None:
    script = Script()
    script.execute_actions = ["raise"] * 5
    retry = Retry(max_attempts=2, delay=Backoff.linear(base="1s", increment="1s"))
    jobs, clock = make({JOB: script.task(retry=retry)})
    client = jobs.task(JOB)
    client.send("o1", Placed(1))
    client.send("o1", Note("schedule:1 minute"))
    clock.set(at(60))
    assert jobs.run_due() == 1
    clock.set(at(61))
    assert jobs.run_due() == 1
    assert script.log.count("execute") == 2
    assert client.status("o1").status == "not_found"
    assert jobs.next_alarm() is None
    recorded = history(jobs)
    assert [r.event for r in recorded][-4:] == [
        "job.failed",
        "job.failed",
        "job.retry_exhausted",
        "job.terminated",
    ]
    final = recorded[-1]
    assert final.error is not None
    assert "execute failed" in final.error
    assert json.loads(final.data)["reason"] == "retries exhausted"


def test_execute_exhaustion_without_retry_parks_and_retry_resumes(make: Make) -> None:
    script = Script()
    script.execute_actions = ["raise", ""]
    jobs, clock = make({JOB: script.task()})
    client = jobs.task(JOB)
    client.send("o1", Placed(1))
    client.send("o1", Note("schedule:1 minute"))
    clock.set(at(60))
    assert jobs.run_due() == 1
    status = client.status("o1")
    assert status.status == "failed"
    assert status.scheduled_at is None
    assert status.last_error is not None
    assert client.get_state("o1") == Order("placed", 1)
    clock.advance("1 day")
    assert jobs.run_due() == 0
    resumed = client.retry("o1")
    assert resumed.resumed is True
    assert resumed.due_at == clock.now()
    assert client.status("o1").status == "active"
    assert jobs.run_due() == 1
    assert script.log.count("execute") == 2
    assert client.status("o1").status == "idle"
    assert client.get_state("o1") == Order("placed", 1, ["executed"])
    with pytest.raises(InstanceNotFoundError):
        client.retry("nobody")


def test_on_error_handles_exhausted_execute_instead_of_the_policy(make: Make) -> None:
    script = Script()
    script.execute_actions = ["raise", "raise"]
    retry = Retry(max_attempts=2, delay=Backoff.fixed("5s"))
    jobs, clock = make({JOB: script.task(retry=retry, error=True)})
    client = jobs.task(JOB)
    client.send("o1", Note("schedule:1 minute"))
    clock.set(at(60))
    assert jobs.run_due() == 1
    assert "on_error" not in script.log  # not yet exhausted
    clock.set(at(65))
    assert jobs.run_due() == 1
    assert script.log == ["on_event", "execute", "execute", "on_error"]
    assert client.status("o1").status == "idle"  # kept: on_error handled it
    state = client.get_state("o1")
    assert state is not None
    assert state.notes == ["error: execute failed"]


# -- counters and context fields --------------------------------------------------------------


def test_context_counters_and_first_event(make: Make) -> None:
    script = Script()
    jobs, clock = make({JOB: script.task(idle=True)})
    client = jobs.task(JOB)
    client.send("o1", Placed(1))
    clock.advance(5)
    client.send("o1", Note("schedule:1 minute"))
    clock.advance(60)
    jobs.run_due()
    client.send("o1", Paid(1))
    by_handler = [
        (s["handler"], s["event_count"], s["execute_count"], s.get("is_first_event"))
        for s in script.seen
    ]
    assert by_handler == [
        ("on_event", 1, 0, True),
        ("on_idle", 1, 0, None),
        ("on_event", 2, 0, False),
        ("execute", 2, 1, None),
        ("on_idle", 2, 1, None),
        ("on_event", 3, 1, False),
        ("on_idle", 3, 1, None),
    ]
    assert {s["created_at"] for s in script.seen} == {T0}
    assert {(s["instance_id"], s["job_name"], s["id"]) for s in script.seen} == {(IID, JOB, "o1")}
    status = client.status("o1")
    assert (status.event_count, status.execute_count, status.created_at) == (3, 1, T0)


def test_step_key_is_stable_within_a_step_and_differs_between_steps(make: Make) -> None:
    keys: list[str] = []

    def on_event(event: Any, ctx: Any) -> None:
        keys.append(ctx.step_key)

    task = Task(
        state=Order, event=Event, on_event=on_event, execute=lambda ctx: None,
        on_idle=lambda ctx: keys.append(ctx.step_key),
    )  # fmt: skip
    jobs, _ = make({JOB: task})
    jobs.task(JOB).send("o1", Placed(1))
    jobs.task(JOB).send("o1", Placed(2))
    assert keys[0] == keys[1]
    assert keys[2] == keys[3]
    assert keys[0] != keys[2]


# -- event types ------------------------------------------------------------------------------


def test_union_event_types_arrive_as_their_own_class(make: Make) -> None:
    script = Script()
    jobs, _ = make({JOB: script.task()})
    client = jobs.task(JOB)
    sent = [Placed(10), Paid(10), Note("hi")]
    for event in sent:
        client.send("o1", event)
    received = [s["event"] for s in script.seen]
    assert received == sent
    assert [type(e) for e in received] == [Placed, Paid, Note]


def test_union_event_types_round_trip_tagged(make: Make) -> None:
    jobs, _ = make({JOB: Script().task()})
    _, event_codec = jobs.engine.codecs(JOB)
    assert event_codec is not None
    for event in (Placed(3), Paid(3), Note("x")):
        text = event_codec.encode(event, "event")
        raw = json.loads(text)
        assert raw["_type"] == type(event).__name__
        back = event_codec.decode(text, "event")
        assert back == event
        assert type(back) is type(event)  # Placed and Paid share a shape: the tag decides


@pytest.mark.parametrize(
    "event",
    [Order(), "Placed", {"_type": "Placed", "amount": 1}, Placed(amount="ten")],  # type: ignore[arg-type]
)
def test_event_outside_the_union_is_a_validation_error(make: Make, event: Any) -> None:
    script = Script()
    jobs, _ = make({JOB: script.task()})
    client = jobs.task(JOB)
    with pytest.raises(ValidationError):
        client.send("o1", event)
    assert script.log == []
    assert client.status("o1").status == "not_found"


def test_union_state_round_trips_through_the_store(make: Make) -> None:
    def on_event(event: Any, ctx: Any) -> None:
        ctx.state = event  # the last event, as a union-typed state

    task = Task(state=Event, event=Event, on_event=on_event, execute=lambda ctx: None)
    jobs, _ = make({JOB: task})
    client = jobs.task(JOB)
    client.send("o1", Paid(7))
    state = client.get_state("o1")
    assert state == Paid(7)
    assert type(state) is Paid


# -- idempotency keys -------------------------------------------------------------------------


def test_duplicate_key_raises_and_changes_nothing(make: Make) -> None:
    script = Script()
    jobs, clock = make({JOB: script.task(idle=True)})
    client = jobs.task(JOB)
    client.send("o1", Placed(10), key="placed-10")
    before_status = client.status("o1")
    before_state = client.get_state("o1")
    before_history = names(jobs)
    script.log.clear()
    clock.advance(1)
    with pytest.raises(DuplicateEventError) as info:
        client.send("o1", Placed(10), key="placed-10")
    assert "placed-10" in str(info.value)
    assert IID in str(info.value)
    assert script.log == []  # on_event did not run
    assert client.status("o1") == before_status
    assert client.get_state("o1") == before_state
    assert names(jobs) == before_history
    client.send("o1", Paid(10), key="paid-10")
    client.send("o2", Placed(10), key="placed-10")  # another instance: another key space
    assert client.status("o1").event_count == 2
    assert client.status("o2").event_count == 1


def test_failed_send_does_not_burn_its_key(make: Make) -> None:
    script = Script()
    jobs, _ = make({JOB: script.task()})
    client = jobs.task(JOB)
    with pytest.raises(ExecutionError):
        client.send("o1", Note("raise"), key="k")
    client.send("o1", Placed(1), key="k")
    assert client.status("o1").event_count == 1
