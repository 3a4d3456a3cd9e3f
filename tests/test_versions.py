"""State that changes between deploys (issue 20): ``version=``/``migrate=`` on every definition,
the version stored with each state and queued event, the chain run on read, and no stored value
ever lost without a word.

Each test is a "deploy": a ``Jobs`` with the old definitions writes rows, then a ``Jobs`` with
the new definitions opens the same database (a file, or a database of the session's cluster in
the ``[postgres]`` run). Where the new code refuses a row, the test asserts the stored JSON and
its version are exactly what the old code wrote.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
from waiting import wait_for

from durajobs import Continuous, Debounce, FakeClock, Jobs, Task, every
from durajobs.errors import ValidationError

DAEMON = Path(__file__).parent.parent / "durajobs_daemon.py"
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
ID = "continuous:tally:a"


# -- the classes of each "deploy" (module level: annotations must resolve) -------------------


@attrs.define
class Counted:  # version 1 of the tally's state
    count: int = 0


@attrs.define
class Labelled:  # a field added with a default
    count: int = 0
    label: str = "none"


@attrs.define
class Required:  # a field added without a default
    count: int
    label: str


@attrs.define
class Dropped:  # ``count`` removed
    label: str = "none"


@attrs.define
class Renamed:  # ``count`` renamed to ``total`` (with a default: the silent-loss case)
    total: int = 0


@attrs.define
class Retyped:  # ``count`` became text
    count: str = ""


@attrs.define
class Widened:  # ``count`` became a float, or nothing
    count: float | None = None


def _tick(ctx: Any) -> None:
    """Counts its runs in whatever field the state class has."""
    state = ctx.state
    for name in ("count", "total"):
        value = getattr(state, name, None)
        if isinstance(value, int | float):
            ctx.state = attrs.evolve(state, **{name: value + 1})
            return
    ctx.state = state


def tally(state: Any, **options: Any) -> dict[str, Any]:
    return {
        "tally": Continuous(
            state=state, schedule=every("1 hour"), execute=_tick, start_immediately=False,
            **options,
        )
    }  # fmt: skip


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def deploy(
    new_database: Path | str, clock: FakeClock
) -> Iterator[Callable[[dict[str, Any]], Jobs]]:
    """``deploy(registry)``: a Jobs with these definitions on the test's one database (the
    previous deploy's Jobs closed first)."""
    opened: list[Jobs] = []

    def open_with(registry: dict[str, Any]) -> Jobs:
        while opened:
            opened.pop().close()
        jobs = Jobs(new_database, registry, clock=clock)
        opened.append(jobs)
        return jobs

    yield open_with
    while opened:
        opened.pop().close()


def stored(jobs: Jobs, instance_id: str = ID) -> tuple[Any, int, str]:
    """(the state as stored, as plain JSON; its version; the status)."""
    row = jobs.engine.store.load(instance_id)
    assert row is not None, instance_id
    return (None if row.state is None else json.loads(row.state)), row.version, row.status


def with_count_5(deploy: Callable[[dict[str, Any]], Jobs]) -> None:
    """The old deploy: one tally instance at ``{"count": 5}``, version 1."""
    jobs = deploy(tally(Counted))
    jobs.continuous("tally").start("a", Counted(5))
    assert stored(jobs) == ({"count": 5}, 1, "running")


def refused(jobs: Jobs, clock: FakeClock, *words: str) -> None:
    """The new code cannot read the instance: a client call raises ValidationError naming the
    job, the instance, the stored version and ``words``; an alarm step parks it. The stored
    state and version are left exactly as they were."""
    before = stored(jobs)
    with pytest.raises(ValidationError) as info:
        jobs.continuous("tally").trigger("a")
    message = str(info.value)
    for word in (ID, "'tally'", f"stored version {before[1]}", *words):
        assert word in message, (word, message)
    assert stored(jobs) == before
    clock.advance(timedelta(hours=1))
    assert jobs.run_due() == 1
    state, version, status = stored(jobs)
    assert (state, version, status) == (before[0], before[1], "failed")
    result = jobs.continuous("tally").status("a")
    assert result.status == "failed"
    assert result.last_error is not None
    for word in (ID, *words):
        assert word in result.last_error
    with pytest.raises(ValidationError):
        jobs.continuous("tally").trigger("a")  # still refused, still kept
    assert stored(jobs)[:2] == before[:2]


