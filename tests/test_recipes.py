"""The README's "In web applications" recipes, run as written (examples/web/).

Each recipe file must appear verbatim in the README; then each is exercised with its framework:
Flask's test client from several threads, Django's RequestFactory, FastAPI's TestClient (sync
and async endpoints), a real gunicorn with ``--preload`` and two workers, and the bulk import
run twice (the second run applies nothing again).
"""

from __future__ import annotations

import importlib
import os
import shutil
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

ROOT = Path(__file__).parent.parent
RECIPES = ROOT / "examples" / "web"
MODULES = ("shop", "flask_app", "fastapi_app", "django_views", "bulk_import")


@pytest.mark.parametrize(
    "name", ["shop.py", "flask_app.py", "django_views.py", "fastapi_app.py", "bulk_import.py"]
)
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


def test_flask_recipe_from_many_threads(recipes: Any) -> None:
    pytest.importorskip("flask")
    app = recipes("flask_app").app
    shop = recipes("shop")
    errors: list[BaseException] = []

    def shopper(n: int) -> None:
        try:
            client = app.test_client()
            for i in range(10):
                response = client.post("/orders/o-1/items", json={"sku": f"{n}-{i}"})
                assert response.status_code == 200, response.text
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=shopper, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(shop.jobs.task("orders").get_state("o-1").items) == 80
    response = app.test_client().post("/orders/o-1/paid", json={"amount": 12.5})
    assert response.json == {"status": "idle"}


def test_django_recipe(recipes: Any) -> None:
    pytest.importorskip("django")
    from django.conf import settings

    if not settings.configured:
        settings.configure(DEBUG=True, ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__)
    import django

    django.setup()
    from django.test import RequestFactory

    views = recipes("django_views")
    request = RequestFactory().post("/orders/o-2/items", b'{"sku": "A-1"}', "application/json")
    response = views.add_item(request, "o-2")
    assert response.status_code == 200
    assert b"task:orders:o-2" in response.content
    assert recipes("shop").jobs.task("orders").get_state("o-2").items == ["A-1"]


urlpatterns: list[Any] = []  # ROOT_URLCONF of the Django test


def test_fastapi_recipe_sync_and_async_endpoints(recipes: Any) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    app = recipes("fastapi_app").app
    with TestClient(app) as client:
        for i in range(5):
            response = client.post("/orders/o-3/items", params={"sku": f"S-{i}"})
            assert response.status_code == 200, response.text
        response = client.post("/orders/o-3/paid", params={"amount": 3.0})
        assert response.json() == {"status": "idle"}
    order = recipes("shop").jobs.task("orders").get_state("o-3")
    assert order.items == [f"S-{i}" for i in range(5)]
    assert order.paid


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _post(url: str, body: bytes) -> int:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return int(response.status)


def test_gunicorn_preload_recipe(recipes: Any, tmp_path: Path) -> None:
    gunicorn = shutil.which("gunicorn", path=str(Path(sys.executable).parent))
    if gunicorn is None:
        if os.environ.get("CI") == "true":
            pytest.fail("gunicorn is not installed (pip install -e '.[test]')")
        pytest.skip("gunicorn is not installed")
    port = _free_port()
    proc = subprocess.Popen(
        [gunicorn, "--preload", "--workers", "2", "--threads", "4", "--chdir", str(RECIPES),
         "--bind", f"127.0.0.1:{port}", "flask_app:app"],
        env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:  # wait until it serves (not a fixed sleep)
            try:
                _post(f"{base}/orders/warm/items", b'{"sku": "warm"}')
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        errors: list[BaseException] = []

        def shopper(n: int) -> None:
            try:
                for i in range(10):
                    assert (
                        _post(f"{base}/orders/o-4/items", f'{{"sku": "{n}-{i}"}}'.encode()) == 200
                    )
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=shopper, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert b"Traceback" not in stderr, stderr.decode(errors="replace")
    order = recipes("shop").jobs.task("orders").get_state("o-4")
    assert sorted(order.items) == sorted(f"{n}-{i}" for n in range(6) for i in range(10))


def test_bulk_import_recipe_twice(recipes: Any, tmp_path: Path) -> None:
    rows = tmp_path / "items.csv"
    rows.write_text("order,sku\n" + "".join(f"o-{i % 7},S{i}\n" for i in range(2500)))
    env = {**os.environ, "PYTHONPATH": str(RECIPES)}
    for _ in range(2):  # the second run applies nothing again
        subprocess.run(
            [sys.executable, str(RECIPES / "bulk_import.py"), str(rows)], env=env, check=True
        )
    shop = recipes("shop")
    total = sum(len(shop.jobs.task("orders").get_state(f"o-{k}").items) for k in range(7))
    assert total == 2500
    assert shop.jobs.task("orders").get_state("o-0").items[:2] == ["S0", "S7"]
