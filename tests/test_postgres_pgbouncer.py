"""PgBouncer: transaction (and statement) pooling is detected and refused; session pooling works.

A real PgBouncer (Debian's package; skipped where it is not installed) in front of the
session's throwaway cluster (``tests/pgserver.py``). Transaction pooling hands a client's
server session to other clients between its transactions, so session advisory locks (the
claims) and ``LISTEN`` would silently stop working: every durajobs connection checks that its
session is its own when it opens.
"""

from __future__ import annotations

import os
import shutil
import urllib.parse
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from pgserver import PASSWORD, PgBouncer, PgServer

from durajobs import Continuous, Jobs, every
from durajobs.errors import StorageError
from durajobs.stores import open_claims, open_listener, open_store

_MISSING = shutil.which("pgbouncer") is None and not shutil.which("/usr/sbin/pgbouncer")
if _MISSING and os.environ.get("CI") == "true":  # CI installs it (.ci/run): never skip there
    raise RuntimeError("pgbouncer is not installed (apt-get install -y pgbouncer)")
pytestmark = pytest.mark.skipif(
    _MISSING, reason="pgbouncer is not installed (apt-get install -y pgbouncer)"
)


@attrs.define
class Count:
    n: int = 0


def tick(ctx: Any) -> None:
    ctx.state = Count(ctx.state.n + 1)


REGISTRY = {"tick": Continuous(state=Count, schedule=every("1 hour"), execute=tick)}


@pytest.fixture
def bouncer(request: pytest.FixtureRequest, pg_server: PgServer) -> Iterator[PgBouncer]:
    made = PgBouncer(pg_server, request.param)
    try:
        made.start()
        yield made
    finally:
        made.stop()


@pytest.mark.parametrize("bouncer", ["transaction", "statement"], indirect=True)
def test_transaction_pooling_is_refused_with_a_clear_error(bouncer: PgBouncer, pg_url: str) -> None:
    url = bouncer.url(pg_url)
    messages = []
    for opening in (
        lambda: Jobs(url, REGISTRY),
        lambda: open_store(url),
        lambda: open_claims(url).try_acquire("continuous:tick:a"),
        lambda: open_listener(url),
    ):
        with pytest.raises(StorageError) as caught:
            opening()
        messages.append(str(caught.value))
    for message in messages:
        assert f"127.0.0.1:{bouncer.port}/" in message
        assert "pool_mode = session" in message
        assert PASSWORD not in message
        assert urllib.parse.quote(PASSWORD, safe="") not in message


@pytest.mark.parametrize("bouncer", ["session"], indirect=True)
def test_session_pooling_works(bouncer: PgBouncer, pg_url: str) -> None:
    url = bouncer.url(pg_url)
    with Jobs(url, REGISTRY) as jobs:
        jobs.continuous("tick").start("a", Count())
        assert jobs.continuous("tick").status("a").run_count == 1
        claims = open_claims(url)
        other = open_claims(url)
        try:
            token = claims.try_acquire("continuous:tick:a")
            assert token is not None
            assert other.try_acquire("continuous:tick:a") is None  # held by the first session
            claims.release(token)
            assert other.try_acquire("continuous:tick:a") is not None
        finally:
            claims.close()
            other.close()
        listener = open_listener(url)
        listener.close()
