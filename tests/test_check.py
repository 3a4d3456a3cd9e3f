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
from schema_steps import downgrade, schema_of

from durajobs import Continuous, Debounce, Jobs, every
from durajobs.errors import InvalidStateError
from durajobs.jobs import definitions_only
from durajobs.stores import open_store
from durajobs.stores.sql import READABLE_SCHEMA, SCHEMA_VERSION

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
    own = str(tmp_path / "own.db")  # where the app's Jobs is made: empty
    open_store(own).close()  # a SQLite file in both runs (check's import creates nothing)
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


# -- the import writes nothing: the app's own Jobs(...) neither opens nor migrates -------------

# An application whose import makes its Jobs, as applications do: one on the database the old
# deploy wrote (CHECK_DB), one on a location that holds nothing yet (CHECK_FRESH).
APP_AT_IMPORT = """
import os

import attrs

from durajobs import Continuous, Debounce, Jobs, every


@attrs.define
class Counted:
    count: int = 0


@attrs.define
class Click:
    page: str


def noop(ctx):
    pass


REGISTRY = {
    "tally": Continuous(state=Counted, schedule=every("1 hour"), execute=noop,
                        start_immediately=False),
    "clicks": Debounce(event=Click, execute=noop, flush_after="1 hour"),
}
jobs = Jobs(os.environ["CHECK_DB"], REGISTRY)
fresh = Jobs(os.environ["CHECK_FRESH"], REGISTRY)
"""


def _server(location: str, request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("pg_server") if "://" in location else None


def nothing_at(location: str, request: pytest.FixtureRequest) -> bool:
    """No file (nor -wal, -shm, claims file) at a SQLite path; no table in a PostgreSQL
    database."""
    if "://" not in location:
        folder, name = os.path.split(location)
        return not [f for f in os.listdir(folder) if f.startswith(name)]
    server, name = request.getfixturevalue("pg_server"), urlsplit(location).path.lstrip("/")
    query = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
    return server.admin_query(query, name) == [(0,)]


@pytest.fixture
def fresh_location(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    """A location that holds nothing yet: a missing file, or an empty PostgreSQL database."""
    if store_kind == "sqlite":
        yield str(tmp_path / "fresh" / "missing.db")
        return
    server = request.getfixturevalue("pg_server")
    url = server.create_database("fresh")
    yield url
    server.drop_database(url)


def durajobs(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """The ``durajobs`` console script with the app module ``at_import`` importable."""
    (tmp_path / "at_import.py").write_text(APP_AT_IMPORT)
    full = {k: v for k, v in os.environ.items() if k != "DURAJOBS_DB"}
    full.update(env, PYTHONPATH=str(tmp_path))
    proc = subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, env=full, timeout=120,
        check=False, cwd=tmp_path,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stdout, proc.stderr


def test_check_and_doctor_import_the_app_without_opening_or_migrating_its_database(
    old_database: str, fresh_location: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Run before a deploy, with the new code, while the old daemons serve the database: the
    app's import makes ``Jobs`` on an older schema and on a location holding nothing; neither
    is opened, migrated or created. ``check`` reads the older schema as it is (and says so)."""
    (tmp_path / "fresh").mkdir()
    server = _server(old_database, request)
    old = SCHEMA_VERSION - 1  # the schema the old deploy runs on
    downgrade(old_database, old, server)
    before = schema_of(old_database, server)
    readable = old >= READABLE_SCHEMA
    env = {"CHECK_DB": old_database, "CHECK_FRESH": fresh_location}

    code, out, err = durajobs(tmp_path, env, "check", "--app", "at_import:jobs", "--json")
    if readable:  # read as it is
        assert code == 0, err
        report = json.loads(out)
        assert (report["ok"], report["schema"], report["failed"]) == (True, old, 0)
        assert {j["job"]: j["states"]["as_is"] for j in report["jobs"]} == {
            "clicks": 1, "tally": 2,
        }  # fmt: skip
        assert report["orphans"] == [
            {"job": "retired", "kind": "continuous", "instances": 1, "events": 0}
        ]
        code, out, _ = durajobs(tmp_path, env, "check", "--app", "at_import:jobs")
        assert out.strip().splitlines()[-1].endswith(f"schema version {old})")
    else:  # its reads need this code's schema: refused, saying what to do
        assert code == 4, (out, err)
        assert f"schema version {old} is older than this durajobs" in " ".join(err.split())

    # The app's other Jobs is on the location that holds nothing: checked, it is refused
    # (not a database yet), and the import made nothing there either.
    code, _, err = durajobs(tmp_path, env, "check", "--app", "at_import:fresh")
    assert code == 4, err
    found = {}
    for where in (old_database, fresh_location):
        code, out, err = durajobs(
            tmp_path, env, "--db", where, "doctor", "--app", "at_import:jobs", "--json"
        )
        assert code in (1, 2), (out, err)
        found[where] = {c["name"]: (c["level"], c["detail"]) for c in json.loads(out)["checks"]}
    if readable:
        assert found[old_database]["schema"][0] == "warn"
    else:  # not opened: the store's check fails, naming the schema
        level, detail = found[old_database]["store"]
        assert level == "fail"
        assert f"schema version {old} is older" in detail
    assert found[fresh_location]["store"][0] == "fail"

    assert schema_of(old_database, server) == before  # as the old deploy left it
    assert nothing_at(fresh_location, request)
    with Jobs(old_database, OLD):
        pass  # what the import would have done without definitions_only(): migrate
    assert schema_of(old_database, server)[0] == SCHEMA_VERSION


def test_check_refuses_a_schema_its_reads_cannot_handle(
    old_database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A schema older than the reads work on (``READABLE_SCHEMA``) cannot be read read-only;
    check says what to do (exit 4, as the other commands) and leaves it as it was."""
    server = _server(old_database, request)
    downgrade(old_database, READABLE_SCHEMA - 1, server)
    before = schema_of(old_database, server)
    code, _, err = check(tmp_path, old_database, "--db", old_database)
    assert code == 4
    older = f"schema version {READABLE_SCHEMA - 1} is older than this durajobs ({SCHEMA_VERSION})"
    assert older in " ".join(err.split())
    assert schema_of(old_database, server) == before


def test_a_jobs_made_for_its_definitions_opens_nothing(
    fresh_location: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Under ``definitions_only()`` a ``Jobs`` checks its definitions and keeps them, opens
    nothing, and refuses every use that needs the database; outside it, Jobs opens as ever."""
    (tmp_path / "fresh").mkdir(exist_ok=True)
    with definitions_only():
        jobs = Jobs(fresh_location, OLD)
        with pytest.raises(ValueError, match="job name"):
            Jobs(fresh_location, {"bad:name": OLD["tally"]})  # still checked
    assert set(jobs.registry) == set(OLD)
    uses = (
        lambda: jobs.engine,
        lambda: jobs.continuous("tally").start("a", Counted(1)),
        lambda: jobs.debounce("clicks").add("c", Click("/a")),
        jobs.run_due,
        jobs.next_alarm,
        lambda: jobs.retry("continuous:tally:a"),
        lambda: jobs.with_path(str(tmp_path / "other.db")),
    )
    for use in uses:
        with pytest.raises(InvalidStateError, match="definitions_only"):
            use()
    jobs.close()
    assert nothing_at(fresh_location, request)
    assert not (tmp_path / "other.db").exists()
    with Jobs(fresh_location, OLD) as real:  # outside the block: opened (created) at once
        real.continuous("tally").start("a", Counted(1))
    assert not nothing_at(fresh_location, request)
