"""Shared fixtures and Hypothesis profiles.

Profiles: ``ci`` (default: bounded, deterministic, seeded) and ``thorough`` (10x the examples),
chosen with ``DURAJOBS_HYPOTHESIS_PROFILE=thorough``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).parent))  # helpers: faultvfs, ...

settings.register_profile(
    "ci",
    max_examples=50,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "thorough",
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("DURAJOBS_HYPOTHESIS_PROFILE", "ci"))


# -- PostgreSQL: one throwaway cluster per session (tests/pgserver.py) --------------------------
import pytest  # noqa: E402
from pgserver import PgServer, find_pg_bin, route_jobs_to_postgres  # noqa: E402


@pytest.fixture(scope="session")
def pg_server():  # type: ignore[no-untyped-def]
    """A PostgreSQL cluster started for this session; skipped where PostgreSQL is missing
    (but a failure when ``CI=true``: CI must run the PostgreSQL tests)."""
    bindir = find_pg_bin()
    missing = "PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql)"
    if bindir is not None:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            bindir, missing = None, "psycopg is not installed (pip install 'durajobs[postgres]')"
    if bindir is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {missing}")
        pytest.skip(missing)
    server = PgServer(bindir)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server):  # type: ignore[no-untyped-def]
    """A fresh empty database on the session's cluster; its URL carries a password."""
    url = pg_server.create_database()
    yield url
    pg_server.drop_database(url)


# -- both stores: a ``both_stores`` test runs once per store ------------------------------------
STORES = ("sqlite", "postgres")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked ``both_stores`` (most often its module's ``pytestmark``) runs on each
    store, ids ``[sqlite]`` and ``[postgres]``; one marked ``sqlite_only``, or that asks for the
    cluster itself (``pg_server``, ``pg_url``), runs once."""
    definition = metafunc.definition
    if (
        definition.get_closest_marker("both_stores")
        and not definition.get_closest_marker("sqlite_only")
        and not {"pg_server", "pg_url"} & set(metafunc.fixturenames)
    ):
        metafunc.parametrize("store_kind", STORES, indirect=True)


@pytest.fixture(autouse=True)
def store_kind(request: pytest.FixtureRequest) -> str:
    """The store this run of the test is on: ``"sqlite"``, or ``"postgres"`` in the
    ``[postgres]`` run of a ``both_stores`` test, where every ``Jobs(path)`` gets a database of
    the session's cluster instead of the file (``route_jobs_to_postgres``)."""
    kind: str = getattr(request, "param", "sqlite")
    if kind == "postgres":
        monkeypatch, server = (request.getfixturevalue(n) for n in ("monkeypatch", "pg_server"))
        route_jobs_to_postgres(monkeypatch, server)
    return kind


@pytest.fixture
def new_database(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Path | str:
    """Where this run of the test keeps a new, empty database: ``tmp_path / "jobs.db"``, or a
    fresh database of the session's cluster (its URL) in the ``[postgres]`` run."""
    if store_kind == "postgres":
        url: str = request.getfixturevalue("pg_url")
        return url
    return tmp_path / "jobs.db"
