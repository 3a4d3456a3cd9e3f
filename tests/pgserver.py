"""A throwaway PostgreSQL cluster for the tests: initdb in a temp dir, start, stop.

The cluster listens on a free TCP port of 127.0.0.1 (password authentication, scram) and on a
Unix socket in its own directory (trust, for the ``postgres`` superuser the tests administer it
with). As root, the server runs as the ``postgres`` user (``runuser``); otherwise as the
current user. ``fsync`` is left at its default: the tests measure nothing that fsync hides.
"""

from __future__ import annotations

import contextlib
import getpass
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

__all__ = ["PgBouncer", "PgServer", "find_pg_bin", "route_jobs_to_postgres"]

ROLE = "durajobs_test"
PASSWORD = "pw-S3cr3t-never-in-messages"


def find_pg_bin() -> str | None:
    """The directory holding ``initdb``/``pg_ctl``/``postgres``, or ``None`` if not installed."""
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(found)
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(candidate, "initdb")):
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PgServer:
    """One cluster. ``url(db)`` connects over TCP as a password role; ``admin_url(db)`` over
    the Unix socket as the superuser."""

    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        self.as_root = os.geteuid() == 0
        self.os_user = "postgres" if self.as_root else getpass.getuser()
        self.base = tempfile.mkdtemp(prefix="durajobs-pg-")
        self.data = os.path.join(self.base, "data")
        self.sockets = os.path.join(self.base, "s")
        self.log = os.path.join(self.base, "server.log")
        self.port = _free_port()
        self.role = ROLE
        self.password = PASSWORD
        self._databases = 0
        os.mkdir(self.sockets)
        if self.as_root:
            shutil.chown(self.base, self.os_user)
            shutil.chown(self.sockets, self.os_user)
        os.chmod(self.base, 0o755)

    # -- process control -------------------------------------------------------------------

    def _run(self, args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [os.path.join(self.bindir, args[0]), *args[1:]]
        if self.as_root:
            command = ["runuser", "-u", self.os_user, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=check, cwd="/")

    def start(self) -> None:
        """initdb (first time) and start; waits until the server accepts connections."""
        if not os.path.exists(self.data):
            self._run([
                "initdb", "-D", self.data, "-U", "postgres", "--auth-local=trust",
                "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync",
            ])  # fmt: skip
            with open(os.path.join(self.data, "postgresql.conf"), "a") as conf:
                conf.write(
                    f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                    f"unix_socket_directories = '{self.sockets}'\nmax_connections = 200\n"
                    "shared_buffers = 32MB\nmax_locks_per_transaction = 256\n"
                    "log_min_messages = warning\n"
                )
        self._pg_ctl_start()
        self.admin_execute(
            f"CREATE ROLE {self.role} LOGIN CREATEDB PASSWORD '{self.password}'", ignore=True
        )

    def _pg_ctl_start(self) -> None:
        self._run(["pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "start"])
        self._wait_accepting()

    def _wait_accepting(self) -> None:
        """Until a session opens: on a loaded machine a restart after a crash was seen to
        refuse the next connection ("not yet accepting connections") after pg_ctl returned."""
        import psycopg

        def accepting() -> bool:
            try:
                psycopg.connect(self.admin_url(), autocommit=True).close()
            except psycopg.OperationalError:
                return False
            return True

        if not self.wait_until(accepting, timeout=60.0):
            raise RuntimeError(f"PostgreSQL did not accept connections: {self.log}")

    def stop(self) -> None:
        """Stop the server (fast) and delete the cluster."""
        self._run(["pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop"], check=False)
        shutil.rmtree(self.base, ignore_errors=True)

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every session ends."""
        self._run(["pg_ctl", "-D", self.data, "-l", self.log, "-m", "fast", "-w", "restart"])
        self._wait_accepting()

    def crash_restart(self) -> None:
        """``pg_ctl stop -m immediate`` (a crash: no shutdown checkpoint, every process killed;
        the next start replays the WAL), then start again."""
        self._run(["pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop"])
        self._pg_ctl_start()

    # -- connections -----------------------------------------------------------------------

    def url(self, database: str, *, password: str | None = None) -> str:
        """A TCP URL with the test role's password in it."""
        secret = urllib.parse.quote(self.password if password is None else password, safe="")
        return f"postgresql://{self.role}:{secret}@127.0.0.1:{self.port}/{database}"

    def admin_url(self, database: str = "postgres") -> str:
        """A Unix-socket URL as the superuser (trust)."""
        host = urllib.parse.quote(self.sockets, safe="")
        return f"postgresql://postgres@/{database}?host={host}&port={self.port}"

    def admin_execute(self, sql: str, database: str = "postgres", *, ignore: bool = False) -> None:
        """Run one statement as the superuser (autocommit)."""
        import psycopg

        with psycopg.connect(self.admin_url(database), autocommit=True) as conn:
            try:
                conn.execute(sql.encode())
            except psycopg.Error:
                if not ignore:
                    raise

    def admin_query(self, sql: str, database: str = "postgres") -> list[tuple[object, ...]]:
        """Run one query as the superuser; its rows."""
        import psycopg

        with psycopg.connect(self.admin_url(database), autocommit=True) as conn:
            return list(conn.execute(sql.encode()).fetchall())

    def create_database(self, prefix: str = "t") -> str:
        """A fresh empty database owned by the test role; returns its TCP URL."""
        self._databases += 1
        name = f"{prefix}_{os.getpid()}_{self._databases}"
        self.admin_execute(f"CREATE DATABASE {name} OWNER {self.role} TEMPLATE template0")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a database made by ``create_database`` (its sessions are ended first)."""
        name = urllib.parse.urlsplit(url).path.lstrip("/")
        with contextlib.suppress(Exception):
            self.admin_execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def wait_until(self, predicate: object, timeout: float = 10.0) -> bool:
        """Poll ``predicate()`` until true or ``timeout`` (a condition, not a sleep)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():  # type: ignore[operator]
                return True
            time.sleep(0.002)
        return False


def route_jobs_to_postgres(monkeypatch: Any, server: PgServer) -> dict[str, str]:
    """Make every ``Jobs(path, ...)`` of a test use a PostgreSQL database instead of the file.

    The ``[postgres]`` run of a ``both_stores`` test (``conftest.store_kind``): the engine-level
    suites, written with SQLite paths, run on the PostgreSQL store. Each path maps to a fresh
    database (the same path, the same database); a PostgreSQL URL stays itself. Returns that
    mapping (absolute path -> URL), filled as paths are used.
    """
    import durajobs.jobs
    from durajobs.stores import is_postgres
    from durajobs.stores.postgres.claims import AdvisoryClaims
    from durajobs.stores.postgres.store import PostgresStore
    from durajobs.stores.postgres.wake import PgWaker

    databases: dict[str, str] = {}

    def url_for(path: str) -> str:
        if is_postgres(path):
            return path
        path = os.path.abspath(path)
        if path not in databases:
            databases[path] = server.create_database("routed")
        return databases[path]

    def store(path: str, *, vfs: str | None = None, **options: Any) -> PostgresStore:
        return PostgresStore(url_for(path), **options)

    # Jobs picks its store by location (durajobs.stores.open_*): map each path to a database.
    monkeypatch.setattr(durajobs.jobs, "open_store", store)
    # Claims and wake-ups on the store's session, as ``durajobs.stores``' factories make them.
    monkeypatch.setattr(
        durajobs.jobs,
        "open_claims",
        lambda path, store=None: AdvisoryClaims(url_for(path), store=store),
    )
    monkeypatch.setattr(
        durajobs.jobs, "open_waker", lambda path, store=None: PgWaker(url_for(path), store)
    )
    return databases


class PgBouncer:
    """A real PgBouncer (Debian's ``pgbouncer``) in front of a ``PgServer``, in ``pool_mode``.

    Clients authenticate with the test role's password (scram, from an auth file); PgBouncer
    logs in to the server with it. As root it runs as the ``postgres`` user (it refuses root).
    """

    def __init__(self, server: PgServer, pool_mode: str) -> None:
        found = shutil.which("pgbouncer") or (
            "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None
        )
        if found is None:
            raise FileNotFoundError("pgbouncer is not installed (apt-get install -y pgbouncer)")
        self.binary = found
        self.server = server
        self.pool_mode = pool_mode
        self.port = _free_port()
        self.base = tempfile.mkdtemp(prefix=f"durajobs-pgbouncer-{pool_mode}-")
        self.ini = os.path.join(self.base, "pgbouncer.ini")
        self.pidfile = os.path.join(self.base, "pgbouncer.pid")
        self.log = os.path.join(self.base, "pgbouncer.log")
        with open(os.path.join(self.base, "users.txt"), "w") as users:
            users.write(f'"{server.role}" "{server.password}"\n')
        with open(self.ini, "w") as ini:
            ini.write(
                f"[databases]\n* = host=127.0.0.1 port={server.port}\n[pgbouncer]\n"
                f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
                f"auth_type = scram-sha-256\nauth_file = {self.base}/users.txt\n"
                f"pool_mode = {pool_mode}\nlogfile = {self.log}\npidfile = {self.pidfile}\n"
                "default_pool_size = 10\nmax_client_conn = 200\n"
            )
        if server.as_root:
            for name in [self.base, *(os.path.join(self.base, n) for n in os.listdir(self.base))]:
                shutil.chown(name, server.os_user)

    def start(self) -> None:
        """Start (daemonized) and wait until it accepts connections."""
        command = [self.binary, "-d", self.ini]
        if self.server.as_root:
            command = ["runuser", "-u", self.server.os_user, "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd="/")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.01)
        raise RuntimeError(f"pgbouncer did not start; see {self.log}")

    def url(self, server_url: str) -> str:
        """``server_url`` (a ``PgServer.url``) through this PgBouncer."""
        return server_url.replace(f":{self.server.port}/", f":{self.port}/")

    def stop(self) -> None:
        """Stop it and delete its files."""
        with contextlib.suppress(OSError, ValueError):
            with open(self.pidfile) as pidfile:
                pid = int(pidfile.read())
            os.kill(pid, 15)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                os.kill(pid, 0)
                time.sleep(0.01)
        shutil.rmtree(self.base, ignore_errors=True)
