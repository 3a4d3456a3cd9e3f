"""Shared helpers for the durajobs benchmark scripts.

Theory of operation: every benchmark is a plain function that returns numbers; nothing here
knows about durajobs. This module supplies the pieces they share:

- timing (``perf_counter`` based) and pacing of producers on an absolute schedule, so a slow
  iteration does not shift the ones after it;
- percentiles (linear interpolation between closest ranks, as numpy's default);
- a description of the machine (CPU, cores, kernel, file system of the bench dir, versions);
- ``/proc`` readers: context switches of a process tree (``wakeups``) and resident memory
  (``rss_mb``);
- ``managed_process``: subprocesses in their own session, always killed (process group, by id)
  when the ``with`` block ends, on error too, and again at interpreter exit as a backstop;
- the ``Result`` record and the markdown table writer.

Scripts are run as ``python benchmarks/run.py`` (the script directory is then on ``sys.path``,
which is how ``import common`` resolves); they are not an importable package.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"  # gitignored; temp databases live below it, on the real disk


# --------------------------------------------------------------------------- timing


@contextlib.contextmanager
def workdir(prefix: str, *, keep: bool = False) -> Iterator[Path]:
    """A fresh directory under benchmarks/out/ (same file system as the repo), removed after."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix + "-", dir=OUT_DIR))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def run_bounded(
    operation: Callable[[int], object], *, max_ops: int, max_seconds: float
) -> tuple[int, float]:
    """Call ``operation(i)`` until ``max_ops`` calls or ``max_seconds`` elapsed.

    Returns (calls made, elapsed seconds). The deadline is checked after each call, so the
    loop is bounded in both count and time (one call past the deadline at most).
    """
    start = time.perf_counter()
    deadline = start + max_seconds
    done = 0
    while done < max_ops:
        operation(done)
        done += 1
        if time.perf_counter() >= deadline:
            break
    return done, time.perf_counter() - start


def paced(rate: float, count: int, *, max_seconds: float | None = None) -> Iterator[int]:
    """Yield 0..count-1 at ``rate`` per second on an absolute schedule (no drift).

    Stops early once ``max_seconds`` have passed. Late iterations are not made up by bursts
    beyond the schedule: each yields at max(its slot, now).
    """
    interval = 1.0 / rate
    start = time.perf_counter()
    deadline = start + (max_seconds if max_seconds is not None else count * interval + 60.0)
    for i in range(count):
        slot = start + i * interval
        now = time.perf_counter()
        if now >= deadline:
            return
        if slot > now:
            time.sleep(slot - now)
        yield i


def wait_until(condition: Callable[[], bool], *, timeout: float, interval: float = 0.01) -> bool:
    """Poll ``condition`` until it is true or ``timeout`` seconds passed; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) with linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * (p / 100.0)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def latency_summary(samples: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max/min and count of lateness samples (seconds in, seconds out)."""
    return {
        "n": float(len(samples)),
        "min": min(samples) if samples else math.nan,
        "p50": percentile(samples, 50),
        "p90": percentile(samples, 90),
        "p99": percentile(samples, 99),
        "max": max(samples) if samples else math.nan,
    }


# --------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return None


