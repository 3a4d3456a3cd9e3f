"""Time ends at 9999-12-31T23:59:59Z, where ``datetime`` ends: a schedule, window or alarm past
it is refused, a schedule that runs out ends its instance, and a row holding a time past it
(written by an older version or another program) breaks neither ``status``, ``next_alarm`` nor
the CLI. Each section names the reproduction in ``../shared/repros`` it pins down (issue 12).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

from durajobs import Continuous, Debounce, FakeClock, Jobs, Task, cron, every
from durajobs.admin import Admin
from durajobs.core.schedules import check_fires_after
from durajobs.errors import ExecutionError, SchedulerError, ValidationError

START = datetime(2026, 12, 31, 8, tzinfo=UTC)


@attrs.define
class Count:
    n: int = 0


def bump(ctx: Any) -> None:
    ctx.state = Count(ctx.state.n + 1)


def nothing(ctx: Any) -> None:
    return None


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def open_jobs(tmp_path: Path, clock: FakeClock) -> Iterator[Callable[[dict[str, Any]], Jobs]]:
    opened: list[Jobs] = []

    def make(registry: dict[str, Any], name: str = "j.db") -> Jobs:
        jobs = Jobs(str(tmp_path / name), registry, clock=clock)
        opened.append(jobs)
        return jobs

    yield make
    for jobs in opened:
        jobs.close()


# -- cron_year.py ---------------------------------------------------------------------------


def test_cron_year_all_past_is_refused_given_now() -> None:
    schedule = cron("0 9 * * * 0 2020")  # pure: whether 2020 is past needs the Jobs clock
    with pytest.raises(SchedulerError, match=r"'campaign'.*never fires again"):
        check_fires_after(schedule, START.timestamp(), job="campaign")
    check_fires_after(schedule, datetime(2019, 1, 1, tzinfo=UTC).timestamp(), job="campaign")
    check_fires_after(every("1h"), START.timestamp(), job="heartbeat")


def test_cron_year_far_ahead_is_accepted() -> None:
    # croniter's default search (50 years) called this "never fires".
    schedule = cron("0 9 1 1 * 0 2099")
    after = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    assert schedule.next_after(0.0, after) == datetime(2099, 1, 1, 9, tzinfo=UTC).timestamp()
    assert schedule.next_after(0.0, datetime(2099, 6, 1, tzinfo=UTC).timestamp()) is None


@pytest.mark.both_stores
def test_cron_year_all_past_is_refused_at_jobs(
    open_jobs: Callable[[dict[str, Any]], Jobs],
) -> None:
    with pytest.raises(SchedulerError, match="never fires again"):
        open_jobs({"x": Continuous(state=Count, schedule=cron("0 9 * * * 0 2020"), execute=bump)})


def test_cron_year_that_runs_out_ends_the_instance_and_never_poisons_run_due(
    open_jobs: Callable[[dict[str, Any]], Jobs], clock: FakeClock
) -> None:
    jobs = open_jobs({
        "campaign": Continuous(
            state=Count, schedule=cron("0 9 * * * 0 2026"), execute=bump, start_immediately=False
        ),
        "heartbeat": Continuous(
            state=Count, schedule=every("1h"), execute=bump, start_immediately=False
        ),
    })  # fmt: skip
    jobs.continuous("heartbeat").start("h", Count())
    jobs.continuous("campaign").start("c", Count())
    assert jobs.continuous("campaign").status("c").next_run_at == datetime(
        2026, 12, 31, 9, tzinfo=UTC
    )
    clock.set(datetime(2026, 12, 31, 9, 30, tzinfo=UTC))
    assert jobs.run_due() == 2
    # The last run of the campaign ran, then the instance ended (no next time), recorded.
    assert jobs.continuous("campaign").status("c").status == "not_found"
    assert jobs.continuous("heartbeat").status("h").run_count == 1
    clock.advance("1h")
    assert jobs.run_due() == 1
    assert jobs.continuous("heartbeat").status("h").run_count == 2
    with Admin(str(jobs.path)) as admin:
        records = [r for r in admin.recent(50) if r.instance_id == "continuous:campaign:c"]
    assert [r.event for r in records][-2:] == ["job.executed", "job.terminated"]
    assert records[-1].data["reason"] == "schedule ended"
    assert records[-1].data["final_state"] == {"n": 1}  # the last run's state, kept


@pytest.mark.both_stores
def test_cron_year_trigger_and_start_after_the_last_time(
    open_jobs: Callable[[dict[str, Any]], Jobs], clock: FakeClock
) -> None:
    schedule = cron("0 9 * * * 0 2026")
    jobs = open_jobs({
        "now": Continuous(state=Count, schedule=schedule, execute=bump),
        "later": Continuous(state=Count, schedule=schedule, execute=bump, start_immediately=False),
    })  # fmt: skip
    jobs.continuous("now").start("a", Count())
    clock.set(datetime(2027, 1, 2, tzinfo=UTC))
    # trigger runs the job, then the schedule has no next time: the instance ends.
    assert jobs.continuous("now").trigger("a").triggered
    assert jobs.continuous("now").status("a").status == "not_found"
    # start_immediately: the first run happens, then the instance ends.
    result = jobs.continuous("now").start("b", Count())
    assert result.created
    assert jobs.continuous("now").status("b").status == "not_found"
    # no first time at all: start is refused, nothing is stored.
    with pytest.raises(SchedulerError, match="no time after now"):
        jobs.continuous("later").start("c", Count())
    assert jobs.continuous("later").status("c").status == "not_found"


# -- bigperiod.py / time_huge.py ------------------------------------------------------------


@pytest.mark.parametrize("period", ["520000 weeks", "10000000000w", timedelta.max, 1e12])
def test_bigperiod_every_past_year_9999_is_refused(period: Any) -> None:
    with pytest.raises(SchedulerError, match="every"):
        every(period)


@pytest.mark.parametrize("field", ["flush_after", "max_wait"])
def test_bigperiod_debounce_windows_past_year_9999_are_refused(field: str) -> None:
    kwargs: dict[str, Any] = {"flush_after": "1h", "trailing": True, field: "520000 weeks"}
    with pytest.raises(SchedulerError, match=field):
        Debounce(event=Count, execute=nothing, **kwargs)


@pytest.mark.both_stores
def test_bigperiod_every_that_runs_past_year_9999_ends_the_instance(
    open_jobs: Callable[[dict[str, Any]], Jobs], clock: FakeClock
) -> None:
    jobs = open_jobs(
        {"rare": Continuous(state=Count, schedule=every("52000w"),
                            execute=bump, start_immediately=False)}
    )  # fmt: skip
    clock.set(datetime(9000, 1, 1, tzinfo=UTC))
    jobs.continuous("rare").start("u", Count())
    status = jobs.continuous("rare").status("u")
    assert status.next_run_at is not None
    assert jobs.next_alarm() == status.next_run_at
    clock.set(status.next_run_at)
    assert jobs.run_due() == 1
    assert jobs.continuous("rare").status("u").status == "not_found"


@pytest.mark.both_stores
@pytest.mark.parametrize(
    "when",
    [
        timedelta.max,
        timedelta(days=999999999),
        "520000w",
        datetime.max.replace(tzinfo=UTC),
    ],
    ids=["timedelta.max", "big-timedelta", "10000-years", "datetime.max"],
)
def test_time_huge_schedule_is_refused_when_set(
    open_jobs: Callable[[dict[str, Any]], Jobs], when: Any
) -> None:
    caught: list[BaseException] = []

    def on_event(event: Any, ctx: Any) -> None:
        try:
            ctx.schedule(when)
        except BaseException as exc:
            caught.append(exc)
            raise

    jobs = open_jobs({"t": Task(state=Count, event=Count, on_event=on_event, execute=nothing)})
    with pytest.raises(ExecutionError):
        jobs.task("t").send("u", Count())
    assert len(caught) == 1
    assert isinstance(caught[0], ValidationError)
    assert "schedule" in str(caught[0])
    assert "9999" in str(caught[0])
    assert jobs.task("t").status("u").status == "not_found"
    assert jobs.next_alarm() is None


@pytest.mark.both_stores
def test_time_huge_schedule_at_the_end_of_time_is_accepted(
    open_jobs: Callable[[dict[str, Any]], Jobs],
) -> None:
    latest = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)

    def on_event(event: Any, ctx: Any) -> None:
        assert ctx.schedule(latest) == latest

    jobs = open_jobs({"t": Task(state=Count, event=Count, on_event=on_event, execute=nothing)})
    assert jobs.task("t").send("u", Count()).scheduled_at == latest
    assert jobs.task("t").status("u").scheduled_at == latest


def _durajobs(*args: str | bytes) -> subprocess.CompletedProcess[bytes]:
    script = Path(sys.executable).parent / "durajobs"
    return subprocess.run([str(script), *args], capture_output=True, check=False)


ODD_ROWS = {
    "huge": "due_at = 1e15, scheduled_for = 1e15, anchor = 1e15, started_at = 1e15",
    "neg": "due_at = -1e15, created_at = -1e15, updated_at = -1e15",
    "inf": "due_at = 9e999, created_at = 9e999",
    "nullish": "state = NULL, due_at = NULL, scheduled_for = NULL, anchor = NULL, "
    "started_at = NULL, last_error = NULL, reason = NULL",
    "text": "due_at = 'soon', run_count = 'many', state = '{not json'",
}


def test_time_huge_cli_never_crashes_on_odd_rows(tmp_path: Path) -> None:
    """bigperiod.py / time_huge.py: rows written by an older version or another program."""
    import apsw

    db = str(tmp_path / "j.db")
    job = Continuous(state=Count, schedule=every("1h"), execute=nothing, start_immediately=False)
    with Jobs(db, {"c": job}) as jobs:
        for user_id in (*ODD_ROWS, "fine"):
            jobs.continuous("c").start(user_id, Count())
    conn = apsw.Connection(db)
    for user_id, change in ODD_ROWS.items():
        conn.execute(f"UPDATE instances SET {change} WHERE user_id = ?", (user_id,))
    conn.execute("UPDATE history SET at = 1e15 WHERE rowid = (SELECT min(rowid) FROM history)")
    conn.close()
    commands = [["ls"], ["ls", "--json"], ["stats"], ["stats", "--json"], ["tail"]]
    commands += [["show", f"continuous:c:{user_id}"] for user_id in ODD_ROWS]
    commands += [["show", f"continuous:c:{user_id}", "--json"] for user_id in ODD_ROWS]
    for args in commands:
        result = _durajobs("--db", db, *args)
        assert result.returncode == 0, (args, result.stderr)
        assert b"Traceback" not in result.stderr
    listing = _durajobs("--db", db, "ls").stdout.decode()
    assert all(f"continuous:c:{user_id}" in listing for user_id in (*ODD_ROWS, "fine"))
    assert "9999-12-31" in listing
    with Jobs(db, {"c": job}) as jobs:
        assert jobs.continuous("c").status("huge").next_run_at == datetime.max.replace(tzinfo=UTC)


def test_time_huge_next_alarm_never_raises_on_an_odd_row(tmp_path: Path) -> None:
    import apsw

    db = str(tmp_path / "j.db")
    job = Continuous(state=Count, schedule=every("1h"), execute=nothing, start_immediately=False)
    with Jobs(db, {"c": job}) as jobs:
        jobs.continuous("c").start("huge", Count())
    conn = apsw.Connection(db)
    conn.execute("UPDATE instances SET due_at = 1e15, scheduled_for = 1e15")
    conn.close()
    with Jobs(db, {"c": job}) as jobs:
        assert jobs.next_alarm() == datetime.max.replace(tzinfo=UTC)


def test_time_huge_cli_reports_undecodable_text_in_one_line(tmp_path: Path) -> None:
    import apsw

    db = str(tmp_path / "j.db")
    job = Continuous(state=Count, schedule=every("1h"), execute=nothing, start_immediately=False)
    with Jobs(db, {"c": job}) as jobs:
        jobs.continuous("c").start("bad", Count())
    conn = apsw.Connection(db)
    conn.execute(
        "UPDATE instances SET state = CAST(X'7B2280E9227D' AS TEXT), "
        "last_error = CAST(X'4572726F7280' AS TEXT)"
    )
    conn.close()
    for args in (["ls"], ["show", "continuous:c:bad"]):
        result = _durajobs("--db", db, *args)
        assert b"Traceback" not in result.stderr, args
        if result.returncode != 0:  # a store that cannot read it says so in one line
            assert result.stderr.decode().count("\n") == 1
            assert b"UTF-8" in result.stderr


def test_time_huge_odd_row_does_not_break_status_or_the_cli(
    tmp_path: Path, open_jobs: Callable[[dict[str, Any]], Jobs]
) -> None:
    """A row written by an older version with an alarm past year 9999."""
    import apsw

    jobs = open_jobs({"c": Continuous(state=Count, schedule=every("1h"), execute=nothing)})
    jobs.continuous("c").start("odd", Count())
    jobs.close()
    db = str(tmp_path / "j.db")
    conn = apsw.Connection(db)
    conn.execute("UPDATE instances SET due_at = 1e15, scheduled_for = 1e15")
    conn.close()
    jobs = open_jobs({"c": Continuous(state=Count, schedule=every("1h"), execute=nothing)})
    status = jobs.continuous("c").status("odd")
    assert status.next_run_at == datetime.max.replace(tzinfo=UTC)
    for args in (["ls"], ["ls", "--json"], ["stats"], ["show", "continuous:c:odd"],
                 ["show", "continuous:c:odd", "--json"]):  # fmt: skip
        result = subprocess.run(
            [sys.executable, "-m", "durajobs.cli", "--db", db, *args],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert result.returncode == 0, (args, result.stderr)
        assert "Traceback" not in result.stderr