# -- each change, on both stores --------------------------------------------------------------


@pytest.mark.both_stores
def test_a_field_added_with_a_default_needs_no_migration(deploy: Any, clock: FakeClock) -> None:
    with_count_5(deploy)
    jobs = deploy(tally(Labelled))
    assert jobs.continuous("tally").trigger("a").triggered
    assert jobs.continuous("tally").get_state("a") == Labelled(6, "none")
    assert stored(jobs) == ({"count": 6, "label": "none"}, 1, "running")


@pytest.mark.both_stores
def test_a_field_added_without_a_default_needs_a_migration(deploy: Any, clock: FakeClock) -> None:
    with_count_5(deploy)
    refused(deploy(tally(Required)), clock, "'label'", "required field missing")

    def label(old: dict[str, Any]) -> dict[str, Any]:
        return {**old, "label": "from v1"}

    jobs = deploy(tally(Required, version=2, migrate={1: label}))
    assert jobs.continuous("tally").retry("a")  # resume the parked instance: it reads now
    clock.advance(timedelta(seconds=1))
    assert jobs.run_due() == 1
    assert jobs.continuous("tally").get_state("a") == Required(6, "from v1")
    assert stored(jobs) == ({"count": 6, "label": "from v1"}, 2, "running")


@pytest.mark.both_stores
def test_a_removed_field_is_refused_until_a_migration_drops_it(
    deploy: Any, clock: FakeClock
) -> None:
    with_count_5(deploy)
    refused(deploy(tally(Dropped)), clock, "'count'", "not in Dropped")

    def drop_count(old: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in old.items() if k != "count"}

    jobs = deploy(tally(Dropped, version=2, migrate={1: drop_count}))
    jobs.continuous("tally").retry("a")
    clock.advance(timedelta(seconds=1))
    assert jobs.run_due() == 1
    assert stored(jobs) == ({"label": "none"}, 2, "running")


@pytest.mark.both_stores
def test_a_rename_is_never_read_as_the_default(deploy: Any, clock: FakeClock) -> None:
    """The issue's case: ``count=5`` renamed to ``total`` (default 0) was read as 0 and saved."""
    with_count_5(deploy)
    jobs = deploy(tally(Renamed))
    with pytest.raises(ValidationError, match="'count'"):
        jobs.continuous("tally").get_state("a")
    refused(jobs, clock, "'count'", "not in Renamed")

    def rename(old: dict[str, Any]) -> dict[str, Any]:
        return {"total": old["count"]}

    jobs = deploy(tally(Renamed, version=2, migrate={1: rename}))
    jobs.continuous("tally").retry("a")
    clock.advance(timedelta(seconds=1))
    assert jobs.run_due() == 1
    assert jobs.continuous("tally").get_state("a") == Renamed(6)
    assert stored(jobs) == ({"total": 6}, 2, "running")


@pytest.mark.both_stores
def test_a_retyped_field_needs_a_migration(deploy: Any, clock: FakeClock) -> None:
    with_count_5(deploy)
    refused(deploy(tally(Retyped)), clock, "'count'", "expected str")

    jobs = deploy(tally(Retyped, version=2, migrate={1: lambda old: {"count": str(old["count"])}}))
    jobs.continuous("tally").retry("a")
    clock.advance(timedelta(seconds=1))
    assert jobs.run_due() == 1
    assert jobs.continuous("tally").get_state("a") == Retyped("5")
    assert stored(jobs) == ({"count": "5"}, 2, "running")


@pytest.mark.both_stores
def test_a_widened_type_needs_no_migration(deploy: Any, clock: FakeClock) -> None:
    with_count_5(deploy)
    jobs = deploy(tally(Widened))
    assert jobs.continuous("tally").get_state("a") == Widened(5.0)
    assert jobs.continuous("tally").trigger("a").triggered
    assert stored(jobs) == ({"count": 6.0}, 1, "running")


