"""durajobs benchmark runner: the raw SQLite floor, the peers, and durajobs, side by side.

Usage (from the repository root)::

    .venv/bin/python benchmarks/run.py --quick      # under a minute, small sizes
    .venv/bin/python benchmarks/run.py              # full sizes (about 5 minutes)
    .venv/bin/python benchmarks/run.py --render benchmarks/out/last-run.json  # text only

Writes ``benchmarks/RESULTS.md`` (machine, versions, one table: workload / measured /
reference / target / ratio, then ``FINDINGS.md``: what was changed for speed and where the
time goes) and two PNG charts (``lateness.png``, ``throughput.png``), and the raw numbers to
``benchmarks/out/last-run.json`` (gitignored), from which ``--render`` rewrites the text.

Theory of operation: these machines are noisy, so targets are ratios to baselines measured
in the same run: the raw apsw floor (``floor.py``) for store-bound paths, huey and APScheduler
(``peers.py``) for end-to-end work. Absolute numbers are printed too, with the machine stated,
and the issue's reference figures beside them ("reference" = measured on this kind of
machine before; "x ref" = this run / reference, a check that the machine behaved).

The ``durajobs_*`` functions below are durajobs' measurements; each docstring states what it
measures and returns, and ``dj_bench.py`` does the work (the jobs are in ``dj_app.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import json
import math
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dj_bench
from common import (
    BENCH_DIR,
    OUT_DIR,
    Result,
    fmt_number,
    machine_description,
    markdown_table,
    percentile,
    workdir,
    write_results_md,
)
from floor import FloorRun, run_floor
from peers import PeerConfig, run_peers

# Reference figures from the benchmark issue (2 cores, ext4, apsw 3.54.1, WAL).
REFERENCE: dict[str, float] = {
    "raw_full_txn_s": 5_900,
    "raw_normal_txn_s": 40_000,
    "raw_batch_update_rows_s": 310_000,
    "huey_e2e_s": 1_800,
    "huey_lateness_p50": 0.650,
    "huey_lateness_p99": 1.190,
    "huey_idle_wakeups": 11,
    "aps_add_s": 480,
    "aps_fire_s": 730,
    "aps_lateness_p99": 0.0025,
    "aps_idle_wakeups": 0,
}


QUICK_CAVEAT = (
    "Quick mode uses smaller sizes than the targets name (see each row): its figures are "
    "indicative only."
)


@dataclasses.dataclass(frozen=True)
class Config:
    """Sizes of one run. ``--quick`` shrinks them; the targets' nominal sizes are the full ones."""

    quick: bool
    peers: PeerConfig
    run_due_instances: int  # due no-op Continuous instances for run_due() (target: 10,000)
    client_call_seconds: float  # how long to time each client call kind, per round (5 rounds)
    scale_instances: int  # instances for the scale run (target: 1,000,000)
    scale_small: int  # the small table to compare run_due cost with (target: 1,000)
    scale_due: int  # due instances among them (target: 100)

    @classmethod
    def make(cls, quick: bool) -> Config:
        if quick:
            return cls(
                quick=True,
                peers=PeerConfig.quick(),
                run_due_instances=2_000,
                client_call_seconds=0.3,
                scale_instances=100_000,
                scale_small=1_000,
                scale_due=100,
            )
        return cls(
            quick=False,
            peers=PeerConfig(),
            run_due_instances=10_000,
            client_call_seconds=1.0,
            scale_instances=1_000_000,
            scale_small=1_000,
            scale_due=100,
        )


# =========================================================================== durajobs slots
# Each slot gets the run's Config and a fresh temporary directory on the real disk (deleted
# afterwards) and returns its figures, or None while durajobs is not ready ("pending").


def durajobs_run_due(cfg: Config, base: Path) -> dict[str, Any] | None:
    """run_due() over ``cfg.run_due_instances`` due no-op Continuous instances.

    For each durability: create a ``Jobs(base / "run_due-<d>.db", ..., durability=d)`` with a
    Continuous job whose execute is a no-op (``start_immediately=False``, or a FakeClock moved
    past the first due time) and ``start`` the instances; then time one ``jobs.run_due()``
    call that runs all of them (check it returns ``cfg.run_due_instances``).

    Returns: ``{"full": steps/s, "normal": steps/s}`` (instances run / seconds in run_due;
    the median of three rounds, all listed under ``"<durability>_rounds"``).
    Target: full >= 3x raw FULL single-txn rate, normal >= 0.5x raw NORMAL (same run).
    """
    return dj_bench.run_due(base, cfg.run_due_instances)


def durajobs_client_calls(cfg: Config, base: Path) -> dict[str, Any] | None:
    """Client write calls that commit one transaction each, beside the raw transaction.

    ``debounce.add(id, event)`` on a Debounce with a large ``flush_after`` (no flush inside
    the call) and ``task.send(id, event)`` on a Task whose on_event schedules nothing heavy;
    ids cycle over ~1,000 instances; each call stores different bytes. Per durability, five
    rounds of (raw single transaction, add, send), each timed for ``cfg.client_call_seconds``
    (``common.run_bounded``).

    Returns: ``{"<call>_<durability>"}`` -> median calls/s, ``"<call>_<durability>_ratio"`` ->
    median of the per-round ratios to the raw round, and the rounds. Targets: FULL >= 0.8x and
    NORMAL >= 0.5x the raw single-transaction rate of the same durability.
    """
    return dj_bench.client_calls(base, cfg.client_call_seconds)


