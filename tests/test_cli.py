"""The ``durajobs`` CLI, end to end, on real database files made through the real library.

Each command runs through typer's ``CliRunner`` (in process) and, for the commands and error
paths that matter to scripts, through the installed ``durajobs`` console script in a
subprocess. ``--json`` output is parsed back and checked field by field; actions are checked by
what a ``Jobs`` with the application's definitions sees afterwards.
"""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import apsw
import attrs
import pytest
import schema_steps
from pgserver import PASSWORD
from typer.testing import CliRunner

from durajobs import Continuous, Debounce, FakeClock, Jobs, Retry, Task, every
from durajobs.admin import Admin, parse_instance_id, relative
from durajobs.cli import app
from durajobs.errors import ValidationError
from durajobs.stores.postgres.store import PostgresStore
from durajobs.stores.sql import READABLE_SCHEMA, SCHEMA_VERSION
from durajobs.stores.sqlite.claims import InstanceLocks
from durajobs.stores.sqlite.store import SqliteStore

SCRIPT = shutil.which("durajobs", path=str(Path(sys.executable).parent)) or shutil.which("durajobs")


# -- the sample application -----------------------------------------------------------------


@attrs.define
class Counter:
    n: int = 0


@attrs.define
class Event:
    value: str


@attrs.define
class App:
    """The application's side: its definitions, a record of handler calls, a clock."""

    db: Path | str
    calls: list[tuple[str, str]] = attrs.Factory(list)
    failing: set[str] = attrs.Factory(lambda: {"broken", "o-bad"})

    def registry(self) -> dict[str, Any]:
        def tick(ctx: Any) -> None:
            self.calls.append(("tick", ctx.id))
            if ctx.id in self.failing:
                raise ValueError(f"tick failed for {ctx.id}")
            ctx.state = Counter(ctx.state.n + 1)

        def deliver(ctx: Any) -> None:
            self.calls.append(("deliver", ctx.flush_reason))

        def on_order(event: Event, ctx: Any) -> None:
            ctx.state = Counter(0) if ctx.state is None else ctx.state
            ctx.schedule("1 hour")

        def ship(ctx: Any) -> None:
            self.calls.append(("ship", ctx.id))
            if ctx.id in self.failing:
                raise RuntimeError(f"warehouse rejected {ctx.id}")
            ctx.state = Counter(ctx.state.n + 1)

        return {
            "refresher": Continuous(state=Counter, schedule=every("30 minutes"), execute=tick),
            "hooks": Debounce(event=Event, execute=deliver, flush_after="10 minutes"),
            "orders": Task(state=Counter, event=Event, on_event=on_order, execute=ship),
        }

    @contextmanager
    def jobs(self, at: float | None = None) -> Iterator[Jobs]:
        """The application's ``Jobs`` at the real time (or ``at``): the CLI uses the real clock."""
        with Jobs(self.db, self.registry(), clock=FakeClock(at or time.time())) as jobs:
            yield jobs


def populate(application: App, start: float | None = None) -> None:
    """Three kinds, a failing Continuous (error kept, still running) and a parked Task."""
    with application.jobs(start) as jobs:
        refresher = jobs.continuous("refresher")
        for user in ("user-1", "user-2", "broken"):
            refresher.start(user, Counter())
        hooks = jobs.debounce("hooks")
        hooks.add("repo-1", Event("push"))
        hooks.add("repo-1", Event("pull_request"))
        orders = jobs.task("orders")
        orders.send("o-1", Event("placed"))
        orders.send("o-bad", Event("placed"))
        orders.trigger("o-bad")  # execute raises; no retry: parked ("failed")
        orders.send("o-idle", Event("placed"))
        orders.trigger("o-idle")  # ran; nothing scheduled: idle


@pytest.fixture
def application(new_database: Path | str) -> App:
    """The sample application on its database: a file, or (the ``[postgres]`` run of a
    ``both_stores`` test) a database of the session's cluster."""
    application = App(new_database)
    populate(application)
    return application


@pytest.fixture
def db(application: App) -> Path | str:
    return application.db


# -- running the CLI ------------------------------------------------------------------------


@attrs.frozen
class Run:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


Runner = Callable[..., Run]


def ran(code: int, stdout: str, stderr: str) -> Run:
    """What a command printed, which never holds a password (the cluster's URLs carry one)."""
    for secret in (PASSWORD, quote(PASSWORD, safe="")):
        assert secret not in stdout + stderr
    return Run(code, stdout, stderr)


