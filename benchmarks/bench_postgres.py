"""durajobs on PostgreSQL: ``task.send`` calls/s and ``run_due`` steps/s, FULL and NORMAL.

Theory of operation: a throwaway cluster is started for the run (``tests/pgserver.py``: initdb
in a temp dir, TCP on 127.0.0.1 with a password; fsync on, as a real server) unless ``--url``
names a database to use (it must be empty; it is cleaned after each measurement). For each
durability:

- ``send``: ``N`` ``task.send`` calls of distinct instances, one after the other (each a claim,
  a read, a step, a commit, a release); calls/s;
- ``run_due``: the same ``N`` instances, all due now, stepped by ``jobs.run_due()`` (one
  process, group commit); steps/s. Every step executes a no-op handler and commits the
  instance's new row and its history records;
- ``floor``: the raw server on the same connection type: single-row ``UPDATE``s in autocommit
  (one transaction each) and 100 ``UPDATE``s per transaction, rows/s, no durajobs at all.

Run: ``python benchmarks/bench_postgres.py [--n 3000] [--repeat 3] [--url postgresql://...]``;
prints a markdown table and writes ``benchmarks/out/bench_postgres.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent / "tests"))  # pgserver
sys.path.insert(0, str(BENCH_DIR.parent))

import attrs  # noqa: E402

from durajobs import Jobs, Task  # noqa: E402


@attrs.define
class Due:
    at: float = 0.0


def on_event(event: Due, ctx: Any) -> None:
    ctx.state = event
    ctx.schedule(datetime.fromtimestamp(event.at, UTC))


def execute(ctx: Any) -> None:
    del ctx  # a no-op handler: the benchmark measures durajobs and the server


REGISTRY = {"task": Task(state=Due, event=Due, on_event=on_event, execute=execute)}


def clean(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE instances, history, inbox, event_keys")
        conn.execute("VACUUM ANALYZE instances")
        conn.execute("VACUUM ANALYZE history")


def batching(on: bool) -> None:
    """Group commit in one statement per table, claims and reads of a group in one round trip
    each (``on``), or one statement per write and a claim and a read per step (the "before")."""
    from durajobs.stores.pg_claims import AdvisoryClaims
    from durajobs.stores.postgres import PostgresStore

    PostgresStore.batch_commit = on
    AdvisoryClaims.batch_claims = on


def measure(url: str, n: int, durability: str) -> dict[str, float]:
    """``task.send`` calls/s, then ``run_due`` steps/s for the same ``n`` instances."""
    with Jobs(url, REGISTRY, durability=durability, wake=False) as jobs:
        task = jobs.task("task")
        past = Due(time.time() - 1.0)
        started = time.perf_counter()
        for i in range(n):
            task.send(f"u{i}", past)
        send = n / (time.perf_counter() - started)
        started = time.perf_counter()
        done = 0
        while done < n:
            stepped = jobs.run_due()
            if not stepped:
                raise RuntimeError(f"run_due stalled after {done} of {n} steps")
            done += stepped
        run_due = done / (time.perf_counter() - started)
        executed = sum(1 for i in range(0, n, max(1, n // 50))
                       if task.status(f"u{i}").execute_count == 1)  # fmt: skip
        assert executed == len(range(0, n, max(1, n // 50))), "a step was not committed"
    clean(url)
    return {"send": send, "run_due": run_due}


def floor(url: str, n: int, durability: str) -> dict[str, float]:
    """Raw single-row UPDATE transactions/s and 100-per-transaction rows/s."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        if durability == "normal":
            conn.execute("SET synchronous_commit = off")
        conn.execute("CREATE TABLE IF NOT EXISTS bench_floor (id int PRIMARY KEY, n bigint)")
        conn.execute("TRUNCATE bench_floor")
        conn.execute("INSERT INTO bench_floor SELECT g, 0 FROM generate_series(0, 999) g")
        started = time.perf_counter()
        for i in range(n):
            conn.execute("UPDATE bench_floor SET n = n + 1 WHERE id = %s", (i % 1000,))
        single = n / (time.perf_counter() - started)
        started = time.perf_counter()
        for start in range(0, n, 100):
            with conn.transaction():
                for i in range(start, min(n, start + 100)):
                    conn.execute("UPDATE bench_floor SET n = n + 1 WHERE id = %s", (i % 1000,))
        batch = n / (time.perf_counter() - started)
        conn.execute("DROP TABLE bench_floor")
    return {"floor_single": single, "floor_batch100": batch}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="instances per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--url", help="an empty database to use (default: a throwaway cluster)")
    args = parser.parse_args(argv)

    server = None
    url = args.url
    if url is None:
        from pgserver import PgServer, find_pg_bin

        bindir = find_pg_bin()
        if bindir is None:
            parser.error("PostgreSQL is not installed; pass --url")
        server = PgServer(bindir)
        server.start()
        url = server.create_database("bench")
    try:
        Jobs(url, REGISTRY).close()  # create the schema
        results: dict[str, dict[str, float]] = {}
        for durability in ("full", "normal"):
            runs = []
            for _ in range(args.repeat):  # before and after interleaved: the same conditions
                batching(False)
                before = measure(url, args.n, durability)
                batching(True)
                after = measure(url, args.n, durability)
                runs.append({
                    "send_before": before["send"], "run_due_before": before["run_due"],
                    **after, **floor(url, args.n, durability),
                })  # fmt: skip
            results[durability] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    finally:
        if server is not None:
            server.stop()
    print(f"PostgreSQL, {args.n} instances, median of {args.repeat}:\n")
    print(
        "| durability | run_due steps/s before | after | task.send calls/s before | after "
        "| floor: 1-row txn/s | floor: rows/s in 100-row txns | run_due / 1-row floor |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    for durability, r in results.items():
        print(
            f"| {durability.upper()} | {r['run_due_before']:,.0f} | {r['run_due']:,.0f} | "
            f"{r['send_before']:,.0f} | {r['send']:,.0f} | {r['floor_single']:,.0f} | "
            f"{r['floor_batch100']:,.0f} | {r['run_due'] / r['floor_single']:.1f}x |"
        )
    out = BENCH_DIR / "out"
    out.mkdir(exist_ok=True)
    (out / "bench_postgres.json").write_text(json.dumps({"n": args.n, **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
