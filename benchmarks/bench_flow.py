"""Flow control's cost: ``run_due()`` throughput with and without a ``concurrency`` limit.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_flow.py --quick     # 2,000 instances, 5 rounds each
    .venv/bin/python benchmarks/bench_flow.py             # 10,000 instances, 7 rounds each
    .venv/bin/python benchmarks/bench_flow.py --postgres  # also on a throwaway PostgreSQL

The same workload as ``run.py``'s run_due row: N due no-op Continuous instances (every
minute), one ``jobs.run_due()`` that runs them all, FULL durability, in virtual time
(``FakeClock``). Two registries differ only in ``concurrency=4`` on the job: then every due
step takes one of the job's slots (an OFD lock on the claims' file) before its handler and
gives it back after. Rounds alternate plain / limited on two files of the same size (the
machine is shared: alternating cancels slow phases out); the figure is the ratio of the
medians. Also a ``priority`` row (a second job with priority 1 makes run_due sort each pass's
ids) and the cost of the due reads' paused test while one other job is paused. Writes
``benchmarks/RESULTS-flow.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from durajobs import Continuous, FakeClock, Jobs, every

START = datetime(2026, 1, 1, tzinfo=UTC)
HERE = Path(__file__).parent


@attrs.define
class Tick:
    n: int = 0


def noop(ctx: Any) -> None:
    ctx.state = Tick(ctx.state.n + 1)  # new bytes: SQLite writes a row only if it changed


def registry(concurrency: int | None, other_priority: int) -> dict[str, Continuous]:
    job = Continuous(
        state=Tick, schedule=every("1 minute"), execute=noop, start_immediately=False,
        concurrency=concurrency,
    )  # fmt: skip
    other = Continuous(
        state=Tick, schedule=every("1 hour"), execute=noop, start_immediately=False,
        priority=other_priority,
    )  # fmt: skip
    return {"noop": job, "other": other}


# name -> (the job's concurrency, the other job's priority, the other job paused)
VARIANTS: dict[str, tuple[int | None, int, bool]] = {
    "plain": (None, 0, False),
    "concurrency=4": (4, 0, False),
    "priority (another job has 1)": (None, 1, False),
    "another job paused": (None, 0, True),
}


def prepare(db: str, name: str, instances: int) -> tuple[Jobs, FakeClock]:
    clock = FakeClock(START)
    concurrency, other_priority, paused = VARIANTS[name]
    reg = registry(concurrency, other_priority)
    with Jobs(db, reg, clock=clock, durability="normal") as setup:
        start_many = setup.continuous("noop").start_many
        for first in range(0, instances, 1_000):
            start_many([(f"u{i:06d}", Tick()) for i in range(first, first + 1_000)])
        setup.continuous("other").start("o", Tick())
        if paused:
            setup.pause("other")
    return Jobs(db, reg, clock=clock), clock


def measure(
    quick: bool, locations: list[str]
) -> tuple[dict[str, list[float]], dict[str, list[float]], int]:
    """Per variant (one location each): steps per wall second and CPU microseconds per step
    (this process's: on PostgreSQL the server's share is not in it), round by round."""
    instances, rounds = (2_000, 5) if quick else (10_000, 7)
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
    opened = {
        name: prepare(location, name, instances)
        for name, location in zip(VARIANTS, locations, strict=True)
    }
    try:
        for _ in range(rounds):
            for name, (jobs, clock) in opened.items():  # alternate, round by round
                clock.advance("61s")
                started, cpu_started = time.perf_counter(), time.process_time()
                count = jobs.run_due()
                elapsed = time.perf_counter() - started
                cpu_used = time.process_time() - cpu_started
                if count != instances:
                    raise RuntimeError(f"{name}: run_due ran {count}, expected {instances}")
                rates[name].append(count / elapsed)
                cpu[name].append(cpu_used / count * 1e6)
    finally:
        for jobs, _ in opened.values():
            jobs.close()
    return rates, cpu, instances


def render(
    rates: dict[str, list[float]], cpu: dict[str, list[float]], instances: int, quick: bool,
    took: float, store: str,
) -> str:  # fmt: skip
    plain = statistics.median(rates["plain"])
    plain_cpu = statistics.median(cpu["plain"])
    lines = [
        f"## {store}",
        "",
        f"`benchmarks/bench_flow.py{' --quick' if quick else ''}`, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {took:.0f} s; {instances:,} due no-op "
        "Continuous instances, one `run_due()` each round, FULL, rounds alternating between "
        "the variants. Goal: a `concurrency` limit costs < 10 % of run_due throughput. The "
        "2 cores are shared with other work, so wall-clock rates swing by tens of % from "
        "round to round; the CPU time per step (this process's, fsync waits excluded) is "
        "the steadier measure of what the limit adds.",
        "",
        "| variant | steps/s (median) | rounds | vs plain | CPU us/step (median) | vs plain |",
        "|---|--:|---|--:|--:|--:|",
    ]
    for name in VARIANTS:
        median = statistics.median(rates[name])
        per_step = statistics.median(cpu[name])
        listed = ", ".join(f"{r:,.0f}" for r in rates[name])
        lines.append(
            f"| {name} | {median:,.0f} | {listed} | {median / plain:.3f}x "
            f"| {per_step:.1f} | {per_step / plain_cpu:.3f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 instances, 5 rounds")
    parser.add_argument(
        "--postgres", action="store_true", help="also on a throwaway PostgreSQL cluster"
    )
    args = parser.parse_args(argv)
    sections = ["# Flow control: the cost of a limit on run_due()\n"]
    with tempfile.TemporaryDirectory(prefix="durajobs-bench-flow-") as scratch:
        started = time.perf_counter()
        files = [f"{scratch}/variant-{i}.db" for i in range(len(VARIANTS))]
        rates, cpu, instances = measure(args.quick, files)
        took = time.perf_counter() - started
        sections.append(render(rates, cpu, instances, args.quick, took, "SQLite"))
    if args.postgres:
        sys.path.insert(0, str(HERE.parent / "tests"))
        from pgserver import PgServer, find_pg_bin

        bindir = find_pg_bin()
        if bindir is None:
            raise SystemExit("--postgres: no PostgreSQL binaries (initdb) found")
        server = PgServer(bindir)
        server.start()
        try:
            started = time.perf_counter()
            urls = [server.create_database("flow") for _ in VARIANTS]
            rates, cpu, instances = measure(True, urls)  # smaller: a round trip per step
            took = time.perf_counter() - started
            sections.append(render(rates, cpu, instances, True, took, "PostgreSQL (quick)"))
        finally:
            server.stop()
    text = "\n".join(sections)
    (HERE / "RESULTS-flow.md").write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