def durajobs_end_to_end(cfg: Config, base: Path) -> dict[str, Any] | None:
    """The huey end-to-end workload on durajobs: ``cfg.peers.e2e_tasks`` no-op tasks.

    Start the daemon (``durajobs_daemon.py``) in a subprocess with ``common.managed_process``
    on a fresh database; wait until it is ready; from this process ``send`` N events to Task
    instances whose on_event schedules ``execute`` now (a no-op); time from the first send
    until every instance's execute has run (poll ``status().execute_count`` or the history).

    Returns: ``{"raw_full", "full", "normal", "bulk", "drain", "drain2"}``: the raw FULL
    single-transaction rate measured just before and after the FULL run (their mean: the
    basis of its ratio); the workload with each durability (huey commits with
    synchronous=FULL: the FULL run is the like-for-like one); the FULL workload sent with
    ``send_many`` in batches of 100; the daemon alone draining N tasks already due with
    ``--workers 1`` and ``--workers 2`` (alternating rounds, medians), each with
    ``tasks_per_s``. Targets: FULL >= 0.5x raw FULL and >= 2x huey; batches of 100 >= 5x
    single sends; ``--workers 2`` >= 1.7x ``--workers 1``.
    """
    import floor

    n = cfg.peers.e2e_tasks
    out: dict[str, Any] = {}

    def raw_full(tag: str) -> float:
        run = floor.measure(
            base / f"e2e-raw-{tag}.db",
            synchronous="FULL",
            rows_per_txn=1,
            max_seconds=0.5 if cfg.quick else 2.0,
        )
        return run.txn_per_s

    raws = [raw_full("before")]
    out["full"] = dj_bench.end_to_end(base, n, durability="full", timeout=cfg.peers.timeout)
    raws.append(raw_full("after"))
    out["raw_full"] = sum(raws) / len(raws)
    out["raw_full_rounds"] = raws
    out["normal"] = dj_bench.end_to_end(base, n, durability="normal", timeout=cfg.peers.timeout)
    out["bulk"] = dj_bench.end_to_end(
        base, n, durability="full", timeout=cfg.peers.timeout, batch=100
    )
    drains: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for _ in range(3):
        for workers in (1, 2):
            run = dj_bench.daemon_drain(base, n, timeout=cfg.peers.timeout, workers=workers)
            drains[workers].append(run)
    for workers, key in ((1, "drain"), (2, "drain2")):
        runs = drains[workers]
        out[key] = {
            "tasks": n,
            "workers": workers,
            "tasks_per_s": statistics.median(r["tasks_per_s"] for r in runs),
            "rounds": [r["tasks_per_s"] for r in runs],
            "cpu_us_per_task": statistics.median(r["daemon_cpu_us_per_task"] for r in runs),
            "cores_busy": statistics.median(r["daemon_cores_busy"] for r in runs),
        }
    return out


