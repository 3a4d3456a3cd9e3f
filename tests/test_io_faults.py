"""I/O-error sweep: every public operation, every fault kind, failed at each I/O call in turn.

Issue 5, part 2. For each scenario (one public call on a prepared database) and each fault
(``xWrite`` / ``xSync`` / ``xTruncate`` raising ``SQLITE_IOERR`` or ``SQLITE_FULL``, once or
persistently) the sweep fails the 1st, 2nd, 3rd, ... matching I/O call of the operation until
the operation runs without reaching the fault. After each run it checks:

- the call either returned or raised ``StorageError`` (never another type, never raw apsw);
- handlers ran exactly once per attempt of the call;
- ``PRAGMA integrity_check`` is ok on the live connection and on power-loss images;
- the database holds exactly the pre-call rows or exactly the post-call rows (all of
  ``instances``, ``inbox``, ``event_keys`` and ``history``), never a mix; a call that returned
  left the post rows, and they survive a power cut taken right after it (``durability="full"``);
  a call that raised left the pre rows on the live connection, and after a power cut either
  the pre or the post rows (a failed WAL sync leaves the commit's frames in the file, where
  recovery may find them: "raised" means "not acknowledged", not "certainly not applied");
- after a raise, the same ``Jobs`` object retries the call successfully, reaching the post rows;
- after a clean close and reopen the post rows are there, and the ``Jobs`` keeps working.

``close`` (which checkpoints) gets the same sweep. Two shrunk failures are kept as plain tests
at the end of the file.

The post rows come from a reference run of the same scenario without faults (time is a
``FakeClock``, so both runs write identical rows; handler durations are left out).

Each scenario also runs with ``wal_autocheckpoint=1`` and ``journal_size_limit=0`` so that
faults land in the checkpoint after a commit (the case where COMMIT raises although the data
committed) and in WAL truncation.
"""

from __future__ import annotations

import collections
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import apsw
import attrs
import pytest
from faultvfs import FaultVFS

from durajobs import Backoff, Continuous, Debounce, FakeClock, Jobs, Retry, Task, engine, every
from durajobs.errors import StorageError

T0 = datetime(2026, 1, 1, tzinfo=UTC)
MAX_N = 400  # no operation here does anywhere near this many I/O calls

# -- jobs under test ----------------------------------------------------------------------------

CALLS: collections.Counter[str] = collections.Counter()


@attrs.define
class Runs:
    n: int = 0


@attrs.define
class Order:
    events: int = 0
    executes: int = 0


def c_execute(ctx: Any) -> None:
    CALLS["c.execute"] += 1
    ctx.state = Runs(ctx.state.n + 1)


def flaky_execute(ctx: Any) -> None:
    CALLS["flaky.execute"] += 1
    raise RuntimeError("upstream is down")


def stop_execute(ctx: Any) -> None:
    CALLS["stop.execute"] += 1
    ctx.terminate("done after one run")


def d_reduce(ctx: Any) -> list[int]:
    CALLS["d.on_event"] += 1
    return [*(ctx.state or []), ctx.event]


def d_execute(ctx: Any) -> None:
    CALLS["d.execute"] += 1


def t_on_event(event: int, ctx: Any) -> None:
    CALLS["t.on_event"] += 1
    state = ctx.state or Order()
    ctx.state = Order(state.events + 1, state.executes)
    ctx.schedule("10s")


def t_execute(ctx: Any) -> None:
    CALLS["t.execute"] += 1
    ctx.state = Order(ctx.state.events, ctx.state.executes + 1)


def t_on_idle(ctx: Any) -> None:
    CALLS["t.on_idle"] += 1


RETRY = Retry(max_attempts=2, delay=Backoff.fixed("5s"))
REGISTRY = {
    "c": Continuous(state=Runs, schedule=every("10s"), execute=c_execute, retry=RETRY),
    "flaky": Continuous(state=Runs, schedule=every("10s"), execute=flaky_execute, retry=RETRY),
    "stop": Continuous(state=Runs, schedule=every("10s"), execute=stop_execute),
    "d": Debounce(
        event=int,
        state=list[int],
        on_event=d_reduce,
        execute=d_execute,
        flush_after="10s",
        max_events=3,
    ),
    "t": Task(state=Order, event=int, on_event=t_on_event, execute=t_execute, on_idle=t_on_idle),
}

