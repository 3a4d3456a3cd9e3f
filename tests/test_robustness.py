"""One bad instance never stops the others (issue: robustness).

Each test here is the regression test of a reproduction in ``shared/repros`` (named in its
docstring) or of the isolation principle: whatever goes wrong while durajobs finishes one
instance's step is recorded on that instance, and the other instances of the group commit.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import attrs
import pytest

from durajobs import Continuous, Debounce, FakeClock, Jobs, Task, every
from durajobs.core import continuous, debounce, decision, steps, task
from durajobs.errors import InvalidStateError, StorageError, ValidationError
from durajobs.stores.sqlite import store as sqlite_store
from durajobs.stores.sqlite.claims import InstanceLocks, lock_path

pytestmark = pytest.mark.both_stores  # [sqlite] and [postgres]

UTC = dt.UTC
T0 = dt.datetime(2026, 1, 5, 12, tzinfo=UTC)
TESTS = Path(__file__).parent
DAEMON = TESTS.parent / "durajobs_daemon.py"
BAD_NAME = b"caf\xe9.txt".decode("utf-8", "surrogateescape")  # as os.listdir gives it


@attrs.define
class S:
    n: int = 0


@attrs.define
class E:
    what: str = ""


def bump(ctx: Any) -> None:
    ctx.state = S(ctx.state.n + 1)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def open_jobs(tmp_path: Path, clock: FakeClock) -> Iterator[Callable[..., Jobs]]:
    opened: list[Jobs] = []

    def make(registry: dict[str, Any], name: str = "j.db", **options: Any) -> Jobs:
        jobs = Jobs(tmp_path / name, registry, clock=clock, **options)
        opened.append(jobs)
        return jobs

    yield make
    for jobs in opened:
        jobs.close()


def ticker(execute: Callable[[Any], None] = bump, **kw: Any) -> Continuous:
    return Continuous(state=S, schedule=every("1h"), execute=execute, start_immediately=False, **kw)


# -- isolation --------------------------------------------------------------------------------

HEALTHY = ("a", "b", "c")


def _start_group(jobs: Jobs, clock: FakeClock, bad: str = "bad") -> None:
    client = jobs.continuous("tick")
    for user_id in (*HEALTHY[:1], bad, *HEALTHY[1:]):
        client.start(user_id, S())
    clock.advance("1h")


def _assert_isolated(jobs: Jobs, clock: FakeClock, bad: str = "bad") -> None:
    """The healthy instances ran and go on; the bad one's step is recorded as its failure."""
    committed = jobs.run_due()
    client = jobs.continuous("tick")
    assert committed == len(HEALTHY) + 1
    for user_id in HEALTHY:
        assert client.get_state(user_id) == S(1)
        assert client.status(user_id).next_run_at == clock.now() + dt.timedelta(hours=1)
    status = client.status(bad)
    assert status.status in ("running", "failed")
    assert status.last_error is not None
    history = jobs.engine.store.history(f"continuous:tick:{bad}")
    assert history[-1].event in ("job.failed", "job.parked")
    assert client.get_state(bad) == S(0)  # the failed step changed nothing else
    assert jobs.run_due() == 0  # nothing poisoned is left due: the next call is quiet
    clock.advance("1h")
    # the schedule of the others goes on (and the bad one's, if its handler was what failed)
    assert jobs.run_due() in (len(HEALTHY), len(HEALTHY) + 1)


class BadStr(Exception):
    """An exception whose __str__ raises (a library error built without its response)."""

    def __init__(self, response: Any) -> None:
        super().__init__()
        self.response = response

    def __str__(self) -> str:
        return f"HTTP {self.response['status']}"


def test_bad_str_exception_is_that_instances_failure(open_jobs: Any, clock: FakeClock) -> None:
    """repro bad_str.py: a failing __str__ no longer escapes run_due."""

    def execute(ctx: Any) -> None:
        if ctx.id == "bad":
            raise BadStr(None)
        bump(ctx)

    jobs = open_jobs({"tick": ticker(execute)})
    _start_group(jobs, clock)
    _assert_isolated(jobs, clock)
    assert "BadStr" in (jobs.continuous("tick").status("bad").last_error or "")


