"""PostgreSQL-only behaviour: errors that never show the password, migrations under a lock,
reconnects, fences after a lost claim, durability settings, fork.

Against a throwaway cluster (``tests/pgserver.py``); nothing is mocked.
"""

from __future__ import annotations

import itertools
import json
import os
import selectors
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_crash_state_machine as csm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import rule, run_state_machine_as_test
from pgserver import PgServer, route_jobs_to_postgres
from test_stores import C1, C2, T0, row, write

from durajobs import Task
from durajobs.core.rows import RejectedWrite
from durajobs.errors import DurajobsError, InstanceBusyError, InvalidStateError, StorageError
from durajobs.stores import display_location, open_claims, open_listener, open_store, open_waker
from durajobs.stores.base import TABLES
from durajobs.stores.postgres.claims import AdvisoryClaims, claim_key
from durajobs.stores.postgres.store import SCHEMA_VERSION, PostgresStore

ROOT = Path(__file__).parent.parent


def _add(event: int, ctx: Any) -> None:
    ctx.state = (ctx.state or 0) + event


SUMS = {"t": Task(state=int, event=int, on_event=_add, execute=lambda ctx: None)}


def _db(url: str) -> str:
    return urllib.parse.urlsplit(url).path.lstrip("/")


def _pg(url: str) -> PostgresStore:
    store = open_store(url)
    assert isinstance(store, PostgresStore)
    return store


def _backend_pid(handle: Any) -> int:
    return int(handle._link.connection().info.backend_pid)


def _terminate(server: PgServer, pid: int) -> None:
    server.admin_execute(f"SELECT pg_terminate_backend({pid})")
    # Wait until the server has ended the session (its locks are then free).
    assert server.wait_until(
        lambda: not server.admin_query(f"SELECT 1 FROM pg_stat_activity WHERE pid = {pid}")
    )


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["bad password", "unreachable port", "missing database"])
def test_errors_name_the_server_and_never_the_password(
    pg_server: PgServer, pg_url: str, case: str
) -> None:
    secret = "Zebra-Pa55word-42"
    parts = urllib.parse.urlsplit(pg_url)
    port = pg_server.port
    database = _db(pg_url)
    if case == "unreachable port":
        import socket

        with socket.socket() as sock:  # a port nobody listens on
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        secret = pg_server.password
    elif case == "missing database":
        database = "no_such_db"
        secret = pg_server.password
    url = f"{parts.scheme}://{pg_server.role}:{secret}@127.0.0.1:{port}/{database}"
    reason = {
        "bad password": "password authentication failed",
        "unreachable port": "refused",
        "missing database": "does not exist",
    }[case]
    messages = []
    with pytest.raises(StorageError) as caught:
        open_store(url)
    messages.append(str(caught.value))
    claims = open_claims(url)  # connects on first use
    with pytest.raises(StorageError) as caught:
        claims.try_acquire(C1)
    messages.append(str(caught.value))
    with pytest.raises(StorageError) as caught:
        open_listener(url)
    messages.append(str(caught.value))
    for message in messages:
        assert secret not in message
        assert urllib.parse.quote(secret) not in message
        assert f"127.0.0.1:{port}/{database}" in message
        assert reason in message
    assert isinstance(caught.value, DurajobsError)
    assert isinstance(caught.value, OSError)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_the_password_is_not_in_the_store_path(pg_url: str) -> None:
    store = _pg(pg_url)
    assert "postgres" in store.path
    assert "pw-" not in store.path
    query_form = pg_url.replace("postgresql://durajobs_test:", "postgres://durajobs_test@")
    user, _, rest = query_form.partition("@")
    password, _, hostpart = rest.partition("@")
    url = f"{user}@{hostpart}?password={password}"
    other = _pg(url)  # postgres:// and a password in the query both work
    assert password not in other.path
    other.close()
    store.close()


def test_display_location_hides_the_password(pg_url: str) -> None:
    shown = display_location(pg_url)
    assert "pw-" not in shown
    assert shown.startswith("postgresql://durajobs_test@127.0.0.1:")
    assert display_location("postgres://u:p%40ss@h/db?sslmode=require&password=x") == (
        "postgres://u@h/db?sslmode=require"
    )
    # As libpq reads it: '#' and '?' are plain characters of a password there (urlsplit
    # made "pa" the port of "postgresql://u:pa").
    assert display_location("postgresql://u:pa#ss@h/db") == "postgresql://u@h/db"
    assert display_location("postgresql://u:pa?ss@h:5/db") == "postgresql://u@h:5/db"
    assert display_location("postgresql://[::1]:5/db") == "postgresql://[::1]:5/db"
    assert display_location("jobs.db") == "jobs.db"


@pytest.mark.parametrize(
    ("url", "secrets"),
    [
        ("postgresql://u:p@ss@h/db", ["p@ss", "ss@h"]),  # libpq: password "p", host "ss@h"
        ("postgresql://u:Zq7pa/55w0rd@h/db", ["Zq7pa", "55w0rd"]),
        ("postgresql://u:a%zz@h/db", ["a%zz"]),  # unparsable: libpq quotes the token
        ("postgresql://h/db?password=b%zz", ["b%zz"]),
    ],
)
def test_nothing_between_the_scheme_and_the_at_sign_is_shown(url: str, secrets: list[str]) -> None:
    shown = [display_location(url)]
    with pytest.raises(StorageError) as caught:
        open_store(url)
    shown.append(str(caught.value))
    for text in shown:
        for secret in secrets:
            assert secret not in text


