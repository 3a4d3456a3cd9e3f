"""durajobs' own measurements: the functions behind run.py's ``durajobs_*`` slots.

Theory of operation. Every measurement goes through the public API (``Jobs`` and its clients)
or through the real daemon as a subprocess (``python durajobs_daemon.py --app dj_app:jobs
--db FILE``, started in its own process group, ready when it sends ``READY=1`` on the
``NOTIFY_SOCKET`` we bind, killed by group when its ``with`` block ends). SQL is written
directly only to *set up* files quickly (the million-instance clone of ``bench_ls``, making
100 chosen instances due); nothing timed bypasses the library. Databases are fresh files in a
temporary directory on the real disk (``benchmarks/out/``), deleted afterwards.

- ``run_due``: N no-op Continuous instances made (through the library, with
  ``durability="normal"`` to save set-up time), then reopened with the durability measured;
  a ``FakeClock`` is moved past their due time and one ``jobs.run_due()`` call runs them all
  (checked: it returns N). Three rounds; the median is reported.
- ``client_calls``: ``debounce.add`` (default reducer, ``flush_after`` an hour: no flush in
  the call) and ``task.send`` (no-op ``on_event``), ids cycling over 1,000 warmed-up
  instances, new event bytes on every call; five rounds, each beside a raw single-transaction
  round of the same durability (``floor.measure``), each timed for a fixed wall time.
- ``end_to_end``: the huey workload. Daemon up; this process sends N events to N Task
  instances whose ``on_event`` schedules ``execute`` now (no-op), one ``send`` each or with
  ``send_many`` in batches; time from the first send until no alarm is pending (then every
  instance is checked: executed exactly once); the daemon's commits are counted from the
  history (records of one commit share its time).
- ``daemon_drain``: the daemon alone, ``--workers N``, on N tasks already due; its CPU.
- ``lateness``: daemon up; a producer subprocess sends, at 100/s, events whose ``on_event``
  schedules ``execute`` 200 ms ahead at an absolute time; ``execute`` records
  ``time.time() - due`` as its first act.
- ``idle``: daemon on a file whose one instance is due in an hour; context switches of the
  daemon and its workers over a window; RSS and PSS.
- ``scale``: ``bench_ls``'s clone makes N instances (a third of each kind, 2 history records
  each); bytes per instance after a checkpoint; ``durajobs ls`` first page; ``run_due`` with
  100 due among N vs among 1,000 (5 rounds each, median); the daemon's memory on the big file.

Run alone: ``python benchmarks/dj_bench.py {run-due,calls,e2e,lateness,idle,scale} [--quick]``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import apsw
from common import (
    BENCH_DIR,
    cpu_seconds,
    die_with_parent,
    helper_cmd,
    latency_summary,
    managed_process,
    paced,
    pss_mb,
    rss_mb,
    run_bounded,
    run_json,
    wait_until,
    wakeups,
    workdir,
)
from dj_app import REGISTRY, Due, Item, Tick

from durajobs import FakeClock, Jobs
from durajobs.engine import BULK_MAX_INSTANCES

# The daemon script; $DJ_BENCH_DAEMON points at another checkout's (before/after comparisons,
# with $PYTHONPATH choosing that checkout's library: the daemon inherits it).
DAEMON = Path(os.environ.get("DJ_BENCH_DAEMON") or BENCH_DIR.parent / "durajobs_daemon.py")
HELPER_LIFETIME = 600
START = datetime(2030, 1, 1, tzinfo=UTC)  # the FakeClock's start for in-process runs


# =========================================================================== the daemon


@contextlib.contextmanager
def daemon(
    db: Path,
    base: Path,
    *,
    durability: str = "full",
    workers: int = 1,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """The real daemon on ``db`` in a subprocess, ready (``READY=1`` received) when yielded.

    ``--log-level warning``: the daemon's default ``info`` writes one line per step to stderr;
    huey's consumer, as the peers run it, logs nothing (no logging configured), so neither
    system pays for per-task logging here. stderr goes to ``base/daemon-*.log``.
    """
    notify_path = base / f"notify-{os.getpid()}-{time.monotonic_ns()}.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(0.05)
    log = base / f"daemon-{db.stem}.log"
    child_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")])),
        "DJ_BENCH_APP_DB": str(base / "app-scratch.db"),
        "DJ_BENCH_DURABILITY": durability,
        "NOTIFY_SOCKET": str(notify_path),
        **(env or {}),
    }
    for key in ("WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"):
        child_env.pop(key, None)
    cmd = [
        sys.executable, str(DAEMON), "--app", "dj_app:jobs", "--db", str(db),
        "--workers", str(workers), "--log-level", "warning",
    ]  # fmt: skip
    try:
        with managed_process(cmd, env=child_env, stderr_path=log, stdout_pipe=False) as proc:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"daemon exited {proc.returncode}: {_tail(log)}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"daemon not ready within {timeout} s: {_tail(log)}")
                with contextlib.suppress(TimeoutError):
                    if b"READY=1" in notify.recv(4096):
                        break
            # Stop listening: nobody would read the daemon's later STATUS= datagrams, and once
            # the socket's queue is full the daemon's (blocking) sendto would wait forever.
            notify.close()
            notify_path.unlink()
            yield proc
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited {proc.returncode}: {_tail(log)}")
    finally:
        notify.close()  # closing twice is fine
        with contextlib.suppress(FileNotFoundError):
            notify_path.unlink()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _pending_alarms(jobs: Jobs) -> int:
    (count,) = jobs.engine.store.query("SELECT count(*) FROM instances WHERE due_at IS NOT NULL")[0]
    return int(count)


# =========================================================================== run_due


def run_due(base: Path, instances: int, *, rounds: int = 3) -> dict[str, Any]:
    """``jobs.run_due()`` over ``instances`` due no-op Continuous instances, FULL and NORMAL."""
    out: dict[str, Any] = {}
    for durability in ("full", "normal"):
        db = base / f"run_due-{durability}.db"
        clock = FakeClock(START)
        with Jobs(db, REGISTRY, clock=clock, durability="normal") as setup:
            start = setup.continuous("noop").start
            for i in range(instances):
                start(f"u{i:06d}", Tick())
        rates = []
        with Jobs(db, REGISTRY, clock=clock, durability=durability) as jobs:
            for _ in range(rounds):
                clock.advance("61s")  # every minute, first run a minute after start: all due
                t0 = time.perf_counter()
                count = jobs.run_due()
                elapsed = time.perf_counter() - t0
                if count != instances:
                    raise RuntimeError(f"run_due ran {count} steps, expected {instances}")
                rates.append(count / elapsed)
            (runs,) = jobs.engine.store.query(
                "SELECT sum(run_count) FROM instances WHERE job = 'noop'"
            )[0]
        if runs != instances * rounds:
            raise RuntimeError(f"expected {instances * rounds} runs in the table, found {runs}")
        out[durability] = statistics.median(rates)
        out[f"{durability}_rounds"] = rates
    return out


# =========================================================================== client calls


def client_calls(
    base: Path, seconds: float, *, ids: int = 1_000, rounds: int = 5
) -> dict[str, Any]:
    """``debounce.add`` and ``task.send``, one transaction each, side by side with the raw
    single-transaction floor: per durability, ``rounds`` rounds of (raw, add, send), each timed
    for ``seconds``; medians of the rates and of the per-round ratios to raw."""
    import floor

    out: dict[str, Any] = {"rounds": rounds}
    for durability in ("full", "normal"):
        db = base / f"calls-{durability}.db"
        with Jobs(db, REGISTRY, durability=durability) as jobs:
            add = jobs.debounce("batch").add
            send = jobs.task("orders2").send
            for i in range(ids):  # create the instances: later calls update existing rows
                add(f"u{i:04d}", Item(-i))
                send(f"u{i:04d}", Item(-i))
            names = [f"u{i:04d}" for i in range(ids)]
            made: dict[str, int] = {"batch": 0, "orders2": 0}
            rates: dict[str, list[float]] = {"raw": [], "debounce_add": [], "task_send": []}
            counter = [0]
            for round_no in range(rounds):
                raw = floor.measure(
                    base / f"calls-raw-{durability}-{round_no}.db",
                    synchronous=durability.upper(),
                    rows_per_txn=1,
                    max_seconds=seconds,
                )
                rates["raw"].append(raw.txn_per_s)
                for call, job, method in (
                    ("debounce_add", "batch", add),
                    ("task_send", "orders2", send),
                ):

                    def op(
                        _: int, method: Any = method, names: list[str] = names, n: Any = counter
                    ) -> None:
                        i = n[0] = n[0] + 1
                        method(names[i % ids], Item(i))  # new event bytes every call

                    calls, elapsed = run_bounded(op, max_ops=10_000_000, max_seconds=seconds)
                    rates[call].append(calls / elapsed)
                    made[job] += calls
            # Every call was applied: both jobs count the events of each instance.
            for job, calls in made.items():
                (events,) = jobs.engine.store.query(
                    "SELECT sum(event_count) FROM instances WHERE job = ?", (job,)
                )[0]
                if events != ids + calls:
                    raise RuntimeError(f"{job}: {events} events stored, expected {ids + calls}")
        for call, values in rates.items():
            out[f"{call}_{durability}"] = statistics.median(values)
            out[f"{call}_{durability}_rounds"] = values
            if call != "raw":
                ratios = [v / r for v, r in zip(values, rates["raw"], strict=True)]
                out[f"{call}_{durability}_ratio"] = statistics.median(ratios)
    return out


def bulk_vs_single(base: Path, events: int = 2_000, *, rounds: int = 3) -> dict[str, Any]:
    """``task.send_many`` of ``events`` events (one transaction) vs as many single ``send``
    calls (one transaction each), FULL, on ``events`` fresh instances each; median rounds."""
    single: list[float] = []
    bulk: list[float] = []
    for round_no in range(rounds):
        db = base / f"bulk-{round_no}.db"
        with Jobs(db, REGISTRY, durability="full") as jobs:
            send = jobs.task("orders2").send
            started = time.perf_counter()
            for i in range(events):
                send(f"s{i:05d}", Item(i))
            single.append(events / (time.perf_counter() - started))
            items = [(f"b{i:05d}", Item(i)) for i in range(events)]
            started = time.perf_counter()
            results = jobs.task("orders2").send_many(items)
            bulk.append(events / (time.perf_counter() - started))
            if len(results) != events:
                raise RuntimeError(f"send_many returned {len(results)} results, not {events}")
    return {
        "events": events,
        "single_per_s": statistics.median(single),
        "bulk_per_s": statistics.median(bulk),
        "single_rounds": single,
        "bulk_rounds": bulk,
    }


# =========================================================================== end to end


def end_to_end(
    base: Path,
    tasks: int,
    *,
    durability: str = "full",
    timeout: float = 120.0,
    batch: int = 1,
) -> dict[str, Any]:
    """N events sent from this process, N executes run by the daemon; tasks/s end to end.

    ``batch`` > 1: the producer sends them with ``send_many`` in batches of that size (one
    transaction per batch) instead of one ``send`` (one transaction) each.
    """
    db = base / f"e2e-{durability}-{batch}.db"
    with Jobs(db, REGISTRY, durability=durability) as jobs:
        task = jobs.task("e2e")
        send, send_many = task.send, task.send_many
        events = [(f"t{i:07d}", Item(i)) for i in range(tasks)]
        batches = [events[i : i + batch] for i in range(0, tasks, batch)]
        with daemon(db, base, durability=durability) as proc:
            daemon_cpu = cpu_seconds(proc.pid)
            own_cpu = time.process_time()
            t0 = time.perf_counter()
            if batch == 1:
                for name, event in events:
                    send(name, event)
            else:
                for items in batches:
                    send_many(items)
            sent = time.perf_counter()
            own_cpu = time.process_time() - own_cpu
            finished = wait_until(
                lambda: _pending_alarms(jobs) == 0, timeout=timeout, interval=0.01
            )
            end = time.perf_counter()
            daemon_cpu = cpu_seconds(proc.pid) - daemon_cpu
        if not finished:
            raise TimeoutError(f"{_pending_alarms(jobs)} of {tasks} tasks still pending")
        (count, runs, idle) = jobs.engine.store.query(
            "SELECT count(*), sum(run_count), sum(status = 'idle') FROM instances WHERE job = 'e2e'"
        )[0]
        if not count == runs == idle == tasks:
            raise RuntimeError(f"e2e: {count} instances, {runs} executes, {idle} idle of {tasks}")
        # Records of one commit share its time: how many commits the daemon made.
        (commits,) = jobs.engine.store.query(
            "SELECT count(DISTINCT at) FROM history WHERE event = 'job.executed'"
        )[0]
    return {
        "tasks": tasks,
        "tasks_per_s": tasks / (end - t0),
        "send_per_s": tasks / (sent - t0),
        "durability": durability,
        "batch": batch,
        "tasks_per_daemon_commit": tasks / max(int(commits), 1),
        "producer_cpu_us_per_task": own_cpu / tasks * 1e6,
        "daemon_cpu_us_per_task": daemon_cpu / tasks * 1e6,
    }


def daemon_drain(
    base: Path, tasks: int, *, timeout: float = 120.0, workers: int = 1
) -> dict[str, Any]:
    """The daemon alone: N tasks already due when it starts; executes/s (FULL)."""
    db = base / f"drain-{workers}.db"
    with Jobs(db, REGISTRY, durability="normal", wake=False) as setup:
        for start in range(0, tasks, BULK_MAX_INSTANCES):  # the most one bulk call takes
            ids = range(start, min(tasks, start + BULK_MAX_INSTANCES))
            setup.task("e2e").send_many([(f"t{i:07d}", Item(i)) for i in ids])
    with Jobs(db, REGISTRY) as jobs, daemon(db, base, workers=workers) as proc:
        # READY comes after the first poll has dispatched: time from READY is a lower bound.
        t0 = time.perf_counter()
        cpu = cpu_seconds(proc.pid)
        finished = wait_until(lambda: _pending_alarms(jobs) == 0, timeout=timeout, interval=0.01)
        end = time.perf_counter()
        cpu = cpu_seconds(proc.pid) - cpu
        if not finished:
            raise TimeoutError("the daemon did not drain the due tasks")
    return {
        "tasks": tasks,
        "workers": workers,
        "tasks_per_s": tasks / (end - t0),
        "daemon_cpu_us_per_task": cpu / tasks * 1e6,
        "daemon_cores_busy": cpu / (end - t0),
    }


# =========================================================================== lateness


def lateness(base: Path, *, rate: float, count: int, ahead: float) -> dict[str, Any]:
    """Alarms set by a producer process at ``rate``/s, ``ahead`` s ahead; lateness samples."""
    tag = time.monotonic_ns()  # a fresh file per run: runs may share ``base``
    db = base / f"late-{tag}.db"
    out = base / f"late-{tag}.txt"
    out.touch()
    Jobs(db, REGISTRY).close()  # the file exists before the daemon and the producer open it
    with daemon(db, base, env={"DJ_BENCH_OUT": str(out)}):
        produced = run_json(
            helper_cmd(
                "dj_bench.py", "produce-late", "--db", str(db), "--rate", str(rate),
                "--count", str(count), "--ahead", str(ahead),
            ),
            timeout=count / rate + 60,
        )  # fmt: skip
        sent = int(produced["sent"])  # type: ignore[call-overload]
        wait_until(lambda: out.read_text().count("\n") >= sent, timeout=ahead + 10.0, interval=0.02)
    samples = [float(x) for x in out.read_text().split()]
    if len(samples) != sent:
        raise RuntimeError(f"{len(samples)} of {sent} alarms fired")
    return {"sent": sent, "samples": samples, **latency_summary(samples)}


def _produce_late(args: argparse.Namespace) -> None:
    die_with_parent(HELPER_LIFETIME)
    sent = 0
    with Jobs(args.db, REGISTRY) as jobs:
        send = jobs.task("late").send
        for i in paced(args.rate, args.count, max_seconds=args.count / args.rate + 10):
            send(f"l{i:06d}", Due(time.time() + args.ahead))
            sent += 1
    print(json.dumps({"sent": sent}))


# =========================================================================== idle


def idle(base: Path, *, settle: float, window: float) -> dict[str, Any]:
    """Context switches/s of the daemon (and workers) whose one alarm is an hour away."""
    db = base / "idle.db"
    with Jobs(db, REGISTRY) as jobs:
        jobs.continuous("hourly").start("one", Tick())
        due = jobs.next_alarm()
    if due is None or due.timestamp() < time.time() + 3000:
        raise RuntimeError(f"the idle file's alarm is at {due}, not an hour away")
    with daemon(db, base) as proc:
        time.sleep(settle)
        rate = wakeups(proc.pid, window)
        rss = rss_mb(proc.pid, include_children=True)
        pss = pss_mb(proc.pid)
    return {"wakeups_per_s": rate, "window_s": window, "rss_mb": rss, "pss_mb": pss}


# =========================================================================== scale


def _make_scale_file(db: Path, instances: int, history: int, base_time: float) -> float:
    """bench_ls's sample + clone: ``instances`` rows (plus the 150 sample rows)."""
    import bench_ls

    t0 = time.perf_counter()
    bench_ls.build_sample(db, base_time - 600)
    bench_ls.clone(db, instances, history, base_time)
    return time.perf_counter() - t0


