"""Job definitions of the flow-control process tests (``flow_app`` binds them to
$DAEMON_TEST_DB for ``--app daemon_apps.flow_app:jobs``). Handlers append JSON lines
("enter"/"exit" with ``time.time()``) to $DAEMON_TEST_OUT (``app_defs.record``), so tests can
check who ran when.

- ``limited`` (Task, ``concurrency=2``): ``execute`` sleeps $FLOW_SLOW seconds (default 0.1);
  ids starting with ``hang-`` sleep an hour.
- ``rated`` (Task, ``rate="20/s"``), ``trickle`` (``rate="1/min"``), ``news`` (priority 0),
  ``billing`` (priority 10): record.
- ``tick`` (Continuous, every 0.2 s, catch_up="one"): record with its ``scheduled_for``.
- ``hourly`` (Continuous, rate-limited, an hour away): keeps the daemon's alarm far off.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

from daemon_apps.app_defs import Count, Due, record
from durajobs import Continuous, Task, every


def on_event(event: Due, ctx: Any) -> None:
    ctx.state = event
    ctx.schedule(datetime.fromtimestamp(event.at, UTC))


def slow(ctx: Any) -> None:
    record("enter", ctx.id)
    time.sleep(3600 if ctx.id.startswith("hang-") else float(os.environ.get("FLOW_SLOW", "0.1")))
    record("exit", ctx.id)


def mark(ctx: Any) -> None:
    record("enter", ctx.id, job=ctx.job_name)


def tick(ctx: Any) -> None:
    record("tick", ctx.id, scheduled_for=ctx.scheduled_for.timestamp(), run=ctx.run_count)
    ctx.state = Count(ctx.state.n + 1)


def _task(execute: Any, **kw: Any) -> Task:
    return Task(state=Due, event=Due, on_event=on_event, execute=execute, **kw)


REGISTRY = {
    "limited": _task(slow, concurrency=2),
    "rated": _task(mark, rate="20/s"),
    "trickle": _task(mark, rate="1/min"),
    "news": _task(mark, priority=0),
    "billing": _task(mark, priority=10),
    "tick": Continuous(state=Count, schedule=every(0.2), execute=tick, start_immediately=False),
    "hourly": Continuous(
        state=Count,
        schedule=every("1 hour"),
        execute=tick,
        start_immediately=False,
        rate="1/min",
        concurrency=1,
    ),
}
