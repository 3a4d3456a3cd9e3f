"""``durajobs`` start-up: ``durajobs ls`` on a 1,000,000-instance file against ``--version``.

Theory of operation: the goal (issue 13) is a ratio taken side by side: the first page of
``durajobs ls`` on a file of a million instances within 1.3x ``durajobs --version``, both end
to end (a subprocess of the installed console script: Python start-up, imports, argument
parsing, the query, the page). ``--version`` is the floor any command pays: the interpreter,
typer and the CLI module; what ``ls`` adds is its own imports (``durajobs.admin``, the store),
typer's parameter processing, opening the file and the query.

Every round runs each command once, in an order that alternates from round to round, so a busy
machine (other test suites on the same 2 cores) slows them alike; the figures are medians over
``--runs`` rounds (at least 10). Beside the wall time is the child's CPU time (user + system,
from ``wait4``), which other processes disturb less. Two reference rows show the floor: the
interpreter alone (``python -c pass``) and the import of the CLI framework (``import typer``).
``--importtime`` adds where the imports go: ``python -X importtime``, the minimum per module
over several runs, for the modules imported from the top level or lazily from a function.

The children run without ``PYTHONDONTWRITEBYTECODE`` after one warm-up round, so that they
read cached bytecode as an installed package does. ``--script`` adds other console scripts
(for example an install with another typer version) to the same interleaved rounds.

The file is made as bench_ls.py makes it (a sample through the library, cloned in SQL), or
given with ``--db``.

Run: ``python benchmarks/bench_cli.py [--runs 20] [--db FILE] [--importtime]``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

GOAL_RATIO = 1.3  # ls first page / --version, end to end (issue 13)
OUT_DIR = Path(__file__).resolve().parent / "out"


def child_env() -> dict[str, str]:
    """The environment of a user's shell: bytecode cached, colours and the db path unset."""
    drop = {"PYTHONDONTWRITEBYTECODE", "NO_COLOR", "DURAJOBS_DB"}
    return {key: value for key, value in os.environ.items() if key not in drop}


def run_once(argv: Sequence[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + system) milliseconds of one run of ``argv``; it must exit 0."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited with {proc.returncode}")
    return wall * 1000.0, (usage.ru_utime + usage.ru_stime) * 1000.0


def interpreter(script: str) -> str:
    """The Python of a console script (its ``#!`` line)."""
    with open(script, encoding="utf-8") as file:
        first = file.readline()
    return first[2:].strip() if first.startswith("#!") else sys.executable


def check_ls(script: str, db: Path, env: dict[str, str]) -> None:
    """The timed command does the real work: a header and 50 rows, and a pointer to more."""
    out = subprocess.run(
        [script, "--db", str(db), "ls"], capture_output=True, text=True, env=env, check=True
    )
    if out.stdout.count("\n") != 51 or "--offset 50" not in out.stderr:
        raise SystemExit(f"unexpected ls output: {out.stdout[:200]!r} {out.stderr!r}")


def measure(
    commands: dict[str, list[str]], runs: int, env: dict[str, str]
) -> dict[str, list[tuple[float, float]]]:
    """Each command once per round, the order reversed every other round; one warm-up round."""
    names = list(commands)
    for name in names:
        run_once(commands[name], env)  # writes/reads bytecode caches, warms the page cache
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for round_number in range(runs):
        for name in names if round_number % 2 == 0 else reversed(names):
            samples[name].append(run_once(commands[name], env))
    return samples


def median_wall(samples: list[tuple[float, float]]) -> float:
    return statistics.median(wall for wall, _ in samples)


def median_cpu(samples: list[tuple[float, float]]) -> float:
    return statistics.median(cpu for _, cpu in samples)


def row(label: str, samples: list[tuple[float, float]]) -> str:
    walls = [wall for wall, _ in samples]
    return (
        f"  {label:<44} {statistics.median(walls):7.1f} ms  (min {min(walls):6.1f}, "
        f"max {max(walls):6.1f})   CPU {median_cpu(samples):6.1f} ms"
    )


IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def top_imports(argv: Sequence[str], runs: int, env: dict[str, str]) -> dict[str, float]:
    """Cumulative ms (min over ``runs``) of each module imported at the top level or lazily."""
    best: dict[str, float] = {}
    for _ in range(runs):
        err = subprocess.run(
            [argv[0], "-X", "importtime", *argv[1:]],
            capture_output=True, text=True, env=env, check=True,
        ).stderr  # fmt: skip
        for match in IMPORT_LINE.finditer(err):
            if len(match.group(3)) == 1:  # depth 0: from the script, or a lazy import
                name, ms = match.group(4), int(match.group(2)) / 1000.0
                best[name] = min(ms, best.get(name, ms))
    return best


def report_imports(script: str, db: Path, runs: int, env: dict[str, str]) -> None:
    python = interpreter(script)
    version = top_imports([python, script, "--version"], runs, env)
    ls = top_imports([python, script, "--db", str(db), "ls"], runs, env)
    print(f"\nimports (python -X importtime, cumulative ms, min of {runs} runs, >= 1 ms):")
    print(f"  {'module':<36} {'--version':>9} {'ls':>9}")
    for name in sorted(set(version) | set(ls), key=lambda n: -ls.get(n, version.get(n, 0.0))):
        if max(version.get(name, 0.0), ls.get(name, 0.0)) >= 1.0:
            cells = [f"{t[name]:9.1f}" if name in t else f"{'-':>9}" for t in (version, ls)]
            print(f"  {name:<36} {cells[0]} {cells[1]}")
    total = f"{sum(version.values()):9.1f} {sum(ls.values()):9.1f}"
    print(f"  {'all imports':<36} {total}  (a lazy import is not nested under durajobs.cli)")


def make_file(folder: Path, instances: int) -> Path:
    """The bench_ls.py file: a sample through the library cloned into ``instances`` rows."""
    from bench_ls import build_sample, clone

    db = folder / "durajobs.db"
    now = time.time()
    build_sample(db, now - 600)
    seconds = clone(db, instances, 2, now)
    print(f"file: {instances:,} instances + 2 history records each, cloned in {seconds:.1f} s")
    return db


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="interleaved rounds (>= 10)")
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--db", type=Path, help="an existing file to list (no file is made)")
    parser.add_argument("--keep", action="store_true", help="keep the file made")
    parser.add_argument(
        "--script", action="append", default=[], metavar="PATH",
        help="another durajobs console script to measure in the same rounds (repeatable)",
    )  # fmt: skip
    parser.add_argument("--importtime", action="store_true", help="where the imports go")
    args = parser.parse_args()
    if args.runs < 10:
        parser.error("--runs must be at least 10 (the figures are medians)")

    own = shutil.which("durajobs", path=str(Path(sys.executable).parent))
    if own is None:
        raise SystemExit("the durajobs console script is not installed next to this Python")
    scripts = [own, *args.script]
    env = child_env()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-cli-", dir=OUT_DIR))
    try:
        db = args.db or make_file(folder, args.instances)
        commands: dict[str, list[str]] = {}
        for index, script in enumerate(scripts):
            check_ls(script, db, env)
            python = interpreter(script)
            tag = f"[{index}] " if len(scripts) > 1 else ""
            commands[f"{tag}python -c pass"] = [python, "-c", "pass"]
            commands[f"{tag}python -c 'import typer'"] = [python, "-c", "import typer"]
            commands[f"{tag}durajobs --version"] = [script, "--version"]
            commands[f"{tag}durajobs ls"] = [script, "--db", str(db), "ls"]
        print(f"\n{args.runs} interleaved rounds, medians; ls lists the first page of {db}")
        samples = measure(commands, args.runs, env)
        for index, script in enumerate(scripts):
            tag = f"[{index}] " if len(scripts) > 1 else ""
            if tag:
                print(f"\n{tag}{script}")
            for name in list(commands)[index * 4 : index * 4 + 4]:
                print(row(name.removeprefix(tag), samples[name]))
            version, ls = samples[f"{tag}durajobs --version"], samples[f"{tag}durajobs ls"]
            ratio = median_wall(ls) / median_wall(version)
            cpu_ratio = median_cpu(ls) / median_cpu(version)
            verdict = "PASS" if ratio <= GOAL_RATIO else "FAIL"
            print(
                f"  ls / --version: {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU   "
                f"goal <= {GOAL_RATIO}x (wall)   {verdict}"
            )
        if args.importtime:
            for script in scripts:
                if len(scripts) > 1:
                    print(f"\n{script}")
                report_imports(script, db, 10, env)
    finally:
        if args.keep and not args.db:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