def _make_due(db: Path, ids: list[str], at: float) -> None:
    conn = apsw.Connection(str(db))
    try:
        conn.setbusytimeout(5_000)
        conn.execute("BEGIN IMMEDIATE")
        for instance_id in ids:
            conn.execute(
                "UPDATE instances SET due_at = ?1, scheduled_for = ?1 WHERE instance_id = ?2",
                (at, instance_id),
            )
        conn.execute("COMMIT")
    finally:
        conn.close()


def _run_due_cost(db: Path, due: int, rounds: int, fake_now: float) -> list[float]:
    """Seconds of one ``run_due()`` with ``due`` random Continuous instances due, per round."""
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        candidates = [
            r[0]
            for r in conn.execute(
                "SELECT instance_id FROM instances WHERE kind = 'continuous' AND due_at > ?",
                (fake_now,),
            )
        ]
    finally:
        conn.close()
    rng = random.Random(42)
    picks = [rng.sample(candidates, due) for _ in range(rounds)]
    # A list of ~N/3 ids would make every full GC pass of this process (the one timed) walk
    # it: that is the harness's memory, not durajobs', so keep only the picks.
    del candidates
    gc.collect()
    clock = FakeClock(fake_now)
    times = []
    with Jobs(db, REGISTRY, clock=clock) as jobs:
        for chosen in picks:
            _make_due(db, chosen, fake_now - 1)
            t0 = time.perf_counter()
            count = jobs.run_due()
            times.append(time.perf_counter() - t0)
            if count != due:
                raise RuntimeError(f"run_due ran {count} steps, expected {due}")
    return times


