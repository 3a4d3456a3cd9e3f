"""``durajobs ls`` on a file with a million instances: first page latency and bytes per instance.

Theory of operation: a sample of real rows is made through the library (``Jobs`` with a
Continuous, a Debounce and a Task job and a ``FakeClock``), then cloned in SQL, in one
transaction, into N instances with distinct ids and alarms spread over a day (some idle, a few
parked), plus a few history records each. Only the setup writes SQL directly; every timed call
goes through the CLI: the library query (``Admin.ls``), the command in process (typer's click
command, output to a buffer), and the installed console script end to end (a subprocess,
Python start-up and imports included).

Run: ``python benchmarks/bench_ls.py [--instances 1000000] [--history 2] [--keep]``.
Figures are with a warm page cache (the file was just written).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import apsw
import dj_app  # the scale file's jobs (shared with the daemon benchmarks)
from dj_app import Hook, Order, Tokens

from durajobs import FakeClock, Jobs
from durajobs.admin import Admin
from durajobs.stores.sqlite.store import COLUMNS

OUT_DIR = Path(__file__).resolve().parent / "out"
SAMPLE_USERS = 50
SCALE_JOBS = ("token_refresher", "webhooks", "orders")


def build_sample(path: Path, start: float) -> None:
    """A few dozen instances of each kind, made by the library."""
    registry = {name: job for name, job in dj_app.registry().items() if name in SCALE_JOBS}
    clock = FakeClock(start)
    with Jobs(path, registry, clock=clock, durability="normal") as jobs:
        for i in range(SAMPLE_USERS):
            jobs.continuous("token_refresher").start(f"user-{i}", Tokens("", f"rt_{i:012d}"))
            jobs.debounce("webhooks").add(f"org-{i}/repo", Hook(f"org-{i}/repo", "push"))
            jobs.debounce("webhooks").add(f"org-{i}/repo", Hook(f"org-{i}/repo", "pull_request"))
            jobs.task("orders").send(f"o-{i}", Order(f"o-{i}", "paid", 1999 + i))


def clone(path: Path, instances: int, history_per_instance: int, now: float) -> float:
    """Clone the sample rows into ``instances`` rows (and history) in one transaction."""
    started = time.perf_counter()
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA journal_mode=DELETE").fetchall()
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-1000000")
    conn.execute("BEGIN")
    conn.execute(
        "CREATE TEMP TABLE template AS SELECT row_number() OVER (ORDER BY instance_id) - 1 AS t, "
        "* FROM instances"
    )
    (templates,) = conn.execute("SELECT count(*) FROM temp.template").fetchall()[0]
    # Alarms spread over the next day; 10% of tasks idle (no alarm), 0.1% parked after failing.
    conn.execute(
        """
        INSERT INTO instances
        WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n < ?1 - 1)
        SELECT
            kind || ':' || job || ':' || printf('u%08d', n), kind, job, printf('u%08d', n),
            CASE WHEN kind = 'task' AND n % 1000 = 7 THEN 'failed'
                 WHEN kind = 'task' AND n % 10 = 3 THEN 'idle' ELSE status END,
            replace(state, user_id, printf('u%08d', n)),
            CASE WHEN kind = 'task' AND (n % 10 = 3 OR n % 1000 = 7) THEN NULL
                 ELSE ?2 + (n * 7919) % 86400 + (n % 1000) / 1000.0 END,
            scheduled_for, anchor, reason, run_count + n % 50, attempt, event_count,
            created_at, started_at,
            CASE WHEN kind = 'task' AND n % 1000 = 7 THEN
                'Traceback (most recent call last):' || char(10) ||
                '  File "app/orders.py", line 42, in ship' || char(10) ||
                'RuntimeError: warehouse API rejected the order'
            END,
            step + n % 7, updated_at
        FROM seq JOIN temp.template ON template.t = seq.n % ?3
        """,
        (instances, now, templates),
    )
    if history_per_instance:
        conn.execute(
            """
            INSERT INTO history (instance_id, at, event, step, attempt, duration_ms, error, data)
            WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM k WHERE i < ?1 - 1)
            SELECT instance_id, ?2 - 3600 + i * 60, CASE i WHEN 0 THEN 'job.started'
                ELSE 'job.executed' END, 1 + i, 1, CASE i WHEN 0 THEN NULL ELSE 12.5 END,
                NULL, CASE i WHEN 0 THEN NULL ELSE '{"run_count":' || i || '}' END
            FROM instances JOIN k
            """,
            (history_per_instance, now),
        )
    conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.close()
    return time.perf_counter() - started


def timed(fn: Any, repeat: int) -> list[float]:
    """Milliseconds per call."""
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def summary(ms: list[float]) -> str:
    return f"median {statistics.median(ms):7.2f} ms   min {min(ms):7.2f}   max {max(ms):7.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--history", type=int, default=2, help="history records per instance")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the database file")
    args = parser.parse_args()

    from typer.main import get_command

    from durajobs.cli import app

    script = shutil.which("durajobs", path=str(Path(sys.executable).parent))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-ls-", dir=OUT_DIR))
    db = folder / "durajobs.db"
    try:
        now = time.time()
        t0 = time.perf_counter()
        build_sample(db, now - 600)
        sample_s = time.perf_counter() - t0
        clone_s = clone(db, args.instances, args.history, now)
        size = db.stat().st_size
        print(f"file: {db}")
        print(
            f"setup: sample through the library {sample_s:.2f} s, "
            f"clone {args.instances:,} instances + {args.history} history each {clone_s:.2f} s"
        )
        print(f"file size {size / 1e6:,.1f} MB = {size / args.instances:,.0f} bytes per instance")
        conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            tables = conn.execute(
                "SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC"
            ).fetchall()
            parts = ", ".join(f"{name} {b / args.instances:,.0f}" for name, b in tables[:6])
            print(f"  bytes per instance by b-tree: {parts}")
        except apsw.Error:
            pass  # dbstat not compiled in
        conn.close()

        with Admin(db) as admin:
            plan = admin.store.query(  # the statement Store.list_instances runs for a first page
                f"EXPLAIN QUERY PLAN SELECT {COLUMNS} FROM instances INDEXED BY instances_due "
                "WHERE 1 AND due_at IS NOT NULL ORDER BY due_at, instance_id LIMIT 51 OFFSET 0"
            )
            print("query plan (default ls page):", "; ".join(str(r[-1]) for r in plan))

        print(f"\nls first page (50 rows), {args.repeat} runs each:")

        def library() -> None:
            with Admin(db) as admin:
                assert len(admin.ls(limit=51)) == 51

        print(f"  library  Admin(path).ls()          {summary(timed(library, args.repeat))}")

        command = get_command(app)

        def in_process(*extra: str) -> None:
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(io.StringIO()):
                code = command.main(["--db", str(db), "ls", *extra], standalone_mode=False)
            if code:
                raise SystemExit(f"ls {' '.join(extra)} failed with exit code {code}")
            if not extra:
                assert buffer.getvalue().count("\n") == 51  # the header and 50 rows

        first = timed(in_process, 1)[0]
        print(f"  command  in process, first call     {first:7.2f} ms")
        runs = timed(in_process, args.repeat)
        print(f"  command  in process (ls)           {summary(runs)}")
        json_runs = timed(lambda: in_process("--json"), args.repeat)
        print(f"  command  in process (ls --json)    {summary(json_runs)}")
        for label, extra in (("--kind task", ("--kind", "task")), ("--due", ("--due",)),
                             ("--offset 100000", ("--offset", "100000"))):  # fmt: skip
            ms = timed(lambda extra=extra: in_process(*extra), 5)
            print(f"  command  in process (ls {label:<15}) {summary(ms)}")

        if script:
            env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}

            def end_to_end(*cmd: str) -> None:
                subprocess.run(
                    [script, *cmd],
                    check=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env=env,
                    timeout=60,
                )

            reps = max(5, args.repeat // 2)
            e2e = timed(lambda: end_to_end("--db", str(db), "ls"), reps)
            print(f"  script   `durajobs ls` end to end  {summary(e2e)}")
            base = timed(lambda: end_to_end("--version"), reps)
            print(f"  script   `durajobs --version`      {summary(base)}  (start-up + imports)")

        print("\nother commands at this size (in process, 3 runs):")
        for name in ("stats", "doctor"):
            cmd = ["--db", str(db), name]

            def other(cmd: list[str] = cmd) -> None:
                with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
                    command.main(cmd, standalone_mode=False)

            print(f"  {name:<8} {summary(timed(other, 3))}")
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
