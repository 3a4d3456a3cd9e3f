"""Prometheus metrics, read back with prometheus_client's own text parser: the store's gauges
after known steps (on both stores), the per-process step and lateness series, ``/metrics`` of
the dashboard and of the daemon's metrics app (over a real HTTP server too), and the error
naming the extra when prometheus_client is missing.
"""

from __future__ import annotations

import logging
import selectors
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any
from wsgiref.simple_server import make_server as wsgiref_server
from wsgiref.util import setup_testing_defaults

import pytest
from prometheus_client.parser import text_string_to_metric_families  # the test extra has it
from test_health import FIXED, Count, jobs_on, populate
from waiting import wait_for

from durajobs import FakeClock
from durajobs.admin import Admin
from durajobs.metrics import Metrics, SelectorServer, make_server, metrics_app, step_outcome

pytestmark = pytest.mark.both_stores


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: ``(name, sorted labels) -> value``."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def instances(scraped: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[str, float]:
    """``durajobs_instances`` as ``"job/status" -> value``."""
    return {
        f"{dict(labels)['job']}/{dict(labels)['status']}": value
        for (name, labels), value in scraped.items()
        if name == "durajobs_instances"
    }


def get(application: Any, path: str) -> tuple[int, dict[str, str], str]:
    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = int(status.split(maxsplit=1)[0]), dict(headers)

    body = b"".join(application(environ, start_response))
    return seen["status"], seen["headers"], body.decode()


# -- the store's gauges -----------------------------------------------------------------------


def test_instance_gauges_after_known_steps(new_database: Path | str) -> None:
    start = time.time()
    clock = FakeClock(start)
    populate(new_database, start)
    with Admin(new_database, clock=clock) as admin:
        metrics = Metrics(lambda: admin)
        scraped = samples(metrics.render().decode())
        assert instances(scraped) == {
            # two running, one failing (its first run failed and was skipped): 2 + 1
            "ticker/running": 2, "ticker/failing": 1, "ticker/failed": 0, "ticker/paused": 0,
            "strict/running": 0, "strict/failing": 0, "strict/failed": 1, "strict/paused": 0,
            "hooks/debouncing": 1, "hooks/failed": 0, "hooks/paused": 0,
            "orders/active": 1, "orders/idle": 1, "orders/failed": 1, "orders/paused": 0,
        }  # fmt: skip
        kinds = {
            dict(labels)["job"]: dict(labels)["kind"]
            for (name, labels) in scraped
            if name == "durajobs_instances"
        }
        assert kinds == {"ticker": "continuous", "strict": "continuous", "hooks": "debounce",
                         "orders": "task"}  # fmt: skip
        assert scraped[("durajobs_overdue_instances", ())] == 0
        assert scraped[("durajobs_store_up", ())] == 1

        # An hour and two minutes on: every alarm (the ticker's hourly run, the batch's flush
        # after ten minutes, the order's execute after an hour) is more than 60 s late.
        clock.advance("62 minutes")
        assert samples(metrics.render().decode())[("durajobs_overdue_instances", ())] == 5

    # Steps change them: the failing instance succeeds, a parked one is terminated.
    with jobs_on(new_database, start) as jobs:
        FIXED.append("yes")
        try:
            jobs.continuous("ticker").trigger("bad-1")
        finally:
            FIXED.clear()
        jobs.task("orders").terminate("bad-1")
        jobs.continuous("ticker").start("ok-3", Count())
    with Admin(new_database, clock=FakeClock(start)) as admin:
        now = instances(samples(Metrics(lambda: admin).render().decode()))
    assert (now["ticker/running"], now["ticker/failing"], now["orders/failed"]) == (4, 0, 0)


def test_the_store_down_is_store_up_0(tmp_path: Path) -> None:
    metrics = Metrics(lambda: Admin(tmp_path / "missing.db"))
    scraped = samples(metrics.render().decode())
    assert scraped[("durajobs_store_up", ())] == 0
    assert not [name for name, _ in scraped if name == "durajobs_instances"]
    assert list(tmp_path.iterdir()) == []


# -- the series of the process that runs steps --------------------------------------------------


def test_steps_and_lateness_are_counted_as_observed() -> None:
    metrics = Metrics()  # no store: only what this process did
    # The daemon's outcome names (StepReport.outcome) and the contract's both work.
    for outcome, seconds in [("ok", 0.002), ("ok", 0.004), ("retry", 0.5), ("exhausted", 0.1),
                             ("parked", 0.2), ("skipped", None), ("retried", 0.3)]:  # fmt: skip
        metrics.observe_step("orders", "task", outcome, seconds)
    metrics.observe_step("orders", "task", "terminated", 0.01, error="RuntimeError: x")
    metrics.observe_step("refresher", "continuous", "terminated", 0.01)
    for late in (0.001, 0.002, 0.3, -0.5):
        metrics.observe_lateness(late)
    scraped = samples(metrics.render().decode())

    def steps(job: str, kind: str, outcome: str) -> float:
        labels = (("job", job), ("kind", kind), ("outcome", outcome))
        return scraped.get(("durajobs_steps_total", labels), 0.0)

    assert steps("orders", "task", "ok") == 3  # two ok, one skipped
    assert steps("orders", "task", "retried") == 2
    assert steps("orders", "task", "failed") == 2  # exhausted, terminated with an error
    assert steps("orders", "task", "parked") == 1
    assert steps("refresher", "continuous", "ok") == 1
    assert scraped[("durajobs_step_duration_seconds_count", (("job", "orders"),))] == 7
    total = scraped[("durajobs_step_duration_seconds_sum", (("job", "orders"),))]
    assert total == pytest.approx(0.002 + 0.004 + 0.5 + 0.1 + 0.2 + 0.3 + 0.01)
    le_5ms = (("job", "orders"), ("le", "0.005"))
    assert scraped[("durajobs_step_duration_seconds_bucket", le_5ms)] == 2
    assert scraped[("durajobs_alarm_lateness_seconds_count", ())] == 4
    assert scraped[("durajobs_alarm_lateness_seconds_bucket", (("le", "0.0025"),))] == 3
    assert ("durajobs_store_up", ()) not in scraped


