"""The README's "In web applications" recipes, run as written (examples/web/).

Each recipe file must appear verbatim in the README; then each server command the README shows
is run as written, from the repository's root, on a free port: gunicorn with ``--preload``
serving Flask, Django's runserver, uvicorn serving FastAPI, and the daemon that runs the
reminders. Concurrent HTTP requests go to each; the bulk import runs on its sample as the README
shows, and again on a file with rows appended (each row stored once).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from waiting import wait_for

from durajobs import FakeClock, Jobs, Task

ROOT = Path(__file__).parent.parent
RECIPES = ROOT / "examples" / "web"
MODULES = ("shop", "flask_app", "fastapi_app", "django_views", "django_site", "bulk_import")


@pytest.mark.parametrize(
    "name",
    ["shop.py", "flask_app.py", "django_views.py", "django_site.py", "fastapi_app.py",
     "bulk_import.py"],
)  # fmt: skip
def test_the_readme_shows_the_recipe_as_run(name: str) -> None:
    readme = (ROOT / "README.md").read_text()
    assert (RECIPES / name).read_text().rstrip() in readme


@pytest.fixture
def recipes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Import recipe modules fresh, on a database in ``tmp_path``."""
    db = tmp_path / "shop.db"
    monkeypatch.setenv("SHOP_DB", str(db))
    monkeypatch.syspath_prepend(str(RECIPES))
    for name in MODULES:
        sys.modules.pop(name, None)

    def load(name: str) -> ModuleType:
        return importlib.import_module(name)

    yield load
    shop = sys.modules.get("shop")
    if shop is not None:
        shop.jobs.close()
    for name in MODULES:
        sys.modules.pop(name, None)


def _readme_command(program: str) -> tuple[dict[str, str], list[str]]:
    """The README's console line that runs ``program``: its variables and its words."""
    found = []
    for line in (ROOT / "README.md").read_text().splitlines():
        words = shlex.split(line[2:], comments=True) if line.startswith("$ ") else []
        variables = {}
        while words and "=" in words[0] and not words[0].startswith("-"):
            name, _, value = words.pop(0).partition("=")
            variables[name] = value
        if words and words[0] == program:
            found.append((variables, words))
    assert len(found) == 1, f"the README shows {len(found)} `$ {program} ...` lines"
    variables, words = found[0]
    executable = shutil.which(program, path=str(Path(sys.executable).parent))
    if executable is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{program} is not installed (pip install -e '.[test]')")
        pytest.skip(f"{program} is not installed")
    return variables, [executable, *words[1:]]


