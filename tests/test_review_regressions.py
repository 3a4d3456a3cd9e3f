"""Regressions found by reviewing the step engine: each failed before its fix."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from durajobs import (
    Backoff,
    Continuous,
    Debounce,
    FakeClock,
    Jobs,
    Retry,
    Task,
    every,
)
from durajobs.admin import Admin

pytestmark = pytest.mark.both_stores  # [sqlite] and [postgres]


@attrs.define
class S:
    n: int = 0


def fail(ctx: Any) -> None:
    raise RuntimeError("down")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def path(tmp_path: Path) -> Iterator[Path]:
    return tmp_path / "r.db"


@pytest.mark.sqlite_only  # reads the file through Admin/the SQLite store
def test_a_cli_trigger_does_not_make_retries_endless(path: Path, clock: FakeClock) -> None:
    calls: list[tuple[int, int]] = []

    def execute(ctx: Any) -> None:
        calls.append((ctx.run_count, ctx.attempt))
        raise RuntimeError("down")

    job = Continuous(
        state=S, schedule=every("1h"), execute=execute, start_immediately=False,
        retry=Retry(max_attempts=3, delay=Backoff.fixed(1)),
    )  # fmt: skip
    with Jobs(path, {"c": job}, clock=clock) as jobs:
        jobs.continuous("c").start("u", S())
        with Admin(path, clock=clock) as admin:
            admin.trigger("continuous:c:u")
        for _ in range(6):
            jobs.run_due()
            clock.advance(1)
        assert calls == [(1, 1), (1, 2), (1, 3)]
        assert jobs.continuous("c").status("u").status == "not_found"  # exhausted: terminate


def test_on_error_leaving_a_bad_state_falls_back_to_the_policy(
    path: Path, clock: FakeClock
) -> None:
    seen: list[int] = []

    def on_error(error: BaseException, ctx: Any) -> None:
        seen.append(1)
        ctx.state = "not an S"

    job = Continuous(
        state=S, schedule=every("1h"), execute=fail, on_error=on_error, on_exhausted="park"
    )
    with Jobs(path, {"c": job}, clock=clock) as jobs:
        jobs.continuous("c").start("u", S())  # must neither recurse nor raise
        assert seen == [1]
        status = jobs.continuous("c").status("u")
        assert status.status == "failed"
        assert status.last_error is not None
        assert "ValidationError" in status.last_error
        assert jobs.continuous("c").get_state("u") == S()


def test_task_on_idle_failing_after_on_error_parks_instead_of_looping(
    path: Path, clock: FakeClock
) -> None:
    executes: list[int] = []

    def on_event(event: S, ctx: Any) -> None:
        ctx.state = event
        ctx.schedule("1 second")

    def execute(ctx: Any) -> None:
        executes.append(1)
        raise RuntimeError("execute")

    def on_idle(ctx: Any) -> None:
        raise RuntimeError("idle")

    job = Task(
        state=S, event=S, on_event=on_event, execute=execute, on_idle=on_idle,
        on_error=lambda error, ctx: None,
    )  # fmt: skip
    with Jobs(path, {"t": job}, clock=clock) as jobs:
        jobs.task("t").send("u", S(1))
        clock.advance(1)
        assert jobs.run_due() == 1
        assert jobs.run_due() == 0
        assert executes == [1]
        assert jobs.task("t").status("u").status == "failed"


def test_on_error_of_a_failed_fold_sees_this_steps_key_and_its_bad_state_is_refused(
    path: Path, clock: FakeClock
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
    with Jobs(path, {"d": job}, clock=clock) as jobs, Jobs(path, {"d": job}, clock=clock) as b:
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
def test_a_manual_flush_request_is_not_postponed_by_a_later_add(
    path: Path, clock: FakeClock
) -> None:
    flushed: list[tuple[str, int]] = []
    job = Debounce(
        event=int, execute=lambda ctx: flushed.append((ctx.flush_reason, ctx.event_count)),
        flush_after="1 hour",
    )  # fmt: skip
    with Jobs(path, {"d": job}, clock=clock) as jobs:
        jobs.debounce("d").add("u", 1)
        with Admin(path, clock=clock) as admin:
            admin.flush("debounce:d:u")
        jobs.debounce("d").add("u", 2)
        assert jobs.run_due() == 1
        assert flushed == [("manual", 2)]


def test_a_timeout_reported_for_an_old_step_records_nothing(path: Path, clock: FakeClock) -> None:
    job = Continuous(state=S, schedule=every("1s"), execute=lambda ctx: None)
    with Jobs(path, {"c": job}, clock=clock) as jobs:
        jobs.continuous("c").start("u", S())
        step = jobs.engine.store.load("continuous:c:u").step  # type: ignore[union-attr]
        clock.advance(1)
        jobs.run_due()  # the instance moves on; it is due again later
        clock.advance(1)
        assert not jobs.engine.time_out("continuous:c:u", 5.0, step)
        assert jobs.continuous("c").status("u").attempt == 1
        current = jobs.engine.store.load("continuous:c:u").step  # type: ignore[union-attr]
        assert jobs.engine.time_out("continuous:c:u", 5.0, current)
        assert jobs.continuous("c").status("u").last_error is not None


def test_run_due_returns_although_a_handler_is_slower_than_its_schedule(
    path: Path, clock: FakeClock
) -> None:
    def slow(ctx: Any) -> None:
        clock.advance(2)  # the handler takes two periods of its schedule

    job = Continuous(state=S, schedule=every("1s"), execute=slow, start_immediately=False)
    with Jobs(path, {"c": job}, clock=clock) as jobs:
        jobs.continuous("c").start("u", S())
        clock.advance(1)
        assert jobs.run_due() == 1


def test_an_unsupported_state_type_fails_when_jobs_is_made(path: Path) -> None:
    class Plain:
        pass

    job = Continuous(state=Plain, schedule=every("1h"), execute=lambda ctx: None)
    with pytest.raises(TypeError, match=r"job 'c'.*cannot store Plain"):
        Jobs(path, {"c": job})


def test_a_fenced_out_write_leaves_the_queue_alone(path: Path) -> None:
    """The store's contract: a write whose fence fails changes nothing, queued events included."""
    from durajobs.stores.base import Write
    from durajobs.stores.sqlite.store import SqliteStore

    store = SqliteStore(path)
    try:
        store.enqueue("debounce:d:u", "d", "u", "1", None, 100.0)
        store.enqueue("debounce:d:u", "d", "u", "2", None, 100.0)
        row = store.load("debounce:d:u")
        assert row is not None
        stale = Write(
            "debounce:d:u", "debounce", "d", "u", row.step + 7, row._replace(step=row.step + 8),
            [("x", 1, None, None, None)], consumed=10**9, requeue="3",
        )  # fmt: skip
        assert store.commit([stale], 101.0, 100) == [False]
        assert [q.event for q in store.queued("debounce:d:u")] == ["1", "2"]
        assert store.history("debounce:d:u") == []
    finally:
        store.close()