def test_step_outcome_names() -> None:
    assert [step_outcome(o) for o in ("ok", "retry", "failed", "exhausted", "parked")] == [
        "ok", "retried", "failed", "failed", "parked",
    ]  # fmt: skip
    assert step_outcome("terminated") == "ok"
    assert step_outcome("terminated", "boom") == "failed"


# -- serving ----------------------------------------------------------------------------------


def test_the_dashboard_serves_metrics(new_database: Path | str) -> None:
    pytest.importorskip("jinja2")
    from durajobs.web import make_app

    populate(new_database, time.time())
    dashboard = make_app(new_database)
    try:
        status, headers, body = get(dashboard, "/metrics")
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert instances(samples(body))["ticker/failing"] == 1
    finally:
        dashboard.close()


def test_the_metrics_app_over_http(new_database: Path | str) -> None:
    """The daemon's metrics address: a real server on a free port, read with urllib."""
    populate(new_database, time.time())
    metrics = Metrics()
    app = metrics_app(str(new_database), metrics)
    metrics.observe_step("ticker", "continuous", "ok", 0.01)
    server = make_server("127.0.0.1", 0, app)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=30) as answer:
            scraped = samples(answer.read().decode())
        assert instances(scraped)["orders/failed"] == 1
        labels = (("job", "ticker"), ("kind", "continuous"), ("outcome", "ok"))
        assert scraped[("durajobs_steps_total", labels)] == 1
        with urllib.request.urlopen(base + "/healthz", timeout=30) as answer:
            assert answer.status == 200
            assert b'"degraded"' in answer.read()
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(base + "/nothing", timeout=30)
        assert missing.value.code == 404
    finally:
        server.shutdown()
        server.server_close()
        app.close()
    with pytest.raises(ValueError, match="already"):
        metrics.watch(lambda: Admin(new_database))


class Loop:
    """A ``selectors`` loop on a thread of its own, as the daemon's parent runs one, serving
    a ``SelectorServer`` (only the loop's thread touches it)."""

    def __init__(self, http: SelectorServer) -> None:
        self.http = http
        self.selector = selectors.DefaultSelector()
        http.attach(self.selector)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            deadline = self.http.next_deadline()
            wait = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
            for key, _ in self.selector.select(max(wait, 0.0)):
                key.data(key)
            self.http.expire()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        self.http.close()
        self.selector.close()


def _boom(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    raise RuntimeError("the app broke\nover two lines")


@pytest.mark.sqlite_only
def test_the_selector_server_caps_its_connections_and_logs_an_app_error_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    http = SelectorServer(
        wsgiref_server("127.0.0.1", 0, _boom), timeout=60, max_connections=2
    )  # fmt: skip
    loop = Loop(http)
    address = ("127.0.0.1", http.server.server_port)
    clients = [socket.create_connection(address, timeout=30) for _ in range(3)]
    try:
        waiting = clients[2]  # beyond the cap: left in the kernel's backlog
        waiting.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: http.open_connections == 2, what="two connections accepted")
        waiting.setblocking(False)
        with pytest.raises(BlockingIOError):  # not accepted, so not answered
            waiting.recv(4096)
        waiting.setblocking(True)
        with caplog.at_level(logging.WARNING, logger="durajobs.metrics"):
            clients[0].close()  # a slot frees: the waiting one is accepted and answered
            assert waiting.recv(4096).startswith(b"HTTP/1.0 500 ")
            wait_for(lambda: "the app failed" in caplog.text, what="the app's failure logged")
        (line,) = [r.getMessage() for r in caplog.records if "the app failed" in r.getMessage()]
        assert "RuntimeError: the app broke over two lines (answered 500)" in line
        assert "Traceback" not in caplog.text
    finally:
        for client in clients:
            client.close()
        loop.close()


@pytest.mark.sqlite_only
def test_without_prometheus_client_the_error_names_the_extra(tmp_path: Path) -> None:
    """prometheus_client hidden from a fresh interpreter: ``Metrics()`` says what to install,
    and the dashboard answers ``/metrics`` with 501 saying it (its other pages still work)."""
    populate(tmp_path / "jobs.db", time.time())
    script = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "from wsgiref.util import setup_testing_defaults\n"
        "from durajobs.metrics import Metrics, MetricsUnavailable\n"
        "from durajobs.web import make_app\n"
        "try:\n    Metrics()\nexcept MetricsUnavailable as exc:\n    print(exc)\n"
        "app = make_app(sys.argv[1])\n"
        "for path in ('/metrics', '/healthz'):\n"
        "    environ = {'PATH_INFO': path}; setup_testing_defaults(environ)\n"
        "    body = b''.join(app(environ, lambda status, headers: print(status)))\n"
        "    print(body.decode())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "jobs.db")],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    lines = done.stdout.splitlines()
    assert "pip install 'durajobs[metrics]'" in lines[0]
    assert "501 Not Implemented" in lines
    assert "200 OK" in lines  # /healthz needs no prometheus_client
    assert done.stdout.count("durajobs[metrics]") >= 2