def durajobs_lateness(cfg: Config, base: Path) -> dict[str, Any] | None:
    """Alarm lateness through the daemon, alarms set by another process; three runs.

    Daemon in one subprocess; a producer subprocess sets alarms ``cfg.peers.lateness_ahead``
    seconds ahead at ``cfg.peers.lateness_rate``/s (``common.paced``), ``cfg.peers.
    lateness_count`` of them; each handler records ``time.time() - due_at`` as its first act
    (append one line to a file, as peers.huey_lateness does).

    Returns: ``{"runs": [{"p50", "p99", "max"}, ...], "samples": [...]}`` (the samples of
    the run with the median p99). Targets: p50 < 1 ms; p99 < 2 ms in the median of 3 runs.
    """
    peers = cfg.peers
    runs = []
    for _ in range(3):
        result = dj_bench.lateness(
            base, rate=peers.lateness_rate, count=peers.lateness_count, ahead=peers.lateness_ahead
        )
        runs.append(result)
    runs.sort(key=lambda r: r["p99"])
    middle = runs[len(runs) // 2]
    return {
        "runs": [{k: r[k] for k in ("p50", "p99", "max")} for r in runs],
        "samples": list(middle["samples"]),
    }


def durajobs_idle(cfg: Config, base: Path) -> dict[str, Any] | None:
    """Idle daemon with one alarm an hour away.

    Start the daemon on a database holding one instance due in an hour; wait until ready and
    ``cfg.peers.idle_settle`` s more; ``common.wakeups(pid, cfg.peers.idle_window)`` over
    the daemon and its worker processes; ``common.rss_mb(pid, include_children=True)``.

    Returns: ``{"wakeups_per_s": float, "rss_mb": float}``. Target: 0 wake-ups/s.
    """
    return dj_bench.idle(base, settle=cfg.peers.idle_settle, window=cfg.peers.idle_window)


def durajobs_scale(cfg: Config, base: Path) -> dict[str, Any] | None:
    """Scale: ``cfg.scale_instances`` instances in one file.

    Returns a dict with:
      - ``bytes_per_instance``: database file size (after checkpoint) / instances;
      - ``ls_first_page_s``: wall time of ``durajobs --db F ls`` (first page) in a subprocess;
      - ``run_due_large_s`` / ``run_due_small_s``: one ``run_due()`` with ``cfg.scale_due``
        due among ``cfg.scale_instances`` and among ``cfg.scale_small`` instances;
      - ``daemon_rss_mb``: daemon RSS (with workers) on the large file once idle.
    Targets: ls first page < 100 ms; large/small run_due <= 2x; daemon RSS < 60 MB.
    """
    return dj_bench.scale(
        base, instances=cfg.scale_instances, small=cfg.scale_small, due=cfg.scale_due
    )


# =========================================================================== table rows


def _x(value: float, basis: float) -> float:
    return value / basis if basis else math.nan


def _ref(key: str, unit: str) -> str:
    value = REFERENCE[key]
    return "~" + fmt_number(value, unit)


def _vs_ref(value: float | None, key: str) -> str:
    ref = REFERENCE[key]
    if value is None or not ref:
        return ""
    return f"{_x(value, ref):.2f}x ref"


def _min_ratio_row(
    workload: str,
    value: float | None,
    unit: str,
    *,
    basis: float | None,
    basis_name: str,
    minimum: float,
    note: str = "",
) -> Result:
    """A durajobs row whose target is ``value >= minimum * basis`` (basis from this run)."""
    target = f">= {minimum:g}x {basis_name}"
    if value is None:
        return Result(workload, None, unit, target=target, status="pending", note=note)
    if basis is None:
        return Result(workload, value, unit, target=target, ratio="no basis", note=note)
    ratio = _x(value, basis)
    return Result(
        workload,
        value,
        unit,
        target=target,
        ratio=f"{ratio:.2f}x {basis_name}",
        status="PASS" if ratio >= minimum else "FAIL",
        note=note,
    )


def _fmt_times(ratio: float) -> str:
    return f"{ratio:,.0f}x" if ratio >= 10 else f"{ratio:.1f}x"


def _txn_note(run: FloorRun) -> str:
    return (
        f"txn p50 {run.txn_p50_s * 1e3:.2f} / p99 {run.txn_p99_s * 1e3:.2f} / "
        f"max {run.txn_max_s * 1e3:.1f} ms"
    )


def _rounds_note(rounds: list[float] | None) -> str:
    if not rounds:
        return ""
    listed = ", ".join(f"{r:,.0f}" for r in rounds)
    return f"median of {len(rounds)} run_due() calls ({listed} steps/s); group commit"


def _cores() -> str:
    return str(len(os.sched_getaffinity(0)))


def _lateness_samples(value: Any) -> list[float] | None:
    """The lateness samples of a run (a list in runs from before the three lateness runs)."""
    if value is None or isinstance(value, list):
        return value
    return list(value["samples"])


def _error_row(workload: str, error: str) -> Result:
    return Result(workload, None, "", status="error", note=error[:300])


def build_rows(
    cfg: Config,
    floor: dict[str, FloorRun] | None,
    peers: dict[str, Any],
    dj: dict[str, Any],
    errors: dict[str, str],
) -> list[Result]:
    rows: list[Result] = []
    floor = floor or {}

    def floor_rate(key: str) -> float | None:
        run = floor.get(key)
        return run.txn_per_s if run else None

    raw_full, raw_normal = floor_rate("single_full"), floor_rate("single_normal")

    # ---- floor
    if "floor" in errors:
        rows.append(_error_row("raw apsw floor", errors["floor"]))
    else:
        rows += [
            Result(
                "raw apsw: 1 read-modify-write per txn, FULL",
                raw_full,
                "txn/s",
                reference=_ref("raw_full_txn_s", "txn/s"),
                ratio=_vs_ref(raw_full, "raw_full_txn_s"),
                note=_txn_note(floor["single_full"]),
            ),
            Result(
                "raw apsw: 1 read-modify-write per txn, NORMAL",
                raw_normal,
                "txn/s",
                reference=_ref("raw_normal_txn_s", "txn/s"),
                ratio=_vs_ref(raw_normal, "raw_normal_txn_s"),
                note=_txn_note(floor["single_normal"]),
            ),
            Result(
                "raw apsw: 100 read-modify-writes per txn, FULL",
                floor["batch_full"].rows_per_s,
                "rows/s",
                note="SELECT + json.loads + json.dumps + UPDATE per row; "
                + _txn_note(floor["batch_full"]),
            ),
            Result(
                "raw apsw: 100 plain UPDATEs per txn, FULL",
                floor["batch_update_full"].rows_per_s,
                "rows/s",
                reference=_ref("raw_batch_update_rows_s", "rows/s"),
                ratio=_vs_ref(floor["batch_update_full"].rows_per_s, "raw_batch_update_rows_s"),
                note="new bytes per row, no read: the reference's shape; "
                + _txn_note(floor["batch_update_full"]),
            ),
        ]

    # ---- durajobs vs floor
    n_due = f"{cfg.run_due_instances:,}"
    run_due = dj.get("run_due") or {}
    rows += [
        _min_ratio_row(
            f"durajobs run_due(): {n_due} due no-op Continuous, FULL",
            run_due.get("full"),
            "steps/s",
            basis=raw_full,
            basis_name="raw FULL txn/s",
            minimum=3,
            note=_rounds_note(run_due.get("full_rounds")),
        ),
        _min_ratio_row(
            f"durajobs run_due(): {n_due} due no-op Continuous, NORMAL",
            run_due.get("normal"),
            "steps/s",
            basis=raw_normal,
            basis_name="raw NORMAL txn/s",
            minimum=0.5,
            note=_rounds_note(run_due.get("normal_rounds")),
        ),
    ]
    calls = dj.get("client_calls") or {}
    for call, label in (("debounce_add", "debounce.add"), ("task_send", "task.send")):
        for durability, minimum in (("full", 0.8), ("normal", 0.5)):
            name = f"durajobs {label}, {durability.upper()}"
            basis_name = f"raw {durability.upper()} txn"
            target = f">= {minimum:g}x {basis_name}"
            ratio = calls.get(f"{call}_{durability}_ratio")
            if ratio is None:  # a run from before the interleaved rounds
                rows.append(
                    _min_ratio_row(
                        name,
                        calls.get(f"{call}_{durability}"),
                        "calls/s",
                        basis=raw_full if durability == "full" else raw_normal,
                        basis_name=basis_name + "/s",
                        minimum=minimum,
                    )
                )
                continue
            rounds = calls.get(f"{call}_{durability}_rounds", [])
            raws = calls.get(f"raw_{durability}_rounds", [])
            rows.append(
                Result(
                    name,
                    calls[f"{call}_{durability}"],
                    "calls/s",
                    target=target,
                    ratio=f"{ratio:.2f}x {basis_name}",
                    status="PASS" if ratio >= minimum else "FAIL",
                    note=f"median of {len(rounds)} rounds, each beside a raw {durability.upper()} "
                    f"round (raw {calls[f'raw_{durability}']:,.0f} txn/s; calls/s "
                    + ", ".join(f"{c:,.0f}/{r:,.0f}" for c, r in zip(rounds, raws, strict=False))
                    + "); ratio = median of the per-round ratios",
                )
            )

    bulk = dj.get("bulk")
    label = "durajobs task.send_many of 2,000 events vs 2,000 single sends, FULL"
    if bulk is None:
        rows.append(Result(label, None, "x", target=">= 10x", status="pending"))
    else:
        gain = _x(bulk["bulk_per_s"], bulk["single_per_s"])
        rows.append(
            Result(
                label,
                gain,
                "x",
                target=">= 10x",
                ratio=f"{bulk['bulk_per_s']:,.0f} vs {bulk['single_per_s']:,.0f} events/s",
                status="PASS" if gain >= 10 else "FAIL",
                note="one transaction (one fsync) for the batch; each item is its own step "
                f"(on_event runs per item); median of {len(bulk['bulk_rounds'])} rounds",
            )
        )

    # ---- end to end
    huey_e2e = peers.get("huey_e2e", {})
    aps_tp = peers.get("aps_throughput", {})
    if "error" in huey_e2e:
        rows.append(_error_row("huey end to end", huey_e2e["error"]))
    elif huey_e2e:
        rows.append(
            Result(
                f"huey SqliteHuey: enqueue + execute {huey_e2e['tasks']:,} no-op tasks",
                huey_e2e["tasks_per_s"],
                "tasks/s",
                reference=_ref("huey_e2e_s", "tasks/s"),
                ratio=_vs_ref(huey_e2e["tasks_per_s"], "huey_e2e_s"),
                note=f"consumer process, {huey_e2e['workers']} worker thread; "
                f"enqueue alone {huey_e2e['enqueue_per_s']:,.0f}/s",
            )
        )
    if "error" in aps_tp:
        rows.append(_error_row("APScheduler throughput", aps_tp["error"]))
    elif aps_tp:
        jobs = f"{aps_tp['jobs']:,}"
        rows += [
            Result(
                f"APScheduler + SQLAlchemyJobStore: add {jobs} date jobs (paused)",
                aps_tp["add_per_s"],
                "jobs/s",
                reference=_ref("aps_add_s", "jobs/s"),
                ratio=_vs_ref(aps_tp["add_per_s"], "aps_add_s"),
            ),
            Result(
                f"APScheduler: fire {jobs} due no-op jobs",
                aps_tp["fire_per_s"],
                "jobs/s",
                reference=_ref("aps_fire_s", "jobs/s"),
                ratio=_vs_ref(aps_tp["fire_per_s"], "aps_fire_s"),
            ),
            Result(
                f"APScheduler: add + fire {jobs} no-op jobs, running scheduler",
                aps_tp["e2e_per_s"],
                "jobs/s",
                note="same workload as huey's end to end",
            ),
        ]
    dj_e2e = dj.get("end_to_end")
    e2e_target = ">= 0.5x raw FULL txn/s and >= 2x huey"
    n_e2e = f"{cfg.peers.e2e_tasks:,}"
    if dj_e2e is None:
        rows.append(
            Result(
                f"durajobs: send + execute {n_e2e} no-op tasks via the daemon",
                None,
                "tasks/s",
                target=e2e_target,
                status="pending",
            )
        )
    else:
        raw_e2e = dj_e2e.get("raw_full") or raw_full
        for durability in ("full", "normal"):
            run = dj_e2e[durability]
            parts, ok = [], True
            like = durability == "full"
            if like and raw_e2e:
                ratio = _x(run["tasks_per_s"], raw_e2e)
                parts.append(f"{ratio:.2f}x raw FULL")
                ok = ratio >= 0.5
            for name, basis, minimum in (
                ("huey", huey_e2e.get("tasks_per_s"), 2),
                ("APScheduler", aps_tp.get("e2e_per_s"), None),
            ):
                if basis:
                    ratio = _x(run["tasks_per_s"], basis)
                    parts.append(f"{ratio:.1f}x {name}")
                    if minimum is not None:
                        ok = ok and ratio >= minimum
            note = (
                f"producer process sends (1 transaction each) at {run['send_per_s']:,.0f}/s; "
                f"CPU per task: producer {run['producer_cpu_us_per_task']:.0f} us, daemon "
                f"{run['daemon_cpu_us_per_task']:.0f} us; daemon --workers 1"
            )
            if "tasks_per_daemon_commit" in run:
                note += f", {run['tasks_per_daemon_commit']:.1f} tasks per daemon commit"
            if like and "raw_full_rounds" in dj_e2e:
                note += "; raw FULL measured just before and after: " + ", ".join(
                    f"{r:,.0f}" for r in dj_e2e["raw_full_rounds"]
                )
            if not like:
                note += "; NORMAL: not like for like (huey commits with synchronous=FULL)"
            rows.append(
                Result(
                    f"durajobs: send + execute {n_e2e} no-op tasks via the daemon, "
                    f"{durability.upper()}",
                    run["tasks_per_s"],
                    "tasks/s",
                    target=e2e_target if like else "-",
                    ratio=", ".join(parts),
                    status=("PASS" if ok else "FAIL") if like and parts else "ok",
                    note=note,
                )
            )
        bulk_e2e = dj_e2e.get("bulk")
        if bulk_e2e:
            gain = _x(bulk_e2e["tasks_per_s"], dj_e2e["full"]["tasks_per_s"])
            rows.append(
                Result(
                    f"durajobs: send_many (batches of 100) + execute {n_e2e} no-op tasks via "
                    "the daemon, FULL",
                    bulk_e2e["tasks_per_s"],
                    "tasks/s",
                    target=">= 5x single sends",
                    ratio=f"{gain:.1f}x single sends",
                    status="PASS" if gain >= 5 else "FAIL",
                    note=f"producer sends at {bulk_e2e['send_per_s']:,.0f}/s (one transaction "
                    f"per 100); CPU per task: producer {bulk_e2e['producer_cpu_us_per_task']:.0f}"
                    f" us, daemon {bulk_e2e['daemon_cpu_us_per_task']:.0f} us; "
                    f"{bulk_e2e.get('tasks_per_daemon_commit', math.nan):.1f} tasks per daemon "
                    "commit",
                )
            )
        drain, drain2 = dj_e2e.get("drain"), dj_e2e.get("drain2")
        if drain:
            rounds = drain.get("rounds")
            rows.append(
                Result(
                    f"durajobs daemon alone: {drain['tasks']:,} tasks already due, FULL, "
                    "--workers 1",
                    drain["tasks_per_s"],
                    "tasks/s",
                    note="no producer: the daemon's own ceiling (group commit)"
                    + (
                        f"; CPU {drain['cpu_us_per_task']:.0f} us per task, "
                        f"{drain['cores_busy']:.2f} cores busy"
                        if "cpu_us_per_task" in drain
                        else ""
                    )
                    + (
                        f"; median of {len(rounds)}: " + ", ".join(f"{r:,.0f}" for r in rounds)
                        if rounds
                        else ""
                    ),
                )
            )
        if drain and drain2:
            gain = _x(drain2["tasks_per_s"], drain["tasks_per_s"])
            rounds = drain2.get("rounds") or []
            rows.append(
                Result(
                    f"durajobs daemon alone: {drain2['tasks']:,} tasks already due, FULL, "
                    "--workers 2",
                    drain2["tasks_per_s"],
                    "tasks/s",
                    target=">= 1.7x --workers 1",
                    ratio=f"{gain:.2f}x --workers 1",
                    status="PASS" if gain >= 1.7 else "FAIL",
                    note=f"{_cores()} cores; rounds alternate with --workers 1; median of "
                    f"{len(rounds)}: "
                    + ", ".join(f"{r:,.0f}" for r in rounds)
                    + (
                        f"; CPU {drain2['cpu_us_per_task']:.0f} us per task (parent and "
                        f"workers), {drain2['cores_busy']:.2f} cores busy"
                        if "cpu_us_per_task" in drain2
                        else ""
                    ),
                )
            )

    # ---- lateness
    huey_lat = peers.get("huey_lateness", {})
    aps_lat = peers.get("aps_lateness", {})
    rate = f"{cfg.peers.lateness_rate:g}/s, {cfg.peers.lateness_ahead * 1000:g} ms ahead"
    for name, lat, ref50, ref99, where in (
        ("huey", huey_lat, "huey_lateness_p50", "huey_lateness_p99", "eta tasks, producer process"),
        ("APScheduler", aps_lat, None, "aps_lateness_p99", "date jobs, in-process only"),
    ):
        if "error" in lat:
            rows.append(_error_row(f"{name} lateness", lat["error"]))
            continue
        if not lat:
            continue
        for pct, ref_key in (("p50", ref50), ("p99", ref99)):
            rows.append(
                Result(
                    f"{name} lateness {pct} ({where}; {rate}; n={lat['n']:.0f})",
                    lat[pct],
                    "s",
                    reference=_ref(ref_key, "s") if ref_key else "",
                    ratio=_vs_ref(lat[pct], ref_key) if ref_key else "",
                )
            )
    dj_lat = dj.get("lateness")
    if isinstance(dj_lat, list):  # a run from before the three lateness runs
        dj_lat = {"samples": dj_lat, "runs": []}
    lat_runs = (dj_lat or {}).get("runs") or []
    for pct, limit in (("p50", 0.001), ("p99", 0.002)):
        label = f"durajobs lateness {pct} (daemon; alarms set by another process; {rate})"
        target = f"< {limit * 1000:g} ms"
        if pct == "p99":
            target += " (median of 3 runs)"
        if dj_lat is None:
            rows.append(Result(label, None, "s", target=target, status="pending"))
            continue
        if lat_runs:
            per_run = sorted(r[pct] for r in lat_runs)
            value = per_run[len(per_run) // 2]
        else:
            per_run = []
            value = percentile(dj_lat["samples"], 50 if pct == "p50" else 99)
        peers_later = [
            f"{name} {_fmt_times(_x(peer[pct], value))} later"
            for name, peer in (("huey", huey_lat), ("APScheduler", aps_lat))
            if pct in peer and value > 0
        ]
        note = ""
        if per_run:
            note = f"median of {len(per_run)} runs: " + ", ".join(
                fmt_number(v, "s") for v in per_run
            )
            if pct == "p99":
                note += "; max per run: " + ", ".join(fmt_number(r["max"], "s") for r in lat_runs)
        rows.append(
            Result(
                label,
                value,
                "s",
                target=target,
                ratio=", ".join(peers_later),
                status="PASS" if value < limit else "FAIL",
                note=note,
            )
        )

    # ---- idle
    window = f"{cfg.peers.idle_window:g} s window"
    for name, key, ref_key, what in (
        ("huey", "huey_idle", "huey_idle_wakeups", "consumer, one task an hour away"),
        (
            "APScheduler",
            "aps_idle",
            "aps_idle_wakeups",
            "BackgroundScheduler, one job an hour away",
        ),
    ):
        idle = peers.get(key, {})
        if "error" in idle:
            rows.append(_error_row(f"{name} idle", idle["error"]))
        elif idle:
            rows.append(
                Result(
                    f"{name} idle wake-ups ({what}; {window})",
                    idle["wakeups_per_s"],
                    "/s",
                    reference=_ref(ref_key, "/s"),
                    note=f"RSS {idle['rss_mb']:.0f} MB",
                )
            )
    dj_idle = dj.get("idle")
    label = f"durajobs daemon idle wake-ups (one alarm an hour away; {window})"
    if dj_idle is None:
        rows.append(Result(label, None, "/s", target="0 /s", status="pending"))
    else:
        rows.append(
            Result(
                label,
                dj_idle["wakeups_per_s"],
                "/s",
                target="0 /s",
                status="PASS" if dj_idle["wakeups_per_s"] == 0 else "FAIL",
                note=f"RSS parent + worker {dj_idle.get('rss_mb', math.nan):.0f} MB, "
                f"PSS {dj_idle.get('pss_mb', math.nan):.0f} MB",
            )
        )

    # ---- scale
    scale = dj.get("scale")
    big, small, due = (f"{cfg.scale_instances:,}", f"{cfg.scale_small:,}", f"{cfg.scale_due:,}")
    labels = {
        "bytes": f"durajobs bytes per instance ({big} instances)",
        "ls": f"durajobs `durajobs ls` first page ({big} instances), subprocess end to end",
        "run_due": f"durajobs run_due(), {due} due among {big} vs among {small}",
        "memory": f"durajobs daemon memory on the {big}-instance file (PSS, parent + worker)",
    }
    if scale is None:
        ls_goal = "<= 1.3x `durajobs --version`"
        for key, target in (("bytes", "-"), ("ls", ls_goal), ("run_due", "<= 2x"),
                            ("memory", "< 60 MB")):  # fmt: skip
            rows.append(Result(labels[key], None, "", target=target, status="pending"))
    else:
        btrees = {k.split(":", 1)[1]: v for k, v in scale.items() if k.startswith("btree:")}
        tables = btrees.get("instances", 0.0)
        indexes = sum(v for k, v in btrees.items() if k.startswith("instances_"))
        history = btrees.get("history", 0.0) + btrees.get("history_instance", 0.0)
        rows.append(
            Result(
                labels["bytes"],
                scale["bytes_per_instance"],
                "B",
                note=f"file size after a checkpoint / {scale['instances']:,.0f} rows, a third "
                f"of each kind, {scale['history_per_instance']} history records each; by "
                f"b-tree: instances {tables:,.0f}, their indexes {indexes:,.0f}, history "
                f"{history:,.0f}",
            )
        )
        ls = scale["ls_first_page_s"]
        startup = scale["ls_startup_s"]
        rows.append(
            Result(
                labels["ls"],
                ls,
                "s",
                target="<= 1.3x `durajobs --version`",
                ratio=f"{_x(ls, startup):.2f}x `--version`",
                status="PASS" if ls <= 1.3 * startup else "FAIL",
                note=f"of which Python start-up + imports (`durajobs --version`) "
                f"{fmt_number(scale['ls_startup_s'], 's')}; the query and the page "
                f"(`Admin(path).ls()` in process) {fmt_number(scale['ls_library_s'], 's')}",
            )
        )
        ratio = _x(scale["run_due_large_s"], scale["run_due_small_s"])
        large = ", ".join(fmt_number(x, "s") for x in scale["run_due_large_rounds"])
        small_r = ", ".join(fmt_number(x, "s") for x in scale["run_due_small_rounds"])
        rows.append(
            Result(
                labels["run_due"],
                ratio,
                "x",
                target="<= 2x",
                ratio=f"{fmt_number(scale['run_due_large_s'], 's')} vs "
                f"{fmt_number(scale['run_due_small_s'], 's')}",
                status="PASS" if ratio <= 2 else "FAIL",
                note=f"median of {len(scale['run_due_large_rounds'])} calls each, FULL, the "
                f"token_refresher handler, random instances; large: {large}; small: {small_r}",
            )
        )
        pss = scale["daemon_pss_mb"]
        rows.append(
            Result(
                labels["memory"],
                pss,
                "MB",
                target="< 60 MB",
                status="PASS" if pss < 60 else "FAIL",
                note=f"RSS: parent {scale['daemon_rss_parent_mb']:.0f} MB, parent + forked "
                f"worker {scale['daemon_rss_mb']:.0f} MB (the worker shares the parent's "
                "pages, which RSS counts in both; PSS counts them once)",
            )
        )

    for name, error in errors.items():
        if name.startswith("durajobs"):
            rows.append(_error_row(name, error))
    return rows


# =========================================================================== charts


def write_charts(
    charts_dir: Path,
    peers: dict[str, Any],
    floor: dict[str, FloorRun] | None,
    dj: dict[str, Any],
) -> list[Path]:
    """lateness.png (CDF per system) and throughput.png (bars per system)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    charts_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    # ---- lateness CDF
    fig, ax = plt.subplots(figsize=(9, 5.5))
    series = [
        ("huey (eta tasks, other process)", peers.get("huey_lateness", {}).get("samples")),
        ("APScheduler (date jobs, in-process)", peers.get("aps_lateness", {}).get("samples")),
        ("durajobs daemon (other process)", _lateness_samples(dj.get("lateness"))),
    ]
    for label, samples in series:
        if not samples:
            ax.plot([], [], label=f"{label}: pending")
            continue
        ordered = sorted(max(s * 1000, 1e-3) for s in samples)  # ms; log axis needs > 0
        ys = [(i + 1) / len(ordered) for i in range(len(ordered))]
        p50 = fmt_number(percentile(samples, 50), "s")
        p99 = fmt_number(percentile(samples, 99), "s")
        ax.step(ordered, ys, where="post", label=f"{label}: p50 {p50}, p99 {p99}")
    ax.set_xscale("log")
    ax.set_xlabel("lateness: start - due time (ms, log scale)")
    ax.set_ylabel("fraction of alarms")
    ax.set_title("Alarm lateness (alarms 200 ms ahead at 100/s)")
    ax.axvline(1, color="grey", lw=0.8, ls=":", label="durajobs target p50 < 1 ms")
    ax.axvline(2, color="grey", lw=0.8, ls="--", label="durajobs target p99 < 2 ms")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    fig.tight_layout()
    path = charts_dir / "lateness.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    # ---- throughput bars
    floor = floor or {}
    huey_e2e = peers.get("huey_e2e", {})
    aps_tp = peers.get("aps_throughput", {})
    e2e = dj.get("end_to_end") or {}
    e2e_bars = [
        ("huey", huey_e2e.get("tasks_per_s")),
        ("APScheduler\n(add+fire,\nrunning)", aps_tp.get("e2e_per_s")),
        ("APScheduler\nadd only", aps_tp.get("add_per_s")),
        ("APScheduler\nfire only", aps_tp.get("fire_per_s")),
        ("durajobs\ndaemon\nFULL", e2e.get("full", {}).get("tasks_per_s")),
        ("durajobs\ndaemon\nNORMAL", e2e.get("normal", {}).get("tasks_per_s")),
        ("durajobs\ndaemon alone\n(all due)", e2e.get("drain", {}).get("tasks_per_s")),
    ]
    run_due = dj.get("run_due") or {}
    calls = dj.get("client_calls") or {}
    txn_bars = [
        ("raw apsw\nFULL", floor["single_full"].txn_per_s if "single_full" in floor else None),
        ("durajobs\nrun_due FULL", run_due.get("full")),
        ("durajobs\nadd FULL", calls.get("debounce_add_full")),
        ("durajobs\nsend FULL", calls.get("task_send_full")),
        (
            "raw apsw\nNORMAL",
            floor["single_normal"].txn_per_s if "single_normal" in floor else None,
        ),
        ("durajobs\nrun_due NORMAL", run_due.get("normal")),
        ("durajobs\nadd NORMAL", calls.get("debounce_add_normal")),
        ("durajobs\nsend NORMAL", calls.get("task_send_normal")),
    ]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 5.2), gridspec_kw={"width_ratios": [7, 8]})
    for ax, bars, title, unit in (
        (ax1, e2e_bars, "End to end: enqueue + execute no-op tasks", "tasks/s"),
        (ax2, txn_bars, "One write transaction per step / call", "per s"),
    ):
        labels = [label for label, _ in bars]
        values = [value if value else 0.0 for _, value in bars]
        colors = ["tab:green" if "durajobs" in label else "tab:blue" for label in labels]
        positions = range(len(bars))
        ax.bar(positions, values, color=colors)
        top = max(values) if any(values) else 1.0
        for pos, (_, value) in zip(positions, bars, strict=True):
            text = "pending" if not value else f"{value:,.0f}"
            ax.text(
                pos,
                (value or top * 0.02) * 1.05,
                text,
                ha="center",
                va="bottom",
                fontsize=7,
                rotation=0,
            )
        ax.set_xticks(list(positions), labels, fontsize=7)
        ax.set_ylabel(unit)
        ax.set_ylim(0, top * 1.2)
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    path = charts_dir / "throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


# =========================================================================== main


def _display_path(path: Path) -> str:
    """``path`` relative to the repository root when it is inside it (stable in RESULTS.md)."""
    try:
        return str(path.resolve().relative_to(BENCH_DIR.parent))
    except ValueError:
        return str(path)


def _timed(label: str, func: Callable[[], Any], errors: dict[str, str], log: list[str]) -> Any:
    started = time.perf_counter()
    print(f"[bench] {label} ...", file=sys.stderr, flush=True)
    try:
        value = func()
    except Exception as exc:  # record and go on: the other sections' figures still count
        errors[label] = f"{type(exc).__name__}: {exc}"
        value = None
    elapsed = time.perf_counter() - started
    state = "error" if label in errors else ("pending" if value is None else "ok")
    log.append(f"{label}: {elapsed:.1f} s ({state})")
    print(f"[bench] {label}: {elapsed:.1f} s ({state})", file=sys.stderr, flush=True)
    return value


def measure(cfg: Config, *, no_peers: bool) -> dict[str, Any]:
    """Run every benchmark; returns the raw figures (JSON-able; ``render`` turns them into text)."""
    started = time.perf_counter()
    started_at = dt.datetime.now(dt.UTC)
    errors: dict[str, str] = {}
    log: list[str] = []
    machine = machine_description(OUT_DIR)

    # The floor and the durajobs paths compared with it run next to each other.
    floor = _timed("floor", lambda: run_floor(quick=cfg.quick), errors, log)
    dj: dict[str, Any] = {}
    with workdir("durajobs") as base:
        dj["run_due"] = _timed("durajobs run_due", lambda: durajobs_run_due(cfg, base), errors, log)
        dj["client_calls"] = _timed(
            "durajobs client calls", lambda: durajobs_client_calls(cfg, base), errors, log
        )
        dj["bulk"] = _timed(
            "durajobs bulk calls", lambda: dj_bench.bulk_vs_single(base), errors, log
        )
    peers: dict[str, Any] = {}
    if not no_peers:
        peers = _timed("peers", lambda: run_peers(cfg.peers), errors, log) or {}
        for name, value in peers.items():
            if "error" in value:
                errors[f"peers {name}"] = value["error"]
            log.append(
                f"  {name}: {value.get('wall_s', math.nan):.1f} s"
                + (" (error)" if "error" in value else "")
            )
    plan: list[tuple[str, str, Callable[[Config, Path], Any]]] = [
        ("end_to_end", "durajobs end to end", durajobs_end_to_end),
        ("lateness", "durajobs lateness", durajobs_lateness),
        ("idle", "durajobs idle", durajobs_idle),
        ("scale", "durajobs scale", durajobs_scale),
    ]
    with workdir("durajobs") as base:
        for key, label, func in plan:
            dj[key] = _timed(label, functools.partial(func, cfg, base), errors, log)
    return {
        "mode": "quick" if cfg.quick else "full",
        "started_at": started_at.isoformat(),
        "total_s": time.perf_counter() - started,
        "machine": machine,
        "floor": {
            k: dataclasses.asdict(v) | {"txn_per_s": v.txn_per_s, "rows_per_s": v.rows_per_s}
            for k, v in (floor or {}).items()
        },
        "peers": peers,
        "durajobs": dj,
        "errors": errors,
        "log": log,
    }


def render(raw: dict[str, Any], out: Path, charts_dir: Path) -> tuple[list[Result], str]:
    """RESULTS.md and the charts from the raw figures of one run."""
    cfg = Config.make(raw["mode"] == "quick")
    fields = {f.name for f in dataclasses.fields(FloorRun)}
    floor = {k: FloorRun(**{name: v[name] for name in fields}) for k, v in raw["floor"].items()}
    peers, dj, errors, log = raw["peers"], raw["durajobs"], raw["errors"], raw["log"]
    machine = raw["machine"]
    started_at = dt.datetime.fromisoformat(raw["started_at"])
    total = raw["total_s"]
    rows = build_rows(cfg, floor, peers, dj, errors)
    charts = write_charts(charts_dir, peers, floor, dj)

    fs = next(iter(floor.values())).file_system if floor else machine["bench dir file system"]
    huey_settings = peers.get("huey_e2e", {}).get("settings", "?")
    aps_settings = peers.get("aps_throughput", {}).get("settings", "?")
    mode = raw["mode"]
    preamble = f"""
Mode **{mode}** (`benchmarks/run.py{" --quick" if cfg.quick else ""}`), run
{started_at:%Y-%m-%d %H:%M} UTC, {total:.0f} s in all. Targets are ratios to baselines
measured in this same run (these machines are noisy); "x ref" compares this run with the
reference figure from the benchmark issue (2 cores, ext4, apsw 3.54.1, WAL), as a check that
the machine behaved. **PASS**/**FAIL** compare with the issue's targets; where a target is not
met, the gap and the profile that explains it are under "Where the time goes" below.
{QUICK_CAVEAT if cfg.quick else ""}
"""
    notes = [
        f"Databases: temporary directories under `benchmarks/out/` on {fs}, deleted after "
        "each benchmark (not tmpfs).",
        "Raw apsw floor: WAL; each transaction is `BEGIN IMMEDIATE`; SELECT one row's JSON; "
        "json.loads; change a counter and a timestamp; json.dumps; UPDATE; `COMMIT`. Rows "
        "really change (SQLite writes nothing for identical bytes); counters are checked "
        "afterwards. The reference '100 updates per transaction ~310,000 rows/s' is plain "
        "UPDATEs; the 100 read-modify-writes row adds the SELECT and the JSON round trip "
        "(~6 us per row in Python), so it has no reference.",
        "durajobs: every figure goes through the public API (`Jobs`, its clients, "
        "`run_due()`) or the real daemon (`python durajobs_daemon.py --app dj_app:jobs --db "
        "FILE`, a subprocess, ready at `READY=1` on a `NOTIFY_SOCKET` the runner binds); SQL "
        "is used only to set files up (the scale clone, making chosen instances due). The "
        "daemon runs with `--log-level warning` (its default `info` logs a line per step; "
        "huey's consumer here logs nothing) and `--workers 1` (huey: 1 worker). Jobs are in "
        "`benchmarks/dj_app.py`, measurements in `benchmarks/dj_bench.py`.",
        "durajobs client calls: `debounce.add` with the default reducer (keep the latest "
        "event) and `flush_after` an hour (no flush in the call); `task.send` with a no-op "
        "`on_event` that schedules nothing; ids cycle over 1,000 instances created "
        "beforehand; every call stores a new event (new bytes), and the stored event counts "
        "are checked afterwards.",
        f"huey {machine['huey']}: `SqliteHuey` defaults ({huey_settings}); the consumer is "
        f"`huey.create_consumer(workers={cfg.peers.huey_workers}, worker_type='thread')` -- "
        "huey_consumer's defaults (1 s scheduler tick, 0.1 s polling backing off to 10 s) -- "
        "in its own process, tasks enqueued by another process: the production shape. "
        "End to end counts from the first enqueue to the N-th stored result.",
        f"APScheduler {machine['APScheduler']}: `BackgroundScheduler` + `SQLAlchemyJobStore` "
        f"on SQLite ({aps_settings}), default `ThreadPoolExecutor(10)`, date jobs with "
        "`misfire_grace_time=None`. APScheduler 3 has no cross-process wake-up, so its "
        "lateness is measured in-process (jobs added from the scheduler's own process); "
        "huey's and durajobs' alarms are set by another process.",
        "Lateness = the handler's first `time.time()` minus the due time it was given; "
        "alarms are set 200 ms ahead at 100/s on an absolute schedule (durajobs: a producer "
        "process `send`s to a Task whose `on_event` schedules `execute` at that time).",
        "Disk noise: the floor rows show per-transaction p50/p99/max; a FULL commit here "
        "usually takes ~0.2 ms but single fsyncs of tens of ms (sometimes hundreds) occur. "
        "APScheduler commits every add_job and every fired job's removal under one lock, so "
        "one slow fsync delays the firings queued behind it: its lateness p99 swings from "
        "~3 ms to hundreds of ms between runs. Compare runs by their ratios.",
        "Idle wake-ups = voluntary + nonvoluntary context switches per second of the process, "
        "all its threads and descendants (/proc/PID/task/*/status) over the window, after "
        "start-up has settled. huey's worker polls with back-off, so its figure is slightly "
        "higher in short windows. Memory: RSS from /proc/PID/status; PSS from "
        "/proc/PID/smaps_rollup (pages shared by the daemon and its forked worker counted "
        "once).",
        "Wall time per section: " + "; ".join(log),
    ]
    if errors:
        notes.append("Errors: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
    charts_rel = ", ".join(f"`{p.name}`" for p in charts)
    notes.append(
        f"Charts: {charts_rel} in `{_display_path(charts_dir)}`: "
        + " ".join(f"![{p.stem}]({p.name})" for p in charts)
    )
    write_results_md(
        out,
        title="durajobs benchmarks",
        preamble=preamble,
        machine=machine,
        results=rows,
        notes=notes,
    )
    findings = BENCH_DIR / "FINDINGS.md"
    if findings.exists():  # what was changed for speed, and the profiles behind each gap
        with out.open("a") as stream:
            stream.write("\n" + findings.read_text())
    return rows, charts_rel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="durajobs benchmarks (floor, peers, durajobs)")
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "RESULTS.md")
    parser.add_argument("--charts", type=Path, default=BENCH_DIR)
    parser.add_argument("--no-peers", action="store_true", help="skip huey and APScheduler")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="measure nothing: rewrite RESULTS.md and the charts from a run's raw figures "
        "(benchmarks/out/last-run.json)",
    )
    args = parser.parse_args(argv)

    if args.render is not None:
        raw = json.loads(args.render.read_text())
    else:
        # SIGTERM unwinds like an exception: every `with managed_process` block kills its group.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        raw = measure(Config.make(args.quick), no_peers=args.no_peers)
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        (OUT_DIR / "last-run.json").write_text(json.dumps(raw, indent=1, default=str))
    rows, charts_rel = render(raw, args.out, args.charts)
    print(markdown_table(rows))
    print(
        f"\n{raw['mode']} run: {raw['total_s']:.1f} s; wrote {args.out} and {charts_rel}",
        file=sys.stderr,
    )
    return 1 if raw["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
