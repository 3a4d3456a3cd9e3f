"""durajobs benchmark runner: the raw SQLite floor, the peers, and durajobs, side by side.

Usage (from the repository root)::

    .venv/bin/python benchmarks/run.py --quick      # under a minute, small sizes
    .venv/bin/python benchmarks/run.py              # full sizes (a few minutes)

Writes ``benchmarks/RESULTS.md`` (machine, versions, one table: workload / measured /
reference / target / ratio) and two PNG charts (``lateness.png``, ``throughput.png``), and
the raw numbers to ``benchmarks/out/last-run.json`` (gitignored).

Theory of operation: these machines are noisy, so targets are ratios to baselines measured
in the same run: the raw apsw floor (``floor.py``) for store-bound paths, huey and APScheduler
(``peers.py``) for end-to-end work. Absolute numbers are printed too, with the machine stated,
and the issue's reference figures beside them ("reference" = measured on this kind of
machine before; "x ref" = this run / reference, a check that the machine behaved).

The ``durajobs_*`` functions below are the slots for durajobs' own measurements. They return
None until the library exists; the table then says "pending" for them. Each docstring states
what the function must measure and return; the rows, ratios, PASS/FAIL and charts are
already wired to those return values.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    client_call_seconds: float  # how long to time each client call kind
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
                client_call_seconds=1.0,
                scale_instances=100_000,
                scale_small=1_000,
                scale_due=100,
            )
        return cls(
            quick=False,
            peers=PeerConfig(),
            run_due_instances=10_000,
            client_call_seconds=5.0,
            scale_instances=1_000_000,
            scale_small=1_000,
            scale_due=100,
        )


# =========================================================================== durajobs slots
# Each slot gets the run's Config and a fresh temporary directory on the real disk (deleted
# afterwards) and returns its figures, or None while durajobs is not ready ("pending").


def durajobs_run_due(cfg: Config, base: Path) -> dict[str, float] | None:
    """run_due() over ``cfg.run_due_instances`` due no-op Continuous instances.

    For each durability: create a ``Jobs(base / "run_due-<d>.db", ..., durability=d)`` with a
    Continuous job whose execute is a no-op (``start_immediately=False``, or a FakeClock moved
    past the first due time) and ``start`` the instances; then time one ``jobs.run_due()``
    call that runs all of them (check it returns ``cfg.run_due_instances``).

    Returns: ``{"full": steps/s, "normal": steps/s}`` (instances run / seconds in run_due).
    Target: full >= 3x raw FULL single-txn rate, normal >= 0.5x raw NORMAL (same run).
    """
    del cfg, base
    return None


def durajobs_client_calls(cfg: Config, base: Path) -> dict[str, float] | None:
    """Client write calls that commit one transaction each, timed for ``cfg.client_call_seconds``.

    ``debounce.add(id, event)`` on a Debounce with a large ``flush_after`` (no flush inside
    the call) and ``task.send(id, event)`` on a Task whose on_event schedules nothing heavy;
    ids cycle over ~1,000 instances; each call stores different bytes. Bound every loop in
    count and time (``common.run_bounded``).

    Returns: ``{"debounce_add_full", "debounce_add_normal", "task_send_full",
    "task_send_normal"}`` -> calls/s. Target: >= 0.8x the raw single-txn rate of the same
    durability measured in this run.
    """
    del cfg, base
    return None


def durajobs_end_to_end(cfg: Config, base: Path) -> float | None:
    """The huey end-to-end workload on durajobs: ``cfg.peers.e2e_tasks`` no-op tasks.

    Start the daemon (``durajobs_daemon.py``) in a subprocess with ``common.managed_process``
    on a fresh database; wait until it is ready; from this process ``send`` N events to Task
    instances whose on_event schedules ``execute`` now (a no-op); time from the first send
    until every instance's execute has run (poll ``status().execute_count`` or the history).

    Returns: tasks/s. Target: >= 10x huey and >= 20x APScheduler end to end (same run).
    """
    del cfg, base
    return None


def durajobs_lateness(cfg: Config, base: Path) -> list[float] | None:
    """Alarm lateness through the daemon, alarms set by another process.

    Daemon in one subprocess; a producer subprocess sets alarms ``cfg.peers.lateness_ahead``
    seconds ahead at ``cfg.peers.lateness_rate``/s (``common.paced``), ``cfg.peers.
    lateness_count`` of them; each handler records ``time.time() - due_at`` as its first act
    (append one line to a file, as peers.huey_lateness does).

    Returns: the lateness samples in seconds. Target: p50 < 1 ms, p99 < 5 ms.
    """
    del cfg, base
    return None


def durajobs_idle(cfg: Config, base: Path) -> dict[str, float] | None:
    """Idle daemon with one alarm an hour away.

    Start the daemon on a database holding one instance due in an hour; wait until ready and
    ``cfg.peers.idle_settle`` s more; ``common.wakeups(pid, cfg.peers.idle_window)`` over
    the daemon and its worker processes; ``common.rss_mb(pid, include_children=True)``.

    Returns: ``{"wakeups_per_s": float, "rss_mb": float}``. Target: 0 wake-ups/s.
    """
    del cfg, base
    return None


def durajobs_scale(cfg: Config, base: Path) -> dict[str, float] | None:
    """Scale: ``cfg.scale_instances`` instances in one file.

    Returns a dict with:
      - ``bytes_per_instance``: database file size (after checkpoint) / instances;
      - ``ls_first_page_s``: wall time of ``durajobs --db F ls`` (first page) in a subprocess;
      - ``run_due_large_s`` / ``run_due_small_s``: one ``run_due()`` with ``cfg.scale_due``
        due among ``cfg.scale_instances`` and among ``cfg.scale_small`` instances;
      - ``daemon_rss_mb``: daemon RSS (with workers) on the large file once idle.
    Targets: ls first page < 100 ms; large/small run_due <= 2x; daemon RSS < 60 MB.
    """
    del cfg, base
    return None


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
        ),
        _min_ratio_row(
            f"durajobs run_due(): {n_due} due no-op Continuous, NORMAL",
            run_due.get("normal"),
            "steps/s",
            basis=raw_normal,
            basis_name="raw NORMAL txn/s",
            minimum=0.5,
        ),
    ]
    calls = dj.get("client_calls") or {}
    for call, label in (("debounce_add", "debounce.add"), ("task_send", "task.send")):
        for durability, basis in (("full", raw_full), ("normal", raw_normal)):
            rows.append(
                _min_ratio_row(
                    f"durajobs {label}, {durability.upper()}",
                    calls.get(f"{call}_{durability}"),
                    "calls/s",
                    basis=basis,
                    basis_name=f"raw {durability.upper()} txn/s",
                    minimum=0.8,
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
    e2e_target = ">= 10x huey and >= 20x APScheduler"
    if dj_e2e is None:
        rows.append(
            Result(
                "durajobs: send + execute no-op tasks via the daemon",
                None,
                "tasks/s",
                target=e2e_target,
                status="pending",
            )
        )
    else:
        parts, ok = [], True
        for name, basis, minimum in (
            ("huey", huey_e2e.get("tasks_per_s"), 10),
            ("APScheduler", aps_tp.get("e2e_per_s"), 20),
        ):
            if basis:
                ratio = _x(dj_e2e, basis)
                parts.append(f"{ratio:.1f}x {name}")
                ok = ok and ratio >= minimum
        rows.append(
            Result(
                "durajobs: send + execute no-op tasks via the daemon",
                dj_e2e,
                "tasks/s",
                target=e2e_target,
                ratio=", ".join(parts),
                status="PASS" if ok and parts else "ok",
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
    for pct, limit in (("p50", 0.001), ("p99", 0.005)):
        label = f"durajobs lateness {pct} (daemon; alarms set by another process; {rate})"
        target = f"< {limit * 1000:g} ms"
        if dj_lat is None:
            rows.append(Result(label, None, "s", target=target, status="pending"))
            continue
        value = percentile(dj_lat, 50 if pct == "p50" else 99)
        peers_later = [
            f"{name} {_fmt_times(_x(peer[pct], value))} later"
            for name, peer in (("huey", huey_lat), ("APScheduler", aps_lat))
            if pct in peer and value > 0
        ]
        rows.append(
            Result(
                label,
                value,
                "s",
                target=target,
                ratio=", ".join(peers_later),
                status="PASS" if value < limit else "FAIL",
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
                note=f"RSS {dj_idle.get('rss_mb', math.nan):.0f} MB",
            )
        )

    # ---- scale
    scale = dj.get("scale")
    big, small, due = (f"{cfg.scale_instances:,}", f"{cfg.scale_small:,}", f"{cfg.scale_due:,}")
    scale_rows = [
        ("bytes_per_instance", f"durajobs bytes per instance ({big} instances)", "B", "-"),
        (
            "ls_first_page_s",
            f"durajobs `durajobs ls` first page ({big} instances)",
            "s",
            "< 100 ms",
        ),
        (
            "run_due_ratio",
            f"durajobs run_due, {due} due among {big} vs among {small}",
            "x",
            "<= 2x",
        ),
        ("daemon_rss_mb", f"durajobs daemon RSS ({big} instances)", "MB", "< 60 MB"),
    ]
    for key, label, unit, target in scale_rows:
        if scale is None:
            rows.append(Result(label, None, unit, target=target, status="pending"))
            continue
        if key == "run_due_ratio":
            value = _x(scale["run_due_large_s"], scale["run_due_small_s"])
            status = "PASS" if value <= 2 else "FAIL"
            ratio = (
                f"{fmt_number(scale['run_due_large_s'], 's')} vs "
                f"{fmt_number(scale['run_due_small_s'], 's')}"
            )
        else:
            value = scale[key]
            limit = {"ls_first_page_s": 0.1, "daemon_rss_mb": 60}.get(key)
            status = "ok" if limit is None else ("PASS" if value < limit else "FAIL")
            ratio = ""
        rows.append(Result(label, value, unit, target=target, ratio=ratio, status=status))

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
        ("durajobs daemon (other process)", dj.get("lateness")),
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
    ax.axvline(5, color="grey", lw=0.8, ls="--", label="durajobs target p99 < 5 ms")
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
    e2e_bars = [
        ("huey", huey_e2e.get("tasks_per_s")),
        ("APScheduler\n(add+fire,\nrunning)", aps_tp.get("e2e_per_s")),
        ("APScheduler\nadd only", aps_tp.get("add_per_s")),
        ("APScheduler\nfire only", aps_tp.get("fire_per_s")),
        ("durajobs\n(daemon)", dj.get("end_to_end")),
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
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [5, 8]})
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="durajobs benchmarks (floor, peers, durajobs)")
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "RESULTS.md")
    parser.add_argument("--charts", type=Path, default=BENCH_DIR)
    parser.add_argument("--no-peers", action="store_true", help="skip huey and APScheduler")
    args = parser.parse_args(argv)

    # SIGTERM unwinds like an exception, so every `with managed_process` block kills its group.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cfg = Config.make(args.quick)
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
    peers: dict[str, Any] = {}
    if not args.no_peers:
        peers = _timed("peers", lambda: run_peers(cfg.peers), errors, log) or {}
        for name, value in peers.items():
            if "error" in value:
                errors[f"peers {name}"] = value["error"]
            log.append(
                f"  {name}: {value.get('wall_s', math.nan):.1f} s"
                + (" (error)" if "error" in value else "")
            )
    with workdir("durajobs") as base:
        for key, label, func in (
            ("end_to_end", "durajobs end to end", durajobs_end_to_end),
            ("lateness", "durajobs lateness", durajobs_lateness),
            ("idle", "durajobs idle", durajobs_idle),
            ("scale", "durajobs scale", durajobs_scale),
        ):
            dj[key] = _timed(label, lambda f=func: f(cfg, base), errors, log)

    rows = build_rows(cfg, floor, peers, dj, errors)
    charts = write_charts(args.charts, peers, floor, dj)
    total = time.perf_counter() - started

    fs = next(iter(floor.values())).file_system if floor else machine["bench dir file system"]
    huey_settings = peers.get("huey_e2e", {}).get("settings", "?")
    aps_settings = peers.get("aps_throughput", {}).get("settings", "?")
    mode = "quick" if cfg.quick else "full"
    preamble = f"""
