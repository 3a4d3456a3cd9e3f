"""The durajobs application the benchmarks run: job definitions, handlers, and the daemon's app.

Theory of operation: every process of a benchmark (the runner, a producer subprocess, the
daemon and its workers) imports this one module, so they agree on the registry. The daemon is
started as ``python durajobs_daemon.py --app dj_app:jobs --db FILE`` with ``benchmarks/`` on
``PYTHONPATH``; ``jobs`` is made on first access (a module ``__getattr__``), on the scratch file
``$DJ_BENCH_APP_DB`` with durability ``$DJ_BENCH_DURABILITY``; the daemon then serves FILE
with the same registry and settings (``--db``). Importing the module opens nothing.

Jobs:
  ``e2e``     Task: ``on_event`` schedules ``execute`` now (``timedelta(0)``); ``execute`` is a
              no-op -- the huey end-to-end workload (enqueue a task, a worker runs it);
  ``late``    Task: the event carries an absolute due time; ``on_event`` stores it as the state
              and schedules ``execute`` then; ``execute`` first reads ``time.time()`` and
              appends ``now - due`` to ``$DJ_BENCH_OUT`` (one short O_APPEND write per line);
  ``hourly``  Continuous every hour, first run an hour after ``start``: the idle daemon's one
              alarm;
  ``noop``    Continuous every minute, no-op ``execute``: ``run_due`` throughput;
  ``batch``   Debounce, default reducer (keep the latest event), ``flush_after`` an hour:
              ``debounce.add`` throughput;
  ``orders2`` Task with a no-op ``on_event`` (schedules nothing): ``task.send`` throughput;
  plus the three jobs the scale file is made of (``token_refresher``, ``webhooks``,
  ``orders``), which ``bench_ls`` builds its million-instance file from (defined here, not
  there: the daemon's memory is measured, and ``bench_ls`` imports the CLI).
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from durajobs import Continuous, Debounce, Jobs, Task, every
from durajobs.core.definitions import Definition

NOW = timedelta(0)


@attrs.define
class Item:
    n: int


@attrs.define
class Due:
    due: float  # epoch seconds


@attrs.define
class Tick:
    runs: int = 0


def noop(ctx: Any) -> None:
    pass


def e2e_on_event(event: Item, ctx: Any) -> None:
    ctx.schedule(NOW)


def send_on_event(event: Item, ctx: Any) -> None:
    pass


def late_on_event(event: Due, ctx: Any) -> None:
    ctx.state = event
    ctx.schedule(datetime.fromtimestamp(event.due, UTC))


def late_execute(ctx: Any) -> None:
    now = time.time()  # first thing: lateness = start of the handler - due time
    lateness = now - ctx.state.due
    with open(os.environ["DJ_BENCH_OUT"], "a") as out:
        out.write(f"{lateness!r}\n")


# -- the scale file's jobs (as bench_ls makes them) ---------------------------------------------


@attrs.define
class Tokens:
    access_token: str
    refresh_token: str
    expires_at: float = 0.0


@attrs.define
class Hook:
    repo: str
    action: str


@attrs.define
class Order:
    order_id: str
    step: str = "new"
    amount_cents: int = 0


def refresh(ctx: Any) -> None:
    ctx.state = attrs.evolve(
        ctx.state, access_token=f"at_{ctx.id}_{ctx.run_count:08d}", expires_at=1.8e9
    )


def on_order(event: Order, ctx: Any) -> None:
    ctx.state = event
    ctx.schedule("30 minutes")


def ship(ctx: Any) -> None:
    ctx.state = attrs.evolve(ctx.state, step="shipped")


def registry() -> dict[str, Definition]:
    return {
        "e2e": Task(state=Item, event=Item, on_event=e2e_on_event, execute=noop),
        "late": Task(state=Due, event=Due, on_event=late_on_event, execute=late_execute),
        "hourly": Continuous(
            state=Tick, schedule=every("1 hour"), execute=noop, start_immediately=False
        ),
        "noop": Continuous(
            state=Tick, schedule=every("1 minute"), execute=noop, start_immediately=False
        ),
        "batch": Debounce(event=Item, execute=noop, flush_after="1 hour"),
        "orders2": Task(state=Item, event=Item, on_event=send_on_event, execute=noop),
        "token_refresher": Continuous(state=Tokens, schedule=every("30 minutes"), execute=refresh),
        "webhooks": Debounce(event=Hook, execute=noop, flush_after="5 minutes"),
        "orders": Task(state=Order, event=Order, on_event=on_order, execute=ship),
    }


REGISTRY = registry()
_JOBS: list[Jobs] = []


def __getattr__(name: str) -> Any:
    """``dj_app.jobs``: the daemon's app, opened on first access."""
    if name != "jobs":
        raise AttributeError(name)
    if not _JOBS:
        _JOBS.append(
            Jobs(
                os.environ["DJ_BENCH_APP_DB"],
                REGISTRY,
                durability=os.environ.get("DJ_BENCH_DURABILITY", "full"),
            )
        )
    return _JOBS[0]