def test_a_password_with_an_unencoded_slash_is_never_shown(
    pg_server: PgServer, pg_url: str
) -> None:
    """The regression: ``postgresql://user:Zq7pa/55w0rd@host:port/db`` (libpq reads host
    ``user``, port ``Zq7pa``, database ``55w0rd@host:port/db``) was printed whole by every
    command and by ``Jobs()``. Now no piece of it is shown, and the message says what to do."""
    from durajobs import Jobs

    url = f"postgresql://{pg_server.role}:Zq7pa/55w0rd@127.0.0.1:{pg_server.port}/{_db(pg_url)}"
    shown = [display_location(url)]
    attempts: list[Any] = [
        open_store, lambda u: open_claims(u).try_acquire(C1), open_listener,
        lambda u: Jobs(u, SUMS),
    ]  # fmt: skip
    for attempt in attempts:
        with pytest.raises(StorageError) as caught:
            attempt(url)
        shown.append(str(caught.value))
    script = shutil.which("durajobs", path=str(Path(sys.executable).parent))
    assert script is not None
    for command in (["ls"], ["doctor"], ["show", C1], ["tail", "-f"]):
        done = subprocess.run(
            [script, "--db", url, *command], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode != 0
        shown.append(done.stdout + done.stderr)
    for text in shown:
        assert "percent-encode" in text
        assert "Zq7pa" not in text
        assert "55w0rd" not in text


def test_missing_psycopg_says_what_to_install(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["psycopg"] = None  # as if not installed
        from durajobs.errors import StorageError
        from durajobs.stores import open_store
        store = open_store(sys.argv[1])  # SQLite needs no psycopg
        store.close()
        try:
            open_store("postgresql://u:secretpw@127.0.0.1:1/db")
        except StorageError as exc:
            print(exc)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "j.db")],
        capture_output=True, text=True, check=True, env=env,
    )  # fmt: skip
    assert "pip install 'durajobs[postgres]'" in out.stdout
    assert "secretpw" not in out.stdout


def test_a_sqlite_store_does_not_import_psycopg(tmp_path: Path) -> None:
    code = (
        "import sys; from durajobs.stores import open_store, open_claims; "
        "s = open_store(sys.argv[1]); open_claims(sys.argv[1]); "
        "print('psycopg' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "j.db")],
        capture_output=True, text=True, check=True, env=env,
    )  # fmt: skip
    assert out.stdout.strip() == "False"


# -- schema ---------------------------------------------------------------------------------------

STARTER = textwrap.dedent(
    """
    import sys
    from durajobs.stores import open_store
    print("ready", flush=True)
    sys.stdin.readline()  # everyone starts together
    open_store(sys.argv[1]).close()
    print("ok", flush=True)
    """
)


def test_many_processes_starting_at_once_migrate_exactly_once(
    pg_server: PgServer, pg_url: str
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", STARTER, pg_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for _ in range(8)
    ]
    for proc in procs:  # every process has imported durajobs and waits
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        assert out.strip() == b"ok"
    applied = pg_server.admin_query("SELECT version FROM durajobs_schema ORDER BY 1", _db(pg_url))
    assert applied == [(v,) for v in range(1, SCHEMA_VERSION + 1)]


def test_another_applications_instances_table_is_refused(pg_server: PgServer, pg_url: str) -> None:
    pg_server.admin_execute("CREATE TABLE instances (id integer)", _db(pg_url))
    with pytest.raises(StorageError, match="not a durajobs database"):
        open_store(pg_url)


def test_a_newer_schema_is_refused(pg_server: PgServer, pg_url: str) -> None:
    open_store(pg_url).close()
    pg_server.admin_execute(
        f"INSERT INTO durajobs_schema (version) VALUES ({SCHEMA_VERSION + 1})", _db(pg_url)
    )
    with pytest.raises(StorageError, match="newer than this durajobs"):
        open_store(pg_url)


def test_a_readonly_store_never_creates_the_schema(pg_server: PgServer, pg_url: str) -> None:
    with pytest.raises(StorageError, match="not a durajobs database"):
        open_store(pg_url, readonly=True)
    tables = pg_server.admin_query(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", _db(pg_url)
    )
    assert tables == [(0,)]
    open_store(pg_url).close()
    reader = open_store(pg_url, readonly=True)
    with pytest.raises(StorageError, match="read-only"):
        reader.commit([write(row(C1, 1), 0, new=True)], T0, 100)
    reader.close()


# -- durability -----------------------------------------------------------------------------------


def test_durability_normal_turns_synchronous_commit_off(pg_url: str) -> None:
    full = _pg(pg_url)
    normal = open_store(pg_url, durability="normal")
    assert isinstance(normal, PostgresStore)
    assert full.setting("synchronous_commit") == "on"
    assert normal.setting("synchronous_commit") == "off"
    full.close()
    normal.close()


# -- lost connections -----------------------------------------------------------------------------


def test_a_session_ended_while_idle_is_reopened_without_failing_the_call(
    pg_server: PgServer, pg_url: str
) -> None:
    store = _pg(pg_url)
    claims = AdvisoryClaims(pg_url)
    store.commit([write(row(C1, 1), 0, new=True)], T0, 100)
    token = claims.try_acquire(C1)
    assert token is not None
    pids = _backend_pid(store), _backend_pid(claims)
    for pid in pids:
        _terminate(pg_server, pid)
    # The regression: each of these first calls raised StorageError (one per connection).
    assert store.load(C1) == row(C1, 1)
    assert claims.try_acquire(C2) is not None
    assert claims.try_acquire(C1) is not None  # the claim died with its session
    assert store.commit([write(row(C1, 2), 1)], T0, 100) == [True]
    assert (_backend_pid(store), _backend_pid(claims)) != pids
    store.close()
    claims.close()


def test_a_session_lost_inside_a_transaction_fails_that_call_only(
    pg_server: PgServer, pg_url: str
) -> None:
    """Inside a transaction a lost session is not retried (something was written): the call
    raises StorageError naming the server (never the password), nothing of it is stored, and
    the next call reconnects."""
    source = _pg(pg_url)
    source.commit([write(row(C1, 1), 0, new=True), write(row(C2, 1), 0, new=True)], T0, 100)
    batches = list(source.export(batch_size=1))
    source.close()
    target_url = pg_server.create_database()
    target = _pg(target_url)

    def cut_midway() -> Iterator[Any]:
        yield batches[0]
        _terminate(pg_server, _backend_pid(target))  # the import's transaction is open
        yield from batches[1:]

    with pytest.raises(StorageError) as caught:
        target.import_batches(cut_midway())
    assert f"127.0.0.1:{pg_server.port}/{_db(target_url)}" in str(caught.value)
    assert pg_server.password not in str(caught.value)
    assert target.table_counts() == dict.fromkeys(TABLES, 0)  # reconnected; nothing stored
    assert target.import_batches(batches)["instances"] == 2
    target.close()
    pg_server.drop_database(target_url)


