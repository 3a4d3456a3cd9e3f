"""The functional core imports no I/O: definitions, schedules, durations, retry, codec, contexts
and the per-kind step functions must not import apsw, os, time, socket, signal (or the shell)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "durajobs"
PURE = [
    "core/__init__",
    "core/definitions",
    "core/schedules",
    "core/durations",
    "core/retry",
    "core/codec",
    "core/contexts",
    "core/steps",
    "core/decision",
    "core/continuous",
    "core/debounce",
    "core/task",
    "core/rows",
    "errors",
]
FORBIDDEN = {"apsw", "os", "time", "socket", "signal", "fcntl", "threading", "subprocess",
             "random", "select", "selectors"}  # fmt: skip
SHELL = {"stores", "engine", "wake", "jobs", "client", "clock", "cli", "admin", "tracker"}


def imports(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level and node.module:
                found.add("durajobs." + node.module.split(".")[0])
            elif node.module:
                found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_no_io(module: str) -> None:
    names = imports(module)
    assert not names & FORBIDDEN, f"{module} imports {sorted(names & FORBIDDEN)}"
    shell = {n.removeprefix("durajobs.") for n in names if n.startswith("durajobs.")} & SHELL
    assert not shell, f"{module} imports the shell: {sorted(shell)}"


def test_reading_a_database_does_not_import_the_step_machinery() -> None:
    """``durajobs ls`` starts fast: the CLI's read path imports no cattrs, croniter or steps."""
    import subprocess
    import sys

    code = (
        "import sys, durajobs.cli; "
        "print(sorted(m for m in ('cattrs', 'croniter', 'durajobs.core.steps', 'durajobs.engine') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_sql_lives_only_in_the_store() -> None:
    for path in PACKAGE.rglob("*.py"):
        if "stores" in path.relative_to(PACKAGE).parts:
            continue
        text = path.read_text()
        for keyword in ("INSERT INTO", "UPDATE instances", "DELETE FROM", "CREATE TABLE"):
            assert keyword not in text, f"{path.name} contains SQL ({keyword})"
