"""What one durajobs step costs a PostgreSQL server: the inputs of docs/scaling.md's model.

For ``task.send`` (one client call: a new Task instance whose ``on_event`` schedules its
``execute`` now) and for ``run_due`` (the same instances' due steps, group commit), per step:

- round trips the client waits for (``bench_postgres.round_trips``: libpq's trace);
- CPU seconds of the client process (``time.process_time``) and of the server backend that
  serves it (``/proc/<backend pid>/stat``: the server must run on this machine);
- WAL bytes (``pg_current_wal_lsn()`` before and after);
- wall time, for the record only: on a shared machine the other figures are the stable ones.

Then the bytes per instance row (heap and indexes, ``sizes``), and ``EXPLAIN (ANALYZE,
BUFFERS)`` of one group write of 64 steps (``SQL_PUT_BATCH``, the
statement ``run_due`` commits a group of Task steps with), inside a transaction rolled back.

Run: ``python benchmarks/capacity_postgres.py [--n 2000] [--url postgresql://...]``
(default: a throwaway cluster, as ``bench_postgres.py``); prints JSON, then the plan.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent / "tests"))  # pgserver
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

import bench_postgres as bench  # noqa: E402

from durajobs import Jobs  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _wal(conn: Any) -> int:
    """The WAL position in bytes."""
    return int(conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0])


def costs(url: str, n: int, rounds: int) -> dict[str, Any]:
    """Per-step costs of ``task.send`` and ``run_due``: medians over ``rounds``."""
    import psycopg

    figures: dict[str, list[float]] = {}
    with psycopg.connect(url, autocommit=True) as admin:
        for r in range(rounds):
            with Jobs(url, bench.REGISTRY, wake=False) as jobs:
                task = jobs.task("task")
                past = bench.Due(time.time() - 1.0)
                task.send(f"r{r}-warm", past)  # opens the connection
                jobs.run_due()
                backend = jobs.engine.store.link.connection().info.backend_pid  # type: ignore[attr-defined]
                for phase in ("send", "run_due"):
                    wal0 = _wal(admin)
                    cpu0, server0, wall0 = time.process_time(), _cpu(backend), time.perf_counter()
                    if phase == "send":
                        for i in range(n):
                            task.send(f"r{r}-u{i}", past)
                    else:
                        done = 0
                        while done < n:
                            done += jobs.run_due()
                    wall = time.perf_counter() - wall0
                    cpu, server = time.process_time() - cpu0, _cpu(backend) - server0
                    wal1 = _wal(admin)
                    for name, value in (
                        ("client_cpu_us", cpu / n * 1e6), ("server_cpu_us", server / n * 1e6),
                        ("wal_bytes", (wal1 - wal0) / n), ("wall_us", wall / n * 1e6),
                    ):  # fmt: skip
                        figures.setdefault(f"{phase}_{name}", []).append(value)
            bench.clean(url)
    result: dict[str, Any] = {k: round(statistics.median(v), 1) for k, v in figures.items()}
    trips = bench.round_trips(url, 200)
    result["send_round_trips"] = trips["send"]
    result["run_due_round_trips"] = trips["run_due"]
    return result


def explain_group_write(url: str, size: int = 64) -> str:
    """``EXPLAIN (ANALYZE, BUFFERS, WAL)`` of one group write of ``size`` Task steps: the
    statement and parameters of a real ``run_due`` group, run again (rolled back) on its
    rows set back one step."""
    import psycopg

    from durajobs.stores.postgres import store as pg

    captured: list[Any] = []
    original = pg.PostgresStore._apply_batch

    class Spy:
        def __init__(self, cur: Any) -> None:
            self.cur = cur

        def execute(self, sql: str, *params: Any) -> Any:
            if sql == pg.SQL_PUT_BATCH:
                captured.append(params[0])
            return self.cur.execute(sql, *params)

        def fetchall(self) -> Any:
            return self.cur.fetchall()

    def spy(self: Any, cur: Any, *args: Any) -> Any:
        return original(self, Spy(cur), *args)

    pg.PostgresStore._apply_batch = spy  # type: ignore[method-assign]
    try:
        with Jobs(url, bench.REGISTRY, wake=False) as jobs:
            task = jobs.task("task")
            past = bench.Due(time.time() - 1.0)
            for i in range(size):
                task.send(f"x{i}", past)
            jobs.run_due()
    finally:
        pg.PostgresStore._apply_batch = original  # type: ignore[method-assign]
    params = captured[0]
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE instances SET step = step - 1 WHERE instance_id = ANY(%s)",
                     (params[0],))  # fmt: skip
        plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS, WAL) " + pg.SQL_PUT_BATCH, params)
        lines = [line for (line,) in plan.fetchall()]
        conn.rollback()
    bench.clean(url)
    return f"group write of {len(params[0])} steps:\n" + "\n".join(lines)


def sizes(url: str, n: int = 5000) -> dict[str, float]:
    """Bytes per instance row of ``instances`` (heap, indexes) after ``n`` new Task
    instances with an alarm (a small state) and a VACUUM."""
    import psycopg

    with Jobs(url, bench.REGISTRY, wake=False) as jobs:
        task = jobs.task("task")
        later = bench.Due(time.time() + 3600)
        for i in range(n):
            task.send(f"s{i}", later)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE instances")
        heap, indexes = conn.execute(
            "SELECT pg_relation_size('instances')::float8 / count(*), "
            "pg_indexes_size('instances')::float8 / count(*) FROM instances"
        ).fetchone()
    bench.clean(url)
    return {"instance_heap_bytes": round(heap), "instance_index_bytes": round(indexes)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="steps per measurement (2000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians (3)")
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
        url = server.create_database("capacity")
    try:
        Jobs(url, bench.REGISTRY).close()
        print(json.dumps({**costs(url, args.n, args.rounds), **sizes(url)}, indent=2))
        print(explain_group_write(url))
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
