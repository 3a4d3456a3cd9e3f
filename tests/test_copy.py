"""``durajobs copy``: a whole database from any store to any store (``durajobs.copy``).

Real files, a real PostgreSQL server (the session's throwaway cluster, ``tests/pgserver.py``)
and real daemons (``durajobs_daemon.py`` subprocesses serving ``daemon_apps.copy_app``); the
tests wait on the handlers' JSON lines, never on a fixed sleep.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_apps.app_defs import Count, Due
from daemon_apps.copy_app import REGISTRY, Click
from waiting import wait_for

from durajobs import Jobs
from durajobs.copy import Progress, copy_database
from durajobs.errors import DuplicateEventError, InvalidStateError, StorageError
from durajobs.stores import open_store
from durajobs.stores.base import TABLES, ExportBatch

TESTS = Path(__file__).parent
DAEMON = TESTS.parent / "durajobs_daemon.py"
CLI = [sys.executable, "-m", "durajobs.cli"]


def records(out: Path, kind: str, instance: str | None = None) -> list[dict[str, Any]]:
    try:
        lines = out.read_text().splitlines()
    except FileNotFoundError:
        return []
    items = [json.loads(line) for line in lines]
    return [i for i in items if i["kind"] == kind and (instance is None or i["id"] == instance)]


def env_for(db: str, out: Path, **extra: str) -> dict[str, str]:
    env = {
        **os.environ, "DAEMON_TEST_DB": db, "DAEMON_TEST_OUT": str(out), **extra,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
    }  # fmt: skip
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM",
                "COPY_TEST_FAIL", "DURAJOBS_DB"):  # fmt: skip
        env.pop(key, None)
    env.update(extra)
    return env


@contextlib.contextmanager
def daemon(app: str, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(DAEMON), "--app", app], env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
        )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], check=False, capture_output=True, text=True, env=env, timeout=120
    )


def snapshot(location: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (export's layout, key order)."""
    store = open_store(location, readonly=True)
    try:
        rows: dict[str, list[tuple[Any, ...]]] = {t: [] for t in TABLES}
        with contextlib.closing(store.export(batch_size=7)) as batches:
            for batch in batches:
                rows[batch.table] += [tuple(r) for r in batch.rows]
        return rows
    finally:
        store.close()


# -- a source with every kind, every status, a parked instance, queued events, keys, history ----


