"""``durajobs check --app MODULE:ATTR``: every stored state and queued event read against the
application's current definitions, nothing written; exit 0 when all read, 1 otherwise.

The command runs as a real process (the ``durajobs`` console script) on a database written by
an "old deploy" of the application; the application module is a file the test writes, imported
by the command as the daemon imports ``--app``. Both stores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import pytest

from durajobs import Continuous, Debounce, Jobs, every

pytestmark = pytest.mark.both_stores

SCRIPT = Path(sys.executable).parent / "durajobs"


@attrs.define
class Counted:
    count: int = 0


@attrs.define
class Click:
    page: str


def _noop(ctx: Any) -> None:
    pass


OLD = {
    "tally": Continuous(state=Counted, schedule=every("1 hour"), execute=_noop,
                        start_immediately=False),
    "clicks": Debounce(event=Click, execute=_noop, flush_after="1 hour"),
    "retired": Continuous(state=Counted, schedule=every("1 hour"), execute=_noop,
                          start_immediately=False),
}  # fmt: skip

# The new deploy: the tally's count renamed to total, the clicks' page to url, "retired" gone.
APP = """
import os

import attrs

from durajobs import Continuous, Debounce, Jobs, every


@attrs.define
class Renamed:
    total: int = 0


@attrs.define
class Visit:
    url: str


def noop(ctx):
    pass


MIGRATE = os.environ.get("CHECK_MIGRATE") == "1"
tally = {"version": 2, "migrate": {1: lambda old: {"total": old["count"]}}} if MIGRATE else {}
clicks = {"version": 2, "migrate": {1: lambda old: {"url": old["page"]}}} if MIGRATE else {}

