"""Daemons on PostgreSQL: several serve one database together (as if on several hosts).

Real daemons (``durajobs_daemon.py`` subprocesses) on a real server (the session's throwaway
cluster, ``tests/pgserver.py``). Handlers append JSON lines to a file (``daemon_apps``); the
test waits on those lines, never on a fixed sleep.
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
from daemon_apps.app_defs import REGISTRY, Count, Due
from waiting import wait_for

from durajobs import Jobs

TESTS = Path(__file__).parent
DAEMON = TESTS.parent / "durajobs_daemon.py"
APP = "daemon_apps.app:jobs"


class Cluster:
    """One PostgreSQL database, this test's Jobs on it, and daemons started against it."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        self.url = url
        self.out = tmp_path / "handlers.jsonl"
        self.tmp_path = tmp_path
        self.env = {
            **os.environ,
            "DAEMON_TEST_DB": url,
            "DAEMON_TEST_OUT": str(self.out),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
        }
        for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"):
            self.env.pop(key, None)
        os.environ["DAEMON_TEST_OUT"] = str(self.out)
        self.jobs = Jobs(url, REGISTRY)
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp_path / f"daemon-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, str(DAEMON), "--app", APP, *args],
            env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        self.procs.append(proc)
        return proc

    def log(self, index: int) -> str:
        return (self.tmp_path / f"daemon-{index}.log").read_text()

    def records(self, kind: str, instance: str | None = None) -> list[dict[str, Any]]:
        try:
            lines = self.out.read_text().splitlines()
        except FileNotFoundError:
            return []
        items = [json.loads(line) for line in lines]
        return [i for i in items if i["kind"] == kind and (instance is None or i["id"] == instance)]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        self.jobs.close()


@pytest.fixture
def cluster(pg_url: str, tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(pg_url, tmp_path)
    yield made
    made.close()


def _no_overlap(records: list[dict[str, Any]]) -> None:
    inside: dict[str, int] = {}
    for item in sorted(records, key=lambda r: (r["t"], r["kind"] == "enter")):
        delta = 1 if item["kind"] == "enter" else -1
        inside[item["id"]] = inside.get(item["id"], 0) + delta
        assert inside[item["id"]] <= 1, f"two handlers of {item['id']} at once"


def test_two_daemons_share_the_work_and_run_each_step_once(cluster: Cluster) -> None:
    first, second = cluster.start("--workers", "2"), cluster.start("--workers", "2")
    at = time.time() + 1.0
    ids = [f"slow-{i}" for i in range(24)]
    cluster.env["DAEMON_TEST_SLOW"] = "0.05"
    for user_id in ids:
        cluster.jobs.task("task").send(user_id, Due(at))
    wait_for(lambda: len(cluster.records("exit")) >= len(ids), what="every task executed")
    records = cluster.records("enter") + cluster.records("exit")
    _no_overlap(records)
    entered = [r["id"] for r in cluster.records("enter")]
    assert sorted(entered) == sorted(ids)  # each exactly once
    pids = {r["pid"] for r in cluster.records("enter")}
    assert len(pids) >= 2, "the work was spread over the daemons' workers"
    for proc in (first, second):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    for user_id in ids:
        assert cluster.jobs.task("task").status(user_id).execute_count == 1


def test_a_schedule_tick_fires_once_across_daemons(cluster: Cluster) -> None:
    procs = [cluster.start() for _ in range(3)]
    cluster.jobs.continuous("soon").start("tick-1", Count())
    wait_for(lambda: cluster.jobs.continuous("soon").status("tick-1").run_count >= 10,
             what="ten runs")  # fmt: skip
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    runs = [r["run_count"] for r in cluster.records("enter", "tick-1")]
    assert len(runs) == len(set(runs)), f"a tick ran twice: {runs}"
    _no_overlap(cluster.records("enter", "tick-1") + cluster.records("exit", "tick-1"))


def test_a_killed_daemons_step_is_taken_over_at_once(cluster: Cluster) -> None:
    """kill -9 a daemon whose worker is inside a handler: another daemon runs the step."""
    first = cluster.start()
    cluster.jobs.task("task").send("hang-1", Due(time.time()))
    entered = wait_for(lambda: cluster.records("enter", "hang-1"), what="the handler entered")
    assert len(entered) == 1
    second = cluster.start()
    wait_for(lambda: "serving" in cluster.log(1), what="the second daemon serving")
    os.killpg(first.pid, signal.SIGKILL)  # the daemon and its worker, mid-handler
    first.wait(timeout=30)
    killed_at = time.time()
    again = wait_for(lambda: len(cluster.records("exit", "hang-1")) >= 1, what="taken over")
    assert again
    took_over = cluster.records("enter", "hang-1")[1]["t"] - killed_at
    print(f"taken over {took_over * 1000:.0f} ms after kill -9")
    wait_for(lambda: cluster.jobs.task("task").status("hang-1").execute_count == 1,
             what="the step committed")  # fmt: skip
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=30) == 0


def test_a_new_alarm_wakes_a_sleeping_daemon_through_notify(cluster: Cluster) -> None:
    cluster.jobs.continuous("hourly").start("anchor", Count())  # the daemon sleeps an hour
    proc = cluster.start()
    wait_for(lambda: "serving" in cluster.log(0), what="serving")
    for i in range(3):
        cluster.jobs.task("task").send(f"now-{i}", Due(time.time() + 0.2))
        wait_for(lambda i=i: cluster.records("exit", f"now-{i}"), timeout=10, what=f"now-{i}")
    late = [r["lateness"] for r in cluster.records("enter") if r["id"].startswith("now-")]
    print(f"lateness through NOTIFY: {[round(x * 1000, 1) for x in late]} ms")
    assert all(x < 5.0 for x in late)  # woken by the notification, not an hour later
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
