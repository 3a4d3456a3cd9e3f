"""The app of ``tests/test_copy.py``: every kind, for a database copied and then served by a
real daemon (``--app daemon_apps.copy_app:jobs``; database: ``$DAEMON_TEST_DB``).

Handlers append JSON lines through ``app_defs.record``. ``broken`` raises while
``$COPY_TEST_FAIL`` is set (it is parked on the source) and runs fine on the destination.
"""

from __future__ import annotations

import os
from typing import Any

import attrs

from daemon_apps.app_defs import Count, Due, execute, on_event, record
from durajobs import Continuous, Debounce, Jobs, Task, every


@attrs.frozen
class Click:
    page: str


@attrs.define
class Pages:
    pages: list[str] = attrs.Factory(list)


def tick(ctx: Any) -> None:
    record("tick", ctx.id, run_count=ctx.run_count, n=ctx.state.n, step_key=ctx.step_key)
    ctx.state = Count(ctx.state.n + 1)


def broken(ctx: Any) -> None:
    if os.environ.get("COPY_TEST_FAIL"):
        raise RuntimeError("broken on purpose")
    record("broken", ctx.id, run_count=ctx.run_count, attempt=ctx.attempt, n=ctx.state.n)
    ctx.terminate("done")


def collect(ctx: Any) -> Pages:
    state = ctx.state if ctx.state is not None else Pages()
    return Pages([*state.pages, ctx.event.page])


def flushed(ctx: Any) -> None:
    record("flush", ctx.id, pages=ctx.state.pages)


REGISTRY = {
    "tick": Continuous(state=Count, schedule=every(0.3), execute=tick, start_immediately=False),
    "hourly": Continuous(
        state=Count, schedule=every("1 hour"), execute=tick, start_immediately=False
    ),
    "broken": Continuous(
        state=Count,
        schedule=every(0.2),
        execute=broken,
        start_immediately=False,
        on_exhausted="park",
    ),
    "batch": Debounce(event=Click, state=Pages, on_event=collect, execute=flushed, flush_after=1.0),
    "task": Task(state=Due, event=Due, on_event=on_event, execute=execute),
}

jobs = Jobs(os.environ["DAEMON_TEST_DB"], REGISTRY) if "DAEMON_TEST_DB" in os.environ else None
