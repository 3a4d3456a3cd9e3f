"""Serialization and isolation across real processes (issue 2's multi-process checks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from waiting import wait_for

APPS = Path(__file__).parent / "apps"
sys.path.insert(0, str(APPS))

import mp_app  # noqa: E402


class App:
    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.db = tmp_path / "mp.db"
        self.log = tmp_path / "handlers.log"
        self.log.touch()
        self.env = {**os.environ, "MP_DB": str(self.db), "MP_LOG": str(self.log)}
        self.env["PYTHONPATH"] = os.pathsep.join([str(APPS), self.env.get("PYTHONPATH", "")])
        for key in ("MP_DB", "MP_LOG"):
            monkeypatch.setenv(key, self.env[key])

    def spawn(self, *args: str, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(APPS / "mp_app.py"), *args],
            env={**self.env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def lines(self) -> list[list[str]]:
        return [line.split() for line in self.log.read_text().splitlines()]

    def entered(self, instance: str) -> int:
        return sum(1 for parts in self.lines() if parts[0] == "enter" and parts[1] == instance)


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> App:
    return App(tmp_path, monkeypatch)


def test_slow_handler_does_not_block_other_instances_or_reads(app: App) -> None:
    with mp_app.open_jobs() as jobs:
        jobs.continuous("c").start("warm", mp_app.Count())  # create the file first
    slow = app.spawn("start", "c", "slow", MP_SLOW="5")
    try:
        wait_for(lambda: app.entered("slow") == 1, what="the slow handler to start")
        with mp_app.open_jobs() as jobs:
            client = jobs.continuous("c")
            assert client.start("fast", mp_app.Count()).created
            assert client.status("slow").status == "not_found"  # its step has not committed
            assert client.status("fast").run_count == 1
            # Another instance's step and both reads are done while the slow handler still
            # holds its instance (5 s): nothing waited for it. (How fast: benchmarks/.)
            assert slow.poll() is None, "the slow handler must still be running"
    finally:
        assert slow.wait(timeout=30) == 0, slow.stderr.read() if slow.stderr else ""
    with mp_app.open_jobs() as jobs:
        assert jobs.continuous("c").status("slow").run_count == 1


def test_two_processes_never_overlap_handlers_of_one_instance(app: App) -> None:
    with mp_app.open_jobs() as jobs:
        jobs.continuous("c").start("shared", mp_app.Count())
    procs = [app.spawn("trigger", "c", "shared", "6", MP_EACH="0.03") for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    events = sorted(
        (float(parts[3]), parts[0], parts[2]) for parts in app.lines() if parts[1] == "shared"
    )
    assert len(events) == 2 * (1 + 12)
    inside = 0
    for _, kind, _pid in events:
        inside += 1 if kind == "enter" else -1
        assert inside in (0, 1), "two handlers of one instance overlapped"
    assert len({pid for _, _, pid in events}) == 3  # the starter and both triggerers ran
    with mp_app.open_jobs() as jobs:
        status = jobs.continuous("c").status("shared")
        assert status.run_count == 13
        assert jobs.continuous("c").get_state("shared") == mp_app.Count(13)


def test_sigkill_mid_handler_is_taken_over_at_once(app: App) -> None:
    with mp_app.open_jobs() as jobs:
        jobs.continuous("later").start("slow", mp_app.Count())
        jobs.engine.store._conn.execute(
            "UPDATE instances SET due_at = 0 WHERE instance_id = 'continuous:later:slow'"
        )
    victim = app.spawn("run_due", MP_SLOW="600")
    wait_for(lambda: app.entered("slow") == 1, what="the handler to start")
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    with mp_app.open_jobs() as jobs:
        t0 = time.perf_counter()
        assert jobs.run_due() == 1  # no lease to wait for: the kernel dropped the claim
        took = time.perf_counter() - t0
        status = jobs.continuous("later").status("slow")
    assert took < 1.0, took
    assert status.run_count == 1  # the interrupted step ran again and committed once
    assert app.entered("slow") == 2
    exits = [p for p in app.lines() if p[0] == "exit" and p[1] == "slow"]
    assert len(exits) == 1


def test_a_waiting_client_is_not_starved_by_back_to_back_steps(app: App, tmp_path: Path) -> None:
    """A process that re-claims an instance right after each step must let a waiter in."""
    with mp_app.open_jobs() as jobs:
        jobs.continuous("busy").start("x", mp_app.Count())
    stop = tmp_path / "stop"
    loop = app.spawn("loop", str(stop), MP_EACH="0.15")  # slower than its 100 ms schedule
    try:
        wait_for(lambda: app.entered("x") >= 2, what="back-to-back steps")
        jobs = mp_app.Jobs(app.db, mp_app.REGISTRY, wait_timeout=5.0)
        with jobs:
            t0 = time.perf_counter()
            assert jobs.continuous("busy").trigger("x").triggered
            waited = time.perf_counter() - t0
        assert waited < 2.0, waited
    finally:
        stop.touch()
        assert loop.wait(timeout=60) == 0, loop.stderr.read() if loop.stderr else ""
