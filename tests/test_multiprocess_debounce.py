"""An ``add`` never waits for a running flush of the same instance (DESIGN.md behaviour 5).

One process runs a flush whose ``execute`` sleeps 2 s; meanwhile this process adds 20 events
to the same instance. Each add returns in well under 100 ms, and after the next flush every
event was seen exactly once, in order, across the two batches. Real system time; the child
signals "flush started" by writing a file, and this process waits on that file (and on the
child's exit) with deadlines, never with fixed sleeps.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from waiting import wait_for

from durajobs import Jobs

pytestmark = pytest.mark.slow

ADD_BUDGET = 0.100  # seconds per add while the flush runs
FLUSH_SLEEP = 2.0

# The application module both processes import: one definition, no drift between them.
APP_SOURCE = """
from __future__ import annotations

import json
import os
import sys
import time

import attrs

from durajobs import Debounce, FakeClock, Jobs


@attrs.frozen
class Hook:
    seq: int


@attrs.define
class Seen:
    seqs: list[int] = attrs.Factory(list)


def collect(ctx):
    seqs = [] if ctx.state is None else ctx.state.seqs
    return Seen([*seqs, ctx.event.seq])


def registry(out_path, started_path=None, sleep=0.0):
    def execute(ctx):
        if started_path:
            with open(started_path, "w") as f:
                f.write(str(os.getpid()))
        time.sleep(sleep)  # the slow part of the flush (an HTTP call, say)
        line = json.dumps({"pid": os.getpid(), "seqs": ctx.state.seqs,
                           "reason": ctx.flush_reason, "count": ctx.event_count})
        fd = os.open(out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\\n").encode())
        finally:
            os.close(fd)

    return {"hooks": Debounce(event=Hook, state=Seen, on_event=collect, execute=execute,
                              flush_after="1 hour")}


if __name__ == "__main__":
    db, out, started, mode, sleep = sys.argv[1:]
    clock = None
    if mode == "run_due":
        clock = FakeClock(time.time() + 2 * 3600)  # the 1 h window is over in this process
    with Jobs(db, registry(out, started, float(sleep)), clock=clock) as jobs:
        if mode == "flush":
            result = jobs.debounce("hooks").flush("x")
            print(json.dumps([result.flushed, result.event_count, result.reason]), flush=True)
        else:
            print(json.dumps(jobs.run_due()), flush=True)
"""


def load_app(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"mp_debounce_app_{os.getpid()}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def batches(out: Path) -> list[dict[str, Any]]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines()]


class Scene:
    def __init__(self, tmp_path: Path) -> None:
        self.db = tmp_path / "mp.db"
        self.out = tmp_path / "batches.jsonl"
        self.started = tmp_path / "flush-started"
        self.app_path = tmp_path / "mp_debounce_app.py"
        self.app_path.write_text(APP_SOURCE)
        self.app = load_app(self.app_path)
        self.jobs = Jobs(self.db, self.app.registry(str(self.out)))
        self.client = self.jobs.debounce("hooks")

    def spawn(self, mode: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [
                sys.executable, str(self.app_path), str(self.db), str(self.out),
                str(self.started), mode, str(FLUSH_SLEEP),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip

    def wait_started(self, proc: subprocess.Popen[str]) -> None:
        def started() -> bool:
            if proc.poll() is not None:
                _, err = proc.communicate()
                raise AssertionError(f"the flushing process exited early:\n{err}")
            return self.started.exists()

        wait_for(started, what="the child's flush to start", interval=0.002)


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    s = Scene(tmp_path)
    yield s
    s.jobs.close()


@pytest.mark.parametrize("mode", ["flush", "run_due"])
def test_add_does_not_wait_for_a_running_flush_and_no_event_is_lost(
    scene: Scene, mode: str
) -> None:
    client = scene.client
    for seq in range(5):
        client.add("x", scene.app.Hook(seq))
    assert client.status("x").event_count == 5

    proc = scene.spawn(mode)
    try:
        scene.wait_started(proc)

        # The flush is running in the other process: add 20 events meanwhile.
        timings: list[float] = []
        results = []
        for seq in range(5, 25):
            t = time.perf_counter()
            results.append(client.add("x", scene.app.Hook(seq)))
            timings.append(time.perf_counter() - t)
        t = time.perf_counter()
        during = client.status("x")  # reads never wait either
        status_time = time.perf_counter() - t

        # The adds really overlapped the flush: it has not finished yet.
        assert proc.poll() is None, "the flush ended before the adds: no overlap was tested"
        assert batches(scene.out) == []

        assert max(timings) < ADD_BUDGET, [f"{x * 1000:.1f} ms" for x in timings]
        assert status_time < ADD_BUDGET
        assert during.status == "debouncing"
        assert during.event_count >= 20
        for i, result in enumerate(results):
            assert result.instance_id == "debounce:hooks:x"
            assert result.created is False
            assert result.event_count == i + 1  # counted in the next batch
            assert result.will_flush_at is not None

        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err

    # The child flushed exactly the 5 events that were there when it began.
    flushed = batches(scene.out)
    assert flushed[0]["seqs"] == list(range(5))
    assert flushed[0]["pid"] == proc.pid
    if mode == "flush":
        assert json.loads(out) == [True, 5, "manual"]
        assert len(flushed) == 1
        assert flushed[0]["reason"] == "manual"

        # The queued events form the next batch, flushed here.
        status = client.status("x")
        assert status.status == "debouncing"
        assert status.event_count == 20
        scene.jobs.run_due()  # folds the queued events; their window (1 h) is not over
        assert client.status("x").event_count == 20
        assert client.get_state("x").seqs == list(range(5, 25))
        result = client.flush("x")
        assert (result.flushed, result.event_count, result.reason) == (True, 20, "manual")
        next_pid = os.getpid()
    else:
        # The child's clock is 2 h ahead: its run_due also found the next batch's window over
        # and flushed it, in a second step after the first one committed.
        assert json.loads(out) == 2
        assert [b["reason"] for b in flushed] == ["flush_after", "flush_after"]
        next_pid = proc.pid

    all_batches = batches(scene.out)
    assert len(all_batches) == 2
    assert all_batches[1]["seqs"] == list(range(5, 25))
    assert all_batches[1]["count"] == 20
    assert all_batches[1]["pid"] == next_pid
    seen = [seq for batch in all_batches for seq in batch["seqs"]]
    assert seen == list(range(25))  # every event exactly once, in order
    assert client.status("x").status == "not_found"
    assert client.flush("x").reason == "empty"
    assert scene.jobs.next_alarm() is None


def test_keyed_add_during_a_running_flush_is_still_deduplicated(scene: Scene) -> None:
    from durajobs.errors import DuplicateEventError

    client = scene.client
    client.add("x", scene.app.Hook(0), key="k0")
    proc = scene.spawn("flush")
    try:
        scene.wait_started(proc)
        client.add("x", scene.app.Hook(1), key="k1")
        with pytest.raises(DuplicateEventError):
            client.add("x", scene.app.Hook(1), key="k1")  # duplicate of a queued event
        with pytest.raises(DuplicateEventError):
            client.add("x", scene.app.Hook(0), key="k0")  # duplicate of the flushing batch
        assert proc.poll() is None
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    client.flush("x")
    seen = [seq for batch in batches(scene.out) for seq in batch["seqs"]]
    assert seen == [0, 1]