@pytest.mark.both_stores
def test_a_migration_at_the_same_version_runs_only_on_older_rows(
    deploy: Any, clock: FakeClock
) -> None:
    """A chain 1 -> 2 -> 3: a row of each version reads as version 3; the migrated row is
    stored at version 3 by its next commit, and nothing is written by the read itself."""
    calls: list[int] = []

    def one_to_two(old: dict[str, Any]) -> dict[str, Any]:
        calls.append(1)
        return {"total": old["count"]}

    def two_to_three(old: dict[str, Any]) -> dict[str, Any]:
        calls.append(2)
        return {"total": old["total"] * 10}

    with_count_5(deploy)
    jobs = deploy(tally(Renamed, version=2, migrate={1: one_to_two}))
    jobs.continuous("tally").start("b", Renamed(7))
    assert stored(jobs, "continuous:tally:b") == ({"total": 7}, 2, "running")
    jobs = deploy(tally(Renamed, version=3, migrate={1: one_to_two, 2: two_to_three}))
    calls.clear()
    clock.advance(timedelta(hours=1))
    assert jobs.run_due() == 2
    assert sorted(calls) == [1, 2, 2]
    assert stored(jobs) == ({"total": 51}, 3, "running")
    assert stored(jobs, "continuous:tally:b") == ({"total": 71}, 3, "running")
    calls.clear()
    clock.advance(timedelta(hours=1))
    assert jobs.run_due() == 2
    assert calls == []  # rows at the definition's version are read as they are


@pytest.mark.both_stores
def test_a_failing_migration_parks_and_keeps_the_row(deploy: Any, clock: FakeClock) -> None:
    with_count_5(deploy)

    def broken(old: dict[str, Any]) -> dict[str, Any]:
        return {"total": old["missing"]}

    jobs = deploy(tally(Renamed, version=2, migrate={1: broken}))
    refused(jobs, clock, "migrate[1]", "KeyError")


@pytest.mark.both_stores
def test_a_newer_stored_version_is_refused_and_left_as_it_was(
    deploy: Any, clock: FakeClock
) -> None:
    """A rollback: rows written by version 2 meet the code of version 1."""
    jobs = deploy(tally(Renamed, version=2, migrate={1: lambda old: {"total": old["count"]}}))
    jobs.continuous("tally").start("a", Renamed(5))
    assert stored(jobs) == ({"total": 5}, 2, "running")
    jobs = deploy(tally(Renamed))
    refused(jobs, clock, "version 2", "newer than this code's version 1")
    jobs = deploy(tally(Renamed, version=2, migrate={1: lambda old: {"total": old["count"]}}))
    jobs.continuous("tally").retry("a")  # the newer code is back: it reads its own rows
    clock.advance(timedelta(seconds=1))
    assert jobs.run_due() == 1
    assert stored(jobs) == ({"total": 6}, 2, "running")


@pytest.mark.both_stores
def test_an_unreadable_instance_is_parked_and_the_others_go_on(
    deploy: Any, clock: FakeClock
) -> None:
    jobs = deploy(tally(Counted))
    jobs.continuous("tally").start("old", Counted(5))
    jobs = deploy(tally(Renamed))
    for user in ("new-1", "new-2"):
        jobs.continuous("tally").start(user, Renamed(1))
    clock.advance(timedelta(hours=1))
    assert jobs.run_due() == 3  # two runs and one park, in one group
    client = jobs.continuous("tally")
    assert client.status("old").status == "failed"
    assert [client.get_state(u) for u in ("new-1", "new-2")] == [Renamed(2), Renamed(2)]
    assert stored(jobs, "continuous:tally:old") == ({"count": 5}, 1, "failed")
    # Listed as failed where operators look; terminate still works (it reads nothing).
    from durajobs.admin import Admin

    with Admin(jobs.location) as admin:
        failed = [i.instance_id for i in admin.ls(status="failed")]
    assert failed == ["continuous:tally:old"]
    assert client.terminate("old").terminated
    assert client.status("old").status == "not_found"