Mode **{mode}** (`benchmarks/run.py{" --quick" if cfg.quick else ""}`), run
{started_at:%Y-%m-%d %H:%M} UTC, {total:.0f} s in all. Targets are ratios to baselines
measured in this same run (these machines are noisy); "x ref" compares this run with the
reference figure from the benchmark issue (2 cores, ext4, apsw 3.54.1, WAL), as a check that
the machine behaved. "pending": durajobs' measurement is not written yet.
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
        "alarms are set 200 ms ahead at 100/s on an absolute schedule.",
        "Disk noise: the floor rows show per-transaction p50/p99/max; a FULL commit here "
        "usually takes ~0.2 ms but single fsyncs of tens of ms (sometimes hundreds) occur. "
        "APScheduler commits every add_job and every fired job's removal under one lock, so "
        "one slow fsync delays the firings queued behind it: its lateness p99 swings from "
        "~3 ms to hundreds of ms between runs. Compare runs by their ratios.",
        "Idle wake-ups = voluntary + nonvoluntary context switches per second of the process, "
        "all its threads and descendants (/proc/PID/task/*/status) over the window, after "
        "start-up has settled. huey's worker polls with back-off, so its figure is slightly "
        "higher in short windows.",
        "Wall time per section: " + "; ".join(log),
    ]
    if errors:
        notes.append("Errors: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
    charts_rel = ", ".join(f"`{p.name}`" for p in charts)
    notes.append(f"Charts: {charts_rel} in `{_display_path(args.charts)}`.")
    write_results_md(
        args.out,
        title="durajobs benchmarks",
        preamble=preamble,
        machine=machine,
        results=rows,
        notes=notes,
    )

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    raw = {
        "mode": mode,
        "started_at": started_at.isoformat(),
        "total_s": total,
        "machine": machine,
        "floor": {
            k: dataclasses.asdict(v) | {"txn_per_s": v.txn_per_s, "rows_per_s": v.rows_per_s}
            for k, v in (floor or {}).items()
        },
        "peers": peers,
        "durajobs": dj,
        "errors": errors,
    }
    (OUT_DIR / "last-run.json").write_text(json.dumps(raw, indent=1, default=str))

    print(markdown_table(rows))
    print(f"\n{mode} run: {total:.1f} s; wrote {args.out} and {charts_rel}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
