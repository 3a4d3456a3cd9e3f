"""Peer systems measured beside durajobs: huey 3 (SqliteHuey) and APScheduler 3 (SQLAlchemy store).

Theory of operation. Each peer runs as a user would run it out of the box, on one SQLite file
in a temporary directory under ``benchmarks/out/`` (real disk):

huey -- ``SqliteHuey(filename=...)`` with its defaults (WAL, the SQLite build's default
``synchronous``, results stored) and the consumer that ``huey_consumer`` gives by default:
one worker thread, 1 s scheduler tick, 0.1 s polling growing x1.15 to 10 s when idle. The
consumer runs in its own process (``peers.py huey-consumer``), as in production; tasks are
enqueued by another process (the runner, or ``peers.py huey-produce`` for lateness).
  (a) end to end: the consumer is up (a ping task has completed); the runner enqueues N no-op
      tasks and waits until N results are stored. tasks/s = N / (last result - first enqueue).
  (b) lateness: a producer process schedules eta tasks 200 ms ahead at 100/s; each task
      records ``time.time() - eta`` when it starts; p50/p99.
  (c) idle: a consumer with one task scheduled an hour away; context switches per second of
      the consumer process and all its threads (``common.wakeups``) over a window.

APScheduler -- ``BackgroundScheduler`` with ``SQLAlchemyJobStore(url="sqlite:///...")``
(SQLAlchemy defaults: rollback journal, ``synchronous`` FULL) and the default
``ThreadPoolExecutor(10)``; date-triggered jobs with ``misfire_grace_time=None`` so that none
is dropped as missed. APScheduler 3 has no cross-process wake-up (a job added by another
process is seen only at the scheduler's next wake-up), so jobs are added in the scheduler's
own process, from its main thread; each experiment runs in a fresh helper process.
  (d) add: scheduler started paused; N ``add_job`` calls (each one job-store transaction).
  (e) fire: ``resume()``; time until all N no-op jobs ran.
  (f) end to end: scheduler running; N jobs added due now; time until all ran (the huey (a)
      workload).
  (g) lateness: jobs added 200 ms ahead at 100/s; each records ``time.time() - run_date``.
  (h) idle: one job an hour away; context switches per second of the helper process.

Every subprocess runs in its own process group and is killed by the runner when its
``with`` block ends (error or not), and each helper also arms ``alarm()`` so it ends by itself
if the runner dies. Every loop is bounded in count and in time.

Run alone: ``python benchmarks/peers.py all [--quick]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sqlite3
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import (
    helper_cmd,
    latency_summary,
    managed_process,
    paced,
    read_line,
    rss_mb,
    run_json,
    wait_until,
    wakeups,
    workdir,
)

HELPER_LIFETIME = 600  # seconds a helper subprocess may live at most (alarm)


@dataclasses.dataclass(frozen=True)
class PeerConfig:
    """Sizes of the peer runs; ``quick()`` keeps each peer well under 15 s."""

    e2e_tasks: int = 20_000  # huey end-to-end tasks
    aps_jobs: int = 3_000  # APScheduler add / fire / end-to-end jobs
    lateness_rate: float = 100.0  # alarms per second
    lateness_count: int = 2_000  # alarms per system
    lateness_ahead: float = 0.2  # seconds between scheduling and due time
    idle_settle: float = 5.0  # seconds after start-up before the idle window
    idle_window: float = 20.0  # seconds of the idle window
    huey_workers: int = 1  # huey_consumer's default
    timeout: float = 120.0  # upper bound of any wait

    @classmethod
    def quick(cls) -> PeerConfig:
        return cls(
            e2e_tasks=2_000,
            aps_jobs=300,
            lateness_count=300,
            idle_settle=1.0,
            idle_window=3.0,
            timeout=30.0,
        )


# =========================================================================== huey


@dataclasses.dataclass(frozen=True)
class HueyTasks:
    noop: Any
    ping: Any
    record_lateness: Any


def make_huey(db_path: Path) -> tuple[Any, HueyTasks]:
    """The huey app shared by the runner, the consumer and the producer processes.

    Task names are explicit and this module is always imported as ``peers`` (see the bottom
    of the file), so producer and consumer agree on the registry keys.
    """
    from huey import SqliteHuey

    huey = SqliteHuey(name="bench", filename=str(db_path))

    @huey.task(name="noop")
    def noop() -> bool:
        return True  # huey does not store None results; True lets the runner count completions

    @huey.task(name="ping")
    def ping() -> str:
        return "pong"

    @huey.task(name="record_lateness")
    def record_lateness(eta: float, out_path: str) -> None:
        lateness = time.time() - eta  # first thing the task does
        with open(out_path, "a") as out:  # one short append per line: atomic with O_APPEND
            out.write(f"{lateness!r}\n")

    return huey, HueyTasks(noop=noop, ping=ping, record_lateness=record_lateness)


def _huey_consumer_main(args: argparse.Namespace) -> None:
    from common import die_with_parent

    die_with_parent(HELPER_LIFETIME)
    huey, _ = make_huey(Path(args.db))
    consumer = huey.create_consumer(workers=args.workers, worker_type="thread")
    consumer.run()  # until SIGTERM/SIGINT from the runner


def _huey_produce_main(args: argparse.Namespace) -> None:
    from common import die_with_parent

    die_with_parent(HELPER_LIFETIME)
    _, tasks = make_huey(Path(args.db))
    sent = 0
    for _ in paced(args.rate, args.count, max_seconds=args.count / args.rate + 10):
        eta = time.time() + args.ahead
        tasks.record_lateness.schedule(args=(eta, args.out), eta=datetime.fromtimestamp(eta, UTC))
        sent += 1
    print(json.dumps({"sent": sent}))


def _huey_consumer(db_path: Path, cfg: PeerConfig) -> Any:
    return managed_process(
        helper_cmd(
            "peers.py", "huey-consumer", "--db", str(db_path), "--workers", str(cfg.huey_workers)
        )
    )


def _wait_consumer_ready(proc: Any, tasks: HueyTasks, timeout: float) -> None:
    """Block until the consumer has executed a ping task (it is up and polling)."""
    result = tasks.ping()
    box: list[Any] = []

    def done() -> bool:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"huey consumer exited {proc.returncode}: {err[-2000:]}")
        value = result.get()
        if value is not None:
            box.append(value)
        return bool(box)

    if not wait_until(done, timeout=timeout, interval=0.01):
        raise TimeoutError("huey consumer did not run the ping task")


def huey_settings(db_path: Path) -> str:
    """The durability settings huey actually runs with (journal mode and default sync)."""
    conn = sqlite3.connect(db_path)
    try:
        journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
        sync = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[
            conn.execute("PRAGMA synchronous").fetchone()[0]
        ]
    finally:
        conn.close()
    return f"journal_mode={journal}, synchronous={sync} (SQLite default; huey fsync=None)"


def huey_end_to_end(base: Path, cfg: PeerConfig) -> dict[str, Any]:
    """(a) N no-op tasks enqueued by this process, executed by a consumer process."""
    db = base / "huey-e2e.db"
    huey, tasks = make_huey(db)
    n = cfg.e2e_tasks
    with _huey_consumer(db, cfg) as proc:
        _wait_consumer_ready(proc, tasks, cfg.timeout)
        start = time.perf_counter()
        for _ in range(n):
            tasks.noop()
        enqueued = time.perf_counter()
        finished = wait_until(
            lambda: huey.storage.result_store_size() >= n, timeout=cfg.timeout, interval=0.02
        )
        end = time.perf_counter()
        completed = huey.storage.result_store_size()
    if not finished:
        raise TimeoutError(f"huey finished {completed}/{n} tasks in {cfg.timeout} s")
    return {
        "tasks": n,
        "seconds": end - start,
        "tasks_per_s": n / (end - start),
        "enqueue_per_s": n / (enqueued - start),
        "settings": huey_settings(db),
        "workers": cfg.huey_workers,
    }


def huey_lateness(base: Path, cfg: PeerConfig) -> dict[str, Any]:
    """(b) eta tasks scheduled by a separate producer process; lateness per task."""
    db = base / "huey-lateness.db"
    out = base / "huey-lateness.txt"
    out.touch()
    _, tasks = make_huey(db)

    def lines() -> int:
        return out.read_text().count("\n")

    with _huey_consumer(db, cfg) as proc:
        _wait_consumer_ready(proc, tasks, cfg.timeout)
        produced = run_json(
            helper_cmd(
                "peers.py",
                "huey-produce",
                "--db",
                str(db),
                "--out",
                str(out),
                "--rate",
                str(cfg.lateness_rate),
                "--count",
                str(cfg.lateness_count),
                "--ahead",
                str(cfg.lateness_ahead),
            ),
            timeout=cfg.lateness_count / cfg.lateness_rate + 30,
        )
        sent = int(produced["sent"])  # type: ignore[call-overload]
        # huey's scheduler ticks once a second: allow a few ticks past the last eta.
        wait_until(lambda: lines() >= sent, timeout=cfg.lateness_ahead + 5.0, interval=0.05)
    samples = [float(x) for x in out.read_text().split()]
    return {"sent": sent, "samples": samples, **latency_summary(samples)}


def huey_idle(base: Path, cfg: PeerConfig) -> dict[str, Any]:
    """(c) wake-ups/s of an idle consumer holding one task scheduled an hour away."""
    db = base / "huey-idle.db"
    _, tasks = make_huey(db)
    tasks.noop.schedule(delay=3600)
    with _huey_consumer(db, cfg) as proc:
        _wait_consumer_ready(proc, tasks, cfg.timeout)
        time.sleep(cfg.idle_settle)
        rate = wakeups(proc.pid, cfg.idle_window)
        rss = rss_mb(proc.pid, include_children=True)
    return {"wakeups_per_s": rate, "window_s": cfg.idle_window, "rss_mb": rss}


# =========================================================================== APScheduler

_FIRED: list[None] = []  # one entry per executed no-op job (list.append is atomic)
_LATENESS: list[float] = []


def aps_noop() -> None:
    _FIRED.append(None)


def aps_record(run_date_ts: float) -> None:
    _LATENESS.append(time.time() - run_date_ts)


def _aps_scheduler(db_path: Path) -> Any:
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    return BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=f"sqlite:///{db_path}")},
        executors={"default": ThreadPoolExecutor(10)},  # APScheduler's default executor
        timezone=UTC,
    )


def _aps_settings(db_path: Path) -> str:
    conn = sqlite3.connect(db_path)
    try:
        journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()
    return f"journal_mode={journal}, synchronous=FULL (SQLite default)"


def _aps_throughput_main(args: argparse.Namespace) -> None:
    from common import die_with_parent

    die_with_parent(HELPER_LIFETIME)
    db = Path(args.db)
    n, timeout = args.n, args.timeout
    sched = _aps_scheduler(db)
    sched.start(paused=True)
    try:
        # (d) add: the scheduler is paused, so each add_job is one job-store write, nothing runs.
        due = datetime.now(UTC)
        start = time.perf_counter()
        for i in range(n):
            sched.add_job(aps_noop, "date", run_date=due, id=f"a{i}", misfire_grace_time=None)
        add_s = time.perf_counter() - start
        # (e) fire: all n are due; resume and wait until every one has run.
        start = time.perf_counter()
        sched.resume()
        fired_all = wait_until(lambda: len(_FIRED) >= n, timeout=timeout, interval=0.002)
        fire_s = time.perf_counter() - start
        if not fired_all:
            raise TimeoutError(f"APScheduler fired {len(_FIRED)}/{n} jobs")
        # The store must be empty before (f), or leftovers would be counted again.
        if not wait_until(lambda: not sched.get_jobs(), timeout=timeout, interval=0.01):
            raise TimeoutError("APScheduler did not remove fired date jobs")
        # (f) end to end on the running scheduler: add n jobs due now, wait until all ran.
        _FIRED.clear()
        start = time.perf_counter()
        for i in range(n):
            sched.add_job(
                aps_noop, "date", run_date=datetime.now(UTC), id=f"e{i}", misfire_grace_time=None
            )
        e2e_ok = wait_until(lambda: len(_FIRED) >= n, timeout=timeout, interval=0.002)
        e2e_s = time.perf_counter() - start
        if not e2e_ok:
            raise TimeoutError(f"APScheduler end to end ran {len(_FIRED)}/{n} jobs")
    finally:
        sched.shutdown(wait=True)
    print(
        json.dumps(
            {
                "jobs": n,
                "add_per_s": n / add_s,
                "fire_per_s": n / fire_s,
                "e2e_per_s": n / e2e_s,
                "settings": _aps_settings(db),
            }
        )
    )


def _aps_lateness_main(args: argparse.Namespace) -> None:
    from common import die_with_parent

    die_with_parent(HELPER_LIFETIME)
    sched = _aps_scheduler(Path(args.db))
    sched.start()
    sent = 0
    try:
        for i in paced(args.rate, args.count, max_seconds=args.count / args.rate + 10):
            eta = time.time() + args.ahead
            sched.add_job(
                aps_record,
                "date",
                run_date=datetime.fromtimestamp(eta, UTC),
                args=[eta],
                id=f"l{i}",
                misfire_grace_time=None,
            )
            sent += 1
        wait_until(lambda: len(_LATENESS) >= sent, timeout=args.ahead + 5.0, interval=0.01)
    finally:
        sched.shutdown(wait=True)
    print(json.dumps({"sent": sent, "samples": list(_LATENESS)}))


def _aps_idle_main(args: argparse.Namespace) -> None:
    from common import die_with_parent

    die_with_parent(HELPER_LIFETIME)
    sched = _aps_scheduler(Path(args.db))
    sched.start()
    sched.add_job(aps_noop, "date", run_date=datetime.fromtimestamp(time.time() + 3600, UTC))
    print("ready", flush=True)
    time.sleep(HELPER_LIFETIME)  # the runner measures, then kills us


def aps_throughput(base: Path, cfg: PeerConfig) -> dict[str, Any]:
    """(d) add, (e) fire and (f) end to end, in one fresh helper process."""
    return run_json(
        helper_cmd(
            "peers.py",
            "aps-throughput",
            "--db",
            str(base / "aps-throughput.db"),
            "--n",
            str(cfg.aps_jobs),
            "--timeout",
            str(cfg.timeout),
        ),
        timeout=cfg.timeout * 3 + 30,
    )


def aps_lateness(base: Path, cfg: PeerConfig) -> dict[str, Any]:
    """(g) in-process lateness of date jobs added 200 ms ahead at 100/s."""
    produced = run_json(
        helper_cmd(
            "peers.py",
            "aps-lateness",
            "--db",
            str(base / "aps-lateness.db"),
            "--rate",
            str(cfg.lateness_rate),
            "--count",
            str(cfg.lateness_count),
            "--ahead",
            str(cfg.lateness_ahead),
        ),
        timeout=cfg.lateness_count / cfg.lateness_rate + 40,
    )
    samples = [float(x) for x in produced["samples"]]  # type: ignore[attr-defined]
    return {"sent": produced["sent"], "samples": samples, **latency_summary(samples)}


def aps_idle(base: Path, cfg: PeerConfig) -> dict[str, Any]:
    """(h) wake-ups/s of a BackgroundScheduler whose only job is an hour away."""
    cmd = helper_cmd("peers.py", "aps-idle", "--db", str(base / "aps-idle.db"))
    with managed_process(cmd) as proc:
        if read_line(proc, timeout=cfg.timeout) != "ready":
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"APScheduler idle helper did not start: {err[-2000:]}")
        time.sleep(cfg.idle_settle)
        rate = wakeups(proc.pid, cfg.idle_window)
        rss = rss_mb(proc.pid, include_children=True)
    return {"wakeups_per_s": rate, "window_s": cfg.idle_window, "rss_mb": rss}


# =========================================================================== all


def run_peers(cfg: PeerConfig, *, only: set[str] | None = None) -> dict[str, Any]:
    """Every peer measurement; a failing one is reported as {"error": ...}, not raised."""
    plan = {
        "huey_e2e": huey_end_to_end,
        "huey_lateness": huey_lateness,
        "huey_idle": huey_idle,
        "aps_throughput": aps_throughput,
        "aps_lateness": aps_lateness,
        "aps_idle": aps_idle,
    }
    results: dict[str, Any] = {}
    with workdir("peers") as base:
        for name, func in plan.items():
            if only and name not in only:
                continue
            started = time.perf_counter()
            try:
                results[name] = func(base, cfg)
            except Exception as exc:  # one broken peer must not lose the others' figures
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            results[name]["wall_s"] = time.perf_counter() - started
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="peer benchmarks and their helper processes")
    sub = parser.add_subparsers(dest="role", required=True)
    every = sub.add_parser("all", help="run every peer benchmark and print JSON")
    every.add_argument("--quick", action="store_true")
    consumer = sub.add_parser("huey-consumer")
    consumer.add_argument("--db", required=True)
    consumer.add_argument("--workers", type=int, default=1)
    produce = sub.add_parser("huey-produce")
    aps_lat = sub.add_parser("aps-lateness")
    for p in (produce, aps_lat):
        p.add_argument("--db", required=True)
        p.add_argument("--rate", type=float, required=True)
        p.add_argument("--count", type=int, required=True)
        p.add_argument("--ahead", type=float, required=True)
    produce.add_argument("--out", required=True)
    aps_tp = sub.add_parser("aps-throughput")
    aps_tp.add_argument("--db", required=True)
    aps_tp.add_argument("--n", type=int, required=True)
    aps_tp.add_argument("--timeout", type=float, required=True)
    aps_id = sub.add_parser("aps-idle")
    aps_id.add_argument("--db", required=True)
    args = parser.parse_args(argv)

    if args.role == "all":
        cfg = PeerConfig.quick() if args.quick else PeerConfig()
        results = run_peers(cfg)
        for value in results.values():
            value.pop("samples", None)
        print(json.dumps(results, indent=2))
        return
    handlers = {
        "huey-consumer": _huey_consumer_main,
        "huey-produce": _huey_produce_main,
        "aps-throughput": _aps_throughput_main,
        "aps-lateness": _aps_lateness_main,
        "aps-idle": _aps_idle_main,
    }
    handlers[args.role](args)


if __name__ == "__main__":
    # Re-enter through the importable module so task functions live in module "peers" in every
    # process (huey's registry keys and APScheduler's job references include the module name).
    import peers

    sys.exit(peers.main())
