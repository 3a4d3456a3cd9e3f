"""``durajobs --db postgresql://...``: what the CLI does on PostgreSQL alone -- doctor's checks of
a server, storage errors that name the server and never the password, ``PGPASSWORD`` and
``DURAJOBS_DB``. Every command's output and exit code on both stores are ``test_cli``'s
``both_stores`` tests.

The database is made through the real library on the session's throwaway cluster
(``tests/pgserver.py``, whose URLs carry a password); the commands run in process through the
CLI's entry point (``durajobs.cli.main``) and, for the exit codes scripts rely on, through the
installed ``durajobs`` console script.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import attrs
import pytest
from pgserver import PASSWORD, PgServer

from durajobs import Continuous, Debounce, Jobs, Task, every
from durajobs.cli import EXIT_NOT_FOUND, EXIT_OK, EXIT_STORAGE, main

SCRIPT = shutil.which("durajobs", path=str(Path(sys.executable).parent)) or shutil.which("durajobs")
SECRETS = (PASSWORD, urllib.parse.quote(PASSWORD, safe=""))


@attrs.define
class Counter:
    n: int = 0


@attrs.define
class Event:
    value: str


def tick(ctx: Any) -> None:
    if ctx.id == "broken":
        raise ValueError("tick failed for broken")
    ctx.state = Counter(ctx.state.n + 1)


def deliver(ctx: Any) -> None:
    del ctx


def on_order(event: Event, ctx: Any) -> None:
    ctx.state = Counter(0) if ctx.state is None else ctx.state
    ctx.schedule("1 hour")


REGISTRY = {
    "refresh": Continuous(
        state=Counter, schedule=every("1 hour"), execute=tick, start_immediately=False
    ),
    "parking": Continuous(
        state=Counter,
        schedule=every(0.01),
        execute=tick,
        start_immediately=False,
        on_exhausted="park",
    ),
    "clicks": Debounce(event=Event, execute=deliver, flush_after="10 minutes"),
    "orders": Task(state=Counter, event=Event, on_event=on_order, execute=deliver),
}


class Outputs:
    """Runs commands and keeps every byte they printed (to check for the password)."""

    def __init__(self, url: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.url = url
        self.capsys = capsys
        self.seen: list[str] = []

    def run(self, *args: str, db: str | None = None) -> tuple[int, str, str]:
        code = main(["--db", db or self.url, *args])
        captured = self.capsys.readouterr()
        self.seen += [captured.out, captured.err]
        return code, captured.out, captured.err

    def ok(self, *args: str) -> str:
        code, out, err = self.run(*args)
        assert code == EXIT_OK, (args, out, err)
        return out


@pytest.fixture
def database(pg_url: str) -> str:
    with Jobs(pg_url, REGISTRY) as jobs:
        jobs.continuous("refresh").start("u1", Counter())
        jobs.continuous("parking").start("broken", Counter())
        jobs.debounce("clicks").add("u1", Event("a"))
        jobs.debounce("clicks").add("u2", Event("b"))
        jobs.task("orders").send("o-1", Event("x"))
        deadline = 200
        while jobs.continuous("parking").status("broken").status != "failed" and deadline:
            jobs.run_due()
            deadline -= 1
        assert jobs.continuous("parking").status("broken").status == "failed"
    return pg_url


def test_doctor_and_storage_errors_on_postgresql(
    database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = Outputs(database, capsys)
    doctor_code, doctor_out, _ = cli.run("doctor", "--json")
    report = json.loads(doctor_out)
    checks = {c["name"]: c["level"] for c in report["checks"]}
    assert checks["connection"] == "ok"
    assert checks["schema"] == "ok"
    assert "clock" in checks
    assert checks["parked"] == "warn"
    assert doctor_code == 1  # a parked instance is a warning (exit 1), not a failure (2)
    code, out, _ = cli.run("doctor")
    assert code == 1
    assert "degraded: warnings found" in out

    # Storage problems: exit 4, naming the server, never the password.
    base = urllib.parse.urlsplit(database)
    wrong = database.replace(urllib.parse.quote(PASSWORD, safe=""), "not-the-password")
    code, _, err = cli.run("ls", db=wrong)
    assert code == EXIT_STORAGE
    assert f"127.0.0.1:{base.port}" in err
    missing = database.rsplit("/", 1)[0] + "/no_such_database"
    code, _, err = cli.run("stats", db=missing)
    assert code == EXIT_STORAGE
    assert "no_such_database" in err
    code, out, _ = cli.run("doctor", db=database.replace(f":{base.port}/", ":1/"))
    assert code == 2  # the store unreachable: a failure

    for text in cli.seen:
        for secret in SECRETS:
            assert secret not in text


@pytest.mark.skipif(SCRIPT is None, reason="the durajobs console script is not installed")
def test_the_console_script_on_postgresql(
    database: str, pg_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert SCRIPT is not None

    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SCRIPT, *args], capture_output=True, text=True, check=False, timeout=60,
            env={**__import__("os").environ, **env},
        )  # fmt: skip

    listed = run("--db", database, "ls", "--json")
    assert listed.returncode == EXIT_OK
    assert len(json.loads(listed.stdout)) == 5
    by_env = run("stats", DURAJOBS_DB=database)  # DURAJOBS_DB works as --db does
    assert by_env.returncode == EXIT_OK
    # The password from PGPASSWORD instead of the URL.
    bare = database.replace(":" + urllib.parse.quote(PASSWORD, safe="") + "@", "@")
    assert PASSWORD not in bare
    from_env = run("--db", bare, "show", "task:orders:o-1", PGPASSWORD=PASSWORD)
    assert from_env.returncode == EXIT_OK, from_env.stderr
    denied = run("--db", bare, "ls", PGPASSWORD="wrong")
    assert denied.returncode == EXIT_STORAGE
    assert "password authentication failed" in denied.stderr
    missing = run("--db", database, "retry", "task:orders:nobody")
    assert missing.returncode == EXIT_NOT_FOUND
    for result in (listed, by_env, from_env, denied, missing):
        for secret in SECRETS:
            assert secret not in result.stdout + result.stderr
