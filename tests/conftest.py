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
from pgserver import PgServer, find_pg_bin  # noqa: E402


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


@pytest.fixture(autouse=True)
def _jobs_on_postgres(request):  # type: ignore[no-untyped-def]
    """``DURAJOBS_TEST_STORE=postgres``: every ``Jobs`` of the test runs on PostgreSQL."""
    if os.environ.get("DURAJOBS_TEST_STORE") != "postgres":
        return
    if request.node.get_closest_marker("sqlite_only"):
        pytest.skip("about the SQLite store itself (files, locks, its daemon's file)")
    from pgserver import route_jobs_to_postgres

    monkeypatch, server = (request.getfixturevalue(n) for n in ("monkeypatch", "pg_server"))
    route_jobs_to_postgres(monkeypatch, server)
