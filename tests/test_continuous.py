"""Continuous jobs end to end: real database files, virtual time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

from durajobs import (
    Backoff,
    Continuous,
    ContinuousStatus,
    FakeClock,
    JobNotFoundError,
    Jobs,
    Retry,
    SchedulerError,
    StartResult,
    TerminateResult,
    TriggerResult,
    ValidationError,
    cron,
    every,
)
from durajobs.admin import Admin

pytestmark = pytest.mark.both_stores  # [sqlite] and [postgres]

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@attrs.define
class Tokens:
    access_token: str
    refresh_token: str
    expires_at: float = 0.0


Calls = list[dict[str, Any]]


def recorder(calls: Calls, fail: Callable[[Any], bool] = lambda ctx: False) -> Any:
    def execute(ctx: Any) -> None:
        calls.append(
            {
                "run_count": ctx.run_count,
                "attempt": ctx.attempt,
                "is_retry": ctx.is_retry,
                "scheduled_for": ctx.scheduled_for,
                "instance_id": ctx.instance_id,
                "job_name": ctx.job_name,
                "id": ctx.id,
                "step_key": ctx.step_key,
            }
        )
        if fail(ctx):
            raise RuntimeError(f"boom {ctx.run_count}.{ctx.attempt}")
        ctx.state = attrs.evolve(ctx.state, access_token=f"at-{ctx.run_count}")

    return execute


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def make(tmp_path: Path, clock: FakeClock) -> Iterator[Callable[..., Jobs]]:
    opened: list[Jobs] = []

    def factory(**definition: Any) -> Jobs:
        definition.setdefault("state", Tokens)
        definition.setdefault("schedule", every("30 minutes"))
        jobs = Jobs(tmp_path / "jobs.db", {"tr": Continuous(**definition)}, clock=clock)
        opened.append(jobs)
        return jobs

    yield factory
    for jobs in opened:
        jobs.close()


def test_start_runs_first_step_immediately_and_reports_fields(make: Any) -> None:
    calls: Calls = []
    jobs = make(execute=recorder(calls))
    client = jobs.continuous("tr")
    result = client.start("user-123", Tokens("", "rt_abc"))
    assert result == StartResult("continuous:tr:user-123", True, "running", False)
    assert calls == [
        {
            "run_count": 1,
            "attempt": 1,
            "is_retry": False,
            "scheduled_for": T0,
            "instance_id": "continuous:tr:user-123",
            "job_name": "tr",
            "id": "user-123",
            "step_key": "continuous:tr:user-123#1",
        }
    ]
    assert client.get_state("user-123") == Tokens("at-1", "rt_abc")
    assert client.status("user-123") == ContinuousStatus(
        "running", 1, T0 + timedelta(minutes=30), 1, None
    )


def test_start_existing_instance_returns_it_unchanged(make: Any) -> None:
    calls: Calls = []
    client = make(execute=recorder(calls)).continuous("tr")
    client.start("u", Tokens("", "rt"))
    again = client.start("u", Tokens("other", "other"))
    assert again == StartResult("continuous:tr:u", False, "running", False)
    assert len(calls) == 1
    assert client.get_state("u") == Tokens("at-1", "rt")


def test_start_without_start_immediately_waits_one_period(make: Any, clock: FakeClock) -> None:
    calls: Calls = []
    jobs = make(execute=recorder(calls), start_immediately=False)
    client = jobs.continuous("tr")
    client.start("u", Tokens("", "rt"))
    assert calls == []
    assert client.status("u").next_run_at == T0 + timedelta(minutes=30)
    assert client.status("u").run_count == 0
    clock.advance("29 minutes")
    assert jobs.run_due() == 0
    clock.advance("1 minute")
    assert jobs.run_due() == 1
    assert calls[0]["scheduled_for"] == T0 + timedelta(minutes=30)


def test_schedule_is_anchored_to_due_times_not_completion(make: Any, clock: FakeClock) -> None:
    calls: Calls = []
    jobs = make(execute=recorder(calls))
    client = jobs.continuous("tr")
    client.start("u", Tokens("", "rt"))
    for k in range(1, 5):
        clock.set(T0 + timedelta(minutes=30 * k, seconds=7))  # each run 7 s late
        assert jobs.run_due() == 1
        assert client.status("u").next_run_at == T0 + timedelta(minutes=30 * (k + 1))
    assert [c["scheduled_for"] for c in calls] == [T0 + timedelta(minutes=30 * k) for k in range(5)]


def test_catch_up_one_coalesces_missed_runs(make: Any, clock: FakeClock) -> None:
    calls: Calls = []
    jobs = make(execute=recorder(calls))
    client = jobs.continuous("tr")
    client.start("u", Tokens("", "rt"))
    clock.set(T0 + timedelta(hours=5, minutes=10))  # ten ticks missed
    assert jobs.run_due() == 1
    assert calls[-1]["scheduled_for"] == T0 + timedelta(minutes=30)
    assert client.status("u").next_run_at == T0 + timedelta(hours=5, minutes=30)
    assert client.status("u").run_count == 2


def test_catch_up_skip_runs_nothing_for_missed_ticks(make: Any, clock: FakeClock) -> None:
    calls: Calls = []
    jobs = make(execute=recorder(calls), catch_up="skip")
    client = jobs.continuous("tr")
    client.start("u", Tokens("", "rt"))
    clock.set(T0 + timedelta(hours=5, minutes=10))
    assert jobs.run_due() == 1  # the skip itself is a step
    assert len(calls) == 1
    assert client.status("u").next_run_at == T0 + timedelta(hours=5, minutes=30)
    history = [h.event for h in jobs.engine.store.history("continuous:tr:u")]
    assert history[-1] == "job.skipped"
    # a merely late alarm (no later tick passed) still runs
    clock.set(T0 + timedelta(hours=5, minutes=31))
    assert jobs.run_due() == 1
    assert len(calls) == 2


def test_catch_up_all_runs_every_missed_tick_bounded(make: Any, clock: FakeClock) -> None:
    calls: Calls = []
    jobs = make(execute=recorder(calls), catch_up="all")
    client = jobs.continuous("tr")
    client.start("u", Tokens("", "rt"))
    clock.set(T0 + timedelta(hours=2, minutes=10))
    assert jobs.run_due() == 4  # 00:30, 01:00, 01:30, 02:00
    assert [c["scheduled_for"] for c in calls[1:]] == [
        T0 + timedelta(minutes=30 * k) for k in range(1, 5)
    ]
    assert client.status("u").next_run_at == T0 + timedelta(hours=2, minutes=30)
    # a very long outage is bounded: at most 100 catch-up runs, then coalesced
    clock.set(T0 + timedelta(days=30))
    jobs.run_due()
    assert len(calls) <= 5 + 101
    assert client.status("u").next_run_at == T0 + timedelta(days=30, minutes=30)


def test_trigger_runs_now_and_restarts_the_grid(make: Any, clock: FakeClock) -> None:
    calls: Calls = []
    jobs = make(execute=recorder(calls))
    client = jobs.continuous("tr")
    client.start("u", Tokens("", "rt"))
    clock.advance("10 minutes")
    assert client.trigger("u") == TriggerResult(True, False, False)
    assert calls[-1]["run_count"] == 2
    assert calls[-1]["scheduled_for"] == T0 + timedelta(minutes=10)
    assert client.status("u").next_run_at == T0 + timedelta(minutes=40)
    clock.advance("30 minutes")
    assert jobs.run_due() == 1
    assert client.status("u").next_run_at == T0 + timedelta(minutes=70)
    assert client.status("u").run_count == 3


def test_missing_instances(make: Any) -> None:
    client = make(execute=recorder([])).continuous("tr")
    assert client.status("nope") == ContinuousStatus("not_found", 0, None, 1, None)
    assert client.get_state("nope") is None
    assert client.trigger("nope") == TriggerResult(False)
    assert client.terminate("nope") == TerminateResult(False, None)


def test_terminate_purges_and_the_id_can_start_fresh(make: Any) -> None:
    calls: Calls = []
    jobs = make(execute=recorder(calls))
    client = jobs.continuous("tr")
    client.start("u", Tokens("", "rt"))
    assert client.terminate("u", reason="user left") == TerminateResult(True, "user left")
    assert client.status("u").status == "not_found"
    assert jobs.next_alarm() is None
    last = jobs.engine.store.history("continuous:tr:u")[-1]
    assert last.event == "job.terminated"
    assert '"reason":"user left"' in (last.data or "")
    assert '"final_state":{"access_token":"at-1"' in (last.data or "")
    again = client.start("u", Tokens("", "rt2"))
    assert again.created
    assert client.status("u").run_count == 1


def test_ctx_terminate_ends_the_instance(make: Any, clock: FakeClock) -> None:
    def execute(ctx: Any) -> None:
        if ctx.run_count == 2:
            ctx.terminate("done")

    jobs = make(execute=execute)
    client = jobs.continuous("tr")
    client.start("u", Tokens("", "rt"))
    clock.advance("30 minutes")
    jobs.run_due()
    assert client.status("u").status == "not_found"
    assert client.trigger("u") == TriggerResult(False)


def test_failure_inside_start_and_trigger_does_not_raise(make: Any, clock: FakeClock) -> None:
    calls: Calls = []
    retry = Retry(max_attempts=3, delay=Backoff.fixed("10 seconds"))
    jobs = make(execute=recorder(calls, fail=lambda ctx: ctx.attempt < 3), retry=retry)
    client = jobs.continuous("tr")
    result = client.start("u", Tokens("", "rt"))
    assert result.created
    assert result.retry_scheduled
    status = client.status("u")
    assert status.attempt == 2
    assert status.run_count == 1
    assert status.next_run_at == T0 + timedelta(seconds=10)
    assert status.last_error is not None
    assert "RuntimeError: boom 1.1" in status.last_error
    clock.advance("10 seconds")
    assert jobs.run_due() == 1
    assert client.status("u").attempt == 3
    clock.advance("10 seconds")
    assert jobs.run_due() == 1
    status = client.status("u")
    assert (status.attempt, status.run_count, status.last_error) == (1, 1, None)
    # the retried run kept its run count and its due time
    assert [(c["run_count"], c["attempt"], c["is_retry"]) for c in calls] == [
        (1, 1, False),
        (1, 2, True),
        (1, 3, True),
    ]
    assert {c["scheduled_for"] for c in calls} == {T0}
    # back on the grid of the original due time
    assert status.next_run_at == T0 + timedelta(minutes=30)
    assert client.get_state("u") == Tokens("at-1", "rt")


def test_exhausted_with_retry_terminates_by_default(make: Any, clock: FakeClock) -> None:
    jobs = make(
        execute=recorder([], fail=lambda ctx: True),
        retry=Retry(max_attempts=2, delay=Backoff.fixed(1)),
    )
    client = jobs.continuous("tr")
    client.start("u", Tokens("", "rt"))
    clock.advance(1)
    jobs.run_due()
    assert client.status("u").status == "not_found"
    events = [h.event for h in jobs.engine.store.history("continuous:tr:u")]
    assert events[-3:] == ["job.failed", "job.retry_exhausted", "job.terminated"]
    final = jobs.engine.store.history("continuous:tr:u")[-1]
    assert final.error is not None
    assert "boom" in final.error
    assert '"final_state":{"access_token":""' in (final.data or "")


def test_exhausted_park_keeps_state_and_retry_resumes(make: Any, clock: FakeClock) -> None:
    failing = [True]
    calls: Calls = []
    jobs = make(
        execute=recorder(calls, fail=lambda ctx: failing[0]),
        retry=Retry(max_attempts=2, delay=Backoff.fixed(1)),
        on_exhausted="park",
    )
    client = jobs.continuous("tr")
    client.start("u", Tokens("", "rt"))
    clock.advance(1)
    jobs.run_due()
    status = client.status("u")
    assert status.status == "failed"
    assert status.next_run_at is None
    assert status.last_error is not None
    assert "boom 1.2" in status.last_error
    assert client.get_state("u") == Tokens("", "rt")
    clock.advance("1 hour")
    assert jobs.run_due() == 0  # parked: no alarm
    failing[0] = False
    resumed = client.retry("u")
    assert resumed.resumed
    assert jobs.run_due() == 1
    assert client.status("u").status == "running"
    assert client.get_state("u") is not None


def test_no_retry_skips_the_run_and_keeps_the_schedule(make: Any, clock: FakeClock) -> None:
    calls: Calls = []
    jobs = make(execute=recorder(calls, fail=lambda ctx: ctx.run_count == 2))
    client = jobs.continuous("tr")
    client.start("u", Tokens("", "rt"))
    clock.advance("30 minutes")
    jobs.run_due()
    status = client.status("u")
    assert status.status == "running"
    assert status.attempt == 1
    assert status.next_run_at == T0 + timedelta(hours=1)
    assert status.last_error is not None
    assert "boom 2.1" in status.last_error
    clock.advance("30 minutes")
    jobs.run_due()
    assert client.status("u").run_count == 3
    assert client.status("u").last_error is None


def test_on_error_runs_when_exhausted_and_its_changes_commit(make: Any, clock: FakeClock) -> None:
    seen: list[str] = []

    def on_error(error: BaseException, ctx: Any) -> None:
        seen.append(str(error))
        ctx.state = attrs.evolve(ctx.state, refresh_token="reset")

    jobs = make(
        execute=recorder([], fail=lambda ctx: True),
        retry=Retry(max_attempts=2, delay=Backoff.fixed(1)),
        on_error=on_error,
    )
    client = jobs.continuous("tr")
    client.start("u", Tokens("", "rt"))
    clock.advance(1)
    jobs.run_due()
    assert seen == ["boom 1.2"]
    assert client.status("u").status == "running"
    assert client.get_state("u") == Tokens("", "reset")


@pytest.mark.sqlite_only  # reads the file through Admin/the SQLite store
def test_a_cli_trigger_does_not_make_retries_endless(
    make: Any, clock: FakeClock, tmp_path: Path
) -> None:
    calls: list[tuple[int, int]] = []

    def execute(ctx: Any) -> None:
        calls.append((ctx.run_count, ctx.attempt))
        raise RuntimeError("down")

    jobs = make(
        schedule=every("1h"), execute=execute, start_immediately=False,
        retry=Retry(max_attempts=3, delay=Backoff.fixed(1)),
    )  # fmt: skip
    jobs.continuous("tr").start("u", Tokens("", "rt"))
    with Admin(tmp_path / "jobs.db", clock=clock) as admin:
        admin.trigger("continuous:tr:u")
    for _ in range(6):
        jobs.run_due()
        clock.advance(1)
    assert calls == [(1, 1), (1, 2), (1, 3)]
    assert jobs.continuous("tr").status("u").status == "not_found"  # exhausted: terminate


def test_on_error_leaving_a_bad_state_falls_back_to_the_policy(make: Any) -> None:
    seen: list[int] = []

    def fail(ctx: Any) -> None:
        raise RuntimeError("down")

    def on_error(error: BaseException, ctx: Any) -> None:
        seen.append(1)
        ctx.state = "not a Tokens"

    jobs = make(schedule=every("1h"), execute=fail, on_error=on_error, on_exhausted="park")
    jobs.continuous("tr").start("u", Tokens("", "rt"))  # must neither recurse nor raise
    assert seen == [1]
    status = jobs.continuous("tr").status("u")
    assert status.status == "failed"
    assert status.last_error is not None
    assert "ValidationError" in status.last_error
    assert jobs.continuous("tr").get_state("u") == Tokens("", "rt")


def test_exponential_backoff_delays_are_durable_alarms(
    make: Any, clock: FakeClock, tmp_path: Path
) -> None:
    retry = Retry(max_attempts=4, delay=Backoff.exponential(base="1 second", max="3 seconds"))
    jobs = make(execute=recorder([], fail=lambda ctx: True), retry=retry)
    client = jobs.continuous("tr")
    client.start("u", Tokens("", "rt"))
    delays = []
    for _ in range(2):
        due = client.status("u").next_run_at
        assert due is not None
        delays.append((due - clock.now()).total_seconds())
        clock.set(due)
        jobs.run_due()
    due = client.status("u").next_run_at
    assert due is not None
    delays.append((due - clock.now()).total_seconds())
    assert delays == [1.0, 2.0, 3.0]
    # the retry alarm survives closing and reopening the file
    jobs.close()
    reopened = Jobs(tmp_path / "jobs.db", jobs.registry, clock=clock)
    assert reopened.continuous("tr").status("u").attempt == 4
    assert reopened.next_alarm() == due
    reopened.close()


def test_cron_in_a_timezone_across_dst(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 3, 27, 12, tzinfo=UTC))
    calls: Calls = []
    job = Continuous(
        state=Tokens,
        schedule=cron("30 2 * * *", tz="Europe/Berlin"),
        execute=recorder(calls),
        start_immediately=False,
    )
    with Jobs(tmp_path / "j.db", {"tr": job}, clock=clock) as jobs:
        jobs.continuous("tr").start("u", Tokens("", "rt"))
        for _ in range(4):
            alarm = jobs.next_alarm()
            assert alarm is not None
            clock.set(alarm)
            jobs.run_due()
    # 03-28 02:30 CET; 03-29 02:30 does not exist -> 03:00 CEST; then 02:30 CEST
    assert [c["scheduled_for"] for c in calls] == [
        datetime(2026, 3, 28, 1, 30, tzinfo=UTC),
        datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
        datetime(2026, 3, 30, 0, 30, tzinfo=UTC),
        datetime(2026, 3, 31, 0, 30, tzinfo=UTC),
    ]


def test_cron_repeated_hour_runs_once(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 10, 24, 12, tzinfo=UTC))
    calls: Calls = []
    job = Continuous(
        state=Tokens,
        schedule=cron("30 2 * * *", tz="Europe/Berlin"),
        execute=recorder(calls),
        start_immediately=False,
    )
    with Jobs(tmp_path / "j.db", {"tr": job}, clock=clock) as jobs:
        jobs.continuous("tr").start("u", Tokens("", "rt"))
        for _ in range(2):
            alarm = jobs.next_alarm()
            assert alarm is not None
            clock.set(alarm)
            jobs.run_due()
    assert [c["scheduled_for"] for c in calls] == [
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC),  # 02:30 CEST, the first 02:30
        datetime(2026, 10, 26, 1, 30, tzinfo=UTC),  # next day 02:30 CET
    ]


def test_wrong_state_type_is_a_validation_error_naming_the_field(make: Any) -> None:
    client = make(execute=recorder([])).continuous("tr")
    with pytest.raises(ValidationError, match=r"continuous:tr:u.*Tokens.*dict"):
        client.start("u", {"access_token": "x"})
    with pytest.raises(ValidationError, match=r"field 'access_token': expected str, got int 123"):
        client.start("u", Tokens(123, "rt"))  # type: ignore[arg-type]
    assert client.status("u").status == "not_found"


def test_handler_assigning_a_wrong_state_fails_the_step_and_changes_nothing(
    make: Any, clock: FakeClock
) -> None:
    def execute(ctx: Any) -> None:
        if ctx.run_count == 2:
            ctx.state = "not tokens"
        else:
            ctx.state = attrs.evolve(ctx.state, access_token="good")

    jobs = make(execute=execute)
    client = jobs.continuous("tr")
    client.start("u", Tokens("", "rt"))
    clock.advance("30 minutes")
    jobs.run_due()
    status = client.status("u")
    assert status.last_error is not None
    assert "ValidationError" in status.last_error
    assert client.get_state("u") == Tokens("good", "rt")


def test_state_class_evolution_loads_old_rows(tmp_path: Path, clock: FakeClock) -> None:
    @attrs.define
    class V1:
        name: str

    @attrs.define
    class V2:
        name: str
        visits: int = 0
        tags: list[str] = attrs.Factory(list)

    def noop(ctx: Any) -> None:
        pass

    def bump(ctx: Any) -> None:
        ctx.state.visits += 1

    path = tmp_path / "j.db"
    with Jobs(path, {"j": Continuous(state=V1, schedule=every(60), execute=noop)}) as jobs:
        jobs.continuous("j").start("u", V1("ada"))
    with Jobs(path, {"j": Continuous(state=V2, schedule=every(60), execute=bump)}) as jobs:
        assert jobs.continuous("j").get_state("u") == V2("ada")
        jobs.continuous("j").trigger("u")
        assert jobs.continuous("j").get_state("u") == V2("ada", 1)  # in-place change persisted


def test_plain_json_state(make: Any, tmp_path: Path, clock: FakeClock) -> None:
    def count(ctx: Any) -> None:
        ctx.state = {**ctx.state, "n": ctx.state["n"] + 1}

    with Jobs(
        tmp_path / "p.db",
        {"c": Continuous(state=dict[str, int], schedule=every("1h"), execute=count)},
        clock=clock,
    ) as jobs:
        jobs.continuous("c").start("u", {"n": 0})
        assert jobs.continuous("c").get_state("u") == {"n": 1}


def test_unknown_job_and_bad_definitions(make: Any) -> None:
    jobs = make(execute=recorder([]))
    with pytest.raises(JobNotFoundError, match="nope"):
        jobs.continuous("nope")
    with pytest.raises(JobNotFoundError, match="tr"):
        jobs.task("tr")  # registered, but not a task
    with pytest.raises(SchedulerError):
        every("soon")
    with pytest.raises(SchedulerError):
        cron("61 * * * *")
    with pytest.raises(SchedulerError):
        cron("* * * * *", tz="Mars/Olympus")
    with pytest.raises(ValueError, match="catch_up"):
        Continuous(state=Tokens, schedule=every(1), execute=print, catch_up="some")


def test_a_jobs_serves_other_threads(make: Any) -> None:
    """A Jobs is shared by threads (each gets its own connection on first use)."""
    import threading

    jobs = make(execute=recorder([]))
    seen: list[str] = []

    def other() -> None:
        seen.append(jobs.continuous("tr").status("u").status)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen == ["not_found"]


def test_step_key_never_repeats_when_an_id_is_started_again(make: Any) -> None:
    calls: Calls = []
    client = make(execute=recorder(calls)).continuous("tr")
    client.start("u", Tokens("", "rt"))
    client.terminate("u")
    client.start("u", Tokens("", "rt"))
    keys = [c["step_key"] for c in calls]
    assert len(keys) == 2
    assert len(set(keys)) == 2, keys


def test_a_timeout_reported_for_an_old_step_records_nothing(make: Any, clock: FakeClock) -> None:
    jobs = make(schedule=every("1s"), execute=lambda ctx: None)
    jobs.continuous("tr").start("u", Tokens("", "rt"))
    step = jobs.engine.store.load("continuous:tr:u").step  # type: ignore[union-attr]
    clock.advance(1)
    jobs.run_due()  # the instance moves on; it is due again later
    clock.advance(1)
    assert not jobs.engine.time_out("continuous:tr:u", 5.0, step)
    assert jobs.continuous("tr").status("u").attempt == 1
    current = jobs.engine.store.load("continuous:tr:u").step  # type: ignore[union-attr]
    assert jobs.engine.time_out("continuous:tr:u", 5.0, current)
    assert jobs.continuous("tr").status("u").last_error is not None


def test_run_due_returns_although_a_handler_is_slower_than_its_schedule(
    make: Any, clock: FakeClock
) -> None:
    def slow(ctx: Any) -> None:
        clock.advance(2)  # the handler takes two periods of its schedule

    jobs = make(schedule=every("1s"), execute=slow, start_immediately=False)
    jobs.continuous("tr").start("u", Tokens("", "rt"))
    clock.advance(1)
    assert jobs.run_due() == 1