@pytest.mark.both_stores
def test_get_state_reads_through_the_chain(deploy: Any, clock: FakeClock) -> None:
    with_count_5(deploy)
    jobs = deploy(tally(Renamed, version=2, migrate={1: lambda old: {"total": old["count"]}}))
    assert jobs.continuous("tally").get_state("a") == Renamed(5)
    assert stored(jobs) == ({"count": 5}, 1, "running")  # a read writes nothing
    jobs = deploy(tally(Counted))
    jobs.continuous("tally").start("b", Counted(1))
    jobs = deploy(tally(Renamed, version=2, migrate={1: lambda old: {"total": old["count"]}}))
    jobs.continuous("tally").trigger("b")
    jobs = deploy(tally(Counted))
    with pytest.raises(ValidationError, match="newer than this code's version 1"):
        jobs.continuous("tally").get_state("b")


# -- Task and Debounce ---------------------------------------------------------------------


@attrs.define
class OrderV1:
    items: int = 0


@attrs.define
class OrderV2:
    quantity: int = 0


@attrs.define
class Placed:
    n: int


def orders(state: Any, **options: Any) -> dict[str, Any]:
    def on_order(event: Placed, ctx: Any) -> None:
        if state is OrderV1:
            ctx.state = OrderV1((ctx.state.items if ctx.state else 0) + event.n)
        else:
            ctx.state = OrderV2((ctx.state.quantity if ctx.state else 0) + event.n)

    task = Task(state=state, event=Placed, on_event=on_order, execute=lambda ctx: None, **options)
    return {"orders": task}


@pytest.mark.both_stores
def test_a_task_state_is_migrated_by_its_next_event(deploy: Any) -> None:
    jobs = deploy(orders(OrderV1))
    jobs.task("orders").send("o", Placed(2))
    assert stored(jobs, "task:orders:o")[:2] == ({"items": 2}, 1)
    jobs = deploy(orders(OrderV2))
    with pytest.raises(ValidationError, match="'items'"):
        jobs.task("orders").send("o", Placed(1))
    with pytest.raises(ValidationError, match=r"^item 1 \(task:orders:o\): .*'items'.*nothing"):
        jobs.task("orders").send_many([("p", Placed(1)), ("o", Placed(1))])
    assert jobs.task("orders").status("p").status == "not_found"  # all or nothing
    assert stored(jobs, "task:orders:o")[:2] == ({"items": 2}, 1)
    jobs = deploy(orders(OrderV2, version=2, migrate={1: lambda old: {"quantity": old["items"]}}))
    jobs.task("orders").send("o", Placed(1))
    assert jobs.task("orders").get_state("o") == OrderV2(3)
    assert stored(jobs, "task:orders:o")[:2] == ({"quantity": 3}, 2)


@attrs.define
class Click:
    page: str


@attrs.define
class Visit:
    url: str


def visits(event: Any, *, seen: list[Any], **options: Any) -> dict[str, Any]:
    def execute(ctx: Any) -> None:
        seen.append(ctx.state)

    return {"visits": Debounce(event=event, execute=execute, flush_after="1 minute", **options)}


def queue_of(jobs: Jobs, instance_id: str) -> list[tuple[Any, int]]:
    return [(json.loads(q.event), q.version) for q in jobs.engine.store.queued(instance_id)]


@pytest.mark.both_stores
def test_queued_debounce_events_are_migrated_or_refused_never_dropped(
    deploy: Any, clock: FakeClock
) -> None:
    """A batch in flight across a deploy: its state (the latest event) and the events queued
    behind it were written by version 1; version 2 renames the event's field."""
    seen: list[Any] = []
    iid = "debounce:visits:v"
    jobs = deploy(visits(Click, seen=seen))
    jobs.debounce("visits").add("v", Click("/a"))
    now = clock.time()
    # An event queued while the instance's flush ran elsewhere (``add`` on a busy instance).
    jobs.engine.store.enqueue(iid, "visits", "v", json.dumps({"page": "/b"}), None, now)
    assert stored(jobs, iid)[:2] == ({"page": "/a"}, 1)
    assert queue_of(jobs, iid) == [({"page": "/b"}, 1)]

    # Without a migration: refused by a client call, parked by the alarm; nothing dropped.
    jobs = deploy(visits(Visit, seen=seen))
    with pytest.raises(ValidationError, match="'page'"):
        jobs.debounce("visits").add("v", Visit("/c"))
    clock.advance(timedelta(minutes=1))
    assert jobs.run_due() == 1
    assert seen == []
    assert stored(jobs, iid) == ({"page": "/a"}, 1, "failed")
    assert queue_of(jobs, iid) == [({"page": "/b"}, 1)]

    # With one: the state and the queued event are read as version 2, then flushed.
    def rename(old: dict[str, Any]) -> dict[str, Any]:
        return {"url": old["page"]}

    jobs = deploy(visits(Visit, seen=seen, version=2, migrate={1: rename}))
    jobs.debounce("visits").retry("v")
    clock.advance(timedelta(seconds=1))
    assert jobs.run_due() >= 1
    assert seen == [Visit("/b")]  # the default reducer keeps the latest event
    assert jobs.debounce("visits").status("v").status == "not_found"
    assert queue_of(jobs, iid) == []


