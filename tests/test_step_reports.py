"""What a daemon worker reports of each committed step is the step's own decision (its typed
``outcome``), handed over by the engine's ``on_done`` hook -- not re-derived from the names of
its history records (issue 18)."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

import durajobs_daemon
from durajobs import Continuous, FakeClock, Jobs, Retry, Task, every
from durajobs.core.decision import Decision
from durajobs.dispatch import StepReport
from durajobs.engine import Hooks
from durajobs.stores.base import Write

pytestmark = pytest.mark.both_stores


@attrs.define
class Tick:
    n: int = 0


def fail(ctx: object) -> None:
    raise RuntimeError("provider down")


def ok(ctx: object) -> None:
    pass


def finish(ctx: object) -> None:
    ctx.terminate("done")  # type: ignore[attr-defined]


def on_event(event: Tick, ctx: object) -> None:
    ctx.state = event  # type: ignore[attr-defined]
    ctx.schedule("1 second")  # type: ignore[attr-defined]


REGISTRY = {
    "flaky": Continuous(
        state=Tick, schedule=every("1 minute"), execute=fail, start_immediately=False,
        retry=Retry(max_attempts=2, delay="1 second"), on_exhausted="park",
    ),
    "steady": Continuous(state=Tick, schedule=every("1 minute"), execute=ok,
                         start_immediately=False),
    "once": Task(state=Tick, event=Tick, on_event=on_event, execute=finish),
}  # fmt: skip


def test_each_due_steps_report_carries_its_decisions_outcome(new_database: Path | str) -> None:
    clock = FakeClock(1_000_000.0)
    done: list[tuple[Write, Decision]] = []
    with Jobs(new_database, REGISTRY, clock=clock) as jobs:
        jobs.continuous("flaky").start("a", Tick())
        jobs.continuous("steady").start("b", Tick())
        jobs.task("once").send("c", Tick())
        hooks = Hooks(on_done=done.extend)
        lateness = {"continuous:steady:b": 1.25}
        reports = []
        for _ in range(2):  # the first run of each, then the flaky one's retry
            clock.advance("61s")
            done.clear()
            assert jobs.engine.run_due(hooks=hooks) >= 1
            reports += [durajobs_daemon.report(w, d, lateness) for w, d in done]
    got: dict[tuple[str, int], StepReport] = {}
    for r in reports:
        if r is not None:
            got.setdefault((r.instance_id, r.attempt), r)  # each one's first
    first, retried = got["continuous:flaky:a", 1], got["continuous:flaky:a", 2]
    assert (first.outcome, first.error) == ("retry", "RuntimeError: provider down")
    assert retried.outcome == "parked"
    assert retried.step == first.step + 1
    steady = got["continuous:steady:b", 1]
    assert (steady.outcome, steady.error, steady.lateness_ms) == ("ok", None, 1.25)
    assert steady.duration_ms is not None
    assert got["task:once:c", 1].outcome == "terminated"
    assert lateness == {}  # each report took its instance's lateness