def _unescape_mount(field: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as \040, \011, \012, \134.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def fs_type(path: Path) -> str:
    """File system type of ``path`` from /proc/mounts (longest matching mount point)."""
    target = os.path.realpath(path)
    best, best_type = "", "unknown"
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return best_type
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount_point = _unescape_mount(parts[1])
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, f"{parts[2]} ({parts[0]} on {mount_point})"
    return best_type


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _relative_to_repo(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(BENCH_DIR.parent))
    except ValueError:
        return str(path)


def machine_description(bench_dir: Path = OUT_DIR) -> dict[str, str]:
    """What the numbers were measured on: hardware, OS, file system, library versions."""
    bench_dir.mkdir(parents=True, exist_ok=True)
    try:
        import apsw

        apsw_version = apsw.apsw_version()
        apsw_sqlite = apsw.sqlite_lib_version()
    except ImportError:
        apsw_version = apsw_sqlite = "not installed"
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    mem = _mem_total_gb()
    return {
        "CPU": _cpu_model(),
        "cores": f"{os.cpu_count()} online, {usable} usable by this process",
        "memory": f"{mem:.1f} GiB" if mem is not None else "unknown",
        "kernel": f"{platform.system()} {platform.release()}",
        "bench dir": _relative_to_repo(bench_dir),
        "bench dir file system": fs_type(bench_dir),
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "apsw / its SQLite": f"{apsw_version} / {apsw_sqlite}",
        "stdlib sqlite3 SQLite (huey, SQLAlchemy)": sqlite3.sqlite_version,
        "huey": _version("huey"),
        "APScheduler": _version("APScheduler"),
        "SQLAlchemy": _version("SQLAlchemy"),
        "matplotlib": _version("matplotlib"),
        "durajobs": _version("durajobs"),
    }


# --------------------------------------------------------------------------- /proc


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[1])


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants (scans /proc: no CONFIG_PROC_CHILDREN needed)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _ppid(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    tree, stack = [], [pid]
    while stack:
        current = stack.pop()
        tree.append(current)
        stack.extend(children.get(current, []))
    return tree


def _context_switches(pid: int) -> dict[tuple[int, int], int]:
    """Voluntary + nonvoluntary context switches per (pid, tid) over the process tree."""
    counts: dict[tuple[int, int], int] = {}
    for proc in process_tree(pid):
        try:
            tids = os.listdir(f"/proc/{proc}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                text = Path(f"/proc/{proc}/task/{tid}/status").read_text()
            except OSError:
                continue  # the thread ended between listdir and read
            total = 0
            for line in text.splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
            counts[(proc, int(tid))] = total
    return counts


def wakeups(pid: int, seconds: float) -> float:
    """Context switches per second of ``pid``, its threads and its descendants over a window.

    Every time a sleeping thread is woken (timer, futex, I/O) it is switched in once, so
    voluntary + nonvoluntary switches count wake-ups (and preemptions). Threads that start
    inside the window count from zero; threads that end inside it are dropped. This call
    sleeps for ``seconds`` in the caller, which is not part of the measured tree.
    """
    before = _context_switches(pid)
    time.sleep(seconds)
    after = _context_switches(pid)
    delta = sum(count - before.get(key, 0) for key, count in after.items())
    return max(delta, 0) / seconds


def rss_mb(pid: int, *, include_children: bool = False) -> float:
    """Resident set size in MiB from /proc/PID/status (VmRSS), optionally of the whole tree."""
    pids = process_tree(pid) if include_children else [pid]
    total_kb = 0
    for proc in pids:
        try:
            for line in Path(f"/proc/{proc}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` and its live descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for proc in process_tree(pid):
        try:
            stat = Path(f"/proc/{proc}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / ticks


def pss_mb(pid: int) -> float:
    """Proportional set size in MiB of ``pid`` and its descendants (/proc/PID/smaps_rollup).

    Pages shared between processes (a forked worker shares the parent's interpreter and
    imported modules) are split among them, so the sum over a process tree is what the tree
    costs the machine; the sum of RSS counts shared pages once per process.
    """
    total_kb = 0
    for proc in process_tree(pid):
        try:
            for line in Path(f"/proc/{proc}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kb += int(line.split()[1])
                    break
        except OSError:
            continue
    return total_kb / 1024


# --------------------------------------------------------------------------- subprocesses

_LIVE: dict[int, subprocess.Popen[bytes]] = {}


def _kill_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the process group we created for ``proc``; SIGKILL it after ``grace`` seconds."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    # Kill the rest of the group too (children of a consumer), even if the leader exited.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_LIVE.values()):
        _kill_group(proc, grace=1.0)
    _LIVE.clear()


@contextlib.contextmanager
def managed_process(
    args: Sequence[str],
    *,
    grace: float = 5.0,
    stdout_pipe: bool = True,
    env: dict[str, str] | None = None,
    stderr_path: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``args`` in a new session (own process group); kill that group when done.

    ``stderr_path``: write stderr to that file instead of a pipe (for long-running processes
    that log: nobody drains the pipe, and a full pipe would block them).
    """
    stderr_file = open(stderr_path, "ab") if stderr_path is not None else None  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            list(args),
            stdout=subprocess.PIPE if stdout_pipe else subprocess.DEVNULL,
            stderr=stderr_file if stderr_file is not None else subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    finally:
        if stderr_file is not None:
            stderr_file.close()  # the child has its own copy
    _LIVE[proc.pid] = proc
    try:
        yield proc
    finally:
        _kill_group(proc, grace=grace)
        _LIVE.pop(proc.pid, None)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def read_line(proc: subprocess.Popen[bytes], *, timeout: float) -> str | None:
    """One line of ``proc``'s stdout, or None on timeout / EOF."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buffer = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            break
        chunk = os.read(fd, 1)  # byte-wise: never read past the line we were asked for
        if not chunk:
            return None
        if chunk == b"\n":
            return buffer.decode()
        buffer += chunk
    return None


def run_json(args: Sequence[str], *, timeout: float) -> dict[str, object]:
    """Run a helper subprocess to completion and parse the JSON object on its last stdout line."""
    with managed_process(args) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise TimeoutError(f"{' '.join(args)} did not finish within {timeout} s") from exc
        if proc.returncode != 0:
            tail = err.decode(errors="replace").strip().splitlines()[-15:]
            raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n" + "\n".join(tail))
        lines = [line for line in out.decode().splitlines() if line.strip()]
        if not lines:
            raise RuntimeError(f"{' '.join(args)} printed no result")
        return json.loads(lines[-1])


def helper_cmd(script: str, *args: str) -> list[str]:
    """Command line that runs ``benchmarks/<script>`` with this interpreter."""
    return [sys.executable, str(BENCH_DIR / script), *args]


def die_with_parent(max_lifetime: int) -> None:
    """For helper subprocesses: end after ``max_lifetime`` s even if nobody stops us."""
    signal.alarm(max_lifetime)  # default SIGALRM action terminates the process


# --------------------------------------------------------------------------- results


@dataclasses.dataclass
class Result:
    """One row of the results table.

    ``measured`` is None when the measurement is pending (durajobs not ready) or failed; then
    ``status`` says which. ``ratio`` is preformatted text (e.g. "3.4x raw FULL" or
    "0.97x ref") because its basis differs per row.
    """

    workload: str
    measured: float | None
    unit: str
    reference: str = ""
    target: str = ""
    ratio: str = ""
    status: str = "ok"  # "ok", "pending", "error", "PASS", "FAIL"
    note: str = ""


def fmt_number(value: float | None, unit: str = "") -> str:
    """Human formatting: thousands separators, ms for latencies, few significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit == "s":  # latencies: show in ms
        ms = value * 1000
        return f"{ms:,.0f} ms" if abs(ms) >= 100 else f"{ms:.3g} ms"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{text} {unit}".strip()


def markdown_table(results: Sequence[Result]) -> str:
    """Render results as a markdown table: workload / measured / reference / target / ratio."""
    header = "| workload | measured | reference | target | ratio |\n|---|--:|--:|---|---|"
    rows = []
    for r in results:
        if r.status == "pending":
            measured = "pending"
        elif r.status == "error":
            measured = "error"
        else:
            measured = fmt_number(r.measured, r.unit)
        ratio = r.ratio
        if r.status in ("PASS", "FAIL"):
            ratio = f"{ratio} **{r.status}**".strip()
        workload = r.workload + (f" <br><sub>{r.note}</sub>" if r.note else "")
        cells = [workload, measured, r.reference or "-", r.target or "-", ratio or "-"]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return header + "\n" + "\n".join(rows)


def write_results_md(
    path: Path,
    *,
    title: str,
    preamble: str,
    machine: dict[str, str],
    results: Sequence[Result],
    notes: Sequence[str],
) -> None:
    """Write the RESULTS.md file: preamble, machine section, table, notes."""
    lines = [f"# {title}", "", preamble.strip(), "", "## Machine", ""]
    lines += [f"- **{key}**: {value}" for key, value in machine.items()]
    lines += ["", "## Results", "", markdown_table(results), ""]
    if notes:
        lines += ["## Notes", ""]
        lines += [f"- {note}" for note in notes]
        lines.append("")
    path.write_text("\n".join(lines))
