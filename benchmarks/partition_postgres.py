"""Hash-partitioned ``instances`` on PostgreSQL, on a small scale (docs/scaling.md).

Makes the durajobs schema in an EMPTY database, then turns ``instances`` into a table
partitioned by hash of ``instance_id`` (``--parts`` partitions; every index of the plain table,
the primary key included, on each), sends ``--n`` Task events and steps them with ``run_due``
through the unchanged code, checks every step landed, and prints the rates, the rows per
partition and the plan of the daemon's due read (a Merge Append of the partitions' due
indexes).

Run: ``python benchmarks/partition_postgres.py postgresql://.../empty_db [--parts 8] [--n 2000]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_postgres as bench

from durajobs import Jobs


def partition(url: str, parts: int) -> None:
    """``instances`` (empty) becomes ``parts`` hash partitions with the same indexes."""
    import psycopg

    with psycopg.connect(url) as conn:
        conn.execute("ALTER TABLE instances RENAME TO instances_plain")
        conn.execute(
            "CREATE TABLE instances (LIKE instances_plain INCLUDING ALL) "
            "PARTITION BY HASH (instance_id)"
        )
        for i in range(parts):
            conn.execute(
                f"CREATE TABLE instances_{i} PARTITION OF instances "
                f"FOR VALUES WITH (MODULUS {parts}, REMAINDER {i})"
            )
        conn.execute("INSERT INTO instances SELECT * FROM instances_plain")
        conn.execute("DROP TABLE instances_plain")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="an empty database")
    parser.add_argument("--parts", type=int, default=8)
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args(argv)
    import psycopg

    Jobs(args.url, bench.REGISTRY).close()  # the schema
    partition(args.url, args.parts)
    with Jobs(args.url, bench.REGISTRY, wake=False) as jobs:
        task = jobs.task("task")
        past = bench.Due(time.time() - 1.0)
        started = time.perf_counter()
        for i in range(args.n):
            task.send(f"u{i}", past)
        sent = time.perf_counter()
        done = 0
        while done < args.n:
            done += jobs.run_due()
        ended = time.perf_counter()
        assert all(task.status(f"u{i}").execute_count == 1 for i in range(0, args.n, 97))
    print(f"{args.parts} partitions: task.send {args.n / (sent - started):,.0f} calls/s, "
          f"run_due {args.n / (ended - sent):,.0f} steps/s")  # fmt: skip
    with psycopg.connect(args.url) as conn:
        counts = conn.execute(
            "SELECT tableoid::regclass::text, count(*) FROM instances GROUP BY 1 ORDER BY 1"
        ).fetchall()
        print("rows per partition:", ", ".join(f"{t} {n}" for t, n in counts))
        plan = conn.execute(
            "EXPLAIN SELECT instance_id FROM instances WHERE due_at <= 1e12 "
            "ORDER BY due_at LIMIT 64"
        ).fetchall()
        print("\n".join(line for (line,) in plan))
    return 0


if __name__ == "__main__":
    sys.exit(main())
