"""Flow control through the public API (issue 21): pause/resume, concurrency slots, the rate
budget and priorities, on both stores, in virtual time (``FakeClock``); the real-process
tests are in ``test_flow_processes.py``."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from durajobs import Continuous, Debounce, FakeClock, Jobs, PauseResult, Task, every
from durajobs.errors import InstanceBusyError, InvalidStateError, JobNotFoundError

pytestmark = pytest.mark.both_stores

T0 = datetime(2026, 1, 1, tzinfo=UTC)

Make = Callable[..., Jobs]


@pytest.fixture
def make(new_database: Path | str) -> Iterator[Make]:
    opened: list[Jobs] = []
    path = new_database

    def make(registry: dict[str, Any], clock: FakeClock, **kw: Any) -> Jobs:
        jobs = Jobs(path, registry, clock=clock, **kw)
        opened.append(jobs)
        return jobs

    yield make
    for jobs in opened:
        jobs.close()


def _ran(log: list[str]) -> Callable[[Any], None]:
    def execute(ctx: Any) -> None:
        log.append(ctx.instance_id.rsplit(":", 1)[1])

    return execute


def _task(log: list[str], **kw: Any) -> Task:
    def on_event(event: int, ctx: Any) -> None:
        ctx.state = (ctx.state or 0) + event
        ctx.schedule(timedelta(seconds=10))

    return Task(state=int, event=int, on_event=on_event, execute=_ran(log), **kw)


def test_pause_holds_alarms_while_client_calls_work(make: Make) -> None:
    clock = FakeClock(T0)
    log: list[str] = []
    jobs = make({"tick": Continuous(state=int, schedule=every("1m"), execute=_ran(log),
                                     start_immediately=False),
                 "orders": _task(log), "batch": Debounce(event=int, execute=_ran(log),
                                                         flush_after=5)}, clock)  # fmt: skip
    tick, orders, batch = jobs.continuous("tick"), jobs.task("orders"), jobs.debounce("batch")
    tick.start("t1", 0)
    assert jobs.pause("tick") == PauseResult("tick", True, True)
    assert jobs.pause("tick").changed is False  # already paused
    assert orders.pause("o1") == PauseResult("task:orders:o1", True, True)
    orders.send("o1", 1)  # client calls still work on a paused instance: on_event runs
    orders.send("o2", 1)
    batch.add("b1", 1)
    batch.pause("b1")
    batch.add("b1", 2)  # stored and folded
    assert tick.status("t1").paused
    assert orders.status("o1").paused
    assert not orders.status("o2").paused
    clock.advance("5 minutes")
    assert jobs.run_due() == 1  # only o2 ran
    assert log == ["o2"]
    assert jobs.next_alarm() is None  # paused alarms do not wake anybody
    assert jobs.paused() == {"tick", "task:orders:o1", "debounce:batch:b1"}
    # Resume: the missed alarms are due now and follow the catch-up rules (one catch-up run
    # for catch_up="one", not five).
    jobs.resume("tick")
    orders.resume("o1")
    batch.resume("b1")
    assert jobs.run_due() == 3
    assert sorted(log) == ["b1", "o1", "o2", "t1"]
    assert orders.get_state("o1") == 1
    assert tick.status("t1").run_count == 1
    assert tick.status("t1").next_run_at == T0 + timedelta(minutes=6)


def test_a_paused_job_pauses_new_instances_and_terminate_still_works(make: Make) -> None:
    clock = FakeClock(T0)
    log: list[str] = []
    jobs = make({"orders": _task(log)}, clock)
    orders = jobs.task("orders")
    jobs.pause("orders")
    orders.send("new", 1)  # created while its job is paused: paused in effect
    assert orders.status("new").paused
    clock.advance("1 minute")
    assert jobs.run_due() == 0
    assert orders.terminate("new").terminated
    assert orders.status("new").status == "not_found"
    with pytest.raises(JobNotFoundError, match="no job named 'nope'"):
        jobs.pause("nope")


def test_paused_across_jobs_objects(make: Make) -> None:
    """The pause is stored: another process's Jobs (here another object) sees it."""
    clock = FakeClock(T0)
    log: list[str] = []
    first = make({"orders": _task(log)}, clock)
    second = make({"orders": _task(log)}, clock)
    first.task("orders").send("o1", 1)
    first.pause("orders")
    clock.advance("1 minute")
    assert second.run_due() == 0
    first.resume("orders")
    assert second.run_due() == 1


