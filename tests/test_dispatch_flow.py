"""The dispatcher's flow control (``durajobs.dispatch``), driven by events and a ``FakeClock``:
held jobs sleep until their budget refills or a slot may have freed (no polling, no idle
wake-ups), a job never has more than its ``concurrency`` handed out at once, priorities with
aging decide who goes first."""

from __future__ import annotations

import attrs

from durajobs import FakeClock
from durajobs.core.flow import PRIORITY_AGING, prioritized
from durajobs.dispatch import SLOT_RECHECK, Dispatcher, StepReport


@attrs.frozen
class Row:
    instance_id: str
    step: int = 1
    due_at: float | None = 0.0

    @property
    def job(self) -> str:
        return self.instance_id.split(":", 2)[1]


def task(name: str, due_at: float = 0.0) -> Row:
    return Row(f"task:{name}", due_at=due_at)


def handed_out(dispatch: Dispatcher, due: list[Row], now: float, wall: float = 0.0) -> list[str]:
    dispatch.begin_read(now)
    dispatch.on_due(due, now, complete=True, wall=wall)
    return [i for _, batch in dispatch.assignments(now) for i in batch.steps]


def test_a_rate_held_job_sleeps_until_its_refill_and_is_read_past() -> None:
    clock = FakeClock(1000.0)
    dispatch = Dispatcher()
    dispatch.add_worker(1)
    assert handed_out(dispatch, [task("api:1"), task("api:2")], clock.time()) == [
        "task:api:1"
    ]  # a step of unknown duration goes alone
    refill = clock.time() + 0.5
    dispatch.on_done(1, [], clock.time(), held={"task:api:1": refill})
    assert dispatch.held_jobs() == {"api"}  # the next read leaves the job out
    # the backlog asks for a read now; after it, nothing but the refill wakes the daemon
    assert handed_out(dispatch, [task("other:1")], clock.time()) == ["task:other:1"]
    dispatch.on_done(1, [], clock.time())
    dispatch.begin_read(clock.time())
    dispatch.on_due([], clock.time(), complete=True)
    assert dispatch.next_wakeup(clock.time()) == refill
    clock.advance(0.5)
    assert dispatch.should_read(clock.time())
    dispatch.begin_read(clock.time())
    assert dispatch.held_jobs() == set()


def test_a_held_instance_is_not_mistaken_for_a_stuck_one() -> None:
    dispatch = Dispatcher()
    dispatch.add_worker(1)
    handed_out(dispatch, [task("api:1")], 0.0)
    dispatch.on_done(1, [], 0.0, held={"task:api:1": 0.1})
    assert handed_out(dispatch, [task("api:1")], 0.2) == ["task:api:1"]
    assert dispatch.backoff == {}


def test_a_slot_hold_ends_with_a_local_step_a_wake_up_or_the_recheck() -> None:
    dispatch = Dispatcher(limits={"api": 1})
    for worker in (1, 2):
        dispatch.add_worker(worker)
    dispatch.step_seconds["api"] = 0.001
    # concurrency=1: one of the two due steps is handed out, the other waits here
    assert handed_out(dispatch, [task("api:1"), task("api:2")], 0.0) == ["task:api:1"]
    dispatch.on_done(1, [], 0.0, held={"task:api:1": None})  # another host holds the slot
    assert dispatch.next_wakeup(0.0) == 0.0  # the backlog: one read
    dispatch.begin_read(0.0)
    dispatch.on_due([], 0.0, complete=True)
    assert dispatch.next_wakeup(0.0) == SLOT_RECHECK  # the only wake-up, at most
    dispatch.on_wake(0.3)
    assert dispatch.held_jobs() == set()
    dispatch.on_done(2, [], 0.3, held={"task:api:2": None})
    dispatch.on_steps([StepReport("task:api:9", "ok", 1, 1.0, None)], 0.4)
    assert dispatch.held_jobs() == set()


def test_concurrency_caps_what_is_handed_out_at_once() -> None:
    dispatch = Dispatcher(limits={"api": 2})
    for worker in range(4):
        dispatch.add_worker(worker)
    due = [task(f"api:{i}") for i in range(5)] + [task("other:1")]
    first = handed_out(dispatch, due, 0.0)
    assert sorted(first) == ["task:api:0", "task:api:1", "task:other:1"]
    # while those run, no more of the job goes out, whatever the idle workers
    assert handed_out(dispatch, due[2:5], 0.01) == []


def test_priorities_with_aging() -> None:
    priorities = {"billing": 5}
    dispatch = Dispatcher(
        order=lambda rows, wall: prioritized(
            rows, lambda r: priorities.get(r.job, 0), lambda r: r.due_at, wall
        )
    )
    dispatch.add_worker(1)
    wall = 10_000.0
    due = [task("news:old", wall - 1), task("billing:1", wall)]
    assert handed_out(dispatch, due, 0.0, wall) == ["task:billing:1"]
    dispatch.on_done(1, [], 0.0)
    # a news step that waited longer than 5 priority levels' aging outranks fresh billing
    starving = task("news:starving", wall - 5 * PRIORITY_AGING - 1)
    assert handed_out(dispatch, [starving, task("billing:2", wall)], 0.1, wall) == [
        "task:news:starving"
    ]