def _bytes_per_instance(db: Path) -> dict[str, float]:
    conn = apsw.Connection(str(db))
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        count: Any = conn.execute("SELECT count(*) FROM instances").fetchall()[0][0]
        out: dict[str, float] = {"instances": float(count)}
        try:
            for name, size in conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"):
                out[f"btree:{name}"] = size / count
        except apsw.Error:
            pass  # dbstat not compiled in
    finally:
        conn.close()
    out["bytes_per_instance"] = db.stat().st_size / out["instances"]
    return out


def _ls_times(db: Path, repeat: int) -> dict[str, float]:
    """``durajobs --db F ls`` in a subprocess, the library's ``Admin.ls``, and start-up alone."""
    from durajobs.admin import Admin

    script = shutil.which("durajobs", path=str(Path(sys.executable).parent))
    if script is None:
        raise RuntimeError("the durajobs console script is not installed in this environment")

    def subprocess_ms(*args: str) -> float:
        t0 = time.perf_counter()
        subprocess.run(
            [script, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            timeout=60,
        )  # fmt: skip
        return time.perf_counter() - t0

    def library() -> float:
        t0 = time.perf_counter()
        with Admin(db) as admin:
            rows = admin.ls(limit=51)
        if len(rows) != 51:
            raise RuntimeError(f"ls returned {len(rows)} rows")
        return time.perf_counter() - t0

    ls = [subprocess_ms("--db", str(db), "ls") for _ in range(repeat)]
    version = [subprocess_ms("--version") for _ in range(repeat)]
    lib = [library() for _ in range(repeat * 2)]
    return {
        "ls_first_page_s": statistics.median(ls),
        "ls_startup_s": statistics.median(version),
        "ls_library_s": statistics.median(lib),
    }


def scale(
    base: Path, *, instances: int, small: int, due: int, history: int = 2, rounds: int = 5
) -> dict[str, Any]:
    """Bytes per instance, ls first page, run_due cost large vs small, daemon memory."""
    now = time.time()
    # Every alarm of the files is more than an hour ahead of the real clock (the daemon stays
    # idle) and of the FakeClock that run_due runs at (only the instances we make due run).
    base_time = now + 7200
    fake_now = now + 3600
    out: dict[str, Any] = {"history_per_instance": history}
    small_db = base / "scale-small.db"
    _make_scale_file(small_db, small, history, base_time)
    out["run_due_small_rounds"] = _run_due_cost(small_db, due, rounds, fake_now)
    large_db = base / "scale-large.db"
    out["build_s"] = _make_scale_file(large_db, instances, history, base_time)
    out.update(_bytes_per_instance(large_db))
    out.update(_ls_times(large_db, repeat=5))
    out["run_due_large_rounds"] = _run_due_cost(large_db, due, rounds, fake_now)
    out["run_due_large_s"] = statistics.median(out["run_due_large_rounds"])
    out["run_due_small_s"] = statistics.median(out["run_due_small_rounds"])
    with daemon(large_db, base) as proc:
        time.sleep(1.0)
        out["daemon_rss_mb"] = rss_mb(proc.pid, include_children=True)
        out["daemon_pss_mb"] = pss_mb(proc.pid)
        out["daemon_rss_parent_mb"] = rss_mb(proc.pid)
    return out


# =========================================================================== main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    for name in ("run-due", "calls", "e2e", "drain", "lateness", "idle", "scale"):
        p = sub.add_parser(name)
        p.add_argument("--quick", action="store_true")
    produce = sub.add_parser("produce-late")
    produce.add_argument("--db", required=True)
    produce.add_argument("--rate", type=float, required=True)
    produce.add_argument("--count", type=int, required=True)
    produce.add_argument("--ahead", type=float, required=True)
    args = parser.parse_args(argv)
    if args.role == "produce-late":
        _produce_late(args)
        return
    quick = args.quick
    with workdir("dj") as base:
        if args.role == "run-due":
            result: Any = run_due(base, 2_000 if quick else 10_000)
        elif args.role == "calls":
            result = client_calls(base, 1.0 if quick else 5.0)
        elif args.role == "e2e":
            n = 2_000 if quick else 20_000
            result = [end_to_end(base, n, durability=d) for d in ("full", "normal")]
        elif args.role == "drain":
            result = daemon_drain(base, 2_000 if quick else 20_000)
        elif args.role == "lateness":
            result = lateness(base, rate=100, count=300 if quick else 2_000, ahead=0.2)
            result.pop("samples")
        elif args.role == "idle":
            result = idle(base, settle=1.0 if quick else 5.0, window=3.0 if quick else 20.0)
        else:
            result = scale(base, instances=100_000 if quick else 1_000_000, small=1_000, due=100)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
