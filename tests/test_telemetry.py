"""Telemetry: per-instance history records, the bounded history, the ``on_record`` hook and the
HTTP batch tracker (against a real HTTP server on loopback), DESIGN.md item 12.

History is read with ``jobs.engine.store.history(instance_id)``. The collector runs in a thread
of the test process; the library itself stays thread-free.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import attrs
import pytest
from waiting import wait_for

from durajobs import (
    Backoff,
    Continuous,
    Debounce,
    FakeClock,
    Jobs,
    Retry,
    Task,
    Tracker,
    every,
)
from durajobs.stores.sqlite.store import SqliteStore

pytestmark = pytest.mark.both_stores  # [sqlite] and [postgres]

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CONTINUOUS = "continuous:beat:c1"
DEBOUNCE = "debounce:batch:d1"
TASK = "task:flow:t1"


@attrs.define
class Counter:
    n: int = 0


@attrs.frozen
class Ping:
    text: str


class Switch:
    """Makes handlers fail while on."""

    def __init__(self) -> None:
        self.failing = 0

    def check(self, where: str) -> None:
        if self.failing:
            self.failing -= 1
            raise RuntimeError(f"{where} failed")


def registry(switch: Switch) -> dict[str, Any]:
    def beat(ctx: Any) -> None:
        switch.check("beat")
        ctx.state = Counter(ctx.state.n + 1)

    def flush(ctx: Any) -> None:
        switch.check("flush")

    def on_event(event: Ping, ctx: Any) -> None:
        ctx.state = Counter((ctx.state.n if ctx.state else 0) + 1)
        if event.text == "later":
            ctx.schedule("10 minutes")
        elif event.text == "stop":
            ctx.terminate("stopped")

    def execute(ctx: Any) -> None:
        switch.check("execute")

    return {
        "beat": Continuous(
            state=Counter, schedule=every("1 minute"), execute=beat,
            retry=Retry(max_attempts=2, delay=Backoff.fixed("10s")),
        ),
        "batch": Debounce(event=Ping, execute=flush, flush_after="5s"),
        "flow": Task(state=Counter, event=Ping, on_event=on_event, execute=execute),
    }  # fmt: skip


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def switch() -> Switch:
    return Switch()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    # urllib honours *_proxy variables; the collector is on loopback and must be reached directly.
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def history(jobs: Jobs, instance_id: str) -> list[Any]:
    return jobs.engine.store.history(instance_id, limit=10_000)


def by_event(rows: list[Any], event: str) -> list[Any]:
    return [r for r in rows if r.event == event]


# -- history records --------------------------------------------------------------------------


def test_continuous_records_started_executed_failed_exhausted_terminated(
    db: Path, clock: FakeClock, switch: Switch
) -> None:
    with Jobs(db, registry(switch), clock=clock) as jobs:
        client = jobs.continuous("beat")
        client.start("c1", Counter())
        rows = history(jobs, CONTINUOUS)
        assert [r.event for r in rows] == ["job.started", "job.executed"]
        started, executed = rows
        assert started.attempt == 1
        assert started.instance_id == CONTINUOUS
        assert executed.attempt == 1
        assert executed.duration_ms is not None
        assert executed.duration_ms >= 0
        assert executed.error is None
        assert executed.at == T0.timestamp()
        assert executed.step >= 1

        switch.failing = 2
        clock.advance(60)
        assert jobs.run_due() == 1
        failed = history(jobs, CONTINUOUS)[-1]
        assert failed.event == "job.failed"
        assert failed.attempt == 1
        assert failed.error == "RuntimeError: beat failed"
        assert failed.duration_ms is not None
        assert failed.at == (T0 + timedelta(seconds=60)).timestamp()

        clock.advance(10)
        assert jobs.run_due() == 1
        rows = history(jobs, CONTINUOUS)
        assert [r.event for r in rows][-3:] == [
            "job.failed",
            "job.retry_exhausted",
            "job.terminated",
        ]
        second_failure, exhausted, terminated = rows[-3:]
        assert second_failure.attempt == 2
        assert second_failure.error == "RuntimeError: beat failed"
        assert exhausted.attempt == 2
        assert exhausted.error == "RuntimeError: beat failed"
        assert terminated.attempt == 2
        assert terminated.error == "RuntimeError: beat failed"
        data = json.loads(terminated.data)
        assert data["reason"] == "retries exhausted"
        assert data["final_state"] == {"n": 1}  # the final state survives the purge
        assert client.status("c1").status == "not_found"
        # steps are numbered and increase
        step_numbers = [r.step for r in rows]
        assert step_numbers == sorted(step_numbers)


def test_debounce_records_started_and_flushed(db: Path, clock: FakeClock, switch: Switch) -> None:
    with Jobs(db, registry(switch), clock=clock) as jobs:
        client = jobs.debounce("batch")
        client.add("d1", Ping("a"))
        client.add("d1", Ping("b"))
        rows = history(jobs, DEBOUNCE)
        assert [r.event for r in rows] == ["debounce.started"]
        assert rows[0].attempt == 1
        clock.advance(5)
        jobs.run_due()
        rows = history(jobs, DEBOUNCE)
        assert [r.event for r in rows] == ["debounce.started", "debounce.flushed"]
        flushed = rows[-1]
        assert flushed.attempt == 1
        assert flushed.duration_ms is not None
        assert flushed.error is None
        data = json.loads(flushed.data)
        assert data["reason"] == "flush_after"
        assert data["event_count"] == 2
        assert data["final_state"] == {"text": "b"}


def test_debounce_failed_flush_records_the_attempt_and_error(
    db: Path, clock: FakeClock, switch: Switch
) -> None:
    with Jobs(db, registry(switch), clock=clock) as jobs:
        client = jobs.debounce("batch")
        client.add("d1", Ping("a"))
        switch.failing = 1
        client.flush("d1")
        failed = history(jobs, DEBOUNCE)[-2:]
        assert [r.event for r in failed] == ["job.failed", "job.parked"]
        assert failed[0].error == "RuntimeError: flush failed"
        assert failed[0].attempt == 1
        assert failed[0].duration_ms is not None


def test_debounce_clear_keeps_the_discarded_batch_in_history(
    db: Path, clock: FakeClock, switch: Switch
) -> None:
    with Jobs(db, registry(switch), clock=clock) as jobs:
        client = jobs.debounce("batch")
        client.add("d1", Ping("a"))
        client.clear("d1")
        last = history(jobs, DEBOUNCE)[-1]
        assert last.event == "debounce.cleared"
        assert json.loads(last.data)["final_state"] == {"text": "a"}


def test_task_records_started_scheduled_executed_terminated(
    db: Path, clock: FakeClock, switch: Switch
) -> None:
    with Jobs(db, registry(switch), clock=clock) as jobs:
        client = jobs.task("flow")
        client.send("t1", Ping("later"))
        rows = history(jobs, TASK)
        events = [r.event for r in rows]
        assert events[0] == "job.started"
        scheduled = by_event(rows, "task.scheduled")
        assert len(scheduled) == 1
        data = json.loads(scheduled[0].data)
        assert data["scheduled_at"] == (T0 + timedelta(minutes=10)).timestamp()

        client.send("t1", Ping("again"))  # the alarm does not change: no new task.scheduled
        assert len(by_event(history(jobs, TASK), "task.scheduled")) == 1

        clock.advance("10 minutes")
        assert jobs.run_due() == 1
        executed = by_event(history(jobs, TASK), "job.executed")
        assert len(executed) == 1
        assert executed[0].attempt == 1
        assert executed[0].duration_ms is not None
        assert executed[0].error is None

        client.send("t1", Ping("stop"))
        last = history(jobs, TASK)[-1]
        assert last.event == "job.terminated"
        assert json.loads(last.data)["reason"] == "stopped"
        assert json.loads(last.data)["final_state"] == {"n": 3}


def test_task_failed_execute_is_recorded(db: Path, clock: FakeClock, switch: Switch) -> None:
    with Jobs(db, registry(switch), clock=clock) as jobs:
        client = jobs.task("flow")
        client.send("t1", Ping("later"))
        switch.failing = 1
        clock.advance("10 minutes")
        jobs.run_due()
        failed = by_event(history(jobs, TASK), "job.failed")
        assert len(failed) == 1
        assert failed[0].error == "RuntimeError: execute failed"
        assert client.status("t1").status == "failed"  # parked: no retry


def test_client_terminate_records_reason_and_final_state(
    db: Path, clock: FakeClock, switch: Switch
) -> None:
    with Jobs(db, registry(switch), clock=clock) as jobs:
        jobs.continuous("beat").start("c1", Counter(41))
        jobs.continuous("beat").terminate("c1", reason="maintenance")
        last = history(jobs, CONTINUOUS)[-1]
        assert last.event == "job.terminated"
        data = json.loads(last.data)
        assert data["reason"] == "maintenance"
        assert data["final_state"] == {"n": 42}
        assert data["run_count"] == 1


def test_history_survives_reopening_and_purge(db: Path, clock: FakeClock, switch: Switch) -> None:
    with Jobs(db, registry(switch), clock=clock) as jobs:
        jobs.task("flow").send("t1", Ping("stop"))
    with Jobs(db, registry(switch), clock=clock) as jobs:
        events = [r.event for r in history(jobs, TASK)]
        assert events[0] == "job.started"
        assert events[-1] == "job.terminated"


# -- bounded history --------------------------------------------------------------------------


def test_history_is_bounded_per_instance(db: Path, clock: FakeClock, switch: Switch) -> None:
    # Interpretation: trimming may be amortized (the store trims every few dozen steps), so
    # the bound is history_limit plus one trimming period's records, never unbounded growth.
    limit = 5
    with Jobs(db, registry(switch), clock=clock, history_limit=limit) as jobs:
        jobs.continuous("beat").start("c1", Counter())
        jobs.continuous("beat").start("c2", Counter())
        sizes = []
        for _ in range(300):
            clock.advance(60)
            assert jobs.run_due() == 2
            sizes.append(len(history(jobs, CONTINUOUS)))
        assert max(sizes) <= limit + 32
        assert max(sizes[-100:]) <= limit + 32
        rows = history(jobs, CONTINUOUS)
        assert rows[-1].event == "job.executed"
        assert json.loads(rows[-1].data)["run_count"] == 301  # the newest are kept
        assert len(history(jobs, "continuous:beat:c2")) <= limit + 32
        assert jobs.continuous("beat").get_state("c1") == Counter(301)


# -- on_record hook ---------------------------------------------------------------------------


@pytest.mark.sqlite_only  # reads the file through Admin/the SQLite store
def test_on_record_receives_each_record_after_commit(
    db: Path, clock: FakeClock, switch: Switch
) -> None:
    received: list[dict[str, Any]] = []
    visible: list[tuple[str, bool]] = []
    reader = None

    def hook(record: dict[str, Any]) -> None:
        received.append(record)
        # A second connection sees the step's row and history: the hook runs after COMMIT.
        assert reader is not None
        committed = [r.event for r in reader.history(record["instance_id"], limit=1000)]
        visible.append((record["event"], record["event"] in committed))

    with Jobs(db, registry(switch), clock=clock, on_record=hook) as jobs:
        reader = SqliteStore(db, readonly=True)
        try:
            jobs.continuous("beat").start("c1", Counter())
            jobs.debounce("batch").add("d1", Ping("x"))
            jobs.task("flow").send("t1", Ping("later"))
            clock.advance("10 minutes")
            jobs.run_due()
        finally:
            reader.close()
        stored = [
            (r.instance_id, r.event, r.attempt, r.error)
            for iid in (CONTINUOUS, DEBOUNCE, TASK)
            for r in history(jobs, iid)
        ]
    assert visible
    assert all(ok for _, ok in visible), visible
    got = sorted((r["instance_id"], r["event"], r["attempt"], r["error"]) for r in received)
    assert got == sorted(stored)  # the hook saw exactly what history holds
    first = received[0]
    assert first["instance_id"] == CONTINUOUS
    assert first["kind"] == "continuous"
    assert first["job"] == "beat"
    assert first["id"] == "c1"
    assert first["event"] == "job.started"
    assert isinstance(first["step"], int)
    assert datetime.fromisoformat(first["at"]) == T0
    assert {"duration_ms", "error", "data", "attempt"} <= set(first)


def test_on_record_hook_that_raises_never_fails_a_step(
    db: Path, clock: FakeClock, switch: Switch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = []

    def hook(record: dict[str, Any]) -> None:
        calls.append(record["event"])
        raise RuntimeError("hook is broken")

    with Jobs(db, registry(switch), clock=clock, on_record=hook) as jobs:
        result = jobs.continuous("beat").start("c1", Counter())
        assert result.created is True
        assert jobs.continuous("beat").get_state("c1") == Counter(1)
        jobs.debounce("batch").add("d1", Ping("x"))
        assert jobs.debounce("batch").flush("d1").flushed is True
        jobs.task("flow").send("t1", Ping("later"))
        clock.advance("10 minutes")
        assert jobs.run_due() == 2
        assert jobs.continuous("beat").status("c1").run_count == 2  # one catch-up run
        assert jobs.task("flow").status("t1").execute_count == 1
    assert "job.started" in calls
    assert "debounce.flushed" in calls
    assert len(calls) >= 8  # every record still reached the hook, one failure each


# -- HTTP tracker -----------------------------------------------------------------------------


class Collector:
    """A real HTTP server on 127.0.0.1 that records each POSTed batch; while ``held`` it is a
    slow collector that answers nothing until released (or after a minute)."""

    def __init__(self) -> None:
        self.batches: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.answered = 0
        self.go = threading.Event()
        self.go.set()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                collector.headers.append(dict(self.headers.items()))
                collector.batches.append(json.loads(body))
                collector.go.wait(timeout=60)
                collector.answered += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/ingest"

    @property
    def records(self) -> list[dict[str, Any]]:
        return [r for batch in self.batches for r in batch["records"]]

    def stop(self) -> None:
        self.go.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    yield server
    server.stop()


def closed_port() -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()  # nobody listens there now: connections are refused
    return port


def test_tracker_receives_the_records_on_close(
    db: Path, clock: FakeClock, switch: Switch, collector: Collector
) -> None:
    tracker = Tracker(collector.url, "staging", "sk_test_telemetry")
    with Jobs(db, registry(switch), clock=clock, tracker=tracker) as jobs:
        jobs.continuous("beat").start("c1", Counter())
        jobs.debounce("batch").add("d1", Ping("x"))
        jobs.task("flow").send("t1", Ping("later"))
        clock.advance("10 minutes")
        jobs.run_due()
        stored = [
            (r.instance_id, r.event)
            for iid in (CONTINUOUS, DEBOUNCE, TASK)
            for r in history(jobs, iid)
        ]
    # close() flushed the tracker
    assert collector.batches
    assert all(batch["env"] == "staging" for batch in collector.batches)
    assert collector.headers[0]["Authorization"] == "Bearer sk_test_telemetry"
    assert collector.headers[0]["Content-Type"] == "application/json"
    got = [(r["instance_id"], r["event"]) for r in collector.records]
    assert sorted(got) == sorted(stored)
    # in order per instance
    for iid in (CONTINUOUS, DEBOUNCE, TASK):
        assert [e for i, e in got if i == iid] == [e for i, e in stored if i == iid]
    first = collector.records[0]
    assert first["kind"] == "continuous"
    assert first["job"] == "beat"
    assert first["id"] == "c1"
    assert tracker.pending == 0
    assert tracker.sent == len(stored)


def test_tracker_flush_without_closing(
    db: Path, clock: FakeClock, switch: Switch, collector: Collector
) -> None:
    tracker = Tracker(collector.url, "test", "sk_test")
    with Jobs(db, registry(switch), clock=clock, tracker=tracker) as jobs:
        jobs.task("flow").send("t1", Ping("later"))
        assert tracker.flush() is True
        stored = [r.event for r in history(jobs, TASK)]
        assert [r["event"] for r in collector.records] == stored
        assert {"job.started", "task.scheduled"} <= set(stored)
        assert tracker.pending == 0


def test_tracker_sends_as_steps_commit_with_flush_interval_zero(
    db: Path, clock: FakeClock, switch: Switch, collector: Collector
) -> None:
    tracker = Tracker(collector.url, "test", "sk_test", flush_interval=0)
    with Jobs(db, registry(switch), clock=clock, tracker=tracker) as jobs:
        jobs.continuous("beat").start("c1", Counter())  # starts the request, never waits
        wait_for(lambda: tracker.add([]) or tracker.sent == 2, what="the start's records")
        assert [r["event"] for r in collector.records] == ["job.started", "job.executed"]
        clock.advance(60)
        jobs.run_due()
        wait_for(lambda: tracker.add([]) or tracker.sent == 3, what="the run's record")
        assert [r["event"] for r in collector.records][-1] == "job.executed"


def test_a_slow_collector_never_delays_a_step_nor_holds_its_claim(
    db: Path, clock: FakeClock, switch: Switch, collector: Collector
) -> None:
    collector.go.clear()  # receives the first batch and answers nothing until released
    tracker = Tracker(
        collector.url, "test", "sk_test", flush_interval=0, timeout=3600.0, max_buffer=10
    )
    with (
        Jobs(db, registry(switch), clock=clock, tracker=tracker) as jobs,
        Jobs(db, registry(switch), clock=clock, wait_timeout=0.5) as other,
    ):
        flow = jobs.task("flow")
        flow.send("t1", Ping("a"))  # its records go out in a request the collector holds
        wait_for(lambda: tracker.add([]) or collector.batches, what="the held request")
        for n in range(20):  # every step returns while that request is unanswered
            flow.send("t1", Ping(str(n)))
            # ... and holds no claim: another Jobs steps the instance at once
            other.task("flow").send("t1", Ping(f"other-{n}"))
            assert collector.answered == 0
        assert flow.get_state("t1") == Counter(41)
        # The queue holds ten records at most (the batch in flight included); the rest dropped.
        assert tracker.pending == 10
        # Twenty more records came (one per send through this Jobs), with room for ten less
        # the batch in flight.
        assert tracker.dropped == 20 - (10 - len(collector.records))
        assert tracker.sent == 0
        collector.go.set()
        assert tracker.flush() is True
    assert tracker.sent == 10
    assert collector.answered == 2


def test_tracker_that_is_down_never_fails_a_step(
    db: Path, clock: FakeClock, switch: Switch, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/ingest"
    tracker = Tracker(url, "test", "sk_test", flush_interval=0, timeout=1.0)
    with Jobs(db, registry(switch), clock=clock, tracker=tracker) as jobs:
        assert jobs.continuous("beat").start("c1", Counter()).created is True
        jobs.debounce("batch").add("d1", Ping("x"))
        assert jobs.debounce("batch").flush("d1").flushed is True
        jobs.task("flow").send("t1", Ping("later"))
        clock.advance("10 minutes")
        assert jobs.run_due() == 2
        assert jobs.continuous("beat").get_state("c1") == Counter(2)  # one catch-up run
        assert jobs.task("flow").status("t1").execute_count == 1
        assert tracker.failures >= 1
        assert tracker.sent == 0
        assert tracker.pending > 0  # kept for a later attempt
        assert tracker.flush(force=True) is False  # still down: no exception
    # close() made a last attempt and did not raise


def test_tracker_and_hook_together(
    db: Path, clock: FakeClock, switch: Switch, collector: Collector
) -> None:
    seen: list[str] = []
    tracker = Tracker(collector.url, "test", "sk_test")
    with Jobs(
        db,
        registry(switch),
        clock=clock,
        tracker=tracker,
        on_record=lambda r: seen.append(r["event"]),
    ) as jobs:
        jobs.task("flow").send("t1", Ping("x"))
    assert seen == [r["event"] for r in collector.records]
    assert seen[0] == "job.started"
