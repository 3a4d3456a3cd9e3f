"""Flow control with real processes (issue 21's "done when"): daemons and application
processes on one SQLite file or one PostgreSQL database, handlers that record their start and
end times, kill -9, and the daemon's idle context switches. Every wait polls an observable
condition (``wait_for``); the only ``time.sleep`` calls are measurement windows (the pause
window, the idle window), as in ``test_daemon.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_apps.app_defs import Count, Due
from daemon_apps.flow_app_defs import REGISTRY
from test_daemon import context_switches, family
from waiting import wait_for

from durajobs import Jobs
from durajobs.errors import InstanceBusyError

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux daemon")

TESTS = Path(__file__).parent
DAEMON = TESTS.parent / "durajobs_daemon.py"
RUNNER = TESTS / "daemon_apps" / "flow_runner.py"
APP = "daemon_apps.flow_app:jobs"


class Procs:
    """This test's Jobs on one database and the processes started against it."""

    def __init__(self, location: str, tmp_path: Path) -> None:
        self.out = tmp_path / "handlers.jsonl"
        self.tmp_path = tmp_path
        self.env = {
            **os.environ,
            "DAEMON_TEST_DB": location,
            "DAEMON_TEST_OUT": str(self.out),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
        }
        for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"):
            self.env.pop(key, None)
        os.environ["DAEMON_TEST_OUT"] = str(self.out)
        self.jobs = Jobs(location, REGISTRY)
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, runner: bool = False) -> subprocess.Popen[bytes]:
        """A daemon (``args``: its options), or a ``run_due`` loop (``runner``)."""
        command = [str(RUNNER)] if runner else [str(DAEMON), "--app", APP, *args]
        with open(self.tmp_path / f"proc-{len(self.procs)}.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, *command], env=self.env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if runner else subprocess.DEVNULL, stderr=log,
                start_new_session=True,
            )  # fmt: skip
        if runner:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"ready"
        self.procs.append(proc)
        return proc

    def records(self, kind: str, prefix: str = "") -> list[dict[str, Any]]:
        try:
            lines = self.out.read_text().splitlines()
        except FileNotFoundError:
            return []
        items = [json.loads(line) for line in lines]
        return [i for i in items if i["kind"] == kind and i["id"].startswith(prefix)]

    def due_now(self, job: str, ids: list[str], lead: float = 0.0) -> None:
        """``ids`` of the Task ``job``, all due at one moment ``lead`` seconds from now."""
        at = time.time() + lead
        self.jobs.task(job).send_many([(i, Due(at)) for i in ids])

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        self.jobs.close()


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[Procs]:
    made = Procs(str(tmp_path / "jobs.db"), tmp_path)
    yield made
    made.close()


@pytest.fixture
def postgres(pg_url: str, tmp_path: Path) -> Iterator[Procs]:
    made = Procs(pg_url, tmp_path)
    yield made
    made.close()


def most_at_once(procs: Procs, prefix: str) -> int:
    """The most handlers of ``prefix`` ids inside their enter/exit at one time."""
    events = [(r["t"], 1) for r in procs.records("enter", prefix)]
    events += [(r["t"], -1) for r in procs.records("exit", prefix)]
    inside = most = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):  # an exit before an enter
        inside += delta
        most = max(most, inside)
    return most


def _check_concurrency(procs: Procs, count: int) -> None:
    ids = [f"c{i}" for i in range(count)]
    procs.due_now("limited", ids, lead=0.3)
    wait_for(lambda: len(procs.records("exit", "c")) >= count, timeout=60, what="every step")
    entered = sorted(r["id"] for r in procs.records("enter", "c"))
    assert entered == sorted(ids)  # each ran, once
    assert most_at_once(procs, "c") == 2  # never more than concurrency=2, and the limit used


def test_concurrency_across_two_processes_on_sqlite(sqlite: Procs) -> None:
    sqlite.start("--workers", "3")
    sqlite.start(runner=True)
    _check_concurrency(sqlite, 16)
    pids = {r["pid"] for r in sqlite.records("enter", "c")}
    assert len(pids) >= 2, "steps ran in more than one process"


def test_concurrency_across_three_daemons_on_postgres(postgres: Procs) -> None:
    for _ in range(3):
        postgres.start("--workers", "2")
    _check_concurrency(postgres, 16)
    pids = {r["pid"] for r in postgres.records("enter", "c")}
    assert len(pids) >= 2, "steps ran in more than one daemon's workers"


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_a_slot_holder_killed_frees_its_slot_at_once(
    store: str, request: pytest.FixtureRequest
) -> None:
    procs: Procs = request.getfixturevalue(store)
    impatient = procs.jobs.with_path(procs.jobs.location, wait_timeout=0.2)
    try:
        procs.due_now("limited", ["hang-1", "hang-2", "other"])
        # Two processes hang in both slots: run_due loops on SQLite (one daemon per file),
        # daemons with one worker on PostgreSQL (there run_due claims instances ahead in
        # groups, so one loop would keep the other's instance claimed while it hangs).
        args = {"runner": True} if store == "sqlite" else {}
        holder = procs.start("--workers", "1", **args)
        procs.start("--workers", "1", **args)
        wait_for(lambda: len(procs.records("enter", "hang-")) == 2, what="both slots taken")
        with pytest.raises(InstanceBusyError, match="all 2 slots"):
            impatient.task("limited").trigger("other")
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        killed_at = time.time()
        # trigger waits for a slot up to wait_timeout (0.2 s): the dead holder's is free
        assert impatient.task("limited").trigger("other").triggered
        (entered,) = procs.records("enter", "other")
        print(f"slot taken, handler entered {1000 * (entered['t'] - killed_at):.1f} ms after")
    finally:
        impatient.close()