def test_concurrency_slots_are_shared_by_jobs_objects(make: Make) -> None:
    """concurrency=1: while one Jobs runs a step of the job (its handler blocks), another
    Jobs on the same database holds the job's other due steps and runs the rest."""
    clock = FakeClock(T0)
    entered, release = threading.Event(), threading.Event()
    log: list[str] = []

    def slow(ctx: Any) -> None:
        log.append(ctx.instance_id)
        if ctx.instance_id.endswith(":a"):
            entered.set()
            release.wait(10)

    def on_event(event: int, ctx: Any) -> None:
        ctx.schedule(timedelta(seconds=1))

    registry = {"limited": Task(state=int, event=int, on_event=on_event, execute=slow,
                                concurrency=1),
                "free": _task(log)}  # fmt: skip
    first, second = make(registry, clock), make(registry, clock)
    client = first.task("limited")
    client.send("a", 1)
    clock.advance("1 second")
    for user_id in ("b", "c"):
        client.send(user_id, 1)
    first.task("free").send("f", 1)
    clock.advance("20 seconds")
    worker = threading.Thread(target=first.engine.run_due, kwargs={"only": ["task:limited:a"]})
    worker.start()
    try:
        assert entered.wait(10)
        held: dict[str, float | None] = {}
        assert second.engine.run_due(held=held) == 1  # only the free job's step
        assert held == {"task:limited:b": None, "task:limited:c": None}
        with pytest.raises(InstanceBusyError, match=r"all 1 slots of job 'limited'"):
            second.with_path(second.location, wait_timeout=0.05).task("limited").trigger("b")
    finally:
        release.set()
        worker.join()
    assert second.run_due() == 2
    assert sorted(log) == ["f", "task:limited:a", "task:limited:b", "task:limited:c"]


def test_rate_budget_is_shared_and_says_when_it_refills(make: Make) -> None:
    clock = FakeClock(T0)
    log: list[str] = []
    registry = {"api": _task(log, rate="2/s")}
    first, second = make(registry, clock), make(registry, clock)
    for i in range(5):
        first.task("api").send(f"o{i}", 1)
    clock.advance("10 seconds")
    held: dict[str, float | None] = {}
    assert first.engine.run_due(held=held) == 2  # a burst of one interval's count
    assert set(held) == {"task:api:o2", "task:api:o3", "task:api:o4"}
    refill = T0.timestamp() + 10.5  # the next token: half a second later
    assert list(held.values()) == [pytest.approx(refill)] * 3
    assert second.run_due() == 0  # the budget is shared
    clock.advance("0.5 seconds")
    assert second.run_due() == 1
    clock.advance("10 seconds")
    assert first.run_due() == 2
    assert sorted(log) == [f"o{i}" for i in range(5)]


def test_a_held_job_does_not_crowd_out_the_others(make: Make) -> None:
    """300 due steps of a rate-limited job sit before one of another job: run_due reads
    past the held job (the due reads take 256 at a time)."""
    clock = FakeClock(T0)
    log: list[str] = []
    jobs = make({"slow": _task(log, rate="1/h"), "other": _task(log)}, clock)
    jobs.task("slow").send_many([(f"s{i}", 1) for i in range(300)])
    clock.advance("1 second")
    jobs.task("other").send("x", 1)
    clock.advance("1 minute")
    assert jobs.run_due() == 2
    assert sorted(log) == ["s0", "x"]