jobs = Jobs(os.environ["CHECK_DB"], {
    "tally": Continuous(state=Renamed, schedule=every("1 hour"), execute=noop,
                        start_immediately=False, **tally),
    "clicks": Debounce(event=Visit, execute=noop, flush_after="1 hour", **clicks),
})
"""


def check(tmp_path: Path, location: str, *args: str, migrate: bool = False) -> tuple[int, str, str]:
    (tmp_path / "check_app.py").write_text(APP)
    env = {k: v for k, v in os.environ.items() if k != "DURAJOBS_DB"}
    env.update(CHECK_DB=location, CHECK_MIGRATE="1" if migrate else "0", PYTHONPATH=str(tmp_path))
    proc = subprocess.run(
        [str(SCRIPT), "check", "--app", "check_app:jobs", *args],
        capture_output=True, text=True, env=env, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr
    password = urlsplit(location).password if "://" in location else None
    assert not password or password not in proc.stdout + proc.stderr
    return proc.returncode, proc.stdout, proc.stderr


def snapshot(jobs: Jobs) -> list[tuple[Any, ...]]:
    """Every stored instance and queued event, as stored."""
    store = jobs.engine.store
    batches = [b for b in store.export() if b.table in ("instances", "inbox")]
    return sorted((b.table, *map(str, row)) for b in batches for row in b.rows)


@pytest.fixture
def old_database(new_database: Path | str) -> str:
    """A database the old deploy wrote: two tallies, a batch with a queued event, a retired job."""
    location = str(new_database)
    with Jobs(location, OLD) as jobs:
        jobs.continuous("tally").start("a", Counted(5))
        jobs.continuous("tally").start("b", Counted(7))
        jobs.continuous("retired").start("r", Counted(1))
        jobs.debounce("clicks").add("c", Click("/a"))
        jobs.engine.store.enqueue(
            "debounce:clicks:c", "clicks", "c", '{"page":"/b"}', None, jobs.clock.time()
        )
    return location


def test_check_fails_without_migrations_and_writes_nothing(
    old_database: str, tmp_path: Path
) -> None:
    with Jobs(old_database, OLD) as jobs:
        before = snapshot(jobs)
    code, out, err = check(tmp_path, old_database, "--json")
    assert code == 1, err
    report = json.loads(out)
    assert report["ok"] is False
    assert report["failed"] == 4  # two tallies, the batch's state and its queued event
    jobs_by_name = {j["job"]: j for j in report["jobs"]}
    assert jobs_by_name["tally"]["states"] == {"as_is": 0, "migrated": 0, "failed": 2}
    assert jobs_by_name["clicks"]["states"] == {"as_is": 0, "migrated": 0, "failed": 1}
    assert jobs_by_name["clicks"]["events"] == {"as_is": 0, "migrated": 0, "failed": 1}
    failures = jobs_by_name["tally"]["failures"]
    assert sorted(f["instance_id"] for f in failures) == [
        "continuous:tally:a", "continuous:tally:b",
    ]  # fmt: skip
    assert all("'count'" in f["reason"] and "stored version 1" in f["reason"] for f in failures)
    assert report["orphans"] == [
        {"job": "retired", "kind": "continuous", "instances": 1, "events": 0}
    ]
    with Jobs(old_database, OLD) as jobs:
        assert snapshot(jobs) == before  # nothing written

    # For people: a line per job, the failures named, the verdict last.
    code, out, _ = check(tmp_path, old_database)
    assert code == 1
    assert "FAIL continuous:tally:a" in out
    assert "retired (continuous): not defined by the application: 1 instances" in out
    assert out.strip().splitlines()[-1].startswith("FAILED: 4 stored objects")


def test_check_passes_with_migrations_and_counts_them(old_database: str, tmp_path: Path) -> None:
    code, out, err = check(tmp_path, old_database, "--json", migrate=True)
    assert code == 0, (out, err)
    report = json.loads(out)
    assert report["ok"] is True
    jobs_by_name = {j["job"]: j for j in report["jobs"]}
    assert jobs_by_name["tally"]["states"] == {"as_is": 0, "migrated": 2, "failed": 0}
    assert jobs_by_name["tally"]["version"] == 2
    assert jobs_by_name["tally"]["stored_versions"] == {"1": 2}
    assert jobs_by_name["clicks"]["stored_versions"] == {"1": 2}  # the batch and its event
    assert jobs_by_name["clicks"]["events"] == {"as_is": 0, "migrated": 1, "failed": 0}
    # Orphans are reported, not failures: nothing of them is read or lost.
    assert [o["job"] for o in report["orphans"]] == ["retired"]


def test_check_counts_rows_already_at_the_version_as_they_are(
    new_database: Path | str, tmp_path: Path
) -> None:
    location = str(new_database)
    Jobs(location, {}).close()  # an empty database of this schema
    code, out, _ = check(tmp_path, location, "--json")
    assert code == 0
    assert json.loads(out)["failed"] == 0
    code, out, _ = check(tmp_path, location)
    assert out.strip().splitlines()[-1].startswith("ok: every stored state")


def test_check_refuses_a_bad_app_in_one_line(old_database: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DURAJOBS_DB"}
    for spec, words in (("nomodule_xyz:jobs", "no module named"), ("json", "module:attribute")):
        proc = subprocess.run(
            [str(SCRIPT), "--db", old_database, "check", "--app", spec],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )  # fmt: skip
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1
        assert lines[0].startswith("durajobs: error: ")
        assert words in lines[0]


def test_check_reads_the_database_given_by_db(old_database: str, tmp_path: Path) -> None:
    """``check --db`` (or ``durajobs --db``) names the database; the app's own is elsewhere."""
    own = str(tmp_path / "own.db")  # where the app's Jobs opens: empty
    code, _, _ = check(tmp_path, own, "--json")
    assert code == 0
    for args in (("--db", old_database), ()):
        env = {k: v for k, v in os.environ.items() if k != "DURAJOBS_DB"}
        env.update(CHECK_DB=own, CHECK_MIGRATE="0", PYTHONPATH=str(tmp_path))
        root = () if args else ("--db", old_database)
        proc = subprocess.run(
            [str(SCRIPT), *root, "check", "--app", "check_app:jobs", "--json", *args],
            capture_output=True, text=True, env=env, timeout=120, check=False, cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        assert json.loads(proc.stdout)["failed"] == 4
