"""durajobs on PostgreSQL: the benchmark table of issue 14, one run on one throwaway server.

Theory of operation: a throwaway cluster is started for the run (``tests/pgserver.py``: initdb
in a temp dir, TCP on 127.0.0.1 with a password; fsync on, as a real server) unless ``--url``
names a database to use (it must be empty; it is cleaned after each measurement; the peers
then share it). Every figure below is measured on that one server in that one run; compared
runs are interleaved round by round and medians are reported. Before every end-to-end and
lateness run the server makes a ``CHECKPOINT`` (none pays for the one before). Durability
is the default of each system everywhere: ``synchronous_commit=on`` (durajobs
``durability="full"``).

1. ``run_due`` group commit, FULL and NORMAL:

   - ``send``: ``N`` ``task.send`` calls of distinct instances, one after the other (each a
     claim, a read, a step, a commit, a release); calls/s;
   - ``run_due``: the same ``N`` instances, all due now, stepped by ``jobs.run_due()`` (one
     process, group commit); steps/s. Every step executes a no-op handler and commits the
     instance's new row and its history records. "before" is the same code with
     ``PostgresStore.batch_commit`` and ``AdvisoryClaims.batch_claims`` off;
   - ``floor``: the raw server on the same connection type: single-row ``UPDATE``s in
     autocommit (one transaction each) and 100 ``UPDATE``s per transaction, rows/s, no durajobs.

2. End to end (the daemons' throughput): ``K`` real daemons (``durajobs_daemon.py --app
   bench_postgres:jobs``, one worker each, ``--log-level warning``) are up (``READY=1`` on the
   ``NOTIFY_SOCKET`` we bind); a producer process (``bench_postgres.py produce-dj``) sends
   ``E`` events to ``E`` Task instances (``e2e``: ``on_event`` schedules ``execute`` now,
   ``execute`` is a no-op), one ``task.send`` (one transaction) each; tasks/s = ``E`` / (the
   first send .. the first poll, every 5 ms, that finds every instance made and none due).
   ``K`` = 1 and 2, interleaved with the peers (5). Then all again with ``--batch`` (100)
   events per transaction (``task.send_many``): one transaction per send makes the producer
   the bottleneck; batched, the daemons are.

3. Alarm lateness through LISTEN/NOTIFY: one daemon; a producer process sends at ``--rate``/s
   for ``--late-seconds`` events whose ``on_event`` schedules ``execute`` 200 ms ahead at an
   absolute time (the daemon learns of each new alarm by a notification: it has no other reason
   to wake); ``execute`` first appends ``time.time() - due`` to a file. p50/p99/max, after
   ``WARMUP_ALARMS`` alarms that are not counted (a started daemon's first steps are slower:
   their lateness is reported apart). Meanwhile a bare process (``timer-floor``) sleeps until
   due times on the same schedule and records its own lateness (the machine's noise in the
   same window) and, committing one row at each due time, when that commit returned (the
   server's and disk's noise: a worker's step commit sits between two alarms). Then again
   with alarms due at once (``ahead`` 0: the send, its commit and the notification are
   inside the figure). ``--rounds`` rounds of each,
   interleaved; the median of each percentile over the rounds. Measured twice: first, on a
   server that has done nothing yet, and again after the write-heavy phases (1, 2, 5).

4. Takeover after ``kill -9``: daemon A runs ``hang-k``'s ``execute``, which sleeps an hour on
   its first entry (an ``O_EXCL`` marker file tells the first entry from later ones); daemon B
   is started and ready; A's process group (daemon and worker) is killed with SIGKILL; the
   takeover time is from just before the kill to B's entry into the same handler (its first
   act records ``time.time()``). B is A of the next trial. Median of ``--trials``.

5. Side by side, the same workload as (2) with one worker process per system, on its own
   database of the same server: ``E`` jobs enqueued one per transaction by a producer process
   while the worker runs; no-op handlers; tasks/s from the first enqueue to the first poll
   that finds the producer done and nothing left to run. Each peer as its documentation runs
   it, with its defaults:

   - pgqueuer: schema by ``Queries.install()`` (durable tables), the worker ``pgq run
     bench_postgres:pgq_factory``'s work through ``pgqueuer.run`` (``bench_postgres.py
     pgq-worker``: pgqueuer 1.6's ``pgq run`` fails with this venv's typer) (a ``PgQueuer`` on a
     ``PsycopgDriver``, an async no-op entrypoint; batch size 10, the default), the producer
     ``Queries.enqueue("noop", None)`` per job; done when its queue table is empty (finished
     jobs leave it);
   - procrastinate: ``App(connector=PsycopgConnector(...))``, schema by
     ``schema_manager.apply_schema()``, the worker ``app.run_worker()`` (concurrency 1, the
     default; LISTEN/NOTIFY on), the producer ``noop.defer()`` per job in ``app.open()``;
     done when every job's status is ``succeeded``.

   Batched: ``Queries.enqueue`` of lists and ``Task.batch_defer``, ``--batch`` jobs per call.
   Each is warmed up (one job run) before the timed run; each run is bounded in count (``E``)
   and time (``--max-seconds``); a system that cannot run is recorded with its error.

6. Draining a backlog (1 vs 2 workers, 1 vs 2 daemons): ``--backlog`` due Task steps
   (``e2e``'s ``execute``, made by ``send_many`` while the job is paused; the job is resumed
   once the daemons are ready) are drained by one daemon
   of one worker, one daemon of two workers, and two daemons of one worker each, interleaved
   over ``--rounds`` rounds; tasks/s from the moment the daemons are ready to the first poll
   (every 5 ms, reading the due index) that finds none due; the shares of the machine's CPU
   taken by the server's processes and by everything meanwhile. No producer runs: the
   workers' own throughput, which the end-to-end runs hide behind their producer.

Every subprocess runs in its own process group and is killed by group when its ``with`` block
ends (``common.managed_process``); helpers also arm ``alarm()`` so they end by themselves.

Run: ``python benchmarks/bench_postgres.py [--quick] [--url postgresql://...]``; prints the
table, writes ``benchmarks/RESULTS-postgres.md`` (``--quick``: ``benchmarks/out/``) and
``benchmarks/out/bench_postgres.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO / "tests"))  # pgserver
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH_DIR))  # common

import attrs  # noqa: E402
from common import latency_summary, managed_process, paced, wait_until  # noqa: E402

from durajobs import Jobs, Task  # noqa: E402

DAEMON = REPO / "durajobs_daemon.py"
HELPER_LIFETIME = 900  # seconds: a helper process ends by itself after this
WARMUP_ALARMS = 3  # alarms run before lateness is measured (not counted)


@attrs.define
class Due:
    at: float = 0.0


@attrs.define
class Item:
    n: int = 0


def on_event(event: Due, ctx: Any) -> None:
    ctx.state = event
    ctx.schedule(datetime.fromtimestamp(event.at, UTC))


def execute(ctx: Any) -> None:
    del ctx  # a no-op handler: the benchmark measures durajobs and the server


def e2e_on_event(event: Item, ctx: Any) -> None:
    ctx.schedule(timedelta(0))


def late_execute(ctx: Any) -> None:
    lateness = time.time() - ctx.state.at  # first thing: the start of the handler - due
    _append(f"{lateness!r}\n")


def hang_execute(ctx: Any) -> None:
    entered = time.time()
    marker = f"{os.environ['PGB_OUT']}.{ctx.id}"
    try:
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        _append(f"{ctx.id} {entered!r} {os.getpid()}\n")  # a later entry: the takeover
        return
    time.sleep(3600)  # the first entry: its daemon is killed in here


def _append(line: str) -> None:
    fd = os.open(os.environ["PGB_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


REGISTRY = {
    "task": Task(state=Due, event=Due, on_event=on_event, execute=execute),
    "e2e": Task(state=Item, event=Item, on_event=e2e_on_event, execute=execute),
    "late": Task(state=Due, event=Due, on_event=on_event, execute=late_execute),
    "hang": Task(state=Due, event=Due, on_event=on_event, execute=hang_execute),
}


def __getattr__(name: str) -> Any:
    """``jobs``: the daemons' app (``--app bench_postgres:jobs``), on ``$PGB_URL``, made on
    first access so that importing this module opens nothing."""
    if name == "jobs":
        made = Jobs(os.environ["PGB_URL"], REGISTRY, durability=os.environ["PGB_DURABILITY"])
        globals()["jobs"] = made
        return made
    raise AttributeError(name)


# =========================================================================== run_due


def clean(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE instances, history, inbox, event_keys")
        conn.execute("VACUUM ANALYZE instances")
        conn.execute("VACUUM ANALYZE history")


def batching(on: bool) -> None:
    """Group commit in one statement per table, claims and reads of a group in one round trip
    each (``on``), or one statement per write and a claim and a read per step (the "before")."""
    from durajobs.stores.postgres.claims import AdvisoryClaims
    from durajobs.stores.postgres.store import PostgresStore

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


PARSED = re.compile(r'\tParse\t "[^"]*" (".*") \d+( \d+)*$')  # a libpq trace's Parse line


def round_trips(url: str, n: int = 50) -> dict[str, float]:
    """Round trips per ``task.send`` (a new instance, then one that exists) and per
    ``run_due`` step: every connection the process opens is traced by libpq
    (``PGconn.trace``); a round trip is a run of messages the client sends followed by the
    server's answer (a pipeline of many statements before one answer counts once). A run that
    only holds statements the client posts without waiting for their answer (``Link.post``:
    a claim's release, a wake-up) is counted apart, as ``posted``."""
    import psycopg

    from durajobs.stores.postgres import claims, store

    posted_sql = {
        f'"{v.decode()}"' for m in (claims, store) for k, v in vars(m).items()
        if k.startswith("POST_")
    }  # fmt: skip

    traces: list[Any] = []
    connect = psycopg.connect

    def traced(*args: Any, **kwargs: Any) -> Any:
        conn = connect(*args, **kwargs)
        trace = tempfile.TemporaryFile("w+")  # noqa: SIM115  (closed in finally)
        conn.pgconn.trace(trace.fileno())
        conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        traces.append(trace)
        return conn

    def counted(work: Any) -> tuple[int, int]:
        marks = [(t, os.lseek(t.fileno(), 0, os.SEEK_END)) for t in traces]
        work()
        waited = posted = 0
        for trace, start in [*marks, *((t, 0) for t in traces[len(marks) :])]:
            os.lseek(trace.fileno(), start, os.SEEK_SET)
            last, parsed = "", []
            for line in os.read(trace.fileno(), 1 << 26).decode(errors="replace").splitlines():
                side = line.partition("\t")[0]
                found = PARSED.search(line) if side == "F" else None
                if found:
                    parsed.append(found.group(1))
                if side == "B" and last == "F":
                    if parsed and all(text in posted_sql for text in parsed):
                        posted += 1
                    else:
                        waited += 1
                    parsed = []
                if side in ("F", "B"):
                    last = side
        return waited, posted

    psycopg.connect = traced  # type: ignore[assignment]
    try:
        with Jobs(url, REGISTRY, wake=False) as jobs:
            task = jobs.task("task")
            past = Due(time.time() - 1.0)
            task.send("warm", past)
            new = counted(lambda: [task.send(f"u{i}", past) for i in range(n)])
            jobs.run_due()
            again = counted(lambda: [task.send(f"u{i}", past) for i in range(n)])
            due = counted(jobs.run_due)
    finally:
        psycopg.connect = connect  # type: ignore[assignment]
        for trace in traces:
            trace.close()
    clean(url)
    return {
        "send_new": new[0] / n, "send": again[0] / n, "run_due": due[0] / n,
        "send_posted": again[1] / n, "run_due_posted": due[1] / n,
    }  # fmt: skip


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


# =========================================================================== processes


def child_env(url: str, out: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a daemon or helper: this module importable, its database and file."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")])),
        "PGB_URL": url,
        "PGB_DURABILITY": "full",
        "PGB_OUT": str(out or os.devnull),
        **extra,
    }
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"):
        env.pop(key, None)
    return env