def test_trigger_with_bad_str_exception_records_it(open_jobs: Any, clock: FakeClock) -> None:
    def execute(ctx: Any) -> None:
        raise BadStr(None)

    jobs = open_jobs({"tick": ticker(execute)})
    jobs.continuous("tick").start("x", S())
    result = jobs.continuous("tick").trigger("x")
    assert result.triggered
    assert "str() failed" in (jobs.continuous("tick").status("x").last_error or "")


STAGES = ["codec", "error formatting", "schedule", "record", "row write"]


@pytest.mark.parametrize("stage", STAGES)
def test_a_fault_in_each_stage_of_finishing_stays_with_its_instance(
    stage: str, open_jobs: Any, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection into each stage of finishing one instance's step, among healthy ones."""

    def execute(ctx: Any) -> None:
        if ctx.id == "bad" and stage == "error formatting":
            raise RuntimeError("handler failed")  # formatting its text is what fails
        bump(ctx)

    jobs = open_jobs({"tick": ticker(execute)})
    _start_group(jobs, clock)

    current = [""]  # the user id of the step being run
    original_step = steps._step

    def step(job: Any, inst: Any, msg: Any, env: Any) -> Any:
        current[0] = env.user_id
        return original_step(job, inst, msg, env)

    monkeypatch.setattr(steps, "_step", step)

    def only_for_bad(name: str) -> None:
        # every module of the core that uses the helper holds its own name for it
        modules = [m for m in (decision, continuous, debounce, task) if hasattr(m, name)]
        assert modules, name
        for module in modules:
            original = getattr(module, name)

            def faulty(*args: Any, original: Any = original, **kwargs: Any) -> Any:
                if current[0] == "bad":
                    raise RuntimeError(f"injected fault in {stage}")
                return original(*args, **kwargs)

            monkeypatch.setattr(module, name, faulty)

    if stage == "codec":
        only_for_bad("_commit_state")
    elif stage == "error formatting":
        only_for_bad("_error_text")
        only_for_bad("_short")
    elif stage == "schedule":
        only_for_bad("_next_due")
    elif stage == "record":
        only_for_bad("_record")
    else:  # the row's write: the store refuses its content (as apsw refuses bad text)
        if not isinstance(jobs.engine.store, sqlite_store.SqliteStore):
            pytest.skip("the fault is injected into the SQLite store")
        original_apply = sqlite_store.SqliteStore._apply

        def apply(self: Any, cur: Any, write: Any, now: float, limit: int) -> bool:
            row = write.row
            if write.instance_id.endswith(":bad") and row is not None and row.last_error is None:
                raise UnicodeEncodeError("utf-8", BAD_NAME, 3, 4, "surrogates not allowed")
            return original_apply(self, cur, write, now, limit)

        monkeypatch.setattr(sqlite_store.SqliteStore, "_apply", apply)
    _assert_isolated(jobs, clock)


@pytest.mark.sqlite_only
def test_a_write_even_its_failure_cannot_store_is_skipped_not_looped(
    open_jobs: Any, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = open_jobs({"tick": ticker()})
    _start_group(jobs, clock)
    original_apply = sqlite_store.SqliteStore._apply

    def apply(self: Any, cur: Any, write: Any, now: float, limit: int) -> bool:
        if write.instance_id.endswith(":bad"):
            raise OverflowError("injected: nothing of this instance can be stored")
        return original_apply(self, cur, write, now, limit)

    monkeypatch.setattr(sqlite_store.SqliteStore, "_apply", apply)
    assert jobs.run_due() == len(HEALTHY)
    assert jobs.run_due() == 0  # skipped by this process from now on, not retried in a loop
    for user_id in HEALTHY:
        assert jobs.continuous("tick").get_state(user_id) == S(1)


def test_surrogates_in_errors_are_stored_and_client_values_refused(
    open_jobs: Any, clock: FakeClock
) -> None:
    """repro surrogate.py / dapp/run_poison.sh."""

    def execute(ctx: Any) -> None:
        if ctx.id == "bad":
            raise FileNotFoundError(f"cannot read {BAD_NAME}")
        bump(ctx)

    batcher = Debounce(event=S, flush_after="1h", execute=lambda ctx: None)
    jobs = open_jobs({"tick": ticker(execute), "d": batcher})
    _start_group(jobs, clock)
    _assert_isolated(jobs, clock)
    assert "caf\\udce9.txt" in (jobs.continuous("tick").status("bad").last_error or "")
    with pytest.raises(ValidationError, match="id"):
        jobs.continuous("tick").start(BAD_NAME, S())
    with pytest.raises(ValidationError, match="key"):
        jobs.debounce("d").add("x", S(), key=BAD_NAME)
    with pytest.raises(ValidationError, match="NUL"):
        jobs.debounce("d").add("x\x00y", S())


def test_key_and_reason_must_be_strings(open_jobs: Any) -> None:
    jobs = open_jobs({"t": Task(state=S, event=E, on_event=lambda e, c: None,
                                execute=lambda c: None)})  # fmt: skip
    with pytest.raises(TypeError, match="key"):
        jobs.task("t").send("x", E(), key=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="reason"):
        jobs.task("t").terminate("x", reason=5)  # type: ignore[arg-type]
    assert jobs.task("t").status("x").status == "not_found"


def test_terminated_record_counts_the_run_that_terminated(open_jobs: Any, clock: FakeClock) -> None:
    def execute(ctx: Any) -> None:
        if ctx.run_count == 2:
            ctx.terminate("done")

    jobs = open_jobs({"tick": ticker(execute)})
    jobs.continuous("tick").start("x", S())
    for _ in range(2):
        clock.advance("1h")
        jobs.run_due()
    last = jobs.engine.store.history("continuous:tick:x")[-1]
    assert last.event == "job.terminated"
    assert '"run_count":2' in (last.data or "")


# -- fan-out and re-entrancy ----------------------------------------------------------------


def test_a_handler_calling_its_own_instance_fails_at_once(open_jobs: Any) -> None:
    """repro self_call.py."""
    holder: dict[str, Jobs] = {}

    def on_event(event: E, ctx: Any) -> None:
        holder["jobs"].task("t").status(ctx.id)  # reads are fine
        holder["jobs"].task("t").terminate(ctx.id)

    jobs = holder["jobs"] = open_jobs(
        {"t": Task(state=S, event=E, on_event=on_event, execute=lambda c: None)}, wait_timeout=30
    )
    started = time.monotonic()
    with pytest.raises(Exception, match="its own instance") as raised:
        jobs.task("t").send("o1", E())
    assert time.monotonic() - started < 5  # not wait_timeout
    assert isinstance(raised.value.__cause__, InvalidStateError)


def test_fan_out_to_an_instance_stepped_earlier_in_the_same_group(
    open_jobs: Any, clock: FakeClock
) -> None:
    """repro group_reentry.py: the pending group commit is committed, not waited for."""
    holder: dict[str, Jobs] = {}

    def on_event(event: E, ctx: Any) -> None:
        ctx.state = S((ctx.state.n if ctx.state else 0) + 1)
        if event.what == "arm":
            ctx.schedule("1 minute")

    def execute(ctx: Any) -> None:
        if ctx.id == "notifier":
            holder["jobs"].task("t").send("inbox", E("note"))

    jobs = holder["jobs"] = open_jobs(
        {"t": Task(state=S, event=E, on_event=on_event, execute=execute)}, wait_timeout=3
    )
    jobs.task("t").send("inbox", E("arm"))
    clock.advance("1ms")
    jobs.task("t").send("notifier", E("arm"))
    clock.advance("2 minutes")
    started = time.monotonic()
    assert jobs.run_due() == 2
    assert time.monotonic() - started < 2
    assert jobs.task("t").get_state("inbox") == S(2)
    assert jobs.task("t").status("notifier").status == "idle"
    assert jobs.task("t").status("notifier").last_error is None


def test_unknown_jobs_never_starve_known_ones(tmp_path: Path, clock: FakeClock) -> None:
    """repro starve.py: 300 due instances of a job the registry no longer has."""
    db = tmp_path / "j.db"
    with Jobs(db, {"legacy": ticker(), "billing": ticker()}, clock=clock) as v1:
        for i in range(300):
            v1.continuous("legacy").start(f"u{i}", S())
        clock.advance("1s")
        v1.continuous("billing").start("acme", S())
    clock.advance("2h")
    with Jobs(db, {"billing": ticker()}, clock=clock) as v2:
        assert v2.run_due() == 1
        assert v2.continuous("billing").status("acme").run_count == 1
        assert v2.next_alarm() == clock.now() + dt.timedelta(hours=1)


# -- one file, one identity -----------------------------------------------------------------


def _registry() -> dict[str, Any]:
    return {"t": Task(state=S, event=E, on_event=lambda e, c: None, execute=lambda c: None)}


@pytest.mark.sqlite_only
def test_a_symlink_or_another_spelling_shares_the_claims(tmp_path: Path) -> None:
    """repro twopaths.py (symlink, ../)."""
    real = tmp_path / "real.db"
    (tmp_path / "other").mkdir()
    link = tmp_path / "other" / "link.db"
    with Jobs(real, _registry()) as first:
        link.symlink_to(real)
        token = first.engine.locks.try_acquire("task:t:shared")
        assert token is not None
        for spelling in (link, tmp_path / "other" / ".." / "real.db"):
            with Jobs(spelling, _registry(), wait_timeout=0.05) as second:
                assert second.engine.locks.try_acquire("task:t:shared") is None
        first.engine.locks.release(token)
    assert lock_path(str(link)) == lock_path(str(real))


@pytest.mark.sqlite_only
def test_a_deleted_lock_file_still_excludes_a_step_that_holds_it(tmp_path: Path) -> None:
    """repro twopaths.py (lock file deleted while a step runs)."""
    db = tmp_path / "j.db"
    with Jobs(db, _registry()) as first:
        token = first.engine.locks.try_acquire("task:t:shared")
        assert token is not None
        os.unlink(lock_path(str(db)))
        with Jobs(db, _registry()) as second:
            # the new lock file's creator also claims on the deleted file still in use
            assert second.engine.locks.try_acquire("task:t:shared") is None
            first.engine.locks.release(token)
            again = second.engine.locks.try_acquire("task:t:shared")
            assert again is not None
            # the first process notices the replaced file at its next claim and moves there
            assert first.engine.locks.try_acquire("task:t:shared") is None
            second.engine.locks.release(again)
            assert first.engine.locks.try_acquire("task:t:other") is not None


@pytest.mark.sqlite_only
def test_one_daemon_lock_per_file(tmp_path: Path) -> None:
    db = str(tmp_path / "j.db")
    Jobs(db, _registry()).close()
    first = InstanceLocks(lock_path(db))
    second = InstanceLocks(lock_path(db))
    try:
        assert first.hold_daemon_lock()
        assert not second.hold_daemon_lock()
        first.close()
        assert second.hold_daemon_lock()
    finally:
        first.close()
        second.close()


# -- refuse without changing ----------------------------------------------------------------


@pytest.mark.sqlite_only
def test_a_foreign_sqlite_file_is_refused_unchanged(tmp_path: Path) -> None:
    """repro foreign_wal.py."""
    other = tmp_path / "app.sqlite"
    conn = apsw.Connection(str(other))
    conn.execute("CREATE TABLE users(name TEXT)")
    conn.close()
    before = other.read_bytes()
    with pytest.raises(StorageError, match="not a durajobs database"):
        Jobs(other, _registry())
    assert other.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["app.sqlite"]
    conn = apsw.Connection(str(other))
    assert conn.execute("PRAGMA journal_mode").fetchall() == [("delete",)]


@pytest.mark.sqlite_only
@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"wait_timeout": "soon"}, ValueError),
        ({"wait_timeout": -1}, ValueError),
        ({"busy_timeout": [1]}, TypeError),
        ({"history_limit": 0}, ValueError),
        ({"history_limit": "100"}, TypeError),
        ({"durability": "fast"}, ValueError),
        ({"clock": "now"}, TypeError),
        ({"on_record": 5}, TypeError),
    ],
)
def test_bad_options_are_refused_leaving_no_file(
    tmp_path: Path, options: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        Jobs(tmp_path / "j.db", _registry(), **options)
    assert os.listdir(tmp_path) == []


def test_wait_timeout_takes_a_duration_string(tmp_path: Path) -> None:
    """repro wait_str.py."""
    with Jobs(tmp_path / "j.db", _registry(), wait_timeout="50ms") as jobs:
        assert jobs.wait_timeout == pytest.approx(0.05)
        other = Jobs(tmp_path / "j.db", _registry())
        token = other.engine.locks.try_acquire("task:t:x")
        try:
            with pytest.raises(Exception, match="wait_timeout"):
                jobs.task("t").send("x", E())
        finally:
            other.engine.locks.release(token)  # type: ignore[arg-type]
            other.close()


@pytest.mark.sqlite_only
def test_an_unstorable_type_leaves_no_file(tmp_path: Path) -> None:
    @attrs.define
    class Bad:
        data: set[int]

    with pytest.raises(TypeError, match="job 'c'"):
        Jobs(tmp_path / "j.db", {"c": Continuous(state=Bad, schedule=every("1h"),
                                                 execute=lambda c: None)})  # fmt: skip
    assert os.listdir(tmp_path) == []


# -- the daemon -------------------------------------------------------------------------------


def _daemon_env(tmp_path: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "DAEMON_TEST_DB": str(tmp_path / "j.db"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
    }
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"):
        env.pop(key, None)
    return env


def _wait_for(condition: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {condition}")
        time.sleep(0.01)
    return value


def _run_daemon(app: str, env: dict[str, str], until: Callable[[], bool]) -> str:
    proc = subprocess.Popen(
        [sys.executable, str(DAEMON), "--app", app],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        _wait_for(until)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr.decode(errors="replace")
    return stderr.decode(errors="replace")


@pytest.mark.sqlite_only
def test_daemon_poisoned_instance_does_not_stop_the_others(tmp_path: Path) -> None:
    """repro dapp/run_poison.sh: healthy instances run on, every second."""
    env = _daemon_env(tmp_path)
    registry = {"tick": Continuous(state=S, schedule=every("1s"), execute=bump,
                                   start_immediately=False)}  # fmt: skip
    with Jobs(env["DAEMON_TEST_DB"], registry) as jobs:
        for user_id in ("healthy-1", "poison", "healthy-2"):
            jobs.continuous("tick").start(user_id, S())

        def healthy_ran_twice() -> bool:
            counts = [
                jobs.continuous("tick").status(u).run_count for u in ("healthy-1", "healthy-2")
            ]
            return min(counts) >= 2

        log = _run_daemon("daemon_apps.robust_app:poison", env, healthy_ran_twice)
        assert "Traceback" not in log
        status = jobs.continuous("tick").status("poison")
        assert "caf\\udce9.txt" in (status.last_error or "")


@pytest.mark.sqlite_only
def test_daemon_fan_out_within_a_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """repro dapp/run_fanout.sh: a send from execute to an instance due just before it."""
    import importlib

    env = _daemon_env(tmp_path)
    monkeypatch.setenv("DAEMON_TEST_DB", env["DAEMON_TEST_DB"])
    app = importlib.import_module("daemon_apps.robust_app")
    app = importlib.reload(app)  # opened on this test's files
    try:
        # Due before the daemon starts, warm-up first: its step times the job, alone in its
        # batch (a job not timed yet goes alone), so inbox and notifier go out in one batch.
        at = time.time() - 2.0
        app.fanout.task("t").send("warm-up", app.Note(f"arm@{at - 1.0}"))
        app.fanout.task("t").send("inbox", app.Note(f"arm@{at}"))
        app.fanout.task("t").send("notifier", app.Note(f"arm@{at + 0.001}"))

        def delivered() -> bool:
            state = app.fanout.task("t").get_state("inbox")
            return state is not None and state.n == 2

        log = _run_daemon("daemon_apps.robust_app:fanout", env, delivered)
        assert "Traceback" not in log
        status = app.fanout.task("t").status("notifier")
        assert status.execute_count == 1
        assert status.last_error is None
    finally:
        app.fanout.close()
        app.poison.close()


@pytest.mark.sqlite_only
def test_the_cli_lists_every_row_when_one_holds_text_that_is_not_utf8(tmp_path: Path) -> None:
    """Another program wrote bytes that are not UTF-8 into a row: ``ls``, ``show`` and
    ``tail`` still show it (escaped) and the other rows."""
    db = str(tmp_path / "j.db")
    with Jobs(db, {"tick": ticker()}) as jobs:
        jobs.continuous("tick").start("good", S())
        jobs.continuous("tick").start("odd", S())
    conn = apsw.Connection(db)
    conn.execute(
        "UPDATE instances SET last_error = CAST(X'4572726F72FE' AS TEXT) "
        "WHERE instance_id = 'continuous:tick:odd'"
    )
    conn.execute("UPDATE history SET error = CAST(X'626164FF' AS TEXT)")
    conn.close()
    cli = [sys.executable, "-m", "durajobs.cli", "--db", db]
    listed = subprocess.run([*cli, "ls"], capture_output=True, check=False)
    assert listed.returncode == 0, listed.stderr
    assert b"continuous:tick:good" in listed.stdout
    assert b"continuous:tick:odd" in listed.stdout
    shown = subprocess.run([*cli, "show", "continuous:tick:odd"], capture_output=True, check=False)
    assert shown.returncode == 0, shown.stderr
    assert b"Error\\xfe" in shown.stdout
    tail = subprocess.run([*cli, "tail", "-n", "5"], capture_output=True, check=False)
    assert tail.returncode == 0, tail.stderr


@pytest.mark.sqlite_only
def test_one_daemon_per_file_even_without_the_wake_socket_file(tmp_path: Path) -> None:
    """repro dapp/run_wake.sh: the wake socket is the same for every spelling of the path, and
    "one daemon per file" is a kernel lock: deleting the socket file admits no second daemon."""
    from durajobs.stores.sqlite.wake import wake_address

    db = tmp_path / "j.db"
    (tmp_path / "other").mkdir()
    link = tmp_path / "other" / "link.db"
    link.symlink_to(db)
    assert wake_address(str(db)) == wake_address(str(link)) == str(tmp_path / "j.db.wake")
    env = _daemon_env(tmp_path)
    registry = {"tick": ticker()}
    Jobs(env["DAEMON_TEST_DB"], registry).close()
    first = subprocess.Popen(
        [sys.executable, str(DAEMON), "--app", "daemon_apps.robust_app:poison"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:

        def daemon_holds_the_file() -> bool:
            probe = InstanceLocks(lock_path(env["DAEMON_TEST_DB"]))
            try:
                return not probe.hold_daemon_lock()
            finally:
                probe.close()

        _wait_for(daemon_holds_the_file)
        _wait_for((tmp_path / "j.db.wake").exists)
        (tmp_path / "j.db.wake").unlink()
        second = subprocess.run(
            [sys.executable, str(DAEMON), "--app", "daemon_apps.robust_app:poison"],
            env=env, capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        assert second.returncode == 1
        assert b"another daemon already serves" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)
    assert first.returncode == 0
