"""The app of the kill -9 torture test (tests/test_torture.py), and its producer processes.

The daemon serves ``--app daemon_apps.torture_app:jobs`` (database: ``$TORTURE_DB``); the
producers run ``python -m daemon_apps.torture_app PRODUCER_NO SEED ACK_LOG STOP_FILE``.

Two jobs, both keyed by event ids ``"p{producer}-{n}"`` (unique across the whole run):

- ``batches`` (Debounce): the reducer appends each event id to ``Batch.ids``; ``flush_after``
  50 ms and ``max_events`` 5, so batches flush all the time, in the daemon (the window) and in
  the producers (an ``add`` reaching ``max_events`` flushes in the call), while other producers
  add to the same instance (those adds queue behind the running flush).
- ``tasks`` (Task): ``on_event`` appends the id to ``Work.pending`` and sets an alarm 30 ms
  ahead unless one is pending; ``execute`` moves ``pending`` to the end of ``processed``.

Both ``execute`` handlers append one JSON line to ``$TORTURE_SIDE`` (``O_APPEND``, one
``write`` per line, so lines of several processes never mix) *before* returning: the step's
``step_key``, the ids it handled and the pid. Then they pause a few milliseconds, which widens
the window between "the handler ran" and "its step committed" that a SIGKILL can hit. So the
side log says which handler runs happened (at least once per committed step); the committed
history and states say which steps counted (exactly once).

Instance history is kept whole (``history_limit``): the test reads every ``debounce.flushed``
record of the run.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs

from durajobs import Debounce, Jobs, Task
from durajobs.errors import DuplicateEventError, DurajobsError

FLUSH_AFTER = 0.05
MAX_EVENTS = 5
EXECUTE_AFTER = timedelta(milliseconds=30)
HISTORY_LIMIT = 10**9  # keep every record: the test reads them all
DEBOUNCE_IDS = ("d0", "d1", "d2", "d3", "d4", "d5")  # ~4 events per instance per window
TASK_IDS = ("t0", "t1")


@attrs.frozen
class Ev:
    id: str


@attrs.define
class Batch:
    ids: list[str] = attrs.Factory(list)


@attrs.define
class Work:
    pending: list[str] = attrs.Factory(list)
    processed: list[str] = attrs.Factory(list)


def side_effect(kind: str, ctx: Any, ids: list[str]) -> None:
    """Record one handler run (the "external" side effect) with one ``write``."""
    item = {
        "kind": kind,
        "instance": ctx.instance_id,
        "step_key": ctx.step_key,
        "ids": ids,
        "pid": os.getpid(),
    }
    fd = os.open(os.environ["TORTURE_SIDE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(item) + "\n").encode())
    finally:
        os.close(fd)
    # The side effect is done; the commit is not yet. $TORTURE_PAUSE fixes the pause (seconds).
    pause = os.environ.get("TORTURE_PAUSE")
    time.sleep(float(pause) if pause else random.uniform(0.0, 0.010))


def collect(ctx: Any) -> Batch:
    ids = [] if ctx.state is None else ctx.state.ids
    return Batch([*ids, ctx.event.id])


def flush(ctx: Any) -> None:
    side_effect("flush", ctx, ctx.state.ids)


def task_event(event: Ev, ctx: Any) -> None:
    work = ctx.state or Work()
    ctx.state = Work([*work.pending, event.id], work.processed)
    if ctx.scheduled_at is None:
        ctx.schedule(EXECUTE_AFTER)


def task_execute(ctx: Any) -> None:
    work = ctx.state
    side_effect("execute", ctx, work.pending)
    ctx.state = Work([], [*work.processed, *work.pending])


REGISTRY = {
    "batches": Debounce(
        event=Ev,
        state=Batch,
        on_event=collect,
        execute=flush,
        flush_after=FLUSH_AFTER,
        max_events=MAX_EVENTS,
    ),
    "tasks": Task(state=Work, event=Ev, on_event=task_event, execute=task_execute),
}


def open_jobs(path: str | os.PathLike[str]) -> Jobs:
    return Jobs(path, REGISTRY, history_limit=HISTORY_LIMIT)


_jobs: Jobs | None = None


def __getattr__(name: str) -> Any:
    """``jobs`` is opened on first use (the test imports ``REGISTRY`` without a database)."""
    global _jobs  # noqa: PLW0603
    if name != "jobs":
        raise AttributeError(name)
    if _jobs is None:
        _jobs = open_jobs(os.environ["TORTURE_DB"])
    return _jobs


# -- producers ------------------------------------------------------------------------------


def produce(number: int, seed: int, ack_log: Path, stop_file: Path) -> None:
    """Add and send events until ``stop_file`` exists; log each one after it was acknowledged.

    A call that raises is retried with the same idempotency key (the event id) until it returns
    or raises ``DuplicateEventError`` (then an earlier try was stored: acknowledged too). The
    last line of the log counts the adds that were queued behind a flush running elsewhere.
    """
    rng = random.Random(seed)
    jobs = open_jobs(os.environ["TORTURE_DB"])
    store = jobs.engine.store
    enqueue = store.enqueue
    queued = [0]

    def counting_enqueue(*args: Any, **kwargs: Any) -> Any:
        result = enqueue(*args, **kwargs)
        queued[0] += 1
        return result

    store.enqueue = counting_enqueue  # type: ignore[method-assign]
    batches, tasks = jobs.debounce("batches"), jobs.task("tasks")
    fd = os.open(ack_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    n = 0
    while not stop_file.exists():
        event = Ev(f"p{number}-{n}")
        if rng.random() < 0.7:
            kind, instance, client = "debounce", rng.choice(DEBOUNCE_IDS), batches
            call = client.add
        else:
            kind, instance, client = "task", rng.choice(TASK_IDS), tasks
            call = client.send
        errors: list[str] = []
        while True:
            try:
                call(instance, event, key=event.id)
            except DuplicateEventError:
                if not errors:
                    raise  # a fresh id must never be a duplicate
            except DurajobsError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                if len(errors) > 50:
                    raise
                time.sleep(0.01)  # this producer's own pacing before the retry
                continue
            break
        line = {"kind": kind, "instance": instance, "id": event.id, "errors": errors}
        os.write(fd, (json.dumps(line) + "\n").encode())
        n += 1
        time.sleep(rng.uniform(0.0, 0.004))  # pacing: about 150 events/s per producer
    os.write(fd, (json.dumps({"kind": "stats", "queued": queued[0]}) + "\n").encode())
    os.close(fd)
    jobs.close()


if __name__ == "__main__":
    produce(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