@pytest.mark.both_stores
def test_queued_events_record_the_version_they_were_written_with(deploy: Any) -> None:
    seen: list[Any] = []
    jobs = deploy(visits(Visit, seen=seen, version=3, migrate={1: dict, 2: dict}))
    iid = "debounce:visits:w"
    jobs.debounce("visits").add("w", Visit("/a"))
    assert stored(jobs, iid)[:2] == ({"url": "/a"}, 3)
    jobs.engine.store.enqueue(iid, "visits", "w", '{"url":"/b"}', None, 0.0, 3)
    assert queue_of(jobs, iid) == [({"url": "/b"}, 3)]


@pytest.mark.both_stores
def test_copy_carries_the_versions(deploy: Any, new_database: Path | str, tmp_path: Path) -> None:
    """``durajobs copy`` (here from this run's store to a new SQLite file) keeps the version of
    each state and queued event: the copy reads through the same chain."""
    from durajobs.copy import copy_database

    seen: list[Any] = []
    jobs = deploy(visits(Visit, seen=seen, version=2, migrate={1: lambda old: old}))
    jobs.debounce("visits").add("v", Visit("/a"))
    jobs.engine.store.enqueue("debounce:visits:v", "visits", "v", '{"url":"/b"}', None, 0.0, 2)
    jobs.engine.store.enqueue("debounce:visits:v", "visits", "v", '{"page":"/c"}', None, 0.0, 1)
    jobs.close()
    copied = tmp_path / "copy.db"
    copy_database(str(new_database), copied)
    from durajobs.stores import open_store  # the file itself (a [postgres] run routes Jobs)

    store = open_store(copied, readonly=True)
    try:
        row = store.load("debounce:visits:v")
        assert row is not None
        assert (json.loads(row.state or ""), row.version) == ({"url": "/a"}, 2)
        queued = [(json.loads(q.event), q.version) for q in store.queued("debounce:visits:v")]
        assert queued == [({"url": "/b"}, 2), ({"page": "/c"}, 1)]
    finally:
        store.close()


# -- dataclasses -------------------------------------------------------------------------------


@dataclasses.dataclass
class Point:
    x: float
    y: float = 0.0


@dataclasses.dataclass
class Route:
    name: str
    points: list[Point] = dataclasses.field(default_factory=list)
    tags: dict[str, int] = dataclasses.field(default_factory=dict)
    last: Point | None = None


@dataclasses.dataclass
class RouteWithoutTags:
    name: str
    points: list[Point] = dataclasses.field(default_factory=list)
    last: Point | None = None


def _extend(ctx: Any) -> None:
    route = ctx.state
    ctx.state = dataclasses.replace(route, points=[*route.points, Point(len(route.points), 1.5)])


@pytest.mark.both_stores
def test_dataclass_state_round_trips(deploy: Any) -> None:
    registry = {
        "routes": Continuous(state=Route, schedule=every("1 hour"), execute=_extend),
    }
    jobs = deploy(registry)
    route = Route("r", [Point(0.5)], {"a": 1}, Point(2, 3))
    jobs.continuous("routes").start("r", route)
    expected = Route("r", [Point(0.5), Point(1, 1.5)], {"a": 1}, Point(2, 3))
    assert jobs.continuous("routes").get_state("r") == expected
    jobs = deploy(registry)
    assert jobs.continuous("routes").get_state("r") == expected
    with pytest.raises(ValidationError, match="must be Route"):
        jobs.continuous("routes").start("s", Point(1))  # type: ignore[arg-type]

    # The same rules as for attrs classes: a key the dataclass lost is refused, not dropped.
    jobs = deploy({"routes": Continuous(state=RouteWithoutTags, schedule=every("1 hour"),
                                        execute=_extend)})  # fmt: skip
    with pytest.raises(ValidationError, match="'tags'"):
        jobs.continuous("routes").trigger("r")
    assert stored(jobs, "continuous:routes:r")[0]["tags"] == {"a": 1}