def test_everything_works_again_after_a_server_restart(pg_server: PgServer, pg_url: str) -> None:
    store = _pg(pg_url)
    claims = open_claims(pg_url)
    listener = open_listener(pg_url)
    token = claims.try_acquire(C1)
    assert token is not None
    store.commit([write(row(C1, 1), 0, new=True)], T0, 100)
    pg_server.restart()
    assert store.load(C1) == row(C1, 1)  # reopened: the call does not fail for it
    # The claim died with the session; the stale token is forgotten harmlessly.
    claims.release(token)
    assert claims.try_acquire(C1) is not None
    # The listener reconnects on drain (reporting one wake-up so the daemon rescans).
    assert listener.drain() >= 1
    waker = open_waker(pg_url, store)
    with selectors.DefaultSelector() as selector:
        selector.register(listener.fileno(), selectors.EVENT_READ)
        waker.poke()
        assert selector.select(5.0)
    assert listener.drain() >= 1
    listener.close()
    claims.close()
    store.close()


def test_after_a_server_restart_no_thread_fails_a_call(pg_server: PgServer, pg_url: str) -> None:
    """The regression: after a restart each thread's next two calls failed, one per
    connection (claims, then store). Every connection was idle: no call fails now."""
    from durajobs import Jobs

    threads = 4
    ready, restarted = threading.Barrier(threads + 1), threading.Event()
    failures: list[BaseException] = []

    def caller(n: int) -> None:
        try:
            tasks = jobs.task("t")
            tasks.send(f"u{n}", 1)  # this thread's claim and store sessions are open
            ready.wait(30)
            assert restarted.wait(60)
            for value in (2, 3):
                tasks.send(f"u{n}", value)
            assert tasks.get_state(f"u{n}") == 6
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    with Jobs(pg_url, SUMS) as jobs:
        workers = [threading.Thread(target=caller, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        ready.wait(30)
        pg_server.restart()
        restarted.set()
        for worker in workers:
            worker.join(60)
    assert failures == []


def test_a_commit_computed_under_a_lost_claim_is_fenced_out(
    pg_server: PgServer, pg_url: str
) -> None:
    first, second = _pg(pg_url), _pg(pg_url)
    first.commit([write(row(C1, 1), 0, new=True)], T0, 100)
    claims_a, claims_b = AdvisoryClaims(pg_url), AdvisoryClaims(pg_url)
    token_a = claims_a.try_acquire(C1)
    assert token_a is not None
    seen = first.load(C1)
    assert seen is not None
    # A's claim session is killed (a partition, an operator): the server frees the claim.
    _terminate(pg_server, _backend_pid(claims_a))
    token_b = claims_b.acquire(C1, 5.0)
    current = second.load(C1)
    assert current is not None
    assert second.commit([write(row(C1, 2, state='{"by":"b"}'), current.step)], T0, 100) == [True]
    claims_b.release(token_b)
    # A, unaware, commits what it computed from step 1: nothing changes.
    late = write(row(C1, 2, state='{"by":"a"}'), seen.step)
    assert first.commit([late], T0, 100) == [False]
    final = first.load(C1)
    assert final is not None
    assert final.state == '{"by":"b"}'
    assert [h.step for h in first.history(C1)] == [1, 2]
    claims_a.release(token_a)  # harmless
    for handle in (claims_a, claims_b, first, second):
        handle.close()


def test_a_step_that_lost_its_claim_says_so_and_is_not_committed(
    pg_server: PgServer, pg_url: str
) -> None:
    """A client call whose claim session ends while its handler runs, and another process
    steps the instance meanwhile: the call's commit is fenced out. The regression: the error
    asked "is another durajobs version writing to this file?"."""
    from durajobs import Jobs

    def on_event(event: int, ctx: Any) -> None:
        ctx.state = (ctx.state or 0) + event
        if event == 1:
            _terminate(pg_server, _backend_pid(jobs.engine.locks))  # the claim is gone
            other.task("t").send("x", 100)  # so another process steps the instance

    registry = {"t": Task(state=int, event=int, on_event=on_event, execute=lambda ctx: None)}
    with Jobs(pg_url, registry) as jobs, Jobs(pg_url, registry) as other:
        jobs.task("t").send("x", 10)
        with pytest.raises(InvalidStateError) as caught:
            jobs.task("t").send("x", 1)
        message = str(caught.value)
        assert message.startswith("task:t:x: this step lost its claim on the instance")
        assert message.endswith("this step was not committed")
        assert "version" not in message
        assert jobs.task("t").get_state("x") == 110  # the other step's, not this one's
        jobs.task("t").send("x", 2)  # its claims work again
        assert other.task("t").get_state("x") == 112


def test_the_store_counts_listening_daemons(pg_url: str) -> None:
    store = _pg(pg_url)
    assert store.listeners() == 0
    listener = open_listener(pg_url)
    assert store.listeners() == 1
    listener.close()
    assert _wait(lambda: store.listeners() == 0)
    store.close()


def _wait(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def test_a_listener_whose_session_is_terminated_reconnects(
    pg_server: PgServer, pg_url: str
) -> None:
    listener = open_listener(pg_url)
    _terminate(pg_server, _backend_pid(listener))
    # The server's goodbye and the end of the stream may arrive apart (a busy machine): a
    # drain that reads only the first reports nothing; the one that reads the end reconnects.
    assert _wait(lambda: listener.drain() == 1)  # reconnected: rescan
    waker = open_waker(pg_url)
    with selectors.DefaultSelector() as selector:
        selector.register(listener.fileno(), selectors.EVENT_READ)
        waker.poke()
        assert selector.select(5.0)
    assert listener.drain() == 1
    waker.close()
    listener.close()


# -- fork -----------------------------------------------------------------------------------------


def test_a_forked_child_never_uses_its_parents_sessions(pg_url: str) -> None:
    store = _pg(pg_url)
    claims = AdvisoryClaims(pg_url)
    token = claims.try_acquire(C1)
    assert token is not None
    store.commit([write(row(C1, 1), 0, new=True)], T0, 100)
    parent_pid = _backend_pid(store)
    child = os.fork()
    if child == 0:  # pragma: no cover  (the child's exit code is the assertion)
        code = 1
        try:
            ok = store.load(C1) == row(C1, 1) and _backend_pid(store) != parent_pid
            ok = ok and claims.try_acquire(C1) is None  # the parent's claim still excludes
            store.close()
            claims.close()
            code = 0 if ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's sessions survived the child (and its closing of the inherited copies).
    assert _backend_pid(store) == parent_pid
    assert store.load(C1) == row(C1, 1)
    other = AdvisoryClaims(pg_url)
    assert other.try_acquire(C1) is None
    other.close()
    claims.close()
    store.close()


def test_text_with_nul_is_a_rejected_write_not_a_storage_error(pg_url: str) -> None:
    store = _pg(pg_url)
    bad = row(C1, 1)._replace(last_error="boom\x00")
    with pytest.raises(RejectedWrite) as caught:
        store.commit([write(bad, 0, new=True)], T0, 100)
    assert caught.value.index == 0
    assert store.load(C1) is None
    assert store.commit([write(row(C1, 1), 0, new=True)], T0, 100) == [True]
    store.close()


# -- the crash state machine's model-vs-store rules, on PostgreSQL ---------------------------------


class PgCrashMachine(csm.CrashMachine):
    """``CrashMachine`` on PostgreSQL: the same calls through two ``Jobs`` (two "processes"),
    checked against the same model after every rule. The fault-injecting VFS and power cuts
    are SQLite's; here the server instead ends every session between two calls
    (``sessions_killed``) or crashes and restarts (``server_crashed``: ``pg_ctl stop -m
    immediate``, then WAL recovery): sessions idle when they ended are reopened without failing
    a call, and the world is exactly the acknowledged one.
    """

    server: PgServer
    databases: dict[str, str]

    def teardown(self) -> None:
        try:
            self._close()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # SQLite-only rules are no rules here (a plain method hides the inherited rule).
    def arm_fault(self, *args: Any) -> None:  # type: ignore[override]
        raise AssertionError("not a rule on PostgreSQL")

    arm_crash = crash_now = checkpoint_after_every_commit = arm_fault  # type: ignore[assignment]

    @rule()
    def reopen(self) -> None:
        """A clean close and reopen: exactly the acknowledged world is there."""
        self.pending = None
        self._close()
        self._open()
        self.orphans = []
        self.history = [self.world]

    @rule()
    def server_crashed(self) -> None:
        """The server crashes (``pg_ctl stop -m immediate``) and comes back: with
        ``synchronous_commit`` on, every acknowledged call survives WAL recovery, and a
        call on a session the crash ended changes nothing."""
        self.server.crash_restart()
        self._sessions_ended()

    @rule()
    def sessions_killed(self) -> None:
        """The server ends every session of the database (a restart, an operator)."""
        url = self.databases[os.path.abspath(self.path)]
        name = _db(url)
        self.server.admin_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        )
        assert self.server.wait_until(
            lambda: (
                not self.server.admin_query(
                    f"SELECT 1 FROM pg_stat_activity WHERE datname = '{name}' "
                    "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                )
            )
        )
        self._sessions_ended()

    def _sessions_ended(self) -> None:
        for jobs in (self.jobs, self.jobs2):
            assert jobs is not None
            engine = jobs.engine
            # Each session was idle when it ended: it is reopened without failing a call...
            engine.store.load(C1)
            token = engine.locks.try_acquire(C1)
            if token is not None:
                engine.locks.release(token)
        # ...and the invariant (read through both Jobs) sees the acknowledged world.


def test_crash_machine_rules_hold_on_postgres(
    pg_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from durajobs import engine

    monkeypatch.setattr(engine, "GROUP_MAX_SECONDS", 3600.0)  # as csm._one_group_per_pass
    monkeypatch.setattr(engine, "SLOW_STEP", 3600.0)
    PgCrashMachine.server = pg_server
    PgCrashMachine.databases = route_jobs_to_postgres(monkeypatch, pg_server)
    examples = max(5, settings.default.max_examples // 5)  # ci: 10 programs, about 30 s
    run_state_machine_as_test(
        PgCrashMachine,
        settings=settings(max_examples=examples, stateful_step_count=40, deadline=None),
    )


# -- many processes on one database ---------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import os, sys, time
    from durajobs import Debounce, Retry
    from durajobs.clock import SystemClock
    from durajobs.client import DebounceClient
    from durajobs.engine import Engine
    from durajobs.stores import open_claims, open_store

    url, role, out, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

    def collect(ctx):
        return [*(ctx.state or []), ctx.event]

    def deliver(ctx):
        line = " ".join(map(str, ctx.state)) + "\\n"
        fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, line.encode())
        os.close(fd)

    job = Debounce(event=int, state=list[int], on_event=collect, execute=deliver,
                   flush_after="20ms", max_events=7)
    store = open_store(url)
    engine = Engine(store, open_claims(url), {"d": job}, clock=SystemClock(),
                    wait_timeout=30.0, history_limit=50)
    client = DebounceClient(lambda: engine, "d", job)
    print("ready", flush=True)
    sys.stdin.readline()
    if role.startswith("add"):
        base = int(role[3:]) * 1_000_000
        for n in range(count):
            client.add(f"k{n % 3}", base + n)
    else:
        deadline = time.monotonic() + count
        while time.monotonic() < deadline:
            engine.run_due()
    print("done", flush=True)
    """
)


def test_concurrent_adds_and_flushes_deliver_every_event_exactly_once(
    pg_url: str, tmp_path: Path
) -> None:
    """Three processes ``add`` (flushing inline at max_events, or queueing behind a running
    flush) while two others run due flushes: every acknowledged event is delivered in exactly
    one batch (the enqueue / purge race is serialized per instance)."""
    open_store(pg_url).close()  # migrate once, up front
    out = tmp_path / "delivered.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    roles = [("add0", 150), ("add1", 150), ("add2", 150), ("run", 4), ("run", 4)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, pg_url, role, str(out), str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        for role, count in roles
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"done"
            assert proc.wait(30) == 0
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    # What the adders acknowledged and no runner flushed yet: flush it now.
    store = open_store(pg_url)
    leftovers = [inst.instance_id for inst in store.list_instances(limit=100)]
    store.close()
    if leftovers:
        final = subprocess.run(
            [sys.executable, "-c", WORKER, pg_url, "run", str(out), "1"],
            input=b"go\n", capture_output=True, env=env, check=True,
        )  # fmt: skip
        assert final.stdout.split() == [b"ready", b"done"]
    delivered = [int(v) for line in out.read_text().splitlines() for v in line.split()]
    expected = [base * 1_000_000 + n for base in range(3) for n in range(150)]
    assert sorted(delivered) == expected  # none lost, none twice
    store = _pg(pg_url)
    assert store.list_instances() == []
    assert all(not store.queued(f"debounce:d:k{i}") for i in range(3))
    # The race this is about happened: events were queued behind running flushes.
    (queued_ever,) = store.query("SELECT pg_sequence_last_value('inbox_seq_seq')")[0]
    assert (queued_ever or 0) > 0
    store.close()


# -- following the history without gaps -----------------------------------------------------------

SQL_RECORD = (
    "INSERT INTO history (instance_id, at, event, step) VALUES (%s, 0, 'job.executed', 1) "
    "RETURNING id"
)


def test_following_never_skips_a_record_committed_after_a_later_one(pg_url: str) -> None:
    """Two real transactions: the first takes a history id and stays open while the second
    takes the next id and commits. The regression: history_since handed out the second, the
    follower moved past it, and the first record, committed later, was never seen."""
    import psycopg

    reader = _pg(pg_url)
    with (
        psycopg.connect(pg_url) as first,
        psycopg.connect(pg_url, autocommit=True) as second,
        psycopg.connect(pg_url) as unrelated,
    ):
        unrelated.execute("CREATE TEMP TABLE scratch (n int)")
        unrelated.execute("INSERT INTO scratch VALUES (1)")  # a writer, not of history: open
        early = first.execute(SQL_RECORD, (C1,)).fetchone()[0]  # type: ignore[index]
        late = second.execute(SQL_RECORD, (C2,)).fetchone()[0]  # type: ignore[index]
        assert late > early
        assert reader.history_since(0) == []  # the late one waits for the early one's fate
        assert reader.recent_history(5) == []  # where ``tail -f`` starts: before both
        first.commit()
        assert [h.id for h in reader.history_since(0)] == [early, late]
        assert [h.id for h in reader.recent_history(1)] == [late]
        # Ids of a transaction that rolls back are a gap that holds nothing back after it.
        first.execute(SQL_RECORD, (C1,))
        last = second.execute(SQL_RECORD, (C2,)).fetchone()[0]  # type: ignore[index]
        first.rollback()
        assert [h.id for h in reader.history_since(late)] == [last]
    reader.close()


def test_tail_follow_shows_every_record_of_concurrent_transactions(pg_url: str) -> None:
    """``durajobs tail -f`` (its own process) while two transactions commit out of id order."""
    import queue

    import psycopg

    _pg(pg_url).close()  # the schema
    script = shutil.which("durajobs", path=str(Path(sys.executable).parent))
    assert script is not None
    name = "tail-under-test"
    tail = subprocess.Popen(
        [script, "--db", f"{pg_url}?application_name={name}", "tail", "-f", "-n", "0",
         "--jsonl", "--interval", "0.02"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()

    def read_lines() -> None:
        for line in tail.stdout or ():
            lines.put(line)

    threading.Thread(target=read_lines, daemon=True).start()
    admin = _pg(pg_url)

    def polled_since(moment: Any) -> bool:
        # Its follow's poll, not any query: a slow start (a loaded machine) could run its
        # connection's set-up after ``moment`` and its "-n 0" start point after the commit
        # below, and rightly show nothing of what came before.
        sql = (
            "SELECT 1 FROM pg_stat_activity WHERE application_name = %s AND state = 'idle' "
            "AND query_start > %s AND position('FROM history WHERE id >' IN query) > 0"
        )
        return bool(admin.query(sql, (name, moment)))

    try:
        with psycopg.connect(pg_url) as first, psycopg.connect(pg_url, autocommit=True) as second:
            early = first.execute(SQL_RECORD, (C1,)).fetchone()[0]  # type: ignore[index]
            late = second.execute(SQL_RECORD, (C2,)).fetchone()[0]  # type: ignore[index]
            (committed,) = admin.query("SELECT clock_timestamp()")[0]
            deadline = time.monotonic() + 30
            while not polled_since(committed):  # tail has read since the late commit
                assert time.monotonic() < deadline
                assert tail.poll() is None
                time.sleep(0.01)
            first.commit()
            try:
                shown = [json.loads(lines.get(timeout=30))["id"] for _ in range(2)]
            except queue.Empty:
                tail.terminate()
                _, err = tail.communicate(timeout=30)
                raise AssertionError(
                    f"tail -f showed nothing (exit {tail.returncode}): {err}"
                ) from None
        assert shown == [early, late]
    finally:
        tail.terminate()
        tail.wait(30)
        admin.close()


# -- Jobs on a URL --------------------------------------------------------------------------------


def test_jobs_on_a_postgresql_url(pg_url: str) -> None:
    from datetime import UTC, datetime

    from test_stores import REGISTRY, Count

    from durajobs import FakeClock, Jobs

    clock = FakeClock(datetime.fromtimestamp(T0, UTC))
    with Jobs(pg_url, REGISTRY, clock=clock) as jobs:
        assert "pw-" not in repr(jobs)
        assert "pw-" not in jobs.path
        jobs.continuous("tick").start("a", Count())
        clock.advance("1 minute")
        assert jobs.run_due() == 1
        with Jobs(pg_url, REGISTRY, clock=clock) as other:  # another process, in effect
            assert other.continuous("tick").get_state("a") == Count(2)
            assert other.next_alarm() == jobs.next_alarm()


# -- doctor -------------------------------------------------------------------------------------


def test_health_reports_sessions_idle_in_a_transaction(pg_server: PgServer, pg_url: str) -> None:
    """A session left idle inside a transaction (holding a snapshot) pins vacuum: doctor warns,
    naming its pid; the finding is ok again once it ends."""
    import psycopg

    from durajobs.admin import Admin

    store = _pg(pg_url)
    try:
        idle = {f.check: f for f in store.health(idle_after=0.05)}["idle-tx"]
        assert idle.level == "ok"
        with psycopg.connect(pg_url, application_name="forgotten") as other:
            other.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            other.execute("SELECT count(*) FROM instances")  # opens a transaction, a snapshot
            pid = other.info.backend_pid

            def warned() -> Any:
                found = {f.check: f for f in store.health(idle_after=0.05)}["idle-tx"]
                return found if found.level == "warn" else None

            assert pg_server.wait_until(warned)
            finding = warned()
            assert f"pid {pid} (durajobs_test@127.0.0.1, forgotten," in finding.detail
            assert "1 holding a snapshot or a transaction id" in finding.detail
            # durajobs doctor shows the finding (its own threshold: a minute; not yet reached).
            with Admin(pg_url) as admin:
                names = {c.name: c.level for c in admin.doctor().checks}
            assert names["idle-tx"] == "ok"
            other.rollback()
        assert pg_server.wait_until(lambda: warned() is None)
    finally:
        store.close()


# -- run_due's group: claims and reads of many instances in one round trip each -----------------


def test_try_acquire_many_grants_what_is_free_once(pg_url: str) -> None:
    mine, theirs = AdvisoryClaims(pg_url), AdvisoryClaims(pg_url)
    try:
        held_elsewhere = theirs.try_acquire("task:t:b")
        assert held_elsewhere is not None
        already = mine.try_acquire("task:t:c")
        tokens = mine.try_acquire_many(["task:t:a", "task:t:b", "task:t:c", "task:t:a", "task:t:d"])
        assert tokens[1] is None  # held by another session
        assert tokens[2] is None  # already held by this object: never granted twice
        assert tokens[3] is None  # named twice: granted once
        assert tokens[0] is not None
        assert tokens[4] is not None
        assert theirs.try_acquire("task:t:a") is None
        mine.release_many([t for t in (*tokens, already) if t is not None])
        assert theirs.try_acquire("task:t:a") is not None
    finally:
        mine.close()
        theirs.close()


def test_a_handler_calling_an_instance_claimed_ahead_does_not_wait(pg_url: str) -> None:
    """run_due claims a group of due instances ahead; a handler's client call on one of them
    (fan-out) must not wait for this very engine."""
    import attrs

    from durajobs import Jobs, Task

    @attrs.define
    class Note:
        text: str = ""

    def on_event(event: Note, ctx: Any) -> None:
        ctx.state = event
        ctx.schedule("0s")

    def execute(ctx: Any) -> None:
        if ctx.id == "a":
            jobs.task("t").send("b", Note("from a"))

    registry = {"t": Task(state=Note, event=Note, on_event=on_event, execute=execute)}
    with Jobs(pg_url, registry, wait_timeout=3.0) as jobs:
        jobs.task("t").send("a", Note())
        jobs.task("t").send("b", Note())
        started = time.monotonic()
        assert jobs.run_due() >= 2
        assert time.monotonic() - started < 2.0
        assert jobs.task("t").status("a").execute_count == 1
        assert jobs.task("t").status("a").last_error is None
        assert jobs.task("t").status("b").event_count == 2


def test_a_caller_waiting_for_a_claim_taken_ahead_waits_for_one_handler_only(pg_url: str) -> None:
    """run_due claims up to 64 due instances ahead; a client call waiting for the last of them
    gets it after the handler that is running, not after all the handlers before it."""
    import threading

    import attrs

    from durajobs import Jobs, Task

    @attrs.define
    class Note:
        text: str = ""

    executed: list[str] = []
    started = threading.Event()

    def on_event(event: Note, ctx: Any) -> None:
        ctx.state = event
        ctx.schedule("1 hour" if event.text == "late" else "0s")

    def execute(ctx: Any) -> None:
        started.set()
        time.sleep(0.004)  # below the engine's SLOW_STEP: grouped with the others
        executed.append(ctx.id)

    registry = {"t": Task(state=Note, event=Note, on_event=on_event, execute=execute)}
    with Jobs(pg_url, registry, wait_timeout=30.0) as jobs:
        for i in range(40):
            jobs.task("t").send(f"n{i:02}", Note())
        done_after: list[int] = []

        def late_caller() -> None:
            started.wait(10)
            jobs.task("t").send("n39", Note("late"))
            done_after.append(len(executed))

        caller = threading.Thread(target=late_caller)
        caller.start()
        jobs.run_due()
        caller.join(30)
        assert done_after, "the caller never got its claim"
        assert done_after[0] < 20, f"the caller waited for {done_after[0]} handlers"


def test_calls_after_the_session_ended_while_idle_prepare_their_statements_again(
    pg_server: PgServer, pg_url: str
) -> None:
    """Claims share the store's session, whose claim+read and single commit run statements
    prepared by name once per session: after the session ends while idle, the next calls
    (each kind of claim, then its commit) prepare them on the new session and succeed."""
    from datetime import UTC, datetime

    from test_stores import REGISTRY, Count

    from durajobs import FakeClock, Jobs

    clock = FakeClock(datetime.fromtimestamp(T0, UTC))
    with Jobs(pg_url, REGISTRY, clock=clock) as jobs:
        tick = jobs.continuous("tick")
        for round_ in range(3):
            for user in ("a", "b"):
                tick.start(f"{user}{round_}", Count())
            _terminate(pg_server, _backend_pid(jobs.engine.store))
            tick.start(f"c{round_}", Count())  # acquire: claim + read, then commit
            tick.trigger(f"a{round_}")
            _terminate(pg_server, _backend_pid(jobs.engine.store))
            clock.advance("1 minute")
            assert jobs.run_due() >= 3  # try_acquire_many + group commit
        assert tick.get_state("c2") == Count(2)


@pytest.mark.parametrize("wake", [False, True])
def test_a_client_call_waits_for_two_round_trips(pg_url: str, tmp_path: Path, wake: bool) -> None:
    """Claim and read in one round trip; the write, its COMMIT, the claim's release and the
    daemons' wake-up in the other (libpq's trace of the one session: a run of client
    messages, then the server's answer, is one round trip)."""
    import psycopg
    from test_stores import REGISTRY, Count

    from durajobs import Jobs

    listener = open_listener(pg_url)
    with Jobs(pg_url, REGISTRY, wake=wake) as jobs:
        tick = jobs.continuous("tick")
        tick.start("warm", Count())  # the session's statements are prepared
        listener.drain()
        conn = jobs.engine.store._link.connection()  # type: ignore[attr-defined]
        with open(tmp_path / "trace", "w+") as trace:
            conn.pgconn.trace(trace.fileno())
            conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
            for user in ("a", "b", "c"):
                tick.start(user, Count())
            conn.pgconn.untrace()
            trace.seek(0)
            sides = [line[0] for line in trace if line[:1] in ("F", "B")]
        assert jobs.engine.locks._held == set()  # type: ignore[attr-defined]
        other = AdvisoryClaims(pg_url)
        assert all(other.try_acquire(f"continuous:tick:{u}") is not None for u in "abc")
        other.close()
    round_trips = sum(1 for pair in itertools.pairwise(sides) if pair == ("F", "B"))
    assert round_trips == 2 * 3
    with selectors.DefaultSelector() as selector:  # the wake-ups were sent (or not)
        selector.register(listener.fileno(), selectors.EVENT_READ)
        assert bool(selector.select(2.0 if wake else 0.2)) == wake
    listener.close()


_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
_LITERAL_TYPES = ("text", "bigint", "float8", "boolean", "text[]", "bigint[]", "float8[]")


def _same(a: Any, b: Any) -> bool:
    """Equal, NaN and the sign of zero included (``repr`` tells them apart)."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and repr(a) == repr(b)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    values=st.tuples(
        st.none() | _TEXT,
        st.none() | st.integers(-(2**63), 2**63 - 1),
        st.none() | st.floats(),
        st.none() | st.booleans(),
        st.none() | st.lists(st.none() | _TEXT, max_size=4),
        st.none() | st.lists(st.none() | st.integers(-(2**63), 2**63 - 1), max_size=4),
        st.none() | st.lists(st.none() | st.floats(), max_size=4),
    )
)
def test_literals_read_back_as_psycopg_binds_them(pg_url: str, values: tuple[Any, ...]) -> None:
    """The hot path writes its parameters into the query text itself (``literals``, not
    psycopg's ``mogrify``): each value, quotes, backslashes, NaN, infinities, -0.0, NULLs
    inside arrays and the ends of bigint included, reads back from the server exactly as
    psycopg's own binding of it does."""
    import psycopg

    from durajobs.stores.postgres.literals import Typed, bind

    statement = f"PREPARE lit ({', '.join(_LITERAL_TYPES)}) AS SELECT " + ", ".join(
        f"${n}" for n in range(1, len(_LITERAL_TYPES) + 1)
    )
    execute = Typed(f"EXECUTE lit ({', '.join(['%s'] * len(_LITERAL_TYPES))})")
    named = Typed("SELECT %(b)s::bigint[], %(a)s::text, %(b)s::bigint[]")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(statement)
        by_name = conn.execute(bind(named, {"a": values[0], "b": values[5]})).fetchone()
        assert by_name == (values[5], values[0], values[5])
        for scs in ("on", "off"):  # E'...' where a backslash is: right either way
            conn.execute(f"SET standard_conforming_strings = {scs}")
            mine = conn.execute(bind(execute, values)).fetchone()
            theirs = conn.execute(
                "SELECT " + ", ".join(f"%s::{t}" for t in _LITERAL_TYPES), values
            ).fetchone()
            assert mine is not None
            assert theirs is not None
            assert all(_same(a, b) for a, b in zip(mine, theirs, strict=True)), (mine, theirs)


class _HostileFloat(float):
    def __repr__(self) -> str:  # numpy's np.float64 says "np.float64(1.5)"
        return "0'); DROP TABLE instances; --"


class _HostileStr(str):
    __slots__ = ()

    def replace(self, *_args: Any) -> str:  # type: ignore[override]
        return "x"

    def __contains__(self, _item: object) -> bool:
        return False


def test_literals_of_subclasses_are_their_values(pg_url: str) -> None:
    """A float, int or str subclass (numpy's scalars, enums, a hostile one) is written as the
    value it holds, never through its own repr or methods."""
    import enum

    import psycopg

    from durajobs.stores.postgres.literals import Typed, bind

    class Level(enum.IntEnum):
        HIGH = 3

    values = (_HostileFloat(1.5), Level.HIGH, _HostileStr("a'b\\c"), [_HostileFloat(2.5)],
              [_HostileStr('q"\\')])  # fmt: skip
    statement = Typed("SELECT %s::float8, %s::bigint, %s::text, %s::float8[], %s::text[]")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        got = conn.execute(bind(statement, values)).fetchone()
        assert got == (1.5, 3, "a'b\\c", [2.5], ['q"\\'])


def test_a_value_literals_do_not_write_is_bound_by_psycopg(pg_url: str) -> None:
    """A NUL in a string, or a type ``literals`` does not know, goes to psycopg: the same
    error (a content error: the write is rejected, not retried) or the same value as before."""
    import datetime

    import psycopg

    from durajobs.stores.postgres.literals import Typed, Unbindable, literal
    from durajobs.stores.postgres.store import SQL_EXECUTE_READ, _bound

    with pytest.raises(ValueError, match="not a statement"):
        Typed("SELECT %s::text LIKE 'a%%'")  # psycopg's escaped %: not written here
    with pytest.raises(Unbindable):
        literal("a\x00b")
    with pytest.raises(Unbindable):
        literal(datetime.date(2026, 12, 6))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        cur = psycopg.ClientCursor(conn)
        with pytest.raises(psycopg.DataError):
            _bound(cur, SQL_EXECUTE_READ, ("a\x00b",))
        day = datetime.date(2026, 12, 6)
        assert _bound(cur, SQL_EXECUTE_READ, (day,)) == cur.mogrify(SQL_EXECUTE_READ, (day,))


def test_a_claim_whose_read_fails_is_not_kept(pg_server: PgServer, pg_url: str) -> None:
    """The claim and the read after it are one query: a session's advisory lock outlives the
    failure of that query (here the read runs into lock_timeout behind another session's
    table lock), so the claim is released before the error goes up -- else the instance
    stayed busy for every other process until this session ended."""
    import psycopg

    store = PostgresStore(pg_url, busy_timeout=0.2)
    claims = AdvisoryClaims(pg_url, store=store)
    other = AdvisoryClaims(pg_url)
    store.commit([write(row(C1, 1), 0, new=True), write(row(C2, 1), 0, new=True)], T0, 100)
    with psycopg.connect(pg_url) as locker:
        locker.execute("LOCK TABLE instances IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(StorageError, match="lock"):
            claims.try_acquire(C1)
        with pytest.raises(StorageError, match="lock"):
            claims.try_acquire_many([C1, C2])
        with pytest.raises(StorageError, match="lock"):
            claims.acquire(C1, 1.0)
        assert other.try_acquire_many([C1, C2]) == [claim_key(C1), claim_key(C2)]
        locker.rollback()
    other.close()
    assert claims.try_acquire(C1) is not None  # and the store's session works on
    claims.close()
    store.close()


def test_a_failed_wait_leaves_no_waiting_marker(pg_url: str) -> None:
    """``acquire`` marks itself waiting (the instance's marker, then the shared one) in one
    statement; if that statement fails after taking the first marker (its lock_timeout ran
    out behind a session testing the shared one), the marker is dropped: a marker left held
    made every try_acquire of the instance yield, for good."""
    import psycopg

    from durajobs.stores.postgres.claims import ANYONE_WAITS

    holder, waiter, other = (AdvisoryClaims(pg_url) for _ in range(3))
    assert holder.try_acquire(C1) is not None
    with psycopg.connect(pg_url, autocommit=True) as tester:  # holds ANYONE_WAITS exclusive
        tester.execute("SELECT pg_advisory_lock(%s, %s)", ANYONE_WAITS)
        with pytest.raises(InstanceBusyError):
            waiter.acquire(C1, 0.2)
    holder.close()
    assert other.try_acquire(C1) is not None  # no marker left: nobody to yield to
    for claims in (waiter, other):
        claims.close()


def test_statements_dropped_under_the_store_are_prepared_again(pg_url: str) -> None:
    """The store prepares its hot statements once per session and remembers it; if they
    vanish from a live session (a ``DEALLOCATE``/``DISCARD`` it did not run), the call that
    meets the absence fails once, naming it, and the next ones prepare them again."""
    from test_stores import REGISTRY, Count

    from durajobs import Jobs

    with Jobs(pg_url, REGISTRY, wake=False) as jobs:
        tick = jobs.continuous("tick")
        tick.start("a", Count())  # both statements prepared
        jobs.engine.store._link.connection().execute("DEALLOCATE ALL")  # type: ignore[attr-defined]
        with pytest.raises(StorageError, match="durajobs_read_claimed"):
            tick.start("b", Count())  # the claim and read: then known missing
        with pytest.raises(StorageError, match="durajobs_put_recorded"):
            tick.start("c", Count())  # read prepared again; the commit meets its absence
        tick.start("e", Count())
        tick.start("f", Count())
        assert jobs.engine.locks._held == set()  # type: ignore[attr-defined]
        assert tick.get_state("f") is not None


def test_hot_statements_are_planned_again_as_the_tables_grow(pg_url: str) -> None:
    """PostgreSQL keeps a prepared statement's generic plan (made at its sixth use) until an
    ANALYZE of its tables. The store's hot read, prepared right after the tables were emptied
    and analyzed, planned sequential scans and kept them as the tables grew (7 -> 190 us a
    read); the store prepares it again at growing intervals, so the plan follows the tables."""
    import psycopg
    from test_stores import REGISTRY

    from durajobs import Jobs
    from durajobs.stores.postgres.store import READ_NAME

    Jobs(pg_url, REGISTRY).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("TRUNCATE instances, history, inbox, event_keys")
        conn.execute("VACUUM ANALYZE instances")
        conn.execute("VACUUM ANALYZE history")
    with Jobs(pg_url, REGISTRY, wake=False) as jobs:
        for n in range(2000):
            jobs.task("order").send(f"t{n}", 1)
        conn = jobs.engine.store._link.connection()  # type: ignore[attr-defined]
        plan = "\n".join(
            row[0] for row in conn.execute(f"EXPLAIN EXECUTE {READ_NAME} ('task:order:new')")
        )
    assert "Seq Scan on instances" not in plan, plan
    assert "Seq Scan on history" not in plan, plan


def test_the_store_reads_at_read_committed_whatever_the_database_default(
    pg_server: PgServer, pg_url: str
) -> None:
    """A claim and the read after it share one implicit transaction: under a database default
    of REPEATABLE READ the read would see the snapshot taken before the claim was granted."""
    pg_server.admin_execute(
        f"ALTER DATABASE {_db(pg_url)} SET default_transaction_isolation = 'repeatable read'"
    )
    try:
        store = _pg(pg_url)
        conn = store._link.connection()
        assert conn.execute("SHOW transaction_isolation").fetchone()[0] == "read committed"
        store.close()
    finally:
        pg_server.admin_execute(f"ALTER DATABASE {_db(pg_url)} RESET default_transaction_isolation")