def build_source(path: str, out: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A SQLite file holding every kind and status; returns what the test checks later."""
    monkeypatch.setenv("DAEMON_TEST_OUT", str(out))
    monkeypatch.setenv("COPY_TEST_FAIL", "1")
    jobs = Jobs(path, REGISTRY)
    other = Jobs(path, REGISTRY)  # holds a claim, as a flush running elsewhere would
    try:
        tick = jobs.continuous("tick")
        tick.start("t1", Count(5))
        tick.pause("later")  # a pause is carried (an id not started yet: it changes nothing)

        def ran_twice() -> bool:
            jobs.run_due()
            return tick.status("t1").run_count >= 2

        wait_for(ran_twice, what="t1 ran twice on the source")
        jobs.continuous("hourly").start("h1", Count())
        jobs.continuous("tick").start("gone", Count())
        jobs.continuous("tick").terminate("gone", "finished")  # purged: history only
        jobs.continuous("broken").start("p1", Count(40))

        def parked() -> bool:
            jobs.run_due()
            return jobs.continuous("broken").status("p1").status == "failed"

        wait_for(parked, what="p1 parked")
        task = jobs.task("task")
        task.send("s0", Due(time.time()))
        wait_for(lambda: jobs.run_due() >= 0 and task.status("s0").status == "idle",
                 what="s0 executed")  # fmt: skip
        soon = time.time() + 2.0
        task.send("s1", Due(soon), key="ks1")
        # Last (no run_due after it): an event queued while a flush runs elsewhere makes the
        # alarm due at once.
        batch = jobs.debounce("batch")
        batch.add("d1", Click("a"))
        batch.add("d1", Click("b"), key="kb")
        claim = other.engine.locks.acquire("debounce:batch:d1", 5.0)
        try:
            batch.add("d1", Click("c"), key="kc")  # busy: queued in the inbox
        finally:
            other.engine.locks.release(claim)
        store = jobs.engine.store
        assert len(store.queued("debounce:batch:d1")) == 1
        statuses = {row[4] for row in store.query("SELECT * FROM instances")}
        assert statuses == {"running", "failed", "debouncing", "active", "idle"}
        return {
            "t1_runs": tick.status("t1").run_count,
            "t1_n": tick.get_state("t1").n,
            "h1_due": store.load("continuous:hourly:h1").due_at,  # type: ignore[union-attr]
            "gone_history": [(h.event, h.step) for h in store.history("continuous:tick:gone")],
            "s1_at": soon,
        }
    finally:
        other.close()
        jobs.close()


def test_a_sqlite_file_copied_to_postgres_goes_on_where_it_was(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = str(tmp_path / "source.db")
    out = tmp_path / "handlers.jsonl"
    before = build_source(source, out, monkeypatch)
    on_source = snapshot(source)

    result = cli("copy", source, pg_url, "--json")
    assert result.returncode == 0, result.stderr
    assert "pw-S3cr3t" not in result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["counts"] == {t: len(rows) for t, rows in on_source.items()}
    assert all(report["counts"][t] for t in TABLES)  # every table had rows to carry
    assert snapshot(pg_url) == on_source  # every row, every value, ids and seqs kept

    env = env_for(pg_url, out)
    monkeypatch.delenv("COPY_TEST_FAIL")
    dest = Jobs(pg_url, REGISTRY)
    try:
        with daemon("daemon_apps.copy_app:jobs", env, tmp_path / "daemon.log") as proc:
            mine = os.getpid()
            # The Continuous goes on from its run count and state.
            ticks = wait_for(lambda: [r for r in records(out, "tick", "t1") if r["pid"] != mine],
                             what="t1 ticking on PostgreSQL")  # fmt: skip
            assert ticks[0]["run_count"] == before["t1_runs"] + 1
            assert ticks[0]["n"] == before["t1_n"]
            # The Debounce batch flushes a, b and the queued c (in one flush or two).
            flushes = wait_for(
                lambda: [p for r in records(out, "flush", "d1") for p in r["pages"]] == [
                    "a", "b", "c"] and records(out, "flush", "d1"),
                what="d1 flushed with its queued event",
            )  # fmt: skip
            assert flushes
            # The Task executes at its time.
            done = wait_for(lambda: records(out, "exit", "s1"), what="s1 executed")
            assert done[0]["lateness"] < 1.0
            # Keys still refuse duplicates.
            with pytest.raises(DuplicateEventError):
                dest.task("task").send("s1", Due(time.time()), key="ks1")
            with pytest.raises(DuplicateEventError):
                dest.debounce("batch").add("d1", Click("again"), key="kc")
            # The hourly alarm kept its time; the parked instance stayed parked.
            assert dest.engine.store.load("continuous:hourly:h1").due_at == before["h1_due"]  # type: ignore[union-attr]
            assert dest.continuous("broken").status("p1").status == "failed"
            assert not records(out, "broken", "p1")
            # `durajobs retry` resumes it; the daemon runs it with its state.
            resumed = cli("--db", pg_url, "retry", "continuous:broken:p1", env=env)
            assert resumed.returncode == 0, resumed.stderr
            assert "pw-S3cr3t" not in resumed.stdout + resumed.stderr
            ran = wait_for(lambda: records(out, "broken", "p1"), what="p1 resumed")
            assert ran[0]["n"] == 40
            # History is there, and new ids go on after the copied ones.
            history = dest.engine.store.history("continuous:tick:gone")
            assert [(h.event, h.step) for h in history] == before["gone_history"]
            newest = dest.engine.store.recent_history(1)[0].id
            assert newest > max(r[0] for r in on_source["history"])
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
    finally:
        dest.close()


def test_sqlite_to_sqlite_is_an_online_backup_while_the_daemon_runs(tmp_path: Path) -> None:
    source = str(tmp_path / "live.db")
    out = tmp_path / "handlers.jsonl"
    env = env_for(source, out)
    jobs = Jobs(source, REGISTRY)
    try:
        for i in range(20):
            jobs.continuous("tick").start(f"c{i}", Count())
        with daemon("daemon_apps.copy_app:jobs", env, tmp_path / "daemon.log") as proc:
            wait_for(lambda: len(records(out, "tick")) >= 40, what="the daemon ticking")
            for n in range(3):
                backup = str(tmp_path / f"backup-{n}.db")
                result = cli("copy", source, backup)
                assert result.returncode == 0, result.stderr
                assert result.stdout.startswith("copied 20 instances")
                assert result.stderr == ""  # no progress when stderr is not a terminal
                # One snapshot: every row agrees with its own history.
                with contextlib.closing(sqlite3.connect(backup)) as db:
                    rows = db.execute(
                        "SELECT instance_id, run_count, step, (SELECT count(*) FROM history h "
                        "WHERE h.instance_id = i.instance_id AND event = 'job.executed'), "
                        "(SELECT max(step) FROM history h WHERE h.instance_id = i.instance_id) "
                        "FROM instances i"
                    ).fetchall()
                for instance_id, run_count, step, executed, last_step in rows:
                    assert (run_count, step) == (executed, last_step), instance_id
            ticked = len(records(out, "tick"))
            wait_for(lambda: len(records(out, "tick")) >= ticked + 20, what="still ticking")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        # The backup is a working database: the same jobs go on from it.
        with Jobs(str(tmp_path / "backup-2.db"), REGISTRY) as restored:
            assert restored.continuous("tick").status("c0").run_count >= 1
    finally:
        jobs.close()


def test_postgres_to_sqlite_and_back(pg_server: Any, pg_url: str, tmp_path: Path) -> None:
    source = str(tmp_path / "s.db")
    with Jobs(source, REGISTRY) as jobs:
        for i in range(30):
            jobs.task("task").send(f"s{i}", Due(time.time() + 3600), key=f"k{i}")
    assert cli("copy", source, pg_url).returncode == 0
    back = str(tmp_path / "back.db")
    result = cli("copy", pg_url, back, "--batch-size", "4")
    assert result.returncode == 0, result.stderr
    assert "pw-S3cr3t" not in result.stdout + result.stderr
    assert snapshot(back) == snapshot(source)
    second = pg_server.create_database()
    try:
        assert cli("copy", pg_url, second).returncode == 0  # PostgreSQL -> PostgreSQL
        assert snapshot(second) == snapshot(source)
    finally:
        pg_server.drop_database(second)


def test_a_non_empty_destination_is_refused(pg_url: str, tmp_path: Path) -> None:
    source, other = str(tmp_path / "s.db"), str(tmp_path / "other.db")
    with Jobs(source, REGISTRY) as jobs:
        jobs.continuous("hourly").start("h1", Count())
    with Jobs(other, REGISTRY) as jobs:
        jobs.continuous("hourly").start("mine", Count())
    refused = cli("copy", source, other)
    assert refused.returncode == 1
    assert "not empty" in refused.stderr
    assert "1 instances" in refused.stderr
    assert [r[0] for r in snapshot(other)["instances"]] == ["continuous:hourly:mine"]
    assert cli("copy", source, pg_url).returncode == 0
    again = cli("copy", source, pg_url)
    assert again.returncode == 1
    assert "not empty" in again.stderr
    assert "pw-S3cr3t" not in again.stderr
    same = cli("copy", source, source)
    assert same.returncode == 1
    assert "the source itself" in same.stderr


def test_bad_locations_exit_4_and_leave_no_file(tmp_path: Path) -> None:
    missing = cli("copy", str(tmp_path / "nope.db"), str(tmp_path / "dest.db"))
    assert missing.returncode == 4
    assert "no such database file" in missing.stderr
    assert not (tmp_path / "dest.db").exists()
    unreachable = cli("copy", str(tmp_path / "nope.db"), "postgresql://u:hunter2@127.0.0.1:1/x")
    assert unreachable.returncode == 4
    assert "hunter2" not in unreachable.stderr


@pytest.fixture(params=["sqlite", "postgres"])
def empty_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "empty.db")
    url: str = request.getfixturevalue("pg_url")
    return url


def test_counts_that_differ_from_the_snapshot_write_nothing(empty_location: str) -> None:
    store = open_store(empty_location)
    try:
        row = (1, "task:task:x", 1.0, "job.started", 1, None, None, None, None)
        lying = ExportBatch("history", [row], {"instances": 0, "inbox": 0, "event_keys": 0,
                                               "history": 2})  # fmt: skip
        with pytest.raises(StorageError, match="history: the source snapshot has 2 rows"):
            store.import_batches([lying])
        assert store.table_counts() == dict.fromkeys(TABLES, 0)
        honest = lying._replace(counts={**lying.counts, "history": 1})
        assert store.import_batches([honest])["history"] == 1
        with pytest.raises(InvalidStateError, match="not empty"):
            store.import_batches([honest])
    finally:
        store.close()


def test_progress_is_shown_when_asked(tmp_path: Path) -> None:
    source = str(tmp_path / "s.db")
    with Jobs(source, REGISTRY) as jobs:
        for i in range(50):
            jobs.task("task").send(f"s{i}", Due(time.time() + 3600))
    result = cli("copy", source, str(tmp_path / "d.db"), "--progress", "--batch-size", "10")
    assert result.returncode == 0
    lines = result.stderr.splitlines()
    assert lines[0].startswith("copying: 10/")
    assert lines[-1].endswith("(100%) history records")
    stream = io.StringIO()
    seen = Progress(stream, interval=0)
    copy_database(source, str(tmp_path / "e.db"), batch_size=25, progress=seen)
    assert stream.getvalue().count("\n") == len(stream.getvalue().splitlines()) >= 4