# -- definitions ---------------------------------------------------------------------------


def test_version_and_migrate_are_checked_when_the_definition_is_made() -> None:
    assert tally(Counted)["tally"].version == 1
    assert tally(Counted)["tally"].migrate == {}
    steps = {1: dict, 2: dict}
    job = tally(Counted, version=3, migrate=steps)["tally"]
    steps.clear()  # the definition keeps its own copy
    assert sorted(job.migrate) == [1, 2]
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"version": 0}, ValueError, "version must be an int of at least 1"),
        ({"version": "2"}, ValueError, "version must be an int"),
        ({"version": 2}, ValueError, "no 1 (-> 2)"),
        ({"version": 3, "migrate": {1: dict}}, ValueError, "no 2 (-> 3)"),
        ({"version": 2, "migrate": {1: dict, 2: dict}}, ValueError, "key 2 is not a version"),
        ({"version": 2, "migrate": {0: dict, 1: dict}}, ValueError, "key 0"),
        ({"version": 2, "migrate": {1: "rename"}}, TypeError, "migrate[1] must be a function"),
        ({"version": 2, "migrate": [dict]}, TypeError, "migrate must be a dict"),
    ]
    for options, error, words in cases:
        for make in (tally, orders, visits):
            with pytest.raises(error) as info:
                make(Counted, seen=[], **options) if make is visits else make(Counted, **options)
            assert words in str(info.value), (options, str(info.value))


# -- the daemon parks what it cannot read -----------------------------------------------------

DAEMON_APP = """
import os

import attrs

from durajobs import Continuous, Jobs, every


@attrs.define
class Renamed:
    total: int = 0


def tick(ctx):
    ctx.state = Renamed(ctx.state.total + 1)


jobs = Jobs(os.environ["VERSIONS_DB"], {
    "tally": Continuous(state=Renamed, schedule=every("1 second"), execute=tick,
                        start_immediately=False),
})
"""


@pytest.mark.both_stores
def test_the_daemon_parks_an_unreadable_instance_and_runs_the_others(
    new_database: Path | str, tmp_path: Path
) -> None:
    location = str(new_database)
    schedule = every("1 second")
    with Jobs(location, {"tally": Continuous(state=Counted, schedule=schedule, execute=_tick,
                                             start_immediately=False)}) as old:  # fmt: skip
        old.continuous("tally").start("old", Counted(5))
    new_registry = {"tally": Continuous(state=Renamed, schedule=schedule, execute=_tick,
                                        start_immediately=False)}  # fmt: skip
    with Jobs(location, new_registry) as jobs:
        jobs.continuous("tally").start("new", Renamed(0))
    (tmp_path / "versions_app.py").write_text(DAEMON_APP)
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")},
        "VERSIONS_DB": location,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
    }
    log = tmp_path / "daemon.log"
    with open(log, "wb") as stderr:
        daemon = subprocess.Popen(
            [sys.executable, str(DAEMON), "--app", "versions_app:jobs"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
            start_new_session=True,
        )  # fmt: skip
    try:
        with Jobs(location, new_registry) as jobs:
            client = jobs.continuous("tally")
            wait_for(
                lambda: (
                    client.status("old").status == "failed" and client.status("new").run_count >= 2
                ),
                timeout=30,
                what="the daemon to park 'old' and run 'new' twice",
            )
            assert stored(jobs, "continuous:tally:old") == ({"count": 5}, 1, "failed")
            last_error = client.status("old").last_error
            assert last_error is not None
            assert "'count'" in last_error
    finally:
        daemon.terminate()
        assert daemon.wait(timeout=30) == 0, log.read_text()
    assert "continuous:tally:old" in log.read_text()
