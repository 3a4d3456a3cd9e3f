"""Apps for the daemon's isolation tests: ``--app daemon_apps.robust_app:poison`` / ``:fanout``.

``poison``: one instance's handler fails with a file name that is not valid UTF-8 (a lone
surrogate, as ``os.listdir`` gives it); ``fanout``: a Task whose execute sends to another
instance due just before it (same worker batch). Database: $DAEMON_TEST_DB.
"""

from __future__ import annotations

import os

import attrs

from durajobs import Continuous, Jobs, Task, every
from durajobs.core.contexts import ContinuousContext, TaskContext

BAD_NAME = b"caf\xe9.txt".decode("utf-8", "surrogateescape")


@attrs.define
class Count:
    n: int = 0


@attrs.define
class Note:
    what: str = ""


def tick(ctx: ContinuousContext[Count]) -> None:
    if ctx.id == "poison":
        raise FileNotFoundError(f"cannot read {BAD_NAME}")
    ctx.state = Count(ctx.state.n + 1)


def on_event(event: Note, ctx: TaskContext[Count]) -> None:
    ctx.state = Count((ctx.state.n if ctx.state else 0) + 1)
    if event.what.startswith("arm@"):
        ctx.schedule(_at(float(event.what[4:])))


def _at(epoch: float) -> object:
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch, dt.UTC)


def execute(ctx: TaskContext[Count]) -> None:
    if ctx.id == "notifier":
        fanout.task("t").send("inbox", Note("note"))


poison = Jobs(
    os.environ["DAEMON_TEST_DB"],
    {"tick": Continuous(state=Count, schedule=every("1s"), execute=tick, start_immediately=False)},
)
fanout = Jobs(
    os.environ["DAEMON_TEST_DB"] + "-fanout.db",
    {"t": Task(state=Count, event=Note, on_event=on_event, execute=execute)},
    wait_timeout=3,
)
