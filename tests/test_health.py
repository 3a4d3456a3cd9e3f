"""Health, failing instances and orphaned jobs, on both stores: ``durajobs doctor``'s exit codes
(0 healthy, 1 warnings, 2 failures) and ``--json``; ``GET /healthz`` of the dashboard and of
the daemon's metrics app (200 ok/degraded, 503 failing: overdue alarms with no daemon, a
missing file, the PostgreSQL server stopped); the *failing* flag in ``status()``, ``trigger``,
``ls``, ``show``, the dashboard's Failed page and ``doctor``. Real databases made through
``durajobs.Jobs``; a daemon "serving" is the daemon's own end of the wake-ups
(``open_listener``), bound or LISTENing as the daemon does.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import attrs
import pytest
from pgserver import PgServer, find_pg_bin
from typer.testing import CliRunner

from durajobs import Continuous, Debounce, FakeClock, Jobs, Task, every
from durajobs.admin import Admin, orphaned_jobs
from durajobs.apploader import AppError, load_app
from durajobs.cli import app as cli_app
from durajobs.errors import ValidationError
from durajobs.health import defined_jobs, report
from durajobs.stores import open_listener

pytestmark = pytest.mark.both_stores


@attrs.define
class Count:
    n: int = 0


@attrs.define
class Event:
    value: str


def tick(ctx: Any) -> None:
    if ctx.id.startswith("bad") and not FIXED:
        raise RuntimeError(f"tick failed for {ctx.id}")
    ctx.state = Count(ctx.state.n + 1)


def deliver(ctx: Any) -> None:
    pass


def on_order(event: Event, ctx: Any) -> None:
    ctx.state = Count()
    if event.value != "idle":
        ctx.schedule("1 hour")


def ship(ctx: Any) -> None:
    if ctx.id.startswith("bad"):
        raise RuntimeError(f"warehouse rejected {ctx.id}")


FIXED: list[str] = []  # non-empty: the bad ticks succeed (the handler was fixed)

REGISTRY = {
    # no retry: a failing run is skipped (the default), the instance stays running: failing
    "ticker": Continuous(state=Count, schedule=every("1 hour"), execute=tick),
    "strict": Continuous(state=Count, schedule=every("1 hour"), execute=tick, on_exhausted="park"),
    "hooks": Debounce(event=Event, execute=deliver, flush_after="10 minutes"),
    "orders": Task(state=Count, event=Event, on_event=on_order, execute=ship),
}
# The application after a deploy that removed the "hooks" job (for ``--app``).
DEPLOYED = {name: job for name, job in REGISTRY.items() if name != "hooks"}


@contextmanager
def jobs_on(db: Path | str, start: float) -> Iterator[Jobs]:
    with Jobs(db, REGISTRY, clock=FakeClock(start)) as jobs:
        yield jobs


def populate(db: Path | str, start: float, *, broken: bool = True) -> None:
    """Running Continuous instances (one failing), a parked one, a Debounce batch, Tasks
    active, idle and parked; every alarm is due an hour (or ten minutes) after ``start``."""
    with jobs_on(db, start) as jobs:
        ticker = jobs.continuous("ticker")
        ticker.start("ok-1", Count())
        ticker.start("ok-2", Count())
        jobs.debounce("hooks").add("repo-1", Event("push"))
        orders = jobs.task("orders")
        orders.send("o-1", Event("placed"))
        orders.send("o-idle", Event("idle"))
        if broken:
            ticker.start("bad-1", Count())  # its first run fails: failing
            jobs.continuous("strict").start("bad-1", Count())  # parked
            orders.send("bad-1", Event("placed"))
            orders.trigger("bad-1")  # execute raises, no retry: parked


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli_app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout


def doctor(db: Path | str, *args: str) -> tuple[int, dict[str, Any]]:
    code, out = cli("--db", str(db), "doctor", "--json", *args)
    return code, json.loads(out)


def levels(result: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["level"] for c in result["checks"]}


@contextmanager
def daemon_serving(db: Path | str) -> Iterator[None]:
    """The daemon's end of the wake-ups, as a running daemon holds it."""
    listener = open_listener(str(db))
    try:
        yield
    finally:
        listener.close()