# -- scenarios ----------------------------------------------------------------------------------


@attrs.frozen
class Scenario:
    """One public call on a database prepared by ``setup``.

    ``calls``: handler invocations per attempt of ``op``. ``hold``: an instance whose claim a
    second ``Jobs`` on the same file holds during the call (a step running in another process).
    """

    name: str
    op: Callable[[Jobs], Any]
    calls: dict[str, int] = attrs.field(factory=dict)
    setup: Callable[[Jobs], Any] = lambda jobs: None
    hold: str | None = None
    # A call made of two transactions (steps, then best-effort maintenance) may stop between
    # them: the rows of a reference run with these Jobs options are then also a valid outcome.
    partial: dict[str, Any] | None = None


def _setup_all_kinds_due(jobs: Jobs) -> None:
    for user in ("u1", "u2"):
        jobs.continuous("c").start(user, Runs())
        jobs.task("t").send(user, 1)
    jobs.continuous("flaky").start("u1", Runs())  # retry alarm at +5 s; the retry exhausts it
    jobs.debounce("d").add("u1", 1)
    jobs.debounce("d").add("u2", 2)
    jobs.debounce("d").add("u2", 3)
    jobs.clock.advance("10s")  # type: ignore[attr-defined]


def _queue(jobs: Jobs, user_id: str, event: int) -> None:
    """``add`` while another process's step holds the instance: the event is queued."""
    with Jobs(jobs.path, REGISTRY, clock=FakeClock(T0)) as other:
        token = other.engine.locks.try_acquire(f"debounce:d:{user_id}")
        assert token is not None
        assert not jobs.debounce("d").add(user_id, event).created
        other.engine.locks.release(token)


def _setup_one_queued(jobs: Jobs) -> None:
    jobs.debounce("d").add("u1", 1)
    _queue(jobs, "u1", 2)


def _setup_folded_and_queued(jobs: Jobs) -> None:
    _setup_one_queued(jobs)
    assert jobs.run_due() == 1  # folds event 2 (and prunes, once)
    _queue(jobs, "u1", 3)


def _setup_month_old_history(jobs: Jobs) -> None:
    jobs.continuous("c").start("u1", Runs())
    jobs.task("t").send("u1", 1, key="k1")
    jobs.clock.advance("31 days")  # type: ignore[attr-defined]


