"""Inside real applications: one Jobs shared by threads, safe across fork, asyncio, bulk calls.

Handlers log "enter"/"exit" with the instance id to a file (append-only, one line each, so the
lines of several processes interleave whole); ``assert_no_overlap`` checks that no two handlers
of one instance were ever inside at once.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import attrs
import pytest
from waiting import wait_for

from durajobs import Debounce, FakeClock, Jobs, Task
from durajobs.aio import AsyncJobs
from durajobs.client import SendResult
from durajobs.errors import DuplicateEventError, ExecutionError, ValidationError

pytestmark = pytest.mark.both_stores  # [sqlite] and [postgres]

LOG = "DURAJOBS_TEST_LOG"


@attrs.define
class Order:
    events: list[int] = attrs.Factory(list)


@attrs.define
class Event:
    n: int
    pause: float = 0.0


def _log(line: str) -> None:
    path = os.environ.get(LOG)
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)


def on_event(event: Event, ctx: Any) -> None:
    _log(f"enter {ctx.instance_id} {os.getpid()}")
    if event.n < 0:
        _log(f"exit {ctx.instance_id} {os.getpid()}")
        raise ValueError(f"refused event {event.n}")
    if event.pause:
        time.sleep(event.pause)  # a handler doing I/O (inside: no wait on another process)
    state = ctx.state or Order()
    ctx.state = Order([*state.events, event.n])
    _log(f"exit {ctx.instance_id} {os.getpid()}")


def reducer(ctx: Any) -> list[int]:
    if ctx.event.n < 0:
        raise ValueError(f"refused event {ctx.event.n}")
    return [*(ctx.state or []), ctx.event.n]


def flush(ctx: Any) -> None:
    _log(f"flush {ctx.instance_id} {ctx.state}")
    gate = os.environ.get("DURAJOBS_TEST_GATE")
    if gate:  # hold the flush until the test opens the gate (a file appears)
        deadline = time.monotonic() + 30
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.005)


REGISTRY = {
    "orders": Task(state=Order, event=Event, on_event=on_event, execute=lambda ctx: None),
    "batch": Debounce(event=Event, state=list[int], on_event=reducer, execute=flush,
                      flush_after="1h", max_events=1000),
}  # fmt: skip


@pytest.fixture
def log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "handlers.log"
    path.touch()
    monkeypatch.setenv(LOG, str(path))
    return path


@pytest.fixture
def jobs(tmp_path: Path) -> Iterator[Jobs]:
    with Jobs(tmp_path / "jobs.db", REGISTRY) as opened:
        yield opened


def assert_no_overlap(log: Path) -> int:
    """No two handlers of one instance inside at once; returns how many handlers ran."""
    inside: dict[str, int] = {}
    ran = 0
    for line in log.read_text().splitlines():
        what, instance_id, *_ = line.split()
        if what == "enter":
            inside[instance_id] = inside.get(instance_id, 0) + 1
            assert inside[instance_id] == 1, f"two handlers of {instance_id} at once"
            ran += 1
        elif what == "exit":
            inside[instance_id] -= 1
    return ran


# -- threads ----------------------------------------------------------------------------------


def test_threads_share_one_jobs(jobs: Jobs, log: Path) -> None:
    errors: list[BaseException] = []
    per_thread = 25

    def work(thread: int) -> None:
        try:
            client = jobs.task("orders")
            for i in range(per_thread):
                client.send("shared", Event(thread * 1000 + i, pause=0.0005))
                client.send(f"own-{thread}", Event(i))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert assert_no_overlap(log) == 8 * per_thread * 2
    shared = jobs.task("orders").get_state("shared")
    assert shared is not None
    assert sorted(shared.events) == sorted(
        t * 1000 + i for t in range(8) for i in range(per_thread)
    )
    for thread in range(8):  # each thread's own order, applied once each, in order
        assert jobs.task("orders").get_state(f"own-{thread}") == Order(list(range(per_thread)))
    assert jobs.task("orders").status("shared").event_count == 8 * per_thread


def test_close_from_the_owner_closes_every_threads_connection(tmp_path: Path) -> None:
    jobs = Jobs(tmp_path / "jobs.db", REGISTRY)
    inside, done = threading.Barrier(5), threading.Event()

    def work() -> None:  # a pool thread: alive while the owner closes
        jobs.task("orders").status("x")
        inside.wait()
        done.wait(30)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    inside.wait()
    engines = list(jobs._engines._values)
    assert len(engines) == 5  # the owner's and one per live thread
    jobs.close()
    done.set()
    for thread in threads:
        thread.join()
    from durajobs.stores.sqlite.store import SqliteStore

    for engine in engines:  # every thread's connection is closed
        if isinstance(engine.store, SqliteStore):  # (a PostgreSQL store would reconnect)
            with pytest.raises(apsw.ConnectionClosedError):
                engine.store._conn.execute("SELECT 1")
    with pytest.raises(Exception, match="closed"):
        jobs.task("orders").status("x")


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def _one_call_per_thread(jobs: Jobs, count: int) -> None:
    """``count`` threads one after another (a server's thread per request), each making a
    call that opens its connection and claim handle, then ending."""
    errors: list[BaseException] = []

    def request(n: int) -> None:
        try:
            jobs.task("orders").send(f"r-{n}", Event(n))
        except BaseException as exc:
            errors.append(exc)

    for n in range(count):
        thread = threading.Thread(target=request, args=(n,))
        thread.start()
        thread.join()
    assert errors == []


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd (Linux)")
def test_an_ended_threads_connections_close_with_it(jobs: Jobs) -> None:
    """The regression: every thread's engine stayed open until close(); on SQLite each ended
    thread leaked 3 descriptors (on PostgreSQL its sessions' sockets)."""
    jobs.task("orders").send("warm", Event(0))  # the owner's handles are open
    before = _open_descriptors()
    _one_call_per_thread(jobs, 120)
    assert _open_descriptors() - before <= 2  # not 3 x 120
    assert len(jobs._engines._values) == 1  # the owner's
    assert jobs.task("orders").status("r-119").event_count == 1  # the owner's still works


def test_an_ended_threads_server_sessions_end_with_it(pg_server: Any, pg_url: str) -> None:
    """The regression: 120 one-at-a-time threads kept 240 sessions open (at
    max_connections=200: 'FATAL: sorry, too many clients already')."""
    name = pg_url.rsplit("/", 1)[1]

    def sessions() -> int:
        query = f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{name}'"
        return int(pg_server.admin_query(query)[0][0])

    with Jobs(pg_url, REGISTRY) as jobs:
        jobs.task("orders").send("warm", Event(0))
        before = sessions()
        _one_call_per_thread(jobs, 120)
        wait_for(lambda: sessions() <= before, timeout=10, what=f"sessions back to {before}")
        assert jobs.task("orders").status("r-119").event_count == 1


# -- fork -------------------------------------------------------------------------------------


def _fork(body: Callable[[], None]) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            body()
        except BaseException as exc:
            sys.stderr.write(f"child failed: {type(exc).__name__}: {exc}\n")
            code = 1
        os._exit(code)
    return pid


def _exit_code(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork in a multi-threaded pytest
def test_parent_and_child_exclude_each_other_after_fork(jobs: Jobs, log: Path) -> None:
    """The regression: handlers of one instance overlapped in parent and child after fork,
    and the child got 'the instance changed under a step that held its claim'."""
    jobs.task("orders").send("o-1", Event(0))  # the parent's connection and claim handle exist
    pids = [_fork(lambda n=n: jobs.task("orders").send("o-1", Event(n, 0.05))) for n in (1, 2)]
    jobs.task("orders").send("o-1", Event(3, pause=0.05))
    assert [_exit_code(pid) for pid in pids] == [0, 0]
    assert assert_no_overlap(log) == 4
    state = jobs.task("orders").get_state("o-1")
    assert state is not None
    assert sorted(state.events) == [0, 1, 2, 3]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_child_that_never_uses_it_leaves_the_parent_intact(jobs: Jobs, tmp_path: Path) -> None:
    token = jobs.engine.locks.try_acquire("task:orders:held")
    assert token is not None
    assert _exit_code(_fork(lambda: None)) == 0
    with Jobs(tmp_path / "jobs.db", REGISTRY) as other:
        assert other.engine.locks.try_acquire("task:orders:held") is None  # still ours
    jobs.engine.locks.release(token)
    assert jobs.task("orders").send("x", Event(1)).created  # the connection still works


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_fork_never_closes_the_parents_thread_connections(jobs: Jobs) -> None:
    """A forked child frees its copies of the parent threads' data (their engines' holders):
    the holders must leave the parent's connections alone in the child (abandoned, never
    closed: closing a copied SQLite connection could checkpoint the parent's WAL)."""
    from durajobs.jobs import _ABANDONED
    from durajobs.stores.sqlite.store import SqliteStore

    ready, resume = threading.Barrier(2), threading.Event()
    engines: list[Any] = []

    def pool_thread() -> None:  # alive across the fork, its engine open
        jobs.task("orders").send("p", Event(1))
        engines.append(jobs.engine)
        ready.wait()
        resume.wait(30)
        jobs.task("orders").send("p", Event(2))

    thread = threading.Thread(target=pool_thread)
    thread.start()
    ready.wait()

    def child() -> None:
        assert any(engine is engines[0] for engine in _ABANDONED)
        store = engines[0].store
        if isinstance(store, SqliteStore):
            assert not store._conn.in_transaction  # raises ConnectionClosedError if closed
        jobs.task("orders").send("c", Event(3))

    assert _exit_code(_fork(child)) == 0
    resume.set()
    thread.join()
    assert jobs.task("orders").get_state("p") == Order([1, 2])
    assert jobs.task("orders").get_state("c") == Order([3])


def _pool_send(n: int) -> int:
    jobs = _POOL_JOBS[0]
    jobs.task("orders").send("pooled", Event(n, pause=0.002))
    return os.getpid()


_POOL_JOBS: list[Jobs] = []


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_multiprocessing_with_fork(jobs: Jobs, log: Path) -> None:
    _POOL_JOBS[:] = [jobs]
    jobs.task("orders").send("pooled", Event(-0 + 1000))
    context = multiprocessing.get_context("fork")
    with context.Pool(4) as pool:
        pids = set(pool.map(_pool_send, range(40)))
    assert len(pids) > 1
    assert assert_no_overlap(log) == 41
    state = jobs.task("orders").get_state("pooled")
    assert state is not None
    assert sorted(state.events) == [*range(40), 1000]


# -- asyncio ----------------------------------------------------------------------------------


def test_asyncio_gather_and_the_loop_stays_responsive(jobs: Jobs, log: Path) -> None:
    ajobs = AsyncJobs(jobs)
    released = threading.Event()

    def slow(event: Event, ctx: Any) -> None:  # a 1 s handler that needs the loop to go on
        assert released.wait(5), "the event loop was blocked while the handler ran"
        ctx.state = Order([event.n])

    slow_jobs = Jobs(
        jobs.path, {"slow": Task(state=Order, event=Event, on_event=slow, execute=lambda c: None)}
    )

    async def main() -> None:
        results = await asyncio.gather(
            *(ajobs.task("orders").send(f"a-{i % 5}", Event(i)) for i in range(40))
        )
        assert [r.instance_id for r in results] == [f"task:orders:a-{i % 5}" for i in range(40)]
        pending = asyncio.ensure_future(AsyncJobs(slow_jobs).task("slow").send("s", Event(7)))
        await asyncio.sleep(0.05)  # the loop runs while the handler waits in the executor
        released.set()
        result = await pending
        assert result.created
        assert await AsyncJobs(slow_jobs).task("slow").get_state("s") == Order([7])

    asyncio.run(main())
    slow_jobs.close()
    assert assert_no_overlap(log) == 40
    total = sum(len(jobs.task("orders").get_state(f"a-{k}").events) for k in range(5))  # type: ignore[union-attr]
    assert total == 40


# -- bulk calls -------------------------------------------------------------------------------


def test_send_many_results_and_order(jobs: Jobs, log: Path) -> None:
    items = [("a", Event(1)), ("b", Event(2)), ("a", Event(3), "k3"), ("c", Event(4))]
    results = jobs.task("orders").send_many(items)
    assert [(r.instance_id, r.created) for r in results] == [
        ("task:orders:a", True), ("task:orders:b", True), ("task:orders:a", False),
        ("task:orders:c", True),
    ]  # fmt: skip
    assert jobs.task("orders").get_state("a") == Order([1, 3])
    assert jobs.task("orders").status("a").event_count == 2
    with pytest.raises(DuplicateEventError, match="item 0"):
        jobs.task("orders").send_many([("a", Event(5), "k3")])


@pytest.mark.parametrize("fault", ["handler", "duplicate key", "validation", "key repeated"])
def test_send_many_is_all_or_nothing(jobs: Jobs, fault: str) -> None:
    jobs.task("orders").send("a", Event(0), key="taken")
    bad: tuple[Any, ...] = {
        "handler": ("b", Event(-1)),
        "duplicate key": ("a", Event(9), "taken"),
        "validation": ("b", "not an event"),
        "key repeated": ("c", Event(9), "k1"),
    }[fault]
    items = [("a", Event(1)), ("c", Event(2), "k1"), bad, ("d", Event(3))]
    error = {"handler": ExecutionError, "duplicate key": DuplicateEventError,
             "validation": ValidationError, "key repeated": DuplicateEventError}[fault]  # fmt: skip
    with pytest.raises(error, match="item 2"):
        jobs.task("orders").send_many(items)
    assert jobs.task("orders").get_state("a") == Order([0])
    for user_id in ("b", "c", "d"):
        assert jobs.task("orders").status(user_id).status == "not_found"


def test_add_many_and_start_many(jobs: Jobs, tmp_path: Path) -> None:
    results = jobs.debounce("batch").add_many([("x", Event(1)), ("x", Event(2)), ("y", Event(3))])
    assert [r.event_count for r in results] == [1, 2, 1]
    assert jobs.debounce("batch").get_state("x") == [1, 2]
    with pytest.raises(ExecutionError, match=r"item 1 \(debounce:batch:x\)"):
        jobs.debounce("batch").add_many([("x", Event(4)), ("x", Event(-4))])
    assert jobs.debounce("batch").get_state("x") == [1, 2]


def test_two_bulk_calls_on_overlapping_ids_do_not_deadlock(tmp_path: Path, log: Path) -> None:
    with Jobs(tmp_path / "jobs.db", REGISTRY) as jobs:
        ids = [f"o-{i}" for i in range(20)]
        errors: list[BaseException] = []

        def bulk(order: list[str]) -> None:
            try:
                for _ in range(5):
                    jobs.task("orders").send_many([(i, Event(1, 0.0002)) for i in order])
            except BaseException as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=bulk, args=(ids,)),
            threading.Thread(target=bulk, args=(list(reversed(ids)),)),
            threading.Thread(target=bulk, args=(ids[5:] + ids[:5],)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in threads), "deadlock"
        assert errors == []
        assert assert_no_overlap(log) == 3 * 5 * 20
        for user_id in ids:
            assert jobs.task("orders").status(user_id).event_count == 15


def test_add_many_during_a_running_flush_queues(
    tmp_path: Path, log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = tmp_path / "gate"
    monkeypatch.setenv("DURAJOBS_TEST_GATE", str(gate))
    with Jobs(tmp_path / "jobs.db", REGISTRY) as jobs:
        jobs.debounce("batch").add("x", Event(1))
        flushing = threading.Thread(target=lambda: jobs.debounce("batch").flush("x"))
        flushing.start()
        wait_for(lambda: "flush" in log.read_text(), what="the flush to start")
        results = jobs.debounce("batch").add_many([("x", Event(2)), ("x", Event(3))])
        assert [(r.created, r.event_count) for r in results] == [(False, 1), (False, 2)]
        gate.touch()
        flushing.join()
        assert jobs.debounce("batch").status("x").event_count == 2  # the next batch
        jobs.debounce("batch").flush("x")
    flushed = [line for line in log.read_text().splitlines() if line.startswith("flush")]
    assert flushed == ["flush debounce:batch:x [1]", "flush debounce:batch:x [2, 3]"]


def test_bulk_call_killed_mid_way_stores_nothing(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    marker = tmp_path / "in-handler"
    code = f"""
import os, sys, time
sys.path.insert(0, {str(Path(__file__).parent)!r})
import test_apps
from durajobs import Jobs, Task
def on_event(event, ctx):
    if event.n == 50:
        open({str(marker)!r}, "w").close()
        time.sleep(60)  # killed here, items 0..49 stepped, nothing committed
    ctx.state = test_apps.Order([event.n])
jobs = Jobs({str(db)!r}, {{"orders": Task(state=test_apps.Order, event=test_apps.Event,
            on_event=on_event, execute=lambda c: None)}})
jobs.task("orders").send_many([(f"o-{{i}}", test_apps.Event(i)) for i in range(100)])
"""
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        wait_for(marker.exists, what="the handler of item 50")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    with Jobs(db, REGISTRY) as jobs:
        assert all(jobs.task("orders").status(f"o-{i}").status == "not_found" for i in range(100))
        jobs.task("orders").send_many([(f"o-{i}", Event(i)) for i in range(3)])  # claims free
        assert jobs.task("orders").get_state("o-2") == Order([2])


def test_start_many(tmp_path: Path) -> None:
    from durajobs import Continuous, every

    calls: list[str] = []

    def run(ctx: Any) -> None:
        calls.append(ctx.id)

    registry = {"c": Continuous(state=Order, schedule=every("1h"), execute=run)}
    with Jobs(tmp_path / "jobs.db", registry, clock=FakeClock(1_800_000_000)) as jobs:
        results = jobs.continuous("c").start_many([("a", Order()), ("b", Order()), ("a", Order())])
        assert [(r.instance_id, r.created) for r in results] == [
            ("continuous:c:a", True), ("continuous:c:b", True), ("continuous:c:a", False),
        ]  # fmt: skip
        assert calls == ["a", "b"]  # start_immediately: the first runs, in the call
        with pytest.raises(ValidationError, match="item 1"):
            jobs.continuous("c").start_many([("d", Order()), ("e", "no")])  # type: ignore[list-item]
        assert jobs.continuous("c").status("d").status == "not_found"


def test_a_handler_calling_into_its_own_bulk_call_fails_at_once(tmp_path: Path) -> None:
    holder: dict[str, Jobs] = {}

    def on_event(event: Event, ctx: Any) -> None:
        if ctx.id == "a":
            holder["jobs"].task("t").status("b")  # reads are fine
            holder["jobs"].task("t").send("b", Event(9))  # b is held by this very batch

    registry = {"t": Task(state=Order, event=Event, on_event=on_event, execute=lambda c: None)}
    with Jobs(tmp_path / "jobs.db", registry, wait_timeout=30) as jobs:
        holder["jobs"] = jobs
        started = time.monotonic()
        with pytest.raises(ExecutionError, match="bulk call") as raised:
            jobs.task("t").send_many([("a", Event(1)), ("b", Event(2))])
        assert time.monotonic() - started < 5  # not wait_timeout
        assert "item 0" in str(raised.value)
        assert jobs.task("t").status("b").status == "not_found"


def test_a_bulk_call_past_the_cap_is_refused_before_anything_runs(jobs: Jobs, log: Path) -> None:
    """The regression: a bulk call held one claim per distinct id with no cap (20,000 items
    took 19 s on PostgreSQL, quadratic, and could fill the server's lock table)."""
    from durajobs.engine import BULK_MAX_INSTANCES

    items = [(f"o-{i}", Event(i)) for i in range(BULK_MAX_INSTANCES + 1)]
    with pytest.raises(ValidationError, match=r"at most 2,000 distinct .* 2,001 .* split"):
        jobs.task("orders").send_many(items)
    with pytest.raises(ValidationError, match="at most 2,000"):
        jobs.debounce("batch").add_many(items)
    assert log.read_text() == ""  # not one handler ran
    assert jobs.task("orders").status("o-0").status == "not_found"
    # items for one instance count once: many items on few instances are fine
    results = jobs.task("orders").send_many([(f"o-{i % 3}", Event(i)) for i in range(2_500)])
    assert len(results) == 2_500
    assert len(jobs.task("orders").send_many(items[:-1])) == BULK_MAX_INSTANCES  # at the cap


def test_bulk_calls_skip_duplicates_on_request(jobs: Jobs, log: Path) -> None:
    """The regression: a rerun whose batch mixed stored and new keys could only fail whole
    (DuplicateEventError), so a recipe that suppressed it dropped the new rows."""
    orders = jobs.task("orders")
    orders.send("a", Event(0), key="k0")
    items = [("a", Event(1), "k0"), ("b", Event(2), "k2"), ("b", Event(3), "k2"), ("c", Event(4))]
    results = orders.send_many(items, on_duplicate="skip")
    assert [r.skipped for r in results] == [True, False, True, False]
    assert results[0] == SendResult("task:orders:a", False, None, skipped=True)
    assert (results[1].created, results[3].created) == (True, True)
    assert orders.get_state("a") == Order([0])  # the skipped item's on_event never ran
    assert orders.get_state("b") == Order([2])
    assert orders.get_state("c") == Order([4])
    assert assert_no_overlap(log) == 3  # a's first send, b's, c's
    with pytest.raises(DuplicateEventError, match="item 0"):  # the default still raises
        orders.send_many(items)
    with pytest.raises(ValueError, match="on_duplicate must be 'raise' or 'skip'"):
        orders.send_many(items, on_duplicate="ignore")  # type: ignore[arg-type]

    batch = jobs.debounce("batch")
    batch.add("x", Event(1), key="e1")
    added = batch.add_many(
        [("x", Event(1), "e1"), ("x", Event(2), "e2"), ("y", Event(3), "e1")], on_duplicate="skip"
    )
    assert [(r.skipped, r.event_count) for r in added] == [(True, 0), (False, 2), (False, 1)]
    assert batch.get_state("x") == [1, 2]

    async def main() -> None:
        ajobs = AsyncJobs(jobs)
        again = await ajobs.task("orders").send_many(items, on_duplicate="skip")
        assert [r.skipped for r in again] == [True, True, True, False]
        more = await ajobs.debounce("batch").add_many([("x", Event(2), "e2")], on_duplicate="skip")
        assert more[0].skipped

    asyncio.run(main())
    assert orders.get_state("c") == Order([4, 4])


def test_add_many_skips_a_key_taken_while_it_runs(tmp_path: Path) -> None:
    """An ``add`` made while ``add_many`` holds the instance queues its event (with its key)
    at once; if that key is one of the batch's, the batch's commit is refused: with
    on_duplicate="skip" the batch is stepped again without that item, nothing is lost."""
    late: list[bool] = []
    holder: dict[str, Jobs] = {}

    def fold(ctx: Any) -> list[int]:
        if ctx.event.n == 2 and not late:  # its key was checked: free until now
            late.append(True)  # another request adds the same keyed event meanwhile
            other = threading.Thread(
                target=lambda: holder["jobs"].debounce("racy").add("x", Event(99), key="late")
            )
            other.start()
            other.join()
        return [*(ctx.state or []), ctx.event.n]

    racy = Debounce(event=Event, state=list[int], on_event=fold, execute=lambda ctx: None,
                    flush_after="1h")  # fmt: skip
    with Jobs(tmp_path / "jobs.db", {"racy": racy}) as jobs:
        holder["jobs"] = jobs
        results = jobs.debounce("racy").add_many(
            [("x", Event(1), "first"), ("x", Event(2), "late")], on_duplicate="skip"
        )
        assert late == [True]
        assert [r.skipped for r in results] == [False, True]
        # both kept: the other request's event (folded first: queued before the batch's
        # second pass) and the batch's
        assert jobs.debounce("racy").get_state("x") == [99, 1]
        assert jobs.debounce("racy").status("x").event_count == 2
