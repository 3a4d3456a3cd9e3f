"""An application module for multi-process tests: handlers log enter/exit times to a file.

Environment: MP_DB (database path), MP_LOG (append-only log), MP_SLOW (seconds the handler of
instance "slow" sleeps), MP_EACH (seconds every handler sleeps).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import attrs

from durajobs import Continuous, Jobs, every


@attrs.define
class Count:
    n: int = 0


def log(line: str) -> None:
    fd = os.open(os.environ["MP_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def execute(ctx: Any) -> None:
    log(f"enter {ctx.id} {os.getpid()} {time.time():.6f} {ctx.run_count}")
    if ctx.id == "slow":
        time.sleep(float(os.environ.get("MP_SLOW", "0")))
    time.sleep(float(os.environ.get("MP_EACH", "0")))
    ctx.state = Count(ctx.state.n + 1)
    log(f"exit {ctx.id} {os.getpid()} {time.time():.6f} {ctx.run_count}")


REGISTRY = {
    "c": Continuous(state=Count, schedule=every("1 hour"), execute=execute, start_immediately=True),
    "busy": Continuous(
        state=Count, schedule=every("100ms"), execute=execute, start_immediately=False
    ),
    "later": Continuous(
        state=Count, schedule=every("1 hour"), execute=execute, start_immediately=False
    ),
}


def open_jobs() -> Jobs:
    return Jobs(os.environ["MP_DB"], REGISTRY)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    with open_jobs() as jobs:
        if command == "start":
            jobs.continuous(args[0]).start(args[1], Count())
        elif command == "trigger":
            for _ in range(int(args[2])):
                jobs.continuous(args[0]).trigger(args[1])
        elif command == "run_due":
            print(jobs.run_due(), flush=True)
        elif command == "loop":  # step back to back until the stop file appears (at most 30 s)
            end = time.monotonic() + 30
            while not os.path.exists(args[0]) and time.monotonic() < end:
                jobs.run_due()