@contextlib.contextmanager
def _running(argv: list[str], env: dict[str, str], root: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``argv`` run as from the repository's root, in a copy at ``root``; stopped with SIGTERM.

    No ``SHOP_DB``: the recipes' default ``shop.db`` is ``root/shop.db`` for every command that
    runs from the root (the file the test reads). A session of its own, so that the whole
    process group stops (Django's autoreloader serves from a child); no traceback in the log.
    """
    if not (root / "examples" / "web").exists():
        shutil.copytree(RECIPES, root / "examples" / "web")
    log = root / f"{Path(argv[0]).name}.log"
    environ = {key: value for key, value in os.environ.items() if key != "SHOP_DB"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=root, env={**environ, **env}, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # a child that outlived its parent
    assert b"Traceback" not in log.read_bytes(), log.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _post(url: str, body: str) -> Any:
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        return json.load(response)


# The server each recipe's README line starts, and the words that put it on a free port.
SERVERS = {
    "gunicorn": ["--bind", "127.0.0.1:{port}"],  # flask_app.py, --preload, 2 workers x 4 threads
    "django-admin": ["127.0.0.1:{port}"],  # runserver with django_site.py and django_views.py
    "uvicorn": ["--port", "{port}"],  # fastapi_app.py: async and sync endpoints
}


@pytest.mark.parametrize("program", list(SERVERS))
def test_web_recipe_served_as_the_readme_runs_it(
    program: str, recipes: Any, tmp_path: Path
) -> None:
    variables, argv = _readme_command(program)
    port = _free_port()
    argv += [word.format(port=port) for word in SERVERS[program]]
    base = f"http://127.0.0.1:{port}/orders"
    with _running(argv, variables, tmp_path) as proc:

        def serving() -> bool:
            try:
                _post(f"{base}/warm-up/items", '{"sku": "warm-up"}')
            except OSError:
                if proc.poll() is not None:
                    raise
                return False
            return True

        wait_for(serving, timeout=60, what=f"{program} to serve", interval=0.05)
        errors: list[BaseException] = []

        def shopper(n: int) -> None:
            try:
                for i in range(10):
                    reply = _post(f"{base}/o-1/items", json.dumps({"sku": f"{n}-{i}"}))
                    assert reply["order"] == "task:orders:o-1"
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=shopper, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert _post(f"{base}/o-1/paid", '{"amount": 12.5}') == {"status": "idle"}
    order = recipes("shop").jobs.task("orders").get_state("o-1")
    assert order is not None, "the server's orders are not in ./shop.db"
    assert sorted(order.items) == sorted(f"{n}-{i}" for n in range(6) for i in range(10))
    assert order.paid


def test_daemon_recipe_runs_the_reminders(recipes: Any, tmp_path: Path) -> None:
    shop = recipes("shop")
    jobs = shop.jobs.task("orders")
    registry = {
        "orders": Task(
            state=shop.Order, event=shop.ItemAdded | shop.Paid, on_event=shop.on_event,
            execute=shop.remind,
        )
    }  # fmt: skip
    with Jobs(tmp_path / "shop.db", registry, clock=FakeClock(time.time() - 600)) as past:
        past.task("orders").send("o-5", shop.ItemAdded("A-1"))  # unpaid: reminder 5 min ago
    variables, argv = _readme_command("durajobs-daemon")
    with _running(argv, variables, tmp_path) as proc:

        def reminded() -> bool:  # the daemon runs the overdue reminder
            assert proc.poll() is None, (tmp_path / "durajobs-daemon.log").read_text()
            return jobs.get_state("o-5").reminded

        wait_for(reminded, timeout=60, what="the reminder of o-5", interval=0.05)
    assert proc.returncode == 0


def _import(rows: Path) -> str:
    """Run the bulk import recipe on ``rows`` (its database: ``SHOP_DB``); its output."""
    env = {**os.environ, "PYTHONPATH": str(RECIPES)}
    argv = [sys.executable, str(RECIPES / "bulk_import.py"), str(rows)]
    return subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout


def test_bulk_import_recipe_rerun_with_rows_appended(recipes: Any, tmp_path: Path) -> None:
    """The regression: on a rerun after 500 rows were appended, the last batch mixed stored
    and new keys, DuplicateEventError (suppressed) dropped it whole: exit 0, 0 of 500 stored."""
    rows = tmp_path / "items.csv"
    rows.write_text("order,sku\n" + "".join(f"o-{i % 7},S{i}\n" for i in range(2500)))
    assert _import(rows).endswith(": 2500 rows imported, 0 imported before\n")
    assert _import(rows).endswith(": 0 rows imported, 2500 imported before\n")  # a rerun
    with rows.open("a") as more:
        more.write("".join(f"o-{i % 7},S{i}\n" for i in range(2500, 3000)))
    assert _import(rows).endswith(": 500 rows imported, 2500 imported before\n")
    shop = recipes("shop")
    orders = [shop.jobs.task("orders").get_state(f"o-{k}").items for k in range(7)]
    assert sorted(sku for items in orders for sku in items) == sorted(f"S{i}" for i in range(3000))
    assert orders[0] == [f"S{i}" for i in range(0, 3000, 7)]  # each once, in the file's order


def test_bulk_import_recipe_runs_as_the_readme_shows(recipes: Any, tmp_path: Path) -> None:
    variables, argv = _readme_command("python")
    shutil.copytree(RECIPES, tmp_path / "examples" / "web")
    environ = {key: value for key, value in os.environ.items() if key != "SHOP_DB"}
    for imported in (12, 0):  # the shipped sample, then a rerun
        done = subprocess.run(
            argv, cwd=tmp_path, env={**environ, **variables}, check=True, capture_output=True,
            text=True,
        )  # fmt: skip
        assert f"{imported} rows imported, {12 - imported} imported before" in done.stdout
    order = recipes("shop").jobs.task("orders").get_state("o-100")  # in ./shop.db
    assert order.items == ["A-1", "E-5", "D-4"]