SCENARIOS = [
    Scenario(
        "continuous.start",
        lambda jobs: jobs.continuous("c").start("u1", Runs()),
        {"c.execute": 1},
    ),
    Scenario(
        "continuous.start.first_run_fails",
        lambda jobs: jobs.continuous("flaky").start("u1", Runs()),
        {"flaky.execute": 1},
    ),
    Scenario(
        "continuous.start.first_run_terminates",
        lambda jobs: jobs.continuous("stop").start("u1", Runs()),
        {"stop.execute": 1},
    ),
    Scenario(
        "continuous.trigger",
        lambda jobs: jobs.continuous("c").trigger("u1"),
        {"c.execute": 1},
        setup=lambda jobs: jobs.continuous("c").start("u1", Runs()),
    ),
    Scenario(
        "continuous.terminate",
        lambda jobs: jobs.continuous("c").terminate("u1", reason="bye"),
        setup=lambda jobs: jobs.continuous("c").start("u1", Runs()),
    ),
    Scenario(
        "debounce.add.new_batch",
        lambda jobs: jobs.debounce("d").add("u1", 1),
        {"d.on_event": 1},
    ),
    Scenario(
        "debounce.add.keyed",
        lambda jobs: jobs.debounce("d").add("u1", 2, key="k2"),
        {"d.on_event": 1},
        setup=lambda jobs: jobs.debounce("d").add("u1", 1),
    ),
    Scenario(
        "debounce.add.max_events_flush",
        lambda jobs: jobs.debounce("d").add("u1", 3),
        {"d.on_event": 1, "d.execute": 1},
        setup=lambda jobs: [jobs.debounce("d").add("u1", e) for e in (1, 2)],
    ),
    Scenario(
        "debounce.add.queued",
        lambda jobs: jobs.debounce("d").add("u1", 2, key="k2"),
        setup=lambda jobs: jobs.debounce("d").add("u1", 1),
        hold="debounce:d:u1",
    ),
    Scenario(
        "debounce.add.queued_new_instance",
        lambda jobs: jobs.debounce("d").add("u1", 1),
        hold="debounce:d:u1",
    ),
    Scenario(
        "debounce.flush",
        lambda jobs: jobs.debounce("d").flush("u1"),
        {"d.execute": 1},
        setup=lambda jobs: [jobs.debounce("d").add("u1", e) for e in (1, 2)],
    ),
    Scenario(
        "debounce.flush.with_queued_events",
        lambda jobs: jobs.debounce("d").flush("u1"),
        {"d.on_event": 1, "d.execute": 1},
        setup=_setup_folded_and_queued,
    ),
    Scenario(
        "debounce.clear",
        lambda jobs: jobs.debounce("d").clear("u1"),
        setup=lambda jobs: jobs.debounce("d").add("u1", 1),
    ),
    Scenario(
        "task.send.new_instance",
        lambda jobs: jobs.task("t").send("u1", 1),
        {"t.on_event": 1},
    ),
    Scenario(
        "task.send.keyed",
        lambda jobs: jobs.task("t").send("u1", 2, key="k2"),
        {"t.on_event": 1},
        setup=lambda jobs: jobs.task("t").send("u1", 1),
    ),
    Scenario(
        "task.trigger",
        lambda jobs: jobs.task("t").trigger("u1"),
        {"t.execute": 1, "t.on_idle": 1},
        setup=lambda jobs: jobs.task("t").send("u1", 1),
    ),
    Scenario(
        "task.terminate",
        lambda jobs: jobs.task("t").terminate("u1"),
        setup=lambda jobs: jobs.task("t").send("u1", 1),
    ),
    Scenario(
        "run_due.all_kinds",
        lambda jobs: jobs.run_due(),
        {"c.execute": 2, "flaky.execute": 1, "d.execute": 2, "t.execute": 2, "t.on_idle": 2},
        setup=_setup_all_kinds_due,
    ),
    Scenario(
        # The first run_due of a Jobs also prunes history and keys past their retention: a
        # second transaction after the steps' commit.
        "run_due.then_prunes",
        lambda jobs: jobs.run_due(),
        {"c.execute": 1, "t.execute": 1, "t.on_idle": 1},
        setup=_setup_month_old_history,
        partial={"history_retention": "36500 days", "key_window": "36500 days"},
    ),
    Scenario(
        "run_due.folds_queued_event",
        lambda jobs: jobs.run_due(),
        {"d.on_event": 1},
        setup=_setup_one_queued,
    ),
]

FAULTS = [
    pytest.param("write", "ioerr", False, id="write-ioerr"),
    pytest.param("sync", "ioerr", False, id="sync-ioerr"),
    pytest.param("write", "full", False, id="write-full"),
    pytest.param("truncate", "ioerr", False, id="truncate-ioerr"),
    pytest.param("any", "ioerr", True, id="any-ioerr-persistent"),
]

# -- helpers ------------------------------------------------------------------------------------

HEALTH = "task:t:health"  # the instance the after-fault health check creates
TABLES = {
    "instances": "SELECT * FROM instances WHERE instance_id != ?1 ORDER BY instance_id",
    "inbox": "SELECT * FROM inbox WHERE instance_id != ?1 ORDER BY seq",
    "event_keys": "SELECT * FROM event_keys WHERE instance_id != ?1 ORDER BY instance_id, key",
    # duration_ms is a real timer reading: everything else is deterministic under a FakeClock.
    "history": "SELECT id, instance_id, at, event, step, attempt, error, data FROM history "
    "WHERE instance_id != ?1 ORDER BY id",
}

Snapshot = dict[str, list[tuple[Any, ...]]]


def snapshot_of(query: Callable[[str, tuple[Any, ...]], list[Any]]) -> Snapshot:
    return {name: [tuple(r) for r in query(sql, (HEALTH,))] for name, sql in TABLES.items()}


def live_snapshot(jobs: Jobs) -> Snapshot:
    store = jobs.engine.store
    assert store.integrity_check() == ["ok"]
    return snapshot_of(store.query)