def get(application: Any, path: str, query: str = "") -> tuple[int, str, str]:
    """``GET path?query`` of a WSGI application: status, content type, body."""
    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "QUERY_STRING": query}
    setup_testing_defaults(environ)
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = int(status.split(maxsplit=1)[0]), dict(headers)

    body = b"".join(application(environ, start_response))
    return seen["status"], seen["headers"]["Content-Type"], body.decode()


# -- doctor's exit codes ----------------------------------------------------------------------


def test_doctor_exit_codes_follow_the_worst_check(new_database: Path | str) -> None:
    populate(new_database, time.time(), broken=False)
    code, result = doctor(new_database)
    assert (code, result["status"], result["ok"]) == (0, "ok", True), result
    assert levels(result)["overdue"] == "ok"
    text = cli("--db", str(new_database), "doctor")
    assert text[0] == 0
    assert text[1].rstrip().endswith("healthy")

    populate(new_database, time.time())  # adds a failing and two parked instances
    code, result = doctor(new_database)
    assert (code, result["status"], result["ok"]) == (1, "degraded", True), result
    checks = levels(result)
    assert checks["parked"] == "warn"
    assert checks["failing"] == "warn"
    details = {c["name"]: c["detail"] for c in result["checks"]}
    assert details["parked"].startswith("2 instance(s) parked")
    assert details["failing"].startswith("1 continuous instance(s) failing")
    assert cli("--db", str(new_database), "doctor")[1].rstrip().endswith("warnings found")


def test_overdue_alarms_fail_with_no_daemon_and_warn_with_one(new_database: Path | str) -> None:
    populate(new_database, time.time() - 3 * 3600, broken=False)  # every alarm 2 h late
    code, result = doctor(new_database)
    assert (code, result["status"]) == (2, "failing"), result
    overdue = next(c for c in result["checks"] if c["name"] == "overdue")
    assert overdue["level"] == "fail"
    assert "no daemon is serving this database" in overdue["detail"]
    assert "is a daemon running" not in overdue["detail"]
    assert {o["running"] for o in result["overdue"]} == {False}
    assert "failing: problems found" in cli("--db", str(new_database), "doctor")[1]

    with daemon_serving(new_database):
        code, result = doctor(new_database)
        assert (code, result["status"]) == (1, "degraded"), result
        overdue = next(c for c in result["checks"] if c["name"] == "overdue")
        assert overdue["level"] == "warn"
        assert "while a daemon is serving this database" in overdue["detail"]
        assert "orphaned" in overdue["detail"]  # without --app it cannot tell


