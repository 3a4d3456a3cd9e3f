"""Job definitions for the daemon tests (no ``Jobs`` here: tests and daemons open their own).

Handlers append one JSON line per event to ``$DAEMON_TEST_OUT`` (one ``write`` per line, so
lines from several processes never mix): the test process waits on these lines instead of
sleeping. What a handler does is chosen by the instance's user id:

- ``late-*`` (Continuous): record the lateness ``time.time() - ctx.scheduled_for``, terminate;
- ``slow-*``: sleep ``$DAEMON_TEST_SLOW`` seconds (default 1) between "enter" and "exit";
- ``hang-*``: the first entry sleeps an hour (the test kills it); later entries return;
- ``timeout-*`` (Continuous): attempt 1 of run 1 sleeps an hour (the timeout stops it).

The Task ``task`` runs ``execute`` at the absolute time its event carries, and records its
lateness against that time.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from typing import Any

import attrs

from durajobs import Backoff, Continuous, Retry, Task, every


@attrs.define
class Count:
    n: int = 0


@attrs.define
class Due:
    at: float = 0.0  # epoch seconds at which the Task's execute is scheduled


def record(kind: str, instance: str, **fields: Any) -> None:
    """Append one JSON line to the test's output file."""
    item = {"kind": kind, "id": instance, "pid": os.getpid(), "t": time.time(), **fields}
    fd = os.open(os.environ["DAEMON_TEST_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(item) + "\n").encode())
    finally:
        os.close(fd)


def count(kind: str, instance: str) -> int:
    """How many lines of ``kind`` the handlers of ``instance`` wrote so far."""
    try:
        with open(os.environ["DAEMON_TEST_OUT"]) as lines:
            items = [json.loads(line) for line in lines]
    except FileNotFoundError:
        return 0
    return sum(1 for item in items if item["kind"] == kind and item["id"] == instance)


def behave(instance: str, *, first_try: bool = True, **fields: Any) -> None:
    """The shared handler body: "enter", maybe sleep, "exit"."""
    record("enter", instance, **fields)
    if instance.startswith("hang-") and count("enter", instance) == 1:
        time.sleep(3600)
    if instance.startswith("timeout-") and first_try:
        time.sleep(3600)
    if instance.startswith("slow-"):
        time.sleep(float(os.environ.get("DAEMON_TEST_SLOW", "1")))
    record("exit", instance, **fields)


def tick(ctx: Any) -> None:
    if ctx.id.startswith("late-"):
        record("late", ctx.id, lateness=time.time() - ctx.scheduled_for.timestamp())
        ctx.terminate("measured")
        return
    first_try = ctx.run_count == 1 and ctx.attempt == 1
    behave(ctx.id, first_try=first_try, run_count=ctx.run_count, attempt=ctx.attempt)
    ctx.state = Count(ctx.state.n + 1)


def on_event(event: Due, ctx: Any) -> None:
    ctx.state = event
    ctx.schedule(datetime.fromtimestamp(event.at, UTC))


def execute(ctx: Any) -> None:
    lateness = time.time() - ctx.state.at
    behave(ctx.id, lateness=lateness, execute_count=ctx.execute_count)


REGISTRY = {
    # Due 0.2 s after start, then every 0.2 s.
    "soon": Continuous(state=Count, schedule=every(0.2), execute=tick, start_immediately=False),
    # The first run is an hour away.
    "hourly": Continuous(
        state=Count, schedule=every("1 hour"), execute=tick, start_immediately=False
    ),
    # Due 0.3 s after start; a step is stopped after 0.5 s; one retry 0.5 s later.
    "limited": Continuous(
        state=Count,
        schedule=every(0.3),
        execute=tick,
        start_immediately=False,
        retry=Retry(max_attempts=2, delay=Backoff.fixed("500ms")),
        timeout=0.5,
    ),
    "task": Task(state=Due, event=Due, on_event=on_event, execute=execute),
}