def run_in_process(*args: str, env: dict[str, str] | None = None) -> Run:
    result = CliRunner().invoke(app, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return ran(result.exit_code, result.stdout, result.stderr)


def run_script(*args: str, env: dict[str, str] | None = None) -> Run:
    assert SCRIPT is not None, "the durajobs console script is not installed"
    full_env = {k: v for k, v in os.environ.items() if k not in ("DURAJOBS_DB", "NO_COLOR")}
    full_env.update(env or {})
    proc = subprocess.run(
        [SCRIPT, *args], capture_output=True, text=True, env=full_env, timeout=60, check=False
    )
    return ran(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(params=["in-process", "script"])
def cli(request: pytest.FixtureRequest) -> Runner:
    """Both ways in: typer's CliRunner, and the installed console script in a subprocess."""
    return run_in_process if request.param == "in-process" else run_script


def one_line_error(run: Run) -> str:
    """The error went to stderr as exactly one line, without a traceback."""
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("durajobs: error: ")
    return lines[0]


# -- pure helpers ---------------------------------------------------------------------------


def test_parse_instance_id_forms() -> None:
    assert parse_instance_id("continuous:refresher:a:b") == "continuous:refresher:a:b"
    assert parse_instance_id("task", "orders", "o:1") == "task:orders:o:1"
    for bad in (
        ("nope",),
        ("cron:x:y",),
        ("task::y",),
        ("task:x:",),
        ("a", "b"),
        ("a:b", "c", "d"),
    ):
        with pytest.raises(ValidationError):
            parse_instance_id(*bad)


def test_relative_times() -> None:
    assert relative(1000.0, 1000.4) == "now"
    assert relative(1240.0, 1000.0) == "in 4m"
    assert relative(997.0, 1000.0) == "3s ago"
    assert relative(1000.0 + 2 * 3600 + 13 * 60, 1000.0) == "in 2h13m"
    assert relative(1000.0 - 3 * 86400 - 4 * 3600, 1000.0) == "3d4h ago"


# -- reads ----------------------------------------------------------------------------------


def test_version(cli: Runner) -> None:
    run = cli("--version")
    assert run.code == 0
    assert run.stdout.startswith("durajobs ")


@pytest.mark.both_stores
def test_ls_lists_every_instance_sorted_by_alarm(cli: Runner, db: Path | str) -> None:
    run = cli("--db", str(db), "ls", "--json")
    assert run.code == 0, run.stderr
    rows = run.json()
    ids = [r["instance_id"] for r in rows]
    assert set(ids) == {
        "continuous:refresher:user-1", "continuous:refresher:user-2",
        "continuous:refresher:broken", "debounce:hooks:repo-1", "task:orders:o-1",
        "task:orders:o-bad", "task:orders:o-idle",
    }  # fmt: skip
    alarms = [r["next_alarm"] for r in rows]
    timed = [a for a in alarms if a is not None]
    assert timed == sorted(timed)
    assert alarms[len(timed) :] == [None] * (len(alarms) - len(timed))  # idle ones last
    by_id = {r["instance_id"]: r for r in rows}
    hooks = by_id["debounce:hooks:repo-1"]
    assert (hooks["kind"], hooks["job"], hooks["id"]) == ("debounce", "hooks", "repo-1")
    assert (hooks["status"], hooks["event_count"], hooks["attempt"]) == ("debouncing", 2, 1)
    assert (
        by_id["continuous:refresher:broken"]["last_error"] == "ValueError: tick failed for broken"
    )
    assert by_id["task:orders:o-bad"]["status"] == "failed"
    assert by_id["task:orders:o-idle"]["status"] == "idle"
    assert set(hooks) >= {"next_alarm", "alarm_reason", "run_count", "created_at", "updated_at"}

    text = cli("--db", str(db), "ls")
    assert text.code == 0
    header, *lines = text.stdout.splitlines()
    assert header.split()[:4] == ["INSTANCE", "KIND", "JOB", "STATUS"]
    assert len(lines) == 7
    assert "\x1b[" not in text.stdout  # piped: plain text
    assert any("ValueError: tick failed for broken" in line for line in lines)
    assert any("(in 9m" in line or "(in 10m" in line for line in lines)  # relative time

    jsonl = cli("--db", str(db), "ls", "--jsonl")
    assert [json.loads(line)["instance_id"] for line in jsonl.stdout.splitlines()] == ids


@pytest.mark.both_stores
def test_ls_filters_and_pages(db: Path | str) -> None:
    def ids(*args: str) -> list[str]:
        run = run_in_process("--db", str(db), "ls", "--json", *args)
        assert run.code == 0, run.stderr
        return [r["instance_id"] for r in run.json()]

    everything = ids()
    assert ids("--kind", "debounce") == ["debounce:hooks:repo-1"]
    assert ids("--status", "failed") == ["task:orders:o-bad"]
    assert sorted(ids("--job", "refresher")) == sorted(i for i in everything if ":refresher:" in i)
    assert ids("--kind", "task", "--status", "idle") == ["task:orders:o-idle"]
    assert ids("--due") == []  # nothing due yet
    none = run_in_process("--db", str(db), "ls", "--job", "nope")
    assert none.code == 0
    assert none.stdout == ""
    assert "no instances match" in none.stderr
    pages = [ids("--limit", "3", "--offset", str(offset)) for offset in (0, 3, 6)]
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for page in pages for i in page] == everything

    more = run_in_process("--db", str(db), "ls", "--limit", "3")
    assert "(more: --offset 3)" in more.stderr
    assert len(more.stdout.splitlines()) == 4


def test_ls_due_shows_what_is_due_now(tmp_path: Path) -> None:
    application = App(tmp_path / "late.db")
    populate(application, start=time.time() - 7200)  # everything scheduled is now overdue
    run = run_in_process("--db", str(application.db), "ls", "--due", "--json")
    due = {r["instance_id"] for r in run.json()}
    assert "debounce:hooks:repo-1" in due
    assert "task:orders:o-idle" not in due
    assert "task:orders:o-bad" not in due


@pytest.mark.both_stores
def test_show_every_field_state_error_history(cli: Runner, db: Path | str) -> None:
    run = cli("--db", str(db), "show", "continuous:refresher:broken", "--json")
    assert run.code == 0, run.stderr
    detail = run.json()
    assert detail["instance_id"] == "continuous:refresher:broken"
    assert (detail["kind"], detail["job"], detail["id"]) == ("continuous", "refresher", "broken")
    assert detail["status"] == "running"
    assert detail["state"] == {"n": 0}
    assert detail["last_error"] == "ValueError: tick failed for broken"
    assert "Traceback (most recent call last)" in detail["last_error_traceback"]
    assert detail["run_count"] == 1
    assert detail["attempt"] == 1
    assert detail["next_alarm"] is not None
    events = [h["event"] for h in detail["history"]]
    assert events[0] == "job.started"
    assert "job.failed" in events
    assert [h["id"] for h in detail["history"]] == sorted(h["id"] for h in detail["history"])

    three = cli("--db", str(db), "show", "continuous", "refresher", "broken", "--json")
    assert three.json() == detail

    text = cli("--db", str(db), "show", "debounce:hooks:repo-1")
    assert text.code == 0
    assert "status" in text.stdout
    assert "debouncing" in text.stdout
    assert '"value": "pull_request"' in text.stdout  # the state (latest event), pretty JSON
    assert "debounce.started" in text.stdout


@pytest.mark.both_stores
def test_show_of_a_purged_instance_has_its_final_state(db: Path | str, application: App) -> None:
    with application.jobs() as jobs:
        jobs.task("orders").terminate("o-1", reason="customer cancelled")
    live = run_in_process("--db", str(db), "show", "task:orders:o-idle", "--json").json()
    detail = run_in_process("--db", str(db), "show", "task:orders:o-1", "--json").json()
    assert set(detail) == set(live)  # the same stable keys, live or purged
    assert detail["status"] == "purged"
    assert detail["next_alarm"] is None
    assert detail["state"] == {"n": 0}
    assert detail["history"][-1]["event"] == "job.terminated"
    assert detail["history"][-1]["data"]["reason"] == "customer cancelled"


@pytest.mark.both_stores
def test_stats(cli: Runner, db: Path | str) -> None:
    run = cli("--db", str(db), "stats", "--json")
    assert run.code == 0, run.stderr
    stats = run.json()
    assert stats["instances"] == 7
    assert stats["by_kind"] == {"continuous": 3, "debounce": 1, "task": 3}
    assert stats["by_status"]["failed"] == 1
    assert {"kind": "task", "job": "orders", "status": "idle", "count": 1} in stats["by_job"]
    assert stats["due_now"] == 0
    assert stats["overdue"] == 0
    assert stats["next_alarm"] is not None
    assert stats["last_hour"]["steps"] >= 9
    assert stats["last_hour"]["failures"] == 2  # broken's tick, o-bad's execute

    text = cli("--db", str(db), "stats")
    assert text.code == 0
    assert "instances     7" in text.stdout
    assert "due now" in text.stdout
    assert "failures" in text.stdout


def test_doctor_warns_of_parked_instances(cli: Runner, db: Path) -> None:
    run = cli("--db", str(db), "doctor", "--json")
    assert run.code == 1, run.stdout  # warnings: exit 1 (failures: 2)
    report = run.json()
    assert report["ok"] is True
    assert report["status"] == "degraded"
    levels = {c["name"]: c["level"] for c in report["checks"]}
    assert levels["integrity"] == "ok"
    assert levels["schema"] == "ok"
    assert levels["wal"] == "ok"
    assert levels["parked"] == "warn"  # o-bad waits for `durajobs retry`
    claims = next(c for c in report["checks"] if c["name"] == "claims")
    assert "none can be stale" in claims["detail"]
    text = cli("--db", str(db), "doctor")
    assert text.code == 1
    assert "degraded: warnings found" in text.stdout


def test_doctor_tells_stuck_from_running(tmp_path: Path) -> None:
    application = App(tmp_path / "late.db")
    populate(application, start=time.time() - 7200)
    run = run_in_process("--db", str(application.db), "doctor", "--json")
    assert run.code == 2  # overdue, no step running, no daemon serving: a failure
    report = run.json()
    assert not report["ok"]
    stuck = {o["instance_id"] for o in report["overdue"] if o["running"] is False}
    assert "debounce:hooks:repo-1" in stuck

    # A step holding the claim of every overdue instance: running, not stuck.
    locks = InstanceLocks(str(application.db) + ".lock")
    try:
        for instance_id in stuck:
            assert locks.try_acquire(instance_id) is not None
        held = run_in_process("--db", str(application.db), "doctor", "--json")
        assert held.code == 1, held.stdout  # only the parked instance's warning is left
        assert all(o["running"] is True for o in held.json()["overdue"])
        assert {c["name"]: c["level"] for c in held.json()["checks"]}["overdue"] == "ok"
    finally:
        locks.close()

    text = run_script("--db", str(application.db), "doctor")
    assert text.code == 2
    assert "FAIL" in text.stdout
    assert "problems found" in text.stdout


@pytest.mark.both_stores
def test_tail(cli: Runner, db: Path | str) -> None:
    run = cli("--db", str(db), "tail", "-n", "3")
    assert run.code == 0, run.stderr
    assert len(run.stdout.splitlines()) == 3
    records = [
        json.loads(line)
        for line in cli("--db", str(db), "tail", "--jsonl").stdout.split("\n")
        if line
    ]
    assert len(records) == 10
    assert [r["id"] for r in records] == sorted(r["id"] for r in records)
    assert {"at", "instance_id", "event", "step", "attempt", "error", "data"} <= set(records[0])


def read_until(fd: int, wanted: bytes, deadline: float, buffer: bytearray) -> bool:
    """Read ``fd`` into ``buffer`` until ``wanted`` appears or the deadline passes."""
    while wanted not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the pty's other end closed
            return wanted in buffer
        if not chunk:
            return wanted in buffer
        buffer += chunk
    return True


@pytest.mark.both_stores
def test_tail_follow_prints_new_records(db: Path | str, application: App) -> None:
    assert SCRIPT is not None
    proc = subprocess.Popen(
        [SCRIPT, "--db", str(db), "tail", "-f", "-n", "1", "--interval", "0.05"],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        seen = bytearray()
        deadline = time.monotonic() + 15
        # The first line (the latest record) means tail has chosen where to follow from.
        assert read_until(fd, b"\n", deadline, seen), seen
        with application.jobs() as jobs:
            jobs.continuous("refresher").trigger("user-2")
        assert read_until(fd, b"continuous:refresher:user-2  job.executed", deadline, seen), seen
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


# -- actions --------------------------------------------------------------------------------


@pytest.mark.both_stores
def test_terminate(cli: Runner, db: Path | str, application: App) -> None:
    run = cli("--db", str(db), "terminate", "continuous:refresher:user-1", "--reason", "moved")
    assert run.code == 0, run.stderr
    assert "terminated continuous:refresher:user-1" in run.stdout
    with application.jobs() as jobs:
        assert jobs.continuous("refresher").status("user-1").status == "not_found"
        assert jobs.continuous("refresher").status("user-2").status == "running"
    history = run_in_process("--db", str(db), "show", "continuous:refresher:user-1", "--json")
    last = history.json()["history"][-1]
    assert last["event"] == "job.terminated"
    assert last["data"]["reason"] == "moved"


@pytest.mark.both_stores
def test_clear(cli: Runner, db: Path | str, application: App) -> None:
    run = cli("--db", str(db), "clear", "debounce:hooks:repo-1")
    assert run.code == 0, run.stderr
    assert "discarded 2 event(s)" in run.stdout
    with application.jobs(time.time() + 3600) as jobs:
        assert jobs.debounce("hooks").status("repo-1").status == "not_found"
        jobs.run_due()
    assert not [c for c in application.calls if c[0] == "deliver"]  # execute never ran


@pytest.mark.both_stores
def test_trigger_leaves_a_due_alarm_for_the_daemon(
    cli: Runner, db: Path | str, application: App
) -> None:
    before = time.time()
    run = cli("--db", str(db), "trigger", "continuous:refresher:user-1")
    assert run.code == 0, run.stderr
    assert "left for the daemon" in run.stdout
    row = next(
        r for r in run_in_process("--db", str(db), "ls", "--json").json()
        if r["instance_id"] == "continuous:refresher:user-1"
    )  # fmt: skip
    due = datetime.fromisoformat(row["next_alarm"]).timestamp()
    assert before - 1 <= due <= time.time()
    assert row["alarm_reason"] == "trigger"
    application.calls.clear()
    with application.jobs(time.time() + 1) as jobs:
        assert jobs.run_due() == 1  # the daemon's part: run the due step
        status = jobs.continuous("refresher").status("user-1")
        assert jobs.continuous("refresher").get_state("user-1") == Counter(2)
    assert application.calls == [("tick", "user-1")]
    assert status.run_count == 2
    assert status.next_run_at is not None
    assert status.next_run_at.timestamp() > time.time() + 1000


@pytest.mark.both_stores
def test_trigger_task(db: Path | str, application: App) -> None:
    run = run_in_process("--db", str(db), "trigger", "task", "orders", "o-1")
    assert run.code == 0, run.stderr
    application.calls.clear()
    with application.jobs(time.time() + 1) as jobs:
        assert jobs.run_due() == 1
        assert jobs.task("orders").status("o-1").execute_count == 1
    assert application.calls == [("ship", "o-1")]


@pytest.mark.both_stores
def test_flush(cli: Runner, db: Path | str, application: App) -> None:
    run = cli("--db", str(db), "flush", "debounce:hooks:repo-1")
    assert run.code == 0, run.stderr
    assert "left for the daemon" in run.stdout
    with application.jobs(time.time() + 1) as jobs:
        assert jobs.run_due() == 1
        assert jobs.debounce("hooks").status("repo-1").status == "not_found"  # flushed, purged
    assert application.calls[-1] == ("deliver", "manual")


@pytest.mark.both_stores
def test_retry_resumes_a_parked_instance(cli: Runner, db: Path | str, application: App) -> None:
    application.failing.clear()  # the operator fixed the warehouse
    run = cli("--db", str(db), "retry", "task:orders:o-bad")
    assert run.code == 0, run.stderr
    assert "resumed task:orders:o-bad" in run.stdout
    assert "left for the daemon" in run.stdout
    with application.jobs(time.time() + 1) as jobs:
        assert jobs.task("orders").status("o-bad").status == "active"
        assert jobs.run_due() == 1
        assert jobs.task("orders").get_state("o-bad") == Counter(1)
    assert application.calls[-1] == ("ship", "o-bad")


@pytest.mark.both_stores
@pytest.mark.parametrize(
    ("command", "instance_id", "says"),
    [
        ("clear", "continuous:refresher:user-1", "use terminate"),
        ("flush", "task:orders:o-1", "use trigger"),
        ("trigger", "debounce:hooks:repo-1", "flushed, not triggered"),
        ("trigger", "task:orders:o-bad", "durajobs retry task:orders:o-bad"),
        ("retry", "continuous:refresher:user-1", "not 'failed'"),
    ],
)
def test_actions_refused_change_nothing(
    db: Path | str, command: str, instance_id: str, says: str
) -> None:
    before = run_in_process("--db", str(db), "ls", "--json").json()
    run = run_in_process("--db", str(db), command, instance_id)
    assert run.code == 1
    assert says in one_line_error(run)
    assert run_in_process("--db", str(db), "ls", "--json").json() == before


@pytest.mark.both_stores
def test_unknown_id_exits_3(cli: Runner, db: Path | str) -> None:
    commands = ["show", "terminate", "trigger", "flush", "clear", "retry"]
    if cli is run_script:
        commands = ["show", "terminate"]  # the same path in process; keep the test fast
    for command in commands:
        run = cli("--db", str(db), command, "task:orders:nope")
        assert run.code == 3, command
        assert "task:orders:nope: no such instance" in one_line_error(run)


@pytest.mark.both_stores
@pytest.mark.parametrize("bad", ["nope", "cron:x:y", "task:orders"])
def test_malformed_id_is_a_usage_error(db: Path | str, bad: str) -> None:
    run = run_in_process("--db", str(db), "show", bad)
    assert run.code == 2
    assert "is not an instance id" in one_line_error(run)


@pytest.mark.both_stores
def test_usage_errors_exit_2(cli: Runner, db: Path | str) -> None:
    assert cli("--db", str(db), "ls", "--kind", "cron").code == 2
    if cli is run_in_process:  # the same parser either way: once through the script is enough
        assert cli("--db", str(db), "ls", "--limit", "0").code == 2
        assert cli("--db", str(db), "frobnicate").code == 2


@pytest.mark.parametrize(
    "args",
    [
        [b"terminate", b"task:t:a", b"--yes", b"--reason", b"caf\xe9"],
        [b"show", b"task:t:caf\xe9"],
        [b"ls", b"--job", b"\xff"],
    ],
)
def test_arguments_that_are_not_utf8_are_one_line_usage_errors(
    tmp_path: Path, args: list[bytes]
) -> None:
    """repro cli_nonutf8.sh: the shell passes bytes that are not UTF-8."""
    assert SCRIPT is not None
    db = str(tmp_path / "j.db")
    task = Task(state=Counter, event=Event, on_event=lambda e, ctx: None, execute=lambda ctx: None)
    with Jobs(db, {"t": task}) as jobs:
        jobs.task("t").send("a", Event("x"))
    result = subprocess.run([SCRIPT, "--db", db, *args], capture_output=True, check=False)
    assert result.returncode == 2
    assert b"Traceback" not in result.stderr
    assert result.stderr.count(b"\n") == 1
    assert b"not valid UTF-8" in result.stderr
    with Jobs(db, {"t": task}) as jobs:
        assert jobs.task("t").status("a").status == "idle"  # not terminated


@pytest.mark.both_stores
def test_db_from_environment(db: Path | str) -> None:
    run = run_script("ls", "--json", env={"DURAJOBS_DB": str(db)})
    assert run.code == 0
    assert len(run.json()) == 7


# -- a terminal: confirmation and rich output -------------------------------------------------


def run_on_pty(
    args: list[str], answer: bytes | None = None, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Run the console script with a pseudo-terminal as stdin/stdout/stderr."""
    assert SCRIPT is not None
    master, slave = pty.openpty()
    full_env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "DURAJOBS_DB")}
    full_env.update({"COLUMNS": "250", "TERM": "xterm-256color", **(env or {})})
    proc = subprocess.Popen([SCRIPT, *args], stdin=slave, stdout=slave, stderr=slave, env=full_env)
    os.close(slave)
    output = bytearray()
    try:
        deadline = time.monotonic() + 20
        if answer is not None:
            assert read_until(master, b"[y/N]", deadline, output), output
            os.write(master, answer)
        read_until(master, b"\0never", deadline, output)  # to EOF
        return proc.wait(timeout=10), output.decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_terminate_asks_on_a_tty(db: Path, application: App) -> None:
    code, output = run_on_pty(["--db", str(db), "terminate", "task:orders:o-1"], answer=b"n\n")
    assert code == 1
    assert "not confirmed" in output
    with application.jobs() as jobs:
        assert jobs.task("orders").status("o-1").status == "active"
    code, output = run_on_pty(["--db", str(db), "terminate", "task:orders:o-1"], answer=b"y\n")
    assert code == 0
    assert "terminated task:orders:o-1" in output
    code, output = run_on_pty(["--db", str(db), "terminate", "--yes", "task:orders:o-idle"])
    assert code == 0
    assert "terminated task:orders:o-idle" in output
    with application.jobs() as jobs:
        assert jobs.task("orders").status("o-1").status == "not_found"
        assert jobs.task("orders").status("o-idle").status == "not_found"


def test_rich_table_on_a_tty_and_no_color(db: Path) -> None:
    code, coloured = run_on_pty(["--db", str(db), "ls"])
    assert code == 0
    assert "task:orders:o-bad" in coloured
    assert "\x1b[31m" in coloured  # the failed row is red
    code, plain = run_on_pty(["--db", str(db), "ls"], env={"NO_COLOR": "1"})
    assert code == 0
    assert "task:orders:o-bad" in plain
    assert "\x1b[31m" not in plain
    assert "\x1b[33m" not in plain
    code, shown = run_on_pty(["--db", str(db), "show", "task:orders:o-bad"])
    assert code == 0
    assert "warehouse rejected o-bad" in shown
    assert "history" in shown


# -- storage errors -------------------------------------------------------------------------


def test_missing_file_is_not_created(cli: Runner, tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    commands = [["ls"], ["terminate", "-y", "task:a:b"]]
    for command in commands if cli is run_in_process else commands[:1]:
        run = cli("--db", str(missing), *command)
        assert run.code == 4
        assert "no such database file" in one_line_error(run)
    # doctor: a failed check (exit 2, as for every failure), not an error
    run = cli("--db", str(missing), "doctor")
    assert run.code == 2
    assert "no such database file" in run.stdout
    assert list(tmp_path.iterdir()) == []
    run = cli("--db", str(tmp_path / "no-dir" / "x.db"), "ls")
    assert run.code == 4


def test_not_a_database(cli: Runner, tmp_path: Path) -> None:
    text = tmp_path / "notes.db"
    text.write_text("these are not the pages you are looking for\n" * 100)
    run = cli("--db", str(text), "ls")
    assert run.code == 4
    assert "not a database" in one_line_error(run)
    if cli is run_script:
        return  # the variants below take the same path through the script

    empty = tmp_path / "empty.db"
    empty.touch()
    run = cli("--db", str(empty), "ls")
    assert run.code == 4
    assert "not a durajobs database" in one_line_error(run)
    assert empty.stat().st_size == 0  # inspecting did not turn it into one

    other = tmp_path / "other.db"
    conn = apsw.Connection(str(other))
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.close()
    run = cli("--db", str(other), "terminate", "-y", "task:a:b")
    assert run.code == 4
    assert "not a durajobs database" in one_line_error(run)

    run = cli("--db", str(tmp_path), "ls")
    assert run.code == 4
    assert "is a directory" in one_line_error(run)


def test_corrupt_database(cli: Runner, db: Path) -> None:
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    (root,) = conn.execute(
        "SELECT rootpage FROM sqlite_schema WHERE name = 'instances'"
    ).fetchall()[0]
    (page_size,) = conn.execute("PRAGMA page_size").fetchall()[0]
    conn.close()
    assert not Path(str(db) + "-wal").exists() or Path(str(db) + "-wal").stat().st_size == 0
    with open(db, "r+b") as f:  # overwrite the instances table's page header, mid-file
        f.seek((root - 1) * page_size)
        f.write(b"\xff" * 64)
    run = cli("--db", str(db), "ls")
    assert run.code == 4
    assert "corrupt" in one_line_error(run)
    if cli is run_in_process:
        assert cli("--db", str(db), "show", "task:orders:o-1").code == 4
    doctor = cli("--db", str(db), "doctor", "--json")
    assert doctor.code == 2
    report = doctor.json()
    assert not report["ok"]
    assert {c["name"]: c["level"] for c in report["checks"]}["integrity"] == "fail"


@contextmanager
def read_only_directory(folder: Path) -> Iterator[str]:
    """Make ``folder`` unwritable for this process; yields how.

    chmod does not stop root, so as root the directory is made immutable (``chattr +i``,
    which binds root too). Skips only when neither technique takes effect.
    """
    if os.geteuid() != 0:
        folder.chmod(0o555)
        how, undo = "chmod 555", lambda: folder.chmod(0o755)
    else:
        done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
        if done.returncode != 0:
            pytest.skip(
                "running as root, where chmod does not stop writes, and chattr +i is not "
                f"available here: {done.stderr.decode().strip()}"
            )
        how = "chattr +i"

        def undo() -> None:
            subprocess.run(["chattr", "-i", str(folder)], check=True)

    try:
        try:
            (folder / "probe").touch()
        except OSError:
            pass
        else:
            (folder / "probe").unlink()
            pytest.skip(f"{how} did not make the directory read-only here")
        yield how
    finally:
        undo()


def test_read_only_directory(cli: Runner, application: App, tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    shutil.copy(application.db, folder / "jobs.db")  # a closed database: no -wal, no -shm
    db = folder / "jobs.db"
    with read_only_directory(folder):
        listing = cli("--db", str(db), "ls", "--json")  # inspection still works
        assert listing.code == 0, listing.stderr
        assert len(listing.json()) == 7
        if cli is run_in_process:
            assert cli("--db", str(db), "show", "task:orders:o-1").code == 0
            assert cli("--db", str(db), "stats").code == 0
        run = cli("--db", str(db), "terminate", "-y", "task:orders:o-1")
        assert run.code == 4
        assert "read-only" in one_line_error(run) or "lock file" in run.stderr
        assert sorted(p.name for p in folder.iterdir()) == ["jobs.db"]  # nothing was created
    with Admin(db) as admin:
        assert admin.get("task:orders:o-1").status == "active"  # and nothing changed


# -- issue 17: attempts, every row for scripts, finished instances ----------------------------


def park_after_two_attempts(db: Path | str) -> Any:
    """A Task whose execute always fails, ``Retry(max_attempts=2)``, parked when exhausted;
    returns its ``status()``."""
    clock = FakeClock(time.time())

    def fail(ctx: Any) -> None:
        raise RuntimeError("warehouse down")

    def on_order(event: Event, ctx: Any) -> None:
        ctx.state = Counter()

    registry = {
        "orders": Task(
            state=Counter, event=Event, on_event=on_order, execute=fail,
            retry=Retry(max_attempts=2, delay="1s"), on_exhausted="park",
        )
    }  # fmt: skip
    with Jobs(db, registry, clock=clock) as jobs:
        orders = jobs.task("orders")
        orders.send("o-1", Event("placed"))
        assert orders.trigger("o-1").retry_scheduled  # attempt 1 failed
        clock.advance("2s")
        assert jobs.run_due() == 1  # attempt 2 failed: parked
        return orders.status("o-1")


@pytest.mark.both_stores
def test_a_parked_instance_shows_its_failed_attempts_as_its_history_does(
    cli: Runner, new_database: Path | str
) -> None:
    db = new_database
    status = park_after_two_attempts(db)
    assert (status.status, status.attempt) == ("failed", 3)  # the contract: the next attempt
    shown = cli("--db", str(db), "show", "task:orders:o-1", "--json").json()
    parked = [h for h in shown["history"] if h["event"] == "job.parked"]
    assert [h["attempt"] for h in parked] == [2]
    assert (shown["attempt"], shown["failed_attempts"]) == (3, 2)
    (row,) = cli("--db", str(db), "ls", "--json").json()
    assert (row["attempt"], row["failed_attempts"]) == (3, 2)
    # People read the failed attempts, as the history counts them, never "attempt 3".
    header, line = cli("--db", str(db), "ls").stdout.splitlines()
    assert line[header.index("ATTEMPT") :].startswith("2 failed ")
    text = cli("--db", str(db), "show", "task:orders:o-1").stdout
    assert "failed attempts  2 (parked; `durajobs retry` starts again at attempt 1)" in text
    assert "attempt          3" not in text
    with Admin(db) as admin:
        assert admin.get("task:orders:o-1").attempt_label == "2 failed"


@pytest.mark.both_stores
def test_ls_json_and_jsonl_give_every_row_without_limit(new_database: Path | str) -> None:
    application = App(new_database)
    with application.jobs() as jobs:
        jobs.continuous("refresher").start_many((f"user-{i:03}", Counter()) for i in range(120))

    def ls(*args: str) -> Run:
        run = run_in_process("--db", str(application.db), "ls", *args)
        assert run.code == 0, run.stderr
        return run

    everything = ls("--json")
    rows = everything.json()
    assert len(rows) == 120  # not the table's page of 50
    assert everything.stderr == ""
    assert everything.stdout == json.dumps(rows, indent=2, ensure_ascii=False) + "\n"
    lines = ls("--jsonl").stdout.splitlines()
    assert [json.loads(line) for line in lines] == rows
    assert ls("--json", "--limit", "7").json() == rows[:7]
    assert [json.loads(line) for line in ls("--jsonl", "--offset", "100").stdout.splitlines()] == (
        rows[100:]
    )
    assert ls("--json", "--job", "nope").stdout == "[]\n"
    table = ls()  # a table keeps its page
    assert len(table.stdout.splitlines()) == 51
    assert "(more: --offset 50)" in table.stderr


def start_refreshers(jobs: Jobs, count: int) -> None:
    """``count`` refresher instances, ``user-0000``..., a thousand per bulk call."""
    for low in range(0, count, 1000):
        ids = range(low, min(count, low + 1000))
        jobs.continuous("refresher").start_many((f"user-{i:04}", Counter()) for i in ids)


@pytest.mark.both_stores
def test_every_row_comes_from_one_snapshot_in_batches(new_database: Path | str) -> None:
    application = App(new_database)
    with application.jobs() as jobs:
        start_refreshers(jobs, 2500)
    with Admin(application.db) as admin:
        before = [info.instance_id for info in admin.all_instances()]
        rows = admin.all_instances()
        first = next(rows)
        with application.jobs() as jobs:  # commits while the listing is half read
            for instance_id in before[-1200:]:
                kind, job, user_id = instance_id.split(":", 2)
                if kind == "continuous":
                    jobs.continuous(job).terminate(user_id)
            jobs.continuous("refresher").start("user-new", Counter())
        listed = [first.instance_id, *(info.instance_id for info in rows)]
        assert listed == before  # the snapshot the listing started with, in ls's order
        assert len(list(admin.all_instances())) == len(before) - 1200 + 1


@pytest.mark.skipif(SCRIPT is None, reason="the durajobs console script is not installed")
def test_ls_jsonl_streams_and_stops_quietly_when_the_reader_goes(tmp_path: Path) -> None:
    application = App(tmp_path / "stream.db")
    with application.jobs() as jobs:
        start_refreshers(jobs, 3000)
    done = subprocess.run(
        ["bash", "-c", f"set -o pipefail; '{SCRIPT}' --db '{application.db}' ls --jsonl | head -1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no BrokenPipeError, no "Exception ignored" from the snapshot
    assert json.loads(done.stdout)["instance_id"] == "continuous:refresher:user-0000"


@pytest.mark.both_stores
def test_the_terminate_reason_is_shown_by_show_and_tail(db: Path | str, application: App) -> None:
    with application.jobs() as jobs:
        jobs.task("orders").terminate("o-1", reason="customer cancelled")
    text = run_in_process("--db", str(db), "show", "task:orders:o-1").stdout
    fields = dict(line.split(None, 1) for line in text.splitlines()[:9] if " " in line.strip())
    assert fields["reason"].strip() == "customer cancelled"
    assert "ended     terminated" in text
    terminated = next(line for line in text.splitlines() if "job.terminated" in line)
    assert "customer cancelled" in terminated  # the history table's REASON column
    quiet = run_in_process("--db", str(db), "show", "task:orders:o-1", "-n", "0", "--json").json()
    assert (quiet["ended"], quiet["end_reason"], quiet["state"]) == (
        "terminated", "customer cancelled", {"n": 0},
    )  # fmt: skip
    tail = run_in_process("--db", str(db), "tail", "-n", "1").stdout
    assert "task:orders:o-1  job.terminated  step=2 attempt=1  reason: customer cancelled" in tail


@pytest.mark.both_stores
def test_ls_lists_finished_instances_from_the_history(
    cli: Runner, db: Path | str, application: App
) -> None:
    with application.jobs() as jobs:
        refresher = jobs.continuous("refresher")
        refresher.terminate("user-1", reason="moved")
        refresher.start("user-1", Counter())  # lives again: not finished
        jobs.task("orders").terminate("o-1", reason="customer cancelled")
        refresher.terminate("user-2")
        assert jobs.debounce("hooks").flush("repo-1").flushed  # purged by its flush

    def ls(*args: str) -> list[dict[str, Any]]:
        run = cli("--db", str(db), "ls", *args, "--json")
        assert run.code == 0, run.stderr
        rows: list[dict[str, Any]] = run.json()
        return rows

    terminated = ls("--status", "terminated")
    assert [r["instance_id"] for r in terminated] == [
        "continuous:refresher:user-2",
        "task:orders:o-1",
    ]  # fmt: skip  (newest first)
    o1 = terminated[1]
    assert (o1["status"], o1["ended"], o1["end_reason"]) == (
        "purged",
        "terminated",
        "customer cancelled",
    )
    assert (o1["kind"], o1["job"], o1["id"]) == ("task", "orders", "o-1")
    purged = ls("--status", "purged")
    assert [(r["instance_id"], r["ended"]) for r in purged] == [
        ("debounce:hooks:repo-1", "flushed"), ("continuous:refresher:user-2", "terminated"),
        ("task:orders:o-1", "terminated"),
    ]  # fmt: skip
    assert purged[0]["end_reason"] == "manual"
    assert [r["id"] for r in ls("--status", "purged", "--kind", "task")] == ["o-1"]
    assert [r["id"] for r in ls("--status", "terminated", "--job", "refresher")] == ["user-2"]
    assert [r["id"] for r in ls("--status", "purged", "--limit", "1", "--offset", "1")] == [
        "user-2"
    ]
    table = cli("--db", str(db), "ls", "--status", "terminated")
    header, *lines = table.stdout.splitlines()
    assert header.split()[:4] == ["INSTANCE", "KIND", "JOB", "ENDED"]
    assert "customer cancelled" in lines[1]
    assert cli("--db", str(db), "ls", "--status", "terminated", "--due").code == 2

    with Admin(db) as admin:  # the dashboard's pages: keyset, each finished instance once
        seen, after = [], None
        while True:
            page = admin.finished(after=after, limit=1)
            seen += [f.instance_id for f in page.instances]
            if page.after is None:
                break
            after = page.after
        assert seen == [r["instance_id"] for r in purged]
        assert [f.id for f in admin.finished(search="task:orders:o").instances] == ["o-1"]
        assert admin.finished(kind="debounce", search="task:").instances == []
        found = admin.finished(job="refresher", search="user-").instances
        assert [f.instance_id for f in found] == ["continuous:refresher:user-2"]
        with pytest.raises(ValidationError):
            admin.finished(after="not-a-cursor")
        with pytest.raises(ValidationError):
            admin.finished(status="running")
        # Each page reads the index of the records that end instances, newest first.
        if isinstance(db, Path):
            sql = SqliteStore.sql.finished.format(prefixes="1")
            plan = admin.store.query(f"EXPLAIN QUERY PLAN {sql}", ("job.terminated", 1, 1))
            assert any("USING INDEX history_ended" in str(step) for step in plan), plan
        else:
            sql = PostgresStore.sql.finished.format(prefixes="TRUE")
            plan = admin.store.query(f"EXPLAIN {sql}", ("job.terminated", 1, 1))
            assert any("history_ended" in str(step) for step in plan), plan


def test_finished_instances_are_found_past_many_that_live_again(tmp_path: Path) -> None:
    """The newest records that end instances may all belong to ids that live again: a page
    reads on, chunk after chunk of the index, until it has its finished instances."""
    application = App(tmp_path / "churn.db")
    with application.jobs() as jobs:
        refresher = jobs.continuous("refresher")
        refresher.start("old", Counter())
        refresher.terminate("old", reason="long ago")
        for i in range(150):  # more than a chunk of candidates (64 for a page of 1)
            refresher.start(f"back-{i}", Counter())
            refresher.terminate(f"back-{i}", reason="restarted")
            refresher.start(f"back-{i}", Counter())
    with Admin(application.db) as admin:
        page = admin.finished(limit=1)
        assert [(f.instance_id, f.reason) for f in page.instances] == [
            ("continuous:refresher:old", "long ago")
        ]
        assert page.after is None
        assert admin.finished(job="refresher", search="back-").instances == []


@pytest.mark.both_stores
def test_a_database_of_an_older_schema_is_migrated_by_a_writer_not_the_cli(
    db: Path | str, application: App, request: pytest.FixtureRequest
) -> None:
    """The CLI only reads: a database of an older schema its reads still work on (from
    ``READABLE_SCHEMA``) is read as it is and left so (doctor warns); an older one is refused
    with what to do; the application's next open migrates it. Each step down is the schema as
    that version's code wrote it: 6 added flow control's tables (which reads join), 5 the
    gauges' indexes, 4 the version columns."""
    with application.jobs() as jobs:
        jobs.task("orders").terminate("o-1", reason="customer cancelled")
    expected = [("task:orders:o-1", "customer cancelled")]
    server = request.getfixturevalue("pg_server") if not isinstance(db, Path) else None

    def downgrade(version: int) -> None:  # one step down, as that schema's code wrote it
        schema_steps.downgrade(str(db), version, server, start=version + 1)

    def listed() -> list[tuple[str, str]]:
        run = run_in_process("--db", str(db), "ls", "--status", "terminated", "--json")
        assert run.code == 0, run.stderr
        return [(r["instance_id"], r["end_reason"]) for r in run.json()]

    version = SCHEMA_VERSION - 1
    while version >= READABLE_SCHEMA:  # readable as it is
        downgrade(version)
        assert listed() == expected
        assert run_in_process("--db", str(db), "stats").code == 0
        doctor = run_in_process("--db", str(db), "doctor", "--json")
        assert doctor.code == 1  # a warning (the next open migrates it), not a failure
        (schema,) = [c for c in doctor.json()["checks"] if c["name"] == "schema"]
        assert schema["level"] == "warn"
        with Admin(str(db)) as admin:
            assert admin.store.schema_version() == version  # the reads migrated nothing
        version -= 1
    downgrade(version)
    run = run_in_process("--db", str(db), "ls", "--status", "terminated")
    assert run.code == 4
    older = f"schema version {version} is older than this durajobs ({SCHEMA_VERSION})"
    assert older in one_line_error(run)
    with application.jobs():
        pass  # the application (or the daemon) of this version opens it: migrated
    assert listed() == expected
    with Admin(str(db)) as admin:
        assert admin.store.schema_version() == SCHEMA_VERSION