def test_higher_priority_runs_first(make: Make) -> None:
    clock = FakeClock(T0)
    log: list[str] = []
    jobs = make({"news": _task(log, priority=0), "billing": _task(log, priority=10)}, clock)
    for i in range(10):  # the low-priority ones are due first
        jobs.task("news").send(f"n{i}", 1)
        clock.advance("0.01 seconds")
    for i in range(10):
        jobs.task("billing").send(f"b{i}", 1)
        clock.advance("0.01 seconds")
    clock.advance("1 minute")
    assert jobs.run_due() == 20
    assert log == [f"b{i}" for i in range(10)] + [f"n{i}" for i in range(10)]


def test_the_cli_pauses_and_resumes_jobs_and_instances(make: Make) -> None:
    """``durajobs pause|resume JOB|ID`` (the Admin behind it), ``ls``/``show`` say paused; a
    target that names nothing is refused with a clear message and exit code."""
    from test_cli import one_line_error, run_in_process

    clock = FakeClock(T0)
    log: list[str] = []
    jobs = make({"orders": _task(log), "other": _task(log)}, clock)
    jobs.task("orders").send("o1", 1)
    jobs.task("other").send("x1", 1)
    db = str(jobs.location)
    assert run_in_process("--db", db, "pause", "orders").code == 0
    assert run_in_process("--db", db, "pause", "task:other:x1").code == 0
    again = run_in_process("--db", db, "pause", "orders")
    assert "already paused" in again.stdout
    listed = run_in_process("--db", db, "ls", "--json").json()
    assert {r["instance_id"]: r["paused"] for r in listed} == {
        "task:orders:o1": True, "task:other:x1": True,
    }  # fmt: skip
    assert "(paused)" in run_in_process("--db", db, "ls").stdout
    listed = run_in_process("--db", db, "ls", "--status", "paused", "--json").json()
    assert [r["instance_id"] for r in listed] == ["task:orders:o1", "task:other:x1"]
    stats = run_in_process("--db", db, "stats", "--json").json()
    assert stats["paused"] == ["orders", "task:other:x1"]
    assert "paused        orders, task:other:x1" in run_in_process("--db", db, "stats").stdout
    assert run_in_process("--db", db, "show", "task:orders:o1", "--json").json()["paused"]
    clock.advance("1 minute")
    assert jobs.run_due() == 0
    resumed = run_in_process("--db", db, "resume", "orders")
    assert resumed.code == 0
    assert "resumed orders" in resumed.stdout
    assert jobs.run_due() == 1
    assert log == ["o1"]
    for target, code, text in [
        ("nosuchjob", 3, "no job named 'nosuchjob' has instances"),
        ("task:other:nope", 3, "task:other:nope: no such instance"),
        ("bogus:x:y", 2, "is not an instance id"),
    ]:
        run = run_in_process("--db", db, "pause", target)
        assert (run.code, text in one_line_error(run)) == (code, True), run
    assert run_in_process("--db", db, "resume", "task:other:x1").code == 0
    assert jobs.paused() == frozenset()


