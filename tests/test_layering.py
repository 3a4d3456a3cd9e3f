"""The functional core imports no I/O: definitions, schedules, durations, retry, codec, contexts
and the per-kind step functions must not import apsw, os, time, socket, signal (or the shell).
Outside durajobs/stores/ nothing asks which store it has (the stores declare capabilities), and
no module imports another in a cycle."""

from __future__ import annotations

import ast
import re
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
    "core/flow",
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


# -- the stores declare capabilities; nothing outside durajobs/stores/ asks which one it has ------

ROOT = PACKAGE.parent
STORES = PACKAGE / "stores"
MODULES = {
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
    for p in PACKAGE.rglob("*.py")
}
# What a module outside durajobs/stores/ may import of the stores: the factories and the
# interface.
STORE_INTERFACE = {"durajobs.stores", "durajobs.stores.base"}
PROBED = {"store", "stores", "locks", "claims", "waker", "listener"}


def _depends(path: Path, tree: ast.AST) -> set[str]:
    """The modules of durajobs that ``path`` imports, anywhere in it (functions and
    ``TYPE_CHECKING`` included), relative imports resolved; ``from pkg import name`` is
    ``pkg.name`` when that is a module, else ``pkg``."""
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    is_package = path.name == "__init__.py"
    package = name.removesuffix(".__init__") if is_package else name.rpartition(".")[0]
    named: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([node.module] if node.module else [])])
            named.update(f"{base}.{alias.name}" for alias in node.names)
    found: set[str] = set()
    for module in named:
        known = module
        while known and known not in MODULES:
            known = known.rpartition(".")[0]
        if known:
            found.add(known)
    return found


def _outside_stores() -> list[Path]:
    paths = [p for p in MODULES.values() if STORES not in p.parents]
    return [*sorted(paths), ROOT / "durajobs_daemon.py"]


@pytest.mark.parametrize("path", _outside_stores(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_store_is_probed_outside_the_stores(path: Path) -> None:
    """Outside durajobs/stores/: no ``is_postgres``, no ``getattr``/``hasattr`` probe of a store,
    its claims, waker or listener, no ``type: ignore[attr-defined]``, and no import of a
    concrete store (only ``durajobs.stores`` and ``durajobs.stores.base``)."""
    text = path.read_text()
    tree = ast.parse(text)
    where = path.relative_to(ROOT)
    assert "type: ignore[attr-defined]" not in text, f"{where}: an undeclared attribute"
    for node in ast.walk(tree):
        named = (
            node.id if isinstance(node, ast.Name)
            else node.attr if isinstance(node, ast.Attribute)
            else node.name if isinstance(node, ast.FunctionDef | ast.alias)
            else None
        )  # fmt: skip
        assert named != "is_postgres", f"{where}:{getattr(node, 'lineno', '?')}: is_postgres"
        if (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr") and node.args
        ):  # fmt: skip
            words = set(re.findall(r"[a-z]+", ast.unparse(node.args[0]).lower()))
            assert not words & PROBED, f"{where}:{node.lineno}: {ast.unparse(node)} probes a store"
    for module in _depends(path, tree):
        if module.startswith("durajobs.stores"):
            assert module in STORE_INTERFACE, f"{where} imports {module}: a concrete store"


def test_the_store_interface_imports_no_store() -> None:
    """stores/base.py (the interface) imports neither a concrete store nor the factories."""
    path = STORES / "base.py"
    for module in _depends(path, ast.parse(path.read_text())):
        assert not module.startswith("durajobs.stores"), module


def test_no_import_cycle() -> None:
    """The modules of durajobs import each other without a cycle, lazy imports included."""
    graph = {name: _depends(path, ast.parse(path.read_text())) for name, path in MODULES.items()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = [*path[path.index(name) :], name]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if name not in done:
            for other in sorted(graph[name] - {name}):
                visit(other, [*path, name])
            done.add(name)

    for name in sorted(graph):
        visit(name, [])


def _shapes(path: Path) -> list[tuple[int, str]]:
    """The file's code lines as shapes: strings, numbers and bare names replaced by one token
    each, attribute names kept (a copy with other placeholders, ``?`` or ``%s``, or another
    driver's module still matches); blank lines, comments, imports, lines
    that open with a bracket or a string (docstrings) and a dialect's ``name="literal"`` data
    lines dropped; each with its line number."""
    import io
    import keyword
    import tokenize

    lines: dict[int, list[str]] = {}
    after_dot = False
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                        tokenize.DEDENT, tokenize.ENDMARKER):  # fmt: skip
            continue
        text = (
            "S" if tok.type == tokenize.STRING
            else "0" if tok.type == tokenize.NUMBER
            else "N" if tok.type == tokenize.NAME and not after_dot
            and not keyword.iskeyword(tok.string) and tok.string != "self"
            else tok.string
        )  # fmt: skip
        after_dot = tok.string == "."
        lines.setdefault(tok.start[0], []).append(text)
    return [
        (number, " ".join(parts))
        for number, parts in sorted(lines.items())
        if parts[0] not in ("import", "from", "S", ")", "]", "}")
        and not set(parts) <= {"(", ",", "[", "{", "S"}
        and not (len(parts) <= 4 and parts[1:2] == ["="] and parts[2] in ("S", "0"))
    ]


def test_the_two_stores_share_no_run_of_six_lines() -> None:
    """What both SQL stores need is written once (``stores/sql.py``): no run of six code lines
    of the same shape stands in a SQLite module and a PostgreSQL module (issue 18)."""
    run = 6
    windows: dict[tuple[str, ...], str] = {}
    for path in sorted((STORES / "sqlite").glob("*.py")):
        shapes = _shapes(path)
        for i in range(len(shapes) - run + 1):
            key = tuple(shape for _, shape in shapes[i : i + run])
            windows.setdefault(key, f"{path.relative_to(ROOT)}:{shapes[i][0]}")
    for path in sorted((STORES / "postgres").glob("*.py")):
        shapes = _shapes(path)
        for i in range(len(shapes) - run + 1):
            key = tuple(shape for _, shape in shapes[i : i + run])
            assert key not in windows, (
                f"{path.relative_to(ROOT)}:{shapes[i][0]} repeats {windows[key]}: "
                "write it once in stores/sql.py"
            )