def _check_rate(procs: Procs) -> None:
    ids = [f"r{i:03}" for i in range(100)]
    procs.due_now("rated", ids, lead=0.5)
    wait_for(lambda: len(procs.records("enter", "r")) >= 100, timeout=60, what="every step")
    starts = sorted(r["t"] for r in procs.records("enter", "r"))
    assert sorted(r["id"] for r in procs.records("enter", "r")) == ids
    spread = starts[-1] - starts[0]
    window = max(sum(1 for t in starts[i:] if t < start + 1.0) for i, start in enumerate(starts))
    print(f"100 starts at 20/s: spread {spread:.2f} s, at most {window} in a 1 s window")
    assert spread >= 3.5
    assert window <= 40


def test_rate_across_two_daemons_on_postgres(postgres: Procs) -> None:
    postgres.start("--workers", "2")
    postgres.start("--workers", "2")
    _check_rate(postgres)


def test_rate_across_a_daemon_and_a_process_on_sqlite(sqlite: Procs) -> None:
    sqlite.start("--workers", "2")
    sqlite.start(runner=True)
    _check_rate(sqlite)


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_one_worker_runs_the_higher_priority_first(
    store: str, request: pytest.FixtureRequest
) -> None:
    procs: Procs = request.getfixturevalue(store)
    procs.due_now("news", [f"n{i}" for i in range(10)])  # due first
    procs.due_now("billing", [f"b{i}" for i in range(10)])
    procs.start("--workers", "1")
    wait_for(lambda: len(procs.records("enter")) >= 20, what="every step")
    order = [r["job"] for r in sorted(procs.records("enter"), key=lambda r: r["t"])]
    assert order == ["billing"] * 10 + ["news"] * 10


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_pause_holds_alarm_steps_and_resume_catches_up(
    store: str, request: pytest.FixtureRequest
) -> None:
    procs: Procs = request.getfixturevalue(store)
    daemon = procs.start("--workers", "2")
    tick = procs.jobs.continuous("tick")
    tick.start("t1", Count())
    wait_for(lambda: len(procs.records("tick")) >= 2, what="the schedule runs")
    procs.jobs.pause("tick")
    paused_at = time.time()
    before = len(procs.records("tick"))
    window_end = time.monotonic() + 3.0
    calls = 0
    while time.monotonic() < window_end:  # client calls still succeed meanwhile
        procs.jobs.task("news").send(f"p{calls}", Due(time.time() + 3600))
        assert tick.status("t1").paused
        calls += 1
        time.sleep(0.05)
    assert calls > 10
    # at most one step was already running when pause returned
    assert len(procs.records("tick")) <= before + 1
    held = len(procs.records("tick"))
    procs.jobs.resume("tick")
    wait_for(lambda: len(procs.records("tick")) >= held + 3, what="runs after resume")
    after = procs.records("tick")[held:]
    # catch_up="one": one run for the ~15 ticks missed, then back on the 0.2 s grid
    assert after[0]["scheduled_for"] < paused_at + 1.0
    assert after[1]["scheduled_for"] > time.time() - 2.0
    assert after[1]["scheduled_for"] - after[0]["scheduled_for"] > 2.0
    assert daemon.poll() is None


def test_no_idle_wake_ups_from_paused_or_rate_limited_jobs(sqlite: Procs) -> None:
    sqlite.jobs.continuous("hourly").start("far", Count())  # rate-limited, an hour away
    sqlite.due_now("news", [f"p{i}" for i in range(5)])  # due now, but paused
    sqlite.jobs.pause("news")
    proc = sqlite.start("--workers", "1")
    wait_for(lambda: len(family(proc.pid)) == 2, what="the daemon and its worker")
    time.sleep(0.5)  # let it start up and settle (the measurement begins after)
    pids = family(proc.pid)
    before = context_switches(pids)
    time.sleep(3.0)  # the measurement window itself
    after = context_switches(pids)
    print(f"idle context switches over 3 s with a paused, due job: {after - before}")
    assert after - before <= 10
    assert sqlite.records("enter") == []


def test_a_daemon_sleeps_while_a_rate_holds_due_steps(sqlite: Procs) -> None:
    """rate="1/min" and three due steps: one runs, the other two wait for the budget; the
    daemon sleeps until the refill (a minute away) instead of polling."""
    sqlite.due_now("trickle", ["w1", "w2", "w3"])
    proc = sqlite.start("--workers", "1")
    wait_for(lambda: sqlite.records("enter"), what="the first step")
    time.sleep(0.5)  # let the held steps be reported and the daemon settle
    pids = family(proc.pid)
    before = context_switches(pids)
    time.sleep(3.0)  # the measurement window itself
    after = context_switches(pids)
    print(f"context switches over 3 s with two steps held by rate=1/min: {after - before}")
    assert after - before <= 10
    assert len(sqlite.records("enter")) == 1