def test_paused_instances_in_the_metrics(make: Make) -> None:
    """``durajobs_instances{status="paused"}``: all of a paused job's instances, or the
    paused ones one by one (an overlay: they are counted under their status too)."""
    from prometheus_client.parser import text_string_to_metric_families

    from durajobs.admin import Admin
    from durajobs.metrics import Metrics

    clock = FakeClock(T0)
    log: list[str] = []
    jobs = make({"orders": _task(log), "other": _task(log)}, clock)
    for user_id in ("o1", "o2", "o3"):
        jobs.task("orders").send(user_id, 1)
    jobs.task("other").send("x1", 1)
    jobs.task("other").send("x2", 1)
    jobs.pause("orders")
    jobs.task("other").pause("x2")
    jobs.task("other").pause("gone")  # an id with no instance counts for nothing
    with Admin(jobs.location, clock=clock) as admin:
        text = Metrics(lambda: admin).render().decode()
    paused = {
        sample.labels["job"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "durajobs_instances" and sample.labels["status"] == "paused"
    }
    assert paused == {"orders": 3, "other": 1}


def test_dashboard_pause_and_resume_buttons(make: Make) -> None:
    """The instance page offers Pause / Pause job, then Resume / Resume job, POST only like
    the other actions; the page shows the paused badge."""
    from test_web import Client

    from durajobs.web import make_app

    clock = FakeClock(T0)
    log: list[str] = []
    jobs = make({"orders": _task(log)}, clock)
    jobs.task("orders").send("o1", 1)
    dashboard = make_app(jobs.location)
    try:
        client = Client(dashboard)
        page = client.get("/instance", {"id": "task:orders:o1"}).text
        assert 'value="pause"' in page
        assert 'value="pause_job"' in page
        assert "status-paused" not in page
        answer = client.post("/action", {"id": "task:orders:o1", "action": "pause_job"})
        assert answer.status == 303
        assert jobs.paused() == {"orders"}
        page = client.get("/instance", {"id": "task:orders:o1", "done": "pause_job"}).text
        assert "status-paused" in page
        assert "Job paused" in page
        assert 'value="resume_job"' in page
        assert client.post("/action", {"id": "task:orders:o1", "action": "pause"}).status == 303
        assert jobs.paused() == {"orders", "task:orders:o1"}
        clock.advance("1 minute")
        assert jobs.run_due() == 0
        for action in ("resume_job", "resume"):
            assert client.post("/action", {"id": "task:orders:o1", "action": action}).status == 303
        assert jobs.paused() == frozenset()
        assert jobs.run_due() == 1
    finally:
        dashboard.close()
    read_only = make_app(jobs.location, read_only=True)
    try:
        form = {"id": "task:orders:o1", "action": "pause"}
        assert Client(read_only).post("/action", form).status == 403
    finally:
        read_only.close()


def test_async_pause_and_resume(make: Make) -> None:
    import asyncio

    from durajobs.aio import AsyncJobs

    clock = FakeClock(T0)
    jobs = make({"orders": _task([])}, clock)
    ajobs = AsyncJobs(jobs)

    async def calls() -> list[PauseResult]:
        return [
            await ajobs.pause("orders"),
            await ajobs.task("orders").pause("o1"),
            await ajobs.resume("orders"),
            await ajobs.task("orders").resume("o1"),
        ]

    assert [r.changed for r in asyncio.run(calls())] == [True, True, True, True]
    assert jobs.paused() == frozenset()


def test_paused_alarms_are_not_overdue(make: Make) -> None:
    """doctor and the metrics count overdue alarms: a paused one waits on purpose."""
    from durajobs.admin import Admin

    clock = FakeClock(T0)
    jobs = make({"orders": _task([])}, clock)
    jobs.task("orders").send("o1", 1)
    jobs.task("orders").send("o2", 1)
    jobs.task("orders").pause("o1")
    clock.advance("1 hour")
    with Admin(jobs.location, clock=clock) as admin:
        assert admin.gauges().overdue == 1
        assert [o.instance_id for o in admin.overdue()] == ["task:orders:o2"]
        jobs.pause("orders")
        assert admin.gauges().overdue == 0


def test_a_handler_triggering_its_own_full_job_fails_at_once(make: Make) -> None:
    """concurrency=1: a handler of the job that triggers another instance of it would wait
    for its own slot (wait_timeout, 30 s); it gets InvalidStateError at once instead."""
    clock = FakeClock(T0)
    seen: list[str] = []
    holder: list[Jobs] = []

    def execute(ctx: Any) -> None:
        try:
            holder[0].task("solo").trigger("other")
        except InvalidStateError as exc:
            seen.append(str(exc))

    def on_event(event: int, ctx: Any) -> None:
        ctx.schedule(timedelta(seconds=1))

    jobs = make(
        {"solo": Task(state=int, event=int, on_event=on_event, execute=execute, concurrency=1)},
        clock,
    )
    holder.append(jobs)
    jobs.task("solo").send("first", 1)
    jobs.task("solo").send("other", 1)
    clock.advance("1 minute")
    assert jobs.run_due() == 2
    assert len(seen) == 2
    assert "would wait for itself" in seen[0]