def test_doctor_names_orphaned_jobs_with_the_app(
    new_database: Path | str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    populate(new_database, time.time() - 3 * 3600, broken=False)
    # The application makes its Jobs at import, on a file of its own that does not exist:
    # doctor imports it for its definitions only (durajobs.jobs.definitions_only): no file.
    own = tmp_path / "app-own.db"
    (tmp_path / "deployed_app.py").write_text(
        f"from durajobs import Jobs\nfrom test_health import DEPLOYED\njobs = Jobs({str(own)!r}, "
        "DEPLOYED)\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("deployed_app", None)
    with daemon_serving(new_database):
        code, result = doctor(new_database, "--app", "deployed_app:jobs")
    assert not own.exists()
    assert (code, result["status"]) == (1, "degraded"), result
    details = {c["name"]: (c["level"], c["detail"]) for c in result["checks"]}
    level, detail = details["orphaned"]
    assert level == "warn"
    assert "debounce:hooks (1)" in detail
    assert "does not define" in detail
    # The orphaned batch is not reported as the daemon being behind: the others are.
    assert "debounce:hooks" not in details["overdue"][1]
    assert "it is behind" in details["overdue"][1]

    # The one computation doctor, check and the daemon's start-up log name them with.
    with Admin(new_database) as admin:
        counts = [(k, j, n) for k, j, _, n in admin.gauges().counts]
    assert orphaned_jobs(counts, defined_jobs(DEPLOYED)) == {("debounce", "hooks"): 1}
    assert orphaned_jobs(counts, defined_jobs(REGISTRY)) == {}

    # Every job defined: "orphaned" is ok.
    assert levels(report(lambda: Admin(new_database), str(new_database),
                         defined={n: j.kind for n, j in REGISTRY.items()}).to_dict())[
        "orphaned"
    ] == "ok"  # fmt: skip


def test_a_bad_app_is_one_clear_error(new_database: Path | str) -> None:
    populate(new_database, time.time(), broken=False)
    code, _out = cli("--db", str(new_database), "doctor", "--app", "no_such_module_here:jobs")
    assert code == 2
    with pytest.raises(AppError, match="no module named 'no_such_module_here'"):
        load_app("no_such_module_here:jobs", definitions_only=True)
    with pytest.raises(ValidationError, match="must look like module:attribute"):
        load_app("nocolon", definitions_only=True)


@pytest.mark.sqlite_only
def test_a_missing_database_is_a_failure(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    code, result = doctor(missing)
    assert (code, result["status"]) == (2, "failing")
    assert result["checks"][0]["name"] == "store"
    assert "no such database file" in result["checks"][0]["detail"]
    assert list(tmp_path.iterdir()) == []  # nothing was created


# -- GET /healthz ---------------------------------------------------------------------------


def test_healthz_of_the_dashboard_and_of_the_metrics_app(new_database: Path | str) -> None:
    pytest.importorskip("jinja2")
    from durajobs.metrics import metrics_app
    from durajobs.web import make_app

    populate(new_database, time.time(), broken=False)
    dashboard = make_app(new_database)
    metrics = metrics_app(str(new_database))
    try:
        for application in (dashboard, metrics):
            status, ctype, body = get(application, "/healthz")
            assert (status, ctype) == (200, "application/json")
            answer = json.loads(body)
            assert answer["status"] == "ok"
            assert {"name", "level", "detail"} <= set(answer["checks"][0])
            assert "integrity" not in levels(answer)  # a probe reads no whole file

        populate(new_database, time.time())  # parked and failing: degraded, still 200
        for application in (dashboard, metrics):
            status, _, body = get(application, "/healthz")
            assert (status, json.loads(body)["status"]) == (200, "degraded")
    finally:
        dashboard.close()
        metrics.close()


def test_healthz_is_503_for_overdue_alarms_with_no_daemon(new_database: Path | str) -> None:
    from durajobs.metrics import metrics_app

    populate(new_database, time.time() - 3 * 3600, broken=False)
    metrics = metrics_app(str(new_database))
    try:
        status, _, body = get(metrics, "/healthz")
        assert (status, json.loads(body)["status"]) == (503, "failing")
        with daemon_serving(new_database):
            status, _, body = get(metrics, "/healthz")
            assert (status, json.loads(body)["status"]) == (200, "degraded")
    finally:
        metrics.close()


@pytest.mark.sqlite_only
def test_healthz_is_503_for_a_missing_file(tmp_path: Path) -> None:
    from durajobs.metrics import metrics_app

    metrics = metrics_app(str(tmp_path / "gone.db"))
    try:
        status, _, body = get(metrics, "/healthz")
        answer = json.loads(body)
        assert (status, answer["status"]) == (503, "failing")
        assert answer["checks"][0]["name"] == "store"
        status, _, body = get(metrics, "/metrics")
        assert status == 200
        assert "durajobs_store_up 0.0" in body
    finally:
        metrics.close()


@pytest.mark.sqlite_only
def test_healthz_is_503_while_the_postgresql_server_is_stopped() -> None:
    """A cluster of its own, stopped and started again under a running dashboard."""
    pytest.importorskip("jinja2")
    from durajobs.metrics import metrics_app
    from durajobs.web import make_app

    bindir = find_pg_bin()
    if bindir is None:
        pytest.fail("PostgreSQL is not installed") if _ci() else pytest.skip("no PostgreSQL")
    server = PgServer(bindir)
    server.start()
    try:
        url = server.create_database("health")
        populate(url, time.time(), broken=False)
        dashboard, metrics = make_app(url), metrics_app(url)
        try:
            for application in (dashboard, metrics):
                assert get(application, "/healthz")[0] == 200
            server._run(["pg_ctl", "-D", server.data, "-m", "fast", "-w", "stop"])
            for application in (dashboard, metrics):
                status, _, body = get(application, "/healthz")
                answer = json.loads(body)
                assert (status, answer["status"]) == (503, "failing"), answer
                assert levels(answer)["store"] == "fail"
                assert server.password not in body
            assert "durajobs_store_up 0.0" in get(metrics, "/metrics")[2]
            code, result = doctor(url)
            assert (code, result["status"]) == (2, "failing")
            server._pg_ctl_start()
            for application in (dashboard, metrics):  # the same app recovers
                status, _, body = get(application, "/healthz")
                assert (status, json.loads(body)["status"]) == (200, "ok"), body
        finally:
            dashboard.close()
            metrics.close()
    finally:
        server.stop()


def _ci() -> bool:
    import os

    return os.environ.get("CI", "").lower() == "true"


# -- failing is visible -----------------------------------------------------------------------


def test_failing_is_visible_everywhere(new_database: Path | str) -> None:
    start = time.time()
    populate(new_database, start)
    failing_id = "continuous:ticker:bad-1"
    with jobs_on(new_database, start) as jobs:
        ticker = jobs.continuous("ticker")
        status = ticker.status("bad-1")
        assert (status.status, status.failing, status.attempt) == ("running", True, 1)
        assert status.last_error is not None
        assert "tick failed for bad-1" in status.last_error
        assert ticker.status("ok-1").failing is False
        assert jobs.continuous("strict").status("bad-1").failing is False  # parked instead

        # trigger() runs it: triggered (it ran), with the run's error; still failing.
        result = ticker.trigger("bad-1")
        assert result.triggered
        assert not result.retry_scheduled
        assert not result.terminated
        assert result.error is not None
        assert "tick failed for bad-1" in result.error
        assert ticker.trigger("ok-1").error is None
        task = jobs.task("orders").trigger("o-1")
        assert task.triggered
        assert task.error is None
        assert ticker.trigger("missing").triggered is False

    code, out = cli("--db", str(new_database), "ls", "--status", "failing", "--json")
    assert code == 0
    assert [(r["instance_id"], r["status"], r["failing"]) for r in json.loads(out)] == [
        (failing_id, "running", True)
    ]
    code, out = cli("--db", str(new_database), "ls")
    assert code == 0
    assert "running (failing)" in out
    listed = json.loads(cli("--db", str(new_database), "ls", "--json")[1])
    assert {r["instance_id"] for r in listed if r["failing"]} == {failing_id}
    shown = json.loads(cli("--db", str(new_database), "show", failing_id, "--json")[1])
    assert shown["failing"] is True
    assert shown["status"] == "running"
    assert "failing" in cli("--db", str(new_database), "show", failing_id)[1]
    with Admin(new_database) as admin:
        assert [i.instance_id for i in admin.ls(status="failing")] == [failing_id]
        assert admin.ls(status="failing", kind="task") == []
        assert admin.instances(status="failing").instances[0].instance_id == failing_id

    # A successful run ends it.
    FIXED.append("yes")
    try:
        with jobs_on(new_database, start) as jobs:
            result = jobs.continuous("ticker").trigger("bad-1")
            assert result.error is None
            assert jobs.continuous("ticker").status("bad-1").failing is False
    finally:
        FIXED.clear()
    assert (
        json.loads(cli("--db", str(new_database), "ls", "--status", "failing", "--json")[1]) == []
    )
    assert "failing" not in levels(doctor(new_database)[1])


def test_the_failed_page_shows_failing_instances(new_database: Path | str) -> None:
    pytest.importorskip("jinja2")
    from durajobs.web import make_app

    populate(new_database, time.time())
    dashboard = make_app(new_database)
    try:
        status, _, parked = get(dashboard, "/failed")
        assert status == 200
        assert "task:orders:bad-1" in parked
        assert "continuous:strict:bad-1" in parked
        assert "continuous:ticker:bad-1" not in parked
        status, _, failing = get(dashboard, "/failed", "show=failing")
        assert status == 200
        assert "continuous:ticker:bad-1" in failing
        assert "task:orders:bad-1" not in failing
        assert 'status-failing">failing' in failing
        status, _, page = get(dashboard, "/instance", "id=continuous:ticker:bad-1")
        assert status == 200
        assert 'status-failing">failing' in page
        status, _, listed = get(dashboard, "/instances", "status=failing")
        assert status == 200
        assert "continuous:ticker:bad-1" in listed
    finally:
        dashboard.close()
