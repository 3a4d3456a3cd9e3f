"""``GET /metrics`` and ``GET /healthz`` at a million instances: the time of one scrape.

Theory of operation: a sample of real rows is made through the library (``Jobs`` with the
scale file's Continuous, Debounce and Task jobs and a ``FakeClock``), then cloned in SQL, in one
transaction, into N instances with alarms spread over the next day (10% of the tasks idle,
0.1% parked, 0.1% of the Continuous instances failing). Only the setup writes SQL directly;
each timed call is a request to the dashboard's WSGI application (``make_app``: no server, so
the figure is the server's own time), which reads the store exactly as a scrape does.

Each scrape is timed twice: on the schema as it is (schema 5 on added the two indexes that
``durajobs.stores.sql.GAUGES`` is written for, ``instances_status`` and ``instances_erred``),
then with those two dropped (the statements below): what the indexes buy.

Run: ``python benchmarks/bench_metrics.py [--instances 1000000] [--repeat 9]
[--postgres URL]`` (``--postgres``: also copy the file into that empty PostgreSQL database and
time the same scrapes there). Figures are medians, with a warm page cache.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import apsw
import dj_app  # the scale file's jobs (shared with the daemon benchmarks)
from dj_app import Hook, Order, Tokens

from durajobs import FakeClock, Jobs
from durajobs.web import make_app

OUT_DIR = Path(__file__).resolve().parent / "out"
SCALE_JOBS = ("token_refresher", "webhooks", "orders")
WITHOUT_INDEXES = ("DROP INDEX instances_status", "DROP INDEX instances_erred")


def build(path: Path, instances: int, now: float) -> float:
    """The sample through the library, then ``instances`` rows cloned from it in SQL."""
    registry = {name: job for name, job in dj_app.registry().items() if name in SCALE_JOBS}
    with Jobs(path, registry, clock=FakeClock(now - 600), durability="normal") as jobs:
        for i in range(50):
            jobs.continuous("token_refresher").start(f"user-{i}", Tokens("", f"rt_{i:012d}"))
            jobs.debounce("webhooks").add(f"org-{i}/repo", Hook(f"org-{i}/repo", "push"))
            jobs.task("orders").send(f"o-{i}", Order(f"o-{i}", "paid", 1999 + i))
    started = time.perf_counter()
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA journal_mode=DELETE").fetchall()
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("BEGIN")
    conn.execute(
        "CREATE TEMP TABLE template AS SELECT row_number() OVER (ORDER BY instance_id) - 1 AS t, "
        "* FROM instances"
    )
    (templates,) = conn.execute("SELECT count(*) FROM temp.template").fetchall()[0]
    columns = [row[1] for row in conn.execute("PRAGMA table_info(instances)")]
    cloned = {
        "instance_id": "kind || ':' || job || ':' || printf('u%08d', n)",
        "user_id": "printf('u%08d', n)",
        "status": "CASE WHEN kind = 'task' AND n % 1000 = 7 THEN 'failed' "
        "WHEN kind = 'task' AND n % 10 = 3 THEN 'idle' ELSE status END",
        "state": "replace(state, user_id, printf('u%08d', n))",
        "due_at": "CASE WHEN kind = 'task' AND (n % 10 = 3 OR n % 1000 = 7) THEN NULL "
        "ELSE ?2 + (n * 7919) % 86400 + (n % 1000) / 1000.0 END",
        "run_count": "run_count + n % 50",
        "last_error": "CASE WHEN n % 1000 IN (7, 11) AND kind IN ('task', 'continuous') THEN "
        "'Traceback (most recent call last):' || char(10) || 'RuntimeError: upstream said no' END",
        "step": "step + n % 7",
    }
    conn.execute("DELETE FROM instances")
    conn.execute(
        f"""
        INSERT INTO instances ({", ".join(columns)})
        WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n < ?1 - 1)
        SELECT {", ".join(cloned.get(c, c) for c in columns)}
        FROM seq JOIN temp.template ON template.t = seq.n % ?3
        """,
        (instances, now, templates),
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.close()
    return time.perf_counter() - started


def get(app: Any, path: str) -> tuple[int, bytes]:
    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    seen: list[int] = []
    body = b"".join(app(environ, lambda status, headers: seen.append(int(status[:3]))))
    return seen[0], body


def scrape_ms(location: str, path: str, repeat: int) -> list[float]:
    """Milliseconds per request; the first (opening the connection) is not counted."""
    app = make_app(location)
    try:
        get(app, path)
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            status, _ = get(app, path)
            times.append((time.perf_counter() - started) * 1000.0)
            assert status in (200, 503), status
        return times
    finally:
        app.close()


def report(label: str, location: str, repeat: int) -> None:
    for path in ("/metrics", "/healthz"):
        ms = scrape_ms(location, path, repeat)
        print(
            f"  {label:<34} {path:<9} median {statistics.median(ms):8.1f} ms   "
            f"min {min(ms):8.1f}   max {max(ms):8.1f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--postgres", metavar="URL", help="an empty PostgreSQL database")
    parser.add_argument("--keep", action="store_true", help="keep the database file")
    args = parser.parse_args()

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-metrics-", dir=OUT_DIR))
    db = folder / "durajobs.db"
    try:
        seconds = build(db, args.instances, time.time())
        size = db.stat().st_size / 1e6
        print(f"made {args.instances:,} instances in {seconds:.1f} s: {size:,.0f} MB")
        print(f"server time per request, median of {args.repeat}:")
        report("SQLite, schema as it is", str(db), args.repeat)
        if args.postgres:
            import psycopg

            from durajobs.copy import copy_database

            copy_database(str(db), args.postgres)
            with psycopg.connect(args.postgres, autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE instances")
            report("PostgreSQL, schema as it is", args.postgres, args.repeat)
            with psycopg.connect(args.postgres, autocommit=True) as conn:
                for statement in WITHOUT_INDEXES:
                    conn.execute(statement)
                conn.execute("VACUUM ANALYZE instances")
            report("PostgreSQL, without the two indexes", args.postgres, args.repeat)
        conn = apsw.Connection(str(db))
        for statement in WITHOUT_INDEXES:
            conn.execute(statement)
        conn.close()
        report("SQLite, without the two indexes", str(db), args.repeat)
    finally:
        if args.keep:
            print(f"kept {db}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