@contextlib.contextmanager
def daemon(
    url: str, base: Path, out: Path | None = None, *, timeout: float = 60.0, workers: int = 1
) -> Iterator[subprocess.Popen[bytes]]:
    """A real daemon (``workers`` worker processes) on ``url``, ready (``READY=1`` received)
    when yielded."""
    stamp = time.monotonic_ns()
    notify_path = base / f"notify-{stamp}.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(0.05)
    log = base / f"daemon-{stamp}.log"
    env = {**child_env(url, out), "NOTIFY_SOCKET": str(notify_path)}
    cmd = [sys.executable, str(DAEMON), "--app", "bench_postgres:jobs", "--log-level", "warning",
           "--workers", str(workers)]  # fmt: skip
    try:
        with managed_process(cmd, env=env, stderr_path=log, stdout_pipe=False) as proc:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"daemon exited {proc.returncode}: {_tail(log)}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"daemon not ready within {timeout} s: {_tail(log)}")
                with contextlib.suppress(TimeoutError):
                    if b"READY=1" in notify.recv(4096):
                        break
            notify.close()  # nobody reads later STATUS= datagrams: a full queue would block it
            notify_path.unlink()
            yield proc
    finally:
        notify.close()
        with contextlib.suppress(FileNotFoundError):
            notify_path.unlink()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def helper(*args: str, timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``bench_postgres.py ARGS`` to completion; the JSON object on its last stdout line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    with managed_process(cmd, env=env) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise TimeoutError(f"{args[0]} did not finish within {timeout} s") from exc
        if proc.returncode != 0:
            tail = err.decode(errors="replace").strip().splitlines()[-12:]
            raise RuntimeError(f"{args[0]} exited {proc.returncode}: " + " | ".join(tail))
        lines = [line for line in out.decode().splitlines() if line.strip()]
        return dict(json.loads(lines[-1]))


ADMIN: list[str] = []  # a superuser URL for CHECKPOINT (our throwaway server), if any
SERVER_DATA: list[str] = []  # our throwaway server's data directory (its CPU is measured)


def _cpu_seconds() -> tuple[float, float]:
    """(CPU seconds of our server's processes, busy CPU seconds of the whole machine), so far;
    the server's are 0 without a throwaway server (``--url``)."""
    tick = os.sysconf("SC_CLK_TCK")
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    busy = (sum(map(int, fields)) - int(fields[3]) - int(fields[4])) / tick  # minus idle, iowait
    if not SERVER_DATA:
        return 0.0, busy
    postmaster = int(Path(SERVER_DATA[0], "postmaster.pid").read_text().split()[0])
    server = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid, rest = stat.read_text().split(" (", 1)
            parts = rest.rsplit(")", 1)[1].split()
            if int(pid) == postmaster:  # with its ended children's (sessions that closed)
                server += sum(int(x) for x in parts[11:15]) / tick
            elif int(parts[1]) == postmaster:  # parts[1]: the ppid
                server += (int(parts[11]) + int(parts[12])) / tick
    return server, busy


def settle(url: str) -> None:
    """CHECKPOINT before a measurement, so that none pays for the dirty pages and WAL of the
    one before (as superuser on our own server; tried as the role with ``--url``)."""
    import psycopg

    with contextlib.suppress(psycopg.Error), psycopg.connect((ADMIN or [url])[0]) as conn:
        conn.autocommit = True
        conn.execute("CHECKPOINT")


def checkpoints(url: str) -> int:
    """Checkpoints the server has made so far (timed and requested)."""
    (count,) = query(url, "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter")
    return int(count)


def query(url: str, sql: str) -> tuple[Any, ...]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(sql.encode()).fetchone()
    assert row is not None
    return tuple(row)


# =========================================================================== the systems


class System:
    """One system under the end-to-end workload: its worker(s), its producer, its done test."""

    name = ""

    def __init__(self, url: str, base: Path) -> None:
        self.url = url
        self.base = base

    def prepare(self) -> None:
        """Create the schema (once)."""

    def clean(self) -> None:
        """Empty the tables (no worker running)."""

    def workers(self) -> contextlib.AbstractContextManager[object]:
        raise NotImplementedError

    def produce(self, n: int, prefix: str, timeout: float) -> dict[str, Any]:
        return helper(f"produce-{self.kind}", "--url", self.url, "--n", str(n),
                      "--prefix", prefix, timeout=timeout)  # fmt: skip

    def left(self, n: int) -> int:
        """How many of the ``n`` jobs enqueued so far are not done (-1: not all visible)."""
        raise NotImplementedError

    def check(self, n: int) -> None:
        """After a run: every one of the ``n`` jobs ran, once."""

    kind = ""


class Durajobs(System):
    kind = "dj"

    def __init__(self, url: str, base: Path, daemons: int, workers: int = 1) -> None:
        super().__init__(url, base)
        self.daemons = daemons
        self.workers_each = workers
        self.name = f"durajobs, {daemons} daemon{'s' if daemons > 1 else ''}" + (
            f" of {workers} workers" if workers > 1 else ""
        )

    def prepare(self) -> None:
        Jobs(self.url, REGISTRY).close()

    def clean(self) -> None:
        clean(self.url)

    @contextlib.contextmanager
    def workers(self) -> Iterator[object]:
        with contextlib.ExitStack() as stack:
            for _ in range(self.daemons):
                stack.enter_context(daemon(self.url, self.base, workers=self.workers_each))
            yield None

    def left(self, n: int) -> int:
        rows, pending = query(
            self.url, "SELECT count(*), count(due_at) FROM instances WHERE job = 'e2e'"
        )
        return int(pending) if rows == n else -1

    def check(self, n: int) -> None:
        with Jobs(self.url, REGISTRY, wake=False) as jobs:
            task = jobs.task("e2e")
            (ids,) = query(self.url, "SELECT array_agg(user_id) FROM instances WHERE job = 'e2e'")
            for user_id in ids[:: max(1, len(ids) // 50)]:
                count = task.status(user_id).execute_count
                if count != 1:
                    raise RuntimeError(f"{user_id} executed {count} times")


class Pgqueuer(System):
    kind = "pgq"
    name = "pgqueuer"

    def prepare(self) -> None:
        async def install() -> None:
            import psycopg
            from pgqueuer import PsycopgDriver, Queries

            conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
            async with conn:
                queries = Queries(PsycopgDriver(conn))
                if not await queries.schema_is_installed():
                    await queries.install()

        asyncio.run(install())

    def clean(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            tables = [r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE tablename LIKE 'pgqueuer%'")]  # fmt: skip
            conn.execute(("TRUNCATE " + ", ".join(tables)).encode())

    @contextlib.contextmanager
    def workers(self) -> Iterator[object]:
        # ``pgq run bench_postgres:pgq_factory``'s work, by ``pgqueuer.run`` (pgqueuer 1.6's
        # ``pgq run`` fails at start with the typer this venv has: its --log-level parser).
        cmd = [sys.executable, str(Path(__file__).resolve()), "pgq-worker"]
        log = self.base / f"pgq-{time.monotonic_ns()}.log"
        with managed_process(cmd, env=child_env(self.url), stderr_path=log,
                             stdout_pipe=False) as proc:  # fmt: skip
            yield proc
            if proc.poll() is not None:
                raise RuntimeError(f"pgq run exited {proc.returncode}: {_tail(log)}")

    def left(self, n: int) -> int:
        (queued,) = query(self.url, "SELECT count(*) FROM pgqueuer")
        return int(queued)

    def check(self, n: int) -> None:
        (failed,) = query(
            self.url, "SELECT count(*) FROM pgqueuer_log WHERE status::text NOT IN "
            "('queued', 'picked', 'successful')"
        )  # fmt: skip
        if failed:
            raise RuntimeError(f"pgqueuer: {failed} jobs did not succeed")


class Procrastinate(System):
    kind = "proc"
    name = "procrastinate"

    def prepare(self) -> None:
        app = proc_app(self.url)
        with app.open():
            app.schema_manager.apply_schema()

    def clean(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("TRUNCATE procrastinate_jobs CASCADE")

    @contextlib.contextmanager
    def workers(self) -> Iterator[object]:
        cmd = [sys.executable, str(Path(__file__).resolve()), "proc-worker", "--url", self.url]
        log = self.base / f"proc-{time.monotonic_ns()}.log"
        with managed_process(cmd, env=child_env(self.url), stderr_path=log,
                             stdout_pipe=False) as proc:  # fmt: skip
            yield proc
            if proc.poll() is not None:
                raise RuntimeError(f"procrastinate worker exited {proc.returncode}: {_tail(log)}")

    def left(self, n: int) -> int:
        total, done = query(
            self.url,
            "SELECT count(*), count(*) FILTER (WHERE status = 'succeeded') FROM procrastinate_jobs",
        )
        return int(total - done) if total == n else -1

    def check(self, n: int) -> None:
        (bad,) = query(
            self.url, "SELECT count(*) FROM procrastinate_jobs WHERE status <> 'succeeded'"
        )
        if bad:
            raise RuntimeError(f"procrastinate: {bad} jobs did not succeed")


@contextlib.asynccontextmanager
async def pgq_factory() -> AsyncIterator[Any]:
    """pgqueuer's worker (``pgq run bench_postgres:pgq_factory``): a no-op entrypoint."""
    import psycopg
    from pgqueuer import PgQueuer, PsycopgDriver

    conn = await psycopg.AsyncConnection.connect(os.environ["PGB_URL"], autocommit=True)
    async with conn:
        manager = PgQueuer(PsycopgDriver(conn))

        @manager.entrypoint("noop")
        async def noop(job: Any) -> None:
            del job

        yield manager


def proc_app(url: str) -> Any:
    """procrastinate's app with a no-op task ``noop``."""
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="noop")
    async def noop(n: int) -> None:
        del n

    return app


# =========================================================================== end to end


def end_to_end(
    system: System, n: int, max_seconds: float, prefix: str, batch: int = 1
) -> tuple[float, float, tuple[float, float]]:
    """Tasks/s: ``n`` jobs enqueued by a producer process (``batch`` per transaction) while the
    worker(s) run; the producer's own enqueue rate; and the shares of the machine's CPU
    (``os.cpu_count()`` cores) that the server's processes and everything took meanwhile."""
    system.clean()
    settle(system.url)
    with system.workers():
        helper(*_produce_args(system, 1, f"warm{prefix}"), timeout=60)  # warm-up and readiness
        if not wait_until(lambda: system.left(1) == 0, timeout=60, interval=0.005):
            raise RuntimeError(f"{system.name}: the warm-up job did not run within 60 s")
        (server0, busy0), started = _cpu_seconds(), time.perf_counter()
        produced = helper(*_produce_args(system, n, prefix), "--batch", str(batch),
                          timeout=max_seconds)  # fmt: skip
        if not wait_until(lambda: system.left(n + 1) == 0, timeout=max_seconds, interval=0.005):
            raise RuntimeError(f"{system.name}: {system.left(n + 1)} of {n} left after the limit")
        done = time.time()
        (server1, busy1), elapsed = _cpu_seconds(), time.perf_counter() - started
    system.check(n + 1)
    capacity = elapsed * (os.cpu_count() or 1)
    shares = ((server1 - server0) / capacity, (busy1 - busy0) / capacity)
    return n / (done - produced["first"]), produced["enqueue_per_s"], shares


def drain(url: str, base: Path, n: int, daemons: int, workers: int) -> dict[str, float]:
    """Phase 6: ``n`` due steps made with no daemon up, then drained by ``daemons`` daemons of
    ``workers`` workers: tasks/s from their readiness to nothing due, and the CPU shares."""
    clean(url)
    with Jobs(url, REGISTRY, wake=False) as jobs:
        jobs.pause("e2e")  # held until every daemon is ready
        task = jobs.task("e2e")
        for start in range(0, n, 1000):
            task.send_many([(f"d-{i}", Item(i)) for i in range(start, min(n, start + 1000))])
    settle(url)
    with contextlib.ExitStack() as stack:
        for _ in range(daemons):
            stack.enter_context(daemon(url, base, workers=workers))
        (server0, busy0), started = _cpu_seconds(), time.perf_counter()
        with Jobs(url, REGISTRY) as jobs:
            jobs.resume("e2e")  # (its wake-up starts every daemon)
        due = "SELECT count(*) FROM instances WHERE due_at IS NOT NULL AND job = 'e2e'"
        if not wait_until(lambda: query(url, due)[0] == 0, timeout=300, interval=0.005):
            raise RuntimeError(f"{query(url, due)[0]} of {n} still due after 300 s")
        (server1, busy1), elapsed = _cpu_seconds(), time.perf_counter() - started
    capacity = elapsed * (os.cpu_count() or 1)
    return {"rate": n / elapsed, "server": (server1 - server0) / capacity,
            "busy": (busy1 - busy0) / capacity}  # fmt: skip


DRAINS = ((1, 1), (1, 2), (2, 1))  # (daemons, workers each)


def drain_rounds(url: str, base: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``args.rounds`` rounds of phase 6, the three configurations interleaved; medians."""
    runs: dict[str, list[dict[str, float]]] = {f"{d}x{w}": [] for d, w in DRAINS}
    for _ in range(args.rounds):
        for d, w in DRAINS:
            runs[f"{d}x{w}"].append(drain(url, base, args.backlog, d, w))
            _progress(f"drain {d} daemons x {w} workers: {runs[f'{d}x{w}'][-1]['rate']:,.0f}/s")
    return {
        name: {**{k: statistics.median(r[k] for r in rs) for k in rs[0]},
               "rates": [r["rate"] for r in rs]}
        for name, rs in runs.items()
    }  # fmt: skip


def _produce_args(system: System, n: int, prefix: str) -> list[str]:
    return [f"produce-{system.kind}", "--url", system.url, "--n", str(n), "--prefix", prefix]


def produce_main(kind: str, url: str, n: int, prefix: str, batch: int) -> dict[str, float]:
    """A producer process: ``n`` jobs, ``batch`` per transaction (each library's one-call batch
    API when ``batch`` > 1); first and last enqueue times."""
    signal.alarm(HELPER_LIFETIME)
    chunks = [range(i, min(n, i + batch)) for i in range(0, n, batch)]
    if kind == "dj":
        with Jobs(url, REGISTRY) as jobs:
            task = jobs.task("e2e")
            first = time.time()
            if batch == 1:
                for i in range(n):
                    task.send(f"{prefix}-{i}", Item(i))
            else:
                for chunk in chunks:
                    task.send_many([(f"{prefix}-{i}", Item(i)) for i in chunk])
            last = time.time()
    elif kind == "pgq":

        async def enqueue() -> tuple[float, float]:
            import psycopg
            from pgqueuer import PsycopgDriver, Queries

            conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
            async with conn:
                queries = Queries(PsycopgDriver(conn))
                first = time.time()
                if batch == 1:
                    for _ in range(n):
                        await queries.enqueue("noop", None)
                else:
                    for chunk in chunks:
                        k = len(chunk)
                        await queries.enqueue(["noop"] * k, [None] * k, [0] * k)
                return first, time.time()

        first, last = asyncio.run(enqueue())
    else:
        app = proc_app(url)
        with app.open():
            noop = app.tasks["noop"]
            first = time.time()
            if batch == 1:
                for i in range(n):
                    noop.defer(n=i)
            else:
                for chunk in chunks:
                    noop.batch_defer(*({"n": i} for i in chunk))
            last = time.time()
    return {"first": first, "last": last, "enqueue_per_s": n / max(last - first, 1e-9)}


# =========================================================================== lateness


def lateness(url: str, base: Path, rate: float, seconds: float, ahead: float) -> dict[str, float]:
    """One daemon; alarms set ``ahead`` s ahead by a producer process at ``rate``/s. Meanwhile a
    bare process (``timer-floor``) sleeps until the same kind of due times and records its own
    lateness: the machine's wake-up noise in the same window, no database, no durajobs."""
    clean(url)
    settle(url)
    before = checkpoints(url)
    out = base / f"late-{time.monotonic_ns()}.txt"
    out.touch()
    timer_cmd = [sys.executable, str(Path(__file__).resolve()), "timer-floor", "--url", url,
                 "--rate", str(rate), "--seconds", str(seconds), "--ahead",
                 str(max(ahead, 0.2))]  # fmt: skip
    with daemon(url, base, out):
        with Jobs(url, REGISTRY) as jobs:  # warm-up: a started daemon's first steps are slower
            for i in range(WARMUP_ALARMS):
                jobs.task("late").send(f"warm-{i}", Due(time.time() + 0.05))
                if not wait_until(lambda i=i: len(out.read_text().splitlines()) > i, timeout=30):
                    raise RuntimeError("lateness: a warm-up alarm did not run")
        warm = [float(line) * 1000 for line in out.read_text().splitlines()]
        out.write_text("")  # handlers append (O_APPEND): the measured alarms start here
        with managed_process(timer_cmd) as timer:
            made = helper("produce-late", "--url", url, "--rate", str(rate), "--seconds",
                          str(seconds), "--ahead", str(ahead), timeout=seconds + 60)  # fmt: skip
            sent = int(made["sent"])
            wait_until(lambda: len(out.read_text().splitlines()) >= sent, timeout=30)
            timer_out, _ = timer.communicate(timeout=seconds + 30)
    samples = [float(line) for line in out.read_text().splitlines()]
    if len(samples) != sent:
        raise RuntimeError(f"lateness: {len(samples)} handlers ran of {sent} alarms")
    bare = json.loads(timer_out.decode().splitlines()[-1])
    summary = latency_summary(samples)
    return {**{k: v * 1000 for k, v in summary.items() if k != "n"}, "n": sent,
            "rate": made["rate"], "bare_p50": bare["p50"] * 1000,
            "bare_p99": bare["p99"] * 1000, "bare_max": bare["max"] * 1000,
            "warm_up": warm, "checkpoints": checkpoints(url) - before,
            "commit_p50": bare["commit"]["p50"] * 1000, "commit_p99": bare["commit"]["p99"] * 1000,
            "commit_max": bare["commit"]["max"] * 1000}  # fmt: skip


def timer_floor_main(url: str, rate: float, seconds: float, ahead: float) -> dict[str, Any]:
    """A bare process sleeping until due times ``ahead`` s after a ``rate``/s schedule, and
    committing one single-row ``UPDATE`` (autocommit, ``synchronous_commit=on``) at each: its
    wake-up lateness, and how long after the due time that commit returned."""
    import psycopg

    signal.alarm(HELPER_LIFETIME)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS late_probe (id int PRIMARY KEY, n bigint)")
        conn.execute("INSERT INTO late_probe VALUES (1, 0) ON CONFLICT DO NOTHING")
        start = time.time()
        woke, committed = [], []
        for i in range(int(rate * seconds)):
            due = start + i / rate + ahead
            if due > time.time():
                time.sleep(due - time.time())
            woke.append(time.time() - due)
            conn.execute("UPDATE late_probe SET n = n + 1 WHERE id = 1")
            committed.append(time.time() - due)
    return {**latency_summary(woke), "commit": latency_summary(committed)}


def produce_late_main(url: str, rate: float, seconds: float, ahead: float) -> dict[str, float]:
    signal.alarm(HELPER_LIFETIME)
    count = int(rate * seconds)
    with Jobs(url, REGISTRY) as jobs:
        send = jobs.task("late").send
        started = time.perf_counter()
        sent = 0
        for i in paced(rate, count, max_seconds=seconds * 2):
            send(f"l{i}", Due(time.time() + ahead))
            sent += 1
        took = time.perf_counter() - started
    return {"sent": sent, "rate": sent / took}


# =========================================================================== takeover


def takeover(url: str, base: Path, trials: int) -> list[float]:
    """Seconds from ``kill -9`` of the daemon inside ``hang-k``'s handler to the survivor's entry
    into it; daemon B of one trial is daemon A of the next."""
    clean(url)
    out = base / f"takeover-{time.monotonic_ns()}.txt"
    out.touch()
    times: list[float] = []
    with contextlib.ExitStack() as stack, Jobs(url, REGISTRY) as jobs:
        first = stack.enter_context(daemon(url, base, out))
        for k in range(trials):
            user_id = f"hang-{k}"
            jobs.task("hang").send(user_id, Due(time.time()))
            marker = Path(f"{out}.{user_id}")
            if not wait_until(marker.exists, timeout=30):
                raise RuntimeError(f"{user_id}: the handler was not entered")
            second = stack.enter_context(daemon(url, base, out))
            killed = time.time()
            os.killpg(first.pid, signal.SIGKILL)  # the daemon and its worker, mid-handler
            first.wait(timeout=30)
            entries: list[str] = []

            def entered(user_id: str = user_id, found: list[str] = entries) -> bool:
                found[:] = [
                    ln for ln in out.read_text().splitlines() if ln.startswith(user_id + " ")
                ]
                return bool(found)

            if not wait_until(entered, timeout=30, interval=0.001):
                raise RuntimeError(f"{user_id}: not taken over within 30 s")
            times.append(float(entries[0].split()[1]) - killed)
            first = second
    return times


# =========================================================================== the run


def machine(url: str) -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    (server,) = query(url, "SELECT version()")

    def ver(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    return {
        "CPU": f"{cpu}, {os.cpu_count()} cores",
        "kernel": f"{platform.system()} {platform.release()}",
        "load average at start": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "Python": platform.python_version(),
        "PostgreSQL": str(server).split(" on ")[0],
        "psycopg": ver("psycopg"),
        "durajobs": f"{ver('durajobs')} (git {rev})",
        "pgqueuer": ver("pgqueuer"),
        "procrastinate": ver("procrastinate"),
    }


def run_all(args: argparse.Namespace, url: str, peer_urls: dict[str, str]) -> dict[str, Any]:
    res: dict[str, Any] = {"machine": machine(url), "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="bench-pg-", dir=_out_dir()) as tmp:
        base = Path(tmp)
        Jobs(url, REGISTRY).close()  # create the schema

        # 3. Lateness through LISTEN/NOTIFY, first: on a server that has done nothing yet.
        res["lateness"], res["lateness_now"] = late_phase(url, base, args)

        # 1. run_due group commit vs the raw floor.
        group: dict[str, dict[str, float]] = {}
        for durability in ("full", "normal"):
            runs = []
            for _ in range(args.repeat):  # before and after interleaved: the same conditions
                batching(False)
                before = measure(url, args.n, durability)
                batching(True)
                after = measure(url, args.n, durability)
                fl = floor(url, args.n, durability)
                runs.append({
                    "send_before": before["send"], "run_due_before": before["run_due"],
                    **after, **fl, "ratio": after["run_due"] / fl["floor_single"],
                })  # fmt: skip
            group[durability] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            group[durability]["ratios"] = [r["ratio"] for r in runs]  # type: ignore[assignment]
        res["run_due"] = group
        res["round_trips"] = round_trips(url)
        _progress(f"run_due: {group['full']['ratio']:.1f}x FULL; round trips {res['round_trips']}")

        # 2 and 5. End to end, durajobs with 1 and 2 daemons and the peers, interleaved.
        systems: list[System] = [
            Durajobs(url, base, 1),
            Durajobs(url, base, 2),
            Durajobs(url, base, 1, workers=2),
        ]
        errors: dict[str, str] = {}
        for peer in (Pgqueuer(peer_urls["pgq"], base), Procrastinate(peer_urls["proc"], base)):
            try:
                peer.prepare()
                systems.append(peer)
            except Exception as exc:  # recorded: a peer that cannot run here
                errors[peer.name] = f"{type(exc).__name__}: {exc}"
        for key, batch in (("e2e", 1), ("e2e_batch", args.batch)):
            res[key] = e2e_rounds(systems, args, batch, errors)
        for system in systems:  # nothing left for autovacuum to chew on during what follows
            system.clean()

        # 6. Draining a backlog: 1 vs 2 workers, 1 vs 2 daemons.
        res["drain"] = drain_rounds(url, base, args)
        clean(url)

        # 3. Lateness through LISTEN/NOTIFY, again after the write-heavy phases.
        res["lateness_after"], res["lateness_now_after"] = late_phase(url, base, args)

        # 4. Takeover after kill -9.
        trials = takeover(url, base, args.trials)
        res["takeover"] = {"median": statistics.median(trials), "trials": trials}
        _progress(f"takeover {res['takeover']}")
    res["machine"]["load average at end"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return res


def e2e_rounds(
    systems: list[System], args: argparse.Namespace, batch: int, errors: dict[str, str]
) -> dict[str, Any]:
    """``args.rounds`` rounds of every system's end-to-end run, interleaved; medians, ratios."""
    rates: dict[str, list[float]] = {s.name: [] for s in systems}
    enqueue: dict[str, list[float]] = {s.name: [] for s in systems}
    cpu: dict[str, list[tuple[float, float]]] = {s.name: [] for s in systems}
    failed: dict[str, str] = {}
    for round_no in range(args.rounds):
        for system in systems:
            if system.name in errors or system.name in failed:
                continue
            try:
                rate, sent, shares = end_to_end(
                    system, args.tasks, args.max_seconds, f"b{batch}r{round_no}", batch
                )
                cpu[system.name].append(shares)
            except Exception as exc:
                failed[system.name] = f"{type(exc).__name__}: {exc}"[:400]
                continue
            rates[system.name].append(rate)
            enqueue[system.name].append(sent)
            _progress(f"e2e batch {batch} round {round_no}: {system.name}: {rate:,.0f} tasks/s")
    medians = {k: statistics.median(v) for k, v in rates.items() if v}
    dj = rates[systems[0].name]
    ratios = {
        s.name: statistics.median(a / b for a, b in zip(dj, rates[s.name], strict=False))
        for s in systems if not isinstance(s, Durajobs) and rates[s.name] and dj
    }  # fmt: skip
    return {"batch": batch, "rates": rates, "errors": {**errors, **failed}, "median": medians,
            "enqueue": enqueue, "ratio_to_peer": ratios, "cpu": cpu}  # fmt: skip


def late_phase(url: str, base: Path, args: argparse.Namespace) -> tuple[Any, Any]:
    """``args.rounds`` rounds of lateness, 200 ms ahead and due at once, interleaved."""
    late_runs, now_runs = [], []
    for _ in range(args.rounds):
        late_runs.append(lateness(url, base, args.rate, args.late_seconds, 0.2))
        _progress(f"lateness p99 {late_runs[-1]['p99']:.2f} ms")
        now_runs.append(lateness(url, base, args.rate, args.late_seconds, 0.0))
    return _median_runs(late_runs), _median_runs(now_runs)


def _median_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Lateness rounds: the median of each figure, the rounds themselves, the first warm-up."""
    keys = ("p50", "p90", "p99", "max", "rate", "bare_p50", "bare_p99", "bare_max",
            "commit_p50", "commit_p99", "commit_max")  # fmt: skip
    return {
        **{k: statistics.median(r[k] for r in runs) for k in keys},
        "n": sum(r["n"] for r in runs), "rounds": len(runs), "warm_up": runs[0]["warm_up"],
        "p99s": [r["p99"] for r in runs], "bare_p99s": [r["bare_p99"] for r in runs],
        "commit_p99s": [r["commit_p99"] for r in runs],
        "checkpoints": [r["checkpoints"] for r in runs],
    }  # fmt: skip


def _progress(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def _out_dir() -> Path:
    out = BENCH_DIR / "out"
    out.mkdir(exist_ok=True)
    return out


def _enq(e2e: dict[str, Any], name: str) -> str:
    """The median enqueue rate of a system's producer, as text."""
    values = e2e["enqueue"].get(name) or []
    return f"{statistics.median(values):,.0f}/s" if values else "?"


def _status(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


Row = tuple[str, str, str, bool | None, str]


def e2e_rows(e2e: dict[str, Any], how: str) -> list[Row]:
    """The table's rows for durajobs end to end with one and two daemons."""
    rows: list[Row] = []
    med = e2e["median"]
    names = list(e2e["rates"])
    one, two, workers = names[0], names[1], names[2]
    for name in (one, two, workers):
        label = f"End to end ({how}), {name}"
        if name in med:
            note = f"producer enqueued at {_enq(e2e, name)}; rounds: " + ", ".join(
                f"{x:,.0f}" for x in e2e["rates"][name]
            )
            if name in (two, workers) and one in med:
                note = f"{med[name] / med[one]:.2f}x one daemon of one worker; " + note
            shares = e2e.get("cpu", {}).get(name)
            if shares:
                server = statistics.median(s for s, _ in shares)
                busy = statistics.median(b for _, b in shares)
                note += (f"; CPU of the machine's {os.cpu_count()} cores: the server's processes "
                         f"{server:.0%}, all processes {busy:.0%}")  # fmt: skip
            rows.append((label, f"{med[name]:,.0f} tasks/s", "-", None, note))
        else:
            rows.append((label, "not measured", "-", False, e2e["errors"].get(name, "")))
    return rows


def drain_rows(drained: dict[str, Any], backlog: int) -> list[Row]:
    """The table's rows for phase 6."""
    one = drained["1x1"]
    rows: list[Row] = []
    for name, label in (("1x1", "1 daemon of 1 worker"), ("1x2", "1 daemon of 2 workers"),
                        ("2x1", "2 daemons of 1 worker")):  # fmt: skip
        run = drained[name]
        ratio = run["rate"] / one["rate"]
        rows.append((
            f"Draining {backlog:,} due steps, {label}", f"{run['rate']:,.0f} tasks/s"
            + ("" if name == "1x1" else f" ({ratio:.2f}x 1 worker)"),
            "-" if name == "1x1" else ">= 1.3x", None if name == "1x1" else ratio >= 1.3,
            "rounds: " + ", ".join(f"{x:,.0f}" for x in run["rates"])
            + f"; CPU of the machine's {os.cpu_count()} cores: the server's processes "
            f"{run['server']:.0%}, all processes {run['busy']:.0%}",
        ))  # fmt: skip
    return rows


def peer_rows(e2e: dict[str, Any], how: str) -> list[Row]:
    """The table's rows for durajobs (one daemon) against each peer."""
    rows: list[Row] = []
    med = e2e["median"]
    names = list(e2e["rates"])
    one = names[0]
    for name in names[3:]:  # after durajobs' three
        label = f"Enqueue ({how}) + execute no-op vs {name}"
        if name in med and name in e2e["ratio_to_peer"]:
            ratio = e2e["ratio_to_peer"][name]
            rows.append((
                label, f"durajobs {ratio:.2f}x {name} ({med.get(one, 0):,.0f} vs "
                f"{med[name]:,.0f} tasks/s)", ">= 1.5x", ratio >= 1.5,
                f"one worker process each; {name}'s producer enqueued at {_enq(e2e, name)}; "
                "rounds: " + ", ".join(f"{x:,.0f}" for x in e2e["rates"][name]),
            ))  # fmt: skip
        else:
            rows.append((label, "not measured", ">= 1.5x", False,
                         e2e["errors"].get(name, "")))  # fmt: skip
    return rows


def late_rows(late: dict[str, Any], now: dict[str, Any], when: str) -> list[Row]:
    """The table's rows for one lateness phase."""
    rows: list[Row] = []
    rows.append((
        f"Alarm lateness through LISTEN/NOTIFY (200 ms ahead), {when}",
        f"p50 {late['p50']:.2f} ms, p99 {late['p99']:.2f} ms", "p99 < 5 ms", late["p99"] < 5.0,
        f"medians of {late['rounds']} rounds of {late['n'] / late['rounds']:.0f} alarms at "
        f"{late['rate']:.0f}/s from another process, one daemon; per-round p99 "
        + ", ".join(f"{x:.2f}" for x in late["p99s"])
        + f" ms; max {late['max']:.2f} ms; after {WARMUP_ALARMS} warm-up alarms, late by "
        + ", ".join(f"{x:.1f}" for x in late["warm_up"])
        + " ms (a daemon's first steps); a bare sleeping process in the same window (no database): "
        f"p50 {late['bare_p50']:.2f}, p99 {late['bare_p99']:.2f} ms (per round "
        + ", ".join(f"{x:.2f}" for x in late["bare_p99s"])
        + "); the same process committing one row at each due time: commit done p50 "
        f"{late['commit_p50']:.2f}, p99 {late['commit_p99']:.2f} ms after the due time (per round "
        + ", ".join(f"{x:.2f}" for x in late["commit_p99s"])
        + "); server checkpoints during the rounds: "
        + ", ".join(str(x) for x in late["checkpoints"]),
    ))  # fmt: skip
    rows.append((
        f"Lateness, due at once (send to handler), {when}", f"p50 {now['p50']:.2f} ms, "
        f"p99 {now['p99']:.2f} ms", "-", None, "includes the producer's own `task.send` commit "
        "and the NOTIFY round; per-round p99 " + ", ".join(f"{x:.2f}" for x in now["p99s"])
        + f" ms; bare sleeper p99 {now['bare_p99']:.2f} ms",
    ))  # fmt: skip
    return rows


def report(res: dict[str, Any], args: argparse.Namespace) -> str:
    """RESULTS-postgres.md."""
    g = res["run_due"]
    e2e = res["e2e"]
    late, now, take = res["lateness"], res["lateness_now"], res["takeover"]
    rows: list[Row] = []
    full, normal = g["full"], g["normal"]
    rows.append((
        "`run_due` group commit, FULL", f"{full['ratio']:.1f}x the 1-row-transaction floor "
        f"({full['run_due']:,.0f} steps/s vs {full['floor_single']:,.0f} txn/s)", ">= 6x",
        full["ratio"] >= 6, f"{args.n} due no-op Task instances, one process; before the "
        f"batching {full['run_due_before']:,.0f} steps/s; 100-row-txn floor "
        f"{full['floor_batch100']:,.0f} rows/s; per-round ratios "
        + ", ".join(f"{x:.1f}" for x in full["ratios"]),
    ))  # fmt: skip
    rows.append((
        "`run_due` group commit, NORMAL", f"{normal['ratio']:.1f}x the floor "
        f"({normal['run_due']:,.0f} steps/s vs {normal['floor_single']:,.0f} txn/s)", "(FULL is "
        "the goal)", None, "`synchronous_commit=off` on both sides",
    ))  # fmt: skip
    trips = res["round_trips"]
    send_ratio = full["send"] / full["floor_single"]
    rows.append((
        "`task.send`, FULL", f"{send_ratio:.2f}x the floor ({full['send']:,.0f} calls/s)",
        ">= 0.5x", send_ratio >= 0.5, "one call = claim and read (a round trip), step, "
        f"write, commit and release (a round trip); before: {full['send_before']:,.0f} calls/s",
    ))  # fmt: skip
    rows.append((
        "Round trips the client waits for", f"{trips['send']:.2f} per `task.send`, "
        f"{trips['run_due']:.3f} per `run_due` step", "<= 3 per send", trips["send"] <= 3,
        f"a new instance's send: {trips['send_new']:.2f}; counted in libpq's trace "
        "(`round_trips`)",
    ))  # fmt: skip
    rows += e2e_rows(e2e, "one per transaction")
    rows += late_rows(late, now, "measured first, on a server that has done nothing yet")
    rows += late_rows(res["lateness_after"], res["lateness_now_after"],
                      "measured again after the run_due and end-to-end phases")  # fmt: skip
    rows.append((
        "Takeover after kill -9 mid-handler", f"{take['median'] * 1000:.0f} ms (median)",
        "well under 1 s", take["median"] < 1.0,
        "trials: " + ", ".join(f"{x * 1000:.0f}" for x in take["trials"]) + " ms",
    ))  # fmt: skip
    rows += peer_rows(e2e, "one per transaction")
    batched = res["e2e_batch"]
    rows += e2e_rows(batched, f"{batched['batch']} per transaction")
    rows += peer_rows(batched, f"{batched['batch']} per transaction")
    if "drain" in res:
        rows += drain_rows(res["drain"], args.backlog)
    lines = [
        "# durajobs on PostgreSQL: benchmark results (issue 14)",
        "",
        "Generated by `benchmarks/bench_postgres.py`"
        + (" --quick" if args.quick else "")
        + f" on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; every figure from one run on one "
        "throwaway PostgreSQL server (fsync on, TCP on 127.0.0.1, `synchronous_commit=on` "
        "unless NORMAL). Medians of "
        f"{args.repeat} (`run_due`) and {args.rounds} (end to end) rounds, systems interleaved "
        "round by round. How each figure is measured: the script's docstring.",
        "",
        "| workload | figure | goal | status | note |",
        "|---|---|---|---|---|",
        *(f"| {w} | {f} | {goal} | {_status(ok)} | {n} |" for w, f, goal, ok, n in rows),
        "",
        f"End to end: {args.tasks} tasks per run, enqueued by a producer process while the "
        "workers run, one per transaction (durajobs: `task.send` of a Task whose `on_event` "
        "schedules `execute` now; pgqueuer: `Queries.enqueue`; procrastinate: `Task.defer`) "
        f"or {args.batch} per transaction (`task.send_many`; `Queries.enqueue` of lists; "
        "`Task.batch_defer`); tasks/s from the first enqueue to the moment all have run. One "
        "per transaction, durajobs is bound by its producer (each `task.send` is a claim and a "
        "read, then a transaction that ends with the claim's release: two round trips and a "
        "commit's flush); batched, by its producer too (`send_many` makes 100 new instances a "
        "transaction). The workers alone: the draining rows (phase 6). Each system "
        "runs one worker process with its defaults (durajobs: a daemon and its one worker; "
        "pgqueuer: `pgq run`, batch size 10; procrastinate: `run_worker`, concurrency 1).",
        "",
        "Producers' enqueue rates are in `benchmarks/out/bench_postgres.json`.",
        "",
        "## Machine",
        "",
        *(f"- {k}: {v}" for k, v in res["machine"].items()),
        "",
        "The machine is shared (other work runs in the same tree): compare figures within this "
        "table, not across runs.",
        "",
        "## Reproduce",
        "",
        "```",
        ".venv/bin/pip install -e '.[postgres,bench]'  # bench: huey, ..., pgqueuer, procrastinate",
        "python benchmarks/bench_postgres.py          # about 10 minutes; --quick: about 2",
        "```",
        "",
        "PostgreSQL 15's `initdb`/`pg_ctl` must be installed (as for the tests); `--url` uses an "
        "existing empty database instead (the peers then share it).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    for kind in ("dj", "pgq", "proc"):
        p = sub.add_parser(f"produce-{kind}", help="(helper) enqueue N jobs")
        p.add_argument("--url", required=True)
        p.add_argument("--n", type=int, required=True)
        p.add_argument("--prefix", default="j")
        p.add_argument("--batch", type=int, default=1)
    p = sub.add_parser("produce-late", help="(helper) set alarms at a rate")
    p.add_argument("--url", required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--ahead", type=float, required=True)
    p = sub.add_parser("timer-floor", help="(helper) a bare sleeper's lateness")
    p.add_argument("--url", required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--ahead", type=float, required=True)
    sub.add_parser("pgq-worker", help="(helper) pgqueuer's worker, as `pgq run` with defaults")
    p = sub.add_parser("proc-worker", help="(helper) procrastinate's worker")
    p.add_argument("--url", required=True)
    parser.add_argument("--quick", action="store_true", help="small counts, one round: ~2 min")
    parser.add_argument("--n", type=int, help="instances per run_due measurement (3000)")
    parser.add_argument("--repeat", type=int, help="run_due rounds (3)")
    parser.add_argument("--tasks", type=int, help="tasks per end-to-end run (2000)")
    parser.add_argument("--rounds", type=int, help="end-to-end rounds (3)")
    parser.add_argument("--batch", type=int, default=100, help="jobs per transaction, batched e2e")
    parser.add_argument("--rate", type=float, default=75.0, help="alarms/s for lateness (75)")
    parser.add_argument("--late-seconds", type=float, help="seconds of alarms a round (4)")
    parser.add_argument("--trials", type=int, help="takeover trials (5)")
    parser.add_argument("--backlog", type=int, help="due steps per drain run (20000)")
    parser.add_argument("--max-seconds", type=float, default=180.0, help="bound of one run")
    parser.add_argument("--url", help="an empty database to use (default: a throwaway cluster)")
    args = parser.parse_args(argv)

    if args.command and args.command.startswith("produce-") and args.command != "produce-late":
        kind = args.command.split("-")[1]
        print(json.dumps(produce_main(kind, args.url, args.n, args.prefix, args.batch)))
        return 0
    if args.command == "produce-late":
        print(json.dumps(produce_late_main(args.url, args.rate, args.seconds, args.ahead)))
        return 0
    if args.command == "timer-floor":
        print(json.dumps(timer_floor_main(args.url, args.rate, args.seconds, args.ahead)))
        return 0
    if args.command == "pgq-worker":
        import logging

        import pgqueuer

        signal.alarm(HELPER_LIFETIME)
        logging.basicConfig(level=logging.WARNING)
        asyncio.run(pgqueuer.run(pgq_factory))  # pgq run's defaults: batch size 10
        return 0
    if args.command == "proc-worker":
        signal.alarm(HELPER_LIFETIME)
        proc_app(args.url).run_worker()
        return 0

    defaults = {"n": (500, 3000), "repeat": (1, 3), "tasks": (300, 2000), "rounds": (1, 3),
                "late_seconds": (2.0, 4.0), "trials": (2, 5), "backlog": (5000, 20000)}  # fmt: skip
    for key, (quick, full) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)

    server = None
    url = args.url
    peer_urls = {"pgq": url, "proc": url}
    if url is None:
        from pgserver import PgServer, find_pg_bin

        bindir = find_pg_bin()
        if bindir is None:
            parser.error("PostgreSQL is not installed; pass --url")
        server = PgServer(bindir)
        server.start()
        url = server.create_database("bench")
        ADMIN.append(server.admin_url())
        SERVER_DATA.append(server.data)
        peer_urls = {"pgq": server.create_database("pgq"), "proc": server.create_database("proc")}
    try:
        res = run_all(args, url, peer_urls)
    finally:
        if server is not None:
            server.stop()
    text = report(res, args)
    print(text)
    out = _out_dir()
    (out / "bench_postgres.json").write_text(json.dumps(res, indent=2, default=str))
    target = out / "RESULTS-postgres-quick.md" if args.quick else BENCH_DIR / "RESULTS-postgres.md"
    target.write_text(text)
    print(f"written: {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
