"""The app of the multi-host tests (``tests/test_postgres_hosts.py``): ``--app
daemon_apps.hosts_app:jobs`` (database: ``$DAEMON_TEST_DB``, records: ``$DAEMON_TEST_OUT``).

One Task, ``task``: ``send(id, Due(at))`` schedules ``execute`` at ``at``; ``execute`` writes
"enter"/"exit" lines (``app_defs.record``) and stores who ran it (``Ran.pid``, ``Ran.runs``),
so a commit that should have been fenced out shows in the state as well as in the counters.

- ``gate-*``: the first entry waits (up to ``GATE_WAIT`` seconds) until the file
  ``$DAEMON_TEST_OUT.open`` exists, then reads its own status through the app's ``jobs``
  until that works (a lost connection is noticed and reopened here, so the step's commit
  goes to the server and meets the fence), recording each failed read; later entries
  return at once.
- any other id returns at once.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

import attrs

from daemon_apps.app_defs import Due, count, record
from durajobs import Jobs, Task
from durajobs.errors import DurajobsError

GATE_WAIT = 120.0


@attrs.define
class Ran:
    at: float = 0.0  # epoch seconds at which execute is scheduled
    pid: int = 0  # the process whose execute was committed last
    runs: int = 0  # execute steps committed (as the state saw them)


def on_event(event: Due, ctx: Any) -> None:
    ctx.state = attrs.evolve(ctx.state or Ran(), at=event.at)  # None on the first event
    ctx.schedule(datetime.fromtimestamp(event.at, UTC))


def _wait_for_gate(instance: str) -> None:
    gate = os.environ["DAEMON_TEST_OUT"] + ".open"
    deadline = time.monotonic() + GATE_WAIT
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    while time.monotonic() < deadline:
        try:
            __getattr__("jobs").task("task").status(instance)
            return
        except DurajobsError as exc:
            record("read-failed", instance, error=type(exc).__name__)
            time.sleep(0.05)


def execute(ctx: Any) -> None:
    record("enter", ctx.id, execute_count=ctx.execute_count)
    if ctx.id.startswith("gate-") and count("enter", ctx.id) == 1:
        _wait_for_gate(ctx.id)
    ctx.state = attrs.evolve(ctx.state, pid=os.getpid(), runs=ctx.state.runs + 1)
    record("exit", ctx.id, execute_count=ctx.execute_count)


REGISTRY = {"task": Task(state=Ran, event=Due, on_event=on_event, execute=execute)}
_opened: list[Jobs] = []


def __getattr__(name: str) -> Any:
    """``jobs``, opened on first use (the tests import ``REGISTRY`` without a database)."""
    if name != "jobs":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if not _opened:
        _opened.append(Jobs(os.environ["DAEMON_TEST_DB"], REGISTRY))
    return _opened[0]