def file_snapshot(path: str) -> Snapshot:
    """Open a database file as a fresh process would (WAL recovery), check it, dump it."""
    conn = apsw.Connection(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return snapshot_of(lambda sql, params: conn.execute(sql, params).fetchall())
    finally:
        conn.close()


def open_jobs(path: str, vfs: FaultVFS | None, *, checkpoint: bool, **options: Any) -> Jobs:
    jobs = Jobs(path, REGISTRY, clock=FakeClock(T0), vfs=vfs.vfs_name if vfs else None, **options)
    if checkpoint:
        # Checkpoint after every commit and truncate the WAL when it restarts: faults then also
        # land after the commit point and in xTruncate.
        jobs.engine.store.query("PRAGMA wal_autocheckpoint=1")
        jobs.engine.store.query("PRAGMA journal_size_limit=0")
    return jobs


def describe(snap: Snapshot, pre: Snapshot, posts: list[Snapshot]) -> str:
    post = posts[0]
    if snap == pre:
        return "pre"
    if snap in posts:
        return "post" if snap == post else "partial post"
    lines = []
    for table in TABLES:
        if snap[table] not in (pre[table], post[table]):
            lines.append(f"{table}: got {snap[table]}\n  pre {pre[table]}\n  post {post[table]}")
        elif pre[table] != post[table]:
            lines.append(f"{table}: {'pre' if snap[table] == pre[table] else 'post'}")
    return "a MIX of pre and post:\n" + "\n".join(lines)


@attrs.define
class Harness:
    workdir: str
    vfs: FaultVFS
    cases: int = 0

    def path(self) -> str:
        self.cases += 1
        folder = os.path.join(self.workdir, f"case{self.cases}")
        os.mkdir(folder)
        return os.path.join(folder, "jobs.db")

    def prepare(
        self, scenario: Scenario, *, checkpoint: bool, **options: Any
    ) -> tuple[Jobs, Jobs | None, str]:
        path = self.path()
        jobs = open_jobs(path, self.vfs, checkpoint=checkpoint, **options)
        scenario.setup(jobs)
        holder = None
        if scenario.hold is not None:
            holder = Jobs(path, REGISTRY, clock=FakeClock(T0))
            assert holder.engine.locks.try_acquire(scenario.hold) is not None
        return jobs, holder, path

    def reference(self, scenario: Scenario, *, checkpoint: bool) -> tuple[Snapshot, list[Snapshot]]:
        """Rows before the call, and the rows it may leave (the full post state first), from
        runs without faults."""
        options = [{}] if scenario.partial is None else [{}, scenario.partial]
        pre_states, posts = [], []
        for extra in options:
            jobs, holder, _ = self.prepare(scenario, checkpoint=checkpoint, **extra)
            pre_states.append(live_snapshot(jobs))
            CALLS.clear()
            scenario.op(jobs)
            assert dict(CALLS) == scenario.calls, "the scenario's expected handler calls are off"
            posts.append(live_snapshot(jobs))
            assert posts[-1] != pre_states[-1], "the scenario changes nothing"
            if holder is not None:
                holder.close()
            jobs.close()
        assert all(p == pre_states[0] for p in pre_states)
        return pre_states[0], posts

    def run(
        self,
        scenario: Scenario,
        pre: Snapshot,
        posts: list[Snapshot],
        *,
        kind: str,
        error: str,
        persistent: bool,
        n: int,
        checkpoint: bool,
    ) -> bool:
        """One case: fail the (n+1)-th matching I/O call of the operation; check everything.

        Returns whether the fault fired (else the sweep is done).
        """
        vfs = self.vfs
        vfs.reset()
        jobs, holder, path = self.prepare(scenario, checkpoint=checkpoint)
        assert live_snapshot(jobs) == pre
        CALLS.clear()
        fault = vfs.fail_after(n, kind=kind, error=error, persistent=persistent)
        raised: StorageError | None = None
        try:
            scenario.op(jobs)
        except StorageError as exc:
            raised = exc
        except BaseException as exc:
            vfs.clear_faults()
            raise AssertionError(
                f"{scenario.name}: {kind}/{error} fault at I/O call {n}: raised "
                f"{type(exc).__module__}.{type(exc).__name__} instead of StorageError: {exc}"
            ) from exc
        vfs.clear_faults()
        fired = fault.fired > 0
        where = f"{scenario.name}: {kind}/{error} fault at I/O call {n} ({vfs.last_fault})"
        assert fired or raised is None, f"{where}: raised without a fault: {raised}"
        assert dict(CALLS) == scenario.calls, f"{where}: handler calls {dict(CALLS)}"

        live = live_snapshot(jobs)
        if raised is None:
            assert live in posts, (
                f"{where}: returned, but the live rows are {describe(live, pre, posts)}"
            )
        else:
            assert live == pre, (
                f"{where}: raised {raised}, but the live rows are {describe(live, pre, posts)}"
            )

        # Power loss right now: a returned call is durable; a raised one may or may not be.
        for keep in ("none", "all"):
            image = vfs.crash_image(os.path.join(os.path.dirname(path), f"img-{keep}"), keep,
                                    db=path)  # fmt: skip
            seen = file_snapshot(image)
            allowed = [live, *posts] if raised is None else [pre, *posts]
            assert seen in allowed, (
                f"{where}: power loss (keep={keep}) after it "
                f"{'returned' if raised is None else 'raised'}: {describe(seen, pre, posts)}"
            )

        if raised is not None:
            CALLS.clear()
            scenario.op(jobs)  # the same Jobs object, retrying: must work and apply once
            assert dict(CALLS) == scenario.calls, f"{where}: retry's handler calls {dict(CALLS)}"
            live = live_snapshot(jobs)
            assert live == posts[0], f"{where}: after the retry: {describe(live, pre, posts)}"

        # The same Jobs object keeps working.
        jobs.task("t").send("health", 0)
        if holder is not None:
            holder.close()
        jobs.close()
        assert file_snapshot(path) == live, f"{where}: after reopen"
        with Jobs(path, REGISTRY, clock=FakeClock(T0)) as again:
            assert again.task("t").status("health").event_count == 1
        return fired


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    workdir = tempfile.mkdtemp(prefix="durajobs-iofaults-", dir=base)
    vfs = FaultVFS(f"iofaults-{uuid.uuid4().hex[:8]}")
    try:
        yield Harness(workdir, vfs)
    finally:
        vfs.unregister()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(autouse=True)
def _one_group_per_run_due(monkeypatch: pytest.MonkeyPatch) -> None:
    """``run_due`` also closes a group commit after 20 ms of handler time (or before a job that
    was slow): under CPU load the
    run_due scenario would split into two transactions, at random. The sweep wants one."""
    monkeypatch.setattr(engine, "GROUP_MAX_SECONDS", 3600.0)
    monkeypatch.setattr(engine, "SLOW_STEP", 3600.0)


@pytest.fixture(autouse=True)
def _fresh_case_dirs(harness: Harness) -> Iterator[None]:
    yield
    for entry in os.listdir(harness.workdir):
        shutil.rmtree(os.path.join(harness.workdir, entry), ignore_errors=True)


# -- the sweep ----------------------------------------------------------------------------------


@pytest.mark.parametrize("checkpoint", [False, True], ids=["plain", "checkpoint"])
@pytest.mark.parametrize(("kind", "error", "persistent"), FAULTS)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_io_fault_sweep(
    harness: Harness, scenario: Scenario, kind: str, error: str, persistent: bool, checkpoint: bool
) -> None:
    pre, posts = harness.reference(scenario, checkpoint=checkpoint)
    for n in range(MAX_N):
        if not harness.run(
            scenario, pre, posts, kind=kind, error=error, persistent=persistent, n=n,
            checkpoint=checkpoint,
        ):  # fmt: skip
            return
    pytest.fail(f"{scenario.name}: still failing after {MAX_N} {kind} faults")


@pytest.mark.parametrize(("kind", "error", "persistent"), FAULTS)
def test_close_under_io_faults(harness: Harness, kind: str, error: str, persistent: bool) -> None:
    """``close`` checkpoints the WAL: a fault there raises at most StorageError, loses nothing."""
    # run_due.all_kinds leaves a WAL with several commits
    scenario = next(s for s in SCENARIOS if s.name == "run_due.all_kinds")
    for n in range(MAX_N):
        harness.vfs.reset()
        jobs, _, path = harness.prepare(scenario, checkpoint=False)
        scenario.op(jobs)
        before = live_snapshot(jobs)
        fault = harness.vfs.fail_after(n, kind=kind, error=error, persistent=persistent)
        try:
            jobs.close()
        except StorageError:
            pass
        except BaseException as exc:
            harness.vfs.clear_faults()
            raise AssertionError(
                f"close with a {kind}/{error} fault at I/O call {n}: raised "
                f"{type(exc).__module__}.{type(exc).__name__} instead of StorageError: {exc}"
            ) from exc
        harness.vfs.clear_faults()
        assert file_snapshot(path) == before
        if not fault.fired:
            return
    pytest.fail(f"close still failing after {MAX_N} faults")


@pytest.mark.parametrize(("kind", "error", "persistent"), FAULTS)
def test_create_under_io_faults(harness: Harness, kind: str, error: str, persistent: bool) -> None:
    """Creating a database (WAL switch, schema migration) under faults: StorageError at worst,
    and the next open finds a usable, current database."""
    for n in range(MAX_N):
        harness.vfs.reset()
        path = harness.path()
        fault = harness.vfs.fail_after(n, kind=kind, error=error, persistent=persistent)
        created = None
        try:
            created = open_jobs(path, harness.vfs, checkpoint=False)
        except StorageError:
            pass
        except BaseException as exc:
            harness.vfs.clear_faults()
            raise AssertionError(
                f"creating a database with a {kind}/{error} fault at I/O call {n}: raised "
                f"{type(exc).__module__}.{type(exc).__name__} instead of StorageError: {exc}"
            ) from exc
        harness.vfs.clear_faults()
        if created is not None:
            created.close()  # (close under faults has its own sweep)
        with open_jobs(path, harness.vfs, checkpoint=False) as jobs:
            assert jobs.engine.store.integrity_check() == ["ok"]
            jobs.continuous("c").start("u1", Runs())
        assert file_snapshot(path)["instances"][0][0] == "continuous:c:u1"
        if not fault.fired:
            return
    pytest.fail(f"creating a database still failing after {MAX_N} faults")


@pytest.mark.parametrize("kind", ["truncate", "sync", "write"])
def test_faults_after_the_commit_point_are_reached(harness: Harness, kind: str) -> None:
    """The checkpoint variant does reach xTruncate and the db file's writes/syncs, after the
    commit point: the call returns and its step is durable (so the sweep above is not vacuous).
    """
    scenario = SCENARIOS[0]
    jobs, _, path = harness.prepare(scenario, checkpoint=True)
    fault = harness.vfs.fail_after(0, kind=kind, file="db")
    try:
        scenario.op(jobs)
    finally:
        harness.vfs.clear_faults()
    assert fault.fired
    assert jobs.continuous("c").status("u1").run_count == 1
    jobs.close()
    assert file_snapshot(path)["instances"][0][0] == "continuous:c:u1"


# -- shrunk examples the sweep found, kept as plain tests ---------------------------------------


def test_failed_commit_of_a_start_whose_first_run_terminates_is_reported(harness: Harness) -> None:
    """A step that creates and purges its instance at once writes only history records.

    When its commit fails, the call must raise StorageError; it returned normally (the commit
    probe found no row and took that for success), and the records were lost.
    """
    path = harness.path()
    with open_jobs(path, harness.vfs, checkpoint=False) as jobs:
        harness.vfs.fail_after(0, kind="write")  # the first WAL write of the commit
        try:
            jobs.continuous("stop").start("u1", Runs())
        except StorageError:
            assert jobs.engine.store.history("continuous:stop:u1") == []
        else:
            events = [r.event for r in jobs.engine.store.history("continuous:stop:u1")]
            assert events == ["job.started", "job.executed", "job.terminated"]
        finally:
            harness.vfs.clear_faults()


def test_close_reports_a_failed_checkpoint_as_storage_error(harness: Harness) -> None:
    """``close`` checkpoints the WAL; a fault there leaked a raw ``apsw.IOError``."""
    path = harness.path()
    jobs = open_jobs(path, harness.vfs, checkpoint=False)
    jobs.continuous("c").start("u1", Runs())
    harness.vfs.fail_after(0, kind="sync")
    try:
        jobs.close()
    except StorageError:
        pass
    finally:
        harness.vfs.clear_faults()
    assert file_snapshot(path)["instances"][0][0] == "continuous:c:u1"  # nothing lost
